"""Scratch comparison behind benchmarks/notes/sampling-research.md, "InclusiveKLFitter.sample":
``InclusiveKLFitter`` with its earlier defaults (``bandwidth="scott"``, ``init="kmeans++"``),
its current defaults, and the alternatives tried, against ``bench_samples.py``'s
``KernelDensity`` (5-fold CV) and ``GaussianMixture`` (BIC), with its splits and metrics::

    python benchmarks/notes/ikl_sampling.py                       # the four main rows
    python benchmarks/notes/ikl_sampling.py --variants "rows as atoms" "data shape" \\
        --sets iris breast_cancer --seeds 0
    python benchmarks/notes/ikl_sampling.py --variants "IKL new" "KDE (CV)" --sets iris wine \\
        --seeds 0 1 2 3 4 5 6 7 8 9 10 11 --paired
    python benchmarks/notes/ikl_sampling.py --variants "IKL new" "independent draws" \\
        --sets iris wine breast_cancer --seeds $(seq 0 29) --paired

``--paired``: the mean over the seeds of the first variant's AUC and energy-distance ratio
less the second's, with its standard error (the same splits for both).

Besides ``bench_samples.DATASETS`` (``gmm2d`` left out by default), ``gmm5d``: 600 rows of
a 5-D mixture of three Gaussians of unequal covariances (scales 0.3, 1 and 2.5) and weights;
``correlated50``: a 50-D Gaussian of random covariance; ``classification20``: the features
of ``make_classification`` (20, of which 10 informative).  ``"IKL new"`` is the current
default (``covariance="auto"``), ``"isotropic"`` and ``"tied"`` its two candidates alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_samples as bs  # noqa: E402

from skgradflow import InclusiveKLFitter  # noqa: E402


def gmm5d() -> np.ndarray:
    rng = np.random.default_rng(0)
    parts = []
    for k, (n, scale) in enumerate([(300, 0.3), (200, 1.0), (100, 2.5)]):
        A = rng.normal(size=(5, 5)) * scale
        parts.append(rng.normal(size=(n, 5)) @ A + 4 * k * rng.normal(size=5))
    return np.vstack(parts)


def correlated50() -> np.ndarray:
    """1000 rows of a 50-D Gaussian with a random covariance (column scales 0.2 to 3 of a
    random matrix): correlated features, no clusters."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 50)) / np.sqrt(50) * np.linspace(0.2, 3, 50)
    return rng.normal(size=(1000, 50)) @ A


def classification20() -> np.ndarray:
    """``make_classification(1000, 20, n_informative=10)``'s features: 10 informative, the
    others linear combinations of them or noise."""
    from sklearn.datasets import make_classification

    return make_classification(1000, 20, n_informative=10, random_state=0)[0]


bs.DATASETS["gmm5d"] = gmm5d
bs.DATASETS["correlated50"] = correlated50
bs.DATASETS["classification20"] = classification20


class EqualWeights:
    """The default fit started from Lloyd's k-means centres with equal weights (a given
    ``init`` array), as before the start from the clusters' masses."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X):
        from sklearn.cluster import KMeans

        n = min(100, max(1, len(np.unique(X, axis=0)) // 3))
        centres = KMeans(n, n_init=1, random_state=self.random_state).fit(X).cluster_centers_
        self.model_ = InclusiveKLFitter(n, init=centres, random_state=self.random_state).fit(X)
        return self

    def sample(self, n, random_state=None):
        return self.model_.sample(n, random_state=random_state)


class OnePerRow:
    """The defaults with a component per distinct row, at most 100 (instead of one per
    three rows)."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X):
        n = min(100, len(np.unique(X, axis=0)))
        self.model_ = InclusiveKLFitter(n, random_state=self.random_state).fit(X)
        return self

    def sample(self, n, random_state=None):
        return self.model_.sample(n, random_state=random_state)


class RowsAsAtoms:
    """Every training row an atom (the kernel density estimate at the default width),
    then the flow."""

    def __init__(self, random_state=0, **params):
        self.random_state, self.params = random_state, params

    def fit(self, X):
        self.model_ = InclusiveKLFitter(X.shape[0], init=X, random_state=self.random_state,
                                        **self.params).fit(X)
        return self

    def sample(self, n, random_state=None):
        return self.model_.sample(n, random_state=random_state)


class IndependentDraws:
    """The defaults, sampled as before systematic resampling: every atom drawn
    independently by weight (``rng.choice``), plus its component's noise."""

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X):
        self.model_ = InclusiveKLFitter(random_state=self.random_state).fit(X)
        return self

    def sample(self, n, random_state=None):
        atoms, w = self.model_._fitted_measure()
        rng = np.random.default_rng(random_state)
        rows = rng.choice(atoms.shape[0], size=n, replace=True, p=w)
        noise = rng.standard_normal((n, atoms.shape[1])) * self.model_.bandwidth_
        return atoms[rows] + noise


VARIANTS = {
    "IKL old": lambda s: InclusiveKLFitter(bandwidth="scott", init="kmeans++", random_state=s),
    "IKL new": lambda s: InclusiveKLFitter(random_state=s),
    "KDE (CV)": lambda s: bs.CVKernelDensity(random_state=s),
    "GMM (BIC)": lambda s: bs.BICGaussianMixture(random_state=s),
    "rows as atoms": lambda s: RowsAsAtoms(s),
    "data shape": lambda s: InclusiveKLFitter(covariance="data", random_state=s),
    "kmeans++": lambda s: InclusiveKLFitter(init="kmeans++", random_state=s),
    "equal weights": lambda s: EqualWeights(s),
    "one per row": lambda s: OnePerRow(s),
    "independent draws": lambda s: IndependentDraws(s),
    "isotropic": lambda s: InclusiveKLFitter(covariance="isotropic", random_state=s),
    "tied": lambda s: InclusiveKLFitter(covariance="tied", random_state=s),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", default=[k for k in bs.DATASETS if k != "gmm2d"],
                   choices=list(bs.DATASETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:4], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--paired", action="store_true",
                   help="the first variant less the second, per set, over the seeds")
    args = p.parse_args()
    results = bs.run({k: VARIANTS[k] for k in args.variants}, args.sets, args.seeds)
    if args.paired:
        first, second = args.variants[:2]
        print(f"\n### {first} less {second}, mean ± standard error over "
              f"{len(args.seeds)} seeds\n\n| set | AUC | ED ratio |\n|---|---:|---:|")
        for name in args.sets:
            cells = []
            for key in ("auc", "ed"):
                diff = np.array([a[key] - b[key] for a, b in zip(
                    results[name, first], results[name, second], strict=True)])
                cells.append(f"{diff.mean():+.3f} ± {diff.std(ddof=1) / np.sqrt(diff.size):.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
