"""Registers the fake backends named in XDEV_TEST_FAKES in every Python process started with
this folder on PYTHONPATH: the test process, and the benchmark and test runs it starts.

``XDEV_TEST_FAKES=toy``: a backend "toy" (xdev_fakes.toy), added the way docs/architecture.md's
"Adding a backend" adds one. ``XDEV_TEST_FAKES=cuda``: the cuda backend replaced by a fake GPU
(xdev_fakes.gpu), so tests meet a machine that has one. ``XDEV_TEST_FAKES=opencl-gpu``: a fake
OpenCL GPU (xdev_fakes.opencl_gpu) in front of the real OpenCL devices, the default device as
NVIDIA's OpenCL GPU is on a GPU machine. Comma-separated to combine.
"""
import importlib.machinery
import importlib.util
import os
import sys

import xdev_fakes

xdev_fakes.install(os.environ.get("XDEV_TEST_FAKES", ""))

# Another sitecustomize further down the path (Debian's python ships one) still runs.
_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
