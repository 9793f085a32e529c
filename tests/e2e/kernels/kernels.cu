// Kernels of the end-to-end test programs. Only `extern "C"` entry points, so the PTX names are
// the plain C names. Regenerate the PTX, the fat binaries and the C headers with tests/e2e/gen_kernels.sh after editing.
//
// Parameter layouts (byte offset:size), as the driver and the emulated backend see them:
//   vector_add   a@0:8 b@8:8 c@16:8 n@24:4                                   total 28
//   saxpy        a@0:4 x@8:8 y@16:8 n@24:4                                   total 28
//   fill_u32     p@0:8 value@8:4 n@12:4                                      total 16
//   reduce_pass1 in@0:8 partial@8:8 n@16:4  (dynamic shared: blockDim.x * 8) total 20
//   reduce_pass2 partial@0:8 out@8:8 n@16:4 (dynamic shared: blockDim.x * 8) total 20
//   spin         cycles@0:8 out@8:8                                          total 16
//   mixed_params c@0:1 s@2:2 i@4:4 d@8:8 f@16:4 ll@24:8 pair@32:16 out@48:8   total 56
//   use_globals  out@0:8 n@8:4                                               total 12
//   empty        (none)                                                      total 0
//   unused_params a@0:8 b@8:8 c@16:8 n@24:4 (ignores them)                   total 28

struct Pair {
    int a;
    double b;
};

__device__ unsigned int g_counter;
__device__ float g_table[256];
__constant__ int c_scale;

extern "C" __global__ void vector_add(const float *a, const float *b, float *c, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        c[i] = a[i] + b[i];
}

extern "C" __global__ void saxpy(float a, const float *x, float *y, unsigned int n)
{
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        y[i] = a * x[i] + y[i];
}

extern "C" __global__ void fill_u32(unsigned int *p, unsigned int value, unsigned int n)
{
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        p[i] = value + i;
}

// Block-wise sum of 32-bit values into 64-bit partial sums (grid-stride), in dynamic shared memory.
// blockDim.x must be a power of two.
extern "C" __global__ void reduce_pass1(const unsigned int *in, unsigned long long *partial, unsigned int n)
{
    extern __shared__ unsigned long long sdata[];
    unsigned long long sum = 0;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        sum += in[i];
    sdata[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sdata[threadIdx.x] += sdata[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = sdata[0];
}

// One block sums n partial sums into *out.
extern "C" __global__ void reduce_pass2(const unsigned long long *partial, unsigned long long *out, unsigned int n)
{
    extern __shared__ unsigned long long sdata[];
    unsigned long long sum = 0;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x)
        sum += partial[i];
    sdata[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sdata[threadIdx.x] += sdata[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        *out = sdata[0];
}

// Busy-waits about `cycles` SM clock cycles, then writes 1 to out[blockIdx.x].
extern "C" __global__ void spin(unsigned long long cycles, unsigned int *out)
{
    long long start = clock64();
    while ((unsigned long long)(clock64() - start) < cycles) {
    }
    if (threadIdx.x == 0)
        out[blockIdx.x] = 1;
}

// Writes every argument back, as 64-bit words, so the host can check the argument marshalling.
extern "C" __global__ void mixed_params(char c, short s, int i, double d, float f, long long ll, Pair pair,
                                        unsigned long long *out)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    out[0] = (unsigned long long)(long long)c;
    out[1] = (unsigned long long)(long long)s;
    out[2] = (unsigned long long)(long long)i;
    out[3] = (unsigned long long)__double_as_longlong(d);
    out[4] = (unsigned long long)(unsigned int)__float_as_int(f);
    out[5] = (unsigned long long)ll;
    out[6] = (unsigned long long)(long long)pair.a;
    out[7] = (unsigned long long)__double_as_longlong(pair.b);
}

// out[i] = g_table[i % 256] * c_scale, and counts its threads in g_counter.
extern "C" __global__ void use_globals(float *out, unsigned int n)
{
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = g_table[i % 256] * (float)c_scale;
        atomicAdd(&g_counter, 1u);
    }
}

extern "C" __global__ void empty(void)
{
}

// vector_add's parameter layout, but ignores its parameters: the error cases launch it with packed
// buffers of the wrong size, where the driver may leave parameters uninitialized.
extern "C" __global__ void unused_params(const float *a, const float *b, float *c, unsigned int n)
{
}
