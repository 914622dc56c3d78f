// Calibration of a device's multiply-add rate: CHAINS independent vector FMA chains per
// work-item (enough to hide FMA latency on CPUs and GPUs), nothing else in the loop.
#define CHAINS 12

__kernel void fma_peak(__global real* restrict out, const int iters, const real m, const real c)
{
    realv a[CHAINS];
    #pragma unroll
    for (int j = 0; j < CHAINS; ++j) a[j] = (realv)((real)get_global_id(0) * (real)1e-6 + (real)j);
    for (int i = 0; i < iters; ++i) {
        #pragma unroll
        for (int j = 0; j < CHAINS; ++j) a[j] = MADD(a[j], (realv)(m), (realv)(c));
    }
    realv s = a[0];
    #pragma unroll
    for (int j = 1; j < CHAINS; ++j) s += a[j];
    real t[VW];
    CAT(vstore, VW)(s, 0, t);
    real r = 0;
    for (int l = 0; l < VW; ++l) r += t[l];
    out[get_global_id(0)] = r;
}
