// cudaGetDeviceProperties and cudaDeviceGetAttribute: the deterministic fields of the GPU (the
// same on every run on this GPU model and driver), plus versions and counts. Facts of this
// particular board (UUID, PCI location) are printed as device: lines.
#include "common.h"

int main() {
  int count = 0, drv = 0, rt = 0;
  CHECK(cudaGetDeviceCount(&count));
  CHECK(cudaDriverGetVersion(&drv));
  CHECK(cudaRuntimeGetVersion(&rt));
  printf("device count %s\n", count >= 1 ? ">= 1" : "0");
  printf("device: device count %d\n", count);
  printf("device: driver version %d\n", drv);
  printf("runtime version %d\n", rt);
  init_device();
  cudaDeviceProp p;
  CHECK(cudaGetDeviceProperties(&p, 0));
  printf("name %s\n", p.name);
  printf("compute capability %d.%d\n", p.major, p.minor);
  printf("device: totalGlobalMem %zu\n", p.totalGlobalMem);
  printf("sharedMemPerBlock %zu sharedMemPerBlockOptin %zu sharedMemPerMultiprocessor %zu\n", p.sharedMemPerBlock,
         p.sharedMemPerBlockOptin, p.sharedMemPerMultiprocessor);
  printf("regsPerBlock %d regsPerMultiprocessor %d warpSize %d\n", p.regsPerBlock, p.regsPerMultiprocessor,
         p.warpSize);
  printf("memPitch %zu maxThreadsPerBlock %d maxThreadsPerMultiProcessor %d\n", p.memPitch, p.maxThreadsPerBlock,
         p.maxThreadsPerMultiProcessor);
  printf("maxThreadsDim %d %d %d maxGridSize %d %d %d\n", p.maxThreadsDim[0], p.maxThreadsDim[1],
         p.maxThreadsDim[2], p.maxGridSize[0], p.maxGridSize[1], p.maxGridSize[2]);
  printf("totalConstMem %zu textureAlignment %zu texturePitchAlignment %zu\n", p.totalConstMem, p.textureAlignment,
         p.texturePitchAlignment);
  printf("multiProcessorCount %d l2CacheSize %d persistingL2CacheMaxSize %d\n", p.multiProcessorCount,
         p.l2CacheSize, p.persistingL2CacheMaxSize);
  printf("memoryBusWidth %d integrated %d canMapHostMemory %d\n", p.memoryBusWidth, p.integrated,
         p.canMapHostMemory);
  printf("maxTexture1D %d maxTexture2D %d %d maxTexture3D %d %d %d\n", p.maxTexture1D, p.maxTexture2D[0],
         p.maxTexture2D[1], p.maxTexture3D[0], p.maxTexture3D[1], p.maxTexture3D[2]);
  printf("surfaceAlignment %zu concurrentKernels %d ECCEnabled %d asyncEngineCount %d\n", p.surfaceAlignment,
         p.concurrentKernels, p.ECCEnabled, p.asyncEngineCount);
  printf("unifiedAddressing %d managedMemory %d concurrentManagedAccess %d pageableMemoryAccess %d\n",
         p.unifiedAddressing, p.managedMemory, p.concurrentManagedAccess, p.pageableMemoryAccess);
  printf("isMultiGpuBoard %d multiGpuBoardGroupID %d\n", p.isMultiGpuBoard, p.multiGpuBoardGroupID);
  printf("streamPrioritiesSupported %d globalL1CacheSupported %d localL1CacheSupported %d\n",
         p.streamPrioritiesSupported, p.globalL1CacheSupported, p.localL1CacheSupported);
  printf("maxBlocksPerMultiProcessor %d accessPolicyMaxWindowSize %d reservedSharedMemPerBlock %zu\n",
         p.maxBlocksPerMultiProcessor, p.accessPolicyMaxWindowSize, p.reservedSharedMemPerBlock);
  printf("cooperativeLaunch %d hostNativeAtomicSupported %d directManagedMemAccessFromHost %d\n",
         p.cooperativeLaunch, p.hostNativeAtomicSupported, p.directManagedMemAccessFromHost);
  printf("computePreemptionSupported %d canUseHostPointerForRegisteredMem %d\n", p.computePreemptionSupported,
         p.canUseHostPointerForRegisteredMem);
  printf("hostRegisterSupported %d sparseCudaArraySupported %d hostRegisterReadOnlySupported %d\n",
         p.hostRegisterSupported, p.sparseCudaArraySupported, p.hostRegisterReadOnlySupported);
  printf("timelineSemaphoreInteropSupported %d memoryPoolsSupported %d gpuDirectRDMASupported %d\n",
         p.timelineSemaphoreInteropSupported, p.memoryPoolsSupported, p.gpuDirectRDMASupported);
  printf("memoryPoolSupportedHandleTypes %#x deferredMappingCudaArraySupported %d ipcEventSupported %d\n",
         p.memoryPoolSupportedHandleTypes, p.deferredMappingCudaArraySupported, p.ipcEventSupported);
  printf("clusterLaunch %d unifiedFunctionPointers %d\n", p.clusterLaunch, p.unifiedFunctionPointers);
  printf("tccDriver %d\n", p.tccDriver);
  char uuid[64];
  int k = 0;
  for (int i = 0; i < 16; i++) k += snprintf(uuid + k, sizeof uuid - k, "%02x", (unsigned char)p.uuid.bytes[i]);
  printf("device: uuid %s\n", uuid);
  printf("device: pci %04x:%02x:%02x\n", p.pciDomainID, p.pciBusID, p.pciDeviceID);

  // Attributes that cudaGetDeviceProperties no longer carries in CUDA 13.
  struct { const char *name; cudaDeviceAttr a; } attrs[] = {
      {"ClockRate", cudaDevAttrClockRate},
      {"MemoryClockRate", cudaDevAttrMemoryClockRate},
      {"ComputeMode", cudaDevAttrComputeMode},
      {"KernelExecTimeout", cudaDevAttrKernelExecTimeout},
      {"GpuOverlap", cudaDevAttrGpuOverlap},
      {"SingleToDoublePrecisionPerfRatio", cudaDevAttrSingleToDoublePrecisionPerfRatio},
      {"MaxSharedMemoryPerBlockOptin", cudaDevAttrMaxSharedMemoryPerBlockOptin},
      {"ComputeCapabilityMajor", cudaDevAttrComputeCapabilityMajor},
      {"ComputeCapabilityMinor", cudaDevAttrComputeCapabilityMinor},
      {"MaxRegistersPerBlock", cudaDevAttrMaxRegistersPerBlock},
      {"MemoryPoolsSupported", cudaDevAttrMemoryPoolsSupported},
      {"ClusterLaunch", cudaDevAttrClusterLaunch},
  };
  for (auto &a : attrs) {
    int v = -1;
    cudaError_t e = cudaDeviceGetAttribute(&v, a.a, 0);
    if (e == cudaSuccess)
      printf("attribute %s %d\n", a.name, v);
    else
      printf("attribute %s: %s\n", a.name, vt_name(e));
  }
  ERROR_CASE("cudaGetDeviceProperties of device 64", cudaGetDeviceProperties(&p, 64));
  ERROR_CASE("cudaDeviceGetAttribute of device -1", cudaDeviceGetAttribute(&k, cudaDevAttrClockRate, -1));
  CHECK(cudaGetLastError());
  int dev = -1;
  CHECK(cudaGetDevice(&dev));
  printf("current device %d\n", dev);
  char bus[32];
  CHECK(cudaDeviceGetPCIBusId(bus, sizeof bus, 0));
  printf("device: bus id %s\n", bus);
  int byBus = -1;
  CHECK(cudaDeviceGetByPCIBusId(&byBus, bus));
  printf("device by bus id %d\n", byBus);
  return done();
}
