"""Masks, pruning events and re-entry noise for one model (paper B).

Filter granularity: the unit is a whole output channel/neuron; its mask covers the layer's
weight row and bias, the following BatchNorm's scale and shift, and (ResNet) the block's
``out_mask`` so a pruned channel outputs exactly 0. Weight granularity: the unit is one weight,
scored by |w|. Masked entries are zeroed at the event, their gradients are masked before every
optimizer step, the optimizer state (Adam moments, SGD momentum) is zeroed at the event, and
the mask is re-applied after every step: pruned weights stay exactly zero.

Re-entry (``permanent=False``), as in paper B's official code: each event targets units by the
target rule among the units never targeted before (a unit is targeted at most once; the event
sizes follow the same schedule as permanent pruning), and perturbs them for the next
``reentry_batches`` training batches, starting with the post-event evaluation; nothing is
removed. Modes:
``zero`` (official ``iter_M_zeroing``): the newly targeted units' weights are set to 0 in place
before every forward pass of the window; gradients are *not* masked, so Adam keeps updating
their moments and the weights regrow from zero once the window ends.
``gaussian`` (``iter_M_gaussian``): N(0, sigma) noise is added in place to the newly targeted
weights before every forward pass of the window (it accumulates; nothing is restored), sigma =
the std of the layer's first never-targeted filter, recomputed each time.
``restore`` (``cumu_M_zeroing_restore``): every unit targeted so far has its weights and its
BatchNorm scale and shift zeroed before every forward pass of the window; at its end the weights,
the BatchNorm parameters and the BatchNorm running mean and variance saved at its start are
restored.
The official code counts every forward pass in the window, evaluation batches included; here the
window counts training batches (the post-event evaluation sees the perturbation too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsebench.catalog import REENTRY_MODES
from sparsebench.archs import PrunableLayer, prunable_layers
from sparsebench.errors import SparsebenchError
from sparsebench.pruning.schedule import LayerSchedule
from sparsebench.pruning.scoring import SCORES, ActivationTracker, filter_scores, select_targets


@dataclass
class _Perturbation:
    """Units of one layer under re-entry noise for ``remaining`` more batches."""

    layer: str
    units: torch.Tensor
    remaining: int
    saved: dict[str, torch.Tensor]


class Pruner:
    """Owns the keep-masks of a model and carries out the scheduled pruning events."""

    def __init__(self, model: nn.Module, schedules: list[LayerSchedule], *,
                 granularity: str = "filter", score: str = "l2", target: str = "prune-l",
                 permanent: bool = True, reentry_batches: int = 50,
                 reentry_mode: str = "zero", seed: int = 0) -> None:
        if granularity not in ("filter", "weight"):
            raise SparsebenchError(f"unknown granularity {granularity!r}; choose from: "
                                   "filter, weight")
        if score not in SCORES:
            raise SparsebenchError(f"unknown score {score!r}; choose from: {', '.join(SCORES)}")
        if granularity == "weight" and score == "activation":
            raise SparsebenchError("activation scoring needs --granularity filter "
                                   "(weights are scored by |w|)")
        if reentry_mode not in REENTRY_MODES:
            raise SparsebenchError(f"unknown re-entry mode {reentry_mode!r}; choose from: "
                                   f"{', '.join(REENTRY_MODES)}")
        self.model, self.schedules = model, schedules
        self.granularity, self.score, self.target = granularity, score, target
        self.permanent, self.reentry_batches, self.reentry_mode = (
            permanent, reentry_batches, reentry_mode)
        self.generator = torch.Generator().manual_seed(seed)
        self.modules = dict(model.named_modules())
        self.params = dict(model.named_parameters())
        declared = {p.name: p for p in prunable_layers(model)}
        self.layers: dict[str, PrunableLayer] = {}
        for sched in schedules:
            if sched.layer not in declared:
                raise SparsebenchError(f"layer {sched.layer!r} is not prunable; choose from: "
                                       f"{', '.join(declared)}")
            self.layers[sched.layer] = declared[sched.layer]
        self.masks: dict[str, torch.Tensor] = {}
        self.unit_masks: dict[str, torch.Tensor] = {
            name: torch.ones(self.units(name), dtype=torch.bool) for name in self.layers}
        self.active: list[_Perturbation] = []
        self.tracker: ActivationTracker | None = None
        if score == "activation":
            self.tracker = ActivationTracker(
                {n: self.modules[p.score_at or p.bn or p.name] for n, p in self.layers.items()})

    # -- geometry -------------------------------------------------------------------------
    def weight(self, layer: str) -> torch.Tensor:
        return self.modules[layer].weight

    def units(self, layer: str) -> int:
        w = self.weight(layer)
        return w.shape[0] if self.granularity == "filter" else w.numel()

    def alive(self, layer: str) -> torch.Tensor:
        return self.unit_masks[layer]

    def _unit_params(self, layer: str) -> list[str]:
        """Parameter names whose leading dimension is indexed by the layer's output units."""
        p = self.layers[layer]
        names = [f"{layer}.weight"]
        if self.granularity == "filter":
            names += [f"{layer}.bias"] + ([f"{p.bn}.weight", f"{p.bn}.bias"] if p.bn else [])
        return [n for n in names if n in self.params]

    # -- scoring --------------------------------------------------------------------------
    def scores(self, layer: str) -> torch.Tensor:
        w = self.weight(layer)
        if self.granularity == "weight":
            return w.detach().abs().reshape(-1)
        if self.tracker is not None:
            return self.tracker.scores(layer, w.shape[0])
        return filter_scores(w, self.score)

    # -- events ---------------------------------------------------------------------------
    def event_layers(self, epoch: int) -> list[LayerSchedule]:
        return [s for s in self.schedules if epoch in s.event_epochs()]

    def prune_event(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> list[dict]:
        """Carry out the events scheduled at ``epoch``; returns one record per layer."""
        records = []
        for sched in self.event_layers(epoch):
            units = self.units(sched.layer)
            counts = [units] + sched.kept_counts(units)
            i = sched.event_epochs().index(epoch) + 1
            before = int(self.alive(sched.layer).sum())
            chosen = self._choose(sched.layer, before - counts[i])
            if self.permanent:
                self._remove(sched.layer, chosen, optimizer)
            else:
                self.unit_masks[sched.layer][chosen] = False  # targeted: never again
                self._perturb_start(sched.layer, chosen)
            records.append({"layer": sched.layer, "units": units,
                            "kept_before": before if self.permanent else units,
                            "kept_after": before - int(chosen.numel()) if self.permanent
                            else units, "targeted": int(chosen.numel())})
        return records

    def prune_to_final(self, optimizer: torch.optim.Optimizer | None = None) -> list[dict]:
        """The scratch variant: remove every layer's final count at once (epoch 0)."""
        records = []
        for sched in self.schedules:
            units = self.units(sched.layer)
            chosen = self._choose(sched.layer, units - sched.final_kept(units))
            self._remove(sched.layer, chosen, optimizer)
            records.append({"layer": sched.layer, "units": units, "kept_before": units,
                            "kept_after": units - int(chosen.numel()),
                            "targeted": int(chosen.numel())})
        return records

    def _choose(self, layer: str, k: int) -> torch.Tensor:
        """k live units by the target rule (re-entry: live = never targeted before)."""
        return select_targets(self.scores(layer), self.alive(layer), k, self.target,
                              self.generator)

    def _remove(self, layer: str, units: torch.Tensor, optimizer: torch.optim.Optimizer | None
                ) -> None:
        self.unit_masks[layer][units] = False
        for name in self._unit_params(layer):
            param = self.params[name]
            if name not in self.masks:
                self.masks[name] = torch.ones_like(param, dtype=torch.bool)
            if self.granularity == "weight":
                self.masks[name].view(-1)[units] = False
            else:
                self.masks[name][units] = False
        p = self.layers[layer]
        if self.granularity == "filter" and p.out_mask:
            self.modules[p.out_mask].out_mask[units] = 0.0
        self.apply_masks()
        if optimizer is not None:
            self.zero_optimizer_state(optimizer)

    # -- keeping pruned weights at zero ---------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, mask in self.masks.items():
            self.params[name].mul_(mask)

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        for name, mask in self.masks.items():
            state = optimizer.state.get(self.params[name], {})
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
                if isinstance(state.get(key), torch.Tensor):
                    state[key].mul_(mask)

    @torch.no_grad()
    def before_batch(self) -> None:
        """Call before each training forward pass (applies re-entry perturbations)."""
        for pert in self.active:
            self._perturb(pert)

    @torch.no_grad()
    def before_step(self) -> None:
        """Call after backward, before ``optimizer.step()``: masks the pruned gradients.

        Re-entry targets are not masked: the optimizer keeps updating them (official code)."""
        for name, mask in self.masks.items():
            grad = self.params[name].grad
            if grad is not None:
                grad.mul_(mask)

    @torch.no_grad()
    def after_step(self) -> None:
        """Call after ``optimizer.step()``: re-applies masks, advances re-entry windows."""
        self.apply_masks()
        if self.tracker is not None:
            self.tracker.step()
        still = []
        for pert in self.active:
            pert.remaining -= 1
            if pert.remaining > 0:
                still.append(pert)
            else:
                self._restore(pert)
        self.active = still

    # -- re-entry -------------------------------------------------------------------------
    def _rows(self, name: str, layer: str) -> torch.Tensor:
        """A parameter or buffer viewed with its units as the leading index."""
        tensor = self.params.get(name)
        if tensor is None:
            mod, _, attr = name.rpartition(".")
            tensor = getattr(self.modules[mod], attr)
        return tensor.view((-1,) if self.granularity == "weight" else (tensor.shape[0], -1))

    def _restore_names(self, layer: str) -> list[str]:
        """What the restore variant zeroes and restores: the weight and the BatchNorm scale and
        shift (zeroed), plus the BatchNorm running statistics (restored only)."""
        bn = self.layers[layer].bn if self.granularity == "filter" else None
        names = [f"{layer}.weight"]
        if bn:
            names += [f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var"]
        return names

    @torch.no_grad()
    def _perturb_start(self, layer: str, units: torch.Tensor) -> None:
        for old in [p for p in self.active if p.layer == layer]:  # a new window replaces it
            self._restore(old)
            self.active.remove(old)
        saved: dict[str, torch.Tensor] = {}
        if self.reentry_mode == "restore":  # every unit targeted so far, cumulatively
            units = torch.nonzero(~self.unit_masks[layer], as_tuple=False).reshape(-1)
            saved = {n: self._rows(n, layer)[units].clone() for n in self._restore_names(layer)}
        pert = _Perturbation(layer, units, self.reentry_batches, saved)
        self.active.append(pert)
        self._perturb(pert)

    @torch.no_grad()
    def _perturb(self, pert: _Perturbation) -> None:
        w = self._rows(f"{pert.layer}.weight", pert.layer)
        if self.reentry_mode == "gaussian":
            live = torch.nonzero(self.unit_masks[pert.layer], as_tuple=False).reshape(-1)
            ref = w[live[0]] if live.numel() else w.reshape(-1)
            sigma = float(ref.std()) if ref.numel() > 1 else 0.0
            w[pert.units] += torch.randn(w[pert.units].shape, generator=self.generator) * sigma
            return
        w[pert.units] = 0.0
        if self.reentry_mode == "restore":
            for name in self._restore_names(pert.layer)[1:3]:
                self._rows(name, pert.layer)[pert.units] = 0.0

    @torch.no_grad()
    def _restore(self, pert: _Perturbation) -> None:
        for name, value in pert.saved.items():
            self._rows(name, pert.layer)[pert.units] = value

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"masks": dict(self.masks), "unit_masks": dict(self.unit_masks),
                "generator": self.generator.get_state(),
                "active": [{"layer": p.layer, "units": p.units, "remaining": p.remaining,
                            "saved": p.saved} for p in self.active],
                "ema": dict(self.tracker.ema) if self.tracker else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = dict(state["masks"])
        self.unit_masks.update(state["unit_masks"])
        self.generator.set_state(state["generator"])
        self.active = [_Perturbation(a["layer"], a["units"], a["remaining"], dict(a["saved"]))
                       for a in state["active"]]
        if self.tracker is not None:
            self.tracker.ema = dict(state["ema"])
        self.apply_masks()
