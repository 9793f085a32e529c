/* The driver's answers to IPC calls that cuda.h does not pin down, to be run natively on a GPU machine and through
 * vGPU (emulated or real backend), and the two outputs compared: every line is "<case>: <CUresult name or value>".
 * vGPU chose its answers from this list where no native run was available (cuda-exec/src/emulated/ipc.rs,
 * cuda-exec/src/registry.rs, client-shim/src/api/ipc.rs); a difference here is a line to fix there.
 *
 *   gcc -std=c11 -O1 -I .cuda/include -I tests/e2e/programs -o /tmp/ipc_probe tools/probes/ipc_probe.c \
 *       -L <dir with libcuda.so.1> -l:libcuda.so.1
 *   /tmp/ipc_probe > native.txt                                  # natively
 *   vgpu run --server tcp://127.0.0.1:7070 -- /tmp/ipc_probe > vgpu.txt && diff native.txt vgpu.txt
 *
 * The child forks before any CUDA call and opens what the parent sends it over a socket pair. */
#define _DEFAULT_SOURCE
#include "common.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIZE (1u << 20)

struct handles {
    CUipcMemHandle mem;     /* a live allocation */
    CUipcMemHandle freed;   /* exported, then freed before the child opens it */
    CUipcMemHandle held;    /* opened by the child, then freed by the parent while open */
    CUipcEventHandle event; /* an interprocess event */
};

static void say(const char *what, CUresult r)
{
    printf("%s: %s\n", what, err_name(r));
}

static void xfer(int sock, void *buf, size_t len, int sending)
{
    size_t done = 0;
    fflush(stdout);
    while (done < len) {
        ssize_t n = sending ? write(sock, (char *)buf + done, len - done) : read(sock, (char *)buf + done, len - done);
        if (n <= 0) {
            printf("FAIL socket\n");
            exit(1);
        }
        done += (size_t)n;
    }
}

