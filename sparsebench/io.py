"""Files: atomic writes (a temp file renamed into place) and input-file checks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from sparsebench.errors import SparsebenchError


def atomic_write_bytes(path: str | os.PathLike[str], write: Any) -> None:
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
    """``text`` (UTF-8) written atomically to ``path``."""
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def check_file(path: str | os.PathLike[str], what: str = "model") -> Path:
    """A readable, non-empty regular file, else a one-line error."""
    p = Path(path)
    if not p.exists():
        raise SparsebenchError(f"{what} file not found: {p}")
    if p.is_dir():
        raise SparsebenchError(f"{what} path is a directory, not a file: {p}")
    if p.stat().st_size == 0:
        raise SparsebenchError(f"{what} file is empty: {p}")
    return p
