"""Benchmark ``cio-queue import``: a million events from a file, its throughput and peak RSS.

The fake Track API runs in a process of its own (``benchmarks._server``: FakeTrackAPI on
uvloop) answering every request after ``LATENCY`` seconds; the import runs as the command a
user types, ``python -m cio_queue import FILE``, in another process, so neither shares a
core's event loop with the other. Its peak resident memory is what the kernel reports for
that process when it ends (``wait4``), and the server's ledger checks that every event
arrived exactly once (distinct event ids, none without one).

Measured in one run, on one file of ``EVENTS`` JSON lines of ``track`` events:

- with the default ``--rate-limit`` (100 requests/s: the Track API's fair-use figure),
- with ``--rate-limit 0`` (none), where the client's own CPU is the limit.

Beside each: the import process's CPU time per event (user + system, from ``wait4``), the
figure that says what the import costs on a machine whose cores are shared.

Each run starts from the top (``--restart``). Only the peak RSS carries over to another
machine; throughput without a rate limit depends on its cores. Run from the repository
root::

    python -m benchmarks.import_file [--events N] [--help]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cio_queue import DEFAULT_RATE_LIMIT

from ._server import ServerHandle, server_process

EVENTS: Final = 1_000_000
LATENCY: Final = 0.02
"""Seconds the fake server takes to answer each request."""
RATE_LIMITS: Final = (DEFAULT_RATE_LIMIT, 0.0)
"""Requests per second for each run; 0 is none."""
IMPORT_TIMEOUT: Final = 1800.0
"""Seconds one import may take before the benchmark gives up."""


@dataclass(frozen=True, slots=True)
class Run:
    rate_limit: float
    status: int
    seconds: float
    peak_rss_bytes: int
    cpu_seconds: float
    delivered: int
    distinct: int
    without_id: int
    requests: int
    server_cpu: float

    @property
    def events_per_second(self) -> float:
        return self.delivered / self.seconds


def write_events(path: Path, count: int) -> int:
    """Write ``count`` hand-written track lines; return the file's size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            out.write(json.dumps({
                "kind": "track", "customer_id": f"user-{n % 50_000}", "name": "purchase",
                "data": {"n": n, "sku": f"SKU-{n % 977}", "price": round(n % 10_000 / 100, 2)},
                "timestamp": 1_700_000_000 + n}, separators=(",", ":")) + "\n")
    return path.stat().st_size


def import_once(path: Path, server: ServerHandle, rate_limit: float) -> Run:
    """Run the command to its end; measure it and check the server's ledger."""
    server.reset()
    before = server.ledger().cpu_seconds
    env = {**os.environ, "CUSTOMERIO_SITE_ID": server.site_id,
           "CUSTOMERIO_API_KEY": server.api_key}
    command = [sys.executable, "-m", "cio_queue", "import", str(path), "--restart",
               "--base-url", server.track_url, "--rate-limit", f"{rate_limit:g}",
               "--progress-every", "15"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    # wait4() gives this child's own resource usage, its peak RSS (KiB on Linux) included.
    deadline = started + IMPORT_TIMEOUT
    while True:
        pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            process.kill()
            raise RuntimeError(f"the import did not end within {IMPORT_TIMEOUT:g} s")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    assert process.stdout is not None
    print(process.stdout.read(), end="")
    ledger = server.ledger()
    return Run(rate_limit=rate_limit, status=process.returncode, seconds=seconds,
               peak_rss_bytes=usage.ru_maxrss * 1024,
               cpu_seconds=usage.ru_utime + usage.ru_stime, delivered=ledger.events,
               distinct=ledger.distinct_events, without_id=ledger.without_id,
               requests=ledger.requests, server_cpu=ledger.cpu_seconds - before)


def report(runs: list[Run], events: int, size: int) -> bool:
    """Print one line per run; return whether each delivered every event exactly once."""
    print(f"\n{events:,} events, {size / 1e6:.0f} MB of JSON lines, {LATENCY * 1000:.0f} ms "
          "server latency, batch transport, 10 requests in flight")
    print(f"{'rate limit':>14}  {'exit':>4}  {'seconds':>8}  {'events/s':>9}  "
          f"{'peak RSS':>9}  {'CPU/event':>9}  {'requests':>8}  {'server CPU':>10}  "
          "delivered once")
    ok = True
    for run in runs:
        once = (run.status == 0 and run.delivered == run.distinct == events
                and run.without_id == 0)
        ok &= once
        limit = f"{run.rate_limit:g} req/s" if run.rate_limit else "none"
        print(f"{limit:>14}  {run.status:>4}  {run.seconds:>8.1f}  "
              f"{run.events_per_second:>9,.0f}  {run.peak_rss_bytes / 2**20:>6.0f} MiB  "
              f"{run.cpu_seconds / max(1, run.delivered) * 1e6:>6.0f} µs  "
              f"{run.requests:>8,}  {run.server_cpu:>9.1f}s  "
              + ("yes" if once else f"NO ({run.delivered:,} delivered, {run.distinct:,} "
                                    "distinct)"))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.import_file",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--rate-limit", type=float, action="append",
                        help="requests/s for a run, 0 for none (repeatable; default: "
                             f"{DEFAULT_RATE_LIMIT:g} and 0)")
    args = parser.parse_args(argv)
    limits = args.rate_limit or list(RATE_LIMITS)
    with tempfile.TemporaryDirectory() as directory, server_process() as server:
        server.configure(latency=LATENCY)
        path = Path(directory) / "events.jsonl"
        size = write_events(path, args.events)
        runs = [import_once(path, server, limit) for limit in limits]
    return 0 if report(runs, args.events, size) else 1


if __name__ == "__main__":
    sys.exit(main())
