"""systematic_draw against the counts that define systematic resampling."""

import numpy as np
import pytest

from skgradflow._flow._draws import systematic_draw


@pytest.mark.parametrize("n_atoms", [1, 2, 7, 50])
def test_every_batch_draws_each_atom_its_weight_rounded(n_atoms):
    """Every batch of N draws takes atom i ⌊N w_i⌋ or ⌈N w_i⌉ times, and a draw's
    probability of being atom i is w_i (first draws of many batches)."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.1, 1.0, n_atoms)
    weights /= weights.sum()
    n_batches = 4000
    drawn = systematic_draw(weights, n_batches * n_atoms, rng).reshape(n_batches, n_atoms)
    counts = np.stack([np.bincount(batch, minlength=n_atoms) for batch in drawn])
    expected = n_atoms * weights
    assert np.all((counts == np.floor(expected)) | (counts == np.ceil(expected)))
    first = np.bincount(drawn[:, 0], minlength=n_atoms) / n_batches
    np.testing.assert_allclose(first, weights, atol=4 * np.sqrt(0.25 / n_batches))


def test_a_cut_batch_and_atoms_without_weight():
    rng = np.random.default_rng(1)
    weights = np.array([0.0, 0.5, 0.0, 0.5, 0.0])
    drawn = systematic_draw(weights, 12, rng)
    assert drawn.shape == (12,)
    assert set(drawn.tolist()) == {1, 3}
    # two whole batches (5 draws each, two or three of each atom) and two draws of a third
    for batch in (drawn[:5], drawn[5:10]):
        assert sorted(np.bincount(batch, minlength=5)[[1, 3]].tolist()) == [2, 3]
    np.testing.assert_array_equal(systematic_draw(weights, 12, np.random.default_rng(1)),
                                  drawn)
