// Packing for the GPU "xl" GEMM: copies an R x K operand (any strides, batches, storage
// type) into dst[pb][Kp][Rp] in the compute type, k-major with r contiguous, zero beyond
// R and K, so the GEMM reads whole aligned vectors with no bounds checks.
// A 32 x 32 tile goes through local memory so both the strided read (along whichever
// source axis is more contiguous) and the write (along r) are coalesced.
// Batches: pb = ((i0 * n1) + i1) * n2 + i2 with source strides s0, s1, s2.
// -DPACK_KEEP=1 writes the storage type instead (float16 stays float16: the tensor-core GEMM
// reads its operands as stored).
#if defined(PACK_KEEP) && IN_BITS == 16
typedef half pack_t;
#define PACK_STORE(v, p, i) vstore_half((v), (i), (p))
#else
typedef real pack_t;
#define PACK_STORE(v, p, i) ((p)[(i)] = (v))
#endif

__kernel __attribute__((reqd_work_group_size(32, 8, 1)))
void pack_kr(__global pack_t* restrict dst,
             __global const in_t* restrict src, const long off,
             const int n1, const int n2, const long s0, const long s1, const long s2,
             const long rs, const long ks, const int R, const int K, const int Rp, const int Kp)
{
    __local real t[32][33];  // [k][r]; the odd row length keeps transposed accesses conflict-free
    const int lx = get_local_id(0), ly = get_local_id(1);
    const int r0 = get_group_id(0) * 32, k0 = get_group_id(1) * 32;
    const int pb = get_group_id(2);
    BATCH3(pb, n1, n2);
    const long base = off + i0 * s0 + i1 * s1 + i2 * s2;
    const bool rfast = (rs < 0 ? -rs : rs) <= (ks < 0 ? -ks : ks);
    for (int i = ly; i < 32; i += 8) {
        const int r = rfast ? r0 + lx : r0 + i, k = rfast ? k0 + i : k0 + lx;
        const real v = (r < R && k < K) ? LOAD_IN(src, base + r * rs + k * ks) : (real)0;
        if (rfast) t[i][lx] = v; else t[lx][i] = v;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    __global pack_t* d = dst + (size_t)pb * Kp * Rp;
    for (int i = ly; i < 32; i += 8) {
        const int k = k0 + i, r = r0 + lx;
        if (k < Kp && r < Rp) PACK_STORE(t[i][lx], d, (size_t)k * Rp + r);
    }
}
