// Direct 2-D convolution (cross-correlation) for xdev's "direct" conv2d algorithm on CUDA.
//
// Compiled with common.cuh in front (kernels.py): by NVRTC through cupy.RawModule at run time,
// and by nvcc and NVRTC in the test suite, which also runs it in a host emulation.
//
// y[n, g*Og + o, oh, ow] = bias[g*Og + o]
//     + sum_{c < Cg, i < kh, j < kw} w[g*Og + o, c, i, j] * x[n, g*Cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]
// (x is 0 outside the image: padding is (pt, pb, pl, pr); pb and pr only shape Ho and Wo.)
//
// xdev_conv_direct_<dtype>_o<OT>: the tiled kernel.  A block of 16 x 8 threads owns one image,
// one group, OT output channels and a 16 x 16 tile of output pixels; each thread keeps
// OT x 2 accumulators in registers (two output rows).  For each chunk of CC input channels the
// block stages the input tile with its halo ((16-1)*s + (k-1)*d + 1 pixels a side, zero
// padding applied while loading) and the chunk's weights in shared memory, laid out
// [c][tap][o] so each tap's OT weights are read with 16-byte loads.  Shapes, strides,
// padding, dilation and groups are run-time arguments: one compilation serves every shape.
// Launch: block (16, 8, 1); grid (tiles_h*tiles_w, <= 65535, <= 65535), the y and z loops
// cover G*otiles and N; dynamic shared memory as computed by backends/cuda/launch.py.
//
// xdev_conv_direct_<dtype>_naive: one thread per output element reading global memory, for
// geometries whose halo tile does not fit in shared memory (very large dilated kernels).
//
// Accumulation: float for float16 and float32 inputs, double for float64; the bias is added
// before the one rounding to the output type.  x is read through element strides (any sign);
// w and bias must be C-contiguous; y is C-contiguous (N, O, Ho, Wo).

#define XDEV_TILE_W 16    // threads along x = output columns per tile
#define XDEV_THREADS_Y 8  // threads along y
#define XDEV_RPT 2        // output rows per thread
#define XDEV_TILE_H (XDEV_THREADS_Y * XDEV_RPT)

__device__ __forceinline__ int xdev_imin(int a, int b) { return a < b ? a : b; }

// OT accumulator-type values from 16-byte-aligned shared memory, 16 bytes at a time.
template <typename A, int OT>
__device__ __forceinline__ void xdev_load_weights(A (&wv)[OT], const A* p)
{
    constexpr int PER = 16 / (int)sizeof(A);
    static_assert(OT % PER == 0, "OT * sizeof(A) must be a multiple of 16 bytes");
    const xdev_chunk16* q = reinterpret_cast<const xdev_chunk16*>(p);
#pragma unroll
    for (int k = 0; k < OT / PER; ++k) {
        const xdev_chunk16 c = q[k];
        const A* v = reinterpret_cast<const A*>(&c);
#pragma unroll
        for (int m = 0; m < PER; ++m) wv[k * PER + m] = v[m];
    }
}

