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
                acc = MADD(gy[(size_t)o * L + pix], wt[((size_t)o * Cg * kh + i) * kw + j], acc);
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
            for (int wo = 0; wo < Wo; ++wo) acc = MADD(gr[wo], xr[(size_t)wo * sw], acc);
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

// ---- grad_w along output rows, for CPUs (-DVW vector width, -DMR x -DKR micro-tile) ----
// grad_w[g*Og + o][k] for k = (c, i, j) is the sum over n, ho, wo of
// gy[n][g*Og + o][ho][wo] * Xp[n][g*Cg + c][ho*sh + i*dh][wo + j*dw] (width stride 1): along a
// row, both factors are unit-stride runs, so VW pixels of one row are one vector load of each
// and no im2col panel is ever written. A work-item keeps MR x KR vector accumulators
// (MR output channels by KR taps) over its reduction and adds their lanes at the end. With
// S > 1 the reduction's N*Ho rows are cut into S blocks of rpb rows (GW then holds the G x S
// partials for sum_chunks): a work-item's rows of GY and Xp stay cache-sized.
// GY rows are Wv = Wo rounded up to VW long, zero past Wo (pad_rows); the last vector of a row
// also zeroes the input lanes past Wo, so a non-finite input there cannot leak in as 0*inf.
// Xp needs VW elements of slack after its last row (the last vector reads past Wo).
#ifdef KR
#if REAL_BITS == 64
#define MASKT CAT(long, VW)
#else
#define MASKT CAT(int, VW)
#endif
typedef MASKT maskv;

inline real hsum(const realv v)
{
#if VW == 16
    const CAT(REAL_T, 8) v8 = v.lo + v.hi;
#elif VW == 8
    const CAT(REAL_T, 8) v8 = v;
#endif
#if VW >= 8
    const CAT(REAL_T, 4) v4 = v8.lo + v8.hi;
#elif VW == 4
    const CAT(REAL_T, 4) v4 = v;
#endif
#if VW >= 4
    const CAT(REAL_T, 2) v2 = v4.lo + v4.hi;
#else
    const CAT(REAL_T, 2) v2 = v;
#endif
    return v2.lo + v2.hi;
}

#define ROWS_STEP(w0, MASKED)                                                    \
    {                                                                            \
        realv gv_[MR];                                                           \
        _Pragma("unroll") for (int m_ = 0; m_ < MR; ++m_)                        \
            gv_[m_] = VLOAD(0, gyr + goff[m_] + (w0));                           \
        _Pragma("unroll") for (int r_ = 0; r_ < KR; ++r_) {                      \
            realv xv_ = VLOAD(0, xr + xoff[r_] + (w0));                          \
            if (MASKED) xv_ = select((realv)(0), xv_, tail);                     \
            _Pragma("unroll") for (int m_ = 0; m_ < MR; ++m_)                    \
                acc[m_][r_] = MADD(gv_[m_], xv_, acc[m_][r_]);                   \
        }                                                                        \
    }

__kernel void grad_w_rows(__global out_t* restrict GW, __global const real* restrict GY,
                          __global const real* restrict Xp,
                          const int N, const int C, const int Cg, const int O, const int Og, const int K,
                          const int Hp, const int Wp, const int kh, const int kw,
                          const int dh, const int dw, const int sh,
                          const int Ho, const int Wo, const int Wv, const int S, const int rpb)
{
    const int kt = get_global_id(0);  // tiles of taps vary fastest: they share GY's rows
    const int ot = get_global_id(1);
    const int g = get_global_id(2) / S, s = get_global_id(2) - (get_global_id(2) / S) * S;
    const int khw = kh * kw;
    // Edge tiles repeat the last valid row or tap (computed, never stored): no branches inside.
    long xoff[KR];
    for (int r = 0; r < KR; ++r) {
        const int k = min(kt * KR + r, K - 1);
        const int c = k / khw, tap = k - c * khw;
        const int i = tap / kw, j = tap - i * kw;
        xoff[r] = ((long)(g * Cg + c) * Hp + (long)i * dh) * Wp + (long)j * dw;
    }
    long goff[MR];
    for (int m = 0; m < MR; ++m) goff[m] = (long)(g * Og + min(ot * MR + m, Og - 1)) * Ho * Wv;
    const int nfull = Wo / VW;
    maskv tail;
    {
        int lane[VW];
        for (int l = 0; l < VW; ++l) lane[l] = nfull * VW + l < Wo ? -1 : 0;
        tail = CAT(convert_, MASKT)(CAT(vload, VW)(0, lane));
    }
    const bool has_tail = nfull * VW < Wo;

    realv acc[MR][KR];
    _Pragma("unroll") for (int m = 0; m < MR; ++m)
        _Pragma("unroll") for (int r = 0; r < KR; ++r) acc[m][r] = (realv)(0);
    // Block s of the reduction: output rows (n, ho) s*rpb .. s*rpb + rpb - 1 of the N*Ho.
    const int r1 = min(N * Ho, (s + 1) * rpb);
    for (int row = s * rpb; row < r1; ++row) {
        const int n = row / Ho, ho = row - (row / Ho) * Ho;
        __global const real* gyr = GY + ((size_t)n * O * Ho + ho) * Wv;
        __global const real* xr = Xp + (size_t)n * C * Hp * Wp + (size_t)ho * sh * Wp;
        for (int v = 0; v < nfull; ++v) ROWS_STEP(v * VW, 0)
        if (has_tail) ROWS_STEP(nfull * VW, 1)
    }
    #pragma unroll
    for (int m = 0; m < MR; ++m) {
        const int o = ot * MR + m;
        #pragma unroll
        for (int r = 0; r < KR; ++r) {
            const int k = kt * KR + r;
            if (o < Og && k < K) STORE_OUT(hsum(acc[m][r]), GW, ((size_t)(g * S + s) * Og + o) * K + k);
        }
    }
}
#endif

// Rows of Wo values copied into rows of Wv >= Wo, zero past Wo (grad_w_rows' GY layout).
__kernel void pad_rows(__global real* restrict dst, __global const real* restrict src,
                       const int Wo, const int Wv, const long rows)
{
    const int w = get_global_id(0);
    const long r = get_global_id(1);
    if (w >= Wv || r >= rows) return;
    dst[r * Wv + w] = w < Wo ? src[r * Wo + w] : (real)0;
}
