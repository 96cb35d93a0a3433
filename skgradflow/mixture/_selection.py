"""``n_components="auto"``: the number of components by the likelihood of held-out samples.

A kernel mixture of ``K`` components at a fixed width is a kernel density estimate whose
``n/K`` samples per component are pooled into one atom: the more components, the more of the
samples' detail the mixture keeps.  The right amount is a property of the data (a thin
manifold in 3 dimensions wants an atom per sample, a diffuse cloud in 50 a few per hundred),
so "auto" measures it: it fits each candidate on three quarters of the samples and keeps the
one whose mixture gives the other quarter the highest mean log-likelihood, the criterion the
fit itself maximises, judged on samples it has not seen (design page, "How many
components").
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from .._flow._estimator import auto_atoms
from ..data import Data
from ._restarts import variant

# the candidates: one component per this many distinct samples (rounded up)
SAMPLES_PER_COMPONENT = (10, 3, 1)
# and never more than this many components (the cost of an iteration grows with them)
MAX_COMPONENTS = 500
HELD_OUT_FRACTION = 0.25
# below this many distinct samples a quarter of them is too few to choose on: one component
# per three samples (the middle candidate)
MIN_DISTINCT = 20
FALLBACK_SAMPLES_PER_COMPONENT = 3


def n_components_for(n_distinct: int, per_component: int) -> int:
    """One component per ``per_component`` distinct samples, rounded up, at most
    ``MAX_COMPONENTS``."""
    return auto_atoms(n_distinct, per_component, MAX_COMPONENTS)


def select_n_components(estimator, data: Data, rng: np.random.Generator) -> dict | None:
    """The held-out comparison of the candidates for ``estimator`` (with its other
    parameters) on ``data``: ``None`` where there is nothing to choose (too few samples, or
    every candidate gives the same number of components at this size), otherwise a dict of
    arrays, one entry per candidate: ``samples_per_component`` (10, 3 or 1, the first that
    gives the count: at the cap the count has ``n / MAX_COMPONENTS`` of them), ``n_components``
    (on all the samples) and ``held_out_log_likelihood``, and ``chosen``, the index of the
    best; with ``verbose``, the comparison is printed."""
    n = data.n_distinct()
    if n < MIN_DISTINCT:
        return None
    candidates = {}  # components on all the samples -> samples per component (first wins)
    for per in SAMPLES_PER_COMPONENT:
        candidates.setdefault(n_components_for(n, per), per)
    if len(candidates) == 1:
        return None
    rest, held = data.held_out(HELD_OUT_FRACTION, rng)
    n_rest = rest.n_distinct()
    if n_rest < 2 or held.n_distinct() < 1:  # a draw left a part without weight (dask)
        return None
    per_component = np.array(list(candidates.values()))
    likelihood = np.empty(per_component.size)
    width = {}  # bandwidth="auto": the first candidate's, for the others on the same rows
    for k, (n_components, per) in enumerate(candidates.items()):
        # on the three quarters, one per `per` of their samples; a candidate at the cap,
        # which has n/MAX_COMPONENTS samples per component on all of them, as many there.
        # Each candidate once (n_init=1), silently: an unconverged candidate is compared as
        # it is, and only the final fit's warnings concern the user
        if n_components < MAX_COMPONENTS:
            tried = n_components_for(n_rest, per)
        else:
            tried = max(1, min(n_rest, round(MAX_COMPONENTS * n_rest / n)))
        run = variant(estimator, n_components=tried, n_init=1, warm_start=False, verbose=0,
                      callback=None, **width)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            run._fit(rest)
        likelihood[k] = run._mean_log_likelihood(held)
        if estimator.bandwidth == "auto":
            # the leave-one-out width depends on the rows only (a pass over all their pairs
            # at 48 widths): computed once, not once per candidate
            width = {"bandwidth": run.bandwidth_}
    if not np.all(np.isfinite(likelihood)):
        raise FloatingPointError(
            "InclusiveKLFitter(n_components='auto'): a candidate's held-out log-likelihood "
            f"is not finite ({likelihood}); give n_components as an int.")
    counts, chosen = np.array(list(candidates)), int(np.argmax(likelihood))
    if estimator.verbose > 0:  # the candidates' fits ran silently: say what they found
        scores = ", ".join(f"{k}: {v:.5g}" for k, v in zip(counts, likelihood, strict=True))
        print(f"{type(estimator).__name__}: n_components={counts[chosen]} by the held-out "
              f"mean log-likelihood of the candidates ({scores})", file=sys.stderr)
    return {
        "samples_per_component": per_component,
        "n_components": counts,
        "held_out_log_likelihood": likelihood,
        "chosen": chosen,
    }
