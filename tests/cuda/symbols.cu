// Module globals: __constant__ and __device__ symbols through cudaMemcpyToSymbol /
// cudaMemcpyFromSymbol (with offsets, async), cudaGetSymbolAddress, cudaGetSymbolSize, and
// kernels that read and write them.
#include "common.h"

__constant__ float c_coef[16];
__constant__ int c_scale = 3;
__device__ int g_counter = 100;
__device__ int g_table[256];
__device__ double g_init[4] = {1.5, 2.5, 3.5, 4.5};

__global__ void use_symbols(float *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = c_coef[i % 16] * c_scale + g_table[i % 256];
  if (i == 0) g_counter += 1;
}
__global__ void bump_table() { g_table[threadIdx.x] += threadIdx.x; }

int main() {
  init_device();
  // Initial values of initialised symbols (set by the module load).
  int counter = 0, scale = 0;
  double init[4];
  CHECK(cudaMemcpyFromSymbol(&counter, g_counter, sizeof(int)));
  CHECK(cudaMemcpyFromSymbol(&scale, c_scale, sizeof(int)));
  CHECK(cudaMemcpyFromSymbol(init, g_init, sizeof init));
  printf("initial g_counter %d c_scale %d g_init %.1f %.1f %.1f %.1f\n", counter, scale, init[0], init[1], init[2],
         init[3]);
  checkpoint("module");
  size_t sz = 0;
  CHECK(cudaGetSymbolSize(&sz, c_coef));
  printf("size c_coef %zu\n", sz);
  CHECK(cudaGetSymbolSize(&sz, g_table));
  printf("size g_table %zu\n", sz);
  CHECK(cudaGetSymbolSize(&sz, g_init));
  printf("size g_init %zu\n", sz);

  float coef[16];
  for (int i = 0; i < 16; i++) coef[i] = 0.25f * i;
  CHECK(cudaMemcpyToSymbol(c_coef, coef, sizeof coef));
  int table[256];
  for (int i = 0; i < 256; i++) table[i] = i * 10;
  CHECK(cudaMemcpyToSymbol(g_table, table, sizeof table));
  // Offsets: overwrite entries 100..109 with 7.
  int sevens[10];
  for (int &x : sevens) x = 7;
  CHECK(cudaMemcpyToSymbol(g_table, sevens, sizeof sevens, 100 * sizeof(int)));
  int back[256];
  CHECK(cudaMemcpyFromSymbol(back, g_table, sizeof back));
  printf("table[99..101] %d %d %d, table[109..110] %d %d\n", back[99], back[100], back[101], back[109], back[110]);
  int five[5];
  CHECK(cudaMemcpyFromSymbol(five, g_table, sizeof five, 200 * sizeof(int)));
  printf("table[200..204] %d %d %d %d %d\n", five[0], five[1], five[2], five[3], five[4]);
  CHECK(cudaMemcpyFromSymbol(&scale, c_scale, sizeof(int)));
  printf("c_scale still %d\n", scale);

  // Kernels see the symbols.
  const int n = 4096;
  float *out;
  CHECK(cudaMalloc(&out, n * sizeof(float)));
  use_symbols<<<n / 256, 256>>>(out, n);
  CHECK_LAUNCH();
  checkpoint("launch");
  float h[n];
  CHECK(cudaMemcpy(h, out, sizeof h, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int i = 0; i < n; i++) {
    int t = (i % 256 >= 100 && i % 256 < 110) ? 7 : (i % 256) * 10;
    bad += h[i] != 0.25f * (i % 16) * 3 + t;
  }
  CHECK(cudaMemcpyFromSymbol(&counter, g_counter, sizeof(int)));
  printf("result: kernel output mismatches %d, g_counter %d\n", bad, counter);

  // Symbol address: write through the plain pointer, read back by symbol.
  int *table_ptr = nullptr;
  CHECK(cudaGetSymbolAddress((void **)&table_ptr, g_table));
  CHECK(cudaMemset(table_ptr, 0, 256 * sizeof(int)));
  bump_table<<<1, 256>>>();
  CHECK(cudaMemcpyFromSymbol(back, g_table, sizeof back));
  int bad2 = 0;
  for (int i = 0; i < 256; i++) bad2 += back[i] != i;
  printf("result: after memset through the address and a kernel: mismatches %d\n", bad2);
  result("symbols", bad == 0 && bad2 == 0 && counter == 101);

  // Async variants on a stream.
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  int *pin;
  CHECK(cudaMallocHost(&pin, 256 * sizeof(int)));
  for (int i = 0; i < 256; i++) pin[i] = 256 - i;
  CHECK(cudaMemcpyToSymbolAsync(g_table, pin, 256 * sizeof(int), 0, cudaMemcpyHostToDevice, s));
  // Clearing the buffer before the synchronize would race the copy (natively too): clear it after.
  CHECK(cudaStreamSynchronize(s));
  memset(pin, 0, 256 * sizeof(int));
  CHECK(cudaMemcpyFromSymbolAsync(pin, g_table, 256 * sizeof(int), 0, cudaMemcpyDeviceToHost, s));
  CHECK(cudaStreamSynchronize(s));
  printf("async symbol copies: pin[0]=%d pin[255]=%d\n", pin[0], pin[255]);
  // Device to device to a symbol.
  CHECK(cudaMemcpyToSymbol(g_table, out, 16 * sizeof(int), 0, cudaMemcpyDeviceToDevice));

  ERROR_CASE("cudaMemcpyToSymbol past the end", cudaMemcpyToSymbol(c_coef, coef, sizeof coef, 4));
  ERROR_CASE("cudaMemcpyFromSymbol past the end", cudaMemcpyFromSymbol(back, g_table, 8, 255 * sizeof(int)));
  CHECK(cudaGetLastError());
  CHECK(cudaFreeHost(pin));
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(out));
  return done();
}
