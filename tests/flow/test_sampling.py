"""sample(n) of the MMD samplers: n new, distinct points that follow the fitted measure, at a
cost linear in n; weighted draws of the particles on request."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from skgradflow import IFTSampler, WFRMMDFlow
from skgradflow._flow._draws import systematic_draw
from skgradflow.backends import NumpyBackend
from skgradflow.data import as_data
from skgradflow.metrics import energy_distance
from tests.helpers import three_mode_mixture

SAMPLERS = pytest.mark.parametrize("cls", [IFTSampler, WFRMMDFlow])


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    X, X_test = three_mode_mixture(2000, rng), three_mode_mixture(2000, rng)
    mean, std = X.mean(axis=0), X.std(axis=0)
    return (X - mean) / std, (X_test - mean) / std


@SAMPLERS
def test_new_samples_are_distinct_and_as_good_as_the_particles(cls, split):
    X, X_test = split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cls(n_particles=150, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the capped sampling flow warns about nothing
        new = est.sample(450, random_state=0)
    assert new.shape == (450, 2) and new.dtype == est.particles_.dtype
    assert len(np.unique(new, axis=0)) >= 0.95 * 450
    # not copies of the particles
    nearest = np.linalg.norm(new[:, None] - est.particles_[None], axis=2).min(axis=1)
    assert np.mean(nearest > 1e-9) >= 0.95
    weighted = energy_distance(est.particles_, X_test, x_weights=est.weights_)
    assert energy_distance(new, X_test) <= 1.5 * weighted + 0.01
    # reproducible, and different seeds give different points
    np.testing.assert_array_equal(new, est.sample(450, random_state=0))
    assert not np.allclose(new, est.sample(450, random_state=1))


def test_particle_draws_on_request(split):
    X, _ = split
    est = IFTSampler(n_particles=30, max_iter=20, tol=0, random_state=0).fit(X)
    draws = est.sample(500, random_state=0, method="particles")
    dist = np.linalg.norm(draws[:, None] - est.particles_[None], axis=2).min(axis=1)
    assert np.all(dist == 0.0)  # every draw is a particle
    rows = np.argmin(np.linalg.norm(draws[:, None] - est.particles_[None], axis=2), axis=1)
    counts = np.bincount(rows, minlength=30) / 500
    assert np.abs(counts - est.weights_).max() < 0.08  # drawn by weight
    with pytest.raises(ValueError, match="method must be"):
        est.sample(3, method="copies")
    with pytest.raises(ValueError, match="n_samples"):
        est.sample(0)


class PairCounter(NumpyBackend):
    """NumPy, counting the kernel pairs it evaluates."""

    name = "pair-counter"

    def __init__(self):
        self.pairs = 0

    def matvec(self, kernel, Z, S, V):
        self.pairs += Z.shape[0] * S.shape[0]
        return super().matvec(kernel, Z, S, V)

    def value_grad(self, kernel, Z, S, V, a):
        self.pairs += Z.shape[0] * S.shape[0]
        return super().value_grad(kernel, Z, S, V, a)


def test_the_cost_grows_linearly_with_n(split):
    X, _ = split
    counter = PairCounter()
    est = IFTSampler(n_particles=40, max_iter=30, tol=0, random_state=0, backend=counter).fit(X)
    costs = []
    for n in (400, 800, 1600):
        counter.pairs = 0
        est.sample(n, random_state=0)
        costs.append(counter.pairs)
    # batches of n_particles, each moved for a bounded number of iterations
    assert costs[1] <= 2.2 * costs[0] and costs[2] <= 2.2 * costs[1]
    assert costs[2] <= 1600 / 40 * 21 * 4 * 40 * 80  # ≤ 21 evaluations of 4 reductions each


def test_a_constant_feature_stays_constant(split):
    X, _ = split
    X = np.column_stack([X, np.full(len(X), 7.5)])
    est = IFTSampler(n_particles=50, max_iter=30, tol=0, random_state=0).fit(X)
    new = est.sample(120, random_state=0)
    np.testing.assert_allclose(new[:, 2], 7.5, rtol=0, atol=1e-9)
    assert new[:, :2].std(axis=0).min() > 0.3


@SAMPLERS
def test_new_samples_follow_the_weights(cls):
    """Two particles far apart with weights 1/4 and 3/4: the new points split the same way."""
    X = np.concatenate([np.zeros((50, 2)), np.full((150, 2), 6.0)])
    est = cls(n_particles=20, max_iter=5, tol=0, bandwidth=1.0, random_state=0).fit(X)
    w = np.zeros(20)
    w[[3, 8]] = [0.25, 0.75]
    est.particles_ = est.particles_.copy()
    est.particles_[3], est.particles_[8] = (0.0, 0.0), (6.0, 6.0)
    est.weights_ = w
    # the transport draws use the particles as they are now (the smoothed measure is built
    # at fit: test_smoothed_samples_carry_the_mass_of_each_mode)
    new = est.sample(2000, random_state=0, method="transport")
    near8 = np.linalg.norm(new - est.particles_[8], axis=1) < 3.0
    near3 = np.linalg.norm(new - est.particles_[3], axis=1) < 3.0
    assert np.all(near3 | near8)
    assert abs(near8.mean() - 0.75) < 0.05


def test_sampling_runs_quietly_even_when_the_fit_is_verbose(split, capsys):
    X, _ = split
    est = IFTSampler(n_particles=30, max_iter=10, tol=0, random_state=0, verbose=1).fit(X)
    assert "IFTSampler" in capsys.readouterr().err  # the fit reported its progress
    est.sample(200, random_state=0)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_the_main_job_gives_samples_as_good_as_real_rows(tmp_path):
    """``skgradflow sample --estimator ift --data gmm2d --n-samples 1000``: the energy distance
    of the samples to a fresh draw is at most 3x that of 1000 real rows, and every mode has
    its mass, spread and correlation (the components' parameters, written out here)."""
    from skgradflow import cli
    from skgradflow.datasets import load_builtin

    out = tmp_path / "samples.csv"
    args = ["sample", "--estimator", "ift", "--data", "gmm2d", "--n-samples", "1000",
            "--out", str(out), "--quiet"]
    assert cli.main(args) == 0
    S = np.loadtxt(out, delimiter=",", skiprows=1)
    X, _ = load_builtin("gmm2d")
    fresh, _ = load_builtin("gmm2d", random_state=1)
    rng = np.random.default_rng(0)
    real = np.mean([energy_distance(X[rng.choice(len(X), 1000, replace=False)], fresh)
                    for _ in range(5)])
    assert energy_distance(S, fresh) <= 3 * real
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    covs = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.3], [0.3, 0.6]],
                     [[1.2, -0.4], [-0.4, 0.5]]])
    d2 = np.stack([np.einsum("ij,jk,ik->i", S - m, np.linalg.inv(c), S - m)
                   for m, c in zip(means, covs, strict=True)], axis=1)
    assert np.mean(d2.min(axis=1) > 9.21) <= 0.04  # outside every 99% ellipse (1% expected)
    label = d2.argmin(axis=1)
    np.testing.assert_allclose(np.bincount(label, minlength=3) / 1000, weights, atol=0.03)
    for k in range(3):
        cov = np.cov(S[label == k].T)
        np.testing.assert_allclose(np.diag(cov), np.diag(covs[k]), rtol=0.4)
        corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
        true_corr = covs[k][0, 1] / np.sqrt(covs[k][0, 0] * covs[k][1, 1])
        assert abs(corr - true_corr) <= 0.15


