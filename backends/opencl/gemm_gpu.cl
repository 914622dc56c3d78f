// Local-memory tiled GEMM for GPUs. A work-group of (TSN/WPTN) x (TSM/WPTM) work-items
// computes a TSM x TSN tile of C; each work-item WPTM x WPTN outputs spaced RTSM/RTSN
// apart, so neighbouring work-items touch neighbouring addresses. Operands are read
// in place through their strides (transposed views need no copy); the loads into local
// memory walk whichever of the two axes is contiguous in memory.
// Options: TSM, TSN, TSK, WPTM, WPTN.
// (RTSM, RTSN, NTHREADS, TILE_SETUP and TILE_STEP come from common.cl.)

__kernel __attribute__((reqd_work_group_size(RTSN, RTSM, 1)))
void gemm_tiled(__global out_t* restrict C,
                __global const in_t* restrict A, const long a_off,
                __global const in_t* restrict B, const long b_off,
                const int M, const int N, const int K,
                const int n1, const int n2,
                const long as0, const long as1, const long as2, const long ars, const long acs,
                const long bs0, const long bs1, const long bs2, const long brs, const long bcs)
{
    const int tn = get_local_id(0), tm = get_local_id(1);
    const int tid = tm * RTSN + tn;
    const int n0 = get_group_id(0) * TSN, m0 = get_group_id(1) * TSM;
    const int bt = get_global_id(2);
    BATCH3(bt, n1, n2);
    const long abase = a_off + i0 * as0 + i1 * as1 + i2 * as2;
    const long bbase = b_off + i0 * bs0 + i1 * bs1 + i2 * bs2;
    TILE_SETUP(acc, As, Bs);

    for (int k0 = 0; k0 < K; k0 += TSK) {
        for (int l = tid; l < TSK * TSM; l += NTHREADS) {
            int kk, mm;
            if (acs == 1) { kk = l % TSK; mm = l / TSK; } else { mm = l % TSM; kk = l / TSM; }
            const int m = m0 + mm, k = k0 + kk;
            As[kk][mm] = (m < M && k < K) ? LOAD_IN(A, abase + m * ars + k * acs) : (real)0;
        }
        for (int l = tid; l < TSK * TSN; l += NTHREADS) {
            int kk, nn;
            if (brs == 1) { kk = l % TSK; nn = l / TSK; } else { nn = l % TSN; kk = l / TSN; }
            const int n = n0 + nn, k = k0 + kk;
            Bs[kk][nn] = (n < N && k < K) ? LOAD_IN(B, bbase + k * brs + n * bcs) : (real)0;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        TILE_STEP(acc, As, Bs, tm, tn);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    __global out_t* c = C + (size_t)bt * M * N;
    for (int wm = 0; wm < WPTM; ++wm) {
        const int m = m0 + tm + wm * RTSM;
        if (m < M)
            for (int wn = 0; wn < WPTN; ++wn) {
                const int n = n0 + tn + wn * RTSN;
                if (n < N) STORE_OUT(acc[wm][wn], c, (size_t)m * N + n);
            }
    }
}
