"""Every Python code block of README.md and docs/*.md runs, as a script of its own, under
XDEV_BACKEND=numpy and XDEV_BACKEND=opencl: the docs cannot drift from the code.

The conventions (docs/testing.md):

- Every fenced block names its language. ``python`` blocks are run; ``sh``/``bash``
  (commands), ``text`` (output, listings, diagrams), ``yaml`` and the rest are not.
- A comment on the line right before a ``python`` fence changes that:
  ``<!-- doc-test: needs cuda, dask_cuda -->``: run only where each is there (a backend
  name: that backend is available; anything else: a module that imports), else skipped
  with the reason; ``<!-- doc-test: skip: REASON -->``: never run (a block that needs a
  cluster or files the reader has), only compiled.
- A block runs in a fresh interpreter from an empty folder, as a reader who pastes it into a
  file would run it: it imports what it uses and guards what starts processes.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from availability import backend_status, usable_backend
from child import child_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<lang>[^`\s]*)\s*$")
MARK = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
BACKENDS = ("numpy", "opencl", "cuda")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mark: str | None  # the doc-test comment's body, if any

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file (indented fences too, dedented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m.group("fence"), i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{start + 1}: a code fence that is never closed")
        mark = MARK.match(lines[start - 1]) if start else None
        code = textwrap.dedent("\n".join(lines[start + 1 : i])) + "\n"
        out.append(Block(path, start + 1, m.group("lang").lower(), code, mark.group("body") if mark else None))
        i += 1
    return out


ALL = [b for p in DOCS for b in blocks(p)]
PYTHON = [b for b in ALL if b.lang == "python"]


def _needs(mark: str | None) -> list[str]:
    if mark is None or not mark.startswith("needs "):
        return []
    return [n.strip() for n in mark[len("needs "):].split(",") if n.strip()]


def test_every_fence_names_its_language_and_every_mark_is_known():
    unlabelled = [b.id for b in ALL if not b.lang]
    assert not unlabelled, (
        f"code blocks without a language: {unlabelled}; label each fence (```python runs in "
        f"tests/tools/test_docs.py; ```sh, ```text, ```yaml do not)")
    for b in ALL:
        if b.mark is None:
            continue
        assert b.lang == "python", f"{b.id}: a doc-test comment before a {b.lang!r} block (only python blocks run)"
        ok = (b.mark.startswith("skip: ") and b.mark[6:].strip()) or _needs(b.mark)
        assert ok, (f"{b.id}: unknown doc-test comment {b.mark!r}; use <!-- doc-test: needs NAME, ... --> "
                    f"or <!-- doc-test: skip: REASON -->")


def test_there_are_python_examples_to_run():
    # The parser found the blocks (a change of fence style must not empty the test).
    assert len(PYTHON) >= 8 and any(b.path.name == "README.md" for b in PYTHON)


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_block_compiles(block):
    compile(block.code, block.id, "exec")


def _missing(name: str) -> str | None:
    """Why `name` (a backend, else a module) is not there, or None."""
    if name in BACKENDS:
        st = backend_status(name)
        return None if st.available else f"the {name} backend is unavailable: {st.reason}"
    return None if importlib.util.find_spec(name) is not None else f"module {name!r} is not installed"


@pytest.mark.parametrize("backend", ["numpy", "opencl"])
@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_block_runs(block, backend, tmp_path):
    if (block.mark or "").startswith("skip: "):
        pytest.skip(f"{block.id} is marked not to run: {block.mark[6:].strip()}")
    usable_backend(backend)  # skips (or fails, where XDEV_TEST_REQUIRE names it) when unavailable
    for name in _needs(block.mark):
        why = _missing(name)
        if why is not None:
            pytest.skip(f"{block.id} needs {name}: {why}")
    script = tmp_path / "example.py"
    script.write_text(block.code)
    env = child_env(XDEV_BACKEND=backend)
    env.pop("PYTHONPATH", None)  # the installed xdev, as a reader has it
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT_S,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, (
        f"{block.id} failed under XDEV_BACKEND={backend} (exit {r.returncode}):\n{block.code}\n"
        f"--- stderr (end) ---\n{r.stderr[-3000:]}")
    # A block that succeeds but spills errors on the way out (a cluster closed under running
    # tasks) is a bad example too.
    noisy = [ln for ln in r.stderr.splitlines() if re.search(r"Traceback|Error\b|ERROR", ln)]
    assert not noisy, f"{block.id} under XDEV_BACKEND={backend} printed errors:\n{r.stderr[-3000:]}"
