"""The ``skgradflow`` command line.

``skgradflow sample`` fits a sampler to a data set (a built-in one, a CSV file or a
``.npy`` file) and writes new samples; ``skgradflow datasets`` lists the built-in sets.
Every failure the user can cause (a bad file, a bad option value, an estimator that
rejects its input) ends with one line ``skgradflow: error: ...`` on stderr and exit
status 2, never with a traceback.  A run whose flow diverged (its energy went up, or
became non-finite) is reported the same way with exit status 1, and writes nothing.
Output to a pipe that closes early (``skgradflow datasets | head -1``) ends quietly
with exit status 141, as for a program that SIGPIPE stopped.

The parser and the option types are in :mod:`._parser`, reading and writing files in
:mod:`._io`, the commands in :mod:`._commands`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from ._commands import COMMANDS
from ._errors import _CLIError, _Exit, _one_line, _StdoutFailed
from ._parser import ESTIMATORS, _build_parser

__all__ = ["ESTIMATORS", "main"]

# the exit status of a program that SIGPIPE stopped (128 + 13), as a shell reports it
_BROKEN_PIPE_STATUS = 141
# the exit status of a program that SIGTERM stopped (128 + 15)
_TERMINATED_STATUS = 143


def main(argv: list[str] | None = None) -> int:
    """Run the ``skgradflow`` command line.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        The exit status: 0 on success; 1 when the run failed (the flow diverged: its
        energy went up or became non-finite; nothing is written); 2 on a usage, data or
        estimator error (both reported as one line ``skgradflow: error: ...`` on stderr);
        130 when interrupted (Ctrl-C); 141 when standard output was closed early (a broken
        pipe, as in ``skgradflow datasets | head -1``), silently; 143 when terminated
        (SIGTERM).  An interrupted or terminated run writes no file.

    Examples
    --------
    >>> from skgradflow.cli import main
    >>> main(["datasets"])  # doctest: +ELLIPSIS
    name ...
    gmm2d ...
    0
    """
    parser = _build_parser()
    with _terminate_as_exception():
        return _run(parser, argv)


def _run(parser, argv: list[str] | None) -> int:
    try:
        try:
            args = parser.parse_args(argv)
            status = COMMANDS[args.command](args)
        except _Exit as exc:
            status = exc.status
        # a broken pipe or a full device shows up here at the latest, not at the
        # interpreter's exit
        _flush_stdout()
        return status
    except _Terminated:
        print("skgradflow: terminated", file=sys.stderr)
        return _TERMINATED_STATUS
    except _CLIError as exc:
        if isinstance(exc, _StdoutFailed):
            _silence_stdout()  # the interpreter's last flush must not fail again
        print(f"skgradflow: error: {_one_line(exc)}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return _interrupted()
    except SystemError as exc:
        # Ctrl-C inside compiled code (a Numba loop) can surface as "returned a result with
        # an exception set", with the KeyboardInterrupt as its cause or context
        if not _caused_by_interrupt(exc):
            raise
        return _interrupted()
    except BrokenPipeError:
        # the reader of stdout is gone (``| head``): nothing more can be shown, and the
        # interpreter's last flush of stdout must not fail again
        _silence_stdout()
        return _BROKEN_PIPE_STATUS


class _Terminated(BaseException):
    """SIGTERM (``kill``, a job scheduler's time limit), raised where the process is, so
    that the files being written are removed as for Ctrl-C.  A BaseException, like
    KeyboardInterrupt: no ``except Exception`` on the way swallows it."""


@contextlib.contextmanager
def _terminate_as_exception():
    """SIGTERM raises :class:`_Terminated` while the command runs (the previous handler is
    restored after; nothing changes where signals cannot be handled: a thread other than
    the main one)."""

    def terminate(signum, frame):
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted() -> int:
    print("skgradflow: interrupted", file=sys.stderr)
    return 130


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:  # a full device (> /dev/full), an I/O error
        raise _StdoutFailed(f"cannot write to standard output: {exc.strerror or exc}") from None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # no file descriptor behind sys.stdout (a test's capture)
