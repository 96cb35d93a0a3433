"""What the tests share besides fixtures: the test data, the engines to run on, and the
invariants checked after every iteration."""

from dataclasses import dataclass

import numpy as np
import pytest


def three_mode_mixture(n, rng, centers=((-4.0, 0.0), (4.0, 0.0), (0.0, 5.0)), scale=0.7):
    """Samples of an equal-weight mixture of isotropic Gaussians."""
    centers = np.asarray(centers, dtype=float)
    labels = rng.integers(len(centers), size=n)
    return centers[labels] + scale * rng.standard_normal((n, centers.shape[1]))


def keops_usable() -> bool:
    """Whether KeOps passed its (child-process) probe here."""
    from skgradflow.backends import keops_status

    return keops_status().usable


needs_keops = pytest.mark.skipif(not keops_usable(), reason="KeOps cannot compile here")


def numba_usable() -> bool:
    from skgradflow.backends import numba_installed

    return numba_installed()


needs_numba = pytest.mark.skipif(not numba_usable(), reason="Numba is not installed")


def backend_params():
    """Every registered in-memory backend name, as pytest parameters; the unusable ones
    skipped.

    Tests that take ``backend`` from here run the same checks on every engine.  ``"dask"``
    is not among them: each fit would start a cluster of its own; ``tests/data/test_dask.py`` runs
    the oracle checks and the estimators on one shared cluster instead."""
    from skgradflow.backends import backend_names

    marks = {"keops": [needs_keops], "numba": [needs_numba]}
    return [
        pytest.param(name, marks=marks.get(name, []))
        for name in backend_names()
        if name not in ("auto", "dask")
    ]


BACKENDS = backend_params()


def assert_energy_never_increases(est, slack=1e-12):
    """``loss_curve_`` never goes up within a bandwidth phase (the curve of an annealed fit
    jumps where the bandwidth, hence the energy being measured, changes)."""
    curve = np.asarray(est.loss_curve_)
    schedule = np.asarray(est.bandwidth_schedule_)
    assert schedule.shape == (est.n_iter_,)
    # loss_curve_[k] (k >= 1) is measured at bandwidth_schedule_[k - 1], loss_curve_[0] at the
    # first bandwidth
    in_force = np.r_[schedule[:1], schedule] if schedule.size else np.ones(1)
    same = in_force[1:] == in_force[:-1]
    steps = np.diff(curve)[same]
    assert np.all(steps <= slack), steps[steps > slack]


