"""sparsebench native against DeepSparse 1.8 and ONNX Runtime, side by side (issue 13, item 6).

Builds each workload's ONNX file once into a cache folder (random weights, magnitude-pruned per
layer), then for every workload x threads x batch times three engines on that same file, in
alternating rounds:

* ONNX Runtime dense (the common yardstick): ``sparsebench.backends.onnxrt.session`` options
  (``threads`` intra-op, 1 inter-op, sequential, no spinning), the file's own bytes;
* DeepSparse 1.8, compiled once per cell with ``num_cores=threads`` in a side venv (Python
  <= 3.11, ``numpy<2``; never a dependency of sparsebench) by ``deepsparse_server.py``, a
  subprocess spoken to in JSON lines;
* sparsebench native csr: the file loaded with ``sparsebench.loading.load_model``, converted
  to csr and prepared by the native backend at ``threads`` and ``batch``, as a ``measure``
  worker does; its output must match the dense torch reference within 1e-4 relative error, or
  the row fails (not timed, exit code 1).

Every engine is warmed up, then ``--rounds`` rounds run, each timing every engine for
``--calls`` calls (one untimed call first) in a rotating order, with a short pause between
engines, so drift and other processes hit all three alike. The table reports medians of all
per-call latencies. The same timing loop (``sparsebench.measure.timing.time_calls``) times all
three, DeepSparse's inside its own process. See docs/deepsparse.md.

    python benchmarks/deepsparse_compare.py --markdown ds.md --json ds.json
    python benchmarks/deepsparse_compare.py --quick --models bert-base,ffn   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):  # real_models, and this checkout's sparsebench
    if _p not in sys.path:
        sys.path.insert(0, _p)

from sparsebench.errors import SparsebenchError  # noqa: E402  (light: no torch)

PROG = "deepsparse_compare"
MAX_REL_ERR = 1e-4      # sparsebench's rows fail above it
OTHERS_REL_ERR = 1e-3   # ORT's and DeepSparse's outputs: a note above it
DEFAULT_VENV = os.environ.get("DEEPSPARSE_VENV", "/work/venv-ds")
DEFAULT_WORKDIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
    / "sparsebench" / "deepsparse-compare"
SERVER = HERE / "deepsparse_server.py"
HELLO_TIMEOUT = 120.0
BUILD_VERSION = 1  # bump when a builder changes: the cache then builds new files

# (family, sparsity): the rows of issue 13's table
WORKLOADS = (("bert-base", 0.90), ("resnet50", 0.90), ("resnet50", 0.95), ("resnet18", 0.90),
             ("vgg11_bn", 0.90), ("vgg11_bn", 0.95), ("ffn", 0.90))
FAMILIES = tuple(dict.fromkeys(f for f, _ in WORKLOADS))
ENGINES = ("ort", "deepsparse", "sparsebench")


def log(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Sizes:
    """Model sizes: the issue's by default; tiny ones with ``--quick``."""

    bert_layers: int = 12
    bert_hidden: int = 768
    bert_seq: int = 128
    bert_vocab: int = 30522
    quick: bool = False


@dataclass(frozen=True)
class Workload:
    family: str
    sparsity: float

    @property
    def name(self) -> str:
        return f"{self.family}@{round(self.sparsity * 100)}"

    def label(self, sizes: Sizes) -> str:
        pct = f"{round(self.sparsity * 100)}%"
        if self.family == "bert-base":
            what = ("BERT-base" if (sizes.bert_layers, sizes.bert_hidden) == (12, 768) else
                    f"BERT {sizes.bert_layers}x{sizes.bert_hidden}")
            return f"{what} seq {sizes.bert_seq}, {pct}"
        if self.family == "resnet50":
            return f"ResNet-50 224x224, {pct}"
        if self.family == "ffn":
            d, h = (64, 256) if sizes.quick else (1024, 4096)
            return f"ffn {d}-{h}-{d}, {pct}"
        return f"{self.family} ({'tiny' if sizes.quick else 'CIFAR'}), {pct}"

    def filename(self, sizes: Sizes) -> str:
        pct = round(self.sparsity * 100)
        if self.family == "bert-base":
            s = sizes
            return f"bert-L{s.bert_layers}-H{s.bert_hidden}-S{s.bert_seq}-V{s.bert_vocab}" \
                   f"-p{pct}.onnx"
        return f"{self.family}{'-quick' if sizes.quick and self.family != 'resnet50' else ''}" \
               f"-p{pct}.onnx"


