"""
Undoing a domain shift by distribution matching
===============================================

A classifier trained on one domain fails when the test features arrive shifted: here the test
batch of a two-moons problem is translated, stretched along one axis, squeezed along the other
and rotated by 20 degrees.  ``IFTSampler.transform`` maps a point set onto the fitted
distribution, so fitting the sampler on the *source* features and transforming the shifted
test batch brings it back where the classifier expects it -- without any labels from the
test domain.  Re-standardising the test batch with its own mean and standard deviation
(moment matching) undoes the translation and the scaling but not the rotation.
``transform`` follows its affine map by a smooth displacement field that bends the batch onto
the fitted particles, moving neighbouring points alike, so the two moons land on the fitted
moons whole: the accuracy goes from 0.59 to 0.99, against 0.89 for moment matching (the
run this example prints).
"""

# %%
# Source domain, shifted test domain and a classifier
# ---------------------------------------------------
import os
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np

if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # no backend chosen yet (a plain script run): draw off-screen
import matplotlib.pyplot as plt
from sklearn.datasets import make_moons
from sklearn.inspection import DecisionBoundaryDisplay
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from skgradflow import IFTSampler

OUTPUT = Path(os.environ.get("SKGRADFLOW_EXAMPLES_OUTPUT", "."))
OUTPUT.mkdir(parents=True, exist_ok=True)

X, y = make_moons(n_samples=1500, noise=0.15, random_state=0)
X_source, y_source, X_test, y_test = X[:1000], y[:1000], X[1000:], y[1000:]

# the shift: anisotropic scaling, a 20° rotation about the source mean, and a translation
angle = np.deg2rad(20.0)
rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
A = rotation @ np.diag([1.2, 0.85])
center = X_source.mean(axis=0)
X_shifted = (X_test - center) @ A.T + center + np.array([0.9, 0.4])

classifier = make_pipeline(StandardScaler(), SVC()).fit(X_source, y_source)

# %%
# Matching the shifted batch to the source distribution
# -----------------------------------------------------
# The sampler is fitted to the source features only (300 particles, a bandwidth of 2 and a
# fixed 300 iterations).  ``transform`` then maps the 500 shifted test points, as one set, onto
# the fitted particles: the affine map between the two sets' means and covariances (which
# undoes this shift's translation and stretch), then the smoothest displacement field that
# lands the set on the particles (an optimal transport plan follows only where no such field
# within its displacement bound lands it).
start = time.perf_counter()
matcher = IFTSampler(n_particles=300, bandwidth=2.0, max_iter=300, tol=0, random_state=0)
matcher.fit(X_source)
X_matched = matcher.transform(X_shifted)
print(f"IFTSampler fit + transform: {time.perf_counter() - start:.1f} s "
      f"({matcher.backend_} backend)")

X_moments = ((X_shifted - X_shifted.mean(axis=0)) / X_shifted.std(axis=0)
             * X_source.std(axis=0) + X_source.mean(axis=0))

accuracy = {
    "test, no shift": classifier.score(X_test, y_test),
    "test, shifted": classifier.score(X_shifted, y_test),
    "shifted, moment matching": classifier.score(X_moments, y_test),
    "shifted, IFTSampler.transform": classifier.score(X_matched, y_test),
}
for name, value in accuracy.items():
    print(f"accuracy {name:31s} {value:.3f}")

# %%
# The same in a pipeline
# ----------------------
# Put the sampler in front of the classifier: ``fit`` fits it on the source features (and
# trains the classifier on the source features moved onto its particles, almost unchanged),
# and ``predict``/``score`` transform every incoming batch before classifying it.  The
# transform matches a whole batch to the source distribution, so the batch must be a
# representative sample of its domain (a single point is mapped to the fitted mean).
start = time.perf_counter()
pipeline = make_pipeline(
    IFTSampler(n_particles=300, bandwidth=2.0, max_iter=300, tol=0, random_state=0),
    StandardScaler(),
    SVC(),
)
pipeline.fit(X_source, y_source)
print(f"\npipeline fitted in {time.perf_counter() - start:.1f} s")
print(f"pipeline accuracy on the test batch, no shift  {pipeline.score(X_test, y_test):.3f}")
print(f"pipeline accuracy on the test batch, shifted   {pipeline.score(X_shifted, y_test):.3f}")

# %%
# Before and after
# ----------------
# The shaded regions are the classifier's decisions, learnt on the source domain.  Test points
# are coloured by their true class; crosses mark the misclassified ones.  Thin lines join a
# few shifted points to where the transform moved them.
fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), sharex=True, sharey=True)
panels = [
    ("Source domain (training data)", X_source, y_source),
    (f"Shifted test batch: accuracy {accuracy['test, shifted']:.3f}", X_shifted, y_test),
    (f"After IFTSampler.transform: accuracy {accuracy['shifted, IFTSampler.transform']:.3f}",
     X_matched, y_test),
]
for ax, (title, points, labels) in zip(axes, panels, strict=True):
    DecisionBoundaryDisplay.from_estimator(
        classifier, np.concatenate([X_source, X_shifted, X_matched]), ax=ax,
        response_method="predict",
        cmap="coolwarm", alpha=0.15, grid_resolution=200,
    )
    wrong = classifier.predict(points) != labels
    for k, color in enumerate(["C0", "C3"]):
        ax.scatter(*points[(labels == k) & ~wrong].T, s=8, c=color, label=f"class {k}")
    ax.scatter(*points[wrong].T, s=20, marker="x", c="k", lw=0.8, label="misclassified")
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("feature 0")
for start_point, end_point in zip(X_shifted[::10], X_matched[::10], strict=True):
    axes[2].plot(*np.stack([start_point, end_point]).T, c="0.4", lw=0.5, zorder=0)
axes[2].scatter(*X_shifted[::10].T, s=6, c="0.4", label="shifted position (every 10th)",
                zorder=0)
axes[0].set_ylabel("feature 1")
for ax in axes:
    ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
fig.savefig(OUTPUT / "domain_shift.png", dpi=110, bbox_inches="tight")
print(f"figure saved in {OUTPUT.resolve()}")
