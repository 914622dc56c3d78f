// Zero-padded copy of the input in the compute type: xp[n][c][Hp][Wp] from a strided x.
// The conv kernels then read xp without bounds checks. It is an input-sized copy, not
// an im2col buffer (which would be kH*kW times larger).
// The arguments of both copies: dst, the strided source, its sizes, the padded sizes.
#define PAD_ARGS __global real* restrict dst, __global const in_t* restrict src, const long off, \
                 const long sn, const long sc, const long sh, const long sw,                  \
                 const int C, const int H, const int W, const int Hp, const int Wp,          \
                 const int pt, const int pl

__kernel void pad_input(PAD_ARGS)
{
    const int wq = get_global_id(0);
    const int hq = get_global_id(1);
    const int nc = get_global_id(2);
    if (wq >= Wp) return;
    const int n = nc / C, c = nc - (nc / C) * C;
    const int h = hq - pt, w = wq - pl;
    real v = 0;
    if (h >= 0 && h < H && w >= 0 && w < W)
        v = LOAD_IN(src, off + n * sn + c * sc + h * sh + w * sw);
    dst[((size_t)nc * Hp + hq) * Wp + wq] = v;
}

// The same copy for CPU devices, a padded row per work-item: the copy along a row is one
// loop the compiler vectorizes where sw == 1, where pad_input's work-item per element
// reads through a runtime stride and computes each element's index on its own.
__kernel void pad_rows(PAD_ARGS)
{
    const int hq = get_global_id(0);
    const int nc = get_global_id(1);
    const int n = nc / C, c = nc - (nc / C) * C;
    const int h = hq - pt;
    __global real* d = dst + ((size_t)nc * Hp + hq) * Wp;
    if (h < 0 || h >= H) {
        for (int w = 0; w < Wp; ++w) d[w] = 0;
        return;
    }
    for (int w = 0; w < pl; ++w) d[w] = 0;
    const long s0 = off + n * sn + c * sc + h * sh;
    if (sw == 1) {
        for (int w = 0; w < W; ++w) d[pl + w] = LOAD_IN(src, s0 + w);
    } else {
        for (int w = 0; w < W; ++w) d[pl + w] = LOAD_IN(src, s0 + w * sw);
    }
    for (int w = pl + W; w < Wp; ++w) d[w] = 0;
}
