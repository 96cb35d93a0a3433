"""Whether PyKeOps works here, decided in a child process so that a crash cannot reach the
caller's process.

KeOps compiles its formulas at run time, and a broken toolchain can kill the process instead
of raising: on a CUDA 13 machine, the first GPU compile dies with SIGSEGV inside NVRTC (a
libstdc++ symbol clash).  So the first use of KeOps in an environment runs a tiny reduction
in a child process, first on the GPU if KeOps sees one, then on the CPU, and records the
outcome on disk, keyed by the PyKeOps install, Python, the platform, CUDA and the driver.
Later processes read the record instead of probing again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: concurrent probes are not serialised
    fcntl = None

# A cold probe compiles one formula (seconds on a CPU, ~15 s for KeOps' first GPU build);
# a child that takes longer than this is taken to hang, and KeOps to be unusable.
NOT_INSTALLED = "PyKeOps is not installed"

PROBE_TIMEOUT_S = float(os.environ.get("SKGRADFLOW_KEOPS_PROBE_TIMEOUT", "600"))



def remove_unreadable_keops_caches() -> list:
    """Remove the cache files of KeOps' build folder that cannot be read; their paths.

    KeOps keeps the parameters of its compiled formulas in pickle files (``*_cache.pkl``)
    that ``import pykeops`` reads: one left truncated or empty (a process killed while it
    wrote it, a full disk) makes every import fail until it is deleted.  KeOps writes them
    anew.  The half-imported KeOps modules are forgotten, so that the import can be retried.
    The probe's child runs this function's source too: it imports nothing of skgradflow.
    """
    import glob
    import os
    import pickle
    import sys

    try:
        import keopscore

        folder = keopscore.config.get_build_folder()
    except Exception:
        return []
    removed = []
    for path in glob.glob(os.path.join(folder, "*_cache.pkl")):
        try:
            with open(path, "rb") as fh:
                pickle.load(fh)
        except Exception:
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    if removed:
        for name in [m for m in sys.modules if m.split(".")[0] in ("pykeops", "keopscore")]:
            del sys.modules[name]
    return removed


# The child is self-contained (no import of skgradflow).  It runs isolated (python -I: no
# working directory, PYTHONPATH or user site on its path, no PYTHON* variables) with the
# parent's search path, less the working directory, passed as its second argument: a
# json.py or numpy.py where the user happens to be is never run.
_CHILD = inspect.getsource(remove_unreadable_keops_caches) + r"""
import ctypes, ctypes.util, json, os, sys
sys.path[:] = json.loads(sys.argv[2])
os.environ.setdefault("PYKEOPS_VERBOSE", "0")
os.environ.setdefault("KEOPS_VERBOSE", os.environ["PYKEOPS_VERBOSE"])
lib = ctypes.util.find_library("stdc++")
if lib:
    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)

def say(**record):
    sys.__stdout__.write("SKGRADFLOW-PROBE " + json.dumps(record) + "\n")
    sys.__stdout__.flush()

def load():
    import numpy as np
    import pykeops
    from pykeops.numpy import LazyTensor
    config = getattr(pykeops, "config", None)
    return np, LazyTensor, bool(getattr(config, "gpu_available", False))

repaired = []
try:
    try:
        np, LazyTensor, gpu = load()
    except Exception:
        repaired = remove_unreadable_keops_caches()
        if not repaired:
            raise
        np, LazyTensor, gpu = load()
except BaseException as exc:
    say(stage="import", ok=False, cause=f"{type(exc).__name__}: {exc}")
    sys.exit(1)
say(stage="import", ok=True, gpu_available=gpu, repaired=repaired)

x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
expected = np.exp(-0.5 * ((x[:, None] - x[None]) ** 2).sum(-1)).sum(1)
devices = [d for d in sys.argv[1].split(",") if d != "GPU" or gpu]
for device in devices:
    try:
        xi, xj = LazyTensor(x[:, None, :]), LazyTensor(x[None, :, :])
        out = (-0.5 * ((xi - xj) ** 2).sum(-1)).exp().sum(1, backend=device)[:, 0]
        ok = bool(np.allclose(out, expected, rtol=1e-10))
        say(stage=device, ok=ok, cause=None if ok else f"wrong result {out} != {expected}")
    except BaseException as exc:
        say(stage=device, ok=False, cause=f"{type(exc).__name__}: {exc}")
