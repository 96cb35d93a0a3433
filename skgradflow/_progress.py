"""Progress reporting for ``verbose``: a tqdm bar when tqdm is installed, plain text otherwise."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Report the energy after each iteration on stderr.

    ``verbose=0`` prints nothing; ``verbose>=1`` shows a bar (``pip install tqdm``, the
    ``progress`` extra) or, without tqdm, one line every ``max(1, total // 20)``
    iterations and a final line.
    """

    def __init__(self, verbose: int, total: int, desc: str, start: int = 0) -> None:
        self.verbose = int(verbose)
        self.total = total
        self.desc = desc
        self.start = start  # iterations done before this run (earlier phases of a fit)
        self._bar: Any = None
        self._every = max(1, total // 20)
        if self.verbose <= 0:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, initial=start, desc=desc, file=sys.stderr, leave=False)

    def update(self, iteration: int, energy: float) -> None:
        if self.verbose <= 0:
            return
        iteration += self.start
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(energy=f"{energy:.4g}", refresh=False)
        elif iteration % self._every == 0 or self.verbose >= 2:
            print(f"{self.desc}: iteration {iteration}/{self.total}, energy {energy:.6g}",
                  file=sys.stderr)

    def close(self, iteration: int, energy: float, converged: bool) -> None:
        if self.verbose <= 0:
            return
        iteration += self.start
        if self._bar is not None:
            self._bar.close()
        state = "converged" if converged else "stopped"
        print(f"{self.desc}: {state} after {iteration} iterations, energy {energy:.6g}",
              file=sys.stderr)
