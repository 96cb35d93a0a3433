"""The ``skgradflow`` command line.

``skgradflow sample`` fits a sampler to a data set (a built-in one, a CSV file or a
``.npy`` file) and writes new samples; ``skgradflow datasets`` lists the built-in sets.
Every failure the user can cause (a bad file, a bad option value, an estimator that
rejects its input) ends with one line ``skgradflow: error: ...`` on stderr and exit
status 2, never with a traceback.  A run whose flow diverged (its energy went up, or
became non-finite) is reported the same way with exit status 1, and writes nothing.
Output to a pipe that closes early (``skgradflow datasets | head -1``) ends quietly
with exit status 141, as for a program that SIGPIPE stopped.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import os
import pickle
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
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
# the values of an index column that --index-col auto drops
_INTEGER = re.compile(r"[+-]?\d+")
# the exit status of a program that SIGPIPE stopped (128 + 13), as a shell reports it
_BROKEN_PIPE_STATUS = 141


class _CLIError(Exception):
    """A failure the user can fix: reported as one line, exit status 2."""

    status = 2


class _RunFailed(_CLIError):
    """A run that failed (the flow diverged): reported as one line, exit status 1."""

    status = 1


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


def _delimiter(text: str) -> str:
    value = {"tab": "\t", "\\t": "\t", "space": " "}.get(text, text)
    if len(value) != 1 or value in '"\r\n.+-' or value.isalnum():
        raise argparse.ArgumentTypeError(
            f"must be one character that cannot occur in a number, 'tab' or 'space'; got {text!r}"
        )
    return value


def _index_col(text: str) -> str | int:
    if text in ("auto", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'none' or a 0-based column number; got {text!r}"
        )
    return value


def _default_text(param: str, *aliases: str) -> str:
    """The default of ``param`` (or of the first of ``aliases`` an estimator has in its
    place) in the registered estimators, for the help text."""
    defaults = {}
    for name, cls in ESTIMATORS.items():
        parameters = inspect.signature(cls).parameters
        for candidate in (param, *aliases):
            if candidate in parameters:
                defaults[name] = parameters[candidate].default
                break
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
            "CSV input (--data FILE.csv):\n"
            "  Fields are separated by --delimiter (default ','); 'tab' is a tab, 'space'\n"
            "  (or ' ') runs of spaces. Blank lines are skipped.\n"
            "  --header auto (default) takes the first line as a header when one of its\n"
            "  fields is not a number (an empty field is not a number), or when its fields\n"
            "  are exactly 0,1,...,d-1 with d >= 2 (the column names pandas gives by\n"
            "  default); yes or no decide it. A column that --index-col N drops is left out\n"
            "  of this test.\n"
            "  --index-col auto (default) drops the first column when the header line gives\n"
            "  it an empty name and every value in it is an integer (written without a\n"
            "  decimal point: the index of pandas' DataFrame.to_csv()); N drops column N\n"
            "  (0-based, whatever it holds, e.g. row labels); none drops no column.\n"
            "  CSV output uses the delimiter of the input and keeps its header, less the\n"
            "  dropped column.\n"
            "\n"
            "exit status:\n"
            "  0 success; 1 the run failed (the flow diverged: its energy went up or became\n"
            "  non-finite) and nothing was written; 2 a usage, data or estimator error;\n"
            "  130 interrupted; 141 standard output was closed early (a broken pipe).\n"
            "\n"
            "examples:\n"
            "  skgradflow sample --estimator ift --data gmm2d --n-samples 1000 "
            "--out samples.csv\n"
            "  skgradflow sample --estimator ift --data data.csv --n-samples 500 "
            "--out new.csv --kernel imq --beta 10\n"
            "  skgradflow sample --estimator ift --data frame.csv --delimiter ';' "
            "--n-samples 500 --out new.csv --save-model model.joblib"
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
            "a built-in data set (see 'skgradflow datasets'), a .csv file (see 'CSV input'"
            " below) or a .npy file (2-D numeric array)"
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
    csv_options = sample.add_argument_group("CSV options")
    csv_options.add_argument(
        "--delimiter",
        type=_delimiter,
        metavar="CHAR",
        help="field separator of the CSV input and of CSV output (default: ',')",
    )
    csv_options.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        help="whether the first line of the CSV input is a header (default: auto)",
    )
    csv_options.add_argument(
        "--index-col",
        type=_index_col,
        metavar="{auto,none,N}",
        help="a column of the CSV input to drop: the index pandas writes (default: auto)",
    )
    flow = sample.add_argument_group("flow options")
    flow.add_argument(
        "--n-particles",
        type=_positive_int,
        metavar="K",
        help=(
            "number of particles, or of mixture components for inclusive-kl (default: "
            "one per distinct row, at most 500, for ift and wfr; one per three distinct "
            "rows, at most 100, for inclusive-kl)"
        ),
    )
    flow.add_argument("--kernel", choices=KERNELS, help=f"kernel ({_default_text('kernel')})")
    flow.add_argument(
        "--bandwidth",
        type=_float_or(*BANDWIDTH_RULES, "anneal"),
        metavar="FLOAT|" + "|".join(BANDWIDTH_RULES) + "|anneal",
        help=(
            "kernel bandwidth, or a rule for it; anneal: the median rule for the first tenth "
            f"of the run, then Scott's (ift and wfr only) ({_default_text('bandwidth')})"
        ),
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
    flow.add_argument(
        "--save-model",
        metavar="FILE",
        help=(
            "also save the fitted model with joblib.dump: a scikit-learn Pipeline "
            "(StandardScaler, estimator), or the bare estimator with --no-standardize; "
            "skgradflow.inspection.sample(joblib.load(FILE), n) draws n samples in the units "
            "of the data"
        ),
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
    delimiter: str = ","  # of a CSV file
    index_dropped_auto: bool = False  # --index-col auto dropped the first column


def _load_data(spec: str, args: argparse.Namespace) -> _Data:
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
    if ext == ".csv":
        data = _read_csv(
            path,
            delimiter=args.delimiter or ",",
            header=args.header or "auto",
            index_col="auto" if args.index_col is None else args.index_col,
        )
    else:
        data = _read_npy(path)
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


def _integer_names(fields: list[str]) -> bool:
    """Whether ``fields`` are 0, 1, ..., d-1 with d >= 2: pandas' default column names."""
    return len(fields) >= 2 and [f.strip() for f in fields] == [str(j) for j in range(len(fields))]


