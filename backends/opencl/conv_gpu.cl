// Implicit-GEMM convolution for GPUs: the tiled GEMM of gemm_gpu.cl where
//   A (TSM rows of output channels) is read from the weights, k = (c, i, j), and
//   B (TSN output pixels) is gathered from the zero-padded input by im2col addressing.
// Nothing the size of an im2col matrix is ever stored.
// (RTSM, RTSN, NTHREADS, TILE_SETUP and TILE_STEP come from common.cl.)

__kernel __attribute__((reqd_work_group_size(RTSN, RTSM, 1)))
void conv_tiled(__global out_t* restrict Y,
                __global const real* restrict Xp,
                __global const in_t* restrict Wt, const long w_off,
                const long ws0, const long ws1, const long ws2, const long ws3,
                __global const in_t* restrict bias, const long b_off, const long b_str,
                const int C, const int Cg, const int O, const int Og, const int G,
                const int Hp, const int Wp, const int kh, const int kw,
                const int dh, const int dw, const int sh, const int sw,
                const int Ho, const int Wo)
{
    const int tn = get_local_id(0), tm = get_local_id(1);
    const int tid = tm * RTSN + tn;
    const int p0 = get_group_id(0) * TSN, o0 = get_group_id(1) * TSM;
    const int ng = get_global_id(2);
    const int n = ng / G, g = ng - (ng / G) * G;
    const int K = Cg * kh * kw, khw = kh * kw, P = Ho * Wo;
    __global const real* x = Xp + ((size_t)n * C + (size_t)g * Cg) * Hp * Wp;
    TILE_SETUP(acc, As, Bs);

    for (int k0 = 0; k0 < K; k0 += TSK) {
        for (int l = tid; l < TSK * TSM; l += NTHREADS) {
            const int kk = l % TSK, mm = l / TSK;
            const int o = o0 + mm, k = k0 + kk;
            real v = 0;
            if (o < Og && k < K) {
                const int c = k / khw, r = k - (k / khw) * khw, i = r / kw, j = r - (r / kw) * kw;
                v = LOAD_IN(Wt, w_off + (long)(g * Og + o) * ws0 + c * ws1 + i * ws2 + j * ws3);
            }
            As[kk][mm] = v;
        }
        for (int l = tid; l < TSK * TSN; l += NTHREADS) {
            const int nn = l % TSN, kk = l / TSN;
            const int p = p0 + nn, k = k0 + kk;
            real v = 0;
            if (p < P && k < K) {
                const int c = k / khw, r = k - (k / khw) * khw, i = r / kw, j = r - (r / kw) * kw;
                const int ho = p / Wo, wo = p - (p / Wo) * Wo;
                v = x[((size_t)c * Hp + ho * sh + i * dh) * Wp + wo * sw + j * dw];
            }
            Bs[kk][nn] = v;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        TILE_STEP(acc, As, Bs, tm, tn);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int wm = 0; wm < WPTM; ++wm) {
        const int o = o0 + tm + wm * RTSM;
        if (o < Og) {
            const int oc = g * Og + o;
            const real bb = bias ? LOAD_IN(bias, b_off + oc * b_str) : (real)0;
            __global out_t* y = Y + ((size_t)n * O + oc) * P;
            for (int wn = 0; wn < WPTN; ++wn) {
                const int p = p0 + tn + wn * RTSN;
                if (p < P) STORE_OUT(acc[wm][wn] + bb, y, p);
            }
        }
    }
}
