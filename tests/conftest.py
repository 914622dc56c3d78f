"""Backend fixture, hypothesis profiles and report hooks shared by the whole suite."""
from __future__ import annotations

import os

# PoCL compiles a kernel's work-group function once per local size unless told to build one
# for any size; the suite launches its kernels on hundreds of shapes, so that build is most of
# a cold run's CPU time (1,054 tests on 2 cores: 341 s -> 266 s). Set before any PoCL loads,
# here and in every child process. PoCL's default (specialized) code is still tested: .ci/run
# runs tests/contract and tests/backends/test_opencl.py again with the variable at 1.
os.environ.setdefault("POCL_WORK_GROUP_SPECIALIZATION", "0")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from availability import fold_skip, require  # noqa: E402
from xdev._registry import BACKEND_NAMES  # noqa: E402

_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("ci", max_examples=40, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
settings.load_profile(os.environ.get("XDEV_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# XDEV_TEST_BACKENDS=a,b: the `device` fixture covers only these registered backends.
_ONLY = {b.strip() for b in os.environ.get("XDEV_TEST_BACKENDS", "").split(",") if b.strip()}


@pytest.fixture(params=[b for b in BACKEND_NAMES if not _ONLY or b in _ONLY], scope="session")
def device(request):
    """Each registered backend's default device, skipped with its reason when unavailable."""
    return require(request.param)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # One -ra line per absent backend, with its count, not one per test (availability.fold_skip).
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.longrepr = fold_skip(report.longrepr)
