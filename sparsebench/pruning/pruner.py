"""Masks, pruning events and re-entry noise for one model (paper B).

Filter granularity: the unit is a whole output channel/neuron; its mask covers the layer's
weight row and bias, the following BatchNorm's scale and shift, and (ResNet) the block's
``out_mask`` so a pruned channel outputs exactly 0. Weight granularity: the unit is one weight,
scored by |w|. Masked entries are zeroed at the event, their gradients are masked before every
optimizer step, the optimizer state (Adam moments, SGD momentum) is zeroed at the event, and
the mask is re-applied after every step: pruned weights stay exactly zero.

Re-entry (``permanent=False``): the targeted units are not removed but perturbed for the next
``reentry_batches`` training batches, then left free (mode ``zero``: zeroed on every forward
pass, then regrow from zero; ``gaussian``: N(0, sigma) noise added on every forward pass,
sigma = std of the layer's untargeted weights; ``restore``: zeroed together with their BatchNorm
scale and shift, then the saved values are restored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsebench.archs import PrunableLayer, prunable_layers
from sparsebench.errors import SparsebenchError
from sparsebench.pruning.schedule import LayerSchedule
from sparsebench.pruning.scoring import SCORES, ActivationTracker, filter_scores, select_targets

REENTRY_MODES = ("zero", "gaussian", "restore")


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
                {n: self.modules[p.bn or p.name] for n, p in self.layers.items()})

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
            if self.permanent:
                before = int(self.alive(sched.layer).sum())
                k = before - counts[i]
            else:
                before, k = units, counts[i - 1] - counts[i]
            chosen = self._choose(sched.layer, k)
            if self.permanent:
                self._remove(sched.layer, chosen, optimizer)
            else:
                self._perturb_start(sched.layer, chosen)
            records.append({"layer": sched.layer, "units": units, "kept_before": before,
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
        alive = self.alive(layer)
        if not self.permanent:  # re-entry: units under noise are not targeted again
            alive = alive.clone()
            for pert in self.active:
                if pert.layer == layer:
                    alive[pert.units] = False
            k = min(k, int(alive.sum()))
        return select_targets(self.scores(layer), alive, k, self.target, self.generator)

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
        """Call after backward, before ``optimizer.step()``: masks the gradients."""
        for name, mask in self.masks.items():
            grad = self.params[name].grad
            if grad is not None:
                grad.mul_(mask)
        for pert in self.active:
            if self.reentry_mode == "gaussian":  # step from the clean weights
                self.weight(pert.layer).view(self._view(pert.layer))[pert.units] = \
                    pert.saved[f"{pert.layer}.weight"]
            else:
                for name in self._pert_params(pert.layer):
                    grad = self.params[name].grad
                    if grad is not None:
                        grad.view(self._view(pert.layer, name))[pert.units] = 0.0

    @torch.no_grad()
    def after_step(self) -> None:
        """Call after ``optimizer.step()``: re-applies masks, advances re-entry windows."""
        self.apply_masks()
        if self.tracker is not None:
            self.tracker.step()
        still = []
        for pert in self.active:
            pert.remaining -= 1
            if self.reentry_mode != "gaussian":
                self._perturb(pert)
            if pert.remaining > 0:
                still.append(pert)
            elif self.reentry_mode == "restore":
                for name, value in pert.saved.items():
                    self.params[name].view(self._view(pert.layer, name))[pert.units] = value
        self.active = still

    # -- re-entry -------------------------------------------------------------------------
    def _view(self, layer: str, name: str | None = None) -> tuple[int, ...]:
        param = self.params[name or f"{layer}.weight"]
        return (-1,) if self.granularity == "weight" else (param.shape[0], -1)

    def _pert_params(self, layer: str) -> list[str]:
        names = self._unit_params(layer)
        return names if self.reentry_mode == "restore" else names[:1]

    @torch.no_grad()
    def _perturb_start(self, layer: str, units: torch.Tensor) -> None:
        saved = {n: self.params[n].view(self._view(layer, n))[units].clone()
                 for n in self._pert_params(layer)}
        pert = _Perturbation(layer, units, self.reentry_batches, saved)
        self.active.append(pert)
        self._perturb(pert)

    @torch.no_grad()
    def _perturb(self, pert: _Perturbation) -> None:
        w = self.weight(pert.layer).view(self._view(pert.layer))
        if self.reentry_mode == "gaussian":
            keep = torch.ones(w.shape[0], dtype=torch.bool)
            keep[pert.units] = False
            sigma = float(w[keep].std()) if int(keep.sum()) > 1 else float(w.std())
            clean = w[pert.units].clone()
            pert.saved[f"{pert.layer}.weight"] = clean
            w[pert.units] = clean + torch.randn(clean.shape, generator=self.generator) * sigma
            return
        for name in self._pert_params(pert.layer):
            self.params[name].view(self._view(pert.layer, name))[pert.units] = 0.0

    @torch.no_grad()
    def end_eval_perturbation(self) -> None:
        """Gaussian re-entry: remove the noise applied for the post-event evaluation."""
        if self.reentry_mode == "gaussian":
            for pert in self.active:
                self.weight(pert.layer).view(self._view(pert.layer))[pert.units] = \
                    pert.saved[f"{pert.layer}.weight"]

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
