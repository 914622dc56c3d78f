"""Which backends the suite can run on here, and what to do when one is missing.

Imported by conftest.py (the ``device`` fixture) and by tests that need one backend.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import xdev
from xdev._registry import get_device

# Backends that must be available (CI sets XDEV_TEST_REQUIRE=opencl): their absence fails
# the run instead of skipping it, so a broken install cannot pass silently.
REQUIRED = {b.strip() for b in os.environ.get("XDEV_TEST_REQUIRE", "").split(",") if b.strip()}

_status_cache: dict[str, xdev.BackendStatus] = {}


def backend_status(name: str) -> xdev.BackendStatus:
    if not _status_cache:
        _status_cache.update(xdev.available_backends())
    return _status_cache[name]


# The skip reasons require() gave: conftest.py reports them all at require's line (fold_skip).
_unavailable: set[str] = set()


def require(name: str):
    """The default device of backend `name`, or skip (fail if required) with the reason."""
    status = backend_status(name)
    if not status.available:
        msg = f"{name} backend unavailable: {status.reason}"
        if name in REQUIRED:
            pytest.fail(msg + " (required by XDEV_TEST_REQUIRE)")
        _unavailable.add(msg)
        pytest.skip(msg)
    return get_device(name)


def fold_skip(longrepr):
    """A skip report's (path, line, reason), placed at require() when require gave the reason.

    pytest files a skip raised in a fixture (the session-scoped ``device``) under each test's
    own line, so ``-ra`` printed one line per test function for the same absent backend (~45
    "cupy is not installed" lines without a GPU); at one place they fold into one line with
    the count."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = longrepr[2]
        if reason.removeprefix("Skipped: ") in _unavailable:
            return (__file__, require.__code__.co_firstlineno, reason)
    return longrepr


def usable_backend(name: str) -> str:
    """`name`, after skipping (or failing, if required) when that backend is unavailable here;
    numpy is always there."""
    if name != "numpy":
        require(name)
    return name


def cpu_devices(name: str) -> list[str]:
    """Keys of backend `name`'s devices that are CPUs, in the backend's order (opened to ask).

    A test that means "OpenCL on the CPU" names one of these: ``opencl`` alone selects a GPU
    first where the machine has one (NVIDIA's OpenCL on a GPU machine)."""
    status = backend_status(name)
    keys = []
    for key in status.devices if status.available else ():
        try:
            if get_device(key).is_cpu:
                keys.append(key)
        except (xdev.BackendUnavailable, ValueError):  # listed but not openable here: not a CPU to use
            continue
    return keys


def copy_proof_verdicts(cache_dir) -> None:
    """Copy this process's OpenCL proof verdicts into ``cache_dir``/opencl-proof, so that a
    private XDEV_CACHE_DIR does not prove the devices again (tens of seconds each). The
    verdict files only: another test worker may be writing one (its temporary file and lock
    file are no verdicts)."""
    import shutil

    from xdev.contract import env

    src = env.cache_dir() / "opencl-proof"
    if src.is_dir():
        dst = Path(cache_dir) / "opencl-proof"
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.json"):
            shutil.copy2(f, dst / f.name)
