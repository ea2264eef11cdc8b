#!/usr/bin/env python3
"""numpy/LAPACK thin SVD (gesdd) of the exact matrices a Rust bench used.

Called by benches/federated_sharding.rs in the same run (svd_numpy.py has
fixed sizes and its own random matrices, so it cannot time these):

    python3 benches/svd_numpy_sizes.py DIR N [N ...]

reads DIR/svd_<N>.f32 (N×N little-endian float32, row-major) for each N and
prints the best of 5 timings per size. Skips cleanly (exit 0) when numpy is
not installed, or when a file is missing.
"""
import os
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
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    directory = sys.argv[1]
    print(f"numpy {np.__version__} (LAPACK gesdd, thin SVD, float32, best of 5)")
    for arg in sys.argv[2:]:
        n = int(arg)
        path = os.path.join(directory, f"svd_{n}.f32")
        if not os.path.exists(path):
            print(f"n={n:5d}  skipped: {path} not found")
            continue
        a = np.fromfile(path, dtype="<f4").reshape(n, n)
        repeats = 5 if n <= 1024 else 3
        t = best_of(lambda: np.linalg.svd(a, full_matrices=False), repeats)
        print(f"n={n:5d}  numpy svd {t * 1e3:10.2f} ms")


if __name__ == "__main__":
    main()
