"""Bulk import: ``cio-queue import FILE`` and FileImport, against FakeTrackAPI on 127.0.0.1.

The command runs in a subprocess, as a user runs it (stdout and stderr are pipes, so its
output is the plain one), or, where that makes no difference, in this process through
``main()`` with the fake on a thread; the library function runs in the test's event loop.
Interrupted imports are killed or signalled once the fake has received a given number of
operations, never after a sleep.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import pytest

from cio_queue import EventQueue, QueueConfig, RetryPolicy
from cio_queue import _operations as ops
from cio_queue._checkpoint import CHUNK_LINES
from cio_queue._cli import main
from cio_queue._deadrecord import record_for
from cio_queue._import import CHUNKS_IN_FLIGHT, ImportProgress, import_file
from cio_queue._importcli import PlainLines, progress_line
from cio_queue._importfiles import MAX_RECORD_BYTES, ImportFileError, Totals
from cio_queue._importformats import SHAPES, ImportFormat
from cio_queue.testing import FakeTrackAPI

from .threaded_fake import threaded_fake

README: Final = Path(__file__).resolve().parent.parent / "README.md"
COMMAND_TIMEOUT: Final = 60.0
ANSI: Final = re.compile(r"\x1b\[|\r")
IN_FLIGHT_AT_MOST: Final = 10 * 100
"""Operations in flight at once at most: max_concurrency requests of batch_size each."""


# --- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's credentials in the environment, as the command reads them."""
    monkeypatch.setenv("CUSTOMERIO_SITE_ID", "fake-site")
    monkeypatch.setenv("CUSTOMERIO_API_KEY", "fake-key")
    monkeypatch.delenv("CUSTOMERIO_BASE_URL", raising=False)
    monkeypatch.delenv("CUSTOMERIO_REGION", raising=False)


def config(url: str, **overrides: Any) -> QueueConfig:
    values: dict[str, Any] = {"site_id": "fake-site", "api_key": "fake-key", "base_url": url,
                              "rate_limit": None,
                              "retry": RetryPolicy(attempts=2, wait_initial=0.01,
                                                   wait_max=0.01)}
    values.update(overrides)
    return QueueConfig(**values)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMERIO_")}
    return {**env, "CUSTOMERIO_SITE_ID": "fake-site", "CUSTOMERIO_API_KEY": "fake-key"}


def command(path: Path, *options: str, url: str | None = None) -> list[str]:
    base = ["--base-url", url] if url else []
    return [sys.executable, "-m", "cio_queue", "import", str(path), *base, *options]


def run_main(capsys: pytest.CaptureFixture[str], path: Path, *options: str,
             url: str | None = None) -> tuple[int, str, str]:
    """Run ``cio-queue import`` in this process; return its status, stdout and stderr."""
    capsys.readouterr()
    status = main(["import", str(path), *(["--base-url", url] if url else []), *options])
    out, err = capsys.readouterr()
    return status, out, err


