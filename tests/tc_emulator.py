"""Host emulation of backends/opencl/gemm_tc.cl (the OpenCL tensor-core GEMM), for tests.

The kernel's own text is compiled as C++20 against a harness that plays NVIDIA's part: one
std::thread per work-item, std::barrier for barrier() and for each warp's lock-step, and
the PTX instructions of tc_ptx.cl (mma.sync, ldmatrix, cp.async, cvt.rna.tf32) emulated
through the register layouts of tc_layouts.py (written from the PTX ISA, not from the
kernel). So the kernel's index arithmetic -- which lane loads which shared-memory word
into which fragment register, where each accumulator is stored -- is checked against the
ISA's layouts. cp.async copies land either at once or only at the cp.async.wait_group that
must cover them ("late"), the latest the hardware may deliver them, so a read before its
wait sees stale data. Needs g++ (or clang++) with C++20 <barrier>; no GPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import threading
from pathlib import Path

import numpy as np

import tc_layouts as L
from once import build_once
import xdev.backends

OPENCL_DIR = Path(xdev.backends.__file__).resolve().parent / "opencl"
KERNEL = OPENCL_DIR / "gemm_tc.cl"


def tables() -> str:
    """The layout tables of tc_layouts.py as C++ arrays (A/B owners per mode, C, ldmatrix)."""
    out = []
    for mode, shape in ((32, "m16n8k8.tf32"), (16, "m16n8k16.f16")):
        M, N, K, _ = L.SHAPES[shape]
        out.append(f"#if TC_MODE == {mode}\n#define EMU_K {K}\n")
        out.append(L.c_table("A_OWNER", L.owners(L.mma_a(shape), M, K)))
        out.append(L.c_table("B_OWNER", L.owners(L.mma_b(shape), K, N)))
        out.append("#endif\n")
    out.append(L.c_table("C_LAYOUT", L.mma_c()))
    out.append(L.c_table("EMU_LDSM", L.ldmatrix(False)))
    out.append(L.c_table("EMU_LDSM_T", L.ldmatrix(True)))
    return "".join(out)


HARNESS = textwrap.dedent(r'''
    #include <atomic>
    #include <barrier>
    #include <cstdint>
    #include <cstdio>
    #include <cstdlib>
    #include <cstring>
    #include <deque>
    #include <thread>
    #include <vector>

    typedef unsigned int uint;
    typedef unsigned short ushort;
    struct uint4 { uint x, y, z, w; };
    #define __kernel
    #define __global
    #define __local
    #define restrict __restrict
    #define TC_EMULATION 1
    #define TC_FN static inline
    #define TC_KERNEL static void
    #define TC_SHARED static
    #define TC_BARRIER() g_bar->arrive_and_wait()
    #define TC_UINT4(a, b, c, d) (uint4{(uint)(a), (uint)(b), (uint)(c), (uint)(d)})
    #define TC_STORE_F16(v, p, i) ((p)[(i)] = emu_f2h(v))
    // the pair store, with the alignment the hardware needs checked
    #if TC_MODE == 32
    #define TC_STORE2(a, b, p, i) emu_store2((float*)(p) + (i), (a), (b))
    static void emu_store2(float* q, float a, float b) {
        if ((uintptr_t)q % 8) { std::fprintf(stderr, "emulator: misaligned float2 store\n"); std::exit(3); }
        q[0] = a; q[1] = b;
    }
    #else
    #define TC_STORE2(a, b, p, i) emu_store2h((p) + (i), (a), (b))
    static ushort emu_f2h(float f);
    static void emu_store2h(ushort* q, float a, float b) {
        if ((uintptr_t)q % 4) { std::fprintf(stderr, "emulator: misaligned half2 store\n"); std::exit(3); }
        q[0] = emu_f2h(a); q[1] = emu_f2h(b);
    }
    #endif
    #define TC_CP_WAIT(n) emu_cp_wait(n)

    @TABLES@

    [[noreturn]] static void die(const char* m) { std::fprintf(stderr, "emulator: %s\n", m); std::exit(3); }

    static int g_group[3], g_ngroups[3];
    static thread_local int t_lid;
    static std::barrier<>* g_bar;
    struct Warp { std::barrier<>* bar; uint a[32][4]; uint b[32][2]; float c[32][4]; const void* p[32]; };
    static Warp* g_warps;
    static int g_late;                         // cp.async lands at the wait that covers it
    static std::atomic<long> g_ldsm_conflicts{0};  // ldmatrix matrices whose rows share a bank group
    static const unsigned char *g_a0, *g_a1, *g_b0, *g_b1;  // the input buffers' bounds

    static size_t get_local_id(int) { return (size_t)t_lid; }
    static size_t get_group_id(int d) { return (size_t)g_group[d]; }
    static size_t get_num_groups(int d) { return (size_t)g_ngroups[d]; }

    static ushort emu_f2h(float f) { _Float16 h = (_Float16)f; ushort u; std::memcpy(&u, &h, 2); return u; }
    static double emu_h(uint bits) { ushort u = (ushort)bits; _Float16 h; std::memcpy(&h, &u, 2); return (double)h; }
    // The tensor cores read the upper 19 bits of a TF32 operand (the rest is ignored).
    static double emu_tf32_in(uint bits) { bits &= 0xffffe000u; float f; std::memcpy(&f, &bits, 4); return f; }

    static double a_value(const Warp& w, int r, int k) {
        const int l = A_OWNER[r][k][0], e = A_OWNER[r][k][1];
        if (l < 0) die("A element without owner");
    #if TC_MODE == 32
        return emu_tf32_in(w.a[l][e]);
    #else
        return emu_h(w.a[l][e / 2] >> (16 * (e % 2)));
    #endif
    }
    static double b_value(const Warp& w, int k, int n) {
        const int l = B_OWNER[k][n][0], e = B_OWNER[k][n][1];
        if (l < 0) die("B element without owner");
    #if TC_MODE == 32
        return emu_tf32_in(w.b[l][e]);
    #else
        return emu_h(w.b[l][e / 2] >> (16 * (e % 2)));
    #endif
    }

    // mma.sync: every lane hands in its registers, then computes its own D elements.
    static void tc_mma(float* d, const uint* a, const uint* b) {
        const int lane = t_lid % 32;
        Warp& w = g_warps[t_lid / 32];
        std::memcpy(w.a[lane], a, sizeof w.a[lane]);
        std::memcpy(w.b[lane], b, sizeof w.b[lane]);
        std::memcpy(w.c[lane], d, sizeof w.c[lane]);
        w.bar->arrive_and_wait();
        float out[4];
        for (int e = 0; e < 4; ++e) {
            const int r = C_LAYOUT[lane][e][0], c = C_LAYOUT[lane][e][1];
            double s = w.c[lane][e];
            for (int k = 0; k < EMU_K; ++k) s += a_value(w, r, k) * b_value(w, k, c);
            out[e] = (float)s;
        }
        w.bar->arrive_and_wait();
        std::memcpy(d, out, sizeof out);
    }

    // ldmatrix: lane 8j+i hands in the address of row i of matrix j.
    static void emu_ldsm(uint* r, const uint4* p, const int (*tab)[4][2][2]) {
        const int lane = t_lid % 32;
        Warp& w = g_warps[t_lid / 32];
        if ((uintptr_t)p % 16) die("ldmatrix row address not 16-byte aligned");
        w.p[lane] = p;
        w.bar->arrive_and_wait();
        if (lane == 0)  // the 8 rows of each matrix: in 8 different 16-byte bank groups?
            for (int j = 0; j < 4; ++j) {
                unsigned seen = 0;
                for (int i = 0; i < 8; ++i) seen |= 1u << (((uintptr_t)w.p[8 * j + i] / 16) % 8);
                if (seen != 0xffu) g_ldsm_conflicts.fetch_add(1);
            }
        for (int j = 0; j < 4; ++j) {
            uint v = 0;
            for (int h = 0; h < 2; ++h) {
                const ushort* row = (const ushort*)w.p[8 * j + tab[lane][j][h][0]];
                v |= (uint)row[tab[lane][j][h][1]] << (16 * h);
            }
            r[j] = v;
        }
        w.bar->arrive_and_wait();
    }
    static void tc_ldsm_x4(uint* r, const uint4* p) { emu_ldsm(r, p, EMU_LDSM); }
    static void tc_ldsm_x4_trans(uint* r, const uint4* p) { emu_ldsm(r, p, EMU_LDSM_T); }

    struct Copy { void* dst; const void* src; int bytes; };
    static thread_local std::vector<Copy> t_open;
    static thread_local std::deque<std::vector<Copy>> t_groups;
    static void land(const Copy& c) { std::memset(c.dst, 0, 16); if (c.bytes) std::memcpy(c.dst, c.src, c.bytes); }
    static void tc_cp_async16(uint4* dst, const void* src, int bytes) {
        if ((uintptr_t)dst % 16 || (uintptr_t)src % 16) die("cp.async address not 16-byte aligned");
        if (bytes < 0 || bytes > 16) die("cp.async source size outside 0..16");
        const unsigned char* s = (const unsigned char*)src;
        if (bytes && !((s >= g_a0 && s + bytes <= g_a1) || (s >= g_b0 && s + bytes <= g_b1)))
            die("cp.async reads outside the input buffers");
        Copy c{dst, src, bytes};
        if (g_late) t_open.push_back(c); else land(c);
    }
    static void tc_cp_commit() { if (g_late) { t_groups.push_back(t_open); t_open.clear(); } }
    static void emu_cp_wait(size_t n) {
        while (t_groups.size() > n) { for (const Copy& c : t_groups.front()) land(c); t_groups.pop_front(); }
    }
    // cvt.rna.tf32.f32: round to nearest, ties away from zero; Inf and NaN kept.
    static uint tc_tf32(uint x) {
        if ((x & 0x7f800000u) == 0x7f800000u) return x;
        return (x + 0x1000u) & 0xffffe000u;
    }

    #include "gemm_tc.cl"

    static std::vector<unsigned char> slurp(const char* path, size_t n) {
        std::vector<unsigned char> v(n + 64);  // slack: a read past the end is caught above, not here
        FILE* f = std::fopen(path, "rb");
        if (!f || std::fread(v.data(), 1, n, f) != n) die("cannot read input");
        std::fclose(f);
        return v;
    }

    int main(int argc, char** argv) {
        if (argc != 23) die("usage: M N K lda ldb n0 n1 n2 pa0 pa1 pa2 pb0 pb1 pb2 a_off b_off late A nA B nB C");
        long v[17];
        for (int i = 0; i < 17; ++i) v[i] = std::atol(argv[1 + i]);
        const int M = v[0], N = v[1], K = v[2], n0 = v[5], n1 = v[6], n2 = v[7];
        g_late = (int)v[16];
        const size_t nA = std::atol(argv[19]), nB = std::atol(argv[21]);
        std::vector<unsigned char> a = slurp(argv[18], nA), b = slurp(argv[20], nB);
        g_a0 = a.data(); g_a1 = a.data() + nA; g_b0 = b.data(); g_b1 = b.data() + nB;
        const int out_es = TC_MODE == 32 ? 4 : 2;
        std::vector<unsigned char> c((size_t)n0 * n1 * n2 * M * N * out_es, 0xff);  // NaN: unwritten shows
        g_ngroups[0] = (N + BN - 1) / BN; g_ngroups[1] = (M + BM - 1) / BM; g_ngroups[2] = n0 * n1 * n2;
        const int nwarps = TC_NTHR / 32;
        for (int z = 0; z < g_ngroups[2]; ++z)
            for (int y = 0; y < g_ngroups[1]; ++y)
                for (int x = 0; x < g_ngroups[0]; ++x) {
                    g_group[0] = x; g_group[1] = y; g_group[2] = z;
                    std::barrier<> bar(TC_NTHR);
                    g_bar = &bar;
                    std::vector<Warp> warps(nwarps);
                    std::vector<std::barrier<>*> wb;
                    for (auto& w : warps) { w.bar = new std::barrier<>(32); wb.push_back(w.bar); }
                    g_warps = warps.data();
                    std::vector<std::thread> th;
                    for (int i = 0; i < TC_NTHR; ++i)
                        th.emplace_back([&, i] {
                            t_lid = i;
                            gemm_tc((tc_in*)c.data(), (const tc_in*)a.data(), v[14], (const tc_in*)b.data(), v[15],
                                    M, N, K, v[3], v[4], n1, n2, v[8], v[9], v[10], v[11], v[12], v[13]);
                        });
                    for (auto& t : th) t.join();
                    for (auto* p : wb) delete p;
                }
        FILE* f = std::fopen(argv[22], "wb");
        if (!f || std::fwrite(c.data(), 1, c.size(), f) != c.size()) die("cannot write output");
        std::fclose(f);
        std::printf("ldmatrix-bank-conflicts %ld\n", g_ldsm_conflicts.load());
        return 0;
    }
''')


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def build(workdir: Path, options: dict[str, int]) -> Path:
    """The emulator binary for one set of gemm_tc.cl options (-D values)."""
    cxx = compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (g++ or clang++)")
    tag = "_".join(f"{k}{v}" for k, v in sorted(options.items()))

    def compile_(out: Path) -> None:
        src = out.with_suffix(".cpp")
        src.write_text(HARNESS.replace("@TABLES@", tables()))
        r = subprocess.run([cxx, "-std=c++20", "-O1", "-pthread", "-fno-strict-aliasing", "-w",
                            f"-I{OPENCL_DIR}", *(f"-D{k}={v}" for k, v in sorted(options.items())),
                            str(src), "-o", str(out)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"the tc emulator does not build with {options}:\n{r.stderr[-4000:]}")

    # Built once per folder, whichever test worker asks first (tests/once.py).
    return build_once(workdir / f"tc_emu_{tag}", compile_)


def run(exe: Path, workdir: Path, a_buf: np.ndarray, b_buf: np.ndarray, *, M: int, N: int, K: int,
        lda: int, ldb: int, batch: tuple[int, int, int] = (1, 1, 1), pa=(0, 0, 0), pb=(0, 0, 0),
        a_off: int = 0, b_off: int = 0, late: bool = False, out_dtype=np.float32) -> np.ndarray:
    """C (batch, M, N) from raw operand buffers laid out as gemm_tc.cl reads them."""
    # Named per process and thread: the folder is shared by the run's test workers.
    fa, fb, fc = (workdir / f"{n}-{os.getpid()}-{threading.get_ident()}.bin" for n in "abc")
    a_buf.tofile(fa)
    b_buf.tofile(fb)
    args = [M, N, K, lda, ldb, *batch, *pa, *pb, a_off, b_off, int(late)]
    r = subprocess.run([str(exe), *map(str, args), str(fa), str(a_buf.nbytes), str(fb), str(b_buf.nbytes), str(fc)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"emulated gemm_tc failed ({r.returncode}): {r.stderr[-2000:]}")
    for line in r.stdout.splitlines():
        if line.startswith("ldmatrix-bank-conflicts "):
            stats["ldmatrix_bank_conflicts"] = int(line.split()[1])
    return np.fromfile(fc, dtype=out_dtype).reshape(int(np.prod(batch)), M, N)


stats: dict[str, int] = {}  # of the last run: ldmatrix_bank_conflicts (matrices whose 8 rows share a bank group)


def load_tc():
    """backends/opencl/tc.py on its own (importing the package would import PyOpenCL)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("xdev_opencl_tc_under_test", OPENCL_DIR / "tc.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
