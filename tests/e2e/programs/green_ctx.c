/* Green-context queries on streams of a regular context, as cuBLAS 13.10 (cublasCreate) and cuDNN 9.28
 * (cudnnSetStream) make them: cuStreamGetGreenCtx answers NULL for a created stream, the NULL stream and the
 * per-thread stream; cuStreamGetCtx_v2 answers the regular context and no green context. */
#include "common.h"

int main(void)
{
    CUdevice dev;
    CUcontext ctx = setup(&dev);
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    const struct {
        const char *name;
        CUstream stream;
    } streams[] = {{"created stream", s}, {"NULL stream", NULL}, {"per-thread stream", CU_STREAM_PER_THREAD}};
    for (size_t i = 0; i < sizeof streams / sizeof streams[0]; i++) {
        CUgreenCtx g = (CUgreenCtx)(uintptr_t)1;
        CHECK(cuStreamGetGreenCtx(streams[i].stream, &g));
        printf("cuStreamGetGreenCtx, %s: %s\n", streams[i].name, g == NULL ? "NULL" : "a green context");
    }
    CUcontext c = NULL;
    CUgreenCtx g = (CUgreenCtx)(uintptr_t)1;
    CHECK(cuStreamGetCtx_v2(s, &c, &g));
    printf("cuStreamGetCtx_v2, created stream: context %s, green context %s\n",
           c == ctx ? "the current one" : "another", g == NULL ? "NULL" : "set");
    CHECK(cuStreamDestroy(s));
    teardown(dev);
    printf("done\n");
    return finish();
}
