"""The Dask engine on a real two-process LocalCluster: every estimator fitted on a dask array
against the NumPy backend on the computed array (the oracle), the bound targets against the
dense formulas, minibatches, weights, the fitted-model methods, the metrics, the client
resolution, a worker killed mid-fit, and the error without Dask."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow  # noqa: E402
from skgradflow.backends import DaskBackend, DaskTargets, NumpyBackend  # noqa: E402
from skgradflow.kernels import Kernel  # noqa: E402
from skgradflow.metrics import energy_distance, mmd  # noqa: E402
from tests.backends.test_protocol import test_bound_targets_match_dense_formulas as bound_oracle  # noqa: E402
from tests.helpers import needs_numba, recorded_bends, three_mode_mixture  # noqa: E402

N_ATOMS = 12
ITERATIONS = 8


@pytest.fixture(scope="module")
def client():
    """One two-worker cluster of processes for the whole module (a few seconds to start)."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = three_mode_mixture(600, rng)
    sw = rng.uniform(0.2, 2.0, size=600)
    init = X[rng.choice(600, N_ATOMS, replace=False)] + 0.3
    return X, sw, init


def estimators(init, backend):
    """The three estimators with explicit init, bandwidth and step size."""
    common = dict(init=init, bandwidth=0.9, step_size=0.2, max_iter=ITERATIONS, tol=0,
                  backend=backend, random_state=0)
    return [
        IFTSampler(n_particles=N_ATOMS, **common),
        WFRMMDFlow(n_particles=N_ATOMS, **common),
        InclusiveKLFitter(n_components=N_ATOMS, **common),
    ]


def atoms(est):
    return est.means_ if isinstance(est, InclusiveKLFitter) else est.particles_


def assert_same_fit(ours, oracle):
    np.testing.assert_allclose(atoms(ours), atoms(oracle), rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.weights_, oracle.weights_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.loss_curve_, oracle.loss_curve_, rtol=1e-10, atol=1e-12)


def test_workers_import_this_checkout(client):
    import skgradflow

    paths = client.run(lambda: __import__("skgradflow").__file__)
    assert set(paths.values()) == {skgradflow.__file__}


@pytest.mark.parametrize("weighted", [False, True])
def test_all_estimators_on_a_dask_array_match_numpy(client, data, weighted):
    X, sw, init = data
    Xd = da.from_array(X, chunks=(150, 2))  # four chunks over two workers
    swd = da.from_array(sw, chunks=100) if weighted else None  # chunks unlike X's
    X_before = X.copy()
    for ours, oracle in zip(estimators(init, "dask"), estimators(init, "numpy"), strict=True):
        ours.fit(Xd, sample_weight=swd)
        oracle.fit(X, sample_weight=sw if weighted else None)
        assert ours.backend_ == "dask"
        assert_same_fit(ours, oracle)
    np.testing.assert_array_equal(X, X_before)


def _worker_engine(n_pairs, n_dims=2):
    from skgradflow.backends._dask import worker_engine

    engine = worker_engine("auto", n_pairs, n_dims)
    return engine.device, getattr(engine, "n_threads", None)


@needs_numba
def test_auto_is_resolved_on_each_worker_for_its_threads(client):
    # small chunks: NumPy; large ones: the Numba backend, one thread per worker thread
    assert client.submit(_worker_engine, 1000, pure=False).result() == ("numpy", None)
    assert client.submit(_worker_engine, 10**12, pure=False).result() == ("numba-cpu", 1)


@needs_numba
def test_auto_on_a_worker_weighs_the_dimension(monkeypatch):
    # 3000 kernel entries a reduction: by the registry's measured savings NumPy is the faster
    # at d = 2 and Numba at d = 32 (its loops taken as ready, so that the test does not
    # depend on the disk cache)
    from skgradflow.backends import _dask, _registry

    monkeypatch.setattr(_dask, "_engines", {})
    monkeypatch.setattr(_registry, "loops_ready", lambda n_dims: True)
    assert _registry.numba_saving_s(3000, 2) < 0 < _registry.numba_saving_s(3000, 32)
    assert _dask.worker_engine("auto", 3000, 2).device == "numpy"
    assert _dask.worker_engine("auto", 3000, 32).device == "numba-cpu"
    assert _dask.worker_engine("auto", 3000, 2).device == "numpy"  # one engine per dimension


