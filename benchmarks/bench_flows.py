"""Seconds per iteration of every estimator's fit, KeOps, Numba and NumPy, cold and warm.

Run on demand (never part of the test suite)::

    python benchmarks/bench_flows.py                       # N = 1e3, M = 1e5, d = 2 and 10
    python benchmarks/bench_flows.py --m 10000 --dims 2 --estimators ift1 wfr --out flows.md

Estimators (``--estimators``): ``ift1`` = ``IFTSampler(weight_steps=1)``, ``ift3`` =
``IFTSampler(weight_steps=3)`` (the default), ``wfr`` = ``WFRMMDFlow``, ``ikl`` =
``InclusiveKLFitter``; ``N`` (``--n``) particles or components, ``M`` (``--m``) targets,
every dimension in ``--dims`` and backend in ``--backends``.  All use the Gaussian kernel
with a fixed float ``bandwidth`` (1.0), an explicit ``step_size`` (0.1: below the transport
bound ``h²/2`` and the reaction bound of every flow, so no step is rejected), ``tol=0`` (so
exactly ``max_iter`` iterations run) and the same initial atoms, passed as an ``init``
array (``N(0, I)`` draws).  The targets are a seeded 3-component Gaussian mixture.

Each (estimator, d, backend) runs in its own subprocess whose environment has
``KEOPS_CACHE_FOLDER`` set to a fresh, empty temporary folder before ``pykeops`` is
imported, so that nothing is compiled yet.  In that process:

- ``import`` is the time of ``import pykeops`` (not part of any other column);
- ``cold fit`` is the first ``fit`` with ``max_iter=k1``: for KeOps it compiles every formula
  the estimator uses (they are all called in the first iteration);
- then, warm, ``fit(max_iter=k1)`` and ``fit(max_iter=k2)`` are timed in turn, ``--repeats``
  times or until ``--budget`` seconds are spent (at least once);
  ``warm s/iter = median over repeats of (t(k2) - t(k1)) / (k2 - k1)``: validation,
  initialisation, the constant of the energy and the initial evaluation are the same in
  both fits and cancel;
- ``warm fit`` is the median ``t(k1)``; ``setup`` is ``warm fit - k1 × warm s/iter`` (the
  per-fit cost that is not iterations); ``compile ≈ cold fit - warm fit``.

``load`` is the 1-minute load average (``os.getloadavg``) when the configuration's process
started and when it ended: on a shared machine it says how much the cores were contended
(KeOps' OpenMP threads suffer more from contention than NumPy's single-threaded ``cdist``).
``keops/this`` is the KeOps warm s/iter over this backend's, for the same estimator and
dimension (both measured by this invocation, one after the other): above 1, faster than
KeOps.  The Numba cache (``NUMBA_CACHE_DIR``) is fresh too, so ``compile`` is Numba's
first-use cost on a new machine.  Progress goes to
stderr, the markdown table to stdout (and to ``--out``).  Timings on a shared machine are
noisy: compare the ratios of one run, not absolute seconds from different runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from _common import SEED, make_data, write_file  # benchmarks/ is on sys.path when run as a script

BANDWIDTH = 1.0
STEP_SIZE = 0.1
ESTIMATORS = {
    "ift1": "IFTSampler(weight_steps=1)",
    "ift3": "IFTSampler(weight_steps=3)",
    "wfr": "WFRMMDFlow",
    "ikl": "InclusiveKLFitter",
}


def log(msg: str) -> None:
    print(f"[bench_flows] {msg}", file=sys.stderr, flush=True)


def make_estimator(name: str, x0: np.ndarray, backend: str, max_iter: int):
    from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow

    common = dict(
        bandwidth=BANDWIDTH,
        step_size=STEP_SIZE,
        tol=0.0,
        init=x0,
        backend=backend,
        max_iter=max_iter,
        random_state=SEED,
    )
    n = x0.shape[0]
    if name in ("ift1", "ift3"):
        return IFTSampler(n, weight_steps=1 if name == "ift1" else 3, **common)
    if name == "wfr":
        return WFRMMDFlow(n, **common)
    return InclusiveKLFitter(n, **common)


# --- the worker: one (estimator, d, backend) in its own process -----------------------------
def run_worker(cfg: dict) -> dict:
    name, backend, n, m, d = cfg["estimator"], cfg["backend"], cfg["n"], cfg["m"], cfg["d"]
    k1, k2 = cfg["k1"], cfg["k2"]
    dtype = np.dtype(cfg["dtype"])
    result: dict = {"cache": os.environ.get("KEOPS_CACHE_FOLDER")}

    t0 = time.perf_counter()
    try:
        import pykeops  # after KEOPS_CACHE_FOLDER is set (by the parent, in our environment)
    except ImportError:
        if backend == "keops":
            raise
        result["import_s"] = None
    else:
        result["import_s"] = time.perf_counter() - t0
        result["build_folder"] = pykeops.get_build_folder()
    load = [os.getloadavg()[0]]
    Y, x0 = make_data(n, m, d, dtype)

    n_warnings = 0

    def timed_fit(max_iter: int) -> float:
        nonlocal n_warnings
        est = make_estimator(name, x0, backend, max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            est.fit(Y)
            seconds = time.perf_counter() - start
        for w in caught:
            n_warnings += 1
            log(f"  warning: {w.category.__name__}: {w.message}")
        if est.backend_.split("-")[0] != backend or est.n_iter_ != max_iter:
            raise RuntimeError(f"ran {est.backend_!r} for {est.n_iter_} iterations")
        atoms = est.means_ if name == "ikl" else est.particles_
        if atoms.dtype != dtype or not np.all(np.isfinite(atoms)):
            raise RuntimeError("wrong dtype or non-finite atoms")
        return seconds

    result["cold_s"] = timed_fit(k1)
    log(f"  cold fit (max_iter={k1}): {result['cold_s']:.3f} s")
    t_k1: list[float] = []
    per_iter: list[float] = []
    spent = 0.0
    while len(per_iter) < cfg["repeats"] and (not per_iter or spent < cfg["budget"]):
        a = timed_fit(k1)
        b = timed_fit(k2)
        spent += a + b
        t_k1.append(a)
        per_iter.append((b - a) / (k2 - k1))
        log(f"  warm fit: {k1} it {a:.3f} s, {k2} it {b:.3f} s -> {per_iter[-1]:.4g} s/iter")
    result["warm_fit_s"] = float(np.median(t_k1))
    result["per_iter_s"] = float(np.median(per_iter))
    result["per_iter_all"] = per_iter
    result["warnings"] = n_warnings
    load.append(os.getloadavg()[0])
    result["load"] = load
    return result


def spawn(cfg: dict, timeout: float | None) -> dict:
    cache = tempfile.mkdtemp(prefix="skgradflow-bench-keops-")
    # cold for both compilers: fresh KeOps and Numba caches
    env = dict(os.environ, KEOPS_CACHE_FOLDER=cache, NUMBA_CACHE_DIR=os.path.join(cache, "nb"))
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        return {"error": f"worker exited with status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the table -------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}g}"


def table(results: list[tuple[dict, dict]], args) -> str:
    per_iter = {(c["estimator"], c["d"], c["backend"]): r.get("per_iter_s") for c, r in results}
    lines = [
        "| estimator | d | backend | import s | cold fit s | warm fit s | compile s | setup s "
        "| warm s/iter | keops/this | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in results:
        head = f"| {ESTIMATORS[c['estimator']]} | {c['d']} | {c['backend']} "
        if "error" in r:
            lines.append(head + f"| {r['error']} |" + " |" * 7)
            continue
        ratio = None
        keops_time = per_iter.get((c["estimator"], c["d"], "keops"))
        if c["backend"] != "keops" and keops_time is not None and r["per_iter_s"] > 0:
            ratio = keops_time / r["per_iter_s"]
        setup = r["warm_fit_s"] - c["k1"] * r["per_iter_s"]
        spread = r["per_iter_all"]
        per = fmt(r["per_iter_s"])
        if len(spread) > 1:
            per += f" ({fmt(min(spread))}–{fmt(max(spread))})"
        lines.append(
            head + f"| {fmt(r['import_s'])} | {r['cold_s']:.2f} | {r['warm_fit_s']:.2f} "
            f"| {r['cold_s'] - r['warm_fit_s']:.2f} | {setup:.2f} | {per} | {fmt(ratio)} "
            f"| {r['load'][0]:.1f}–{r['load'][1]:.1f} |"
        )
    lines += [
        "",
        f"N = {args.n} atoms, M = {args.m} targets, {args.dtype}, Gaussian kernel, "
        f"bandwidth {BANDWIDTH}, step_size {STEP_SIZE}, tol 0; cold/warm fits with "
        f"max_iter = k1 = {args.k1}, s/iter = (t(k2 = {args.k2}) - t(k1)) / {args.k2 - args.k1}, "
        "median over repeats (range in brackets); load: the 1-minute load average when the "
        "configuration started and ended. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, NumPy {np.__version__}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1000, help="particles / components")
    parser.add_argument("--m", type=int, default=100_000, help="targets")
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 10])
    parser.add_argument(
        "--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS)
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["keops", "numba", "numpy"],
        choices=["keops", "numba", "numpy"],
    )
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--k1", type=int, default=1, help="max_iter of the short fit")
    parser.add_argument("--k2", type=int, default=3, help="max_iter of the long fit")
    parser.add_argument("--repeats", type=int, default=3, help="(k1, k2) pairs per config")
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="stop repeating once the warm fits of a config took this long",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before a configuration's subprocess is killed",
    )
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if not 1 <= args.k1 < args.k2:
        parser.error("need 1 <= k1 < k2")

    results = []
    for name in args.estimators:
        for d in args.dims:
            for backend in args.backends:
                cfg = dict(
                    estimator=name,
                    backend=backend,
                    n=args.n,
                    m=args.m,
                    d=d,
                    k1=args.k1,
                    k2=args.k2,
                    dtype=args.dtype,
                    repeats=args.repeats,
                    budget=args.budget,
                )
                log(f"{ESTIMATORS[name]}, d={d}, {backend}, N={args.n}, M={args.m}")
                res = spawn(cfg, args.timeout)
                if "error" in res:
                    log(f"  {res['error']}")
                results.append((cfg, res))

    text = table(results, args)
    print(text)
    if args.out:
        write_file(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
