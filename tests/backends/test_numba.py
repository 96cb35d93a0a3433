"""The Numba backend's own parts: its exponential, its blocks, threads, the disk cache and a
missing or broken Numba.  Its reductions are checked against the dense formulas with every
other backend in ``tests/backends/test_protocol.py``, and its fits in the estimators' tests."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow
from skgradflow.backends import NumbaBackend, NumbaUnavailableError, NumpyBackend
from skgradflow.kernels import KERNELS, Kernel
from tests.helpers import needs_numba

pytestmark = needs_numba


@pytest.mark.parametrize(
    "dtype, low, high", [(np.float64, -708.0, 709.0), (np.float32, -87.0, 88.0)]
)
def test_the_polynomial_exponential_is_within_an_ulp(dtype, low, high):
    from skgradflow.backends._numba_kernels import exp_array

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(low, high, 200_000), rng.uniform(-1, 1, 100_000),
                        [0.0, -0.0, 1.0, -1.0, np.log(2.0)]]).astype(dtype)
    # the exact value, to well below an ulp: in a wider type
    wide = np.longdouble if dtype == np.float64 else np.float64
    if np.finfo(wide).eps > np.finfo(dtype).eps / 100:
        pytest.skip("long double is no wider than double here")
    exact = np.exp(x.astype(wide))
    got = exp_array(x)
    error = np.abs(got.astype(wide) - exact) / np.spacing(np.abs(got)).astype(wide)
    assert float(np.max(error)) <= 1.05
    assert exp_array(np.zeros(1, dtype))[0] == 1.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_exponential_underflows_to_exactly_zero_and_gradually(dtype):
    from skgradflow.backends._numba_kernels import exp_array

    tiny, floor = (-740.0, -800.0) if dtype == np.float64 else (-100.0, -120.0)
    x = np.array([-np.inf, floor, tiny], dtype=dtype)
    out = exp_array(x)
    assert out[0] == 0.0 and out[1] == 0.0
    # a subnormal result, within two steps of the subnormal grid of the true value
    assert 0 < out[2] < np.finfo(dtype).tiny
    step = np.finfo(dtype).smallest_subnormal
    assert abs(float(out[2]) - np.exp(np.float64(tiny))) <= 2 * float(step)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocks_of_every_length_give_the_dense_result(name, dtype):
    # more sources than one block, and a last block shorter than the others
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(37, 4)).astype(dtype)
    S = np.concatenate([Z[:5], rng.normal(size=(600, 4))]).astype(dtype)
    V = rng.normal(size=(605, 2)).astype(dtype)
    a = rng.normal(size=605).astype(dtype)
    kern = Kernel(name, 0.8)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for sources in (S, S[:1], S[:256], S[:257]):
        m = sources.shape[0]
        for channels in (1, 2):  # one channel takes the fused Gaussian pass
            got = NumbaBackend().value_grad(kern, Z, sources, V[:m, :channels], a[:m])
            want = NumpyBackend().value_grad(kern, Z, sources, V[:m, :channels], a[:m])
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("dims", [8, 17, 40])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocked_distances_in_many_dims_give_the_dense_result(dims, dtype, monkeypatch):
    # From BLOCKED_MIN_DIMS coordinates (in large calls; here in every call) the distances
    # come from matrix products: checked
    # against the NumPy backend's differences on data far from the origin (the product
    # cancels there unless centred), with points repeated among the sources (r = 0 exactly,
    # where the cusp kernels' gradient factor is 0, not 1/r of a rounding error), tiles of
    # rows cut short and blocks of every length, on one thread and on two.
    from skgradflow.backends import _numba

    assert dims >= _numba.BLOCKED_MIN_DIMS
    monkeypatch.setattr(_numba, "BLOCKED_MIN_PAIRS", 0)  # small calls too
    rng = np.random.default_rng(4)
    # far enough that |z|² + |s|² - 2 z·s about the origin would miss the tolerance (float32:
    # less far, where the float32 oracle's own moments still meet it)
    offset = 1000.0 if dtype == np.float64 else 20.0
    Z = (offset + rng.normal(size=(45, dims))).astype(dtype)
    S = np.concatenate([Z[:7], offset + rng.normal(size=(600, dims))]).astype(dtype)
    V = rng.normal(size=(607, 2)).astype(dtype)
    a = rng.normal(size=607).astype(dtype)
    logv = rng.normal(size=607).astype(dtype)
    tol = 1e-10 if dtype == np.float64 else 1e-4

    def close(got, want):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == dtype
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * np.abs(w).max())

    for threads in (1, 2):
        fast, dense = NumbaBackend(n_threads=threads), NumpyBackend()
        for sources in (S, S[:1], S[:256], S[:257]):
            m = sources.shape[0]
            for name in KERNELS:
                kern = Kernel(name, 0.5 * np.sqrt(dims))
                for channels in (1, 2):
                    close(fast.value_grad(kern, Z, sources, V[:m, :channels], a[:m]),
                          dense.value_grad(kern, Z, sources, V[:m, :channels], a[:m]))
                close([fast.matvec(kern, Z, sources, V[:m])],
                      [dense.matvec(kern, Z, sources, V[:m])])
            kern = Kernel("gaussian", 0.5 * np.sqrt(dims))
            close([fast.logsumexp(kern, Z, sources, logv[:m])],
                  [dense.logsumexp(kern, Z, sources, logv[:m])])
            close(fast.softmax_moments(kern, Z, sources, logv[:m]),
                  dense.softmax_moments(kern, Z, sources, logv[:m]))


def test_one_thread_gives_the_result_of_all_threads_and_bad_counts_are_refused(rng):
    Z = rng.normal(size=(50, 2))
    S = rng.normal(size=(300, 2))
    kern = Kernel("gaussian", 0.5)
    one = NumbaBackend(n_threads=1).matvec(kern, Z, S, np.ones((300, 1)))
    every = NumbaBackend().matvec(kern, Z, S, np.ones((300, 1)))
    np.testing.assert_allclose(one, every, rtol=1e-13)
    assert repr(NumbaBackend(n_threads=1)) == "NumbaBackend(n_threads=1)"
    for bad in (0, -2, 1.5, True, "4"):
        with pytest.raises(ValueError, match="n_threads must be a positive int"):
            NumbaBackend(n_threads=bad)


@pytest.mark.parametrize("cls", [IFTSampler, WFRMMDFlow, InclusiveKLFitter])
def test_fits_match_the_numpy_backend(cls, rng):
    X = rng.normal(size=(300, 2))
    key = "n_components" if cls is InclusiveKLFitter else "n_particles"
    params = {key: 40, "max_iter": 15, "tol": 0, "bandwidth": 0.7, "random_state": 0}
    fast = cls(**params, backend="numba").fit(X)
    slow = cls(**params, backend="numpy").fit(X)
    attr = "means_" if cls is InclusiveKLFitter else "particles_"
    assert fast.backend_ == "numba-cpu"
    np.testing.assert_allclose(getattr(fast, attr), getattr(slow, attr), atol=1e-9)
    np.testing.assert_allclose(fast.weights_, slow.weights_, atol=1e-10)
    np.testing.assert_allclose(fast.loss_curve_, slow.loss_curve_, rtol=1e-9, atol=1e-12)


def run(program: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )


def test_threads_calling_at_once_never_abort_the_process():
    # Numba's default threading layer aborts a process whose threads enter a parallel
    # loop at once; the backend must serialise them (in a child: an abort would end pytest)
    proc = run(
        """
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np
        from skgradflow.backends import NumbaBackend, NumpyBackend
        from skgradflow.kernels import Kernel
        rng = np.random.default_rng(0)
        Z, S = rng.normal(size=(400, 2)), rng.normal(size=(3000, 2))
        k = Kernel("gaussian", 0.5)
        want = NumpyBackend().matvec(k, Z, S, np.ones((3000, 1)))
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: NumbaBackend().matvec(k, Z, S, np.ones((3000, 1))),
                                 range(16)))
        assert all(np.allclose(o, want, rtol=1e-12) for o in outs)
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_compiled_loops_are_cached_on_disk(tmp_path):
    program = """
        import numpy as np
        from skgradflow.backends import NumbaBackend
        from skgradflow.backends import _numba_kernels as nk
        from skgradflow.kernels import Kernel
        x = np.zeros((3, 2))
        NumbaBackend().matvec(Kernel("gaussian", 1.0), x, x, np.ones((3, 1)))
        stats = nk.matvec_rows.stats
        print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
    """
    first = run(program, NUMBA_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.split() == ["0", "1"]  # compiled, and written to the cache
    assert any(tmp_path.rglob("*.nbi"))
    second = run(program, NUMBA_CACHE_DIR=str(tmp_path))
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split() == ["1", "0"]  # loaded, not compiled


def test_a_broken_numba_gets_a_clear_error_and_auto_does_without_it(tmp_path):
    standin = tmp_path / "numba"
    standin.mkdir()
    (standin / "__init__.py").write_text(
        'raise ImportError("Numba needs NumPy 2.3 or less (a stand-in)")\n'
    )
    proc = run(
        """
        import warnings
        from skgradflow.backends import NumbaUnavailableError, numba_installed, resolve_backend
        assert not numba_installed()
        try:
            resolve_backend("numba", 10)
        except NumbaUnavailableError as exc:
            print(exc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # KeOps' own fallback may warn here
            print("auto:", resolve_backend("auto", 10**12).device)
        """,
        PYTHONPATH=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend='numba' needs Numba" in proc.stdout
    assert "NumPy 2.3 or less" in proc.stdout  # the cause
    assert 'skgradflow[numba]' in proc.stdout  # the fix
    assert "auto: keops" in proc.stdout or "auto: numpy" in proc.stdout


def test_the_unavailable_error_is_an_import_error():
    assert issubclass(NumbaUnavailableError, ImportError)


def test_a_parked_helper_thread_never_holds_up_the_caller():
    # a helper that claims a chunk and is then not run (blocked here on an event) must not
    # delay the result: the caller computes that chunk again, and the helper's late result
    # is dropped; the caller's outputs are complete and right.  The drivers here are Python
    # stand-ins of the compiled ones, with the same protocol.
    import threading

    from skgradflow.backends import _numba

    release = threading.Event()
    helper_started = threading.Event()

    def square_rows(x, out, i0, i1):
        out[i0:i1] = x[i0:i1] ** 2

    def square_chunks(x, out, bounds, state, owner, me, max_claims):
        claims = 0
        while claims < max_claims:
            chunk = int(state[0])
            state[0] += 1
            if chunk >= bounds.size - 1:
                break
            if me > 0:  # a helper: parked in its first chunk
                helper_started.set()
                release.wait(120)
            square_rows(x, out, bounds[chunk], bounds[chunk + 1])
            if owner[chunk] == -1:
                owner[chunk] = me
            claims += 1
        return claims

    x = np.arange(40.0)
    out = np.full(40, np.nan)
    done = threading.Event()

    def caller():
        _numba._run_rows(square_chunks, square_rows, (x,), (out,), n_sources=1 << 15,
                         n_threads=2)
        done.set()

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        assert done.wait(60), "the caller waited for a parked helper"
        np.testing.assert_array_equal(out, x**2)
    finally:
        release.set()
        thread.join(60)
    np.testing.assert_array_equal(out, x**2)  # the late result changed nothing


def test_thread_limits_of_the_environment_are_respected(monkeypatch):
    from skgradflow.backends import _numba, default_threads

    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(_numba, "_idle_cpus", lambda: 64)  # a quiet machine
    assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(_numba, "_idle_cpus", lambda: 0)  # every CPU busy: the caller alone
    assert default_threads() == 1
    monkeypatch.setattr(_numba, "_idle_cpus", lambda: 64)
    monkeypatch.setenv("OMP_NUM_THREADS", "1,1")  # a nested OpenMP list: its first entry
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "bogus")
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert default_threads() == 1
    assert NumbaBackend().threads() == 1 and NumbaBackend(n_threads=3).threads() == 3


def test_the_free_cpus_leave_out_this_processs_own_threads(monkeypatch):
    from skgradflow.backends import _numba

    monkeypatch.setattr(_numba, "_IDLE_CPUS_TTL", 0.0)
    monkeypatch.setattr(_numba.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(_numba, "_runnable_tasks", lambda: 5)
    monkeypatch.setattr(_numba, "_own_runnable_threads", lambda: 3)
    assert _numba._idle_cpus() == 2  # 2 tasks of other processes on 4 CPUs
    monkeypatch.setattr(_numba, "_own_runnable_threads", lambda: 6)  # ours stopped between
    assert _numba._idle_cpus() == 4
    monkeypatch.setattr(_numba, "_runnable_tasks", lambda: 9)
    monkeypatch.setattr(_numba, "_own_runnable_threads", lambda: 1)
    assert _numba._idle_cpus() == -4  # oversubscribed: default_threads() makes it 1
    monkeypatch.undo()
    if os.path.exists("/proc/self/task"):
        assert 1 <= _numba._own_runnable_threads() <= len(os.listdir("/proc/self/task"))


def test_joblib_workers_run_the_reductions_on_their_share_of_the_cores():
    # joblib (scikit-learn's n_jobs) limits each worker's threads through the environment;
    # a worker then starts no helper thread of its own
    proc = run(
        """
        import threading
        import numpy as np
        from joblib import Parallel, delayed

        def fit_in_worker(seed):
            import os
            from skgradflow.backends import NumbaBackend, NumpyBackend, default_threads
            from skgradflow.kernels import Kernel
            rng = np.random.default_rng(seed)
            Z, S = rng.normal(size=(300, 2)), rng.normal(size=(3000, 2))
            k = Kernel("gaussian", 0.5)
            got = NumbaBackend().matvec(k, Z, S, np.ones((3000, 1)))
            want = NumpyBackend().matvec(k, Z, S, np.ones((3000, 1)))
            helpers = [t for t in threading.enumerate() if t.name.startswith("skgradflow-numba")]
            return default_threads(), len(helpers), bool(np.allclose(got, want, rtol=1e-12))

        print(Parallel(n_jobs=2)(delayed(fit_in_worker)(s) for s in range(2)))
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for threads, helpers, right in eval(proc.stdout.strip()):
        assert 1 <= threads <= share and helpers <= share - 1 and right


def test_busy_sibling_processes_do_not_make_all_threads_slower_than_one():
    # two processes spinning on the cores beside a run: the default threads must not fall
    # behind one thread (the static split of Numba's threading layer did, by 10x and more),
    # and may only use the CPUs the spinners leave (on 2 cores: the calling thread alone, the
    # very reductions of a run pinned to one thread).
    # Timed in one child against one thread in the same child, calls alternating, with a
    # generous 2x margin on the total time (single calls are either fast or lose a whole
    # time slice to the busy processes, so a median would only say which happened more often).
    proc = run(
        """
        import os, subprocess, sys, time
        import numpy as np
        from skgradflow.backends import NumbaBackend, NumpyBackend
        from skgradflow.kernels import Kernel

        rng = np.random.default_rng(0)
        Z, S = rng.normal(size=(500, 2)), rng.normal(size=(2257, 2))
        V = np.full((2257, 1), 1 / 2257)
        k = Kernel("gaussian", 1.0)
        every, one = NumbaBackend(), NumbaBackend(n_threads=1)
        want = NumpyBackend().value_grad(k, Z, S, V, V[:, 0])
        every.value_grad(k, Z, S, V, V[:, 0])  # compiled or loaded before any timing
        spin = "import time\\nend = time.time() + 120\\nwhile time.time() < end: pass"
        busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
        try:
            time.sleep(0.5)
            times, threads = {"every": [], "one": []}, []
            for _ in range(60):
                threads.append(every.threads())
                for name, engine in (("every", every), ("one", one)):
                    t0 = time.perf_counter()
                    got = engine.value_grad(k, Z, S, V, V[:, 0])
                    times[name].append(time.perf_counter() - t0)
                    for g, w in zip(got, want):
                        assert np.allclose(g, w, rtol=1e-10, atol=1e-14)
        finally:
            for p in busy:
                p.kill()
        free = max(1, len(os.sched_getaffinity(0)) - 2)
        print(np.sum(times["every"]) / np.sum(times["one"]), np.mean(np.array(threads) <= free))
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ratio, within_free = map(float, proc.stdout.split())
    assert ratio <= 2.0
    assert within_free >= 0.9  # (another job on the machine can only lower the count)


_ONE_REDUCTION = """
    import warnings
    import numpy as np
    from skgradflow.backends import NumbaBackend, NumpyBackend
    from skgradflow.kernels import Kernel
    warnings.simplefilter("always")
    x = np.random.default_rng(0).normal(size=(50, 2))
    k = Kernel("gaussian", 1.0)
    got = NumbaBackend().matvec(k, x, x, np.ones((50, 1)))
    assert np.allclose(got, NumpyBackend().matvec(k, x, x, np.ones((50, 1))), rtol=1e-12)
    print("ok")
"""


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "RuntimeWarning" in line]


def test_nowhere_to_write_the_cache_compiles_in_memory_with_one_warning(tmp_path):
    # Numba's own locators only (no folder next to the package), pointed at a folder that
    # cannot be made: a regular file stands where its parent should be
    (tmp_path / "file").write_text("")
    proc = run(_ONE_REDUCTION, NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator",
               NUMBA_CACHE_DIR=str(tmp_path / "file" / "cache"))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    (warning,) = _warnings(proc.stderr)
    assert "compiled in memory" in warning and "NUMBA_CACHE_DIR" in warning


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
@pytest.mark.parametrize("which", ["nbi", "nbc"])
def test_a_damaged_cache_is_discarded_and_rebuilt_with_one_warning(tmp_path, damage, which):
    first = run(_ONE_REDUCTION, NUMBA_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0 and not _warnings(first.stderr), first.stderr[-2000:]
    files = sorted(tmp_path.rglob(f"*.{which}"))
    assert files
    for path in files:
        data = path.read_bytes()
        path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                          "garbage": b"not a pickle" * 10}[damage])
    second = run(_ONE_REDUCTION, NUMBA_CACHE_DIR=str(tmp_path))
    assert second.returncode == 0 and second.stdout.strip() == "ok", second.stderr[-2000:]
    (warning,) = _warnings(second.stderr)
    assert "could not be read" in warning and str(tmp_path) in warning
    third = run(_ONE_REDUCTION, NUMBA_CACHE_DIR=str(tmp_path))  # rebuilt: loads cleanly
    assert third.returncode == 0 and not _warnings(third.stderr), third.stderr[-2000:]


@pytest.mark.parametrize("threads", [1, 2])
def test_ctrl_c_inside_a_long_reduction_raises_keyboard_interrupt(threads):
    program = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from skgradflow.backends import NumbaBackend
        from skgradflow.kernels import Kernel
        rng = np.random.default_rng(0)
        Z, S = rng.normal(size=(200_000, 2)), rng.normal(size=(200_000, 2))
        engine = NumbaBackend(n_threads={threads})
        engine.matvec(Kernel("gaussian", 1.0), Z[:10], S[:10], np.ones((10, 1)))  # compiled
        print("ready", flush=True)
        try:
            engine.matvec(Kernel("gaussian", 1.0), Z, S, np.ones((200_000, 1)))  # about a minute
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "interrupted", err[-2000:]
    assert "SystemError" not in err
