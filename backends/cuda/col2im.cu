// col2im for xdev's "gemm" conv2d backward on CUDA (cuBLAS GEMMs around im2col.cu and this file).
//
// Compiled with common.cuh in front (kernels.py): by NVRTC through cupy.RawModule at run time,
// and by nvcc and NVRTC in the test suite, which also runs it in a host emulation.
//
// dcols = W^T @ grad_y has the layout (nb, G, K, hb*Wo), C-contiguous, for the images of one
// block (the host passes gx at image n0) and the output rows [ho0, ho0+hb):
//     gx[n, g*Cg + c, h, w] += sum over the taps (i, j) of this block's rows that read (h, w) of
//                              dcols[n, g, (c*kh + i)*kw + j, (ho - ho0)*Wo + wo]
// with h + pt - i*dh = ho*sh and w + pl - j*dw = wo*sw.  A gather: each thread owns one
// input pixel, so there are no atomics and the sums are deterministic.  gx is a C-contiguous
// (nb, C, H, W) accumulator in the compute type (float for float16 data, double for float64);
// blocks of output rows add to it in turn, and the host rounds it to the data type once.
//
// Launch: block (256, 1, 1); grid (any, <= 65535, <= 65535); grid-stride loops cover the H*W
// pixels (x), the C channels (y) and the nb images (z).

template <typename A>
__device__ __forceinline__ void xdev_col2im(
    const A* __restrict__ dcols, A* __restrict__ gx,
    int nb, int G, int Cg, int H, int W, int kh, int kw,
    int sh, int sw, int dh, int dw, int pt, int pl, int Wo, int ho0, int hb)
{
    const int C = G * Cg;
    const int khw = kh * kw;
    const int K = Cg * khw;
    const long long L = (long long)hb * Wo;
    const int HW = H * W;
    const int qstep = (int)(gridDim.x * blockDim.x);
    for (int n = (int)blockIdx.z; n < nb; n += (int)gridDim.z) {
        for (int c = (int)blockIdx.y; c < C; c += (int)gridDim.y) {
            const int g = c / Cg;
            const int cl = c - g * Cg;
            const A* d = dcols + ((long long)(n * G + g) * K + (long long)cl * khw) * L;
            A* out = gx + ((long long)n * C + c) * HW;
            for (int q = (int)(blockIdx.x * blockDim.x + threadIdx.x); q < HW; q += qstep) {
                const int h = q / W;
                const int w = q - h * W;
                A acc = (A)0;
                for (int i = 0; i < kh; ++i) {
                    const int hp = h + pt - i * dh;
                    if (hp < 0) break;  // later taps sit even higher
                    const int ho = hp / sh;
                    if (ho * sh != hp || ho < ho0 || ho >= ho0 + hb) continue;
                    for (int j = 0; j < kw; ++j) {
                        const int wp = w + pl - j * dw;
                        if (wp < 0) break;
                        const int wo = wp / sw;
                        if (wo * sw != wp || wo >= Wo) continue;
                        acc += d[(long long)(i * kw + j) * L + (long long)(ho - ho0) * Wo + wo];
                    }
                }
                out[q] += acc;
            }
        }
    }
}

#define XDEV_COL2IM(NAME, A)                                                                  \
    XDEV_KERNEL(256) NAME(const A* __restrict__ dcols, A* __restrict__ gx,                    \
                     int nb, int G, int Cg, int H, int W, int kh, int kw,                     \
                     int sh, int sw, int dh, int dw, int pt, int pl, int Wo, int ho0, int hb) \
    {                                                                                         \
        xdev_col2im<A>(dcols, gx, nb, G, Cg, H, W, kh, kw, sh, sw, dh, dw, pt, pl, Wo, ho0, hb); \
    }

XDEV_COL2IM(xdev_col2im_f32, float)
XDEV_COL2IM(xdev_col2im_f64, double)
