"""A stand-in for a device's prefetch stager that records which of its methods ran."""
from __future__ import annotations

from typing import Any


class SpyStager:
    """Wraps ``inner`` (a device's stager); each call of a method in ``names`` is appended to
    ``calls`` before it runs."""

    def __init__(self, inner: Any, names: tuple[str, ...], calls: list[str]) -> None:
        self.inner, self.names, self.calls = inner, names, calls

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if name not in self.names:
            return fn

        def recorded(*a: Any) -> Any:
            self.calls.append(name)
            return fn(*a)
        return recorded
