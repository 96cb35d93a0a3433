import numpy as np
import pytest

from tests.helpers import is_slow, three_mode_mixture


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def mixture_split():
    """Standardised train / held-out samples of a 2-D three-component mixture."""
    rng = np.random.default_rng(0)
    X = three_mode_mixture(800, rng)
    X_test = three_mode_mixture(800, rng)
    mean, std = X.mean(axis=0), X.std(axis=0)
    return (X - mean) / std, (X_test - mean) / std


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
