"""The ONNX ops of the importer (``onnx_torch``), one torch function per op.

Each function is ``fn(module, step, *inputs)``; ``inputs`` follow the node's inputs (``None`` for
an absent optional one). A node with several outputs returns a ``list`` (one value per output);
any other return value is the node's single output. Small int64 values flow as Python ints and
tuples (see ``onnx_torch``); ops registered with ``py=True`` accept them as they are, the others
see tensors only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.nn import functional as F

from sparsebench.errors import SparsebenchError

Value = Any  # torch.Tensor, or a Python int / tuple of ints (small int64 tensors)


class Unsupported(SparsebenchError):
    """The ONNX graph uses an op (or an op variant) this importer cannot convert."""


@dataclass
class _Step:
    op: str
    node: str
    inputs: tuple[str, ...]  # "" for an absent optional input
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None


OpFn = Callable[..., Any]
_OPS: dict[str, OpFn] = {}


def unsupported(step: _Step, what: str) -> Unsupported:
    return Unsupported(f"ONNX op {step.op} (node {step.node}): {what}")


def _tensor(v: Value) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.int64)


def _op(*names: str, py: bool = False) -> Callable[[OpFn], OpFn]:
    """Register ``fn`` under ``names``; without ``py``, Python values reach it as tensors."""
    def wrap(fn: OpFn) -> OpFn:
        run = fn
        if not py:
            def run(mod: Any, step: _Step, *args: Value) -> Any:
                return fn(mod, step, *(a if a is None or isinstance(a, torch.Tensor)
                                       else _tensor(a) for a in args))
        for name in names:
            _OPS[name] = run
        return fn
    return wrap


def _int_scalar(v: Value) -> bool:
    """A Python int, or a 0-d integer tensor (what ``x.shape[i]`` is while tracing)."""
    return isinstance(v, int) or (isinstance(v, torch.Tensor) and v.dim() == 0
                                  and not v.is_floating_point())


def _ints(v: Value) -> tuple[int, ...]:
    if _int_scalar(v):
        return (v,)
    if isinstance(v, torch.Tensor):
        return tuple(int(i) for i in v.reshape(-1).tolist())
    return tuple(v)


def _scalar(v: Value) -> Any:
    if isinstance(v, (int, float)):
        return v
    return v.reshape(-1)[0].item() if isinstance(v, torch.Tensor) else _ints(v)[0]


# --- elementwise ----------------------------------------------------------------------------

def _py_elementwise(fn: Callable[[int, int], int], a: Value, b: Value) -> Value:
    if isinstance(a, int) and isinstance(b, int):
        return fn(a, b)
    aa, bb = _ints(a), _ints(b)
    n = max(len(aa), len(bb))
    aa, bb = (aa * n if len(aa) == 1 else aa), (bb * n if len(bb) == 1 else bb)
    return tuple(fn(x, y) for x, y in zip(aa, bb))


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == b.dtype:
        return torch.pow(a, b)
    return torch.pow(a.double(), b.double()).to(a.dtype)  # the output has the base's type


def _binary(tfn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            pyfn: Callable[[int, int], int]) -> OpFn:
    def run(mod: Any, step: _Step, a: Value, b: Value) -> Value:
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            return _py_elementwise(pyfn, a, b)
        return tfn(_tensor(a), _tensor(b))
    return run


for _name, _t, _p in (("Add", torch.add, lambda x, y: x + y),
                      ("Sub", torch.sub, lambda x, y: x - y),
                      ("Mul", torch.mul, lambda x, y: x * y),
                      ("Div", _div, _trunc_div)):
    _op(_name, py=True)(_binary(_t, _p))


def _simple(fn: Callable[..., torch.Tensor], *names: str) -> None:
    _op(*names)(lambda mod, step, *args: fn(*args))


_simple(_pow, "Pow")
_simple(torch.eq, "Equal")
_simple(torch.lt, "Less")
_simple(torch.gt, "Greater")
_simple(torch.le, "LessOrEqual")
_simple(torch.ge, "GreaterOrEqual")
_simple(torch.logical_and, "And")
_simple(torch.logical_or, "Or")
_simple(torch.logical_xor, "Xor")
_simple(torch.bitwise_and, "BitwiseAnd")
_simple(torch.bitwise_or, "BitwiseOr")
_simple(torch.bitwise_xor, "BitwiseXor")
_simple(torch.where, "Where")

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Exp": torch.exp, "Log": torch.log,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
    "Round": torch.round, "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos,
    "Tan": torch.tan, "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan,
    "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh,
    "Atanh": torch.atanh, "Softplus": F.softplus, "Softsign": F.softsign, "Mish": F.mish,
    "IsNaN": torch.isnan, "Not": torch.logical_not, "BitwiseNot": torch.bitwise_not,
    "HardSwish": F.hardswish,
}
for _name, _fn in _UNARY.items():
    _simple(_fn, _name)


@_op("Identity", py=True)
def _identity(mod: Any, step: _Step, x: Value) -> Value:
    return x


@_op("Mod")
def _mod(mod: Any, step: _Step, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.fmod(a, b) if step.attrs.get("fmod", 0) else torch.remainder(a, b)


@_op("Sum", "Mean", "Max", "Min")
def _variadic(mod: Any, step: _Step, *xs: torch.Tensor) -> torch.Tensor:
    fn = {"Sum": torch.add, "Mean": torch.add, "Max": torch.maximum, "Min": torch.minimum}
    out = functools.reduce(fn[step.op], xs)
    return out / len(xs) if step.op == "Mean" else out


@_op("IsInf")
def _isinf(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    neg, pos = step.attrs.get("detect_negative", 1), step.attrs.get("detect_positive", 1)
    return (torch.isneginf(x) if neg else torch.zeros_like(x, dtype=torch.bool)) | \
        (torch.isposinf(x) if pos else torch.zeros_like(x, dtype=torch.bool))


# --- activations ----------------------------------------------------------------------------

@_op("Gelu")
def _gelu(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate=step.attrs.get("approximate", "none"))


@_op("LeakyRelu")
def _leaky_relu(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, step.attrs.get("alpha", 0.01))


@_op("PRelu")
def _prelu(mod: Any, step: _Step, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    if slope.dim() == 1 and x.dim() > 2 and slope.numel() not in (1, x.shape[-1]):
        slope = slope.reshape(-1, *([1] * (x.dim() - 2)))  # one slope per channel
    return torch.where(x < 0, x * slope, x)


@_op("Elu", "Celu")
def _elu(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    fn = F.elu if step.op == "Elu" else F.celu
    return fn(x, step.attrs.get("alpha", 1.0))


@_op("Selu")
def _selu(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    alpha = step.attrs.get("alpha", 1.67326319217681884765625)
    gamma = step.attrs.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@_op("ThresholdedRelu")
def _thresholded_relu(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > step.attrs.get("alpha", 1.0), x, torch.zeros_like(x))


@_op("HardSigmoid")
def _hard_sigmoid(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    a = step.attrs
    return torch.clamp(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1)


@_op("Shrink")
def _shrink(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    lambd, bias = step.attrs.get("lambd", 0.5), step.attrs.get("bias", 0.0)
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero)).to(x.dtype)


@_op("Clip", py=True)
def _clip(mod: Any, step: _Step, x: Value, lo: Value = None, hi: Value = None) -> Value:
    lo = step.attrs["min"] if "min" in step.attrs else lo
    hi = step.attrs["max"] if "max" in step.attrs else hi
    if lo is None and hi is None:
        return x
    lo, hi = (None if v is None else _scalar(v) for v in (lo, hi))
    return torch.clamp(_tensor(x), lo, hi)


@_op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    def hardmax(t: torch.Tensor, dim: int) -> torch.Tensor:
        return F.one_hot(t.argmax(dim), t.shape[dim]).movedim(-1, dim).to(t.dtype)
    fn = {"Softmax": torch.softmax, "LogSoftmax": torch.log_softmax, "Hardmax": hardmax}[step.op]
    axis = step.attrs.get("axis", -1 if mod._opset >= 13 else 1)
    if mod._opset >= 13:
        return fn(x, axis)
    axis = axis % x.dim()  # before opset 13: softmax over the input coerced to 2-D at `axis`
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


# --- shapes and indexing ----------------------------------------------------------------------

@_op("Transpose")
def _transpose(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    return x.permute(step.attrs.get("perm", list(range(x.dim()))[::-1]))


@_op("Flatten")
def _flatten(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    axis = step.attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    if axis == 0:
        return x.reshape(1, -1)
    if axis == x.dim():
        return x.reshape(-1, 1)
    return torch.flatten(torch.flatten(x, axis), 0, axis - 1)


@_op("Reshape", py=True)
def _reshape(mod: Any, step: _Step, x: Value, shape: Value) -> torch.Tensor:
    x = _tensor(x)
    target = list(_ints(shape))
    if not step.attrs.get("allowzero", 0):
        target = [x.shape[i] if isinstance(d, int) and d == 0 else d
                  for i, d in enumerate(target)]
    return x.reshape(target)


@_op("Shape", py=True)
def _shape(mod: Any, step: _Step, x: Value) -> tuple[int, ...]:
    dims = tuple(_tensor(x).shape)
    return dims[step.attrs.get("start", 0):step.attrs.get("end", len(dims))]


@_op("Size", py=True)
def _size(mod: Any, step: _Step, x: Value) -> int:
    return _tensor(x).numel()


@_op("Gather", py=True)
def _gather(mod: Any, step: _Step, data: Value, idx: Value) -> Value:
    axis = step.attrs.get("axis", 0)
    if not isinstance(data, torch.Tensor) and not isinstance(idx, torch.Tensor):
        dims = _ints(data)
        return dims[idx] if isinstance(idx, int) else tuple(dims[i] for i in idx)
    data, idx = _tensor(data), _tensor(idx)
    axis = axis % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    return out.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1:])


@_op("GatherElements")
def _gather_elements(mod: Any, step: _Step, data: torch.Tensor, idx: torch.Tensor
                     ) -> torch.Tensor:
    axis = step.attrs.get("axis", 0) % data.dim()
    return torch.gather(data, axis, torch.where(idx < 0, idx + data.shape[axis], idx))


def _nd_index(data: torch.Tensor, idx: torch.Tensor, batch: int) -> tuple[Any, ...]:
    """Advanced-indexing tuple selecting data[b..., idx[b..., m, :]] (batch dims first)."""
    k = idx.shape[-1]
    dims = torch.tensor(data.shape[batch:batch + k], dtype=idx.dtype)
    idx = torch.where(idx < 0, idx + dims, idx)
    lead = idx.shape[:-1]
    grids = [torch.arange(n).reshape([n if i == j else 1 for j in range(len(lead))])
             for i, n in enumerate(lead[:batch])]
    return tuple(g.expand(lead) for g in grids) + tuple(idx[..., j] for j in range(k))


@_op("GatherND")
def _gather_nd(mod: Any, step: _Step, data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return data[_nd_index(data, idx, step.attrs.get("batch_dims", 0))]


_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@_op("ScatterND")
def _scatter_nd(mod: Any, step: _Step, data: torch.Tensor, idx: torch.Tensor,
                updates: torch.Tensor) -> torch.Tensor:
    reduction = step.attrs.get("reduction", "none")
    index = _nd_index(data, idx, 0)
    out = data.clone()
    if reduction == "none":
        out[index] = updates
    elif reduction == "add":
        out.index_put_(index, updates, accumulate=True)
    else:
        k = idx.shape[-1]
        flat = out.reshape(math.prod(data.shape[:k]), *data.shape[k:])
        lin = torch.zeros(idx.shape[:-1], dtype=torch.int64)
        for j in range(k):
            lin = lin * data.shape[j] + index[j]
        upd = updates.reshape(-1, *data.shape[k:])
        lin = lin.reshape(-1, *([1] * (upd.dim() - 1))).expand_as(upd)
        out = flat.scatter_reduce(0, lin, upd, _REDUCE[reduction]).reshape(data.shape)
    return out


@_op("ScatterElements", "Scatter")
def _scatter_elements(mod: Any, step: _Step, data: torch.Tensor, idx: torch.Tensor,
                      updates: torch.Tensor) -> torch.Tensor:
    axis = step.attrs.get("axis", 0) % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    reduction = step.attrs.get("reduction", "none")
    if reduction == "none":
        return data.scatter(axis, idx, updates)
    return data.scatter_reduce(axis, idx, updates, _REDUCE[reduction])


def _axes(step: _Step, given: Value) -> tuple[int, ...] | None:
    if "axes" in step.attrs:
        return tuple(step.attrs["axes"])
    return None if given is None else _ints(given)


@_op("Unsqueeze", py=True)
def _unsqueeze(mod: Any, step: _Step, x: Value, axes: Value = None) -> Value:
    axes = _axes(step, axes) or ()
    if _int_scalar(x) and axes in ((0,), (-1,)):
        return (x,)
    x = _tensor(x)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@_op("Squeeze", py=True)
def _squeeze(mod: Any, step: _Step, x: Value, axes: Value = None) -> Value:
    axes = _axes(step, axes)
    if isinstance(x, tuple) and len(x) == 1 and axes in (None, (0,), (-1,)):
        return x[0]
    x = _tensor(x)
    if not axes:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


@_op("Concat", py=True)
def _concat(mod: Any, step: _Step, *parts: Value) -> Value:
    if not any(isinstance(p, torch.Tensor) for p in parts):
        return tuple(i for p in parts for i in _ints(p))
    return torch.cat([_tensor(p) for p in parts], step.attrs.get("axis", 0))


@_op("Split", py=True)
def _split(mod: Any, step: _Step, x: Value, split: Value = None, *rest: Value) -> list[Any]:
    x = _tensor(x)
    axis = step.attrs.get("axis", 0) % x.dim()
    sizes = tuple(step.attrs["split"]) if "split" in step.attrs else \
        (_ints(split) if split is not None else None)
    if not sizes:
        n = step.attrs.get("num_outputs", len(step.outputs))
        chunk = -(-x.shape[axis] // n)
        sizes = tuple(min(chunk, x.shape[axis] - i * chunk) for i in range(n))
    return list(torch.split(x, list(sizes), axis))


_INT_MAX = 2 ** 62


@_op("Slice", py=True)
def _slice(mod: Any, step: _Step, x: Value, starts: Value = None, ends: Value = None,
           axes: Value = None, steps: Value = None) -> Value:
    a = step.attrs
    starts = _ints(a["starts"] if "starts" in a else starts)
    ends = _ints(a["ends"] if "ends" in a else ends)
    axes = _axes(step, axes) or tuple(range(len(starts)))
    steps = _ints(steps) if steps is not None else (1,) * len(starts)
    clip = [max(-_INT_MAX, min(_INT_MAX, int(v))) if isinstance(v, int) else v
            for v in starts + ends]
    starts, ends = clip[:len(starts)], clip[len(starts):]
    if not isinstance(x, torch.Tensor):
        dims = _ints(x)
        return dims[slice(starts[0], ends[0], steps[0])]
    for axis, s, e, st in zip(axes, starts, ends, steps):
        axis %= x.dim()
        if st > 0:
            x = x[(slice(None),) * axis + (slice(s, e, st),)]
        else:
            s, e, st = slice(int(s), int(e), st).indices(x.shape[axis])
            x = torch.index_select(x, axis, torch.arange(s, e, st, dtype=torch.int64))
    return x


@_op("Expand", py=True)
def _expand(mod: Any, step: _Step, x: Value, shape: Value) -> torch.Tensor:
    x = _tensor(x)
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


@_op("Tile", py=True)
def _tile(mod: Any, step: _Step, x: Value, repeats: Value) -> torch.Tensor:
    return _tensor(x).repeat(_ints(repeats))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
              "wrap": "circular"}


@_op("Pad", py=True)
def _pad(mod: Any, step: _Step, x: Value, pads: Value = None, value: Value = None,
         axes: Value = None) -> torch.Tensor:
    x = _tensor(x)
    a = step.attrs
    pads = _ints(a["pads"] if "pads" in a else pads)
    value = a.get("value", 0.0) if value is None else _scalar(value)
    rank = x.dim()
    axes = [ax % rank for ax in (_ints(axes) if axes is not None else range(rank))]
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        begin[ax], end[ax] = pads[i], pads[i + n]
    mode = _PAD_MODES[a.get("mode", "constant")]
    torch_pads: list[int] = []
    for ax in reversed(range(rank)):
        torch_pads += [begin[ax], end[ax]]
    while torch_pads and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if not torch_pads:
        return x
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    used = len(torch_pads) // 2
    lead = rank - used
    y = x.reshape(1, max(math.prod(x.shape[:lead]), 1), *x.shape[lead:]) if lead < 2 or \
        used > 3 else x
    if used > 3:
        raise unsupported(step, f"{a.get('mode')} padding of more than 3 dimensions")
    out = F.pad(y if y.dim() >= used + 2 else y.unsqueeze(0), torch_pads, mode=mode)
    return out.reshape(*x.shape[:lead], *out.shape[out.dim() - used:])


@_op("ConstantOfShape", py=True)
def _constant_of_shape(mod: Any, step: _Step, shape: Value) -> torch.Tensor:
    value = step.attrs.get("value")
    fill = value if isinstance(value, torch.Tensor) else torch.zeros(1)
    return fill.reshape(-1)[0].expand(tuple(_ints(shape))).clone()


@_op("Range", py=True)
def _range(mod: Any, step: _Step, start: Value, limit: Value, delta: Value) -> torch.Tensor:
    if not any(isinstance(v, torch.Tensor) for v in (start, limit, delta)):
        return torch.arange(start, limit, delta, dtype=torch.int64)
    start, limit, delta = (_tensor(v) for v in (start, limit, delta))
    if not start.is_floating_point():
        return torch.arange(int(start), int(limit), int(delta), dtype=start.dtype)
    n = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    return start + torch.arange(n, dtype=start.dtype) * delta


@_op("Trilu", py=True)
def _trilu(mod: Any, step: _Step, x: Value, k: Value = None) -> torch.Tensor:
    k = 0 if k is None else int(_scalar(k))
    return (torch.triu if step.attrs.get("upper", 1) else torch.tril)(_tensor(x), k)


@_op("Einsum")
def _einsum(mod: Any, step: _Step, *xs: torch.Tensor) -> torch.Tensor:
    return torch.einsum(step.attrs["equation"].replace(" ", ""), *xs)


@_op("NonZero")
def _nonzero(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(x).t().contiguous()


@_op("OneHot")
def _one_hot(mod: Any, step: _Step, idx: torch.Tensor, depth: torch.Tensor,
             values: torch.Tensor) -> torch.Tensor:
    depth = int(depth.reshape(-1)[0])
    idx = idx.long()
    valid = (idx >= -depth) & (idx < depth)
    hot = F.one_hot(torch.where(valid, idx % depth, 0), depth) * valid.unsqueeze(-1)
    out = torch.where(hot.bool(), values[1], values[0])
    return out.movedim(-1, step.attrs.get("axis", -1) % out.dim())


@_op("CumSum")
def _cumsum(mod: Any, step: _Step, x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    dim = int(axis.reshape(-1)[0]) % x.dim()
    rev = step.attrs.get("reverse", 0)
    y = x.flip(dim) if rev else x
    out = torch.cumsum(y, dim).to(x.dtype)
    if step.attrs.get("exclusive", 0):
        out = out - y
    return out.flip(dim) if rev else out


@_op("ArgMax", "ArgMin")
def _argmax(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    axis = step.attrs.get("axis", 0) % x.dim()
    keep = bool(step.attrs.get("keepdims", 1))
    fn = torch.argmax if step.op == "ArgMax" else torch.argmin
    if step.attrs.get("select_last_index", 0):
        return x.shape[axis] - 1 - fn(x.flip(axis), axis, keep)
    return fn(x, axis, keep)


@_op("TopK", py=True)
def _topk(mod: Any, step: _Step, x: Value, k: Value = None) -> list[torch.Tensor]:
    x = _tensor(x)
    k = step.attrs["k"] if "k" in step.attrs else int(_scalar(k))
    axis = step.attrs.get("axis", -1) % x.dim()
    values, idx = torch.sort(x, dim=axis, descending=bool(step.attrs.get("largest", 1)),
                             stable=True)
    return [values.narrow(axis, 0, k), idx.narrow(axis, 0, k)]


@_op("DepthToSpace", "SpaceToDepth")
def _depth_to_space(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    b = step.attrs["blocksize"]
    n, c, h, w = x.shape
    if step.op == "SpaceToDepth":
        y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)
    if step.attrs.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


# --- dtypes -----------------------------------------------------------------------------------

DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16,
          6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
          12: torch.uint32, 13: torch.uint64, 16: torch.bfloat16}


def cast(x: Value, dtype: torch.dtype) -> Value:
    if not isinstance(x, torch.Tensor) and dtype == torch.int64:
        return x
    x = _tensor(x)
    if x.is_floating_point() and not dtype.is_floating_point and dtype != torch.bool:
        x = torch.trunc(x)
    return x.to(dtype)


@_op("Cast", py=True)
def _cast(mod: Any, step: _Step, x: Value) -> Value:
    dtype = DTYPES.get(step.attrs["to"])
    if dtype is None:
        raise unsupported(step, f"unsupported target type {step.attrs['to']}")
    return cast(x, dtype)


@_op("CastLike", py=True)
def _cast_like(mod: Any, step: _Step, x: Value, like: Value) -> Value:
    return cast(x, _tensor(like).dtype)


# --- reductions -------------------------------------------------------------------------------

def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


_REDUCTIONS: dict[str, Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]] = {
    "ReduceSum": lambda x, d, k: torch.sum(x, d, keepdim=k),
    "ReduceMean": lambda x, d, k: torch.mean(x, d, keepdim=k),
    "ReduceMax": lambda x, d, k: torch.amax(x, d, keepdim=k),
    "ReduceMin": lambda x, d, k: torch.amin(x, d, keepdim=k),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: torch.sum(x.abs(), d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k)),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}


_EMPTY_REDUCTION: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ReduceSumSquare": lambda t: t * t, "ReduceL1": torch.abs, "ReduceL2": torch.abs,
    "ReduceLogSum": torch.log}


@_op(*_REDUCTIONS, py=True)
def _reduce(mod: Any, step: _Step, x: Value, axes: Value = None) -> torch.Tensor:
    x = _tensor(x)
    axes = _axes(step, axes)
    if not axes:
        if step.attrs.get("noop_with_empty_axes", 0):  # reduce over nothing
            return _EMPTY_REDUCTION.get(step.op, lambda t: t)(x)
        axes = tuple(range(x.dim()))
    dims = tuple(a % x.dim() for a in axes) if x.dim() else ()
    if not dims:
        return x.clone()
    return _REDUCTIONS[step.op](x, dims, bool(step.attrs.get("keepdims", 1))).to(x.dtype)


# --- linear algebra, convolution, pooling, normalisation --------------------------------------

@_op("MatMul")
def _matmul(mod: Any, step: _Step, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@_op("Gemm")
def _gemm(mod: Any, step: _Step, a: torch.Tensor, b: torch.Tensor,
          c: torch.Tensor | None = None) -> torch.Tensor:
    at = step.attrs
    a = a.t() if at.get("transA", 0) else a
    b = b.t() if at.get("transB", 0) else b
    out = at.get("alpha", 1.0) * (a @ b)
    return out if c is None else out + at.get("beta", 1.0) * c


def same_pads(step: _Step, x: torch.Tensor) -> list[int]:
    """ONNX pads [begins..., ends...] for ``auto_pad`` SAME_* / VALID / NOTSET."""
    a = step.attrs
    kernel, n = a["kernel"], len(a["kernel"])
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        return list(a.get("onnx_pads") or a.get("pads") or [0] * 2 * n)
    if mode == "VALID":
        return [0] * 2 * n
    begins, ends = [], []
    for i, k in enumerate(kernel):
        size, s, d = x.shape[2 + i], a["strides"][i], a["dilations"][i]
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return begins + ends


def torch_pads(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] as F.pad's (last dim first) list."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _conv_fn(n: int) -> Callable[..., torch.Tensor]:
    return (F.conv1d, F.conv2d, F.conv3d)[n - 1]


@_op("conv", "conv_auto_pad", "linear")
def _layer(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    """A Conv/Gemm/MatMul with constant weights: the registered submodule runs."""
    if step.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        x = F.pad(x, torch_pads(same_pads(step, x)))
    elif step.attrs.get("pad"):
        x = F.pad(x, step.attrs["pad"])
    if step.attrs.get("transA"):
        x = x.t()
    return mod._modules[step.module](x)  # looked up at call time: swapped layers run


@_op("Conv")
def _conv(mod: Any, step: _Step, x: torch.Tensor, w: torch.Tensor,
          b: torch.Tensor | None = None) -> torch.Tensor:
    a = dict(step.attrs)
    n = w.dim() - 2
    a.setdefault("kernel", list(w.shape[2:]))
    a.setdefault("strides", [1] * n)
    a.setdefault("dilations", [1] * n)
    x = F.pad(x, torch_pads(same_pads(_Step(step.op, step.node, (), (), a), x)))
    return _conv_fn(n)(x, w, b, a["strides"], 0, a["dilations"], a.get("group", 1))


@_op("conv_transpose")
def _conv_transpose(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    layer = mod._modules[step.module]
    return _transpose_crop(step, x, layer(x), layer.bias)


@_op("ConvTranspose")
def _conv_transpose_fn(mod: Any, step: _Step, x: torch.Tensor, w: torch.Tensor,
                       b: torch.Tensor | None = None) -> torch.Tensor:
    n = w.dim() - 2
    a = step.attrs
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    y = fn(x, w, b, a.get("strides", [1] * n), 0, 0, a.get("group", 1),
           a.get("dilations", [1] * n))
    return _transpose_crop(_Step(step.op, step.node, (), (), {**a, "kernel": list(w.shape[2:])}),
                           x, y, b)


def _transpose_crop(step: _Step, x: torch.Tensor, y: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """The full (unpadded) transposed convolution ``y`` cut to ONNX's pads / output_shape."""
    a = step.attrs
    kernel, n = a["kernel"], len(a["kernel"])
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    out_pad = list(a.get("output_padding", [0] * n))
    pads = list(a.get("pads", [0] * 2 * n))
    if "output_shape" in a or a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        shape = list(a["output_shape"])[-n:] if "output_shape" in a else \
            [x.shape[2 + i] * strides[i] for i in range(n)]
        for i in range(n):
            total = strides[i] * (x.shape[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dil[i] \
                + 1 - shape[i]
            half = total // 2
            first_small = a.get("auto_pad") == "SAME_UPPER"
            pads[i], pads[i + n] = (half, total - half) if first_small else (total - half, half)
    ends = [pads[i + n] - out_pad[i] for i in range(n)]
    crop = [-v for v in torch_pads(pads[:n] + ends)]
    if not any(crop):
        return y
    if any(p < 0 for p in ends) and bias is not None:  # grown region: bias only, as in ONNX
        shape = [1, -1] + [1] * n
        return F.pad(y - bias.reshape(shape), crop) + bias.reshape(shape)
    return F.pad(y, crop)


_POOL_KIND = {"max_pool_padded": "MaxPool", "avg_pool_padded": "AveragePool"}


@_op("MaxPool", "AveragePool", "LpPool", *_POOL_KIND)
def _pool(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    """Pools; "MaxPool"/"AveragePool" steps have symmetric pads of at most half the kernel
    (``pads`` lists the begins, as torch takes them), the ``*_padded`` ones any ONNX pads."""
    a = step.attrs
    n = len(a["kernel"])
    kind = _POOL_KIND.get(step.op, step.op)
    pads = same_pads(step, x)
    sym = pads[:n] == pads[n:] and all(p <= k // 2 for p, k in zip(pads, a["kernel"]))
    if kind == "LpPool":
        p = a.get("p", 2)
        y = F.pad(x, torch_pads(pads)).abs() ** p
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return (fn(y, a["kernel"], a["strides"], 0, a["ceil_mode"]) * math.prod(a["kernel"])
                ) ** (1.0 / p)
    if kind == "MaxPool":
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
        if not sym:
            x, pads = F.pad(x, torch_pads(pads), value=-math.inf), [0] * 2 * n
        return fn(x, a["kernel"], a["strides"], pads[:n], a["dilations"], a["ceil_mode"])
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    if sym:
        return fn(x, a["kernel"], a["strides"], pads[:n], a["ceil_mode"],
                  a["count_include_pad"])
    padded = F.pad(x, torch_pads(pads))
    total = fn(padded, a["kernel"], a["strides"], 0, a["ceil_mode"], True)
    if a["count_include_pad"]:
        return total
    ones = F.pad(torch.ones_like(x[:1, :1]), torch_pads(pads))
    return total / fn(ones, a["kernel"], a["strides"], 0, a["ceil_mode"], True)


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(2, x.dim()))
    return x.mean(dims, keepdim=True) if step.op == "GlobalAveragePool" else x.amax(dims, True)


@_op("LRN")
def _lrn(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    a = step.attrs
    size = a["size"]
    alpha, beta, bias = a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)
    sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
    sq = F.pad(sq, (0, 0, (size - 1) // 2, size // 2))  # ONNX: floor before, ceil after
    total = F.avg_pool2d(sq, (size, 1), 1) * size
    return x / (bias + alpha / size * total.reshape(x.shape)) ** beta


@_op("batchnorm")
def _batchnorm_layer(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    bn = mod._modules[step.module]
    if x.dim() == 4:
        return bn(x)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                        bn.eps)


@_op("BatchNormalization")
def _batchnorm(mod: Any, step: _Step, x: torch.Tensor, scale: torch.Tensor,
               bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, step.attrs.get("epsilon", 1e-5))


@_op("InstanceNormalization")
def _instance_norm(mod: Any, step: _Step, x: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=step.attrs.get("epsilon", 1e-5))


@_op("LayerNormalization")
def _layer_norm(mod: Any, step: _Step, x: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> Any:
    axis = step.attrs.get("axis", -1) % x.dim()
    eps = step.attrs.get("epsilon", 1e-5)
    shape = tuple(int(d) for d in x.shape[axis:])  # ints: the TorchScript exporter needs them static
    scale = scale.expand(shape)
    bias = None if bias is None else bias.expand(shape)
    y = F.layer_norm(x, shape, scale, bias, eps)
    if len(step.outputs) == 1:
        return y
    dims = tuple(range(axis, x.dim()))
    mean = x.float().mean(dims, keepdim=True)
    inv_std = torch.rsqrt(x.float().var(dims, unbiased=False, keepdim=True) + eps)
    return [y, mean, inv_std]


@_op("LpNormalization")
def _lp_norm(mod: Any, step: _Step, x: torch.Tensor) -> torch.Tensor:
    p = step.attrs.get("p", 2)
    axis = step.attrs.get("axis", -1)
    return x / torch.linalg.vector_norm(x, p, dim=axis, keepdim=True)


@_op("Dropout", py=True)
def _dropout(mod: Any, step: _Step, x: Value, *rest: Value) -> Any:
    if len(step.outputs) == 1:
        return x
    x = _tensor(x)  # the mask: all kept (bool) from opset 10; before, onnxruntime gives zeros
    if mod._opset >= 10:
        return [x, torch.ones_like(x, dtype=torch.bool)]
    return [x, torch.zeros_like(x)]


@_op("Resize", "Upsample", py=True)
def _resize(mod: Any, step: _Step, x: Value, *args: Value) -> torch.Tensor:
    x = _tensor(x)
    a = step.attrs
    n = x.dim() - 2
    if step.op == "Upsample" or mod._opset < 11:
        scales = a.get("scales") or _ints_or_floats(args[-1])
        sizes = None
        coord = "asymmetric"
    else:
        scales = _ints_or_floats(args[1]) if len(args) > 1 and args[1] is not None else None
        sizes = _ints(args[2]) if len(args) > 2 and args[2] is not None else None
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        scales = scales or None
    mode = a.get("mode", "nearest")
    if (scales and any(float(s) != 1 for s in list(scales)[:2])) or \
            (sizes and tuple(sizes[:2]) != tuple(x.shape[:2])) or not 1 <= n <= 3:
        raise unsupported(step, "only resizing the spatial dimensions of N, C, ... is supported")
    out = dict(size=tuple(sizes[2:])) if sizes else \
        dict(scale_factor=tuple(float(s) for s in scales[2:]), recompute_scale_factor=False)
    nearest = a.get("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and coord == "asymmetric" and (step.op == "Upsample"
                                                        or nearest == "floor"
                                                        or mod._opset < 11):
        return F.interpolate(x, mode="nearest", **out)
    if mode == "nearest" and coord == "half_pixel" and nearest.startswith("round"):
        return F.interpolate(x, mode="nearest-exact", **out)
    if mode in ("linear", "bilinear", "trilinear") and coord in ("half_pixel", "align_corners",
                                                                "pytorch_half_pixel"):
        kind = ("linear", "bilinear", "trilinear")[n - 1]
        return F.interpolate(x, mode=kind, align_corners=coord == "align_corners", **out)
    raise unsupported(step, f"mode={mode} with coordinate_transformation_mode={coord} "
                            f"(nearest_mode={nearest}) is not supported")


def _ints_or_floats(v: Value) -> tuple[Any, ...]:
    return tuple(v.reshape(-1).tolist()) if isinstance(v, torch.Tensor) else _ints(v)


# --- quantisation (exact integer arithmetic) --------------------------------------------------

def _per_axis(p: torch.Tensor | None, x: torch.Tensor, axis: int) -> torch.Tensor | None:
    if p is None or p.dim() == 0 or p.numel() == 1:
        return None if p is None else p.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return p.reshape(shape)


def _saturate(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    info = torch.iinfo(dtype)
    return torch.clamp(y, info.min, info.max).to(dtype)


@_op("QuantizeLinear")
def _quantize(mod: Any, step: _Step, x: torch.Tensor, scale: torch.Tensor,
              zp: torch.Tensor | None = None) -> torch.Tensor:
    axis = step.attrs.get("axis", 1)
    if step.attrs.get("block_size", 0):
        raise unsupported(step, "blocked quantisation is not supported")
    dtype = zp.dtype if zp is not None else DTYPES.get(step.attrs.get("output_dtype", 2))
    s = _per_axis(scale, x, axis)
    z = _per_axis(zp, x, axis)
    y = torch.round(x.float() / s.float())
    if z is not None:
        y = y + z.float()
    return _saturate(y, dtype)


@_op("DequantizeLinear")
def _dequantize(mod: Any, step: _Step, x: torch.Tensor, scale: torch.Tensor,
                zp: torch.Tensor | None = None) -> torch.Tensor:
    axis = step.attrs.get("axis", 1)
    s = _per_axis(scale, x, axis)
    z = _per_axis(zp, x, axis)
    xi = x.to(torch.int64) if z is None else x.to(torch.int64) - z.to(torch.int64)
    return xi.to(s.dtype) * s


@_op("DynamicQuantizeLinear")
def _dynamic_quantize(mod: Any, step: _Step, x: torch.Tensor) -> list[torch.Tensor]:
    rmax = torch.clamp(x.max(), min=0)
    rmin = torch.clamp(x.min(), max=0)
    scale = (rmax - rmin) / 255.0
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = _saturate(torch.round(0 - rmin / safe), torch.uint8)
    y = _saturate(torch.round(x / safe) + zp.float(), torch.uint8)
    return [y, scale.reshape(()), zp.reshape(())]


def _centered(x: torch.Tensor, zp: torch.Tensor | None, row_axis: int | None = None
              ) -> torch.Tensor:
    """x - zero point in float64 (exact for 8-bit data: sums stay far below 2**53)."""
    x = x.double()
    if zp is None:
        return x
    z = zp.double()
    if row_axis is not None and z.dim() == 1 and z.numel() > 1:
        z = z.unsqueeze(-1)  # a per-row zero point of A
    return x - z


@_op("MatMulInteger")
def _matmul_integer(mod: Any, step: _Step, a: torch.Tensor, b: torch.Tensor,
                    a_zp: torch.Tensor | None = None, b_zp: torch.Tensor | None = None
                    ) -> torch.Tensor:
    return torch.matmul(_centered(a, a_zp, 0), _centered(b, b_zp)).round().to(torch.int32)


def _conv_integer(x: torch.Tensor, w: torch.Tensor, x_zp: torch.Tensor | None,
                  w_zp: torch.Tensor | None, step: _Step) -> torch.Tensor:
    n = w.dim() - 2
    a = {"kernel": list(w.shape[2:]), "strides": [1] * n, "dilations": [1] * n,
         **step.attrs}
    xc = _centered(x, x_zp)
    wc = w.double() if w_zp is None else w.double() - _per_axis(w_zp.double(), w, 0)
    xc = F.pad(xc, torch_pads(same_pads(_Step(step.op, step.node, (), (), a), xc)))
    return _conv_fn(n)(xc, wc, None, a["strides"], 0, a["dilations"], a.get("group", 1))


@_op("ConvInteger")
def _conv_int(mod: Any, step: _Step, x: torch.Tensor, w: torch.Tensor,
              x_zp: torch.Tensor | None = None, w_zp: torch.Tensor | None = None
              ) -> torch.Tensor:
    return _conv_integer(x, w, x_zp, w_zp, step).round().to(torch.int32)


def _requantize(acc: torch.Tensor, scale: torch.Tensor, y_zp: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
    """ORT's requantisation: float32(acc) * float32 scale, rounded half to even, + zero point."""
    y = torch.round(acc.float() * scale)
    if y_zp is not None:
        y = y + y_zp.float()
    return _saturate(y, dtype)


@_op("QLinearMatMul")
def _qlinear_matmul(mod: Any, step: _Step, a: torch.Tensor, a_s: torch.Tensor,
                    a_zp: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor, b_zp: torch.Tensor,
                    y_s: torch.Tensor, y_zp: torch.Tensor) -> torch.Tensor:
    acc = torch.matmul(_centered(a, a_zp, 0), _centered(b, b_zp)).round()
    scale = (a_s.float() * b_s.float() / y_s.float())
    return _requantize(acc, scale, y_zp, y_zp.dtype)


@_op("QLinearConv")
def _qlinear_conv(mod: Any, step: _Step, x: torch.Tensor, x_s: torch.Tensor,
                  x_zp: torch.Tensor, w: torch.Tensor, w_s: torch.Tensor, w_zp: torch.Tensor,
                  y_s: torch.Tensor, y_zp: torch.Tensor, b: torch.Tensor | None = None
                  ) -> torch.Tensor:
    acc = _conv_integer(x, w, x_zp, w_zp, step).round()
    shape = [1, -1] + [1] * (w.dim() - 2)
    if b is not None:
        acc = acc + b.double().reshape(shape)
    scale = (x_s.float() * w_s.float().reshape(-1) / y_s.float()).reshape(shape)
    return _requantize(acc, scale, y_zp, y_zp.dtype)


# --- sequences of tensors -----------------------------------------------------------------------

class TensorSequence:
    """An ONNX sequence value: an immutable run of tensors."""

    def __init__(self, items: Any = ()) -> None:
        self.items = tuple(items)

    def __len__(self) -> int:
        return len(self.items)


def _position(seq: TensorSequence, pos: Value, default: int) -> int:
    p = default if pos is None else int(_scalar(pos))
    return p + len(seq) if p < 0 else p


@_op("SequenceEmpty", py=True)
def _sequence_empty(mod: Any, step: _Step) -> TensorSequence:
    return TensorSequence()


@_op("SequenceConstruct", py=True)
def _sequence_construct(mod: Any, step: _Step, *xs: Value) -> TensorSequence:
    return TensorSequence(_tensor(x) for x in xs)


@_op("SequenceInsert", py=True)
def _sequence_insert(mod: Any, step: _Step, seq: TensorSequence, x: Value,
                     pos: Value = None) -> TensorSequence:
    items = list(seq.items)
    items.insert(len(items) if pos is None else int(_scalar(pos)), _tensor(x))
    return TensorSequence(items)


@_op("SequenceErase", py=True)
def _sequence_erase(mod: Any, step: _Step, seq: TensorSequence, pos: Value = None
                    ) -> TensorSequence:
    items = list(seq.items)
    del items[_position(seq, pos, len(seq) - 1)]
    return TensorSequence(items)


@_op("SequenceAt", py=True)
def _sequence_at(mod: Any, step: _Step, seq: TensorSequence, pos: Value) -> torch.Tensor:
    return seq.items[_position(seq, pos, 0)]


@_op("SequenceLength", py=True)
def _sequence_length(mod: Any, step: _Step, seq: TensorSequence) -> torch.Tensor:
    return torch.tensor(len(seq), dtype=torch.int64)


@_op("ConcatFromSequence", py=True)
def _concat_from_sequence(mod: Any, step: _Step, seq: TensorSequence) -> torch.Tensor:
    axis = step.attrs["axis"]
    if step.attrs.get("new_axis", 0):
        return torch.stack(seq.items, axis)
    return torch.cat(seq.items, axis)


@_op("SplitToSequence", py=True)
def _split_to_sequence(mod: Any, step: _Step, x: Value, split: Value = None
                       ) -> TensorSequence:
    x = _tensor(x)
    axis = step.attrs.get("axis", 0) % x.dim()
    if split is None:
        parts = torch.split(x, 1, axis)
        if not step.attrs.get("keepdims", 1):
            parts = tuple(p.squeeze(axis) for p in parts)
        return TensorSequence(parts)
    sizes = _ints(split)
    if _int_scalar(split) or (isinstance(split, torch.Tensor) and split.dim() == 0):
        return TensorSequence(torch.split(x, int(sizes[0]), axis))
    return TensorSequence(torch.split(x, list(sizes), axis))
