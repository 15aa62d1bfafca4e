"""The pytest plugin as users meet it: their own test files, run by pytest in a subprocess.

pytest loads the plugin through its ``pytest11`` entry point, as in any project that
installed cio-queue; each test here writes a small user suite and runs it with ``pytester``.
"""

from __future__ import annotations

import textwrap

import pytest

from .recipes import recipe_source

pytest_plugins = ["pytester"]

SUITE_TIMEOUT = 120.0  # seconds one user suite may take, Python start-up included


def run_suite(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    """Run one user test file in a fresh pytest process, with warnings as errors."""
    pytester.makepyfile(test_user=textwrap.dedent(source))
    return pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider",
                                         timeout=SUITE_TIMEOUT)


def test_the_plugin_is_inert_until_a_fixture_is_used(pytester: pytest.Pytester) -> None:
    """Loaded by entry point, it imports neither cio_queue nor aiohttp and starts no thread."""
    result = run_suite(pytester, """
        import sys
        import threading


        def test_nothing_of_cio_queue_is_loaded(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("cio_queue")
            loaded = [name for name in ("cio_queue", "aiohttp") if name in sys.modules]
            assert loaded == []
            assert threading.active_count() == 1
    """)
    result.assert_outcomes(passed=1)


def test_the_fixtures_serve_sync_anyio_and_asyncio_run_tests(pytester: pytest.Pytester) -> None:
    """Each style of test reaches a fresh fake through cio_queue_config and sees its operations.

    The fake runs on its own thread, so it answers a thread-based SyncEventQueue, a queue on
    anyio's event loop (which awaits the fake across loops) and one under asyncio.run().
    """
    result = run_suite(pytester, """
        import asyncio
        import dataclasses

        import pytest

        from cio_queue import EventQueue, QueueConfig, SyncEventQueue
        from cio_queue.testing import FakeTrackAPI

        seen_ports = set()


        @pytest.fixture(autouse=True)
        def fresh(fake_track_api: FakeTrackAPI, cio_queue_config: QueueConfig):
            assert fake_track_api.operations == []
            assert cio_queue_config.base_url == fake_track_api.url
            assert cio_queue_config.rate_limit is None
            seen_ports.add(fake_track_api.port)


        def test_sync(fake_track_api: FakeTrackAPI, cio_queue_config: QueueConfig) -> None:
            with SyncEventQueue(cio_queue_config) as cio:
                cio.track("42", "purchase", {"price": 9.5})
                fake_track_api.wait_for_operations_blocking(1, timeout=10)
            assert fake_track_api.accepted_events()[0]["name"] == "purchase"


        @pytest.mark.anyio
        async def test_anyio(fake_track_api: FakeTrackAPI, cio_queue_config: QueueConfig) -> None:
            async with EventQueue(cio_queue_config) as cio:
                await cio.identify("42", plan="pro")
                await fake_track_api.wait_for_operations(1)


        def test_asyncio_run(fake_track_api: FakeTrackAPI,
                             cio_queue_config: QueueConfig) -> None:
            async def main() -> None:
                config = dataclasses.replace(cio_queue_config, transport="v1")
                async with EventQueue(config) as cio:
                    await cio.delete("42")

            asyncio.run(main())
            [request] = fake_track_api.requests
            assert (request.method, request.path) == ("DELETE", "/api/v1/customers/42")


        def test_each_test_had_its_own_server() -> None:
            assert len(seen_ports) == 4
    """)
    result.assert_outcomes(passed=4)



def test_the_readmes_fastapi_example_passes(pytester: pytest.Pytester) -> None:
    """The README's pytest example, as written: a TestClient test and an anyio test pass."""
    result = run_suite(pytester, recipe_source("pytest-fastapi"))
    result.assert_outcomes(passed=2)
