"""One-shot pruning of a trained (or any) model to a sparsity, with the papers' target rules.

``one_shot_prune`` is what ``sparsebench sweep`` applies to each layer it prunes. Units are
chosen by ``scoring.select_targets`` (prune-l: the largest scores, prune-s: the smallest,
prune-r: at random), so the sweep and the trainer share one definition of the targets.

* weight granularity: the unit is one weight, scored by |w|; exactly ``round(s * numel)``
  weights of each layer end up zero (weights already zero count towards it).
* filter granularity: the unit is an output channel/neuron (a weight row), scored by its L2
  norm; exactly ``round(s * units)`` rows end up zero. Where the graph says which layer consumes
  the units (``graph.analysis.layer_chains``: a conv feeds the next conv through BatchNorm/ReLU)
  or, when the graph IR cannot read the model, the module tree does (``ffn_pairs``: a
  transformer FFN's first Linear feeds its second), the unit is removed whole: the consumer's
  input columns it fed are zeroed too, and so are its bias and BatchNorm scale and shift, which
  then reach nothing (the model's output is that of the model without the unit, and the
  ``structured`` format can drop it). In attention blocks found in the module tree
  (``attention_heads``: ``nn.MultiheadAttention``, timm's ``qkv``/``proj`` blocks, HuggingFace's
  ``query``/``key``/``value`` + ``output.dense``) the unit is a head, scored by the L2 norm of its
  projection rows: exactly ``round(s * heads)`` heads end up with their Q, K, V rows (and biases)
  and their output-projection columns zero, so they contribute nothing; those projections are
  not pruned row by row. Heads are not found in an ONNX import's flat graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparsebench.archs import PrunableLayer
from sparsebench.catalog import check_prune_options
from sparsebench.errors import SparsebenchError
from sparsebench.pruning.scoring import filter_scores, select_targets


@dataclass(frozen=True)
class AttentionHeads:
    """One attention block's heads as pruning units. ``rows``: (weight, bias or None, first
    row, rows) of each of its Q, K, V projections, head h owning rows ``first + h * rows /
    heads`` onwards; ``out``: the output projection Linear, head h owning its columns
    ``h * in_features / heads`` onwards."""

    heads: int
    rows: tuple[tuple[str, str | None, int, int], ...]
    out: str

    def layers(self) -> set[str]:
        return {w.rpartition(".")[0] for w, _, _, _ in self.rows} | {self.out}


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
    if granularity == "filter":
        wanted = set(layers)
        for block in attention_heads(model):
            if block.layers() & wanted:
                _prune_heads(model, block, sparsity, target, generator, masks)
                wanted -= block.layers()
        layers = [n for n in layers if n in wanted]
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
    """The model's layers with their BatchNorms and consumers: declared, or read off its graph;
    where neither gives a layer's consumer, the transformer FFN pairs of ``ffn_pairs``."""
    from sparsebench.formats.structured import _layers

    chains = _layers(model, torch.zeros(1, *input_shape))
    known = {c.name for c in chains if c.consumer}
    return chains + [p for p in ffn_pairs(model) if p.name not in known]


_FFN_NAMES = (("fc1", "fc2"), ("linear1", "linear2"), ("intermediate.dense", "output.dense"))


