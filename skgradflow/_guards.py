"""Guards that keep a failure from leaving damage: a fit that raises leaves the estimator as
it was, and a draw too large for memory is refused before anything is allocated."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np


@contextlib.contextmanager
def fit_transaction(estimator) -> Iterator[None]:
    """Run a fit as a transaction: if the block raises anything (``KeyboardInterrupt``
    included), the estimator's attributes are put back as they were before it.

    The parameters keep their identity (scikit-learn's ``clone`` checks it); every other
    attribute is restored as saved, arrays from a copy taken before the block, since a fit
    may update the arrays of a previous fit in place (``warm_start``).
    """
    saved = dict(vars(estimator))
    params = set(estimator._get_param_names())
    copies = {
        name: value.copy()
        for name, value in saved.items()
        if name not in params and isinstance(value, np.ndarray)
    }
    try:
        yield
    except BaseException:
        state = vars(estimator)
        state.clear()
        state.update(saved)
        state.update(copies)
        raise


class SampleSizeError(MemoryError, ValueError):
    """A request for more samples than this machine's memory holds.  A ``MemoryError``,
    and a ``ValueError`` for the code that handles bad arguments."""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: ``MemAvailable``), else the
    physical memory, else None when the system does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n_bytes < 1024 or unit == "PiB":
            return f"{n_bytes:.3g} {unit}" if unit != "bytes" else f"{int(n_bytes)} bytes"
        n_bytes /= 1024
    raise AssertionError  # pragma: no cover


def check_sample_size(n_samples: int, n_features: int, dtype, *, copies: int = 2) -> None:
    """Raise :class:`SampleSizeError` when ``n_samples`` rows of ``n_features`` values of
    ``dtype`` (``copies`` arrays of that size at once: the draw and its noise) would not fit
    in the memory available now: an error in a second, instead of a process that swaps
    until it is killed."""
    available = available_memory()
    row = int(n_features) * np.dtype(dtype).itemsize + 8  # and the row's index (int64)
    need = float(n_samples) * row * copies
    if available is not None and need > available:
        raise SampleSizeError(
            f"n_samples={n_samples} would need about {_size(need)} of memory "
            f"({n_samples} rows of {n_features} features, {copies} arrays at once), more than "
            f"the {_size(available)} available. Draw fewer at a time, e.g. in batches of "
            f"{max(1, int(available // (4 * row * copies)))}."
        )


def representable_range(dtype) -> tuple[float, float]:
    """The scales ``(lo, hi)`` whose squares, summed over features and divided by one
    another, stay normal numbers of ``dtype``: a margin of 10⁴ inside the square roots of
    its smallest normal and largest finite number (float64: 1.5e-150 to 1.3e150)."""
    info = np.finfo(dtype)
    return float(np.sqrt(info.tiny)) * 1e4, float(np.sqrt(info.max)) / 1e4


def check_data_range(max_abs: float, spread: float, dtype, name: str = "X") -> None:
    """Refuse data whose squared distances floating point cannot hold.

    ``max_abs`` is the largest absolute value, ``spread`` the largest range (maximum less
    minimum) of a feature.  Values beyond ``hi`` (:func:`representable_range`) overflow
    when squared; a spread below ``lo`` (but not 0: identical rows are data) underflows, and
    every distance becomes 0.
    """
    lo, hi = representable_range(dtype)
    dtype_name = np.dtype(dtype).name
    if not max_abs <= hi:
        raise ValueError(
            f"{name} holds values up to {max_abs:.3g} in absolute value: the flows work with "
            f"squared distances, which {dtype_name} holds only for values up to about "
            f"{hi:.0e}. Rescale {name} (divide it by {max_abs:.0e}, or use "
            "sklearn.preprocessing.StandardScaler) and map the samples back."
        )
    if 0 < spread < lo:
        raise ValueError(
            f"{name} varies by only {spread:.3g} (the largest range of a feature): the flows "
            f"work with squared distances, which underflow in {dtype_name} below a scale of "
            f"about {lo:.0e}. Rescale {name} (multiply it by {1 / spread:.0e}, or use "
            "sklearn.preprocessing.StandardScaler) and map the samples back."
        )


def check_bandwidth_range(bandwidth: float, dtype, name: str = "bandwidth") -> None:
    """Refuse a bandwidth whose square under- or overflows ``dtype``."""
    lo, hi = representable_range(dtype)
    if not lo <= bandwidth <= hi:
        raise ValueError(
            f"{name}={bandwidth!r} is outside what {np.dtype(dtype).name} can square and divide "
            f"by (about {lo:.0e} to {hi:.0e}); choose a bandwidth on the scale of the data "
            "(or a rule: 'median', 'scott', 'silverman')."
        )

