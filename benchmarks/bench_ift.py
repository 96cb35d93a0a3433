"""Cost of one IFTSampler iteration, per backend, against a bare KeOps reduction.

Run on demand (never part of the test suite)::

    python benchmarks/bench_ift.py --sizes 1000 10000 --dims 2 10
    python benchmarks/bench_ift.py --sizes 100000 --dims 2 --backends keops --out ift_1e5.md
    python benchmarks/bench_ift.py --sizes 10000 --dims 2 10 --backends auto numba keops

For every ``N = M`` (particles = targets) in ``--sizes``, ``d`` in ``--dims`` and backend in
``--backends`` it runs one subprocess (so that ``ru_maxrss`` is that configuration's own
peak) which:

1. sets a fresh, empty KeOps build folder (``KEOPS_CACHE_FOLDER``) and Numba cache
   (``NUMBA_CACHE_DIR``) before any compile, so that *cold* includes the compilation of every
   formula or loop the flow uses;
2. fits an ``IFTSampler(weight_steps=1, step_size=0.1, bandwidth=1, tol=0)`` from the
   particles of the benchmark data, with a ``callback`` that timestamps every iteration of
   the library's own loop (nothing is copied or patched) and stops the fit after
   ``--repeats`` warm iterations, or earlier once ``--budget`` seconds are spent (so at
   N = 1e5 on a small CPU a single warm iteration runs);
3. *cold* is the time from the start of ``fit`` to the end of the first iteration: the
   constant ``½ bᵀK_yy b`` (one M × M reduction, once per fit), the initial evaluation and
   the first iteration, with the compilation of every KeOps formula the flow uses;
4. *warm* is the median time between two consecutive iterations;
5. reads the peak RSS (``ru_maxrss``) of the process;
6. then, in the same process, times the *floor*: one bare fused KeOps reduction written
   here directly with ``pykeops.numpy.LazyTensor`` -- value and gradient of
   ``Σ_j a_j k(x_i, s_j)`` over ``s = [x; y]``, ``a = [w; -b]``, Gaussian kernel in
   coordinates divided by the bandwidth, output ``[K a, (K a) (x_i - s_j)]``, ``.sum(1)``
   (with the summation scheme the library uses for the dtype).  Its formula is compiled on
   a tiny input first, so the floor is a warm time.  ``iter / floor`` is the warm
   iteration time over the floor time (for the other backends: their iteration over the
   KeOps floor).  ``auto`` runs ``backend="auto"`` and reports the engine it chose.

NumPy configurations with ``N (N + M) > --numpy-max-pairs`` are not run; their time is
extrapolated from the largest smaller size measured in the same invocation (the cost is
proportional to ``N (N + M)``).  Progress goes to stderr, the markdown table to stdout (and
to ``--out``).  Timings on a shared machine are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import make_data, write_table  # benchmarks/ is on sys.path when run as a script

BANDWIDTH = 1.0
STEP_SIZE = 0.1


def log(msg: str) -> None:
    print(f"[bench_ift] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (ru_maxrss: KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS
    return rss * scale / 1e6


# --- the worker: one (N, d, backend) configuration in its own process ----------------------
def _floor_reduction(x, S, a, scheme):
    """Value and gradient of Σ_j a_j k(x_i, s_j), Gaussian kernel: one KeOps reduction."""
    from pykeops.numpy import LazyTensor

    xi = LazyTensor(x[:, None, :])
    sj = LazyTensor(S[None, :, :])
    aj = LazyTensor(a[None, :, :])
    D = xi - sj
    # one exponential per pair (KeOps does not share subexpressions): K [a, a D]
    return ((-0.5 * (D**2).sum(-1)).exp() * aj.concat(aj * D)).sum(1, sum_scheme=scheme)


def _time_floor(x, w, Y, b, repeats: int, budget: float) -> float:
    dtype = x.dtype
    h = BANDWIDTH
    xs = np.ascontiguousarray(x / h)
    Ss = np.ascontiguousarray(np.concatenate([x, Y]) / h)
    a = np.ascontiguousarray(np.concatenate([w, -b]).astype(dtype)[:, None])
    scheme = "kahan_scheme" if dtype == np.float32 else "block_sum"
    # compile (or load) the formula on a tiny input: same formula, dimension and dtype
    _floor_reduction(xs[:8], Ss[:16], a[:16], scheme)
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget):
        t0 = time.perf_counter()
        out = _floor_reduction(xs, Ss, a, scheme)
        times.append(time.perf_counter() - t0)
        log(f"  floor reduction: {times[-1]:.4g} s")
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the floor reduction returned non-finite values")
    return float(np.median(times))


def run_worker(cfg: dict) -> dict:
    n, d, backend, dtype = cfg["n"], cfg["d"], cfg["backend"], np.dtype(cfg["dtype"])
    repeats, budget = cfg["repeats"], cfg["budget"]
    result: dict = {}

    # the parent set KEOPS_CACHE_FOLDER to a fresh folder before this process started:
    # a cold cache.  (pykeops.set_build_folder at run time is not enough in KeOps 2.3: the
    # formula cache of the default folder then records sources in the temporary one.)
    build = os.environ["KEOPS_CACHE_FOLDER"]
    try:
        try:
            import pykeops  # noqa: F401

            have_keops = True
        except ImportError:
            have_keops = False
            if backend == "keops":
                raise

        from skgradflow.ift import IFTSampler

        Y, x = make_data(n, n, d, dtype)
        result["base_mb"] = peak_rss_mb()

        # the loop is the library's own: a callback timestamps every iteration, and stops
        # the fit once the repeats are done or the budget is spent
        stamps: list[float] = []

        def timer(state) -> bool:
            stamps.append(time.perf_counter())
            took = stamps[-1] - (stamps[-2] if len(stamps) > 1 else t0)
            log(f"  iteration {state.n_iter}: {took:.4g} s (energy {state.energy:.6g})")
            warm = np.diff(stamps)
            return len(warm) >= repeats or (len(warm) > 0 and warm.sum() >= budget)

        est = IFTSampler(
            n_particles=n,
            bandwidth=BANDWIDTH,
            step_size=STEP_SIZE,
            weight_steps=1,
            backend=backend,
            init=x,
            max_iter=repeats + 1,
            tol=0,
            callback=timer,
        )
        t0 = time.perf_counter()
        est.fit(Y)
        if backend != "auto":
            assert est.backend_.split("-")[0] == backend, est.backend_
        result["engine"] = est.backend_
        if not np.all(np.isfinite(est.loss_curve_)) or not np.all(np.isfinite(est.particles_)):
            raise FloatingPointError("the flow produced non-finite values")
        # cold: from the start of fit to the end of the first iteration
        result["cold"] = stamps[0] - t0
        warm = np.diff(stamps)
        result["warm"] = float(np.median(warm))
        result["warm_n"] = len(warm)
        result["peak_mb"] = peak_rss_mb()  # before the floor: this configuration's own peak
        x, w = est.particles_, est.weights_
        b = np.full(n, 1.0 / n)

        if have_keops:
            result["floor"] = _time_floor(x, w, Y, b, repeats, budget)
        return result
    finally:
        # KeOps writes its formula cache into the folder at exit: the parent removes it
        log(f"  KeOps build folder: {build}")


# --- the driver ------------------------------------------------------------------------------
def _fmt_s(t: float | None) -> str:
    if t is None:
        return "—"
    if t >= 100:
        return f"{t:.0f}"
    if t >= 1:
        return f"{t:.2f}"
    return f"{t:.3g}"


def _run_config(cfg: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="skgradflow-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg), out]
        build = os.path.join(tmp, "keops")
        # cold for both compilers: fresh KeOps and Numba caches
        env = dict(os.environ, KEOPS_CACHE_FOLDER=build, NUMBA_CACHE_DIR=os.path.join(tmp, "nb"))
        # the worker's stdout (KeOps compile messages) goes to our stderr, with the progress
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            return {"error": f"failed (rc={proc.returncode})"}
        with open(out) as fh:
            return json.load(fh)


def _header(args: argparse.Namespace) -> list[str]:
    # not ``import pykeops``: it prints to stdout, where the table goes
    try:
        keops = importlib.metadata.version("pykeops")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        keops = "unavailable"
    return [
        "## IFTSampler: seconds per iteration (weight_steps=1, Gaussian kernel, N = M)",
        "",
        f"dtype {args.dtype}; {platform.platform()}; {os.cpu_count()} CPU cores; "
        f"Python {platform.python_version()}, NumPy {np.__version__}, PyKeOps {keops}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "cold: from the start of fit to the end of the first iteration, with an empty KeOps "
        "build folder (½bᵀK_yy b, the initial evaluation and every compile included); "
        "warm: median of the next iterations (count in `n`); peak: ru_maxrss of the "
        "configuration's own process (base: after imports and data, before any reduction); "
        "floor: one bare fused KeOps value+gradient reduction over [x; y] in the same "
        "process; iter/floor: warm / floor.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        default=[1e3, 1e4, 1e5],
        help="N = M values (default: 1e3 1e4 1e5)",
    )
    p.add_argument("--dims", type=int, nargs="+", default=[2, 10])
    p.add_argument(
        "--backends",
        nargs="+",
        choices=["numpy", "keops", "numba", "auto"],
        default=["numpy", "keops", "numba", "auto"],
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="warm iterations (and floor reductions) to take the median of",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="no further warm repeat starts once this many seconds are spent",
    )
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument(
        "--numpy-max-pairs",
        type=float,
        default=2e9,
        help="skip numpy configurations with N*(N+M) above this (default 2e9)",
    )
    p.add_argument("--out", help="also write the markdown table to this file")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        cfg, out = json.loads(args.worker[0]), args.worker[1]
        result = run_worker(cfg)
        with open(out, "w") as fh:
            json.dump(result, fh)
        return 0

    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    sizes = sorted({int(s) for s in args.sizes})
    rows = []
    measured: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for n in sizes:
        pairs = n * (n + n)
        for d in args.dims:
            for backend in args.backends:
                label = f"N = M = {n}, d = {d}, {backend}"
                row = {"n": n, "d": d, "backend": backend}
                if backend == "numpy" and pairs > args.numpy_max_pairs:
                    smaller = measured.get((backend, d), [])
                    if smaller:
                        n0, t0 = smaller[-1]
                        est = t0 * pairs / (n0 * 2 * n0)
                        row["skip"] = f"skipped (est. {_fmt_s(est)} s)"
                    else:
                        row["skip"] = "skipped (no smaller size to extrapolate from)"
                    log(f"{label}: {row['skip']}")
                    rows.append(row)
                    continue
                log(f"{label}: running")
                cfg = {
                    "n": n,
                    "d": d,
                    "backend": backend,
                    "dtype": args.dtype,
                    "repeats": args.repeats,
                    "budget": args.budget,
                }
                t_start = time.perf_counter()
                row.update(_run_config(cfg))
                log(f"{label}: done in {time.perf_counter() - t_start:.1f} s")
                if "warm" in row:
                    measured.setdefault((backend, d), []).append((n, row["warm"]))
                rows.append(row)

    lines = _header(args)
    lines.append(
        "| N = M | d | backend | cold s/iter | warm s/iter | n | peak MB | base MB "
        "| floor s | iter / floor |"
    )
    lines.append("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        engine = f" ({r['engine']})" if r["backend"] == "auto" and "engine" in r else ""
        head = f"| {r['n']:,} | {r['d']} | {r['backend']}{engine} "
        if "skip" in r or "error" in r:
            msg = r.get("skip") or r["error"]
            lines.append(head + f"| — | {msg} | — | — | — | — | — |")
            continue
        floor = r.get("floor")
        ratio = f"{r['warm'] / floor:.2f}" if floor else "—"
        lines.append(
            head + f"| {_fmt_s(r['cold'])} | {_fmt_s(r['warm'])} | {r['warm_n']} "
            f"| {r['peak_mb']:.0f} | {r['base_mb']:.0f} | {_fmt_s(floor)} | {ratio} |"
        )
    write_table("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
