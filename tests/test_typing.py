"""The typed API as users' checkers see it: mypy and pyright on the files in tests/typing.

``*_pass.py`` files must check cleanly. In ``*_fail.py`` files each line that ends in
``# E: code ...`` must report exactly those errors (mypy error codes such as
``typeddict-item``, pyright rules such as ``reportArgumentType``), and no other line any.
The files are type-checked, never run or collected (as stamina's ``tests/typing``); the
project's own mypy run leaves them out (``exclude`` in pyproject.toml). The README's
"Typed events" example is checked as a pass file too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from mypy import api as mypy_api

from .test_typed_events import readme_example

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
MARKED = sorted(TYPING.glob("*_pass.py")) + sorted(TYPING.glob("*_fail.py"))
PYRIGHT_TIMEOUT = 120.0

Errors = dict[tuple[str, int], set[str]]
"""(file name, line) to the set of error codes reported there."""

_MARK = re.compile(r"#\s*E:(?P<codes>(?:\s+[\w-]+)+)\s*$")
_MYPY_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")


def expected(checker: str) -> Errors:
    """The errors the files mark for ``checker`` (pyright's rules start with "report")."""
    found: Errors = defaultdict(set)
    for path in MARKED:
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            mark = _MARK.search(text)
            if mark is None:
                continue
            for code in mark["codes"].split():
                if code.startswith("report") == (checker == "pyright"):
                    found[path.name, number].add(code)
    return dict(found)


def test_every_fail_file_marks_errors_for_both_checkers() -> None:
    """A fail file without marks would pass vacuously; a pass file with one is a mistake."""
    mypy_lines, pyright_lines = set(expected("mypy")), set(expected("pyright"))
    for path in MARKED:
        marked = {line for name, line in mypy_lines | pyright_lines if name == path.name}
        assert bool(marked) == path.name.endswith("_fail.py"), path.name
    assert mypy_lines == pyright_lines, "each marked line names errors for both checkers"


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The marked files and the README's example, written out as a pass file."""
    example = tmp_path_factory.mktemp("readme") / "readme_typed_events_pass.py"
    example.write_text(readme_example())
    return [*MARKED, example]


def test_mypy_reports_exactly_the_marked_errors(checked: list[Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """mypy --strict (the project's settings) finds each marked error and nothing else."""
    monkeypatch.setenv("MYPYPATH", str(TYPING))  # for the shared ``workspace`` module
    monkeypatch.chdir(ROOT)
    cache = ROOT / ".mypy_cache" / "typing-tests"  # kept between runs: 20 s cold, 2 s warm
    stdout, stderr, _ = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache),
        "--no-pretty", "--no-error-summary", "--show-error-codes",
        *(str(path) for path in checked)])
    reported: Errors = defaultdict(set)
    for text in stdout.splitlines():
        line = _MYPY_LINE.match(text)
        if line is not None:
            reported[Path(line["file"]).name, int(line["line"])].add(line["code"])
        else:
            assert ": note: " in text, f"unexpected mypy output: {text}"
    assert not stderr, stderr
    assert dict(reported) == expected("mypy")


def test_pyright_reports_exactly_the_marked_errors(checked: list[Path]) -> None:
    """pyright (strict, from each file's comment) finds each marked error and nothing else."""
    pytest.importorskip("pyright", reason="pyright comes with the dev extra")
    # The wheel's bundled pyright, run by its bundled node: nothing to download.
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYRIGHT_PYTHON_FORCE_VERSION", "PYRIGHT_PYTHON_PYLANCE_VERSION")}
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable,
         *(str(path) for path in checked)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=PYRIGHT_TIMEOUT,
        check=False)
    assert result.returncode in (0, 1), result.stderr or result.stdout
    reported: Errors = defaultdict(set)
    for diagnostic in json.loads(result.stdout)["generalDiagnostics"]:
        if diagnostic["severity"] == "error":
            key = (Path(diagnostic["file"]).name, diagnostic["range"]["start"]["line"] + 1)
            reported[key].add(diagnostic.get("rule", diagnostic["message"]))
    assert dict(reported) == expected("pyright")
