"""The suite's own machinery: skip reports for an absent backend fold into one line."""
from __future__ import annotations

import availability


def test_skips_for_an_absent_backend_fold_into_one_line():
    msg = "toy backend unavailable: a reason made up for this test"
    availability._unavailable.add(msg)
    try:
        a = availability.fold_skip(("tests/contract/test_a.py", 10, "Skipped: " + msg))
        b = availability.fold_skip(("tests/contract/test_b.py", 99, "Skipped: " + msg))
    finally:
        availability._unavailable.discard(msg)
    assert a == b == (availability.__file__, availability.require.__code__.co_firstlineno, "Skipped: " + msg)
    other = ("tests/contract/test_a.py", 3, "Skipped: the small family is GEMM-only")
    assert availability.fold_skip(other) == other  # any other skip stays where it was raised
