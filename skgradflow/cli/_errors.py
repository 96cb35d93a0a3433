"""The command line's failures: each ends as one line on stderr and an exit status."""

from __future__ import annotations


class _CLIError(Exception):
    """A failure the user can fix: reported as one line, exit status 2."""

    status = 2


class _RunFailed(_CLIError):
    """A run that failed (the flow diverged): reported as one line, exit status 1."""

    status = 1


class _StdoutFailed(_CLIError):
    """Standard output cannot be written (a full device): reported as one line, status 2."""


class _Exit(Exception):
    """Raised instead of ``sys.exit`` so that ``main`` returns the status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
