// Device-side heap: cudaLimitMallocHeapSize, malloc/free inside kernels (per-thread lists built on
// the device heap), memory allocated by one kernel and used by the next, and cudaDeviceReset in the
// middle of a program (the runtime re-creates the primary context; the heap limit returns to its
// default, old pointers are gone, new work runs).
#include "common.h"

struct Node {
  int value;
  Node *next;
};

__device__ Node *g_heads[256];

__global__ void build_lists(int len) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  Node *head = nullptr;
  for (int i = 0; i < len; i++) {
    Node *n = (Node *)malloc(sizeof(Node));
    if (!n) break;
    n->value = t * 100 + i;
    n->next = head;
    head = n;
  }
  g_heads[t] = head;
}

__global__ void sum_and_free(long long *sums, int *counts) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  long long s = 0;
  int c = 0;
  Node *n = g_heads[t];
  while (n) {
    Node *next = n->next;
    s += n->value;
    c++;
    free(n);
    n = next;
  }
  g_heads[t] = nullptr;
  sums[t] = s;
  counts[t] = c;
}

__global__ void too_big(int *ok) {
  void *p = malloc((size_t)1 << 40);  // far beyond the heap: returns NULL
  *ok = p == nullptr ? 1 : 0;
  if (p) free(p);
}

int main() {
  init_device();
  size_t heap = 0;
  CHECK(cudaDeviceGetLimit(&heap, cudaLimitMallocHeapSize));
  printf("default heap %zu\n", heap);
  CHECK(cudaDeviceSetLimit(cudaLimitMallocHeapSize, 64u << 20));
  CHECK(cudaDeviceGetLimit(&heap, cudaLimitMallocHeapSize));
  printf("heap now %zu\n", heap);
  long long *sums;
  int *counts, *ok;
  CHECK(cudaMalloc(&sums, 256 * sizeof(long long)));
  CHECK(cudaMalloc(&counts, 256 * sizeof(int)));
  CHECK(cudaMalloc(&ok, sizeof(int)));
  build_lists<<<2, 128>>>(50);
  CHECK_LAUNCH();
  sum_and_free<<<2, 128>>>(sums, counts);
  CHECK_LAUNCH();
  checkpoint("launch");
  long long hs[256];
  int hc[256];
  CHECK(cudaMemcpy(hs, sums, sizeof hs, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(hc, counts, sizeof hc, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int t = 0; t < 256; t++) bad += hc[t] != 50 || hs[t] != 50LL * t * 100 + 49 * 50 / 2;
  printf("result: lists of 50 nodes: wrong %d, sums[0]=%lld sums[255]=%lld\n", bad, hs[0], hs[255]);
  too_big<<<1, 1>>>(ok);
  int hok = 0;
  CHECK(cudaMemcpy(&hok, ok, sizeof hok, cudaMemcpyDeviceToHost));
  printf("result: oversized device malloc returned NULL: %s\n", hok ? "yes" : "no");
  result("device malloc", bad == 0 && hok == 1);
  ERROR_CASE("set heap limit after kernels ran", cudaDeviceSetLimit(cudaLimitMallocHeapSize, 128u << 20));

  // Reset in the middle: everything of the old context is gone.
  CHECK(cudaDeviceReset());
  checkpoint("reset");
  CHECK(cudaDeviceGetLimit(&heap, cudaLimitMallocHeapSize));
  printf("heap after reset %zu\n", heap);
  CHECK(cudaMalloc(&sums, 256 * sizeof(long long)));
  CHECK(cudaMalloc(&counts, 256 * sizeof(int)));
  build_lists<<<1, 256>>>(3);
  sum_and_free<<<1, 256>>>(sums, counts);
  CHECK_LAUNCH();
  CHECK(cudaMemcpy(hc, counts, sizeof hc, cudaMemcpyDeviceToHost));
  printf("result: after reset, lists of %d and %d nodes\n", hc[0], hc[255]);
  CHECK(cudaFree(sums));
  CHECK(cudaFree(counts));
  return done();
}
