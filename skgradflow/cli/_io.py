"""The command line's files: reading the data (built-in, CSV, ``.npy``), checking the
output paths before the fit, and writing the samples and the model, atomically."""

from __future__ import annotations

import argparse
import csv
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from .._atomic import StagedFile
from ..datasets import BUILTIN_DATASETS, load_builtin
from ._errors import _CLIError, _one_line

_NPY_MAGIC = b"\x93NUMPY"
_FORMATS = ("csv", "npy")
# the values of an index column that --index-col auto drops
_INTEGER = re.compile(r"[+-]?\d+")


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
    """Refuse, before the fit, an output path that cannot be written."""
    if not path.parent.is_dir():
        raise _CLIError(
            f"cannot write {option} {path}: directory {str(path.parent)!r} does not exist"
        )
    if path.is_dir():
        raise _CLIError(f"cannot write {option} {path}: it is a directory")
    if path.exists() and not path.is_file():
        return  # a device or a pipe (/dev/stdout): written in place, as open() finds it
    target = Path(os.path.realpath(path))
    # The file is written beside its destination and renamed onto it: the folder must
    # take a new file, and an existing file that is read-only stays refused, as by open().
    if target.exists() and not os.access(target, os.W_OK):
        raise _CLIError(f"cannot write {option} {path}: Permission denied (a read-only file)")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise _CLIError(
            f"cannot write {option} {path}: the directory {str(target.parent)!r} is not "
            "writable"
        )


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


def _write_samples(
    path: str, fmt: str, samples: np.ndarray, header: list[str] | None, delimiter: str
) -> None:
    if fmt == "npy":
        # a file object, because np.save appends ".npy" to a name without it
        with open(path, "wb") as f:
            np.save(f, samples)
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delimiter)
            if header is not None:
                writer.writerow(header)
            # str of a NumPy scalar is the shortest text that reads back exactly
            writer.writerows([str(v) for v in row] for row in samples)


def _write_outputs(
    out: Path,
    fmt: str,
    samples: np.ndarray,
    header: list[str] | None,
    delimiter: str = ",",
    model_path: Path | None = None,
    model: object = None,
) -> None:
    """Write the samples to ``out`` and the model to ``model_path`` (when given), all or
    nothing: each is written to a temporary file beside its destination, and only when both
    are complete are they renamed into place.  A failure or an interrupt on the way leaves
    the destinations as they were, and no temporary file."""
    staged: list[StagedFile] = []

    def stage(option: str, path: Path, write) -> StagedFile:
        try:
            staged.append(StagedFile(path))
            write(staged[-1].path)
        except BrokenPipeError:
            raise  # the reader of /dev/stdout is gone: main ends quietly
        except OSError as exc:
            raise _CLIError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
        return staged[-1]

    try:
        files = [("--out", out, stage("--out", out, lambda tmp: _write_samples(
            tmp, fmt, samples, header, delimiter)))]
        if model_path is not None:
            try:
                files.append(("--save-model", model_path,
                              stage("--save-model", model_path, lambda tmp: joblib.dump(
                                  model, tmp))))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise _CLIError(f"cannot save the model: {_one_line(exc)}") from None
        for option, path, file in files:
            try:
                file.commit()
            except OSError as exc:
                raise _CLIError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
    finally:
        for file in staged:
            file.discard()
