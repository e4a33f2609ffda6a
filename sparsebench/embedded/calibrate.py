"""Fit a target's instruction-count model from single-layer images run under QEMU.

``python -m sparsebench.embedded.calibrate --target cortex-m7`` builds one image per (kernel
family, layer shape) of ``CALIBRATION_SET`` with export-c, cross-compiles it and counts the
instructions of ``sb_run()`` under QEMU (``build.build_and_run``), then fits per family the
non-negative coefficients of ``estimate.FAMILY_FEATURES`` by least squares on the *relative*
error (a small layer weighs as much as a large one). The result goes to
``targets/<target>.calibration.json`` with every measurement, so ``--refit FILE`` can fit again
(new features) without QEMU. ``--validate`` then builds the zoo models (``models/*.pt``, never
part of the fit) and records estimated vs emulated instructions per model, target and encoding.

The counts are **instructions** (QEMU ``-icount``), not cycles.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsebench.errors import SparsebenchError
from sparsebench.embedded.estimate import (CALIBRATION_SCHEMA, FAMILY_FEATURES, kernel_source_hash,
                                           op_family, op_features)
from sparsebench.embedded.targets import TARGET_DIR, Target, load_target

# conv: (cin, side, cout, kernel, padding, stride, sparsity, zero-row fraction)
CONV_SHAPES = [(1, 20, 4, 5, 2, 1, 0.5, 0.0), (3, 12, 8, 3, 1, 1, 0.75, 0.25),
               (4, 10, 6, 5, 0, 1, 0.9, 0.0), (8, 8, 12, 3, 0, 1, 0.6, 0.5),
               (2, 16, 8, 5, 2, 2, 0.8, 0.0), (6, 9, 10, 3, 1, 1, 0.3, 0.0),
               (5, 12, 6, 3, 2, 1, 0.85, 0.5)]
# linear: (in, out, sparsity, zero-row fraction)
LINEAR_SHAPES = [(64, 32, 0.5, 0.0), (200, 50, 0.9, 0.0), (120, 100, 0.7, 0.5),
                 (300, 20, 0.3, 0.25), (48, 90, 0.85, 0.0)]
# pooling: (channels, side, kernel, stride)
POOL_SHAPES = [(4, 16, 2, 2), (8, 12, 2, 2), (3, 15, 3, 3), (6, 10, 3, 1)]
# elementwise: (channels, side)
ELEMENTWISE_SHAPES = [(4, 16, 16), (8, 10, 10), (1, 30, 30)]


@dataclass(frozen=True)
class Layer:
    """One calibration image: a single layer, its shape and weight sparsity."""

    kind: str                         # conv linear maxpool avgpool relu add affine
    shape: tuple[float, ...]

    def describe(self) -> str:
        s = self.shape
        if self.kind == "conv":
            return (f"conv {s[0]}x{s[1]}x{s[1]} -> {s[2]} k{s[3]} p{s[4]} s{s[5]}, "
                    f"{s[6]:.0%} sparse, {s[7]:.0%} rows zero")
        if self.kind == "linear":
            return f"linear {s[0]} -> {s[1]}, {s[2]:.0%} sparse, {s[3]:.0%} rows zero"
        if self.kind in ("maxpool", "avgpool"):
            return f"{self.kind} {s[0]}x{s[1]}x{s[1]} k{s[2]} s{s[3]}"
        return f"{self.kind} {s[0]}x{s[1]}x{s[2]}"


def _sparsify(w: Any, sparsity: float, zero_rows: float, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = w.shape[0]
    flat = w.view(rows, -1)
    n_zero = int(round(zero_rows * rows))
    flat[torch.randperm(rows, generator=g)[:n_zero]] = 0
    # the rest of the sparsity spread over the remaining entries at random
    left = max(0.0, (sparsity - zero_rows) / max(1e-9, 1 - zero_rows)) if zero_rows < 1 else 0
    flat.mul_((torch.rand(flat.shape, generator=g) >= left).float())


def layer_module(layer: Layer, seed: int = 0) -> tuple[Any, tuple[int, ...]]:
    """The torch module of one calibration layer (seeded weights) and its input shape."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    s = [int(v) if float(v).is_integer() else v for v in layer.shape]
    if layer.kind == "conv":
        cin, side, cout, k, pad, stride, sp, zr = s
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
        with torch.no_grad():
            _sparsify(conv.weight, float(sp), float(zr), seed)
        return nn.Sequential(conv, nn.ReLU()).eval(), (cin, side, side)
    if layer.kind == "linear":
        fin, fout, sp, zr = s
        lin = nn.Linear(fin, fout)
        with torch.no_grad():
            _sparsify(lin.weight, float(sp), float(zr), seed)
        return nn.Sequential(lin, nn.ReLU()).eval(), (fin,)
    if layer.kind in ("maxpool", "avgpool"):
        c, side, k, stride = s
        pool = nn.MaxPool2d(k, stride) if layer.kind == "maxpool" else nn.AvgPool2d(k, stride)
        return nn.Sequential(pool).eval(), (c, side, side)
    c, h, w = s
    if layer.kind == "relu":
        return nn.Sequential(nn.ReLU()).eval(), (c, h, w)
    if layer.kind == "affine":
        bn = nn.BatchNorm2d(c)
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        return nn.Sequential(bn).eval(), (c, h, w)

    class Double(nn.Module):
        """x + x: one elementwise add of two buffers."""

        def forward(self, x: Any) -> Any:
            return x + x

    return Double().eval(), (c, h, w)