def test_numpy_input_with_the_dask_backend_is_split_over_the_workers(client, data):
    X, _, init = data
    engine = DaskBackend(client=client, inner="numpy", chunk_rows=128)
    bound = engine.bind(X, np.full(600, 1 / 600))
    assert isinstance(bound, DaskTargets) and len(bound.chunks) == 5
    distributed.wait(bound.chunks)
    who = client.who_has(bound.chunks)
    assert len({w for ws in who.values() for w in ws}) == 2  # both workers hold chunks
    ours = estimators(init, engine)[1].fit(X)
    assert_same_fit(ours, estimators(init, "numpy")[1].fit(X))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bound_targets_match_dense_formulas(client, dtype):
    # the oracle test of every in-memory backend, on targets in 3 chunks on the workers
    bound_oracle(DaskBackend(client=client, inner="numpy", chunk_rows=25), dtype,
                 np.random.default_rng(3))


@pytest.mark.parametrize("whole", [True, False])
def test_transform_bends_dask_rows_as_it_bends_the_rows_in_memory(client, monkeypatch, whole):
    """10-D blobs shifted nonlinearly, which the Gaussian map does not land: bent whole and
    landed by the bend (400 rows), or, above WHOLE_ROWS (lowered to 200 on the host, which
    fits the bend), bent on the 100 rows of smallest hash and landed by the plan; the dask
    rows, in uneven chunks, map as the same rows in memory do (up to round-off, amplified
    by the plan's Newton solve)."""
    from sklearn.datasets import make_blobs

    from skgradflow._flow import _matching

    X, _ = make_blobs(800, 10, centers=5, cluster_std=2.0, random_state=0)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    ift = IFTSampler(random_state=0, backend="numpy").fit(X[400:])
    points = X[:400].copy()
    t = 0.4
    points[:, :2] = points[:, :2] @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    points[:, :5] = points[:, :5] + 0.3 * points[:, :5] * np.abs(points[:, :5]) + 0.7
    if not whole:
        monkeypatch.setattr(_matching, "WHOLE_ROWS", 200)
        monkeypatch.setattr(_matching, "FIT_ROWS", 100)
    bends = recorded_bends(monkeypatch)
    moved = ift.transform(da.from_array(points, chunks=(70, 10)))
    assert bends[0][-1].stages and bends[0][-1].landed == whole
    assert isinstance(moved, da.Array) and moved.chunks[0] == (70, 70, 70, 70, 70, 50)
    np.testing.assert_allclose(moved.compute(), ift.transform(points), rtol=0, atol=1e-9)


def test_rows_by_hash_are_those_of_the_rows_in_memory(client):
    """Each chunk's smallest hashes on its worker, merged here: the rows of the in-memory
    choice, in its order, however the rows are chunked."""
    from skgradflow.data import as_data

    X = np.random.default_rng(0).normal(size=(1000, 3))
    X[900:] = X[:100]  # repeated rows, in other chunks than their first copies
    expected = as_data(X).rows_by_hash(120, 7)
    # chunks of fewer rows than are asked for, of more, and one
    for chunks in ((1000, 3), (77, 3), (400, 3), (30, 3)):
        got = as_data(da.from_array(X, chunks=chunks)).rows_by_hash(120, 7)
        np.testing.assert_array_equal(got, expected)


def test_minibatches_are_drawn_from_the_chunks_by_weight(client):
    Y = np.arange(40.0)[:, None]
    b = np.zeros(40)
    b[[3, 31]] = [0.25, 0.75]  # in different chunks
    bound = DaskBackend(client=client, inner="numpy").bind_chunks(
        da.from_array(Y, chunks=(10, 1)), da.from_array(b, chunks=10))
    batch = bound.minibatch(4000, np.random.default_rng(0))
    assert isinstance(batch, DaskTargets) and batch.n_samples == 4000
    rows = bound.client.gather(batch.chunks)
    values = np.concatenate([r[0][:, 0] for r in rows])
    np.testing.assert_allclose(np.concatenate([r[1] for r in rows]), 1 / 4000)
    assert set(np.unique(values)) == {3.0, 31.0}
    assert abs(np.mean(values == 31.0) - 0.75) < 0.03
    # the reductions over a minibatch are those over its drawn rows
    Z = np.array([[3.0], [20.0]])
    kern = Kernel("gaussian", 5.0)
    oracle = NumpyBackend().bind(values[:, None], np.full(4000, 1 / 4000))
    for got, want in zip(batch.kernel_mean(kern, Z), oracle.kernel_mean(kern, Z), strict=True):
        # summed chunk by chunk: the gradient is a difference of terms of size ~|Z|/h²
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_a_minibatch_fit_is_reproducible_and_decreases_the_energy(client, data):
    X, _, init = data
    Xd = da.from_array(X, chunks=(150, 2))
    fits = [IFTSampler(n_particles=N_ATOMS, init=init, bandwidth=0.9, step_size=0.2,
                       max_iter=15, tol=0, batch_size=100, random_state=3).fit(Xd)
            for _ in range(2)]
    np.testing.assert_array_equal(fits[0].particles_, fits[1].particles_)
    before = mmd(init, X, bandwidth=0.9)
    assert mmd(fits[0].particles_, X, x_weights=fits[0].weights_, bandwidth=0.9) < before


