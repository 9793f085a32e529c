// CUDA graphs: stream capture (kernels, async copies, memset, a host function, a second stream
// joined with events), cudaGraphInstantiate, repeated cudaGraphLaunch, node counts, capture
// status, a graph built by hand (memset, kernel and memcpy nodes with dependencies), a parameter
// change through cudaGraphExecKernelNodeSetParams, and an invalidated capture.
#include "common.h"

__global__ void axpb(float *p, int n, float a, float b) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) p[i] = a * p[i] + b;
}
__global__ void add_into(float *dst, const float *src, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += src[i];
}
static int g_host_calls = 0;
static void CUDART_CB host_count(void *) { g_host_calls++; }

static const char *capture_status(cudaStreamCaptureStatus s) {
  return s == cudaStreamCaptureStatusNone ? "none" : s == cudaStreamCaptureStatusActive ? "active" : "invalidated";
}

int main() {
  init_device();
  const int n = 1 << 16;
  float *x, *y, *hx;
  CHECK(cudaMalloc(&x, n * sizeof(float)));
  CHECK(cudaMalloc(&y, n * sizeof(float)));
  CHECK(cudaMallocHost(&hx, n * sizeof(float)));
  for (int i = 0; i < n; i++) hx[i] = (float)(i % 100);
  cudaStream_t s, s2;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  cudaEvent_t fork, join;
  CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));

  cudaStreamCaptureStatus st;
  CHECK(cudaStreamIsCapturing(s, &st));
  printf("before capture: %s\n", capture_status(st));
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  CHECK(cudaStreamIsCapturing(s, &st));
  printf("during capture: %s\n", capture_status(st));
  CHECK(cudaMemcpyAsync(x, hx, n * sizeof(float), cudaMemcpyHostToDevice, s));
  CHECK(cudaEventRecord(fork, s));
  CHECK(cudaStreamWaitEvent(s2, fork, 0));
  CHECK(cudaMemsetAsync(y, 0, n * sizeof(float), s2));
  axpb<<<n / 256, 256, 0, s2>>>(y, n, 1.0f, 3.0f);  // y = 3
  CHECK(cudaEventRecord(join, s2));
  axpb<<<n / 256, 256, 0, s>>>(x, n, 2.0f, 0.0f);  // x = 2 hx
  CHECK(cudaStreamWaitEvent(s, join, 0));
  add_into<<<n / 256, 256, 0, s>>>(x, y, n);  // x = 2 hx + 3
  CHECK(cudaLaunchHostFunc(s, host_count, nullptr));
  CHECK(cudaMemcpyAsync(hx, x, n * sizeof(float), cudaMemcpyDeviceToHost, s));
  cudaGraph_t g;
  CHECK(cudaStreamEndCapture(s, &g));
  CHECK(cudaStreamIsCapturing(s, &st));
  printf("after capture: %s\n", capture_status(st));
  printf("host function calls during capture: %d\n", g_host_calls);
  size_t nodes = 0, edges = 0;
  CHECK(cudaGraphGetNodes(g, nullptr, &nodes));
  CHECK(cudaGraphGetEdges(g, nullptr, nullptr, nullptr, &edges));
  printf("captured graph: %zu nodes, %zu edges\n", nodes, edges);
  cudaGraphExec_t ge;
  CHECK(cudaGraphInstantiate(&ge, g, 0));
  checkpoint("instantiate");
  // Each launch: hx <- 2 hx + 3.
  for (int rep = 0; rep < 3; rep++) CHECK(cudaGraphLaunch(ge, s));
  checkpoint("launch");
  CHECK(cudaStreamSynchronize(s));
  printf("host function calls after 3 launches: %d\n", g_host_calls);
  int bad = 0;
  for (int i = 0; i < n; i++) {
    float v = (float)(i % 100);
    for (int r = 0; r < 3; r++) v = 2 * v + 3;
    bad += hx[i] != v;
  }
  printf("result: graph output mismatches %d, hx[99]=%.0f\n", bad, hx[99]);
  result("captured graph", bad == 0);

  // A graph built by hand: memset node -> kernel node -> memcpy node.
  cudaGraph_t h;
  CHECK(cudaGraphCreate(&h, 0));
  cudaGraphNode_t nset, nk, ncp;
  cudaMemsetParams mp = {};
  mp.dst = y;
  mp.value = 0;
  mp.elementSize = 4;
  mp.width = n;
  mp.height = 1;
  mp.pitch = 0;
  CHECK(cudaGraphAddMemsetNode(&nset, h, nullptr, 0, &mp));
  float a = 1.0f, b = 7.0f;
  int nn = n;
  void *args[] = {&y, &nn, &a, &b};
  cudaKernelNodeParams kp = {};
  kp.func = (void *)axpb;
  kp.gridDim = dim3(n / 256);
  kp.blockDim = dim3(256);
  kp.kernelParams = args;
  CHECK(cudaGraphAddKernelNode(&nk, h, &nset, 1, &kp));
  CHECK(cudaGraphAddMemcpyNode1D(&ncp, h, &nk, 1, hx, y, n * sizeof(float), cudaMemcpyDeviceToHost));
  cudaGraphExec_t he;
  CHECK(cudaGraphInstantiate(&he, h, 0));
  CHECK(cudaGraphLaunch(he, s));
  CHECK(cudaStreamSynchronize(s));
  printf("result: hand-built graph hx[0]=%.0f hx[n-1]=%.0f\n", hx[0], hx[n - 1]);
  // Change the kernel's parameters in the executable graph: y = 1*0 + 11.
  b = 11.0f;
  CHECK(cudaGraphExecKernelNodeSetParams(he, nk, &kp));
  CHECK(cudaGraphLaunch(he, s));
  CHECK(cudaStreamSynchronize(s));
  printf("result: after set params hx[0]=%.0f\n", hx[0]);
  result("hand-built graph", hx[0] == 11.0f && hx[n - 1] == 11.0f);

  // Illegal during capture: synchronising the capturing stream invalidates the capture.
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  ERROR_CASE("cudaStreamSynchronize of the capturing stream", cudaStreamSynchronize(s));
  cudaGraph_t broken = nullptr;
  ERROR_CASE("cudaStreamEndCapture after that", cudaStreamEndCapture(s, &broken));
  printf("graph returned: %s\n", broken ? "yes" : "null");
  if (broken) CHECK(cudaGraphDestroy(broken));
  cudaGetLastError();

  CHECK(cudaGraphExecDestroy(ge));
  CHECK(cudaGraphExecDestroy(he));
  CHECK(cudaGraphDestroy(g));
  CHECK(cudaGraphDestroy(h));
  CHECK(cudaEventDestroy(fork));
  CHECK(cudaEventDestroy(join));
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaStreamDestroy(s2));
  CHECK(cudaFreeHost(hx));
  CHECK(cudaFree(x));
  CHECK(cudaFree(y));
  return done();
}
