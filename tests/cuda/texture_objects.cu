// CUDA arrays and texture/surface objects: cudaMallocArray, cudaMemcpy2DToArray /
// cudaMemcpy2DFromArray, cudaCreateTextureObject (point and linear filtering, normalised
// coordinates, clamp and wrap addressing), cudaCreateSurfaceObject with surf2Dwrite, 3D arrays
// with cudaMalloc3DArray and cudaMemcpy3D.
#include "common.h"
#include <vector>

__global__ void sample_point(cudaTextureObject_t t, float *out, int w, int h) {
  int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y;
  if (x < w && y < h) out[y * w + x] = tex2D<float>(t, x + 0.5f, y + 0.5f);
}
__global__ void sample_between(cudaTextureObject_t t, float *out) {
  // Linear filtering halfway between texels (0,0) and (1,0), and outside the texture.
  out[0] = tex2D<float>(t, 1.0f, 0.5f);
  out[1] = tex2D<float>(t, -5.0f, 0.5f);  // clamp: texel (0,0)
}
__global__ void sample_wrap(cudaTextureObject_t t, float *out) {
  out[0] = tex2D<float>(t, 1.25f, 0.125f);  // normalised, wrap: same as (0.25, 0.125)
  out[1] = tex2D<float>(t, 0.25f, 0.125f);
}
__global__ void write_surface(cudaSurfaceObject_t s, int w, int h) {
  int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y;
  if (x < w && y < h) surf2Dwrite((float)(x * 10 + y), s, x * (int)sizeof(float), y);
}
__global__ void sample3d(cudaTextureObject_t t, float *out) {
  out[0] = tex3D<float>(t, 2.5f, 1.5f, 3.5f);
}

int main() {
  init_device();
  const int W = 64, H = 32;
  std::vector<float> h(W * H);
  for (int i = 0; i < W * H; i++) h[i] = (float)i;
  cudaChannelFormatDesc desc = cudaCreateChannelDesc<float>();
  cudaArray_t arr;
  CHECK(cudaMallocArray(&arr, &desc, W, H, cudaArraySurfaceLoadStore));
  CHECK(cudaMemcpy2DToArray(arr, 0, 0, h.data(), W * sizeof(float), W * sizeof(float), H, cudaMemcpyHostToDevice));
  cudaChannelFormatDesc got;
  cudaExtent ext;
  unsigned flags;
  CHECK(cudaArrayGetInfo(&got, &ext, &flags, arr));
  printf("array: format %d bits %d extent %zu x %zu x %zu flags %u\n", (int)got.f, got.x, ext.width, ext.height,
         ext.depth, flags);

  cudaResourceDesc res = {};
  res.resType = cudaResourceTypeArray;
  res.res.array.array = arr;
  cudaTextureDesc td = {};
  td.addressMode[0] = td.addressMode[1] = cudaAddressModeClamp;
  td.filterMode = cudaFilterModePoint;
  td.readMode = cudaReadModeElementType;
  cudaTextureObject_t tp, tl, tw;
  CHECK(cudaCreateTextureObject(&tp, &res, &td, nullptr));
  td.filterMode = cudaFilterModeLinear;
  CHECK(cudaCreateTextureObject(&tl, &res, &td, nullptr));
  td.addressMode[0] = td.addressMode[1] = cudaAddressModeWrap;
  td.normalizedCoords = 1;
  CHECK(cudaCreateTextureObject(&tw, &res, &td, nullptr));
  checkpoint("textures");
  float *d;
  CHECK(cudaMalloc(&d, W * H * sizeof(float)));
  sample_point<<<dim3(W / 32, H), 32>>>(tp, d, W, H);
  CHECK_LAUNCH();
  checkpoint("launch");
  std::vector<float> back(W * H);
  CHECK(cudaMemcpy(back.data(), d, W * H * sizeof(float), cudaMemcpyDeviceToHost));
  printf("result: point sampling %s\n", back == h ? "matches" : "differs");
  sample_between<<<1, 1>>>(tl, d);
  float two[2];
  CHECK(cudaMemcpy(two, d, sizeof two, cudaMemcpyDeviceToHost));
  printf("result: linear halfway %.3f, clamped %.3f\n", two[0], two[1]);
  sample_wrap<<<1, 1>>>(tw, d);
  CHECK(cudaMemcpy(two, d, sizeof two, cudaMemcpyDeviceToHost));
  printf("result: wrap %.3f == %.3f\n", two[0], two[1]);

  // Surface writes into the same array, read back with cudaMemcpy2DFromArray.
  cudaSurfaceObject_t so;
  CHECK(cudaCreateSurfaceObject(&so, &res));
  write_surface<<<dim3(W / 32, H), 32>>>(so, W, H);
  CHECK_LAUNCH();
  CHECK(cudaMemcpy2DFromArray(back.data(), W * sizeof(float), arr, 0, 0, W * sizeof(float), H,
                              cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) bad += back[y * W + x] != (float)(x * 10 + y);
  printf("result: surface writes mismatches %d\n", bad);

  // A 3D array.
  const int X = 8, Y = 4, Z = 6;
  cudaArray_t a3;
  CHECK(cudaMalloc3DArray(&a3, &desc, make_cudaExtent(X, Y, Z)));
  std::vector<float> v(X * Y * Z);
  for (int i = 0; i < X * Y * Z; i++) v[i] = (float)i;
  cudaMemcpy3DParms p = {};
  p.srcPtr = make_cudaPitchedPtr(v.data(), X * sizeof(float), X, Y);
  p.dstArray = a3;
  p.extent = make_cudaExtent(X, Y, Z);
  p.kind = cudaMemcpyHostToDevice;
  CHECK(cudaMemcpy3D(&p));
  cudaResourceDesc r3 = {};
  r3.resType = cudaResourceTypeArray;
  r3.res.array.array = a3;
  cudaTextureDesc t3 = {};
  t3.filterMode = cudaFilterModePoint;
  t3.readMode = cudaReadModeElementType;
  cudaTextureObject_t to3;
  CHECK(cudaCreateTextureObject(&to3, &r3, &t3, nullptr));
  sample3d<<<1, 1>>>(to3, d);
  float one = 0;
  CHECK(cudaMemcpy(&one, d, sizeof one, cudaMemcpyDeviceToHost));
  printf("result: 3D texel (2,1,3) = %.1f (want %.1f)\n", one, (float)((3 * Y + 1) * X + 2));
  result("textures", back.size() == (size_t)W * H && bad == 0 && one == (float)((3 * Y + 1) * X + 2));

  for (cudaTextureObject_t t : {tp, tl, tw, to3}) CHECK(cudaDestroyTextureObject(t));
  CHECK(cudaDestroySurfaceObject(so));
  CHECK(cudaFreeArray(arr));
  CHECK(cudaFreeArray(a3));
  CHECK(cudaFree(d));
  return done();
}
