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
- RAPS (randomised, lambda = 0.01, k_reg = 1): MAPIE normally picks k* and
  lambda* on a held-out 20% of the calibration data; `FixedRAPS` switches that
  search off so both libraries calibrate on the same 50 000 rows with the same
  parameters and uniforms. The calibration scores then agree (MAPIE adds
  lambda * max(0, rank - k) to cumsum - u * p_y), and so does q-hat. At
  prediction MAPIE keeps the boundary label at rank L iff
  (c_L - q) / (p_L - lambda * max(0, L - k) + lambda * [L > k]) <= u', where
  c_L is the regularised cumulative mass. For L <= k + 1 the denominator is
  p_L and this is exactly {y : s(y) <= q}; for L >= k + 2 it is not the score
  MAPIE calibrated with, so sets differ there. The script checks that a
  numpy reproduction of MAPIE's rule explains every differing row, and that
  lastmile's sets equal a direct numpy evaluation of {y : s(y) <= q}.
- Non-randomised APS and RAPS: MAPIE with u = 0 (so its calibration score is
  the cumulative mass including y, lastmile's U = 1) and
  `include_last_label=False`. The sets agree except where lastmile's set
  {y : s(y) <= q} is empty: MAPIE then keeps the top label, which is what
  lastmile's `with_non_empty_sets(true)` does (the `*_non_empty` cases).
- RAPS with MAPIE's own k*/lambda* search: timed only (different parameters).
"""

import os
import sys
import time

try:
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin
    from mapie.classification import SplitConformalClassifier
    from mapie.conformity_scores import APSConformityScore, RAPSConformityScore
    from mapie.utils import _compute_classification_quantile
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


RAPS_LAMBDA, RAPS_K = 0.01, 1


class FixedRAPS(RAPSConformityScore):
    """MAPIE's RAPS with its k*/lambda* search switched off: every
    conformalization row calibrates, with fixed lambda and k_reg."""

    def split_data(self, X, y, y_enc, sample_weight=None, groups=None):
        self.n_samples_ = len(y_enc)
        return X, y, y_enc, sample_weight, groups

    def get_conformity_scores(self, y, y_pred, y_enc=None, **kwargs):
        kwargs.pop("predict_params", None)
        return APSConformityScore.get_conformity_scores(self, y, y_pred, y_enc=y_enc, **kwargs)

    def get_conformity_score_quantiles(self, conformity_scores, alpha_np, cv,
                                       agg_scores="mean", include_last_label=True, **kwargs):
        self.k_star = np.array([RAPS_K])
        self.lambda_star = RAPS_LAMBDA
        regularized = self._regularize_conformity_score(
            self.k_star, self.lambda_star, conformity_scores, self.cutoff)
        return _compute_classification_quantile(regularized, alpha_np)


def sorted_rows(probs):
    order = np.argsort(-probs, axis=1, kind="stable")
    return order, np.take_along_axis(probs, order, axis=1)


def score_matrix(probs, u, lam, k):
    """s(x, y) = mass ranked above y + U p_y + lam * max(0, rank - k), U = u."""
    order, sp = sorted_rows(probs)
    ranks = np.arange(1, probs.shape[1] + 1)
    s_sorted = np.cumsum(sp, axis=1) - sp + u[:, None] * sp + lam * np.maximum(0, ranks - k)
    s = np.empty_like(s_sorted)
    np.put_along_axis(s, order, s_sorted, axis=1)
    return s


def direct_sets(cal, cal_labels, test, u_cal, u_test, alpha, lam, k):
    """lastmile's rule evaluated directly: {y : s(x, y) <= q-hat}."""
    n = len(cal_labels)
    cal_scores = score_matrix(cal, u_cal, lam, k)[np.arange(n), cal_labels]
    rank = int(np.ceil((n + 1) * (1 - alpha)))
    q = np.sort(cal_scores)[rank - 1]
    return score_matrix(test, u_test, lam, k) <= q, q


def mapie_raps_rule_sizes(test, u_test, q, lam, k, eps=1e-8):
    """Set sizes under MAPIE's randomised RAPS prediction rule, and the rank L
    of each row's boundary label."""
    n = test.shape[0]
    _, sp = sorted_rows(test)
    ranks = np.arange(1, test.shape[1] + 1)
    c = np.cumsum(sp, axis=1) + lam * np.maximum(0, ranks - k)
    last = np.argmax(c >= q - eps, axis=1)
    big_l = last + 1
    c_l, p_l = c[np.arange(n), last], sp[np.arange(n), last]
    v = (c_l - q) / (p_l - lam * np.maximum(0, big_l - k) + lam * (big_l > k))
    return big_l - 1 + ((v - (1.0 - u_test)) <= eps), big_l


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
        return time.perf_counter() - start, sets[:, :, 0], clf

    print(f"{rows} rows x {classes} classes, alpha = {alpha}: "
          f"{half} calibration + {rows - half} test")
    print(f"{'score':<18}{'MAPIE s':>10}{'lastmile 1t s':>15}{'lastmile 2t s':>15}"
          f"{'ratio 1t':>10}{'ratio 2t':>10}  sets")
    randomized = {"include_last_label": "randomized"}
    deterministic = {"include_last_label": False}
    shared = lambda: Uniforms([1.0 - u_cal, 1.0 - u_test])  # noqa: E731
    zeros = lambda: Uniforms([np.zeros(half)])  # noqa: E731 (u = 0: U = 1, no randomisation)
    # (label, lastmile's case, MAPIE score, MAPIE random state, predict params)
    cases = [
        ("lac", "lac", "lac", None, None),
        ("aps_randomized", "aps_randomized", "aps", shared, randomized),
        ("aps", "aps", "aps", zeros, deterministic),
        ("aps_non_empty", "aps_non_empty", "aps", zeros, deterministic),
        ("raps_randomized", "raps_randomized", FixedRAPS(), shared, randomized),
        ("raps", "raps", FixedRAPS(), zeros, deterministic),
        ("raps_non_empty", "raps_non_empty", FixedRAPS(), zeros, deterministic),
        ("raps_mapie_search", "raps", "raps", None, None),
    ]
    notes = []
    for label, name, score, rs, params in cases:
        seconds, mapie_sets, clf = run_mapie(score, rs() if rs else None, params)
        t1, t2 = ours[(name, "threads=1")], ours[(name, "threads=2")]
        if label == "raps_mapie_search":
            fitted = clf._mapie_classifier.conformity_score_function_
            verdict = (f"not compared: MAPIE chose k* = {int(np.ravel(fitted.k_star)[0])}, "
                       f"lambda* = {float(np.ravel(fitted.lambda_star)[0])} on a held-out 20%; "
                       "lastmile: non-randomised, lambda = 0.01, k = 1 on all rows")
        else:
            mine = ours_sets(name)
            diff_rows = (mine != mapie_sets).any(axis=1)
            differ = int((mine != mapie_sets).sum())
            verdict = ("identical" if differ == 0 else
                       f"{differ} memberships differ in {int(diff_rows.sum())} rows")
            verdict += f" (mean size {mine.sum(axis=1).mean():.3f})"
            if params is deterministic and diff_rows.any():
                empty = int((mine.sum(axis=1)[diff_rows] == 0).sum())
                notes.append(f"{label}: {empty} of {int(diff_rows.sum())} differing rows are rows "
                             "where lastmile's set {s <= q} is empty and MAPIE "
                             "(include_last_label=False) keeps the top label")
            if name != "lac":
                lam, k = (RAPS_LAMBDA, RAPS_K) if name.startswith("raps") else (0.0, 1)
                u_c = u_cal if params is randomized else np.ones(half)
                u_t = u_test if params is randomized else np.ones(rows - half)
                direct, q = direct_sets(probs[:half], labels[:half], probs[half:],
                                        u_c, u_t, alpha, lam, k)
                if name.endswith("non_empty"):
                    empty = ~direct.any(axis=1)
                    direct[np.flatnonzero(empty), probs[half:][empty].argmax(axis=1)] = True
                mismatch = int((direct != mine).any(axis=1).sum())
                notes.append(f"{label}: lastmile vs direct numpy {{s <= q}} (q = {q:.6f}): "
                             f"{mismatch} rows differ")
                if params is randomized and name.startswith("raps") and diff_rows.any():
                    sizes, big_l = mapie_raps_rule_sizes(probs[half:], u_test, q, lam, k)
                    unexplained = int((sizes != mapie_sets.sum(axis=1)).sum())
                    beyond = int((big_l[diff_rows] >= k + 2).sum())
                    notes.append(
                        f"{label}: MAPIE's prediction rule reproduced in numpy matches MAPIE's "
                        f"set sizes in all but {unexplained} of {rows - half} rows; "
                        f"{beyond} of {int(diff_rows.sum())} differing rows have a boundary "
                        f"rank >= k + 2, where MAPIE's denominator is not p_L")
        print(f"{label:<18}{seconds:>10.3f}{t1:>15.4f}{t2:>15.4f}"
              f"{seconds / t1:>9.1f}x{seconds / t2:>9.1f}x  {verdict}")
    print(f"(naive full-sort Rust APS, 1 thread: {ours[('naive_full_sort_aps', 'threads=1')]:.3f} s)")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