def calibration_set(families: list[str] | None = None) -> list[tuple[str, Layer]]:
    """(family, layer) pairs: every family of FAMILY_FEATURES over its shapes."""
    out = []
    for family in FAMILY_FEATURES:
        if families and family not in families:
            continue
        kind = family.split("/")[1]
        shapes = {"conv": CONV_SHAPES, "linear": LINEAR_SHAPES, "maxpool": POOL_SHAPES,
                  "avgpool": POOL_SHAPES}.get(kind, ELEMENTWISE_SHAPES)
        out += [(family, Layer(kind, tuple(shape))) for shape in shapes]
    return out


def _graph_and_qmodel(module: Any, shape: tuple[int, ...], int8: bool) -> tuple[Any, Any]:
    from sparsebench.embedded import quant
    from sparsebench.embedded.lowering import trace

    graph = trace(module, shape)
    if not int8:
        return graph, None
    samples = np.random.default_rng(0).uniform(-1, 1, (32, *shape)).astype(np.float32)
    qm = quant.calibrate(graph, samples, "32 seeded uniform inputs in [-1, 1]")
    return qm.graph, qm


def features_of(family: str, layer: Layer, block: tuple[int, int] = (4, 4)
                ) -> tuple[dict[str, float], Any, tuple[int, ...], Any]:
    """Features of the layer's one op (as the estimate computes them), its module, input shape
    and int8 calibration (None for fp32)."""
    enc_or_value = family.split("/")[0]
    int8 = enc_or_value.startswith("int8")
    module, shape = layer_module(layer)
    graph, qm = _graph_and_qmodel(module, shape, int8)
    if len(graph.ops) != 1:
        raise SparsebenchError(f"calibration layer {layer.describe()} lowers to "
                               f"{len(graph.ops)} ops, expected 1")
    op = graph.ops[0]
    enc = enc_or_value if op.weight is not None else None
    got = op_family(op, enc, "int8" if int8 else "fp32")
    if got != family:
        raise SparsebenchError(f"calibration layer {layer.describe()} is family {got}, "
                               f"expected {family}")
    return op_features(op, enc, block), module, shape, qm


def measure(target: Target, family: str, layer: Layer, block: tuple[int, int] = (4, 4)
            ) -> dict[str, Any]:
    """Build and run one calibration image; its features and the emulated instructions."""
    from sparsebench.embedded.build import build_and_run

    feats, module, shape, qm = features_of(family, layer, block)
    enc = family.split("/")[0]
    encoding = enc if "-" in enc else ("int8-dense" if enc == "int8" else "fp32-dense")
    res = build_and_run(module, shape, target, encoding=encoding, qmodel=qm, block=block,
                        name="calibration")
    if not res["output_ok"]:
        raise SparsebenchError(f"{family} {layer.describe()}: emulated output check failed")
    if res["instructions"] is None:
        raise SparsebenchError(f"{target.name}: the emulator gave no instruction count")
    return {"family": family, "layer": layer.describe(), "kind": layer.kind,
            "shape": list(layer.shape), "features": feats,
            "instructions": int(res["instructions"])}


