"""The ``skgradflow`` command line.

``skgradflow sample`` fits a sampler to a data set (a built-in one, a CSV file or a
``.npy`` file) and writes new samples; ``skgradflow datasets`` lists the built-in sets.
Every failure the user can cause (a bad file, a bad option value, an estimator that
rejects its input) ends with one line ``skgradflow: error: ...`` on stderr and exit
status 2, never with a traceback.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.preprocessing import StandardScaler

from . import IFTSampler, InclusiveKLFitter, WFRMMDFlow, __version__
from .backends import backend_names
from .datasets import BUILTIN_DATASETS, describe_builtin, load_builtin
from .kernels import BANDWIDTH_RULES, KERNELS
from .metrics import energy_distance

#: Estimators that ``skgradflow sample --estimator NAME`` can run.
ESTIMATORS: dict[str, type] = {
    "ift": IFTSampler,
    "wfr": WFRMMDFlow,
    "inclusive-kl": InclusiveKLFitter,
}

# What fit and the metric raise on input they reject (sklearn's InvalidParameterError is
# a ValueError; a diverging flow raises FloatingPointError).
_ESTIMATOR_ERRORS = (ValueError, TypeError, FloatingPointError)
_NPY_MAGIC = b"\x93NUMPY"
_FORMATS = ("csv", "npy")


class _CLIError(Exception):
    """A failure the user can fix: reported as one line, exit status 2."""


class _Exit(Exception):
    """Raised instead of ``sys.exit`` so that ``main`` returns the status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and which never calls ``sys.exit``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _CLIError(f"{message} (see '{self.prog} --help')")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


# --- option values ---------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {text!r}")
    return value


