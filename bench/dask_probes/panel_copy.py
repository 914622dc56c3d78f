"""What one output block of xdev.dask's matmul costs with one BLAS thread (1024^2 blocks, K of
4 blocks): copying its K blocks into the panels, the product over the panels, and, for
comparison, four products into a reused buffer and their sums. Medians of 15 calls, each
twice. Quoted in docs/dask.md.

    python bench/dask_probes/panel_copy.py
"""
import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"  # before NumPy loads OpenBLAS, as in a Dask worker

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

rng = np.random.default_rng(0)
A = [rng.random((1024, 1024), dtype=np.float32) for _ in range(4)]
B = [rng.random((1024, 1024), dtype=np.float32) for _ in range(4)]
pa, pb = np.empty((1024, 4096), np.float32), np.empty((4096, 1024), np.float32)
tmp = np.empty((1024, 1024), np.float32)


def copy_panels():
    np.concatenate(A, axis=1, out=pa)
    np.concatenate(B, axis=0, out=pb)


def product_over_panels():
    return pa @ pb


def panels_then_product():
    copy_panels()
    return pa @ pb


def four_products_summed():
    acc = A[0] @ B[0]
    for k in range(1, 4):
        np.matmul(A[k], B[k], out=tmp)
        acc += tmp
    return acc


if __name__ == "__main__":
    copy_panels()
    for fn in (copy_panels, product_over_panels, panels_then_product, four_products_summed) * 2:
        t = []
        for _ in range(15):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        print(f"{fn.__name__:22s} {statistics.median(t) * 1e3:6.1f} ms")
