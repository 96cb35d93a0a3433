"""The Dask engine: seconds per IFTSampler iteration on many targets, the client's memory,
and the numbers of a scaling model.

* **time**: ``IFTSampler`` with N particles (default 1000) on M targets in d = 2, float64,
  generated lazily as a dask array (a 3-component Gaussian mixture, one seeded block per
  chunk), on a local cluster of ``--workers`` processes with one thread each and the Numba
  backend (one thread) inside every worker; against the single-process Numba backend (every
  core) on the computed array where M is at most ``--local-max``.  Seconds per iteration are
  the median gap between the callback's timestamps; ``first s`` is from the start of ``fit``
  to the end of the first iteration (generating and persisting the chunks, the estimate of
  ``½ bᵀK_yy b`` from 5000 draws, the initial evaluation).
* **client memory**: a fresh client process connects to the cluster by its address and fits
  on ``--memory-rows`` × 2 float32 targets (one iteration, ``--memory-particles``
  particles: the client's share does not grow with the targets); its peak resident memory
  (``VmHWM``) before and after the fit.
* **scaling model**: the time of one chunk's reduction (value and gradient of the kernel
  mean of 10⁶ rows at N particles, one thread), the pickled size of its partial result,
  and the scheduler's cost per task (many tiny chunks).

Run from the repository root, under ``nice`` on a shared machine::

    nice -n 19 python benchmarks/bench_dask.py --sizes 1e6 1e7 1e8 --iterations 4 3 2
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time

import numpy as np
from _common import write_file  # benchmarks/ is on sys.path when run as a script

D = 2
CENTERS = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])


def _mixture_block(block_id=None, *, rows: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng([0, block_id[0]])
    labels = rng.choice(3, size=rows, p=[0.5, 0.3, 0.2])
    return (CENTERS[labels] + 0.5 * rng.standard_normal((rows, D))).astype(dtype)


def lazy_targets(m: int, chunk: int, dtype: str):
    """An ``(m, 2)`` dask array of mixture samples, each chunk generated where it is used."""
    import dask.array as da

    sizes = [chunk] * (m // chunk) + ([m % chunk] if m % chunk else [])
    blocks = [
        da.from_delayed(
            __import__("dask").delayed(_mixture_block)((k, 0), rows=r, dtype=dtype),
            shape=(r, D), dtype=dtype,
        )
        for k, r in enumerate(sizes)
    ]
    return da.concatenate(blocks)


def time_fit(X, backend, n: int, iterations: int) -> dict:
    from skgradflow import IFTSampler

    init = np.random.default_rng(1).standard_normal((n, D)).astype(X.dtype)
    stamps: list[float] = []
    est = IFTSampler(n_particles=n, init=init, bandwidth=0.5, step_size=0.1, tol=0,
                     max_iter=iterations, backend=backend,
                     callback=lambda state: stamps.append(time.perf_counter()))
    start = time.perf_counter()
    est.fit(X)
    gaps = np.diff(stamps)
    return {"first_s": stamps[0] - start,
            "s_per_iter": float(np.median(gaps)) if gaps.size else float("nan"),
            "iterations": len(stamps), "loss": float(est.loss_curve_[-1])}


def peak_rss_mb() -> float:
    """This process's peak resident memory.  ``VmHWM`` where Linux has it: ``ru_maxrss``
    survives ``exec`` there, so a child started by a large parent would report the
    parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(address: str, rows: int, chunk: int, n: int) -> None:
    """In a fresh process: connect by address, fit one iteration, print the peaks."""
    import distributed

    from skgradflow.backends import DaskBackend, NumbaBackend

    client = distributed.Client(address)
    X = lazy_targets(rows, chunk, "float32")
    before = peak_rss_mb()
    backend = DaskBackend(client=client, inner=NumbaBackend(n_threads=1))
    result = time_fit(X, backend, n, 1)
    print(json.dumps({"rss_before_mb": before, "rss_peak_mb": peak_rss_mb(),
                      "target_mb": rows * D * 4 / 2**20, **result}))
    client.close()


