"""The command line, run as a user would run it: in a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from cio_queue import EventQueue, QueueConfig, RetryPolicy
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
