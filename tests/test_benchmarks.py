"""The benchmark suite's quick mode, run end to end: a smoke test, not a timing test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_TIMEOUT = 240  # seconds; the quick run takes about 30 s on two cores, 60 s loaded


def test_benchmark_suite_runs_and_checks_every_delivery(tmp_path: Path) -> None:
    """`python -m benchmarks --quick` exits 0 and writes its report and figures."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivery check: all" in result.stdout
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Every run delivered every operation exactly once" in report
    assert "## Goals" in report
    assert (tmp_path / "results.json").is_file()
    assert len(list(tmp_path.glob("fig*.png"))) == 10
