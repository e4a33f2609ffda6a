"""The terminal: the console (tables that fit, or wide in logs and CI), the progress display,
and the command line as given (recorded in checkpoints and tables). No module imports the CLI;
the CLI and the commands' modules import this."""

from __future__ import annotations

import shlex
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
