"""Full-integer int8 models for the C runtime, as TensorFlow Lite's int8 scheme, and the Python
reference of exactly the integer arithmetic the C kernels do.

* **Weights**: symmetric per output row (channel), ``s_w = max|w_row| / 127``,
  ``q = round(w / s_w)`` in [-127, 127] (``encodings.quantize_rows``), zero point 0.
* **Activations**: asymmetric int8 per tensor, ``real = scale * (q - zero_point)``, the range
  (widened to include 0) calibrated as min/max over real inputs (the checkpoint's dataset);
  max/avg pooling and a standalone ReLU keep their input's scale and zero point.
* **Bias**: int32, ``round(b / (s_in * s_w))``.
* **Accumulators**: int32, ``bias + sum (x_q - zp_in) * w_q``.
* **Requantisation**: ``M = s_in * s_w / s_out`` per row as a Q31 multiplier ``m0`` and a shift
  (``quantize_multiplier``, TFLite's ``QuantizeMultiplier``); ``y = clamp(zp_out +
  MultiplyByQuantizedMultiplier(acc, m0, shift))`` (saturating rounding doubling high multiply,
  then rounding divide by a power of two), the clamp range cut at ``zp_out`` by a fused ReLU.

``run`` evaluates the model in this arithmetic with numpy int64 (the dot products are done in
float64, which is exact: every partial sum is an integer far below 2**53), bit-exact with the C
kernels in ``csrc/sb_kernels.c`` (``sbq_*``); ``profile --build`` checks that on the emulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsebench.errors import SparsebenchError
from sparsebench.embedded.encodings import quantize_rows
from sparsebench.embedded.lowering import Graph, Op

INT8_KINDS = ("conv", "linear", "relu", "maxpool", "avgpool", "adaptive_avgpool")
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        q = np.rint(np.asarray(x, dtype=np.float64) / self.scale) + self.zero_point
        return np.clip(q, -128, 127).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float64) - self.zero_point) * self.scale


def choose_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric int8 for the real range [lo, hi] widened to include 0 (TFLite)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return QParams(1.0, 0)
    scale = (hi - lo) / 255.0
    zp = int(np.clip(round(-128 - lo / scale), -128, 127))
    return QParams(float(np.float32(scale)), zp)


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``m ~= m0 * 2**(shift - 31)`` with ``m0`` in [2**30, 2**31) (TFLite QuantizeMultiplier)."""
    if m <= 0:
        return 0, 0
    frac, exp = math.frexp(m)
    q = int(round(frac * (1 << 31)))
    if q == 1 << 31:
        q //= 2
        exp += 1
    if exp < -31:
        return 0, 0
    if exp > 30:
        raise SparsebenchError(f"requantisation multiplier {m:.3g} is too large for int8")
    return q, exp