async def run_import(path: Path, *options: str, url: str | None = None,
                     cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``cio-queue import``; return its status, stdout and stderr."""
    with anyio.fail_after(COMMAND_TIMEOUT):
        result = await anyio.run_process(command(path, *options, url=url), env=environment(),
                                         cwd=cwd, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def write_lines(path: Path, records: list[Any]) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in records))


def events(count: int, *, start: int = 0) -> list[dict[str, Any]]:
    return [{"kind": "track", "customer_id": f"c{i % 97}", "name": "purchase",
             "data": {"n": i}} for i in range(start, start + count)]


def rejected(path: Path) -> list[dict[str, Any]]:
    target = path.with_name(path.name + ".rejected.jsonl")
    return [json.loads(line) for line in target.read_text().splitlines()]


def delivered_ids(fake: FakeTrackAPI) -> dict[int, list[str]]:
    """The ids of the delivered events, by their ``data["n"]``."""
    found: dict[int, list[str]] = {}
    for event in fake.accepted_events():
        found.setdefault(event["data"]["n"], []).append(event["id"])
    return found


def refuse_poison(op: dict[str, Any]) -> str | None:
    """The fake's v2 hook: refuse events named ``poison``."""
    return "poisoned event" if op.get("name") == "poison" else None


# --- the formats -------------------------------------------------------------------------------

def test_each_kind_takes_the_arguments_of_its_eventqueue_method() -> None:
    """A hand-written line's keys are exactly its method's parameters (``**`` as one object).

    track and track_anonymous also take ``**properties``, which their ``data`` covers.
    """
    for kind, shape in SHAPES.items():
        parameters = inspect.signature(getattr(EventQueue, kind)).parameters.values()
        named = {p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD} - {"self"}
        catch_all = any(p.kind is p.VAR_KEYWORD for p in parameters)
        assert set(shape.required) | set(shape.optional) == named, kind
        assert catch_all == (shape.keywords is not None or "data" in shape.optional), kind


@pytest.mark.anyio
async def test_json_lines_of_people_and_events_are_sent_by_the_command(tmp_path: Path) -> None:
    """Hand-written lines of several kinds and a dead-letter record arrive as they were meant."""
    path = tmp_path / "mixed.jsonl"
    record = record_for(ops.track("dl-1", "refund", {"amount": 3}, None, None).seal(batch=True),
                        reason="failed", attempts=3, status=None, error=None, now=0.0)
    write_lines(path, [
        {"kind": "identify", "id": "42", "attributes": {"email": "ada@example.com",
                                                        "plan": "pro"}},
        {"kind": "track", "customer_id": "42", "name": "purchase", "data": {"price": 9.5},
         "timestamp": "2024-03-01T12:00:00Z", "id": "01HQ0000000000000000000000"},
        {"kind": "pageview", "customer_id": "42", "page": "/pricing"},
        {"kind": "add_device", "customer_id": "42", "device_id": "tok-1", "platform": "ios"},
        record,
    ])
    async with FakeTrackAPI() as fake:
        status, out, err = await run_import(path, url=fake.url)
        accepted = {op.op.get("name", op.op["action"]): op.op for op in fake.operations}
    assert status == 0, err
    assert accepted["identify"]["attributes"] == {"email": "ada@example.com", "plan": "pro"}
    assert accepted["purchase"]["timestamp"] == 1709294400
    assert accepted["purchase"]["id"] == "01HQ0000000000000000000000"
    assert accepted["/pricing"]["action"] == "page"
    assert accepted["add_device"]["device"]["token"] == "tok-1"
    assert accepted["refund"]["id"] == record["event_id"]
    assert "imported" in out
    assert re.search(r"delivered\s+5\s+5", out), out
    assert not ANSI.search(out + err), "plain output expected when not a terminal"


def test_csv_of_people_takes_the_id_column_and_leaves_empty_cells_out(
        tmp_path: Path, credentials: None, capsys: pytest.CaptureFixture[str]) -> None:
    """``--id-column``: the rest are attributes, quoted cells may hold commas and newlines."""
    path = tmp_path / "people.csv"
    path.write_bytes("\ufeffuser,email,note\n"
                     '7,ada@example.com,"likes ""quotes"", commas\nand lines"\n'
                     "8,bob@example.com,\n".encode())
    with threaded_fake() as fake:
        status, _, err = run_main(capsys, path, "--id-column", "user", url=fake.url)
        accepted = fake.operations()
    assert status == 0, err
    assert accepted == [
        {"type": "person", "identifiers": {"id": "7"}, "action": "identify",
         "attributes": {"email": "ada@example.com",
                        "note": 'likes "quotes", commas\nand lines'}},
        {"type": "person", "identifiers": {"id": "8"}, "action": "identify",
         "attributes": {"email": "bob@example.com"}}]


@pytest.mark.anyio
async def test_csv_of_events_with_one_name_or_a_name_column(tmp_path: Path) -> None:
    """Events: the name from ``--event-name`` or a column, the time from the timestamp column."""
    fixed, named = tmp_path / "fixed.csv", tmp_path / "named.csv"
    fixed.write_text("customer_id,timestamp,sku\n1,1700000000,A\n2,2024-01-01T00:00:00,B\n")
    named.write_text("customer_id,name,sku\n3,viewed,C\n")
    async with FakeTrackAPI() as fake:
        cfg = config(fake.url)
        first = await import_file(fixed, cfg, ImportFormat(event_name="purchase",
                                                           rows="events"))
        second = await import_file(named, cfg, ImportFormat(rows="events"))
        accepted = fake.accepted_events()
    assert first.complete
    assert second.complete
    assert [(e["customer"], e["name"], e["timestamp"], e["data"]) for e in accepted] == [
        ("1", "purchase", 1700000000, {"sku": "A"}),
        ("2", "purchase", 1704067200, {"sku": "B"}),
        ("3", "viewed", None, {"sku": "C"})]


# --- problems ----------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_bad_lines_are_reported_by_number_and_written_with_their_reasons(
        tmp_path: Path) -> None:
    """Invalid lines and lines the API rejects go to FILE.rejected.jsonl; the rest is sent."""
    path = tmp_path / "events.jsonl"
    write_lines(path, [*events(3), "{not json", {"kind": "track", "customer_id": " ",
                                                 "name": "x"},
                       {"kind": "track", "customer_id": "9", "name": "poison"},
                       *events(2, start=3)])
    async with FakeTrackAPI(reject_op=refuse_poison) as fake:
        status, out, err = await run_import(path, url=fake.url)
        delivered = sorted(delivered_ids(fake))
    assert status == 1
    assert delivered == [0, 1, 2, 3, 4]
    assert "line 4: not valid JSON" in err
    assert "line 5: customer_id: must not be blank" in err
    assert "line 6: rejected by the API" in err
    lines = rejected(path)
    assert [(r["line"], r["reason"]) for r in lines] == [
        (4, "invalid"), (5, "invalid"), (6, "rejected")]
    assert lines[0]["text"] == "{not json"
    assert lines[2]["status"] == 207  # the batch's status: the API refused this one in it
    assert "poisoned event" in lines[2]["error"]
    assert re.search(r"rejected by the API\s+1\s+1", out), out
    assert "events.jsonl.rejected.jsonl" in out


