"""Fakes for the CUDA backend's tests that need no GPU: a cuDNN frontend whose engines and timings
come from a table, and NumPy arrays that answer ``.data.ptr`` as CuPy arrays do."""
from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np

NOTES = ["TENSOR_CORE", "DOWN_CONVERT_INPUTS", "REDUCED_PRECISION_REDUCTION", "FFT", "NONDETERMINISTIC",
         "WINOGRAD", "WINOGRAD_TILE_4x4", "WINOGRAD_TILE_6x6", "WINOGRAD_TILE_13x13"]


# ==== a fake cuDNN frontend ========================================================================
class FakeTensor:
    def __init__(self, graph, name, dim=None, stride=None):
        self.graph, self.name, self.dim, self.stride = graph, name, dim, stride
        self.uid = len(graph.tensors) + 100
        graph.tensors.append(self)

    def set_output(self, v):
        return self

    def set_dim(self, d):
        self.dim = d
        return self

    def set_stride(self, s):
        self.stride = s
        return self

    def set_data_type(self, d):
        return self

    def get_uid(self):
        return self.uid


class FakeGraph:
    """Records what xdev asks for; engine configs come from FakeFrontend.engines(graph)."""

    def __init__(self, fe, kw):
        self.fe, self.kw, self.tensors, self.ops = fe, kw, [], []
        self.configs, self.barred, self.built = [], set(), []
        self.executed = []

    def tensor(self, name, dim, stride, data_type):
        return FakeTensor(self, name, dim, stride)

    def conv_fprop(self, image, weight, **kw):
        self.ops.append("conv")
        self.conv_kw = kw
        return FakeTensor(self, "Y")

    def bias(self, name, input, bias):
        self.ops.append("bias")
        return FakeTensor(self, "YB")

    def validate(self):
        pass

    def build_operation_graph(self):
        pass

    def create_execution_plans(self, modes):
        assert modes == ["A", "FALLBACK"]
        self.configs = list(self.fe.engines(self))

    def deselect_numeric_notes(self, notes):
        for i, (_name, n, *_rest) in enumerate(self.configs):
            if set(n) & set(notes):
                self.barred.add(i)

    def get_execution_plan_count(self):
        return len(self.configs)

    def build_plan_at_index(self, i):
        if i in self.barred:
            raise RuntimeError("Deselecting execution plan")
        if self.configs[i][0].startswith("broken"):
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")
        self.built.append(i)
        self.fe.builds.append((self.layout, self.kind, self.configs[i][0]))

    def get_plan_name_at_index(self, i):
        return self.configs[i][0]

    def get_workspace_size_plan_at_index(self, i):
        return 1000 + i

    def _execute_plan_at_index(self, pack, ws, index, handle):
        self.executed.append((dict(pack), ws, index))
        self.fe.log.append((dict(pack), ws, index))

    @property
    def layout(self):
        x = self.tensors[0]
        return "nhwc" if x.stride[1] == 1 and x.dim[1] != 1 else "nchw"

    @property
    def kind(self):
        return "fused" if "bias" in self.ops else "conv"


class FakeFrontend:
    data_type = SimpleNamespace(HALF="half", FLOAT="float", DOUBLE="double")
    heur_mode = SimpleNamespace(A="A", FALLBACK="FALLBACK")
    numerical_note = SimpleNamespace(**{n: n for n in NOTES})

    def __init__(self, table):
        """table: {(layout, kind): [(engine name, notes, seconds per call), ...]} in heuristic order."""
        self.table, self.builds, self.graphs, self.log = table, [], [], []  # log: executions in order

    def pygraph(self, **kw):
        g = FakeGraph(self, kw)
        self.graphs.append(g)
        return g

    def engines(self, g):
        return self.table.get((g.layout, g.kind), [])


# ==== CuPy-like arrays in host memory ================================================================

class FA(np.ndarray):
    """A NumPy array that answers ``.data.ptr`` as a CuPy array does."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.__array_interface__["data"][0])


def as_fa(a):
    return np.asarray(a).view(FA)


def raw_view(ptr, dims, strides, dtype):
    dtype = np.dtype(dtype)
    span = 1 + sum((d - 1) * s for d, s in zip(dims, strides))
    flat = np.frombuffer((ctypes.c_char * (span * dtype.itemsize)).from_address(ptr), dtype=dtype, count=span)
    return np.lib.stride_tricks.as_strided(flat, dims, [s * dtype.itemsize for s in strides])
