"""The Celery recipe under a real worker (in-memory broker, threads pool of 8).

The worker runs the recipe's task 10,000 times on 8 threads (in chunks of 10 per broker
message), each run enqueueing one operation; when the worker stops, the
``worker_shutdown`` hook closes the queue, and the fake Track API must have every event id
the tasks returned exactly once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_success

from cio_queue import QueueClosedError

from .recipes import loaded_recipe
from .threaded_fake import WAIT, ThreadedFake, threaded_fake

TASKS = 10_000
THREADS = 8
PER_MESSAGE = 10
"""Signups per broker message (Celery's ``chunks``): the broker, not the queue, is slow."""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedFake]:
    with threaded_fake() as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        yield running


@pytest.fixture
def recipe(fake: ThreadedFake, tmp_path: Path) -> Iterator[ModuleType]:
    """The README's Celery app, on the in-memory broker instead of its Redis URL."""
    with loaded_recipe("celery", tmp_path) as module:
        module.app.conf.update(
            broker_url="memory://", task_always_eager=False, task_ignore_result=True,
            # The memory transport polls; poll often and fetch ahead, or it runs 30 tasks/s.
            broker_transport_options={"polling_interval": 0.005},
            worker_prefetch_multiplier=64)
        yield module


def test_ten_thousand_tasks_on_eight_threads_are_delivered_once_at_worker_shutdown(
        recipe: ModuleType, fake: ThreadedFake) -> None:
    """The worker's 8 threads enqueue 10,000 operations; its shutdown delivers each once."""
    results: list[str] = []
    finished = threading.Event()
    lock = threading.Lock()

    def collect(result: Any = None, **_: Any) -> None:
        with lock:
            results.extend(result)  # a chunk's task returns its signups' event ids
            if len(results) == TASKS:
                finished.set()

    task_success.connect(collect, weak=False)
    try:
        with start_worker(recipe.app, pool="threads", concurrency=THREADS,
                          perform_ping_check=False, shutdown_timeout=WAIT) as worker:
            people = [(f"user-{n}@example.com",) for n in range(TASKS)]
            for chunk in recipe.signup.chunks(people, PER_MESSAGE).group().tasks:
                chunk.apply_async()
            assert finished.wait(WAIT), f"only {len(results)} tasks ran"
            worker.stop()  # the warm shutdown that SIGTERM gives `celery worker`
    finally:
        task_success.disconnect(collect)

    stats = recipe.cio.statistics()  # worker_shutdown closed the queue: these are final
    assert (stats.enqueued, stats.delivered, stats.pending) == (TASKS, TASKS, 0)
    with pytest.raises(QueueClosedError):
        recipe.cio.track("late", "signed_up")
    accepted = fake.event_ids()
    assert len(accepted) == TASKS
    assert accepted == Counter(results)
    assert set(accepted.values()) == {1}
