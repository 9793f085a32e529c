// Atomics: atomicAdd (int, unsigned long long, float with exact values, double), atomicSub,
// atomicMin/Max, atomicAnd/Or/Xor, atomicExch, atomicCAS loop, atomicInc/Dec wrap-around, a
// shared-memory histogram, and block-scope vs device-scope.
#include "common.h"

struct Out {
  int add, sub, mn, mx, andv, orv, xorv, exch_sum;
  unsigned inc, dec;
  unsigned long long ull;
  float fadd;
  double dadd;
  int cas_mul;
};

__global__ void all_atomics(Out *o, int *exch_slot) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&o->add, t);
  atomicSub(&o->sub, 2);
  atomicMin(&o->mn, 1000 - t);
  atomicMax(&o->mx, t * 3);
  atomicAnd(&o->andv, ~(1 << (t % 31)));
  atomicOr(&o->orv, 1 << (t % 20));
  atomicXor(&o->xorv, t);
  atomicInc(&o->inc, 99);   // wraps to 0 after 99
  atomicDec(&o->dec, 1000); // from 10: wraps to 1000 after 0
  atomicAdd(&o->ull, 1ull << 33);
  atomicAdd(&o->fadd, 0.5f);
  atomicAdd(&o->dadd, 0.25);
  int old = atomicExch(exch_slot, t);
  atomicAdd(&o->exch_sum, old);
  // CAS loop: multiply by 3 modulo 1000003, once per thread of block 0 only.
  if (blockIdx.x == 0) {
    int cur = o->cas_mul, assumed;
    do {
      assumed = cur;
      cur = atomicCAS(&o->cas_mul, assumed, (int)((assumed * 3LL) % 1000003));
    } while (cur != assumed);
  }
}

__global__ void histogram(const unsigned char *data, int n, unsigned *bins) {
  __shared__ unsigned local[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) local[i] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    atomicAdd_block(&local[data[i]], 1u);
  __syncthreads();
  for (int i = threadIdx.x; i < 256; i += blockDim.x) atomicAdd(&bins[i], local[i]);
}

int main() {
  init_device();
  const int blocks = 64, threads = 256, T = blocks * threads;
  Out init = {};
  init.mn = 1 << 30;
  init.mx = -1;
  init.andv = -1;
  init.inc = 0;
  init.dec = 10;
  init.cas_mul = 1;
  Out *d;
  int *slot;
  CHECK(cudaMalloc(&d, sizeof(Out)));
  CHECK(cudaMalloc(&slot, sizeof(int)));
  CHECK(cudaMemcpy(d, &init, sizeof init, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(slot, 0, sizeof(int)));
  all_atomics<<<blocks, threads>>>(d, slot);
  CHECK_LAUNCH();
  checkpoint("launch");
  Out o;
  int last;
  CHECK(cudaMemcpy(&o, d, sizeof o, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(&last, slot, sizeof last, cudaMemcpyDeviceToHost));
  long long sumT = (long long)T * (T - 1) / 2;
  int xorv = 0;
  for (int t = 0; t < T; t++) xorv ^= t;
  long long cas = 1;
  for (int i = 0; i < threads; i++) cas = cas * 3 % 1000003;
  printf("result: add %d (want %d)\n", o.add, (int)sumT);
  printf("result: sub %d min %d max %d\n", o.sub, o.mn, o.mx);
  printf("result: and %#x or %#x xor %d (want %d)\n", o.andv, o.orv, o.xorv, xorv);
  printf("result: inc %u dec %u\n", o.inc, o.dec);
  printf("result: ull %llu float %.1f double %.2f\n", o.ull, o.fadd, o.dadd);
  printf("result: exchange: sum of old values + last == sum of ids: %s\n",
         (long long)o.exch_sum + last == sumT ? "yes" : "no");
  printf("result: cas %d (want %lld)\n", o.cas_mul, cas);
  // inc: T increments modulo 100 -> T % 100; dec from 10 with wrap at 1000: after 11 steps 1000.
  unsigned dec = 10;
  for (int t = 0; t < T; t++) dec = (dec == 0 || dec > 1000) ? 1000 : dec - 1;
  bool ok = o.add == (int)sumT && o.sub == -2 * T && o.mn == 1000 - (T - 1) && o.mx == 3 * (T - 1) &&
            o.andv == (int)0x80000000u && o.orv == (1 << 20) - 1 && o.xorv == xorv && o.inc == (unsigned)(T % 100) &&
            o.dec == dec && o.ull == (unsigned long long)T << 33 && o.fadd == 0.5f * T && o.dadd == 0.25 * T &&
            o.cas_mul == cas && (long long)o.exch_sum + last == sumT;
  result("atomics", ok);

  const int n = 1 << 22;
  unsigned char *data;
  unsigned *bins;
  CHECK(cudaMalloc(&data, n));
  CHECK(cudaMalloc(&bins, 256 * sizeof(unsigned)));
  CHECK(cudaMemset(bins, 0, 256 * sizeof(unsigned)));
  unsigned char *h = (unsigned char *)malloc(n);
  unsigned want[256] = {0};
  uint32_t s = 7;
  for (int i = 0; i < n; i++) {
    h[i] = (unsigned char)(vt_rand(s) % 251);
    want[h[i]]++;
  }
  CHECK(cudaMemcpy(data, h, n, cudaMemcpyHostToDevice));
  histogram<<<120, 512>>>(data, n, bins);
  CHECK_LAUNCH();
  unsigned got[256];
  CHECK(cudaMemcpy(got, bins, sizeof got, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int i = 0; i < 256; i++) bad += got[i] != want[i];
  printf("result: histogram bins wrong %d, bin[0]=%u bin[250]=%u bin[255]=%u\n", bad, got[0], got[250], got[255]);
  result("histogram", bad == 0);
  free(h);
  CHECK(cudaFree(d));
  CHECK(cudaFree(slot));
  CHECK(cudaFree(data));
  CHECK(cudaFree(bins));
  return done();
}
