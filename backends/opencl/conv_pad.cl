// Zero-padded copy of the input in the compute type: xp[n][c][Hp][Wp] from a strided x.
// The conv kernels then read xp without bounds checks. It is an input-sized copy, not
// an im2col buffer (which would be kH*kW times larger).
__kernel void pad_input(__global real* restrict dst,
                        __global const in_t* restrict src, const long off,
                        const long sn, const long sc, const long sh, const long sw,
                        const int C, const int H, const int W,
                        const int Hp, const int Wp, const int pt, const int pl)
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