def _is_header(fields: list[str]) -> bool:
    """``--header auto``: a field that is not a number (an empty one included), or the
    integer column names pandas writes by default."""
    return not all(_is_number(field) for field in fields) or _integer_names(fields)


def _csv_lines(f, delimiter: str):
    if delimiter != " ":
        return f
    # runs of spaces separate the fields (skipinitialspace below); spaces at either end of
    # a line separate nothing
    return (line.rstrip("\r\n").strip(" ") + "\n" for line in f)


def _delimiter_hint(field: str, delimiter: str) -> str:
    """A hint for a field that looks like several fields read with the default delimiter."""
    if delimiter != ",":
        return ""  # chosen on purpose (and a ',' may be a decimal comma)
    for other, spelled in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if other in field.strip():
            return f"; are the fields separated by {spelled}? then pass --delimiter {spelled}"
    return ""


def _read_csv(
    path: Path, delimiter: str = ",", header: str = "auto", index_col: str | int = "auto"
) -> _Data:
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        # utf-8-sig: spreadsheet programs write a byte-order mark that would otherwise
        # end up in the first column name
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(
                _csv_lines(f, delimiter), delimiter=delimiter, skipinitialspace=delimiter == " "
            )
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

    first = rows[0]
    if isinstance(index_col, int):
        if index_col >= len(first):
            raise _CLIError(
                f"--index-col {index_col}: {path} has {len(first)} column(s), numbered from 0 "
                f"(delimiter {delimiter!r})"
            )
        if len(first) < 2:
            raise _CLIError(f"--index-col {index_col}: {path} has no other column to sample")
    if header == "auto":
        has_header = _is_header([field for j, field in enumerate(first) if j != index_col])
    else:
        has_header = header == "yes"
    names = [field.strip() for field in first] if has_header else None
    if has_header:
        rows, lines = rows[1:], lines[1:]
    n_cols = len(first)
    for row, line in zip(rows, lines, strict=True):
        if len(row) != n_cols:
            raise _CLIError(
                f"{path}: ragged rows: line {line} has {len(row)} field(s), expected {n_cols}"
            )

    # the index pandas writes: an unnamed first column of integers
    unnamed_first = names is not None and names[0] == ""
    if index_col == "auto":
        drop = None
        if (
            unnamed_first
            and n_cols >= 2
            and rows
            and all(_INTEGER.fullmatch(row[0].strip()) for row in rows)
        ):
            drop = 0
    elif index_col == "none":
        drop = None
    else:
        drop = index_col
    keep = [j for j in range(n_cols) if j != drop]

    def column(j: int) -> str:
        if names is not None and names[j]:
            return f"column {names[j]!r}"
        return f"column {j + 1}"

    X = np.empty((len(rows), len(keep)))
    for i, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for k, j in enumerate(keep):
            try:
                X[i, k] = float(row[j])
            except ValueError:
                hint = _delimiter_hint(row[j], delimiter)
                if not hint and j == 0 and index_col == "auto" and unnamed_first:
                    hint = "; if that column holds row labels, drop it with --index-col 0"
                raise _CLIError(
                    f"{path}: non-numeric value {row[j].strip()!r} in {column(j)}, "
                    f"row {i + 1} (line {line}){hint}"
                ) from None
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        i, k = bad[0]
        j = keep[k]
        raise _CLIError(
            f"{path}: NaN or infinite value {rows[i][j].strip()!r} in {column(j)}, "
            f"row {i + 1} (line {lines[i]})"
        )
    header_out = None if names is None else [names[j] for j in keep]
    return _Data(
        X,
        header_out,
        "csv",
        path,
        delimiter=delimiter,
        index_dropped_auto=index_col == "auto" and drop is not None,
    )


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


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def _check_writable(option: str, path: Path) -> None:
    if not path.parent.is_dir():
        raise _CLIError(
            f"cannot write {option} {path}: directory {str(path.parent)!r} does not exist"
        )
    if path.is_dir():
        raise _CLIError(f"cannot write {option} {path}: it is a directory")


