"""Backend fixture and hypothesis profiles shared by the whole suite."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import xdev
from xdev._registry import BACKEND_NAMES, get_device

_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("ci", max_examples=40, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("XDEV_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Backends that must be available (CI sets XDEV_TEST_REQUIRE=opencl): their absence fails
# the run instead of skipping it, so a broken install cannot pass silently.
REQUIRED = {b.strip() for b in os.environ.get("XDEV_TEST_REQUIRE", "").split(",") if b.strip()}

_status_cache: dict[str, xdev.BackendStatus] = {}


def backend_status(name: str) -> xdev.BackendStatus:
    if not _status_cache:
        _status_cache.update(xdev.available_backends())
    return _status_cache[name]


def require(name: str):
    """The default device of backend `name`, or skip (fail if required) with the reason."""
    status = backend_status(name)
    if not status.available:
        msg = f"{name} backend unavailable: {status.reason}"
        if name in REQUIRED:
            pytest.fail(msg + " (required by XDEV_TEST_REQUIRE)")
        pytest.skip(msg)
    return get_device(name)


@pytest.fixture(params=BACKEND_NAMES, scope="session")
def device(request):
    """Each registered backend's default device, skipped with its reason when unavailable."""
    return require(request.param)
