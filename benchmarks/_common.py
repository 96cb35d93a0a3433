"""What the benchmark scripts share: the synthetic problem they time."""

from __future__ import annotations

import numpy as np

SEED = 0


def make_data(n: int, m: int, d: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``Y``: a 3-component Gaussian mixture; initial particles ``x ~ N(0, I)``."""
    rng = np.random.default_rng(SEED)
    centers = rng.normal(scale=2.0, size=(3, d))
    labels = rng.choice(3, size=m, p=[0.5, 0.3, 0.2])
    Y = centers[labels] + 0.5 * rng.standard_normal((m, d))
    x = rng.standard_normal((n, d))
    return Y.astype(dtype), x.astype(dtype)


def write_file(out: str, text: str) -> None:
    """``text`` to the file ``out``, whole or not at all (a temporary file renamed onto it):
    an interrupted benchmark leaves the previous table."""
    # imported here: a script's parent process may have to keep skgradflow unimported
    from skgradflow._atomic import write_text

    write_text(out, text)


def write_table(table: str, out: str | None) -> None:
    """The markdown table to stdout, and to the file ``out`` when given."""
    import sys

    sys.stdout.write(table)
    if out:
        write_file(out, table)
