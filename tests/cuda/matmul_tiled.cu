// Tiled matrix multiply C = A * B (384 x 256 times 256 x 320) with 16x16 shared-memory tiles,
// checked against the host. Small integer-valued floats keep every sum exact.
#include "common.h"
#include <vector>

#define TILE 16

__global__ void matmul(const float *A, const float *B, float *C, int M, int K, int N) {
  __shared__ float As[TILE][TILE];
  __shared__ float Bs[TILE][TILE];
  int row = blockIdx.y * TILE + threadIdx.y;
  int col = blockIdx.x * TILE + threadIdx.x;
  float acc = 0.0f;
  for (int t = 0; t < (K + TILE - 1) / TILE; t++) {
    int ac = t * TILE + threadIdx.x, br = t * TILE + threadIdx.y;
    As[threadIdx.y][threadIdx.x] = (row < M && ac < K) ? A[row * K + ac] : 0.0f;
    Bs[threadIdx.y][threadIdx.x] = (br < K && col < N) ? B[br * N + col] : 0.0f;
    __syncthreads();
    for (int k = 0; k < TILE; k++) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
    __syncthreads();
  }
  if (row < M && col < N) C[row * N + col] = acc;
}

int main() {
  init_device();
  const int M = 384, K = 256, N = 320;
  std::vector<float> A(M * K), B(K * N), C(M * N, 0.0f), ref(M * N, 0.0f);
  uint32_t s = 42;
  for (auto &x : A) x = (float)(vt_rand(s) % 7) - 3.0f;
  for (auto &x : B) x = (float)(vt_rand(s) % 5) - 2.0f;
  for (int i = 0; i < M; i++)
    for (int k = 0; k < K; k++) {
      float a = A[i * K + k];
      for (int j = 0; j < N; j++) ref[i * N + j] += a * B[k * N + j];
    }
  float *dA, *dB, *dC;
  CHECK(cudaMalloc(&dA, A.size() * sizeof(float)));
  CHECK(cudaMalloc(&dB, B.size() * sizeof(float)));
  CHECK(cudaMalloc(&dC, C.size() * sizeof(float)));
  CHECK(cudaMemcpy(dA, A.data(), A.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dB, B.data(), B.size() * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dC, 0, C.size() * sizeof(float)));
  checkpoint("copies");
  dim3 block(TILE, TILE), grid((N + TILE - 1) / TILE, (M + TILE - 1) / TILE);
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  CHECK(cudaEventRecord(e0));
  for (int rep = 0; rep < 10; rep++) matmul<<<grid, block>>>(dA, dB, dC, M, K, N);
  CHECK_LAUNCH();
  CHECK(cudaEventRecord(e1));
  checkpoint("launch");
  CHECK(cudaEventSynchronize(e1));
  float ms = elapsed_ms(e0, e1);
  printf("time: 10 multiplies %.3f ms (%.1f GFLOP/s)\n", ms, 10.0 * 2.0 * M * N * K / (ms * 1e6));
  CHECK(cudaMemcpy(C.data(), dC, C.size() * sizeof(float), cudaMemcpyDeviceToHost));
  int bad = 0;
  double trace = 0, sum = 0;
  for (int i = 0; i < M * N; i++) {
    if (C[i] != ref[i]) bad++;
    sum += C[i];
  }
  for (int i = 0; i < M && i < N; i++) trace += C[i * N + i];
  printf("result: mismatches %d\n", bad);
  printf("result: sum %.1f trace %.1f C[7][9]=%.1f\n", sum, trace, C[7 * N + 9]);
  result("matmul_tiled", bad == 0);
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  CHECK(cudaFree(dA));
  CHECK(cudaFree(dB));
  CHECK(cudaFree(dC));
  return done();
}