def _nnls_relative(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative ``coef`` minimising ``sum(((a @ coef - y) / y) ** 2)``."""
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)
    coef, _ = nnls((a / scale) / y[:, None], np.ones_like(y))
    return coef / scale


def fit_family(family: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Non-negative coefficients minimising the relative error over ``points``; the in-sample
    residuals and the leave-one-out error (each point predicted by a fit without it)."""
    names = FAMILY_FEATURES[family]
    a = np.array([[p["features"].get(n, 0.0) for n in names] for p in points], dtype=np.float64)
    y = np.array([p["instructions"] for p in points], dtype=np.float64)
    coef = _nnls_relative(a, y)
    fitted = a @ coef
    rel = (fitted - y) / y
    loo = [float(a[i] @ _nnls_relative(np.delete(a, i, 0), np.delete(y, i)) / y[i] - 1)
           for i in range(len(y))] if len(y) > 1 else [0.0]
    for p, f in zip(points, fitted):
        p["fitted"] = round(float(f), 1)
    return {"features": list(names),
            "coefficients": {n: round(float(c), 6) for n, c in zip(names, coef)},
            "points": len(points), "rms_rel_residual": round(float(np.sqrt((rel ** 2).mean())), 4),
            "max_rel_residual": round(float(np.abs(rel).max()), 4),
            "loo_max_rel_error": round(float(np.abs(loo).max()), 4)}


def fit(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    by_family: dict[str, list[dict[str, Any]]] = {}
    for m in measurements:
        by_family.setdefault(m["family"], []).append(m)
    return {fam: fit_family(fam, pts) for fam, pts in by_family.items()}


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0].strip() if out.stdout else cmd[0]
    except (OSError, subprocess.TimeoutExpired):
        return cmd[0]


def calibrate_target(target: Target, families: list[str] | None, block: tuple[int, int],
                     log: Any = sys.stderr) -> dict[str, Any]:
    """Measure the calibration set on ``target`` and fit it; the calibration file's content."""
    from sparsebench.embedded.build import check_tools, run_command

    check_tools(target)
    spec = target.build
    assert spec is not None
    todo = calibration_set(families)
    measurements, started = [], time.time()
    for i, (family, layer) in enumerate(todo, 1):
        m = measure(target, family, layer, block)
        measurements.append(m)
        print(f"[{i}/{len(todo)}] {target.name} {family:22s} {layer.describe():52s} "
              f"{m['instructions']:>11,}", file=log, flush=True)
    runner = " ".join(run_command(target, Path("model.elf")))
    if spec.kind == "linux-user":
        runner += ("; counted in a second run with one instruction per translation block "
                   "(-singlestep -d exec,nochain), sb_run() and the kernels only")
    return {
        "schema": CALIBRATION_SCHEMA, "schema_version": 1, "target": target.name,
        "unit": "instructions executed by sb_run() under QEMU (not cycles)",
        "command": f"python -m sparsebench.embedded.calibrate --target {target.name}",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "compiler": f"{_tool_version([spec.cc])}: {' '.join(spec.cflags)} -O2",
        "emulator": f"{_tool_version([spec.qemu or ''])}: {runner}",
        "host": platform.machine(), "kernels_sha256": kernel_source_hash(),
        "block": list(block), "images": len(measurements),
        "seconds": round(time.time() - started, 1),
        "families": fit(measurements), "measurements": measurements,
    }


def refit(data: dict[str, Any], block: tuple[int, int]) -> dict[str, Any]:
    """Recompute every measurement's features from its layer (no QEMU) and fit again."""
    for m in data["measurements"]:
        m["features"] = features_of(m["family"], Layer(m["kind"], tuple(m["shape"])), block)[0]
    data["families"] = fit(data["measurements"])
    data["kernels_sha256"] = data.get("kernels_sha256") or kernel_source_hash()
    return data


# ----------------------------------------------------------------------------- validation

ZOO_ENCODINGS = ("auto", "fp32-dense", "int8-dense", "int8-csr8", "verdict")
ZOO_MODELS = ("lenet5_dense", "lenet5_prune_l", "lenet5_prune_s", "lenet300_prune_l")


def zoo_models() -> list[Path]:
    """The zoo checkpoints the validation builds (those present in models/)."""
    from sparsebench.shipped import shipped_path

    return [p for p in (shipped_path(f"models/{m}.pt") for m in ZOO_MODELS) if p.is_file()]


def validate(target: Target, models: list[Path], encodings: tuple[str, ...],
             log: Any = sys.stderr) -> list[dict[str, Any]]:
    """Build each zoo model with each encoding through ``sparsebench profile --build`` and
    compare the estimate (from the calibration on disk) with the emulated count."""
    import tempfile

    rows = []
    for model in models:
        for enc in encodings:
            with tempfile.TemporaryDirectory(prefix="sb-validate-") as tmp:
                out = Path(tmp) / "profile.json"
                cmd = [sys.executable, "-m", "sparsebench", "profile", str(model), "--target",
                       target.origin or target.name, "--build", "--build-encoding", enc,
                       "--no-host", "--no-accuracy", "--json", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if not out.is_file():
                    raise SparsebenchError(f"validation build failed: {' '.join(cmd)}: "
                                           f"{proc.stderr.strip()[-300:]}")
                b = json.loads(out.read_text())["build"]
            est, emu = b.get("estimated_instructions"), b["instructions"]
            row = {"model": model.name, "build_encoding": enc, "encodings": b["encodings"],
                   "emulated": emu, "estimated": None if est is None else round(est),
                   "error": None if est is None else round((est - emu) / emu, 4)}
            rows.append(row)
            print(f"{target.name} {model.name} {enc}: estimated {row['estimated']:,} vs "
                  f"emulated {emu:,} ({100 * (row['error'] or 0):+.1f}%)", file=log, flush=True)
    return rows


def dumps(data: dict[str, Any]) -> str:
    """The calibration file's text: indented, one line per measurement and validation row."""
    text = json.dumps({**data, "measurements": "@M@", "validation": "@V@"}, indent=1)
    for key, mark in (("measurements", '"@M@"'), ("validation", '"@V@"')):
        rows = data.get(key, [])
        text = text.replace(mark, "[\n" + ",\n".join(f"  {json.dumps(r)}" for r in rows)
                            + "\n ]" if rows else "[]")
    return text + "\n"


def _write(path: Path, data: dict[str, Any]) -> None:
    from sparsebench.outputs import atomic_write_text

    atomic_write_text(path, dumps(data))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparsebench.embedded.calibrate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", required=True,
                   help="target name or TOML file (repeat for several)")
    p.add_argument("--family", action="append", help="only these kernel families (e.g. "
                   "int8-csr8/conv); default all")
    p.add_argument("--out", help="calibration file (default: targets/<name>.calibration.json "
                   "beside the shipped targets); with several targets, a directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--refit", action="store_true", help="fit again from the measurements in "
                   "the existing file (no QEMU)")
    p.add_argument("--validate", nargs="*", metavar="MODEL", help="build these models (default "
                   "models/*.pt) and record estimated vs emulated instructions in the file")
    p.add_argument("--encodings", default=",".join(ZOO_ENCODINGS),
                   help="--build-encoding values for --validate (comma-separated)")
    args = p.parse_args(argv)
    try:
        unknown = [f for f in args.family or [] if f not in FAMILY_FEATURES]
        if unknown:
            raise SparsebenchError(f"unknown kernel family {', '.join(unknown)}; choose from: "
                                   f"{', '.join(FAMILY_FEATURES)}")
        for name in args.target:
            target = load_target(name)
            path = Path(args.out) if args.out else TARGET_DIR / f"{target.name}.calibration.json"
            if args.out and len(args.target) > 1:
                path = Path(args.out) / f"{target.name}.calibration.json"
            if args.refit or args.validate is not None:
                if not path.is_file():
                    raise SparsebenchError(f"{path}: no calibration file to refit or validate")
                data = json.loads(path.read_text())
                if args.refit:
                    data = refit(data, tuple(data.get("block", (4, 4))))
            else:
                if path.exists() and not args.force:
                    raise SparsebenchError(f"{path} exists (use --force to overwrite)")
                data = calibrate_target(target, args.family, (4, 4))
            if args.validate is not None:
                _write(path, data)            # the estimate reads the coefficients from disk
                models = [Path(m) for m in args.validate] or zoo_models()
                rows = validate(target, models, tuple(args.encodings.split(",")))
                done = {(r["model"], r["build_encoding"]) for r in rows}
                data["validation"] = [r for r in data.get("validation", [])
                                      if (r["model"], r["build_encoding"]) not in done] + rows
                data.setdefault("validation_commands", []).append(
                    f"python -m sparsebench.embedded.calibrate --target {target.name} "
                    f"--validate {' '.join(args.validate)} --encodings {args.encodings}"
                    .replace("  ", " "))
            _write(path, data)
            worst = max(f["max_rel_residual"] for f in data["families"].values())
            print(f"wrote {path}: {len(data['families'])} families, "
                  f"{len(data['measurements'])} images, worst fit residual {worst:.1%}")
    except SparsebenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