def select_workloads(text: str) -> list[Workload]:
    """``all``, families (``resnet50``: all its sparsities) or ``family@percent``."""
    known = [Workload(f, s) for f, s in WORKLOADS]
    if text.strip() == "all":
        return known
    chosen: list[Workload] = []
    for item in (t.strip() for t in text.split(",")):
        hits = [w for w in known if item in (w.family, w.name)]
        if not hits:
            raise SparsebenchError(f"unknown model {item!r}: expected all, one of "
                                   f"{', '.join(FAMILIES)} or one of "
                                   f"{', '.join(w.name for w in known)}")
        chosen += [w for w in hits if w not in chosen]
    return chosen


def batch_axis(model: Any) -> Any:
    """Make dim 0 of the graph's inputs and outputs a symbolic ``batch`` and let Reshape
    constants that pin it to 1 follow it (-1); drop stale intermediate shapes."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name not in inits and value.type.tensor_type.shape.dim:
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = "batch"
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = -1
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    del model.graph.value_info[:]
    return model


def _bert_onnx(sizes: Sizes, sparsity: float) -> bytes:
    """transformers' BertModel (random init, eager attention, no pooler) with every encoder
    Linear magnitude-pruned, inputs input_ids + attention_mask, output last_hidden_state."""
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    from real_models import _wrap
    from sparsebench.backends.onnxrt import export_onnx
    from sparsebench.model_io import signature_inputs
    from sparsebench.sweep import magnitude_prune

    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=sizes.bert_layers, hidden_size=sizes.bert_hidden,
                     num_attention_heads=sizes.bert_hidden // 64,
                     intermediate_size=4 * sizes.bert_hidden, vocab_size=sizes.bert_vocab,
                     attn_implementation="eager")
    wrapped = _wrap(BertModel(cfg, add_pooling_layer=False).eval())
    linears = [n for n, m in wrapped.named_modules()
               if isinstance(m, nn.Linear) and ".encoder." in f".{n}"]
    magnitude_prune(wrapped, sparsity, linears)
    wrapped.input_specs = signature_inputs(wrapped, (sizes.bert_seq,))
    return export_onnx(wrapped, (sizes.bert_seq,))


def _resnet50_onnx(sparsity: float) -> bytes:
    """The onnx wheel's light ResNet-50 with seeded random weights (``fold_generated``), every
    Conv but the 7x7 stem and the Gemm magnitude-pruned, batch axis made dynamic."""
    import onnx

    from real_models import fold_generated, prune_onnx

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / \
        "light_resnet50.onnx"
    if not path.exists():
        raise SparsebenchError(f"the onnx wheel has no {path}: cannot build resnet50")
    model = prune_onnx(fold_generated(onnx.load(str(path))), sparsity, dense_first_conv=True)
    return batch_axis(model).SerializeToString()


def _arch_onnx(family: str, sizes: Sizes, sparsity: float) -> bytes:
    """A sparsebench architecture (random init) pruned one-shot as ``sweep`` prunes (every
    Conv2d/Linear but the first conv and the head), exported like the onnxrt backend does."""
    import torch

    from sparsebench.archs import create_model, small_model
    from sparsebench.backends.onnxrt import export_onnx
    from sparsebench.sweep import magnitude_prune

    torch.manual_seed(0)
    if family == "ffn":
        kw = {"in_channels": 64, "d_model": 64, "d_hidden": 256} if sizes.quick else \
            {"in_channels": 1024}
        model = create_model("ffn", input_size=1, **kw)
    else:
        model = small_model(family) if sizes.quick else create_model(family, 3, 32)
    model.eval()
    magnitude_prune(model, sparsity)
    return export_onnx(model, model.input_shape)


def build(workload: Workload, sizes: Sizes, workdir: Path) -> Path:
    """The workload's ONNX file in ``workdir``, built once (atomically) and reused."""
    from sparsebench.outputs import atomic_write_bytes

    path = workdir / f"v{BUILD_VERSION}" / workload.filename(sizes)
    if path.exists():
        log(f"{workload.name}: cached {path}")
        return path
    log(f"{workload.name}: building {path}")
    if workload.family == "bert-base":
        data = _bert_onnx(sizes, workload.sparsity)
    elif workload.family == "resnet50":
        data = _resnet50_onnx(workload.sparsity)
    else:
        data = _arch_onnx(workload.family, sizes, workload.sparsity)
    atomic_write_bytes(path, lambda fh: fh.write(data))
    return path


# ----------------------------------------------------------------------------- engines
class LocalEngine:
    """A prepared execution of this process (ORT or sparsebench), timed by ``time_calls``."""

    def __init__(self, name: str, prepared: Any, xs: tuple[Any, ...]) -> None:
        self.name, self.prepared, self.xs = name, prepared, xs

    def round(self, calls: int, settle: int) -> list[int]:
        from sparsebench.measure.timing import TimingPolicy, time_calls

        prepared, xs = self.prepared, self.xs
        return time_calls(lambda: prepared.run(*xs),
                          TimingPolicy(warmup_calls=settle, warmup_seconds=0.0, min_calls=calls,
                                       min_seconds=0.0, max_calls=calls))

    def close(self) -> None:
        self.prepared = None


