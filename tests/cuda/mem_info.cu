// cudaMemGetInfo around allocations and frees, large and many small cudaMalloc calls, alignment
// of returned pointers, and an allocation larger than the GPU.
#include "common.h"
#include <vector>
#include <algorithm>

int main() {
  init_device();
  size_t free0, total;
  CHECK(cudaMemGetInfo(&free0, &total));
  printf("device: total %zu MiB\n", total >> 20);
  printf("free <= total: %s\n", free0 <= total ? "yes" : "no");
  const size_t big = (size_t)1 << 30;
  void *p;
  CHECK(cudaMalloc(&p, big));
  size_t free1;
  CHECK(cudaMemGetInfo(&free1, &total));
  // The driver may round up and other processes may allocate meanwhile: allow 64 MiB of slack.
  long long dropped = (long long)free0 - (long long)free1;
  printf("free dropped by about 1 GiB: %s\n",
         dropped >= (long long)big && dropped <= (long long)big + (64ll << 20) ? "yes" : "no");
  printf("time: free dropped by %lld bytes\n", dropped);
  CHECK(cudaFree(p));
  size_t free2;
  CHECK(cudaMemGetInfo(&free2, &total));
  long long back = (long long)free2 - (long long)free1;
  printf("free came back after cudaFree: %s\n", back >= (long long)big - (64ll << 20) ? "yes" : "no");

  // Many small allocations: every pointer 256-byte aligned, all distinct and non-overlapping.
  std::vector<char *> ptrs;
  int misaligned = 0;
  for (int i = 0; i < 1000; i++) {
    char *q;
    CHECK(cudaMalloc(&q, 1 + (i * 37) % 5000));
    misaligned += ((uintptr_t)q % 256) != 0;
    ptrs.push_back(q);
  }
  int overlaps = 0;
  std::vector<std::pair<uintptr_t, uintptr_t>> r;
  for (int i = 0; i < 1000; i++) r.push_back({(uintptr_t)ptrs[i], (uintptr_t)ptrs[i] + 1 + (i * 37) % 5000});
  std::sort(r.begin(), r.end());
  for (int i = 1; i < 1000; i++) overlaps += r[i].first < r[i - 1].second;
  printf("1000 small allocations: misaligned %d, overlapping %d\n", misaligned, overlaps);
  for (int i = 0; i < 1000; i += 2) CHECK(cudaMemset(ptrs[i], i & 0xff, 1));
  unsigned char b;
  CHECK(cudaMemcpy(&b, ptrs[998], 1, cudaMemcpyDeviceToHost));
  printf("byte of allocation 998: %u\n", b);
  for (char *q : ptrs) CHECK(cudaFree(q));
  checkpoint("allocations");

  // More than the GPU has.
  void *huge = nullptr;
  ERROR_CASE("cudaMalloc of twice the total", cudaMalloc(&huge, total * 2));
  printf("pointer after the failed allocation is null: %s\n", huge == nullptr ? "yes" : "no");
  CHECK(cudaGetLastError());
  // The failed allocation left nothing behind.
  size_t free3;
  CHECK(cudaMemGetInfo(&free3, &total));
  printf("free unchanged by the failed allocation: %s\n",
         (long long)free3 >= (long long)free2 - (64ll << 20) ? "yes" : "no");
  return done();
}
