"""Speed on busy CPUs and on small and medium problems: what a user's machine does to a fit.

Run on demand (never part of the test suite)::

    python benchmarks/bench_contention.py                    # every table, a few minutes
    python benchmarks/bench_contention.py --tables calls --dims 2 16 --out contention.md

Six tables, the first five measured in this one invocation, so that their ratios compare like
with like on a shared machine.  *Busy* means beside two processes that spin on the CPU for as long
as the rows take (started by this script, at its own priority, and stopped after them).

1. **fits**: one default ``IFTSampler(random_state=0)`` fit plus ``sample(1000)`` on the
   digits reduced to 16 dimensions by PCA (1797 × 16, standardised), for every engine
   (``auto``, ``numba`` on its default threads, ``numba`` pinned to one thread, ``numpy``),
   quiet and busy; ``busy / quiet`` is the slowdown.
2. **pinned**: the default fit + sample on 1257 digits rows (the 70% split of the sample
   benchmark), ``backend="auto"`` against the same fit pinned to one thread, in alternating
   order in one process (``--rounds`` pairs), quiet and busy: the median and the largest ratio
   of a pair, and how many of auto's reductions ran on more than one thread.
3. **grid**: ``GridSearchCV(IFTSampler(n_particles=100, max_iter=100, tol=0), {"bandwidth":
   [0.3, 1, 3], "beta": [0, 1]}, cv=3)`` on 1500 2-D points, ``n_jobs=1`` against ``n_jobs=2``,
   quiet and busy.
4. **calls**: one ``value_grad`` reduction (the MMD flows' witness and gradient) of ``N``
   points against ``M`` sources, for ``d`` in ``--dims``, on every engine in ``--engines``
   (``numba, per-pair loop``: the Numba backend without its blocked loops for d >= 8): the
   best of ``--repeats`` warm calls, quiet only; then NumPy's time less Numba's per kernel
   entry, the figures ``AUTO_NUMBA_SAVES_NS`` in ``skgradflow/backends/_registry.py`` holds.
5. **starts**: Numba's start in a fresh process, for each ``d``: importing it, then the first
   ``value_grad`` and ``matvec`` (compiled with an empty ``NUMBA_CACHE_DIR``, then loaded from
   the cache that run filled): ``AUTO_NUMBA_WARM_START_S`` and ``AUTO_NUMBA_COLD_START_S``.
6. **crossovers**: no measurement: from how many calls of each size ``backend="auto"`` picks
   Numba, with its loops loaded in the process, in its disk cache, or to compile, from the
   figures the registry holds.

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


class PerPairLoop:
    """The Numba backend with the per-pair loop over coordinates at every d (its blocked
    loops, the matrix products it uses from ``BLOCKED_MIN_DIMS`` coordinates, turned off)."""

    def __init__(self) -> None:
        from skgradflow.backends import NumbaBackend

        self.engine = NumbaBackend()

    def value_grad(self, *args):
        from skgradflow.backends import _numba

        blocked_from, _numba.BLOCKED_MIN_DIMS = _numba.BLOCKED_MIN_DIMS, 10**9
        try:
            return self.engine.value_grad(*args)
        finally:
            _numba.BLOCKED_MIN_DIMS = blocked_from


def engine(name: str):
    from skgradflow.backends import KeOpsBackend, NumbaBackend, NumpyBackend

    return {"auto": lambda: "auto", "numba": NumbaBackend,
            "numba, 1 thread": lambda: NumbaBackend(n_threads=1),
            "numba, per-pair loop": PerPairLoop, "numpy": NumpyBackend,
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


def pinned(args) -> list[str]:
    """The target case, fit + sample on 1257 × 16 digits rows: ``backend="auto"`` against the
    same fit pinned to one thread (``NUMBA_NUM_THREADS=1``, read by the backend at every
    reduction), in alternating order, ``--rounds`` pairs, quiet and busy."""
    from sklearn.utils import check_random_state

    from skgradflow import IFTSampler
    from skgradflow.backends import _numba

    X = digits16()[check_random_state(0).permutation(1797)[:1257]]
    threads: list[int] = []
    default_threads = _numba.default_threads

    def counted() -> int:
        n = default_threads()
        threads.append(n)
        return n

    def one(pin: bool) -> float:
        before = os.environ.pop("NUMBA_NUM_THREADS", None)
        if pin:
            os.environ["NUMBA_NUM_THREADS"] = "1"
        try:
            t0 = time.perf_counter()
            IFTSampler(random_state=0).fit(X).sample(X.shape[0], random_state=0)
            return time.perf_counter() - t0
        finally:
            os.environ.pop("NUMBA_NUM_THREADS", None)
            if before is not None:
                os.environ["NUMBA_NUM_THREADS"] = before

    one(False)  # the engine chosen and its loops loaded before any timing
    lines = ["### Default fit + sample(1257), digits PCA16 (1257 × 16): auto against one thread, "
             f"{args.rounds} alternating pairs", "",
             "| machine | auto s (median) | 1 thread s (median) | auto / 1 thread: median | "
             "max | reductions auto ran on > 1 thread |", "|---|---:|---:|---:|---:|---:|"]
    _numba.default_threads = counted
    try:
        for machine in ("quiet", "busy"):
            auto, single, multi, calls = [], [], 0, 0
            with busy(2) if machine == "busy" else contextlib.nullcontext():
                for r in range(args.rounds):
                    for pin in (r % 2 == 1, r % 2 == 0):
                        threads.clear()
                        seconds = one(pin)
                        if pin:
                            single.append(seconds)
                        else:
                            auto.append(seconds)
                            multi += sum(n > 1 for n in threads)
                            calls += len(threads)
            ratios = np.array(auto) / np.array(single)
            log(f"pinned, {machine}: auto {np.round(auto, 2)}, 1 thread {np.round(single, 2)}")
            lines.append(f"| {machine} | {np.median(auto):.2f} | {np.median(single):.2f} | "
                         f"{np.median(ratios):.2f} | {ratios.max():.2f} | "
                         f"{multi} of {calls} |")
    finally:
        _numba.default_threads = default_threads
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


def auto_from(n_pairs: int, d: int) -> list[str]:
    """The number of such calls in a run from which ``backend="auto"`` picks Numba: with its
    loops loaded in the process, in its disk cache, and still to compile (the rule of
    ``_registry._numba_pays_off``, from the savings and starts it holds)."""
    from skgradflow.backends import _registry

    saving = _registry.numba_saving_s(n_pairs, d)
    if saving <= 0:
        return ["never"] * 3
    starts = (0.0, _registry.AUTO_NUMBA_WARM_START_S, _registry.AUTO_NUMBA_COLD_START_S)
    return [f"{max(1, int(np.ceil(start / saving))):,}" for start in starts]


def crossovers(args) -> list[str]:
    """No measurement: what ``backend="auto"`` makes of the figures it holds, at each size."""
    lines = ["### backend=\"auto\": from how many value_grad calls of N × M a run goes to Numba",
             "", "| N | M | d | Numba's loops loaded | in its disk cache | to compile |",
             "|---:|---:|---:|---:|---:|---:|"]
    for n, m in args.sizes:
        for d in args.dims:
            lines.append(f"| {n} | {m} | {d} | " + " | ".join(auto_from(n * m, d)) + " |")
    return lines + [""]


def calls(args) -> list[str]:
    from skgradflow.kernels import Kernel

    lines = ["### One value_grad reduction, warm (best of repeats)", "",
             "| N | M | d | " + " | ".join(f"{e} ms" for e in args.engines)
             + " | numpy / numba |", "|---:|---:|---:|" + "---:|" * (len(args.engines) + 1)]
    saved: dict[int, list[float]] = {}
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
                # OpenBLAS's threads spin for a while after the NumPy engine's last product,
                # taking the cores from the next engine's threads: let them park first
                time.sleep(0.3)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    be.value_grad(kernel, Z, S, V, V[:, 0])
                    times.append(time.perf_counter() - t0)
                # the best of the repeats: on a shared machine, the calls that other jobs did
                # not interrupt
                row[name] = 1e3 * float(np.min(times))
            log(f"calls, N={n} M={m} d={d}: {row}")
            ratio = ""
            if {"numpy", "numba"} <= row.keys():
                ratio = f"{row['numpy'] / row['numba']:.1f}"
                saved.setdefault(d, []).append(1e6 * (row["numpy"] - row["numba"]) / (n * m))
            lines.append(f"| {n} | {m} | {d} | " + " | ".join(f"{row[e]:.3g}" for e in
                                                              args.engines)
                         + f" | {ratio} |")
    lines += [""]
    if saved:
        lines += ["NumPy's time less Numba's (default threads) per kernel entry, ns, at each size "
                  "above (the figures `backend=\"auto\"` weighs against Numba's start):", "",
                  "| d | " + " | ".join(f"{n}×{m}" for n, m in args.sizes) + " |",
                  "|---:|" + "---:|" * len(args.sizes)]
        lines += [f"| {d} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
                  for d, values in saved.items()]
        lines += [""]
    return lines


# --- Numba's start in a fresh process: an empty cache, then the cache it filled ---------------
def start_worker(d: int) -> dict:
    import skgradflow  # noqa: F401 (imported before the clock starts: a fit has it already)
    from skgradflow.backends import NumbaBackend
    from skgradflow.kernels import Kernel

    t0 = time.perf_counter()
    from skgradflow.backends import _numba_kernels  # noqa: F401 (imports Numba)

    result = {"import": time.perf_counter() - t0}
    rng = np.random.default_rng(0)
    Z, S = rng.normal(size=(100, d)), rng.normal(size=(300, d))
    V = np.full((300, 1), 1.0 / 300)
    kernel = Kernel("gaussian", 1.0)
    for name, call in (("value_grad", lambda: NumbaBackend().value_grad(kernel, Z, S, V, V[:, 0])),
                       ("matvec", lambda: NumbaBackend().matvec(kernel, Z, S, V))):
        t0 = time.perf_counter()
        call()
        result[name] = time.perf_counter() - t0
    return result


def starts(args) -> list[str]:
    import json
    import tempfile

    lines = ["### Numba's start in a fresh process (float64): importing Numba and the loops' "
             "module (skgradflow imported already), first value_grad, first matvec", "",
             "| d | cache | import s | value_grad s | matvec s | total s |",
             "|---:|---|---:|---:|---:|---:|"]
    for d in args.dims:
        with tempfile.TemporaryDirectory(prefix="skgradflow-bench-start-") as tmp:
            for cache in ("empty", "filled"):
                proc = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--start-worker", str(d)],
                    env=dict(os.environ, NUMBA_CACHE_DIR=tmp), stdout=subprocess.PIPE,
                    text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                total = sum(r.values())
                log(f"start, d={d}, {cache} cache: {r}")
                lines.append(f"| {d} | {cache} | {r['import']:.2f} | {r['value_grad']:.2f} | "
                             f"{r['matvec']:.2f} | {total:.2f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", nargs="+",
                   choices=["fits", "pinned", "grid", "calls", "starts", "crossovers"],
                   default=["fits", "pinned", "grid", "calls", "starts", "crossovers"])
    p.add_argument("--rounds", type=int, default=7,
                   help="alternating pairs of fits in the pinned table")
    p.add_argument("--fit-engines", nargs="+", default=["auto", "numba", "numba, 1 thread",
                                                         "numpy"])
    p.add_argument("--engines", nargs="+",
                   choices=["numba", "numba, 1 thread", "numba, per-pair loop", "numpy", "keops"],
                   default=["numba", "numba, 1 thread", "numba, per-pair loop", "numpy"])
    p.add_argument("--dims", type=int, nargs="+", default=[2, 8, 16, 32])
    p.add_argument("--sizes", type=lambda s: tuple(int(float(v)) for v in s.split("x")),
                   nargs="+", default=[(30, 100), (100, 400), (500, 1757), (2000, 8000)],
                   help="N x M pairs, e.g. 500x2257")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", help="also write the markdown tables to this file")
    p.add_argument("--start-worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.start_worker is not None:
        import json

        print(json.dumps(start_worker(args.start_worker)))
        return 0
    lines = ["## Busy CPUs, small and medium problems", "",
             f"{platform.platform()}; {len(os.sched_getaffinity(0))} CPU cores; Python "
             f"{platform.python_version()}, NumPy {np.__version__}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}; load average before: "
             f"{os.getloadavg()[0]:.1f}.", ""]
    for table in args.tables:
        lines += {"fits": fits, "pinned": pinned, "grid": grid, "calls": calls, "starts": starts,
                  "crossovers": crossovers}[table](args)
    write_table("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
