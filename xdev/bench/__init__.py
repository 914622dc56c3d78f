"""``python -m xdev.bench``: matmul, VGG-16 convolutions and transfers on every backend.

Method (docs/bench.md): kernels are built and warmed up first, with build time reported
apart; device work is timed with device events (CUDA events, OpenCL profiling markers) or the
host clock (NumPy); each result is
the median over repeats with the interquartile range as its spread.
"""
from .cli import main

__all__ = ["main"]