def requantize(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier in int64 numpy (the C ``sbq_requant``)."""
    acc = np.asarray(acc, dtype=np.int64)
    m0 = np.asarray(m0, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    x = np.clip(acc << left, INT32_MIN, INT32_MAX)
    ab = x * m0
    t = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(t >= 0, t >> 31, -((-t) >> 31))           # C division: towards zero
    mask = (np.int64(1) << right) - 1
    rem = high & mask
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + (rem > threshold)


def _tdiv(a: np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """C99 integer division (truncation towards zero), b > 0."""
    return np.sign(a) * (np.abs(a) // b)


def round_div(acc: np.ndarray, count: int | np.ndarray) -> np.ndarray:
    """``acc / count`` rounded half away from zero, as TFLite's average pooling."""
    acc = np.asarray(acc, dtype=np.int64)
    half = np.asarray(count, dtype=np.int64) // 2
    return np.where(acc > 0, _tdiv(acc + half, count), _tdiv(acc - half, count))


@dataclass
class QLayer:
    """The integer constants of one conv/linear: what ``export_c`` writes and ``run`` uses."""

    q: np.ndarray              # int8 rows x cols
    w_scale: np.ndarray        # float32 per row
    bias: np.ndarray | None    # int32 per row
    m0: np.ndarray             # int32 per row
    shift: np.ndarray          # int8 per row


@dataclass
class QModel:
    graph: Graph
    params: dict[str, QParams]                      # tensor -> scale, zero point
    layers: dict[str, QLayer] = field(default_factory=dict)   # op name -> constants
    calibration: str = ""

    @property
    def input(self) -> QParams:
        return self.params[self.graph.input]

    @property
    def output(self) -> QParams:
        return self.params[self.graph.output]

    def act_range(self, op: Op) -> tuple[int, int]:
        zp = self.params[op.output].zero_point
        return (max(-128, zp), 127) if op.act == "relu" else (-128, 127)


def check_int8(graph: Graph) -> None:
    """Every op must have an int8 kernel; the error names the layer and why."""
    for op in graph.ops:
        if op.kind not in INT8_KINDS:
            what = {"add": "residual add", "bn": "an unfolded BatchNorm",
                    "mul_const": "a constant multiplication",
                    "add_const": "a constant addition"}.get(op.kind, op.source)
            raise SparsebenchError(
                f"int8 export cannot handle layer {op.name!r} ({what}): the int8 C runtime has "
                f"conv2d, linear, relu, max/avg pooling only; use an fp32 encoding")
        if op.kind in ("linear", "conv") and op.act not in (None, "relu"):
            raise SparsebenchError(f"int8 export cannot handle layer {op.name!r}: fused "
                                   f"activation {op.act!r}")


def calibrate(graph: Graph, samples: np.ndarray, source: str, batch: int = 256) -> QModel:
    """Scales and zero points from the min/max of every tensor over ``samples`` (N x input
    shape, float32, as the model sees them), and each layer's integer constants."""
    from sparsebench.graph.reference import evaluate

    check_int8(graph)
    assert graph.source is not None
    names = [graph.input, *(op.output for op in graph.ops)]
    lo = {n: math.inf for n in names}
    hi = {n: -math.inf for n in names}
    for start in range(0, len(samples), batch):
        env = evaluate(graph.source, samples[start:start + batch])
        for n in names:
            v = np.asarray(env[n])
            lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
    params = {graph.input: choose_qparams(lo[graph.input], hi[graph.input])}
    model = QModel(graph, params, calibration=source)
    for op in graph.ops:
        p_in = params[op.inputs[0]]
        if op.kind in ("conv", "linear"):
            p_out = params[op.output] = choose_qparams(lo[op.output], hi[op.output])
            model.layers[op.name] = _qlayer(op, p_in, p_out)
        else:      # pooling and ReLU keep the input's quantisation
            params[op.output] = p_in
    return model


def _qlayer(op: Op, p_in: QParams, p_out: QParams) -> QLayer:
    assert op.weight is not None
    q, w_scale = quantize_rows(op.weight)
    eff = np.float64(p_in.scale) * w_scale.astype(np.float64)
    bias = None
    if op.bias is not None:
        bias = np.clip(np.rint(op.bias.astype(np.float64) / eff), INT32_MIN, INT32_MAX
                       ).astype(np.int32)
    pairs = [quantize_multiplier(float(e / p_out.scale)) for e in eff]
    m0 = np.array([m for m, _ in pairs], dtype=np.int32)
    shift = np.array([s for _, s in pairs], dtype=np.int8)
    return QLayer(q, w_scale, bias, m0, shift)


# ------------------------------------------------------------------ the integer reference

def _pad(x: np.ndarray, ph: int, pw: int, value: int) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
             ho: int, wo: int) -> np.ndarray:
    """N x C x kh x kw x ho x wo views of the (padded) input."""
    n, c = x.shape[:2]
    out = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            out[:, :, ky, kx] = x[:, :, ky * dh: ky * dh + sh * (ho - 1) + 1: sh,
                                  kx * dw: kx * dw + sw * (wo - 1) + 1: sw]
    return out


