/* Dumps the driver's cuGetErrorName/cuGetErrorString for every code 0..1100, and the exported cu* symbol set
 * can be compared with `nm -D`. Run natively on a GPU machine; its output feeds dataplane's error strings. */
#include <cuda.h>
#include <stdio.h>
int main(void) {
    for (int c = 0; c <= 1100; c++) {
        const char *name = NULL, *text = NULL;
        CUresult rn = cuGetErrorName((CUresult)c, &name);
        CUresult rs = cuGetErrorString((CUresult)c, &text);
        if (rn == CUDA_SUCCESS || rs == CUDA_SUCCESS)
            printf("%d\t%s\t%s\n", c, name ? name : "", text ? text : "");
    }
    return 0;
}
