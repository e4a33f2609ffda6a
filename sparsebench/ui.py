"""The terminal: the console (tables that fit, or wide in logs and CI), the progress display,
the command line as given (recorded in checkpoints and tables), and the flag pieces and
messages several commands share. No module imports the CLI; the CLI and the commands' modules
import this."""

from __future__ import annotations

import argparse
import shlex
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

_ARGV: list[str] = []


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not con.is_terminal:  # logs and CI: do not squeeze tables into 80 columns
        con = Console(stderr=stderr, highlight=False, soft_wrap=True, width=240)
    return con


@contextmanager
def progress_display() -> Iterator[Any]:
    """A rich progress display on stderr (silent when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn

    err = console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        yield progress


def record_argv(argv: Sequence[str]) -> None:
    """Remember the arguments ``main`` was called with (for ``command_line``)."""
    _ARGV[:] = list(argv)


def command_line() -> str:
    """The command as given to ``main`` (recorded in checkpoints and tables)."""
    return "sparsebench " + " ".join(shlex.quote(a) for a in _ARGV)


def force_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing output files and "
                   "write into non-empty output folders")


def floats(text: str) -> list[float]:
    from sparsebench.registry import split_list

    try:
        return split_list(text, float)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def ints(text: str) -> list[int]:
    from sparsebench.registry import split_list

    try:
        return split_list(text, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def warn_threads(threads: Sequence[int]) -> None:
    """A warning on stderr when a thread count exceeds the cores of this machine."""
    import os

    cores = os.cpu_count() or 1
    over = sorted({t for t in threads if t > cores})
    if over:
        print(f"sparsebench: warning: --threads {','.join(map(str, over))} is more than the "
              f"{cores} cores of this machine: the threads will compete for them",
              file=sys.stderr)


def no_success_exit(rows: list[dict[str, Any]]) -> int:
    """1 with a line on stderr when no execution succeeded (``measure``, ``sweep``), else 0."""
    if any(r.get("status") == "ok" for r in rows):
        return 0
    print("sparsebench: no execution succeeded " + (
        f"({len(rows)} skipped)" if rows else "(none planned: no backend given executes "
        "these formats)"), file=sys.stderr)
    return 1


def fmt_bytes(n: float | None, missing: str = "n/a") -> str:
    """A byte count in B, KiB, MiB or GiB (``missing`` for None)."""
    if n is None:
        return missing
    n = float(n)
    if abs(n) < 1024:
        return f"{n:.0f} B"
    if abs(n) < 1024 ** 2:
        return f"{n / 1024:.1f} KiB"
    if abs(n) < 1024 ** 3:
        return f"{n / 1024 ** 2:.2f} MiB"
    return f"{n / 1024 ** 3:.2f} GiB"