@pytest.mark.parametrize("init", ["gaussian", "subsample", "kmeans++", "kmeans"])
def test_initialisation_and_bandwidth_rules_run_on_the_workers(client, data, init):
    X, sw, _ = data
    Xd = da.from_array(X, chunks=(150, 2))
    clusters = init in ("kmeans++", "kmeans")
    cls = InclusiveKLFitter if clusters else IFTSampler
    key = "n_components" if cls is InclusiveKLFitter else "n_particles"
    est = cls(**{key: 20}, init=init, bandwidth="scott" if clusters else "median",
              max_iter=3, tol=0, random_state=0).fit(Xd, sample_weight=sw)
    oracle = cls(**{key: 20}, init=init, bandwidth=est.bandwidth, max_iter=3, tol=0,
                 random_state=0).fit(X, sample_weight=sw)
    # Scott's rule is exact from Dask reductions; the median is that of 2000 drawn rows
    rel = 1e-12 if clusters else 0.1
    assert abs(est.bandwidth_ - oracle.bandwidth_) <= rel * oracle.bandwidth_
    start = atoms(est)
    assert start.shape == (20, 2) and np.all(np.isfinite(start))
    if init == "subsample":
        # fitted particles started at data rows: they stay near the data
        assert np.min(np.abs(X[:, None, :] - start[None]).sum(-1), axis=0).max() < 3.0


def test_anneal_and_auto_counts_on_a_dask_array(client, data):
    X, _, _ = data
    est = IFTSampler(bandwidth="anneal", max_iter=10, tol=0, random_state=0)
    est.fit(da.from_array(X, chunks=(200, 2)))
    # n_particles="auto": one per row of positive weight (distinct rows, for continuous data)
    assert est.particles_.shape == (500, 2)
    assert len(np.unique(est.bandwidth_schedule_)) == 2


def test_transform_score_and_score_samples_on_dask_input(client, data):
    X, sw, init = data
    Xd = da.from_array(X, chunks=(150, 2))
    swd = da.from_array(sw, chunks=(150,))
    ift, _, kl = estimators(init, "numpy")
    ift.set_params(max_iter=20).fit(X)
    kl.fit(X)
    # uneven chunks: the plan's sums run over five chunks on the workers, the map chunk by
    # chunk, and the result equals the in-memory map up to the round-off of summing in
    # another order (which the last Newton step's J x J solve amplifies to a few 1e-12)
    points = X[:300] + 1.0
    moved = ift.transform(da.from_array(points, chunks=(70, 2)))
    assert isinstance(moved, da.Array) and moved.chunks == ((70, 70, 70, 70, 20), (2,))
    np.testing.assert_allclose(moved.compute(), ift.transform(points), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ift.score(Xd), ift.score(X), rtol=1e-10)
    np.testing.assert_allclose(ift.score(Xd, sample_weight=swd),
                               ift.score(X, sample_weight=sw), rtol=1e-10)
    dens = kl.score_samples(Xd)
    assert isinstance(dens, da.Array) and dens.chunks == ((150,) * 4,)
    np.testing.assert_allclose(dens.compute(), kl.score_samples(X), rtol=1e-12)
    np.testing.assert_allclose(kl.score(Xd), kl.score(X), rtol=1e-12)
    np.testing.assert_allclose(kl.score(Xd, sample_weight=swd),
                               kl.score(X, sample_weight=sw), rtol=1e-12)


