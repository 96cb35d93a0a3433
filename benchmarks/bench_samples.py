"""Quality of new samples on real data: the package's samplers with their defaults against
GaussianMixture, KernelDensity and bootstrap copies of the training rows.

Run on demand (never part of the test suite)::

    python benchmarks/bench_samples.py                     # every set, 3 seeds
    python benchmarks/bench_samples.py --sets wine iris --seeds 0
    python benchmarks/bench_samples.py --main-job --seeds 0 1 2 3 4

``--main-job`` measures the README's main job instead: ``IFTSampler(random_state=seed)`` on
all 2000 rows of the built-in 2-D mixture (standardised, as the CLI does), 1000 samples.  Its
columns: the energy distance of the samples to the training rows, as the CLI prints it, over
that of a real subset of 1000 training rows (the mean over 30 subsets: one subset's varies by
a factor of 4); the same with a fresh draw of 2000 rows of the mixture in place of the training
rows (a real subset: 1000 fresh rows); and the DCR against 1000 fresh rows.

For each data set and seed: a 70/30 split (seeded), features standardised on the training
split, each estimator fitted on the training rows and asked for ``n_train`` samples.  Columns
(means over the seeds):

- **AUC**: :func:`skgradflow.metrics.classifier_two_sample_auc` of the samples against the
  held-out rows (HistGradientBoosting, 5 folds); 0.5 = indistinguishable;
- **DCR**: :func:`skgradflow.metrics.distance_to_closest_record_ratio` (samples' median
  distance to the nearest training row over the held-out rows'); 1 = as new as real data,
  0 = copies;
- **ED ratio**: energy distance from the samples to the held-out rows over that of the
  training rows themselves (a real sample of the same size);
- **seconds**: fit + sample;
- **warned**: the seeds whose fit or sample raised a ``ConvergenceWarning``.

``IFT (transport)`` and ``WFR (transport)`` are the same fits sampled with
``sample(method="transport")``, the earlier default (particles jittered by a tenth of the
data's spread, then moved by 20 iterations of the transport flow).

The estimators: ``IFTSampler``, ``WFRMMDFlow`` and ``InclusiveKLFitter`` with their defaults
(``random_state`` only); ``GaussianMixture`` (full covariances, components by BIC over 1-10);
``KernelDensity`` (Gaussian, bandwidth by 5-fold ``GridSearchCV`` over 30 values from 0.05
to 2); bootstrap draws of the training rows.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
from sklearn import datasets as sk_datasets
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import StandardScaler

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow
from skgradflow.datasets import load_builtin
from skgradflow.metrics import (
    classifier_two_sample_auc,
    distance_to_closest_record_ratio,
    energy_distance,
)


# --- data sets -------------------------------------------------------------------------------
def _china_colours() -> np.ndarray:
    """The RGB colours of 1500 pixels of scikit-learn's bundled ``china.jpg`` (a fixed draw):
    a 3-D set with curved, heavy-tailed clusters."""
    image = sk_datasets.load_sample_image("china.jpg").reshape(-1, 3).astype(np.float64)
    rows = np.random.default_rng(0).choice(image.shape[0], size=1500, replace=False)
    return image[rows]


DATASETS: dict[str, Callable[[], np.ndarray]] = {
    "iris": lambda: sk_datasets.load_iris().data,
    "wine": lambda: sk_datasets.load_wine().data,
    "breast_cancer": lambda: sk_datasets.load_breast_cancer().data,
    "diabetes": lambda: sk_datasets.load_diabetes(scaled=False).data,
    "digits_pca16": lambda: PCA(16, random_state=0).fit_transform(
        sk_datasets.load_digits().data),
    "gmm2d": lambda: load_builtin("gmm2d", random_state=0)[0],
    "china_colours": _china_colours,
    # a rolled 2-D sheet in 3-D: thin data whose detail a mixture keeps only with many atoms
    "swiss_roll": lambda: sk_datasets.make_swiss_roll(1500, noise=0.3, random_state=0)[0],
}


def split(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The standardised 70/30 split of a data set for one seed."""
    X = np.asarray(DATASETS[name](), dtype=np.float64)
    X_train, X_holdout = train_test_split(X, test_size=0.3, random_state=seed)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_holdout)


