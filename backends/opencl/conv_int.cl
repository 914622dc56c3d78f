// Integer and bool conv2d (types: common.cl's XT_BITS/XT_BOOL): direct, one work-item per
// output element y[n, o, oh, ow] (global ids: oh*Wo + ow, o, n), x and w read in place
// through their strides (any view), zero padding by bounds checks. Exact (modulo 2^bits);
// bool: a bias that is True makes the output True (or). Output contiguous (N, O, Ho, Wo).
__kernel void conv_int(__global out_t* restrict y,
                       __global const in_t* restrict x, const long x_off,
                       const long xsn, const long xsc, const long xsh, const long xsw,
                       __global const in_t* restrict w, const long w_off,
                       const long wso, const long wsc, const long wsh, const long wsw,
                       __global const in_t* restrict bias, const long b_off, const long bs, const int has_bias,
                       const int Cg, const int H, const int W, const int O, const int Og,
                       const int kh, const int kw, const int sh, const int sw, const int dh, const int dw,
                       const int pt, const int pl, const int Ho, const int Wo)
{
    const long l = get_global_id(0);
    const int o = get_global_id(1);
    const int n = get_global_id(2);
    if (l >= (long)Ho * Wo) return;
    const int oh = (int)(l / Wo), ow = (int)(l % Wo);
    const int g = o / Og;
    real acc = has_bias ? LOAD_IN(bias, b_off + o * bs) : 0;
    const long xn = x_off + n * xsn + (long)g * Cg * xsc;
    const long wo = w_off + o * wso;
    for (int c = 0; c < Cg; ++c) {
        for (int i = 0; i < kh; ++i) {
            const long ih = (long)oh * sh - pt + (long)i * dh;
            if (ih < 0 || ih >= H) continue;
            for (int j = 0; j < kw; ++j) {
                const long iw = (long)ow * sw - pl + (long)j * dw;
                if (iw < 0 || iw >= W) continue;
                acc = MADD(LOAD_IN(x, xn + c * xsc + ih * xsh + iw * xsw), LOAD_IN(w, wo + c * wsc + i * wsh + j * wsw), acc);
            }
        }
    }
    STORE_OUT(acc, y, ((long)n * O + o) * Ho * Wo + l);
}
