/* IPC between two processes: the parent exports device memory (cuIpcGetMemHandle), an interprocess event and VMM
 * memory as a POSIX file descriptor; a forked child opens them, reads and writes the parent's bytes, and orders a
 * copy after the parent's kernel by waiting on the IPC event. The handles and the descriptor travel over a Unix
 * socket (the descriptor with SCM_RIGHTS). The fork comes before any CUDA call, as CUDA requires. Every line is
 * printed by one process while the other waits for it, so the output order is fixed. */
#define _DEFAULT_SOURCE
#include "common.h"

#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define MEM_BYTES (1u << 20)
#define CHILD_MARK 0x5a

/* What the parent sends the child (the VMM descriptor rides along with it). */
struct exported {
    CUipcMemHandle mem;
    CUipcEventHandle event;
    unsigned long long vmm_size;
};

static void send_msg(int sock, const void *buf, size_t len, int fd)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct msghdr m;
    memset(&m, 0, sizeof m);
    memset(&ctl, 0, sizeof ctl);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (fd >= 0) {
        m.msg_control = ctl.space;
        m.msg_controllen = sizeof ctl.space;
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    fflush(stdout);
    if (sendmsg(sock, &m, 0) != (ssize_t)len) {
        printf("FAIL sendmsg\n");
        exit(1);
    }
}

/* Receives exactly len bytes; *fd (if given) gets a descriptor that came with them, or -1. */
static void recv_msg(int sock, void *buf, size_t len, int *fd)
{
    size_t got = 0;
    if (fd)
        *fd = -1;
    while (got < len) {
        struct iovec iov = {.iov_base = (char *)buf + got, .iov_len = len - got};
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(sizeof(int))];
        } ctl;
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = ctl.space;
        m.msg_controllen = sizeof ctl.space;
        ssize_t n = recvmsg(sock, &m, 0);
        if (n <= 0) {
            printf("FAIL recvmsg\n");
            exit(1);
        }
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        if (c && c->cmsg_type == SCM_RIGHTS && fd)
            memcpy(fd, CMSG_DATA(c), sizeof(int));
        got += (size_t)n;
    }
}

static CUmemAllocationProp posix_fd_prop(CUdevice dev)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return prop;
}

/* Reserves and maps `size` bytes of `h`, read-write for `dev`. */
static CUdeviceptr map_rw(CUmemGenericAllocationHandle h, size_t size, CUdevice dev)
{
    CUdeviceptr va = 0;
    CHECK(cuMemAddressReserve(&va, size, 0, 0, 0));
    CHECK(cuMemMap(va, size, 0, h, 0));
    CUmemAccessDesc access;
    memset(&access, 0, sizeof access);
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = dev;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CHECK(cuMemSetAccess(va, size, &access, 1));
    return va;
}