// ---- the tiled kernel ---------------------------------------------------------------------
template <typename T, typename A, int OT>
__device__ __forceinline__ void xdev_conv_direct(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
    long long sN, long long sC, long long sH, long long sW,
    int N, int H, int W, int G, int Cg, int Og, int kh, int kw,
    int sh, int sw, int dh, int dw, int pt, int pl, int Ho, int Wo,
    int IH, int IW, int CC, int tiles_w, int otiles, int has_bias)
{
    XDEV_DYNAMIC_SMEM(xdev_smem);
    constexpr int PER = 16 / (int)sizeof(A);
    A* s_x = reinterpret_cast<A*>(xdev_smem);
    // Weights start on a 16-byte boundary after the CC input tiles.
    A* s_w = s_x + ((CC * IH * IW + PER - 1) / PER) * PER;

    const int khw = kh * kw;
    const int tx = (int)threadIdx.x;
    const int ty = (int)threadIdx.y;
    const int tid = ty * XDEV_TILE_W + tx;
    const int nthreads = XDEV_TILE_W * XDEV_THREADS_Y;
    const int tile = (int)blockIdx.x;
    const int th = tile / tiles_w;
    const int oh0 = th * XDEV_TILE_H;
    const int ow0 = (tile - th * tiles_w) * XDEV_TILE_W;
    const int ih0 = oh0 * sh - pt;
    const int iw0 = ow0 * sw - pl;
    const int O = G * Og;
    const int IHW = IH * IW;

    for (int n = (int)blockIdx.z; n < N; n += (int)gridDim.z) {
        for (int gy = (int)blockIdx.y; gy < G * otiles; gy += (int)gridDim.y) {
            const int g = gy / otiles;
            const int o0 = (gy - g * otiles) * OT;
            A acc[OT][XDEV_RPT];
#pragma unroll
            for (int o = 0; o < OT; ++o)
#pragma unroll
                for (int r = 0; r < XDEV_RPT; ++r) acc[o][r] = (A)0;

            const T* xg = x + (long long)n * sN + (long long)(g * Cg) * sC;
            for (int c0 = 0; c0 < Cg; c0 += CC) {
                const int cc = xdev_imin(CC, Cg - c0);
                XDEV_SYNC();  // everyone is done reading the previous chunk
                for (int e = tid; e < cc * IHW; e += nthreads) {
                    const int c = e / IHW;
                    const int rem = e - c * IHW;
                    const int a = rem / IW;
                    const int ih = ih0 + a;
                    const int iw = iw0 + (rem - a * IW);
                    A v = (A)0;
                    if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                        v = xdev_load(xg[(long long)(c0 + c) * sC + (long long)ih * sH + (long long)iw * sW]);
                    s_x[e] = v;
                }
                // s_w[(c*khw + t)*OT + o] = w[g*Og + o0 + o, c0 + c, t] (0 past Og)
                for (int e = tid; e < cc * khw * OT; e += nthreads) {
                    const int ct = e / OT;
                    const int o = e - ct * OT;
                    const int c = ct / khw;
                    const int t = ct - c * khw;
                    A v = (A)0;
                    if (o0 + o < Og)
                        v = xdev_load(w[((long long)(g * Og + o0 + o) * Cg + (c0 + c)) * khw + t]);
                    s_w[e] = v;
                }
                XDEV_SYNC();
                for (int c = 0; c < cc; ++c) {
                    const A* sxc = s_x + c * IHW;
                    for (int i = 0; i < kh; ++i) {
                        const A* sxr = sxc + (ty * sh + i * dh) * IW + tx * sw;
                        for (int j = 0; j < kw; ++j) {
                            A xv[XDEV_RPT];
#pragma unroll
                            for (int r = 0; r < XDEV_RPT; ++r)
                                xv[r] = sxr[r * XDEV_THREADS_Y * sh * IW + j * dw];
                            A wv[OT];
                            xdev_load_weights<A, OT>(wv, s_w + ((c * khw) + i * kw + j) * OT);
#pragma unroll
                            for (int o = 0; o < OT; ++o)
#pragma unroll
                                for (int r = 0; r < XDEV_RPT; ++r) acc[o][r] += wv[o] * xv[r];
                        }
                    }
                }
            }

            const int ow = ow0 + tx;
#pragma unroll
            for (int o = 0; o < OT; ++o) {
                const int oc = o0 + o;
                if (oc < Og) {
                    const A b = has_bias ? xdev_load(bias[g * Og + oc]) : (A)0;
#pragma unroll
                    for (int r = 0; r < XDEV_RPT; ++r) {
                        const int oh = oh0 + ty + r * XDEV_THREADS_Y;
                        if (oh < Ho && ow < Wo)
                            y[(((long long)n * O + g * Og + oc) * Ho + oh) * Wo + ow] = xdev_store<T, A>(acc[o][r] + b);
                    }
                }
            }
        }
    }
}

