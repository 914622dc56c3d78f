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
  file would run it: it imports what it uses and guards what starts processes. It imports
  the xdev (and the packages) this test process imports, installed or from a checkout on
  PYTHONPATH.
- A block that imports an optional package that is not installed here (dask without the
  dask extra, torch) is skipped with the reason, as the rest of the suite skips an absent
  package; a missing module that is no known optional package (a typo) fails.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import xdev
from availability import backend_status, usable_backend
from child import child_env

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<lang>[^`\s]*)\s*$")
MARK = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->\s*$")
BACKENDS = ("numpy", "opencl", "cuda")
TIMEOUT_S = 300
# Packages a doc example may import that an install need not have, with what brings them; a
# block importing one that is absent is skipped. Any other absent module fails the block.
OPTIONAL = {
    "dask": 'pip install "xdev[dask]"', "distributed": 'pip install "xdev[dask]"',
    "dask_cuda": "pip install dask-cuda", "torch": "pip install torch",
    "cupy": 'pip install "xdev[cuda]"', "pyopencl": 'pip install "xdev[opencl]"',
    "matplotlib": 'pip install "xdev[bench]"', "rich": 'pip install "xdev[bench]"',
    "threadpoolctl": 'pip install "xdev[bench]"',
}
# xdev modules that import optional packages themselves.
XDEV_NEEDS = {"xdev.dask": ("dask", "distributed")}


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


def _imports(code: str) -> list[str]:
    """The absolute module names a block imports, in order."""
    names: list[str] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _absent_imports(block: Block) -> list[tuple[str, str]]:
    """(module, how to install it) for each optional package the block imports that is absent;
    fails on an absent module that is no known optional package."""
    absent: dict[str, str] = {}
    for name in _imports(block.code):
        for top in (name.split(".")[0], *XDEV_NEEDS.get(name, ())):
            if top in absent or importlib.util.find_spec(top) is not None:
                continue
            if top not in OPTIONAL:
                pytest.fail(f"{block.id} imports {top!r}, which is not installed and is no known optional "
                            f"package: a typo, or add it to OPTIONAL in {Path(__file__).name}")
            absent[top] = OPTIONAL[top]
    return list(absent.items())


def _reader_env(backend: str) -> dict[str, str]:
    """The environment of a reader's script run from an empty folder: it imports the xdev and
    the packages this process imports. PYTHONPATH's entries are made absolute (the child does
    not run from here), and a checkout this xdev was imported from without an install (the GPU
    scripts' PYTHONPATH=<checkout>:<site>, or pytest run from the repository root) is put first."""
    env = child_env(XDEV_BACKEND=backend)
    path = [os.path.abspath(p or os.curdir) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    home = Path(xdev.__file__).resolve().parents[1]
    if (home / "backends" / "__init__.py").is_file() and str(home) not in path:
        path.insert(0, str(home))
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def test_the_reader_env_imports_this_xdev_from_an_empty_folder(tmp_path):
    # As on the GPU machine: xdev from the checkout through PYTHONPATH, not installed.
    r = subprocess.run([sys.executable, "-c", "import xdev; print(xdev.__file__)"], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, env=_reader_env("numpy"))
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == Path(xdev.__file__).resolve()


def test_absent_optional_imports_skip_and_unknown_ones_fail():
    block = Block(ROOT / "README.md", 1, "python", "import numpy\nimport xdev.dask\nimport torch\n", None)
    absent = {m for m, _ in _absent_imports(block)}
    assert absent == {m for m in ("dask", "distributed", "torch") if importlib.util.find_spec(m) is None}
    typo = Block(ROOT / "README.md", 1, "python", "import nmupy_xdev_typo\n", None)
    with pytest.raises(pytest.fail.Exception, match="nmupy_xdev_typo"):
        _absent_imports(typo)


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
    absent = _absent_imports(block)
    if absent:
        pytest.skip(f"{block.id} imports " + ", ".join(f"{m} (not installed: {how})" for m, how in absent))
    script = tmp_path / "example.py"
    script.write_text(block.code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT_S,
                       cwd=tmp_path, env=_reader_env(backend))
    assert r.returncode == 0, (
        f"{block.id} failed under XDEV_BACKEND={backend} (exit {r.returncode}):\n{block.code}\n"
        f"--- stderr (end) ---\n{r.stderr[-3000:]}")
    # A block that succeeds but spills errors on the way out (a cluster closed under running
    # tasks) is a bad example too.
    noisy = [ln for ln in r.stderr.splitlines() if re.search(r"Traceback|Error\b|ERROR", ln)]
    assert not noisy, f"{block.id} under XDEV_BACKEND={backend} printed errors:\n{r.stderr[-3000:]}"
