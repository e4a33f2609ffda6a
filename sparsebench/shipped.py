"""Files outside the package that an installed sparsebench still needs: the kernel sources
(``kernels/``) and the zoo's default model (``models/lenet5_prune_l.pt``).

In a checkout or an editable install they are read where they are in the repository. A wheel
carries copies under ``sparsebench/_shipped/`` (same relative paths), made when the wheel is
built (``setup.py``: ``SHIPPED``); nothing is duplicated in git.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE / "_shipped"


def shipped_path(relative: str) -> Path:
    """``relative`` (repository-relative, e.g. ``"kernels"``) in the installed package when a
    wheel shipped it, else in the repository checkout."""
    inside = SHIPPED_DIR / relative
    return inside if inside.exists() else PACKAGE.parent / relative


DEFAULT_MODEL = shipped_path("models/lenet5_prune_l.pt")
KERNEL_SOURCES = shipped_path("kernels")
