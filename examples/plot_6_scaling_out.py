"""
Scaling out: matching a distribution held as a dask array
=========================================================

When the target samples do not fit in one machine's memory, or already live on a cluster,
hand the estimator a ``dask.array.Array``: the rows stay in chunks on the Dask workers, each
iteration sends the particles to them, and only small partial sums come back (see the
"Scaling out" page).  Here 400 000 samples of a ring with a bar through it are generated
lazily, chunk by chunk on the workers, and ``IFTSampler`` fits 150 weighted particles to
them on a local cluster.

To run the same code on a real cluster, connect to its scheduler first,
``Client("tcp://scheduler:8786")``, and build ``X`` from your data (``da.from_zarr``,
``dask.dataframe.read_parquet(...).to_dask_array(lengths=True)``, ...); nothing else
changes.
"""

# %%
# A cluster and a large, lazily generated dataset
# ------------------------------------------------
# Two single-threaded workers in this process keep the example self-contained; a
# ``LocalCluster()`` of processes, or a remote scheduler's address, is used the same way.
import os
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import matplotlib
import numpy as np
from distributed import Client, LocalCluster

if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # no backend chosen yet (a plain script run): draw off-screen
import matplotlib.pyplot as plt

from skgradflow import IFTSampler
from skgradflow.metrics import energy_distance

OUTPUT = Path(os.environ.get("SKGRADFLOW_EXAMPLES_OUTPUT", "."))
OUTPUT.mkdir(parents=True, exist_ok=True)

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                       dashboard_address=":0")
client = Client(cluster)  # the default client from now on: estimators use it


def ring_and_bar(seed: int, rows: int) -> np.ndarray:
    """One chunk of the target distribution: 80% a noisy ring, 20% a horizontal bar."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, rows)
    ring = np.c_[np.cos(angle), np.sin(angle)] * 3 + 0.25 * rng.standard_normal((rows, 2))
    bar = np.c_[rng.uniform(-2, 2, rows), 0.2 * rng.standard_normal(rows)]
    return np.where(rng.uniform(size=(rows, 1)) < 0.8, ring, bar)


CHUNK, N_CHUNKS = 50_000, 8
X = da.concatenate([
    da.from_delayed(dask.delayed(ring_and_bar)(seed, CHUNK), shape=(CHUNK, 2), dtype=float)
    for seed in range(N_CHUNKS)
])
print(X)  # nothing computed yet

# %%
# Fitting on the cluster
# ----------------------
# ``fit`` validates ``X`` and initialises the particles with Dask reductions (the mean and
# covariance), persists the chunks on the workers and runs every sum over the targets there.
start = time.perf_counter()
sampler = IFTSampler(n_particles=150, bandwidth=0.5, max_iter=25, tol=0, random_state=0)
sampler.fit(X)
print(f"fitted on {X.shape[0]:,} targets in {time.perf_counter() - start:.1f} s "
      f"(backend_={sampler.backend_!r})")

# the energy distance to a held-out slice of the data, also computed on the workers
held_out = X[-5000:]
new = sampler.sample(2000, random_state=0)
start_measure = np.random.default_rng(1).multivariate_normal(
    X[:5000].mean(axis=0).compute(), np.cov(X[:5000].compute(), rowvar=False), 2000)
print(f"energy distance to held-out data: new samples {energy_distance(new, held_out):.4f}, "
      f"the moment-matched Gaussian {energy_distance(start_measure, held_out):.4f}")

# %%
# The fitted particles over a sample of the data
# ----------------------------------------------
shown = X[:: X.shape[0] // 4000].compute()
fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(*shown.T, s=2, c="0.75", label="targets (every 100th)")
ax.scatter(*sampler.particles_.T, s=4000 * sampler.weights_, c="C3", label="particles")
ax.set_aspect("equal")
ax.legend(loc="upper right", fontsize=8)
ax.set_title("IFTSampler fitted on a dask array")
fig.savefig(OUTPUT / "scaling_out.png", dpi=110, bbox_inches="tight")
print(f"figure saved in {OUTPUT.resolve()}")

client.close()
cluster.close()
