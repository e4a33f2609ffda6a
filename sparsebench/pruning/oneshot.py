"""One-shot pruning of a trained (or any) model to a sparsity, with the papers' target rules.

``one_shot_prune`` is what ``sparsebench sweep`` applies to each layer it prunes. Units are
chosen by ``scoring.select_targets`` (prune-l: the largest scores, prune-s: the smallest,
prune-r: at random), so the sweep and the trainer share one definition of the targets.

* weight granularity: the unit is one weight, scored by |w|; exactly ``round(s * numel)``
  weights of each layer end up zero (weights already zero count towards it).
* filter granularity: the unit is an output channel/neuron (a weight row), scored by its L2
  norm; exactly ``round(s * units)`` rows end up zero. Where the graph says which layer consumes
  the units (``graph.analysis.layer_chains``: a transformer FFN's first Linear feeds its second,
  a conv feeds the next conv through BatchNorm/ReLU), the unit is removed whole: the consumer's
  input columns it fed are zeroed too, and so are its bias and BatchNorm scale and shift, which
  then reach nothing (the model's output is that of the model without the unit, and the
  ``structured`` format can drop it). Attention heads are not units yet.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.archs import PrunableLayer
from sparsebench.catalog import check_prune_options
from sparsebench.errors import SparsebenchError
from sparsebench.pruning.scoring import filter_scores, select_targets


def check_options(sparsity: float, target: str, granularity: str) -> None:
    """One-line errors for a sparsity outside [0, 1), an unknown target or granularity."""
    if not 0.0 <= sparsity < 1.0:
        raise SparsebenchError(f"sparsity must be in [0, 1), got {sparsity}")
    check_prune_options(target, granularity)


def _chosen(scores: torch.Tensor, alive: torch.Tensor, want_dead: int, target: str,
            generator: torch.Generator) -> torch.Tensor:
    """Live units to remove so that ``want_dead`` units are dead in all."""
    k = want_dead - int((~alive).sum())
    return select_targets(scores, alive, max(k, 0), target, generator)


@torch.no_grad()
def one_shot_prune(model: nn.Module, sparsity: float, layers: list[str], *,
                   target: str = "prune-s", granularity: str = "weight", seed: int = 0,
                   chains: list[PrunableLayer] | None = None) -> dict[str, torch.Tensor]:
    """Prune ``layers`` of ``model`` in place (see the module docstring); returns the keep-masks
    of the weights changed, by parameter name. ``chains``: the layers' BatchNorms and consumers
    (filter granularity; without them each unit's weight row alone is zeroed)."""
    check_options(sparsity, target, granularity)
    generator = torch.Generator().manual_seed(seed)
    masks: dict[str, torch.Tensor] = {}
    removed: dict[str, torch.Tensor] = {}
    for name in layers:
        w = model.get_submodule(name).weight
        if granularity == "weight":
            alive = (w != 0).reshape(-1)
            chosen = _chosen(w.abs().reshape(-1), alive, int(round(sparsity * w.numel())),
                             target, generator)
            keep = alive.clone()
            keep[chosen] = False
            keep = keep.view_as(w)
        else:
            units = w.shape[0]
            alive = (w.reshape(units, -1) != 0).any(1)
            chosen = _chosen(filter_scores(w, "l2"), alive, int(round(sparsity * units)),
                             target, generator)
            rows = alive.clone()
            rows[chosen] = False
            removed[name] = ~rows
            keep = (w != 0) & rows.view(-1, *([1] * (w.dim() - 1)))
        w.mul_(keep)
        masks[f"{name}.weight"] = keep
    for chain in chains or []:
        if chain.name in removed and chain.consumer:
            _remove_downstream(model, chain, removed[chain.name], masks)
    return masks


def _remove_downstream(model: nn.Module, chain: PrunableLayer, dead: torch.Tensor,
                       masks: dict[str, torch.Tensor]) -> None:
    """Zero the consumer's input columns fed by the ``dead`` units, then the units' bias and
    BatchNorm scale/shift (which reach nothing once those columns are zero)."""
    from sparsebench.formats.structured import _consumer_columns

    consumer = model.get_submodule(chain.consumer)
    per_unit = _consumer_columns(consumer, int(dead.numel()))
    if per_unit is None or not bool(dead.any()):
        return
    cw = consumer.weight
    keep = (cw != 0).reshape(cw.shape[0], dead.numel(), -1)
    keep[:, dead] = False
    keep = keep.view_as(cw)
    cw.mul_(keep)
    masks[f"{chain.consumer}.weight"] = keep
    layer = model.get_submodule(chain.name)
    if layer.bias is not None:
        layer.bias[dead] = 0.0
    bn = model.get_submodule(chain.bn) if chain.bn else None
    if bn is not None and getattr(bn, "affine", False):
        bn.weight[dead] = 0.0
        bn.bias[dead] = 0.0


def chains_of(model: nn.Module, input_shape: tuple[int, ...]) -> list[PrunableLayer]:
    """The model's layers with their BatchNorms and consumers: declared, or read off its graph."""
    from sparsebench.formats.structured import _layers

    return _layers(model, torch.zeros(1, *input_shape))
