"""What counts as a layer a format can convert, and the rewrites that expose more of them.

The sparse formats convert ``nn.Conv2d`` and ``nn.Linear`` modules (``base.weight_layers``).
Other modules multiply by a weight matrix too; ``expose_layers`` rewrites a model copy so that
those become ``nn.Linear`` modules computing the same function, and ``unconverted`` names the
weight-holding modules that stay dense with the reason:

* HuggingFace ``Conv1D`` (GPT-2: weight (in, out), ``y = x @ W + b``) becomes an ``nn.Linear``
  holding ``W.T``;
* ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer``/``DecoderLayer``)
  becomes :class:`SplitAttention`: ``q_proj``/``k_proj``/``v_proj`` (the rows of
  ``in_proj_weight``, or the separate q/k/v weights) and the ``out_proj`` Linear, the attention
  itself computed as in ``F.multi_head_attention_forward`` (eval: no dropout). Its
  ``_qkv_same_embed_dim`` is False, so torch's fused encoder-layer path (which reads the
  weights directly and would bypass the converted layers) steps aside.
* Recurrent layers (LSTM/GRU/RNN), Conv1d/Conv3d, transposed convolutions and attention with
  ``bias_k``/``add_zero_attn`` stay dense (their kernels read the weights directly).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_RNN = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
_OTHER_CONVS = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def is_hf_conv1d(module: nn.Module) -> bool:
    """A HuggingFace ``transformers.pytorch_utils.Conv1D`` (checked by shape, no import)."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2
            and int(getattr(module, "nf", -1)) == int(w.shape[1]))


def attention_reason(module: nn.MultiheadAttention) -> str | None:
    """Why a MultiheadAttention cannot be split into Linear projections, or None."""
    if module.bias_k is not None or module.bias_v is not None:
        return "kept dense: MultiheadAttention with bias_k/bias_v not supported"
    if module.add_zero_attn:
        return "kept dense: MultiheadAttention with add_zero_attn not supported"
    return None


def unconverted(model: nn.Module) -> dict[str, str]:
    """Weight-holding modules no format converts (after ``expose_layers``): name -> reason."""
    out: dict[str, str] = {}
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if isinstance(mod, _RNN):
            out[name] = (f"kept dense: {kind} recurrent weights are not converted (the fused "
                         "recurrent kernel reads weight_ih/weight_hh directly)")
        elif isinstance(mod, _OTHER_CONVS):
            out[name] = f"kept dense: {kind} not supported (only Conv2d and Linear are converted)"
        elif isinstance(mod, nn.MultiheadAttention):
            out[name] = attention_reason(mod) or "kept dense: MultiheadAttention not split"
        elif is_hf_conv1d(mod):
            out[name] = "kept dense: Conv1D not rewritten"
    return out


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` (eval) with its projections as ``nn.Linear`` modules.

    Same call signature and outputs (``(attn_output, attn_weights or None)``); batched inputs
    only. Built by ``from_attention``.
    """

    _qkv_same_embed_dim = False  # torch's fused paths test this and step aside
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, batch_first: bool, q_proj: nn.Linear,
                 k_proj: nn.Linear, v_proj: nn.Linear, out_proj: nn.Linear) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.head_dim = embed_dim // num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj

    @classmethod
    def from_attention(cls, mha: nn.MultiheadAttention) -> "SplitAttention":
        e = mha.embed_dim
        bias = mha.in_proj_bias.detach() if mha.in_proj_bias is not None else None
        biases = [None] * 3 if bias is None else [bias[:e], bias[e:2 * e], bias[2 * e:]]
        if mha._qkv_same_embed_dim:
            w = mha.in_proj_weight.detach()
            weights = [w[:e], w[e:2 * e], w[2 * e:]]
        else:
            weights = [mha.q_proj_weight.detach(), mha.k_proj_weight.detach(),
                       mha.v_proj_weight.detach()]
        q, k, v = (_linear(wi, bi) for wi, bi in zip(weights, biases))
        return cls(e, mha.num_heads, mha.batch_first, q, k, v, mha.out_proj)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, tq, _ = query.shape
        ts = key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q_proj(query).reshape(b, tq, h, d).transpose(1, 2)
        k = self.k_proj(key).reshape(b, ts, h, d).transpose(1, 2)
        v = self.v_proj(value).reshape(b, ts, h, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(tq, ts, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            scores = scores + _additive(attn_mask, scores).reshape(
                (1, 1, tq, ts) if attn_mask.dim() == 2 else (b, h, tq, ts))
        if key_padding_mask is not None:
            scores = scores + _additive(key_padding_mask, scores).reshape(b, 1, 1, ts)
        weights = F.softmax(scores, dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(b, tq, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(dim=1) if average_attn_weights else weights


def _additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True: not attended) as -inf/0, a float mask as given."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=like.dtype).masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def expose_layers(model: nn.Module) -> int:
    """Rewrite ``model`` in place so HF ``Conv1D`` and ``nn.MultiheadAttention`` projections
    are ``nn.Linear`` modules (see the module docstring); returns how many modules changed."""
    changed = 0
    for name, mod in list(model.named_modules()):
        if not name:
            continue
        if is_hf_conv1d(mod):
            bias = getattr(mod, "bias", None)
            _set(model, name, _linear(mod.weight.detach().t(),
                                      None if bias is None else bias.detach()))
            changed += 1
        elif isinstance(mod, nn.MultiheadAttention) and attention_reason(mod) is None:
            _set(model, name, SplitAttention.from_attention(mod))
            changed += 1
    if changed:
        for mod in model.modules():  # the nested-tensor path reads in_proj_weight too
            if isinstance(mod, nn.TransformerEncoder):
                mod.use_nested_tensor = False
    return changed


def inside_attention(model: nn.Module) -> set[int]:
    """ids of the ``out_proj`` Linears of unsplit MultiheadAttention modules: their parent
    reads the weight directly, so they cannot be swapped."""
    return {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def candidates(model: nn.Module) -> int:
    """How many layers ``model`` has, counted as ``expose_layers`` leaves them: a splittable
    MultiheadAttention is four (q, k, v, out), any other weight-holding module one."""
    skip = inside_attention(model)
    count = 0
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) or (  # a TorchScript layer: by its name
                isinstance(mod, torch.jit.ScriptModule)
                and getattr(mod, "original_name", "") in ("Conv2d", "Linear")):
            count += id(mod) not in skip
        elif isinstance(mod, nn.MultiheadAttention):
            count += 4 if attention_reason(mod) is None else 1
        elif is_hf_conv1d(mod) or isinstance(mod, _RNN + _OTHER_CONVS):
            count += 1
    return count
