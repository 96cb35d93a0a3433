"""``n_init``: several seeded runs of a mixture fit, of which the best is kept."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.utils import check_random_state

from ..data import Data

# set by the validation of this call's X, before the runs: kept, not taken from a run
_VALIDATION = ("n_features_in_", "feature_names_in_")


def is_fitted_attribute(name: str) -> bool:
    """What a run of ``fit`` sets: the public ``name_`` attributes and the whitening."""
    if name in _VALIDATION:
        return False
    return (name.endswith("_") and not name.startswith("__")) or name == "_whiten"


def fit_best_of(estimator, data: Data, fit_one):
    """``estimator`` fitted as the best of ``n_init`` runs of ``fit_one(run, data)``, each
    seeded from ``random_state``: by the final objective, or for minibatch runs (whose loss
    is that of their last batch) by the likelihood of all the samples.  Only the kept run's
    warnings are re-emitted, as GaussianMixture does."""
    seeds = check_random_state(estimator.random_state).randint(np.iinfo(np.int32).max,
                                                               size=estimator.n_init)
    best, best_value, best_warnings = None, -np.inf, []
    for seed in seeds:
        run = variant(estimator, n_init=1, random_state=int(seed), warm_start=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit_one(run, data)
        value = (-run.loss_curve_[-1] if estimator.batch_size is None
                 else run._mean_log_likelihood(data))
        if best is None or value > best_value:
            best, best_value, best_warnings = run, value, caught
    for caught in best_warnings:
        warnings.warn_explicit(caught.message, caught.category, caught.filename,
                               caught.lineno)
    return adopt_fit(estimator, best)


def variant(estimator, **params):
    """A new, unfitted estimator of the same class with ``estimator``'s parameters, ``params``
    replacing some.  The parameter objects themselves, not copies: ``clone`` deep-copies
    them, and a callback that is a method of an object holding a lock or a file cannot be
    copied (nor should the run call a copy of it)."""
    return type(estimator)(**{**estimator.get_params(deep=False), **params})


def adopt_fit(estimator, run):
    """``estimator`` with the fitted state of ``run`` (a fitted clone), and nothing else:
    scikit-learn's own private attributes (its callback context) belong to ``estimator``,
    not to the run."""
    for key in [k for k in vars(estimator) if is_fitted_attribute(k)]:
        delattr(estimator, key)  # nothing of an earlier fit survives
    estimator.__dict__.update({k: v for k, v in vars(run).items() if is_fitted_attribute(k)})
    return estimator
