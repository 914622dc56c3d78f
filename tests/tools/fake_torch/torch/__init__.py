"""A stand-in for PyTorch, enough for ``python -m xdev.bench --reference torch`` in tests.

The yardstick code path (import, device placement, numeric settings, timing, rows) runs
without the real, very large package; tests put this folder first on PYTHONPATH.
"""
from types import SimpleNamespace

import numpy as np

__version__ = "0.0+fake"
FAKE = True


class Tensor:
    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def to(self, device: str) -> "Tensor":
        assert device == "cpu", device
        return self


def from_numpy(a: np.ndarray) -> Tensor:
    return Tensor(a)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return Tensor(a.a @ b.a)


def _conv2d(x: Tensor, w: Tensor, b: Tensor | None = None, padding: int = 0) -> Tensor:
    import xdev

    return Tensor(xdev.conv2d(x.a, w.a, None if b is None else b.a, padding=padding, backend="numpy").numpy())


def get_num_threads() -> int:
    return 1


nn = SimpleNamespace(functional=SimpleNamespace(conv2d=_conv2d))
backends = SimpleNamespace(cpu=SimpleNamespace(get_cpu_capability=lambda: "AVX2"),
                           cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=True)),
                           cudnn=SimpleNamespace(allow_tf32=True, benchmark=False))
cuda = SimpleNamespace(is_available=lambda: False, synchronize=lambda device=None: None)
