"""The data layer: validation, the canonical form (repeated rows merged into weights), and
the statistics every estimator takes from it, against direct NumPy computations."""

import numpy as np
import pytest

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow
from skgradflow.data import InMemoryData, as_data
from skgradflow.kernels import median_heuristic, resolve_bandwidth


@pytest.fixture
def repeated(rng):
    X = rng.normal(size=(15, 3))
    counts = rng.integers(0, 5, size=15)
    counts[0] = 3  # at least one repeat and one zero below
    counts[1] = 0
    return X, counts


def test_integer_weights_and_repeated_rows_merge_to_the_same_arrays(rng, repeated):
    X, counts = repeated
    weighted = as_data(X, counts).merged()
    rows = rng.permutation(np.repeat(X, counts, axis=0))
    copies = as_data(rows).merged()
    np.testing.assert_array_equal(weighted.rows, copies.rows)
    np.testing.assert_array_equal(weighted.weights, copies.weights)
    # the merged measure is the weighted one: every row of positive count, by its count
    kept = counts > 0
    order = np.lexsort(X[kept].T[::-1])
    np.testing.assert_array_equal(weighted.rows, X[kept][order])
    np.testing.assert_allclose(weighted.weights, counts[kept][order] / counts.sum(), rtol=1e-15)
    assert weighted.n_distinct() == int(kept.sum())


def test_distinct_rows_with_equal_weights_are_kept_as_given(rng):
    X = rng.normal(size=(20, 2))
    data = as_data(X)
    assert data.merged() is data
    np.testing.assert_array_equal(data.rows, X)
    assert data.n_distinct() == 20


@pytest.mark.parametrize("make", [
    lambda: IFTSampler(max_iter=40, random_state=0),
    lambda: WFRMMDFlow(max_iter=40, random_state=0),
    lambda: InclusiveKLFitter(max_iter=40, random_state=0),
    lambda: InclusiveKLFitter(covariance="full", n_components=3, max_iter=20, random_state=0),
])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_integer_weights_and_repeated_rows_give_bit_identical_fits(rng, repeated, make):
    X, counts = repeated
    rows = rng.permutation(np.repeat(X, counts, axis=0))
    by_weight, by_copy = make().fit(X, sample_weight=counts), make().fit(rows)
    attr = "means_" if isinstance(by_weight, InclusiveKLFitter) else "particles_"
    np.testing.assert_array_equal(getattr(by_weight, attr), getattr(by_copy, attr))
    np.testing.assert_array_equal(by_weight.weights_, by_copy.weights_)
    np.testing.assert_array_equal(by_weight.loss_curve_, by_copy.loss_curve_)


