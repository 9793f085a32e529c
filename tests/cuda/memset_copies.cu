// cudaMemset / cudaMemsetAsync at odd offsets and sizes, device-to-device copies, copies with
// cudaMemcpyDefault (unified addressing), and guard bytes around every write.
#include "common.h"
#include <vector>

static uint64_t fnv(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

int main() {
  init_device();
  const size_t size = (16u << 20) + 4099;
  unsigned char *d, *d2;
  CHECK(cudaMalloc(&d, size));
  CHECK(cudaMalloc(&d2, size));
  std::vector<unsigned char> h(size), ref(size);
  CHECK(cudaMemset(d, 0xab, size));
  std::fill(ref.begin(), ref.end(), 0xab);
  struct Op { size_t off, len; int val; bool async; };
  const Op ops[] = {{0, 1, 1, false},      {1, 2, 2, false},         {3, 5, 3, true},
                    {100, 4096, 4, false}, {4097, 65537, 5, true},   {1 << 20, 1 << 20, 6, false},
                    {size - 7, 7, 7, true}, {12345, 3 << 20, 0, true}, {size / 2, 1, 0xff, false}};
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  for (const Op &o : ops) {
    if (o.async)
      CHECK(cudaMemsetAsync(d + o.off, o.val, o.len, s));
    else
      CHECK(cudaMemset(d + o.off, o.val, o.len));
    memset(ref.data() + o.off, o.val, o.len);
  }
  CHECK(cudaStreamSynchronize(s));
  checkpoint("memsets");
  CHECK(cudaMemcpy(h.data(), d, size, cudaMemcpyDeviceToHost));
  printf("memsets: %s (hash %016llx)\n", memcmp(h.data(), ref.data(), size) ? "differ" : "match",
         (unsigned long long)fnv(h.data(), size));

  // Device-to-device copies, overlapping nothing, at odd offsets.
  CHECK(cudaMemset(d2, 0, size));
  std::vector<unsigned char> ref2(size, 0);
  struct Cp { size_t dst, src, len; };
  const Cp cps[] = {{0, 5, 1000}, {1001, 0, 1 << 20}, {(2u << 20) + 3, 17, 5 << 20}, {size - 1, 0, 1}};
  for (const Cp &c : cps) {
    CHECK(cudaMemcpy(d2 + c.dst, d + c.src, c.len, cudaMemcpyDeviceToDevice));
    memcpy(ref2.data() + c.dst, ref.data() + c.src, c.len);
  }
  CHECK(cudaMemcpyAsync(d2 + 9000000, d + 1, 77777, cudaMemcpyDefault, s));
  memcpy(ref2.data() + 9000000, ref.data() + 1, 77777);
  CHECK(cudaStreamSynchronize(s));
  CHECK(cudaMemcpy(h.data(), d2, size, cudaMemcpyDefault));
  printf("device-to-device: %s (hash %016llx)\n", memcmp(h.data(), ref2.data(), size) ? "differ" : "match",
         (unsigned long long)fnv(h.data(), size));

  // Host-to-device with cudaMemcpyDefault, small sizes (1..64 bytes) at every alignment.
  int bad = 0;
  for (int len = 1; len <= 64; len += 7)
    for (int off = 0; off < 8; off++) {
      unsigned char src[64], back[80];
      for (int i = 0; i < len; i++) src[i] = (unsigned char)(len * 31 + off * 7 + i);
      memset(back, 0xee, sizeof back);
      CHECK(cudaMemset(d, 0xcc, 128));
      CHECK(cudaMemcpy(d + off, src, len, cudaMemcpyDefault));
      CHECK(cudaMemcpy(back, d + (off ? off - 1 : 0), len + 2, cudaMemcpyDeviceToHost));
      int base = off ? 1 : 0;
      if (off && back[0] != 0xcc) bad++;
      if (memcmp(back + base, src, len) != 0) bad++;
      if (back[base + len] != 0xcc) bad++;
    }
  printf("small copies with guard bytes: %d problems\n", bad);

  // Host-to-host through cudaMemcpy.
  char a[32] = "host to host through cudart", b[32] = {0};
  CHECK(cudaMemcpy(b, a, sizeof a, cudaMemcpyHostToHost));
  printf("host to host: %s\n", b);
  CHECK(cudaStreamDestroy(s));
  CHECK(cudaFree(d));
  CHECK(cudaFree(d2));
  return done();
}
