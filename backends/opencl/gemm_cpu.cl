// Register-blocked GEMM for CPU devices (PoCL and other CPU drivers).
// Each work-item computes an MR x (VW*NV) tile of C from packed panels
//   Ap[pa][Mt][K][MR] and Bp[pb][Nt][K][VW*NV]
// with the accumulators in MR*NV vector registers. The K loop has the same trip count
// in every work-item, so the CPU compiler can keep its loops simple.
// Options: MR, NV, VW (vector width: 16 floats / 8 doubles on AVX-512).
// (realv, VLOAD, VSTORE, NR, MICRO_ZERO and MICRO_STEP come from common.cl.)

__kernel void gemm_packed(__global out_t* restrict C,
                          __global const real* restrict Ap,
                          __global const real* restrict Bp,
                          const int M, const int N, const int K,
                          const int n1, const int n2,
                          const long pa0, const long pa1, const long pa2,
                          const long pb0, const long pb1, const long pb2,
                          const int k0, const int kc, const int add,
                          const long boff, const long b_tile, const long b_k)
{
    const int nt = get_global_id(0);
    const int mt = get_global_id(1);
    const int bt = get_global_id(2);
    BATCH3(bt, n1, n2);
    // K block [k0, k0 + kc) of the panels; add: C += this block's product (the host asks
    // for it only where C has the compute type, so the sum rounds as one accumulation).
    __global const real* a = Ap + i0 * pa0 + i1 * pa1 + i2 * pa2 + ((size_t)mt * K + k0) * MR;
    // B: packed panels (b_tile = K * NR between tiles, b_k = NR between k), or B itself, read
    // in place (b_tile = NR, b_k = its row stride) where it is row-major and N a multiple of NR.
    __global const real* b = Bp + boff + i0 * pb0 + i1 * pb1 + i2 * pb2 + nt * b_tile + k0 * b_k;

    realv acc[MR][NV];
    MICRO_ZERO(acc);
    for (int k = 0; k < kc; ++k) {
        realv bv[NV];
        #pragma unroll
        for (int v = 0; v < NV; ++v) bv[v] = VLOAD(v, b);
        MICRO_STEP(acc, a, bv);
        a += MR;
        b += b_k;
    }

    const int m0 = mt * MR, n0 = nt * NR;
    __global out_t* c = C + (size_t)bt * M * N;
    #pragma unroll
    for (int i = 0; i < MR; ++i) {
        if (m0 + i < M) {
            const size_t row = (size_t)(m0 + i) * N + n0;
#if OUT_BITS == REAL_BITS
            if (add) {
                if (n0 + NR <= N) {
                    #pragma unroll
                    for (int v = 0; v < NV; ++v) VSTORE(acc[i][v] + VLOAD(0, c + row + v * VW), 0, c + row + v * VW);
                } else {
                    real tmp[NR];
                    #pragma unroll
                    for (int v = 0; v < NV; ++v) CAT(vstore, VW)(acc[i][v], v, tmp);
                    const int nn = min(NR, N - n0);
                    for (int j = 0; j < nn; ++j) c[row + j] += tmp[j];
                }
                continue;
            }
#endif
            if (n0 + NR <= N) {
                #pragma unroll
                for (int v = 0; v < NV; ++v) VSTORE(acc[i][v], 0, c + row + v * VW);
            } else {
                real tmp[NR];
                #pragma unroll
                for (int v = 0; v < NV; ++v) CAT(vstore, VW)(acc[i][v], v, tmp);
                const int nn = min(NR, N - n0);
                for (int j = 0; j < nn; ++j) STORE_OUT(tmp[j], c, row + j);
            }
        }
    }
}
