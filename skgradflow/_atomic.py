"""Files written whole or not at all.

Every file skgradflow writes (the command line's samples and models, figures and
animations, the benchmarks' tables) is first written to a temporary file in the folder of
its destination and then renamed onto it with :func:`os.replace`, which is atomic on one
file system.  A write that fails (a full disk, an interrupt, an exception from the writer)
removes the temporary file and leaves an existing destination as it was: a reader sees the
old file or the new one, never a truncated one.

A destination that exists and is not a regular file (``/dev/stdout``, ``/dev/full``, a
named pipe, a terminal) cannot be replaced: it is written in place.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # elsewhere the only way to read it is to set it (briefly)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class StagedFile:
    """A temporary file beside ``path`` that :meth:`commit` renames onto ``path``.

    Parameters
    ----------
    path : str or path-like
        The destination.  A symbolic link is followed: the file it points to is replaced,
        and the link kept.

    Attributes
    ----------
    path : str
        Where the writer writes: a temporary file in the destination's folder, named
        ``.NAME.XXXXXXXX.tmpEXT`` (the destination's extension kept, for writers that choose
        a format by it), or the destination itself when it is not a regular file.
    target : str
        The destination, symbolic links resolved.

    Notes
    -----
    Creating the temporary file raises the :class:`OSError` that writing the destination
    would (no such folder, permission denied, read-only file system).  The new file gets the
    permissions of the file it replaces, or those ``open`` would give a new file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._committed = False
        try:
            mode = os.stat(path).st_mode  # through symbolic links
        except FileNotFoundError:
            mode = None
        self.in_place = mode is not None and not stat.S_ISREG(mode)
        if self.in_place:
            # /dev/stdout resolves to /proc/self/fd/1 and on to a name like "pipe:[7]"
            # that is no path: the device is opened by the name given
            self.target = self.path = os.fspath(path)
            return
        self.target = os.path.realpath(os.fspath(path))
        self._mode = (0o666 & ~_umask()) if mode is None else stat.S_IMODE(mode)
        folder, name = os.path.split(self.target)
        fd, self.path = tempfile.mkstemp(
            dir=folder, prefix=f".{name}.", suffix=".tmp" + Path(name).suffix
        )
        os.close(fd)

    def commit(self) -> None:
        """Flush the temporary file to disk and rename it onto the destination."""
        if self._committed or self.in_place:
            self._committed = True
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data are on disk before the name points to them
        finally:
            os.close(fd)
        os.chmod(self.path, self._mode)
        os.replace(self.path, self.target)
        self._committed = True

    def discard(self) -> None:
        """Remove the temporary file unless it was committed; never raises."""
        if not self._committed and not self.in_place:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._committed = True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file name for a writer that takes a file name; renamed onto ``path``
    when the block ends normally, removed when it raises (``KeyboardInterrupt`` included).

    Examples
    --------
    >>> import os, tempfile
    >>> from skgradflow._atomic import atomic_path
    >>> folder = tempfile.mkdtemp()
    >>> with atomic_path(os.path.join(folder, "table.md")) as tmp:
    ...     with open(tmp, "w") as fh:
    ...         _ = fh.write("| a |\\n")
    >>> os.listdir(folder)
    ['table.md']
    """
    staged = StagedFile(path)
    try:
        yield staged.path
        staged.commit()
    finally:
        staged.discard()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator:
    """``open(path, mode, **kwargs)`` whose file replaces ``path`` only when the block ends
    normally (see :func:`atomic_path`).  ``mode`` is a writing mode (``"w"``, ``"wb"``)."""
    if not mode.startswith("w"):
        raise ValueError(f"mode must be a writing mode ('w', 'wb', ...); got {mode!r}.")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
