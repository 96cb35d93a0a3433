"""The command line's commands: ``skgradflow sample`` and ``skgradflow datasets``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..datasets import BUILTIN_DATASETS, describe_builtin, load_builtin
from ..metrics import (
    classifier_two_sample_auc,
    distance_to_closest_record_ratio,
    energy_distance,
)
from ._errors import _CLIError, _one_line, _RunFailed, _StdoutFailed
from ._io import (
    _check_csv_options,
    _check_out,
    _check_save_model,
    _load_data,
    _output_format,
    _write_outputs,
)
from ._parser import ESTIMATORS

# What fit and the metric raise on input they reject (sklearn's InvalidParameterError is
# a ValueError; a diverging flow raises FloatingPointError).
_ESTIMATOR_ERRORS = (ValueError, TypeError, FloatingPointError)


def _print_out(line: str) -> None:
    """A line to stdout; a device that cannot take it (a full disk) is an error, a reader
    that is gone (a broken pipe) is left to main."""
    try:
        print(line)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _StdoutFailed(f"cannot write to standard output: {exc.strerror or exc}") from None


def _energy_went_up(estimator, caught: list[warnings.WarningMessage]) -> str | None:
    """Why a fit that returned is a failed run (its energy went up), or None."""
    for w in caught:
        if issubclass(w.category, ConvergenceWarning) and "energy went up" in str(w.message):
            return _one_line(w.message).split(" with step_size")[0]
    curve = np.asarray(estimator.loss_curve_, dtype=np.float64)
    # an annealed fit measures each phase's energy at its own bandwidth: compare within the
    # last phase (loss_curve_[k] is measured at bandwidth_schedule_[k - 1])
    schedule = np.asarray(getattr(estimator, "bandwidth_schedule_", []))
    start = 0
    if schedule.size and np.any(schedule != schedule[-1]):
        start = int(np.flatnonzero(schedule != schedule[-1])[-1]) + 2
    first, last = curve[min(start, len(curve) - 1)], curve[-1]
    # a tolerance for the round-off of an energy that did not move
    if not np.isfinite(last) or last > first + max(1e-12, 1e-6 * abs(first)):
        return f"The energy went up from {first:.4g} to {last:.4g}"
    return None


def _cmd_sample(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    data = _load_data(args.data, args)
    out = Path(args.out)
    fmt = _output_format(out, data)
    _check_csv_options(args, data, fmt)
    _check_out(out, data)
    model_path = _check_save_model(args.save_model, out, data)
    if data.index_dropped_auto and not args.quiet:
        print(
            "skgradflow: note: dropped the first column of --data (no name, integer values: "
            "the index pandas writes); --index-col none keeps it",
            file=sys.stderr,
        )

    X, X_holdout = _split_holdout(data.X, args.holdout, args.random_state)
    scaler = None if args.no_standardize else StandardScaler()
    X_fit = X if scaler is None else scaler.fit_transform(X)

    params = {
        "n_particles": args.n_particles,
        "kernel": args.kernel,
        "bandwidth": args.bandwidth,
        "alpha": args.alpha,
        "beta": args.beta,
        "max_iter": args.max_iter,
        "step_size": args.step_size,
    }
    # Options left out keep the estimator's own defaults.
    params = {name: value for name, value in params.items() if value is not None}
    params.update(
        backend=args.backend, random_state=args.random_state, verbose=0 if args.quiet else 1
    )
    estimator = ESTIMATORS[args.estimator]()
    accepted = estimator.get_params()
    if "n_particles" in params and "n_particles" not in accepted:
        # the mixture's atoms are its components
        params["n_components"] = params.pop("n_particles")
    for name in [name for name in params if name not in accepted]:
        raise _CLIError(
            f"--{name.replace('_', '-')} is not an option of --estimator {args.estimator}"
        )
    name = type(estimator).__name__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.set_params(**params)
            estimator.fit(X_fit)
        except FloatingPointError as exc:
            # the flow diverged: the run failed (exit status 1), not a usage error
            raise _RunFailed(f"{name}: {_one_line(exc)} Nothing was written.") from None
        except _ESTIMATOR_ERRORS as exc:
            raise _CLIError(f"{name}: {_one_line(exc)}") from None
        went_up = _energy_went_up(estimator, caught)
        if went_up is not None:
            step = (
                f"--step-size {args.step_size:g}"
                if isinstance(args.step_size, float)
                else f"step size {estimator.step_size_:.4g}"
            )
            raise _RunFailed(
                f"{name}: {went_up} with {step}: the flow diverged. Use --step-size auto or a "
                "smaller --step-size. Nothing was written."
            )
        try:
            samples = estimator.sample(args.n_samples, random_state=args.random_state)
            if scaler is not None:
                samples = scaler.inverse_transform(samples)
            # One reduction never repays a KeOps compile, so "auto" follows the fit: NumPy
            # for a problem the fit found small, KeOps for one it did not.
            metric_backend = args.backend
            if args.backend == "auto":
                metric_backend = "keops" if estimator.backend_.startswith("keops") else "numpy"
            distance = energy_distance(samples, X, backend=metric_backend)
            # for scale: what n rows drawn at random from the data themselves score (without
            # replacement when there are enough rows)
            rows = np.random.default_rng(args.random_state).choice(
                X.shape[0], size=samples.shape[0], replace=samples.shape[0] > X.shape[0]
            )
            reference = energy_distance(X[rows], X, backend=metric_backend)
            quality = "" if X_holdout is None else _holdout_quality(
                samples, X, X_holdout, scaler, args.random_state)
        except _ESTIMATOR_ERRORS as exc:
            raise _CLIError(f"{name}: {_one_line(exc)}") from None
    # One line each, without the source line Python's warning format adds; the
    # DeprecationWarnings of libraries are not the user's business here.
    shown = (UserWarning, RuntimeWarning)
    messages = [_one_line(w.message) for w in caught if issubclass(w.category, shown)]
    for message in dict.fromkeys(messages):
        print(f"skgradflow: warning: {message}", file=sys.stderr)

    # CSV output keeps the delimiter of CSV input (or takes --delimiter)
    delimiter = data.delimiter if data.fmt == "csv" else (args.delimiter or ",")
    model = None
    if model_path is not None:
        # a standard scikit-learn object: the fitted scaler and estimator as a Pipeline, which
        # skgradflow.inspection.sample maps back to the units of the data
        model = estimator if scaler is None else make_pipeline(scaler, estimator)
    _write_outputs(
        out, fmt, samples, data.header if fmt == "csv" else None, delimiter, model_path, model
    )
    elapsed = time.perf_counter() - start
    # converged: the estimator's stopping rule was met; a run whose energy went up has
    # failed above and prints no summary
    _print_out(
        f"estimator={args.estimator} rows={samples.shape[0]} features={samples.shape[1]} "
        f"n_iter={estimator.n_iter_} converged={bool(estimator.converged_)} "
        f"energy_distance={distance:.6g} reference={reference:.6g}{quality} "
        f"seconds={elapsed:.2f}"
    )
    return 0


def _split_holdout(X: np.ndarray, fraction: float | None, seed: int):
    """The rows to fit on and the rows held out (``None`` without ``--holdout``), drawn at
    random with ``seed``; each part needs at least 2 rows."""
    if fraction is None:
        return X, None
    n_holdout = int(round(fraction * X.shape[0]))
    if n_holdout < 2 or X.shape[0] - n_holdout < 2:
        raise _CLIError(
            f"--holdout {fraction:g} of {X.shape[0]} rows holds out {n_holdout} and fits on "
            f"{X.shape[0] - n_holdout}; both need at least 2 rows. Use a fraction nearer 0.5."
        )
    rows = np.random.default_rng(seed).permutation(X.shape[0])
    return X[rows[n_holdout:]], X[rows[:n_holdout]]


def _holdout_quality(samples, X_train, X_holdout, scaler, seed: int) -> str:
    """`` dcr_ratio=... c2st_auc=...``: the samples judged on the held-out rows, in the
    units the flow ran in (standardised on the training rows unless --no-standardize)."""
    units = (lambda A: A) if scaler is None else scaler.transform
    S, T, H = units(samples), units(X_train), units(X_holdout)
    dcr = distance_to_closest_record_ratio(S, T, H)
    auc = classifier_two_sample_auc(S, H, random_state=seed)
    return f" dcr_ratio={dcr:.4g} c2st_auc={auc:.4g}"


def _cmd_datasets(args: argparse.Namespace) -> int:
    width = max(map(len, BUILTIN_DATASETS))
    _print_out(f"{'name':<{width}}  {'rows':>5}  {'features':>8}  description")
    for name in BUILTIN_DATASETS:
        X, _ = load_builtin(name)
        _print_out(f"{name:<{width}}  {X.shape[0]:>5}  {X.shape[1]:>8}  {describe_builtin(name)}")
    return 0


#: The function of each command: ``skgradflow COMMAND`` runs ``COMMANDS[COMMAND](args)``.
COMMANDS = {"sample": _cmd_sample, "datasets": _cmd_datasets}
