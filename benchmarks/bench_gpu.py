"""Seconds per iteration on whatever KeOps runs on here (a GPU when there is one), against the
bare KeOps floor and GeomLoss.

Run on demand (never part of the test suite), unchanged on a GPU or a CPU machine::

    python benchmarks/bench_gpu.py                       # the default table (a GPU's sizes)
    python benchmarks/bench_gpu.py --configs 1e3:2:float32 1e4:2:float64 --budget 20

Each configuration ``N:d:dtype`` (particles = targets = N) is timed in this process, warm
(the first iteration of a fit, and a first call of the floor and of GeomLoss, are not
counted):

- ``IFT``: one ``IFTSampler`` iteration with ``weight_steps=1`` (the weight step's
  reductions at the moved particles, then the next witness): the median time between
  consecutive iterations of one fit, timestamped by a ``callback``;
- ``MMD flow``: the same with ``beta=0`` (one witness and its gradient per iteration);
- ``floor``: one bare fused value+gradient KeOps reduction over the sources ``[x; y]``,
  written here with ``pykeops.numpy.LazyTensor`` (one exponential per pair);
- ``GeomLoss``: ``SamplesLoss("gaussian", blur=h, backend="online")`` value plus its autograd
  gradient with respect to the particles, on device tensors (when torch and geomloss are
  installed), the step an MMD flow written with GeomLoss takes.

Each figure is the median of up to ``--repeats`` runs, fewer once ``--budget`` seconds are
spent.  The markdown table goes to stdout (and ``--out``), progress to stderr.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
from _common import make_data, write_table  # benchmarks/ is on sys.path when run as a script

BANDWIDTH = 1.0
STEP_SIZE = 0.1
DEFAULT_CONFIGS = ["1e4:2:float32", "1e5:2:float32", "1e6:2:float32", "1e5:2:float64",
                   "1e5:10:float32"]


def log(msg: str) -> None:
    print(f"[bench_gpu] {msg}", file=sys.stderr, flush=True)


def timed(call, repeats: int, budget: float) -> float:
    call()  # warm: compiles or loads every formula of this dimension and dtype
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_flow(beta: float, x0, Y, engine, repeats: int, budget: float) -> float:
    """Median seconds between consecutive iterations of one IFT(weight_steps=1) fit from
    ``x0``: the library's own loop, timestamped by a callback (the first iteration, which
    compiles, is not counted)."""
    from skgradflow import IFTSampler

    stamps: list[float] = []

    def timer(state) -> bool:
        stamps.append(time.perf_counter())
        warm = np.diff(stamps)
        return len(warm) >= repeats or (len(warm) > 0 and warm.sum() >= budget)

    est = IFTSampler(n_particles=x0.shape[0], bandwidth=BANDWIDTH, step_size=STEP_SIZE,
                     weight_steps=1, beta=beta, backend=engine, init=x0, tol=0,
                     max_iter=repeats + 1, callback=timer).fit(Y)
    if not np.all(np.isfinite(est.loss_curve_)):
        raise FloatingPointError("non-finite energy")
    return float(np.median(np.diff(stamps)))


def floor_reduction(x, Y, where: str):
    from pykeops.numpy import LazyTensor

    dtype = x.dtype
    n = x.shape[0]
    xs = np.ascontiguousarray(x / BANDWIDTH)
    S = np.ascontiguousarray(np.concatenate([x, Y]) / BANDWIDTH)
    a = np.concatenate([np.full(n, 1.0 / n), -np.full(len(Y), 1.0 / len(Y))]).astype(dtype)
    a = np.ascontiguousarray(a[:, None])
    scheme = "kahan_scheme" if dtype == np.float32 else "block_sum"

    def call():
        xi, sj, aj = LazyTensor(xs[:, None, :]), LazyTensor(S[None, :, :]), LazyTensor(a[None])
        D = xi - sj
        lazy = (-0.5 * (D**2).sum(-1)).exp() * aj.concat(aj * D)
        return lazy.sum(1, sum_scheme=scheme, backend=where)

    return call


def geomloss_step(x, Y):
    """GeomLoss' online Gaussian MMD, value and gradient, or None when not installed."""
    try:
        import torch
        from geomloss import SamplesLoss
    except ImportError:
        return None, "not installed"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    xt = torch.tensor(x, device=device, requires_grad=True)
    yt = torch.tensor(Y, device=device)
    loss = SamplesLoss("gaussian", blur=BANDWIDTH, backend="online")

    def call():
        value = loss(xt, yt)
        (grad,) = torch.autograd.grad(value, [xt])
        if device == "cuda":
            torch.cuda.synchronize()
        return grad

    return call, device


def fmt(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                   help="N:d:dtype triples (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=30.0,
                   help="no further repeat starts once this many seconds are spent")
    p.add_argument("--out", help="also write the markdown table to this file")
    args = p.parse_args(argv)

    from skgradflow.backends import keops_status, resolve_backend

    status = keops_status()
    log(f"KeOps probe: {status}")
    engine = resolve_backend("keops", 1)  # raises, with the reason, if KeOps cannot run
    where = engine.device.split("-")[1].upper()
    log(f"KeOps runs on the {where}")

    rows = []
    for spec in args.configs:
        n_text, d_text, dtype_text = spec.split(":")
        n, d, dtype = int(float(n_text)), int(d_text), np.dtype(dtype_text)
        log(f"N = M = {n}, d = {d}, {dtype}")
        Y, x = make_data(n, n, d, dtype)
        row = {"n": n, "d": d, "dtype": dtype.name}
        row["ift"] = time_flow(1.0, x, Y, engine, args.repeats, args.budget)
        row["mmd"] = time_flow(0.0, x, Y, engine, args.repeats, args.budget)
        row["floor"] = timed(floor_reduction(x, Y, where), args.repeats, args.budget)
        call, info = geomloss_step(x, Y)
        row["geomloss"] = timed(call, args.repeats, args.budget) if call else None
        row["geomloss_device"] = info
        log("  " + ", ".join(f"{k} {fmt(v) if isinstance(v, float) else v}"
                             for k, v in row.items()))
        rows.append(row)

    lines = [
        f"## Seconds per iteration, KeOps on the {where} (warm; N = M)",
        "",
        f"{platform.platform()}; Python {platform.python_version()}, NumPy {np.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}.  IFT: weight_steps=1; MMD flow: beta=0; floor: one "
        "bare fused value+gradient KeOps reduction over [x; y]; GeomLoss: SamplesLoss("
        "'gaussian', backend='online') value and autograd gradient.",
        "",
        "| N = M | d | dtype | IFT iteration | MMD-flow iteration | floor | GeomLoss MMD step "
        "| IFT / floor | MMD flow / GeomLoss |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        geo = r["geomloss"]
        vs_geomloss = f"{r['mmd'] / geo:.2f}" if geo else "—"
        lines.append(
            f"| {r['n']:,} | {r['d']} | {r['dtype']} | {fmt(r['ift'])} | {fmt(r['mmd'])} "
            f"| {fmt(r['floor'])} | {fmt(geo) if geo else r['geomloss_device']} "
            f"| {r['ift'] / r['floor']:.2f} | {vs_geomloss} |"
        )
    write_table("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
