"""Backend fixture, hypothesis profiles and report hooks shared by the whole suite."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from availability import fold_skip, require
from xdev._registry import BACKEND_NAMES

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
