// Stream creation variants: priority range, cudaStreamCreateWithPriority, cudaStreamGetPriority,
// cudaStreamGetFlags, cudaStreamGetId, cudaStreamGetDevice, non-blocking streams not waiting for
// the legacy default stream, the special handles cudaStreamLegacy / cudaStreamPerThread, and stream
// attributes (L2 access policy window, priority) with the persisting-L2 limit.
#include "common.h"

__global__ void write_val(int *p, int v) { *p = v; }

int main() {
  init_device();
  int least = 0, greatest = 0;
  CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  printf("priority range: least %d greatest %d\n", least, greatest);
  cudaStream_t hi, lo, nb, plain, clamped;
  CHECK(cudaStreamCreateWithPriority(&hi, cudaStreamNonBlocking, greatest));
  CHECK(cudaStreamCreateWithPriority(&lo, cudaStreamDefault, least));
  CHECK(cudaStreamCreateWithFlags(&nb, cudaStreamNonBlocking));
  CHECK(cudaStreamCreate(&plain));
  int prio;
  unsigned flags;
  CHECK(cudaStreamGetPriority(hi, &prio));
  printf("high stream priority %d\n", prio);
  CHECK(cudaStreamGetPriority(lo, &prio));
  printf("low stream priority %d\n", prio);
  CHECK(cudaStreamGetPriority(plain, &prio));
  printf("plain stream priority %d\n", prio);
  ERROR_CASE("priority out of range is clamped", cudaStreamCreateWithPriority(&clamped, 0, greatest - 10));
  CHECK(cudaStreamGetPriority(clamped, &prio));
  printf("clamped priority %d\n", prio);
  CHECK(cudaStreamGetFlags(hi, &flags));
  printf("flags high %u\n", flags);
  CHECK(cudaStreamGetFlags(lo, &flags));
  printf("flags low %u\n", flags);
  CHECK(cudaStreamGetFlags(0, &flags));
  printf("flags legacy %u\n", flags);
  unsigned long long id1 = 0, id2 = 0;
  CHECK(cudaStreamGetId(hi, &id1));
  CHECK(cudaStreamGetId(lo, &id2));
  printf("stream ids differ: %s\n", id1 != id2 ? "yes" : "no");
  int dev = -1;
  CHECK(cudaStreamGetDevice(nb, &dev));
  printf("stream device %d\n", dev);

  // A non-blocking stream runs while the legacy default stream is busy.
  int *p;
  CHECK(cudaMalloc(&p, sizeof(int)));
  CHECK(cudaMemset(p, 0, sizeof(int)));
  // First launches of both kernels now: with lazy loading (the default) a kernel's first launch may wait for
  // the device to go idle, which would hide the overlap checked below.
  write_val<<<1, 1, 0, nb>>>(p, 0);
  vt_spin_kernel<<<1, 1>>>(1000, nullptr);
  CHECK(cudaDeviceSynchronize());
  vt_spin_kernel<<<1, 1>>>(200ull * 1000 * 1000, nullptr);  // legacy default stream
  write_val<<<1, 1, 0, nb>>>(p, 17);
  CHECK_LAUNCH();
  checkpoint("launch");
  CHECK(cudaStreamSynchronize(nb));
  printf("result: default stream busy after the non-blocking stream finished: %s\n",
         cudaStreamQuery(0) == cudaErrorNotReady ? "yes" : "no");
  // A blocking stream waits for it.
  write_val<<<1, 1, 0, plain>>>(p, 18);
  CHECK(cudaStreamSynchronize(plain));
  printf("result: default stream done when the blocking stream finished: %s\n",
         cudaStreamQuery(0) == cudaSuccess ? "yes" : "no");
  int v = 0;
  CHECK(cudaMemcpy(&v, p, sizeof v, cudaMemcpyDeviceToHost));
  printf("result: value %d\n", v);
  // Special handles.
  write_val<<<1, 1, 0, cudaStreamLegacy>>>(p, 19);
  write_val<<<1, 1, 0, cudaStreamPerThread>>>(p, 20);
  CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  CHECK(cudaStreamSynchronize(cudaStreamPerThread));
  CHECK(cudaMemcpy(&v, p, sizeof v, cudaMemcpyDeviceToHost));
  printf("result: after the special handles %d\n", v);

  // Stream attributes: an L2 access policy window (persisting accesses) and a priority.
  size_t persist = 0;
  CHECK(cudaDeviceGetLimit(&persist, cudaLimitPersistingL2CacheSize));
  printf("persisting L2 limit %zu\n", persist);
  int maxPersist = 0, maxWindow = 0;
  CHECK(cudaDeviceGetAttribute(&maxPersist, cudaDevAttrMaxPersistingL2CacheSize, 0));
  CHECK(cudaDeviceGetAttribute(&maxWindow, cudaDevAttrMaxAccessPolicyWindowSize, 0));
  printf("max persisting L2 %d, max access policy window %d\n", maxPersist, maxWindow);
  CHECK(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, (size_t)maxPersist / 2));
  CHECK(cudaDeviceGetLimit(&persist, cudaLimitPersistingL2CacheSize));
  printf("persisting L2 limit after set %zu\n", persist);
  cudaStreamAttrValue av = {};
  av.accessPolicyWindow.base_ptr = p;
  av.accessPolicyWindow.num_bytes = 4096;
  av.accessPolicyWindow.hitRatio = 0.5f;
  av.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
  av.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
  CHECK(cudaStreamSetAttribute(plain, cudaStreamAttributeAccessPolicyWindow, &av));
  cudaStreamAttrValue back = {};
  CHECK(cudaStreamGetAttribute(plain, cudaStreamAttributeAccessPolicyWindow, &back));
  printf("window: same base %s, bytes %zu, hitRatio %.2f, hitProp %d, missProp %d\n",
         back.accessPolicyWindow.base_ptr == (void *)p ? "yes" : "no", back.accessPolicyWindow.num_bytes,
         back.accessPolicyWindow.hitRatio, (int)back.accessPolicyWindow.hitProp,
         (int)back.accessPolicyWindow.missProp);
  write_val<<<1, 1, 0, plain>>>(p, 21);
  CHECK_LAUNCH();
  CHECK(cudaStreamSynchronize(plain));
  CHECK(cudaCtxResetPersistingL2Cache());
  cudaStreamAttrValue pr = {};
  CHECK(cudaStreamGetAttribute(hi, cudaStreamAttributePriority, &pr));
  printf("priority attribute of the high stream %d\n", pr.priority);
  for (cudaStream_t x : {hi, lo, nb, plain, clamped}) CHECK(cudaStreamDestroy(x));
  CHECK(cudaFree(p));
  return done();
}
