"""cuDNN's gradients (dgrad, wgrad) without a GPU: the plan search, layouts and numeric rules of
``CudnnConv.backward`` on test_cuda_cudnn_conv.py's fake CuPy, with a fake frontend that computes
the gradients through the pointers and strides it is given (float64 loop reference).
"""
from __future__ import annotations

import numpy as np
import pytest

from reference import conv2d_backward_ref
from strategies import values
from cuda_fakes import FakeTensor
from cuda_fakes import as_fa as _fa
from cuda_fakes import raw_view as _raw_view
from test_cuda_cudnn_conv import ComputingGraph, _params, fake_cuda, padded  # noqa: F401 (fake_cuda: a fixture)
from tolerance import assert_agrees, backward_K


class GradGraph(ComputingGraph):
    """Also builds conv_dgrad / conv_wgrad graphs and computes them by the reference."""

    def conv_dgrad(self, loss, filter, **kw):
        self.ops.append("dgrad")
        self.conv_kw = kw
        return FakeTensor(self, "DX")

    def conv_wgrad(self, image, loss, **kw):
        self.ops.append("wgrad")
        self.conv_kw = kw
        return FakeTensor(self, "DW")

    @property
    def kind(self):
        return next((op for op in ("dgrad", "wgrad") if op in self.ops), super().kind)

    def _conv(self, pack, index):
        if self.kind not in ("dgrad", "wgrad"):
            return super()._conv(pack, index)
        assert index in self.built, "executing a plan that was never built"
        self.fe.last_seconds = self.configs[index][2]
        dt = {"half": np.float16, "float": np.float32, "double": np.float64}[self.kw["io_data_type"]]
        t = {x.name: x for x in self.tensors}
        view = {n: _raw_view(pack[x.uid], x.dim, x.stride, dt) for n, x in t.items()}
        kw = self.conv_kw
        geo = dict(stride=tuple(kw["stride"]), padding=0, dilation=tuple(kw["dilation"]))
        (pt, pl), (pb, pr) = kw["pre_padding"], kw["post_padding"]
        if self.kind == "dgrad":  # the gradient of the padded input, cropped
            n, c, h, w_ = t["DX"].dim
            xp = np.zeros((n, c, h + pt + pb, w_ + pl + pr))
            ref = conv2d_backward_ref(view["DY"], xp, view["W"], **geo)["x"][0]
            view["DX"][...] = ref[:, :, pt : pt + h, pl : pl + w_].astype(dt)
        else:
            w = np.zeros(t["DW"].dim)
            ref = conv2d_backward_ref(view["DY"], padded(view["X"], kw), w, **geo)["w"][0]
            view["DW"][...] = ref.astype(dt)


@pytest.fixture
def grad_cuda(fake_cuda):
    mod, fe, cp = fake_cuda

    def pygraph(**kw):
        g = GradGraph(fe, kw)
        fe.graphs.append(g)
        return g

    fe.pygraph = pygraph
    return mod, fe, cp


# Per (layout, graph kind): engines in heuristic order (name, numerical notes, seconds per call).
TABLE = {
    ("nchw", "dgrad"): [("dgrad_tc", ["TENSOR_CORE"], 0.0001), ("dgrad_slow", [], 0.009), ("dgrad_fast", [], 0.002),
                        ("dgrad_wino", ["WINOGRAD"], 0.0005)],
    ("nchw", "wgrad"): [("wgrad_first", [], 0.008), ("wgrad_best", [], 0.003), ("wgrad_fft", ["FFT"], 0.0004)],
    ("nhwc", "dgrad"): [("dgrad_nhwc", ["TENSOR_CORE"], 0.0003)],
    ("nhwc", "wgrad"): [("wgrad_nhwc", ["TENSOR_CORE"], 0.0002)],
    ("nchw", "conv"): [("fma", [], 0.004)],
}


def _grads(dt, seed=1, xs=(2, 3, 7, 6), ws=(4, 3, 3, 3)):
    p = _params(xs, ws)
    x, w = values(seed, xs, dt), values(seed + 1, ws, dt)
    gy = values(seed + 2, p.out_shape, dt)
    return p, x, w, gy


def _check(gx, gw, gy, x, w, dt, what):
    ref = conv2d_backward_ref(gy, x, w, padding=1)
    Ks = backward_K(w.shape, gy.shape, 1)
    acc = np.dtype(np.float32) if dt == np.float16 else np.dtype(dt)
    for name, got in (("x", gx), ("w", gw)):
        if got is not None:
            assert got.dtype == dt and got.shape == ref[name][0].shape
            assert_agrees(np.asarray(got), *ref[name], Ks[name], acc, np.dtype(dt), f"grad_{name} {what}")