def _float(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise argparse.ArgumentTypeError(f"must be a finite {kind} number; got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    return _float(text, positive=False)


def _float_or(*words: str):
    def parse(text: str) -> float | str:
        if text in words:
            return text
        try:
            return _float(text, positive=True)
        except argparse.ArgumentTypeError:
            choices = ", ".join(map(repr, words))
            raise argparse.ArgumentTypeError(
                f"must be a positive number or one of {choices}; got {text!r}"
            ) from None

    parse.__name__ = "float_or_" + "_".join(words)
    return parse


def _default_text(param: str) -> str:
    """The default of ``param`` in the registered estimators, for the help text."""
    defaults = {}
    for name, cls in ESTIMATORS.items():
        parameter = inspect.signature(cls).parameters.get(param)
        if parameter is not None:
            defaults[name] = parameter.default
    if len(set(map(repr, defaults.values()))) == 1:
        return f"default: {next(iter(defaults.values()))}"
    return "default: " + ", ".join(f"{v} for {k}" for k, v in defaults.items())


def _build_parser() -> _ArgumentParser:
    parser = _ArgumentParser(
        prog="skgradflow",
        description="Kernel gradient flows (skgradflow) from the command line.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"skgradflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sample = commands.add_parser(
        "sample",
        help="fit a sampler to a data set and write new samples",
        description=(
            "Fit a sampler to the rows of a data set and write N new samples.\n"
            "The columns are standardised (zero mean, unit variance) for the flow and the\n"
            "samples mapped back to the original units. Progress goes to stderr, and a\n"
            "one-line summary to stdout."
        ),
        epilog=(
            "examples:\n"
            "  skgradflow sample --estimator ift --data gmm2d --n-samples 1000 "
            "--out samples.csv\n"
            "  skgradflow sample --estimator ift --data data.csv --n-samples 500 "
            "--out new.csv --kernel imq --beta 10"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    required = sample.add_argument_group("required arguments")
    required.add_argument(
        "--estimator", required=True, choices=tuple(ESTIMATORS), help="the flow to run"
    )
    required.add_argument(
        "--data",
        required=True,
        metavar="PATH_OR_BUILTIN",
        help=(
            "a built-in data set (see 'skgradflow datasets'), a .csv file (comma-separated,"
            " optional header row) or a .npy file (2-D numeric array)"
        ),
    )
    required.add_argument(
        "--n-samples",
        required=True,
        type=_positive_int,
        metavar="N",
        help="number of samples to write",
    )
    required.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help=(
            "output file: .csv or .npy; another extension keeps the format of the input "
            "file (a CSV header is kept)"
        ),
    )
    flow = sample.add_argument_group("flow options")
    flow.add_argument(
        "--n-particles",
        type=_positive_int,
        metavar="K",
        help=f"number of particles ({_default_text('n_particles')})",
    )
    flow.add_argument("--kernel", choices=KERNELS, help=f"kernel ({_default_text('kernel')})")
    flow.add_argument(
        "--bandwidth",
        type=_float_or(*BANDWIDTH_RULES),
        metavar="FLOAT|" + "|".join(BANDWIDTH_RULES),
        help=f"kernel bandwidth, or a rule for it ({_default_text('bandwidth')})",
    )
    flow.add_argument(
        "--alpha",
        type=_non_negative_float,
        metavar="A",
        help=f"rate of the transport part ({_default_text('alpha')})",
    )
    flow.add_argument(
        "--beta",
        type=_non_negative_float,
        metavar="B",
        help=f"rate of the reweighting part ({_default_text('beta')})",
    )
    flow.add_argument(
        "--max-iter",
        type=_positive_int,
        metavar="I",
        help=f"maximum number of iterations ({_default_text('max_iter')})",
    )
    flow.add_argument(
        "--step-size",
        type=_float_or("auto"),
        metavar="FLOAT|auto",
        help=f"time step ({_default_text('step_size')})",
    )
    flow.add_argument(
        "--backend",
        choices=backend_names(),
        default="auto",
        help="kernel reductions: KeOps, NumPy, or auto by problem size (default: auto)",
    )
    flow.add_argument(
        "--random-state",
        type=_non_negative_int,
        default=0,
        metavar="S",
        help="seed of the flow and of the draw (default: 0); built-in sets are fixed",
    )
    flow.add_argument(
        "--no-standardize",
        action="store_true",
        help="run the flow on the data as given, without standardising the columns",
    )
    flow.add_argument(
        "--quiet", action="store_true", help="no progress on stderr (warnings are kept)"
    )
    sample.set_defaults(handler=_cmd_sample)

    datasets = commands.add_parser(
        "datasets",
        help="list the built-in data sets",
        description="List the built-in data sets that --data accepts.",
        allow_abbrev=False,
    )
    datasets.set_defaults(handler=_cmd_datasets)
    return parser


# --- data ------------------------------------------------------------------------------


@dataclass
class _Data:
    X: np.ndarray
    header: list[str] | None  # CSV header or built-in feature names
    fmt: str  # "csv", "npy" or "builtin"
    path: Path | None


def _load_data(spec: str) -> _Data:
    if spec in BUILTIN_DATASETS:
        X, names = load_builtin(spec)
        return _Data(X, names, "builtin", None)
    path = Path(spec)
    ext = path.suffix.lower()
    if ext not in (".csv", ".npy"):
        raise _CLIError(
            f"--data {spec!r} is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) "
            f"nor a .csv or .npy file"
        )
    if not path.is_file():
        reason = "no such file" if not path.exists() else "not a regular file"
        raise _CLIError(f"cannot read --data {spec}: {reason}")
    data = _read_csv(path) if ext == ".csv" else _read_npy(path)
    n_rows = data.X.shape[0]
    if n_rows < 2:
        raise _CLIError(f"{path}: {n_rows} data row(s); at least 2 are needed")
    if data.X.shape[1] < 1:
        raise _CLIError(f"{path}: no columns")
    return data


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> _Data:
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        # utf-8-sig: spreadsheet programs write a byte-order mark that would otherwise
        # end up in the first column name
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                rows.append(row)
                lines.append(reader.line_num)
    except OSError as exc:
        raise _CLIError(f"cannot read --data {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _CLIError(f"{path}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise _CLIError(f"{path}: not a valid CSV file ({exc})") from None
    if not rows:
        raise _CLIError(f"{path}: the file is empty")

    header = None
    if not all(_is_number(field) for field in rows[0]):
        header = [field.strip() for field in rows[0]]
        rows, lines = rows[1:], lines[1:]
    n_cols = len(header) if header is not None else len(rows[0])

    def column(j: int) -> str:
        return f"column {header[j]!r}" if header is not None else f"column {j + 1}"

    X = np.empty((len(rows), n_cols))
    for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
        if len(row) != n_cols:
            raise _CLIError(
                f"{path}: ragged rows: line {line} has {len(row)} field(s), expected {n_cols}"
            )
        for j, field in enumerate(row):
            try:
                X[i, j] = float(field)
            except ValueError:
                raise _CLIError(
                    f"{path}: non-numeric value {field.strip()!r} in {column(j)}, "
                    f"row {i + 1} (line {line})"
                ) from None
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        i, j = bad[0]
        raise _CLIError(
            f"{path}: NaN or infinite value {rows[i][j].strip()!r} in {column(j)}, "
            f"row {i + 1} (line {lines[i]})"
        )
    return _Data(X, header, "csv", path)


def _read_npy(path: Path) -> _Data:
    try:
        with path.open("rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if not magic:
                raise _CLIError(f"{path}: the file is empty")
            if magic != _NPY_MAGIC:
                raise _CLIError(f"{path}: not a NumPy .npy file")
            f.seek(0)
            X = np.load(f, allow_pickle=False)
    except OSError as exc:
        raise _CLIError(f"cannot read --data {path}: {exc.strerror or exc}") from None
    except (ValueError, EOFError) as exc:
        raise _CLIError(f"{path}: cannot load the array ({exc})") from None
    if X.ndim != 2:
        raise _CLIError(f"{path}: expected a 2-D array (rows x features); got shape {X.shape}")
    if X.dtype.kind not in "iuf":
        raise _CLIError(f"{path}: expected an array of real numbers; got dtype {X.dtype}")
    # float32 stays float32 end to end, as in the estimators; integers become float64
    X = X.astype(np.float32 if X.dtype == np.float32 else np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        i, j = bad[0]
        raise _CLIError(f"{path}: NaN or infinite value at row {i}, column {j} (0-based)")
    return _Data(X, None, "npy", path)


def _output_format(out: Path, data: _Data) -> str:
    ext = out.suffix.lower().lstrip(".")
    if ext in _FORMATS:
        return ext
    if data.fmt in _FORMATS:
        return data.fmt
    raise _CLIError(f"--out must end in .csv or .npy for a built-in data set; got {str(out)!r}")


def _check_out(out: Path, data: _Data) -> None:
    if not out.parent.is_dir():
        raise _CLIError(f"cannot write --out {out}: directory {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise _CLIError(f"cannot write --out {out}: it is a directory")
    if data.path is not None and (
        out.resolve() == data.path.resolve() or (out.exists() and os.path.samefile(out, data.path))
    ):
        raise _CLIError("--out is the --data file; choose another file so the data are kept")


def _write(out: Path, fmt: str, samples: np.ndarray, header: list[str] | None) -> None:
    try:
        if fmt == "npy":
            # a file object, because np.save appends ".npy" to a name without it
            with out.open("wb") as f:
                np.save(f, samples)
        else:
            with out.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                if header is not None:
                    writer.writerow(header)
                # str of a NumPy scalar is the shortest text that reads back exactly
                writer.writerows([str(v) for v in row] for row in samples)
    except OSError as exc:
        raise _CLIError(f"cannot write --out {out}: {exc.strerror or exc}") from None


# --- commands --------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cmd_sample(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    data = _load_data(args.data)
    out = Path(args.out)
    fmt = _output_format(out, data)
    _check_out(out, data)

    X = data.X
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator.set_params(**params)
            estimator.fit(X_fit)
            samples = estimator.sample(args.n_samples, random_state=args.random_state)
            if scaler is not None:
                samples = scaler.inverse_transform(samples)
            # One reduction never repays a KeOps compile, so "auto" follows the fit: NumPy
            # for a problem the fit found small, KeOps for one it did not.
            metric_backend = args.backend
            if args.backend == "auto":
                metric_backend = "keops" if estimator.backend_.startswith("keops") else "numpy"
            distance = energy_distance(samples, X, backend=metric_backend)
        except _ESTIMATOR_ERRORS as exc:
            raise _CLIError(f"{type(estimator).__name__}: {_one_line(exc)}") from None
    # One line each, without the source line Python's warning format adds; the
    # DeprecationWarnings of libraries are not the user's business here.
    shown = (UserWarning, RuntimeWarning)
    messages = [_one_line(w.message) for w in caught if issubclass(w.category, shown)]
    for message in dict.fromkeys(messages):
        print(f"skgradflow: warning: {message}", file=sys.stderr)

    _write(out, fmt, samples, data.header if fmt == "csv" else None)
    elapsed = time.perf_counter() - start
    print(
        f"estimator={args.estimator} rows={samples.shape[0]} features={samples.shape[1]} "
        f"n_iter={estimator.n_iter_} converged={estimator.converged_} "
        f"energy_distance={distance:.6g} seconds={elapsed:.2f}"
    )
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    width = max(map(len, BUILTIN_DATASETS))
    print(f"{'name':<{width}}  {'rows':>5}  {'features':>8}  description")
    for name in BUILTIN_DATASETS:
        X, _ = load_builtin(name)
        print(f"{name:<{width}}  {X.shape[0]:>5}  {X.shape[1]:>8}  {describe_builtin(name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``skgradflow`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        The exit status: 0 on success, 2 on a usage, data or estimator error (reported as
        one line ``skgradflow: error: ...`` on stderr), 130 when interrupted.

    Examples
    --------
    >>> from skgradflow.cli import main
    >>> main(["datasets"])  # doctest: +ELLIPSIS
    name ...
    gmm2d ...
    0
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args)
    except _Exit as exc:
        return exc.status
    except _CLIError as exc:
        print(f"skgradflow: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skgradflow: interrupted", file=sys.stderr)
        return 130
