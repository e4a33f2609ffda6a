"""The issue-12 list of models nobody on this project wrote, measured before and after.

Builds every model into a temporary folder (nothing is downloaded, nothing is committed), runs
``sparsebench measure`` on each with two checkouts (``--before`` and ``--after``, each a folder
put first on PYTHONPATH) and prints the Markdown table of docs/real-models.md: ok rows / total
rows, the skipped reasons, the exit code and the largest relative error of the ok rows.

    python benchmarks/real_models.py --before /work/wt-before --after . [--wheel-sample N]

Latencies are measured with a minimal budget and are not reported: the table is about rows
working and their errors.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

BUDGET = ["--min-calls", "2", "--min-time", "0", "--warmup", "0", "--timeout", "120"]
FORMATS = ["--formats", "dense,structured,csr"]
WHEEL_FLAGS = ["--formats", "dense,csr", "--backends", "onnxruntime,torch", "--min-calls", "2",
               "--min-time", "0", "--warmup", "0", "--timeout", "60"]
LIGHT = ("resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet",
         "vgg19", "bvlc_alexnet", "zfnet512")


# ---------------------------------------------------------------- ONNX zoo (light) models
def fold_generated(model: Any, seed: int = 0) -> Any:
    """The light zoo models make every weight with ``ConstantOfShape`` (all 0.02): replace each by
    an initializer of that shape holding seeded random values (He-scaled for Conv/Gemm weights,
    BatchNormalization statistics near 1 / 0), so magnitude pruning means something."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, list[Any]] = {}
    for node in g.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    keep, made = [], []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(x) for x in numpy_helper.to_array(inits[node.input[0]]))
        out = node.output[0]
        arr = rng.uniform(-0.1, 0.1, shape)
        for user in uses.get(out, []):
            slot = list(user.input).index(out)
            if user.op_type in ("Conv", "Gemm", "MatMul") and slot == 1:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
                arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            elif user.op_type == "BatchNormalization" and slot in (1, 4):
                arr = rng.uniform(0.8, 1.2, shape)
        made.append(numpy_helper.from_array(arr.astype(np.float32), out))
    del g.node[:]
    g.node.extend(keep)
    used = {name for node in keep for name in node.input}
    kept = [i for i in g.initializer if i.name in used] + made
    del g.initializer[:]
    g.initializer.extend(kept)
    names = {i.name for i in kept}
    inputs = [v for v in g.input if v.name in used and v.name not in names]
    del g.input[:]
    g.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    return model


def prune_onnx(model: Any, sparsity: float = 0.9, dense_first_conv: bool = False) -> Any:
    """Magnitude-prune every initializer weight (2-D or more) of Conv/Gemm/MatMul in place
    (``dense_first_conv``: all but the first Conv, e.g. a ResNet's 7x7 stem)."""
    import numpy as np
    from onnx import numpy_helper

    index = {i.name: k for k, i in enumerate(model.graph.initializer)}
    skip = dense_first_conv
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            k = index.get(node.input[1])
            if k is None:
                continue
            if skip and node.op_type == "Conv":
                skip = False
                continue
            w = numpy_helper.to_array(model.graph.initializer[k]).copy()
            if w.ndim < 2 or not np.issubdtype(w.dtype, np.floating):
                continue
            w[np.abs(w) <= np.quantile(np.abs(w), sparsity)] = 0
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(w, node.input[1]))
    return model


def build_zoo(out: Path) -> list[tuple[str, list[str]]]:
    import onnx

    data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    cases = []
    for name in LIGHT:
        model = prune_onnx(fold_generated(onnx.load(str(data / f"light_{name}.onnx"))))
        path = out / f"zoo_{name}_90.onnx"
        onnx.save(model, str(path))
        cases.append((f"zoo {name} (folded, 90%)", [str(path)]))
    return cases


# ---------------------------------------------------------------- transformers
def _hf_models() -> dict[str, Any]:
    from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel,
                              GPT2Config, GPT2Model)

    small = dict(vocab_size=1000)
    return {
        "bert": BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, **small)),
        "distilbert": DistilBertModel(DistilBertConfig(dim=64, n_layers=2, n_heads=4,
                                                       hidden_dim=128, **small)),
        "gpt2": GPT2Model(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **small)),
    }


def _wrap(model: Any) -> Any:
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids,
                              attention_mask=attention_mask).last_hidden_state

    return Wrapper(model).eval()


