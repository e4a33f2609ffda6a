"""Pruning as in Bartoldson et al.: scores, Prune_L/S/R targets, per-layer schedules, masks,
re-entry noise, and the paper's presets."""

from sparsebench.pruning.presets import PRESETS, Preset
from sparsebench.pruning.pruner import REENTRY_MODES, Pruner
from sparsebench.pruning.schedule import LayerSchedule, build_schedules
from sparsebench.pruning.scoring import SCORES, TARGETS, select_targets

__all__ = ["PRESETS", "Preset", "Pruner", "REENTRY_MODES", "LayerSchedule", "build_schedules",
           "SCORES", "TARGETS", "select_targets"]
