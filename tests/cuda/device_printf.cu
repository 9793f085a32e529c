// Device-side printf: formats, several launches, a larger buffer (cudaLimitPrintfFifoSize, set before the
// first launch; resizing it afterwards is refused), and output order with the host's own lines (each
// launch is synchronised before the host prints).
#include "common.h"

__global__ void hello(int launch) {
  if (threadIdx.x == 0 && blockIdx.x == 0) printf("gpu: launch %d says hello\n", launch);
}
__global__ void formats(int i, unsigned u, long long ll, float f, double d, char c) {
  printf("int %d neg %d unsigned %u hex %x long long %lld\n", i, -i, u, u, ll);
  printf("float %.3f double %.6f exp %.2e char %c string %s\n", f, d, d, c, "from the GPU");
  printf("padded [%5d] [%-5d] [%05d]\n", i, i, i);
}
__global__ void per_thread() {
  // Every thread prints the same line (so their order does not matter).
  printf("block %d of %d, blockDim %d\n", blockIdx.x, gridDim.x, blockDim.x);
}
__global__ void many_lines(int n) {
  for (int k = 0; k < n; k++) printf("line %04d\n", k);
}

int main() {
  init_device();
  size_t fifo = 0;
  CHECK(cudaDeviceGetLimit(&fifo, cudaLimitPrintfFifoSize));
  printf("printf fifo default %zu\n", fifo);
  // The FIFO can be resized only before the first launch of a kernel that uses printf.
  CHECK(cudaDeviceSetLimit(cudaLimitPrintfFifoSize, 16u << 20));
  CHECK(cudaDeviceGetLimit(&fifo, cudaLimitPrintfFifoSize));
  printf("printf fifo now %zu\n", fifo);
  printf("host: before the first launch\n");
  hello<<<4, 32>>>(1);
  CHECK_LAUNCH();
  CHECK(cudaDeviceSynchronize());
  checkpoint("launch");
  printf("host: between launches\n");
  hello<<<1, 1>>>(2);
  CHECK(cudaDeviceSynchronize());
  formats<<<1, 1>>>(42, 3000000000u, -1234567890123ll, 3.14159f, 2.718281828, 'G');
  CHECK(cudaDeviceSynchronize());
  for (int b = 0; b < 3; b++) {
    per_thread<<<dim3(1), dim3(8 * (b + 1)), 0>>>();
    CHECK(cudaDeviceSynchronize());
  }
  // Too late now (NVIDIA's driver refuses it once a printf kernel has run); then 500 lines from one
  // thread into the bigger FIFO.
  ERROR_CASE("printf fifo resized after a printf launch", cudaDeviceSetLimit(cudaLimitPrintfFifoSize, 32u << 20));
  many_lines<<<1, 1>>>(500);
  CHECK(cudaDeviceSynchronize());
  // Printed on a stream, flushed by a stream synchronize.
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  hello<<<1, 1, 0, s>>>(3);
  CHECK(cudaStreamSynchronize(s));
  printf("host: after the stream synchronize\n");
  CHECK(cudaStreamDestroy(s));
  return done();
}