"""


@dataclass(frozen=True)
class KeOpsStatus:
    """The outcome of the probe.

    Attributes
    ----------
    cpu : bool
        KeOps compiles and runs a reduction on the CPU.
    gpu : bool
        It does on a GPU.
    gpu_seen : bool
        KeOps reported a usable CUDA install (``pykeops.config.gpu_available``).
    cause : str
        Why the GPU (when ``gpu_seen``) or the CPU failed: the signal or the error; empty
        when nothing failed.
    """

    cpu: bool
    gpu: bool
    gpu_seen: bool
    cause: str = ""

    @property
    def usable(self) -> bool:
        return self.cpu or self.gpu


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _run_child(devices: str) -> tuple[dict[str, dict], str]:
    """Run the probe for the comma-separated ``devices``; its records by stage, and what
    ended the child if it did not end normally."""
    env = dict(os.environ)
    env.setdefault("PYKEOPS_VERBOSE", "0")
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, devices, json.dumps(_child_path())],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return _records(out), f"the probe hung for more than {PROBE_TIMEOUT_S:.0f} s"
    records = _records(proc.stdout)
    if proc.returncode < 0:
        return records, f"the process was killed by {_signal_name(proc.returncode)}"
    if proc.returncode != 0 and not records:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no message"]
        return records, f"the process exited with status {proc.returncode}: {tail[0]}"
    return records, ""


def _child_path() -> list[str]:
    """Where the child looks for modules: this process's path (where PyKeOps was found),
    made absolute, without the working directory."""
    here = os.getcwd()
    path = []
    for entry in sys.path:
        if not entry or not isinstance(entry, str):
            continue
        entry = os.path.abspath(entry)
        if entry != here and entry not in path:
            path.append(entry)
    return path


def _records(stdout: str) -> dict[str, dict]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("SKGRADFLOW-PROBE "):
            record = json.loads(line.split(" ", 1)[1])
            out[record["stage"]] = record
    return out


def _stage_result(records: dict, stage: str, ended: str) -> tuple[bool, str]:
    record = records.get(stage)
    if record is None:
        return False, ended or "the probe stopped before this stage"
    return bool(record["ok"]), record.get("cause") or ""


def run_probe() -> KeOpsStatus:
    """Probe KeOps in child processes (no cache): GPU first when KeOps sees one, then CPU.

    A GPU failure that kills the child is followed by a second child for the CPU alone.
    """
    records, ended = _run_child("GPU,CPU")
    imported, cause = _stage_result(records, "import", ended)
    repaired = records.get("import", {}).get("repaired") or []
    if repaired:
        warn_repaired(repaired)
    if not imported:
        return KeOpsStatus(cpu=False, gpu=False, gpu_seen=False, cause=cause)
    gpu_seen = bool(records["import"].get("gpu_available"))
    gpu, gpu_cause = _stage_result(records, "GPU", ended) if gpu_seen else (False, "")
    if "CPU" not in records:  # the GPU stage took the child down: the CPU gets its own
        records, ended = _run_child("CPU")
    cpu, cpu_cause = _stage_result(records, "CPU", ended)
    causes = [f"on the GPU, {gpu_cause}" if gpu_seen and not gpu else "",
              f"on the CPU, {cpu_cause}" if not cpu else ""]
    return KeOpsStatus(cpu=cpu, gpu=gpu, gpu_seen=gpu_seen, cause="; ".join(c for c in causes if c))


# --- the record on disk ------------------------------------------------------------------
def cache_dir() -> str:
    """Where the probe's record lives: ``$SKGRADFLOW_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/skgradflow``, else ``~/.cache/skgradflow``."""
    if os.environ.get("SKGRADFLOW_CACHE_DIR"):
        return os.environ["SKGRADFLOW_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "skgradflow")


def _read_first_line(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def environment_key() -> str:
    """A hash of what decides whether KeOps works: the PyKeOps install (where and which
    version), Python, the platform, the CUDA toolkit and the driver."""
    spec = importlib.util.find_spec("pykeops")
    try:
        version = importlib.metadata.version("pykeops")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    cuda_home = os.environ.get("CUDA_PATH") or os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    parts = {
        "pykeops": [version, spec.origin if spec else None],
        "python": [sys.executable, platform.python_version()],
        "platform": platform.platform(),
        "cuda": [cuda_home, _read_first_line(os.path.join(cuda_home, "version.json"))
                 or _read_first_line(os.path.join(cuda_home, "version.txt"))],
        "driver": _read_first_line("/proc/driver/nvidia/version"),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cxx": os.environ.get("CXX"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _record_path() -> str:
    return os.path.join(cache_dir(), f"keops-probe-{environment_key()}.json")


def warn_repaired(removed: list[str]) -> None:
    """One warning: unreadable cache files of KeOps' build folder were removed."""
    folder = os.path.dirname(removed[0])
    names = ", ".join(os.path.basename(path) for path in removed)
    warnings.warn(
        f"The KeOps build folder {folder} held unreadable cache files ({names}), which made "
        "PyKeOps fail to import; they were removed, and KeOps compiles what they described "
        "again.",
        RuntimeWarning,
        stacklevel=5,
    )


# what a probe record holds, and the type of each field
_RECORD_FIELDS = {"cpu": bool, "gpu": bool, "gpu_seen": bool, "cause": str}


def _load(path: str) -> tuple[KeOpsStatus | None, str]:
    """The record at ``path``, or None and why it cannot be used ("" when there is none).

    The record is checked field by field: a file that another program, an older version or
    a damaged disk wrote (``{"cpu": "no"}``) must not decide whether KeOps runs.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    try:
        record = json.loads(text)
    except ValueError:
        return None, "is not valid JSON"
    if not isinstance(record, dict) or set(record) != set(_RECORD_FIELDS):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        return None, f"has the fields {keys}, not {sorted(_RECORD_FIELDS)}"
    for name, kind in _RECORD_FIELDS.items():
        if type(record[name]) is not kind:
            return None, (f"has {name}={record[name]!r}, not a {kind.__name__}")
    return KeOpsStatus(**record), ""


def _discard_bad_record(path: str, problem: str) -> None:
    warnings.warn(
        f"The KeOps probe record {path} {problem}; it was discarded and KeOps is checked "
        "again.",
        RuntimeWarning,
        stacklevel=5,
    )
    with contextlib.suppress(OSError):
        os.remove(path)


def _store(path: str, status: KeOpsStatus) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    except OSError:  # a read-only home: the answer is kept for this process only
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(status), fh)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


@contextlib.contextmanager
def _probe_lock(path: str):
    """Processes that start at once (GridSearchCV workers) probe one at a time."""
    if fcntl is None:
        yield
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fh = open(path + ".lock", "a")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# A first KeOps compile (or the probe) that takes longer than this says so on stderr, once
# per process and whatever the estimator's verbosity: a silent minute looks like a hang.
NOTICE_AFTER_S = 2.0
_noticed: set[str] = set()
_notice_lock = threading.Lock()


def _say_once(kind: str, message: str) -> None:
    with _notice_lock:
        if kind in _noticed:
            return
        _noticed.add(kind)
    print(f"skgradflow: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def notice_if_slow(kind: str, message: str):
    """Print ``message`` once per process and ``kind`` if the block is still running after
    ``NOTICE_AFTER_S`` seconds."""
    if kind in _noticed:
        yield
        return
    timer = threading.Timer(NOTICE_AFTER_S, _say_once, args=(kind, message))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


_status: list[KeOpsStatus] = []  # this process's answer, once known
_status_lock = threading.Lock()


def keops_status() -> KeOpsStatus:
    """The probe's outcome for this environment: from memory, from disk, or probed now
    (once per process at most).

    Examples
    --------
    >>> from skgradflow.backends import keops_status
    >>> status = keops_status()
    >>> status.usable == (status.cpu or status.gpu)
    True
    """
    with _status_lock:
        if not _status:
            _status.append(_find_status())
        return _status[0]


def _find_status() -> KeOpsStatus:
    if importlib.util.find_spec("pykeops") is None:
        return KeOpsStatus(False, False, False, NOT_INSTALLED)
    path = _record_path()
    status, _ = _load(path)
    if status is None:
        with _probe_lock(path):
            status, problem = _load(path)  # another process may have probed meanwhile
            if problem:
                _discard_bad_record(path, problem)
            if status is None:
                with notice_if_slow("probe", "checking that KeOps compiles and runs here "
                                    "(once per environment, in a child process)..."):
                    status = run_probe()
                # a hang or a kill from outside (memory, a user) may not happen again: such
                # an answer holds for this process only
                if not any(word in status.cause for word in ("hung", "SIGKILL", "SIGTERM")):
                    _store(path, status)
    return status


def preload_libstdcxx() -> None:
    """Load libstdc++ with global symbols, before PyKeOps is imported: KeOps' NVRTC
    binding otherwise resolves ``std::codecvt`` against a clashing copy and crashes at
    its first GPU compile.  Harmless where it is not needed."""
    name = ctypes.util.find_library("stdc++")
    if name:
        with contextlib.suppress(OSError):
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
