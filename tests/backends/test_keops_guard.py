"""KeOps never kills the user's process: a stand-in ``pykeops`` that imports fine and kills
its own process (SIGSEGV) at its first reduction, as KeOps 2.3 does at its first GPU compile
under CUDA 13, put first on ``PYTHONPATH`` of a subprocess.  The subprocess (the "user's
program") must survive, fall back or raise a clear error, and probe once per environment."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

# A LazyTensor over dense NumPy arrays, enough for the probe's reduction; it crashes where
# STANDIN_CRASH says: "all" (every reduction), "gpu" (GPU reductions only) or "none".
STANDIN = textwrap.dedent(
    """
    import os, signal
    import numpy as np

    with open(os.environ["STANDIN_IMPORTS"], "a") as fh:
        fh.write(f"{os.getpid()}\\n")

    class LazyTensor:
        def __init__(self, array):
            self.a = np.asarray(array)

        def _lift(self, other):
            return other.a if isinstance(other, LazyTensor) else other

        def __sub__(self, other):
            return LazyTensor(self.a - self._lift(other))

        def __pow__(self, p):
            return LazyTensor(self.a ** p)

        def __rmul__(self, other):
            return LazyTensor(other * self.a)

        __mul__ = __rmul__

        def exp(self):
            return LazyTensor(np.exp(self.a))

        def sum(self, axis, backend="auto", **kwargs):
            if axis == -1:  # a lazy sum over the coordinates: no reduction yet
                return LazyTensor(self.a.sum(-1, keepdims=True))
            crash = os.environ.get("STANDIN_CRASH", "all")
            if crash == "all" or (crash == "gpu" and backend == "GPU"):
                os.kill(os.getpid(), signal.SIGSEGV)
            return self.a.sum(axis).reshape(self.a.shape[0], -1)
    """
)

USER_PROGRAM = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    from skgradflow import IFTSampler
    from skgradflow.backends import KeOpsBackend, KeOpsUnavailableError, resolve_backend
    from skgradflow.backends import _registry
    from skgradflow.metrics import mmd

    # the KeOps chain of backend="auto" alone, as on a machine with a GPU and without Numba
    _registry.numba_installed = lambda: False
    _registry.gpu_possible = lambda: True

    report = {}
    X = np.random.default_rng(0).normal(size=(3200, 2))
    # above the work threshold of backend="auto": KeOps would be chosen if it worked
    params = dict(n_particles=600, max_iter=200, tol=1.0, bandwidth=1.0, random_state=0)
    fits = sys.argv[1] == "fit"  # the stand-in cannot run the library's own formulas
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = resolve_backend("auto", 10**12)
        if fits:
            est = IFTSampler(**params).fit(X)
            report["auto_backend"] = est.backend_
            report["auto_loss_fell"] = bool(est.loss_curve_[-1] < est.loss_curve_[0])
    report["auto_engine"] = engine.device
    report["warnings"] = [str(w.message) for w in caught if "KeOps" in str(w.message)]
    calls = [("keops_gpu", lambda: KeOpsBackend(device="gpu").ensure_ready())]
    if fits:
        calls += [
            ("keops_fit", lambda: IFTSampler(**params, backend="keops").fit(X)),
            ("keops_metric", lambda: mmd(X, X + 1, backend="keops")),
        ]
    for name, call in calls:
        try:
            call()
            report[name] = "no error"
        except KeOpsUnavailableError as exc:
            report[name] = str(exc)
    print("REPORT " + json.dumps(report))
    """
)


def run_user_program(tmp_path, crash, gpu):
    standin = tmp_path / "standin"
    (standin / "pykeops" / "numpy").mkdir(parents=True, exist_ok=True)
    (standin / "pykeops" / "__init__.py").write_text(
        "from types import SimpleNamespace\n"
        f"config = SimpleNamespace(gpu_available={gpu})\n"
        "__version__ = 'stand-in'\n"
    )
    (standin / "pykeops" / "numpy" / "__init__.py").write_text(STANDIN)
    imports = tmp_path / "imports.txt"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(standin), os.environ.get("PYTHONPATH", "")]),
        SKGRADFLOW_CACHE_DIR=str(tmp_path / "cache"),
        STANDIN_CRASH=crash,
        STANDIN_IMPORTS=str(imports),
    )
    mode = "fit" if crash == "all" else "resolve"
    proc = subprocess.run([sys.executable, "-c", USER_PROGRAM, mode], env=env,
                          capture_output=True, text=True, timeout=600)
    # the user's program was never exposed to the crash: it ran to its end
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    probes = imports.read_text().split() if imports.exists() else []
    return json.loads(line.split(" ", 1)[1]), probes, proc


