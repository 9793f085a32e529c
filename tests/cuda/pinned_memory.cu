// Pinned host memory: cudaMallocHost, cudaHostAlloc with its flags, cudaHostGetFlags,
// cudaPointerGetAttributes, async copies from and to pinned buffers, cudaFreeHost.
#include "common.h"

__global__ void negate(int *p, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = -p[i];
}

static const char *mem_type(cudaMemoryType t) {
  switch (t) {
    case cudaMemoryTypeUnregistered: return "unregistered";
    case cudaMemoryTypeHost: return "host";
    case cudaMemoryTypeDevice: return "device";
    case cudaMemoryTypeManaged: return "managed";
  }
  return "?";
}

static void describe(const char *label, const void *p) {
  cudaPointerAttributes a = {};
  cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess) {
    printf("attributes %s: %s\n", label, vt_name(e));
    (void)cudaGetLastError();
    return;
  }
  if (a.type == cudaMemoryTypeUnregistered) {
    printf("attributes %s: type unregistered\n", label);
    return;
  }
  printf("attributes %s: type %s device %d hostPointer %s devicePointer %s\n", label, mem_type(a.type),
         a.device, a.hostPointer == p ? "same" : (a.hostPointer ? "other" : "null"),
         a.devicePointer == p ? "same" : (a.devicePointer ? "other" : "null"));
}

int main() {
  init_device();
  const int n = 1 << 20;
  const size_t bytes = n * sizeof(int);
  int *a, *b, *c, *wc, *d;
  CHECK(cudaMallocHost(&a, bytes));
  CHECK(cudaHostAlloc(&b, bytes, cudaHostAllocDefault));
  CHECK(cudaHostAlloc(&c, bytes, cudaHostAllocPortable));
  CHECK(cudaHostAlloc(&wc, bytes, cudaHostAllocWriteCombined));
  CHECK(cudaMalloc(&d, bytes));
  unsigned flags = 0;
  CHECK(cudaHostGetFlags(&flags, a));
  printf("flags cudaMallocHost: %#x\n", flags);
  CHECK(cudaHostGetFlags(&flags, c));
  printf("flags portable: %#x\n", flags);
  CHECK(cudaHostGetFlags(&flags, wc));
  printf("flags write-combined: %#x\n", flags);
  flags = 0;
  ERROR_CASE("cudaHostGetFlags inside an allocation", cudaHostGetFlags(&flags, (char *)b + 4096));
  printf("flags inside an allocation: %#x\n", flags);
  int stack = 0;
  ERROR_CASE("cudaHostGetFlags on pageable memory", cudaHostGetFlags(&flags, &stack));
  describe("pinned", a);
  describe("device", d);
  describe("pageable", &stack);

  for (int i = 0; i < n; i++) a[i] = i * 3;
  for (int i = 0; i < n; i++) wc[i] = i;  // write-combined: write only from the host
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  CHECK(cudaMemcpyAsync(d, a, bytes, cudaMemcpyHostToDevice, s));
  negate<<<n / 256, 256, 0, s>>>(d, n);
  CHECK_LAUNCH();
  CHECK(cudaMemcpyAsync(b, d, bytes, cudaMemcpyDeviceToHost, s));
  CHECK(cudaMemcpyAsync(d, wc, bytes, cudaMemcpyHostToDevice, s));
  negate<<<n / 256, 256, 0, s>>>(d, n);
  CHECK(cudaMemcpyAsync(c, d, bytes, cudaMemcpyDeviceToHost, s));
  checkpoint("launch");
  CHECK(cudaStreamSynchronize(s));
  int bad_b = 0, bad_c = 0;
  for (int i = 0; i < n; i++) {
    bad_b += b[i] != -i * 3;
    bad_c += c[i] != -i;
  }
  printf("result: mismatches %d %d\n", bad_b, bad_c);
  result("pinned round trips", bad_b == 0 && bad_c == 0);

  // Timing of pinned vs pageable copies (informational).
  int *pageable = (int *)malloc(bytes);
  memset(pageable, 1, bytes);
  cudaEvent_t e0, e1, e2;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaEventCreate(&e2));
  CHECK(cudaEventRecord(e0, s));
  CHECK(cudaMemcpyAsync(d, a, bytes, cudaMemcpyHostToDevice, s));
  CHECK(cudaEventRecord(e1, s));
  CHECK(cudaMemcpyAsync(d, pageable, bytes, cudaMemcpyHostToDevice, s));
  CHECK(cudaEventRecord(e2, s));
  CHECK(cudaEventSynchronize(e2));
  printf("time: 4 MiB pinned %.3f ms, pageable %.3f ms\n", elapsed_ms(e0, e1), elapsed_ms(e1, e2));
  CHECK(cudaMemcpy(b, d, bytes, cudaMemcpyDeviceToHost));
  result("pageable copy", b[12345] == 0x01010101);

  ERROR_CASE("cudaFreeHost of a device pointer", cudaFreeHost(d));
  CHECK(cudaGetLastError());
  CHECK(cudaFreeHost(a));
  CHECK(cudaFreeHost(b));
  CHECK(cudaFreeHost(c));
  CHECK(cudaFreeHost(wc));
  CHECK(cudaFree(d));
  CHECK(cudaStreamDestroy(s));
  for (cudaEvent_t e : {e0, e1, e2}) CHECK(cudaEventDestroy(e));
  free(pageable);
  return done();
}
