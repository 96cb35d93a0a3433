"""
Tuning the bandwidth and the reweighting rate
=============================================

``IFTSampler`` is a scikit-learn estimator, so ``GridSearchCV`` tunes it like any other.  Its
``score`` is minus the energy distance between the fitted particle measure and held-out data:
the energy distance has no bandwidth, so fits with different kernel bandwidths are judged on one
scale, which is what a search over ``bandwidth`` needs.  We search over the bandwidth and the
reweighting rate ``beta`` (``beta=0`` is the MMD flow) on a two-dimensional Gaussian mixture.
"""

# %%
# Data
# ----
# The built-in ``gmm2d`` mixture, standardised, with a quarter of the rows held out to judge
# the refitted best sampler.
import os
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # no backend chosen yet (a plain script run): draw off-screen
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.preprocessing import StandardScaler

from skgradflow import IFTSampler
from skgradflow.datasets import load_builtin
from skgradflow.plotting import plot_particles

OUTPUT = Path(os.environ.get("SKGRADFLOW_EXAMPLES_OUTPUT", "."))
OUTPUT.mkdir(parents=True, exist_ok=True)

X, _ = load_builtin("gmm2d", random_state=0)
X = StandardScaler().fit_transform(X)
X_train, X_test = train_test_split(X, test_size=0.25, random_state=0)

# %%
# The search
# ----------
# 100 particles and 100 iterations per fit (``tol=0``: a fixed budget, so every candidate gets
# the same number of steps), 3-fold cross-validation over 6 bandwidths and 3 rates: 54 fits.
bandwidths = [0.1, 0.2, 0.5, 1.0, 2.0, 4.0]
betas = [0.0, 1.0, 10.0]
search = GridSearchCV(
    IFTSampler(n_particles=100, max_iter=100, tol=0, random_state=0),
    {"bandwidth": bandwidths, "beta": betas},
    cv=3,
)
start = time.perf_counter()
search.fit(X_train)
print(f"{len(search.cv_results_['params']) * search.n_splits_} fits in "
      f"{time.perf_counter() - start:.1f} s")

# %%
# The results table
# -----------------
# ``cv_results_`` is a dict of arrays; pandas would print it as a data frame, but plain
# formatting is enough here.
results = search.cv_results_
print(f"\n{'rank':>4s} {'bandwidth':>9s} {'beta':>5s} {'mean score':>11s} {'std':>7s} "
      f"{'fit time (s)':>12s}")
for i in np.argsort(results["rank_test_score"], kind="stable"):
    print(f"{results['rank_test_score'][i]:4d} {results['param_bandwidth'][i]:9.1f} "
          f"{results['param_beta'][i]:5.1f} {results['mean_test_score'][i]:11.4f} "
          f"{results['std_test_score'][i]:7.4f} {results['mean_fit_time'][i]:12.2f}")

best = search.best_estimator_  # refitted on the whole training set
default = IFTSampler(n_particles=100, max_iter=100, tol=0, random_state=0).fit(X_train)
print(f"\nbest parameters {search.best_params_}, cross-validated score {search.best_score_:.4f}")
print(f"held-out energy distance: best {-best.score(X_test):.4f}, "
      f"defaults (bandwidth={default.bandwidth!r}, ending at {default.bandwidth_:.2f}, "
      f"beta={default.beta}) "
      f"{-default.score(X_test):.4f}")

# %%
# Heat map of the mean cross-validated score, and the best fit
# ------------------------------------------------------------
# Left: the energy distance (minus the mean test score) of every candidate, on a log colour
# scale.  Too small a bandwidth leaves particles that no data point pulls on; too large a one
# cannot resolve the modes; in between, the reweighting (``beta > 0``) helps.  Right: the
# refitted best sampler on the held-out data.
scores = np.empty((len(betas), len(bandwidths)))
for params, score in zip(results["params"], results["mean_test_score"], strict=True):
    scores[betas.index(params["beta"]), bandwidths.index(params["bandwidth"])] = score

fig, (ax_map, ax_best) = plt.subplots(1, 2, figsize=(12, 4.6),
                                      gridspec_kw={"width_ratios": [1.35, 1]})
image = ax_map.imshow(-scores, cmap="viridis_r", norm=LogNorm(), aspect="auto")
for (r, c), score in np.ndenumerate(scores):
    best_cell = (betas[r], bandwidths[c]) == (search.best_params_["beta"],
                                              search.best_params_["bandwidth"])
    ax_map.text(c, r, f"{score:.4f}", ha="center", va="center", fontsize=9,
                color="w" if -score > np.sqrt(scores.max() * scores.min()) else "k",
                fontweight="bold" if best_cell else "normal")
ax_map.set_xticks(range(len(bandwidths)), [str(b) for b in bandwidths])
ax_map.set_yticks(range(len(betas)), [str(b) for b in betas])
ax_map.set_xlabel("bandwidth")
ax_map.set_ylabel("beta (0 = MMD flow)")
ax_map.set_title("Mean cross-validated score (−energy distance)")
fig.colorbar(image, ax=ax_map, label="energy distance (log scale; lower is better)")

plot_particles(best, ax=ax_best, data=X_test, size=30)
ax_best.set_title(f"Best: bandwidth={search.best_params_['bandwidth']}, "
                  f"beta={search.best_params_['beta']}")
ax_best.set_xlabel("x (standardised)")
ax_best.set_ylabel("y (standardised)")
ax_best.legend(loc="upper left", fontsize=8)
fig.tight_layout()
fig.savefig(OUTPUT / "tuning.png", dpi=110, bbox_inches="tight")
print(f"figure saved in {OUTPUT.resolve()}")
