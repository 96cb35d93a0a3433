"""The command line (``skgradflow.cli``) and the built-in data sets, run in-process."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skgradflow import IFTSampler, cli
from skgradflow.datasets import BUILTIN_DATASETS, load_builtin

# Small flows: every run below takes well under a second with the NumPy backend.
FAST = ["--n-particles", "50", "--max-iter", "30", "--backend", "numpy"]
SUMMARY = re.compile(
    r"^estimator=(\S+) rows=(\d+) features=(\d+) n_iter=(\d+) converged=(True|False) "
    r"energy_distance=(\S+) seconds=(\S+)$"
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
    assert "--n-samples" in capsys.readouterr().out


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
    monkeypatch.setitem(cli.ESTIMATORS, "broken", _Broken)
    args = sample("gmm2d", tmp_path / "out.npy")
    args[args.index("ift")] = "broken"
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "skgradflow: error: _Broken: The flow diverged. Use a smaller step_size."
    ]
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
