"""The ``skgradflow`` command line's options: the parser and the types of option values."""

from __future__ import annotations

import argparse
import inspect
import math
import sys

from .. import IFTSampler, InclusiveKLFitter, WFRMMDFlow, __version__
from ..backends import backend_names
from ..kernels import BANDWIDTH_RULES, KERNELS
from ._errors import _CLIError, _Exit

#: Estimators that ``skgradflow sample --estimator NAME`` can run.
ESTIMATORS: dict[str, type] = {
    "ift": IFTSampler,
    "wfr": WFRMMDFlow,
    "inclusive-kl": InclusiveKLFitter,
}


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and which never calls ``sys.exit``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _CLIError(f"{message} (see '{self.prog} --help')")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


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


def _fraction(text: str) -> float:
    value = _float(text, positive=True)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1; got {text!r}")
    return value


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
            "  130 interrupted (Ctrl-C); 141 standard output was closed early (a broken\n"
            "  pipe); 143 terminated (SIGTERM). An interrupted or terminated run writes no\n"
            "  file.\n"
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
            "one per distinct row, at most 500, for ift and wfr; for inclusive-kl, one per "
            "10, 3 or 1 distinct rows, at most 500, by held-out likelihood)"
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
        help=(
            "the engine of the kernel sums: auto (chosen by problem size and by what is "
            "installed) or one of the registered engines: "
            + ", ".join(name for name in backend_names() if name != "auto")
            + " (default: auto)"
        ),
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
        "--holdout",
        type=_fraction,
        metavar="FRACTION",
        help=(
            "fit on the other rows and judge the samples on this fraction of the rows, drawn "
            "at random: the summary line adds dcr_ratio and c2st_auc"
        ),
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

    commands.add_parser(
        "datasets",
        help="list the built-in data sets",
        description="List the built-in data sets that --data accepts.",
        allow_abbrev=False,
    )
    return parser


