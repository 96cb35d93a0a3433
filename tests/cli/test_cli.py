"""The command line (``skgradflow.cli``) and the built-in data sets, run in-process."""

from __future__ import annotations

import argparse
import csv
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skgradflow import IFTSampler, cli
from skgradflow.datasets import BUILTIN_DATASETS, load_builtin
from skgradflow.inspection import sample as inspection_sample
from skgradflow.metrics import energy_distance

# Small flows: every run below takes well under a second with the NumPy backend.
FAST = ["--n-particles", "50", "--max-iter", "30", "--backend", "numpy"]
SUMMARY = re.compile(
    r"^estimator=(\S+) rows=(\d+) features=(\d+) n_iter=(\d+) converged=(True|False) "
    r"energy_distance=(\S+) reference=(\S+) seconds=(\S+)$"
)


def sample(data, out, n_samples=200, *extra) -> list[str]:
    return ["sample", "--estimator", "ift", "--data", str(data), "--out", str(out),
            "--n-samples", str(n_samples), *FAST, *extra]  # fmt: skip


def write_csv(path: Path, X: np.ndarray, header: list[str] | None) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        if header is not None:
            writer.writerow(header)
        writer.writerows(X.tolist())
    return path


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=float)


def summary(stdout: str) -> re.Match:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    match = SUMMARY.match(lines[0])
    assert match, lines[0]
    return match


@pytest.fixture(scope="module")
def gmm() -> np.ndarray:
    return load_builtin("gmm2d")[0][:400]


class _Spy(IFTSampler):
    """Records what the command line hands to ``fit``."""

    seen: list[np.ndarray] = []

    def fit(self, X, y=None, sample_weight=None):
        _Spy.seen.append(np.array(X))
        return super().fit(X, y, sample_weight)


class _Warns(IFTSampler):
    def fit(self, X, y=None, sample_weight=None):
        warnings.warn("Not converged.\nIncrease max_iter.", ConvergenceWarning, stacklevel=2)
        warnings.warn("Not converged.\nIncrease max_iter.", ConvergenceWarning, stacklevel=2)
        return super().fit(X, y, sample_weight)


class _Broken(IFTSampler):
    def fit(self, X, y=None, sample_weight=None):
        raise FloatingPointError("The flow diverged.\nUse a smaller step_size.")


# --- the built-in data sets ---------------------------------------------------------------


def test_builtin_datasets_are_deterministic_and_finite():
    assert BUILTIN_DATASETS == ("gmm2d", "ring2d", "iris", "wine", "breast_cancer", "digits")
    X, names = load_builtin("gmm2d", random_state=3)
    assert X.shape == (2000, 2) and X.dtype == np.float64 and names == ["x", "y"]
    np.testing.assert_array_equal(X, load_builtin("gmm2d", random_state=3)[0])
    assert not np.array_equal(X, load_builtin("gmm2d", random_state=4)[0])
    R, _ = load_builtin("ring2d")
    radius = np.linalg.norm(R, axis=1)
    assert R.shape == (2000, 2) and abs(radius.mean() - 3.0) < 0.05
    for name, shape in [("iris", (150, 4)), ("wine", (178, 13)), ("digits", (1797, 64))]:
        X, names = load_builtin(name)
        assert X.shape == shape and len(names) == shape[1] and np.all(np.isfinite(X))
    with pytest.raises(ValueError, match="gmm2d"):
        load_builtin("mnist")


def test_gmm2d_has_three_separated_modes():
    X, _ = load_builtin("gmm2d")
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    nearest = np.argmin(((X[:, None, :] - centres) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest) / len(X), [0.5, 0.3, 0.2], atol=0.01)


def test_datasets_command_lists_every_builtin(capsys):
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN_DATASETS:
        assert re.search(rf"^{name}\s", out, flags=re.M), name


# --- sample: success ----------------------------------------------------------------------


