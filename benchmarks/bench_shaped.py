"""The shaped reductions of ``InclusiveKLFitter(covariance="full" | "tied")``, per engine.

Run on demand (never part of the test suite)::

    python benchmarks/bench_shaped.py                       # N = 16 atoms, M = 1e4 and 1e5
    python benchmarks/bench_shaped.py --dims 2 16 30 --sizes 100000 --out shaped.md

For every dimension ``d``, number of targets ``M`` and engine in ``--backends``: the warm
seconds (median of ``--repeats``, after one call that compiles) of the three shaped calls of
one ``"full"`` iteration, each over ``N × M`` pairs with a ``d × d`` factor per atom:

- ``logsumexp``: ``log μ(y_m)``, a LogSumExp over the atoms of ``log w_i + log det P_i -
  ½|P_iᵀ(y_m - x_i)|²`` (``Backend.shaped_logsumexp``);
- ``moments``: the mass, first and second moments of the responsibilities per atom
  (``Backend.shaped_moments``, ``1 + d + d²`` channels);
- ``mass+first``: the same without the second moment (the reweighting's call).

``keops`` runs the KeOps formulas up to ``SHAPED_MAX_DIM`` dimensions (``--max-dim`` moves
the limit for the measurement) and the NumPy of the base class above it (the column says
which); ``numpy`` is the blocked NumPy (BLAS products)
that every other engine inherits.  The ratio column is NumPy's time over KeOps'.  Each
result is checked against NumPy's (relative error printed).  Progress goes to stderr, the
markdown table to stdout (and to ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import make_data, write_table  # benchmarks/ is on sys.path when run as a script

from skgradflow.backends import _keops, resolve_backend


def log(msg: str) -> None:
    print(f"[bench_shaped] {msg}", file=sys.stderr, flush=True)


def problem(n: int, m: int, d: int, dtype):
    """Targets, atoms, factors ``P_i`` of random shapes around the identity, and the
    log-weights of the three calls."""
    Y, x = make_data(n, m, d, dtype)
    rng = np.random.default_rng(1)
    A = rng.normal(scale=0.3, size=(n, d, d)) + np.eye(d)
    C = A @ np.swapaxes(A, 1, 2)
    P = np.swapaxes(np.linalg.inv(np.linalg.cholesky(C)), 1, 2).astype(dtype)
    log_det = np.log(np.diagonal(P, axis1=1, axis2=2)).sum(1)
    logv = (np.full(n, -np.log(n)) + log_det).astype(dtype)
    L = resolve_backend("numpy", 1).shaped_logsumexp(Y, x, P, logv)
    c = (np.full(m, -np.log(m), dtype=dtype) - L).astype(dtype)
    return Y, x, P, logv, log_det.astype(dtype), c


def calls(engine, Y, x, P, logv, a, c):
    return {
        "logsumexp": lambda: (engine.shaped_logsumexp(Y, x, P, logv),),
        "moments": lambda: engine.shaped_moments(x, P, a, Y, c, second=True),
        "mass+first": lambda: engine.shaped_moments(x, P, a, Y, c, second=False)[:2],
    }


def timed(call, repeats: int) -> tuple[float, tuple]:
    out = call()  # compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 4, 8, 16, 30])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000],
                        help="numbers of targets M")
    parser.add_argument("--atoms", type=int, default=16, help="N, the atoms")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--backends", nargs="+", default=["numpy", "keops"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-dim", type=int, default=_keops.SHAPED_MAX_DIM,
                        help="run the KeOps formulas up to this d (default: the library's "
                             "SHAPED_MAX_DIM), to measure where they stop paying")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    _keops.SHAPED_MAX_DIM = args.max_dim
    # NumPy is the reference every result is checked against
    args.backends = ["numpy", *[b for b in args.backends if b != "numpy"]]

    lines = [
        f"| d | M | call | {' | '.join(f'{b} s' for b in args.backends)} | numpy / keops "
        "| keops ran | max rel. error |",
        "|---|---|---|" + "---|" * len(args.backends) + "---|---|---|",
    ]
    for d in args.dims:
        for m in args.sizes:
            data = problem(args.atoms, m, d, dtype)
            results: dict[str, dict[str, tuple[float, tuple]]] = {}
            for name in args.backends:
                engine = resolve_backend(name, 1)
                for call, run in calls(engine, *data).items():
                    log(f"d={d} M={m} {name} {call}")
                    results.setdefault(call, {})[name] = timed(run, args.repeats)
            for call, by_engine in results.items():
                ref = by_engine["numpy"][1]
                error = max(
                    float(np.max(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)))
                          / max(float(np.max(np.abs(r))), 1e-300))
                    for _, out in by_engine.values() for o, r in zip(out, ref, strict=True))
                seconds = " | ".join(f"{by_engine[b][0]:.4f}" for b in args.backends)
                ratio = (f"{by_engine['numpy'][0] / by_engine['keops'][0]:.2f}×"
                         if "keops" in by_engine else "")
                ran = "KeOps" if d <= args.max_dim else "NumPy (fallback)"
                lines.append(f"| {d} | {m:.0e} | {call} | {seconds} | {ratio} | {ran} | "
                             f"{error:.1e} |")
    lines.append("")
    lines.append(f"N = {args.atoms} atoms, {args.dtype}, median of {args.repeats} warm calls.")
    write_table("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
