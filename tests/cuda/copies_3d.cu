// 3D memory: cudaMalloc3D, cudaMemcpy3D (host to device, device to device with offsets, device to
// host), cudaMemset3D, cudaMemcpy3DAsync, a kernel over the pitched volume.
#include "common.h"
#include <vector>

__global__ void mark(cudaPitchedPtr p, int w, int h, int depth) {
  int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y, z = blockIdx.z;
  if (x < w && y < h && z < depth) {
    float *row = (float *)((char *)p.ptr + (size_t)z * p.pitch * p.ysize + (size_t)y * p.pitch);
    row[x] += 0.5f;
  }
}

int main() {
  init_device();
  const int W = 70, H = 33, D = 17;  // floats
  cudaExtent ext = make_cudaExtent(W * sizeof(float), H, D);
  cudaPitchedPtr dv, dv2;
  CHECK(cudaMalloc3D(&dv, ext));
  CHECK(cudaMalloc3D(&dv2, ext));
  printf("device: 3D pitch %zu\n", dv.pitch);
  printf("xsize %zu ysize %zu\n", dv.xsize, dv.ysize);
  std::vector<float> h(W * H * D), back(W * H * D, -1.0f);
  for (int i = 0; i < W * H * D; i++) h[i] = (float)i;

  cudaMemcpy3DParms p = {};
  p.srcPtr = make_cudaPitchedPtr(h.data(), W * sizeof(float), W, H);
  p.dstPtr = dv;
  p.extent = ext;
  p.kind = cudaMemcpyHostToDevice;
  CHECK(cudaMemcpy3D(&p));
  cudaMemcpy3DParms q = {};
  q.srcPtr = dv;
  q.dstPtr = make_cudaPitchedPtr(back.data(), W * sizeof(float), W, H);
  q.extent = ext;
  q.kind = cudaMemcpyDeviceToHost;
  CHECK(cudaMemcpy3D(&q));
  printf("3D round trip: %s\n", back == h ? "match" : "differ");

  // memset the second volume, then copy a 10 x 5 x 4 box from (3,2,1) to (50,20,10).
  CHECK(cudaMemset3D(dv2, 0, ext));
  cudaMemcpy3DParms r = {};
  r.srcPtr = dv;
  r.srcPos = make_cudaPos(3 * sizeof(float), 2, 1);
  r.dstPtr = dv2;
  r.dstPos = make_cudaPos(50 * sizeof(float), 20, 10);
  r.extent = make_cudaExtent(10 * sizeof(float), 5, 4);
  r.kind = cudaMemcpyDeviceToDevice;
  CHECK(cudaMemcpy3D(&r));
  q.srcPtr = dv2;
  CHECK(cudaMemcpy3D(&q));
  int bad = 0;
  double sum = 0;
  for (int z = 0; z < D; z++)
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++) {
        bool in = x >= 50 && x < 60 && y >= 20 && y < 25 && z >= 10 && z < 14;
        float want = in ? h[((z - 9) * H + (y - 18)) * W + (x - 47)] : 0.0f;
        bad += back[(z * H + y) * W + x] != want;
        sum += back[(z * H + y) * W + x];
      }
  printf("3D box copy: %d mismatches, sum %.1f\n", bad, sum);

  // cudaMemset3D of a sub-box: bytes 0x3f in x bytes 0..15, y 0..1, z 0..2 of dv2.
  CHECK(cudaMemset3D(dv2, 0x3f, make_cudaExtent(16, 2, 3)));
  CHECK(cudaMemcpy3D(&q));
  int set = 0;
  for (int i = 0; i < W * H * D; i++) {
    uint32_t bits;
    memcpy(&bits, &back[i], 4);
    set += bits == 0x3f3f3f3fu;
  }
  printf("memset3D sub-box words: %d\n", set);

  // Async 3D copy and a kernel.
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  p.dstPtr = dv;
  CHECK(cudaMemcpy3DAsync(&p, s));
  mark<<<dim3((W + 63) / 64, H, D), 64, 0, s>>>(dv, W, H, D);
  CHECK_LAUNCH();
  checkpoint("launch");
  q.srcPtr = dv;
  CHECK(cudaMemcpy3DAsync(&q, s));
  CHECK(cudaStreamSynchronize(s));
  bad = 0;
  for (int i = 0; i < W * H * D; i++) bad += back[i] != h[i] + 0.5f;
  printf("result: kernel over the volume: %d mismatches\n", bad);
  result("copies_3d kernel", bad == 0);

  cudaMemcpy3DParms e = q;
  e.extent = make_cudaExtent(W * sizeof(float) + 4096, H, D);
  ERROR_CASE("cudaMemcpy3D extent beyond the pitch", cudaMemcpy3D(&e));
  CHECK(cudaGetLastError());
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(dv.ptr));
  CHECK(cudaFree(dv2.ptr));
  return done();
}
