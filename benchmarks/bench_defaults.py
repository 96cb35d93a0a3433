"""Quality and speed of the default estimators: the measurements of "good new samples by
default, and fast".

Run on demand (never part of the test suite)::

    python benchmarks/bench_defaults.py            # the defaults
    python benchmarks/bench_defaults.py --before   # bandwidth="median", 500 particles, copies

Prints, for ``IFTSampler`` and ``WFRMMDFlow``:

1. **gmm2d, the main job** (``skgradflow sample --data gmm2d --n-samples 1000``): standardise,
   fit, draw 1000 samples, energy distance to a fresh draw of the data set against that of
   1000 real rows (mean of 5 subsets); the ratio is the figure (1 = as good as real data);
2. **far start** (three Gaussian modes, 2000 targets, 200 particles starting as a blob far to
   one side): ½MMD² at each bandwidth the fit used, energy distance to 2000 held-out points
   (a 200-row subset of the targets scores about 0.015), effective sample size ``1/Σw²``,
   iterations, for the MMD flow (``beta=0``), IFT and WFR;
3. **digits** (PCA to 10 dimensions): median distance from 500 samples to the nearest
   training digit, against that of the held-out digits;
4. **seconds** of a default fit on 1000 × 2 standardised points, and of scikit-learn's
   ``check_estimator`` on each default estimator.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator

from skgradflow import IFTSampler, WFRMMDFlow
from skgradflow.datasets import load_builtin
from skgradflow.metrics import energy_distance, mmd

ESTIMATORS = (IFTSampler, WFRMMDFlow)


def three_modes(n: int, rng) -> np.ndarray:
    centers = np.array([(-4.0, 0.0), (4.0, 0.0), (0.0, 5.0)])
    return centers[rng.integers(3, size=n)] + 0.7 * rng.standard_normal((n, 2))


def timed_fit(est, X):
    """``est`` fitted on ``X``, and the seconds the fit took."""
    t0 = time.perf_counter()
    est.fit(X)
    return est, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", action="store_true",
                   help="the earlier defaults: bandwidth='median', n_particles=500, and "
                        "sample() as weighted copies of the particles")
    p.add_argument("--skip-checks", action="store_true", help="do not time check_estimator")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", ConvergenceWarning)
    params = {"bandwidth": "median"} if args.before else {}
    method = "particles" if args.before else "transport"

    def make(cls, **kw):
        if args.before and "n_particles" not in kw:
            kw["n_particles"] = 500
        return cls(random_state=0, **params, **kw)

    print(f"# defaults ({'before' if args.before else 'now'})")
    X, _ = load_builtin("gmm2d", random_state=0)
    fresh, _ = load_builtin("gmm2d", random_state=1)
    scaler = StandardScaler().fit(X)
    rng = np.random.default_rng(5)
    real = np.mean([energy_distance(X[rng.choice(len(X), 1000, replace=False)], fresh)
                    for _ in range(5)])
    print(f"\n## gmm2d, 1000 samples (1000 real rows score {real:.4f})\n")
    print("| estimator | energy distance | ratio to real rows | distinct | iterations | fit s |")
    print("|---|---:|---:|---:|---:|---:|")
    for cls in ESTIMATORS:
        t0 = time.perf_counter()
        est = make(cls).fit(scaler.transform(X))
        seconds = time.perf_counter() - t0
        S = scaler.inverse_transform(est.sample(1000, random_state=0, method=method))
        ed = energy_distance(S, fresh)
        distinct = len(np.unique(S, axis=0))
        print(f"| {cls.__name__} | {ed:.4f} | {ed / real:.1f} | {distinct} | {est.n_iter_} "
              f"| {seconds:.1f} |")

    rng = np.random.default_rng(0)
    Y, Y_test = three_modes(2000, rng), three_modes(2000, rng)
    init = np.array([12.0, 0.0]) + 0.5 * rng.standard_normal((200, 2))
    subset = np.mean([energy_distance(Y[rng.choice(2000, 200, replace=False)], Y_test)
                      for _ in range(5)])
    print(f"\n## far start (a 200-row subset scores {subset:.3f})\n")
    print("| run | ½MMD² at each bandwidth | energy distance | ESS | iterations |")
    print("|---|---|---:|---:|---:|")
    runs = [("MMD flow (beta=0)", IFTSampler, {"beta": 0.0}), ("IFT", IFTSampler, {}),
            ("IFT, tol=0", IFTSampler, {"tol": 0.0}), ("WFR", WFRMMDFlow, {})]
    for name, cls, kw in runs:
        est = make(cls, n_particles=200, init=init, **kw).fit(Y)
        bandwidths = np.unique(est.bandwidth_schedule_)[::-1]
        mmds = ", ".join(
            f"{0.5 * mmd(est.particles_, Y, bandwidth=h, x_weights=est.weights_):.2e} "
            f"(h={h:.2f})" for h in bandwidths
        )
        ed = energy_distance(est.particles_, Y_test, x_weights=est.weights_)
        ess = 1.0 / np.sum(est.weights_**2)
        print(f"| {name} | {mmds} | {ed:.4f} | {ess:.0f} | {est.n_iter_} |")

    digits = PCA(10, random_state=0).fit_transform(load_digits().data)
    D_train, D_test = train_test_split(digits, test_size=0.3, random_state=0)
    nn = NearestNeighbors(n_neighbors=1).fit(D_train)
    held_out = float(np.median(nn.kneighbors(D_test)[0]))
    print(f"\n## digits, PCA 10 (held-out digits: median distance {held_out:.2f} to the "
          "nearest training digit)\n")
    print("| estimator | median distance of 500 samples | bandwidth(s) | fit s |")
    print("|---|---:|---|---:|")
    for cls in ESTIMATORS:
        est, seconds = timed_fit(make(cls), D_train)
        S = est.sample(500, random_state=0, method=method)
        dist = float(np.median(nn.kneighbors(S)[0]))
        hs = ", ".join(f"{h:.1f}" for h in np.unique(est.bandwidth_schedule_)[::-1])
        print(f"| {cls.__name__} | {dist:.2f} | {hs} | {seconds:.1f} |")

    X = three_modes(1000, np.random.default_rng(3))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    print("\n## seconds\n")
    print("| estimator | default fit, 1000 × 2 | backend | check_estimator |")
    print("|---|---:|---|---:|")
    for cls in ESTIMATORS:
        est, fit_s = timed_fit(make(cls), X)
        checks = "—"
        if not args.skip_checks:
            t0 = time.perf_counter()
            results = check_estimator(make(cls), on_fail=None, expected_failed_checks={
                "check_methods_subset_invariance": "transform moves a set as one measure"})
            failed = [r["check_name"] for r in results if r["status"] == "failed"]
            checks = f"{time.perf_counter() - t0:.1f}" + (f" ({', '.join(failed)} failed)"
                                                          if failed else "")
        print(f"| {cls.__name__} | {fit_s:.2f} | {est.backend_} | {checks} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