def _check_out(out: Path, data: _Data) -> None:
    _check_writable("--out", out)
    if data.path is not None and _same_file(out, data.path):
        raise _CLIError("--out is the --data file; choose another file so the data are kept")


def _check_save_model(spec: str | None, out: Path, data: _Data) -> Path | None:
    if spec is None:
        return None
    path = Path(spec)
    _check_writable("--save-model", path)
    if data.path is not None and _same_file(path, data.path):
        raise _CLIError("--save-model is the --data file; choose another file so the data are kept")
    if _same_file(path, out):
        raise _CLIError("--save-model is the --out file; choose another file")
    return path


def _check_csv_options(args: argparse.Namespace, data: _Data, fmt: str) -> None:
    """Refuse CSV options that would do nothing, rather than ignore them."""
    if data.fmt == "csv":
        return
    for option, value in (("--header", args.header), ("--index-col", args.index_col)):
        if value is not None:
            raise _CLIError(f"{option} applies to a .csv --data file only; got --data {args.data}")
    if args.delimiter is not None and fmt != "csv":
        raise _CLIError("--delimiter applies to CSV input or output; neither --data nor --out is")


def _write(
    out: Path, fmt: str, samples: np.ndarray, header: list[str] | None, delimiter: str = ","
) -> None:
    try:
        if fmt == "npy":
            # a file object, because np.save appends ".npy" to a name without it
            with out.open("wb") as f:
                np.save(f, samples)
        else:
            with out.open("w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, delimiter=delimiter)
                if header is not None:
                    writer.writerow(header)
                # str of a NumPy scalar is the shortest text that reads back exactly
                writer.writerows([str(v) for v in row] for row in samples)
    except OSError as exc:
        raise _CLIError(f"cannot write --out {out}: {exc.strerror or exc}") from None


# --- commands --------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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
    _write(out, fmt, samples, data.header if fmt == "csv" else None, delimiter)
    if model_path is not None:
        # a standard scikit-learn object: the fitted scaler and estimator as a Pipeline, which
        # skgradflow.inspection.sample maps back to the units of the data
        model = estimator if scaler is None else make_pipeline(scaler, estimator)
        try:
            joblib.dump(model, model_path)
        except OSError as exc:
            raise _CLIError(
                f"cannot write --save-model {model_path}: {exc.strerror or exc}"
            ) from None
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise _CLIError(f"cannot save the model: {_one_line(exc)}") from None
    elapsed = time.perf_counter() - start
    # converged: the estimator's stopping rule was met; a run whose energy went up has
    # failed above and prints no summary
    print(
        f"estimator={args.estimator} rows={samples.shape[0]} features={samples.shape[1]} "
        f"n_iter={estimator.n_iter_} converged={bool(estimator.converged_)} "
        f"energy_distance={distance:.6g} reference={reference:.6g} seconds={elapsed:.2f}"
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
        The exit status: 0 on success; 1 when the run failed (the flow diverged: its
        energy went up or became non-finite; nothing is written); 2 on a usage, data or
        estimator error (both reported as one line ``skgradflow: error: ...`` on stderr);
        130 when interrupted; 141 when standard output was closed early (a broken pipe,
        as in ``skgradflow datasets | head -1``), silently.

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
        try:
            args = parser.parse_args(argv)
            status = args.handler(args)
        except _Exit as exc:
            status = exc.status
        # a broken pipe shows up here at the latest, not at the interpreter's exit
        sys.stdout.flush()
        return status
    except _CLIError as exc:
        print(f"skgradflow: error: {_one_line(exc)}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("skgradflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of stdout is gone (``| head``): nothing more can be shown, and the
        # interpreter's last flush of stdout must not fail again
        _silence_stdout()
        return _BROKEN_PIPE_STATUS


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # no file descriptor behind sys.stdout (a test's capture)
