"""The CUDA backend: what can be checked without a GPU, and GPU-only checks that skip with a reason.

Without a GPU: the backend reports itself unavailable with CuPy's reason (or the pip extra when
CuPy is missing); every .cu file compiles with nvcc and with NVRTC (the compiler CuPy uses at run
time). The kernels themselves run on the CPU in test_cuda_emulator.py.

With a GPU, the contract tests (tests/contract/test_matmul.py, test_conv2d.py) run on it through the
``device`` fixture; the tests at the end add what those do not cover: algorithm selection and
recording, larger shapes that cross tiles and channel chunks, TF32 staying off, out-of-memory.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import xdev
from cuda_sources import CU_FILES, kernel_names, source_text
from reference import conv2d_ref, matmul_ref
from strategies import values
from tolerance import assert_agrees, assert_conv_agrees
from xdev.contract import FLOAT_DTYPES as DTYPES


def run_py(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


# ==== availability ============================================================================

def test_cu_files_exist_and_define_the_planned_kernels():
    assert {p.name for p in CU_FILES} >= {"im2col.cu", "conv2d_direct.cu"}
    for p in CU_FILES:  # the prelude is common.cuh's alone (kernels.py prepends it)
        assert "#define XDEV_KERNEL" not in p.read_text() and "typedef unsigned short xdev_half" not in p.read_text()
    defined = {name for p in CU_FILES for name in kernel_names(p)}
    for sfx in ("f16", "f32", "f64"):
        assert f"xdev_im2col_{sfx}" in defined
        for variant in ("o16", "o4", "naive"):
            assert f"xdev_conv_direct_{sfx}_{variant}" in defined


# The modules the suite runs without CuPy (emulator, fake cuDNN, cuBLAS emulation), and what they import.
CUPY_FREE = ("launch", "conv", "backward", "gemm_plan", "cudnn_tune")


def test_the_planners_and_algorithms_import_no_cupy():
    import ast

    from cuda_sources import CUDA_DIR

    for name in CUPY_FREE:
        tree = ast.parse((CUDA_DIR / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module] if node.module else [a.name for a in node.names]
                if node.level:  # a sibling module must be CuPy-free too
                    assert all(m in CUPY_FREE for m in mods), f"backends/cuda/{name}.py imports .{mods}"
                    continue
            else:
                continue
            assert not any(m.split(".")[0] in ("cupy", "cupyx", "cupy_backends", "cudnn") for m in mods), (
                f"backends/cuda/{name}.py imports {mods}: it must run without CuPy")


def test_probe_is_unavailable_with_a_reason_or_lists_devices():
    status = xdev.available_backends()["cuda"]
    if status.available:
        assert status.devices and status.devices[0] == "cuda:0"
        assert "CuPy" in status.reason
    else:
        assert status.reason.strip(), "an unavailable backend must say why"
        assert status.devices == ()
        if importlib.util.find_spec("cupy") is None:
            assert 'pip install "xdev[cuda]"' in status.reason
        else:
            assert "CuPy" in status.reason  # CuPy's own reason, e.g. cudaErrorNoDevice


def test_without_gpu_opening_cuda_raises_backend_unavailable():
    if xdev.available_backends()["cuda"].available:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(xdev.BackendUnavailable, match=r"cuda"):
        xdev.asarray(np.ones(3, np.float32), backend="cuda")


# ==== every .cu file compiles ===================================================================

def find_nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.exists(cand):
            return cand
    return None


def find_nvrtc() -> tuple[ctypes.CDLL | None, str]:
    """libnvrtc from the nvidia-cuda-nvrtc wheels, the CUDA toolkit or the loader path."""
    cands: list[str] = []
    for entry in sys.path:
        for pat in ("nvidia/cuda_nvrtc/lib/libnvrtc.so.*", "nvidia/cu*/lib/libnvrtc.so.*"):
            cands += sorted(glob.glob(os.path.join(entry, pat)))
    for root in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            cands += sorted(glob.glob(os.path.join(root, "lib*", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        cands.append(found)
    cands = [c for c in cands if "builtins" not in os.path.basename(c) and ".alt." not in os.path.basename(c)]
    errors = []
    for c in cands:
        try:
            # NVRTC opens libnvrtc-builtins by name at compile time: a wheel's copy beside it is
            # not on the loader path, so load it first (the loader then finds it by its soname).
            for b in sorted(glob.glob(os.path.join(os.path.dirname(c), "libnvrtc-builtins.so.*"))):
                with contextlib.suppress(OSError):
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(c), c
        except OSError as e:
            errors.append(f"{c}: {e}")
    return None, "no libnvrtc found (pip install nvidia-cuda-nvrtc-cu12, or a CUDA toolkit)" + (
        f"; tried {errors}" if errors else "")


def nvrtc_compile(lib: ctypes.CDLL, src: str, name: str, options: list[str]) -> tuple[int, str, str]:
    """(status, log, ptx) through NVRTC's C API; needs no GPU and no driver."""
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None)
    assert rc == 0, f"nvrtcCreateProgram failed: {rc}"
    try:
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        status = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = ""
        if status == 0:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value.decode()
        return status, log.value.decode(errors="replace"), ptx
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _entries(ptx: str) -> set[str]:
    return set(re.findall(r"\.entry\s+(\w+)", ptx))


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_file_compiles(cu, tmp_path):
    """nvcc -std=c++17 -arch=sm_90 -ptx (common.cuh + FILE.cu) when nvcc is here, else NVRTC, else skip."""
    nvcc = find_nvcc()
    if nvcc:
        src = tmp_path / cu.name  # common.cuh + the file, as the backend compiles it
        src.write_text(source_text(cu))
        out = tmp_path / (cu.stem + ".ptx")
        r = subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", "-ptx", str(src), "-o", str(out)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"nvcc failed on {cu.name}:\n{r.stdout}\n{r.stderr}"
        ptx = out.read_text()
    else:
        lib, where = find_nvrtc()
        if lib is None:
            pytest.skip(f"neither nvcc nor NVRTC is available to compile {cu.name}: {where}")
        status, log, ptx = nvrtc_compile(lib, source_text(cu), cu.name, ["-std=c++17", "-arch=compute_90"])
        assert status == 0, f"NVRTC failed on {cu.name}:\n{log}"
    assert set(kernel_names(cu)) <= _entries(ptx)


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_file_compiles_with_nvrtc_as_cupy_does(cu):
    """CuPy compiles with NVRTC (common.cuh + the file as one text, -std=c++17): that path on its own."""
    lib, where = find_nvrtc()
    if lib is None:
        pytest.skip(f"NVRTC is not available: {where}")
    for arch in ("compute_75", "compute_90"):
        status, log, ptx = nvrtc_compile(lib, source_text(cu), cu.name, ["-std=c++17", f"-arch={arch}"])
        assert status == 0, f"NVRTC ({arch}) failed on {cu.name}:\n{log}"
        assert set(kernel_names(cu)) <= _entries(ptx)