static int child(int sock)
{
    struct exported x;
    int vmm_fd = -1;
    recv_msg(sock, &x, sizeof x, &vmm_fd);
    CUdevice dev;
    setup(&dev);
    printf("child: received the handles and a descriptor: %s\n", vmm_fd >= 0 ? "yes" : "no");

    CUdeviceptr d = 0, again = 0;
    CHECK(cuIpcOpenMemHandle(&d, x.mem, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    unsigned char *want = xmalloc(MEM_BYTES), *got = xmalloc(MEM_BYTES);
    fill_pattern(want, MEM_BYTES, 7);
    CHECK(cuMemcpyDtoH(got, d, MEM_BYTES));
    expect_bytes(got, want, MEM_BYTES, "child: reads the parent's bytes");
    CHECK(cuIpcOpenMemHandle(&again, x.mem, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    expect(again == d, "child: a second open returns the same address");
    CUdeviceptr start = 0;
    size_t size = 0;
    CHECK(cuMemGetAddressRange(&start, &size, d + 4096));
    expect(start == d && size == MEM_BYTES, "child: the address range is the whole allocation");
    unsigned int mtype = 0;
    CHECK(cuPointerGetAttribute(&mtype, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, d));
    expect(mtype == CU_MEMORYTYPE_DEVICE, "child: the pointer is device memory");
    CHECK(cuMemsetD8(d + 4096, CHILD_MARK, 4096));
    CHECK(cuIpcCloseMemHandle(again));
    CHECK(cuMemcpyDtoH(got, d, 16));
    expect_bytes(got, want, 16, "child: still mapped after one of two closes");

    CUmemGenericAllocationHandle imported;
    CHECK(cuMemImportFromShareableHandle(&imported, (void *)(uintptr_t)vmm_fd,
                                         CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    close(vmm_fd);
    CUmemAllocationProp prop;
    CHECK(cuMemGetAllocationPropertiesFromHandle(&prop, imported));
    /* Driver 580 reports the memory's type and location for an imported handle, not the handle types the
     * exporter requested (requestedHandleTypes reads 0 there). */
    expect(prop.type == CU_MEM_ALLOCATION_TYPE_PINNED && prop.location.type == CU_MEM_LOCATION_TYPE_DEVICE,
           "child: the imported memory's properties are the parent's");
    CUdeviceptr v = map_rw(imported, (size_t)x.vmm_size, dev);
    fill_pattern(want, 4096, 8);
    CHECK(cuMemcpyDtoH(got, v, 4096));
    expect_bytes(got, want, 4096, "child: reads the parent's VMM memory");
    CHECK(cuMemsetD8(v + 8192, CHILD_MARK, 4096));

    CUevent ev;
    CHECK(cuIpcOpenEventHandle(&ev, x.event));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CHECK(cuCtxSynchronize());
    char ready = 'r';
    send_msg(sock, &ready, 1, -1);

    /* The parent's kernel writes the memory, then the parent records the event and says so. */
    char recorded;
    recv_msg(sock, &recorded, 1, NULL);
    CHECK(cuStreamWaitEvent(s, ev, 0));
    unsigned int *values = (unsigned int *)got;
    CHECK(cuMemcpyDtoHAsync(values, d, 1024 * sizeof(unsigned int), s));
    CHECK(cuStreamSynchronize(s));
    int ok = 1;
    for (unsigned int i = 0; i < 1024; i++)
        ok &= values[i] == 0xc0ffee00u + i;
    result(ok, "child: a copy after the IPC event sees the parent's kernel");
    ERROR_CASE("child: query the opened event", cuEventQuery(ev));
    ERROR_CASE("child: elapsed time of the opened event", cuEventElapsedTime(&(float){0}, ev, ev));

    CHECK(cuEventDestroy(ev));
    CHECK(cuStreamDestroy(s));
    CHECK(cuMemUnmap(v, (size_t)x.vmm_size));
    CHECK(cuMemAddressFree(v, (size_t)x.vmm_size));
    CHECK(cuMemRelease(imported));
    CHECK(cuIpcCloseMemHandle(d));
    teardown(dev);
    free(want);
    free(got);
    char done = 'd';
    send_msg(sock, &done, 1, -1);
    return finish();
}

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        printf("FAIL socketpair\n");
        return 1;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        printf("FAIL fork\n");
        return 1;
    }
    if (pid == 0) {
        close(sv[0]);
        exit(child(sv[1]));
    }
    close(sv[1]);
    int sock = sv[0];

    CUdevice dev;
    setup(&dev);
    int ipc_events = 0, posix_fd = 0;
    CHECK(cuDeviceGetAttribute(&ipc_events, CU_DEVICE_ATTRIBUTE_IPC_EVENT_SUPPORTED, dev));
    CHECK(cuDeviceGetAttribute(&posix_fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev));
    printf("ipc events supported: %d, posix descriptors supported: %d\n", ipc_events, posix_fd);

    CUmodule mod = load_kernels();
    CUfunction fill = get_function(mod, "fill_u32"), spin = get_function(mod, "spin");
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, MEM_BYTES));
    unsigned char *buf = xmalloc(MEM_BYTES);
    fill_pattern(buf, MEM_BYTES, 7);
    CHECK(cuMemcpyHtoD(d, buf, MEM_BYTES));

    struct exported x;
    memset(&x, 0, sizeof x);
    CHECK(cuIpcGetMemHandle(&x.mem, d));
    CUipcMemHandle same;
    CHECK(cuIpcGetMemHandle(&same, d));
    expect(memcmp(&same, &x.mem, sizeof same) == 0, "the same allocation gives the same handle");
    CUdeviceptr self = 0;
    ERROR_CASE("open in the exporting process",
               cuIpcOpenMemHandle(&self, x.mem, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));

    CUevent ev;
    CHECK(cuEventCreate(&ev, CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING));
    CHECK(cuIpcGetEventHandle(&x.event, ev));

    CUmemAllocationProp prop = posix_fd_prop(dev);
    size_t gran = 0;
    CHECK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CUmemGenericAllocationHandle h;
    CHECK(cuMemCreate(&h, gran, &prop, 0));
    CUdeviceptr v = map_rw(h, gran, dev);
    fill_pattern(buf, 4096, 8);
    CHECK(cuMemcpyHtoD(v, buf, 4096));
    int fd = -1;
    CHECK(cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    expect(fd >= 0, "the shareable handle is a file descriptor");
    x.vmm_size = gran;
    send_msg(sock, &x, sizeof x, fd);
    close(fd);

    char ready;
    recv_msg(sock, &ready, 1, NULL);
    unsigned char *got = xmalloc(4096), *marks = xmalloc(4096);
    memset(marks, CHILD_MARK, 4096);
    CHECK(cuMemcpyDtoH(got, d + 4096, 4096));
    expect_bytes(got, marks, 4096, "the parent reads what the child wrote");
    CHECK(cuMemcpyDtoH(got, v + 8192, 4096));
    expect_bytes(got, marks, 4096, "the parent reads what the child wrote into the VMM memory");

    /* A kernel of about 200 ms, then one that writes the shared memory, then the event: the child waits on it. */
    int clock_khz = 0;
    CHECK(cuDeviceGetAttribute(&clock_khz, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, dev));
    CUdeviceptr flag;
    CHECK(cuMemAlloc(&flag, 4));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    unsigned long long cycles = (unsigned long long)clock_khz * 200ull;
    void *spin_args[] = {&cycles, &flag};
    CHECK(cuLaunchKernel(spin, 1, 1, 1, 32, 1, 1, 0, s, spin_args, NULL));
    unsigned int value = 0xc0ffee00u, n = 1024;
    void *fill_args[] = {&d, &value, &n};
    CHECK(cuLaunchKernel(fill, 4, 1, 1, 256, 1, 1, 0, s, fill_args, NULL));
    CHECK(cuEventRecord(ev, s));
    char recorded = 'e';
    send_msg(sock, &recorded, 1, -1);

    char done;
    recv_msg(sock, &done, 1, NULL);
    int status = -1;
    waitpid(pid, &status, 0);
    printf("child exit status: %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);

    CHECK(cuStreamSynchronize(s));
    CHECK(cuEventDestroy(ev));
    CHECK(cuStreamDestroy(s));
    CHECK(cuMemUnmap(v, gran));
    CHECK(cuMemAddressFree(v, gran));
    CHECK(cuMemRelease(h));
    CHECK(cuMemFree(flag));
    CHECK(cuMemFree(d));
    CHECK(cuModuleUnload(mod));
    teardown(dev);
    free(buf);
    free(got);
    free(marks);
    printf("done\n");
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        g_failures++;
    return finish();
}