def test_a_crashing_keops_falls_back_to_numpy_or_raises(tmp_path):
    report, probes, proc = run_user_program(tmp_path, crash="all", gpu=False)
    assert report["auto_backend"] == "numpy"
    assert report["auto_engine"] == "numpy"
    assert report["auto_loss_fell"]
    # one warning, naming KeOps, the cause and the fix
    assert len(report["warnings"]) == 1, report["warnings"]
    message = report["warnings"][0]
    assert "KeOps" in message and "SIGSEGV" in message and "backend='numpy'" in message
    for name in ("keops_fit", "keops_metric"):
        assert "SIGSEGV" in report[name] and "unharmed" in report[name], report[name]
    assert "GPU" in report["keops_gpu"]
    # the probe ran in child processes, none of them the user's program
    assert probes and str(os.getpid()) not in probes
    # its answer is on disk: a second program does not probe again
    records = list((tmp_path / "cache").glob("keops-probe-*.json"))
    assert len(records) == 1
    assert json.loads(records[0].read_text())["cpu"] is False
    again, probes_after, _ = run_user_program(tmp_path, crash="all", gpu=False)
    assert probes_after == probes
    assert again["auto_backend"] == "numpy"


def test_a_gpu_only_crash_falls_back_to_keops_on_the_cpu(tmp_path):
    report, probes, _ = run_user_program(tmp_path, crash="gpu", gpu=True)
    assert report["auto_engine"] == "keops-cpu"
    assert any("GPU" in m and "SIGSEGV" in m for m in report["warnings"]), report["warnings"]
    assert "SIGSEGV" in report["keops_gpu"] and "GPU" in report["keops_gpu"]
    # the GPU stage killed the first child; a second child probed the CPU alone
    assert len(probes) == 2


def test_the_probe_record_is_keyed_by_the_environment(monkeypatch, tmp_path):
    from skgradflow.backends import _keops_probe

    base = _keops_probe.environment_key()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    assert _keops_probe.environment_key() != base
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # no stand-in there: the same install
    assert _keops_probe.environment_key() == base


@pytest.mark.parametrize("returncode, expected", [(-11, "SIGSEGV"), (-9, "SIGKILL")])
def test_signal_names(returncode, expected):
    from skgradflow.backends._keops_probe import _signal_name

    assert _signal_name(returncode) == expected


def test_without_pykeops_or_numba_auto_uses_numpy_and_says_how_to_install(monkeypatch):
    from skgradflow.backends import KeOpsUnavailableError, _keops_probe, _registry
    from skgradflow.backends import resolve_backend as resolve

    status = _keops_probe.KeOpsStatus(False, False, False, _keops_probe.NOT_INSTALLED)
    monkeypatch.setattr(_keops_probe, "_status", [status])
    monkeypatch.setattr(_registry, "_warned", set())
    monkeypatch.setattr(_registry, "numba_installed", lambda: False)
    with pytest.warns(RuntimeWarning, match="pip install pykeops") as caught:
        assert resolve("auto", 10**12).device == "numpy"
    assert "skgradflow[numba]" in str(caught[0].message)
    with pytest.raises(KeOpsUnavailableError, match="pip install pykeops"):
        resolve("keops", 10)


def test_a_slow_first_compile_says_so_once(monkeypatch, capsys):
    import time

    import numpy as np

    from skgradflow.backends import _keops, _keops_probe

    monkeypatch.setattr(_keops_probe, "NOTICE_AFTER_S", 0.2)
    monkeypatch.setattr(_keops_probe, "_noticed", set())
    monkeypatch.setattr(_keops, "_seen_formulas", set())
    slow = lambda: time.sleep(0.6) or np.zeros(1)  # noqa: E731  (a compile that takes time)
    _keops._run_keops(slow, ("a formula",))
    _keops._run_keops(slow, ("another formula",))  # a second compile: no second line
    _keops._run_keops(lambda: np.zeros(1), ("a third",))
    err = capsys.readouterr().err
    assert err.count("compiling KeOps formulas, once per machine") == 1
    monkeypatch.setattr(_keops, "_seen_formulas", set())
    monkeypatch.setattr(_keops_probe, "_noticed", set())
    _keops._run_keops(lambda: np.zeros(1), ("a fast one",))  # a cached formula: silent
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("cause, stored", [
    ("on the CPU, the process was killed by SIGSEGV", True),
    ("on the CPU, the probe hung for more than 600 s", False),
    ("on the CPU, the process was killed by SIGKILL", False),
])
def test_only_lasting_answers_are_recorded(monkeypatch, tmp_path, cause, stored):
    from skgradflow.backends import _keops_probe

    monkeypatch.setenv("SKGRADFLOW_CACHE_DIR", str(tmp_path))
    answer = _keops_probe.KeOpsStatus(False, False, False, cause)
    monkeypatch.setattr(_keops_probe, "run_probe", lambda: answer)
    monkeypatch.setattr(_keops_probe.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(_keops_probe, "environment_key", lambda: "test-key")
    assert _keops_probe._find_status() == answer
    records = list(tmp_path.glob("keops-probe-*.json"))
    assert (len(records) == 1) == stored
    assert not list(tmp_path.glob("*.tmp"))