def test_builtin_to_csv_with_progress_on_stderr(tmp_path, capsys):
    out = tmp_path / "samples.csv"
    assert cli.main(sample("gmm2d", out, 300, "--bandwidth", "silverman")) == 0
    captured = capsys.readouterr()
    m = summary(captured.out)
    assert m.group(1) == "ift" and m.group(2) == "300" and m.group(3) == "2"
    assert int(m.group(4)) <= 30 and float(m.group(6)) >= 0
    assert "IFTSampler" in captured.err  # verbose=1 without --quiet
    header, S = read_csv(out)
    assert header == ["x", "y"] and S.shape == (300, 2)
    # energy_distance is that of the written samples to the data; reference that of 300 rows
    # drawn from the data with the run's seed (0)
    X = load_builtin("gmm2d")[0]
    assert float(m.group(6)) == pytest.approx(energy_distance(S, X), rel=1e-5)
    rows = np.random.default_rng(0).choice(len(X), size=300, replace=False)
    assert float(m.group(7)) == pytest.approx(energy_distance(X[rows], X), rel=1e-5)


def test_csv_with_header_round_trip(tmp_path, capsys, gmm):
    # far from zero and of very different scales: samples must come back in these units
    X = gmm * [1.0, 1000.0] + [100.0, -5000.0]
    data = write_csv(tmp_path / "data.csv", X, ["height (cm)", "weight"])
    before = data.read_bytes()
    out = tmp_path / "new.csv"
    assert cli.main(sample(data, out, 400, "--quiet")) == 0
    m = summary(capsys.readouterr().out)
    assert m.group(2) == "400" and m.group(3) == "2"
    assert data.read_bytes() == before
    header, S = read_csv(out)
    assert header == ["height (cm)", "weight"] and S.shape == (400, 2)
    lo, hi = X.min(0), X.max(0)
    span = hi - lo
    # a short run leaves a few light particles in the tails of the initial Gaussian
    assert np.all(S >= lo - 0.5 * span) and np.all(S <= hi + 0.5 * span)
    assert np.all(np.abs(S.mean(0) - X.mean(0)) < 0.1 * X.std(0))
    np.testing.assert_allclose(S.std(0), X.std(0), rtol=0.25)
    assert abs(S[:, 0].mean() - 100.0) < 2.0


def test_csv_without_header_and_constant_column(tmp_path, capsys, gmm, monkeypatch):
    monkeypatch.setitem(cli.ESTIMATORS, "spy", _Spy)
    _Spy.seen.clear()
    X = np.column_stack([gmm, np.full(len(gmm), 7.5)])
    data = write_csv(tmp_path / "plain.csv", X, None)
    out = tmp_path / "plain_out.csv"
    args = sample(data, out, 100, "--quiet")
    args[args.index("ift")] = "spy"
    assert cli.main(args) == 0
    Z = _Spy.seen[-1]
    # standardised for the flow; a constant column becomes zeros, not NaN
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), [1.0, 1.0, 0.0], atol=1e-12)
    with out.open() as f:
        first = next(csv.reader(f))
    assert all(float(v) == float(v) for v in first)  # numeric: no header was invented
    S = np.loadtxt(out, delimiter=",")
    assert S.shape == (100, 3) and np.all(np.isfinite(S))
    np.testing.assert_allclose(S[:, 2], 7.5)
    summary(capsys.readouterr().out)

    _Spy.seen.clear()
    assert cli.main([*args, "--no-standardize"]) == 0
    np.testing.assert_array_equal(_Spy.seen[-1], X)


def test_npy_in_npy_out(tmp_path, capsys, gmm):
    data = tmp_path / "data.npy"
    np.save(data, (gmm + 100.0).astype(np.float32))
    before = data.read_bytes()
    out = tmp_path / "out.npy"
    assert cli.main(sample(data, out, 150, "--quiet", "--random-state", "3")) == 0
    summary(capsys.readouterr().out)
    assert data.read_bytes() == before
    S = np.load(out)
    assert S.shape == (150, 2) and S.dtype == np.float32
    assert np.all(np.abs(S.mean(0) - (gmm.mean(0) + 100.0)) < 1.0)
    # the same seed gives the same file
    out2 = tmp_path / "again.npy"
    assert cli.main(sample(data, out2, 150, "--quiet", "--random-state", "3")) == 0
    np.testing.assert_array_equal(np.load(out2), S)


def test_help_returns_zero(capsys):
    assert cli.main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--n-samples" in text
    # the rules for CSV input and the exit statuses are in the help
    for option in ("--delimiter CHAR", "--header {auto,yes,no}", "--index-col {auto,none,N}"):
        assert option in text
    assert "0,1,...,d-1" in text and "1 the run failed" in text and "141" in text
    assert "for inclusive-kl, one per 10, 3 or 1 distinct rows" in text  # its n_components