def ffn_pairs(model: nn.Module) -> list[PrunableLayer]:
    """Transformer feed-forward blocks found in the module tree, as (first Linear -> second
    Linear) chains: timm's ``Mlp`` (fc1, fc2), ``nn.TransformerEncoderLayer`` (linear1,
    linear2), HuggingFace's ``intermediate.dense`` -> ``output.dense``, and Sequentials of
    Linear, activation/dropout..., Linear (torchvision's ``MLPBlock``). Zeroing the second
    Linear's columns removes a neuron whatever the activation does."""
    mods = dict(model.named_modules())
    passes = (nn.GELU, nn.ReLU, nn.SiLU, nn.Dropout, nn.Identity)
    found = []
    for name, m in mods.items():
        p = f"{name}." if name else ""
        for a, b in _FFN_NAMES:
            first, second = mods.get(p + a), mods.get(p + b)
            if isinstance(first, nn.Linear) and isinstance(second, nn.Linear) \
                    and first.out_features == second.in_features:
                found.append(PrunableLayer(p + a, consumer=p + b))
        if isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for i, (a, first) in enumerate(children):
                rest = children[i + 1:]
                j = next((k for k, (_, c) in enumerate(rest) if not isinstance(c, passes)), None)
                if isinstance(first, nn.Linear) and j is not None and j > 0 \
                        and isinstance(rest[j][1], nn.Linear) \
                        and rest[j][1].in_features == first.out_features:
                    found.append(PrunableLayer(p + a, consumer=p + rest[j][0]))
    return found


def attention_heads(model: nn.Module) -> list[AttentionHeads]:
    """The attention blocks of a module tree whose heads can be pruned (see the docstring)."""
    mods = dict(model.named_modules())
    found = []
    for name, m in mods.items():
        p = f"{name}." if name else ""
        if isinstance(m, nn.MultiheadAttention):
            if m.in_proj_weight is None:  # separate q/k/v weights (kdim/vdim differ)
                continue
            e = m.embed_dim
            bias = p + "in_proj_bias" if m.in_proj_bias is not None else None
            found.append(AttentionHeads(m.num_heads, tuple(
                (p + "in_proj_weight", bias, i * e, e) for i in range(3)), p + "out_proj"))
            continue
        heads = getattr(m, "num_heads", None) or getattr(m, "num_attention_heads", None)
        if not isinstance(heads, int) or heads < 1:
            continue
        qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
        if isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) \
                and qkv.out_features == 3 * proj.in_features:  # timm
            e = proj.in_features
            bias = p + "qkv.bias" if qkv.bias is not None else None
            found.append(AttentionHeads(heads, tuple(
                (p + "qkv.weight", bias, i * e, e) for i in range(3)), p + "proj"))
            continue
        parts = [getattr(m, k, None) for k in ("query", "key", "value")]
        out = f"{name.rpartition('.')[0]}.output.dense".lstrip(".")
        if all(isinstance(t, nn.Linear) for t in parts) and isinstance(mods.get(out), nn.Linear):
            found.append(AttentionHeads(heads, tuple(  # HuggingFace BERT-style
                (f"{p}{k}.weight", f"{p}{k}.bias" if t.bias is not None else None, 0,
                 t.out_features) for k, t in zip(("query", "key", "value"), parts)), out))
    return [b for b in found if all(r % b.heads == 0 for _, _, _, r in b.rows)
            and model.get_submodule(b.out).in_features % b.heads == 0]


def _prune_heads(model: nn.Module, block: AttentionHeads, sparsity: float, target: str,
                 generator: torch.Generator, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    out = model.get_submodule(block.out).weight
    h = block.heads

    def head_rows(t: torch.Tensor, first: int, rows: int) -> torch.Tensor:
        return t[first:first + rows].reshape(h, rows // h, *t.shape[1:])
    pieces = [head_rows(params[w], first, rows).reshape(h, -1)
              for w, _, first, rows in block.rows]
    pieces.append(out.reshape(out.shape[0], h, -1).transpose(0, 1).reshape(h, -1))
    values = torch.cat(pieces, dim=1)
    alive = (values != 0).any(1)
    dead = ~alive
    dead[_chosen(values.norm(dim=1), alive, int(round(sparsity * h)), target, generator)] = True
    for w, b, first, rows in block.rows:
        head_rows(params[w], first, rows)[dead] = 0.0
        if b is not None:
            head_rows(params[b], first, rows)[dead] = 0.0
    out.reshape(out.shape[0], h, -1)[:, dead] = 0.0
    for w in {w for w, _, _, _ in block.rows} | {f"{block.out}.weight"}:
        masks[w] = params[w] != 0