# --- the peers -------------------------------------------------------------------------------
class BICGaussianMixture:
    """``GaussianMixture`` (full covariances) with the number of components by BIC."""

    def __init__(self, random_state=0, max_components=10):
        self.random_state, self.max_components = random_state, max_components

    def fit(self, X):
        fits = [GaussianMixture(k, covariance_type="full", random_state=self.random_state).fit(X)
                for k in range(1, min(self.max_components, X.shape[0] // 2) + 1)]
        self.model_ = min(fits, key=lambda g: g.bic(X))
        return self

    def sample(self, n, random_state=None):
        return self.model_.sample(n)[0]


class CVKernelDensity:
    """Gaussian ``KernelDensity`` with the bandwidth by 5-fold cross-validated likelihood."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X):
        grid = {"bandwidth": np.logspace(np.log10(0.05), np.log10(2.0), 30)}
        self.model_ = GridSearchCV(KernelDensity(), grid, cv=5).fit(X).best_estimator_
        return self

    def sample(self, n, random_state=None):
        return self.model_.sample(n, random_state=random_state)


class Bootstrap:
    """Training rows drawn with replacement: perfect memorisation."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X):
        self.X_ = X
        return self

    def sample(self, n, random_state=None):
        rng = np.random.default_rng(random_state)
        return self.X_[rng.integers(self.X_.shape[0], size=n)]


ESTIMATORS: dict[str, Callable] = {
    "IFT": lambda seed: IFTSampler(random_state=seed),
    "WFR": lambda seed: WFRMMDFlow(random_state=seed),
    "IKL": lambda seed: InclusiveKLFitter(random_state=seed),
    "GMM (BIC)": lambda seed: BICGaussianMixture(random_state=seed),
    "KDE (CV)": lambda seed: CVKernelDensity(random_state=seed),
    "bootstrap": lambda seed: Bootstrap(random_state=seed),
}


# the earlier sampling of the MMD samplers, measured on the same fits as the default
ALTERNATIVE_METHODS = {"IFT": ["transport"], "WFR": ["transport"]}


def evaluate(make: Callable, X_train: np.ndarray, X_holdout: np.ndarray, seed: int,
             methods: tuple = (None,)) -> list[dict]:
    """Fit ``make(seed)`` on the training rows, draw ``n_train`` samples with each of
    ``methods`` (``None``: the default ``sample``) and measure them."""
    real_ed = energy_distance(X_train, X_holdout)
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t0 = time.perf_counter()
        est = make(seed).fit(X_train)
        fit_seconds = time.perf_counter() - t0
    fit_warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    for method in methods:
        kwargs = {} if method is None else {"method": method}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            t0 = time.perf_counter()
            S = np.asarray(est.sample(X_train.shape[0], random_state=seed, **kwargs),
                           dtype=np.float64)
            seconds = fit_seconds + time.perf_counter() - t0
        warned = fit_warned or any(issubclass(w.category, ConvergenceWarning) for w in caught)
        results.append({
            "auc": classifier_two_sample_auc(S, X_holdout, random_state=seed),
            "dcr": distance_to_closest_record_ratio(S, X_train, X_holdout),
            "ed": energy_distance(S, X_holdout) / real_ed,
            "seconds": seconds,
            "warned": warned,
        })
    return results


def run(estimators: dict[str, Callable], sets: list[str], seeds: list[int],
        out=sys.stdout) -> dict:
    """Every estimator on every set and seed; prints one markdown table per set and returns
    ``{(set, estimator): [result per seed]}``."""
    results: dict = {}
    for name in sets:
        splits = [split(name, seed) for seed in seeds]
        n_train, d = splits[0][0].shape
        out.write(f"\n### {name} ({n_train} training rows, {d} features)\n\n"
                  "| estimator | AUC | DCR | ED ratio | seconds | warned |\n"
                  "|---|---:|---:|---:|---:|---:|\n")
        for label, make in estimators.items():
            methods = (None, *ALTERNATIVE_METHODS.get(label, ()))
            per_seed = [evaluate(make, X_train, X_holdout, seed, methods)
                        for seed, (X_train, X_holdout) in zip(seeds, splits, strict=True)]
            for k, method in enumerate(methods):
                rows = [results_of_seed[k] for results_of_seed in per_seed]
                row_label = label if method is None else f"{label} ({method})"
                results[name, row_label] = rows
                mean = {key: np.mean([r[key] for r in rows])
                        for key in ("auc", "dcr", "ed", "seconds")}
                warned = sum(r["warned"] for r in rows)
                out.write(f"| {row_label} | {mean['auc']:.3f} | {mean['dcr']:.2f} "
                          f"| {mean['ed']:.2f} | {mean['seconds']:.2f} | {warned}/{len(rows)} |\n")
                out.flush()
    return results


def check_targets(results: dict, sets: list[str], out=sys.stdout) -> None:
    """One line per set and sampler of the package, means over the seeds.  IFT and WFR:
    whether the AUC is at most the better of GaussianMixture's and KernelDensity's + 0.02,
    the DCR at least 0.9, and fit + sample at most max(2 s, 10x GaussianMixture's BIC
    selection).  IKL: whether it is at least as good as the cross-validated KernelDensity on
    the AUC and the energy-distance ratio, with a DCR of at least 0.9."""

    def mean(rows: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    def yes(ok: bool) -> str:
        return "yes" if ok else "no"

    out.write("\n### Against the targets\n\n| set | estimator | AUC <= peers + 0.02 | "
              "DCR >= 0.9 | seconds <= max(2, 10x GMM) |\n|---|---|---|---|---|\n")
    for name in sets:
        gmm, kde = results.get((name, "GMM (BIC)")), results.get((name, "KDE (CV)"))
        if gmm is None or kde is None:
            continue
        best_auc = min(mean(gmm, "auc"), mean(kde, "auc"))
        limit = max(2.0, 10.0 * mean(gmm, "seconds"))
        for label in ("IFT", "WFR"):
            rows = results.get((name, label))
            if rows is None:
                continue
            auc, dcr, seconds = mean(rows, "auc"), mean(rows, "dcr"), mean(rows, "seconds")
            out.write(f"| {name} | {label} | {auc:.3f} vs {best_auc + 0.02:.3f}: "
                      f"{yes(auc <= best_auc + 0.02)} | {dcr:.2f}: {yes(dcr >= 0.9)} | "
                      f"{seconds:.2f} vs {limit:.2f}: {yes(seconds <= limit)} |\n")
    out.write("\n### InclusiveKLFitter against KernelDensity (CV)\n\n| set | AUC <= KDE's | "
              "ED ratio <= KDE's | DCR >= 0.9 |\n|---|---|---|---|\n")
    for name in sets:
        ikl, kde = results.get((name, "IKL")), results.get((name, "KDE (CV)"))
        if ikl is None or kde is None:
            continue
        auc, kde_auc = mean(ikl, "auc"), mean(kde, "auc")
        ed, kde_ed, dcr = mean(ikl, "ed"), mean(kde, "ed"), mean(ikl, "dcr")
        out.write(f"| {name} | {auc:.3f} vs {kde_auc:.3f}: {yes(auc <= kde_auc)} | "
                  f"{ed:.2f} vs {kde_ed:.2f}: {yes(ed <= kde_ed)} | {dcr:.2f}: "
                  f"{yes(dcr >= 0.9)} |\n")


def main_job(seeds: list[int], out=sys.stdout) -> None:
    """The README's main job, seed by seed (see the module's docstring)."""
    X, _ = load_builtin("gmm2d", random_state=0)
    fresh, _ = load_builtin("gmm2d", random_state=1)
    subsets = [np.random.default_rng(r).choice(X.shape[0], 1000, replace=False)
               for r in range(30)]
    to_rows = np.mean([energy_distance(X[s], X) for s in subsets])
    to_fresh = np.mean([energy_distance(fresh[s], X) for s in subsets])
    out.write("\n### The main job: IFT on the 2-D mixture's 2000 rows, 1000 samples\n\n"
              "| seed | iterations | smoothing | ED to the rows / a subset's | ED to a fresh "
              "draw / fresh rows' | DCR | seconds |\n|---:|---:|---:|---:|---:|---:|---:|\n")
    for seed in seeds:
        scaler = StandardScaler().fit(X)
        t0 = time.perf_counter()
        est = IFTSampler(random_state=seed).fit(scaler.transform(X))
        S = scaler.inverse_transform(est.sample(1000, random_state=seed))
        seconds = time.perf_counter() - t0
        out.write(f"| {seed} | {est.n_iter_} | {est.smoothing_:.2f} | "
                  f"{energy_distance(S, X) / to_rows:.2f} | "
                  f"{energy_distance(S, fresh) / to_fresh:.2f} | "
                  f"{distance_to_closest_record_ratio(S, X, fresh[:1000]):.2f} | "
                  f"{seconds:.2f} |\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS),
                   choices=list(ESTIMATORS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--main-job", action="store_true",
                   help="the README's main job on the built-in 2-D mixture instead")
    args = p.parse_args(argv)
    if args.main_job:
        main_job(args.seeds)
        return 0
    results = run({k: ESTIMATORS[k] for k in args.estimators}, args.sets, args.seeds)
    check_targets(results, args.sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
