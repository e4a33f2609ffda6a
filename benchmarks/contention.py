"""Native-kernel latency at 1 and 2 threads with 0, 1 and 2 competing CPU-bound processes.

Builds each model from sparsebench's registry (default the FFN 1024-4096-1024; ``vgg11_bn`` on
3x32x32 optional), prunes every default layer one-shot by magnitude, converts it to CSR and
prepares it on the ``native`` backend at each thread count. For each number of competitors it
starts that many busy loops (``python -c "while True: pass"``), then times the prepared models
in rounds that alternate the thread counts, and reports the p50 of every cell, the 2-thread /
1-thread ratio and how many pool jobs the straggler guard ran on the caller alone (kernels/README.md,
"Threads").

    python benchmarks/contention.py                         # ffn, competitors 0,1,2
    python benchmarks/contention.py --models ffn,vgg11_bn --markdown contention.md

The table is only meaningful on an otherwise idle machine: the load average is printed with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

BUSY = "while True: pass"
INPUTS = {"ffn": (1024, 1), "vgg11_bn": (3, 32), "resnet18": (3, 32)}


def build(name: str, sparsity: float, threads: list[int]) -> dict[int, Callable[[], Any]]:
    """One ``run`` closure per thread count for registry model ``name`` at ``sparsity``."""
    import torch

    from sparsebench.archs import create_model
    from sparsebench.backends import get_backend
    from sparsebench.formats import convert
    from sparsebench.pruning.oneshot import one_shot_prune

    torch.manual_seed(0)
    in_channels, size = INPUTS[name]
    model = create_model(name, in_channels=in_channels, input_size=size).eval()
    one_shot_prune(model, sparsity, list(model.default_pruned))
    converted = convert(model, "csr")
    backend = get_backend("native")
    reason = backend.unavailable()
    if reason:
        raise SystemExit(f"native kernels unavailable: {reason}")
    x = torch.randn(1, *converted.input_shape)
    runs = {}
    for t in threads:
        prepared = backend.prepare(converted, threads=t, batch=1)
        prepared.release_setup()
        runs[t] = (lambda p=prepared: p.run(x))
    return runs


def degraded_jobs() -> int | None:
    """Pool jobs run on the caller alone so far (None when the kernels lack the counter)."""
    from sparsebench import native
    from sparsebench.errors import SparsebenchError

    try:
        return native.tuning("pool_degraded_jobs")
    except SparsebenchError:
        return None


def time_calls(run: Callable[[], Any], calls: int) -> list[float]:
    """Seconds per call of ``calls`` back-to-back calls."""
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run()
        out.append(time.perf_counter() - t0)
    return out


def measure(runs: dict[int, Callable[[], Any]], competitors: int, rounds: int, calls: int,
            settle: float) -> dict[int, dict[str, Any]]:
    """p50 (ms) and degraded-job count per thread count with ``competitors`` busy loops."""
    import torch

    procs = []
    try:
        for _ in range(competitors):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY]))
        time.sleep(settle)
        samples: dict[int, list[float]] = {t: [] for t in runs}
        degraded = {t: 0 for t in runs}
        order = list(runs)
        for t in order:  # warm-up
            time_calls(runs[t], max(calls // 10, 5))
        for r in range(rounds):
            for t in (order if r % 2 == 0 else order[::-1]):
                torch.set_num_threads(t)
                before = degraded_jobs()
                samples[t] += time_calls(runs[t], calls)
                after = degraded_jobs()
                if before is not None and after is not None:
                    degraded[t] += after - before
                else:
                    degraded[t] = -1
        return {t: {"p50": 1e3 * statistics.median(s), "p90": 1e3 * _quantile(s, 0.9),
                    "calls": len(s), "degraded": degraded[t]} for t, s in samples.items()}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def table(results: list[dict[str, Any]], threads: list[int], load: tuple[str, str]) -> str:
    """The Markdown table of ``results`` (one dict per model and competitor count)."""
    base = threads[0]
    head = ["model", "competitors"] + [f"{t} thr p50 ms" for t in threads]
    head += [f"{t}/{base} thr" for t in threads[1:]] + [f"{t} thr degraded jobs" for t in threads[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for row in results:
        cells = [row["model"], str(row["competitors"])]
        cells += [f"{row['cells'][t]['p50']:.3f}" for t in threads]
        cells += [f"{row['cells'][t]['p50'] / row['cells'][base]['p50']:.2f}x" for t in threads[1:]]
        cells += [("-" if row["cells"][t]["degraded"] < 0 else
                   f"{row['cells'][t]['degraded']} in {row['cells'][t]['calls']} calls")
                  for t in threads[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}. "
                 f"{os.cpu_count()} CPUs.")
    return "\n".join(lines) + "\n"


def _knob(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not value.strip().lstrip("-").isdigit():
        raise ValueError(f"--tuning wants KEY=INTEGER, got {text!r}")
    return key.strip(), int(value)


def _quantile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def _loadavg() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ffn", help=f"comma list of {', '.join(INPUTS)}")
    ap.add_argument("--sparsity", type=float, default=90.0, help="percent (default 90)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--competitors", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--calls", type=int, default=200, help="calls per round and cell")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds between starting the competitors and timing")
    ap.add_argument("--tuning", action="append", default=[], metavar="KEY=VALUE",
                    help="set a kernel knob first, e.g. pool_backoff_us=0 (guard off) or "
                         "pool_spin_us=20; repeatable")
    ap.add_argument("--markdown", help="write the table to this file (atomically)")
    ap.add_argument("--force", action="store_true", help="overwrite --markdown")
    args = ap.parse_args(argv)

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from sparsebench.errors import SparsebenchError
    from sparsebench.outputs import atomic_write_text, check_output_file

    try:
        models = [m for m in args.models.split(",") if m]
        unknown = [m for m in models if m not in INPUTS]
        if unknown:
            raise SparsebenchError(f"unknown model {unknown[0]!r}; choose from {', '.join(INPUTS)}")
        threads = [int(t) for t in args.threads.split(",")]
        competitors = [int(c) for c in args.competitors.split(",")]
        if not 0 < args.sparsity < 100 or min(threads) < 1 or min(competitors) < 0:
            raise SparsebenchError("need 0 < sparsity < 100, threads >= 1, competitors >= 0")
        out = check_output_file(args.markdown, args.force, "markdown")
        knobs = [_knob(k) for k in args.tuning]
        if knobs:
            from sparsebench import native
            for key, value in knobs:
                native.tuning(key, value)
    except (SparsebenchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    load_before = _loadavg()
    results = []
    for name in models:
        runs = build(name, args.sparsity / 100, threads)
        for c in competitors:
            cells = measure(runs, c, args.rounds, args.calls, args.settle)
            results.append({"model": f"{name} {args.sparsity:g}%", "competitors": c,
                            "cells": cells})
            print(f"{name} competitors={c}: " + ", ".join(
                f"t{t} p50 {v['p50']:.3f} p90 {v['p90']:.3f} ms (degraded {v['degraded']})"
                for t, v in cells.items()), flush=True)
    text = table(results, threads, (load_before, _loadavg()))
    if knobs:
        text += "Kernel knobs: " + ", ".join(f"{k}={v}" for k, v in knobs) + ".\n"
    print(text)
    if out is not None:
        atomic_write_text(out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