def test_build_error_maps_the_compiler_log_to_the_real_file(tmp_path):
    """CuPy hands NVRTC a temporary kern.cu; xdev.KernelBuildError must point at the real file.

    nvcc's front end writes errors as NVRTC does ("name(line): error: ...")."""
    from xdev.contract.kernel_cache import KernelSource

    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit)")
    real = tmp_path / "real" / "conv_broken.cu"
    real.parent.mkdir()
    real.write_text('// a kernel with an error on line 3\nextern "C" __global__ void k(float* x) {\n'
                    '  x[0] = undefined_name;\n}\n')
    tmp = tmp_path / "cupy_tmp" / "kern.cu"
    tmp.parent.mkdir()
    tmp.write_text(real.read_text())
    r = subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", "-ptx", str(tmp), "-o", str(tmp_path / "k.ptx")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "kern.cu(3)" in r.stdout + r.stderr
    e = KernelSource([real]).build_error(["-std=c++17"], r.stdout + r.stderr, device="cuda:0 test", compiler="NVRTC")
    assert isinstance(e, xdev.KernelBuildError) and e.locations == ((str(real), 3),)
    assert f"{real}(3): error" in str(e) and "undefined_name" in str(e)


# ==== on a GPU ===============================================================================

@pytest.fixture(scope="module")
def cuda():
    from availability import require

    return require("cuda")


