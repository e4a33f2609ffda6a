"""CSR kernel vs torch dense F.linear at several densities (interleaved rounds, medians): the
measurement behind DENSE_WINS in sparsebench/backends/kernel_plan.py (docs/native.md).

    python benchmarks/dense_breakeven.py [THREADS]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from sparsebench.native import CSRLinear

SHAPES = [(768, 768, 128), (3072, 768, 128), (2048, 2048, 1), (4096, 4096, 1)]  # (M, K, rows)
DENSITIES = (0.2, 0.35, 0.45, 0.55, 0.65, 0.8, 1.0)


def ms_per_call(fn, calls: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def main(threads: int = 1, rounds: int = 7) -> None:
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    cases = []
    for m, k, rows in SHAPES:
        for d in DENSITIES:
            w = rng.standard_normal((m, k)).astype(np.float32)
            w[rng.random(w.shape) >= d] = 0
            x = rng.standard_normal((rows, k)).astype(np.float32)
            op, y = CSRLinear.from_dense(w, threads=threads), np.empty((rows, m), np.float32)
            wt, xt = torch.from_numpy(w), torch.from_numpy(x)
            cases.append(((m, k, rows, d), lambda op=op, x=x, y=y: op.run(x, y),
                          lambda wt=wt, xt=xt: torch.nn.functional.linear(xt, wt)))
    times = {key: ([], []) for key, _, _ in cases}
    for _ in range(rounds):  # every case and engine once per round: drift hits all alike
        for key, sparse, dense in cases:
            times[key][0].append(ms_per_call(sparse))
            times[key][1].append(ms_per_call(dense))
    print(f"threads {threads}; dense/csr > 1: the CSR kernel is faster")
    for (m, k, rows, d), (s, dn) in times.items():
        cs, dd = float(np.median(s)), float(np.median(dn))
        print(f"{m}x{k} rows {rows:3d} density {d:.2f}: csr {cs:.3f} ms  dense {dd:.3f} ms  "
              f"dense/csr {dd / cs:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