def test_dry_run_checks_every_line_and_sends_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``--dry-run`` needs no credentials, reports each problem by number, exits 1 for any."""
    for name in ("CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY", "CUSTOMERIO_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "events.jsonl"
    write_lines(path, [*events(2), {"kind": "track", "customer_id": "1"},
                       {"kind": "identify", "id": "1", "attributes": {"x" * 200: 1}}])
    status, out, err = run_main(capsys, path, "--dry-run")
    assert status == 1, err
    assert "line 3: track needs 'name'" in err
    assert "line 4: attributes." in err
    assert "2 invalid lines" in out
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]
    write_lines(path, events(2))
    with threaded_fake() as fake:
        status, out, _ = run_main(capsys, path, "--dry-run", url=fake.url)
        assert fake.operations() == []
    assert status == 0
    assert "every line is valid" in out


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["big.jsonl", "big.csv"])
async def test_an_overlong_record_is_refused_unread_and_the_next_one_is_read(
        tmp_path: Path, name: str) -> None:
    """A record over MAX_RECORD_BYTES is refused by its line number, never held whole."""
    path = tmp_path / name
    huge = "x" * (MAX_RECORD_BYTES + 10)
    if name.endswith(".csv"):
        path.write_text(f'id,note\n1,"{huge}"\n2,fine\n')
    else:
        write_lines(path, [{"kind": "delete", "customer_id": huge}, *events(1)])
    problems: list[tuple[int, str]] = []
    result = await import_file(path, config("http://127.0.0.1:9"), dry_run=True,
                               on_problem=lambda n, text: problems.append((n, text)))
    assert [n for n, _ in problems] == [2 if name.endswith(".csv") else 1]
    assert "is over 1,048,576 bytes" in problems[0][1]
    assert result.run == Totals(lines=2, delivered=1, invalid=1)


def test_exit_status_2_for_bad_usage_and_files_that_cannot_be_read(
        tmp_path: Path, credentials: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file, options that clash, a CSV without its id column: 2 and one line."""
    csv = tmp_path / "people.csv"
    csv.write_text("email\nada@example.com\n")
    with threaded_fake() as fake:
        for path, options, says in [
                (tmp_path / "missing.jsonl", (), "missing.jsonl"),
                (csv, ("--rows", "people", "--event-name", "x"), "--event-name"),
                (csv, (), "no column 'id'")]:
            status, _, err = run_main(capsys, path, *options, url=fake.url)
            assert (status, len(err.splitlines())) == (2, 1), err
            assert says in err
        assert fake.operations() == []