def test_device_selection_and_info(cuda):
    assert cuda.key == "cuda:0" and xdev.asarray([1.0], backend="cuda:0").device == "cuda:0"
    n = len(xdev.available_backends()["cuda"].devices)
    with pytest.raises(ValueError, match=r"valid devices: cuda:0"):
        xdev.asarray([1.0], backend=f"cuda:{n}")
    info = cuda.info()
    for k in ("name", "compute_capability", "multiprocessors", "memory_bytes", "driver", "cuda_runtime", "cupy"):
        assert info[k], k
    assert info["tf32"] is False, "TF32 must be off unless XDEV_CUDA_TF32=1"


def test_arrays_are_cupy_with_strides_kept(cuda):
    import cupy

    a = xdev.asarray(np.arange(12, dtype=np.float32).reshape(3, 4), backend="cuda")
    assert isinstance(a.data, cupy.ndarray)
    t = a.T
    assert t.data.data.ptr == a.data.data.ptr and t.data.strides == a.data.strides[::-1]
    s = a[:, ::-2]
    assert s.data.data.ptr != 0 and s.data.strides[1] < 0
    np.testing.assert_array_equal(s.numpy(), np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::-2])


def test_conv_algorithms_are_selected_and_recorded(cuda):
    x = values(1, (2, 3, 9, 9), np.float32)
    w = values(2, (4, 3, 3, 3), np.float32)
    assert set(cuda.conv_algorithms) >= {"gemm", "direct"}
    for algo in cuda.conv_algorithms:
        assert xdev.conv2d(x, w, padding=1, algorithm=algo, backend="cuda").algorithm == algo
    auto = xdev.conv2d(x, w, padding=1, backend="cuda").algorithm
    assert auto == ("cudnn" if "cudnn" in cuda.conv_algorithms else "gemm")
    if "cudnn" not in cuda.conv_algorithms:
        with pytest.raises(ValueError, match=r'cudnn.*pip install "xdev\[cudnn\]"'):
            xdev.conv2d(x, w, algorithm="cudnn", backend="cuda")
    with pytest.raises(ValueError, match="choose one of auto"):
        xdev.conv2d(x, w, algorithm="winograd", backend="cuda")


GPU_CONV_CASES = [
    ((2, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1),   # VGG-like: many tiles, 8 channel chunks
    ((2, 32, 33, 31), (48, 16, 3, 3), 2, (1, 2), 2, 2),
    ((1, 24, 30, 30), (24, 1, 5, 5), 1, "same", 1, 24),  # depthwise
    ((1, 2, 130, 130), (4, 2, 13, 13), 3, 0, 10, 1),  # the direct kernel's fallback (not for cuDNN)
]


@pytest.mark.parametrize("case", GPU_CONV_CASES, ids=lambda c: "x{}w{}".format(*c[:2]).replace(" ", ""))
def test_conv2d_larger_shapes_every_algorithm(cuda, case):
    xs, ws, stride, padding, dilation, groups = case
    for dt in DTYPES:
        x = values(3, xs, dt)
        w = values(4, ws, dt)
        b = values(5, (ws[0],), dt)
        for algo in cuda.conv_algorithms:
            if algo == "cudnn" and case is GPU_CONV_CASES[-1]:
                continue  # a 121-pixel dilated kernel exercises xdev's fallback, not cuDNN
            y = xdev.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                            algorithm=algo, backend="cuda")
            assert y.algorithm == algo
            assert_conv_agrees(y.numpy(), x, w, b, case, dt, f"{algo} {case} {dt}")


