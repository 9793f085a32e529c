// Host callbacks: cudaLaunchHostFunc and cudaStreamAddCallback run in stream order, after the
// work before them (a device-to-host copy has landed) and before the work after them.
#include "common.h"
#include <atomic>
#include <vector>

__global__ void set_all(int *p, int n, int v) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}

struct Ctx {
  int id;
  int *host;  // pinned buffer that a copy before the callback filled
  int n;
  int seen;   // what the callback found there
};
static std::atomic<int> g_order{0};
static int g_log[64];
static int g_seen[64];

static void CUDART_CB host_fn(void *p) {
  Ctx *c = (Ctx *)p;
  long long sum = 0;
  for (int i = 0; i < c->n; i++) sum += c->host[i];
  c->seen = (int)(sum / c->n);
  int slot = g_order.fetch_add(1);
  g_log[slot] = c->id;
  g_seen[slot] = c->seen;
}

static void CUDART_CB stream_cb(cudaStream_t, cudaError_t status, void *p) {
  Ctx *c = (Ctx *)p;
  c->seen = c->host[0];
  int slot = g_order.fetch_add(1);
  g_log[slot] = 100 + c->id;
  g_seen[slot] = status == cudaSuccess ? c->seen : -1000 - (int)status;
}

int main() {
  init_device();
  const int n = 4096;
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  int *d, *h;
  CHECK(cudaMalloc(&d, n * sizeof(int)));
  CHECK(cudaMallocHost(&h, 8 * n * sizeof(int)));
  memset(h, 0, 8 * n * sizeof(int));
  Ctx ctx[8];
  for (int k = 0; k < 8; k++) {
    ctx[k] = {k, h + k * n, n, -1};
    set_all<<<n / 256, 256, 0, s>>>(d, n, 10 * (k + 1));
    CHECK_LAUNCH();
    CHECK(cudaMemcpyAsync(h + k * n, d, n * sizeof(int), cudaMemcpyDeviceToHost, s));
    if (k % 2 == 0)
      CHECK(cudaLaunchHostFunc(s, host_fn, &ctx[k]));
    else
      CHECK(cudaStreamAddCallback(s, stream_cb, &ctx[k], 0));
  }
  checkpoint("launch");
  CHECK(cudaStreamSynchronize(s));
  int count = g_order.load();
  printf("callbacks run: %d\n", count);
  for (int i = 0; i < count && i < 64; i++) printf("callback %d: id %d\n", i, g_log[i]);
  for (int i = 0; i < count && i < 64; i++) printf("result: callback %d saw %d\n", i, g_seen[i]);
  bool ok = count == 8;
  for (int k = 0; k < 8 && ok; k++) ok = ctx[k].seen == 10 * (k + 1);
  result("callbacks saw the copies before them", ok);

  // A callback on the legacy default stream, and one per stream of several.
  cudaStream_t t[3];
  Ctx c2[3];
  for (int k = 0; k < 3; k++) {
    CHECK(cudaStreamCreateWithFlags(&t[k], cudaStreamNonBlocking));
    c2[k] = {20 + k, h + k * n, 1, -1};
    h[k * n] = 1000 + k;
    CHECK(cudaLaunchHostFunc(t[k], host_fn, &c2[k]));
  }
  for (int k = 0; k < 3; k++) CHECK(cudaStreamSynchronize(t[k]));
  for (int k = 0; k < 3; k++) printf("stream %d callback saw %d\n", k, c2[k].seen);
  Ctx c3 = {30, h, 1, -1};
  h[0] = 4242;
  CHECK(cudaLaunchHostFunc(0, host_fn, &c3));
  CHECK(cudaDeviceSynchronize());
  printf("default-stream callback saw %d\n", c3.seen);
  printf("callbacks run in total: %d\n", g_order.load());
  for (auto &x : t) CHECK(cudaStreamDestroy(x));
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(d));
  CHECK(cudaFreeHost(h));
  return done();
}