def test_a_rerun_of_a_finished_import_sends_nothing(
        tmp_path: Path, credentials: None, capsys: pytest.CaptureFixture[str]) -> None:
    """The checkpoint stays: a second run finds nothing left; --restart sends all again."""
    path = tmp_path / "events.jsonl"
    write_lines(path, events(5))
    with threaded_fake() as fake:
        assert run_main(capsys, path, url=fake.url)[0] == 0
        status, out, _ = run_main(capsys, path, url=fake.url)
        assert (status, len(fake.operations())) == (0, 5)
        assert "nothing left to import" in out
        status, out, _ = run_main(capsys, path, "--restart", url=fake.url)
        ids = fake.event_ids()
    assert status == 0
    assert re.search(r"delivered\s+5\s+5", out), out
    assert sorted(ids.values()) == [1] * 10  # a restart is a new import, with new ids


@pytest.mark.anyio
async def test_a_changed_file_or_other_settings_are_refused_on_resume(tmp_path: Path) -> None:
    """A checkpoint only resumes the file it was made for, read the same way."""
    path = tmp_path / "people.csv"
    path.write_text("id,plan\n1,pro\n")
    async with FakeTrackAPI() as fake:
        cfg = config(fake.url)
        await import_file(path, cfg)
        with pytest.raises(ImportFileError, match="other settings"):
            await import_file(path, cfg, ImportFormat(id_column="plan"))
        path.write_text("id,plan\n2,free\n")
        with pytest.raises(ImportFileError, match="not the file"):
            await import_file(path, cfg)


# --- interruptions -----------------------------------------------------------------------------

INTERRUPTED_FILE: Final = 8_000
CUT_AFTER: Final = 2_000


@asynccontextmanager
async def slow_import(path: Path, fake: FakeTrackAPI,
                      *options: str) -> AsyncIterator[anyio.abc.Process]:
    """A command importing ``path`` at 20 requests/s; killed on exit if still running."""
    process = await anyio.open_process(
        command(path, "--rate-limit", "20", *options, url=fake.url), env=environment())
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.fail_after(COMMAND_TIMEOUT):
            await process.wait()
        await process.aclose()


def assert_each_line_delivered(ids: dict[int, list[str]], count: int) -> int:
    """Every line arrived, copies with the same event id; return how many were copies."""
    assert sorted(ids) == list(range(count)), "a line was lost"
    assert all(len(set(copies)) == 1 for copies in ids.values())
    return sum(len(copies) - 1 for copies in ids.values())


