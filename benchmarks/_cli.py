"""``python -m benchmarks``: run the suite, write the report and figures, check delivery.

Exit status: 0 when every run delivered every operation exactly once; 1 when any run
lost, duplicated or mis-settled an operation or crashed; 2 with ``--strict-goals`` when
the checks passed but a goal failed. A goal that fails is reported, never hidden.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Final

from ._enqueue import profile_enqueue
from ._report import Machine, goals, render_markdown, summary, to_json
from ._sizes import FULL, QUICK, SMOKE, Sizes
from ._suite import TRANSPORTS, run_suite

RESULTS: Final = Path(__file__).parent / "results"
"""Where reports go: the full run's at the top (committed when refreshed for the README),
quick and smoke runs in ignored subfolders."""
REPORT: Final = "report.md"
PROFILE_TOP: Final = 25
DATA: Final = "results.json"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure cio-queue beside the raw limit and its peers, against a "
                    "loopback server in its own process, and write a markdown report with "
                    "figures. Run from the repository root.")
    parser.add_argument("--quick", action="store_true",
                        help="every measurement at reduced sizes (under a minute on 2 cores)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest sizes: proves the suite runs, in about 10 s")
    parser.add_argument("--output", type=Path, default=None,
                        help="directory for the report and figures (default: "
                             "benchmarks/results, or its quick/ or smoke/ subfolder)")
    parser.add_argument("--strict-goals", action="store_true",
                        help="exit 2 when a goal fails (delivery failures always exit 1)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one enqueue loop per transport and write the top "
                             f"{PROFILE_TOP} functions to profile-enqueue-<transport>.txt")
    return parser.parse_args(argv)


def _sizes(args: argparse.Namespace) -> Sizes:
    if args.smoke:
        return SMOKE
    return QUICK if args.quick else FULL


def main(argv: list[str] | None = None) -> int:
    """Run the suite; return the exit status."""
    args = _parse(argv)
    sizes = _sizes(args)
    output: Path = args.output or (RESULTS if sizes is FULL else RESULTS / sizes.name)
    output.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])])

    def emit(line: str) -> None:
        print(line, flush=True)

    machine = Machine.describe()
    emit(f"cio-queue benchmarks, {sizes.name} mode, {machine.date}: {machine.cpu}, "
         f"{machine.cores} cores, {machine.python}, load {machine.load_at_start}")
    results = run_suite(sizes, emit)

    from ._plots import draw_all  # noqa: PLC0415 - matplotlib loads only once it is needed

    pngs = draw_all(results, output)
    report, data = output / REPORT, output / DATA
    report.write_text(render_markdown(results, machine, command, pngs), encoding="utf-8")
    data.write_text(to_json(results, machine, command), encoding="utf-8")
    written = [report, data, *(output / name for name in pngs.values())]
    if args.profile:
        for transport in TRANSPORTS:
            path = output / f"profile-enqueue-{transport}.txt"
            path.write_text(profile_enqueue(sizes.enqueue_calls, sizes.enqueue_warmup,
                                            transport, PROFILE_TOP), encoding="utf-8")
            written.append(path)
    for line in summary(results, written):
        emit(line)
    if results.problems:
        return 1
    if args.strict_goals and any(goal.passed is False for goal in goals(results)):
        return 2
    return 0