# Tests of more than about 1.4 s each on 2 cores (``pytest --durations=80``), marked ``slow``
# by conftest.py along with every test that starts processes, a cluster or a KeOps compile:
# ``pytest -m "not slow"`` is the quick subset (CONTRIBUTING.md).
SLOW_TESTS = frozenset({
    "test_a_broken_keops_cache_is_cleared_and_rebuilt",
    "test_a_broken_numba_gets_a_clear_error_and_auto_does_without_it",
    "test_a_crashing_keops_falls_back_to_numpy_or_raises",
    "test_a_damaged_cache_is_discarded_and_rebuilt_with_one_warning",
    "test_a_gpu_only_crash_falls_back_to_keops_on_the_cpu",
    "test_a_minibatch_fit_is_reproducible_and_decreases_the_energy",
    "test_a_slow_first_compile_says_so_once",
    "test_a_worker_killed_mid_fit_is_retried_with_the_same_result",
    "test_all_estimators_on_a_dask_array_match_numpy",
    "test_an_instance_survives_get_params_clone_pickle_and_grid_search",
    "test_anneal_and_auto_counts_on_a_dask_array",
    "test_auto_is_resolved_on_each_worker_for_its_threads",
    "test_blocks_of_every_length_give_the_dense_result",
    "test_broken_pipe_is_silent",
    "test_busy_sibling_processes_do_not_make_all_threads_slower_than_one",
    "test_client_resolution",
    "test_code_blocks_run_as_written",
    "test_compiled_loops_are_cached_on_disk",
    "test_ctrl_c_inside_a_long_reduction_raises_keyboard_interrupt",
    "test_defaults_fit_a_three_mode_mixture",
    "test_defaults_keep_the_science_from_a_far_start",
    "test_digits_in_64_dimensions_stay_finite",
    "test_energy_above_the_start_is_a_failure",
    "test_estimated_constant_is_close_to_the_exact_one",
    "test_far_start_keeps_the_weights_spread_and_beats_the_mmd_flow",
    "test_finite_in_dimension_64",
    "test_fits_match_the_numpy_backend",
    "test_float32_stays_float32_and_tracks_float64",
    "test_grid_search_keops",
    "test_grid_search_keops_n_jobs_2",
    "test_grid_search_keops_n_jobs_2_cold_cache",
    "test_grid_search_numba_n_jobs_2_cold_cache",
    "test_initialisation_and_bandwidth_rules_run_on_the_workers",
    "test_joblib_workers_run_the_reductions_on_their_share_of_the_cores",
    "test_log_domain_reductions_match_dense_formulas",
    "test_matvec_and_value_grad_match_dense_formulas",
    "test_median_heuristic_on_large_inputs_uses_a_subsample",
    "test_metrics_on_dask_input_match_numpy",
    "test_new_samples_are_distinct_and_as_good_as_the_particles",
    "test_nowhere_to_write_the_cache_compiles_in_memory_with_one_warning",
    "test_one_thread_gives_the_result_of_all_threads_and_bad_counts_are_refused",
    "test_pipe_into_head",
    "test_python_dash_m",
    "test_sklearn_estimator_checks",
    "test_the_cost_grows_linearly_with_n",
    "test_the_main_job_gives_samples_as_good_as_real_rows",
    "test_the_polynomial_exponential_is_within_an_ulp",
    "test_the_readme_main_command",
    "test_the_shaped_kernels_on_dask_input",
    "test_threads_calling_at_once_never_abort_the_process",
    "test_transform_moves_points_toward_the_fitted_measure",
    "test_transform_score_and_score_samples_on_dask_input",
    "test_warnings_are_one_line_each",
    "test_without_a_client_a_fit_starts_and_closes_its_own_cluster",
    "test_without_dask_the_error_names_the_extra",
    "test_workers_import_this_checkout",
})
# modules whose every test starts a cluster, child processes or a compile
SLOW_MODULES = frozenset({"test_dask.py", "test_keops_guard.py", "test_docs.py"})


def is_slow(item) -> bool:
    """Whether a collected test belongs to the slow part of the suite."""
    name = getattr(item, "originalname", None) or item.name.split("[")[0]
    return (
        item.path.name in SLOW_MODULES
        or name in SLOW_TESTS
        or "keops" in item.name.lower()
        # scikit-learn's checks of the defaults run every fit for all its iterations
        or ("estimator_checks[" in item.name and "()-" in item.name)
    )


@dataclass(frozen=True)
class EstimatorSpec:
    """One estimator class as the tests of every estimator see it (extended per test module)."""

    cls: type
    n_atoms: str  # the constructor parameter that sets the number of atoms
    atoms: str  # the fitted attribute that holds them

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def is_sampler(self) -> bool:
        """The two MMD samplers (transform, kernel, conserve_mass)."""
        return hasattr(self.cls, "transform")


def plan_only(monkeypatch):
    """``transform`` without its bend: the Gaussian map never counts as landed and the bend
    has no stage, so the transport plan lands every set (what the tests of the plan check,
    and the map the bend is compared with)."""
    from skgradflow._flow import _bend

    monkeypatch.setattr(_bend, "_LANDED_LINEAR", -np.inf)
    monkeypatch.setattr(_bend, "_WIDTHS", ())


def recorded_bends(monkeypatch) -> list:
    """The calls of ``transform``'s bend fit, recorded as ``(rows, aligned rows, whole,
    bend)`` in a list that fills as ``transform`` runs."""
    from skgradflow._flow import _matching

    calls = []
    fit_bend = _matching.fit_bend

    def recording(X, Z, engine, Y, b, whole):
        calls.append((X, Z, whole, fit_bend(X, Z, engine, Y, b, whole)))
        return calls[-1][-1]

    monkeypatch.setattr(_matching, "fit_bend", recording)
    return calls