def test_metrics_on_dask_input_match_numpy(client, data):
    X, sw, _ = data
    Y = X[:200] * 1.3 + 0.5
    Xd, Yd = da.from_array(X, chunks=(150, 2)), da.from_array(Y, chunks=(70, 2))
    swd = da.from_array(sw, chunks=(150,))
    for kernel in ["gaussian", "imq", "energy"]:
        np.testing.assert_allclose(
            mmd(Xd, Yd, kernel=kernel, bandwidth=0.7, x_weights=swd),
            mmd(X, Y, kernel=kernel, bandwidth=0.7, x_weights=sw), rtol=1e-10)
    np.testing.assert_allclose(energy_distance(X, Yd), energy_distance(X, Y), rtol=1e-10)
    assert mmd(Xd, X, bandwidth=0.7) == 0.0
    median = mmd(Xd, Yd)  # the median bandwidth of 2000 drawn rows: close, not equal
    assert abs(median - mmd(X, Y)) < 0.1 * mmd(X, Y)


def test_held_out_parts_split_the_weights_where_the_rows_are(client, data):
    from skgradflow.data import as_data

    X, sw, _ = data
    rest, held = as_data(da.from_array(X, chunks=(150, 2)), da.from_array(sw, chunks=150),
                         ).held_out(0.25, np.random.default_rng(4))
    assert rest.rows is not None and rest.rows.chunks == held.rows.chunks  # not gathered
    w_rest, w_held = np.asarray(rest.weights.compute()), np.asarray(held.weights.compute())
    in_held = w_held > 0
    # every row in exactly one part, with its weight renormalised within the part
    np.testing.assert_array_equal(in_held, w_rest == 0)
    np.testing.assert_allclose(w_held[in_held], sw[in_held] / sw[in_held].sum(), rtol=1e-12)
    np.testing.assert_allclose(w_rest[~in_held], sw[~in_held] / sw[~in_held].sum(),
                               rtol=1e-12)
    assert held.n_distinct() == in_held.sum() and abs(in_held.mean() - 0.25) < 0.06