def build_transformers(out: Path) -> list[tuple[str, list[str]]]:
    import torch

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.int64)
    ins = ["--input", "input_ids:Bx16:int64:0-1000", "--input", "attention_mask:Bx16:int64:1-2"]
    cases = []
    for name, model in _hf_models().items():
        for dynamo in (False, True):
            path = out / f"{name}_{'dynamo' if dynamo else 'ts'}.onnx"
            kw: dict[str, Any] = {"dynamic_axes": {"input_ids": {0: "b"}, "attention_mask": {0: "b"}}}
            if dynamo:  # opset 18: at 17 the exporter's down-conversion leaves Split with
                kw = {}     # num_outputs, a file neither onnx's checker nor onnxruntime loads
            torch.onnx.export(_wrap(model), (ids, mask), str(path),
                              input_names=["input_ids", "attention_mask"], dynamo=dynamo,
                              opset_version=18 if dynamo else 17, **kw)
            cases.append((f"{name} ONNX ({'dynamo' if dynamo else 'TorchScript'} exporter)",
                          [str(path), *ins]))
    gpt2 = _hf_models()["gpt2"].eval()
    path = out / "gpt2.pt"
    torch.save(gpt2, str(path))
    cases.append(("gpt2 pickled (Conv1D), --trust",
                  [str(path), "--trust", "--input", "input_ids:Bx16:int64:0-1000"]))
    return cases


# ---------------------------------------------------------------- int8 ONNX
def build_int8(out: Path) -> list[tuple[str, list[str]]]:
    import numpy as np
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                              torch.nn.Linear(300, 10)).eval()
    f32 = out / "mlp_f32.onnx"
    torch.onnx.export(mlp, (torch.randn(1, 1, 28, 28),), str(f32), input_names=["input"],
                      dynamo=False, opset_version=17)
    quantize_dynamic(str(f32), str(out / "mlp_int8_dynamic.onnx"), weight_type=QuantType.QInt8)
    bert = out / "bert_ts.onnx"
    quantize_dynamic(str(bert), str(out / "bert_int8_dynamic.onnx"), weight_type=QuantType.QInt8)
    cnn = _cnn().eval()
    c32 = out / "cnn_f32.onnx"
    torch.onnx.export(cnn, (torch.randn(1, 3, 32, 32),), str(c32), input_names=["input"],
                      dynamo=False, opset_version=17)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.data = iter([{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
                              for _ in range(4)])

        def get_next(self) -> Any:
            return next(self.data, None)

    quantize_static(str(c32), str(out / "cnn_int8_qdq.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ)
    ins = ["--input", "input_ids:Bx16:int64:0-1000", "--input", "attention_mask:Bx16:int64:1-2"]
    return [("MLP int8 (quantize_dynamic)", [str(out / "mlp_int8_dynamic.onnx")]),
            ("bert int8 (quantize_dynamic)", [str(out / "bert_int8_dynamic.onnx"), *ins]),
            ("CNN int8 static QDQ", [str(out / "cnn_int8_qdq.onnx")])]


# ---------------------------------------------------------------- torch files
def _cnn() -> Any:
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))


ARCH_MODULE = '''
import torch.nn as nn

def cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10))
'''


def build_torch(out: Path) -> list[tuple[str, list[str]]]:
    import torch
    import torch.nn.utils.prune as prune

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    cnn = _cnn().eval()
    torch.jit.script(cnn).save(str(out / "cnn_script.pt"))
    torch.jit.trace(cnn, x).save(str(out / "cnn_trace.pt"))
    torch.export.save(torch.export.export(cnn, (x,)), str(out / "cnn_export.pt2"))
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    torch.save(mha, str(out / "mha.pt"))
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    torch.save(enc, str(out / "encoder.pt"))
    pruned = _cnn().eval()
    for m in pruned.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(m, "weight", amount=0.9)
    torch.save(pruned, str(out / "cnn_pruned_hooks.pt"))
    torch.save(pruned.state_dict(), str(out / "cnn_pruned_state.pt"))
    (out / "real_models_arch.py").write_text(ARCH_MODULE)
    seq = ["--input", "query:Bx16x64:float32", "--input", "key:Bx16x64:float32",
           "--input", "value:Bx16x64:float32"]
    return [
        ("TorchScript (torch.jit.script) CNN", [str(out / "cnn_script.pt"), "--input-shape", "3,32,32"]),
        ("TorchScript (torch.jit.trace) CNN", [str(out / "cnn_trace.pt"), "--input-shape", "3,32,32"]),
        ("torch.export .pt2 CNN", [str(out / "cnn_export.pt2")]),
        ("nn.MultiheadAttention pickled, --trust", [str(out / "mha.pt"), "--trust", *seq]),
        ("nn.TransformerEncoder pickled, --trust",
         [str(out / "encoder.pt"), "--trust", "--input-shape", "16,64"]),
        ("CNN pruned with torch.nn.utils.prune (hooks), --trust",
         [str(out / "cnn_pruned_hooks.pt"), "--trust", "--input-shape", "3,32,32"]),
        ("its state_dict (weight_orig + weight_mask), --arch",
         [str(out / "cnn_pruned_state.pt"), "--arch", "real_models_arch:cnn",
          "--input-shape", "3,32,32"]),
    ]


# ---------------------------------------------------------------- running
def measure(checkout: str, args: list[str], workdir: Path, flags: list[str]) -> dict[str, Any]:
    """One ``sparsebench measure`` run with ``checkout`` first on PYTHONPATH: rows and exit."""
    out = workdir / f"run{os.getpid()}_{abs(hash((checkout, tuple(args))))}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{os.path.abspath(checkout)}{os.pathsep}{workdir}"}
    if "wt-before" in checkout or not _has_input_flag(checkout):
        args = _without_input(args)
    proc = subprocess.run([sys.executable, "-m", "sparsebench", "measure", *args, *flags,
                           "--json", str(out)], env=env, capture_output=True, text=True,
                          cwd=workdir)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    return {"rc": proc.returncode, "rows": rows, "stderr": last}


