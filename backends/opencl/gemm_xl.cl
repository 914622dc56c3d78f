// Throughput GEMM for GPUs ("xl"): C = A @ B from operands packed by pack_gpu.cl
// (A as [Kp][Mp], B as [Kp][Np], zero-padded to whole tiles), so the K loop has no bounds
// checks and every global load is an aligned, coalesced vector. Only the store to C
// checks the edges. The micro-kernel (XL_MAIN_LOOP) lives in common.cl, shared with the
// implicit-GEMM convolution (conv_xl.cl).
// Options: MWG NWG KWG MDIMC NDIMC VWM VWN PAD DB (see common.cl).

#define XL_FETCH_A(k0)                                                             \
    _Pragma("unroll") for (int r_ = 0; r_ < LPTA; ++r_)                            \
        pa[r_] = a[(size_t)((k0) + XL_AK(r_)) * (Mp / VWM) + XL_AV]
#define XL_FETCH_B(k0)                                                             \
    _Pragma("unroll") for (int r_ = 0; r_ < LPTB; ++r_)                            \
        pb[r_] = b[(size_t)((k0) + XL_BK(r_)) * (Np / VWN) + XL_BV]

__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void gemm_xl(__global out_t* restrict C,
             __global const realm* restrict A, __global const realn* restrict B,
             const int M, const int N, const int Mp, const int Np, const int Kp,
             const int n1, const int n2,
             const long pa0, const long pa1, const long pa2,
             const long pb0, const long pb1, const long pb2)
{
    const int tn = get_local_id(0), tm = get_local_id(1);
    const int tid = tm * NDIMC + tn;
    const int m0 = get_group_id(1) * MWG, n0 = get_group_id(0) * NWG;
    const int bt = get_group_id(2);
    BATCH3(bt, n1, n2);
    // Packed batch strides are whole panels (multiples of the vector widths).
    __global const realm* a = A + (i0 * pa0 + i1 * pa1 + i2 * pa2) / VWM + m0 / VWM;
    __global const realn* b = B + (i0 * pb0 + i1 * pb1 + i2 * pb2) / VWN + n0 / VWN;

    XL_MAIN_LOOP(Kp / KWG)

    __global out_t* c = C + (size_t)bt * M * N;
    _Pragma("unroll") for (int i = 0; i < WPTM; ++i) {
        const int m = m0 + XL_ROW(i);
        if (m < M)
            _Pragma("unroll") for (int j = 0; j < WPTN; ++j) {
                const int n = n0 + XL_COL(j);
                if (n < N) STORE_OUT(acc[i][j], c, (size_t)m * N + n);
            }
    }
}
