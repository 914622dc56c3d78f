// Direct convolution: each work-item computes VW consecutive outputs of one output row,
// looping over the taps of its group. Best for depthwise convolution (C/groups == 1),
// where a GEMM would have K = kH*kW only; correct for any groups.
// Reads the zero-padded input (conv_pad.cl), so no bounds checks on the taps.

__kernel void conv_direct(__global out_t* restrict Y,
                          __global const real* restrict Xp,
                          __global const in_t* restrict Wt, const long w_off,
                          const long ws0, const long ws1, const long ws2, const long ws3,
                          __global const in_t* restrict bias, const long b_off, const long b_str,
                          const int C, const int Cg, const int O, const int Og,
                          const int Hp, const int Wp, const int kh, const int kw,
                          const int dh, const int dw, const int sh, const int sw,
                          const int Ho, const int Wo)
{
    const int wt = get_global_id(0);
    const int ho = get_global_id(1);
    const int no = get_global_id(2);
    const int n = no / O, oc = no - (no / O) * O;
    const int g = oc / Og;
    const int wo0 = wt * VW;
    __global const real* x = Xp + ((size_t)n * C + (size_t)g * Cg) * Hp * Wp + (size_t)ho * sh * Wp;
    realv acc = (realv)(0);
    for (int c = 0; c < Cg; ++c) {
        for (int ki = 0; ki < kh; ++ki) {
            __global const real* row = x + ((size_t)c * Hp + ki * dh) * Wp;
            for (int kj = 0; kj < kw; ++kj) {
                const real wv = LOAD_IN(Wt, w_off + oc * ws0 + c * ws1 + ki * ws2 + kj * ws3);
                realv xv;
                if (sw == 1) {
                    xv = VLOAD(0, row + wo0 + kj * dw);
                } else {
                    real t[VW];
                    for (int l = 0; l < VW; ++l) t[l] = row[min(wo0 + l, Wo - 1) * sw + kj * dw];
                    xv = CAT(vload, VW)(0, t);
                }
                acc = MADD((realv)(wv), xv, acc);
            }
        }
    }
    const real bb = bias ? LOAD_IN(bias, b_off + oc * b_str) : (real)0;
    real t[VW];
    CAT(vstore, VW)(acc, 0, t);
    __global out_t* y = Y + (((size_t)n * O + oc) * Ho + ho) * Wo;
    const int nn = min(VW, Wo - wo0);
    for (int l = 0; l < nn; ++l) STORE_OUT(t[l] + bb, y, wo0 + l);
}
