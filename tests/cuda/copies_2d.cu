// Pitched 2D memory: cudaMallocPitch, cudaMemcpy2D (host<->device, device<->device, sub-rectangles),
// cudaMemset2D, cudaMemcpy2DAsync, and a kernel that walks rows by pitch.
#include "common.h"
#include <vector>

__global__ void row_col(int *p, size_t pitch, int w, int h) {
  int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  if (x < w && y < h) {
    int *row = (int *)((char *)p + y * pitch);
    row[x] = row[x] * 2 + y * 1000 + x;
  }
}

static uint64_t sum_hash(const std::vector<int> &v) {
  uint64_t h = 0;
  for (size_t i = 0; i < v.size(); i++) h = h * 31 + (uint32_t)v[i];
  return h;
}

int main() {
  init_device();
  const int W = 300, H = 123;  // ints
  int *d, *d2;
  size_t pitch, pitch2;
  CHECK(cudaMallocPitch((void **)&d, &pitch, W * sizeof(int), H));
  CHECK(cudaMallocPitch((void **)&d2, &pitch2, W * sizeof(int), H));
  printf("device: pitch %zu for a row of %zu bytes\n", pitch, W * sizeof(int));
  printf("pitch covers the row: %s, pitches equal: %s\n", pitch >= W * sizeof(int) ? "yes" : "no",
         pitch == pitch2 ? "yes" : "no");
  std::vector<int> h(W * H), back(W * H, -1);
  for (int i = 0; i < W * H; i++) h[i] = i;
  CHECK(cudaMemcpy2D(d, pitch, h.data(), W * sizeof(int), W * sizeof(int), H, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy2D(back.data(), W * sizeof(int), d, pitch, W * sizeof(int), H, cudaMemcpyDeviceToHost));
  printf("2D round trip: %s\n", back == h ? "match" : "differ");

  // Sub-rectangle (rows 10..59, columns 20..119) device to device, into a zeroed array.
  CHECK(cudaMemset2D(d2, pitch2, 0, W * sizeof(int), H));
  CHECK(cudaMemcpy2D((char *)d2 + 10 * pitch2 + 20 * sizeof(int), pitch2, (char *)d + 5 * pitch + 3 * sizeof(int),
                     pitch, 100 * sizeof(int), 50, cudaMemcpyDeviceToDevice));
  CHECK(cudaMemcpy2D(back.data(), W * sizeof(int), d2, pitch2, W * sizeof(int), H, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      int want = (y >= 10 && y < 60 && x >= 20 && x < 120) ? h[(y - 5) * W + (x - 17)] : 0;
      bad += back[y * W + x] != want;
    }
  printf("sub-rectangle copy: %d mismatches\n", bad);

  // cudaMemset2D on a rectangle inside: bytes 0x01 in rows 100..109, bytes 8..39.
  CHECK(cudaMemset2D((char *)d2 + 100 * pitch2 + 8, pitch2, 1, 32, 10));
  CHECK(cudaMemcpy2D(back.data(), W * sizeof(int), d2, pitch2, W * sizeof(int), H, cudaMemcpyDeviceToHost));
  bad = 0;
  for (int y = 100; y < 110; y++)
    for (int x = 2; x < 10; x++) bad += back[y * W + x] != 0x01010101;
  printf("memset2D: %d mismatches, hash %016llx\n", bad, (unsigned long long)sum_hash(back));

  // Async 2D copies around a kernel.
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  int *ph;
  CHECK(cudaMallocHost(&ph, W * H * sizeof(int)));
  for (int i = 0; i < W * H; i++) ph[i] = i % 977;
  CHECK(cudaMemcpy2DAsync(d, pitch, ph, W * sizeof(int), W * sizeof(int), H, cudaMemcpyHostToDevice, s));
  dim3 block(32, 8), grid((W + 31) / 32, (H + 7) / 8);
  row_col<<<grid, block, 0, s>>>(d, pitch, W, H);
  CHECK_LAUNCH();
  checkpoint("launch");
  CHECK(cudaMemcpy2DAsync(ph, W * sizeof(int), d, pitch, W * sizeof(int), H, cudaMemcpyDeviceToHost, s));
  CHECK(cudaStreamSynchronize(s));
  bad = 0;
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) bad += ph[y * W + x] != ((y * W + x) % 977) * 2 + y * 1000 + x;
  printf("result: kernel over pitched rows: %d mismatches\n", bad);
  result("copies_2d kernel", bad == 0);

  ERROR_CASE("cudaMemcpy2D width > pitch",
             cudaMemcpy2D(d, pitch, h.data(), 4, W * sizeof(int), H, cudaMemcpyHostToDevice));
  ERROR_CASE("cudaMemcpy2D dpitch < width",
             cudaMemcpy2D(d, 16, h.data(), W * sizeof(int), W * sizeof(int), 2, cudaMemcpyHostToDevice));
  CHECK(cudaGetLastError());
  CHECK(cudaFreeHost(ph));
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(d));
  CHECK(cudaFree(d2));
  return done();
}