@pytest.mark.anyio
async def test_an_import_killed_midway_resumes_and_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL: the rerun sends the rest; at most the chunks in flight again, same ids."""
    path = tmp_path / "events.jsonl"
    write_lines(path, events(INTERRUPTED_FILE))
    async with FakeTrackAPI(latency=0.01) as fake:
        async with slow_import(path, fake) as process:
            with anyio.fail_after(COMMAND_TIMEOUT):
                await fake.wait_until(lambda: len(fake.operations) >= CUT_AFTER)
            process.kill()
        with anyio.fail_after(COMMAND_TIMEOUT):
            resumed = await import_file(path, config(fake.url))
        ids = delivered_ids(fake)
    assert resumed.resumed
    assert resumed.complete
    assert resumed.total.delivered == INTERRUPTED_FILE
    again = assert_each_line_delivered(ids, INTERRUPTED_FILE)
    assert again <= CHUNKS_IN_FLIGHT * CHUNK_LINES, f"{again} events sent twice"


@pytest.mark.anyio
async def test_an_import_stopped_by_sigterm_notes_what_it_delivered(tmp_path: Path) -> None:
    """SIGTERM: the summary says to resume, and the rerun sends again only what was in flight.

    Meanwhile the progress goes out as plain lines, and a second import of the file is
    refused.
    """
    path = tmp_path / "events.jsonl"
    write_lines(path, events(INTERRUPTED_FILE))
    async with FakeTrackAPI(latency=0.01) as fake:
        async with slow_import(path, fake, "--progress-every", "0.1") as process:
            assert process.stderr is not None
            with anyio.fail_after(COMMAND_TIMEOUT):
                progress = await first_progress_line(process.stderr)
                await fake.wait_until(lambda: len(fake.operations) >= CUT_AFTER)
            with pytest.raises(ImportFileError, match="already being imported"):
                await import_file(path, config(fake.url))
            process.send_signal(signal.SIGTERM)
            assert process.stdout is not None
            with anyio.fail_after(COMMAND_TIMEOUT):
                out = (await read_all(process.stdout)).decode()
                assert await process.wait() == 1
        first_run = len(fake.operations)
        with anyio.fail_after(COMMAND_TIMEOUT):
            resumed = await import_file(path, config(fake.url))
        ids = delivered_ids(fake)
    assert not ANSI.search(progress)
    assert "lines" in progress
    assert "ETA" in progress
    assert "interrupted; run the same command again to resume" in out
    assert resumed.complete
    again = assert_each_line_delivered(ids, INTERRUPTED_FILE)
    assert again <= IN_FLIGHT_AT_MOST, f"{again} events sent twice"
    assert first_run >= CUT_AFTER


async def first_progress_line(stream: anyio.abc.ByteReceiveStream) -> str:
    buffer = b""
    while b"%" not in buffer:
        buffer += await stream.receive()
    return buffer.decode()


async def read_all(stream: anyio.abc.ByteReceiveStream) -> bytes:
    chunks = []
    try:
        while True:
            chunks.append(await stream.receive())
    except anyio.EndOfStream:
        return b"".join(chunks)


@pytest.mark.anyio
async def test_an_import_stops_at_a_failure_and_the_rerun_sends_the_rest(
        tmp_path: Path) -> None:
    """Failed operations are not checkpointed: the import stops, and the next run sends them."""
    path = tmp_path / "events.jsonl"
    write_lines(path, events(2500))
    async with FakeTrackAPI() as fake:
        cfg = config(fake.url, retry=RetryPolicy(attempts=1))
        fake.script(503)  # the first batch fails
        first = await import_file(path, cfg)
        second = await import_file(path, cfg)
        ids = delivered_ids(fake)
    assert first.failed == 100
    assert first.failure is not None
    assert not first.finished
    assert not first.complete
    assert second.complete
    assert second.total == Totals(lines=2500, delivered=2500)
    assert assert_each_line_delivered(ids, 2500) == 0


# --- the display and memory -------------------------------------------------------------------

def read_terminal(master: int, process: subprocess.Popen[bytes]) -> str:
    """What the command wrote to its terminal until it ended (bounded), without escapes."""
    deadline = time.monotonic() + COMMAND_TIMEOUT
    output = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        try:
            data = os.read(master, 65536) if ready else b""
        except OSError:  # EIO: the command closed its end
            break
        if not data:
            break
        output += data
    process.wait(timeout=max(0.1, deadline - time.monotonic()))
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace"))


def test_on_a_terminal_a_progress_bar_and_a_summary_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With stdout and stderr on a terminal, rich draws the bar, its counts and the table."""
    path = tmp_path / "events.jsonl"
    write_lines(path, [*events(3), {"kind": "track"}])
    with threaded_fake() as fake:
        master, terminal = os.openpty()
        with subprocess.Popen(command(path, url=fake.url), stdout=terminal, stderr=terminal,
                              env={**environment(), "COLUMNS": "100", "TERM": "xterm"}
                              ) as process:
            os.close(terminal)
            try:
                output = read_terminal(master, process)
            finally:
                os.close(master)
    assert process.returncode == 1, output
    assert "importing events.jsonl" in output
    assert "100%" in output
    assert "3 delivered" in output
    assert "line 4: track needs 'customer_id', 'name'" in output
    assert re.search(r"┃ +this run +┃ +all runs", output), output


