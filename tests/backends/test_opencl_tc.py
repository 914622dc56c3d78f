"""The OpenCL tensor-core GEMM (backends/opencl/gemm_tc.cl), checked without a GPU.

- The register layouts of mma.sync / ldmatrix (tests/tc_layouts.py, from the PTX ISA) are
  checked for consistency, and the kernel's fragment scheme against them in NumPy.
- The kernel runs in a host emulation (tests/tc_emulator.py) that executes its own text
  with the PTX instructions emulated through those layouts, for several tile variants,
  both numeric modes, ragged shapes, batches, and cp.async copies landing early or late.
- The PTX compiles: tc_ptx.cl's instructions and the whole kernel as CUDA (nvcc) for sm_80
  and sm_90, and the OpenCL C text through clang's NVPTX back end and ptxas.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tc_emulator
from tc_emulator import load_tc
import tc_layouts as L
from once import shared_dir
from tolerance import assert_agrees

tc = load_tc()
REPO = Path(__file__).resolve().parents[2]
OPENCL_DIR = tc_emulator.OPENCL_DIR
F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


# ---- the layouts themselves ---------------------------------------------------------------
@pytest.mark.parametrize("shape", list(L.SHAPES))
def test_mma_layouts_cover_each_element_once(shape):
    M, N, K, _ = L.SHAPES[shape]
    for layout, rows, cols in ((L.mma_a(shape), M, K), (L.mma_b(shape), K, N), (L.mma_c(), M, N)):
        seen = np.zeros((rows, cols), int)
        np.add.at(seen, (layout[..., 0], layout[..., 1]), 1)
        assert (seen == 1).all()


def test_mma_layouts_match_the_ptx_isa_figures():
    # m16n8k16 .f16, lane 0: a0,a1 = (0,0),(0,1); a2,a3 = (8,0),(8,1); a4,a5 = (0,8),(0,9);
    # a6,a7 = (8,8),(8,9). Lane 5 (groupID 1, threadID_in_group 1): a0 = (1,2).
    a = L.mma_a("m16n8k16.f16")
    assert a[0].tolist() == [[0, 0], [0, 1], [8, 0], [8, 1], [0, 8], [0, 9], [8, 8], [8, 9]]
    assert a[5, 0].tolist() == [1, 2]
    # m16n8k16 B, lane 6: b0,b1 = k (4,5), b2,b3 = k (12,13), column 1.
    assert L.mma_b("m16n8k16.f16")[6].tolist() == [[4, 1], [5, 1], [12, 1], [13, 1]]
    # m16n8k8 .tf32, lane 7 (groupID 1, threadID_in_group 3): a0..a3 = (1,3),(9,3),(1,7),(9,7); b0,b1 = (3,1),(7,1).
    assert L.mma_a("m16n8k8.tf32")[7].tolist() == [[1, 3], [9, 3], [1, 7], [9, 7]]
    assert L.mma_b("m16n8k8.tf32")[7].tolist() == [[3, 1], [7, 1]]
    # C of both shapes, lane 31: (7,6),(7,7),(15,6),(15,7).
    assert L.mma_c()[31].tolist() == [[7, 6], [7, 7], [15, 6], [15, 7]]


@pytest.mark.parametrize("shape", list(L.SHAPES))
def test_warp_mma_through_the_layouts_is_a_matrix_product(shape):
    M, N, K, _ = L.SHAPES[shape]
    rng = np.random.default_rng(3)
    A, B, C = rng.standard_normal((M, K)), rng.standard_normal((K, N)), rng.standard_normal((M, N))
    d = L.warp_mma(shape, L.scatter(A, L.mma_a(shape)), L.scatter(B, L.mma_b(shape)), L.scatter(C, L.mma_c()))
    np.testing.assert_allclose(L.gather(d, L.mma_c(), M, N), A @ B + C, rtol=1e-12)


def _ldmatrix_x4(mats: np.ndarray, trans: bool) -> np.ndarray:
    """Registers [32, 4 regs, 2 halves] that ldmatrix.x4 gives for four 8x8 matrices."""
    t = L.ldmatrix(trans)
    return np.array([[[mats[j][tuple(t[lane, j, h])] for h in range(2)] for j in range(4)] for lane in range(32)])


def test_ldmatrix_trans_is_the_transpose():
    mats = np.arange(4 * 64).reshape(4, 8, 8)
    np.testing.assert_array_equal(_ldmatrix_x4(mats, True), _ldmatrix_x4(mats.transpose(0, 2, 1), False))


def test_kernel_fragment_scheme_gives_the_mma_layouts():
    """gemm_tc.cl's addressing (tc_frag_a, tc_frags_b) composed with ldmatrix, in NumPy.

    A (both modes): lane 8j+i points at row i + 8*(j%2) of the 16-row tile, 16-byte chunk j//2
    of the k-step; a chunk is 8 float16 or 4 TF32 elements (2 halves each). B float16 (.trans):
    lane 8j+i points at k-row i + 8*(j%2), column block 8*(j//2), for two n-tiles at once.
    """
    # float16 A, 16 x 16 elements
    A = np.arange(256).reshape(16, 16)
    mats = np.stack([A[8 * (j % 2): 8 * (j % 2) + 8, 8 * (j // 2): 8 * (j // 2) + 8] for j in range(4)])
    regs = _ldmatrix_x4(mats, False).reshape(32, 8)  # element 2r+h is half h of register r
    np.testing.assert_array_equal(regs, L.scatter(A, L.mma_a("m16n8k16.f16")))
    # TF32 A, 16 x 8 floats: each float is two 16-bit halves; ldmatrix moves them as pairs.
    A32 = np.arange(128).reshape(16, 8)
    halves = np.stack([A32 * 2, A32 * 2 + 1], -1).reshape(16, 16)  # half index of each float
    mats = np.stack([halves[8 * (j % 2): 8 * (j % 2) + 8, 8 * (j // 2): 8 * (j // 2) + 8] for j in range(4)])
    regs = _ldmatrix_x4(mats, False)  # [32, 4, 2]: both halves of one float per register
    assert (regs[..., 1] == regs[..., 0] + 1).all() and (regs[..., 0] % 2 == 0).all()
    np.testing.assert_array_equal(regs[..., 0] // 2, L.scatter(A32, L.mma_a("m16n8k8.tf32")))
    # float16 B, k 16 x n 16 (two n-tiles), stored [k][n], loaded with .trans
    B = np.arange(256).reshape(16, 16)
    mats = np.stack([B[8 * (j % 2): 8 * (j % 2) + 8, 8 * (j // 2): 8 * (j // 2) + 8] for j in range(4)])
    regs = _ldmatrix_x4(mats, True)  # registers 0,1: tile 0; 2,3: tile 1
    for tile in range(2):
        got = regs[:, 2 * tile: 2 * tile + 2].reshape(32, 4)
        np.testing.assert_array_equal(got, L.scatter(B[:, 8 * tile: 8 * tile + 8], L.mma_b("m16n8k16.f16")))


# ---- the kernel, emulated -----------------------------------------------------------------
def _variant(mode, BM, BN, BK, WM, WN, STAGES, ASYNC, LDSM, GM=1, RS=0):
    return dict(TC_MODE=mode, BM=BM, BN=BN, BK=BK, WM=WM, WN=WN, STAGES=STAGES, ASYNC=ASYNC, LDSM=LDSM, GM=GM,
                RS=RS)


VARIANTS = [
    _variant(32, 64, 64, 16, 2, 2, 3, 1, 1, GM=2),    # TF32, cp.async ring of 3, ldmatrix A
    _variant(32, 32, 64, 8, 1, 2, 2, 0, 0),           # TF32, register-staged, plain loads, 2-chunk rows
    _variant(32, 64, 64, 16, 2, 2, 2, 1, 0, RS=1),    # TF32 rounded in shared memory once landed (cvt)
    _variant(32, 32, 64, 16, 1, 2, 4, 1, 1, RS=2),    # ... with integer operations
    _variant(16, 64, 64, 32, 2, 2, 4, 1, 1),          # float16, ring of 4, ldmatrix A and B.trans
    _variant(16, 32, 64, 16, 1, 2, 2, 0, 0, GM=3),    # float16, register-staged, plain loads
    _variant(16, 64, 128, 32, 1, 4, 2, 1, 1),         # float16, 8 threads' worth of chunks per row
]


def _vid(v):
    return "{}-{}x{}x{}-w{}x{}-s{}-a{}-l{}-g{}-r{}".format(
        "tf32" if v["TC_MODE"] == 32 else "f16", v["BM"], v["BN"], v["BK"], v["WM"], v["WN"],
        v["STAGES"], v["ASYNC"], v["LDSM"], v["GM"], v["RS"])


@pytest.fixture(scope="module")
def emu_dir(tmp_path_factory):
    """The emulator builds, one per set of options, shared by the run's xdist workers."""
    if tc_emulator.compiler() is None:
        pytest.skip("no C++ compiler (g++ or clang++) for the host emulation")
    return shared_dir(tmp_path_factory, "tc_emu")


def _exe(emu_dir, options):
    try:
        return tc_emulator.build(emu_dir, options)
    except RuntimeError as e:
        if "barrier" in str(e) and "No such file" in str(e):
            pytest.skip(f"the C++ compiler lacks C++20 <barrier>: {str(e)[:300]}")
        raise


def tf32_round(x: np.ndarray) -> np.ndarray:
    """float32 -> TF32 values, rounded to nearest with ties away from zero (cvt.rna)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def emulate(emu_dir, options, M, N, K, *, batch=(1, 1, 1), b_broadcast=(), pad=1, seed=0, late=False):
    """Run the emulated kernel on random operands laid out as gemm.py passes them (row
    strides padded to whole chunks plus `pad` chunks, offsets of whole chunks, B broadcast
    over the batch dims in `b_broadcast`); returns (C, A, B) with A, B as [batch, ...] values."""
    mode = options["TC_MODE"]
    dt = F32 if mode == 32 else F16
    ce = 16 // dt.itemsize
    rng = np.random.default_rng(seed)
    nb = int(np.prod(batch))
    lda = -(-K // ce) * ce + pad * ce
    ldb = -(-N // ce) * ce + pad * ce
    a_off, b_off = 2 * ce, ce
    a = rng.uniform(-1, 1, (nb, M, K)).astype(dt)
    b_own = tuple(1 if i in b_broadcast else n for i, n in enumerate(batch))
    b = rng.uniform(-1, 1, b_own + (K, N)).astype(dt)
    a_buf = np.zeros(a_off + nb * M * lda + 7, dt)
    a_buf[a_off: a_off + nb * M * lda].reshape(nb, M, lda)[..., :K] = a
    nbo = int(np.prod(b_own))
    b_buf = np.zeros(b_off + nbo * K * ldb, dt)
    b_buf[b_off:].reshape(nbo, K, ldb)[..., :N] = b.reshape(nbo, K, N)
    pa = (batch[1] * batch[2] * M * lda, batch[2] * M * lda, M * lda)
    own_str = (b_own[1] * b_own[2] * K * ldb, b_own[2] * K * ldb, K * ldb)
    pb = tuple(0 if i in b_broadcast else s for i, s in enumerate(own_str))
    bits = np.uint32 if mode == 32 else np.uint16
    c = tc_emulator.run(_exe(emu_dir, options), emu_dir, a_buf.view(bits), b_buf.view(bits),
                        M=M, N=N, K=K, lda=lda, ldb=ldb, batch=batch, pa=pa, pb=pb,
                        a_off=a_off, b_off=b_off, late=late, out_dtype=dt)
    b_full = np.broadcast_to(b, batch + (K, N)).reshape(nb, K, N)
    return c, a, b_full


def check(c, a, b, mode, what):
    """The contract's bound in the mode (TF32: unit roundoff 2^-11 as float16's; float16:
    float32 accumulation, float16 result), and for TF32 also the float32 bound against the
    product of the inputs rounded to TF32 by cvt.rna (an indexing or rounding slip fails it)."""
    K = a.shape[-1]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref, mag = a64 @ b64, np.abs(a64) @ np.abs(b64)
    if mode == 32:
        assert_agrees(c, ref, mag, K, F16, F32, what + " (TF32 bound)")
        ar, br = tf32_round(a).astype(np.float64), tf32_round(b).astype(np.float64)
        assert_agrees(c, ar @ br, np.abs(ar) @ np.abs(br), K, F32, F32, what + " (inputs rounded to TF32)")
    else:
        assert_agrees(c, ref, mag, K, F32, F16, what)


CASES = [  # (M, N, K, batch, broadcast batch dims of B)
    (37, 70, 45, (1, 1, 1), ()),      # ragged everywhere (K and N not whole chunks)
    (64, 128, 64, (1, 1, 1), ()),     # whole tiles
    (20, 9, 3, (2, 1, 3), (0,)),      # batched, B broadcast over the outer batch dim, K < one chunk
    (70, 130, 100, (1, 1, 1), ()),    # several tiles and k-slices, all edges ragged
]


@pytest.mark.parametrize("late", [False, True], ids=["copies-early", "copies-late"])
@pytest.mark.parametrize("options", VARIANTS, ids=_vid)
def test_emulated_tc_kernel(emu_dir, options, late):
    mode = options["TC_MODE"]
    for i, (M, N, K, batch, bcast) in enumerate(CASES):
        c, a, b = emulate(emu_dir, options, M, N, K, batch=batch, b_broadcast=bcast, seed=i, late=late,
                          pad=i % 2)
        check(c, a, b, mode, f"{_vid(options)} M={M} N={N} K={K} batch={batch}")
        # the swizzle keeps every ldmatrix conflict-free (8 rows in 8 bank groups)
        assert tc_emulator.stats.get("ldmatrix_bank_conflicts") == 0, tc_emulator.stats


def test_emulated_tc_default_tiles(emu_dir):
    """The built-in default parameters of both modes (256 work-items, 128 x 128 tiles)."""
    for mode, key in ((32, "gemm_tc32"), (16, "gemm_tc16")):
        options = {"TC_MODE": mode, **tc.DEFAULTS[key]}
        c, a, b = emulate(emu_dir, options, 130, 200, 77, seed=mode, late=True)
        check(c, a, b, mode, f"default {key}")


def test_emulated_tc_rounds_tf32_to_nearest(emu_dir):
    """Inputs whose low 13 bits are all ones: truncation (what the tensor cores do to an
    unrounded float) is 2^-10 relative off; round-to-nearest is within 2^-11."""
    for options in (v for v in VARIANTS if v["TC_MODE"] == 32):
        _rounds_to_nearest(emu_dir, options)


def _rounds_to_nearest(emu_dir, options):
    M, N, K = 16, 8, 1
    c, a, b = emulate(emu_dir, options, M, N, K, seed=5)
    ones = np.float32(1 + 2.0**-10 - 2.0**-23)  # 1.000...0111...1: 13 low bits set
    a_buf = np.full((M, 4), ones, np.float32)
    b_buf = np.full((1, 8), ones, np.float32)
    exe = _exe(emu_dir, options)
    got = tc_emulator.run(exe, emu_dir, a_buf.view(np.uint32).ravel(), b_buf.view(np.uint32).ravel(),
                          M=M, N=N, K=K, lda=4, ldb=8)
    expected = float(tf32_round(np.array([ones]))[0]) ** 2  # (1 + 2^-10)^2
    np.testing.assert_array_equal(got, np.float32(expected))


# ---- PTX compiles -------------------------------------------------------------------------
def _nvcc() -> str | None:
    import os

    for cand in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and Path(cand).exists():
            return cand
    return None


ARCHS = ["sm_80", "sm_90"]
PRELUDE = REPO / "bench" / "tc_cuda_prelude.h"

SNIPPETS = r"""
extern "C" __global__ void tc_snippets(float* out, const uint* in) {
    __shared__ uint4 s[64];
    uint a[4] = {in[0], in[1], in[2], in[3]}, b[2] = {in[4], in[5]}, r[4], q[4];
    float d[4] = {0, 0, 0, 0};
    tc_cp_async16(&s[threadIdx.x % 64], in + 4 * (threadIdx.x % 64), 16);
    tc_cp_async16(&s[(threadIdx.x + 1) % 64], in, 0);
    tc_cp_commit();
    TC_CP_WAIT(0);
    __syncthreads();
    tc_ldsm_x4(r, &s[threadIdx.x % 32]);
    tc_ldsm_x4_trans(q, &s[threadIdx.x % 32]);
    a[0] = tc_tf32(a[0] ^ r[0] ^ q[0]);
    tc_mma(d, a, b);
    out[threadIdx.x] = d[0] + d[1] + d[2] + d[3] + (float)(r[1] + q[2]);
}
"""


@pytest.mark.parametrize("mode", [32, 16], ids=["tf32", "f16"])
def test_tc_ptx_snippets_compile_with_nvcc(tmp_path, mode):
    """Every instruction of tc_ptx.cl, assembled by ptxas for sm_80 and sm_90 (-cubin)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit)")
    src = tmp_path / "snippets.cu"
    src.write_text(PRELUDE.read_text() + (OPENCL_DIR / "tc_ptx.cl").read_text() + SNIPPETS)
    for arch in ARCHS:
        r = subprocess.run([nvcc, f"-arch={arch}", "-cubin", f"-DTC_MODE={mode}", str(src),
                            "-o", str(tmp_path / f"{arch}.cubin")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"nvcc -arch={arch} rejects tc_ptx.cl:\n{r.stderr}"


@pytest.mark.parametrize("key", ["gemm_tc32", "gemm_tc16"])
def test_tc_kernel_compiles_as_cuda_for_sm80_and_sm90(tmp_path, key):
    """The OpenCL kernel's own text as CUDA (what bench/tc_cuda.py runs), default tiles and
    the register-staged variant; ptxas must fit it in registers without spilling."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit)")
    src = tmp_path / "gemm_tc.cu"
    src.write_text("\n".join(p.read_text() for p in
                             (PRELUDE, OPENCL_DIR / "tc_ptx.cl", OPENCL_DIR / "gemm_tc.cl")))
    mode = 32 if key == "gemm_tc32" else 16
    for extra in ({}, {"ASYNC": 0, "LDSM": 0, "STAGES": 2, "WN": 4}):  # (register path: 64 x 32 warp tiles)
        opts = {"TC_MODE": mode, **tc.DEFAULTS[key], **extra}
        for arch in ARCHS:
            r = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-Xptxas", "-v",
                                *(f"-D{k}={v}" for k, v in opts.items()), str(src),
                                "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"nvcc -arch={arch} {opts}:\n{r.stderr}"
            assert " 0 bytes spill stores" in r.stderr, f"{arch} {opts} spills:\n{r.stderr}"


def _nvrtc():
    """NVRTC through tests/backends/test_cuda.py's ctypes binding (CuPy compiles with it)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("test_cuda_nvrtc", Path(__file__).with_name("test_cuda.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(mod)
    lib, where = mod.find_nvrtc()
    if lib is None:
        pytest.skip(where)
    return lambda src, opts: mod.nvrtc_compile(lib, src, "gemm_tc.cu", opts)


@pytest.mark.parametrize("key", ["gemm_tc32", "gemm_tc16"])
def test_tc_kernel_compiles_with_nvrtc_as_cupy_does(key):
    """bench/tc_check.py builds the CUDA twin with CuPy's RawModule, i.e. NVRTC, whose
    front end differs from nvcc's (it knows no __asm__)."""
    compile_ = _nvrtc()
    src = "\n".join(p.read_text() for p in (PRELUDE, OPENCL_DIR / "tc_ptx.cl", OPENCL_DIR / "gemm_tc.cl"))
    mode = 32 if key == "gemm_tc32" else 16
    for arch in ("compute_80", "compute_90"):
        opts = [f"--gpu-architecture={arch}", "-std=c++17",
                *(f"-D{k}={v}" for k, v in {"TC_MODE": mode, **tc.DEFAULTS[key]}.items())]
        status, log, ptx = compile_(src, opts)
        assert status == 0, f"NVRTC {arch}: {log}"
        assert "mma.sync.aligned" in ptx and "cp.async" in ptx


CLANG_SHIM = r"""
void __syncthreads(void) __asm("llvm.nvvm.barrier0");
#define AI __attribute__((overloadable, always_inline))
size_t AI get_local_id(uint d) { return d == 0 ? __nvvm_read_ptx_sreg_tid_x() : d == 1 ? __nvvm_read_ptx_sreg_tid_y() : __nvvm_read_ptx_sreg_tid_z(); }
size_t AI get_group_id(uint d) { return d == 0 ? __nvvm_read_ptx_sreg_ctaid_x() : d == 1 ? __nvvm_read_ptx_sreg_ctaid_y() : __nvvm_read_ptx_sreg_ctaid_z(); }
size_t AI get_num_groups(uint d) { return d == 0 ? __nvvm_read_ptx_sreg_nctaid_x() : d == 1 ? __nvvm_read_ptx_sreg_nctaid_y() : __nvvm_read_ptx_sreg_nctaid_z(); }
void AI barrier(cl_mem_fence_flags f) { __syncthreads(); }
// (no OpenCL built-in library here: the float16 epilogue store is replaced by a plain one)
#define TC_STORE_F16(v, p, i) ((p)[(i)] = (ushort)(as_uint(v) >> 16))
#if TC_MODE == 16
#define TC_STORE2(a, b, p, i) (*(__global uint*)((p) + (i)) = as_uint(a) >> 16 | (as_uint(b) & 0xffff0000u))
#endif
"""


def _llvm_tools():
    clang = shutil.which("clang-15") or shutil.which("clang")
    llc = shutil.which("llc-15") or shutil.which("llc")
    ptxas = shutil.which("ptxas")
    return clang, llc, ptxas


@pytest.mark.parametrize("key", ["gemm_tc32", "gemm_tc16"])
def test_tc_kernel_compiles_as_opencl_c_through_clang_and_ptxas(tmp_path, key):
    """The OpenCL C text (tc_ptx.cl + gemm_tc.cl, as the backend builds it) through clang's
    OpenCL front end (target nvptx64-nvidia-nvcl), LLVM's PTX back end and ptxas for sm_80
    and sm_90. Not NVIDIA's OpenCL compiler, but the same path to ptxas: the inline asm's
    operand constraints and the local-memory addresses it receives are checked."""
    clang, llc, ptxas = _llvm_tools()
    if not (clang and llc and ptxas):
        pytest.skip(f"needs clang, llc and ptxas (found {clang}, {llc}, {ptxas})")
    src = tmp_path / "k.cl"
    src.write_text(CLANG_SHIM + (OPENCL_DIR / "tc_ptx.cl").read_text() + "\n" + (OPENCL_DIR / "gemm_tc.cl").read_text())
    mode = 32 if key == "gemm_tc32" else 16
    for extra in ({}, {"ASYNC": 0, "LDSM": 0, "STAGES": 2, "WN": 4}):  # (register path: 64 x 32 warp tiles)
        opts = [f"-D{k}={v}" for k, v in {"TC_MODE": mode, **tc.DEFAULTS[key], **extra}.items()]
        r = subprocess.run([clang, "-x", "cl", "-cl-std=CL1.2", "-target", "nvptx64-nvidia-nvcl",
                            "-O3", "-S", "-emit-llvm", "-Xclang", "-finclude-default-header", *opts, str(src),
                            "-o", str(tmp_path / "k.ll")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"clang {opts}:\n{r.stderr}"
        r = subprocess.run([llc, "-O3", "-march=nvptx64", "-mcpu=sm_80", str(tmp_path / "k.ll"), "-o",
                            str(tmp_path / "k.ptx")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"llc {opts}:\n{r.stderr}"
        ptx = (tmp_path / "k.ptx").read_text()
        assert "mma.sync.aligned" in ptx
        for arch in ARCHS:
            r = subprocess.run([ptxas, f"-arch={arch}", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")],
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, f"ptxas -arch={arch} {opts}:\n{r.stderr}"


# ---- the backend's tc path (gemm._tc: in place or packed, strides, launch) -----------------
@pytest.fixture
def tc_on_pocl(emu_dir, monkeypatch):
    """The OpenCL device of this machine with the tc family forced on; gemm_tc.cl launches
    run in the emulator on the device's real buffers (packing runs for real, on PoCL)."""
    from availability import require

    dev = require("opencl")
    import pyopencl as cl

    monkeypatch.setattr(dev, "family", "gpu")
    monkeypatch.setattr(dev, "tc_reason", None)
    monkeypatch.setitem(dev.params, "small_work", 0)
    launches = []
    real_kernel, real_launch = dev.kernel, dev.launch

    def kernel(file, name, options):
        return None if file == "gemm_tc.cl" else real_kernel(file, name, options)

    def host(buf):
        h = np.empty(buf.size, np.uint8)
        cl.enqueue_copy(dev.queue, h, buf, is_blocking=True)
        return h

    def launch(file, name, options, global_size, local_size, *args):
        if file != "gemm_tc.cl":
            return real_launch(file, name, options, global_size, local_size, *args)
        c_buf, a_buf, a_off, b_buf, b_off, M, N, K, lda, ldb, n1, n2, *strides = args
        n1, n2 = int(n1), int(n2)
        batch = (int(global_size[2]) // (n1 * n2), n1, n2)
        launches.append({"options": options, "lda": int(lda), "ldb": int(ldb), "a_off": int(a_off),
                         "b_off": int(b_off), "batch": batch, "local": local_size,
                         "groups": (global_size[0] // local_size[0], global_size[1])})
        assert local_size == (options["WM"] * options["WN"] * 32, 1, 1)
        out_dt = np.float32 if options["TC_MODE"] == 32 else np.float16
        c = tc_emulator.run(_exe(emu_dir, options), emu_dir, host(a_buf), host(b_buf), M=int(M), N=int(N), K=int(K),
                            lda=int(lda), ldb=int(ldb), batch=batch, pa=tuple(map(int, strides[:3])),
                            pb=tuple(map(int, strides[3:])), a_off=int(a_off), b_off=int(b_off), out_dtype=out_dt)
        cl.enqueue_copy(dev.queue, c_buf, np.ascontiguousarray(c), is_blocking=True)

    monkeypatch.setattr(dev, "kernel", kernel)
    monkeypatch.setattr(dev, "launch", launch)
    return dev, launches


def _tc_small(dev, key):
    """Small tiles so the emulator runs few work-items (the defaults are covered above)."""
    return {**dev.params[key], "BM": 32, "BN": 64, "BK": 16 if key == "gemm_tc32" else 32, "WM": 1, "WN": 2,
            "STAGES": 3, "GM": 2}


@pytest.mark.parametrize("dt", [np.float16, np.float32], ids=["f16", "tf32"])
def test_backend_tc_path_in_place_and_packed(tc_on_pocl, monkeypatch, dt):
    import xdev

    dev, launches = tc_on_pocl
    dt = np.dtype(dt)
    mode = 32 if dt == F32 else 16
    monkeypatch.setitem(dev.params, tc.KEYS[mode], _tc_small(dev, tc.KEYS[mode]))
    monkeypatch.setattr(dev, "force_tf32", True)
    rng = np.random.default_rng(9)
    ce = 16 // dt.itemsize

    def run(xa, xb, ha, hb, what):
        c = xdev.matmul(xa, xb).numpy()
        check(c, ha, hb, mode, what)
        return launches[-1]

    up = lambda h: xdev.asarray(h, backend=dev.key)  # noqa: E731
    # contiguous, rows whole chunks: read in place
    ha, hb = rng.uniform(-1, 1, (40, 8 * ce)).astype(dt), rng.uniform(-1, 1, (8 * ce, 9 * ce)).astype(dt)
    L_ = run(up(ha), up(hb), ha, hb, "in place")
    assert (L_["lda"], L_["ldb"], L_["a_off"], L_["b_off"]) == (8 * ce, 9 * ce, 0, 0)
    # ragged rows (K and N not whole chunks): both packed, rows padded to whole chunks
    ha, hb = rng.uniform(-1, 1, (37, 45)).astype(dt), rng.uniform(-1, 1, (45, 70)).astype(dt)
    L_ = run(up(ha), up(hb), ha, hb, "packed")
    assert (L_["lda"], L_["ldb"]) == (-(-45 // ce) * ce, -(-70 // ce) * ce)
    # views: A a slice of a wider array at a chunk offset (in place), B transposed (packed)
    wide = rng.uniform(-1, 1, (33, 3 * ce + 50)).astype(dt)
    hbt = rng.uniform(-1, 1, (21, 50)).astype(dt)
    xa = up(wide)[:, 3 * ce: 3 * ce + 50]
    L_ = run(xa, up(hbt).T, wide[:, 3 * ce: 3 * ce + 50], hbt.T, "slice and transpose")
    assert L_["a_off"] == 0 and L_["lda"] == -(-50 // ce) * ce  # row length 3*ce+50: not whole chunks
    wide = rng.uniform(-1, 1, (33, 10 * ce)).astype(dt)
    L_ = run(up(wide)[:, 3 * ce: 9 * ce], up(hbt[:, :6 * ce]).T, wide[:, 3 * ce: 9 * ce], hbt[:, :6 * ce].T, "slice")
    assert (L_["lda"], L_["a_off"]) == (10 * ce, 3 * ce)
    # batched with B broadcast over the leading batch dim, in place
    ha, hb = rng.uniform(-1, 1, (2, 3, 20, 3 * ce)).astype(dt), rng.uniform(-1, 1, (3, 3 * ce, 2 * ce)).astype(dt)
    L_ = run(up(ha), up(hb), ha, hb, "batched")
    assert L_["batch"][0] * L_["batch"][1] * L_["batch"][2] == 6
    assert all(L_["options"]["TC_MODE"] == mode for L_ in launches)


def test_backend_tc_path_follows_the_numeric_mode(tc_on_pocl, monkeypatch):
    """float32 goes to the tensor cores only with TF32 asked for; float64 never."""
    import xdev

    dev, launches = tc_on_pocl
    from xdev.backends.opencl import gemm

    monkeypatch.setattr(dev, "force_tf32", None)
    monkeypatch.delenv("XDEV_OPENCL_TF32", raising=False)
    monkeypatch.delenv("XDEV_CUDA_TF32", raising=False)
    assert gemm.family(dev, 64, 64, 64, F32) != "tc" and dev.acc_dtype(F32) == F32
    assert gemm.family(dev, 64, 64, 64, F16) == "tc"
    monkeypatch.setenv("XDEV_CUDA_TF32", "1")
    assert gemm.family(dev, 64, 64, 64, F32) == "tc" and dev.acc_dtype(F32) == F16
    monkeypatch.setenv("XDEV_OPENCL_TF32", "0")
    assert gemm.family(dev, 64, 64, 64, F32) != "tc"
    if dev.has_fp64:
        monkeypatch.setenv("XDEV_OPENCL_TF32", "1")
        assert gemm.family(dev, 64, 64, 64, np.dtype(np.float64)) != "tc"
    monkeypatch.delenv("XDEV_OPENCL_TF32")
    a = np.ones((24, 24), np.float32)
    xdev.matmul(xdev.asarray(a, backend=dev.key), xdev.asarray(a, backend=dev.key)).numpy()
    assert launches and launches[-1]["options"]["TC_MODE"] == 32


# ---- selection: which devices, which modes ---------------------------------------------------
class _FakeCLDevice:
    """What tc.support reads of a pyopencl.Device (NVIDIA's attribute names)."""

    def __init__(self, extensions="cl_khr_fp64 cl_nv_device_attribute_query", cc=(9, 0), fails=False):
        self.extensions = extensions
        self._cc, self._fails = cc, fails

    @property
    def compute_capability_major_nv(self):
        if self._fails:
            raise RuntimeError("CL_INVALID_VALUE")
        return self._cc[0]

    @property
    def compute_capability_minor_nv(self):
        return self._cc[1]


@pytest.mark.parametrize("platform, device, ok, why", [
    ("NVIDIA CUDA", _FakeCLDevice(cc=(9, 0)), True, ""),                 # H100/H200
    ("NVIDIA CUDA", _FakeCLDevice(cc=(8, 0)), True, ""),                 # A100
    ("NVIDIA CUDA", _FakeCLDevice(cc=(8, 9)), True, ""),                 # RTX 40xx
    ("NVIDIA CUDA", _FakeCLDevice(cc=(7, 5)), False, "compute capability 7.5"),
    ("NVIDIA CUDA", _FakeCLDevice(extensions="cl_khr_fp64"), False, "cl_nv_device_attribute_query"),
    ("NVIDIA CUDA", _FakeCLDevice(fails=True), False, "query failed"),
    ("AMD Accelerated Parallel Processing", _FakeCLDevice(), False, "NVIDIA's OpenCL platform"),
    ("Portable Computing Language", _FakeCLDevice(), False, "NVIDIA's OpenCL platform"),
])
def test_support_needs_nvidia_and_compute_capability_8(platform, device, ok, why):
    reason = tc.support(platform, device)
    assert (reason is None) == ok
    if not ok:
        assert why in reason


class _FakeDev:
    def __init__(self, tc_reason=None, family="gpu", force_tf32=None):
        self.tc_reason, self.family, self.force_tf32 = tc_reason, family, force_tf32


def test_mode_follows_the_cuda_backends_rules(monkeypatch):
    monkeypatch.delenv("XDEV_OPENCL_TF32", raising=False)
    monkeypatch.delenv("XDEV_CUDA_TF32", raising=False)
    dev = _FakeDev()
    assert tc.mode(dev, F16) == 16                      # float16: always, fp32 accumulation
    assert tc.mode(dev, F32) is None                    # float32: strict unless asked
    assert tc.mode(dev, np.dtype(np.float64)) is None
    monkeypatch.setenv("XDEV_CUDA_TF32", "1")           # the CUDA switch covers OpenCL too ...
    assert tc.mode(dev, F32) == 32
    monkeypatch.setenv("XDEV_OPENCL_TF32", "off")       # ... unless the OpenCL twin says otherwise
    assert tc.mode(dev, F32) is None
    monkeypatch.delenv("XDEV_CUDA_TF32")
    monkeypatch.setenv("XDEV_OPENCL_TF32", "1")
    assert tc.mode(dev, F32) == 32
    assert tc.mode(_FakeDev(force_tf32=False), F32) is None  # the proof and tuner choose for themselves
    assert tc.mode(_FakeDev(tc_reason="compute capability 7.5 ..."), F16) is None
    assert tc.mode(_FakeDev(family="cpu"), F16) is None     # XDEV_OPENCL_KERNELS=cpu: never
    monkeypatch.setenv("XDEV_OPENCL_TF32", "maybe")
    with pytest.raises(ValueError, match="XDEV_OPENCL_TF32='maybe' is not valid"):
        tc.mode(dev, F32)


def _fake_nvidia_cand(cc=(9, 0)):
    class Plat:
        name = "NVIDIA CUDA"
        version = "OpenCL 3.0 CUDA 13.0.0"

    class Dev(_FakeCLDevice):
        name = "NVIDIA H200"
        driver_version = "580.00"

    class Cand:
        p, d, key, label = 0, 0, "opencl:0:0", "NVIDIA H200 (CUDA 13.0.0)"
        platform = Plat()
        device = Dev(cc=cc)

    return Cand()


def test_proof_checks_the_tc_family_on_a_faked_nvidia_device(tmp_path, monkeypatch):
    """A device that passes the main check but whose tensor-core check fails stays usable,
    with the tc family off and the reason cached; a passing one keeps it; a device below
    compute capability 8.0 never runs the tc check."""
    pytest.importorskip("pyopencl")
    from xdev.backends.opencl import proof

    monkeypatch.setenv("XDEV_CACHE_DIR", str(tmp_path))
    params = {"gemm": {"VW": 4, "VWD": 2}, "conv": {"VW": 4, "VWD": 2}}
    monkeypatch.setattr(proof, "run_child", lambda cand, vw, first: None)
    tc_runs = []

    def tc_child(cand, vw, params=None):
        tc_runs.append(vw)
        return "vector width 4: AssertionError: tensor-core matmul in place, ragged (float16) gave wrong results"

    monkeypatch.setattr(proof, "run_tc_child", tc_child)
    cand = _fake_nvidia_cand()
    assert proof.prove(cand, "gpu", params) == (4, None)
    assert tc_runs == [4] and "wrong results" in proof.tc_failure(cand)
    proof._tc_failures.clear()
    assert proof.prove(cand, "gpu", params) == (4, None)  # cached: no child, the failure remembered
    assert tc_runs == [4] and "wrong results" in proof.tc_failure(cand)
    # a hang is not worth remembering: proven again by the next process
    for f in (tmp_path / "opencl-proof").glob("*.json"):
        f.unlink()
    monkeypatch.setattr(proof, "run_tc_child", lambda cand, vw, params=None: "vector width 4: hung (no progress for 40 s)")
    proof.prove(cand, "gpu", params)
    assert not list((tmp_path / "opencl-proof").glob("*.json"))
    monkeypatch.setattr(proof, "run_tc_child", lambda cand, vw, params=None: tc_runs.append(vw))  # passes
    assert proof.prove(cand, "gpu", params) == (4, None) and proof.tc_failure(cand) is None
    tc_runs.clear()
    for f in (tmp_path / "opencl-proof").glob("*.json"):
        f.unlink()
    proof.prove(_fake_nvidia_cand(cc=(7, 5)), "gpu", params)
    proof.prove(cand, "cpu", params)  # the CPU family forced (XDEV_OPENCL_KERNELS=cpu)
    assert tc_runs == []


# ---- the tuner's search space ---------------------------------------------------------------
@pytest.mark.parametrize("mode", [32, 16])
@pytest.mark.parametrize("limits", [(1024, 48 * 1024), (256, 32 * 1024)], ids=["nvidia-48k", "small"])
def test_tuner_search_space(mode, limits):
    """Every candidate compiles by gemm_tc.cl's #error rules and fits the device (work-group
    size, local memory, at most 128 accumulators); stage 1 starts with the built-in
    default's shape; stage 2 changes one parameter (BK keeps the deepest ring that fits)."""
    first = tc.shapes(mode, *limits)
    assert first and len({tuple(sorted(t.items())) for t in first}) == len(first)
    assert all(tc.valid(mode, t, *limits) for t in first)
    d = tc.DEFAULTS[tc.KEYS[mode]]
    if tc.valid(mode, d, *limits):
        assert {k: first[0][k] for k in ("BM", "BN", "WM", "WN")} == {k: d[k] for k in ("BM", "BN", "WM", "WN")}
    for t in first:
        assert tc.local_bytes(mode, t) <= limits[1] and t["WM"] * t["WN"] * 32 <= limits[0]
        assert t["BM"] // t["WM"] // 16 * (t["BN"] // t["WN"] // 8) * 4 <= 128
    best = first[0]
    for step in tc.TC_STEPS:
        for t in tc.neighbours(mode, best, step, *limits):
            assert tc.valid(mode, t, *limits) and t != best
            changed = {k for k in t if t[k] != best[k]}
            assert changed <= {step[0], "STAGES"}, (step, changed)
    # invalid tilings are refused, by the kernel's own rules
    assert not tc.valid(mode, {**d, "BK": 12})
    assert not tc.valid(mode, {**d, "ASYNC": 0, "STAGES": 3})
    assert not tc.valid(mode, {**d, "BM": 256, "BN": 256})  # 48 KiB exceeded, 256 accumulators


def test_tuned_tc_entries_are_validated():
    pytest.importorskip("pyopencl")
    from xdev.backends.opencl import params

    assert params.validate_entry({"gemm_tc16": {"BN": 256, "WN": 4, "STAGES": 2}}) is None
    assert "not a valid tensor-core GEMM tiling" in params.validate_entry({"gemm_tc32": {"BK": 12}})
    assert "expected an int in" in params.validate_entry({"gemm_tc16": {"STAGES": 9}})
    assert "unknown parameter" in params.validate_entry({"gemm_tc16": {"XYZ": 1}})


# ---- bench/tc_check.py on the H200's parameters -----------------------------------------------
# What python -m xdev.info reported for NVIDIA's OpenCL on the H200 (run of 2026-12-04): the
# numbers gemm.family reads. tc_check once left small_work there, so its odd shapes ran
# gemm_small.cl instead of the tc family.
H200_PARAMS = {"xl_work": 4194304, "small_work": 524288, "KB": 64,
               "gemm_tc16": {"BM": 128, "BN": 128, "BK": 32, "WM": 2, "WN": 4, "STAGES": 3, "ASYNC": 1, "LDSM": 1,
                             "GM": 8, "RS": 0},
               "gemm_tc32": {"BM": 128, "BN": 128, "BK": 16, "WM": 2, "WN": 4, "STAGES": 3, "ASYNC": 1, "LDSM": 1,
                             "GM": 8, "RS": 0}}


@pytest.mark.parametrize("mode", ["f16", "tf32"])
def test_tc_check_selects_the_tc_family_for_every_shape_it_checks(mode, monkeypatch):
    pytest.importorskip("pyopencl")
    import copy
    import importlib.util
    import sys
    from types import SimpleNamespace

    from xdev.backends.opencl import gemm

    spec = importlib.util.spec_from_file_location("tc_check_under_test", REPO / "bench" / "tc_check.py")
    tc_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, tc_check)
    spec.loader.exec_module(tc_check)
    monkeypatch.delenv("XDEV_OPENCL_TF32", raising=False)
    monkeypatch.delenv("XDEV_CUDA_TF32", raising=False)
    dev = SimpleNamespace(family="gpu", tc_reason="the tensor-core GEMM failed the device proof: ...",
                          force_tf32=None, params=copy.deepcopy(H200_PARAMS))
    dt = F32 if mode == "tf32" else F16
    for name, v in tc_check.VARIANTS[mode].items():
        key = tc.KEYS[32 if mode == "tf32" else 16]
        t = {**tc.DEFAULTS[key], **v}
        assert tc.valid(32 if mode == "tf32" else 16, t), name
        tc_check.select_tc(dev, mode, t)
        assert dev.params[key] == t
        for batch, M, K, N, _ in tc_check.ODD_SHAPES + [((), 4096, 4096, 4096, False)]:
            assert gemm.family(dev, M, N, K, dt) == "tc", (name, M, N, K)


# ---- on a device that has the tc family (an NVIDIA GPU of compute capability 8.0+) ----------
def test_tc_family_on_a_real_device_in_both_modes(monkeypatch):
    """Runs only where the default OpenCL device runs the tc family (skipped elsewhere with
    the reason): ragged, transposed (packed) and batched products in float16 and TF32,
    against the contract's bound in each mode."""
    import xdev
    from availability import require

    dev = require("opencl")
    if dev.tc_reason is not None or dev.family != "gpu":
        pytest.skip(f"{dev.key} ({dev.name}) has no tensor-core GEMM: {dev.tc_reason or dev.family + ' family'}")
    monkeypatch.setitem(dev.params, "small_work", 0)
    monkeypatch.delenv("XDEV_OPENCL_TF32", raising=False)
    rng = np.random.default_rng(11)
    for dt, tf32 in ((F16, "0"), (F32, "1")):
        monkeypatch.setenv("XDEV_OPENCL_TF32", tf32)
        for sa, sb, trans in (((37, 45), (45, 70), False), ((2, 129, 257), (257, 255), False),
                              ((33, 29), (29, 21), True)):
            a, b = rng.uniform(-1, 1, sa).astype(dt), rng.uniform(-1, 1, sb).astype(dt)
            xa = xdev.asarray(np.ascontiguousarray(np.swapaxes(a, -1, -2)), backend=dev.key).mT if trans else \
                xdev.asarray(a, backend=dev.key)
            y = xdev.matmul(xa, xdev.asarray(b, backend=dev.key)).numpy()
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            assert_agrees(y, a64 @ b64, np.abs(a64) @ np.abs(b64), sa[-1], dev.acc_dtype(dt), dt,
                          f"tc family {dt} {sa} @ {sb}")
        assert dev.tc_reason is None, dev.tc_reason
