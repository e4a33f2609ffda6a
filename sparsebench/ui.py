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


PIPED_WIDTH = 100  # output that is not a terminal, without $COLUMNS


def output_width() -> int:
    """The width of output that is not a terminal: ``$COLUMNS`` when set, else 100."""
    import os

    text = os.environ.get("COLUMNS", "").strip()
    return int(text) if text.isdigit() and int(text) >= 20 else PIPED_WIDTH


def console(stderr: bool = False) -> Any:
    """The console of stdout (results) or stderr (progress, messages): the terminal's width,
    or ``output_width()`` when piped."""
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not con.is_terminal:
        con = Console(stderr=stderr, highlight=False, soft_wrap=True, width=output_width())
    return con


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None,
          numeric: Sequence[int] = (), heavy: bool = False, whole: Sequence[int] = ()) -> Any:
    """A table that fits its console: numbers (columns ``numeric``, right-aligned) never wrap
    or get cut, nor do the short words of columns ``whole`` (left-aligned); only the other text
    columns wrap (at spaces, else folded). No vertical rules, so a column costs its content
    plus two spaces. ``heavy``: framed (wide tables)."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=box.HEAVY_HEAD if heavy else
              box.SIMPLE_HEAD, show_edge=heavy, pad_edge=heavy,
              padding=(0, 1) if heavy else (0, 1, 0, 0))
    for i, head in enumerate(headers):
        if i in numeric or i in whole:
            t.add_column(head, justify="right" if i in numeric else "left", no_wrap=True)
        else:
            t.add_column(head, overflow="fold")
    for row in rows:
        t.add_row(*row)
    return t


def print_table(con: Any, tbl: Any, wide: bool = False) -> None:
    """Print ``tbl``; ``wide``: at its natural width even when wider than the console (the
    ``--wide`` tables: nothing squeezed, lines as long as they need)."""
    if wide:
        natural = con.measure(tbl, options=con.options.update_width(100_000)).maximum
        width = con.width
        con.width = max(width, natural)  # print(width=) cannot exceed the console's width
        try:
            con.print(tbl, soft_wrap=False)
        finally:
            con.width = width
    else:
        con.print(tbl, soft_wrap=False)


def print_notes(con: Any, lines: Sequence[str]) -> None:
    """Prose under a table (notes, footnotes, warnings), wrapped at the console's width."""
    for line in lines:
        con.print(line, soft_wrap=False)


def wide_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wide", action="store_true", help="print the tables with every column "
                   "(implementation, p90/p99, batch, threads, noise, byte breakdowns, reasons in "
                   "full) however wide; the JSON and --html have them all")


def fresh_workers_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fresh-workers", action="store_true", help="start every execution's "
                   "worker as a new Python interpreter (~3 s each) instead of forking it from "
                   "one preloaded parent; both are fresh processes, the rows are the same")


def _eta_column() -> Any:
    """A rich progress column: the ETA from the plan's estimate (the task's ``estimate`` field,
    seconds) until a step completes, then from the pace measured so far."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Eta(ProgressColumn):
        def render(self, task: Any) -> Any:
            est = task.fields.get("estimate")
            if task.finished or not task.total:
                return Text("")
            if task.completed and task.elapsed:
                left = task.elapsed / task.completed * (task.total - task.completed)
                return Text(f"ETA {fmt_duration(left)}")
            if est is not None:
                return Text(f"ETA ~{fmt_duration(max(est - (task.elapsed or 0), 0))} "
                            "(estimate)")
            return Text("")

    return Eta()


def fmt_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@contextmanager
def progress_display() -> Iterator[Any]:
    """A rich progress display on stderr (silent when stderr is not a terminal). Print what
    happens while it runs with ``progress.console.print`` (stderr, above the bar): results go
    to stdout once it is over, so the two never interleave."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    err = console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), _eta_column(), console=err, transient=True,
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


def warn_threads(threads: Sequence[int], streams: int = 1) -> None:
    """A warning on stderr (one line) when a thread count, or ``streams`` x the largest thread
    count, exceeds the cores of this machine."""
    import os

    cores = os.cpu_count() or 1
    over = sorted({t for t in threads if t > cores})
    if streams > 1 and streams * max(threads) > cores:
        print(f"sparsebench: warning: --streams {streams} x --threads {max(threads)} = "
              f"{streams * max(threads)} threads is more than the {cores} cores of this "
              "machine: the streams will compete for them", file=sys.stderr)
    elif over:
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
