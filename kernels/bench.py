"""SpMV / small-batch benchmark of the native CSR kernel against scipy, torch.sparse and dense
torch, interleaved in one process (medians of many calls), plus a numpy copy bandwidth.

    python kernels/bench.py [--m 4096] [--k 4096] [--sparsity 0.9] [--batch 1] [--rounds 300]
    python kernels/bench.py --conv      # conv shapes of VGG11/ResNet18 vs dense torch
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from sparsebench import native  # noqa: E402
from sparsebench.measure.roofline import copy_bandwidth  # noqa: E402


def interleaved(
    cases: dict[str, Callable[[], object]], rounds: int, block: int = 10
) -> dict[str, float]:
    """Median seconds per call. Each round runs every case `block` times back to back (warm
    caches, as in a serving loop) and the cases take turns, so machine noise hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(max(1, rounds // block)):
        for name, fn in cases.items():
            fn()  # re-warm after the other cases
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--no-copy", action="store_true")
    ap.add_argument("--extra", action="store_true", help="also BSR and conv, 1 thread")
    ap.add_argument("--conv", action="store_true", help="convolution shapes of VGG11/ResNet18 "
                    "(and the 56x56 reference) vs dense torch, 1 thread")
    args = ap.parse_args()
    if args.extra:
        extra(args.rounds)
        return
    if args.conv:
        convs(args.rounds)
        return

    rng = np.random.default_rng(0)
    m, k, b = args.m, args.k, args.batch
    w = rng.standard_normal((m, k)).astype(np.float32)
    w[rng.random((m, k)) < args.sparsity] = 0.0
    x = rng.standard_normal((b, k)).astype(np.float32)
    csr = sp.csr_matrix(w)
    nnz = csr.nnz
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    print(f"W {m}x{k}, sparsity {args.sparsity:.2f}, nnz {nnz}, batch {b}; isa {native.isa()}")
    if not args.no_copy:
        print(f"numpy copy bandwidth (256 MB, read+write): {copy_bandwidth():.1f} GB/s")

    def traffic(index_bytes: int) -> int:
        return nnz * (4 + index_bytes) + (m + 1) * 4 + b * k * 4 + b * m * 4

    xs = x[0] if b == 1 else np.ascontiguousarray(x.T)
    wt = torch.from_numpy(w)
    wsp = wt.to_sparse_csr()
    xt = torch.from_numpy(x)
    xtv = xt[0] if b == 1 else xt.T.contiguous()
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        cases: dict[str, Callable[[], object]] = {
            "scipy csr @ x": lambda: csr @ xs,
            "torch.sparse csr @ x": lambda: wsp @ xtv,
            "torch dense F.linear": lambda: torch.nn.functional.linear(xt, wt),
        }
        bytes_of: dict[str, int] = {"scipy csr @ x": traffic(4), "torch.sparse csr @ x": traffic(8)}
        for idx in (np.int32, np.int16):
            op = native.CSRLinear.from_scipy(csr, threads=threads, index_dtype=idx)
            out = np.empty((b, m), np.float32)
            np.testing.assert_allclose(op.run(x), ref, rtol=1e-3, atol=1e-3)
            for gather in (1, 0):
                name = f"{op.impl} {'gather' if gather else 'scalar'}"

                def call(op=op, out=out, gather=gather) -> None:
                    native.tuning("spmv_gather", gather)
                    op.run(x, out=out)

                cases[name] = call
                bytes_of[name] = traffic(np.dtype(idx).itemsize)
        times = interleaved(cases, args.rounds)
        native.tuning("spmv_gather", 1)
        best_lib = min(times["scipy csr @ x"], times["torch.sparse csr @ x"])
        print(f"\n-- threads={threads} (medians of {args.rounds} interleaved calls)")
        print(f"{'case':44s} {'time us':>9s} {'GB/s':>6s} {'vs best lib':>11s}")
        for name, t in times.items():
            gbs = f"{bytes_of[name] / t / 1e9:6.1f}" if name in bytes_of else "     -"
            print(f"{name:44s} {t * 1e6:9.1f} {gbs} {best_lib / t:10.2f}x")


def extra(rounds: int) -> None:
    """BSR 4x4 / 16x1 vs CSR of the same matrix, and 3x3 / 1x1 sparse conv vs dense torch."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    m = k = 4096
    cases: dict[str, Callable[[], object]] = {}
    x = rng.standard_normal((1, k)).astype(np.float32)
    for block in ((4, 4), (16, 1)):
        mask = rng.random((m // block[0], k // block[1])) < 0.1
        w = (np.kron(mask, np.ones(block)) * rng.standard_normal((m, k))).astype(np.float32)
        bsr = native.BSRLinear.from_dense(w, block)
        csr = native.CSRLinear.from_dense(w)
        out = np.empty((1, m), np.float32)
        cases[f"{bsr.impl} 90% blocks, batch 1"] = lambda op=bsr, out=out: op.run(x, out=out)
        cases[f"{csr.impl} same matrix"] = lambda op=csr, out=out: op.run(x, out=out)
    for kern, hw in ((3, 56), (1, 56)):
        w = rng.standard_normal((64, 64, kern, kern)).astype(np.float32)
        w[rng.random(w.shape) < 0.9] = 0
        xc = rng.standard_normal((1, 64, hw, hw)).astype(np.float32)
        conv = native.CSRConv2d.from_dense(w, 1, kern // 2)
        outc = np.empty((1, 64, hw, hw), np.float32)
        xt, wt = torch.from_numpy(xc), torch.from_numpy(w)
        ref = torch.nn.functional.conv2d(xt, wt, None, 1, kern // 2)
        np.testing.assert_allclose(conv.run(xc), ref.numpy(), rtol=1e-3, atol=1e-3)
        cases[f"{conv.impl} {kern}x{kern} 64->64 {hw}x{hw} 90%"] = (
            lambda op=conv, xc=xc, outc=outc: op.run(xc, out=outc))
        cases[f"torch dense conv2d {kern}x{kern}"] = (
            lambda xt=xt, wt=wt, p=kern // 2: torch.nn.functional.conv2d(xt, wt, None, 1, p))
    for name, t in interleaved(cases, rounds).items():
        print(f"{name:52s} {t * 1e6:9.1f} us")


CONV_SHAPES = [  # (cin, cout, size, kernel, stride, sparsity, batch)
    (64, 64, 56, 3, 1, 0.9, 1), (64, 64, 56, 1, 1, 0.9, 1), (3, 64, 32, 3, 1, 0.0, 1),
    (64, 64, 32, 3, 1, 0.9, 1), (64, 128, 32, 3, 2, 0.9, 1), (128, 128, 16, 3, 1, 0.9, 1),
    (256, 256, 8, 3, 1, 0.9, 1), (512, 512, 4, 3, 1, 0.9, 1), (512, 512, 2, 3, 1, 0.9, 1),
    (256, 256, 8, 3, 1, 0.7, 1), (512, 512, 4, 3, 1, 0.7, 1), (256, 256, 8, 3, 1, 0.9, 8),
    (512, 512, 4, 3, 1, 0.9, 32),
]


def convs(rounds: int) -> None:
    """Native sparse conv vs dense torch (oneDNN) per shape, interleaved, 1 thread."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{'shape':36s} {'native us':>10s} {'torch us':>10s} {'speedup':>8s}  plan")
    for cin, cout, size, kern, stride, sparsity, batch in CONV_SHAPES:
        w = rng.standard_normal((cout, cin, kern, kern)).astype(np.float32)
        w[rng.random(w.shape) < sparsity] = 0
        x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
        op = native.CSRConv2d.from_dense(w, stride, kern // 2)
        out = op.run(x)
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        ref = torch.nn.functional.conv2d(xt, wt, None, stride, kern // 2)
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-3, atol=1e-3)
        t = interleaved({"native": lambda: op.run(x, out=out),
                         "torch": lambda: torch.nn.functional.conv2d(xt, wt, None, stride,
                                                                     kern // 2)}, rounds)
        plan = op.plan(x.shape)
        name = (f"{kern}x{kern}/{stride} {cin}->{cout} {size}x{size} {sparsity:.0%} b{batch}")
        print(f"{name:36s} {t['native'] * 1e6:10.1f} {t['torch'] * 1e6:10.1f} "
              f"{t['torch'] / t['native']:7.2f}x  layout {plan['layout']} tile {plan['tile']} "
              f"blocks {plan['channel_blocks']}")


if __name__ == "__main__":
    main()
