"""The latency estimate of one op and of a model: QEMU-calibrated instructions, or a roofline.

**Calibrated** (targets whose TOML names a ``calibration`` file, fitted by
``python -m sparsebench.embedded.calibrate``): each op belongs to a kernel *family* (the
encoding and op kind, e.g. ``int8-csr8/conv``, ``fp32-dense/linear``, ``int8/maxpool``) and
costs ``sum(coefficient[f] * feature[f])`` executed instructions over a few counts the C
kernels loop over (``FAMILY_FEATURES``):

* ``call`` 1 per kernel call; ``out`` output elements (bias, requantisation, activation);
* ``macs`` every stored weight entry x output positions (the inner-loop trips: all entries
  for dense, stored entries with CSR-8 fillers for CSR, every entry of a stored block for BSR);
* ``nz`` nonzero weights x positions (the multiplies a sparse kernel does); ``scan`` every
  weight x positions (the bitmask kernels test one bit per weight);
* ``valid`` conv only: the (weight, position) pairs whose input lies inside the image (not in
  the zero padding), over the entries the kernel multiplies;
* ``taps``, ``tap_rows`` conv only, for the kernels that scatter one stored tap over the
  output plane (fp32 dense and CSR-16): stored entries, and the output rows each one visits;
* ``row_trips``, ``row_inside`` the int8 dense conv (taps in order, a bounds check per
  kernel row): kernel rows x outputs, and taps whose input row is inside the image;
* ``window`` pooling: output elements x window size.

The estimate is instructions (QEMU counts instructions, not cycles); seconds are derived at one
instruction per cycle and labelled so.

**Roofline** (no calibration): compute cycles = MACs x the target's cycles per MAC for the
encoding's kind + ``elementwise_cycles`` per output or window element; memory time = bytes
moved / ``mem_bandwidth_mb_s``; the op takes the larger. One core, batch 1. Either way it is
an estimate, not a measurement, and the report says which one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sparsebench.errors import SparsebenchError
from sparsebench.embedded.encodings import BUILDABLE, MatrixStats, matrix_stats, quantize_rows
from sparsebench.embedded.lowering import Graph, Op
from sparsebench.embedded.targets import Target

CALIBRATION_SCHEMA = "sparsebench-calibration"
KERNEL_SOURCE = Path(__file__).resolve().parent / "csrc" / "sb_kernels.c"
_SCATTER = ("call", "out", "taps", "tap_rows", "valid")
_POOL = ("call", "out", "window")
_ELEMENTWISE = ("call", "out")


def _weight_features(enc: str, kind: str) -> tuple[str, ...]:
    value, _, layout = enc.partition("-")
    if kind == "conv" and value == "fp32" and layout in ("dense", "csr16"):
        return _SCATTER
    conv = ("valid",) if kind == "conv" else ()
    if kind == "conv" and layout == "dense":         # int8: taps in order, bounds per row
        return ("call", "out", "row_trips", "row_inside", "valid")
    if layout == "dense" or (value == "fp32" and layout == "csr16"):
        return ("call", "out", "macs", *conv)
    if layout.startswith("csr"):
        return ("call", "out", "nz", *conv)
    if layout == "bitmask":
        return ("call", "out", "scan", "nz", *conv)
    return ("call", "out", "macs", "nz", *conv)          # bsr


FAMILY_FEATURES: dict[str, tuple[str, ...]] = {
    **{f"{e}/{k}": _weight_features(e, k) for e in BUILDABLE for k in ("conv", "linear")},
    **{f"{v}/{k}": _POOL for v in ("fp32", "int8") for k in ("maxpool", "avgpool")},
    "fp32/relu": _ELEMENTWISE, "int8/relu": _ELEMENTWISE, "fp32/add": _ELEMENTWISE,
    "fp32/affine": _ELEMENTWISE,
}


def op_family(op: Op, enc: str | None = None, value: str = "fp32") -> str | None:
    """The kernel family of ``op`` (``enc`` for weight ops; ``value`` the activation type of
    the others); None for an op without a C kernel."""
    if op.weight is not None:
        return f"{enc}/{op.kind}" if enc else None
    kind = {"adaptive_avgpool": "avgpool", "bn": "affine", "mul_const": "affine",
            "add_const": "affine"}.get(op.kind, op.kind)
    family = f"{value}/{kind}"
    return family if family in FAMILY_FEATURES else None


def _inside_per_tap(op: Op) -> tuple[np.ndarray, np.ndarray]:
    """For a conv: per kernel row ky, the output rows whose input row is inside the image (not
    in the zero padding); per kernel column kx, the output columns likewise."""
    a = op.attrs
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    (ph, pw), (dh, dw) = a["padding"], a.get("dilation", (1, 1))
    _, h, wd = op.in_shape
    _, ho, wo = op.out_shape

    def count(k: int, n_out: int, s: int, p: int, d: int, n_in: int) -> np.ndarray:
        pos = np.arange(n_out)[None, :] * s - p + np.arange(k)[:, None] * d
        return ((pos >= 0) & (pos < n_in)).sum(axis=1)

    return count(kh, ho, sh, ph, dh, h), count(kw, wo, sw, pw, dw, wd)


def _bsr_trips(keep: np.ndarray, block: tuple[int, int]) -> int:
    """Inner-loop trips of the BSR kernels per output position: each matrix row walks every
    stored block of its block row, ``bc`` entries each."""
    rows, cols = keep.shape
    br, bc = block
    prow, pcol = -(-rows // br) * br, -(-cols // bc) * bc
    padded = np.zeros((prow, pcol), dtype=bool)
    padded[:rows, :cols] = keep
    per_block_row = padded.reshape(prow // br, br, pcol // bc, bc).any(axis=(1, 3)).sum(axis=1)
    real_rows = np.minimum(br, rows - np.arange(prow // br) * br)
    return int((per_block_row * real_rows).sum()) * bc


def op_features(op: Op, enc: str | None = None, block: tuple[int, int] = (4, 4)
                ) -> dict[str, float]:
    """The counts of ``FAMILY_FEATURES`` for ``op`` stored in ``enc`` (see the docstring);
    int8 encodings count the nonzeros of the quantized matrix, as export-c stores it."""
    out = float(op.out_numel)
    if op.weight is None:
        if "pool" not in op.kind:
            return {"call": 1.0, "out": out}
        if op.kind == "adaptive_avgpool":
            window = max(1, math.prod(op.in_shape) // max(op.out_numel, 1))
        else:
            window = math.prod(op.attrs["kernel"])
        return {"call": 1.0, "out": out, "window": out * window}
    value, _, layout = (enc or "fp32-dense").partition("-")
    w = quantize_rows(op.weight)[0] if value == "int8" else op.weight
    stats: MatrixStats = matrix_stats(w, block)
    pos = op.positions
    keep = w != 0
    if layout == "dense":
        stored, entries = stats.numel, np.ones_like(keep)
    elif layout == "bsr":
        stored, entries = _bsr_trips(keep, block), keep
    else:
        stored = stats.nnz + (stats.csr8_fillers if layout == "csr8" else 0)
        entries = keep
    feats = {"call": 1.0, "out": out, "macs": float(stored * pos),
             "nz": float(stats.nnz * pos), "scan": float(stats.numel * pos)}
    if op.kind == "conv":
        kh, kw = op.attrs["kernel"]
        ny, nx = _inside_per_tap(op)
        per_tap = entries.reshape(entries.shape[0], -1, kh * kw).sum(axis=(0, 1))
        per_ky = per_tap.reshape(kh, kw).sum(axis=1)
        wo = op.out_shape[2]
        feats["valid"] = float(per_tap @ np.outer(ny, nx).reshape(-1))
        feats["taps"] = float(per_tap.sum())
        feats["tap_rows"] = float(per_ky @ ny)             # output rows a tap's loop visits
        feats["row_trips"] = float(stored * pos / kw)      # the dense kernel's ky loop
        feats["row_inside"] = float(per_ky @ ny) * wo      # taps in rows inside the image
    return feats


@dataclass(frozen=True)
class Calibration:
    """Fitted instructions-per-feature coefficients of one target (a calibration JSON file)."""

    target: str
    path: str
    coefficients: dict[str, dict[str, float]]
    command: str = ""
    kernels_sha256: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def stale(self) -> bool:
        """True if the C kernels changed since the fit (the counts may no longer hold)."""
        return bool(self.kernels_sha256) and self.kernels_sha256 != kernel_source_hash()

    def instructions(self, family: str, feats: dict[str, float]) -> float | None:
        coef = self.coefficients.get(family)
        if coef is None:
            return None
        return sum(c * feats.get(name, 0.0) for name, c in coef.items())


def kernel_source_hash() -> str:
    return hashlib.sha256(KERNEL_SOURCE.read_bytes()).hexdigest()


@lru_cache(maxsize=16)
def load_calibration(path: str) -> Calibration:
    """A calibration file (schema ``sparsebench-calibration``); one-line errors."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SparsebenchError(f"calibration file {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != CALIBRATION_SCHEMA:
        raise SparsebenchError(f"calibration file {path} is not a {CALIBRATION_SCHEMA} file")
    fams = data.get("families")
    if not isinstance(fams, dict):
        raise SparsebenchError(f"calibration file {path}: no 'families' table")
    coef: dict[str, dict[str, float]] = {}
    for family, entry in fams.items():
        raw = entry.get("coefficients") if isinstance(entry, dict) else None
        if not isinstance(raw, dict) or not all(isinstance(v, (int, float))
                                                for v in raw.values()):
            raise SparsebenchError(f"calibration file {path}: family {family!r} has no numeric "
                                   f"'coefficients'")
        coef[family] = {k: float(v) for k, v in raw.items()}
    return Calibration(str(data.get("target", "")), str(path), coef,
                       str(data.get("command", "")), str(data.get("kernels_sha256", "")),
                       {k: data[k] for k in ("compiler", "emulator", "unit", "points")
                        if k in data})


def op_seconds(op: Op, target: Target, enc: str | None = None, stats: MatrixStats | None = None,
               weight_bytes: int = 0) -> float:
    """Roofline seconds of one op; ``enc``/``stats``/``weight_bytes`` for weight ops."""
    out = op.out_numel
    act_bytes = 4 * (out + len(op.inputs) * math.prod(op.in_shape))
    if op.weight is not None and enc is not None and stats is not None:
        value, _, kind = enc.partition("-")
        dense_rate = target.fp32_mac_cycles if value == "fp32" else target.int8_mac_cycles
        sparse_rate = (target.sparse_fp32_mac_cycles if value == "fp32"
                       else target.sparse_int8_mac_cycles)
        if kind == "dense":
            cycles = op.dense_macs * dense_rate
        elif kind == "bsr":
            r, c = stats.block
            cycles = stats.nblocks * r * c * op.positions * dense_rate
        else:
            fill = stats.csr8_fillers if kind == "csr8" else 0
            cycles = (op.nnz + fill) * op.positions * sparse_rate
        cycles += out * target.elementwise_cycles
        moved = weight_bytes + act_bytes
    else:
        window = math.prod(op.attrs.get("kernel", (1, 1))) if "pool" in op.kind else 1
        if op.kind == "adaptive_avgpool":
            window = max(1, math.prod(op.in_shape) // max(out, 1))
        cycles = out * window * target.elementwise_cycles
        moved = act_bytes
    seconds = cycles / (target.clock_mhz * 1e6)
    if target.mem_bandwidth_mb_s:
        seconds = max(seconds, moved / (target.mem_bandwidth_mb_s * 1e6))
    return seconds


@dataclass
class ModelEstimate:
    """A model's estimate: seconds, and instructions when the target is calibrated."""

    seconds: float
    instructions: float | None = None
    per_op: dict[str, float] = field(default_factory=dict)   # instructions (or seconds) per op
    uncalibrated: list[str] = field(default_factory=list)    # op names the fit does not cover
    source: str = "roofline"


def target_calibration(target: Target) -> Calibration | None:
    return load_calibration(target.calibration) if target.calibration else None


def estimate_model(graph: Graph, per_layer: dict[str, str], target: Target,
                   block: tuple[int, int] = (4, 4),
                   layer_info: dict[str, tuple[MatrixStats, int]] | None = None,
                   cache: dict[tuple[int, str | None], dict[str, float]] | None = None
                   ) -> ModelEstimate:
    """The estimate of ``graph`` with ``per_layer`` encodings (weight key -> encoding).
    ``layer_info`` (weight key -> (stats, bytes)) feeds the roofline; computed if absent.
    ``cache`` keeps op features between calls on the same graph (several choices).
    Calibrated targets: instructions per op from the fit; an op of a family the fit lacks
    is costed by the roofline at one instruction per cycle and listed in ``uncalibrated``."""
    from sparsebench.embedded.encodings import layer_bytes

    cal = target_calibration(target)
    value = "int8" if per_layer and all(e.startswith("int8") for e in per_layer.values()) \
        else "fp32"
    clock = target.clock_mhz * 1e6
    est = ModelEstimate(0.0, 0.0 if cal else None,
                        source=f"QEMU calibration {Path(cal.path).name}" if cal else "roofline")
    for op in graph.ops:
        key = op.weight_key or op.name
        enc = per_layer.get(key) if op.weight is not None else None
        if op.weight is not None and enc is None:
            continue
        if op.weight is not None:
            if layer_info is not None and key in layer_info:
                stats, nbytes = layer_info[key]
            else:
                assert op.weight is not None
                stats, sizes = layer_bytes(op.weight, op.bias_len, block)
                nbytes = sizes[enc] or 0  # type: ignore[index]
            roof = op_seconds(op, target, enc, stats, nbytes)
        else:
            roof = op_seconds(op, target)
        if cal is None:
            est.seconds += roof
            est.per_op[op.name] = roof
            continue
        family = op_family(op, enc, value)
        count = None
        if family:
            feats = cache.get((op.index, enc)) if cache is not None else None
            if feats is None:
                feats = op_features(op, enc, block)
                if cache is not None:
                    cache[(op.index, enc)] = feats
            count = cal.instructions(family, feats)
        if count is None:
            count = roof * clock
            est.uncalibrated.append(op.name)
        est.instructions = (est.instructions or 0.0) + count
        est.per_op[op.name] = count
    if cal is not None:
        est.seconds = (est.instructions or 0.0) / clock
    return est
