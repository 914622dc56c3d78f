// Implicit-GEMM convolution on the "xl" GEMM micro-kernel (common.cl): per group g,
//   Y[o, (n, ho, wo)] = sum_k Wk[k][o] * X(k; n, ho, wo),  k = (c, i, j)
// where Wk is the group's weights packed k-major by pack_gpu.cl, and the B operand is
// gathered from the zero-padded input: the pixel columns of all N images are one GEMM
// dimension (so small late layers still fill the GPU), and
//   X(k; p) = Xp[pix(p) + koff[k]],
// with pix(p) = the offset of pixel p's window corner (computed once per work-item) and
// koff[k] = c*Hp*Wp + i*dh*Wp + j*dw from a table (-1 past K), so no division runs in the
// K loop. Nothing the size of an im2col matrix is stored.
// Options: MWG NWG KWG MDIMC NDIMC VWM VWN PAD DB (see common.cl).

#if VWN == 1
#define PACK_N(t) ((t)[0])
#else
#define PACK_N(t) CAT(vload, VWN)(0, (t))
#endif

#define XL_FETCH_A(k0)                                                             \
    _Pragma("unroll") for (int r_ = 0; r_ < LPTA; ++r_)                            \
        pa[r_] = a[(size_t)((k0) + XL_AK(r_)) * (Op / VWM) + XL_AV]
#define XL_FETCH_B(k0)                                                             \
    _Pragma("unroll") for (int r_ = 0; r_ < LPTB; ++r_) {                          \
        const int ko_ = koff[(k0) + XL_BK(r_)];                                    \
        real t_[VWN];                                                              \
        _Pragma("unroll") for (int e_ = 0; e_ < VWN; ++e_)                         \
            t_[e_] = (ko_ >= 0 && pix[e_] >= 0) ? x[pix[e_] + ko_] : (real)0;      \
        pb[r_] = PACK_N(t_);                                                       \
    }

__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void conv_xl(__global out_t* restrict Y,
             __global const real* restrict x,
             __global const realm* restrict Wk, __global const int* restrict koff,
             __global const in_t* restrict bias, const long b_off, const long b_str,
             const int C, const int Cg, const int O, const int Og, const int Op, const int Kp,
             const int Hp, const int Wp, const int sh, const int sw,
             const int Ho, const int Wo, const int NP)
{
    const int tn = get_local_id(0), tm = get_local_id(1);
    const int tid = tm * NDIMC + tn;
    const int m0 = get_group_id(1) * MWG, n0 = get_group_id(0) * NWG;
    const int g = get_group_id(2);
    const int P = Ho * Wo;
    __global const realm* a = Wk + ((size_t)g * Kp * Op + m0) / VWM;
    long pix[VWN];
    _Pragma("unroll") for (int e = 0; e < VWN; ++e) {
        const int p = n0 + XL_BV * VWN + e;
        const int img = p / P, q = p - (p / P) * P, ho = q / Wo, wo = q - (q / Wo) * Wo;
        pix[e] = p < NP ? ((long)img * C + (long)g * Cg) * Hp * Wp + (long)ho * sh * Wp + wo * sw : -1;
    }

    XL_MAIN_LOOP(Kp / KWG)

    long yo[WPTN];  // output offset of each of this work-item's pixel columns (-1: past the end)
    _Pragma("unroll") for (int j = 0; j < WPTN; ++j) {
        const int p = n0 + XL_COL(j);
        yo[j] = p < NP ? (long)(p / P) * O * P + (p - (p / P) * P) : -1;
    }
    _Pragma("unroll") for (int i = 0; i < WPTM; ++i) {
        const int o = m0 + XL_ROW(i);
        if (o < Og) {
            const int oc = g * Og + o;
            const real bb = bias ? LOAD_IN(bias, b_off + oc * b_str) : (real)0;
            _Pragma("unroll") for (int j = 0; j < WPTN; ++j)
                if (yo[j] >= 0) STORE_OUT(acc[i][j] + bb, Y, yo[j] + (long)oc * P);
        }
    }
}
