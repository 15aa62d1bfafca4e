"""Every Python block of README.md runs as written, and mypy --strict accepts it.

The line before a block says what kind it is:

- ``<!-- recipe: NAME -->``: run by another test under its framework's server or worker
  (``tests/recipes.py`` loads it by name); here it is only type-checked, and a test that
  loads it must exist.
- ``<!-- fragment -->``: part of a program on purpose. It is type-checked as the body of
  ``async def fragment(cio: EventQueue)`` after ``FRAGMENT_PRELUDE``'s imports, never run.
- anything else: a whole program. It runs here in a subprocess (``RUN_TIMEOUT``) with the
  ``CUSTOMERIO_*`` variables pointing at the plugin's ``fake_track_api``, must exit 0
  without writing to stderr (where the library's warnings and errors would go), and every
  request the fake saw must have been accepted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pytest

from cio_queue.testing import FakeTrackAPI

ROOT: Final = Path(__file__).resolve().parent.parent
README: Final = ROOT / "README.md"
TESTS: Final = ROOT / "tests"
RUN_TIMEOUT: Final = 60.0
MYPY_TIMEOUT: Final = 300.0
FRAGMENT_PRELUDE: Final = """\
import asyncio
import logging

from cio_queue import *  # noqa: F403
from cio_queue.testing import FakeTrackAPI


async def fragment(cio: EventQueue) -> None:
"""
MYPY_RELAXED: Final = {
    # Celery ships no type information (its stubs are a separate project), so under
    # --strict its task decorator is untyped; nothing the recipe could change.
    "celery": "untyped-decorator",
}

_MARKER = re.compile(r"<!-- (?:recipe: (?P<recipe>[\w-]+)|(?P<fragment>fragment)) -->")


@dataclass(frozen=True)
class Block:
    """One ```python block of the README."""

    line: int  # the README line of its first line of code
    section: str
    kind: Literal["full", "fragment", "recipe"]
    recipe: str | None
    source: str

    @property
    def name(self) -> str:
        """A module name that says where the block is."""
        return f"readme_line_{self.line}"

    def module(self) -> tuple[str, int]:
        """The file mypy checks, and how many lines precede the block's code in it."""
        if self.kind == "fragment":
            return FRAGMENT_PRELUDE + textwrap.indent(self.source, "    "), \
                FRAGMENT_PRELUDE.count("\n")
        relaxed = MYPY_RELAXED.get(self.recipe or "")
        if relaxed:
            return f'# mypy: disable-error-code="{relaxed}"\n{self.source}', 1
        return self.source, 0


def readme_blocks() -> list[Block]:
    """Every ```python block of README.md, with its kind and section."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    section = ""
    index = 0
    while index < len(lines):
        text = lines[index]
        if text.startswith("## "):
            section = text[3:].strip()
        if text.strip() == "```python":
            indent = len(text) - len(text.lstrip())
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            code = "\n".join(line[indent:] for line in lines[index + 1:end]) + "\n"
            marker = _MARKER.fullmatch(lines[index - 1].strip())
            kind: Literal["full", "fragment", "recipe"] = (
                "full" if marker is None else "recipe" if marker["recipe"] else "fragment")
            blocks.append(Block(index + 2, section, kind, marker and marker["recipe"], code))
            index = end
        index += 1
    return blocks


BLOCKS: Final = readme_blocks()
FULL: Final = [block for block in BLOCKS if block.kind == "full"]


def test_each_recipe_is_run_by_a_test_and_every_kind_occurs() -> None:
    """A recipe block is loaded by name in some test; no block is left unchecked."""
    tests = "\n".join(path.read_text(encoding="utf-8") for path in TESTS.glob("test_*.py"))
    for block in BLOCKS:
        if block.kind == "recipe":
            call = re.compile(rf'(?:loaded_recipe|recipe_source)\(\s*"{block.recipe}"')
            assert call.search(tests), f"no test loads README recipe {block.recipe!r}"
    assert {block.kind for block in BLOCKS} == {"full", "fragment", "recipe"}


@pytest.mark.parametrize("block", FULL, ids=[block.name for block in FULL])
def test_a_whole_block_runs_as_written(block: Block, fake_track_api: FakeTrackAPI,
                                       tmp_path: Path) -> None:
    """The block, saved as a script, runs against the fake Track API and exits cleanly."""
    script = tmp_path / f"{block.name}.py"
    script.write_text(block.source, encoding="utf-8")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("CUSTOMERIO_")}
    env.update(CUSTOMERIO_SITE_ID=fake_track_api.site_id,
               CUSTOMERIO_API_KEY=fake_track_api.api_key,
               CUSTOMERIO_BASE_URL=fake_track_api.url)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    where = f"README.md line {block.line} ({block.section})"
    assert (result.returncode, result.stderr) == (0, ""), f"{where}:\n{result.stderr}"
    refused = [(r.method, r.path, r.status) for r in fake_track_api.log
               if not 200 <= r.status < 300]
    assert refused == [], where


def test_mypy_strict_accepts_every_block(tmp_path: Path) -> None:
    """mypy, with the project's strict settings, finds nothing wrong in any block."""
    offsets: dict[str, tuple[Block, int]] = {}
    for block in BLOCKS:
        text, offset = block.module()
        (tmp_path / f"{block.name}.py").write_text(text, encoding="utf-8")
        offsets[block.name] = (block, offset)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(ROOT / ".mypy_cache" / "readme"), "--no-pretty",
         "--no-error-summary", *sorted(str(path) for path in tmp_path.glob("*.py"))],
        cwd=ROOT, capture_output=True, text=True, timeout=MYPY_TIMEOUT, check=False)
    problems = [in_readme(text, offsets) for text in result.stdout.splitlines()
                if ": error: " in text]
    assert problems == [], "\n".join(problems)
    assert result.returncode == 0, result.stdout + result.stderr


def in_readme(message: str, offsets: dict[str, tuple[Block, int]]) -> str:
    """Turn ``readme_line_N.py:L: error: ...`` into the README's own line number."""
    found = re.match(r".*?(readme_line_\d+)\.py:(\d+): (.*)", message)
    if found is None:
        return message
    block, offset = offsets[found[1]]
    return f"README.md:{block.line + int(found[2]) - 1 - offset}: {found[3]}"