def test_plain_progress_lines_say_share_counts_rate_and_time_left() -> None:
    """A plain line has no escape codes, and its ETA follows from this run's bytes per second."""
    p = ImportProgress(done=600, start=100, size=1100, run=Totals(50, 40, 1, 2),
                       before=Totals(), failed=3, elapsed=5.0)
    line = progress_line(p)
    assert line == (" 54.5%  50 lines  40 delivered  1 rejected  2 invalid  3 failed  "
                    "10 lines/s  ETA 5.0s")


def test_a_real_import_prints_the_first_problems_and_then_one_line() -> None:
    """An import prints at most SHOWN_PROBLEMS problems; the rest are in the rejected file."""
    printed: list[str] = []

    class Stream:
        def write(self, text: str) -> int:
            printed.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    lines = PlainLines(Stream(), every=1.0, shown=2, dry_run=False)  # type: ignore[arg-type]
    for n in range(1, 6):
        lines.problem(n, "bad")
    assert "".join(printed).splitlines() == [
        "line 1: bad", "line 2: bad", "(more problems: each is in the rejected lines' file)"]


async def peak_of_a_dry_run(path: Path) -> int:
    tracemalloc.start()
    try:
        with anyio.fail_after(COMMAND_TIMEOUT):
            result = await import_file(path, config("http://127.0.0.1:9"), dry_run=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.complete
    return peak


@pytest.mark.anyio
async def test_the_memory_an_import_needs_does_not_grow_with_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking 3 times the lines needs no more memory at its peak: the file is streamed.

    Chunks of 100 lines keep it quick; the smaller file is already long enough for the
    queue to reach its steady state (it does by 1,500 lines).
    """
    monkeypatch.setattr("cio_queue._checkpoint.CHUNK_LINES", 100)
    warm_up, small, large = (tmp_path / f"{name}.jsonl" for name in ("warm", "small", "large"))
    write_lines(warm_up, events(300))
    write_lines(small, events(2000))
    write_lines(large, events(6000))
    await peak_of_a_dry_run(warm_up)  # imports, caches, first allocations
    small_peak = await peak_of_a_dry_run(small)
    large_peak = await peak_of_a_dry_run(large)
    assert large_peak < small_peak * 1.25, (small_peak, large_peak)


# --- the README --------------------------------------------------------------------------------

def readme_examples() -> tuple[dict[str, str], list[str]]:
    """The files (``<!-- import-file: NAME -->``) and commands of README's Bulk import."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Bulk import", 1)[1].split("\n## ", 1)[0]
    files = dict(re.findall(r"<!-- import-file: (\S+) -->\n```\w*\n(.*?)```", section,
                            re.DOTALL))
    commands = re.findall(r"^\$ (cio-queue import .*)$", section, re.MULTILINE)
    return files, commands


def test_the_readme_examples_run(tmp_path: Path, credentials: None,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every example file in README's Bulk import imports cleanly with its command."""
    files, commands = readme_examples()
    assert len(files) >= 3
    assert len(commands) >= 3
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    with threaded_fake() as fake:
        for line in commands:
            args = line.split()[2:]
            status, out, err = run_main(capsys, tmp_path / args[0], *args[1:], url=fake.url)
            assert status == 0, (line, out, err)
        assert fake.operations(), "the examples sent nothing"

