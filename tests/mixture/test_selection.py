"""``n_components="auto"``: the held-out comparison against a dense recomputation, and the
choice it makes on data whose right answer is known."""

import threading

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.datasets import make_swiss_roll
from sklearn.utils import check_random_state

from skgradflow import InclusiveKLFitter
from skgradflow.data import as_data
from skgradflow.data._memory import _held_rows
from skgradflow.datasets import load_builtin
from skgradflow.kernels import _seed_from
from skgradflow.mixture._selection import (
    MAX_COMPONENTS,
    n_components_for,
    select_components,
)


def Fitter(n_components="auto", **params):
    """The count's selection alone: isotropic components (``covariance="auto"`` adds the
    tied candidates, tested below)."""
    return InclusiveKLFitter(n_components, **{"covariance": "isotropic", **params})


def dense_log_likelihood(X, means, weights, h):
    """Mean log density of an isotropic Gaussian mixture, from its definition."""
    d = X.shape[1]
    sq = ((X[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    log_phi = -sq / (2 * h * h) - 0.5 * d * np.log(2 * np.pi * h * h)
    return float(np.mean(logsumexp(log_phi + np.log(weights), axis=1)))


def held_out_quarter(n, random_state):
    """The rows the selection holds out of ``n`` distinct, equally weighted rows for an
    estimator of this ``random_state`` (its fit's generator, first draw)."""
    rng = np.random.default_rng(_seed_from(check_random_state(random_state)))
    return _held_rows(n, 0.25, rng)


def thin_roll(n, seed):
    """A 2-D sheet rolled up in 3-D, standardised: kept in detail by one atom per sample."""
    X = make_swiss_roll(n, noise=0.1, random_state=seed)[0]
    return (X - X.mean(0)) / X.std(0)


def diffuse_cloud(n, seed, d=30):
    """A standard Gaussian in 30 dimensions: at a fixed width, atoms that pool many
    samples generalise, one per sample overfits."""
    return np.random.default_rng(seed).standard_normal((n, d))


def test_the_comparison_matches_fits_on_the_held_in_rows_scored_densely():
    X = thin_roll(160, 0)
    est = Fitter(random_state=3).fit(X)
    sel = est.component_selection_
    # the same split of the (distinct, equally weighted: kept as given) rows
    held = held_out_quarter(X.shape[0], random_state=3)
    assert held.sum() == 40
    np.testing.assert_array_equal(sel["samples_per_component"], [10, 3, 1])
    np.testing.assert_array_equal(sel["n_components"], [16, 54, 160])
    expected = []
    for k, value in zip([12, 40, 120], sel["held_out_log_likelihood"], strict=True):
        # one per 10, 3 and 1 of the 120 rows held in, with the estimator's random_state
        run = Fitter(n_components=k, random_state=3).fit(X[~held])
        expected.append(dense_log_likelihood(X[held], run.means_, run.weights_,
                                             run.bandwidth_))
        assert value == pytest.approx(expected[-1], rel=1e-9)
    # the fit on all the rows has the count of the best candidate on the held-out rows
    best = [16, 54, 160][int(np.argmax(expected))]
    assert est.n_components_ == best == est.means_.shape[0]


def test_a_candidate_at_the_cap_is_tried_with_as_many_samples_per_component():
    # 1600 rows: one per ten (160) and the cap (500, which one per three and one per row
    # both reach); on the 1200 rows held in the cap is tried as 375 components, not 400
    tried = []
    original = InclusiveKLFitter._fit

    def record(self, data):
        tried.append(self.n_components)
        return original(self, data)

    X = diffuse_cloud(1600, 0, d=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(InclusiveKLFitter, "_fit", record)
        est = Fitter(max_iter=2, tol=0, random_state=0).fit(X)
    np.testing.assert_array_equal(est.component_selection_["n_components"], [160, 500])
    assert tried[:3] == ["auto", 120, 375]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_thin_sheet_keeps_an_atom_per_sample_and_a_diffuse_cloud_pools_them(seed):
    roll = Fitter(random_state=seed).fit(thin_roll(300, seed))
    cloud = Fitter(random_state=seed).fit(diffuse_cloud(300, seed))
    assert roll.n_components_ == 300
    assert cloud.n_components_ == 30
    # and the choice is the better model of new data of each kind
    for est, make in ((roll, thin_roll), (cloud, diffuse_cloud)):
        new = make(2000, seed + 100)
        others = [Fitter(n_components=int(k), random_state=seed).fit(
            make(300, seed)) for k in est.component_selection_["n_components"]
            if k != est.n_components_]
        assert all(est.score(new) > other.score(new) for other in others)


def test_nothing_to_choose_below_twenty_or_from_4991_distinct_samples():
    small = Fitter(random_state=0).fit(thin_roll(19, 0))
    assert small.component_selection_ is None
    assert small.n_components_ == 7  # one per three, rounded up
    # every candidate has MAX_COMPONENTS from 4991 distinct samples: no fit is made
    rng = np.random.default_rng(0)
    large = as_data(rng.standard_normal((4991, 2)), None).merged()
    assert select_components(Fitter(), large, rng, True, ("isotropic",)) is None
    assert Fitter()._n_atoms(large) == MAX_COMPONENTS
    # one sample fewer: one per ten is 499, a choice to make
    assert n_components_for(4990, 10) == 499 and n_components_for(4991, 10) == 500


def test_an_int_an_init_array_and_a_warm_start_are_not_chosen_again():
    X = thin_roll(120, 0)
    assert Fitter(n_components=9, random_state=0).fit(X).component_selection_ is None
    init = Fitter(init=X[:7], random_state=0).fit(X)
    assert init.component_selection_ is None and init.n_components_ == 7
    warm = Fitter(random_state=0, warm_start=True).fit(X)
    chosen = warm.n_components_
    assert warm.component_selection_ is not None
    warm.set_params(max_iter=3)
    with pytest.warns(Warning):  # three iterations: not converged, and said so
        warm.fit(X)
    assert warm.n_components_ == chosen and warm.component_selection_ is None


def test_only_the_final_fit_warns(recwarn):
    # at max_iter=4 every candidate stops unconverged too: one warning, the final fit's
    est = Fitter(max_iter=4, random_state=0).fit(thin_roll(200, 0))
    assert est.component_selection_ is not None
    assert len([w for w in recwarn if "did not converge" in str(w.message)]) == 1


def test_a_callback_sees_the_final_fit_only():
    X = thin_roll(120, 0)
    sizes = []
    est = Fitter(random_state=0, callback=lambda state: sizes.append(
        state.atoms.shape[0])).fit(X)
    assert set(sizes) == {est.n_components_}
    assert len(sizes) == est.n_iter_  # once per iteration of the final fit


@pytest.mark.parametrize("params", [{}, {"n_components": 5, "n_init": 2}])
def test_a_callback_that_cannot_be_copied_is_called_not_copied(params):
    # a method of an object holding a lock: deep-copying it (as clone would) raises
    class Log:
        def __init__(self):
            self.lock, self.calls = threading.Lock(), 0

        def step(self, state):
            with self.lock:
                self.calls += 1

    log = Log()
    est = Fitter(random_state=0, callback=log.step, **params).fit(thin_roll(120, 0))
    assert est.callback == log.step  # the parameter itself, untouched
    runs = params.get("n_init", 1)
    assert log.calls >= est.n_iter_ and (runs > 1 or log.calls == est.n_iter_)


def test_verbose_says_which_count_the_held_out_samples_chose(capsys):
    est = Fitter(random_state=0, verbose=1).fit(thin_roll(120, 0))
    err = capsys.readouterr().err
    sel = est.component_selection_
    assert f"n_components={est.n_components_}, covariance='isotropic' by the held-out" in err
    for k, value in zip(sel["n_components"], sel["held_out_log_likelihood"], strict=True):
        assert f"{k} isotropic: {value:.5g}" in err
    Fitter(random_state=0).fit(thin_roll(120, 0))
    assert "held-out" not in capsys.readouterr().err  # verbose=0 prints nothing


def test_the_leave_one_out_width_of_the_held_in_rows_is_computed_once():
    import skgradflow.mixture._estimator as module

    widths = []
    original = module.leave_one_out_bandwidth

    def counted(data, rng):
        widths.append(original(data, rng))
        return widths[-1]

    X = thin_roll(160, 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "leave_one_out_bandwidth", counted)
        est = Fitter(random_state=0).fit(X)
    # one for the three candidates on the same 120 rows, one for the fit on all 160
    assert len(widths) == 2 and est.bandwidth_ == widths[1]
    held = _held_rows(160, 0.25, np.random.default_rng(_seed_from(check_random_state(0))))
    assert widths[0] == original(as_data(X[~held], None), np.random.default_rng(0))
    assert widths[0] != widths[1]


# --- covariance="auto": isotropic or tied ------------------------------------------------
def correlated_cloud(n, seed, d=8):
    """A Gaussian whose features are strongly correlated (a random covariance with
    variances from 0.01 to 4 along its axes): one shape shared by the components follows
    it, round ones cannot."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(d, d)))[0]
    scales = np.geomspace(0.1, 2.0, d)
    return rng.standard_normal((n, d)) * scales @ basis.T


def dense_mixture_log_likelihood(X, means, weights, covariances):
    """Mean log density of a Gaussian mixture of one shared or per-component covariances
    (``(d, d)`` or ``(k, d, d)``) or variances (``(k,)``), from ``scipy.stats``."""
    from scipy.stats import multivariate_normal

    k, d = means.shape
    cov = np.asarray(covariances)
    shapes = (np.broadcast_to(cov, (k, d, d)) if cov.ndim >= 2
              else cov[:, None, None] * np.eye(d))
    dens = np.stack([multivariate_normal(means[i], shapes[i]).pdf(X) for i in range(k)], 1)
    return float(np.mean(np.log(dens @ weights)))


def test_the_shape_comparison_matches_fits_on_the_held_in_rows_scored_densely():
    X = correlated_cloud(160, 0)
    est = InclusiveKLFitter(random_state=3).fit(X)
    sel = est.component_selection_
    held = held_out_quarter(X.shape[0], random_state=3)
    # every count isotropic, and tied only where it pools at least three samples
    np.testing.assert_array_equal(sel["covariance"], ["isotropic"] * 3 + ["tied"] * 2)
    np.testing.assert_array_equal(sel["samples_per_component"], [10, 3, 1, 10, 3])
    np.testing.assert_array_equal(sel["n_components"], [16, 54, 160, 16, 54])
    expected = []
    for k, mode, value in zip([12, 40, 120, 12, 40], sel["covariance"],
                              sel["held_out_log_likelihood"], strict=True):
        run = InclusiveKLFitter(n_components=k, covariance=str(mode),
                                random_state=3).fit(X[~held])
        expected.append(dense_mixture_log_likelihood(X[held], run.means_, run.weights_,
                                                     run.covariances_))
        assert value == pytest.approx(expected[-1], rel=1e-8)
    best = int(np.argmax(expected))
    assert sel["chosen"] == best and sel["covariance"][best] == "tied"
    assert est.covariance_mode_ == "tied" and est.covariances_.shape == (8, 8)
    assert est.n_components_ == sel["n_components"][best]


def mixture_2d(n, seed):
    """``n`` rows of the built-in 2-D mixture (components of their own shapes and sizes,
    which no one shared shape fits)."""
    X = load_builtin("gmm2d", random_state=seed)[0]
    return X[np.random.default_rng(seed).permutation(X.shape[0])[:n]]


@pytest.mark.parametrize("seed", [0, 1])
def test_correlated_features_get_the_tied_shape_and_unlike_clusters_round_ones(seed):
    cloud = InclusiveKLFitter(random_state=seed).fit(correlated_cloud(400, seed))
    clusters = InclusiveKLFitter(random_state=seed).fit(mixture_2d(400, seed))
    assert cloud.covariance_mode_ == "tied" and clusters.covariance_mode_ == "isotropic"
    # and each choice is the better model of new data of its kind than the other mode at
    # the count the held-out comparison gave that mode
    for est, make, n in ((cloud, correlated_cloud, 400), (clusters, mixture_2d, 400)):
        sel = est.component_selection_
        other = [k for k in range(len(sel["covariance"]))
                 if sel["covariance"][k] != est.covariance_mode_]
        best_other = max(other, key=lambda k: sel["held_out_log_likelihood"][k])
        rival = InclusiveKLFitter(n_components=int(sel["n_components"][best_other]),
                                  covariance=str(sel["covariance"][best_other]),
                                  random_state=seed).fit(make(n, seed))
        new = make(2000, seed + 100)
        assert est.score(new) > rival.score(new)


def test_a_given_count_still_chooses_the_shape_and_few_samples_are_isotropic():
    X = correlated_cloud(200, 0)
    est = InclusiveKLFitter(n_components=12, random_state=0).fit(X)
    sel = est.component_selection_
    np.testing.assert_array_equal(sel["covariance"], ["isotropic", "tied"])
    np.testing.assert_array_equal(sel["samples_per_component"], [0, 0])
    np.testing.assert_array_equal(sel["n_components"], [12, 12])
    assert est.n_components_ == 12 and est.covariance_mode_ == sel["covariance"][sel["chosen"]]
    init = InclusiveKLFitter(init=X[:7], random_state=0).fit(X)  # an init array: its rows
    np.testing.assert_array_equal(init.component_selection_["n_components"], [7, 7])
    assert init.n_components_ == 7
    few = InclusiveKLFitter(random_state=0).fit(X[:19])
    assert few.component_selection_ is None and few.covariance_mode_ == "isotropic"
    assert np.ndim(few.covariances_) == 1


def test_a_warm_start_keeps_the_chosen_shape():
    X = correlated_cloud(200, 0)
    warm = InclusiveKLFitter(random_state=0, warm_start=True).fit(X)
    assert warm.covariance_mode_ == "tied"
    first = warm.covariances_.copy()
    warm.fit(X[::-1])  # the same rows: the run resumes where it ended
    assert warm.covariance_mode_ == "tied" and warm.component_selection_ is None
    assert warm.covariances_.shape == first.shape
    np.testing.assert_allclose(warm.covariances_, first, atol=0.02 * np.abs(first).max())


def test_a_given_mode_is_kept():
    X = correlated_cloud(200, 0)
    for mode in ("isotropic", "data", "tied", "full"):
        est = InclusiveKLFitter(n_components=6, covariance=mode, random_state=0).fit(X)
        assert est.covariance_mode_ == mode and est.component_selection_ is None


def test_an_init_array_of_more_rows_than_the_held_in_samples_is_tried_whole():
    # 40 rows, 30 held in: the 35 given atoms are the candidates' atoms, not 30 of them
    X = correlated_cloud(40, 0)
    est = InclusiveKLFitter(n_components=35, init=X[:35], random_state=0).fit(X)
    assert est.n_components_ == 35
    np.testing.assert_array_equal(est.component_selection_["n_components"], [35, 35])


def test_a_candidate_whose_fit_fails_is_left_out_of_the_comparison(monkeypatch):
    X = correlated_cloud(200, 0)
    original = InclusiveKLFitter._fit

    def tied_fails(self, data):
        if self.covariance == "tied":
            raise np.linalg.LinAlgError("a shape rounded past positive definiteness")
        return original(self, data)

    monkeypatch.setattr(InclusiveKLFitter, "_fit", tied_fails)
    est = InclusiveKLFitter(random_state=0).fit(X)
    sel = est.component_selection_
    tied = sel["covariance"] == "tied"
    assert np.all(sel["held_out_log_likelihood"][tied] == -np.inf)
    assert np.all(np.isfinite(sel["held_out_log_likelihood"][~tied]))
    assert est.covariance_mode_ == "isotropic" and np.ndim(est.covariances_) == 1
    # and where every candidate fails, the first failure is the error
    def every_candidate_fails(self, data):
        if self.covariance != "auto":  # the candidates, not the estimator choosing them
            raise FloatingPointError(f"step_size gives no finite step ({self.covariance})")
        return original(self, data)

    monkeypatch.setattr(InclusiveKLFitter, "_fit", every_candidate_fails)
    with pytest.raises(FloatingPointError, match=r"no finite step \(isotropic\)"):
        InclusiveKLFitter(random_state=0).fit(X)
