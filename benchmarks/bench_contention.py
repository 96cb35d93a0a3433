"""Speed on busy CPUs and on small and medium problems: what a user's machine does to a fit.

Run on demand (never part of the test suite)::

    python benchmarks/bench_contention.py                    # every table, a few minutes
    python benchmarks/bench_contention.py --tables calls --dims 2 16 --out contention.md

Three tables, every row measured in this one invocation, so that their ratios compare like with
like on a shared machine.  *Busy* means beside two processes that spin on the CPU for as long
as the rows take (started by this script, at its own priority, and stopped after them).

1. **fits**: one default ``IFTSampler(random_state=0)`` fit plus ``sample(1000)`` on the
   digits reduced to 16 dimensions by PCA (1797 × 16, standardised), for every engine
   (``auto``, ``numba`` on its default threads, ``numba`` pinned to one thread, ``numpy``),
   quiet and busy; ``busy / quiet`` is the slowdown.
2. **grid**: ``GridSearchCV(IFTSampler(n_particles=100, max_iter=100, tol=0), {"bandwidth":
   [0.3, 1, 3], "beta": [0, 1]}, cv=3)`` on 1500 2-D points, ``n_jobs=1`` against ``n_jobs=2``,
   quiet and busy.
3. **calls**: one ``value_grad`` reduction (the MMD flows' witness and gradient) of ``N``
   points against ``M`` sources, for ``d`` in ``--dims``, on every engine in ``--engines``:
   the median of ``--repeats`` warm calls, quiet only; the crossovers ``backend="auto"`` uses
   are in ``skgradflow/backends/_registry.py``.

Progress goes to stderr, the markdown tables to stdout (and to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time

import numpy as np
from _common import write_table  # benchmarks/ is on sys.path when run as a script

SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass"


def log(msg: str) -> None:
    print(f"[bench_contention] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def busy(n: int):
    """``n`` processes spinning on the CPU while the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def engine(name: str):
    from skgradflow.backends import KeOpsBackend, NumbaBackend, NumpyBackend

    return {"auto": lambda: "auto", "numba": NumbaBackend,
            "numba, 1 thread": lambda: NumbaBackend(n_threads=1), "numpy": NumpyBackend,
            "keops": lambda: KeOpsBackend("cpu")}[name]()


def digits16() -> np.ndarray:
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    X = PCA(16, random_state=0).fit_transform(load_digits().data)
    return (X - X.mean(axis=0)) / X.std(axis=0)


def time_fit(backend, X: np.ndarray) -> tuple[float, str]:
    from skgradflow import IFTSampler

    t0 = time.perf_counter()
    est = IFTSampler(random_state=0, backend=backend).fit(X)
    est.sample(1000, random_state=0)
    return time.perf_counter() - t0, f"{est.backend_}, {est.n_iter_} iterations"


def fits(args) -> list[str]:
    X = digits16()
    for name in args.fit_engines:  # compiled or loaded from the cache before any timing
        time_fit(engine(name), X[:200])
    lines = ["### One default fit + sample(1000), digits PCA16 (1797 × 16)", "",
             "| engine | ran on | quiet s | busy s | busy / quiet |", "|---|---|---:|---:|---:|"]
    for name in args.fit_engines:
        quiet, ran = time_fit(engine(name), X)
        with busy(2):
            loaded, _ = time_fit(engine(name), X)
        log(f"fit, {name}: quiet {quiet:.2f} s, busy {loaded:.2f} s ({ran})")
        lines.append(f"| {name} | {ran} | {quiet:.2f} | {loaded:.2f} | {loaded / quiet:.2f} |")
    return lines + [""]


def grid(args) -> list[str]:
    from sklearn.model_selection import GridSearchCV

    from skgradflow import IFTSampler

    X = np.random.default_rng(0).normal(size=(1500, 2))
    params = {"bandwidth": [0.3, 1, 3], "beta": [0, 1]}

    def search(n_jobs: int) -> float:
        t0 = time.perf_counter()
        GridSearchCV(IFTSampler(n_particles=100, max_iter=100, tol=0, random_state=0), params,
                     cv=3, n_jobs=n_jobs).fit(X)
        return time.perf_counter() - t0

    search(2)  # joblib's workers started, the loops compiled or cached
    lines = ["### GridSearchCV, 6 candidates × 3 folds, 1500 × 2", "",
             "| machine | n_jobs=1 s | n_jobs=2 s | n_jobs=2 / n_jobs=1 |", "|---|---:|---:|---:|"]
    for machine in ("quiet", "busy"):
        with busy(2) if machine == "busy" else contextlib.nullcontext():
            one, two = search(1), search(2)
        log(f"grid, {machine}: n_jobs=1 {one:.2f} s, n_jobs=2 {two:.2f} s")
        lines.append(f"| {machine} | {one:.2f} | {two:.2f} | {two / one:.2f} |")
    return lines + [""]


def calls(args) -> list[str]:
    from skgradflow.kernels import Kernel

    lines = ["### One value_grad reduction, warm (median), quiet", "",
             "| N | M | d | " + " | ".join(f"{e} ms" for e in args.engines)
             + " | numpy / numba |", "|---:|---:|---:|" + "---:|" * (len(args.engines) + 1)]
    rng = np.random.default_rng(0)
    for n, m in args.sizes:
        for d in args.dims:
            Z, S = rng.normal(size=(n, d)), rng.normal(size=(m, d))
            V = np.full((m, 1), 1.0 / m)
            kernel = Kernel("gaussian", float(np.sqrt(d)))
            row = {}
            for name in args.engines:
                be = engine(name)
                be.value_grad(kernel, Z, S, V, V[:, 0])
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    be.value_grad(kernel, Z, S, V, V[:, 0])
                    times.append(time.perf_counter() - t0)
                row[name] = 1e3 * float(np.median(times))
            log(f"calls, N={n} M={m} d={d}: {row}")
            ratio = (f"{row['numpy'] / row['numba']:.1f}" if {"numpy", "numba"} <= row.keys()
                     else "")
            lines.append(f"| {n} | {m} | {d} | " + " | ".join(f"{row[e]:.2f}" for e in
                                                              args.engines) + f" | {ratio} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", nargs="+", choices=["fits", "grid", "calls"],
                   default=["fits", "grid", "calls"])
    p.add_argument("--fit-engines", nargs="+", default=["auto", "numba", "numba, 1 thread",
                                                         "numpy"])
    p.add_argument("--engines", nargs="+", choices=["numba", "numba, 1 thread", "numpy", "keops"],
                   default=["numba", "numba, 1 thread", "numpy"])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 8, 16, 32])
    p.add_argument("--sizes", type=lambda s: tuple(int(float(v)) for v in s.split("x")),
                   nargs="+", default=[(100, 400), (500, 2257), (2000, 8000)],
                   help="N x M pairs, e.g. 500x2257")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", help="also write the markdown tables to this file")
    args = p.parse_args(argv)
    lines = ["## Busy CPUs, small and medium problems", "",
             f"{platform.platform()}; {len(os.sched_getaffinity(0))} CPU cores; Python "
             f"{platform.python_version()}, NumPy {np.__version__}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}; load average before: "
             f"{os.getloadavg()[0]:.1f}.", ""]
    for table in args.tables:
        lines += {"fits": fits, "grid": grid, "calls": calls}[table](args)
    write_table("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
