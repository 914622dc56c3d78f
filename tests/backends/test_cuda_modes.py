"""The numeric mode decides cuDNN's algorithm set (no GPU: the fake frontend and fake CuPy of
test_cuda_cudnn_conv.py). Strict float32 and float64 stay strict; TF32 and float16 allow Winograd/FFT
by default; ``XDEV_CUDNN_FAST`` forces them on (``1``) or off (``0``) in every mode.
"""
from __future__ import annotations

import numpy as np
import pytest

from strategies import values
from cuda_fakes import as_fa
from test_cuda_cudnn_conv import _check, _params, fake_cuda  # noqa: F401 (fake_cuda: a fixture)
from test_cuda_cudnn_tune import spec, tune

from xdev.contract import env


def test_the_switch_is_three_way(monkeypatch):
    monkeypatch.delenv("XDEV_CUDNN_FAST", raising=False)
    assert env.cudnn_fast() is None
    for v, want in (("1", True), ("on", True), (" TRUE ", True), ("yes", True), ("0", False), ("off", False),
                    ("False", False), ("no", False), ("", None)):
        monkeypatch.setenv("XDEV_CUDNN_FAST", v)
        assert env.cudnn_fast() is want, v
    monkeypatch.setenv("XDEV_CUDNN_FAST", "fast")
    with pytest.raises(ValueError, match=r"XDEV_CUDNN_FAST='fast' is not valid; expected 1 .* 0 .* unset"):
        env.cudnn_fast()


@pytest.mark.parametrize("dtype,tf32,mode,by_mode", [
    ("float32", False, "strict-fp32", False),
    ("float32", True, "tf32", True),
    ("float16", False, "fp16", True),
    ("float16", True, "fp16", True),  # the TF32 switch is about float32 only
    ("float64", False, "fp64", False),
])
def test_winograd_fft_allowed_by_mode_unless_the_switch_says(dtype, tf32, mode, by_mode):
    assert tune.numeric_mode(dtype, tf32) == mode
    assert tune.winograd_fft_allowed(dtype, tf32, None) is by_mode
    assert tune.winograd_fft_allowed(dtype, tf32, True) is True
    assert tune.winograd_fft_allowed(dtype, tf32, False) is False
    s = spec(dtype=dtype, tf32=tf32, fast=tune.winograd_fft_allowed(dtype, tf32, None))
    notes = set(tune.deselected_notes(s))
    assert ({"WINOGRAD", "WINOGRAD_TILE_4x4", "WINOGRAD_TILE_6x6", "FFT"} <= notes) is (not by_mode)
    assert "REDUCED_PRECISION_REDUCTION" in notes  # never, in any mode


# Per layout, a Winograd engine fastest, then a tensor-core one, then plain FMA (notes as cuDNN's).
MODE_TABLE = {
    ("nchw", "conv"): [("wino", ["WINOGRAD", "WINOGRAD_TILE_4x4"], 0.0001), ("fft", ["FFT"], 0.0002),
                       ("tc", ["TENSOR_CORE"], 0.001), ("fma", [], 0.004)],
    ("nhwc", "conv"): [("wino_nhwc", ["WINOGRAD"], 0.00005), ("tc_nhwc", ["TENSOR_CORE"], 0.0005),
                       ("fma_nhwc", [], 0.006)],
}


@pytest.mark.parametrize("dtype,tf32_env,setting,engines", [
    (np.float32, None, None, {"fma"}),  # strict float32: no Winograd/FFT, no tensor cores
    (np.float32, "1", None, {"wino_nhwc"}),  # TF32: the user chose reduced precision
    (np.float16, None, None, {"wino_nhwc"}),
    (np.float64, None, None, {"tc"}),  # FP64 tensor cores round like FP64 FMAs: allowed
    (np.float16, None, "0", {"tc_nhwc"}),  # never
    (np.float32, "1", "0", {"tc_nhwc"}),
    (np.float32, None, "1", {"wino"}),  # always: strict float32 inputs, Winograd transforms
    (np.float64, None, "1", {"wino"}),
])
def test_the_numeric_mode_decides_the_plan_cudnn_conv_runs(fake_cuda, monkeypatch, dtype, tf32_env, setting,
                                                             engines):
    mod, fe, _cp = fake_cuda
    fe.table = MODE_TABLE
    for name, v in (("XDEV_CUDA_TF32", tf32_env), ("XDEV_CUDNN_FAST", setting)):
        if v is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, v)
    xs, ws = (2, 3, 6, 5), (4, 3, 3, 3)
    x, w = values(1, xs, dtype), values(2, ws, dtype)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    y = conv.conv2d(as_fa(x), as_fa(w), None, _params(xs, ws))
    _check(y, x, w, None, dtype)
    ex = conv.last
    assert {ex.choice.name} == engines
    allowed = setting == "1" or (setting is None and (dtype == np.float16 or tf32_env == "1"))
    assert ex.spec.fast is allowed
    timed = {name for *_lk, name in fe.builds}
    if not allowed:
        assert not timed & {"wino", "wino_nhwc", "fft"}, timed  # deselected: never even built


def test_the_switch_is_part_of_the_key(fake_cuda, monkeypatch):
    """Changing XDEV_CUDNN_FAST between calls takes effect at the next call (no stale plan)."""
    mod, fe, _cp = fake_cuda
    fe.table = MODE_TABLE
    xs, ws = (1, 3, 5, 5), (2, 3, 3, 3)
    x, w = as_fa(values(3, xs, np.float16)), as_fa(values(4, ws, np.float16))
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    conv.conv2d(x, w, None, _params(xs, ws))
    assert conv.last.choice.name == "wino_nhwc"
    monkeypatch.setenv("XDEV_CUDNN_FAST", "0")
    conv.conv2d(x, w, None, _params(xs, ws))
    assert conv.last.choice.name == "tc_nhwc"
    monkeypatch.setenv("XDEV_CUDNN_FAST", "1")  # the same set as the mode's default: the same entry
    conv.conv2d(x, w, None, _params(xs, ws))
    assert conv.last.choice.name == "wino_nhwc"
    assert len(conv._cache) == 2
    monkeypatch.setenv("XDEV_CUDNN_FAST", "maybe")
    with pytest.raises(ValueError, match="XDEV_CUDNN_FAST"):
        conv.conv2d(x, w, None, _params(xs, ws))


def test_cuda_switches_follow_the_environment_at_every_call(monkeypatch):
    """env.cuda_switches() reads os.environ's own mapping and parses once per set of values."""
    for name in ("XDEV_CUDA_TF32", "XDEV_CUDNN_FAST", "XDEV_CUDNN_AUTOTUNE"):
        monkeypatch.delenv(name, raising=False)
    assert env.cuda_switches() == (False, None, True)
    monkeypatch.setenv("XDEV_CUDA_TF32", "1")
    monkeypatch.setenv("XDEV_CUDNN_FAST", "0")
    assert env.cuda_switches() == (True, False, True)
    monkeypatch.setenv("XDEV_CUDNN_AUTOTUNE", "off")
    assert env.cuda_switches() == (True, False, False)
    monkeypatch.setenv("XDEV_CUDNN_FAST", "sometimes")
    for _ in range(2):  # refused every time, never remembered as valid
        with pytest.raises(ValueError, match="XDEV_CUDNN_FAST='sometimes'"):
            env.cuda_switches()
    monkeypatch.delenv("XDEV_CUDNN_FAST")
    assert env.cuda_switches() == (True, None, False)
