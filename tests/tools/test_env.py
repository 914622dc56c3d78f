"""xdev.contract.env's helpers that change the environment (not only read it)."""
from __future__ import annotations

import pytest


def test_env_for_children_sets_removes_and_restores(monkeypatch):
    import os

    from xdev.contract import env

    monkeypatch.setenv("XDEV_TEST_A", "a")
    monkeypatch.delenv("XDEV_TEST_B", raising=False)
    monkeypatch.setenv("XDEV_TEST_C", "c")
    with pytest.raises(RuntimeError):  # restored on an error too
        with env.for_children({"XDEV_TEST_A": None, "XDEV_TEST_B": "b"}, restore=["XDEV_TEST_C"]):
            assert "XDEV_TEST_A" not in os.environ and os.environ["XDEV_TEST_B"] == "b"
            os.environ["XDEV_TEST_C"] = "changed inside"  # as a nanny's copy of its environment
            raise RuntimeError
    assert (os.environ.get("XDEV_TEST_A"), os.environ.get("XDEV_TEST_B"), os.environ.get("XDEV_TEST_C")) == \
        ("a", None, "c")