static int child(int sock)
{
    struct handles h;
    xfer(sock, &h, sizeof h, 0);
    CUdeviceptr d = 0;
    say("open without a context (before cuInit)", cuIpcOpenMemHandle(&d, h.mem, 1));
    CUdevice dev;
    CUcontext ctx;
    CHECK(cuInit(0));
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    say("open without a current context", cuIpcOpenMemHandle(&d, h.mem, 1));
    CHECK(cuCtxSetCurrent(ctx));

    CUipcMemHandle zero;
    memset(&zero, 0, sizeof zero);
    say("open a zeroed handle", cuIpcOpenMemHandle(&d, zero, 1));
    CUipcMemHandle bent = h.mem;
    for (int i = 0; i < 64; i += 8)
        bent.reserved[i] ^= 0x5a;
    say("open a corrupted handle", cuIpcOpenMemHandle(&d, bent, 1));
    say("open with flags 2", cuIpcOpenMemHandle(&d, h.mem, 2));
    say("open the freed allocation's handle", cuIpcOpenMemHandle(&d, h.freed, 1));
    CUresult r = cuIpcOpenMemHandle(&d, h.mem, 0);
    say("open with flags 0", r);
    if (r == CUDA_SUCCESS)
        say("close it", cuIpcCloseMemHandle(d));
    say("close it again", cuIpcCloseMemHandle(d));
    CUdeviceptr own;
    CHECK(cuMemAlloc(&own, 4096));
    say("close a cuMemAlloc pointer", cuIpcCloseMemHandle(own));

    CHECK(cuIpcOpenMemHandle(&d, h.mem, 1));
    say("cuMemFree of an opened pointer", cuMemFree(d));
    say("export the opened memory again", cuIpcGetMemHandle(&bent, d));
    unsigned int attr = 0;
    say("pointer attribute IS_LEGACY_CUDA_IPC_CAPABLE of opened memory",
        cuPointerGetAttribute(&attr, CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE, d));
    printf("  value: %u\n", attr);

    CUdeviceptr held = 0;
    CHECK(cuIpcOpenMemHandle(&held, h.held, 1));
    char go = 'g';
    xfer(sock, &go, 1, 1); /* the parent frees the held allocation now */
    xfer(sock, &go, 1, 0);
    unsigned char bytes[16], want[16];
    fill_pattern(want, sizeof want, 3);
    r = cuMemcpyDtoH(bytes, held, sizeof bytes);
    say("read memory its exporter freed while open here", r);
    if (r == CUDA_SUCCESS)
        printf("  contents: %s\n", memcmp(bytes, want, sizeof bytes) == 0 ? "unchanged" : "changed");
    say("close it", cuIpcCloseMemHandle(held));

    CUipcEventHandle ezero;
    memset(&ezero, 0, sizeof ezero);
    CUevent ev;
    say("open a zeroed event handle", cuIpcOpenEventHandle(&ev, ezero));
    r = cuIpcOpenEventHandle(&ev, h.event);
    say("open the event handle", r);
    if (r == CUDA_SUCCESS) {
        say("query it", cuEventQuery(ev));
        say("destroy it", cuEventDestroy(ev));
    }

    int devnull = open("/dev/null", O_RDONLY);
    CUmemGenericAllocationHandle imp;
    say("import /dev/null as a shareable handle",
        cuMemImportFromShareableHandle(&imp, (void *)(uintptr_t)devnull, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    say("import descriptor -1",
        cuMemImportFromShareableHandle(&imp, (void *)(uintptr_t)-1, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    close(devnull);
    CHECK(cuMemFree(own));
    CHECK(cuIpcCloseMemHandle(d));
    return 0;
}

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return 1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        exit(child(sv[1]));
    }
    close(sv[1]);
    CUdevice dev;
    setup(&dev);
    struct handles h;
    CUdeviceptr d, freed, held, inner_handle_base;
    CHECK(cuMemAlloc(&d, SIZE));
    CHECK(cuMemAlloc(&freed, SIZE));
    CHECK(cuMemAlloc(&held, SIZE));
    unsigned char pattern[16];
    fill_pattern(pattern, sizeof pattern, 3);
    CHECK(cuMemcpyHtoD(held, pattern, sizeof pattern));
    CHECK(cuIpcGetMemHandle(&h.mem, d));
    CHECK(cuIpcGetMemHandle(&h.freed, freed));
    CHECK(cuIpcGetMemHandle(&h.held, held));
    CHECK(cuMemFree(freed));

    CUipcMemHandle other;
    say("export an interior pointer", cuIpcGetMemHandle(&other, d + 4096));
    printf("  same bytes as the base's: %s\n", memcmp(&other, &h.mem, sizeof other) == 0 ? "yes" : "no");
    CHECK(cuIpcGetMemHandle(&other, d));
    printf("repeated export gives the same bytes: %s\n", memcmp(&other, &h.mem, sizeof other) == 0 ? "yes" : "no");
    inner_handle_base = 0;
    say("open in the exporting process", cuIpcOpenMemHandle(&inner_handle_base, h.mem, 1));
    CUdeviceptr managed;
    CHECK(cuMemAllocManaged(&managed, 4096, CU_MEM_ATTACH_GLOBAL));
    say("export managed memory", cuIpcGetMemHandle(&other, managed));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CUdeviceptr pooled;
    CHECK(cuMemAllocAsync(&pooled, 4096, s));
    CHECK(cuStreamSynchronize(s));
    say("export stream-ordered (pool) memory", cuIpcGetMemHandle(&other, pooled));
    say("export a host pointer", cuIpcGetMemHandle(&other, (CUdeviceptr)(uintptr_t)&other));

    CUevent plain, timed, ev;
    CUipcEventHandle eh;
    CHECK(cuEventCreate(&plain, CU_EVENT_DEFAULT));
    /* Driver 580 refuses an interprocess event that keeps timing when it is created. */
    say("create an interprocess event with timing", cuEventCreate(&timed, CU_EVENT_INTERPROCESS));
    say("event handle of a plain event", cuIpcGetEventHandle(&eh, plain));
    CHECK(cuEventCreate(&ev, CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING));
    CHECK(cuIpcGetEventHandle(&h.event, ev));
    CUevent self_ev;
    say("open an event handle in the exporting process", cuIpcOpenEventHandle(&self_ev, h.event));

    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    size_t gran = 0;
    CHECK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CUmemGenericAllocationHandle plain_vmm, fd_vmm, back;
    CHECK(cuMemCreate(&plain_vmm, gran, &prop, 0));
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CHECK(cuMemCreate(&fd_vmm, gran, &prop, 0));
    int fd = -1;
    say("export VMM memory created without the POSIX type",
        cuMemExportToShareableHandle(&fd, plain_vmm, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    say("export VMM memory as a fabric handle",
        cuMemExportToShareableHandle(&fd, fd_vmm, CU_MEM_HANDLE_TYPE_FABRIC, 0));
    say("export VMM memory with flags 1",
        cuMemExportToShareableHandle(&fd, fd_vmm, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 1));
    CHECK(cuMemExportToShareableHandle(&fd, fd_vmm, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    say("import it in the exporting process",
        cuMemImportFromShareableHandle(&back, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    printf("  the same handle: %s\n", back == fd_vmm ? "yes" : "no");
    CUdeviceptr va;
    CHECK(cuMemAddressReserve(&va, gran, 0, 0, 0));
    CHECK(cuMemMap(va, gran, 0, fd_vmm, 0));
    say("cuIpcGetMemHandle of VMM memory", cuIpcGetMemHandle(&other, va));

    xfer(sv[0], &h, sizeof h, 1);
    char go;
    xfer(sv[0], &go, 1, 0);
    CHECK(cuMemFree(held));
    xfer(sv[0], &go, 1, 1);
    int status = -1;
    waitpid(pid, &status, 0);
    printf("child exit status: %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