def test_held_out_rows_of_zero_weight_leave_nothing_to_choose_on(client, data):
    from skgradflow.data import as_data
    from skgradflow.mixture._selection import select_components

    X, _, _ = data
    sw = np.zeros(X.shape[0])
    sw[:30] = 1.0  # 30 weighted rows among 600: some draws hold none of them out
    empty = 0
    for seed in range(40):
        rest, held = as_data(da.from_array(X, chunks=(150, 2)), da.from_array(sw, chunks=150)
                             ).held_out(0.25, np.random.default_rng(seed))
        assert rest.n_positive() + held.n_positive() == 30
        empty += held.n_positive() == 0
    assert empty == 0 or empty < 40  # the draws differ
    # the selection never scores an empty part: it declines, and the fit goes on
    Xd, swd = da.from_array(X, chunks=(150, 2)), da.from_array(sw, chunks=150)
    for seed in range(3):
        sel = select_components(InclusiveKLFitter(max_iter=5, random_state=seed),
                                as_data(Xd, swd), np.random.default_rng(seed), True,
                                ("isotropic", "tied"))
        assert sel is None or np.all(np.isfinite(sel["held_out_log_likelihood"]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_number_of_components_is_chosen_on_the_workers(client, data):
    X, _, _ = data
    est = InclusiveKLFitter(max_iter=30, covariance="isotropic", random_state=0).fit(
        da.from_array(X, chunks=(150, 2)))
    sel = est.component_selection_
    assert est.backend_ == "dask"
    np.testing.assert_array_equal(sel["n_components"], [60, 200, 500])
    # against the in-memory selection, which holds out another quarter and starts its
    # candidates from all the rows where these start from a draw of them: the same
    # likelihoods up to those draws (about 0.08 apart here; the candidates differ by less,
    # so the count chosen may differ)
    oracle = InclusiveKLFitter(max_iter=30, covariance="isotropic", random_state=0).fit(X)
    np.testing.assert_allclose(sel["held_out_log_likelihood"],
                               oracle.component_selection_["held_out_log_likelihood"],
                               atol=0.2)
    assert est.n_components_ in sel["n_components"]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_shape_is_chosen_on_the_workers(client):
    """covariance="auto" on a dask array: the tied candidates' pooled scatter from the
    chunks' second moments, and the same choice as in memory on correlated features (the
    held-out quarters and the candidates' starts differ, so the likelihoods are compared by
    their choice only)."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    X = rng.standard_normal((400, 5)) * np.geomspace(0.05, 2.0, 5) @ basis.T
    est = InclusiveKLFitter(max_iter=30, random_state=0).fit(da.from_array(X, chunks=(100, 5)))
    oracle = InclusiveKLFitter(max_iter=30, random_state=0).fit(X)
    sel, ref = est.component_selection_, oracle.component_selection_
    assert est.backend_ == "dask"
    np.testing.assert_array_equal(sel["covariance"], ["isotropic"] * 3 + ["tied"] * 2)
    np.testing.assert_array_equal(sel["n_components"], ref["n_components"])
    assert sel["chosen"] == ref["chosen"] == 3
    assert est.covariance_mode_ == oracle.covariance_mode_ == "tied"
    assert np.all(np.isfinite(sel["held_out_log_likelihood"]))


def test_a_nan_chunk_gives_the_numpy_message(client, data):
    X, sw, _ = data
    bad = X.copy()
    bad[470, 1] = np.nan  # in the fourth chunk only
    est = IFTSampler(n_particles=5, max_iter=2)
    with pytest.raises(ValueError) as numpy_error:
        est.fit(bad)
    with pytest.raises(ValueError) as dask_error:
        est.fit(da.from_array(bad, chunks=(150, 2)))
    assert str(dask_error.value) == str(numpy_error.value)
    assert "Input X contains NaN" in str(dask_error.value)
    bad_w = sw.copy()
    bad_w[500] = -1.0
    with pytest.raises(ValueError) as numpy_error:
        est.fit(X, sample_weight=bad_w)
    with pytest.raises(ValueError) as dask_error:
        est.fit(da.from_array(X, chunks=(150, 2)), sample_weight=da.from_array(bad_w))
    assert str(dask_error.value) == str(numpy_error.value)
    with pytest.raises(ValueError, match="sample_weight is a dask array but X is not"):
        est.fit(X, sample_weight=da.from_array(sw))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        Xd = da.from_array(X, chunks=(150, 2))
        est.fit(Xd[Xd[:, 0] > 0])


def test_client_resolution(client, data):
    X, _, init = data
    engine = DaskBackend(client=client, inner="numpy")
    # a passed client, the default client, and a scheduler address
    for backend in [engine, "dask", DaskBackend(client=client.scheduler.address)]:
        est = IFTSampler(n_particles=N_ATOMS, init=init, bandwidth=0.9, max_iter=2, tol=0,
                         step_size=0.2, backend=backend).fit(X)
        assert est.backend_ == "dask"
    assert repr(engine).startswith("DaskBackend(client=<Client")
    # a client that is not the default one serves the Dask reductions of the whole fit
    with distributed.Client(client.scheduler.address, set_as_default=False) as other:
        seen = []

        def note(state):
            seen.append(distributed.get_client() is other)

        est = IFTSampler(n_particles=N_ATOMS, init="gaussian", bandwidth="scott", max_iter=2,
                         tol=0, backend=DaskBackend(client=other), callback=note)
        est.fit(da.from_array(X, chunks=(150, 2)))
        assert seen == [True, True]
        assert distributed.get_client() is client
    # an instance survives clone and pickle with an address
    import pickle

    from sklearn.base import clone

    spec = DaskBackend(client="tcp://127.0.0.1:1", inner="numpy")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert clone(IFTSampler(backend=spec)).backend == spec
    # with a client: copies share it, a pickle carries the scheduler's address
    assert clone(IFTSampler(backend=engine)).backend.client is client
    assert pickle.loads(pickle.dumps(engine)).client == client.scheduler.address


def test_without_a_client_a_fit_starts_and_closes_its_own_cluster(data):
    X, _, init = data
    code = (
        "import numpy as np, dask.array as da, distributed\n"
        "from skgradflow import IFTSampler\n"
        "X = np.random.default_rng(0).normal(size=(300, 2))\n"
        "est = IFTSampler(n_particles=10, bandwidth=1.0, max_iter=2, tol=0, backend='dask')\n"
        "est.fit(da.from_array(X, chunks=100))\n"
        "print(est.backend_)\n"
        "# after the fit, without a cluster: the fitted measure is small, held here\n"
        "assert est.sample(20, random_state=0).shape == (20, 2)\n"
        "assert est.transform(X[:30]).shape == (30, 2)\n"
        "try:\n"
        "    distributed.default_client()\n"
        "    print('left open')\n"
        "except ValueError:\n"
        "    print('closed')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dask", "closed"]


def test_a_worker_killed_mid_fit_is_retried_with_the_same_result(data):
    X, _, init = data
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        Xd = da.from_array(X, chunks=(100, 2))
        killed = threading.Event()

        def kill_one(state):
            if state.n_iter == 3 and not killed.is_set():
                # the process of a worker holding target chunks dies without notice
                pids = c.run(os.getpid)
                os.kill(next(iter(pids.values())), 9)
                killed.set()

        kw = dict(n_particles=N_ATOMS, init=init, bandwidth=0.9, step_size=0.2, max_iter=8,
                  tol=0, backend=DaskBackend(client=c, inner="numpy"))
        ours = WFRMMDFlow(callback=kill_one, **kw).fit(Xd)
        assert killed.is_set()
        c.wait_for_workers(1)
    oracle = WFRMMDFlow(**{**kw, "backend": "numpy"}).fit(X)
    assert_same_fit(ours, oracle)


def test_without_dask_the_error_names_the_extra(tmp_path):
    # a stand-in package that fails to import hides the installed Dask
    for name in ("dask", "distributed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('hidden for a test')\n")
    code = (
        "import numpy as np\n"
        "from skgradflow import IFTSampler\n"
        "X = np.random.default_rng(0).normal(size=(50, 2))\n"
        "IFTSampler(n_particles=5, max_iter=2, backend='numpy').fit(X)\n"
        "try:\n"
        "    IFTSampler(n_particles=5, max_iter=2, backend='dask').fit(X)\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("DaskUnavailableError")
    assert 'pip install "skgradflow[dask]"' in out.stdout


def test_a_reduction_missing_rows_raises_instead_of_summing_less(client):
    Y = np.random.default_rng(0).normal(size=(90, 2))
    bound = DaskBackend(client=client, inner="numpy", chunk_rows=30).bind(Y, np.full(90, 1 / 90))
    # the same chunks, claimed to hold more rows (or fewer chunks) than they do
    for chunks, rows in [(bound.chunks, 100), (bound.chunks[:2], 90)]:
        short = DaskTargets(bound.backend, client, chunks, rows, 2, Y.dtype)
        with pytest.raises(RuntimeError, match="refusing a partial sum"):
            short.kernel_mean(Kernel("gaussian", 1.0), Y[:3])


def test_the_engine_checks_its_settings():
    with pytest.raises(ValueError, match="inner"):
        DaskBackend(inner="torch").ensure_ready()
    with pytest.raises(ValueError, match="in-memory backend"):
        DaskBackend(inner="dask").ensure_ready()
    with pytest.raises(ValueError, match="chunk_rows"):
        DaskBackend(chunk_rows=0).ensure_ready()
    assert DaskBackend(inner="numpy") == DaskBackend(inner="numpy")
    assert DaskBackend(inner=NumpyBackend()) == DaskBackend(inner=NumpyBackend())


def test_the_shaped_kernels_on_dask_input(client, data):
    """The shaped modes fit on a dask array (the covariance by Dask reductions, the per-atom
    reductions chunk by chunk) as on the computed array, and score dask input as in memory."""
    X, sw, init = data
    Xd = da.from_array(X, chunks=(150, 2))
    swd = da.from_array(sw, chunks=(150,))
    params = dict(n_components=N_ATOMS, init=init, bandwidth=0.5, step_size=0.05,
                  max_iter=ITERATIONS, tol=0)
    for covariance in ("data", "tied", "full"):
        ours = InclusiveKLFitter(covariance=covariance, **params).fit(Xd, sample_weight=swd)
        oracle = InclusiveKLFitter(covariance=covariance, backend="numpy", **params).fit(
            X, sample_weight=sw)
        np.testing.assert_allclose(ours.covariances_, oracle.covariances_, rtol=1e-9,
                                   atol=1e-12)
        assert_same_fit(ours, oracle)
        dens = oracle.score_samples(Xd)
        assert isinstance(dens, da.Array)
        np.testing.assert_allclose(dens.compute(), oracle.score_samples(X), rtol=1e-12)