def test_statistics_match_direct_computations(rng):
    X = rng.normal(size=(300, 4)) * [1.0, 2.0, 0.5, 3.0]
    w = rng.uniform(0.1, 2.0, size=300)
    data = as_data(X, w)
    b = w / w.sum()
    mean = b @ X
    cov = (X - mean).T @ ((X - mean) * b[:, None])
    got_mean, got_cov = data.mean_covariance()
    np.testing.assert_allclose(got_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(got_cov, cov, rtol=1e-12)
    _, root = data.moments()
    np.testing.assert_allclose(root @ root.T, cov, rtol=1e-10, atol=1e-12)
    assert data.effective_size() == pytest.approx(1.0 / np.sum(b**2), rel=1e-12)
    assert data.root_mean_variance() == pytest.approx(np.sqrt(np.trace(cov) / 4), rel=1e-12)
    rule = resolve_bandwidth("scott", X, b)
    assert data.bandwidth("scott", np.random.default_rng(0)) == pytest.approx(rule, rel=1e-12)
    assert data.bandwidth("median", np.random.default_rng(0)) == median_heuristic(X, b)
    assert data.bandwidth(0.3, np.random.default_rng(0)) == 0.3


def test_draws_follow_the_weights(rng):
    X = np.arange(4.0)[:, None]
    data = as_data(X, [0.0, 1.0, 0.0, 3.0])
    drawn = data.draw(4000, np.random.default_rng(0))[:, 0]
    assert set(np.unique(drawn)) == {1.0, 3.0}
    assert np.mean(drawn == 3.0) == pytest.approx(0.75, abs=0.03)
    # "subsample" draws without replacement while there are enough rows of positive weight
    picked = data.subsample(2, np.random.default_rng(0))[:, 0]
    assert sorted(picked) == [1.0, 3.0]


def test_rows_by_hash_depend_on_the_rows_values_only(rng):
    """The rows of smallest hash, in hash order: the same for a permuted copy, a float32
    copy's float64 values, and ``-0.0`` for ``0.0``; all of them when ``size`` exceeds the
    rows; another seed picks other rows; the hash is a function of each row's values."""
    from skgradflow.data._protocol import row_hashes

    X = rng.normal(size=(500, 4))
    X[0, 1] = 0.0
    chosen = as_data(X).rows_by_hash(40, 3)
    assert chosen.shape == (40, 4) and chosen.dtype == np.float64
    np.testing.assert_array_equal(as_data(rng.permutation(X)).rows_by_hash(40, 3), chosen)
    hashes = row_hashes(X, 3)
    # the 40 smallest hashes, in increasing order (rows of X, each once)
    chosen_hashes = row_hashes(chosen, 3)
    assert np.all(np.diff(chosen_hashes.astype(np.float64)) > 0)
    assert np.count_nonzero(hashes <= chosen_hashes[-1]) == 40
    assert all(np.any(np.all(X == row, axis=1)) for row in chosen)
    assert len(np.unique(hashes)) == 500
    negative = X.copy()
    negative[0, 1] = -0.0
    assert row_hashes(negative, 3)[0] == hashes[0]
    assert row_hashes(X[:1] + 1e-15, 3)[0] != hashes[0]
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(as_data(X32).rows_by_hash(40, 3),
                                  as_data(X32.astype(np.float64)).rows_by_hash(40, 3))
    everything = as_data(X).rows_by_hash(10_000, 3)
    np.testing.assert_array_equal(np.sort(everything, axis=0), np.sort(X, axis=0))
    other = as_data(X).rows_by_hash(40, 4)
    assert len({tuple(r) for r in other} & {tuple(r) for r in chosen}) < 20
    # equal rows hash alike, and come together
    doubled = np.vstack([X, X[:250]])
    assert np.array_equal(row_hashes(doubled, 3)[500:], hashes[:250])
    pairs = as_data(rng.permutation(doubled)).rows_by_hash(750, 3)
    repeated = [i for i in range(749) if np.array_equal(pairs[i], pairs[i + 1])]
    assert len(repeated) == 250


@pytest.mark.parametrize("n, n_held", [(2, 1), (7, 2), (400, 100)])
def test_held_out_parts_split_the_rows_and_keep_their_weights(n, n_held):
    X = np.random.default_rng(n).normal(size=(n, 3))
    w = np.random.default_rng(n + 1).uniform(0.1, 2.0, size=n)
    rest, held = as_data(X, w).held_out(0.25, np.random.default_rng(0))
    assert held.n_samples == n_held
    assert rest.n_samples + held.n_samples == n
    # every row in exactly one part, with its weight renormalised within the part
    for part in (rest, held):
        at = [int(np.flatnonzero(np.all(X == row, axis=1))[0]) for row in part.rows]
        np.testing.assert_allclose(part.weights, w[at] / w[at].sum(), rtol=1e-12)
    both = np.concatenate([rest.rows, held.rows])
    assert len(np.unique(both, axis=0)) == n
    # uniform over rows whatever their weight: the heavy half is held no more often
    heavy = as_data(np.arange(1000.0)[:, None], np.r_[np.full(500, 100.0), np.ones(500)])
    _, held = heavy.held_out(0.25, np.random.default_rng(1))
    assert abs(np.mean(held.rows[:, 0] < 500) - 0.5) < 0.1


def test_pooled_signed_quadratic_form_is_the_squared_mmd(rng):
    from skgradflow.kernels import Kernel

    X, Y = rng.normal(size=(30, 2)), rng.normal(size=(20, 2)) + 1.0
    pool = as_data(X).pooled_with(as_data(Y))
    value, size = pool.quadratic_form(Kernel("gaussian", 1.0), "numpy")
    P = np.concatenate([X, Y])
    a = np.r_[np.full(30, 1 / 30), -np.full(20, 1 / 20)]
    K = np.exp(-0.5 * ((P[:, None] - P[None]) ** 2).sum(-1))
    assert value == pytest.approx(a @ K @ a, rel=1e-12)
    assert size == pytest.approx(np.abs(a) @ K @ np.abs(a), rel=1e-12)


def test_weights_are_checked_with_their_name():
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"x_weights must have shape \(3,\)"):
        as_data(X, [1.0, 2.0], weights_name="x_weights")
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        as_data(X, [1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match="sample_weight must have a positive sum"):
        as_data(X, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="sample_weight"):
        as_data(X, [1.0, np.nan, 1.0])
    with pytest.raises(TypeError, match="sparse"):
        import scipy.sparse as sp

        as_data(sp.csr_matrix(X))


def test_data_is_never_modified_in_place(rng):
    X = rng.normal(size=(10, 2))
    X[3] = X[2]
    before = X.copy()
    as_data(X, np.arange(10.0)).merged()
    np.testing.assert_array_equal(X, before)
    assert isinstance(as_data(X), InMemoryData)
