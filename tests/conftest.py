"""Backend fixture and hypothesis profiles shared by the whole suite."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from availability import require
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


@pytest.fixture(params=BACKEND_NAMES, scope="session")
def device(request):
    """Each registered backend's default device, skipped with its reason when unavailable."""
    return require(request.param)
