// Packing for the CPU GEMM: copies R rows (or columns) of a strided operand into a
// panel dst[pb][t][k][R] so the micro-kernel streams it with unit stride.
// Row i of tile t is element (t*R + i) along the "r" axis (stride rs); k has stride ks.
// Rows past `rows` are zero, so edge tiles need no special case in the micro-kernel.
// Batches: pb = ((i0 * n1) + i1) * n2 + i2 with source strides s0, s1, s2.
__kernel void pack(__global real* restrict dst,
                   __global const in_t* restrict src, const long off,
                   const int n1, const int n2, const long s0, const long s1, const long s2,
                   const long rs, const long ks, const int rows, const int K,
                   const int R, const int KB)
{
    const int kb = get_global_id(0);
    const int t = get_global_id(1);
    const int pb = get_global_id(2);
    const int T = get_global_size(1);
    BATCH3(pb, n1, n2);
    const long base = off + i0 * s0 + i1 * s1 + i2 * s2;
    __global real* d = dst + ((size_t)pb * T + t) * (size_t)K * R;
    const int k0 = kb * KB, k1 = min(K, k0 + KB);
    const int nvalid = clamp(rows - t * R, 0, R);
    if (ks == 1) {  // k contiguous in the source: read runs along k
        for (int i = 0; i < R; ++i) {
            const long r = base + (long)(t * R + i) * rs;
            if (i < nvalid)
                for (int k = k0; k < k1; ++k) d[(size_t)k * R + i] = LOAD_IN(src, r + k);
            else
                for (int k = k0; k < k1; ++k) d[(size_t)k * R + i] = (real)0;
        }
    } else {  // read runs along r (rs == 1 for a row-major B or a transposed A)
        for (int k = k0; k < k1; ++k) {
            const long r = base + (long)k * ks + (long)t * R * rs;
            for (int i = 0; i < R; ++i)
                d[(size_t)k * R + i] = i < nvalid ? LOAD_IN(src, r + i * rs) : (real)0;
        }
    }
}
