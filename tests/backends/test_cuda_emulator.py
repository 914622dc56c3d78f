"""The CUDA kernels and their launch plans, run on the CPU through a host emulation.

CUDA's execution model emulated in C++20 (one std::thread per CUDA thread, std::barrier for
__syncthreads): every .cu file is compiled against the harness below, and the plans of
backends/cuda/launch.py drive it exactly as the backend drives the GPU (through conv.py and
backward.py, which need no CuPy), checked against the float64 reference of the shared suite.
Needs a C++20 compiler, no GPU and no CuPy.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cuda_sources import CU_FILES, kernel_names, load, source_text
from once import build_once, shared_dir
from strategies import values
from tolerance import assert_conv_agrees
from xdev.contract import FLOAT_DTYPES as DTYPES

launch, conv, backward = load("launch"), load("conv"), load("backward")


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


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """{file name: executable} of the host-emulated kernels, built once per test run (this
    module and test_cuda_backward.py, every xdist worker); skips without a C++20 compiler."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or clang++) to build the host emulation of the CUDA kernels")
    d = shared_dir(tmp_path_factory, "cuda_emulation")
    exes = {}
    for cu in CU_FILES:
        table = " ".join(f"X({n})" for n in kernel_names(cu))

        def build(out: Path, cu: Path = cu, table: str = table) -> None:
            harness, src = out.with_suffix(".harness.cpp"), out.with_suffix(cu.suffix)
            harness.write_text(HARNESS)
            src.write_text(source_text(cu))  # common.cuh + the file, as the backend compiles it
            r = subprocess.run(
                [cxx, "-std=c++20", "-O1", "-pthread", "-fno-strict-aliasing", "-Wno-unknown-pragmas",
                 f'-DXDEV_SOURCE="{src}"', f"-DXDEV_TABLE={table}", str(harness), "-o", str(out)],
                capture_output=True, text=True, timeout=600,
            )
            if r.returncode != 0 and "barrier" in r.stderr and "No such file" in r.stderr:
                pytest.skip(f"{cxx} lacks C++20 <barrier>: {r.stderr[:300]}")
            assert r.returncode == 0, f"host emulation of {cu.name} does not build:\n{r.stderr}"

        exes[cu.name] = build_once(d / cu.stem, build)
    return exes


def _owner(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class Emulator:
    """launch(plan, arrays) for backends/cuda/launch.py's plans, running the kernel on the CPU."""

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
        conv.run_direct(np, emu, _place_x(x, layout, seed), w, b, p, y)
        assert emu.launches[0].kernel.endswith("naive") == (case is EMU_CASES[-1])
        assert_conv_agrees(y, x, w, b, case, dt, f"direct {case} {dt} {layout}")


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
        conv.run_gemm(np, emu, _place_x(x, layout, seed), w, b, p, y, budget=budget)
        assert_conv_agrees(y, x, w, b, case, dt, f"gemm {case} {dt} {layout} budget {budget}")


@pytest.mark.parametrize("dt", [np.int8, np.uint16, np.int32, np.uint32, np.int64, np.bool_],
                         ids=lambda t: np.dtype(t).name)
def test_emulated_gemm_algorithm_integers(emulator, tmp_path, dt):
    """Integer and bool conv2d on CUDA: im2col's integer kernels (bits copied, a ones row of 1
    for the bias) + an exact integer GEMM (CuPy's on a GPU, NumPy's here, both wrapping as
    NumPy does), through conv.matmul_copy into strided output blocks; exact results."""
    from reference import conv2d_exact
    from strategies import int_values

    for case, budget in [(EMU_CASES[0], 4000), (EMU_CASES[2], 1 << 30), (((2, 3, 5, 5), (4, 3, 1, 1), 1, 0, 1, 1), 700)]:
        xs, ws, stride, padding, dilation, groups = case
        p = P(xs, ws, stride, padding, dilation, groups)
        seed = sum(xs) + sum(ws)
        x, w, b = int_values(seed, xs, dt), int_values(seed + 1, ws, dt), int_values(seed + 2, (ws[0],), dt)
        y = np.zeros(p.out_shape, dt)
        emu = Emulator(emulator, tmp_path, grid_cap=2)
        conv.run_gemm(np, emu, _place_x(x, "nhwc", seed), w, b, p, y, budget=budget, matmul=conv.matmul_copy(np))
        want = conv2d_exact(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
        assert y.dtype == want.dtype and np.array_equal(y, want), f"{case} {np.dtype(dt)} budget {budget}"
        assert all(lp.kernel == f"xdev_im2col_i{8 * np.dtype(dt).itemsize}" for lp in emu.launches)


def test_gemm_blocks_cover_the_output_once():
    p = P((5, 3, 20, 7), (4, 3, 3, 3), 1, 1, 1, 1)
    for budget in (1 << 30, 20000, 3000, 1):
        blocks = launch.gemm_blocks(p, 28, 4, budget)
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
            lp = launch.direct_launch(p, dt, (1, 1, 1, 1), False)
            assert lp.shared_mem <= launch.SMEM_BUDGET
            assert lp.grid[1] <= launch.GRID_YZ_MAX and lp.grid[2] <= launch.GRID_YZ_MAX


class _NoCudnn:
    """cuDNN that has no engine for anything (conv.py must fall back or refuse)."""

    last = None

    def __init__(self, unsupported):
        self.unsupported = unsupported

    def conv2d(self, *a):
        raise self.unsupported("no engine for this test")

    def backward(self, *a):
        raise self.unsupported("no engine for this test")


def _fake_device(emu):
    unsupported = load("cudnn_tune").CudnnUnsupported
    cudnn = _NoCudnn(unsupported)
    return SimpleNamespace(xp=np, key="cuda:0", conv_algorithms=("cudnn", "gemm", "direct"), cudnn=cudnn,
                           launch=emu,
                           gemm_into=lambda a, b, out: np.matmul(a, b, out=out))


def test_dispatch_falls_back_from_cudnn_under_auto_and_refuses_it_when_asked(emulator, tmp_path):
    case = ((1, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1)
    p = P(*case)
    x, w, b = values(1, case[0], np.float32), values(2, case[1], np.float32), values(3, (4,), np.float32)
    dev = _fake_device(Emulator(emulator, tmp_path))
    y, algo = conv.conv2d(dev, x, w, b, p, "auto")
    assert algo == "gemm"
    assert_conv_agrees(y, x, w, b, case, np.dtype(np.float32), "auto -> gemm")
    y, algo = conv.conv2d(dev, x, w, b, p, "direct")
    assert algo == "direct"
    assert_conv_agrees(y, x, w, b, case, np.dtype(np.float32), "direct")
    with pytest.raises(ValueError, match=r"cuDNN cannot run this convolution on cuda:0 .*no engine.*'gemm' or 'direct'"):
        conv.conv2d(dev, x, w, b, p, "cudnn")
    gy = values(4, p.out_shape, np.float32)
    gx, gw, gb, algo = backward.conv2d_backward(dev, gy, x, w, p, frozenset({"x", "w", "bias"}), "auto")
    assert algo == "gemm" and gx.shape == x.shape and gw.shape == w.shape and gb.shape == (4,)
    with pytest.raises(ValueError, match=r"cuDNN cannot run this convolution's backward pass on cuda:0"):
        backward.conv2d_backward(dev, gy, x, w, p, frozenset({"x"}), "cudnn")
    # Nothing to compute: no launch, the chosen algorithm reported.
    empty = P((0, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1)
    y, algo = conv.conv2d(dev, x[:0], w, b, empty, "auto")
    assert y.shape == (0, 4, 6, 5) and algo == "cudnn"
