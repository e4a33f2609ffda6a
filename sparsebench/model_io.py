"""A model's inputs and outputs: one :class:`InputSpec` per input, the input tuple every
execution gets, and the element-wise comparison of outputs against the dense reference.

Inputs come from the ONNX graph (names, element types, shapes; the first dimension is the batch,
other symbolic dimensions of integer inputs take ``DEFAULT_SEQUENCE``), from the module
signature for torch models (``forward`` parameters), or from ``--input NAME:SHAPE:DTYPE[:LOW-HIGH]``.
Default values: floats standard normal; integer ids in ``[0, vocab)`` where an embedding says
the vocabulary; inputs named ``*mask*`` ones; ``token_type_ids`` zeros; other integers in
``[0, 2)``. ``make_inputs`` is the one function that builds the tensors (seeded), for every
backend and for the dense reference.

This module imports torch lazily, so the CLI can parse ``--input`` without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from sparsebench.errors import SparsebenchError

DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
DEFAULT_SEQUENCE = 128  # symbolic non-batch dimensions of integer inputs (token positions)
_FLAG = "--input NAME:SHAPE:DTYPE[:LOW-HIGH], e.g. input_ids:Bx128:int64:0-30522"


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``shape`` per sample (the batch dimension is added), a dtype name from
    ``DTYPES``, and the value range ``[low, high)`` (None: the dtype's default)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")

    def describe(self) -> str:
        """``input_ids:Bx128:int64:0-30522`` (the ``--input`` syntax)."""
        text = f"{self.name}:{'x'.join(['B', *map(str, self.shape)])}:{self.dtype}"
        if self.low is not None and self.high is not None:
            text += f":{_num(self.low)}-{_num(self.high)}"
        return text


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def float_input(shape: Sequence[int], name: str = "input") -> InputSpec:
    """The one float32 input of a classic model (per-sample ``shape``)."""
    return InputSpec(name, tuple(int(d) for d in shape))


def parse_input_flag(text: str) -> InputSpec:
    """``NAME:SHAPE:DTYPE[:LOW-HIGH]`` -> InputSpec. SHAPE is batch first (``1x128`` or
    ``Bx128``: the first dimension is replaced by each measured batch size); LOW-HIGH is the
    half-open value range. Anything else is a one-line error."""
    parts = str(text).split(":")
    if len(parts) not in (3, 4) or not parts[0].strip():
        raise SparsebenchError(f"bad --input {text!r}: expected {_FLAG}")
    name, shape_text, dtype = (p.strip() for p in parts[:3])
    dims = [d.strip() for d in re.split(r"[xX,]", shape_text)]
    if len(dims) < 1 or not (dims[0].isdigit() and int(dims[0]) > 0 or dims[0] in ("B", "b")) \
            or not all(d.isdigit() and int(d) > 0 for d in dims[1:]):
        raise SparsebenchError(f"bad --input {text!r}: SHAPE must be positive integers, batch "
                               "first (B or a number), e.g. Bx128 or 1x3x224x224")
    if dtype not in DTYPES:
        raise SparsebenchError(f"bad --input {text!r}: unknown dtype {dtype!r} (one of "
                               f"{', '.join(DTYPES)})")
    low = high = None
    if len(parts) == 4:
        m = re.fullmatch(r"\s*(-?[0-9.]+(?:e[-+]?\d+)?)\s*-\s*(-?[0-9.]+(?:e[-+]?\d+)?)\s*",
                         parts[3], re.IGNORECASE)
        try:
            low, high = (float(m.group(1)), float(m.group(2))) if m else (None, None)
        except ValueError:
            low = high = None
        if low is None or high is None or not low < high:
            raise SparsebenchError(f"bad --input {text!r}: the range must be LOW-HIGH with "
                                   "LOW < HIGH, e.g. 0-30522")
        if not dtype.startswith("float") and not (low.is_integer() and high.is_integer()):
            raise SparsebenchError(f"bad --input {text!r}: an integer input takes an integer "
                                   "range")
    return InputSpec(name, tuple(int(d) for d in dims[1:]), dtype, low, high)


def parse_input_flags(texts: Sequence[str] | None) -> list[InputSpec]:
    """Every ``--input`` flag, each name at most once."""
    specs = [parse_input_flag(t) for t in texts or ()]
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise SparsebenchError(f"--input {s.name} given twice")
        seen.add(s.name)
    return specs


def with_defaults(spec: InputSpec, vocab: int | None = None) -> InputSpec:
    """``spec`` with the default value range of its name and dtype (see the module docstring)."""
    if spec.low is not None or spec.is_float:
        return spec
    name = spec.name.lower()
    if "mask" in name:
        return replace(spec, low=1, high=2)
    if name == "token_type_ids":
        return replace(spec, low=0, high=1)
    if vocab and "ids" in name and spec.dtype != "bool":
        return replace(spec, low=0, high=int(vocab))
    return replace(spec, low=0, high=2)


def apply_flags(detected: list[InputSpec], given: list[InputSpec], where: str,
                fixed_dtypes: bool) -> list[InputSpec]:
    """The model's inputs with the ``--input`` flags applied. ``detected``: what the model
    declares (may be empty: then the flags are the inputs); ``fixed_dtypes``: the model declares
    its dtypes (ONNX), so another dtype is an error. Unknown names: one-line error."""
    if not given:
        return detected
    if not detected:
        return [with_defaults(g) for g in given]
    by_name = {d.name: d for d in detected}
    for g in given:
        d = by_name.get(g.name)
        if d is None:
            raise SparsebenchError(f"--input {g.name}: {where} has no input named {g.name!r} "
                                   f"(its inputs: {', '.join(by_name)})")
        if fixed_dtypes and g.dtype != d.dtype:
            raise SparsebenchError(f"--input {g.name}: {where} takes {d.dtype} for "
                                   f"{g.name!r}, not {g.dtype}")
        if d.shape and len(g.shape) != len(d.shape):
            raise SparsebenchError(f"--input {g.name}: {where} takes rank {len(d.shape) + 1} "
                                   f"(batch first) for {g.name!r}, not {len(g.shape) + 1}")
        if g.low is None and d.low is not None and not g.is_float:
            g = replace(g, low=d.low, high=d.high)   # the detected range (e.g. the vocabulary)
        by_name[g.name] = with_defaults(g)
    return [by_name[d.name] for d in detected]


def make_inputs(specs: Sequence[InputSpec], batch: int, seed: int = 0) -> tuple[Any, ...]:
    """The input tensors for one batch: one seeded generator, drawn in ``specs`` order (a
    single float input is ``torch.randn((batch, *shape))`` as always)."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for s in specs:
        shape = (int(batch), *s.shape)
        dtype = getattr(torch, s.dtype)
        if s.is_float:
            if s.low is None or s.high is None:
                x = torch.randn(shape, generator=gen)
            else:
                x = torch.rand(shape, generator=gen) * (s.high - s.low) + s.low
            out.append(x.to(dtype))
            continue
        low = 0 if s.low is None else int(s.low)
        high = 2 if s.high is None else int(s.high)
        x = torch.randint(low, high, shape, generator=gen, dtype=torch.int64)
        out.append(x.bool() if s.dtype == "bool" else x.to(dtype))
    return tuple(out)


