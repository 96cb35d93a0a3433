"""Every Python block of the README and of the quick start runs as written, and the README's
main command works."""

import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def markdown_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def rst_blocks(text):
    blocks = []
    for match in re.finditer(r".. code-block:: python\n\n((?:(?:   .*)?\n)+)", text):
        lines = match.group(1).splitlines()
        blocks.append("\n".join(line[3:] for line in lines) + "\n")
    return blocks


@pytest.mark.parametrize("page, extract", [("README.md", markdown_blocks),
                                           ("docs/quickstart.rst", rst_blocks)])
def test_code_blocks_run_as_written(page, extract, tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    blocks = extract((ROOT / page).read_text())
    assert len(blocks) >= (1 if page == "README.md" else 7)
    monkeypatch.chdir(tmp_path)  # files the blocks write land here
    namespace = {"__name__": "__docs__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for block in blocks:
            exec(compile(block, page, "exec"), namespace)
    # every line a new user copies runs without a warning (a ConvergenceWarning included)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    if page == "README.md":
        assert namespace["X_new"].shape == (5000, 2)
        assert namespace["search"].best_params_["bandwidth"] in (0.3, 1, 3)
    else:
        assert namespace["X_matched"].shape == (300, 2)
        assert namespace["path"].n_iter == [10, 20, 30, 40, 50] * 2
        assert (tmp_path / "path.gif").stat().st_size > 0
        matched = namespace["X_matched"].mean(axis=0)
        source = namespace["X_source"].mean(axis=0)
        assert abs(matched - source).max() < 0.5  # moved back onto the source, its units
    import matplotlib.pyplot as plt

    plt.close("all")


def test_the_readme_main_command(tmp_path):
    readme = (ROOT / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("pip install . && "))
    command = shlex.split(line.split("&&", 1)[1])
    assert command[0] == "skgradflow"
    proc = subprocess.run([sys.executable, "-m", "skgradflow", *command[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    out = command[command.index("--out") + 1]
    rows = (tmp_path / out).read_text().strip().splitlines()
    n = int(command[command.index("--n-samples") + 1])
    assert len(rows) in (n, n + 1)  # with or without a header line
