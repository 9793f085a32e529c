// Unified (managed) memory: cudaMallocManaged, host writes, kernel updates, host reads after a
// synchronize; cudaMemPrefetchAsync to the device and back to the host; cudaMemAdvise;
// cudaPointerGetAttributes; a __managed__ global.
#include "common.h"

__managed__ int m_counter = 11;

__global__ void inc_all(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] += i;
  if (i == 0) m_counter += 1;
}

int main() {
  init_device();
  int managed = 0, concurrent = 0;
  CHECK(cudaDeviceGetAttribute(&managed, cudaDevAttrManagedMemory, 0));
  CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, 0));
  printf("managed memory %d, concurrent managed access %d\n", managed, concurrent);
  const int n = 1 << 20;
  int *m;
  CHECK(cudaMallocManaged(&m, n * sizeof(int)));
  cudaPointerAttributes a;
  CHECK(cudaPointerGetAttributes(&a, m));
  printf("attributes: type %s\n", a.type == cudaMemoryTypeManaged ? "managed" : "other");
  for (int i = 0; i < n; i++) m[i] = 5;
  printf("initial __managed__ counter %d\n", m_counter);
  inc_all<<<n / 256, 256>>>(m, n);
  CHECK_LAUNCH();
  checkpoint("launch");
  CHECK(cudaDeviceSynchronize());
  int bad = 0;
  for (int i = 0; i < n; i++) bad += m[i] != 5 + i;
  printf("result: after the kernel: mismatches %d, counter %d\n", bad, m_counter);

  // Prefetch to the device, run, prefetch back to the host.
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  cudaMemLocation dev = {};
  dev.type = cudaMemLocationTypeDevice;
  dev.id = 0;
  cudaMemLocation host = {};
  host.type = cudaMemLocationTypeHost;
  host.id = 0;
  CHECK(cudaMemAdvise(m, n * sizeof(int), cudaMemAdviseSetPreferredLocation, dev));
  CHECK(cudaMemPrefetchAsync(m, n * sizeof(int), dev, 0, s));
  inc_all<<<n / 256, 256, 0, s>>>(m, n);
  CHECK(cudaMemPrefetchAsync(m, n * sizeof(int), host, 0, s));
  CHECK(cudaStreamSynchronize(s));
  int bad2 = 0;
  for (int i = 0; i < n; i++) bad2 += m[i] != 5 + 2 * i;
  printf("result: after prefetch round trip: mismatches %d, counter %d\n", bad2, m_counter);
  result("managed memory", bad == 0 && bad2 == 0 && m_counter == 13);

  // Copies to and from managed memory.
  int *d;
  CHECK(cudaMalloc(&d, n * sizeof(int)));
  CHECK(cudaMemcpy(d, m, n * sizeof(int), cudaMemcpyDefault));
  CHECK(cudaMemset(m, 0, n * sizeof(int)));
  CHECK(cudaMemcpy(m, d, n * sizeof(int), cudaMemcpyDefault));
  printf("result: m[12345] after copies %d\n", m[12345]);
  int *small;
  CHECK(cudaMallocManaged(&small, 64, cudaMemAttachHost));
  small[0] = 77;
  CHECK(cudaStreamAttachMemAsync(s, small, 0, cudaMemAttachSingle));
  CHECK(cudaStreamSynchronize(s));
  printf("attach-host allocation: %d\n", small[0]);
  CHECK(cudaFree(small));
  CHECK(cudaFree(d));
  CHECK(cudaFree(m));
  CHECK(cudaStreamDestroy(s));
  return done();
}
