"""The regression gate's error rates, measured (docs/ci-gate.md quotes the output).

    python benchmarks/gate_proof.py collect runs/gate-proof --n 50     # hours on 2 cores
    python benchmarks/gate_proof.py report runs/gate-proof              # seconds

``collect`` runs real ``sparsebench measure`` commands, round-robin so that every mode sees the
same machine conditions, and skips files that already exist (it resumes after an interruption):

* separate: one plain ``measure`` run per file (different processes, not interleaved), the way
  two CI jobs would measure; identical-code pairs are consecutive runs, slowdown pairs a base run
  and a run with ``--inject-slowdown``.
* calls: ``measure MODEL --ab MODEL`` (the same model on both sides, interleaved call by call in
  one process), with ``--inject-slowdown`` on the new side.
* processes: ``measure MODEL --ab REPO`` (worker processes of the same checkout alternating).

``report`` compares every pair with several gate designs and prints Markdown tables: the rate of
comparisons flagged ``slower`` (a false alarm at slowdown 0, a detection otherwise), per row and
per gate run (any row flagged: CI exits 1), with Wilson 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = ["--formats", "dense,csr", "--backends", "torch,scipy"]
COMMON = ["--data", "none"]
PROCESS_ROWS = ["--formats", "dense", "--backends", "torch", "--min-time", "0.25"]
ROUNDS = 10  # --ab-rounds (the default), changed by `collect --rounds`


def commands(out: Path, i: int, model: str,
             levels: list[float]) -> list[tuple[Path, list[str]]]:
    """The measure commands of iteration ``i``: (output file, argv after `sparsebench`)."""
    jobs = []
    for level in levels:
        inject = ["--inject-slowdown", str(level)] if level else []
        tag = f"{round(level * 100):02d}"
        jobs.append((out / "separate" / f"s{tag}-{i:03d}.json",
                     ["measure", model, *ROWS, *COMMON, *inject]))
        jobs.append((out / "calls" / f"s{tag}-{i:03d}.json",
                     ["measure", model, "--ab", model, *ROWS, *COMMON, *inject]))
        jobs.append((out / "processes" / f"s{tag}-{i:03d}.json",
                     ["measure", model, "--ab", str(ROOT), *PROCESS_ROWS, "--ab-rounds",
                      str(ROUNDS), *COMMON, *inject]))
    return jobs


def collect(args: argparse.Namespace) -> int:
    global ROUNDS
    ROUNDS = args.rounds
    out = Path(args.out)
    modes = set(args.modes.split(","))
    levels = sorted({float(x) for x in args.levels.split(",")} | {0.0})
    process_levels = {float(x) for x in args.process_levels.split(",")}
    for i in range(max(args.n, args.n_slow, args.n_processes, args.n_processes_slow) + 1):
        # n + 1 separate base runs give n consecutive identical pairs
        for path, argv in commands(out, i, args.model, levels):
            mode = path.parent.name
            if mode not in modes or path.exists():
                continue
            if mode == "processes" and int(path.name[1:3]) / 100 not in process_levels:
                continue
            identical = path.name.startswith("s00")
            n = ((args.n_processes if identical else args.n_processes_slow) if mode == "processes"
                 else args.n if identical else args.n_slow)
            if i >= n + (mode == "separate" and identical):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            partial = path.with_suffix(".partial")  # renamed when complete: resumable
            proc = subprocess.run([sys.executable, "-m", "sparsebench", *argv, "--json",
                                   str(partial)], cwd=ROOT, capture_output=True, text=True)
            if proc.returncode == 0:
                partial.replace(path)
            print(f"{path.relative_to(out)} rc={proc.returncode} {time.time() - t0:.0f}s",
                  flush=True)
            if proc.returncode:
                print(proc.stderr[-500:], file=sys.stderr)
    return 0


DEFAULT = "gate (default): CI reaches 10%, ratio >= 5%"
DESIGNS = {  # name -> (GateConfig overrides, ignore process block sizes)
    DEFAULT: ({}, False),
    "gate, rule ci: CI reaches 10%": ({"rule": "ci"}, False),
    "gate, rule point: ratio >= 10%": ({"rule": "point"}, False),
    "per-call test (no blocks), default rule": ({"blocks": 0}, True),
}


def wilson(k: int, n: int) -> str:
    if n == 0:
        return "-"
    z, p = 1.96, k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{100 * p:.1f}% ({k}/{n}; {100 * max(0, mid - half):.1f}-{100 * min(1, mid + half):.1f})"


def pairs(out: Path, mode: str, level: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(base doc, new doc) per comparison of ``mode`` at ``level``."""
    from sparsebench.gate.compare import split_ab

    tag = f"{round(level * 100):02d}"
    folder = out / mode
    if mode == "separate":
        found = []
        for path in sorted(folder.glob(f"s{tag}-*.json")):
            i = int(path.stem.split("-")[1])
            base = folder / (f"s00-{i + 1:03d}.json" if level == 0 else f"s00-{i:03d}.json")
            if base.exists():
                found.append((_load(base), _load(path)) if level else (_load(path), _load(base)))
        return found
    return [split_ab(_load(p), str(p)) for p in sorted(folder.glob(f"s{tag}-*.json"))]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _strip_blocks(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "rows": [{k: v for k, v in r.items() if k != "block_sizes"}
                            for r in doc["rows"]]}