// ---- the fallback: one thread per output element ----------------------------------------
template <typename T, typename A>
__device__ __forceinline__ void xdev_conv_naive(
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
    long long sN, long long sC, long long sH, long long sW,
    int N, int H, int W, int G, int Cg, int Og, int kh, int kw,
    int sh, int sw, int dh, int dw, int pt, int pl, int Ho, int Wo, int has_bias)
{
    const int O = G * Og;
    const long long total = (long long)N * O * Ho * Wo;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
        const int ow = (int)(idx % Wo);
        long long t = idx / Wo;
        const int oh = (int)(t % Ho);
        t /= Ho;
        const int oc = (int)(t % O);
        const int n = (int)(t / O);
        const int g = oc / Og;
        const T* xg = x + (long long)n * sN + (long long)(g * Cg) * sC;
        const T* wo = w + (long long)oc * Cg * kh * kw;
        A acc = (A)0;
        for (int c = 0; c < Cg; ++c) {
            for (int i = 0; i < kh; ++i) {
                const int ih = oh * sh - pt + i * dh;
                if (ih < 0 || ih >= H) continue;
                for (int j = 0; j < kw; ++j) {
                    const int iw = ow * sw - pl + j * dw;
                    if (iw < 0 || iw >= W) continue;
                    acc += xdev_load(wo[(c * kh + i) * kw + j]) *
                           xdev_load(xg[(long long)c * sC + (long long)ih * sH + (long long)iw * sW]);
                }
            }
        }
        if (has_bias) acc += xdev_load(bias[oc]);
        y[idx] = xdev_store<T, A>(acc);
    }
}

#define XDEV_DIRECT_ARGS(T)                                                                   \
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,             \
    T* __restrict__ y, long long sN, long long sC, long long sH, long long sW,                \
    int N, int H, int W, int G, int Cg, int Og, int kh, int kw,                               \
    int sh, int sw, int dh, int dw, int pt, int pl, int Ho, int Wo

#define XDEV_DIRECT(NAME, T, A, OT)                                                           \
    XDEV_KERNEL(XDEV_TILE_W * XDEV_THREADS_Y)                                                 \
    NAME(XDEV_DIRECT_ARGS(T), int IH, int IW, int CC, int tiles_w, int otiles, int has_bias)  \
    {                                                                                         \
        xdev_conv_direct<T, A, OT>(x, w, bias, y, sN, sC, sH, sW, N, H, W, G, Cg, Og, kh, kw, \
                                   sh, sw, dh, dw, pt, pl, Ho, Wo, IH, IW, CC, tiles_w,       \
                                   otiles, has_bias);                                         \
    }

#define XDEV_NAIVE(NAME, T, A)                                                                \
    XDEV_KERNEL(256)                                                                          \
    NAME(XDEV_DIRECT_ARGS(T), int has_bias)                                                   \
    {                                                                                         \
        xdev_conv_naive<T, A>(x, w, bias, y, sN, sC, sH, sW, N, H, W, G, Cg, Og, kh, kw,      \
                              sh, sw, dh, dw, pt, pl, Ho, Wo, has_bias);                      \
    }

XDEV_DIRECT(xdev_conv_direct_f16_o16, xdev_half, float, 16)
XDEV_DIRECT(xdev_conv_direct_f16_o4, xdev_half, float, 4)
XDEV_DIRECT(xdev_conv_direct_f32_o16, float, float, 16)
XDEV_DIRECT(xdev_conv_direct_f32_o4, float, float, 4)
XDEV_DIRECT(xdev_conv_direct_f64_o16, double, double, 16)
XDEV_DIRECT(xdev_conv_direct_f64_o4, double, double, 4)

XDEV_NAIVE(xdev_conv_direct_f16_naive, xdev_half, float)
XDEV_NAIVE(xdev_conv_direct_f32_naive, float, float)
XDEV_NAIVE(xdev_conv_direct_f64_naive, double, double)