def test_a_short_last_batch_is_not_biased():
    """Fewer samples than particles: the cut batch is a random part of a whole one, so single
    draws land in both of two equally weighted clusters."""
    rng = np.random.default_rng(1)
    X = np.concatenate([np.full((100, 2), -5.0), np.full((100, 2), 5.0)])
    X = X + 0.3 * rng.standard_normal((200, 2))
    est = IFTSampler(n_particles=40, max_iter=50, tol=0, random_state=0).fit(X)
    right = sum(est.sample(1, random_state=k)[0, 0] > 0 for k in range(40))
    assert 10 <= right <= 30
    five = est.sample(5, random_state=0)
    assert five.shape == (5, 2)


# --- the smoothed fitted measure (method="smooth", score, score_samples) ----------------------
def quiet(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


@SAMPLERS
def test_smoothed_samples_have_the_data_mean_and_covariance(cls):
    rng = np.random.default_rng(3)
    A = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.3, 0.4]])
    X = np.column_stack([rng.standard_normal((400, 3)) ** 3 @ A.T, np.full(400, 2.5)])
    est = quiet(cls(n_particles=60, max_iter=60, random_state=0), X)
    S = est.sample(200_000, random_state=1)
    # the recolouring makes the expected mean and covariance the data's exactly; 2·10⁵ draws
    # leave a Monte-Carlo error of a few tenths of a percent of the largest variance
    cov = np.cov(X, rowvar=False, bias=True)
    np.testing.assert_allclose(S.mean(axis=0), X.mean(axis=0), atol=0.01 * np.sqrt(cov[0, 0]))
    np.testing.assert_allclose(np.cov(S, rowvar=False), cov, atol=0.02 * cov.max())
    # no spread where the data has none
    np.testing.assert_allclose(S[:, 3], 2.5, rtol=0, atol=1e-12)


