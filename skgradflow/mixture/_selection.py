"""``n_components="auto"`` and ``covariance="auto"``: the number of components and the
components' shape by the likelihood of held-out samples.

A kernel mixture of ``K`` components at a fixed width is a kernel density estimate whose
``n/K`` samples per component are pooled into one atom: the more components, the more of the
samples' detail the mixture keeps.  The right amount is a property of the data (a thin
manifold in 3 dimensions wants an atom per sample, a diffuse cloud in 50 a few per hundred),
so "auto" measures it: it fits each candidate on three quarters of the samples and keeps the
one whose mixture gives the other quarter the highest mean log-likelihood, the criterion the
fit itself maximises, judged on samples it has not seen (design page, "How many
components").  The shape is chosen the same way, between isotropic components and one shape
shared by all and learnt with them (design page, "Isotropic or tied"): where the features
are correlated, the tied shape follows them, and the held-out likelihood says so.
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


def select_components(estimator, data: Data, rng: np.random.Generator, counts: bool,
                      modes: tuple[str, ...]) -> dict | None:
    """The held-out comparison of the candidates for ``estimator`` (with its other
    parameters) on ``data``: every count of :data:`SAMPLES_PER_COMPONENT` (``counts``; else
    the estimator's own) for every covariance mode in ``modes``, each fitted on three
    quarters of the samples and scored on the other quarter.  ``None`` where there is
    nothing to choose (too few samples, or a single candidate), otherwise a dict of arrays,
    one entry per candidate: ``samples_per_component`` (10, 3 or 1, the first that gives
    the count: at the cap the count has ``n / MAX_COMPONENTS`` of them; 0 for a given
    count), ``n_components`` (on all the samples), ``covariance`` and
    ``held_out_log_likelihood`` (``-inf`` for a candidate whose fit failed), and ``chosen``,
    the index of the best; with ``verbose``, the comparison is printed."""
    n = data.n_distinct()
    if n < MIN_DISTINCT:
        return None
    candidates = []  # (components on all the samples, samples per component, mode)
    for mode in modes:
        if not counts:  # the given count (an int, or an init array's rows)
            candidates.append((estimator._n_atoms(data), 0, mode))
            continue
        seen = set()
        for per in SAMPLES_PER_COMPONENT:
            # a shared shape learnt with a component per sample is the scatter of each
            # sample about itself: it shrinks to the reg_covar floor and scores the held-out
            # samples at -inf in practice (-1e7 on breast cancer), so the tied candidates
            # pool at least three samples per component
            if mode == "tied" and per < 3:
                continue
            count = n_components_for(n, per)
            if count not in seen:  # the first `per` that gives the count wins
                seen.add(count)
                candidates.append((count, per, mode))
    if len(candidates) == 1:
        return None
    rest, held = data.held_out(HELD_OUT_FRACTION, rng)
    n_rest = rest.n_distinct()
    if n_rest < 2 or held.n_distinct() < 1:  # a draw left a part without weight (dask)
        return None
    likelihood = np.empty(len(candidates))
    failures: list[Exception] = []
    widths = {}  # bandwidth="auto": each mode's first candidate's, for its others
    for k, (n_components, per, mode) in enumerate(candidates):
        # on the three quarters, one per `per` of their samples; a candidate at the cap,
        # which has n/MAX_COMPONENTS samples per component on all of them, as many there;
        # a given count as it is, at most the distinct samples there.
        # Each candidate once (n_init=1), silently: an unconverged candidate is compared as
        # it is, and only the final fit's warnings concern the user
        if per == 0:  # an init array keeps its rows; an int, at most the distinct samples
            tried = estimator.n_components
            if isinstance(estimator.init, str) and not isinstance(tried, str):
                tried = max(1, min(int(tried), n_rest))
        elif n_components < MAX_COMPONENTS:
            tried = n_components_for(n_rest, per)
        else:
            tried = max(1, min(n_rest, round(MAX_COMPONENTS * n_rest / n)))
        run = variant(estimator, n_components=tried, covariance=mode, n_init=1,
                      warm_start=False, verbose=0, callback=None, **widths.get(mode, {}))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                run._fit(rest)
            likelihood[k] = run._mean_log_likelihood(held)
        except (np.linalg.LinAlgError, FloatingPointError) as error:
            # a candidate the arithmetic fails on (a shape rounded past positive
            # definiteness, a step the safeguard cannot shrink) is out of the comparison;
            # the others decide, and if every one failed the first failure is the answer
            failures.append(error)
            likelihood[k] = -np.inf
            continue
        if estimator.bandwidth == "auto":
            # the leave-one-out width depends on the rows only (a pass over all their pairs
            # at 48 widths), in the coordinates of the mode: computed once per mode
            widths.setdefault(mode, {"bandwidth": run.bandwidth_})
    likelihood[~np.isfinite(likelihood)] = -np.inf  # nan: as a failure
    if not np.any(np.isfinite(likelihood)):
        if failures:
            raise failures[0]
        raise FloatingPointError(
            "InclusiveKLFitter(n_components='auto' or covariance='auto'): no candidate's "
            "held-out log-likelihood is finite; give n_components as an int and a "
            "covariance mode.")
    chosen = int(np.argmax(likelihood))
    if estimator.verbose > 0:  # the candidates' fits ran silently: say what they found
        scores = ", ".join(f"{c} {m}: {v:.5g}" for (c, _, m), v in
                           zip(candidates, likelihood, strict=True))
        print(f"{type(estimator).__name__}: n_components={candidates[chosen][0]}, "
              f"covariance={candidates[chosen][2]!r} by the held-out mean log-likelihood of "
              f"the candidates ({scores})", file=sys.stderr)
    return {
        "samples_per_component": np.array([c[1] for c in candidates]),
        "n_components": np.array([c[0] for c in candidates]),
        "covariance": np.array([c[2] for c in candidates]),
        "held_out_log_likelihood": likelihood,
        "chosen": chosen,
    }
