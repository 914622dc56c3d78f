"""docs/architecture.md against the tree: every module and kernel file it names exists, and
every module of the core (xdev/*.py) and of the contract (xdev/contract/*.py) is named."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
# "Adding a backend" describes a backend that does not exist.
HYPOTHETICAL = ("backends/vulkan/", "test_vulkan.py")
SOURCE = re.compile(r"[\w./-]*\w\.(?:py|cl|cuh|cu)\b")


def named(text: str) -> set[str]:
    """The file names and paths the page mentions (prose, tables and diagrams alike)."""
    return {m for m in SOURCE.findall(text) if not any(h in m for h in HYPOTHETICAL)}


def files_by_name() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for folder in ("xdev", "backends"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".cl", ".cu", ".cuh"):
                out.setdefault(path.name, []).append(path)
    return out


def missing(text: str) -> list[str]:
    """What the page names that is not in the tree: a path must exist from the repository
    root; a bare file name somewhere in xdev/ or backends/."""
    by_name = files_by_name()
    bad = []
    for m in sorted(named(text)):
        if "/" in m:
            if not (ROOT / m).is_file():
                bad.append(m)
        elif m not in by_name:
            bad.append(m)
    return bad


def unnamed(text: str) -> list[str]:
    """Modules of the core and the contract the page does not name."""
    mentioned = {Path(m).name for m in named(text)} | named(text)
    out = []
    for path in sorted((ROOT / "xdev").glob("*.py")) + sorted((ROOT / "xdev" / "contract").glob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" and path.parent.name == "contract":
            continue  # the package's re-exports; its modules are what counts
        if path.name not in mentioned and rel not in mentioned:
            out.append(rel)
    return out


def test_every_module_the_page_names_exists():
    text = DOC.read_text()
    assert "_ops.py" in named(text) and "backends/opencl/protocol.py" in named(text)  # the scan sees names
    assert missing(text) == []


def test_every_core_and_contract_module_is_named():
    assert unnamed(DOC.read_text()) == []


def test_the_checks_catch_what_they_forbid():
    assert missing("`xdev/_gone.py`, `gone_kernel.cl`, `backends/cuda/launch.py`, `launch.py`") == [
        "gone_kernel.cl", "xdev/_gone.py"]
    assert "xdev/_prefetch.py" in unnamed("only `_ops.py` here")
    assert missing("backends/vulkan/device.py, tests/backends/test_vulkan.py") == []
