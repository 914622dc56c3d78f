"""The layering rule of docs/architecture.md, checked on the source: no import cycle, and
imports point one way (core -> contract <- backends; nothing imports the benchmark).

Run ``python tests/tools/test_layers.py`` to print the module graph's layers and cycles.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Source folder -> package name (setuptools maps backends/ to xdev.backends).
PACKAGES = {"xdev": ROOT / "xdev", "xdev.backends": ROOT / "backends"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(mods: dict[str, Path], type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the xdev modules it imports, at any depth of the file (late imports count);
    imports under ``if TYPE_CHECKING:`` only with ``type_checking``."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if not type_checking and _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                # `from pkg import sub` imports the submodule when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(mod: str) -> str:
    if mod == "xdev.contract" or mod.startswith("xdev.contract."):
        return "contract"
    if mod == "xdev.backends":
        return "backends"
    if mod.startswith("xdev.backends."):
        return "backend:" + mod.split(".")[2]
    if mod == "xdev.bench" or mod.startswith("xdev.bench."):
        return "bench"
    return "core"


def violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        src = layer(mod)
        for dep in sorted(deps):
            dst = layer(dep)
            if src == "contract" and dst != "contract":
                bad.append(f"{mod} -> {dep}: the contract imports only the contract")
            elif src.startswith("backend:") and dst not in ("contract", src):
                bad.append(f"{mod} -> {dep}: a backend imports only the contract and itself")
            elif src == "core" and dst.startswith("backend"):
                bad.append(f"{mod} -> {dep}: the core reaches backends through xdev._registry only")
            elif dst == "bench" and src != "bench":
                bad.append(f"{mod} -> {dep}: nothing imports the benchmark")
    return bad


def environ_readers(mods: dict[str, Path]) -> list[str]:
    """Modules that touch os.environ / os.getenv / os.putenv (only contract.env may)."""
    out = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv")
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):
                out.append(name)
                break
    return sorted(out)


def test_no_import_cycle():
    graph = imports(modules())
    assert "xdev._ops" in graph and "xdev.contract" in graph["xdev._ops"]  # the scan sees imports
    assert cycles(graph) == []


def backend_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles among the modules of one backend, annotations-only imports included: inside a
    backend the device module is on top, its kernels below, helpers at the bottom."""
    out = []
    for name in sorted({layer(m) for m in graph if layer(m).startswith("backend:")}):
        own = {m for m in graph if layer(m) == name}
        out += cycles({m: graph[m] & own for m in own})
    return out


def test_no_circle_inside_a_backend():
    graph = imports(modules(), type_checking=True)
    assert "xdev.backends.opencl.protocol" in graph["xdev.backends.opencl.gemm"]  # the scan sees them
    assert backend_cycles(graph) == []


def test_imports_point_one_way():
    assert violations(imports(modules())) == []


def test_the_checks_catch_what_they_forbid():
    graph = {"xdev._array": {"xdev._ops"}, "xdev._ops": {"xdev._array", "xdev.backends.numpy.device"},
             "xdev.contract.shapes": {"xdev._config"}, "xdev.backends.opencl.tune": {"xdev", "xdev.backends.cuda"},
             "xdev.info": {"xdev.bench.machine"}, "xdev._config": set(), "xdev": set(),
             "xdev.backends.cuda": set(), "xdev.backends.numpy.device": set(), "xdev.bench.machine": set()}
    assert cycles(graph) == [["xdev._array", "xdev._ops"]]
    assert len(violations(graph)) == 5


def test_annotation_only_imports_count_inside_a_backend(tmp_path):
    (tmp_path / "device.py").write_text("from . import gemm\n")
    (tmp_path / "gemm.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from .device import Dev\n")
    (tmp_path / "conv.py").write_text("def f():\n    from .device import Dev\n")  # a late import
    mods = {f"xdev.backends.x.{n}": tmp_path / f"{n}.py" for n in ("device", "gemm", "conv")}
    assert backend_cycles(imports(mods)) == []
    assert backend_cycles(imports(mods, type_checking=True)) == [["xdev.backends.x.device", "xdev.backends.x.gemm"]]
    (tmp_path / "device.py").write_text("from . import conv\n")
    assert backend_cycles(imports(mods)) == [["xdev.backends.x.conv", "xdev.backends.x.device"]]


def test_only_the_env_module_reads_the_environment():
    assert environ_readers(modules()) == ["xdev.contract.env"]


if __name__ == "__main__":
    g = imports(modules())
    for m in sorted(g):
        print(f"{layer(m):16s} {m:36s} -> {', '.join(sorted(g[m])) or '-'}")
    cyc, bad, inner = cycles(g), violations(g), backend_cycles(imports(modules(), type_checking=True))
    print(f"\n{len(g)} modules; import cycles: {cyc or 'none'}; layer violations: {bad or 'none'}; "
          f"cycles inside a backend (annotations included): {inner or 'none'}")
    sys.exit(1 if cyc or bad or inner else 0)
