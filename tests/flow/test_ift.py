"""IFTSampler against an independent dense computation of section 1 of the design page, and
the flow's invariants and behaviour."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skgradflow import IFTSampler
from skgradflow.callbacks import PathRecorder
from skgradflow.data import InMemoryData
from skgradflow.metrics import energy_distance, mmd
from tests.helpers import BACKENDS, assert_energy_never_increases, three_mode_mixture
from tests.oracles import dense_ift_iteration, energy, gauss, witness_grad

# --- an independent dense implementation of one IFT iteration --------------------------


@pytest.fixture
def small_problem(rng):
    y = three_mode_mixture(40, rng)
    b = rng.uniform(0.5, 1.5, size=40)
    x0 = rng.normal(size=(15, 2))
    return x0, y, b / b.sum(), b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_steps", [1, 3])
def test_one_iteration_matches_dense_computation(small_problem, backend, weight_steps):
    x0, y, b, raw_weights = small_problem
    h, tau, alpha, beta = 1.3, 0.4, 0.7, 2.0
    est = IFTSampler(n_particles=15, bandwidth=h, step_size=tau, alpha=alpha, beta=beta,
                     weight_steps=weight_steps, init=x0, max_iter=1, tol=0, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(y, sample_weight=raw_weights)
    w0 = np.full(15, 1 / 15)
    x1, w1 = dense_ift_iteration(x0, w0, y, b, h, tau, alpha, beta, weight_steps)
    np.testing.assert_allclose(est.particles_, x1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.weights_, w1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        est.loss_curve_, [energy(x0, w0, y, b, h), energy(x1, w1, y, b, h)], rtol=1e-9
    )
    assert est.step_size_ == tau and est.n_iter_ == 1


def test_beta_zero_is_the_mmd_flow(small_problem):
    x0, y, b, raw = small_problem
    h, tau = 1.0, 0.3
    est = IFTSampler(n_particles=15, bandwidth=h, step_size=tau, beta=0.0, init=x0,
                     max_iter=5, tol=0).fit(y, sample_weight=raw)
    w = np.full(15, 1 / 15)
    x = x0
    for _ in range(5):
        x = x - tau * witness_grad(x, w, y, b, h)
    assert np.all(est.weights_ == 1 / 15)
    np.testing.assert_allclose(est.particles_, x, rtol=1e-10)


def test_alpha_zero_moves_no_particle(small_problem):
    x0, y, b, raw = small_problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = IFTSampler(n_particles=15, alpha=0.0, init=x0, max_iter=20).fit(y)
    np.testing.assert_array_equal(est.particles_, x0)
    assert not np.allclose(est.weights_, 1 / 15)  # the weights did move
    assert_energy_never_increases(est)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "imq", "energy"])
def test_weights_stay_on_the_simplex_and_energy_decreases(kernel, mixture_split):
    X, _ = mixture_split
    path = PathRecorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = IFTSampler(n_particles=60, kernel=kernel, bandwidth=0.5, max_iter=40,
                         random_state=0, callback=path).fit(X[:300])
    assert len(path.weights) == est.n_iter_ >= 20
    for w in path.weights:
        assert np.all(w >= 0)
        assert abs(w.sum() - 1) < 1e-10
    curve = est.loss_curve_
    assert np.all(np.diff(curve) <= 1e-10 * abs(curve[0]))
    assert curve[-1] < 0.5 * curve[0]


def test_unbalanced_weights_stay_nonnegative(mixture_split):
    X, _ = mixture_split
    path = PathRecorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = IFTSampler(n_particles=60, conserve_mass=False, bandwidth=0.5, max_iter=40,
                         random_state=0, callback=path).fit(X[:300])
    assert len(path.weights) == est.n_iter_ > 0
    assert all(np.all(w >= 0) for w in path.weights)
    assert not np.isclose(est.weights_.sum(), 1.0)  # mass is not conserved
    assert np.all(np.diff(est.loss_curve_) <= 1e-12)
    # the unbalanced energy ½|μ - π̂|²_k matches the metric on the unnormalised measure
    direct = 0.5 * mmd_unnormalised(est.particles_, est.weights_, X[:300], 0.5)
    np.testing.assert_allclose(est.loss_curve_[-1], direct, rtol=1e-8)


def mmd_unnormalised(x, w, y, h):
    b = np.full(len(y), 1 / len(y))
    return w @ gauss(x, x, h) @ w - 2 * w @ gauss(x, y, h) @ b + b @ gauss(y, y, h) @ b


def test_defaults_fit_a_three_mode_mixture(mixture_split):
    X, X_test = mixture_split
    est = IFTSampler(random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    # the default start is a draw of the rows (a subsample of N rows: a real sample, the
    # yardstick); the flow must improve on it, and on the moment-matched Gaussian by 10x
    start, _ = est._initial_particles(InMemoryData(X, np.ones(len(X))),
                                      np.random.default_rng(0), len(est.particles_))
    gaussian, _ = IFTSampler(init="gaussian")._initial_particles(
        InMemoryData(X, np.ones(len(X))), np.random.default_rng(0), len(est.particles_))
    before = energy_distance(gaussian, X_test)
    # the fitted particle measure (score is the log-likelihood of the smoothed measure)
    after = energy_distance(est.particles_, X_test, x_weights=est.weights_)
    # the default anneals: the median's bandwidth, then Scott's, finer
    schedule = est.bandwidth_schedule_
    assert schedule[0] > schedule[-1] == est.bandwidth_ and len(np.unique(schedule)) == 2
    assert_energy_never_increases(est)
    assert after < energy_distance(start, X_test)
    assert after < before / 10
    # the median's bandwidth alone transports but does not resolve the modes as well
    wide = IFTSampler(bandwidth="median", init="gaussian", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        wide.fit(X)
    assert wide.loss_curve_[-1] < 0.05 * wide.loss_curve_[0]
    wide_after = energy_distance(wide.particles_, X_test, x_weights=wide.weights_)
    assert wide_after < before / 2.5
    assert after < wide_after


def test_ift_beats_the_mmd_flow_on_far_modes(rng):
    # target modes far from the particles, which start in a small blob between them
    y = three_mode_mixture(600, rng, centers=((-6, 0), (6, 0), (0, 8)), scale=0.5)
    x0 = 0.3 * rng.normal(size=(150, 2)) + np.array([0.0, 2.0])
    kw = dict(n_particles=150, bandwidth=1.0, init=x0, max_iter=150, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ift = IFTSampler(beta=1.0, **kw).fit(y)
        flow = IFTSampler(beta=0.0, **kw).fit(y)
    assert ift.loss_curve_[-1] < 0.5 * flow.loss_curve_[-1]
    # the same comparison with the bandwidth-free metric on the fitted measures
    assert energy_distance(ift.particles_, y, x_weights=ift.weights_) < energy_distance(
        flow.particles_, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_stays_float32_and_tracks_float64(small_problem, backend):
    x0, y, b, raw = small_problem
    kw = dict(n_particles=15, bandwidth=1.0, step_size=0.3, init=x0, max_iter=5, tol=0,
              backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        e64 = IFTSampler(**kw).fit(y)
        e32 = IFTSampler(**kw).fit(y.astype(np.float32))
    assert e32.particles_.dtype == np.float32
    assert e32.sample(3, random_state=0).dtype == np.float32
    assert e32.transform(y[:5].astype(np.float32)).dtype == np.float32
    np.testing.assert_allclose(e32.particles_, e64.particles_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e32.weights_, e64.weights_, rtol=1e-3, atol=1e-6)


def test_minibatches_follow_sample_weight(rng):
    near = rng.normal(size=(300, 2))
    far = rng.normal(size=(300, 2)) + np.array([8.0, 0.0])
    y = np.concatenate([near, far])
    weight = np.r_[np.ones(300), np.zeros(300)]  # the far cluster has no mass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # from the moment-matched Gaussian, halfway between the clusters (a draw of the
        # rows by weight, the default, would start on the near cluster)
        est = IFTSampler(n_particles=80, batch_size=64, bandwidth=1.0, max_iter=100,
                         init="gaussian", random_state=0).fit(y, sample_weight=weight)
    assert abs(est.weights_.sum() - 1) < 1e-10
    mean_position = est.weights_ @ est.particles_
    assert abs(mean_position[0]) < 1.0  # not pulled toward the weightless cluster at x=8
    # minibatch energies are noisy estimates: judge the particles on the weighted target,
    # against those of the same run after one iteration (3-10x apart over seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = IFTSampler(n_particles=80, batch_size=64, bandwidth=1.0, max_iter=1,
                           init="gaussian", random_state=0).fit(y, sample_weight=weight)
    final_mmd = mmd(est.particles_, near, x_weights=est.weights_, bandwidth=1.0)
    start_mmd = mmd(start.particles_, near, x_weights=start.weights_, bandwidth=1.0)
    assert final_mmd < 0.5 * start_mmd


def test_estimated_constant_is_close_to_the_exact_one(rng):
    from skgradflow._flow import Problem
    from skgradflow.backends import NumpyBackend
    from skgradflow.kernels import Kernel

    y = rng.normal(size=(12_000, 2))
    b = np.full(len(y), 1 / len(y))
    problem = Problem(NumpyBackend(), Kernel("gaussian", 1.0), NumpyBackend().bind(y, b), 256,
                       np.random.default_rng(0))
    estimate = IFTSampler()._target_energy(problem, n_particles=100)
    exact = 0.5 * b @ NumpyBackend().matvec(Kernel("gaussian", 1.0), y, y, b[:, None])[:, 0]
    # the population value: E exp(-|Y - Y'|²/2) = E exp(-χ²₂) = 1/3 for Y, Y' ~ N(0, I₂)
    assert abs(exact - 1 / 6) < 0.01
    assert abs(estimate - exact) < 0.02 * exact


def test_transform_moves_points_toward_the_fitted_measure(mixture_split):
    X, X_test = mixture_split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = IFTSampler(n_particles=200, random_state=0).fit(X)
        shifted = X_test[:200] + np.array([1.5, -1.0])
        original = shifted.copy()
        moved = est.transform(shifted)
    np.testing.assert_array_equal(shifted, original)  # the input is untouched
    assert energy_distance(moved, X_test) < 0.1 * energy_distance(shifted, X_test)


def test_verbose_reports_progress_and_silent_prints_nothing(small_problem, capsys):
    x0, y, _, _ = small_problem
    kw = dict(n_particles=15, init=x0, max_iter=5, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        IFTSampler(verbose=0, **kw).fit(y)
        quiet = capsys.readouterr()
        IFTSampler(verbose=1, **kw).fit(y)
        loud = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    assert "energy" in loud.err and loud.out == ""


def test_defaults_keep_the_science_from_a_far_start():
    """The IFT paper's setting: 200 particles start as a blob far to one side of a 3-mode
    target.  With default parameters IFT ends far below the MMD flow in MMD at the transport
    bandwidth and no worse in energy distance; WFR keeps a quarter of its particles; the
    stopping rule stops only once 90% of the decrease a run to max_iter reaches is done."""
    from skgradflow import WFRMMDFlow
    from skgradflow.metrics import mmd

    rng = np.random.default_rng(0)
    y, y_test = three_mode_mixture(2000, rng), three_mode_mixture(2000, rng)
    init = np.array([12.0, 0.0]) + 0.5 * rng.standard_normal((200, 2))
    kw = dict(n_particles=200, init=init, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mmd_flow = IFTSampler(beta=0.0, **kw).fit(y)
        ift = IFTSampler(**kw).fit(y)
        ift_all = IFTSampler(tol=0, **kw).fit(y)
        wfr = WFRMMDFlow(**kw).fit(y)
    wide = ift.bandwidth_schedule_[0]  # the median's: the bandwidth that transports

    def half_mmd2(est, h):
        return 0.5 * mmd(est.particles_, y, bandwidth=h, x_weights=est.weights_)

    # at the fitted (final) bandwidth and at the transport bandwidth
    assert half_mmd2(ift, ift.bandwidth_) <= half_mmd2(mmd_flow, ift.bandwidth_) / 10
    assert half_mmd2(ift, wide) <= half_mmd2(mmd_flow, wide) / 10

    def ed(est):
        return energy_distance(est.particles_, y_test, x_weights=est.weights_)

    assert ed(ift) <= ed(mmd_flow)
    assert 1.0 / np.sum(wfr.weights_**2) >= 200 / 4
    # WFR ends between the two
    assert ed(ift) <= ed(wfr) <= ed(mmd_flow)
    h = ift.bandwidth_
    assert half_mmd2(ift, h) <= half_mmd2(wfr, h) <= half_mmd2(mmd_flow, h)
    # the stopping rule, in the last (fine-bandwidth) phase: at least 90% of the decrease
    # that running to max_iter achieves
    n_first = int(np.sum(ift.bandwidth_schedule_ == wide))
    start = ift.loss_curve_[n_first + 1]
    assert ift.n_iter_ < ift_all.n_iter_ == 500
    done = start - ift.loss_curve_[-1]
    assert done >= 0.9 * (start - ift_all.loss_curve_[-1])