def wine_split(seed=0):
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X_train, X_holdout = train_test_split(load_wine().data, test_size=0.3, random_state=seed)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_holdout)


@SAMPLERS
def test_smoothed_samples_are_as_new_as_held_out_rows_where_particles_copy_rows(cls):
    """Wine (124 training rows, 13 features): with a particle per row, the particles and
    the earlier jitter-and-transport samples sit on the training rows."""
    from skgradflow.metrics import distance_to_closest_record_ratio

    X_train, X_holdout = wine_split()
    est = quiet(cls(random_state=0), X_train)
    n = X_train.shape[0]
    transport = est.sample(n, random_state=0, method="transport")
    assert distance_to_closest_record_ratio(transport, X_train, X_holdout) < 0.5
    smooth = est.sample(n, random_state=0)
    assert distance_to_closest_record_ratio(smooth, X_train, X_holdout) >= 0.9


def test_score_samples_is_the_density_sample_draws_from(split):
    """exp(score_samples) integrates to 1, and gives the share of samples in a box."""
    X, _ = split
    est = quiet(IFTSampler(n_particles=80, max_iter=80, random_state=0), X[:600])
    grid = np.linspace(-4.0, 4.0, 321)
    gx, gy = np.meshgrid(grid, grid, indexing="ij")
    density = np.exp(est.score_samples(np.column_stack([gx.ravel(), gy.ravel()])))
    density = density.reshape(gx.shape)
    step = grid[1] - grid[0]
    assert density.sum() * step * step == pytest.approx(1.0, abs=0.01)
    S = est.sample(100_000, random_state=0)
    box = (grid >= -1.0) & (grid <= 0.5)
    # the trapezoid-free Riemann sum over the closed box, against the samples' share
    expected = density[np.ix_(box, box)].sum() * step * step
    inside = np.mean((S[:, 0] >= -1.0 - step / 2) & (S[:, 0] <= 0.5 + step / 2)
                     & (S[:, 1] >= -1.0 - step / 2) & (S[:, 1] <= 0.5 + step / 2))
    assert inside == pytest.approx(expected, abs=0.01)
    # score is the mean of score_samples, weighted by sample_weight
    sw = np.linspace(1.0, 2.0, 50)
    assert est.score(X[600:650], sample_weight=sw) == pytest.approx(
        np.average(est.score_samples(X[600:650]), weights=sw), rel=1e-12)


