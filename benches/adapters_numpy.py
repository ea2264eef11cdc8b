#!/usr/bin/env python3
"""numpy anchors for the adapter benches (benches/adapters.rs runs this after
its criterion groups, so both land in one run; docs/benchmarks.md).

- SHiRA switch at n x n, 1 % density: the two fancy-index scatters a switch
  between two sparse adapters does (write the old adapter's saved originals
  back, write the new adapter's prepared values), on the flat weight.
- LoRA fuse at n x n, rank 16: `W + s * (B @ A)` (allocating, as users write
  it) and into a preallocated buffer (`np.matmul(B, A, out=buf)`, then
  in-place `*= s` and `+= W`).

Run:  python3 benches/adapters_numpy.py [n ...]     (default: 1024 4096)
Skips cleanly (exit 0) when numpy is not installed.
"""
import sys
import time

try:
    import numpy as np
except ImportError:
    print("numpy is not installed: skipping the numpy adapter anchors")
    sys.exit(0)


def median_of(f, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1024, 4096]
    rng = np.random.default_rng(0)
    print(f"numpy {np.__version__}")
    for n in sizes:
        w = rng.uniform(-0.05, 0.05, size=(n, n)).astype(np.float32)
        flat = w.reshape(-1)
        nnz = round(0.01 * n * n)
        pos = [np.sort(rng.choice(n * n, size=nnz, replace=False)) for _ in range(2)]
        orig = [flat[p].copy() for p in pos]
        new = [o + rng.uniform(-0.01, 0.01, size=nnz).astype(np.float32) for o in orig]
        flat[pos[0]] = new[0]
        state = {"on": 0}

        def switch():
            old, nxt = state["on"], 1 - state["on"]
            flat[pos[old]] = orig[old]
            flat[pos[nxt]] = new[nxt]
            state["on"] = nxt

        t_switch = median_of(switch, 30)

        r = 16
        a = rng.uniform(-0.05, 0.05, size=(r, n)).astype(np.float32)
        b = rng.uniform(-0.05, 0.05, size=(n, r)).astype(np.float32)
        s = np.float32(2.0)
        w0 = w.copy()
        t_fuse = median_of(lambda: w0 + s * (b @ a), 10)
        buf = np.empty_like(w0)

        def fuse_into():
            np.matmul(b, a, out=buf)
            np.multiply(buf, s, out=buf)
            np.add(buf, w0, out=buf)

        t_into = median_of(fuse_into, 10)
        print(f"n={n:5d}  shira_1pct_switch {t_switch * 1e3:8.3f} ms   "
              f"lora_r16_fuse {t_fuse * 1e3:8.3f} ms   "
              f"lora_r16_fuse_into_buffer {t_into * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
