// Direct conv2d backward for xdev's "direct" algorithm on CUDA: grad_x and grad_w by loops
// over the kernel taps, no im2col buffer.
//
// Compiled with common.cuh in front (kernels.py): by NVRTC through cupy.RawModule at run time,
// and by nvcc and NVRTC in the test suite, which also runs it in a host emulation.
//
// xdev_dgrad_direct_<dtype>: one thread per input element (grid-stride over N*C*H*W):
//     gx[n, g*Cg + c, h, w] = sum_{i, j: h + pt - i*dh = ho*sh, w + pl - j*dw = wo*sw}
//                             sum_{o < Og} gy[n, g*Og + o, ho, wo] * w[g*Og + o, c, i, j]
// a gather (no atomics). gy (N, O, Ho, Wo) and w (O, Cg, kh, kw) are C-contiguous; gx is
// C-contiguous (N, C, H, W). Launch: block (256, 1, 1), grid (any, 1, 1).
//
// xdev_wgrad_direct_<dtype>: one block of 64 threads per weight element (grid-stride over
// O*Cg*kh*kw): the threads split the N*Ho*Wo products, then add their partial sums in
// shared memory (a fixed tree: deterministic).  x is read through element strides (any
// sign) and is 0 outside the image.  Launch: block (64, 1, 1), grid (any, 1, 1), dynamic
// shared memory 64 * sizeof(accumulator).
//
// Accumulation: float for float16 and float32 data, double for float64; one rounding to the
// data type at the end.

#define XDEV_WGRAD_THREADS 64  // a power of two: the tree reduction halves it

template <typename T, typename A>
__device__ __forceinline__ void xdev_dgrad_direct(
    const T* __restrict__ gy, const T* __restrict__ w, T* __restrict__ gx,
    int N, int H, int W, int G, int Cg, int Og, int kh, int kw,
    int sh, int sw, int dh, int dw, int pt, int pl, int Ho, int Wo)
{
    const int C = G * Cg;
    const int O = G * Og;
    const long long total = (long long)N * C * H * W;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        const int x_ = (int)(idx % W);
        long long r = idx / W;
        const int h = (int)(r % H);
        r /= H;
        const int c = (int)(r % C);
        const int n = (int)(r / C);
        const int g = c / Cg;
        const int cl = c - g * Cg;
        A acc = (A)0;
        for (int i = 0; i < kh; ++i) {
            const int hp = h + pt - i * dh;
            if (hp < 0) break;  // later taps sit even higher
            const int ho = hp / sh;
            if (ho * sh != hp || ho >= Ho) continue;
            for (int j = 0; j < kw; ++j) {
                const int wp = x_ + pl - j * dw;
                if (wp < 0) break;
                const int wo = wp / sw;
                if (wo * sw != wp || wo >= Wo) continue;
                const T* gp = gy + (((long long)n * O + (long long)g * Og) * Ho + ho) * Wo + wo;
                const T* wp_ = w + (((long long)g * Og * Cg + cl) * kh + i) * kw + j;
                const long long gstep = (long long)Ho * Wo;
                const long long wstep = (long long)Cg * kh * kw;
                for (int o = 0; o < Og; ++o)
                    acc += (A)xdev_load(gp[o * gstep]) * (A)xdev_load(wp_[o * wstep]);
            }
        }
        gx[idx] = xdev_store<T, A>(acc);
    }
}

template <typename T, typename A>
__device__ __forceinline__ void xdev_wgrad_direct(
    const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gw,
    long long sN, long long sC, long long sH, long long sW,
    int N, int H, int W, int G, int Cg, int Og, int kh, int kw,
    int sh, int sw, int dh, int dw, int pt, int pl, int Ho, int Wo)
{
    XDEV_DYNAMIC_SMEM(xdev_smem);
    A* red = reinterpret_cast<A*>(xdev_smem);
    const int O = G * Og;
    const long long total = (long long)O * Cg * kh * kw;
    const long long L = (long long)N * Ho * Wo;
    const int t = (int)threadIdx.x;
    for (long long e = blockIdx.x; e < total; e += gridDim.x) {
        const int j = (int)(e % kw);
        long long r = e / kw;
        const int i = (int)(r % kh);
        r /= kh;
        const int cl = (int)(r % Cg);
        const int oc = (int)(r / Cg);
        const int g = oc / Og;
        const T* xc = x + (long long)(g * Cg + cl) * sC;
        A acc = (A)0;
        for (long long q = t; q < L; q += XDEV_WGRAD_THREADS) {
            const int wo = (int)(q % Wo);
            const long long r2 = q / Wo;
            const int ho = (int)(r2 % Ho);
            const int n = (int)(r2 / Ho);
            const int ih = ho * sh - pt + i * dh;
            const int iw = wo * sw - pl + j * dw;
            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
            acc += (A)xdev_load(gy[(((long long)n * O + oc) * Ho + ho) * Wo + wo])
                 * (A)xdev_load(xc[(long long)n * sN + (long long)ih * sH + (long long)iw * sW]);
        }
        red[t] = acc;
        XDEV_SYNC();
        for (int s = XDEV_WGRAD_THREADS / 2; s > 0; s >>= 1) {
            if (t < s) red[t] += red[t + s];
            XDEV_SYNC();
        }
        if (t == 0) gw[e] = xdev_store<T, A>(red[0]);
        XDEV_SYNC();  // red is reused by the next weight element
    }
}

#define XDEV_DGRAD(NAME, T, A)                                                                \
    XDEV_KERNEL(256) NAME(const T* __restrict__ gy, const T* __restrict__ w, T* __restrict__ gx, \
                     int N, int H, int W, int G, int Cg, int Og, int kh, int kw,              \
                     int sh, int sw, int dh, int dw, int pt, int pl, int Ho, int Wo)          \
    {                                                                                         \
        xdev_dgrad_direct<T, A>(gy, w, gx, N, H, W, G, Cg, Og, kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo); \
    }

#define XDEV_WGRAD(NAME, T, A)                                                                \
    XDEV_KERNEL(XDEV_WGRAD_THREADS) NAME(const T* __restrict__ gy, const T* __restrict__ x,   \
                     T* __restrict__ gw, long long sN, long long sC, long long sH, long long sW, \
                     int N, int H, int W, int G, int Cg, int Og, int kh, int kw,              \
                     int sh, int sw, int dh, int dw, int pt, int pl, int Ho, int Wo)          \
    {                                                                                         \
        xdev_wgrad_direct<T, A>(gy, x, gw, sN, sC, sH, sW, N, H, W, G, Cg, Og, kh, kw,        \
                                sh, sw, dh, dw, pt, pl, Ho, Wo);                              \
    }

XDEV_DGRAD(xdev_dgrad_direct_f16, xdev_half, float)
XDEV_DGRAD(xdev_dgrad_direct_f32, float, float)
XDEV_DGRAD(xdev_dgrad_direct_f64, double, double)
XDEV_WGRAD(xdev_wgrad_direct_f16, xdev_half, float)
XDEV_WGRAD(xdev_wgrad_direct_f32, float, float)
XDEV_WGRAD(xdev_wgrad_direct_f64, double, double)