def scaling_numbers(n: int) -> dict:
    """The per-chunk time, the partial result's size and the scheduler's cost per task."""
    from skgradflow.backends import NumbaBackend
    from skgradflow.backends._dask import _kernel_mean
    from skgradflow.kernels import Kernel

    rows = 1_000_000
    Y = _mixture_block((0, 0), rows=rows, dtype="float64")
    b = np.full(rows, 1.0 / rows)
    Z = np.random.default_rng(1).standard_normal((n, D))
    engine = NumbaBackend(n_threads=1)
    kern = Kernel("gaussian", 0.5)
    _kernel_mean((Y[:1000], b[:1000]), Z, kern, engine)  # compile / load the cache
    times = []
    for _ in range(3):
        t = time.perf_counter()
        out = _kernel_mean((Y, b), Z, kern, engine)
        times.append(time.perf_counter() - t)
    return {"chunk_rows": rows, "chunk_s": float(np.median(times)),
            "partial_bytes": len(pickle.dumps(out, protocol=5)),
            "particles_bytes": len(pickle.dumps(Z, protocol=5))}


def task_overhead(client) -> float:
    """Seconds per task of a reduction over many tiny chunks (the scheduler's share)."""
    from skgradflow.backends import DaskBackend
    from skgradflow.kernels import Kernel

    rows, chunk = 40_000, 100
    Y = np.random.default_rng(0).standard_normal((rows, D))
    bound = DaskBackend(client=client, inner="numpy", chunk_rows=chunk).bind(
        Y, np.full(rows, 1.0 / rows))
    Z = np.zeros((2, D))
    bound.kernel_mean(Kernel("gaussian", 1.0), Z)  # chunks persisted, workers warm
    t = time.perf_counter()
    for _ in range(3):
        bound.kernel_mean(Kernel("gaussian", 1.0), Z)
    return (time.perf_counter() - t) / 3 / (rows // chunk)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="*", default=[1e6, 1e7, 1e8],
                        help="target counts M to time (none: only the scaling and memory runs)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[4, 3, 2],
                        help="iterations per size (one value, or one per size)")
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--local-max", type=float, default=1e7)
    parser.add_argument("--memory-rows", type=float, default=1e8)
    parser.add_argument("--memory-particles", type=int, default=100,
                        help="particles of the memory run (its client holds O(N) arrays)")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--memory-child", nargs=3, metavar=("ADDRESS", "ROWS", "CHUNK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        address, rows, chunk = args.memory_child
        memory_child(address, int(float(rows)), int(chunk), args.particles)
        return
    import distributed

    from skgradflow.backends import DaskBackend, NumbaBackend

    iters = args.iterations * len(args.sizes) if len(args.iterations) == 1 else args.iterations
    iters = iters[: len(args.sizes)]
    results: dict = {"particles": args.particles, "workers": args.workers, "rows": []}
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        results["scaling"] = scaling_numbers(args.particles)
        results["scaling"]["task_overhead_s"] = task_overhead(client)
        print(json.dumps(results["scaling"]), file=sys.stderr)
        for m, k in zip(args.sizes, iters, strict=True):
            m = int(m)
            X = lazy_targets(m, min(args.chunk, m), "float64")
            row = {"M": m, "dask": time_fit(X, DaskBackend(
                client=client, inner=NumbaBackend(n_threads=1)), args.particles, k)}
            if m <= args.local_max:
                row["local"] = time_fit(X.compute(), NumbaBackend(), args.particles, k)
            results["rows"].append(row)
            print(json.dumps(row), file=sys.stderr)
        if args.memory_rows:
            out = subprocess.run(
                [sys.executable, __file__, "--particles", str(args.memory_particles),
                 "--memory-child", cluster.scheduler_address, str(args.memory_rows),
                 str(args.chunk)],
                capture_output=True, text=True, check=True, cwd=os.getcwd())
            results["memory"] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(results["memory"]), file=sys.stderr)
    if args.out:
        write_file(args.out, json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
