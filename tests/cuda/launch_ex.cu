// cudaLaunchKernelEx with launch attributes, and thread block clusters (compute capability 9.0):
// __cluster_dims__ at compile time, cluster dimensions at launch time, distributed shared memory
// (a block reads its neighbour's shared memory through cluster.map_shared_rank), and
// cudaOccupancyMaxActiveClusters. Also cudaLaunchKernel with an argument array.
#include "common.h"
#include <cooperative_groups.h>
namespace cg = cooperative_groups;

__global__ void scale_add(float *p, int n, float a, float b) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = a * p[i] + b;
}

// Each block puts its rank into shared memory; after a cluster barrier every block reads the
// next block's value in the cluster.
__global__ void cluster_neighbours(int *out) {
  __shared__ int mine;
  cg::cluster_group cluster = cg::this_cluster();
  unsigned rank = cluster.block_rank();
  if (threadIdx.x == 0) mine = 100 + rank;
  cluster.sync();
  unsigned next = (rank + 1) % cluster.num_blocks();
  int *theirs = cluster.map_shared_rank(&mine, next);
  if (threadIdx.x == 0) out[blockIdx.x] = *theirs * 1000 + cluster.num_blocks();
  cluster.sync();
}

__global__ void __cluster_dims__(2, 1, 1) fixed_cluster(int *out) {
  cg::cluster_group cluster = cg::this_cluster();
  if (threadIdx.x == 0) out[blockIdx.x] = (int)cluster.block_rank();
}

int main() {
  init_device();
  const int n = 1 << 16;
  float *p;
  CHECK(cudaMalloc(&p, n * sizeof(float)));
  CHECK(cudaMemset(p, 0, n * sizeof(float)));
  // cudaLaunchKernel with an argument array.
  int nn = n;
  float a = 1.0f, b = 2.0f;
  void *args[] = {&p, &nn, &a, &b};
  CHECK(cudaLaunchKernel((const void *)scale_add, dim3(n / 256), dim3(256), args, 0, 0));
  // cudaLaunchKernelEx with a priority attribute.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(n / 256);
  cfg.blockDim = dim3(256);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributePriority;
  attr[0].val.priority = 0;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  CHECK(cudaLaunchKernelEx(&cfg, scale_add, p, n, 3.0f, 1.0f));  // 3*2+1 = 7
  checkpoint("launch");
  float h[2];
  CHECK(cudaMemcpy(h, p, sizeof(float), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(h + 1, p + n - 1, sizeof(float), cudaMemcpyDeviceToHost));
  printf("result: launch ex %.1f %.1f\n", h[0], h[1]);

  int major = 0;
  CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  if (major < 9) {
    printf("clusters need compute capability 9.0 (have %d): skipped\n", major);
    CHECK(cudaFree(p));
    return done();
  }
  int *out;
  CHECK(cudaMalloc(&out, 64 * sizeof(int)));
  CHECK(cudaMemset(out, 0xff, 64 * sizeof(int)));
  cudaLaunchConfig_t cc = {};
  cc.gridDim = dim3(16);
  cc.blockDim = dim3(64);
  cudaLaunchAttribute ca[1];
  ca[0].id = cudaLaunchAttributeClusterDimension;
  ca[0].val.clusterDim.x = 4;
  ca[0].val.clusterDim.y = 1;
  ca[0].val.clusterDim.z = 1;
  cc.attrs = ca;
  cc.numAttrs = 1;
  int clusters = 0;
  CHECK(cudaOccupancyMaxActiveClusters(&clusters, (void *)cluster_neighbours, &cc));
  printf("max active clusters of 4 > 0: %s\n", clusters > 0 ? "yes" : "no");
  CHECK(cudaLaunchKernelEx(&cc, cluster_neighbours, out));
  int ho[16];
  CHECK(cudaMemcpy(ho, out, sizeof ho, cudaMemcpyDeviceToHost));
  printf("result: cluster neighbours:");
  for (int i = 0; i < 16; i++) printf(" %d", ho[i]);
  printf("\n");
  int bad = 0;
  for (int i = 0; i < 16; i++) bad += ho[i] != (100 + (i % 4 + 1) % 4) * 1000 + 4;

  fixed_cluster<<<8, 32>>>(out);
  CHECK_LAUNCH();
  CHECK(cudaMemcpy(ho, out, 8 * sizeof(int), cudaMemcpyDeviceToHost));
  printf("result: fixed clusters:");
  for (int i = 0; i < 8; i++) printf(" %d", ho[i]);
  printf("\n");
  for (int i = 0; i < 8; i++) bad += ho[i] != i % 2;
  result("clusters", bad == 0 && h[0] == 7.0f);
  // A grid that is not a multiple of the cluster size.
  cc.gridDim = dim3(6);
  ERROR_CASE_KEEP("grid of 6 with clusters of 4", cudaLaunchKernelEx(&cc, cluster_neighbours, out));
  ERROR_CASE("cudaGetLastError", cudaGetLastError());
  // A cluster larger than the portable maximum without the opt-in.
  cc.gridDim = dim3(32);
  ca[0].val.clusterDim.x = 16;
  ERROR_CASE("cluster of 16 without non-portable opt-in", cudaLaunchKernelEx(&cc, cluster_neighbours, out));
  cudaGetLastError();
  CHECK(cudaFree(out));
  CHECK(cudaFree(p));
  return done();
}