# --- sample: errors -----------------------------------------------------------------------


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    files = {
        "missing": ("nope.csv", None, "no such file"),
        "non_numeric": ("species.csv", "a,b,species\n1,2,3\n4,5,setosa\n", "'species', row 2"),
        "ragged": ("ragged.csv", "a,b\n1,2\n3,4,5\n", "line 3"),
        "nan": ("nan.csv", "a,b\n1,2\n3,inf\n", "'b', row 2"),
        "empty": ("empty.csv", "", "empty"),
        "one_row": ("one.csv", "a,b\n1,2\n", "at least 2"),
        "extension": ("data.txt", "1,2\n3,4\n", ".csv or .npy"),
        "not_npy": ("fake.npy", "1,2\n3,4\n", "not a NumPy"),
    }
    out = {}
    for key, (name, text, expected) in files.items():
        path = tmp / name
        if text is not None:
            path.write_text(text)
        out[key] = (path, expected)
    return out


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "non_numeric",
        "ragged",
        "nan",
        "empty",
        "one_row",
        "extension",
        "not_npy",
    ],  # fmt: skip
)
def test_bad_data_fails_in_one_line(tmp_path, capsys, case):
    path, expected = _bad_files(tmp_path)[case]
    before = path.read_bytes() if path.exists() else None
    out = tmp_path / "out.csv"
    assert cli.main(sample(path, out)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("skgradflow: error: ") and expected in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()
    if before is not None:
        assert path.read_bytes() == before


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--bogus", "1"], "unrecognized arguments: --bogus"),
        (["--n-samples", "0"], "--n-samples"),
        (["--n-samples", "ten"], "--n-samples"),
        (["--n-samples", "1.5"], "--n-samples"),
        (["--bandwidth", "-1"], "--bandwidth"),
        (["--step-size", "nan"], "--step-size"),
        (["--kernel", "cosine"], "--kernel"),
        (["--estimator", "nope"], "--estimator"),
    ],
)
def test_bad_options_fail_in_one_line(tmp_path, capsys, extra, expected):
    out = tmp_path / "out.csv"
    assert cli.main([*sample("gmm2d", out), *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("skgradflow: error: "), captured.err
    assert expected in lines[0] and "usage:" not in captured.err
    assert not out.exists()


def test_out_cannot_overwrite_data(tmp_path, capsys, gmm):
    data = write_csv(tmp_path / "data.csv", gmm, ["x", "y"])
    before = data.read_bytes()
    assert cli.main(sample(data, data)) == 2
    assert "--out is the --data file" in capsys.readouterr().err
    assert data.read_bytes() == before


def test_warnings_are_one_line_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.ESTIMATORS, "warns", _Warns)
    args = sample("gmm2d", tmp_path / "out.npy", 10, "--quiet")
    args[args.index("ift")] = "warns"
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    # duplicates shown once; the short run also warns that it did not converge
    assert lines.count("skgradflow: warning: Not converged. Increase max_iter.") == 1
    assert all(line.startswith("skgradflow: warning: ") for line in lines)
    summary(captured.out)


def test_estimator_error_is_one_line(tmp_path, capsys, monkeypatch):
    # a flow that diverged to non-finite values: the run failed, status 1 (not a usage error)
    monkeypatch.setitem(cli.ESTIMATORS, "broken", _Broken)
    args = sample("gmm2d", tmp_path / "out.npy")
    args[args.index("ift")] = "broken"
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "skgradflow: error: _Broken: The flow diverged. Use a smaller step_size. "
        "Nothing was written."
    ]
    assert captured.out == ""
    assert not (tmp_path / "out.npy").exists()


# --- python -m skgradflow -----------------------------------------------------------------


