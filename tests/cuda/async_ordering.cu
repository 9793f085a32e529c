// Stream ordering of asynchronous work: a chain of H2D copy, kernels and D2H copy on one stream,
// reusing the same pinned and pageable host buffers between steps (each copy must see the state
// the previous one left); many small async copies; cudaStreamQuery; legacy default stream
// ordering with a blocking stream; cudaStreamSynchronize vs cudaDeviceSynchronize.
#include "common.h"
#include <vector>

__global__ void add_k(int *p, int n, int k) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += k;
}
__global__ void mul_k(int *p, int n, int k) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] *= k;
}

int main() {
  init_device();
  const int n = 1 << 18;
  int *d, *pin;
  CHECK(cudaMalloc(&d, n * sizeof(int)));
  CHECK(cudaMallocHost(&pin, n * sizeof(int)));
  std::vector<int> pageable(n), out(n);
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  for (int i = 0; i < n; i++) pin[i] = i;
  // d = ((i + 1) * 2 + 3), copied out to `out` through `pin`, while pin is refilled in between.
  CHECK(cudaMemcpyAsync(d, pin, n * sizeof(int), cudaMemcpyHostToDevice, s));
  add_k<<<n / 256, 256, 0, s>>>(d, n, 1);
  mul_k<<<n / 256, 256, 0, s>>>(d, n, 2);
  add_k<<<n / 256, 256, 0, s>>>(d, n, 3);
  CHECK_LAUNCH();
  CHECK(cudaMemcpyAsync(pin, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  checkpoint("launch");
  CHECK(cudaStreamSynchronize(s));
  int bad = 0;
  for (int i = 0; i < n; i++) bad += pin[i] != (i + 1) * 2 + 3;
  printf("result: chain mismatches %d\n", bad);

  // Pageable source reused immediately: cudaMemcpyAsync from pageable memory has copied the data
  // (staged) by the time it returns, so overwriting the buffer right after is safe.
  for (int step = 0; step < 4; step++) {
    for (int i = 0; i < n; i++) pageable[i] = step * 1000 + (i & 7);
    CHECK(cudaMemcpyAsync(d + step * 16, pageable.data(), 16 * sizeof(int), cudaMemcpyHostToDevice, s));
  }
  for (int i = 0; i < n; i++) pageable[i] = -1;
  CHECK(cudaMemcpyAsync(out.data(), d, 64 * sizeof(int), cudaMemcpyDeviceToHost, s));
  CHECK(cudaStreamSynchronize(s));
  printf("pageable staging: out[0]=%d out[17]=%d out[35]=%d out[63]=%d\n", out[0], out[17], out[35], out[63]);

  // 500 small async copies host->device with increasing values into the same slot, then the
  // last value wins; and 500 device->host copies of different slots into different places.
  int *slots;
  CHECK(cudaMalloc(&slots, 512 * sizeof(int)));
  for (int i = 0; i < 512; i++) pin[i] = i * i;
  CHECK(cudaMemcpyAsync(slots, pin, 512 * sizeof(int), cudaMemcpyHostToDevice, s));
  for (int i = 0; i < 500; i++) CHECK(cudaMemcpyAsync(slots + 7, pin + i, sizeof(int), cudaMemcpyHostToDevice, s));
  for (int i = 0; i < 500; i++) CHECK(cudaMemcpyAsync(pin + 1000 + i, slots + i, sizeof(int), cudaMemcpyDeviceToHost, s));
  CHECK(cudaStreamSynchronize(s));
  int bad2 = 0;
  for (int i = 0; i < 500; i++) bad2 += pin[1000 + i] != (i == 7 ? 499 * 499 : i * i);
  printf("small copies: mismatches %d, slot 7 = %d\n", bad2, pin[1007]);

  // cudaStreamQuery: busy while a kernel spins, then done.
  vt_spin_kernel<<<1, 1, 0, s>>>(100ull * 1000 * 1000, nullptr);
  printf("result: query while spinning: %s\n", vt_name(cudaStreamQuery(s)));
  CHECK(cudaStreamSynchronize(s));
  ERROR_CASE("query after synchronize", cudaStreamQuery(s));

  // Legacy default stream: work on a blocking stream waits for earlier default-stream work, and
  // default-stream work waits for earlier work on the blocking stream.
  CHECK(cudaMemset(d, 0, n * sizeof(int)));
  vt_spin_kernel<<<1, 1>>>(20ull * 1000 * 1000, nullptr);
  add_k<<<n / 256, 256>>>(d, n, 5);       // default stream
  mul_k<<<n / 256, 256, 0, s>>>(d, n, 3);  // blocking stream: after the add
  add_k<<<n / 256, 256>>>(d, n, 1);       // default stream: after the mul
  CHECK(cudaMemcpyAsync(out.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
  CHECK(cudaDeviceSynchronize());
  int bad3 = 0;
  for (int i = 0; i < n; i++) bad3 += out[i] != 16;
  printf("result: legacy stream ordering mismatches %d (out[0]=%d)\n", bad3, out[0]);
  result("async ordering", bad == 0 && bad2 == 0 && bad3 == 0);
  CHECK(cudaFree(slots));
  CHECK(cudaFree(d));
  CHECK(cudaFreeHost(pin));
  CHECK(cudaStreamDestroy(s));
  return done();
}
