// Shared by every xdev OpenCL kernel (prepended to each source file).
// Build options choose the types:
//   -DREAL_BITS=32|64   compute type (float16 data computes in float)
//   -DIN_BITS=16|32|64  storage type of the inputs, -DOUT_BITS=... of the output
// float16 is storage only: vload_half/vstore_half need no cl_khr_fp16.
#if REAL_BITS == 64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#define REAL_T double
#else
#define REAL_T float
#endif
typedef REAL_T real;

#if IN_BITS == 16
typedef half in_t;
#define LOAD_IN(p, i) ((real)vload_half((i), (p)))
#elif IN_BITS == 64
typedef double in_t;
#define LOAD_IN(p, i) ((real)(p)[(i)])
#else
typedef float in_t;
#define LOAD_IN(p, i) ((real)(p)[(i)])
#endif

#if OUT_BITS == 16
typedef half out_t;
#define STORE_OUT(v, p, i) vstore_half_rte((float)(v), (i), (p))
#elif OUT_BITS == 64
typedef double out_t;
#define STORE_OUT(v, p, i) ((p)[(i)] = (double)(v))
#else
typedef float out_t;
#define STORE_OUT(v, p, i) ((p)[(i)] = (float)(v))
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
