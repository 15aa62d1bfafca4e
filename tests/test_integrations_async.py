"""The async frameworks' README recipes under their real servers, against the fake Track API.

Each test loads its recipe from README.md as written, serves it (uvicorn for FastAPI,
Starlette and Litestar; aiohttp's AppRunner), sends concurrent requests, stops the server,
and checks that every event the handlers enqueued reached the fake exactly once: the
lifespan drained the queue at shutdown.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from cio_queue.testing import FakeTrackAPI

from .recipes import SERVER_WAIT, loaded_recipe, uvicorn_serving

pytestmark = pytest.mark.anyio

REQUESTS = 40


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTrackAPI]:
    """A fake Track API that QueueConfig.from_env() points at."""
    async with FakeTrackAPI() as running:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", running.site_id)
        monkeypatch.setenv("CUSTOMERIO_API_KEY", running.api_key)
        monkeypatch.setenv("CUSTOMERIO_BASE_URL", running.url)
        yield running


async def sign_up_many(url: str, *, query: bool = True) -> list[str]:
    """POST /signup for REQUESTS people at once; return the event ids the app answered."""
    timeout = aiohttp.ClientTimeout(total=SERVER_WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def one(n: int) -> str:
            email = f"user-{n}@example.com"
            async with session.post(f"{url}/signup", params={"email": email}) as response:
                assert response.status in (200, 201), await response.text()
                event_id: str = (await response.json())["event_id"]
                return event_id
        return list(await asyncio.gather(*(one(n) for n in range(REQUESTS))))


def assert_delivered_once(fake: FakeTrackAPI, event_ids: list[str]) -> None:
    """Every event id the app handed out was accepted by the fake exactly once."""
    assert len(set(event_ids)) == REQUESTS
    accepted = Counter(event["id"] for event in fake.accepted_events())
    assert accepted == Counter(event_ids)


async def run_under_uvicorn(fake: FakeTrackAPI, app: Any) -> None:
    async with uvicorn_serving(app) as url:
        event_ids = await sign_up_many(url)
        assert fake.accepted_events() == []  # still queued: the default flush_interval is 5 s
    assert_delivered_once(fake, event_ids)


async def test_fastapi_recipe_under_uvicorn(fake: FakeTrackAPI, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The FastAPI recipe's lifespan runs the queue and drains it when uvicorn stops."""
    monkeypatch.chdir(tmp_path)  # the recipe's spool_path is relative
    with loaded_recipe("fastapi", tmp_path) as recipe:
        await run_under_uvicorn(fake, recipe.app)


async def test_starlette_recipe_under_uvicorn(fake: FakeTrackAPI, tmp_path: Path) -> None:
    """The Starlette recipe's lifespan state hands the queue to requests and drains it."""
    with loaded_recipe("starlette", tmp_path) as recipe:
        await run_under_uvicorn(fake, recipe.app)


async def test_litestar_recipe_under_uvicorn(fake: FakeTrackAPI, tmp_path: Path) -> None:
    """The Litestar plugin injects the queue as `cio` and drains it when the app stops."""
    with loaded_recipe("litestar", tmp_path) as recipe:
        await run_under_uvicorn(fake, recipe.app)


async def test_aiohttp_recipe_under_app_runner(fake: FakeTrackAPI, tmp_path: Path) -> None:
    """The aiohttp recipe keeps the queue under an AppKey and drains it at cleanup."""
    with loaded_recipe("aiohttp", tmp_path) as recipe:
        runner = web.AppRunner(recipe.app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            event_ids = await sign_up_many(f"http://127.0.0.1:{port}")
            assert fake.accepted_events() == []
        finally:
            with anyio.fail_after(SERVER_WAIT):
                await runner.cleanup()
    assert_delivered_once(fake, event_ids)

