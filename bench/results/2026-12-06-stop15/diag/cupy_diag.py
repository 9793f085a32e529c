"""Stop 15 diagnosis of G11: CuPy's dense-to-CSR through cuSPARSE gives nnz 1 through vGPU."""
import sys

import cupy as cp
import numpy as np


def mark(msg):
    print(f"@@ {msg}", file=sys.stderr, flush=True)
    print(msg, flush=True)


import cupyx.scipy.sparse as sparse  # noqa: E402
from cupyx import cusparse  # noqa: E402

g = np.random.default_rng(6)
dense = g.standard_normal((512, 512)).astype(np.float32)
dense[g.random((512, 512)) > 0.02] = 0
d = cp.asarray(dense)
cp.cuda.Device().synchronize()
mark(f"host nnz {int((dense != 0).sum())}; device count_nonzero {int(cp.count_nonzero(d))}")
mark("denseToSparse begins")
csr = cusparse.denseToSparse(d, format="csr")
cp.cuda.Device().synchronize()
mark(f"denseToSparse nnz {csr.nnz}; indptr[-1] on device {int(csr.indptr[-1])}; indptr[:4] {csr.indptr[:4].get()}")
mark("legacy/int path begins")
ints = sparse.csr_matrix(d.astype(cp.int32))
mark(f"int32 custom-kernel path nnz {ints.nnz}")
mark(f"cusparse version {cusparse.getVersion() if hasattr(cusparse, 'getVersion') else '?'}")
