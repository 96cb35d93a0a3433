"""A fault battery: what a user's machine does to a run (interrupts, full or read-only
folders, closed pipes, a full device) never leaves a traceback or a partial file.

Each fault that involves a signal, a file system or a user runs the command line in a
child process, bounded in time; the child is this checkout's CLI with a few hooks (set by
``FAULT_HOOK``) that deliver a real SIGINT at a chosen point.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow, cli
from skgradflow._atomic import StagedFile, atomic_open, atomic_path, write_text

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 300
FAST = ["--backend", "numpy", "--n-particles", "50", "--max-iter", "30", "--quiet"]

# The command line in a child.  It says on stderr when the fit starts (a fault that must be
# caught before the fit checks for it), and FAULT_HOOK sends the process a real SIGINT half
# way through writing the samples (csv, npy) or the model (joblib), or ("endless") takes the
# stopping rules away, so that a fit runs until a signal from outside ends it.
RUNNER = textwrap.dedent(
    """
    import os, signal, sys

    import skgradflow

    def interrupt():
        os.kill(os.getpid(), getattr(signal, os.environ.get("FAULT_SIGNAL", "SIGINT")))

    fit = skgradflow.IFTSampler.fit

    def traced_fit(self, *args, **kwargs):
        sys.stderr.write("FIT-STARTED\\n")
        sys.stderr.flush()
        return fit(self, *args, **kwargs)

    skgradflow.IFTSampler.fit = traced_fit
    hook = os.environ.get("FAULT_HOOK", "")
    if hook == "csv":
        import csv

        real_writer = csv.writer

        class HalfThenInterrupt:
            def __init__(self, f, **kwargs):
                self.f, self.writer = f, real_writer(f, **kwargs)

            def writerow(self, row):
                self.writer.writerow(row)

            def writerows(self, rows):
                rows = list(rows)
                self.writer.writerows(rows[: len(rows) // 2])
                self.f.flush()
                interrupt()
                self.writer.writerows(rows[len(rows) // 2:])

        csv.writer = HalfThenInterrupt
    elif hook == "npy":
        import numpy as np

        def half_save(f, array, *args, **kwargs):
            f.write(b"\\x93NUMPY" + bytes(64))
            f.flush()
            interrupt()

        np.save = half_save
    elif hook == "joblib":
        import joblib

        def half_dump(value, filename, *args, **kwargs):
            with open(filename, "wb") as fh:
                fh.write(b"partial")
                fh.flush()
                interrupt()

        joblib.dump = half_dump
    elif hook == "endless":
        from skgradflow._flow import _loop

        _loop._is_resolved = lambda *args, **kwargs: False
        _loop.RunLoop._has_converged = lambda self, *args, **kwargs: False

    from skgradflow.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


def cli_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", **extra)
    env.pop("FAULT_HOOK", None)
    return {**env, **extra}


def run_cli(args, cwd, hook="", signal_name="SIGINT", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, args)], cwd=cwd,
        env=cli_env(FAULT_HOOK=hook, FAULT_SIGNAL=signal_name),
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, stdin=subprocess.DEVNULL,
        **kwargs,
    )  # fmt: skip


def messages(stderr: str) -> list[str]:
    """The lines the command line printed, without the runner's marker and warnings."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines()
            if line != "FIT-STARTED" and not line.startswith("skgradflow: warning: ")]


def sample_args(out, n_samples=400, *extra):
    return ["sample", "--estimator", "ift", "--data", "gmm2d", "--n-samples", n_samples,
            "--out", out, *FAST, *extra]


# --- interrupts ---------------------------------------------------------------------------


# how the command line ends on each signal
ENDINGS = {"SIGINT": (130, "skgradflow: interrupted"), "SIGTERM": (143, "skgradflow: terminated")}


@pytest.mark.parametrize("signal_name", ENDINGS)
@pytest.mark.parametrize("hook, out_name, save_model", [
    ("csv", "samples.csv", False),
    ("npy", "samples.npy", False),
    ("joblib", "samples.csv", True),
])
def test_a_signal_while_writing_leaves_no_partial_file(tmp_path, hook, out_name, save_model,
                                                       signal_name):
    out, model = tmp_path / out_name, tmp_path / "model.joblib"
    out.write_bytes(b"the previous samples\n")
    extra = ["--save-model", model] if save_model else []
    proc = run_cli(sample_args(out, 400, *extra), tmp_path, hook=hook, signal_name=signal_name)
    status, line = ENDINGS[signal_name]
    assert proc.returncode == status, proc.stderr
    assert messages(proc.stderr) == [line]
    # the old file as it was, no model, and no temporary file left beside them
    assert out.read_bytes() == b"the previous samples\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out_name]
    assert proc.stdout == ""


@pytest.mark.parametrize("signal_name", ENDINGS)
def test_a_signal_while_fitting(tmp_path, signal_name):
    """A real Ctrl-C (or kill) from outside once the fit runs (its progress bar is on
    stderr).  Without its stopping rules the fit runs until the signal comes: with them, the
    default fit of the 2-D mixture could end (in about a second) before the signal did."""
    out = tmp_path / "samples.csv"
    args = ["sample", "--estimator", "ift", "--data", "gmm2d", "--n-samples", "10",
            "--out", out, "--backend", "numpy", "--max-iter", "100000", "--save-model",
            tmp_path / "model.joblib"]
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *map(str, args)], cwd=tmp_path,
                            env=cli_env(FAULT_HOOK="endless"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        err = b""
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while b"energy=" not in err:  # the first iterations are done
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk and time.monotonic() < deadline, err.decode()
            err += chunk
        proc.send_signal(getattr(signal, signal_name))
        out_text, rest = proc.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        proc.kill()
        proc.wait()
    err = (err + rest).decode()
    status, line = ENDINGS[signal_name]
    assert proc.returncode == status
    assert "Traceback" not in err
    assert err.rstrip().endswith(line)
    assert err.count(line) == 1
    assert out_text == b"" and list(tmp_path.iterdir()) == []


class _InterruptedInCompiledCode(IFTSampler):
    """What Ctrl-C inside a Numba loop gave: a SystemError whose context is the interrupt."""

    def fit(self, X, y=None, sample_weight=None):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemError("CPUDispatcher(<function f>) returned a result with an "
                              "exception set") from None


def test_a_systemerror_from_an_interrupt_is_an_interrupt(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.ESTIMATORS, "compiled", _InterruptedInCompiledCode)
    out = tmp_path / "samples.csv"
    args = ["sample", "--estimator", "compiled", "--data", "gmm2d", "--n-samples", "5",
            "--out", str(out), "--quiet"]
    assert cli.main(args) == 130
    assert capsys.readouterr().err.splitlines() == ["skgradflow: interrupted"]
    assert not out.exists()


class _OtherSystemError(IFTSampler):
    def fit(self, X, y=None, sample_weight=None):
        raise SystemError("a genuine bug")


def test_other_systemerrors_are_not_hidden(tmp_path, monkeypatch):
    monkeypatch.setitem(cli.ESTIMATORS, "buggy", _OtherSystemError)
    args = ["sample", "--estimator", "buggy", "--data", "gmm2d", "--n-samples", "5",
            "--out", str(tmp_path / "x.csv"), "--quiet"]
    with pytest.raises(SystemError, match="a genuine bug"):
        cli.main(args)


# --- pipes and devices --------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data") / "data.csv"
    np.savetxt(data, np.random.default_rng(0).normal(size=(300, 2)), delimiter=",",
               header="a,b", comments="")
    return data


def test_samples_to_a_closed_pipe_end_quietly(tmp_path, csv_data):
    """``--out /dev/stdout | head -1``: exit status 141 and nothing on stderr but warnings."""
    args = ["sample", "--estimator", "ift", "--data", csv_data, "--n-samples", "20000",
            "--out", "/dev/stdout", *FAST]
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *map(str, args)], cwd=tmp_path,
                            env=cli_env(FAULT_HOOK="endless"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    proc.stdout.close()  # the reader is gone before the first sample is written
    try:
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 141, err
    assert messages(err.decode()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_standard_output_on_a_full_device(tmp_path):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", RUNNER, "datasets"], cwd=tmp_path,
                              env=cli_env(), stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 2
    assert messages(proc.stderr) == [
        "skgradflow: error: cannot write to standard output: No space left on device"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("option", ["--out", "--save-model"])
def test_outputs_on_a_full_device_write_nothing(tmp_path, csv_data, option):
    out, model = tmp_path / "samples.csv", tmp_path / "model.joblib"
    paths = {"--out": out, "--save-model": model, option: "/dev/full"}
    args = sample_args(paths["--out"], 50, "--save-model", paths["--save-model"])
    args[args.index("gmm2d")] = csv_data  # /dev/full keeps the format of CSV input
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2
    assert messages(proc.stderr) == [
        f"skgradflow: error: cannot write {option} /dev/full: No space left on device"]
    assert list(tmp_path.iterdir()) == []  # neither file: the outputs go together


def _limit_file_size():
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_disk_that_fills_up_while_writing(tmp_path):
    """Files may not grow past 4 KiB (as on a full disk): the write fails half way, and the
    previous file is kept whole."""
    out = tmp_path / "samples.csv"
    out.write_text("the previous samples\n")
    proc = subprocess.run([sys.executable, "-c", RUNNER, *map(str, sample_args(out, 2000))],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S, preexec_fn=_limit_file_size)
    assert proc.returncode == 2
    assert messages(proc.stderr) == [
        f"skgradflow: error: cannot write --out {out}: File too large"]
    assert out.read_text() == "the previous samples\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.csv"]


# --- read-only folders and files ----------------------------------------------------------


def _without_privileges():
    """In the child, before it runs: a new user namespace, where root keeps its user id
    but loses the capability to write where the permissions say no."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")


@pytest.fixture
def as_user(tmp_path):
    """How to run a child that the permissions of tmp_path bind (root writes anywhere)."""
    if os.geteuid() != 0:
        yield {}
    else:
        probe = tmp_path / "probe"
        probe.mkdir(mode=0o555)
        try:
            subprocess.run([sys.executable, "-c", "import os, sys; sys.exit(os.access("
                            f"{str(probe)!r}, os.W_OK))"], preexec_fn=_without_privileges,
                           check=True, timeout=60)
        except (subprocess.SubprocessError, OSError):
            pytest.skip("running as root, and cannot drop the privilege to write anywhere")
        finally:
            probe.rmdir()
        yield {"preexec_fn": _without_privileges}
    for path in tmp_path.rglob("*"):  # let pytest clean up
        if path.is_dir():
            path.chmod(0o755)


def test_a_read_only_output_folder_is_refused_before_the_fit(tmp_path, as_user):
    folder = tmp_path
    locked = folder / "locked"
    locked.mkdir()
    (locked / "samples.csv").write_text("the previous samples\n")
    locked.chmod(0o555)
    out = locked / "samples.csv"
    proc = run_cli(sample_args(out, 50), folder, **as_user)
    assert proc.returncode == 2
    assert "FIT-STARTED" not in proc.stderr  # refused before the fit
    assert messages(proc.stderr) == [
        f"skgradflow: error: cannot write --out {out}: the directory '{locked}' is not "
        "writable"]
    assert out.read_text() == "the previous samples\n"


def test_an_unwritable_model_path_is_refused_before_the_fit(tmp_path, as_user):
    folder = tmp_path
    locked = folder / "locked"
    locked.mkdir(mode=0o555)
    (folder / "out").mkdir()
    out, model = folder / "out" / "samples.csv", locked / "model.joblib"
    proc = run_cli(sample_args(out, 50, "--save-model", model), folder, **as_user)
    assert proc.returncode == 2
    assert "FIT-STARTED" not in proc.stderr
    assert messages(proc.stderr) == [
        f"skgradflow: error: cannot write --save-model {model}: the directory '{locked}' is "
        "not writable"]
    assert not out.exists()


def test_a_read_only_output_file_is_refused_before_the_fit(tmp_path, as_user):
    folder = tmp_path
    out = folder / "samples.csv"
    out.write_text("keep me\n")
    out.chmod(0o444)
    proc = run_cli(sample_args(out, 50), folder, **as_user)
    assert proc.returncode == 2
    assert "FIT-STARTED" not in proc.stderr
    assert messages(proc.stderr) == [
        f"skgradflow: error: cannot write --out {out}: Permission denied (a read-only file)"]
    assert out.read_text() == "keep me\n"


# --- the atomic writes themselves ---------------------------------------------------------


def test_a_model_that_cannot_be_pickled_writes_no_samples(tmp_path, capsys, monkeypatch):
    class Unpicklable(IFTSampler):
        def fit(self, X, y=None, sample_weight=None):
            super().fit(X, y, sample_weight)
            self.handle_ = lambda: None  # a lambda does not pickle
            return self

    monkeypatch.setitem(cli.ESTIMATORS, "unpicklable", Unpicklable)
    out = tmp_path / "samples.csv"
    args = ["sample", "--estimator", "unpicklable", "--data", "gmm2d", "--n-samples", "5",
            "--out", str(out), "--save-model", str(tmp_path / "m.joblib"), *FAST]
    assert cli.main(args) == 2
    assert "cannot save the model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_replaced_file_keeps_its_permissions_and_its_symbolic_link(tmp_path):
    real = tmp_path / "real.md"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.md"
    link.symlink_to(real)
    write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.md", "real.md"]


def test_a_new_file_gets_the_permissions_open_gives(tmp_path):
    with open(tmp_path / "plain", "w"):
        pass
    write_text(tmp_path / "atomic", "x")
    mode = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == mode


def test_a_writer_that_raises_leaves_the_old_file(tmp_path):
    target = tmp_path / "table.md"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as fh:
        fh.write("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_the_temporary_name_keeps_the_extension(tmp_path):
    with atomic_path(tmp_path / "figure.svg") as tmp:
        assert tmp.endswith(".svg") and Path(tmp).parent == tmp_path
        Path(tmp).write_text("<svg/>")
    assert (tmp_path / "figure.svg").read_text() == "<svg/>"


def test_devices_are_written_in_place():
    staged = StagedFile("/dev/null")
    assert staged.in_place and staged.path == "/dev/null"
    staged.commit()
    assert os.path.exists("/dev/null")


def test_an_animation_interrupted_half_way_leaves_the_old_file(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from types import SimpleNamespace

    import matplotlib.pyplot as plt
    from matplotlib import animation

    from skgradflow.plotting import animate_path

    grab = animation.PillowWriter.grab_frame
    frames = []

    def grab_then_interrupt(self, **kwargs):
        frames.append(1)
        if len(frames) == 2:
            raise KeyboardInterrupt
        return grab(self, **kwargs)

    monkeypatch.setattr(animation.PillowWriter, "grab_frame", grab_then_interrupt)
    rng = np.random.default_rng(0)
    path = SimpleNamespace(atoms=[rng.normal(size=(5, 2)) for _ in range(3)],
                           weights=[np.full(5, 0.2)] * 3, n_iter=[1, 2, 3])
    out = tmp_path / "path.gif"
    out.write_bytes(b"GIF89a the previous animation")
    with pytest.raises(KeyboardInterrupt):
        animate_path(path, out)
    plt.close("all")
    assert out.read_bytes() == b"GIF89a the previous animation"
    assert list(tmp_path.iterdir()) == [out]


# --- guards: transactions and sizes -------------------------------------------------------


class _Toy:
    """An estimator whose fit updates a previous fit's array in place, then fails."""

    def __init__(self, scale=1.0):
        self.scale = scale

    @classmethod
    def _get_param_names(cls):
        return ["scale"]

    def fit(self, X, fail_with=None):
        from skgradflow._guards import fit_transaction

        with fit_transaction(self):
            if hasattr(self, "coef_"):
                self.coef_ *= 10.0  # in place, as a warm start may
            else:
                self.coef_ = np.asarray(X, dtype=float) * self.scale
            self.n_features_in_ = np.shape(X)[-1]
            if fail_with is not None:
                raise fail_with
        return self


@pytest.mark.parametrize("error", [KeyboardInterrupt(), FloatingPointError("diverged"),
                                   ValueError("bad")])
def test_fit_transaction_restores_the_previous_fit(error):
    toy = _Toy(scale=[2.0]).fit(np.ones(2))
    scale, coef = toy.scale, toy.coef_.copy()
    with pytest.raises(type(error)):
        toy.fit(np.ones(5), fail_with=error)
    assert toy.scale is scale  # the parameter object itself
    assert np.array_equal(toy.coef_, coef) and toy.n_features_in_ == 2


def test_fit_transaction_restores_an_unfitted_estimator():
    toy = _Toy()
    with pytest.raises(KeyboardInterrupt):
        toy.fit(np.ones(3), fail_with=KeyboardInterrupt())
    assert vars(toy) == {"scale": 1.0}


def test_a_draw_larger_than_memory_is_refused_before_allocating(monkeypatch):
    from skgradflow import _guards

    monkeypatch.setattr(_guards, "available_memory", lambda: 2**30)
    _guards.check_sample_size(10**6, 10, np.float64)  # 2 × 88 MB: fine
    with pytest.raises(_guards.SampleSizeError, match=r"n_samples=100000000 .* 1 GiB"):
        _guards.check_sample_size(10**8, 10, np.float64)
    assert issubclass(_guards.SampleSizeError, MemoryError)
    assert issubclass(_guards.SampleSizeError, ValueError)  # for code that handles bad input


# --- fits are transactions ----------------------------------------------------------------

ESTIMATOR_CLASSES = [IFTSampler, WFRMMDFlow, InclusiveKLFitter]


def small(cls, **params):
    size = "n_components" if cls is InclusiveKLFitter else "n_particles"
    return cls(**{size: 12, "max_iter": 15, "random_state": 0, "backend": "numpy", **params})


def raise_at(n_iter, error):
    def callback(state):
        if state.n_iter >= n_iter:
            raise error

    return callback


def same_state(before: dict, after: dict) -> bool:
    if set(before) != set(after):
        return False
    for name, value in before.items():
        other = after[name]
        if isinstance(value, np.ndarray):
            if not (isinstance(other, np.ndarray) and np.array_equal(value, other)):
                return False
        elif value is not other and not (type(value) is type(other) and value == other):
            return False
    return True


def snapshot(estimator) -> dict:
    return {name: value.copy() if isinstance(value, np.ndarray) else value
            for name, value in vars(estimator).items()}


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
@pytest.mark.parametrize("error", [KeyboardInterrupt(), FloatingPointError("diverged"),
                                   ValueError("mid-fit")], ids=type)
def test_a_failed_refit_leaves_the_previous_fit(cls, error):
    rng = np.random.default_rng(0)
    X2, X5 = rng.normal(size=(90, 2)), rng.normal(size=(90, 5))
    estimator = small(cls).fit(X2)
    samples, score = estimator.sample(7, random_state=1), estimator.score(X2)
    estimator.set_params(callback=raise_at(3, error))
    before = snapshot(estimator)
    with pytest.raises(type(error)):
        estimator.fit(X5)
    assert same_state(before, vars(estimator))
    assert estimator.n_features_in_ == 2
    assert np.array_equal(estimator.sample(7, random_state=1), samples)
    assert estimator.score(X2) == score


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
@pytest.mark.parametrize("error", [KeyboardInterrupt(), FloatingPointError("diverged")],
                         ids=type)
def test_a_failed_first_fit_leaves_an_unfitted_estimator(cls, error):
    from sklearn.exceptions import NotFittedError

    estimator = small(cls, callback=raise_at(2, error))
    before = snapshot(estimator)
    with pytest.raises(type(error)):
        estimator.fit(np.random.default_rng(0).normal(size=(90, 3)))
    assert same_state(before, vars(estimator))
    with pytest.raises(NotFittedError):
        estimator.sample(3)


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
def test_an_interrupted_warm_start_keeps_the_previous_atoms(cls):
    X = np.random.default_rng(0).normal(size=(90, 2))
    estimator = small(cls, warm_start=True).fit(X)
    before = snapshot(estimator)
    estimator.set_params(callback=raise_at(1, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        estimator.fit(X + 5.0)
    before["callback"] = estimator.callback
    assert same_state(before, vars(estimator))


# --- degenerate and extreme data ----------------------------------------------------------


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
@pytest.mark.parametrize("row", [[0.0, 0.0], [1.0, 1.0], [31.4, -160.5], [2e-4, -3e-4]])
def test_identical_rows_give_that_row(cls, row):
    X = np.repeat([row], 50, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator = cls(random_state=0).fit(X)
    samples = estimator.sample(200, random_state=0)
    scale = 1e-9 * (1.0 + np.abs(row).max())
    assert np.all(np.isfinite(samples)) and np.abs(samples - row).max() <= scale


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
@pytest.mark.parametrize("scale, words", [(1e-300, "varies by only"), (1e-170, "varies by only"),
                                          (1e300, "holds values up to"),
                                          (1e170, "holds values up to")])
def test_data_beyond_float64_squares_are_refused(cls, scale, words):
    X = np.random.default_rng(0).normal(size=(60, 2)) * scale
    with pytest.raises(ValueError, match=rf"^X {words} .* Rescale X"):
        small(cls).fit(X)


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
@pytest.mark.parametrize("scale", [1e-120, 1e120])
def test_data_far_from_unit_scale_inside_the_range_fit(cls, scale):
    """Inside the range a fit is as good, in the data's units, as at unit scale (within a
    factor of 3 in energy distance: the step-size rule is not exactly scale-free)."""
    from skgradflow.metrics import energy_distance

    X = np.random.default_rng(0).normal(size=(60, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        unit = small(cls).fit(X).sample(100, random_state=0)
        scaled = small(cls).fit(X * scale).sample(100, random_state=0) / scale
    assert np.all(np.isfinite(scaled))
    assert energy_distance(scaled, X) <= 3 * energy_distance(unit, X) + 1e-3


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
def test_tiny_equal_weights_are_uniform_weights(cls):
    X = np.random.default_rng(0).normal(size=(60, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        uniform = small(cls).fit(X).sample(50, random_state=0)
        tiny = small(cls).fit(X, sample_weight=np.full(60, 1e-320)).sample(50, random_state=0)
    assert np.allclose(tiny, uniform, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
def test_weights_that_overflow_their_sum_are_refused_before_the_fit(cls):
    estimator = small(cls)
    with pytest.raises(ValueError, match=r"^sample_weight sums to inf: .* Divide the weights"):
        estimator.fit(np.ones((60, 2)) * np.arange(60)[:, None],
                      sample_weight=np.full(60, 1e308))
    assert vars(estimator) == vars(small(cls))


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
@pytest.mark.parametrize("bandwidth", [1e-300, 1e300])
def test_a_bandwidth_beyond_float64_squares_is_refused(cls, bandwidth):
    X = np.random.default_rng(0).normal(size=(60, 2))
    with pytest.raises(ValueError, match="^" + re.escape(f"bandwidth={bandwidth!r} is outside")):
        small(cls, bandwidth=bandwidth).fit(X)


@pytest.mark.parametrize("scale", [1e-170, 1e160, 1e300])
def test_metrics_at_extreme_scales_are_those_of_the_unit_data(scale):
    """The median-rule MMD is scale-free and the energy distance scales with the data:
    computed at 1e160 (where squared distances overflow) they match the unit-scale values."""
    from skgradflow.metrics import energy_distance, mmd

    X = np.random.default_rng(0).normal(size=(80, 2))
    assert mmd(X * scale, (X + 3) * scale) == pytest.approx(mmd(X, X + 3), rel=1e-10)
    assert energy_distance(X * scale, (X + 0.3) * scale) / scale == pytest.approx(
        energy_distance(X, X + 0.3), rel=1e-10)


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
def test_a_draw_larger_than_memory_is_refused(cls):
    estimator = small(cls).fit(np.random.default_rng(0).normal(size=(60, 2)))
    with pytest.raises(MemoryError, match=r"^n_samples=1000000000000 would need"):
        estimator.sample(10**12)


def test_the_command_line_refuses_a_draw_larger_than_memory(tmp_path, capsys):
    out = tmp_path / "x.csv"
    args = ["sample", "--estimator", "ift", "--data", "gmm2d", "--n-samples", str(10**12),
            "--out", str(out), *FAST]
    assert cli.main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith("skgradflow: error: IFTSampler: n_samples=1000000000000 would need")
    assert not out.exists()


def test_a_benchmark_table_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _common import write_table

    from skgradflow import _atomic

    out = tmp_path / "table.md"
    write_table("| old |\n", str(out))
    assert out.read_text() == "| old |\n"

    def interrupted_replace(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        write_table("| new |\n", str(out))
    assert out.read_text() == "| old |\n" and list(tmp_path.iterdir()) == [out]
    assert capsys.readouterr().out == "| old |\n| new |\n"
