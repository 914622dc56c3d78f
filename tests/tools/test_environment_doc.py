"""docs/environment.md against the code: every XDEV_* variable the library reads (they are
all named in xdev/contract/env.py) and every one the test suite's own modules read has a
row in the page's table, and the table has no row for a variable nothing reads."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "environment.md"
ENV = ROOT / "xdev" / "contract" / "env.py"
NAME = re.compile(r"^XDEV_[A-Z0-9_]+$")
# The suite's configuration, not the tests themselves (those set made-up XDEV_TEST_* names).
SUITE = [p for p in (ROOT / "tests").glob("*.py")] + list((ROOT / "tests" / "fakes").rglob("*.py"))


def library_names(source: str) -> set[str]:
    """The XDEV_* names env.py holds as string constants (it reads each through one of them)."""
    return {n.value for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and NAME.match(n.value)}


def read_names(source: str) -> set[str]:
    """XDEV_* names a module reads: os.environ.get / os.getenv / os.environ[...] with the name as a literal."""
    out = set()
    for n in ast.walk(ast.parse(source)):
        arg = None
        if isinstance(n, ast.Call) and n.args and (
                (isinstance(n.func, ast.Attribute) and n.func.attr in ("get", "getenv")
                 and ast.unparse(n.func.value) in ("os.environ", "os"))):
            arg = n.args[0]
        elif isinstance(n, ast.Subscript) and ast.unparse(n.value) == "os.environ" and isinstance(n.ctx, ast.Load):
            arg = n.slice
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and NAME.match(arg.value):
            out.add(arg.value)
    return out


def documented(page: str) -> set[str]:
    """The XDEV_* names that open a row of the page's tables (| `XDEV_X` | ...)."""
    return set(re.findall(r"^\| `(XDEV_[A-Z0-9_]+)` \|", page, re.M))


def test_every_variable_the_library_reads_is_documented():
    names = library_names(ENV.read_text())
    assert "XDEV_BACKEND" in names and "XDEV_OPENCL_TF32" in names  # the scan sees them
    missing = sorted(names - documented(PAGE.read_text()))
    assert not missing, f"xdev/contract/env.py reads {missing}: add a row to docs/environment.md"


def test_every_variable_the_test_suite_reads_is_documented():
    names = set().union(*(read_names(p.read_text()) for p in SUITE))
    assert "XDEV_TEST_REQUIRE" in names  # the scan sees them
    missing = sorted(names - documented(PAGE.read_text()))
    assert not missing, f"the test suite reads {missing}: add a row to docs/environment.md"


def test_no_row_for_a_variable_nothing_reads():
    read = library_names(ENV.read_text()).union(*(read_names(p.read_text()) for p in SUITE))
    stale = sorted(documented(PAGE.read_text()) - read)
    assert not stale, f"docs/environment.md documents {stale}, which neither xdev nor the test suite reads"


def test_the_checks_catch_what_they_forbid():
    assert library_names('A = "XDEV_X"\nB = "not XDEV_Y"\nC = "XDEV_Z"') == {"XDEV_X", "XDEV_Z"}
    src = ('import os\nos.environ.get("XDEV_A", "")\nos.getenv("XDEV_B")\nos.environ["XDEV_C"]\n'
           'os.environ["XDEV_D"] = "1"\nd.get("XDEV_E")\nos.environ.get(name)\n')
    assert read_names(src) == {"XDEV_A", "XDEV_B", "XDEV_C"}
    page = "| `XDEV_A` | x |\n| `XDEV_B` | y |\ntext `XDEV_C` here\n| `PYOPENCL_CTX` | z |\n"
    assert documented(page) == {"XDEV_A", "XDEV_B"}