def test_python_dash_m(tmp_path, gmm):
    data = write_csv(tmp_path / "data.csv", gmm, ["u", "v"])
    out = tmp_path / "out.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "skgradflow", *sample(data, out, 50, "--quiet")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary(proc.stdout)
    header, S = read_csv(out)
    assert header == ["u", "v"] and S.shape == (50, 2)

    bad = subprocess.run(
        [sys.executable, "-m", "skgradflow", "sample", "--estimator", "ift"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("skgradflow: error: ") and len(bad.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "cls"), [("wfr", "WFRMMDFlow"), ("inclusive-kl", "InclusiveKLFitter")]
)
def test_every_estimator_runs_from_the_command_line(tmp_path, capsys, gmm, name, cls, monkeypatch):
    import skgradflow

    fitted = []
    original = getattr(skgradflow, cls)

    class Recording(original):
        def fit(self, X, y=None, sample_weight=None):
            fitted.append(self)
            return super().fit(X, y, sample_weight)

    Recording.__name__ = cls
    monkeypatch.setitem(cli.ESTIMATORS, name, Recording)
    data = tmp_path / "data.npy"
    np.save(data, gmm)
    args = ["sample", "--estimator", name, "--data", str(data), "--out", str(tmp_path / "o.npy"),
            "--n-samples", "300", *FAST, "--quiet"]  # fmt: skip
    assert cli.main(args) == 0
    match = summary(capsys.readouterr().out)
    assert match.group(1) == name
    out = np.load(tmp_path / "o.npy")
    assert out.shape == (300, 2) and np.all(np.isfinite(out))
    (est,) = fitted
    # --n-particles reaches the estimator's own parameter for its number of atoms
    n_atoms = est.get_params().get("n_particles", est.get_params().get("n_components"))
    assert n_atoms == 50
    # the samples lie within the data's range, in the data's units
    lo, hi = gmm.min(0), gmm.max(0)
    span = hi - lo
    assert np.all(out > lo - 0.5 * span) and np.all(out < hi + 0.5 * span)


def test_an_option_the_estimator_lacks_fails_in_one_line(tmp_path, capsys, gmm):
    data = tmp_path / "data.npy"
    np.save(data, gmm)
    args = ["sample", "--estimator", "inclusive-kl", "--kernel", "imq", "--data", str(data),
            "--out", str(tmp_path / "o.npy"), "--n-samples", "5", *FAST]  # fmt: skip
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--kernel" in err[0] and "inclusive-kl" in err[0]


# --- CSV input: the index column, the header line, the delimiter ----------------------------


def run_spy(monkeypatch, args: list[str]) -> tuple[int, np.ndarray | None]:
    """Run ``args`` with the spy in place of ift: the status, and the array fit saw."""
    monkeypatch.setitem(cli.ESTIMATORS, "spy", _Spy)
    _Spy.seen.clear()
    args = list(args)
    args[args.index("ift")] = "spy"
    status = cli.main(args)
    return status, (_Spy.seen[-1] if _Spy.seen else None)


def write_rows(path: Path, rows: list[list], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def test_pandas_index_column_is_dropped(tmp_path, capsys, gmm, monkeypatch):
    pd = pytest.importorskip("pandas")
    X = gmm + [100.0, -50.0]
    data = tmp_path / "frame.csv"
    pd.DataFrame(X, columns=["u", "v"]).to_csv(data)  # the index: an unnamed first column
    assert data.read_text().startswith(",u,v\n0,")
    out = tmp_path / "out.csv"
    status, seen = run_spy(monkeypatch, sample(data, out, 100))
    assert status == 0 and seen.shape == (len(X), 2)
    captured = capsys.readouterr()
    assert "skgradflow: note: dropped the first column" in captured.err
    assert summary(captured.out).group(3) == "2"
    header, S = read_csv(out)
    assert header == ["u", "v"] and S.shape == (100, 2)
    # samples of the data, not of the 0..n-1 ramp of the index
    assert np.all(np.abs(S.mean(0) - X.mean(0)) < X.std(0))
    assert abs(S[:, 0].mean() - 100.0) < 5.0

    status, seen = run_spy(monkeypatch, [*sample(data, out, 10, "--quiet"), "--no-standardize"])
    assert status == 0
    np.testing.assert_array_equal(seen, X)
    assert "note" not in capsys.readouterr().err  # --quiet


@pytest.mark.parametrize(
    ("name", "values", "dropped"),
    [
        ("", lambda i: str(i), True),  # pandas' RangeIndex
        ("", lambda i: str(3 * i - 7), True),  # any integers: a filtered or shuffled frame
        ("idx", lambda i: str(i), False),  # a named column is a feature
        ("", lambda i: f"{i}.0", False),  # written as floats: a feature
        ("", lambda i: str(i) if i else "1.5", False),  # one value is not an integer
    ],
)
def test_index_col_auto_rule(tmp_path, capsys, gmm, monkeypatch, name, values, dropped):
    X = gmm[:60]
    rows = [[name, "a", "b"], *([values(i), *x] for i, x in enumerate(X.tolist()))]
    data = write_rows(tmp_path / "data.csv", rows)
    status, seen = run_spy(
        monkeypatch, [*sample(data, tmp_path / "o.csv", 10, "--quiet"), "--no-standardize"]
    )
    assert status == 0
    assert seen.shape == (60, 2 if dropped else 3)
    np.testing.assert_array_equal(seen[:, -2:], X)
    header, S = read_csv(tmp_path / "o.csv")
    assert header == (["a", "b"] if dropped else [name, "a", "b"]) and S.shape[1] == seen.shape[1]


def test_index_col_none_and_n(tmp_path, capsys, gmm, monkeypatch):
    X = gmm[:80]
    data = write_rows(tmp_path / "f.csv", [["", "a", "b"], *([i, *x] for i, x in enumerate(X))])
    out = tmp_path / "o.csv"
    args = [*sample(data, out, 10, "--quiet"), "--no-standardize"]
    status, seen = run_spy(monkeypatch, [*args, "--index-col", "none"])
    assert status == 0 and seen.shape == (80, 3)
    np.testing.assert_array_equal(seen[:, 0], np.arange(80))
    assert read_csv(out)[0] == ["", "a", "b"]

    # N: a column of row labels (not numbers), anywhere, in a file without a header
    labels = write_rows(tmp_path / "labels.csv", [[x[0], f"r{i}", x[1]] for i, x in enumerate(X)])
    args = [*sample(labels, out, 10, "--quiet"), "--no-standardize"]
    status, seen = run_spy(monkeypatch, [*args, "--index-col", "1"])
    assert status == 0
    np.testing.assert_array_equal(seen, X)
    S = np.loadtxt(out, delimiter=",")  # no header, two columns
    assert S.shape == (10, 2)
    # without it, the first line (with a label) is taken for a header, and the next label
    # is an error
    capsys.readouterr()
    status, _ = run_spy(monkeypatch, args)
    assert status == 2
    assert "non-numeric value 'r1' in column 'r0', row 1" in capsys.readouterr().err


def test_integer_header_line(tmp_path, capsys, gmm, monkeypatch):
    X = gmm[:100]
    out = tmp_path / "o.csv"

    def run(data: Path, *extra: str) -> np.ndarray:
        status, seen = run_spy(
            monkeypatch, [*sample(data, out, 10, "--quiet"), "--no-standardize", *extra]
        )
        assert status == 0
        return seen

    # pandas' default column names, without and with the index
    ints = write_csv(tmp_path / "ints.csv", X, ["0", "1"])
    np.testing.assert_array_equal(run(ints), X)
    assert read_csv(out)[0] == ["0", "1"]
    rows = [["", 0, 1], *([i, *x] for i, x in enumerate(X))]
    indexed = write_rows(tmp_path / "indexed.csv", rows)
    np.testing.assert_array_equal(run(indexed), X)
    assert read_csv(out)[0] == ["0", "1"]
    # --header no: the line is data
    seen = run(ints, "--header", "no")
    assert seen.shape == (101, 2)
    np.testing.assert_array_equal(seen[0], [0.0, 1.0])
    np.testing.assert_array_equal(np.loadtxt(out, delimiter=",").shape, (10, 2))
    # integers that are not 0..d-1 in order are data
    assert run(write_csv(tmp_path / "other.csv", X, ["1", "0"])).shape == (101, 2)
    # --header yes: a numeric first line is a header
    floats = write_csv(tmp_path / "floats.csv", X, ["1.5", "2.5"])
    assert run(floats).shape == (101, 2)
    np.testing.assert_array_equal(run(floats, "--header", "yes"), X)
    assert read_csv(out)[0] == ["1.5", "2.5"]


def test_explicit_delimiter_semicolon(tmp_path, capsys, gmm):
    data = tmp_path / "semi.csv"
    data.write_text("x;y\n" + "".join(f"{a!r};{b!r}\n" for a, b in gmm.tolist()))
    out = tmp_path / "o.csv"
    assert cli.main(sample(data, out, 50, "--quiet", "--delimiter", ";")) == 0
    summary(capsys.readouterr().out)
    lines = out.read_text().splitlines()
    assert lines[0] == "x;y" and len(lines) == 51
    assert all(len(line.split(";")) == 2 and "," not in line for line in lines)
    S = np.loadtxt(out, delimiter=";", skiprows=1)
    assert np.all(np.abs(S.mean(0) - gmm.mean(0)) < gmm.std(0))
    # the default ',' reads one field per line: one error line, with a hint
    out2 = tmp_path / "o2.csv"
    assert cli.main(sample(data, out2, 50, "--quiet")) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith("pass --delimiter ';'") and not out2.exists()


@pytest.mark.parametrize(
    ("option", "sep"), [("tab", "\t"), ("\\t", "\t"), ("\t", "\t"), ("space", " "), ("|", "|")]
)
def test_delimiter_values(tmp_path, capsys, gmm, monkeypatch, option, sep):
    X = gmm[:50]
    if sep == " ":  # runs of spaces, and spaces at the ends of the lines
        text = "x  y\n" + "".join(f"  {a!r}   {b!r} \n" for a, b in X.tolist())
    else:
        text = f"x{sep}y\n" + "".join(f"{a!r}{sep}{b!r}\n" for a, b in X.tolist())
    data = tmp_path / "data.csv"
    data.write_text(text)
    out = tmp_path / "o.csv"
    args = [*sample(data, out, 5, "--quiet"), "--no-standardize", "--delimiter", option]
    status, seen = run_spy(monkeypatch, args)
    assert status == 0
    np.testing.assert_array_equal(seen, X)
    lines = out.read_text().splitlines()
    assert lines[0] == f"x{sep}y" and all(len(line.split(sep)) == 2 for line in lines)


def test_delimiter_of_csv_output_from_builtin(tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert cli.main(sample("gmm2d", out, 20, "--quiet", "--delimiter", ";")) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "x;y" and len(lines) == 21 and "," not in out.read_text()


@pytest.mark.parametrize(
    ("data", "extra", "expected"),
    [
        ("csv", ["--delimiter", "ab"], "argument --delimiter: must be one character"),
        ("csv", ["--delimiter", "."], "argument --delimiter"),
        ("csv", ["--delimiter", "e"], "argument --delimiter"),
        ("csv", ["--header", "maybe"], "argument --header"),
        ("csv", ["--index-col", "-1"], "argument --index-col"),
        ("csv", ["--index-col", "first"], "argument --index-col"),
        ("csv", ["--index-col", "2"], "--index-col 2: "),
        ("builtin", ["--header", "yes"], "--header applies to a .csv --data file only"),
        ("npy", ["--index-col", "0"], "--index-col applies to a .csv --data file only"),
        ("npy", ["--delimiter", ";"], "--delimiter applies to CSV input or output"),
    ],
)
def test_bad_csv_options_fail_in_one_line(tmp_path, capsys, gmm, data, extra, expected):
    if data == "csv":
        path = write_csv(tmp_path / "d.csv", gmm, ["a", "b"])
    elif data == "npy":
        path = tmp_path / "d.npy"
        np.save(path, gmm)
    else:
        path = "gmm2d"
    out = tmp_path / "out.npy"
    assert cli.main([*sample(path, out, 10), *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("skgradflow: error: "), captured.err
    assert expected in lines[0] and captured.out == ""
    assert not out.exists()


# --- a failed run, the saved model --------------------------------------------------------


def test_diverged_run_fails_with_status_1(tmp_path, capsys):
    out, model = tmp_path / "x.csv", tmp_path / "m.joblib"
    out.write_text("kept\n")
    args = [*sample("gmm2d", out, 10, "--quiet"), "--step-size", "1e6", "--save-model", str(model)]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no summary line that says converged=True
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("skgradflow: error: IFTSampler: The energy went up from ")
    assert "--step-size 1e+06" in lines[0] and "--step-size auto" in lines[0]
    assert out.read_text() == "kept\n" and not model.exists()


class _Worse(IFTSampler):
    """A fit that returns without a warning but whose recorded energy went up."""

    curve = [1.0, 0.5, 2.0]
    bandwidths = None  # one bandwidth for the whole (faked) run

    def fit(self, X, y=None, sample_weight=None):
        super().fit(X, y, sample_weight)
        self.loss_curve_ = np.array(_Worse.curve)
        n_iter = len(_Worse.curve) - 1
        self.bandwidth_schedule_ = np.array(_Worse.bandwidths or [self.bandwidth_] * n_iter)
        self.n_iter_ = n_iter
        self.converged_ = True
        return self


@pytest.mark.parametrize(
    ("curve", "bandwidths", "status"),
    [
        ([1.0, 0.5, 2.0], None, 1),
        ([1.0, np.nan], None, 1),
        ([1.0, 2.0, 1.0], None, 0),
        # annealed: the energy at the second bandwidth is another function; it fell
        ([1.0, 0.5, 2.0, 1.9], [3.0, 0.5, 0.5], 0),
        # ... and here it rose within the last phase
        ([1.0, 0.5, 2.0, 2.5], [3.0, 0.5, 0.5], 1),
    ],
)
def test_energy_above_the_start_is_a_failure(tmp_path, capsys, monkeypatch, curve, bandwidths,
                                             status):
    monkeypatch.setattr(_Worse, "curve", curve)
    monkeypatch.setattr(_Worse, "bandwidths", bandwidths)
    monkeypatch.setitem(cli.ESTIMATORS, "worse", _Worse)
    out = tmp_path / "out.csv"
    args = sample("gmm2d", out, 10, "--quiet")
    args[args.index("ift")] = "worse"
    assert cli.main(args) == status
    captured = capsys.readouterr()
    if status:
        (line,) = captured.err.splitlines()
        first = curve[0] if bandwidths is None else curve[2]  # the last phase's first energy
        assert f"The energy went up from {first:.4g} to " in line and "with step size " in line
        assert captured.out == "" and not out.exists()
    else:
        assert summary(captured.out).group(5) == "True" and out.exists()


def test_save_model_round_trip(tmp_path, capsys, gmm):
    X = gmm * [1.0, 100.0] + [5.0, 500.0]
    data = write_csv(tmp_path / "d.csv", X, ["a", "b"])
    out, model = tmp_path / "o.csv", tmp_path / "model.joblib"
    args = sample(data, out, 50, "--quiet", "--random-state", "4", "--save-model", str(model))
    assert cli.main(args) == 0
    summary(capsys.readouterr().out)
    loaded = joblib.load(model)
    # a standard scikit-learn Pipeline: the fitted scaler, then the fitted estimator
    assert isinstance(loaded, Pipeline) and isinstance(loaded[-1], IFTSampler)
    assert isinstance(loaded[0], StandardScaler)
    S5 = inspection_sample(loaded, 5)
    assert S5.shape == (5, 2) and np.all(np.isfinite(S5))
    # in the units of the data: the draw of the command line, again
    _, S = read_csv(out)
    np.testing.assert_array_equal(inspection_sample(loaded, 50, random_state=4), S)
    assert np.all(np.abs(S.mean(0) - X.mean(0)) < X.std(0))

    model2 = tmp_path / "raw.joblib"
    args = [*sample(data, out, 5, "--quiet", "--no-standardize"), "--save-model", str(model2)]
    assert cli.main(args) == 0
    raw = joblib.load(model2)
    assert isinstance(raw, IFTSampler) and raw.sample(5).shape == (5, 2)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("missing/m.joblib", "directory"),
        ("sub", "it is a directory"),
        ("out.csv", "--save-model is the --out file"),
    ],
)
def test_save_model_bad_path_fails_before_fitting(tmp_path, capsys, monkeypatch, where, expected):
    (tmp_path / "sub").mkdir()
    out = tmp_path / "out.csv"
    args = [*sample("gmm2d", out, 10, "--quiet"), "--save-model", str(tmp_path / where)]
    status, seen = run_spy(monkeypatch, args)
    assert status == 2 and seen is None  # refused before fitting
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("skgradflow: error: ") and expected in line
    assert not out.exists()


# --- a closed pipe on stdout --------------------------------------------------------------


def test_broken_pipe_is_silent():
    proc = subprocess.Popen(
        [sys.executable, "-m", "skgradflow", "datasets"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and err == ""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("head") is None, reason="bash")
def test_pipe_into_head():
    command = f"{shlex.quote(sys.executable)} -m skgradflow datasets | head -1"
    proc = subprocess.run(
        ["bash", "-c", command + "; exit ${PIPESTATUS[0]}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.stdout.splitlines()[0].startswith("name") and len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and proc.stderr == ""
    assert proc.returncode in (0, 141)  # 0 when the output fits before head exits


class _ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_broken_pipe_in_process(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["datasets"]) == 141
    assert capsys.readouterr().err == ""


# --- the CLI page against the parser ------------------------------------------------------

CLI_PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def parser_options() -> dict[str, argparse.Action]:
    """Every option string of the command line (its subcommands' included) -> its action."""
    from skgradflow.cli._parser import _build_parser

    parsers = [_build_parser()]
    options = {}
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            for option in action.option_strings:
                options[option] = action
    return options


def test_the_cli_page_names_every_option_and_only_those():
    page = CLI_PAGE.read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", page))
    options = {o for o in parser_options() if o.startswith("--")}
    assert named - options == set(), "the page names options the parser lacks"
    assert options - {"--help"} - named == set(), "options missing from the page"


def test_the_cli_page_lists_every_choice_the_parser_has(monkeypatch):
    """``--option {a,b,c}`` on the page has exactly the parser's choices (the engines
    skgradflow registers for --backend, the estimators for --estimator)."""
    from skgradflow import backends
    from skgradflow.backends import _registry

    # engines registered at run time by other code (a doctest's) are not the page's business
    shipped = {name for name, factory in _registry._REGISTRY.items()
               if getattr(backends, getattr(factory, "__name__", ""), None) is factory}
    monkeypatch.setattr(_registry, "BACKEND_NAMES", {"auto", *shipped})
    page = CLI_PAGE.read_text()
    for option, action in parser_options().items():
        if not option.startswith("--") or action.choices is None:
            continue
        listed = re.findall(rf"`{option} \{{([^}}]*)\}}", page)
        assert listed, f"the page lists no choices of {option}"
        for text in listed:
            assert set(text.split(",")) == set(map(str, action.choices)), option


def test_backend_help_lists_every_registered_engine(capsys, monkeypatch):
    from skgradflow.backends import NumpyBackend, _registry, backend_names

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    monkeypatch.setattr(_registry, "BACKEND_NAMES", set(_registry.BACKEND_NAMES))
    _registry.register_backend("blockwise-test", NumpyBackend)
    assert cli.main(["sample", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "blockwise-test" in backend_names()
    engines = [name for name in backend_names() if name != "auto"]
    assert "registered engines: " + ", ".join(engines) + " (default: auto)" in text


HOLDOUT = re.compile(r" dcr_ratio=(\S+) c2st_auc=(\S+) seconds=")


def test_holdout_judges_the_samples_on_rows_the_fit_did_not_see(tmp_path, capsys, gmm):
    from skgradflow.metrics import classifier_two_sample_auc, distance_to_closest_record_ratio

    data = write_csv(tmp_path / "data.csv", gmm, ["x", "y"])
    out = tmp_path / "new.csv"
    assert cli.main(sample(data, out, 200, "--quiet", "--holdout", "0.25",
                           "--random-state", "3")) == 0
    line = capsys.readouterr().out.strip()
    printed = [float(v) for v in HOLDOUT.search(line).groups()]
    # the split, the scaler and both metrics again, from the written samples
    rows = np.random.default_rng(3).permutation(len(gmm))
    held, train = gmm[rows[:100]], gmm[rows[100:]]
    scaler = StandardScaler().fit(train)
    samples = scaler.transform(read_csv(out)[1])
    expected = [
        distance_to_closest_record_ratio(samples, scaler.transform(train),
                                         scaler.transform(held)),
        classifier_two_sample_auc(samples, scaler.transform(held), random_state=3),
    ]
    np.testing.assert_allclose(printed, expected, rtol=1e-3)
    assert 0.5 < printed[0] < 2.0 and 0.0 <= printed[1] <= 1.0


@pytest.mark.parametrize("fraction, message", [
    ("1.5", "must be a fraction between 0 and 1"),
    ("0", "must be a finite positive number"),
    ("0.001", "both need at least 2 rows"),
])
def test_a_bad_holdout_is_refused(tmp_path, capsys, gmm, fraction, message):
    data = write_csv(tmp_path / "data.csv", gmm[:50], ["x", "y"])
    out = tmp_path / "new.csv"
    assert cli.main(sample(data, out, 20, "--quiet", "--holdout", fraction)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
