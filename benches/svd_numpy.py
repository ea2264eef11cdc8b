#!/usr/bin/env python3
"""Reference timings for docs/benchmarks.md: numpy's LAPACK SVD (gesdd) and
QR on the same sizes and value range as benches/core_linalg.rs.

Run:  python3 benches/svd_numpy.py
Skips cleanly (exit 0) when numpy is not installed. OpenBLAS reads
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE; to measure its fastest kernel, unset both
for this command only:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 benches/svd_numpy.py
"""
import sys
import time

try:
    import numpy as np
except ImportError:
    print("numpy is not installed: skipping the numpy SVD reference")
    sys.exit(0)


def best_of(f, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}")
    for n in (256, 1024):
        a = rng.uniform(-1.0, 1.0, size=(n, n)).astype(np.float32)
        svd = best_of(lambda: np.linalg.svd(a, full_matrices=False), 5)
        qr = best_of(lambda: np.linalg.qr(a, mode="reduced"), 5)
        b = rng.uniform(-1.0, 1.0, size=(n, n)).astype(np.float32)
        mm = best_of(lambda: a @ b, 20)
        print(f"n={n:5d}  svd {svd * 1e3:9.2f} ms   qr {qr * 1e3:8.2f} ms   "
              f"matmul {mm * 1e3:8.3f} ms ({2 * n ** 3 / mm / 1e9:6.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
