"""The Django recipe under Django's test client (WSGI) and under uvicorn (ASGI).

Django's ASGI handler has no lifespan, so both run a SyncEventQueue that the process's exit
drains; the tests close it the way that exit does and check that every event the views
handed out reached the fake Track API exactly once.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import django
import pytest
from django.conf import settings
from django.test import Client, override_settings
from django.urls import clear_url_caches, path

from cio_queue.integrations.django import get_queue

from .recipes import SERVER_WAIT, loaded_recipe, recipe_source, uvicorn_serving
from .threaded_fake import ThreadedFake, threaded_fake

URLCONF = "cio_queue_test_django_urls"
REQUESTS = 40


def recipe_settings() -> dict[str, Any]:
    """The settings the README's settings.py block defines, run as written."""
    namespace: dict[str, Any] = {}
    exec(recipe_source("django-settings"), namespace)  # our own README, as written
    return {name: value for name, value in namespace.items() if name.isupper()}


@pytest.fixture
def views(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The README's views, routed at /signup and /purchase, with Django set up once."""
    monkeypatch.chdir(tmp_path)  # the recipe's relative dead_letter_path lands here
    if not settings.configured:
        settings.configure(SECRET_KEY="test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=URLCONF,
                           INSTALLED_APPS=[], MIDDLEWARE=[], DATABASES={}, USE_TZ=True)
        django.setup()
    with loaded_recipe("django-views", tmp_path) as module:
        urls = ModuleType(URLCONF)
        urls.urlpatterns = [path("signup", module.signup),  # type: ignore[attr-defined]
                            path("purchase", module.purchase)]
        monkeypatch.setitem(sys.modules, URLCONF, urls)
        clear_url_caches()
        yield module


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedFake]:
    with threaded_fake() as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        # A changed CIO_QUEUE closes any earlier queue; the views build theirs from it.
        with override_settings(**recipe_settings()):
            yield running


def assert_delivered_once(fake: ThreadedFake, event_ids: list[str]) -> None:
    assert len(set(event_ids)) == len(event_ids)
    assert fake.event_ids() == Counter(event_ids)


def test_django_recipe_under_wsgi(views: ModuleType, fake: ThreadedFake) -> None:
    """Sync views queue through get_queue(), and closing at exit delivers every event once."""
    client = Client()
    event_ids = []
    for n in range(REQUESTS):
        response = client.post("/signup", {"email": f"user-{n}@example.com"})
        assert response.status_code == 200
        event_ids.append(response.json()["event_id"])
    stats = get_queue().close()  # what the process's exit does
    assert (stats.enqueued, stats.delivered) == (REQUESTS, REQUESTS)
    assert_delivered_once(fake, event_ids)


@pytest.mark.anyio
async def test_django_recipe_under_asgi(views: ModuleType, fake: ThreadedFake) -> None:
    """Sync and async views under uvicorn share the process's queue; every event arrives once."""
    from django.core.asgi import get_asgi_application  # noqa: PLC0415 - after settings

    timeout = aiohttp.ClientTimeout(total=SERVER_WAIT)
    async with uvicorn_serving(get_asgi_application(), lifespan="off") as url, \
            aiohttp.ClientSession(timeout=timeout) as session:
        async def one(view: str, n: int) -> str:
            data = {"email": f"user-{n}@example.com"}
            async with session.post(f"{url}/{view}", data=data) as response:
                assert response.status == 200, await response.text()
                event_id: str = (await response.json())["event_id"]
                return event_id
        event_ids = await asyncio.gather(*(one(view, n) for n in range(REQUESTS // 2)
                                           for view in ("signup", "purchase")))
    stats = await asyncio.to_thread(get_queue().close)  # what the process's exit does
    assert stats.delivered == REQUESTS
    assert_delivered_once(fake, list(event_ids))
