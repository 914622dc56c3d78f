// conv2d backward on OpenCL.
//
// "gemm": im2col_t lays the padded input out as G matrices of K = Cg*kh*kw rows by nb*Ho*Wo
// columns (images of the block one after the other) for grad_w = gy @ cols^T; col2im gathers
// dcols = W^T @ gy back onto the input pixels for grad_x. "direct": grad_x and grad_w loop over
// the taps themselves. grad_bias sums the upstream gradient.
//
// Every input here is a contiguous buffer in the compute type `real` (the host converts);
// results are stored through STORE_OUT (float16 storage rounds once, at the end). Xp is the
// zero-padded input of conv_pad.cl. Sums run in `real` in a fixed order: results are
// deterministic (a gather, never atomics).

__kernel void im2col_t(__global real* restrict cols, __global const real* restrict Xp,
                       const int n0, const int nb, const int C, const int Cg, const int K,
                       const int Hp, const int Wp, const int kh, const int kw,
                       const int dh, const int dw, const int sh, const int sw,
                       const int Ho, const int Wo)
{
    const int l = get_global_id(0);
    const int k = get_global_id(1);
    const int gn = get_global_id(2);
    const int L = Ho * Wo;
    if (l >= L) return;
    const int g = gn / nb, n = gn - g * nb;
    const int c = k / (kh * kw), t = k - c * (kh * kw);
    const int i = t / kw, j = t - i * kw;
    const int ho = l / Wo, wo = l - ho * Wo;
    const size_t src = (((size_t)(n0 + n) * C + (size_t)g * Cg + c) * Hp + (size_t)(ho * sh + i * dh)) * Wp
                       + (size_t)(wo * sw + j * dw);
    cols[(((size_t)g * K + k) * nb + n) * L + l] = Xp[src];
}

// grad_x[n0+n][c][h][w] = sum over the taps (i, j) that read pixel (h, w) of
// dcols[g][(cl*kh + i)*kw + j][n*Ho*Wo + ho*Wo + wo], with (h + pt - i*dh) = ho*sh etc.
__kernel void col2im(__global out_t* restrict GX, __global const real* restrict D, const long d_off,
                     const int n0, const int nb, const int C, const int Cg, const int K,
                     const int H, const int W, const int kh, const int kw,
                     const int dh, const int dw, const int sh, const int sw,
                     const int pt, const int pl, const int Ho, const int Wo)
{
    const int w = get_global_id(0);
    const int h = get_global_id(1);
    const int nc = get_global_id(2);
    if (w >= W) return;
    const int n = nc / C, c = nc - n * C;
    const int g = c / Cg, cl = c - g * Cg;
    const size_t L = (size_t)Ho * Wo;
    __global const real* d = D + d_off + (((size_t)g * K + (size_t)cl * kh * kw) * nb + n) * L;
    real acc = 0;
    for (int i = 0; i < kh; ++i) {
        const int hp = h + pt - i * dh;
        if (hp < 0) break;  // later taps sit even higher
        const int ho = hp / sh;
        if (ho * sh != hp || ho >= Ho) continue;
        for (int j = 0; j < kw; ++j) {
            const int wp = w + pl - j * dw;
            if (wp < 0) break;
            const int wo = wp / sw;
            if (wo * sw != wp || wo >= Wo) continue;
            acc += d[((size_t)(i * kw + j) * nb) * L + (size_t)ho * Wo + wo];
        }
    }
    STORE_OUT(acc, GX, (((size_t)(n0 + n) * C + c) * H + h) * W + w);
}

// Direct grad_x: the same gather, with the dot product over the group's Og output channels.
__kernel void direct_grad_x(__global out_t* restrict GX, __global const real* restrict GY,
                            __global const real* restrict Wt,
                            const int C, const int Cg, const int O, const int Og,
                            const int H, const int W, const int kh, const int kw,
                            const int dh, const int dw, const int sh, const int sw,
                            const int pt, const int pl, const int Ho, const int Wo)
{
    const int w = get_global_id(0);
    const int h = get_global_id(1);
    const int nc = get_global_id(2);
    if (w >= W) return;
    const int n = nc / C, c = nc - n * C;
    const int g = c / Cg, cl = c - g * Cg;
    const size_t L = (size_t)Ho * Wo;
    __global const real* gy = GY + ((size_t)n * O + (size_t)g * Og) * L;
    __global const real* wt = Wt + ((size_t)g * Og * Cg + cl) * kh * kw;
    real acc = 0;
    for (int i = 0; i < kh; ++i) {
        const int hp = h + pt - i * dh;
        if (hp < 0) break;
        const int ho = hp / sh;
        if (ho * sh != hp || ho >= Ho) continue;
        for (int j = 0; j < kw; ++j) {
            const int wp = w + pl - j * dw;
            if (wp < 0) break;
            const int wo = wp / sw;
            if (wo * sw != wp || wo >= Wo) continue;
            const size_t pix = (size_t)ho * Wo + wo;
            for (int o = 0; o < Og; ++o)
                acc = fma(gy[(size_t)o * L + pix], wt[((size_t)o * Cg * kh + i) * kw + j], acc);
        }
    }
    STORE_OUT(acc, GX, (((size_t)n * C + c) * H + h) * W + w);
}

