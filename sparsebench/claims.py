"""The papers' claim at small scale: several seeds per method, one table.

Each (method, seed) run is an ordinary ``sparsebench train`` in a subprocess writing
``RUNS/ARCH-METHOD-sSEED.pt``; finished runs are skipped, so an interrupted sweep resumes where it
stopped. The table gives test accuracy (mean ± std over seeds), generalization gap, mean
stability and parameters removed, plus the Pearson and Kendall correlations between a run's
mean stability and its test accuracy across the pruned runs (paper B's generalization-stability
tradeoff: lower stability goes with higher test accuracy, i.e. a negative correlation).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from sparsebench.checkpoint import atomic_write_bytes, load_checkpoint
from sparsebench.errors import SparsebenchError


def run_path(runs: Path, arch: str, method: str, seed: int) -> Path:
    return runs / f"{arch}-{method}-s{seed}.pt"


def is_finished(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        return "resume" not in load_checkpoint(path)
    except SparsebenchError:
        return False


def train_command(arch: str, method: str, seed: int, out: Path, train_args: list[str],
                  threads: int) -> list[str]:
    return [sys.executable, "-m", "sparsebench", "train", "--arch", arch, "--method", method,
            "--seed", str(seed), "--out", str(out), "--threads", str(threads), "--quiet",
            *train_args]


def run_all(arch: str, methods: list[str], seeds: list[int], runs: Path, train_args: list[str],
            jobs: int, threads: int, on_done: Callable[[str], None]) -> list[str]:
    """Train every missing (method, seed); returns the failures' one-line messages."""
    todo = [(m, s) for m in methods for s in seeds
            if not is_finished(run_path(runs, arch, m, s))]
    failures: list[str] = []

    def one(item: tuple[str, int]) -> None:
        method, seed = item
        out = run_path(runs, arch, method, seed)
        resume = ["--resume", str(out)] if out.exists() else []
        cmd = (train_command(arch, method, seed, out, train_args, threads) if not resume else
               [sys.executable, "-m", "sparsebench", "train", *resume, "--quiet",
                "--threads", str(threads)] + _data_args(train_args))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            failures.append(f"{method} seed {seed}: {last}")
        on_done(f"{method} seed {seed}")

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, todo))
    return failures


def _data_args(train_args: list[str]) -> list[str]:
    """The data flags of a train command line (needed again on --resume)."""
    keep, out = {"--data-dir", "--limit-train", "--limit-test"}, []
    for i, arg in enumerate(train_args):
        if arg in keep and i + 1 < len(train_args):
            out += [arg, train_args[i + 1]]
        elif arg == "--pad-to-32":
            out.append(arg)
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def collect(arch: str, methods: list[str], seeds: list[int], runs: Path
            ) -> dict[str, list[dict[str, Any]]]:
    """Each finished run's summary, recomputed from its history (one definition of the metrics
    for every run, whichever version trained it)."""
    from sparsebench.train import summarize

    out: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        out[method] = []
        for seed in seeds:
            path = run_path(runs, arch, method, seed)
            if is_finished(path):
                ckpt = load_checkpoint(path)
                s = ckpt["summary"]
                out[method].append(summarize(ckpt["history"], method, s["params_total"],
                                             s["params_nonzero"]))
    return out


def correlations(results: dict[str, list[dict[str, Any]]]) -> dict[str, float] | None:
    """Pearson and Kendall correlation of mean stability vs test accuracy over pruned runs."""
    from scipy import stats

    pairs = [(r["mean_stability"], r["best_test_acc"]) for m, rs in results.items()
             if m in ("prune-l", "prune-s", "prune-r", "reentry") for r in rs]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2:
        return None
    xs, ys = zip(*pairs)
    pearson = stats.pearsonr(xs, ys)
    kendall = stats.kendalltau(xs, ys)
    return {"n": len(pairs), "pearson_r": float(pearson[0]), "pearson_p": float(pearson[1]),
            "kendall_tau": float(kendall[0]), "kendall_p": float(kendall[1])}


def markdown(arch: str, dataset: str, results: dict[str, list[dict[str, Any]]],
             command: str) -> str:
    lines = ["| method | runs | test acc % (mean ± std) | generalization gap | mean stability "
             "| params removed % | wall s / run |",
             "|---|---|---|---|---|---|---|"]
    for method, rs in results.items():
        lines.append(
            f"| {method} | {len(rs)} | {_mean_std([r['best_test_acc'] for r in rs])} | "
            f"{_mean_std([r['generalization_gap'] for r in rs])} | "
            f"{_mean_std([r['mean_stability'] for r in rs])} | "
            f"{_mean_std([100 * r['params_removed_frac'] for r in rs])} | "
            f"{statistics.mean([r['wall_seconds'] for r in rs]):.0f} |" if rs else
            f"| {method} | 0 | - | - | - | - | - |")
    corr = correlations(results)
    body = "\n".join(lines)
    corr_text = ("Not enough pruned runs with differing stability for a correlation."
                 if corr is None else
                 f"Across the {corr['n']} pruned runs, mean stability vs test accuracy: "
                 f"Pearson r = {corr['pearson_r']:.3f} (p = {corr['pearson_p']:.3g}), "
                 f"Kendall tau = {corr['kendall_tau']:.3f} (p = {corr['kendall_p']:.3g}). "
                 f"Paper B's tradeoff predicts a negative correlation.")
    return (f"<!-- generated by: {command} -->\n"
            f"**{arch} on {dataset}.** Test accuracy is the best over the epochs after the last "
            f"pruning event; the gap is train minus test accuracy at that epoch; stability is "
            f"100 × (1 − mean instability) over a run's events (100 for runs without events); "
            f"params removed counts exact zeros over all parameters.\n\n{body}\n\n{corr_text}\n")


def write_markdown(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))
