"""verbose: a progress bar with the energy, plain text without tqdm, silence at 0."""

import builtins
import re

import numpy as np
import pytest

from skgradflow import IFTSampler, InclusiveKLFitter, WFRMMDFlow

X = np.random.default_rng(0).normal(size=(120, 2))


@pytest.mark.parametrize("cls", [IFTSampler, WFRMMDFlow])
def test_verbose_zero_prints_nothing(cls, capsys):
    cls(n_particles=20, max_iter=10, tol=0, verbose=0).fit(X)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_verbose_shows_a_bar_with_the_energy(capsys):
    pytest.importorskip("tqdm")
    est = InclusiveKLFitter(n_components=10, max_iter=10, tol=0, verbose=1).fit(X)
    err = capsys.readouterr().err
    assert "InclusiveKLFitter" in err and "energy" in err
    final = re.search(r"stopped after (\d+) iterations, energy (\S+)", err)
    assert final and int(final.group(1)) == est.n_iter_ == 10
    assert float(final.group(2)) == pytest.approx(est.loss_curve_[-1], rel=1e-5)


def test_plain_text_progress_without_tqdm(capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    est = IFTSampler(n_particles=20, max_iter=40, tol=0, verbose=1).fit(X)
    lines = capsys.readouterr().err.strip().splitlines()
    iteration_lines = [line for line in lines if re.search(r"iteration \d+/", line)]
    assert len(iteration_lines) == 20  # every max_iter // 20 = 2 iterations
    last = re.search(r"iteration 40/40, energy (\S+)", iteration_lines[-1])
    assert last and float(last.group(1)) == pytest.approx(est.loss_curve_[-1], rel=1e-5)