def _worst_ratio(got, a, b):
    """max |got - a@b| / (|a|@|b|), the reference in float64 BLAS (its error is ~1e-16, far below)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - a64 @ b64) / (np.abs(a64) @ np.abs(b64))))


def test_tf32_is_off_by_default(cuda):
    """float32 products stay FP32: TF32 (10-bit mantissa) errors would be ~1e3 times larger."""
    a = values(8, (1024, 1024), np.float32)
    b = values(9, (1024, 1024), np.float32)
    for y in (xdev.matmul(a, b, backend="cuda"),
              xdev.matmul(a[None].repeat(2, 0), b, backend="cuda")[1]):  # 2-D and batched cuBLAS paths
        assert _worst_ratio(y.numpy(), a, b) < 1026 * 2.0**-24
    x = values(10, (2, 256, 16, 16), np.float32)
    w = values(11, (64, 256, 3, 3), np.float32)
    ref, ref_abs = conv2d_ref(x, w, padding=1)
    for algo in cuda.conv_algorithms:
        y = xdev.conv2d(x, w, padding=1, algorithm=algo, backend="cuda").numpy()
        assert np.max(np.abs(y - ref) / ref_abs) < (256 * 9 + 2) * 2.0**-24, algo


def test_tf32_opt_in(cuda):
    if tuple(int(v) for v in cuda.info()["compute_capability"].split(".")) < (8, 0):
        pytest.skip(f"{cuda.name} has no TF32 tensor cores")
    code = textwrap.dedent("""
        import numpy as np, xdev
        from strategies import values
        a = values(8, (1024, 1024), np.float32); b = values(9, (1024, 1024), np.float32)
        y = xdev.matmul(a, b, backend="cuda").numpy()
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        ratio = np.max(np.abs(y - a64 @ b64) / (np.abs(a64) @ np.abs(b64)))
        dev = xdev.asarray([1.0], backend="cuda")._dev
        print(float(ratio), dev.acc_dtype(np.dtype(np.float32)), dev.info()["tf32"])
    """)
    path = [str(Path(__file__).resolve().parents[1])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    r = run_py(code, XDEV_CUDA_TF32="1", PYTHONPATH=os.pathsep.join(path))
    assert r.returncode == 0, r.stderr
    ratio, acc, flag = r.stdout.split()
    assert flag == "True" and acc == "float16"
    assert float(ratio) > 64 * 2.0**-24, "XDEV_CUDA_TF32=1 did not reach TF32 tensor cores"
    assert float(ratio) < 1026 * 2.0**-11  # still within the bound acc_dtype reports


def test_out_of_memory_is_a_memory_error_and_arrays_survive(cuda):
    keep = xdev.asarray(np.arange(10, dtype=np.float32), backend="cuda")
    a = np.ones((2**18, 1, 1, 1), np.float32)
    b = np.ones((1, 2**18, 1, 1), np.float32)
    with pytest.raises(MemoryError, match=r"274,877,906,944 bytes"):  # 2^36 float32 results
        xdev.matmul(a, b, backend="cuda")
    np.testing.assert_array_equal(keep.numpy(), np.arange(10, dtype=np.float32))
    assert (xdev.asarray(np.ones((4, 4), np.float32), backend="cuda") @ keep[:4].reshape(4, 1)).shape == (4, 1)


def test_elapsed_uses_events_and_pinned_memory(cuda):
    a = xdev.asarray(values(1, (256, 256), np.float32), backend="cuda")
    times = cuda.elapsed(lambda: xdev.matmul(a, a), 3)
    assert len(times) == 3 and all(t > 0 for t in times)
    host = cuda.pinned_empty((8, 8), np.dtype(np.float32))
    assert isinstance(host, np.ndarray) and host.shape == (8, 8)


def test_float16_dot_products_accumulate_in_float32(cuda):
    """1-D @ 1-D and (1, K) @ (K, 1) take CuPy's reduction path; xdev routes them through float32."""
    a = values(12, (4097,), np.float16)
    b = values(13, (4097,), np.float16)
    ref, ref_abs = matmul_ref(a, b)
    for got in (xdev.matmul(a, b, backend="cuda").numpy(),
                xdev.matmul(a[None], b[:, None], backend="cuda").numpy()[0, 0]):
        assert_agrees(np.asarray(got), ref, ref_abs, 4097, np.float32, np.float16, "f16 dot")
