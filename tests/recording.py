"""An in-memory Sender for component tests: records requests and answers from a script."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from cio_queue import Request, Response, TransportError

Answer = int | Response | TransportError


class RecordingSender:
    """Record every request; answer 200 unless a scripted answer or ``answer`` says otherwise.

    ``hold`` makes every send wait until it is set, so tests can observe queued work.
    """

    def __init__(self, answer: Callable[[Request], Answer] | None = None) -> None:
        self.requests: list[Request] = []
        self.script: deque[Answer] = deque()
        self.answer = answer
        self.hold = asyncio.Event()
        self.hold.set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False
        self._arrived = asyncio.Condition()

    async def send(self, request: Request) -> Response:
        """Record the request, wait for ``hold``, then answer."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.requests.append(request)
            async with self._arrived:
                self._arrived.notify_all()
            await self.hold.wait()
            if self.script:
                answer: Answer = self.script.popleft()
            elif self.answer is not None:
                answer = self.answer(request)
            else:
                answer = 200
            if isinstance(answer, TransportError):
                raise answer
            return answer if isinstance(answer, Response) else Response(answer, {}, b"{}")
        finally:
            self.in_flight -= 1

    async def wait_for(self, count: int) -> None:
        """Wait until ``count`` requests have arrived (callers bound the wait)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)

    async def aclose(self) -> None:
        """Remember that the queue closed its sender."""
        self.closed = True
