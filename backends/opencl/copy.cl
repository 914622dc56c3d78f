// Strided copy with type conversion (any two dtypes: common.cl): dst (contiguous) = convert(src viewed through
// up to 4 dims of sizes n0..n3 and element strides s0..s3). Also makes views contiguous.
__kernel void copy_cast(__global out_t* restrict dst, const long dst_off,
                        __global const in_t* restrict src, const long src_off,
                        const long n1, const long n2, const long n3,
                        const long s0, const long s1, const long s2, const long s3,
                        const long total)
{
    const long i = get_global_id(0);
    if (i >= total) return;
    STORE_OUT(LOAD_IN(src, src_off + view4_offset(i, n1, n2, n3, s0, s1, s2, s3)), dst, dst_off + i);
}

// dst[i] = value for a contiguous output (zeros of an empty reduction, and bias fills).
__kernel void fill(__global out_t* restrict dst, const real value, const long total)
{
    const long i = get_global_id(0);
    if (i < total) STORE_OUT(value, dst, i);
}
