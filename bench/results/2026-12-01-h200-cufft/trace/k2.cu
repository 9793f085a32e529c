extern "C" __global__ void one(float *x) { x[0] = 1; }
extern "C" __global__ void two(float *x) { x[0] = 2; }
