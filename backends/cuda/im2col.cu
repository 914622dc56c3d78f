// im2col for xdev's "gemm" conv2d algorithm on CUDA (im2col + cuBLAS, as Torch's `nn` did).
//
// Compiled with common.cuh in front (kernels.py): by NVRTC through cupy.RawModule at run time,
// and by nvcc and NVRTC in the test suite, which also runs it in a host emulation.
//
// cols has the layout (nb, G, Kp, hb*Wo), C-contiguous, for the images [n0, n0+nb) that the
// host selected by passing x at image n0, and the output rows [ho0, ho0+hb):
//     cols[n, g, k, l] = x[n, g*Cg + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw]   (0 outside)
// with k = (c*kh + i)*kw + j < K = Cg*kh*kw, oh = ho0 + l / Wo, ow = l % Wo.  Rows k >= K
// (Kp = K + 1 when the host folds the bias into the GEMM) hold ones.  x is read through
// element strides (any sign), so transposed or sliced views need no copy.  Data is copied,
// never computed on: float16 travels as its raw 16-bit pattern, and integer and bool data as
// the signed integer of its width (the _i8 ... _i64 kernels; their ones row holds 1).
//
// Launch: block (256, 1, 1); grid (any, <= 65535, <= 65535); grid-stride loops cover
// l (x), the G*Kp rows (y) and the nb images (z).  hb*Wo must stay below 2^31.

template <typename T> __device__ __forceinline__ T xdev_one();
template <> __device__ __forceinline__ xdev_half xdev_one<xdev_half>() { return (xdev_half)0x3C00u; }
template <> __device__ __forceinline__ float xdev_one<float>() { return 1.0f; }
template <> __device__ __forceinline__ double xdev_one<double>() { return 1.0; }
template <> __device__ __forceinline__ signed char xdev_one<signed char>() { return 1; }
template <> __device__ __forceinline__ short xdev_one<short>() { return 1; }
template <> __device__ __forceinline__ int xdev_one<int>() { return 1; }
template <> __device__ __forceinline__ long long xdev_one<long long>() { return 1; }

template <typename T>
__device__ __forceinline__ void xdev_im2col(
    const T* __restrict__ x, T* __restrict__ cols,
    long long sN, long long sC, long long sH, long long sW,
    int nb, int G, int Cg, int H, int W, int kh, int kw,
    int sh, int sw, int dh, int dw, int pt, int pl,
    int Wo, int ho0, int hb, int Kp)
{
    const int khw = kh * kw;
    const int K = Cg * khw;
    const int L = hb * Wo;
    const int rows = G * Kp;
    const int lstep = (int)(gridDim.x * blockDim.x);
    for (int n = (int)blockIdx.z; n < nb; n += (int)gridDim.z) {
        for (int row = (int)blockIdx.y; row < rows; row += (int)gridDim.y) {
            const int g = row / Kp;
            const int k = row - g * Kp;
            T* dst = cols + ((long long)n * rows + row) * (long long)L;
            int l = (int)(blockIdx.x * blockDim.x + threadIdx.x);
            if (k >= K) {  // the ones row that carries the bias through the GEMM
                const T one = xdev_one<T>();
                for (; l < L; l += lstep) dst[l] = one;
                continue;
            }
            const int c = k / khw;
            const int t = k - c * khw;
            const int i = t / kw;
            const int j = t - i * kw;
            const T* src = x + (long long)n * sN + (long long)(g * Cg + c) * sC;
            const int ioff = i * dh - pt;
            const int joff = j * dw - pl;
            for (; l < L; l += lstep) {
                const int r = l / Wo;
                const int ow = l - r * Wo;
                const int ih = (ho0 + r) * sh + ioff;
                const int iw = ow * sw + joff;
                T v = (T)0;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) v = src[(long long)ih * sH + (long long)iw * sW];
                dst[l] = v;
            }
        }
    }
}

#define XDEV_IM2COL(NAME, T)                                                                  \
    XDEV_KERNEL(256) NAME(const T* __restrict__ x, T* __restrict__ cols,                      \
                     long long sN, long long sC, long long sH, long long sW,                  \
                     int nb, int G, int Cg, int H, int W, int kh, int kw,                     \
                     int sh, int sw, int dh, int dw, int pt, int pl,                          \
                     int Wo, int ho0, int hb, int Kp)                                         \
    {                                                                                         \
        xdev_im2col<T>(x, cols, sN, sC, sH, sW, nb, G, Cg, H, W, kh, kw, sh, sw, dh, dw,     \
                       pt, pl, Wo, ho0, hb, Kp);                                              \
    }

XDEV_IM2COL(xdev_im2col_f16, xdev_half)
XDEV_IM2COL(xdev_im2col_f32, float)
XDEV_IM2COL(xdev_im2col_f64, double)
XDEV_IM2COL(xdev_im2col_i8, signed char)
XDEV_IM2COL(xdev_im2col_i16, short)
XDEV_IM2COL(xdev_im2col_i32, int)
XDEV_IM2COL(xdev_im2col_i64, long long)