def test_default_score_ranks_a_memorising_fit_below_a_generalising_one():
    """GridSearchCV with the default score: the candidate whose samples are near-copies of
    its training rows (a smoothing width of 0.03) must rank below the automatic width.  The
    energy distance, which rewards copies, does not tell them apart."""
    from sklearn.model_selection import GridSearchCV

    from skgradflow.metrics import distance_to_closest_record_ratio, make_distribution_scorer

    X_train, X_holdout = wine_split()
    sampler = IFTSampler(max_iter=100, random_state=0)
    grid = {"smoothing": [0.03, "auto"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(sampler, grid, cv=3).fit(X_train)
        by_energy = GridSearchCV(sampler, grid, cv=3,
                                 scoring=make_distribution_scorer()).fit(X_train)
    memorising = quiet(IFTSampler(max_iter=100, random_state=0, smoothing=0.03), X_train)
    copies = memorising.sample(X_train.shape[0], random_state=0)
    assert distance_to_closest_record_ratio(copies, X_train, X_holdout) < 0.5
    assert search.best_params_ == {"smoothing": "auto"}
    assert list(search.cv_results_["rank_test_score"]) == [2, 1]
    # the two candidates differ only in how they sample: the same fitted measure
    energy = by_energy.cv_results_["mean_test_score"]
    assert energy[0] == energy[1]


@SAMPLERS
def test_smoothed_samples_carry_the_mass_of_each_mode(cls):
    """Two separated clusters of 50 and 150 rows: the samples split as the fitted measure's
    mass within 0.01 (systematic resampling; independent draws of 4000 would have a spread of
    0.007), and the fitted mass is the data's 1/4, 3/4 within 0.05."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(50, 2)), 8.0 + rng.normal(size=(150, 2))])
    est = quiet(cls(n_particles=40, max_iter=100, random_state=0), X)
    new = est.sample(4000, random_state=0)
    far = np.linalg.norm(new - 8.0, axis=1) < np.linalg.norm(new, axis=1)
    mass = est.weights_[np.linalg.norm(est.particles_ - 8.0, axis=1)
                        < np.linalg.norm(est.particles_, axis=1)].sum()
    assert mass == pytest.approx(0.75, abs=0.05)  # the fit has about the mass of the data
    assert far.mean() == pytest.approx(mass, abs=0.01)


def test_nearest_distances_match_a_kd_tree():
    from scipy.spatial import cKDTree

    from skgradflow._flow import _sampling

    rng = np.random.default_rng(0)
    rows, queries = rng.normal(size=(700, 5)), rng.normal(size=(300, 5))
    tree = cKDTree(rows)
    np.testing.assert_allclose(_sampling._nearest_distance(queries, rows),
                               tree.query(queries)[0], rtol=1e-10)
    # the first rows as queries, each skipping itself: its second neighbour in the tree
    np.testing.assert_allclose(_sampling._nearest_distance(rows[:200], rows, skip_self=True),
                               tree.query(rows[:200], k=2)[0][:, 1], rtol=1e-10)


def test_the_width_is_the_smallest_of_the_grid_whose_samples_are_as_new_as_rows(monkeypatch):
    """A scan of the whole grid, with scipy's k-d tree for every distance, finds the width the
    bisection finds, from the same draws (the samples' distance grows with the width, so the
    first width far enough is the one)."""
    from scipy.spatial import cKDTree

    from skgradflow._flow import _sampling

    monkeypatch.setattr(_sampling, "_FLOOR_DRAWS", 500)
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(300, 3)), 5.0 + rng.normal(size=(200, 3))])
    est = quiet(IFTSampler(n_particles=150, max_iter=40, random_state=0), X)
    atoms, w = est._fitted_measure()
    data = as_data(X).merged()
    chosen = _sampling.smoothed_measure(atoms, w, data, "auto", np.random.default_rng(5))

    # the same draws as the rule (all the rows shape the components: n < _SHAPE_MAX_ROWS),
    # then every width of the grid in turn
    rows = np.asarray(data.to_host(), dtype=np.float64)
    tree = cKDTree(rows)

    def ratio(width, picks, normals, probe_rows):
        sm = _sampling.smoothed_measure(atoms, w, data, width, np.random.default_rng(0))
        Z = sm.centres[picks] + np.einsum("nij,nj->ni", sm.factors[picks], normals)
        samples = sm.mean + Z @ sm.colour.T
        new_row = np.median(tree.query(rows[probe_rows], k=2)[0][:, 1])
        return np.median(tree.query(samples)[0]) / new_row

    rng = np.random.default_rng(5)
    probe_rows = rng.choice(len(rows), size=min(500, len(rows)), replace=False,
                            p=data.weights / data.weights.sum())
    weights = chosen.weights
    picks = systematic_draw(weights, 500, rng)
    normals = rng.standard_normal((500, chosen.centres.shape[1]))
    far = [ratio(h, picks, normals, probe_rows) >= _sampling._NEW_ROW_RATIO
           for h in _sampling._WIDTHS]
    assert any(far)
    assert chosen.width == _sampling._WIDTHS[far.index(True)]


def test_the_smoothed_density_matches_scipy():
    """score_samples: log Σ_i w_i N(x; c_i, Σ_i) in the data's units, against scipy's
    multivariate normal densities summed one by one."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 3)) @ np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0, 0.3, 2.0]])
    est = quiet(IFTSampler(n_particles=40, max_iter=30, random_state=0), X)
    sm = est._smoothed
    points = rng.normal(size=(25, 3))
    expected = np.zeros(len(points))
    for c, F, wi in zip(sm.centres, sm.factors, sm.weights, strict=True):
        # x = mean + B z: the component N(mean + B c, B F Fᵀ Bᵀ) in the data's units
        cov = sm.colour @ F @ F.T @ sm.colour.T
        expected += wi * multivariate_normal(sm.mean + sm.colour @ c, cov).pdf(points)
    np.testing.assert_allclose(est.score_samples(points), np.log(expected), rtol=1e-9)
