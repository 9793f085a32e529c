// c = a + b on 1M floats: cudaMalloc, cudaMemcpy, <<<>>> launch, cudaFree.
#include "common.h"
#include <vector>

__global__ void add(const float *a, const float *b, float *c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

int main() {
  init_device();
  const int n = 1 << 20;
  std::vector<float> a(n), b(n), c(n, -1.0f);
  for (int i = 0; i < n; i++) {
    a[i] = (float)(i % 1000);
    b[i] = (float)(2 * (i % 777));
  }
  float *da, *db, *dc;
  CHECK(cudaMalloc(&da, n * sizeof(float)));
  CHECK(cudaMalloc(&db, n * sizeof(float)));
  CHECK(cudaMalloc(&dc, n * sizeof(float)));
  CHECK(cudaMemcpy(da, a.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, b.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  checkpoint("copies");
  add<<<(n + 255) / 256, 256>>>(da, db, dc, n);
  CHECK_LAUNCH();
  checkpoint("launch");
  CHECK(cudaMemcpy(c.data(), dc, n * sizeof(float), cudaMemcpyDeviceToHost));
  int bad = 0;
  double sum = 0;
  for (int i = 0; i < n; i++) {
    if (c[i] != a[i] + b[i]) bad++;
    sum += c[i];
  }
  printf("result: mismatches %d\n", bad);
  printf("result: sum %.1f\n", sum);
  printf("result: c[0]=%.1f c[12345]=%.1f c[n-1]=%.1f\n", c[0], c[12345], c[n - 1]);
  result("vector_add", bad == 0);
  CHECK(cudaFree(da));
  CHECK(cudaFree(db));
  CHECK(cudaFree(dc));
  return done();
}