class SideVenvError(Exception):
    """The DeepSparse side venv or its server failed (the message says how)."""


class DeepSparseServer:
    """``deepsparse_server.py`` running in the side venv; one request, one JSON line back."""

    def __init__(self, venv: Path, log_path: Path) -> None:
        python = venv / "bin" / "python"
        if not python.exists():
            raise SideVenvError(f"{python} does not exist")
        env = {**os.environ, "NM_DISABLE_ANALYTICS": "True", "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)  # the venv's own packages only (the server adds the checkout)
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.log_start = self.log.tell()  # this server's part of the shared log
        self.proc = subprocess.Popen([str(python), str(SERVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, text=True,
                                     bufsize=1)

    def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise SideVenvError(f"the DeepSparse server exited ({self._tail()})")
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else None
        if line is None:
            self.close()
            raise SideVenvError(f"no answer to {msg['cmd']} within {timeout:g} s")
        if not line:
            raise SideVenvError(f"the DeepSparse server exited ({self._tail()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise SideVenvError(reply.get("error") or "unknown error")
        return reply

    def _tail(self) -> str:
        self.log.flush()
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.log_start)
                lines = [ln for ln in fh.read().decode(errors="replace").splitlines()
                         if ln.strip()]
        except OSError:
            lines = []
        return lines[-1][:300] if lines else f"exit code {self.proc.poll()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def deepsparse_status(venv: Path, workdir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(versions, None) when the side venv runs DeepSparse, else (None, the reason)."""
    try:
        server = DeepSparseServer(venv, workdir / "deepsparse-server.log")
    except SideVenvError as exc:
        return None, str(exc)
    try:
        reply = server.request({"cmd": "hello"}, HELLO_TIMEOUT)
    except SideVenvError as exc:
        return None, f"{venv}: {exc}"
    finally:
        server.close()
    reply.pop("ok", None)
    if not str(reply.get("deepsparse", "")).startswith("1.8"):
        return None, f"{venv} has DeepSparse {reply.get('deepsparse')}, not 1.8"
    return reply, None


class DeepSparseEngine:
    """One compiled DeepSparse engine (``num_cores=threads``, the cell's batch) in a server."""

    name = "deepsparse"

    def __init__(self, venv: Path, workdir: Path, model: Path, names: list[str],
                 xs: tuple[Any, ...], threads: int, batch: int, timeout: float) -> None:
        import numpy as np

        self.timeout = timeout
        tag = f"{model.stem}-t{threads}-b{batch}"
        inputs, self.outputs_path = workdir / f"{tag}.inputs.npz", workdir / f"{tag}.ds-out.npz"
        np.savez(inputs, **{n: x.numpy() for n, x in zip(names, xs)})
        self.server = DeepSparseServer(venv, workdir / "deepsparse-server.log")
        try:
            self.info = self.server.request(
                {"cmd": "compile", "model": str(model), "batch": batch, "threads": threads,
                 "inputs": str(inputs), "names": names, "outputs": str(self.outputs_path)},
                timeout)
        except SideVenvError:
            self.server.close()
            raise
        finally:
            inputs.unlink(missing_ok=True)

    def outputs(self) -> Any:
        """Its outputs on the cell's inputs (torch tensors: one, or a tuple)."""
        import numpy as np
        import torch

        with np.load(self.outputs_path) as data:
            outs = [torch.from_numpy(data[k].copy()) for k in data.files]
        self.outputs_path.unlink(missing_ok=True)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def round(self, calls: int, settle: int) -> list[int]:
        reply = self.server.request({"cmd": "time", "calls": calls, "settle": settle},
                                    self.timeout)
        return [int(s) for s in reply["samples_ns"]]

    def close(self) -> None:
        self.server.close()


# ----------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Plan:
    threads: list[int]
    batches: list[int]
    rounds: int
    calls: int | None          # None: auto (about ``round_seconds`` of the slowest engine)
    warmup: int
    round_seconds: float
    gap: float
    seed: int
    ds_timeout: float


def auto_calls(warm: dict[str, list[int]], round_seconds: float) -> int:
    """Calls per round so the slowest engine runs about ``round_seconds`` (3 to 1000)."""
    import statistics

    slowest = max(statistics.median(s) for s in warm.values() if s) / 1e9
    return max(3, min(1000, math.ceil(round_seconds / max(slowest, 1e-9))))


def alternate(engines: list[Any], plan: Plan) -> tuple[dict[str, list[list[int]]], int]:
    """Warm every engine up, then ``plan.rounds`` rounds of every engine in a rotating order;
    returns the samples of each round by engine, and the calls per round."""
    warm = {e.name: e.round(max(plan.warmup, 1), 0) for e in engines}
    calls = plan.calls or auto_calls(warm, plan.round_seconds)
    rounds: dict[str, list[list[int]]] = {e.name: [] for e in engines}
    for r in range(plan.rounds):
        k = r % len(engines)
        for engine in engines[k:] + engines[:k]:
            time.sleep(plan.gap)  # the previous engine's threads go quiet
            rounds[engine.name].append(engine.round(calls, 1))
    return rounds, calls


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _busy(load: list[float] | None) -> bool:
    return bool(load) and load[0] > (os.cpu_count() or 1)  # type: ignore[index]


def short_impl(impl: str | None) -> str:
    """The impl without ``native-`` and the thread count (a column of its own); the torch ops
    named when at most three, else counted (the JSON keeps the whole impl)."""
    if not impl:
        return ""
    text = re.sub(r"-t\d+(?=$|[+-])", "", impl.removeprefix("native-"))
    head, sep, ops = text.partition("+torch(")
    if sep:
        names = ops.rstrip(")").split(",")
        text = f"{head}+torch({','.join(names) if len(names) <= 3 else f'{len(names)} ops'})"
    return text


@dataclass
class Subject:
    """One workload, loaded once for all its cells."""

    workload: Workload
    path: Path
    loaded: Any
    converted: Any | None
    convert_error: str | None


def load_subject(workload: Workload, path: Path) -> Subject:
    from sparsebench.formats import convert
    from sparsebench.loading import load_model

    log(f"{workload.name}: loading and converting to csr")
    loaded = load_model(path)
    if loaded.module is None:
        return Subject(workload, path, loaded, None, f"no torch import: {loaded.onnx_error}")
    try:
        converted = convert(loaded.module, "csr")
    except SparsebenchError as exc:
        return Subject(workload, path, loaded, None, f"csr conversion failed: {exc}")
    reason = converted.no_layer_reason()
    return Subject(workload, path, loaded, None if reason else converted, reason)


def run_cell(subject: Subject, threads: int, batch: int, plan: Plan, venv: Path | None,
             workdir: Path, roof: dict[str, Any] | None) -> dict[str, Any]:
    """One row: prepare the three engines on the same inputs, check their outputs against
    the dense torch reference, alternate their timing rounds; sparsebench's place under the
    roofline ``roof`` (``measure.roofline.probe``) when given."""
    import torch

    from sparsebench.backends.base import Unsupported
    from sparsebench.backends.onnxrt import OnnxRuntimeBackend
    from sparsebench.measure.timing import latency_stats_ms
    from sparsebench.model_io import compare, make_inputs

    loaded = subject.loaded
    where = f"{subject.workload.name} t{threads} b{batch}"
    log(f"{where}: preparing ORT, DeepSparse and sparsebench")
    row: dict[str, Any] = {"model": subject.workload.name, "file": str(subject.path),
                           "threads": threads, "batch": batch, "load_before": loadavg()}
    torch.set_num_threads(threads)
    xs = make_inputs(loaded.inputs, batch, plan.seed)
    with torch.inference_mode():
        reference = loaded.module(*xs) if loaded.module is not None else None
    engines: list[Any] = []

    def checked(part: dict[str, Any], out: Any) -> dict[str, Any]:
        """``part`` with the output's max relative error against the reference."""
        try:
            part["max_rel_err"] = None if reference is None else compare(out, reference)[1]
        except SparsebenchError as exc:
            part.update(max_rel_err=None, warning=f"outputs do not match the reference: {exc}")
        return part

    try:
        ort = OnnxRuntimeBackend().prepare_original(loaded.onnx_bytes, loaded.inputs,
                                                    threads=threads, batch=batch)
        row["ort"] = checked({"status": "ok", "impl": ort.impl}, ort.run(*xs))
        engines.append(LocalEngine("ort", ort, xs))
    except Unsupported as exc:
        row["ort"] = {"status": "skipped", "reason": str(exc)}

    if venv is None:
        row["deepsparse"] = {"status": "unavailable"}
    else:
        try:
            ds = DeepSparseEngine(venv, workdir, subject.path, [s.name for s in loaded.inputs],
                                  xs, threads, batch, plan.ds_timeout)
            row["deepsparse"] = checked({"status": "ok", "compile_s": ds.info["compile_s"],
                                         "engine": ds.info["engine"]}, ds.outputs())
            engines.append(ds)
        except SideVenvError as exc:
            row["deepsparse"] = {"status": "skipped", "reason": str(exc)}
            log(f"{where}: DeepSparse: {exc}")

    row["sparsebench"] = native_row(subject, threads, batch, xs, reference, engines)

    try:
        while engines:
            log(f"{where}: timing {', '.join(e.name for e in engines)}")
            try:
                rounds, calls = alternate(engines, plan)
            except SideVenvError as exc:  # the DeepSparse server died: time the others again
                log(f"{where}: DeepSparse failed while timing: {exc}")
                row["deepsparse"] = {"status": "skipped", "reason": f"failed while timing: {exc}"}
                ds = next(e for e in engines if e.name == "deepsparse")
                ds.close()
                engines.remove(ds)
                continue
            row["calls_per_round"] = calls
            for name, per_round in rounds.items():
                samples = [s for r in per_round for s in r]
                row[name].update(latency_ms=latency_stats_ms(samples), samples_ns=per_round)
            break
        native = next((e for e in engines if e.name == "sparsebench"), None)
        if native is not None and roof is not None:
            row["sparsebench"].update(roofline(native.prepared, subject.converted, threads,
                                               batch, _p50(row["sparsebench"]), roof))
    finally:
        for engine in engines:
            engine.close()
    row["load_after"] = loadavg()
    return row


def roofline(prepared: Any, converted: Any, threads: int, batch: int, p50_ms: float | None,
             roof: dict[str, Any]) -> dict[str, Any]:
    """Achieved GB/s and GFLOP/s (nonzero MACs) and their fractions of the copy bandwidth and
    the GEMM peak at ``threads``, as ``measure`` and ``sweep`` report them."""
    from sparsebench.measure.roofline import achieved, fractions

    sparse_macs = sum(s.sparse_macs for s in converted.storage)
    out = achieved(getattr(prepared, "traffic_bytes", None), batch, sparse_macs, p50_ms)
    out["roofline_bytes_fraction"], out["roofline_flops_fraction"] = fractions(
        {**out, "threads": threads}, roof)
    return out


def native_row(subject: Subject, threads: int, batch: int, xs: tuple[Any, ...],
               reference: Any, engines: list[Any]) -> dict[str, Any]:
    """Prepare sparsebench native csr and check it; a timed engine joins ``engines`` only when
    its max relative error is within ``MAX_REL_ERR``."""
    from sparsebench.backends.base import Unsupported
    from sparsebench.backends.kernel_plan import NativeBackend
    from sparsebench.model_io import compare

    name = f"{subject.workload.name} t{threads} b{batch}"
    if subject.converted is None:
        return {"status": "skipped", "reason": subject.convert_error}
    backend = NativeBackend()
    reason = backend.unavailable()
    if reason:
        return {"status": "skipped", "reason": reason}
    try:
        prepared = backend.prepare(subject.converted, threads=threads, batch=batch)
    except Unsupported as exc:
        return {"status": "skipped", "reason": str(exc)}
    out = {"status": "ok", "impl": prepared.impl, "layers": subject.converted.layer_counts}
    try:
        out["max_abs_err"], out["max_rel_err"] = compare(prepared.run(*xs), reference)
    except SparsebenchError as exc:
        log(f"FAILED {name}: sparsebench outputs do not match the dense reference: {exc}")
        return {**out, "status": "failed", "reason": f"outputs do not match: {exc}"}
    if not out["max_rel_err"] <= MAX_REL_ERR:
        log(f"FAILED {name}: sparsebench max relative error {out['max_rel_err']:.3g} > "
            f"{MAX_REL_ERR:g} against the dense reference (not timed)")
        return {**out, "status": "failed",
                "reason": f"max rel err {out['max_rel_err']:.3g} > {MAX_REL_ERR:g}"}
    engines.append(LocalEngine("sparsebench", prepared, xs))
    return out


# ----------------------------------------------------------------------------- report
HEAD = ["model", "threads", "batch", "ORT dense ms", "DeepSparse ms", "sparsebench ms",
        "sparsebench impl (short)", "speedup vs DeepSparse", "rounds' speedup p25-p75",
        "speedup vs ORT", "max rel err"]


def _p50(part: dict[str, Any]) -> float | None:
    return (part.get("latency_ms") or {}).get("p50")


def _ms(part: dict[str, Any]) -> str:
    p50 = _p50(part)
    if p50 is not None:
        return f"{p50:.3f}" if p50 < 10 else f"{p50:.1f}"
    return {"unavailable": "n/a", "failed": "FAILED"}.get(part.get("status", ""), "skipped")


def _ratio(slow: float | None, fast: float | None) -> str:
    return f"{slow / fast:.2f}x" if slow and fast else "n/a"


def round_speedups(slow: dict[str, Any], fast: dict[str, Any]) -> list[float]:
    """Per alternating round, the median of ``slow``'s calls over the median of ``fast``'s: how
    much the speedup moves with the machine's state during one run."""
    import statistics

    return [statistics.median(a) / statistics.median(b)
            for a, b in zip(slow.get("samples_ns") or [], fast.get("samples_ns") or [])
            if a and b]


def _spread(slow: dict[str, Any], fast: dict[str, Any]) -> str:
    import statistics

    ratios = round_speedups(slow, fast)
    if len(ratios) < 2:
        return "n/a"
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{q1:.2f}-{q3:.2f}x"


def _err(sb: dict[str, Any]) -> str:
    err = sb.get("max_rel_err")
    return "n/a" if err is None else f"{err:.1e}" + (" FAIL" if sb["status"] == "failed" else "")


def table_lines(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = ["| " + " | ".join(HEAD) + " |", "|---|" + "---:|" * 5 + "---|" + "---:|" * 4]
    for r in rows:
        sb, ds, ort = r["sparsebench"], r["deepsparse"], r["ort"]
        lines.append("| " + " | ".join([
            labels.get(r["model"], r["model"]), str(r["threads"]), str(r["batch"]), _ms(ort),
            _ms(ds), _ms(sb), short_impl(sb.get("impl")) or "-",
            _ratio(_p50(ds), _p50(sb)), _spread(ds, sb), _ratio(_p50(ort), _p50(sb)),
            _err(sb)]) + " |")
    return lines


def roofline_lines(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """sparsebench's rows under the roofline (empty when it was not probed)."""
    timed = [r for r in rows if r["sparsebench"].get("achieved_gbps") is not None]
    if not timed:
        return []

    def num(v: float | None, pct: bool = False) -> str:
        return "n/a" if v is None else f"{100 * v:.0f}%" if pct else f"{v:.1f}"

    lines = ["| model | threads | batch | GFLOP/s (nonzero) | of GEMM peak | GB/s | of copy "
             "bandwidth |", "|---|" + "---:|" * 6]
    for r in timed:
        sb = r["sparsebench"]
        lines.append(f"| {labels.get(r['model'], r['model'])} | {r['threads']} | {r['batch']} | "
                     f"{num(sb['achieved_gflops'])} | {num(sb['roofline_flops_fraction'], True)}"
                     f" | {num(sb['achieved_gbps'])} | "
                     f"{num(sb['roofline_bytes_fraction'], True)} |")
    return lines


def notes(doc: dict[str, Any]) -> list[str]:
    out = []
    if doc["deepsparse"].get("unavailable"):
        out.append(f"DeepSparse not available: DeepSparse side venv not found / not usable: "
                   f"{doc['deepsparse']['unavailable']}")
    busy = []
    for r in doc["rows"]:
        where = f"{r['model']} t{r['threads']} b{r['batch']}"
        for engine in ENGINES:
            part = r[engine]
            if part.get("status") in ("skipped", "failed"):
                out.append(f"{where}: {engine} {part['status']}: {part.get('reason')}")
            if part.get("warning"):
                out.append(f"{where}: {engine}: {part['warning']}")
            err = part.get("max_rel_err")
            if engine != "sparsebench" and err is not None and err > OTHERS_REL_ERR:
                out.append(f"{where}: {engine}'s output is {err:.1e} (relative) from the dense "
                           "reference")
        if _busy(r.get("load_before")) or _busy(r.get("load_after")):
            busy.append(max(r["load_before"][0], r["load_after"][0]))
    cores = os.cpu_count()
    if busy:
        out.append(f"1-minute load average above the {cores} cores around {len(busy)} of "
                   f"{len(doc['rows'])} rows (up to {max(busy):g}): those timings are disturbed")
    for when in ("before", "after"):
        if _busy(doc["load"][when]):
            out.append(f"load average {when} the run: {doc['load'][when]} (above the {cores} "
                       "cores: the machine was busy)")
    return out


def markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    versions = doc["versions"]
    ds = doc["deepsparse"].get("versions") or {}
    lines = [
        "# sparsebench native vs DeepSparse vs ONNX Runtime", "",
        f"`{doc['command']}`", "",
        f"Machine: {doc['machine'].get('cpu')}, {doc['machine'].get('logical_cores')} logical "
        f"cores; load average {doc['load']['before']} before, {doc['load']['after']} after. "
        f"sparsebench {versions.get('sparsebench')} ({doc.get('commit')}), onnxruntime "
        f"{versions.get('onnxruntime')}, torch {versions.get('torch')}, DeepSparse "
        f"{ds.get('deepsparse', 'n/a')}.", "",
        f"Medians of per-call latencies over {s['rounds']} alternating rounds "
        f"(calls per round: {s['calls'] or 'auto'}); speedups are ratios of those medians; max "
        f"rel err is sparsebench's output against the dense torch reference (limit "
        f"{MAX_REL_ERR:g}); the rounds' speedup p25-p75 is the spread of the speedup computed "
        f"round by round (median over median), the machine's drift during the run.", "",
        *table_lines(doc["rows"], doc["labels"]), ""]
    roof = roofline_lines(doc["rows"], doc["labels"])
    if roof:
        r = doc["roofline"]
        peaks = ", ".join(f"{v:.0f} GFLOP/s at {t} thread{'s' if t != '1' else ''}"
                          for t, v in r["gemm_gflops"].items())
        lines += [f"sparsebench under the roofline (the median call; torch.mm {r['gemm_n']}^2: "
                  f"{peaks}; np.copyto {r['copy_mb']} MB: {r['copy_gbps']:.1f} GB/s):", "",
                  *roof, ""]
    extra = notes(doc)
    if extra:
        lines += ["Notes:", "", *[f"- {n}" for n in extra], ""]
    return "\n".join(lines)


def write_outputs(doc: dict[str, Any], args: argparse.Namespace) -> None:
    from sparsebench.outputs import atomic_write_text

    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, markdown(doc))


# ----------------------------------------------------------------------------- command line
class Parser(argparse.ArgumentParser):
    """One-line errors, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0],
               epilog="Commands, method and the table: docs/deepsparse.md.")
    p.add_argument("--models", default="all", help="all (default), families "
                   f"({', '.join(FAMILIES)}) or family@percent, comma-separated")
    p.add_argument("--threads", type=positive_ints, default=[1, 2], help="default 1,2")
    p.add_argument("--batch", type=positive_ints, default=[1, 8], help="default 1,8")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 10; "
                   "--quick 2)")
    p.add_argument("--calls", type=int, default=None, help="timed calls per engine per round "
                   "(default: about --round-seconds of the slowest engine, 3 to 1000; --quick 3)")
    p.add_argument("--round-seconds", type=float, default=0.3, help="target length of the "
                   "slowest engine's round when --calls is not given (default 0.3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per engine before "
                   "the rounds (default 5; --quick 1)")
    p.add_argument("--gap", type=float, default=None, help="pause in seconds before each "
                   "engine's round, so the previous engine's threads go quiet (default 0.02; "
                   "--quick 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    p.add_argument("--venv", default=DEFAULT_VENV, help="the DeepSparse side venv (default "
                   f"$DEEPSPARSE_VENV or {DEFAULT_VENV})")
    p.add_argument("--ds-timeout", type=float, default=1800.0, help="seconds allowed for a "
                   "DeepSparse compile or round (default 1800)")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="cache of the built ONNX "
                   f"files (default {DEFAULT_WORKDIR}; never inside the checkout)")
    p.add_argument("--quick", action="store_true", help="tiny models (BERT 1 layer, hidden 64, "
                   "seq 16; small CIFAR nets; ffn 64-256-64; resnet50 stays full size), "
                   "2 rounds of 3 calls: a smoke test")
    p.add_argument("--bert-layers", type=int, help="BERT encoder layers (default 12; --quick 1)")
    p.add_argument("--bert-hidden", type=int, help="BERT hidden size, a multiple of 64 (heads "
                   "of 64; default 768; --quick 64)")
    p.add_argument("--bert-seq", type=int, help="sequence length (default 128; --quick 16)")
    p.add_argument("--markdown", metavar="OUT", help="write the table as Markdown")
    p.add_argument("--json", metavar="OUT", help="write every sample, machine, load averages "
                   "and versions as JSON")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    return p


def check_args(args: argparse.Namespace) -> tuple[list[Workload], Sizes, Plan, Path]:
    """Every option checked before any work (SparsebenchError: one line, exit 2)."""
    from sparsebench.outputs import check_output_file

    workloads = select_workloads(args.models)
    for flag, value, low in (("--rounds", args.rounds, 1), ("--calls", args.calls, 1),
                             ("--warmup", args.warmup, 0), ("--bert-layers", args.bert_layers, 1),
                             ("--bert-hidden", args.bert_hidden, 64),
                             ("--bert-seq", args.bert_seq, 1)):
        if value is not None and value < low:
            raise SparsebenchError(f"{flag} must be at least {low}, got {value}")
    if args.bert_hidden is not None and args.bert_hidden % 64:
        raise SparsebenchError(f"--bert-hidden must be a multiple of 64 (heads of 64), got "
                               f"{args.bert_hidden}")
    for flag, value in (("--round-seconds", args.round_seconds), ("--gap", args.gap),
                        ("--ds-timeout", args.ds_timeout)):
        if value is None:
            continue
        low = 0.0 if flag != "--ds-timeout" else 1e-9
        if not (value >= low and math.isfinite(value)):
            raise SparsebenchError(f"{flag} must be a number of seconds "
                                   f"{'>= 0' if low == 0 else '> 0'}, got {value}")
    q = args.quick
    sizes = Sizes(bert_layers=args.bert_layers or (1 if q else 12),
                  bert_hidden=args.bert_hidden or (64 if q else 768),
                  bert_seq=args.bert_seq or (16 if q else 128),
                  bert_vocab=1000 if q else 30522, quick=q)
    plan = Plan(threads=args.threads, batches=args.batch,
                rounds=args.rounds or (2 if q else 10), calls=args.calls or (3 if q else None),
                warmup=(1 if q else 5) if args.warmup is None else args.warmup,
                round_seconds=args.round_seconds,
                gap=(0.0 if q else 0.02) if args.gap is None else args.gap, seed=args.seed,
                ds_timeout=args.ds_timeout)
    workdir = Path(args.workdir).expanduser().resolve()
    if workdir == ROOT or ROOT in workdir.parents:
        raise SparsebenchError(f"--workdir {workdir} is inside the checkout {ROOT}: choose a "
                               "folder outside it (the ONNX files are large)")
    if workdir.exists() and not workdir.is_dir():
        raise SparsebenchError(f"--workdir {workdir} is a file, not a folder")
    if args.markdown and args.json and Path(args.markdown).resolve() == Path(args.json).resolve():
        raise SparsebenchError("--markdown and --json name the same file")
    check_output_file(args.markdown, args.force, "markdown")
    check_output_file(args.json, args.force, "json")
    return workloads, sizes, plan, workdir


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    workloads, sizes, plan, workdir = check_args(args)
    from sparsebench.provenance import cpu_info, git_commit, library_versions
    from sparsebench.ui import warn_threads

    warn_threads(plan.threads)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SparsebenchError(f"--workdir {workdir}: {exc.strerror}")
    venv = Path(args.venv).expanduser()
    ds_versions, ds_reason = deepsparse_status(venv, workdir)
    if ds_reason:
        log(f"DeepSparse side venv not found / not usable: {ds_reason} (timing the other "
            "columns)")
    start_load = loadavg()
    if _busy(start_load):
        log(f"warning: load average {start_load} is above the {os.cpu_count()} cores: the "
            "machine is busy, timings will be disturbed")
    from sparsebench import native
    from sparsebench.measure.roofline import probe

    roof = None
    if native.available() is None:
        log("probing the roofline (GEMM peak, copy bandwidth)")
        quick = {"copy_mb": 16, "gemm_n": 256}  # fast, and meaningless: a smoke test
        roof = probe(plan.threads, **(quick if sizes.quick else {}))
    versions = library_versions()
    try:
        from importlib.metadata import version

        versions["transformers"] = version("transformers")
    except Exception:  # noqa: BLE001 - only recorded
        versions["transformers"] = None
    doc: dict[str, Any] = {
        "schema": "sparsebench-deepsparse-compare/1",
        "command": " ".join(["python", "benchmarks/deepsparse_compare.py", *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": cpu_info(), "versions": versions, "commit": git_commit(ROOT),
        "deepsparse": {"venv": str(venv), "versions": ds_versions, "unavailable": ds_reason},
        "settings": {"threads": plan.threads, "batch": plan.batches, "rounds": plan.rounds,
                     "calls": plan.calls, "warmup": plan.warmup, "gap_s": plan.gap,
                     "round_seconds": plan.round_seconds, "seed": plan.seed,
                     "max_rel_err": MAX_REL_ERR, "sizes": sizes.__dict__},
        "load": {"before": start_load, "after": None}, "roofline": roof,
        "labels": {w.name: w.label(sizes) for w in workloads}, "rows": []}
    cells = len(workloads) * len(plan.threads) * len(plan.batches)
    done = 0
    for workload in workloads:
        subject = load_subject(workload, build(workload, sizes, workdir))
        for threads in plan.threads:
            for batch in plan.batches:
                done += 1
                row = run_cell(subject, threads, batch, plan, None if ds_reason else venv,
                               workdir, roof)
                doc["rows"].append(row)
                doc["load"]["after"] = loadavg()
                write_outputs(doc, args)
                log(f"[{done}/{cells}] {workload.name} t{threads} b{batch}: " + ", ".join(
                    f"{e} {_ms(row[e])}" for e in ENGINES) +
                    f"; max rel err {_err(row['sparsebench'])}")
        del subject
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["load"]["after"] = loadavg()
    if _busy(doc["load"]["after"]):
        log(f"warning: load average {doc['load']['after']} after the run is above the "
            f"{os.cpu_count()} cores: timings were disturbed")
    write_outputs(doc, args)
    print("\n".join(table_lines(doc["rows"], doc["labels"])))
    for line in notes(doc):
        print(f"- {line}")
    failed = [r for r in doc["rows"] if r["sparsebench"]["status"] == "failed"]
    if failed:
        log(f"{len(failed)} row(s) FAILED the error check (max rel err <= {MAX_REL_ERR:g})")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        return run(args, argv)
    except SparsebenchError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (the rows written so far are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
