"""The CUDA backend: what can be checked without a GPU, and GPU-only checks that skip with a reason.

Without a GPU: the backend reports itself unavailable with CuPy's reason (or the pip extra when
CuPy is missing); every .cu file compiles with nvcc and with NVRTC (the compiler CuPy uses at run
time); and the kernels, their launch plans and the conv2d orchestration run on the CPU through a
host emulation of CUDA's execution model (one std::thread per CUDA thread, std::barrier for
__syncthreads) against the float64 reference of the shared suite.

With a GPU, the shared numeric tests (test_matmul.py, test_conv2d.py) run on it through the
``device`` fixture; the tests at the end add what those do not cover: algorithm selection and
recording, larger shapes that cross tiles and channel chunks, TF32 staying off, out-of-memory.
"""
from __future__ import annotations

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
import xdev.backends
from reference import conv2d_ref, matmul_ref
from strategies import values
from tolerance import assert_agrees

CUDA_DIR = Path(xdev.backends.__file__).resolve().parent / "cuda"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
DTYPES = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]


def _load_plan():
    """backends/cuda/_plan.py without importing the package (whose __init__ imports CuPy)."""
    spec = importlib.util.spec_from_file_location("xdev_cuda_plan_under_test", CUDA_DIR / "_plan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


plan = _load_plan()


def kernel_names(path: Path) -> list[str]:
    """The extern "C" kernels a .cu file defines (through its XDEV_* definition macros)."""
    return re.findall(r"^XDEV_[A-Z0-9_]+\((xdev_\w+),", path.read_text(), flags=re.M)


def run_py(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


# ==== availability ============================================================================

def test_cu_files_exist_and_define_the_planned_kernels():
    assert {p.name for p in CU_FILES} >= {"im2col.cu", "conv2d_direct.cu"}
    defined = {name for p in CU_FILES for name in kernel_names(p)}
    for sfx in ("f16", "f32", "f64"):
        assert f"xdev_im2col_{sfx}" in defined
        for variant in ("o16", "o4", "naive"):
            assert f"xdev_conv_direct_{sfx}_{variant}" in defined


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
    """nvcc -std=c++17 -arch=sm_90 -ptx FILE.cu when nvcc is here, else NVRTC, else skip."""
    nvcc = find_nvcc()
    if nvcc:
        out = tmp_path / (cu.stem + ".ptx")
        r = subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", "-ptx", str(cu), "-o", str(out)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"nvcc failed on {cu.name}:\n{r.stdout}\n{r.stderr}"
        ptx = out.read_text()
    else:
        lib, where = find_nvrtc()
        if lib is None:
            pytest.skip(f"neither nvcc nor NVRTC is available to compile {cu.name}: {where}")
        status, log, ptx = nvrtc_compile(lib, cu.read_text(), cu.name, ["-std=c++17", "-arch=compute_90"])
        assert status == 0, f"NVRTC failed on {cu.name}:\n{log}"
    assert set(kernel_names(cu)) <= _entries(ptx)


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_file_compiles_with_nvrtc_as_cupy_does(cu):
    """CuPy compiles with NVRTC (no headers, options -std=c++17): check that path on its own."""
    lib, where = find_nvrtc()
    if lib is None:
        pytest.skip(f"NVRTC is not available: {where}")
    for arch in ("compute_75", "compute_90"):
        status, log, ptx = nvrtc_compile(lib, cu.read_text(), cu.name, ["-std=c++17", f"-arch={arch}"])
        assert status == 0, f"NVRTC ({arch}) failed on {cu.name}:\n{log}"
        assert set(kernel_names(cu)) <= _entries(ptx)


# ==== the kernels, run on the CPU through a host emulation ==================================

HARNESS = textwrap.dedent(r'''
    // Host emulation of the CUDA execution model for xdev's kernels (test-only).
    #include <barrier>
    #include <cstdint>
    #include <cstdio>
    #include <cstdlib>
    #include <cstring>
    #include <fstream>
    #include <functional>
    #include <map>
    #include <string>
    #include <thread>
    #include <type_traits>
    #include <utility>
    #include <vector>

    struct dim3 { unsigned int x = 1, y = 1, z = 1; };
    static dim3 gridDim, blockDim, blockIdx;
    static thread_local dim3 threadIdx;
    static std::barrier<>* xdev_emu_barrier = nullptr;
    static unsigned char* xdev_emu_smem = nullptr;

    static inline float xdev_emu_h2f(unsigned short h) { _Float16 v; std::memcpy(&v, &h, 2); return (float)v; }
    static inline unsigned short xdev_emu_f2h(float f) {
        _Float16 v = (_Float16)f; unsigned short h; std::memcpy(&h, &v, 2); return h;
    }

    #define XDEV_HOST_EMULATION 1
    #define __global__
    #define __device__
    #define __forceinline__ inline
    #define __launch_bounds__(n)
    #define __restrict__ __restrict
    #define XDEV_KERNEL(THREADS) extern "C" void
    #define XDEV_SYNC() xdev_emu_barrier->arrive_and_wait()
    #define XDEV_DYNAMIC_SMEM(NAME) xdev_chunk16* NAME = reinterpret_cast<xdev_chunk16*>(xdev_emu_smem)

    #include XDEV_SOURCE

    [[noreturn]] static void die(const std::string& m) { std::fprintf(stderr, "harness: %s\n", m.c_str()); std::exit(3); }

    struct Arg { char kind; long long v; unsigned char* p; };

    template <class T> T conv_arg(const Arg& a) {
        if constexpr (std::is_pointer_v<T>) {
            if (a.kind != 'p') die("a pointer parameter received a scalar");
            return reinterpret_cast<T>(a.p);
        } else if constexpr (sizeof(T) == 8) {
            if (a.kind != 'l') die("a 64-bit parameter received another kind");
            return (T)a.v;
        } else {
            if (a.kind != 'i') die("a 32-bit parameter received another kind");
            return (T)a.v;
        }
    }
    template <class... P, std::size_t... I>
    void call_impl(void (*f)(P...), const std::vector<Arg>& a, std::index_sequence<I...>) { f(conv_arg<P>(a[I])...); }
    template <class... P> void call(void (*f)(P...), const std::vector<Arg>& a) {
        if (a.size() != sizeof...(P)) die("argument count " + std::to_string(a.size()) + " != " + std::to_string(sizeof...(P)));
        call_impl(f, a, std::index_sequence_for<P...>{});
    }

    #define X(NAME) {#NAME, [](const std::vector<Arg>& a) { call(NAME, a); }},
    static const std::map<std::string, std::function<void(const std::vector<Arg>&)>> table = { XDEV_TABLE };

    int main(int argc, char** argv) {
        std::ifstream job(argv[1]);
        std::string word, name; job >> word >> name;
        job >> word >> gridDim.x >> gridDim.y >> gridDim.z;
        job >> word >> blockDim.x >> blockDim.y >> blockDim.z;
        std::size_t smem; job >> word >> smem;
        int nbuf; job >> word >> nbuf;
        std::vector<std::string> paths(nbuf); std::vector<std::vector<unsigned char>> bufs(nbuf);
        for (int i = 0; i < nbuf; ++i) {
            std::size_t n; job >> paths[i] >> n; bufs[i].resize(n + 64);
            std::ifstream f(paths[i], std::ios::binary); f.read((char*)bufs[i].data(), n);
        }
        int nargs; job >> word >> nargs;
        std::vector<Arg> args(nargs);
        for (auto& a : args) {
            std::string k; job >> k;
            if (k == "ptr") { int b; long long off; job >> b >> off; a = {'p', 0, bufs[b].data() + off}; }
            else if (k == "null") a = {'p', 0, nullptr};
            else if (k == "i32") { job >> a.v; a.kind = 'i'; }
            else if (k == "i64") { job >> a.v; a.kind = 'l'; }
            else die("bad arg kind " + k);
        }
        auto it = table.find(name);
        if (it == table.end()) die("no kernel " + name);
        const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
        std::vector<unsigned char> shared(smem + 32);
        for (unsigned bz = 0; bz < gridDim.z; ++bz)
        for (unsigned by = 0; by < gridDim.y; ++by)
        for (unsigned bx = 0; bx < gridDim.x; ++bx) {
            blockIdx = {bx, by, bz};
            std::memset(shared.data(), 0xAB, shared.size());  // garbage, like real shared memory
            xdev_emu_smem = shared.data() + (16 - (reinterpret_cast<std::uintptr_t>(shared.data()) % 16)) % 16;
            std::barrier<> bar(nthreads);
            xdev_emu_barrier = &bar;
            std::vector<std::thread> ts;
            for (unsigned tz = 0; tz < blockDim.z; ++tz)
            for (unsigned ty = 0; ty < blockDim.y; ++ty)
            for (unsigned tx = 0; tx < blockDim.x; ++tx)
                ts.emplace_back([&, tx, ty, tz] { threadIdx = {tx, ty, tz}; it->second(args); });
            for (auto& t : ts) t.join();
        }
        for (int i = 0; i < nbuf; ++i) {
            std::ofstream f(paths[i], std::ios::binary);
            f.write((const char*)bufs[i].data(), bufs[i].size() - 64);
        }
        return 0;
    }
''')


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """{file name: executable} of the host-emulated kernels; skips without a C++20 compiler."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the host emulation of the CUDA kernels")
    d = tmp_path_factory.mktemp("cuda_emulation")
    (d / "harness.cpp").write_text(HARNESS)
    exes = {}
    for cu in CU_FILES:
        table = " ".join(f"X({n})" for n in kernel_names(cu))
        exe = d / cu.stem
        r = subprocess.run(
            [cxx, "-std=c++20", "-O1", "-pthread", "-fno-strict-aliasing", "-Wno-unknown-pragmas",
             f'-DXDEV_SOURCE="{cu}"', f"-DXDEV_TABLE={table}", str(d / "harness.cpp"), "-o", str(exe)],
            capture_output=True, text=True, timeout=600,
        )
        if r.returncode != 0 and "barrier" in r.stderr and "No such file" in r.stderr:
            pytest.skip(f"{cxx} lacks C++20 <barrier>: {r.stderr[:300]}")
        assert r.returncode == 0, f"host emulation of {cu.name} does not build:\n{r.stderr}"
        exes[cu.name] = exe
    return exes


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class Emulator:
    """launch(plan, arrays) for backends/cuda/_plan.py, running the kernel on the CPU."""

    def __init__(self, exes: dict[str, Path], workdir: Path, grid_cap: int | None = None):
        self.exes, self.dir, self.grid_cap, self.launches = exes, workdir, grid_cap, []

    def __call__(self, p, arrays) -> None:
        self.launches.append(p)
        bases: list[np.ndarray] = []
        lines = []
        argv = []
        for kind, value in p.args:
            if kind == "ptr":
                arr = arrays[value]
                if arr is None:
                    argv.append("null")
                    continue
                base = _owner(arr)
                assert base.flags.c_contiguous
                idx = next((i for i, b in enumerate(bases) if b is base), None)
                if idx is None:
                    bases.append(base)
                    idx = len(bases) - 1
                off = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
                argv.append(f"ptr {idx} {off}")
            else:
                argv.append(f"{kind} {int(value)}")
        grid = list(p.grid)
        if self.grid_cap:
            # Fewer blocks than planned along the grid-stride dimensions exercises those loops.
            dims = (0, 1, 2) if p.kernel.startswith("xdev_im2col") else (1, 2)
            for d in dims:
                grid[d] = min(grid[d], self.grid_cap)
        lines.append(f"kernel {p.kernel}")
        lines.append("grid {} {} {}".format(*grid))
        lines.append("block {} {} {}".format(*p.block))
        lines.append(f"smem {p.shared_mem}")
        lines.append(f"buffers {len(bases)}")
        for i, b in enumerate(bases):
            path = self.dir / f"buf{i}.bin"
            b.tofile(path)
            lines.append(f"{path} {b.nbytes}")
        lines.append(f"args {len(argv)}")
        lines += argv
        (self.dir / "job.txt").write_text("\n".join(lines) + "\n")
        r = subprocess.run([str(self.exes[p.source]), str(self.dir / "job.txt")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{p.kernel}: {r.stderr}"
        for i, b in enumerate(bases):
            b.reshape(-1).view(np.uint8)[:] = np.fromfile(self.dir / f"buf{i}.bin", dtype=np.uint8)


def P(xs, ws, stride=1, padding=0, dilation=1, groups=1):
    """ConvParams as xdev.conv2d builds them."""
    from xdev.contract import conv_params

    return conv_params(xs, ws, (ws[0],), stride, padding, dilation, groups)


def _place_x(x: np.ndarray, layout: str, seed: int) -> np.ndarray:
    """x as the views xdev's tests make: contiguous, every other column, NHWC, or flipped."""
    if layout == "strided":
        big = values(seed + 11, x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
        big[..., 1::2] = x
        return big[..., 1::2]
    if layout == "nhwc":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout == "flipped":  # negative strides: x is the reversal of a contiguous array
        return np.ascontiguousarray(x[:, ::-1, :, ::-1])[:, ::-1, :, ::-1]
    return np.ascontiguousarray(x)


# (x shape, w shape, stride, padding, dilation, groups)
EMU_CASES = [
    ((2, 10, 19, 21), (20, 10, 3, 3), 1, 1, 1, 1),          # 2 channel chunks, 2 output-channel tiles, edge tiles
    ((1, 3, 17, 9), (3, 3, 2, 4), (2, 1), "valid", (1, 2), 1),  # o4 variant, even kernel, stride/dilation pairs
    ((2, 6, 11, 13), (9, 2, 3, 5), (2, 1), (2, 0), (1, 2), 3),  # groups
    ((1, 4, 10, 8), (3, 4, 4, 4), 1, "same", 1, 1),           # asymmetric padding
    ((1, 8, 15, 15), (16, 1, 3, 3), 2, 1, 1, 8),              # depthwise, multiplier 2
    ((1, 2, 70, 70), (5, 2, 3, 3), 3, 0, 33, 1),              # halo too large for shared memory -> naive
]


def _conv_check(y, x, w, b, case, dt, what):
    xs, ws, stride, padding, dilation, groups = case
    ref, ref_abs = conv2d_ref(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    K = ws[1] * ws[2] * ws[3] + (1 if b is not None else 0)
    acc = np.dtype(np.float32) if dt == np.float16 else dt
    assert_agrees(y, ref, ref_abs, K, acc, dt, what)


@pytest.mark.parametrize("case", EMU_CASES, ids=lambda c: "x{}w{}".format(*c[:2]).replace(" ", ""))
def test_emulated_direct_kernel(emulator, tmp_path, case):
    xs, ws, stride, padding, dilation, groups = case
    p = P(xs, ws, stride, padding, dilation, groups)
    for i, dt in enumerate(DTYPES):
        layout = ["contiguous", "strided", "nhwc", "flipped"][(i + len(xs) + ws[0]) % 4]
        seed = 100 * i + sum(xs)
        x = values(seed, xs, dt)
        w = values(seed + 1, ws, dt)
        b = values(seed + 2, (ws[0],), dt) if i != 1 else None
        y = np.full(p.out_shape, np.nan, dt)
        emu = Emulator(emulator, tmp_path, grid_cap=1)
        plan.run_direct(np, emu, _place_x(x, layout, seed), w, b, p, y)
        assert emu.launches[0].kernel.endswith("naive") == (case is EMU_CASES[-1])
        _conv_check(y, x, w, b, case, dt, f"direct {case} {dt} {layout}")


@pytest.mark.parametrize("budget", [1 << 30, 4000, 700], ids=["one-block", "image-blocks", "row-blocks"])
@pytest.mark.parametrize("case", EMU_CASES[:4] + [((3, 4, 9, 9), (5, 4, 1, 1), 1, 0, 1, 1)],
                         ids=lambda c: "x{}w{}".format(*c[:2]).replace(" ", ""))
def test_emulated_gemm_algorithm(emulator, tmp_path, case, budget):
    """im2col kernel + GEMM (numpy here, cuBLAS on a GPU), with the blocking a small budget forces."""
    xs, ws, stride, padding, dilation, groups = case
    p = P(xs, ws, stride, padding, dilation, groups)
    for i, dt in enumerate(DTYPES):
        layout = ["strided", "nhwc", "contiguous", "flipped"][(i + ws[0]) % 4]
        seed = 7 + 100 * i + sum(ws)
        x = values(seed, xs, dt)
        w = values(seed + 1, ws, dt)
        b = values(seed + 2, (ws[0],), dt) if i != 2 else None
        y = np.full(p.out_shape, np.nan, dt)
        emu = Emulator(emulator, tmp_path, grid_cap=2)
        plan.run_gemm(np, emu, _place_x(x, layout, seed), w, b, p, y, budget=budget)
        _conv_check(y, x, w, b, case, dt, f"gemm {case} {dt} {layout} budget {budget}")


def test_gemm_blocks_cover_the_output_once():
    p = P((5, 3, 20, 7), (4, 3, 3, 3), 1, 1, 1, 1)
    for budget in (1 << 30, 20000, 3000, 1):
        blocks = plan.gemm_blocks(p, 28, 4, budget)
        seen = np.zeros((p.N, p.Ho), int)
        for b in blocks:
            seen[b.n0 : b.n0 + b.nb, b.h0 : b.h0 + b.hb] += 1
            if budget > 1:
                assert b.nb * p.groups * 28 * b.hb * p.Wo * 4 <= max(budget, p.groups * 28 * p.Wo * 4)
        assert (seen == 1).all()


def test_direct_plan_fits_shared_memory():
    for ws, dil in [((64, 64, 3, 3), 1), ((8, 3, 11, 11), 1), ((8, 3, 7, 7), 4), ((4, 2, 13, 13), 10)]:
        p = P((1, ws[1], 200, 200), ws, 1, 0, dil, 1)
        for dt in ("float16", "float32", "float64"):
            launch = plan.direct_launch(p, dt, (1, 1, 1, 1), False)
            assert launch.shared_mem <= plan.SMEM_BUDGET
            assert launch.grid[1] <= plan.GRID_YZ_MAX and launch.grid[2] <= plan.GRID_YZ_MAX


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
            _conv_check(y.numpy(), x, w, b, case, dt, f"{algo} {case} {dt}")


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
