"""The backend protocol: every registered backend against dense formulas written here (the
oracle), gradients against finite differences, the targets bound once per run, the registry
and ``backend=`` as an instance.  The KeOps crash guard is in ``test_keops_guard.py``."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow
from skgradflow.backends import (
    Backend,
    HostTargets,
    KeOpsBackend,
    NumpyBackend,
    backend_names,
    check_backend,
    gpu_possible,
    register_backend,
    resolve_backend,
)
from skgradflow.backends import _numpy as numpy_module
from skgradflow.kernels import KERNELS, Kernel
from skgradflow.metrics import mmd
from tests.helpers import BACKENDS, needs_keops, needs_numba
from tests.oracles import dense_kernel

H = 0.8


def make_inputs(rng, d, dtype, n=40, m=60):
    Z = rng.normal(size=(n, d))
    # some sources coincide with points: the cusp kernels must give gradient 0 there
    S = np.concatenate([Z[:7], rng.normal(size=(m - 7, d))])
    V = rng.normal(size=(m, 3))
    a = rng.normal(size=m)
    return Z.astype(dtype), S.astype(dtype), V.astype(dtype), a.astype(dtype)


def close(actual, expected, dtype):
    tol = 1e-10 if dtype == np.float64 else 1e-4
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


@pytest.fixture(params=BACKENDS)
def engine(request):
    """One engine per registered backend name: the same oracle checks run on each."""
    return resolve_backend(request.param, n_pairs=10**12)


DTYPES = [np.float64, np.float32]


def _blocked_loops_at_nine_dims(d, monkeypatch):
    """At d = 9, the Numba backend's blocked loops, which it uses from 8 coordinates in calls
    of 10⁵ kernel entries and more, also in these small calls."""
    if d == 9:
        from skgradflow.backends import _numba

        monkeypatch.setattr(_numba, "BLOCKED_MIN_PAIRS", 0)


def _skip_costly(engine, dtype, d):
    if engine.name == "keops" and dtype == np.float32 and d == 1:
        pytest.skip("float32 is covered in d = 3 (one KeOps compile less per kernel)")
    if engine.name in ("keops", "dask") and d == 9:
        pytest.skip("d = 9 is for the Numba backend's blocked loops (KeOps: one compile more)")


# --- the four reductions over explicit sources ------------------------------------------
@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("d", [1, 3, 9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matvec_and_value_grad_match_dense_formulas(engine, name, d, dtype, rng, monkeypatch):
    _skip_costly(engine, dtype, d)
    _blocked_loops_at_nine_dims(d, monkeypatch)
    Z, S, V, a = make_inputs(rng, d, dtype)
    K, G = dense_kernel(name, Z.astype(float), S.astype(float), H)
    kern = Kernel(name, H)
    h_used = kern.scale  # the energy kernel has no bandwidth
    if name == "energy":
        K, G = dense_kernel(name, Z.astype(float), S.astype(float), h_used)
    val, grad = engine.value_grad(kern, Z, S, V[:, :2], a)
    assert val.dtype == grad.dtype == dtype
    close(val, K @ V[:, :2].astype(float), dtype)
    close(grad, np.einsum("ijd,j->id", G, a.astype(float)), dtype)
    mv = engine.matvec(kern, Z, S, V)
    assert mv.dtype == dtype
    close(mv, K @ V.astype(float), dtype)
    # one channel, fewer than a padded width, comes back unpadded
    assert engine.matvec(kern, Z, S, V[:, :1]).shape == (Z.shape[0], 1)


@pytest.mark.parametrize("d", [1, 3, 9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_domain_reductions_match_dense_formulas(engine, d, dtype, rng, monkeypatch):
    _skip_costly(engine, dtype, d)
    _blocked_loops_at_nine_dims(d, monkeypatch)
    Z, S, _, _ = make_inputs(rng, d, dtype)
    logv = rng.normal(size=S.shape[0]).astype(dtype)
    r2 = ((Z[:, None, :].astype(float) - S[None, :, :]) ** 2).sum(-1) / H**2
    kern = Kernel("gaussian", H)
    expected = logsumexp(logv[None, :] - 0.5 * r2, axis=1)
    out = engine.logsumexp(kern, Z, S, logv)
    assert out.dtype == dtype
    close(out, expected, dtype)
    c = logv.copy()
    c[:5] = -np.inf  # zero weights contribute exactly nothing
    E = np.exp(c[None, :].astype(float) - 0.5 * r2)
    mass, first = engine.softmax_moments(kern, Z, S, c)
    close(mass, E.sum(1), dtype)
    close(first, E @ S.astype(float) - Z * E.sum(1)[:, None], dtype)


def test_log_domain_reductions_need_the_gaussian_kernel(engine):
    x = np.zeros((2, 2))
    with pytest.raises(ValueError, match="kernel='gaussian'"):
        engine.logsumexp(Kernel("imq", 1.0), x, x, np.zeros(2))


@pytest.mark.parametrize("name", KERNELS)
def test_gradient_matches_finite_differences(engine, name, rng):
    Z = rng.normal(size=(10, 3))
    S = rng.normal(size=(30, 3))  # no coincident points: the kernels are smooth away from 0
    a = rng.normal(size=30)
    kern = Kernel(name, H)
    _, grad = engine.value_grad(kern, Z, S, a[:, None], a)
    eps = 1e-6
    fd = np.zeros_like(Z)
    for k in range(3):
        step = np.zeros(3)
        step[k] = eps
        plus = engine.matvec(kern, Z + step, S, a[:, None])[:, 0]
        minus = engine.matvec(kern, Z - step, S, a[:, None])[:, 0]
        fd[:, k] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["laplacian", "energy"])
def test_cusp_kernels_have_zero_gradient_at_the_source(engine, name):
    Z = np.array([[0.3, -0.2]])
    _, grad = engine.value_grad(Kernel(name, H), Z, Z, np.ones((1, 1)), np.ones(1))
    assert np.all(grad == 0.0)


# --- targets bound once -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bound_targets_match_dense_formulas(engine, dtype, rng):
    Y = rng.normal(size=(70, 3)).astype(dtype)
    b = rng.uniform(size=70)
    b[:6] = 0.0  # zero weights are legal
    b /= b.sum()
    X = rng.normal(size=(15, 3)).astype(dtype)
    logw = np.log(rng.dirichlet(np.ones(15))).astype(dtype)
    bound = engine.bind(Y, b)
    assert (bound.n_samples, bound.n_features, bound.dtype) == (70, 3, dtype)
    for name in KERNELS:
        K, G = dense_kernel(name, X.astype(float), Y.astype(float), Kernel(name, H).scale)
        c, grad_c = bound.kernel_mean(Kernel(name, H), X)
        assert c.dtype == np.float64 and grad_c.dtype == dtype
        close(c, K @ b, dtype)
        close(grad_c, np.einsum("ijd,j->id", G, b), dtype)
        Kyy, _ = dense_kernel(name, Y.astype(float), Y.astype(float), Kernel(name, H).scale)
        close(bound.energy(Kernel(name, H)), 0.5 * b @ Kyy @ b, dtype)
    # the inclusive-KL reductions, in the log domain
    kern = Kernel("gaussian", H)
    r2 = ((Y[:, None, :].astype(float) - X[None, :, :]) ** 2).sum(-1) / H**2  # (M, N)
    L_dense = logsumexp(logw[None, :] - 0.5 * r2, axis=1)
    L = bound.log_mixture(kern, X, logw)
    # in the targets' own form: an array, or per-chunk futures (the Dask engine)
    values = np.concatenate([f.result() for f in L]) if isinstance(L, list) else np.asarray(L)
    close(values, L_dense, dtype)
    mean, magnitude = bound.average(L, 1.5)
    close(mean, b @ (L_dense - 1.5), dtype)
    close(magnitude, b @ np.abs(L_dense - 1.5), dtype)
    E = b[:, None] * np.exp(-0.5 * r2 - L_dense[:, None])  # (M, N)
    R, pull = bound.responsibility_moments(kern, X, L)
    close(R, E.sum(0), dtype)
    close(pull, E.T @ Y.astype(float) - X * E.sum(0)[:, None], dtype)


def test_minibatches_are_drawn_from_the_bound_targets_by_weight():
    Y = np.arange(20.0)[:, None]
    b = np.zeros(20)
    b[[3, 11]] = [0.25, 0.75]
    bound = NumpyBackend().bind(Y, b)
    batch = bound.minibatch(4000, np.random.default_rng(0))
    assert isinstance(batch, HostTargets) and batch.n_samples == 4000
    np.testing.assert_allclose(batch.b, 1 / 4000)
    rows = batch.Y[:, 0]
    assert set(np.unique(rows)) == {3.0, 11.0}
    assert abs(np.mean(rows == 11.0) - 0.75) < 0.03
    assert set(np.unique(bound.draw(100, np.random.default_rng(1))[:, 0])) <= {3.0, 11.0}


class RecordingBackend(NumpyBackend):
    """NumPy, recording what every call receives."""

    name = "recording"

    def __init__(self):
        self.log = []

    def bind(self, Y, b):
        self.log.append(("bind", Y.shape[0]))
        return super().bind(Y, b)

    def matvec(self, kernel, Z, S, V):
        self.log.append(("sources", S.shape[0]))
        return super().matvec(kernel, Z, S, V)

    def value_grad(self, kernel, Z, S, V, a):
        self.log.append(("sources", S.shape[0]))
        return super().value_grad(kernel, Z, S, V, a)

    def logsumexp(self, kernel, Z, S, logv):
        self.log.append(("sources", S.shape[0]))
        return super().logsumexp(kernel, Z, S, logv)

    def softmax_moments(self, kernel, Z, S, c):
        self.log.append(("sources", S.shape[0]))
        return super().softmax_moments(kernel, Z, S, c)


@pytest.mark.parametrize("cls", [IFTSampler, WFRMMDFlow, InclusiveKLFitter])
def test_targets_are_bound_once_and_never_pooled_with_the_particles(cls, rng):
    X = rng.normal(size=(90, 2))
    n_atoms = 12
    engine = RecordingBackend()
    # one run: for InclusiveKLFitter a given shape (covariance="auto" compares two on
    # held-out rows, a run and a binding each)
    params = ({"n_components": n_atoms, "covariance": "isotropic"}
              if cls is InclusiveKLFitter else {"n_particles": n_atoms})
    est = cls(**params, max_iter=6, tol=0, bandwidth=1.0, backend=engine,
              random_state=0).fit(X)
    assert est.backend_ == "recording"
    assert engine.log.count(("bind", 90)) == 1
    assert [e for e in engine.log if e[0] == "bind"] == [("bind", 90)]
    sizes = {size for kind, size in engine.log if kind == "sources"}
    # every reduction sums over the particles or over the targets, never over both pooled
    assert sizes <= {n_atoms, 90}
    assert 90 in sizes


# --- the registry and backend= as an instance -------------------------------------------
def test_backend_names_and_errors():
    assert {"auto", "numpy", "keops"} <= set(backend_names())
    check_backend("numpy")
    check_backend(NumpyBackend())
    with pytest.raises(ValueError, match=r"backend must be one of .*'numpy'.*got 'torch'"):
        check_backend("torch")
    with pytest.raises(ValueError, match="metric_backend"):
        check_backend(3, "metric_backend")
    with pytest.raises(ValueError, match="device must be one of"):
        KeOpsBackend(device="tpu")
    with pytest.raises(ValueError, match="name"):
        register_backend("auto", NumpyBackend)
    with pytest.raises(TypeError, match="factory"):
        register_backend("x", 3)


def test_auto_uses_numpy_for_small_runs_and_instances_as_given():
    assert resolve_backend("auto", 1000).device == "numpy"
    assert resolve_backend("numpy", 10**12).device == "numpy"
    engine = RecordingBackend()
    assert resolve_backend(engine, 10**12) is engine


@needs_numba
def test_auto_uses_numba_for_large_runs_on_a_cpu():
    if gpu_possible():
        pytest.skip("a GPU may be present: KeOps would be asked first")
    assert resolve_backend("auto", 10**10).device == "numba-cpu"


@needs_numba
def test_auto_weighs_the_numba_start_against_the_time_it_saves(monkeypatch):
    from skgradflow.backends import _registry

    if gpu_possible():
        pytest.skip("a GPU may be present: KeOps would be asked first")
    # a table of savings made up here: 10 ns an entry from the third size on at every d, and
    # NumPy the faster at the first size
    sizes = _registry.AUTO_NUMBA_SIZES
    monkeypatch.setattr(_registry, "AUTO_NUMBA_SAVES_NS",
                        {2: (-5.0, 0.0, 10.0, 10.0), 32: (-5.0, 0.0, 10.0, 10.0)})
    pairs = sizes[2]
    assert np.isclose(_registry.numba_saving_s(pairs, 16, 7), 7 * pairs * 10e-9)
    assert np.isclose(_registry.numba_saving_s(sizes[0], 16), -5e-9 * sizes[0])
    asked = []

    def ready(answer):
        return lambda n_dims: asked.append(n_dims) or answer

    def pick(n_pairs, n_calls, n_dims=16):
        return resolve_backend("auto", n_pairs, n_calls=n_calls, n_dims=n_dims).device

    warm = _registry.AUTO_NUMBA_WARM_START_S
    cold = _registry.AUTO_NUMBA_COLD_START_S
    between = int(np.ceil(2 * warm / (pairs * 10e-9)))  # saves twice a load
    assert between * pairs * 10e-9 < cold
    # cached loops: a load pays off; loops to compile: it does not
    monkeypatch.setattr(_registry, "loops_ready", ready(True))
    assert pick(pairs, between) == "numba-cpu"
    monkeypatch.setattr(_registry, "loops_ready", ready(False))
    assert pick(pairs, between) == "numpy"
    assert asked == [16, 16]
    # a saving above a compile: Numba without asking; NumPy's faster calls: NumPy, however many
    assert pick(pairs, int(np.ceil(2 * cold / (pairs * 10e-9)))) == "numba-cpu"
    assert pick(sizes[0], 10**9) == "numpy"
    assert asked == [16, 16]
    # by dimension: the saving is read at the run's d
    monkeypatch.setattr(_registry, "AUTO_NUMBA_SAVES_NS",
                        {2: (0.0, 0.0, 1e-3, 1e-3), 32: (0.0, 0.0, 100.0, 100.0)})
    calls = int(np.ceil(2 * cold / (pairs * 100e-9)))
    assert pick(pairs, calls, n_dims=32) == "numba-cpu"
    assert pick(pairs, calls, n_dims=2) == "numpy"


@needs_numba
def test_a_small_auto_run_does_not_import_numba():
    # in a fresh process: the run saves less than Numba's import would cost
    program = (
        "import sys\n"
        "from skgradflow.backends import resolve_backend\n"
        "engine = resolve_backend('auto', 100 * 400, n_calls=100, n_dims=16)\n"
        "print(engine.device, 'numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out == ["numpy", "False"]


@needs_numba
def test_loops_ready_reads_the_cache_and_the_loops_loaded_here(tmp_path, monkeypatch):
    from skgradflow.backends import _numba

    kern = Kernel("gaussian", 1.0)
    Z = np.random.default_rng(0).normal(size=(5, 9))
    engine = resolve_backend("numba", 1)
    for blocked_from in (10**9, 0):  # the per-pair loops, then the blocked ones
        monkeypatch.setattr(_numba, "BLOCKED_MIN_PAIRS", blocked_from)
        engine.value_grad(kern, Z, Z, Z[:, :1], Z[:, 0])
        engine.matvec(kern, Z, Z, Z[:, :1])
        engine.logsumexp(kern, Z, Z, Z[:, 0])
        engine.softmax_moments(kern, Z, Z, Z[:, 0])
    assert _numba.loops_ready(9)
    # an empty cache, in a fresh process: nothing loaded, nothing cached
    program = ("from skgradflow.backends._numba import loops_ready\n"
               "print(loops_ready(2), loops_ready(9))\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)), timeout=300,
                         check=True).stdout.split()
    assert out == ["False", "False"]


@needs_keops
def test_auto_uses_keops_for_large_runs_without_numba(monkeypatch):
    from skgradflow.backends import _registry

    monkeypatch.setattr(_registry, "numba_installed", lambda: False)
    assert resolve_backend("auto", 10**10).device in ("keops-cpu", "keops-gpu")


class HalfBlocks(NumpyBackend):
    """A registered third-party engine: NumPy with small blocks."""

    name = "half-blocks"


def test_a_registered_backend_serves_estimators_and_metrics(rng, monkeypatch):
    from skgradflow.backends import _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    register_backend("half-blocks", HalfBlocks)
    try:
        X = rng.normal(size=(60, 2))
        params = {"n_particles": 10, "max_iter": 5, "tol": 0, "random_state": 0}
        est = IFTSampler(**params, backend="half-blocks").fit(X)
        assert est.backend_ == "half-blocks"
        ref = IFTSampler(**params, backend="numpy").fit(X)
        np.testing.assert_array_equal(est.particles_, ref.particles_)
        assert mmd(X, X + 1, backend="half-blocks") == mmd(X, X + 1, backend="numpy")
    finally:
        _registry.BACKEND_NAMES.discard("half-blocks")


def test_an_instance_survives_get_params_clone_pickle_and_grid_search(rng):
    X = rng.normal(size=(80, 2))
    engine = NumpyBackend()
    est = IFTSampler(n_particles=10, max_iter=5, tol=0, backend=engine, random_state=0)
    assert est.get_params()["backend"] is engine
    twin = clone(est)
    assert isinstance(twin.backend, NumpyBackend) and twin.backend == engine
    fitted = pickle.loads(pickle.dumps(est.fit(X)))
    assert fitted.backend_ == "numpy" and fitted.backend == engine
    ref = IFTSampler(n_particles=10, max_iter=5, tol=0, backend="numpy", random_state=0).fit(X)
    np.testing.assert_array_equal(est.particles_, ref.particles_)
    search = GridSearchCV(est, {"beta": [0.0, 1.0]}, cv=2, n_jobs=2, error_score="raise")
    search.fit(X)
    assert search.best_estimator_.backend_ == "numpy"
    assert isinstance(search.best_estimator_.backend, NumpyBackend)


def test_bad_backend_parameter_names_the_argument(rng):
    X = rng.normal(size=(30, 2))
    with pytest.raises(ValueError, match="'backend' parameter"):
        IFTSampler(backend=object()).fit(X)
    with pytest.raises(ValueError, match="backend"):
        mmd(X, X, backend="cuda")


def test_the_backend_base_class_is_abstract():
    with pytest.raises(TypeError):
        Backend()


# --- NumPy specifics ------------------------------------------------------------------------
def test_numpy_blocks_give_the_unblocked_result(rng, monkeypatch):
    Z, S, V, a = make_inputs(rng, 2, np.float64, n=50, m=70)
    kern = Kernel("gaussian", H)
    val, grad = NumpyBackend().value_grad(kern, Z, S, V[:, :2], a)
    lse = NumpyBackend().logsumexp(kern, Z, S, a)
    monkeypatch.setattr(numpy_module, "BLOCK_ROWS", 7)
    monkeypatch.setattr(numpy_module, "BLOCK_COLS", 9)
    val_b, grad_b = NumpyBackend().value_grad(kern, Z, S, V[:, :2], a)
    close(val_b, val, np.float64)
    close(grad_b, grad, np.float64)
    close(NumpyBackend().logsumexp(kern, Z, S, a), lse, np.float64)


# --- compiled engines ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "engine_name",
    [pytest.param("keops", marks=needs_keops), pytest.param("numba", marks=needs_numba)],
)
def test_compiled_float32_long_sums_stay_close_to_float64(engine_name):
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(64, 3))
    S = rng.normal(size=(100_000, 3))
    a = rng.uniform(0.5, 1.5, size=100_000) / 100_000
    kern = Kernel("gaussian", 1.0)
    engine = resolve_backend(engine_name, 10**12)
    v64, g64 = engine.value_grad(kern, Z, S, a[:, None], a)
    v32, g32 = engine.value_grad(
        kern, Z.astype(np.float32), S.astype(np.float32), a[:, None].astype(np.float32),
        a.astype(np.float32),
    )
    np.testing.assert_allclose(v32, v64, rtol=1e-4)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-4 * np.abs(g64).max())


@needs_keops
def test_a_new_bandwidth_does_not_compile_a_new_formula(rng):
    import pykeops

    Z, S, V, a = make_inputs(rng, 3, np.float64)
    KeOpsBackend().value_grad(Kernel("gaussian", 0.5), Z, S, V[:, :2], a)
    folder = pykeops.get_build_folder()
    before = sorted(os.listdir(folder))
    KeOpsBackend().value_grad(Kernel("gaussian", 2.5), Z, S, V[:, :2], a)
    KeOpsBackend().value_grad(Kernel("gaussian", 7.0), Z, S, V[:, :2], a)
    assert sorted(os.listdir(folder)) == before


POISON = """
import shutil, sys, tempfile, warnings
import numpy as np
from skgradflow.backends import KeOpsBackend
from skgradflow.kernels import Kernel
# the broken cache is a CPU-compile matter: the CPU device makes it one on a GPU machine too
engine = KeOpsBackend(device="cpu")
x = np.random.default_rng(0).normal(size=(5, 4))
if sys.argv[1] == "poison":
    # a build folder changed at run time: KeOps 2.3 records, in the default cache, a
    # source file in the other folder, which is then deleted
    import pykeops
    other = tempfile.mkdtemp()
    pykeops.set_build_folder(other)
    engine.matvec(Kernel("imq", 1.0), x, x, np.ones((5, 1)))
    shutil.rmtree(other)
else:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = engine.matvec(Kernel("imq", 1.0), x, x, np.ones((5, 1)))
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    assert np.allclose(out[:, 0], (1 / np.sqrt(1 + d2)).sum(1)), out
    assert any("cache" in str(w.message) for w in caught), [str(w.message) for w in caught]
    print("recovered")
"""


@needs_keops
def test_a_broken_keops_cache_is_cleared_and_rebuilt(tmp_path):
    env = dict(os.environ, KEOPS_CACHE_FOLDER=str(tmp_path), PYKEOPS_VERBOSE="0")
    for mode in ("poison", "use"):
        proc = subprocess.run([sys.executable, "-c", POISON, mode], env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recovered" in proc.stdout
