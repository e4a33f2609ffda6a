"""A roofline-style latency estimate from MACs, bytes and a target's throughput figures.

Per op: compute cycles = MACs x cycles-per-MAC of the encoding's kind (dense fp32/int8 rates
for dense and for the stored blocks of BSR, sparse rates per stored nonzero of CSR/bitmask,
including CSR-8 fillers) + ``elementwise_cycles`` per output element (bias, activation) or per
window element (pooling); memory time = (weight bytes + activation bytes read and written) /
``mem_bandwidth_mb_s``. The op takes the larger of the two; the model the sum. One core, batch 1.
It is an estimate, not a measurement: the report labels it so.
"""

from __future__ import annotations

import math

from sparsebench.embedded.encodings import MatrixStats
from sparsebench.embedded.lowering import Op
from sparsebench.embedded.targets import Target


def op_seconds(op: Op, target: Target, enc: str | None = None, stats: MatrixStats | None = None,
               weight_bytes: int = 0) -> float:
    """Estimated seconds of one op; ``enc``/``stats``/``weight_bytes`` for weight ops."""
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
