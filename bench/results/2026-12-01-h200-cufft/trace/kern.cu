extern "C" __global__ void alpha(float *x) { x[threadIdx.x] += 1.0f; }
extern "C" __global__ void beta(float *x, int n) { if (threadIdx.x < n) x[threadIdx.x] *= 2.0f; }
__global__ void gamma_cpp(double *y) { y[0] = 3.0; }
template <int N> __global__ void tmpl(int *z) { z[0] = N; }
template __global__ void tmpl<7>(int *);
