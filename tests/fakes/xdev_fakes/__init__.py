"""Fake backends for tests (see ../sitecustomize.py): NumPy underneath, registered by name."""
from __future__ import annotations

# name -> module: what the registry entry of each fake points at
FAKES = {"toy": "xdev_fakes.toy", "cuda": "xdev_fakes.gpu"}


def install(names: str) -> None:
    """Register each comma-separated fake: the one edit to xdev/_registry.py a new backend makes
    (a ``_BACKENDS`` entry: module, pip extra, third-party packages), done at run time."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in FAKES]
    if unknown:
        raise ValueError(f"XDEV_TEST_FAKES: unknown fake(s) {unknown}; choose from {', '.join(FAKES)}")
    if not wanted:
        return
    from xdev import _registry

    for name in wanted:
        _registry._BACKENDS[name] = (FAKES[name], None, ())
    _registry.BACKEND_NAMES = tuple(_registry._BACKENDS)
