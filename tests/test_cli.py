"""The command line, run as a user would run it: in a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from cio_queue import EventQueue, QueueConfig, RetryPolicy, replay
from cio_queue.testing import FakeTrackAPI

pytestmark = pytest.mark.anyio


async def test_demo_delivers_every_operation_exactly_once() -> None:
    """`python -m cio_queue demo` pushes operations to its embedded server and checks them."""
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-m", "cio_queue", "demo", "--operations", "600", "--tasks", "12",
             "--latency", "0"], check=False)
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "delivered" in output
    assert "every operation delivered exactly once" in output
    assert "p99" in output


async def test_replay_command_resends_a_dead_letter_file(tmp_path: Path) -> None:
    """`cio-queue replay PATH` delivers a dead-letter file with credentials from the env."""
    path = tmp_path / "dead.jsonl"
    async with FakeTrackAPI() as fake:
        down = fake.url
    # Everything goes to the dead-letter file while the server is down.
    config = QueueConfig(site_id="site", api_key="secret-key", base_url=down, transport="v1",
                         flush_interval=0.01, shutdown_timeout=0.5, dead_letter_path=path,
                         retry=RetryPolicy(attempts=1))
    async with EventQueue(config) as queue:
        for i in range(5):
            await queue.track(i, "purchase", {"n": i})
    assert len(path.read_text().splitlines()) == 5
    async with FakeTrackAPI(site_id="site", api_key="secret-key") as fake:
        env = {**os.environ, "CUSTOMERIO_SITE_ID": "site", "CUSTOMERIO_API_KEY": "secret-key"}
        with anyio.fail_after(60):
            result = await anyio.run_process(
                [sys.executable, "-m", "cio_queue", "replay", str(path), "--base-url", fake.url],
                env=env, check=False)
        assert result.returncode == 0, result.stderr.decode()
        assert "delivered 5" in result.stdout.decode()
        names = sorted(event["data"]["n"] for event in fake.accepted_events())
    assert names == [0, 1, 2, 3, 4]
    assert path.read_text() == ""


async def test_replay_command_names_a_missing_variable(tmp_path: Path) -> None:
    """Without credentials in the environment, replay exits 2 naming the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")}
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-m", "cio_queue", "replay", str(tmp_path / "x.jsonl")],
            env=env, check=False)
    assert result.returncode == 2
    assert "CUSTOMERIO_SITE_ID" in result.stderr.decode()


async def run_replay_command(path: Path, url: str) -> tuple[int, str]:
    env = {**os.environ, "CUSTOMERIO_SITE_ID": "fake-site", "CUSTOMERIO_API_KEY": "fake-key"}
    with anyio.fail_after(60):
        result = await anyio.run_process(
            [sys.executable, "-m", "cio_queue", "replay", str(path), "--base-url", url],
            env=env, check=False)
    return result.returncode, result.stderr.decode()


async def test_replay_command_refuses_a_missing_file_in_one_line(tmp_path: Path) -> None:
    """A dead-letter file that does not exist: exit 2 and one line on stderr, no traceback."""
    async with FakeTrackAPI() as fake:
        status, stderr = await run_replay_command(tmp_path / "missing.jsonl", fake.url)
    assert status == 2
    assert len(stderr.splitlines()) == 1, stderr
    assert "missing.jsonl" in stderr
    assert "Traceback" not in stderr


async def test_replay_command_refuses_a_second_replay_of_the_same_file(tmp_path: Path) -> None:
    """While a replay of the file runs, the command exits 2 with one line, sending nothing."""
    path = tmp_path / "dead.jsonl"
    async with FakeTrackAPI() as down:
        url = down.url
    config = QueueConfig(site_id="fake-site", api_key="fake-key", base_url=url,
                         transport="v1", flush_interval=0.01, dead_letter_path=path,
                         retry=RetryPolicy(attempts=1))
    async with EventQueue(config) as queue:
        for i in range(5):
            await queue.track(i, "purchase", {"n": i})
    async with FakeTrackAPI(latency=60) as hanging, FakeTrackAPI() as fake, \
            anyio.create_task_group() as tg:
        running = QueueConfig(site_id="fake-site", api_key="fake-key", base_url=hanging.url,
                              transport="v1", max_concurrency=1, shutdown_timeout=0.2)
        tg.start_soon(replay, path, running)
        with anyio.fail_after(30):
            await hanging.wait_until(lambda: hanging.in_flight >= 1)
        status, stderr = await run_replay_command(path, fake.url)
        tg.cancel_scope.cancel()
        assert fake.log == []
    assert status == 2
    assert len(stderr.splitlines()) == 1, stderr
    assert "already being replayed" in stderr
    assert "Traceback" not in stderr
