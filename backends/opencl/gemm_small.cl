// One work-item per output element, operands read in place through their strides.
// For small problems, where packing and tiling cost more than they save, and for every
// integer and bool matmul (common.cl's XT_BITS types: exact; correctness first, no tiling).
__kernel void gemm_small(__global out_t* restrict C,
                         __global const in_t* restrict A, const long a_off,
                         __global const in_t* restrict B, const long b_off,
                         const int M, const int N, const int K,
                         const int n1, const int n2,
                         const long as0, const long as1, const long as2, const long ars, const long acs,
                         const long bs0, const long bs1, const long bs2, const long brs, const long bcs)
{
    const int n = get_global_id(0);
    const int m = get_global_id(1);
    const int bt = get_global_id(2);
    if (n >= N || m >= M) return;
    BATCH3(bt, n1, n2);
    long pa = a_off + i0 * as0 + i1 * as1 + i2 * as2 + m * ars;
    long pb = b_off + i0 * bs0 + i1 * bs1 + i2 * bs2 + n * bcs;
    real acc = 0;
    for (int k = 0; k < K; ++k) {
        acc = MADD(LOAD_IN(A, pa), LOAD_IN(B, pb), acc);
        pa += acs;
        pb += brs;
    }
    STORE_OUT(acc, C, ((size_t)bt * M + m) * N + n);
}
