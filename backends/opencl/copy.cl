// Strided copy with type conversion: dst (contiguous) = convert(src viewed through
// up to 4 dims of sizes n0..n3 and element strides s0..s3). Also makes views contiguous.
__kernel void copy_cast(__global out_t* restrict dst, const long dst_off,
                        __global const in_t* restrict src, const long src_off,
                        const long n1, const long n2, const long n3,
                        const long s0, const long s1, const long s2, const long s3,
                        const long total)
{
    const long i = get_global_id(0);
    if (i >= total) return;
    long r = i;
    const long i3 = r % n3; r /= n3;
    const long i2 = r % n2; r /= n2;
    const long i1 = r % n1; r /= n1;
    const long i0 = r;
    const long s = src_off + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3;
    STORE_OUT(LOAD_IN(src, s), dst, dst_off + i);
}

// dst[i] = value for a contiguous output (zeros of an empty reduction, and bias fills).
__kernel void fill(__global out_t* restrict dst, const real value, const long total)
{
    const long i = get_global_id(0);
    if (i < total) STORE_OUT(value, dst, i);
}
