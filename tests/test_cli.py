"""The command line, run as a user would run it: in a subprocess."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from cio_queue import EventQueue, OutcomeStatus, QueueConfig, RetryPolicy, replay
from cio_queue._cli import main
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
    assert "cio_queue" not in result.stderr.decode()  # no -v: no INFO lines of the library
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


async def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m cio_queue ARGV`` and return (exit status, stdout, stderr)."""
    with anyio.fail_after(60):
        result = await anyio.run_process([sys.executable, "-m", "cio_queue", *argv],
                                         env=env, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


SMALL_DEMO = ("demo", "--operations", "200", "--tasks", "4", "--latency", "0")


@pytest.mark.parametrize(("flags", "shown", "hidden"), [
    ((), [], ["INFO cio_queue", "DEBUG cio_queue"]),
    (("-v",), ["INFO cio_queue: cio_queue.started", "INFO cio_queue: cio_queue.closed"],
     ["DEBUG cio_queue"]),
    (("-vv",), ["INFO cio_queue: cio_queue.started", "DEBUG cio_queue: cio_queue.batch_sent"],
     []),
])
async def test_verbose_shows_the_librarys_info_then_debug_lines(
        flags: tuple[str, ...], shown: list[str], hidden: list[str]) -> None:
    """No flag: warnings only; -v adds the library's INFO lines on stderr, -vv its DEBUG."""
    status, _, stderr = await run_cli(*flags, *SMALL_DEMO)
    assert status == 0, stderr
    for text in shown:
        assert text in stderr
    for text in hidden:
        assert text not in stderr


@pytest.mark.parametrize(("level", "expect_lines"), [("WARNING", False), ("DEBUG", True)])
async def test_the_apps_logging_level_decides_what_the_library_shows(
        level: str, expect_lines: bool) -> None:
    """The library's INFO and DEBUG lines follow the app's logging.basicConfig level."""
    script = (f"import logging; logging.basicConfig(level=logging.{level}); "
              f"from cio_queue._cli import main; main({list(SMALL_DEMO)!r})")
    with anyio.fail_after(60):
        result = await anyio.run_process([sys.executable, "-c", script], check=False)
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert ("INFO:cio_queue:cio_queue.started" in output) is expect_lines
    assert ("DEBUG:cio_queue:cio_queue.batch_sent" in output) is expect_lines
    assert "every operation delivered exactly once" in output


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--operations", "0"], "argument --operations: must be an integer >= 1, got '0'"),
    (["demo", "--tasks", "0"], "argument --tasks: must be an integer >= 1, got '0'"),
    (["demo", "--concurrency", "-3"], "argument --concurrency: must be an integer >= 1"),
    (["demo", "--latency", "-0.5"], "argument --latency: must be a number >= 0, got '-0.5'"),
    (["demo", "--latency", "nan"], "argument --latency: must be a number >= 0, got 'nan'"),
    (["demo", "--rate-limit", "-1"], "argument --rate-limit: must be a number >= 0"),
    (["fake-server", "--port", "70000"], "argument --port: must be an integer from 0 to 65535"),
    (["fake-server", "--latency", "-1"], "argument --latency: must be a number >= 0"),
    (["fake-server", "--fault-rate", "typo=0.1"], "expected NAME=P with NAME one of"),
    (["fake-server", "--fault-rate", "slow=2"], "slow's probability must be within 0..1"),
])
def test_bad_arguments_exit_2_with_a_one_line_error(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each bad number is refused by the parser: exit 2 and an error naming the option."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"cio-queue {argv[0]}: error: ")
    assert message in last


async def test_fault_rates_that_sum_above_one_exit_2_in_one_line() -> None:
    """Rates valid one by one but above 1 together: one line on stderr, no traceback."""
    status, stdout, stderr = await run_cli("fake-server", "--fault-rate", "server_error=0.6",
                                           "--fault-rate", "slow=0.6")
    assert (status, stdout) == (2, "")
    assert stderr == "cio-queue: --fault-rate: fault probabilities must sum to at most 1\n"


async def read_exports(process: Process) -> dict[str, str]:
    """Read the three ``export NAME=VALUE`` lines fake-server prints when it is up."""
    assert process.stdout is not None
    lines: list[str] = []
    buffered = b""
    with anyio.fail_after(30):
        async for chunk in process.stdout:
            buffered += chunk
            lines = buffered.decode().splitlines()
            if len(lines) >= 3 and buffered.endswith(b"\n"):
                break
    exports = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert sorted(exports) == ["CUSTOMERIO_API_KEY", "CUSTOMERIO_BASE_URL",
                               "CUSTOMERIO_SITE_ID"], lines
    return exports


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_fake_server_serves_what_it_prints_until_a_signal(stop: signal.Signals) -> None:
    """The printed variables configure a queue that delivers; SIGTERM or Ctrl-C exits 0."""
    async with await anyio.open_process(
            [sys.executable, "-m", "cio_queue", "fake-server", "--site-id", "site-1",
             "--api-key", "key-1", "--latency", "0.01"]) as process:
        exports = await read_exports(process)
        config = QueueConfig.from_env(exports, rate_limit=None, flush_interval=0.01)
        assert (config.site_id, config.api_key) == ("site-1", "key-1")
        async with EventQueue(config) as queue:
            receipts = [await queue.track("42", "purchase"), await queue.identify("42")]
            with anyio.fail_after(30):
                outcomes = [await receipt.wait() for receipt in receipts]
        assert [outcome.status for outcome in outcomes] == [OutcomeStatus.DELIVERED] * 2
        process.send_signal(stop)
        assert process.stderr is not None
        with anyio.fail_after(30):
            status = await process.wait()
            stderr = b"".join([chunk async for chunk in process.stderr]).decode()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert "2 operations accepted" in stderr.splitlines()[-1]


@pytest.mark.parametrize("command", [[], ["demo"], ["replay"], ["import"], ["fake-server"],
                                     ["worker"], ["status"]])
def test_help_is_plain_text_that_names_every_command(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 with plain text (no markup from docstrings) for each command."""
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cio-queue")
    assert "``" not in out
    assert ":class:" not in out
    if not command:
        for name in ("demo", "replay", "import", "fake-server", "worker", "status"):
            assert name in out