def specs_of(module: Any, input_shape: Sequence[int] | None = None) -> list[InputSpec]:
    """The inputs recorded on a loaded module (``input_specs``, set by ``loading``), else one
    float input of ``input_shape`` or the module's ``input_shape``."""
    specs = getattr(module, "input_specs", None)
    if specs:
        return list(specs)
    shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
    if shape is None:
        raise SparsebenchError("model has no input_shape; pass --input-shape or --input")
    return [float_input(shape)]


def example_inputs(module: Any, batch: int = 1,
                   input_shape: Sequence[int] | None = None) -> tuple[Any, ...]:
    """Inputs of batch ``batch`` for tracing and planning (seed 0)."""
    return make_inputs(specs_of(module, input_shape), batch, 0)


_ID_NAMES = ("input_ids", "attention_mask")  # HF models: forward(input_ids=None, ...)


def forward_inputs(module: Any) -> list[str]:
    """The names of the inputs ``forward`` is called with: the leading parameters without a
    default, or (HF style, every parameter defaulting to None) the leading ones named
    ``input_ids``/``attention_mask``. Empty when the signature cannot be read."""
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    taken = []
    for prm in params:
        if prm.kind in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD, prm.KEYWORD_ONLY):
            break
        if prm.default is inspect.Parameter.empty or prm.name in _ID_NAMES:
            taken.append(prm.name)
        else:
            break
    return taken