// Direct grad_w[o][cl][i][j] = sum over n, ho, wo of gy[n][o][ho][wo] * Xp[n][g*Cg+cl][ho*sh+i*dh][wo*sw+j*dw].
__kernel void direct_grad_w(__global out_t* restrict GW, __global const real* restrict GY,
                            __global const real* restrict Xp,
                            const int N, const int C, const int Cg, const int O, const int Og,
                            const int Hp, const int Wp, const int kh, const int kw,
                            const int dh, const int dw, const int sh, const int sw,
                            const int Ho, const int Wo)
{
    const int t = get_global_id(0);
    const int cl = get_global_id(1);
    const int o = get_global_id(2);
    if (t >= kh * kw) return;
    const int i = t / kw, j = t - i * kw;
    const int g = o / Og;
    const size_t L = (size_t)Ho * Wo;
    real acc = 0;
    for (int n = 0; n < N; ++n) {
        __global const real* gy = GY + ((size_t)n * O + o) * L;
        __global const real* x = Xp + (((size_t)n * C + (size_t)g * Cg + cl) * Hp + (size_t)i * dh) * Wp + (size_t)j * dw;
        for (int ho = 0; ho < Ho; ++ho) {
            __global const real* xr = x + (size_t)ho * sh * Wp;
            __global const real* gr = gy + (size_t)ho * Wo;
            for (int wo = 0; wo < Wo; ++wo) acc = fma(gr[wo], xr[(size_t)wo * sw], acc);
        }
    }
    STORE_OUT(acc, GW, ((size_t)o * Cg + cl) * kh * kw + t);
}

// grad_bias[o] = sum over n, ho, wo of gy[n][o][ho][wo].
__kernel void grad_bias(__global out_t* restrict GB, __global const real* restrict GY,
                        const int N, const int O, const int L)
{
    const int o = get_global_id(0);
    if (o >= O) return;
    real acc = 0;
    for (int n = 0; n < N; ++n) {
        __global const real* gy = GY + ((size_t)n * O + o) * L;
        for (int l = 0; l < L; ++l) acc += gy[l];
    }
    STORE_OUT(acc, GB, o);
}

// a[i] += b[i]: partial grad_w of one block of images added to the running sum.
__kernel void accumulate(__global real* restrict A, const long a_off,
                         __global const real* restrict B, const long b_off, const long n)
{
    const long i = get_global_id(0);
    if (i < n) A[a_off + i] += B[b_off + i];
}

#define PACK_RMAX 128  // the largest panel width pack_cols serves (the host checks)

// im2col fused with the CPU GEMM's packing (gemm_cpu.cl's B panels). The reduction (the
// block's nb*Ho output rows of Wo pixels) is cut into S chunks of `rpc` rows, each one GEMM
// batch, so a work-item's panels stay cache-sized: for group g, chunk s and tile t of R weight
// rows, dst[g][s][t][lc][R] = cols[t*R + r][s*rpc*Wo + lc] (0 for rows past K). One work-item
// writes the Wo x R block of one output row: the padded input is read in runs of Wo.
__kernel void pack_cols(__global real* restrict dst, __global const real* restrict Xp,
                        const int n0, const int nb, const int C, const int Cg, const int K,
                        const int Hp, const int Wp, const int kh, const int kw,
                        const int dh, const int dw, const int sh, const int sw,
                        const int Ho, const int Wo, const int R, const int rpc)
{
    const int row = get_global_id(0);
    const int t = get_global_id(1);
    const int g = get_global_id(2);
    const int T = get_global_size(1);
    if (row >= nb * Ho) return;
    const int n = row / Ho, ho = row - (row / Ho) * Ho;
    const int S = nb * Ho / rpc;
    const int s = row / rpc, rin = row - s * rpc;
    const size_t Lc = (size_t)rpc * Wo;
    __global real* d = dst + (((size_t)g * S + s) * T + t) * Lc * R + (size_t)rin * Wo * R;
    // Where each of the tile's R weight rows starts reading (-1: past K, zeros); then the
    // Wo x R block is written in order, reading R runs of the padded input side by side.
    long off[PACK_RMAX];
    for (int r = 0; r < R; ++r) {
        const int k = t * R + r;
        if (k >= K) {
            off[r] = -1;
            continue;
        }
        const int c = k / (kh * kw), tap = k - c * (kh * kw);
        const int i = tap / kw, j = tap - i * kw;
        off[r] = (((long)(n0 + n) * C + (long)g * Cg + c) * Hp + (long)(ho * sh + i * dh)) * Wp + (long)j * dw;
    }
    for (int wo = 0; wo < Wo; ++wo) {
        const long x0 = (long)wo * sw;
        for (int r = 0; r < R; ++r) d[(size_t)wo * R + r] = off[r] < 0 ? (real)0 : Xp[off[r] + x0];
    }
}

// out[g][e] = sum over s of part[g][s][e]: the S chunk partials of grad_w, in a fixed order.
__kernel void sum_chunks(__global real* restrict out, __global const real* restrict part,
                         const int S, const long n, const long total)
{
    const long q = get_global_id(0);
    if (q >= total) return;
    const long g = q / n, e = q - (q / n) * n;
    __global const real* p = part + g * S * n + e;
    real acc = 0;
    for (int s = 0; s < S; ++s) acc += p[(size_t)s * n];
    out[q] = acc;
}

// The weights of grad_x as a forward convolution (stride 1):
// dst[g*Cg + c][o][t] = W[g*Og + o][c][khw - 1 - t] (both kernel axes reversed), W contiguous.
__kernel void flip_weights(__global out_t* restrict dst, __global const in_t* restrict W, const long w_off,
                           const int Og, const int Cg, const int khw)
{
    const int o = get_global_id(0);
    const int cc = get_global_id(1);  // g*Cg + c
    if (o >= Og) return;
    const int g = cc / Cg, c = cc - (cc / Cg) * Cg;
    const long src = w_off + (((long)g * Og + o) * Cg + c) * khw + khw - 1;
    const size_t d = ((size_t)cc * Og + o) * khw;
    for (int t = 0; t < khw; ++t) STORE_OUT(LOAD_IN(W, src - t), dst, d + t);
}
