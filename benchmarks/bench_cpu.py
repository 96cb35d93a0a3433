"""CPU reductions against the exponential's limit, and what each backend costs on first use.

Run on demand (never part of the test suite)::

    python benchmarks/bench_cpu.py                          # N = M = 1e4, d = 2 and 10
    python benchmarks/bench_cpu.py --dims 2 --dtypes float32 --out cpu.md

Two tables, both measured in this one invocation, so that their ratios compare like with like
on a shared machine:

1. **Throughput.**  For every ``d`` and dtype, the four reductions of the backend protocol
   (``value_grad`` of the MMD flows over ``N`` points against ``N + M`` sources,
   ``matvec``, and the log-domain ``logsumexp`` and ``softmax_moments`` of the inclusive KL,
   Gaussian kernel) on every backend in ``--backends``: warm seconds (median of
   ``--repeats``, after one call that compiles) and kernel entries ("pairs") per second.
   *The limit* is NumPy's vectorised ``exp`` alone over a long array, on one core, times the
   number of threads the compiled backends use: no Gaussian reduction can evaluate more
   pairs a second than it evaluates exponentials.  ``% of limit`` is pairs/s over it.
2. **First use.**  In a fresh process with an empty cache (``NUMBA_CACHE_DIR``,
   ``KEOPS_CACHE_FOLDER``): the import, then the first call of each reduction in float64
   (which compiles it), then the same in a second fresh process that finds the cache.

Progress goes to stderr, the markdown tables to stdout (and to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import make_data, write_table  # benchmarks/ is on sys.path when run as a script

REDUCTIONS = ("value_grad", "matvec", "logsumexp", "softmax_moments")


def log(msg: str) -> None:
    print(f"[bench_cpu] {msg}", file=sys.stderr, flush=True)


def _calls(engine, kernel, x, S, a):
    """The four reductions, each as a call without arguments."""
    V = a[:, None]
    return {
        "value_grad": lambda: engine.value_grad(kernel, x, S, V, a),
        "matvec": lambda: engine.matvec(kernel, x, S, V),
        "logsumexp": lambda: engine.logsumexp(kernel, x, S, np.log(np.abs(a))),
        "softmax_moments": lambda: engine.softmax_moments(kernel, x, S, np.log(np.abs(a))),
    }


def _engine(name: str):
    from skgradflow.backends import KeOpsBackend, NumbaBackend, NumpyBackend

    return {"numba": NumbaBackend, "keops": lambda: KeOpsBackend("cpu"),
            "numpy": NumpyBackend}[name]()


def exp_limit(threads: int, dtype) -> float:
    """Exponentials per second: NumPy's vectorised exp on one core, times ``threads``."""
    x = -np.random.default_rng(0).random(10**7).astype(dtype)
    out = np.empty_like(x)
    best = min(_timed(lambda: np.exp(x, out=out)) for _ in range(5))
    return threads * x.size / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(args) -> list[str]:
    from skgradflow.kernels import Kernel

    try:
        import numba

        threads = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        threads = os.cpu_count() or 1
    lines = [
        f"### Throughput: N = {args.n} points against N + M = {2 * args.n} sources",
        "",
        "| reduction | d | dtype | backend | warm s | pairs/s | % of limit |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    limits = {}
    for dtype in args.dtypes:
        limits[dtype] = exp_limit(threads, np.dtype(dtype))
        log(f"exp limit ({dtype}, {threads} threads): {limits[dtype]:.3g}/s")
        for d in args.dims:
            Y, x = make_data(args.n, args.n, d, dtype)
            S = np.concatenate([x, Y])
            a = np.random.default_rng(1).uniform(0.5, 1.5, size=S.shape[0]).astype(dtype)
            kernel = Kernel("gaussian", 1.0)
            pairs = x.shape[0] * S.shape[0]
            for name in args.backends:
                calls = _calls(_engine(name), kernel, x, S, a)
                for red in REDUCTIONS:
                    calls[red]()  # compile, or load from the cache
                    times = [_timed(calls[red]) for _ in range(args.repeats)]
                    t = float(np.median(times))
                    rate = pairs / t
                    log(f"{red}, d={d}, {dtype}, {name}: {t:.4g} s, {rate:.3g} pairs/s")
                    lines.append(
                        f"| {red} | {d} | {dtype} | {name} | {t:.3g} | {rate:.3g} "
                        f"| {100 * rate / limits[dtype]:.0f} |"
                    )
    lines += [
        "",
        "limit: " + ", ".join(f"{v:.3g} exp/s in {k}" for k, v in limits.items())
        + f" (NumPy's exp on one core × {threads} threads).",
        "",
    ]
    return lines


# --- first use: a fresh process, an empty cache ------------------------------------------------
def first_use_worker(backend: str) -> dict:
    t0 = time.perf_counter()
    if backend == "numba":
        import numba  # noqa: F401
    else:
        import pykeops  # noqa: F401
    result = {"import": time.perf_counter() - t0}
    from skgradflow.kernels import Kernel

    Y, x = make_data(200, 200, 2, np.float64)
    a = np.full(400, 1 / 400)
    calls = _calls(_engine(backend), Kernel("gaussian", 1.0), x, np.concatenate([x, Y]), a)
    for red in REDUCTIONS:
        result[red] = _timed(calls[red])
    return result


def first_use(args) -> list[str]:
    lines = [
        "### First use: import, then the first call of each reduction (float64, d = 2)",
        "",
        "| backend | cache | import s | " + " | ".join(f"{r} s" for r in REDUCTIONS)
        + " | total s |",
        "|---|---|---:|" + "---:|" * (len(REDUCTIONS) + 1),
    ]
    for backend in args.first_use:
        with tempfile.TemporaryDirectory(prefix="skgradflow-bench-cpu-") as tmp:
            env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "nb"),
                       KEOPS_CACHE_FOLDER=os.path.join(tmp, "keops"))
            for cache in ("empty", "filled"):
                proc = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", backend],
                    env=env, stdout=subprocess.PIPE, text=True,
                )
                if proc.returncode != 0:
                    lines.append(f"| {backend} | {cache} | failed (rc={proc.returncode}) |")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                total = r["import"] + sum(r[red] for red in REDUCTIONS)
                log(f"first use, {backend}, {cache} cache: {total:.2f} s")
                lines.append(
                    f"| {backend} | {cache} | {r['import']:.2f} | "
                    + " | ".join(f"{r[red]:.2f}" for red in REDUCTIONS) + f" | {total:.2f} |"
                )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="N = M (default 1e4)")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    p.add_argument("--dtypes", nargs="+", choices=["float64", "float32"],
                   default=["float64", "float32"])
    p.add_argument("--backends", nargs="+", choices=["numba", "keops", "numpy"],
                   default=["numba", "keops", "numpy"])
    p.add_argument("--first-use", nargs="*", choices=["numba", "keops"],
                   default=["numba", "keops"], help="backends whose first use is timed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the markdown tables to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(first_use_worker(args.worker)))
        return 0
    lines = [
        "## CPU reductions (Gaussian kernel)",
        "",
        f"{platform.platform()}; {os.cpu_count()} CPU cores; Python "
        f"{platform.python_version()}, NumPy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
    ]
    lines += throughput(args)
    if args.first_use:
        lines += first_use(args)
    write_table("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
