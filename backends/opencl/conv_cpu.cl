// Implicit-GEMM convolution for CPU devices: the GEMM micro-kernel of gemm_cpu.cl with
// the B operand read from the padded input through im2col addressing (no column buffer).
//   rows (M): output channels of one group, from weights packed as Wk[g][Ot][K][MR]
//   cols (N): output pixels, NR = VW*NV per work-item
//   K:        (c, i, j) over C/groups x kH x kW
// With stride 1 (-DS1=1) the pixels of a tile are taken on the padded-width grid
// p = ho*Wp + wo, so every tap reads NR consecutive floats: one vector load each.
// The wo >= Wo lanes of that grid are computed and dropped (kW-1 of every Wp).
// Otherwise each lane gathers its own input element.
// (realv, VLOAD, VSTORE, NR, MICRO_ZERO and MICRO_STEP come from common.cl.)

__kernel void conv_packed(__global out_t* restrict Y,
                          __global const real* restrict Xp,
                          __global const real* restrict Wk,
                          __global const in_t* restrict bias, const long b_off, const long b_str,
                          const int C, const int Cg, const int O, const int Og, const int G,
                          const int Hp, const int Wp, const int kh, const int kw,
                          const int dh, const int dw, const int sh, const int sw,
                          const int Ho, const int Wo, const int c0, const int cc, const int add)
{
    // Output-channel tiles vary fastest, so the work-items sharing a pixel tile run
    // back to back and find its input in cache.
    const int ot = get_global_id(0);
    const int pt = get_global_id(1);
    const int ng = get_global_id(2);
    const int n = ng / G, g = ng - (ng / G) * G;
    const int K = Cg * kh * kw;
    const int Ot = (Og + MR - 1) / MR;
    const long HW = (long)Hp * Wp;
    // Input channels [c0, c0 + cc) of the group; add: Y += this block's sum, the bias left to
    // the first block (the host asks for blocks only where Y has the compute type).
    __global const real* a = Wk + (((size_t)g * Ot + ot) * K + (size_t)c0 * kh * kw) * MR;
    __global const real* x = Xp + ((size_t)n * C + (size_t)g * Cg + c0) * HW;
    const int p0 = pt * NR;

#if !S1
    int lane_off[NR];
    for (int l = 0; l < NR; ++l) {
        const int p = min(p0 + l, Ho * Wo - 1);
        const int ho = p / Wo, wo = p - (p / Wo) * Wo;
        lane_off[l] = ho * sh * Wp + wo * sw;
    }
#endif

    realv acc[MR][NV];
    MICRO_ZERO(acc);

#if K3
    // 3 x 3 taps, stride and dilation 1: the taps unrolled, their offsets ki*Wp + kj.
    for (int c = 0; c < cc; ++c) {
        __global const real* xc = x + c * HW + p0;
        #pragma unroll
        for (int ki = 0; ki < 3; ++ki) {
            #pragma unroll
            for (int kj = 0; kj < 3; ++kj) {
                realv bv[NV];
                #pragma unroll
                for (int v = 0; v < NV; ++v) bv[v] = VLOAD(0, xc + ki * Wp + kj + v * VW);
                MICRO_STEP(acc, a, bv);
                a += MR;
            }
        }
    }
#else
    for (int c = 0; c < cc; ++c) {
        for (int ki = 0; ki < kh; ++ki) {
            for (int kj = 0; kj < kw; ++kj) {
                const long off = c * HW + (long)ki * dh * Wp + kj * dw;
                realv bv[NV];
#if S1
                #pragma unroll
                for (int v = 0; v < NV; ++v) bv[v] = VLOAD(0, x + off + p0 + v * VW);
#else
                #pragma unroll
                for (int v = 0; v < NV; ++v) {
                    real t[VW];
                    for (int l = 0; l < VW; ++l) t[l] = x[off + lane_off[v * VW + l]];
                    bv[v] = CAT(vload, VW)(0, t);
                }
#endif
                MICRO_STEP(acc, a, bv);
                a += MR;
            }
        }
    }
#endif

    // Where each lane's output goes inside one output plane (-1: dropped).
    int yoff[NR];
    for (int l = 0; l < NR; ++l) {
#if S1
        const int p = p0 + l, ho = p / Wp, wo = p - (p / Wp) * Wp;
        yoff[l] = (ho < Ho && wo < Wo) ? ho * Wo + wo : -1;
#else
        yoff[l] = (p0 + l < Ho * Wo) ? p0 + l : -1;
#endif
    }
    // A tile whose lanes all land in one output row, in order, is stored as vectors.
    const bool run = yoff[0] >= 0 && yoff[NR - 1] == yoff[0] + NR - 1;
    const int o0 = ot * MR;
    #pragma unroll
    for (int i = 0; i < MR; ++i) {
        const int o = o0 + i;
        if (o < Og) {
            const int oc = g * Og + o;
            __global out_t* y = Y + ((size_t)n * O + oc) * Ho * Wo;
#if OUT_BITS == REAL_BITS
            if (add) {  // a later block: its sum only (the first block stored the bias)
                real t[NR];
                #pragma unroll
                for (int v = 0; v < NV; ++v) CAT(vstore, VW)(acc[i][v], v, t);
                for (int l = 0; l < NR; ++l)
                    if (yoff[l] >= 0) y[yoff[l]] += t[l];
                continue;
            }
#endif
            const real bb = bias ? LOAD_IN(bias, b_off + oc * b_str) : (real)0;
            if (run) {
                #pragma unroll
                for (int v = 0; v < NV; ++v) VSTORE(acc[i][v] + bb, 0, y + yoff[0] + v * VW);
            } else {
                real t[NR];
                #pragma unroll
                for (int v = 0; v < NV; ++v) CAT(vstore, VW)(acc[i][v], v, t);
                for (int l = 0; l < NR; ++l)
                    if (yoff[l] >= 0) STORE_OUT(t[l] + bb, y, yoff[l]);
            }
        }
    }
}