def signature_inputs(module: Any, input_shape: Sequence[int] | None) -> list[InputSpec] | None:
    """The token inputs of a torch module from its ``forward`` signature (``forward_inputs``),
    or None unless every input is a token input. Names with ``ids`` or ``mask`` are int64 token
    inputs of ``input_shape`` (default (``DEFAULT_SEQUENCE``,)), ids in ``[0, vocab)`` with the
    vocabulary of ``config.vocab_size`` or the first ``nn.Embedding``."""
    from torch import nn

    taken = forward_inputs(module)
    tokens = [n for n in taken if "ids" in n.lower() or "mask" in n.lower()]
    if len(taken) <= 1 and not tokens:
        return None
    if len(tokens) != len(taken):
        return None  # float inputs beside token inputs: their shapes are unknown
    vocab = getattr(getattr(module, "config", None), "vocab_size", None)
    if not vocab:
        emb = next((m for m in module.modules() if isinstance(m, nn.Embedding)), None)
        vocab = emb.num_embeddings if emb is not None else None
    shape = tuple(int(d) for d in input_shape) if input_shape else (DEFAULT_SEQUENCE,)
    return [with_defaults(InputSpec(n, shape, "int64"), vocab) for n in taken]


def is_single_float(specs: Sequence[InputSpec]) -> bool:
    return len(specs) == 1 and specs[0].dtype == "float32"


# --- outputs ------------------------------------------------------------------------------------

def leaves(out: Any) -> list[Any]:
    """The tensors of an output in order: a tensor, tuple/list, dict or HF ``ModelOutput``
    (values in key order; None entries dropped), any other iterable (a transformers ``Cache``)
    by its items, numpy arrays as tensors."""
    import numpy as np
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, np.ndarray):
        return [torch.from_numpy(out)]
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        return [t for v in out.values() for t in leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in leaves(v)]
    if out is None:
        return []
    if hasattr(out, "to_tuple"):
        return leaves(out.to_tuple())
    if hasattr(out, "__iter__") and not isinstance(out, (str, bytes)):
        return leaves(list(out))  # e.g. a transformers Cache: (keys, values, ...) per layer
    raise SparsebenchError(f"the model returns a {type(out).__name__}, not tensors")


def compare(out: Any, reference: Any) -> tuple[float, float]:
    """(max_abs_err, max_rel_err) of ``out`` against ``reference``, leaf by leaf: floats as
    ``max|out - ref|`` and that over ``max|ref|`` of the leaf; integer and bool leaves exactly
    (0 when equal, else the largest difference, unscaled). The row's errors are the maxima
    over leaves. A different number or shape of leaves is an error."""
    import torch

    got = [t.detach() for t in leaves(out)]
    want = [t.detach() for t in leaves(reference)]
    if len(got) != len(want):
        raise SparsebenchError(f"the execution returned {len(got)} output tensors, the dense "
                               f"reference {len(want)}")
    max_abs = max_rel = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        if tuple(g.shape) != tuple(w.shape):
            raise SparsebenchError(f"output {i} has shape {tuple(g.shape)}, the dense "
                                   f"reference {tuple(w.shape)}")
        if not w.is_floating_point():
            if torch.equal(g.to(w.dtype), w):
                continue
            d = float((g.double() - w.double()).abs().max())
            max_abs, max_rel = max(max_abs, d), max(max_rel, d)
            continue
        if not w.numel():
            continue
        diff = float((g.double() - w.double()).abs().max())
        scale = float(w.double().abs().max())
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


def first_leaf(out: Any) -> Any:
    """The first output tensor (classification accuracy reads the logits)."""
    found = leaves(out)
    if not found:
        raise SparsebenchError("the model returns no tensor")
    return found[0]
