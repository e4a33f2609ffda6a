"""The profile of one model on one target: per-layer storage, arena, verdict, estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsebench.errors import SparsebenchError
from sparsebench.ui import fmt_bytes  # noqa: F401  (re-exported for the report)
from sparsebench.embedded.arena import ArenaPlan, plan_graph
from sparsebench.embedded.encodings import (C_ENCODINGS, ENCODINGS, FP32_C_ENCODINGS,
                                             INT8_C_ENCODINGS, MatrixStats, cheapest,
                                             encoding_label, layer_bytes)
from sparsebench.embedded.estimate import estimate_model
from sparsebench.embedded.lowering import Graph, Op, trace
from sparsebench.embedded.targets import Target

POLICIES = {"best": "cheapest per layer (export-c encodings, one value type)",
            "lossless": "cheapest fp32 per layer",
            "int8": "cheapest int8 per layer",
            "c": "cheapest export-c encoding per layer (fp32-dense/csr16)"}


@dataclass
class LayerRow:
    """One weight matrix: its statistics and exact bytes in every encoding."""

    name: str
    op: Op
    stats: MatrixStats
    sizes: dict[str, int | None]
    best: str                 # the smallest of all encodings (BSR too): the table's *
    best_lossless: str        # the smallest fp32 encoding export-c writes
    best_c: str
    best_int8: str = ""       # the smallest int8 encoding export-c writes

    def pick(self, policy: str) -> str:
        if policy == "best":
            return self.best
        if policy == "int8":
            return self.best_int8
        if policy == "lossless":
            return self.best_lossless
        if policy == "c":
            return self.best_c
        if self.sizes.get(policy) is None:
            raise SparsebenchError(f"encoding {policy} cannot store layer {self.name!r} "
                                   f"({self.stats.cols} columns)")
        return policy


@dataclass
class Choice:
    """Flash/RAM/latency of the model with one encoding choice for its layers."""

    label: str
    policy: str
    per_layer: dict[str, str]
    weight_bytes: int
    flash_needed: int | None
    ram_needed: int
    flash_margin: int | None
    ram_margin: int
    est_seconds: float
    est_instructions: float | None = None   # calibrated targets: instructions (QEMU-fitted)
    est_source: str = "roofline"            # "roofline" or "QEMU calibration <file>"

    @property
    def fits(self) -> bool:
        return self.ram_margin >= 0 and (self.flash_margin is None or self.flash_margin >= 0)


@dataclass
class Profile:
    model: dict[str, Any]
    target: Target
    graph: Graph
    layers: list[LayerRow]
    other_bytes: int          # constants of non-weight ops (unfolded BatchNorm, mul factors)
    arena: ArenaPlan
    arena_int8: int           # the same plan with 1-byte activations (what int8 exports use)
    block: tuple[int, int]
    policy: str
    choices: list[Choice]
    verdict: Choice
    host: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    accuracy: dict[str, Any] | None = None   # fp32 and int8 test accuracy (quant.accuracy)
    int8_blocker: str | None = None          # why the model has no int8 export, if it has not

    def layer(self, name: str) -> LayerRow:
        return next(row for row in self.layers if row.name == name)

    def totals(self) -> dict[str, int | None]:
        """Model weight bytes with each single encoding (None where a layer cannot use it)."""
        out: dict[str, int | None] = {}
        for enc in ENCODINGS:
            sizes = [row.sizes[enc] for row in self.layers]
            out[enc] = None if any(s is None for s in sizes) else \
                sum(sizes) + self.other_bytes  # type: ignore[arg-type]
        return out


def _policy_label(policy: str, block: tuple[int, int]) -> str:
    return POLICIES.get(policy, f"{encoding_label(policy, block)} everywhere")


def check_policy(policy: str) -> str:
    if policy not in POLICIES and policy not in ENCODINGS:
        raise SparsebenchError(f"unknown encoding {policy!r}; choose from: "
                               f"{', '.join([*POLICIES, *ENCODINGS])}")
    return policy


def choose(graph: Graph, layers: list[LayerRow], other: int, arena: ArenaPlan, target: Target,
           policy: str, block: tuple[int, int], arena_int8: int | None = None,
           cache: dict[Any, Any] | None = None) -> Choice:
    """Bytes, fit and estimated latency with ``policy`` applied to every layer. ``best`` is the
    cheaper of the smallest fp32 and the smallest int8 export-c encoding per layer (one value
    type per model, as the C runtime runs it); all-int8 choices use the int8 arena
    (``arena_int8``, when the model has an int8 export). ``cache``: the estimate's op
    features, shared by the choices of one profile."""
    if policy == "best":
        fp32 = {row.name: row.best_lossless for row in layers}
        int8 = {row.name: row.best_int8 for row in layers}
        total = {name: sum(row.sizes[enc[row.name]] or 0 for row in layers)
                 for name, enc in (("fp32", fp32), ("int8", int8))}
        per_layer = int8 if layers and total["int8"] <= total["fp32"] else fp32
    else:
        per_layer = {row.name: row.pick(policy) for row in layers}
    by_key = {row.name: row for row in layers}
    weights = sum(by_key[n].sizes[e] or 0 for n, e in per_layer.items()) + other
    est = estimate_model(graph, per_layer, target, block,
                         {n: (by_key[n].stats, by_key[n].sizes[e] or 0)
                          for n, e in per_layer.items()}, cache)
    all_int8 = bool(per_layer) and all(e.startswith("int8") for e in per_layer.values())
    act = arena_int8 if all_int8 and arena_int8 is not None else arena.size
    if target.weights_in == "flash":
        flash, ram = weights, act
    else:
        flash, ram = None, act + weights
    return Choice(_policy_label(policy, block), policy, per_layer, weights, flash, ram,
                  None if flash is None or target.flash_bytes is None
                  else target.flash_bytes - flash, target.ram_bytes - ram, est.seconds,
                  est.instructions, est.source)


def profile_model(module: torch.nn.Module, input_shape: tuple[int, ...], target: Target, *,
                  policy: str = "best", block: tuple[int, int] = (4, 4),
                  model_info: dict[str, Any] | None = None) -> Profile:
    """Trace, size and plan ``module`` for ``target``; ``policy`` picks the verdict's encodings."""
    check_policy(policy)
    graph = trace(module, input_shape)
    layers = []
    for op in graph.weight_ops():
        assert op.weight is not None
        stats, sizes = layer_bytes(op.weight, op.bias_len, block)
        layers.append(LayerRow(op.weight_key or op.name, op, stats, sizes, cheapest(sizes),
                               cheapest(sizes, FP32_C_ENCODINGS), cheapest(sizes, C_ENCODINGS),
                               cheapest(sizes, INT8_C_ENCODINGS)))
    other = sum(4 * int(np.asarray(c).size) for op in graph.ops if op.weight is None
                for c in op.consts.values())
    arena = plan_graph(graph)
    arena_int8 = plan_graph(graph, elem_bytes=1).size
    from sparsebench.embedded.quant import check_int8

    try:
        check_int8(graph)
        blocker = None
    except SparsebenchError as exc:
        blocker = str(exc)
    policies = ["fp32-dense", "int8-dense", "lossless", "c", "best"]
    if policy not in policies:
        policies.append(policy)
    a8 = None if blocker else arena_int8
    cache: dict[Any, Any] = {}
    choices = [choose(graph, layers, other, arena, target, p, block, a8, cache)
               for p in policies]
    verdict = next(c for c in choices if c.policy == policy)
    params = sum(op.params for op in graph.weight_ops())
    nnz = sum(row.stats.nnz for row in layers)
    dense = sum(row.stats.numel for row in layers)
    info = {**(model_info or {}), "input_shape": list(input_shape), "params": params,
            "weight_nonzeros": nnz, "weight_entries": dense,
            "weight_sparsity": 1 - nnz / dense if dense else 0.0,
            "dense_macs": sum(op.dense_macs for op in graph.ops),
            "sparse_macs": sum(op.sparse_macs for op in graph.ops)}
    notes = []
    if blocker and any(e.startswith("int8") for e in verdict.per_layer.values()):
        err = int8_weight_error(module, input_shape)
        notes.append(f"no int8 export for this model ({blocker.split(':')[0]}); its int8 "
                     f"figures are int8 weights with fp32 activations (weights alone change the "
                     f"output on a seeded input by at most {err:.3g})")
    folded = [f for op in graph.ops for f in op.fused if "BatchNorm" in f]
    if folded:
        notes.append(f"{len(folded)} BatchNorm layer(s) folded into the preceding conv/linear")
    unknown = sorted({op.source for op in graph.ops if op.kind == "other"})
    if unknown:
        notes.append(f"ops without a cost model (0 MACs in the estimate): {', '.join(unknown)}")
    return Profile(info, target, graph, layers, other, arena, arena_int8, block, policy,
                   choices, verdict, notes=notes, int8_blocker=blocker)


