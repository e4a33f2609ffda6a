"""Paper B's training configurations as named presets, and their time-scaled short versions.

A preset fixes the architecture's pruned layers, fractions, schedule, scoring and the optimizer
setup. ``NAME-short`` scales every epoch number by ``max(1/10, 1/r)`` (papers.md expects a
short-run mode: 325 epochs do not fit a 2-core CPU): 1/10 for r = 40 (period 4), 1/4 for r = 4
(period 1, not 0.4 rounded), so the retrain period, and with it the number of events and the
share of a layer pruned per event ("1%" vs "13%"), scales exactly. ``--epochs N`` with any preset
rescales it to N epochs. Either way the staggered starts keep their one-epoch offsets (one layer
per event where the period allows it), see ``scale_schedules``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.pruning.schedule import LayerSchedule, scale_schedules
from sparsebench.registry import Registry

PRESETS = Registry("preset")


@dataclass(frozen=True)
class Preset:
    arch: str
    layer_rule: str                 # "last4" (last four default-pruned) | "layer4" | "all"
    fractions: tuple[float, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    period: int
    score: str
    target: str = "prune-l"
    epochs: int = 325
    milestones: tuple[int, ...] = (150, 300)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    augment: bool = False
    batch_size: int = 128
    notes: str = field(default="", compare=False)

    def layers(self, model: nn.Module) -> list[str]:
        pruned = list(getattr(model, "default_pruned", []))
        if self.layer_rule == "last4":
            return pruned[-4:]
        if self.layer_rule == "layer4":
            return [n for n in pruned if n.startswith("layer4.")]
        return pruned

    def schedules(self, model: nn.Module, epochs: int | None = None) -> list[LayerSchedule]:
        layers = self.layers(model)
        fr = self.fractions * len(layers) if len(self.fractions) == 1 else self.fractions
        st = self.starts * len(layers) if len(self.starts) == 1 else self.starts
        en = self.ends * len(layers) if len(self.ends) == 1 else self.ends
        if not len(layers) == len(fr) == len(st) == len(en):
            raise SparsebenchError(f"preset for {self.arch} does not fit this model's layers")
        scheds = [LayerSchedule(*a, self.period) for a in zip(layers, fr, st, en)]
        if epochs is not None and epochs != self.epochs:
            scheds = scale_schedules(scheds, epochs / self.epochs)
        return scheds

    def scaled_milestones(self, epochs: int | None = None) -> list[int]:
        if epochs is None or epochs == self.epochs:
            return list(self.milestones)
        return [max(1, round(m * epochs / self.epochs)) for m in self.milestones]

    def short(self) -> "Preset":
        """The time-scaled version: factor ``max(1/10, 1/period)``, staggered starts kept."""
        factor = max(0.1, 1.0 / self.period)
        first = max(1, round(self.starts[0] * factor))
        starts = tuple(first + (s - self.starts[0]) for s in self.starts)
        return replace(self, epochs=max(1, round(self.epochs * factor)), starts=starts,
                       ends=tuple(max(st, round(e * factor)) for st, e in zip(starts, self.ends)),
                       period=max(1, round(self.period * factor)),
                       milestones=tuple(max(1, round(m * factor)) for m in self.milestones))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


_VGG = dict(arch="vgg11_bn", layer_rule="last4", fractions=(0.3, 0.3, 0.3, 0.9),
            starts=(3, 4, 5, 6), ends=(150, 150, 150, 275), score="l2")
_BASE = {
    "vgg11": Preset(**_VGG, period=40, notes="Prune_L 13%: r=40, ~13% of the last layer per event"),
    "vgg11-r4": Preset(**_VGG, period=4, notes="Prune_L 1%: r=4, ~1.3% of the last layer per event"),
    "resnet18": Preset(arch="resnet18", layer_rule="layer4", fractions=(0.25, 0.4, 0.25, 0.95),
                       starts=(7, 8, 9, 10), ends=(150, 150, 170, 275), period=40,
                       score="activation",
                       notes="layer4 non-shortcut convs, activation-EMA scoring; period not "
                             "given in papers.md, 40 chosen as for VGG"),
    "sgd-resnet": Preset(arch="resnet18", layer_rule="all", fractions=(0.1,), starts=(40,),
                         ends=(100,), period=30, score="l1", target="prune-s", epochs=165,
                         milestones=(83, 125), optimizer="sgd", lr=0.1, momentum=0.9,
                         weight_decay=1e-4, augment=True, notes="every block conv, L1, Prune_S"),
}
for _name, _preset in _BASE.items():
    PRESETS.register(_name, _preset, _preset.notes)
    PRESETS.register(f"{_name}-short", _preset.short(), f"{_name} with epochs scaled by "
                     f"max(1/10, 1/r) = 1/{round(1 / max(0.1, 1 / _preset.period))}")
