"""Unit scores and the Prune_L / Prune_S / Prune_R target rules (paper B)."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.catalog import SCORES, TARGETS
from sparsebench.errors import SparsebenchError


def filter_scores(weight: torch.Tensor, score: str) -> torch.Tensor:
    """One score per output unit: the L2 or L1 norm of its weights."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    if score == "l2":
        return flat.norm(p=2, dim=1)
    if score == "l1":
        return flat.abs().sum(dim=1)
    raise SparsebenchError(f"unknown weight score {score!r}; choose from: l2, l1")


def select_targets(scores: torch.Tensor, alive: torch.Tensor, k: int, target: str,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (into the flattened ``scores``) of ``k`` live units chosen by the target rule.

    prune-l: the k highest-scoring live units; prune-s: the k lowest; prune-r: k live units
    uniformly at random. Ties break by index (stable sort), so results are deterministic.
    """
    scores, alive = scores.reshape(-1), alive.reshape(-1)
    live = torch.nonzero(alive, as_tuple=False).reshape(-1)
    if k <= 0:
        return live[:0]
    if k > live.numel():
        raise SparsebenchError(f"cannot prune {k} units: only {live.numel()} are alive")
    if target == "prune-r":
        perm = torch.randperm(live.numel(), generator=generator)
        return live[perm[:k]].sort().values
    if target not in ("prune-l", "prune-s"):
        raise SparsebenchError(f"unknown target {target!r}; choose from: {', '.join(TARGETS)}")
    order = torch.sort(scores[live].double(), stable=True,
                       descending=(target == "prune-l")).indices
    return live[order[:k]].sort().values


class ActivationTracker:
    """Running mean of each channel's absolute activation (EMA, momentum 0.9, every 10 batches).

    Hooks the output of each tracked module (the BatchNorm after a layer when there is one);
    ``scores(layer)`` gives one value per output channel.
    """

    def __init__(self, modules: dict[str, nn.Module], momentum: float = 0.9,
                 every: int = 10) -> None:
        self.momentum, self.every = momentum, every
        self.ema: dict[str, torch.Tensor] = {}
        self._batch = 0
        self._handles = [mod.register_forward_hook(self._hook(name))
                         for name, mod in modules.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            if not module.training or self._batch % self.every != 0:
                return
            dims = [d for d in range(output.dim()) if d != 1]
            current = output.detach().abs().mean(dim=dims).float().cpu()
            prev = self.ema.get(name)
            self.ema[name] = current if prev is None else (
                self.momentum * prev + (1 - self.momentum) * current)
        return hook

    def step(self) -> None:
        """Call once per training batch, after the forward pass."""
        self._batch += 1

    def scores(self, name: str, units: int) -> torch.Tensor:
        if name not in self.ema:
            raise SparsebenchError(f"no activation statistics for {name} yet: activation "
                                   "scoring needs at least one training batch before an event")
        return self.ema[name][:units]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
