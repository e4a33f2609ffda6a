"""The statistics of the regression gate: the ratio of medians NEW/BASE, its bootstrap confidence
interval and a rank-test p-value, computed on contiguous blocks of the raw samples.

Why blocks: calls timed in one process are autocorrelated (a busy neighbour slows a stretch of
them) and the level shifts between processes, so a test that treats thousands of calls as
independent calls a 1% drift "significant". Each row's samples are cut into ``blocks`` runs in
time order (or into the given ``sizes``, e.g. one block per worker process); the rank test
compares block medians and the bootstrap resamples whole blocks, so significance reflects the
noise of whole stretches of a run. ``blocks=0`` is the per-call test (shown in docs/ci-gate.md
for contrast). Paired data (interleaved A/B, where block i of both subjects was measured at the
same time) uses the Wilcoxon signed-rank test on per-block log ratios and resamples blocks jointly,
which cancels drift; otherwise the Mann-Whitney U test and independent resampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

REPRESENTATIVES = 64  # order statistics kept per block for the bootstrap
CHUNK_ELEMENTS = 4_000_000  # bootstrap work array size (memory bound)


@dataclass(frozen=True)
class Change:
    """NEW/BASE latency: ratio of medians, its (1 - alpha) CI, p-value, and what was tested."""

    ratio: float
    low: float
    high: float
    p_value: float
    test: str
    blocks: tuple[int, int]
    samples: tuple[int, int]


def split_blocks(samples: Sequence[float], blocks: int,
                 sizes: Sequence[int] | None = None) -> list[np.ndarray]:
    """Contiguous blocks in time order: ``sizes`` when given, else ``blocks`` near-equal ones
    (at most one per sample); ``blocks=0`` makes every sample its own block."""
    x = np.asarray(samples, dtype=np.float64)
    if sizes:
        if sum(sizes) != len(x) or min(sizes) < 1:
            raise ValueError(f"block sizes {list(sizes)} do not cover {len(x)} samples")
        return np.split(x, np.cumsum(sizes)[:-1])
    if blocks <= 0:
        return list(x.reshape(-1, 1))
    return [b for b in np.array_split(x, min(blocks, len(x))) if len(b)]


def _representatives(blocks: list[np.ndarray]) -> np.ndarray:
    """A (blocks, L) array: the raw samples when blocks are equal and short, else L evenly
    spaced quantiles of each block, so every block weighs the same in a pooled median."""
    lengths = {len(b) for b in blocks}
    size = min(min(lengths), REPRESENTATIVES)
    if len(lengths) == 1 and size == next(iter(lengths)):
        return np.stack(blocks)
    q = (np.arange(size) + 0.5) / size
    return np.stack([np.quantile(b, q) for b in blocks])


def _pooled_medians(rep: np.ndarray, idx: np.ndarray) -> np.ndarray:
    part = rep[idx]
    return np.median(part.reshape(len(part), -1), axis=1)


def bootstrap_ratio(base: list[np.ndarray], new: list[np.ndarray], alpha: float,
                    resamples: int, seed: int, paired: bool) -> tuple[float, float]:
    """Percentile (1 - alpha) interval of median(new)/median(base) over resampled blocks
    (in chunks, so memory stays bounded even with one block per call)."""
    rng = np.random.default_rng(seed)
    rb, rn = _representatives(base), _representatives(new)
    per = max(1, CHUNK_ELEMENTS // max(rb.size, rn.size))
    ratios = []
    for start in range(0, resamples, per):
        k = min(per, resamples - start)
        ib = rng.integers(0, len(base), size=(k, len(base)))
        inew = ib if paired else rng.integers(0, len(new), size=(k, len(new)))
        ratios.append(_pooled_medians(rn, inew) / _pooled_medians(rb, ib))
    low, high = np.quantile(np.concatenate(ratios), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def rank_test(base: np.ndarray, new: np.ndarray, paired: bool) -> float:
    """Two-sided p-value: Wilcoxon signed-rank on log(new/base) per pair, else Mann-Whitney U."""
    from scipy import stats

    try:
        if paired:
            diff = np.log(new) - np.log(base)
            if not np.any(diff):
                return 1.0
            p = stats.wilcoxon(diff, alternative="two-sided").pvalue
        else:
            p = stats.mannwhitneyu(new, base, alternative="two-sided").pvalue
    except ValueError:
        return 1.0
    return 1.0 if not np.isfinite(p) else float(p)


def latency_change(base: Sequence[float], new: Sequence[float], *, alpha: float = 0.01,
                   blocks: int = 20, resamples: int = 2000, seed: int = 0,
                   paired: bool = False, base_sizes: Sequence[int] | None = None,
                   new_sizes: Sequence[int] | None = None) -> Change:
    """Compare two rows' raw samples (see the module docstring for the method)."""
    if len(base) < 2 or len(new) < 2:
        raise ValueError("at least two samples per side are needed")
    bb = split_blocks(base, blocks, base_sizes)
    nb = split_blocks(new, blocks, new_sizes)
    paired = paired and len(bb) == len(nb)
    ratio = float(np.median(np.asarray(new, dtype=np.float64))
                  / np.median(np.asarray(base, dtype=np.float64)))
    low, high = bootstrap_ratio(bb, nb, alpha, resamples, seed, paired)
    p = rank_test(np.array([np.median(b) for b in bb]), np.array([np.median(b) for b in nb]),
                  paired)
    test = ("wilcoxon" if paired else "mann-whitney") + ("/calls" if blocks <= 0 and not
                                                          (base_sizes or new_sizes) else "/blocks")
    return Change(ratio, low, high, p, test, (len(bb), len(nb)), (len(base), len(new)))


def min_p_value(blocks: tuple[int, int], paired: bool) -> float:
    """The smallest two-sided p-value the rank test can give with this many blocks."""
    from math import comb

    if paired:
        return min(1.0, 2 / 2 ** min(blocks))
    return min(1.0, 2 / comb(blocks[0] + blocks[1], blocks[0]))


def verdict(change: Change, alpha: float, threshold: float, rule: str = "bound") -> str:
    """``slower``, ``faster`` or ``unchanged``.

    A change needs significance (p < alpha and a CI on one side of 1) and size, by ``rule``:
    ``bound``: the CI reaches the threshold and the ratio is at least half of it;
    ``ci``: the CI reaches the threshold (a change of at least the threshold is not ruled out);
    ``point``: the ratio itself is beyond the threshold (a true change of exactly the
    threshold is then flagged about half of the time). Faster mirrors slower on a log scale:
    1 + t becomes 1 / (1 + t)."""
    if change.p_value >= alpha or change.low <= 1 <= change.high:
        return "unchanged"
    slower = change.low > 1
    ratio, reach = ((change.ratio, change.high) if slower
                    else (1 / change.ratio, 1 / change.low))
    if rule == "point":
        big = ratio >= 1 + threshold
    elif rule == "ci":
        big = reach >= 1 + threshold
    elif rule == "bound":
        big = reach >= 1 + threshold and ratio >= 1 + threshold / 2
    else:
        raise ValueError(f"unknown rule {rule!r}")
    return ("slower" if slower else "faster") if big else "unchanged"
