"""The benchmark suite, run end to end at its smallest sizes: a smoke test, not a timing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT = 180  # seconds; the smoke run takes about 20 s on two cores


def test_benchmark_suite_runs_and_checks_every_delivery(tmp_path: Path) -> None:
    """`python -m benchmarks --quick --smoke` exits 0 and writes its report and figures."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--smoke", "--output", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivery check: all" in result.stdout
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Every run delivered every operation exactly once" in report
    assert "## Goals" in report
    assert (tmp_path / "results.json").is_file()
    assert len(list(tmp_path.glob("fig*.png"))) == 10
