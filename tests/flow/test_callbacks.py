"""callback, warm_start, the path recorder and its animation, and the helpers that read a
fitted Pipeline (scorer, plots, samples in the original units)."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow
from skgradflow.callbacks import FlowState, PathRecorder
from skgradflow.inspection import fitted_measure, sample
from skgradflow.metrics import energy_distance, make_distribution_scorer

SPECS = [(IFTSampler, "n_particles", "particles_"), (WFRMMDFlow, "n_particles", "particles_"),
         (InclusiveKLFitter, "n_components", "means_")]
each = pytest.mark.parametrize("cls, n_atoms, atoms", SPECS, ids=[s[0].__name__ for s in SPECS])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return np.concatenate([rng.normal(size=(150, 2)), rng.normal(loc=4.0, size=(150, 2))])


def make(cls, n_atoms, **params):
    kw = {n_atoms: 25, "bandwidth": 0.8, "backend": "numpy", "random_state": 0, "tol": 0}
    kw.update(params)
    return cls(**kw)


# --- callback ---------------------------------------------------------------------------------
@each
def test_callback_sees_every_iteration(cls, n_atoms, atoms, data):
    states = []

    def callback(state):
        assert isinstance(state, FlowState)
        states.append((state.n_iter, np.array(state.atoms), np.array(state.weights),
                       state.energy, state.step_size))

    est = make(cls, n_atoms, max_iter=12, callback=callback).fit(data)
    assert [s[0] for s in states] == list(range(1, est.n_iter_ + 1)) == list(range(1, 13))
    np.testing.assert_array_equal([s[3] for s in states], est.loss_curve_[1:])
    np.testing.assert_array_equal(states[-1][1], getattr(est, atoms))
    np.testing.assert_array_equal(states[-1][2], est.weights_)
    for _, x, w, _, tau in states:
        assert x.shape == (25, 2) and tau > 0
        assert np.all(w >= 0) and abs(w.sum() - 1) <= 1e-10  # the simplex after every step


@each
def test_callback_returning_true_stops_the_run(cls, n_atoms, atoms, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a requested stop is no news
        est = make(cls, n_atoms, max_iter=50, tol=1e-4,
                   callback=lambda state: state.n_iter == 4).fit(data)
    assert est.n_iter_ == 4
    assert est.loss_curve_.shape == (5,)
    assert not est.converged_


def test_the_state_is_read_only(data):
    def vandal(state):
        state.atoms[0, 0] = 1e9

    with pytest.raises(ValueError, match="read-only"):
        make(IFTSampler, "n_particles", max_iter=3, callback=vandal).fit(data)
    # state.particles and state.means are the atoms under both names
    seen = []
    make(IFTSampler, "n_particles", max_iter=2, callback=lambda s: seen.append(
        s.particles is s.atoms and s.means is s.atoms)).fit(data)
    assert seen == [True, True]


def test_path_recorder_every_and_max_iter(data):
    path = PathRecorder(every=3, max_iter=10)
    est = make(IFTSampler, "n_particles", max_iter=40, callback=path).fit(data)
    assert est.n_iter_ == 10
    assert path.n_iter == [3, 6, 9]
    assert len(path.atoms) == len(path.weights) == len(path.energy) == 3
    np.testing.assert_array_equal(path.energy, est.loss_curve_[[3, 6, 9]])
    path.reset()
    assert path.n_iter == [] and path.atoms == []


def test_a_callback_survives_clone_and_grid_search(data):
    path = PathRecorder()
    search = GridSearchCV(make(IFTSampler, "n_particles", max_iter=4, callback=path),
                          {"beta": [0.0, 1.0]}, cv=2)
    search.fit(data)
    # every fit ran with its own clone of the recorder; the refit's holds its 4 iterations
    assert search.best_estimator_.callback.n_iter == [1, 2, 3, 4]


# --- warm start -----------------------------------------------------------------------------
@each
@pytest.mark.parametrize("step_size", [0.2, "auto"])
def test_warm_start_30_plus_30_is_60(cls, n_atoms, atoms, data, step_size):
    one = make(cls, n_atoms, max_iter=60, step_size=step_size).fit(data)
    two = make(cls, n_atoms, max_iter=30, step_size=step_size, warm_start=True)
    two.fit(data)
    half_energy = two.loss_curve_[-1]
    two.fit(data)
    assert two.n_iter_ == 30 and two.loss_curve_.shape == (31,)
    np.testing.assert_allclose(getattr(two, atoms), getattr(one, atoms), rtol=0, atol=1e-8)
    np.testing.assert_allclose(two.weights_, one.weights_, rtol=0, atol=1e-10)
    assert two.step_size_ == one.step_size_
    # the second fit starts where the first ended: no jump in the energy
    assert two.loss_curve_[0] == pytest.approx(half_energy, rel=1e-10)
    np.testing.assert_allclose(two.loss_curve_, one.loss_curve_[30:], rtol=1e-10)


def test_without_warm_start_a_refit_starts_afresh(data):
    est = make(IFTSampler, "n_particles", max_iter=30)
    first = est.fit(data).loss_curve_.copy()
    np.testing.assert_array_equal(est.fit(data).loss_curve_, first)
    # warm_start on an unfitted estimator is a fresh start
    warm = make(IFTSampler, "n_particles", max_iter=30, warm_start=True).fit(data)
    np.testing.assert_array_equal(warm.loss_curve_, first)


def test_warm_start_with_another_number_of_atoms_is_refused(data):
    est = make(IFTSampler, "n_particles", max_iter=3, warm_start=True).fit(data)
    est.set_params(n_particles=40)
    with pytest.raises(ValueError, match="warm_start=True.*n_particles"):
        est.fit(data)


def test_warm_start_under_auto_keeps_the_number_it_resumes_from():
    # "auto" would give 60 particles for the first rows and 90 for all of them: the warm fit
    # continues the 60 it has, from where they are
    X = np.random.default_rng(0).normal(size=(90, 2))
    est = IFTSampler(max_iter=5, tol=0, random_state=0, warm_start=True).fit(X[:60])
    before = est.particles_.copy()
    est.set_params(max_iter=1).fit(X)
    assert est.particles_.shape == (60, 2)
    assert est.loss_curve_.shape == (2,)
    assert np.abs(est.particles_ - before).max() < 0.5  # moved on from there, not restarted


def test_warm_start_can_anneal_the_bandwidth(data):
    """A use of warm_start: a wide bandwidth moves the particles, a narrow one refines."""
    # from the moment-matched Gaussian: a draw of the rows (the default) starts in place
    est = make(IFTSampler, "n_particles", max_iter=30, bandwidth=3.0, warm_start=True,
               init="gaussian")
    est.fit(data)
    coarse = energy_distance(est.particles_, data, x_weights=est.weights_)
    est.set_params(bandwidth=0.5).fit(data)
    assert est.bandwidth_ == 0.5
    assert energy_distance(est.particles_, data, x_weights=est.weights_) < coarse


# --- pipelines ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shifted(data):
    return data * np.array([10.0, 0.1]) + np.array([100.0, -3.0])


@each
def test_scorer_and_measure_on_a_pipeline(cls, n_atoms, atoms, shifted):
    pipe = make_pipeline(StandardScaler(), make(cls, n_atoms, max_iter=10)).fit(shifted)
    final, scaler = pipe[-1], pipe[0]
    scorer = make_distribution_scorer()
    expected = -energy_distance(getattr(final, atoms), scaler.transform(shifted),
                                x_weights=final.weights_)
    assert scorer(pipe, shifted) == pytest.approx(expected, rel=1e-12)
    inside, w = fitted_measure(pipe)
    np.testing.assert_array_equal(inside, getattr(final, atoms))
    outside, w2 = fitted_measure(pipe, original_units=True)
    np.testing.assert_allclose(outside, scaler.inverse_transform(inside))
    np.testing.assert_array_equal(w, w2)
    assert abs(np.average(outside[:, 0], weights=w) - shifted[:, 0].mean()) < 10.0


def test_grid_search_of_a_pipeline_with_the_scorer(shifted):
    pipe = make_pipeline(StandardScaler(), make(IFTSampler, "n_particles", max_iter=5))
    search = GridSearchCV(pipe, {"iftsampler__beta": [0.0, 1.0]}, cv=2,
                          scoring=make_distribution_scorer(), error_score="raise")
    search.fit(shifted)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


@each
def test_samples_in_the_original_units(cls, n_atoms, atoms, shifted):
    pipe = make_pipeline(StandardScaler(), make(cls, n_atoms, max_iter=30)).fit(shifted)
    new = sample(pipe, 2000, random_state=0)
    by_hand = pipe[:-1].inverse_transform(pipe[-1].sample(2000, random_state=0))
    np.testing.assert_array_equal(new, by_hand)
    # the samples follow the data in its own units, not in the scaler's
    np.testing.assert_allclose(new.mean(axis=0), shifted.mean(axis=0),
                               atol=0.15 * shifted.std(axis=0).max())
    assert new[:, 0].std() > 10 * new[:, 1].std()
    # a bare estimator samples as itself
    np.testing.assert_array_equal(sample(pipe[-1], 5, random_state=1),
                                  pipe[-1].sample(5, random_state=1))


def test_original_units_need_inverse_transforms(data):
    pipe = make_pipeline(Normalizer(), make(IFTSampler, "n_particles", max_iter=3)).fit(data)
    with pytest.raises(TypeError, match="inverse_transform"):
        sample(pipe, 3)
    with pytest.raises(TypeError, match="inverse_transform"):
        fitted_measure(pipe, original_units=True)
    with pytest.raises(TypeError, match="particles_ nor means_"):
        fitted_measure(make_pipeline(StandardScaler()).fit(data))


def test_plots_of_a_pipeline(shifted):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skgradflow.plotting import plot_loss_curve, plot_particles

    pipe = make_pipeline(StandardScaler(), make(IFTSampler, "n_particles", max_iter=5))
    pipe.fit(shifted)
    ax = plot_particles(pipe, data=shifted)
    drawn = np.concatenate([c.get_offsets() for c in ax.collections[1:]])
    # in the original units, like the data underneath
    np.testing.assert_allclose(np.sort(drawn[:, 0]),
                               np.sort(pipe[0].inverse_transform(pipe[-1].particles_)[:, 0]))
    ax2 = plot_particles(make_pipeline(Normalizer(), make(IFTSampler, "n_particles",
                                                          max_iter=3)).fit(shifted),
                         data=shifted)
    data_drawn = ax2.collections[0].get_offsets()
    np.testing.assert_allclose(np.linalg.norm(data_drawn, axis=1), 1.0)  # the model's space
    assert len(plot_loss_curve(pipe).lines) == 1
    plt.close("all")


def test_animate_path_writes_one_frame_per_recorded_state(data, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from PIL import Image

    from skgradflow.plotting import animate_path

    path = PathRecorder(every=2)
    make(IFTSampler, "n_particles", max_iter=10, callback=path).fit(data)
    out = tmp_path / "path.gif"
    animate_path(path, out, data=data, fps=5, title="iteration {n_iter}, energy {energy:.2e}")
    with Image.open(out) as gif:
        assert gif.n_frames == 5
    with pytest.raises(ValueError, match="at least one recorded state"):
        animate_path(PathRecorder(), tmp_path / "empty.gif")


# --- the annealed bandwidth's phases --------------------------------------------------------
def test_a_callback_stop_at_the_end_of_the_first_phase_ends_the_run(data):
    # max_iter=50: the first (wide) phase has 5 iterations
    est = IFTSampler(n_particles=20, max_iter=50, tol=0, random_state=0,
                     callback=lambda state: state.n_iter == 5).fit(data)
    assert est.n_iter_ == 5 and est.loss_curve_.shape == (6,)
    assert np.all(est.bandwidth_schedule_ == est.bandwidth_schedule_[0])


def test_a_warm_fit_resumes_at_the_final_bandwidth(data):
    est = IFTSampler(n_particles=20, max_iter=20, tol=0, random_state=0, warm_start=True)
    est.fit(data)
    schedule = est.bandwidth_schedule_
    assert schedule[0] > schedule[-1]  # annealed
    fine, particles = est.bandwidth_, est.particles_.copy()
    est.fit(data)
    np.testing.assert_array_equal(est.bandwidth_schedule_, np.full(20, fine))
    assert not np.array_equal(est.particles_, particles)


def test_the_energy_kernel_has_no_bandwidth_to_anneal(data):
    est = IFTSampler(n_particles=20, max_iter=10, tol=0, kernel="energy").fit(data)
    assert len(np.unique(est.bandwidth_schedule_)) == 1


def test_minibatch_phases_start_from_their_own_step(data):
    est = IFTSampler(n_particles=20, max_iter=10, tol=0, batch_size=50, random_state=0)
    est.fit(data)
    # no safeguard with minibatches: the fine phase must not inherit the wide phase's step
    assert est.step_size_ == pytest.approx(0.5 * est.bandwidth_**2)
    assert est.bandwidth_schedule_[0] > est.bandwidth_


def test_reaction_step_of_every_kind_of_fit(data):
    no_reaction = WFRMMDFlow(n_particles=20, max_iter=5, tol=0, beta=0.0).fit(data)
    assert no_reaction.reaction_step_size_ == 0.0
    # a warm fit that turns the reaction on computes its step (no stale or missing state)
    no_reaction.set_params(beta=1.0, warm_start=True).fit(data)
    assert 0.0 < no_reaction.reaction_step_size_ <= no_reaction.step_size_
    explicit = WFRMMDFlow(n_particles=20, max_iter=5, tol=0, step_size=0.1).fit(data)
    assert explicit.reaction_step_size_ == explicit.step_size_ == 0.1
