"""Held-out log-likelihood of InclusiveKLFitter against GaussianMixture and KernelDensity.

Run on demand (never part of the test suite)::

    python benchmarks/bench_density.py
    python benchmarks/bench_density.py --datasets wine breast_cancer --seeds 0 1 2 --out density.md

The data sets are scikit-learn's bundled ``load_wine``, ``load_breast_cancer``,
``load_digits`` (raw, 64 pixels, or ``digits_pca16``: a PCA to 16 components fitted on the
train split), ``load_iris`` and the features of ``load_diabetes``: no download.  The issue's
comparison is::

    python benchmarks/bench_density.py --datasets wine breast_cancer digits_pca16 iris \
        diabetes --methods InclusiveKLFitter "GaussianMixture (BIC: k and type)" \
        KernelDensity --cv 3

For every data set and every seed:

1. a seeded 70/30 train/test split (``train_test_split``, ``--test-size``);
2. the columns that are constant on the *train* split are dropped (their standard deviation
   is 0, so they cannot be standardised; digits has 3 always-zero pixels and, depending on
   the split, a few more that are zero on every training image).  The decision uses the
   train split only; the same columns are dropped from the test split;
3. ``StandardScaler`` fitted on the train split, applied to both;
4. each method is fitted on the train split, hyper-parameters chosen there only, and scored
   by its mean log-likelihood per test sample (natural log, higher is better):

   - ``InclusiveKLFitter``: ``GridSearchCV`` (``--cv`` folds, default 5) over three grids
     (48 candidates):

     * ``covariance`` in ``"isotropic"``, ``"data"`` with ``bandwidth = c × scott``, ``c`` in
       ``np.geomspace(0.25, 2, 7)``, ``scott = n_train^(-1/(d+4))`` (Scott's rule on
       standardised data), ``n_components="auto"`` (one atom per 10, 3 or 1 samples of each
       fit's data, at most 500, by the likelihood of a held-out quarter of it);
     * ``covariance="full"``, ``init="kmeans"``, ``n_init=3``, ``n_components`` in 1, 2, 4,
       8, 12, 16, ``bandwidth`` (the factor of the initial ``h² Σ̂``) 0.5 or 1, ``reg_covar``
       1e-6 or 1e-2;
     * ``covariance="tied"``, ``init="kmeans"``, ``n_init=3``, ``n_components`` in 2, 4, 8,
       12, 16, ``reg_covar`` 1e-6 or 1e-2;

     (numbers of components above the smallest CV training fold are left out).  Default
     ``alpha``, ``beta``, ``step_size``, ``max_iter``, ``tol``; scored by its own ``score``
     (mean log-likelihood);
   - ``GaussianMixture``: ``n_components`` in 1..10 chosen by the lowest BIC on the train
     split, over the four covariance types ("GaussianMixture (BIC: k and type)"), or for
     ``covariance_type="full"`` or ``"diag"`` alone, ``reg_covar`` 1e-6 (scikit-learn's
     default; ``--reg-covar``);
   - ``KernelDensity(kernel="gaussian")``: ``GridSearchCV`` over the same bandwidth grid
     (scored by its ``score``, the total log-likelihood of a fold).

Both the mean and the median over the test samples of the log density are reported: a
variance floored at ``reg_covar`` along a feature that is almost constant on the train
split (rare digits pixels) gives a test point that is non-zero there a log density of
about ``-z² / (2 reg_covar)``, which can dominate the mean of a whole split.

"fit s" is the whole procedure on the train split: the grid search with its refit, or the
GMM fits of the BIC path; "one fit" (in the notes) is the chosen model fitted once on the
train split (the grid search's ``refit_time_``, or one more ``GaussianMixture`` fit).
Several seeds give "mean ± std" over seeds; the chosen
hyper-parameters are listed per seed.  Progress goes to stderr, the markdown table to
stdout (and to ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from _common import write_file  # benchmarks/ is on sys.path when run as a script
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.neighbors import KernelDensity
from sklearn.preprocessing import StandardScaler

from skgradflow import InclusiveKLFitter

LOADERS = {"wine": load_wine, "breast_cancer": load_breast_cancer, "digits": load_digits,
           "digits_pca16": load_digits, "iris": load_iris, "diabetes": load_diabetes}
# data sets reduced by a PCA fitted on the train split, and their number of components
PCA_COMPONENTS = {"digits_pca16": 16}
# covariance="full": a few atoms (each covariance has d(d+1)/2 parameters), initial shapes
# h² Σ̂ with h a fraction of the data's spread
FULL_COMPONENTS = [1, 2, 4, 8, 12, 16]
FULL_BANDWIDTHS = [0.5, 1.0]
TIED_COMPONENTS = [2, 4, 8, 12, 16]
# both learnt shapes ("full" and "tied"): k-means starts, the best of three (the likelihood
# of few learnt components has many local maxima), and reg_covar chosen by CV
LEARNT = {"init": ["kmeans"], "n_init": [3], "reg_covar": [1e-6, 1e-2]}
GRID = np.geomspace(0.25, 2.0, 7)  # multiples of Scott's rule
GMM_COMPONENTS = range(1, 11)


def log(msg: str) -> None:
    print(f"[bench_density] {msg}", file=sys.stderr, flush=True)


@dataclass
class Row:
    dataset: str
    method: str
    n: list[str] = field(default_factory=list)
    d: list[str] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)
    loglik: list[float] = field(default_factory=list)
    median: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def prepare(name: str, seed: int, test_size: float):
    X = LOADERS[name]().data.astype(np.float64)
    X_train, X_test = train_test_split(X, test_size=test_size, random_state=seed)
    if name in PCA_COMPONENTS:
        pca = PCA(PCA_COMPONENTS[name], random_state=seed).fit(X_train)
        X_train, X_test = pca.transform(X_train), pca.transform(X_test)
    keep = X_train.std(axis=0) > 0  # constant on the train split: cannot be standardised
    scaler = StandardScaler().fit(X_train[:, keep])
    return scaler.transform(X_train[:, keep]), scaler.transform(X_test[:, keep]), int((~keep).sum())


def scott(n: int, d: int) -> float:
    return float(n ** (-1.0 / (d + 4)))


def fit_inclusive_kl(X_train, X_test, seed, args):
    n, d = X_train.shape
    cv = KFold(args.cv, shuffle=True, random_state=seed)
    smallest_fold = min(len(train) for train, _ in cv.split(X_train))
    h0 = scott(n, d)
    grid = [
        # n_components="auto": one atom per 10, 3 or 1 samples of each fit's data (a CV
        # training fold, then the whole train split for the refit), by held-out likelihood
        {"bandwidth": list(GRID * h0), "covariance": ["isotropic", "data"],
         "n_components": ["auto"]},
        # a covariance per atom is estimable with few atoms: the regime of GaussianMixture
        {"covariance": ["full"], "bandwidth": FULL_BANDWIDTHS, **LEARNT,
         "n_components": [k for k in FULL_COMPONENTS if k <= smallest_fold]},
        # one learnt shape shared by the atoms: GaussianMixture's "tied"
        {"covariance": ["tied"], **LEARNT,
         "n_components": [k for k in TIED_COMPONENTS if k <= smallest_fold]},
    ]
    search = GridSearchCV(
        InclusiveKLFitter(backend=args.backend, random_state=seed),
        grid,
        cv=cv,
        n_jobs=args.n_jobs,
        error_score="raise",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        t0 = time.perf_counter()
        search.fit(X_train)
        seconds = time.perf_counter() - t0
    best = search.best_estimator_
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    c = best.bandwidth_ / h0
    if best.covariance == "full":
        chosen = f"full, N={best.n_components}, h={best.bandwidth_:.2g}, reg={best.reg_covar:g}"
    elif best.covariance == "tied":
        chosen = f"tied, N={best.n_components}, reg={best.reg_covar:g}"
    else:
        chosen = f"{best.covariance}, {c:.3g}×scott"
    note = (
        f"N={best.weights_.shape[0]}, {best.n_iter_} it{'' if best.converged_ else ' (not conv.)'}"
        f", {best.backend_}, one fit {search.refit_time_:.2f} s"
        + (f", {n_warn} ConvergenceWarning" if n_warn else "")
    )
    return chosen, best.score_samples(X_test), seconds, note


def fit_gmm(X_train, X_test, seed, covariance_type, reg_covar):
    t0 = time.perf_counter()
    best, best_bic = None, np.inf
    types = ["full", "tied", "diag", "spherical"] if covariance_type == "bic" else [
        covariance_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k, covariance_type in ((k, t) for t in types for k in GMM_COMPONENTS):
            if k > X_train.shape[0]:
                break
            gmm = GaussianMixture(
                k, covariance_type=covariance_type, reg_covar=reg_covar, random_state=seed
            )
            bic = gmm.fit(X_train).bic(X_train)
            if bic < best_bic:
                best, best_bic = gmm, bic
    seconds = time.perf_counter() - t0
    n_params = best._n_parameters()
    t0 = time.perf_counter()  # the chosen model once, as the refit of a grid search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(best.n_components, covariance_type=best.covariance_type,
                        reg_covar=reg_covar, random_state=seed).fit(X_train)
    one_fit = time.perf_counter() - t0
    chosen = f"{best.covariance_type}, k={best.n_components}"
    note = f"{n_params} params, one fit {one_fit:.2f} s"
    return chosen, best.score_samples(X_test), seconds, note


def fit_kde(X_train, X_test, seed, args):
    n, d = X_train.shape
    h0 = scott(n, d)
    search = GridSearchCV(
        KernelDensity(kernel="gaussian"),
        {"bandwidth": list(GRID * h0)},
        cv=KFold(args.cv, shuffle=True, random_state=seed),
        n_jobs=args.n_jobs,
    )
    t0 = time.perf_counter()
    search.fit(X_train)
    seconds = time.perf_counter() - t0
    h = search.best_params_["bandwidth"]
    log_density = search.best_estimator_.score_samples(X_test)
    return f"{h / h0:.3g}×scott (h={h:.3g})", log_density, seconds, f"{n} kernels"


def fit_gmm_full(X_train, X_test, seed, args):
    return fit_gmm(X_train, X_test, seed, "full", args.reg_covar)


def fit_gmm_diag(X_train, X_test, seed, args):
    return fit_gmm(X_train, X_test, seed, "diag", args.reg_covar)


def fit_gmm_bic(X_train, X_test, seed, args):
    return fit_gmm(X_train, X_test, seed, "bic", args.reg_covar)


METHODS = {
    "InclusiveKLFitter": fit_inclusive_kl,
    "GaussianMixture (BIC: k and type)": fit_gmm_bic,
    "GaussianMixture full (BIC)": fit_gmm_full,
    "GaussianMixture diag (BIC)": fit_gmm_diag,
    "KernelDensity": fit_kde,
}


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def unique(values: list[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def table(rows: list[Row], args) -> str:
    lines = [
        "| data set | n (train/test) | d | method | chosen (per seed) | held-out mean "
        "log-lik | held-out median log-lik | fit s | notes (last seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        chosen = " / ".join(r.chosen)
        lines.append(
            f"| {r.dataset} | {unique(r.n)} | {unique(r.d)} | {r.method} | {chosen} | "
            f"{mean_std(r.loglik, 2)} | {mean_std(r.median, 2)} | {mean_std(r.seconds, 2)} "
            f"| {r.notes[-1]} |"
        )
    lines.append("")
    lines.append(
        f"Seeds {args.seeds} (train/test split, CV folds, k-means++ and GMM initialisation); "
        'mean ± sample std over seeds. Higher log-likelihood is better. "mean" and "median" '
        "are over the test samples of one split (a few test points far outside the train "
        'data can dominate the mean). "fit s" includes the hyper-parameter selection. '
        f"{args.cv}-fold CV; GaussianMixture reg_covar={args.reg_covar:g}; "
        f"InclusiveKLFitter backend={args.backend!r}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--test-size", type=float, default=0.3)
    parser.add_argument("--cv", type=int, default=5, help="CV folds of the grid searches")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "keops", "numpy"],
        help="InclusiveKLFitter backend",
    )
    parser.add_argument("--n-jobs", type=int, default=1, help="GridSearchCV n_jobs")
    parser.add_argument(
        "--reg-covar", type=float, default=1e-6, help="GaussianMixture reg_covar (default 1e-6)"
    )
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)

    rows: list[Row] = []
    for name in args.datasets:
        by_method: dict[str, Row] = {}
        for seed in args.seeds:
            X_train, X_test, dropped = prepare(name, seed, args.test_size)
            n, d = X_train.shape
            for method in args.methods:
                log(f"{name} seed={seed} n={n} d={d}: {method}")
                chosen, log_density, seconds, note = METHODS[method](X_train, X_test, seed, args)
                # mean log-likelihood per test sample (KernelDensity.score would be the sum)
                loglik = float(np.mean(log_density))
                median = float(np.median(log_density))
                log(
                    f"  -> {chosen}: mean {loglik:.3f}, median {median:.3f} in {seconds:.1f} s "
                    f"({note})"
                )
                row = by_method.setdefault(method, Row(name, method))
                row.n.append(f"{n}/{X_test.shape[0]}")
                row.d.append(f"{d}" + (f" ({dropped} const. dropped)" if dropped else ""))
                row.chosen.append(chosen)
                row.loglik.append(loglik)
                row.median.append(median)
                row.seconds.append(seconds)
                row.notes.append(note)
        rows.extend(by_method.values())

    text = table(rows, args)
    print(text)
    if args.out:
        write_file(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