def int8_weight_error(module: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """Max abs change of the output on a seeded input when every Conv2d/Linear weight is
    quantized to symmetric per-row int8 (before any BatchNorm folding)."""
    import copy

    from sparsebench.embedded.encodings import quantize_rows

    x = torch.rand(1, *input_shape, generator=torch.Generator().manual_seed(0))
    quant = copy.deepcopy(module).float().eval()
    with torch.no_grad():
        for mod in quant.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                w = mod.weight.detach().reshape(mod.weight.shape[0], -1).numpy()
                q, scale = quantize_rows(w)
                deq = torch.from_numpy(q.astype(np.float32) * scale[:, None])
                mod.weight.copy_(deq.reshape(mod.weight.shape))
    with torch.inference_mode():
        ref, out = module.eval()(x), quant(x)
    return float((ref.float() - out.float()).abs().max())


def host_latency(module: torch.nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Measured single-thread batch-1 latency of the torch module on this machine."""
    from sparsebench.measure.timing import TimingPolicy, latency_stats_ms, time_calls

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.rand(1, *input_shape, generator=torch.Generator().manual_seed(0))
        module = module.eval()
        with torch.inference_mode():
            samples = time_calls(lambda: module(x), TimingPolicy(warmup_calls=3,
                                                                 warmup_seconds=0.05,
                                                                 min_calls=20, min_seconds=0.3))
    finally:
        torch.set_num_threads(threads)
    stats = latency_stats_ms(samples)
    return {"impl": "torch-eager fp32, 1 thread, batch 1", "p50_ms": stats["p50"],
            "p90_ms": stats["p90"], "samples": len(samples)}


def to_dict(p: Profile) -> dict[str, Any]:
    """The profile as plain JSON-ready data (schema ``sparsebench-profile`` v1)."""
    def shape(s: tuple[int, ...]) -> list[int]:
        return [int(d) for d in s]

    ops = [{"index": op.index, "name": op.name, "kind": op.kind, "source": op.source,
            "act": op.act, "fused": op.fused, "inputs": op.inputs, "output": op.output,
            "in_shape": shape(op.in_shape), "out_shape": shape(op.out_shape),
            "params": op.params, "nonzeros": op.nnz if op.weight is not None else None,
            "dense_macs": op.dense_macs, "sparse_macs": op.sparse_macs,
            "out_bytes": 4 * op.out_numel} for op in p.graph.ops]
    layers = [{"name": r.name, "rows": r.stats.rows, "cols": r.stats.cols,
               "nonzeros": r.stats.nnz, "sparsity": 1 - r.stats.nnz / max(1, r.stats.numel),
               "csr8_fillers": r.stats.csr8_fillers, "bsr_blocks": r.stats.nblocks,
               "bias": 0 if r.op.bias is None else int(r.op.bias.size),
               "bytes": dict(r.sizes), "best": r.best, "best_lossless": r.best_lossless,
               "best_c": r.best_c, "best_int8": r.best_int8} for r in p.layers]
    choices = [{"label": c.label, "policy": c.policy, "per_layer": c.per_layer,
                "weight_bytes": c.weight_bytes, "flash_needed": c.flash_needed,
                "ram_needed": c.ram_needed, "flash_margin": c.flash_margin,
                "ram_margin": c.ram_margin, "fits": c.fits,
                "estimated_ms": 1e3 * c.est_seconds,
                "estimated_instructions": (None if c.est_instructions is None
                                           else round(c.est_instructions)),
                "estimate_source": c.est_source} for c in p.choices]
    return {
        "schema": "sparsebench-profile", "schema_version": 1, "model": p.model,
        "target": p.target.to_dict(), "block": list(p.block),
        "encodings": {e: encoding_label(e, p.block) for e in ENCODINGS},
        "ops": ops, "layers": layers, "other_const_bytes": p.other_bytes,
        "totals": p.totals(),
        "arena": {"bytes": p.arena.size, "lower_bound": p.arena.lower_bound,
                  "alignment": 16, "int8_activations_bytes": p.arena_int8,
                  "buffers": [{"tensor": b.name, "bytes": b.size, "offset": b.offset,
                               "first_op": b.first, "last_op": b.last}
                              for b in p.arena.buffers]},
        "choices": choices, "verdict": {"policy": p.verdict.policy, "fits": p.verdict.fits},
        "estimate_note": estimate_note(p.target),
        "host": p.host, "build": p.build, "notes": p.notes, "accuracy": p.accuracy,
        "int8_export": p.int8_blocker is None, "int8_blocker": p.int8_blocker,
    }


def estimate_note(target: Target) -> str:
    """What the estimate is, for the report: calibrated instructions or the roofline."""
    from sparsebench.embedded.estimate import target_calibration

    cal = target_calibration(target)
    if cal is None:
        return ("estimated latency: roofline from the target's cycles-per-MAC and bandwidth "
                "figures (not a measurement)")
    stale = (" (the C kernels changed since this fit: re-run the calibration)"
             if cal.stale else "")
    return (f"estimated instructions: fitted on QEMU instruction counts of single-layer images "
            f"({Path(cal.path).name}: {cal.command}){stale}; milliseconds at 1 instruction per "
            f"cycle at {target.clock_mhz:g} MHz. Instructions, not cycles: real silicon adds "
            f"flash wait states and pipeline stalls, and dual issue can save some (not a "
            f"measurement)")


def fmt_count(n: float) -> str:
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


__all__ = ["POLICIES", "Choice", "LayerRow", "Profile", "check_policy", "fmt_bytes",
           "fmt_count", "fmt_seconds", "host_latency", "percent", "profile_model",
           "to_dict"]