def _finish(model: QModel, op: Op, layer: QLayer, acc: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * acc.ndim
    shape[axis] = -1
    if layer.bias is not None:
        acc = acc + layer.bias.astype(np.int64).reshape(shape)
    y = requantize(acc, layer.m0.reshape(shape), layer.shift.reshape(shape))
    lo, hi = model.act_range(op)
    return np.clip(y + model.params[op.output].zero_point, lo, hi).astype(np.int8)


def _run_op(model: QModel, op: Op, x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    a = op.attrs
    zp = model.params[op.inputs[0]].zero_point
    if op.kind == "conv":
        layer = model.layers[op.name]
        cin, _, _ = op.in_shape
        cout, ho, wo = op.out_shape
        (kh, kw), (sh, sw) = a["kernel"], a["stride"]
        (ph, pw), (dh, dw) = a["padding"], a["dilation"]
        xs = _pad(x.reshape(n, *op.in_shape).astype(np.float64) - zp, ph, pw, 0)
        cols = _windows(xs, kh, kw, sh, sw, dh, dw, ho, wo).reshape(n, cin * kh * kw, ho * wo)
        acc = np.einsum("ok,nkp->nop", layer.q.astype(np.float64), cols, optimize=True)
        return _finish(model, op, layer, np.rint(acc).astype(np.int64), 1).reshape(n, -1)
    if op.kind == "linear":
        layer = model.layers[op.name]
        fin = a["in_features"]
        xs = x.reshape(n, -1, fin).astype(np.float64) - zp
        acc = np.rint(xs @ layer.q.astype(np.float64).T).astype(np.int64)
        return _finish(model, op, layer, acc, 2).reshape(n, -1)
    if op.kind == "relu":
        return np.maximum(x, np.int8(zp))
    c, h, wd = op.in_shape
    _, ho, wo = op.out_shape
    if op.kind == "adaptive_avgpool":
        kh, kw = h // ho, wd // wo
        a = {"kernel": (kh, kw), "stride": (kh, kw), "padding": (0, 0), "dilation": (1, 1),
             "count_include_pad": True}
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    x4 = x.reshape(n, c, h, wd).astype(np.int64)
    if op.kind == "maxpool":
        dh, dw = a["dilation"]
        win = _windows(_pad(x4, ph, pw, -129), kh, kw, sh, sw, dh, dw, ho, wo)
        return win.max(axis=(2, 3)).astype(np.int8).reshape(n, -1)
    win = _windows(_pad(x4 - zp, ph, pw, 0), kh, kw, sh, sw, 1, 1, ho, wo)
    acc = win.sum(axis=(2, 3))
    if a["count_include_pad"]:
        count: int | np.ndarray = kh * kw
    else:
        inside = _windows(_pad(np.ones((1, 1, h, wd), np.int64), ph, pw, 0), kh, kw, sh, sw,
                          1, 1, ho, wo)
        count = np.maximum(inside.sum(axis=(2, 3)), 1)
    y = round_div(acc, count) + zp
    return np.clip(y, -128, 127).astype(np.int8).reshape(n, -1)


def run(model: QModel, xq: np.ndarray) -> np.ndarray:
    """The int8 output (N x out) for int8 inputs ``xq`` (N x input shape)."""
    g = model.graph
    env: dict[str, np.ndarray] = {g.input: np.asarray(xq, dtype=np.int8).reshape(len(xq), -1)}
    for op in g.ops:
        env[op.output] = _run_op(model, op, env[op.inputs[0]])
        for t in [t for t in env if t != g.output and all(
                i <= op.index for i in g.consumers(t))]:
            del env[t]
    return env[g.output]


def run_float(model: QModel, x: np.ndarray) -> np.ndarray:
    """Quantize float inputs, run, dequantize the output."""
    return model.output.dequantize(run(model, model.input.quantize(x)))


# ---------------------------------------------------------------- calibration data

def dataset_of(checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    rec = (checkpoint or {}).get("dataset") or {}
    return rec if rec.get("name") and rec.get("mean") else None


def load_data(checkpoint: dict[str, Any] | None, input_shape: tuple[int, ...],
              data_dir: str | None = None) -> Any:
    """The checkpoint's dataset normalised with its recorded statistics, or None."""
    from sparsebench.data import load_dataset

    rec = dataset_of(checkpoint)
    if rec is None:
        return None
    data = load_dataset(rec["name"], data_dir=data_dir,
                        pad_to_32=tuple(input_shape[-2:]) == (32, 32)
                        and rec["name"] == "fashion-mnist")
    if list(data.mean) != list(rec["mean"]) or list(data.std) != list(rec["std"]):
        import torch

        shape = [1, -1] + [1] * (data.train_x.dim() - 2)
        m0, s0 = (torch.tensor(v).reshape(shape) for v in (data.mean, data.std))
        m1, s1 = (torch.tensor(v).reshape(shape) for v in (rec["mean"], rec["std"]))
        data.train_x = (data.train_x * s0 + m0 - m1) / s1
        data.test_x = (data.test_x * s0 + m0 - m1) / s1
    if tuple(data.test_x.shape[1:]) != tuple(input_shape):
        raise SparsebenchError(f"the checkpoint's dataset {rec['name']!r} has samples of shape "
                               f"{tuple(data.test_x.shape[1:])}, the model takes "
                               f"{tuple(input_shape)}")
    return data


def calibration_samples(data: Any, input_shape: tuple[int, ...], n: int, seed: int = 0
                        ) -> tuple[np.ndarray, str]:
    """``n`` training images spread over the split (or seeded uniform [0, 1) inputs when the
    checkpoint names no dataset) and a description."""
    if data is None:
        rng = np.random.default_rng(seed)
        return (rng.random((n, *input_shape), dtype=np.float32),
                f"{n} seeded uniform [0, 1) inputs (the model names no dataset)")
    total = len(data.train_x)
    idx = np.linspace(0, total - 1, num=min(n, total)).round().astype(np.int64)
    return (data.train_x[idx].numpy().astype(np.float32),
            f"{len(idx)} {data.name} training images")


def accuracy(model: QModel, module: Any, data: Any, batch: int = 1000) -> dict[str, Any]:
    """Test accuracy (%) of the torch fp32 model and of the int8 reference on the whole test
    split (int8: argmax of the int8 output, ties to the lower class)."""
    import torch

    x, y = data.test_x, data.test_y.numpy()
    right32 = right8 = 0
    agree = 0
    for s in range(0, len(x), batch):
        xb = x[s:s + batch]
        with torch.inference_mode():
            p32 = module.eval()(xb).float().argmax(dim=1).numpy()
        p8 = run(model, model.input.quantize(xb.numpy())).argmax(axis=1)
        right32 += int((p32 == y[s:s + batch]).sum())
        right8 += int((p8 == y[s:s + batch]).sum())
        agree += int((p8 == p32).sum())
    n = len(x)
    return {"dataset": data.name, "split": "test", "samples": n,
            "fp32": 100.0 * right32 / n, "int8": 100.0 * right8 / n,
            "agreement": 100.0 * agree / n, "calibration": model.calibration}


def prepare(module: Any, graph: Graph, checkpoint: dict[str, Any] | None,
            input_shape: tuple[int, ...], n: int, data_dir: str | None = None
            ) -> tuple[QModel, Any, list[str]]:
    """Calibrate ``graph`` on ``n`` images of the checkpoint's dataset (seeded uniform inputs
    when it names none or the data cannot be read: said in the notes); returns the model, the
    dataset (or None) and notes."""
    notes: list[str] = []
    data = None
    try:
        data = load_data(checkpoint, input_shape, data_dir)
    except SparsebenchError as exc:
        notes.append(f"the checkpoint's dataset could not be read ({exc}); int8 calibrated on "
                     f"seeded uniform inputs, accuracy not measured")
    if data is None and not notes:
        notes.append("the model records no dataset: int8 calibrated on seeded uniform inputs, "
                     "accuracy not measured")
    samples, desc = calibration_samples(data, input_shape, n)
    return calibrate(graph, samples, desc), data, notes
