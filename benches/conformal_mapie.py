"""Runs MAPIE on the probability matrices written by the `conformal_sets`
bench, checks that its prediction sets equal lastmile's, and prints the
speed ratio.

Usage (after `cargo bench -p lastmile-benches --bench conformal_sets`):
    python3 benches/conformal_mapie.py [target/conformal-bench]

Exits 0 with a message when numpy, MAPIE or the bench output is missing.

Scores compared (alpha = 0.1, 50 000 calibration + 50 000 test rows, 1000
classes):
- LAC: MAPIE `conformity_score="lac"`; lastmile `ScoreFunction::Lac`.
- APS: MAPIE's APS calibration is always randomised
  (s = cumsum_incl - u * p_y) and `include_last_label="randomized"` keeps the
  boundary label iff V <= u'. This equals lastmile's randomised APS
  (s = mass above + U * p_y) with U = 1 - u, so the same uniforms are fed to
  both (MAPIE through a RandomState that returns them).
- RAPS: MAPIE picks k* and lambda* on a held-out 20% of the calibration data,
  which lastmile does not do, so only its time is reported (the sets are
  not comparable).
"""

import os
import sys
import time

try:
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin
    from mapie.classification import SplitConformalClassifier
except ImportError as exc:  # pragma: no cover
    print(f"skipping MAPIE comparison: {exc} (pip install mapie)")
    sys.exit(0)


class Precomputed(ClassifierMixin, BaseEstimator):
    """A 'prefit' classifier whose input is a row index into a fixed matrix."""

    def __init__(self, probs=None):
        self.probs = probs
        if probs is not None:
            self.classes_ = np.arange(probs.shape[1])

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return self.probs[np.asarray(X).ravel().astype(np.int64)]

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)

    def __sklearn_is_fitted__(self):
        return True


class Uniforms(np.random.RandomState):
    """Returns pre-drawn uniforms, in order, from `uniform(size=...)`."""

    def __init__(self, chunks):
        super().__init__(0)
        self.chunks = list(chunks)

    def uniform(self, low=0.0, high=1.0, size=None):
        values = self.chunks.pop(0)
        return values.reshape(size)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "target", "conformal-bench")
    times_path = os.path.join(root, "lastmile_times.txt")
    if not os.path.exists(times_path):
        print(f"skipping MAPIE comparison: {times_path} not found "
              "(run `cargo bench -p lastmile-benches --bench conformal_sets` first)")
        return 0
    with open(times_path) as f:
        header = f.readline().split()
        rows, classes, alpha = int(header[1]), int(header[3]), float(header[5])
        ours = {}
        for line in f:
            name, threads, seconds = line.split()
            ours[(name, threads)] = float(seconds)
    half = rows // 2
    probs = np.fromfile(os.path.join(root, "probs.f32"), dtype="<f4").reshape(rows, classes)
    probs = probs.astype(np.float64)  # MAPIE works in float64; the f32 -> f64 cast is exact
    labels = np.fromfile(os.path.join(root, "labels.u32"), dtype="<u4").astype(np.int64)
    u_cal = np.fromfile(os.path.join(root, "u_cal.f64"), dtype="<f8")
    u_test = np.fromfile(os.path.join(root, "u_test.f64"), dtype="<f8")
    est = Precomputed(probs)
    x_cal = np.arange(half).reshape(-1, 1)
    x_test = np.arange(half, rows).reshape(-1, 1)

    def ours_sets(name):
        sizes = np.fromfile(os.path.join(root, f"sets_{name}_sizes.u32"), dtype="<u4")
        flat = np.fromfile(os.path.join(root, f"sets_{name}_labels.u32"), dtype="<u4")
        mask = np.zeros((len(sizes), classes), dtype=bool)
        mask[np.repeat(np.arange(len(sizes)), sizes), flat.astype(np.int64)] = True
        return mask

    def run_mapie(score, random_state=None, params=None):
        clf = SplitConformalClassifier(estimator=est, confidence_level=1 - alpha,
                                       conformity_score=score, prefit=True,
                                       random_state=random_state)
        start = time.perf_counter()
        clf.conformalize(x_cal, labels[:half])
        _, sets = clf.predict_set(x_test, conformity_score_params=params)
        return time.perf_counter() - start, sets[:, :, 0]

    print(f"{rows} rows x {classes} classes, alpha = {alpha}: "
          f"{half} calibration + {rows - half} test")
    print(f"{'score':<16}{'MAPIE s':>10}{'lastmile 1t s':>15}{'lastmile 2t s':>15}"
          f"{'ratio 1t':>10}{'ratio 2t':>10}  sets")
    cases = [
        ("lac", "lac", None, None),
        ("aps_randomized", "aps", lambda: Uniforms([1.0 - u_cal, 1.0 - u_test]),
         {"include_last_label": "randomized"}),
        ("raps", "raps", None, None),
    ]
    for name, score, rs, params in cases:
        seconds, mapie_sets = run_mapie(score, rs() if rs else None, params)
        t1, t2 = ours[(name, "threads=1")], ours[(name, "threads=2")]
        if name == "raps":
            verdict = "not compared (MAPIE tunes k*, lambda* on a held-out split)"
        else:
            mine = ours_sets(name)
            differ = int((mine != mapie_sets).sum())
            rows_differ = int((mine != mapie_sets).any(axis=1).sum())
            verdict = ("identical" if differ == 0 else
                       f"{differ} memberships differ in {rows_differ} rows")
            verdict += f" (mean size {mine.sum(axis=1).mean():.3f})"
        print(f"{name:<16}{seconds:>10.3f}{t1:>15.4f}{t2:>15.4f}"
              f"{seconds / t1:>9.1f}x{seconds / t2:>9.1f}x  {verdict}")
    print(f"(naive full-sort Rust APS, 1 thread: {ours[('naive_full_sort_aps', 'threads=1')]:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
