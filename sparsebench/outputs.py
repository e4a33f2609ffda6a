"""Where sparsebench writes: every output path is checked before the work starts, and every file
is written atomically (a temp file next to it, renamed into place), so an interrupted write
leaves any previous file intact and no existing file is replaced unless the user asked
(``--force``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from sparsebench.errors import SparsebenchError


def atomic_write_bytes(path: str | os.PathLike[str], write: Callable[[Any], Any]) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, then rename it into place,
    so an interrupted write leaves any previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def _check_parent(p: Path, what: str) -> None:
    """The nearest existing ancestor of ``p`` must be a writable folder."""
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SparsebenchError(f"{what} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SparsebenchError(f"{what} {p}: folder {parent} is not writable")


def check_output_file(path: str | os.PathLike[str] | None, force: bool,
                      what: str = "output") -> Path | None:
    """An output file path that may be written: not a folder, in a writable folder, and not an
    existing file unless ``force``. ``None`` passes through. Call before the work starts."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise SparsebenchError(f"{what} path is a directory, not a file: {p}")
    _check_parent(p, what)
    if p.exists() and not force:
        raise SparsebenchError(f"{what} file {p} exists: pass --force to overwrite it")
    return p


def check_output_dir(path: str | os.PathLike[str] | None, force: bool,
                     what: str = "output") -> Path | None:
    """An output folder: a new or empty folder, or a non-empty one with ``force``; never an
    existing file. ``None`` passes through. Call before the work starts."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SparsebenchError(f"{what} folder {p} is an existing file, not a folder")
    _check_parent(p, what)
    if p.is_dir() and any(p.iterdir()) and not force:
        raise SparsebenchError(f"{what} folder {p} is not empty: pass --force to write into it "
                               "(files of the same name are replaced)")
    return p