def test_strict_fp32_gradients_time_the_allowed_plans_and_keep_the_fastest(grad_cuda):
    mod, fe, _cp = grad_cuda
    fe.table = TABLE
    p, x, w, gy = _grads(np.float32)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    gx, gw = conv.backward(_fa(gy), _fa(x), _fa(w), p, True, True)
    _check(gx, gw, gy, x, w, np.float32, "strict fp32")
    built = {name for _lay, _kind, name in fe.builds}
    # No tensor cores, Winograd or FFT in strict float32; no NHWC variant (no tensor cores to feed).
    assert built == {"dgrad_slow", "dgrad_fast", "wgrad_first", "wgrad_best"}
    chosen = {ex.choice.name for ex in conv._cache.values()}
    assert chosen == {"dgrad_fast", "wgrad_best"}  # the fastest timed, not the heuristic's first
    assert all(ex.choice.candidates == 2 for ex in conv._cache.values())
    assert conv.build_seconds > 0 and conv.last is None  # conv.last reports forward calls only
    n = len(fe.executions())
    gx2, gw2 = conv.backward(_fa(gy), _fa(x), _fa(w), p, True, True)  # cached: one execution each
    assert len(fe.executions()) == n + 2
    np.testing.assert_array_equal(gx2, gx)
    np.testing.assert_array_equal(gw2, gw)


def test_float16_gradients_may_use_nhwc_tensor_cores_and_winograd(grad_cuda):
    mod, fe, _cp = grad_cuda
    fe.table = TABLE
    p, x, w, gy = _grads(np.float16, seed=5)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    gx, gw = conv.backward(_fa(gy), _fa(x), _fa(w), p, True, True)
    _check(gx, gw, gy, x, w, np.float16, "fp16")
    built = {name for _lay, _kind, name in fe.builds}
    assert {"dgrad_wino", "wgrad_fft", "dgrad_nhwc", "wgrad_nhwc"} <= built  # the mode allows them
    chosen = {ex.choice.name: ex for ex in conv._cache.values()}
    assert set(chosen) == {"dgrad_tc", "wgrad_nhwc"}
    # A gradient computed in NHWC comes back with channels-last strides, indexed (N, C, H, W) / (O, C, kH, kW).
    assert gw.shape == w.shape and gw.transpose(0, 2, 3, 1).flags.c_contiguous


def test_the_gradient_choice_survives_a_new_process(grad_cuda):
    mod, fe, _cp = grad_cuda
    fe.table = TABLE
    p, x, w, gy = _grads(np.float32, seed=9)
    mod.CudnnConv(0, (9, 0), "Fake H100").backward(_fa(gy), _fa(x), _fa(w), p, True, True)
    builds = len(fe.builds)
    fresh = mod.CudnnConv(0, (9, 0), "Fake H100")  # nothing in memory: the disk cache answers
    gx, gw = fresh.backward(_fa(gy), _fa(x), _fa(w), p, True, True)
    _check(gx, gw, gy, x, w, np.float32, "from the disk cache")
    assert [name for *_lk, name in fe.builds[builds:]] == ["dgrad_fast", "wgrad_best"]  # only the chosen plans


def test_only_the_needed_gradient_is_built(grad_cuda):
    mod, fe, _cp = grad_cuda
    fe.table = TABLE
    p, x, w, gy = _grads(np.float64, seed=3)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    gx, gw = conv.backward(_fa(gy), _fa(x), _fa(w), p, True, False)
    assert gw is None
    _check(gx, None, gy, x, w, np.float64, "grad_x only")
    assert {kind for _lay, kind, _n in fe.builds} == {"dgrad"}


def test_autotune_off_runs_each_gradients_heuristic_first_plan(grad_cuda, monkeypatch):
    mod, fe, _cp = grad_cuda
    fe.table = TABLE
    monkeypatch.setenv("XDEV_CUDNN_AUTOTUNE", "0")
    p, x, w, gy = _grads(np.float32, seed=4)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    gx, gw = conv.backward(_fa(gy), _fa(x), _fa(w), p, True, True)
    _check(gx, gw, gy, x, w, np.float32, "untuned")
    assert {ex.choice.name for ex in conv._cache.values()} == {"dgrad_slow", "wgrad_first"}
    assert all(ex.choice.candidates == 0 for ex in conv._cache.values())


def test_a_gradient_without_a_plan_is_unsupported_and_remembered(grad_cuda):
    mod, fe, _cp = grad_cuda
    fe.table = {("nchw", "dgrad"): [("tc_only", ["TENSOR_CORE"], 0.001)]}
    p, x, w, gy = _grads(np.float32, seed=6)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    for _ in range(2):
        with pytest.raises(mod.CudnnUnsupported, match="no cuDNN plan for the nchw dgrad graph"):
            conv.backward(_fa(gy), _fa(x), _fa(w), p, True, False)
    assert len(fe.graphs) == 1


