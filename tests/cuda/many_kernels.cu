// Many kernels in one module (64 template instantiations plus a few plain kernels), launched in a
// scrambled order, attributes read before the first launch of a kernel, and the same kernels
// launched from two host threads: module loading (lazy by default in CUDA 12+) and function
// lookup at scale.
#include "common.h"
#include <thread>

template <int K>
__global__ void step(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = p[i] * 3 % 1000003 + K;
}

typedef void (*StepFn)(int *, int);

template <int... Ks>
struct Table {
  static constexpr StepFn fns[sizeof...(Ks)] = {step<Ks>...};
};
template <int... Ks>
constexpr StepFn Table<Ks...>::fns[sizeof...(Ks)];

#define K8(b) b + 0, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7
using T64 = Table<K8(0), K8(8), K8(16), K8(24), K8(32), K8(40), K8(48), K8(56)>;

static void host_step(int *p, int n, int k) {
  for (int i = 0; i < n; i++) p[i] = (int)((long long)p[i] * 3 % 1000003) + k;
}

int main() {
  init_device();
  const int n = 4096;
  int *d;
  CHECK(cudaMalloc(&d, n * sizeof(int)));
  int h[n], ref[n];
  for (int i = 0; i < n; i++) h[i] = ref[i] = i;
  CHECK(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice));
  // Attributes of a kernel that has not run yet.
  cudaFuncAttributes a;
  CHECK(cudaFuncGetAttributes(&a, (const void *)T64::fns[63]));
  printf("step<63> maxThreadsPerBlock %d before its first launch\n", a.maxThreadsPerBlock);
  // Scrambled order: k = (i * 37) % 64.
  for (int i = 0; i < 64; i++) {
    int k = (i * 37) % 64;
    T64::fns[k]<<<n / 256, 256>>>(d, n);
    host_step(ref, n, k);
  }
  CHECK_LAUNCH();
  checkpoint("launch");
  CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int i = 0; i < n; i++) bad += h[i] != ref[i];
  printf("result: 64 kernels in scrambled order: mismatches %d, h[1]=%d\n", bad, h[1]);

  // Two host threads launching the same kernels on their own buffers and streams.
  int badt[2] = {0, 0};
  auto worker = [&](int id) {
    CHECK(cudaSetDevice(0));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    int *x;
    CHECK(cudaMalloc(&x, n * sizeof(int)));
    CHECK(cudaMemsetAsync(x, 0, n * sizeof(int), s));
    static thread_local int hx[n], rx[n];
    for (int i = 0; i < n; i++) rx[i] = 0;
    for (int r = 0; r < 3; r++)
      for (int k = 0; k < 64; k++) {
        int kk = id ? 63 - k : k;
        T64::fns[kk]<<<n / 256, 256, 0, s>>>(x, n);
        host_step(rx, n, kk);
      }
    CHECK(cudaMemcpyAsync(hx, x, n * sizeof(int), cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    for (int i = 0; i < n; i++) badt[id] += hx[i] != rx[i];
    CHECK(cudaFree(x));
    CHECK(cudaStreamDestroy(s));
  };
  std::thread t0(worker, 0), t1(worker, 1);
  t0.join();
  t1.join();
  printf("result: two threads: mismatches %d %d\n", badt[0], badt[1]);
  result("many kernels", bad == 0 && badt[0] == 0 && badt[1] == 0);
  CHECK(cudaFree(d));
  return done();
}