Counts = list  # [rows flagged, rows, gate runs failed, gate runs]
MODES = ("calls", "processes", "separate")


def _tally(out: Path, mode: str, level: float) -> dict[str, Any] | None:
    """Every design's counts on the comparisons of ``mode`` at ``level``."""
    from sparsebench.gate.compare import GateConfig, compare_docs

    found = pairs(out, mode, level)
    if not found:
        return None
    t: dict[str, Any] = {"designs": {name: [0, 0, 0, 0] for name in DESIGNS},
                         "plain": {0.05: [0, 0, 0, 0], 0.10: [0, 0, 0, 0]},
                         "rss": [0, 0, 0, 0], "faster": [0, 0, 0, 0], "ratios": []}

    def add(counts: Counts, flags: list[bool]) -> None:
        counts[:] = [counts[0] + sum(flags), counts[1] + len(flags), counts[2] + any(flags),
                     counts[3] + 1]

    for base, new in found:
        for name, (overrides, strip) in DESIGNS.items():
            b, n = (_strip_blocks(base), _strip_blocks(new)) if strip else (base, new)
            c = compare_docs(b, n, replace(GateConfig(), **overrides),
                             "files" if mode == "separate" else "ab")
            add(t["designs"][name], [r.latency == "slower" for r in c.rows])
            if name == DEFAULT:
                t["ratios"] += [r.change.ratio for r in c.rows]
                add(t["rss"], [any("RSS" in x for x in r.regressions) for r in c.rows])
                add(t["faster"], [r.latency == "faster" for r in c.rows])
                for limit, counts in t["plain"].items():
                    add(counts, [r.change.ratio > 1 + limit for r in c.rows])
    return t


def _levels(out: Path, mode: str) -> list[float]:
    return sorted({int(p.name[1:3]) / 100 for p in (out / mode).glob("s*.json")})


def _realized(ratios: list[float]) -> str:
    import numpy as np

    q = np.quantile(ratios, [0.25, 0.5, 0.75])
    return f"x{q[1]:.3f} (x{q[0]:.3f}-x{q[2]:.3f})"


def evaluate(out: Path) -> str:
    tallies = {(m, lv): _tally(out, m, lv) for m in MODES for lv in _levels(out, m)}
    tallies = {k: v for k, v in tallies.items() if v}
    lines = ["### Summary (default gate; rows, with Wilson 95% intervals)\n",
             "| mode | injected | realized new/base (median, IQR) | gate flags slower | "
             "gate runs failing | plain 5% on medians flags |", "|---|---|---|---|---|---|"]
    for (mode, level), t in tallies.items():
        d, p5 = t["designs"][DEFAULT], t["plain"][0.05]
        lines.append(f"| {mode} | {level:.0%} | {_realized(t['ratios'])} | {wilson(d[0], d[1])} "
                     f"| {wilson(d[2], d[3])} | {wilson(p5[0], p5[1])} |")
    for mode in MODES:
        rows = [(lv, t) for (m, lv), t in tallies.items() if m == mode]
        if not rows:
            continue
        lines += [f"\n### {mode}: every design\n", "| design | injected | rows flagged slower | "
                  "gate runs failing |", "|---|---|---|---|"]
        for level, t in rows:
            for name, c in list(t["designs"].items()) + [
                    (f"plain {k:.0%} threshold on medians", v) for k, v in t["plain"].items()]:
                lines.append(f"| {name} | {level:.0%} | {wilson(c[0], c[1])} | "
                             f"{wilson(c[2], c[3])} |")
        for level, t in rows:
            if level == 0:
                lines.append(f"\nIdentical code, default gate: `faster` verdicts "
                             f"{wilson(*t['faster'][:2])} of rows; peak RSS regressions "
                             f"{wilson(*t['rss'][:2])} of rows.")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> int:
    text = evaluate(Path(args.out))
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("collect", help="run the measurements")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=50, help="identical-code comparisons per mode")
    p.add_argument("--n-slow", type=int, default=25, help="comparisons per injected slowdown")
    p.add_argument("--n-processes", type=int, default=30, help="--n for the processes mode")
    p.add_argument("--n-processes-slow", type=int, default=10,
                   help="--n-slow for the processes mode")
    p.add_argument("--modes", default="calls,separate,processes")
    p.add_argument("--levels", default="0,0.05,0.1,0.2", help="injected slowdowns")
    p.add_argument("--process-levels", default="0,0.1,0.2",
                   help="injected slowdowns for the processes mode (its runs are long)")
    p.add_argument("--rounds", type=int, default=10, help="--ab-rounds of the processes mode")
    p.add_argument("--model", default=str(ROOT / "models" / "lenet5_prune_l.pt"))
    p.set_defaults(func=collect)
    p = sub.add_parser("report", help="evaluate the gate designs on collected files")
    p.add_argument("out")
    p.set_defaults(func=report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
