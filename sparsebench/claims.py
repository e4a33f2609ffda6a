"""The papers' claim as a grid of runs: configurations x seeds, one table.

A grid is a list of named configurations (a method plus its own ``sparsebench train`` flags, so
Prune_S r=1 and Prune_S r=7 sit in one grid) run for several seeds with common flags. Each run
is an ordinary ``sparsebench train`` in a subprocess writing ``RUNS/ARCH-NAME-sSEED.pt``; when it
finishes, its summary (configuration, command, history, no weights) is written to
``SUMMARIES/ARCH-NAME-sSEED.json``. A run with a summary, or with a finished checkpoint, is
skipped, so an interrupted grid resumes where it stopped and the table regenerates from the
committed summaries alone.

The table gives test accuracy (mean ± std over seeds), generalization gap, mean stability,
flatness and parameters removed, and the Pearson and Kendall correlations between a run's mean
stability and its test accuracy (paper B's generalization-stability tradeoff predicts a negative
correlation), over a chosen subset (paper B's Figure 2: Prune_S 1%, Prune_S 13%, Prune_L 13%)
and over all pruned runs.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sparsebench.catalog import EXECUTORS
from sparsebench.checkpoint import load_checkpoint
from sparsebench.outputs import atomic_write_bytes, atomic_write_text
from sparsebench.errors import SparsebenchError

PRUNED_METHODS = ("prune-l", "prune-s", "prune-r", "reentry", "scratch")


@dataclass(frozen=True)
class RunConfig:
    """One configuration of a grid: a name, a method and its own train flags."""

    name: str
    method: str
    args: tuple[str, ...] = ()

    def train_args(self) -> list[str]:
        return ["--method", self.method, *self.args]


@dataclass
class Grid:
    """Configurations x seeds with the flags they share."""

    arch: str
    dataset: str
    configs: list[RunConfig]
    seeds: list[int]
    common: list[str] = field(default_factory=list)
    subset: list[str] = field(default_factory=list)   # the correlation subset (Figure 2)
    subset_label: str = "Figure-2 set"

    def runs(self) -> list[tuple[RunConfig, int]]:
        return [(c, s) for c in self.configs for s in self.seeds]


def parse_config(text: str) -> RunConfig:
    """``NAME=METHOD [train flags]`` or just ``METHOD`` (the name is the method)."""
    from sparsebench.train import METHODS

    name, sep, rest = text.partition("=")
    name = name.strip()
    words = shlex.split(rest) if sep else [name]
    if not name or not words:
        raise SparsebenchError(f"--config needs NAME=METHOD [flags], got {text!r}")
    method, extra = words[0], tuple(words[1:])
    if method not in METHODS:
        raise SparsebenchError(f"unknown method {method!r} in configuration {name!r}; choose "
                               f"from: {', '.join(METHODS)}")
    for flag in ("--method", "--arch", "--seed", "--out", "--resume"):
        if flag in extra:
            raise SparsebenchError(f"configuration {name!r}: {flag} is set by the grid")
    return RunConfig(name, method, extra)


def load_grid(path: Path) -> Grid:
    """A grid from a TOML file (see docs/claims-vgg11.md for an example)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparsebenchError(f"grid file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SparsebenchError(f"{path}: not a valid TOML grid ({exc})") from None
    try:
        configs = [parse_config(f"{k}={v}") for k, v in data["configs"].items()]
        grid = Grid(arch=str(data["arch"]), dataset=str(data.get("dataset", "fashion-mnist")),
                    configs=configs, seeds=[int(s) for s in data["seeds"]],
                    common=shlex.split(str(data.get("train_args", ""))),
                    subset=list(data.get("correlation_subset", [])),
                    subset_label=str(data.get("correlation_subset_label", "Figure-2 set")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SparsebenchError(f"{path}: a grid needs arch, seeds and a [configs] table "
                               f"({type(exc).__name__}: {exc})") from None
    check_grid(grid)
    return grid


def check_grid(grid: Grid) -> None:
    names = [c.name for c in grid.configs]
    if not names:
        raise SparsebenchError("a grid needs at least one configuration")
    if len(set(names)) != len(names):
        raise SparsebenchError(f"configuration names repeat: {', '.join(names)}")
    if not grid.seeds:
        raise SparsebenchError("a grid needs at least one seed")
    unknown = [s for s in grid.subset if s not in names]
    if unknown:
        raise SparsebenchError(f"correlation subset names unknown configurations: "
                               f"{', '.join(unknown)}")


def run_path(runs: Path, arch: str, name: str, seed: int) -> Path:
    return runs / f"{arch}-{name}-s{seed}.pt"


def summary_path(summaries: Path, arch: str, name: str, seed: int) -> Path:
    return summaries / f"{arch}-{name}-s{seed}.json"


def _finished_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except SparsebenchError:
        return None
    return None if "resume" in ckpt else ckpt


def summary_record(ckpt: dict[str, Any], name: str) -> dict[str, Any]:
    """A finished run without its weights: enough to regenerate every table."""
    return {"name": name, "arch": ckpt["arch"], "method": ckpt["method"],
              "seed": ckpt["seed"], "command": ckpt.get("command"),
              "config": ckpt["config"], "dataset": ckpt["dataset"],
              "versions": ckpt.get("versions"), "history": ckpt["history"],
              "summary": ckpt["summary"]}


def write_summary(record: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")


def read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(grid: Grid, cfg: RunConfig, seed: int, runs: Path, summaries: Path) -> bool:
    """Done = a summary exists, or a finished checkpoint (whose summary is written now)."""
    spath = summary_path(summaries, grid.arch, cfg.name, seed)
    if read_summary(spath) is not None:
        return True
    ckpt = _finished_checkpoint(run_path(runs, grid.arch, cfg.name, seed))
    if ckpt is None:
        return False
    write_summary(summary_record(ckpt, cfg.name), spath)
    return True


def train_command(grid: Grid, cfg: RunConfig, seed: int, out: Path, threads: int) -> list[str]:
    base = [sys.executable, "-m", "sparsebench", "train", "--quiet", "--threads", str(threads)]
    if out.exists():  # an interrupted run: continue it with the settings stored in it
        return base + ["--resume", str(out)] + _data_args(grid.common + list(cfg.args))
    return base + ["--arch", grid.arch, "--dataset", grid.dataset, "--seed", str(seed),
                   "--out", str(out), *grid.common, *cfg.train_args()]


def _data_args(train_args: list[str]) -> list[str]:
    """The data flags of a train command line (needed again on --resume)."""
    keep, out = {"--data-dir", "--limit-train", "--limit-test"}, []
    for i, arg in enumerate(train_args):
        if arg in keep and i + 1 < len(train_args):
            out += [arg, train_args[i + 1]]
        elif arg == "--pad-to-32":
            out.append(arg)
    return out


def run_one(command: list[str]) -> str | None:
    """Run one training command; None on success, else its last line of error output."""
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["no output"])[-1]


def train_task(command: list[str], out: str, name: str) -> tuple[str | None, dict | None]:
    """One grid run as a (Ray) task: (error, summary record of the finished checkpoint)."""
    error = run_one(command)
    if error is not None:
        return error, None
    return None, summary_record(load_checkpoint(Path(out)), name)


def run_grid(grid: Grid, runs: Path, summaries: Path, jobs: int, threads: int,
             on_done: Callable[[str], None], executor: str = "local",
             address: str | None = None) -> list[str]:
    """Train every run that is not done; returns the failures' one-line messages."""
    todo = [(c, s) for c, s in grid.runs() if not is_done(grid, c, s, runs, summaries)]
    runs.mkdir(parents=True, exist_ok=True)
    commands = [train_command(grid, c, s, run_path(runs, grid.arch, c.name, s), threads)
                for c, s in todo]
    failures: list[str] = []

    def finish(item: tuple[RunConfig, int], error: str | None) -> None:
        cfg, seed = item
        if error is not None:
            failures.append(f"{cfg.name} seed {seed}: {error}")
        elif not is_done(grid, cfg, seed, runs, summaries):
            failures.append(f"{cfg.name} seed {seed}: finished without a final checkpoint")
        on_done(f"{cfg.name} seed {seed}")

    if executor == "ray":
        from sparsebench.ray_executor import run_commands

        jobs_ = [(cmd, run_path(runs, grid.arch, c.name, s), c.name)
                 for cmd, (c, s) in zip(commands, todo)]
        for (c, s), (error, record) in zip(todo, run_commands(jobs_, threads, address,
                                                             train_task)):
            if record is not None:
                write_summary(record, summary_path(summaries, grid.arch, c.name, s))
            finish((c, s), error)
        return failures
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for item, error in zip(todo, pool.map(run_one, commands)):
            finish(item, error)
    return failures


def collect(grid: Grid, summaries: Path) -> dict[str, list[dict[str, Any]]]:
    """Each finished run's summary, recomputed from its history (one definition of the metrics
    for every run, whichever version trained it), per configuration."""
    from sparsebench.train import summarize

    out: dict[str, list[dict[str, Any]]] = {}
    for cfg in grid.configs:
        out[cfg.name] = []
        for seed in grid.seeds:
            rec = read_summary(summary_path(summaries, grid.arch, cfg.name, seed))
            if rec is None:
                continue
            s = rec["summary"]
            row = summarize(rec["history"], rec["method"], s["params_total"],
                            s["params_nonzero"])
            row.update(method=rec["method"], seed=seed, history=rec["history"])
            out[cfg.name].append(row)
    return out


def correlations(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Pearson and Kendall correlation of mean stability vs test accuracy over ``rows``."""
    from scipy import stats

    pairs = [(r["mean_stability"], r["best_test_acc"]) for r in rows
             if r["best_test_acc"] is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return None
    xs, ys = zip(*pairs)
    pearson = stats.pearsonr(xs, ys)
    kendall = stats.kendalltau(xs, ys)
    return {"n": len(pairs), "pearson_r": float(pearson[0]), "pearson_p": float(pearson[1]),
            "kendall_tau": float(kendall[0]), "kendall_p": float(kendall[1])}


def difference(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """mean(a) - mean(b) and the standard error of that difference (Welch)."""
    if len(a) < 2 or len(b) < 2:
        return None
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return statistics.mean(a) - statistics.mean(b), se


def gate(results: dict[str, list[dict[str, Any]]], grid: Grid) -> list[str]:
    """The regime checks of a grid: does dense overfit, does any Prune_L event collapse, does
    accuracy plateau after the last event. One line each, per configuration where it applies."""
    lines = []
    for cfg in grid.configs:
        for r in results.get(cfg.name, []):
            h = r["history"]
            last = h["epochs"][-1]
            tag = f"{cfg.name} s{r['seed']}"
            if cfg.method in ("dense", "dropout"):
                lines.append(f"{tag}: final train {last['train_acc']:.2f}%, test "
                             f"{last['test_acc']:.2f}%, gap {last['train_acc'] - last['test_acc']:.2f}"
                             f" (best-after-last-event gap {r['generalization_gap']:.2f})")
                continue
            events = h["events"]
            if not events:
                continue
            worst = min(events, key=lambda e: e["post_acc"])
            last_event = max(e["epoch"] for e in events)
            after = [e["test_acc"] for e in h["epochs"] if e["epoch"] > last_event]
            tail = after[-5:]
            plateau = (f"last {len(tail)} epochs {min(tail):.2f}-{max(tail):.2f}%"
                       if tail else "no epoch after the last event")
            lines.append(f"{tag}: {len(events)} events, lowest post-event accuracy "
                         f"{worst['post_acc']:.2f}% (epoch {worst['epoch']}), largest drop "
                         f"{max(e['pre_acc'] - e['post_acc'] for e in events):.2f} points; "
                         f"{plateau}")
    return lines


def _mean_std(values: list[float | None], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def _flat(r: dict[str, Any], key: str) -> float | None:
    f = r.get("flatness")
    return f.get(key) if f else None


def _corr_text(label: str, corr: dict[str, float] | None) -> str:
    if corr is None:
        return f"{label}: not enough runs with differing stability for a correlation."
    return (f"{label} ({corr['n']} runs): Pearson r = {corr['pearson_r']:.3f} "
            f"(p = {corr['pearson_p']:.3g}), Kendall tau = {corr['kendall_tau']:.3f} "
            f"(p = {corr['kendall_p']:.3g}).")


def analysis(results: dict[str, list[dict[str, Any]]], grid: Grid) -> dict[str, Any]:
    """The figures the verdicts rest on (correlations and Prune_L differences)."""
    method_of = {c.name: c.method for c in grid.configs}
    pruned = [r for n, rs in results.items() if method_of[n] in PRUNED_METHODS for r in rs]
    subset = [r for n in grid.subset for r in results.get(n, [])]

    def accs(method: str) -> list[float]:
        return [r["best_test_acc"] for n, rs in results.items() if method_of[n] == method
                for r in rs if r["best_test_acc"] is not None]

    out: dict[str, Any] = {"corr_subset": correlations(subset) if grid.subset else None,
                           "corr_pruned": correlations(pruned)}
    for other in ("dense", "dropout", "prune-s"):
        out[f"prune-l_vs_{other}"] = difference(accs("prune-l"), accs(other))
    return out


def markdown(grid: Grid, results: dict[str, list[dict[str, Any]]], command: str) -> str:
    method_of = {c.name: c.method for c in grid.configs}
    lines = ["| configuration | method | runs | test acc % (mean ± std) | generalization gap "
             "| mean stability | Hessian top-5 sum | grad. cov. trace | params removed % "
             "| wall s / run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        if not rs:
            lines.append(f"| {name} | {method_of[name]} | 0 | - | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {name} | {method_of[name]} | {len(rs)} | "
            f"{_mean_std([r['best_test_acc'] for r in rs])} | "
            f"{_mean_std([r['generalization_gap'] for r in rs])} | "
            f"{_mean_std([r['mean_stability'] for r in rs])} | "
            f"{_mean_std([_flat(r, 'hessian_top_sum') for r in rs], 1)} | "
            f"{_mean_std([_flat(r, 'grad_cov_trace') for r in rs], 3)} | "
            f"{_mean_std([100 * r['params_removed_frac'] for r in rs])} | "
            f"{statistics.mean([r['wall_seconds'] for r in rs]):.0f} |")
    a = analysis(results, grid)
    corr = []
    if grid.subset:
        corr.append(_corr_text(f"{grid.subset_label} ({', '.join(grid.subset)})",
                               a["corr_subset"]))
    corr.append(_corr_text("All pruned runs", a["corr_pruned"]))
    diffs = []
    for other in ("dense", "dropout", "prune-s"):
        d = a[f"prune-l_vs_{other}"]
        if d is not None:
            diffs.append(f"Prune_L − {other}: {d[0]:+.2f} ± {d[1]:.2f} points (standard error "
                         f"of the difference of means).")
    return (f"<!-- generated by: {command} -->\n"
            f"**{grid.arch} on {grid.dataset}.** Test accuracy is the best over the epochs after "
            f"the last pruning event; the gap is train minus test accuracy at that epoch; "
            f"stability is 100 × (1 − mean instability) over a run's events (100 for runs "
            f"without events); flatness is measured at the end of the run on 512 test images; "
            f"params removed counts exact zeros over all parameters.\n\n" + "\n".join(lines)
            + "\n\nMean stability vs test accuracy (paper B's tradeoff predicts a negative "
              "correlation):\n\n" + "\n".join(f"- {c}" for c in corr)
            + ("\n\n" + "\n".join(f"- {d}" for d in diffs) if diffs else "") + "\n")


def plot(grid: Grid, results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Test accuracy vs mean stability, one marker per run, a colour per configuration."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SparsebenchError("--plot needs matplotlib (pip install 'sparsebench[plots]')") \
            from None
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, rs in results.items():
        pts = [(r["mean_stability"], r["best_test_acc"]) for r in rs
               if r["best_test_acc"] is not None]
        if pts:
            ax.scatter(*zip(*pts), label=name, s=28)
    ax.set_xlabel("mean stability (%)")
    ax.set_ylabel("test accuracy after the last event (%)")
    ax.set_title(f"{grid.arch} on {grid.dataset}: accuracy vs stability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()

    def save(fh: Any) -> None:
        fig.savefig(fh, format="png")
    atomic_write_bytes(path, save)
    plt.close(fig)


def write_markdown(path: Path, text: str) -> None:
    atomic_write_text(path, text)