@pytest.mark.parametrize("xs,ws,dilation", [((1, 2, 10, 9), (3, 2, 2, 3), (3, 2)), ((2, 3, 9, 8), (4, 3, 4, 2), (1, 1))],
                         ids=["dilated", "even-kernel"])
def test_asymmetric_padding_never_reaches_a_gradient_graph(grad_cuda, xs, ws, dilation):
    """padding='same' with an even kernel extent pads one more row/column at the bottom/right.

    On an H200 a wgrad engine chosen by the autotuner computed grad_w wrongly for such a
    convolution (contract test test_conv2d_backward_awkward, 2.7e5 x the bound), and a fake
    cannot know which engine mishandles it. So the gradient graphs only ever get symmetric
    padding: x padded explicitly, grad_x cropped. The fake computes with pre and post padding
    as given, so the values check the padding arithmetic."""
    mod, fe, _cp = grad_cuda
    fe.table = TABLE
    from xdev.contract import conv_params

    p = conv_params(xs, ws, None, 1, "same", dilation, 1)
    assert p.pad[0] != p.pad[1] or p.pad[2] != p.pad[3]
    x, w = values(21, xs, np.float32), values(22, ws, np.float32)
    gy = values(23, p.out_shape, np.float32)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    gx, gw = conv.backward(_fa(gy), _fa(x), _fa(w), p, True, True)
    ref = conv2d_backward_ref(gy, x, w, padding="same", dilation=dilation)
    Ks = backward_K(ws, gy.shape, 1)
    assert gx.shape == x.shape and gw.shape == w.shape
    assert_agrees(np.asarray(gx), *ref["x"], Ks["x"], np.float32, np.float32, "grad_x, padding 'same'")
    assert_agrees(np.asarray(gw), *ref["w"], Ks["w"], np.float32, np.float32, "grad_w, padding 'same'")
    grads = [g for g in fe.graphs if g.kind in ("dgrad", "wgrad")]
    assert {g.kind for g in grads} == {"dgrad", "wgrad"}
    assert all(g.conv_kw["pre_padding"] == g.conv_kw["post_padding"] for g in grads)


@pytest.mark.parametrize("dt", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("need", ["x", "w"])
def test_one_gradient_of_an_asymmetrically_padded_convolution(grad_cuda, need, dt):
    """grad_x alone needs no padded copy of x; grad_w alone crops nothing; float16 as float32."""
    mod, fe, _cp = grad_cuda
    fe.table = TABLE
    from xdev.contract import conv_params

    xs, ws = (2, 3, 7, 6), (4, 3, 2, 4)
    p = conv_params(xs, ws, None, 1, "same", 1, 1)
    x, w = values(31, xs, dt), values(32, ws, dt)
    gy = values(33, p.out_shape, dt)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    gx, gw = conv.backward(_fa(gy), _fa(x), _fa(w), p, need == "x", need == "w")
    assert (gx is None) == (need == "w") and (gw is None) == (need == "x")
    ref = conv2d_backward_ref(gy, x, w, padding="same")
    Ks = backward_K(ws, gy.shape, 1)
    acc = np.dtype(np.float32) if dt == np.float16 else np.dtype(dt)
    got = gx if need == "x" else gw
    assert got.dtype == dt and got.shape == ref[need][0].shape
    assert_agrees(np.asarray(got), *ref[need], Ks[need], acc, np.dtype(dt), f"grad_{need} alone, padding 'same'")
    grads = [g for g in fe.graphs if g.kind in ("dgrad", "wgrad")]
    assert {g.kind for g in grads} == {"dgrad" if need == "x" else "wgrad"}
    assert all(g.conv_kw["pre_padding"] == g.conv_kw["post_padding"] for g in grads)


def test_a_failure_of_the_symmetric_route_is_unsupported_never_the_asymmetric_graphs(grad_cuda, monkeypatch):
    """Whatever fails while padding x or cropping grad_x, the asymmetric graphs are not the
    fallback (an H200 computed grad_w wrongly through one): CudnnUnsupported, so "auto" runs
    "gemm" (conv2d_backward's dispatch, test_cuda_emulator.py)."""
    mod, fe, cp = grad_cuda
    fe.table = TABLE
    from xdev.contract import conv_params

    xs, ws = (1, 2, 6, 5), (3, 2, 2, 2)
    p = conv_params(xs, ws, None, 1, "same", 1, 1)
    x, w, gy = values(41, xs, np.float32), values(42, ws, np.float32), values(43, p.out_shape, np.float32)

    def fails(*a, **k):
        raise RuntimeError("cudaErrorIllegalAddress")

    monkeypatch.setattr(cp, "zeros", fails)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    with pytest.raises(mod.CudnnUnsupported, match="symmetrically padded gradient graphs failed.*IllegalAddress"):
        conv.backward(_fa(gy), _fa(x), _fa(w), p, True, True)
    assert not [g for g in fe.graphs if g.kind in ("dgrad", "wgrad")]