_INPUT_FLAG: dict[str, bool] = {}


def _has_input_flag(checkout: str) -> bool:
    if checkout not in _INPUT_FLAG:
        text = (Path(checkout) / "sparsebench" / "cli.py").read_text()
        _INPUT_FLAG[checkout] = '"--input"' in text
    return _INPUT_FLAG[checkout]


def _without_input(args: list[str]) -> list[str]:
    """The checkout before issue 12 has no --input: drop those pairs (it uses its defaults)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--input":
            skip = True
            continue
        out.append(a)
    return out


def _reason(row: dict[str, Any]) -> str:
    text = str(row.get("reason") or row.get("status"))
    text = re.sub(r"/(tmp|work|root)/\S+", "<path>", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:90]


def summary(result: dict[str, Any]) -> tuple[str, str, str, str]:
    rows = result["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    errs = [r["max_rel_err"] for r in ok if r.get("max_rel_err") is not None]
    reasons = Counter(_reason(r) for r in rows if r["status"] != "ok")
    text = "; ".join(f"{n}x {why}" for why, n in reasons.most_common(3))
    if not rows and result["stderr"]:
        text = result["stderr"][:120]
    err = f"{max(errs):.1e}" if errs else "-"
    return f"{len(ok)}/{len(rows)}", text.replace("|", "/"), str(result["rc"]), err


def wheel_files(sample: int) -> list[str]:
    import onnx
    import onnxruntime

    files = []
    for pkg in (onnx, onnxruntime):
        files += sorted(glob.glob(str(Path(pkg.__file__).parent / "**" / "*.onnx"), recursive=True))
    if sample and sample < len(files):
        step = len(files) / sample
        files = [files[int(k * step)] for k in range(sample)]
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout before issue 12")
    parser.add_argument("--after", required=True, help="checkout after issue 12")
    parser.add_argument("--wheel-sample", type=int, default=0,
                        help="measure only N of the wheels' ONNX files, evenly spread (0: all)")
    parser.add_argument("--only", default="", help="regex on the case names")
    parser.add_argument("--no-wheels", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="real_models_") as tmp:
        work = Path(tmp)
        cases = (build_zoo(work) + build_transformers(work) + build_int8(work)
                 + build_torch(work))
        cases = [c for c in cases if re.search(opts.only, c[0])]
        print("| model | before ok/total | before skipped (reasons) | before exit | before max rel err "
              "| after ok/total | after skipped (reasons) | after exit | after max rel err |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, args in cases:
            cells = []
            for checkout in (opts.before, opts.after):
                cells += summary(measure(checkout, args, work, [*FORMATS, *BUDGET]))
            b = cells[:4]
            a = cells[4:]
            print(f"| {name} | {b[0]} | {b[1]} | {b[2]} | {b[3]} | {a[0]} | {a[1]} | {a[2]} | {a[3]} |",
                  flush=True)
        if not opts.no_wheels:
            files = wheel_files(opts.wheel_sample)
            good = {opts.before: 0, opts.after: 0}
            for path in files:
                for checkout in good:
                    res = measure(checkout, [path], work, WHEEL_FLAGS)
                    good[checkout] += any(r["status"] == "ok" for r in res["rows"])
            print(f"\nONNX files in the onnx and onnxruntime wheels ({len(files)} measured): "
                  f"at least one ok row before {good[opts.before]}, after {good[opts.after]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
