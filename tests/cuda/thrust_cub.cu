// Thrust and CUB (CCCL), as many applications use them: device_vector, transform, sort, reduce,
// inclusive_scan, sort_by_key, unique, count_if on the device; cub::DeviceRadixSort and
// cub::DeviceReduce with their two-call temporary-storage protocol on a stream.
#include "common.h"
#include <thrust/count.h>
#include <thrust/device_vector.h>
#include <thrust/functional.h>
#include <thrust/host_vector.h>
#include <thrust/reduce.h>
#include <thrust/scan.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/transform.h>
#include <thrust/unique.h>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_reduce.cuh>
#include <algorithm>
#include <numeric>
#include <vector>
#include <exception>

struct Affine {
  __host__ __device__ int operator()(int x) const { return (x * 7 + 3) % 10007; }
};
struct IsEven {
  __host__ __device__ bool operator()(int x) const { return (x & 1) == 0; }
};

static int run();

int main() {
  // Thrust reports CUDA errors as exceptions: print them like CHECK does.
  try {
    return run();
  } catch (const std::exception &e) {
    printf("FAIL thrust exception: %s\n", e.what());
    fflush(stdout);
    _Exit(1);
  }
}

static int run() {
  init_device();
  const int n = 1 << 20;
  std::vector<int> h(n);
  uint32_t s = 99;
  for (int &x : h) x = (int)(vt_rand(s) % 100000);
  thrust::device_vector<int> d(h.begin(), h.end());
  checkpoint("copies");
  thrust::device_vector<int> t(n);
  thrust::transform(d.begin(), d.end(), t.begin(), Affine());
  long long sum = thrust::reduce(t.begin(), t.end(), 0LL, thrust::plus<long long>());
  int evens = (int)thrust::count_if(t.begin(), t.end(), IsEven());
  thrust::sort(t.begin(), t.end());
  checkpoint("launch");
  thrust::host_vector<int> ht = t;
  std::vector<int> ref(n);
  std::transform(h.begin(), h.end(), ref.begin(), [](int x) { return (x * 7 + 3) % 10007; });
  long long want = std::accumulate(ref.begin(), ref.end(), 0LL);
  int want_even = (int)std::count_if(ref.begin(), ref.end(), [](int x) { return (x & 1) == 0; });
  std::sort(ref.begin(), ref.end());
  bool sorted_ok = std::equal(ref.begin(), ref.end(), ht.begin());
  printf("result: thrust sum %lld (want %lld), evens %d (want %d), sorted %s\n", sum, want, evens, want_even,
         sorted_ok ? "matches" : "differs");

  // Scan and unique.
  thrust::device_vector<int> ones(1000, 1), scan(1000);
  thrust::inclusive_scan(ones.begin(), ones.end(), scan.begin());
  int last = scan.back();
  auto end = thrust::unique(t.begin(), t.end());
  int distinct = (int)(end - t.begin());
  int want_distinct = (int)(std::unique(ref.begin(), ref.end()) - ref.begin());
  printf("result: scan last %d, distinct %d (want %d)\n", last, distinct, want_distinct);

  // sort_by_key: keys descending, values follow.
  thrust::device_vector<int> keys(d.begin(), d.begin() + 1000), vals(1000);
  thrust::sequence(vals.begin(), vals.end());
  thrust::sort_by_key(keys.begin(), keys.end(), vals.begin(), thrust::greater<int>());
  int k0 = keys[0], v0 = vals[0];
  int want_k0 = *std::max_element(h.begin(), h.begin() + 1000);
  printf("result: sort_by_key first key %d (want %d), its index %d\n", k0, want_k0, v0);

  // CUB on a stream with explicit temporary storage.
  cudaStream_t st;
  CHECK(cudaStreamCreate(&st));
  unsigned *kin, *kout;
  CHECK(cudaMalloc(&kin, n * sizeof(unsigned)));
  CHECK(cudaMalloc(&kout, n * sizeof(unsigned)));
  CHECK(cudaMemcpyAsync(kin, h.data(), n * sizeof(unsigned), cudaMemcpyHostToDevice, st));
  size_t temp_bytes = 0;
  CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, kin, kout, n, 0, 32, st));
  void *temp;
  CHECK(cudaMalloc(&temp, temp_bytes));
  CHECK(cub::DeviceRadixSort::SortKeys(temp, temp_bytes, kin, kout, n, 0, 32, st));
  unsigned *msum;
  CHECK(cudaMalloc(&msum, sizeof(unsigned)));
  size_t temp2 = 0;
  CHECK(cub::DeviceReduce::Max(nullptr, temp2, kin, msum, n, st));
  void *t2;
  CHECK(cudaMalloc(&t2, temp2));
  CHECK(cub::DeviceReduce::Max(t2, temp2, kin, msum, n, st));
  std::vector<unsigned> sorted(n);
  unsigned mx = 0;
  CHECK(cudaMemcpyAsync(sorted.data(), kout, n * sizeof(unsigned), cudaMemcpyDeviceToHost, st));
  CHECK(cudaMemcpyAsync(&mx, msum, sizeof mx, cudaMemcpyDeviceToHost, st));
  CHECK(cudaStreamSynchronize(st));
  std::vector<unsigned> hs(h.begin(), h.end());
  std::sort(hs.begin(), hs.end());
  printf("result: cub radix sort %s, max %u (want %u)\n", hs == sorted ? "matches" : "differs", mx, hs.back());
  result("thrust and cub", sum == want && evens == want_even && sorted_ok &&
                               last == 1000 && distinct == want_distinct && k0 == want_k0 && hs == sorted &&
                               mx == hs.back());
  CHECK(cudaFree(kin));
  CHECK(cudaFree(kout));
  CHECK(cudaFree(temp));
  CHECK(cudaFree(t2));
  CHECK(cudaFree(msum));
  CHECK(cudaStreamDestroy(st));
  return done();
}
