"""``sparsebench sweep``: latency versus sparsity, and where sparse beats dense.

For a model file (anything ``measure`` loads: a checkpoint, a state_dict with ``--arch``, a
pickled module, ONNX) or an architecture (randomly initialised; ``torchvision:NAME`` and
``timm:NAME`` where those import), each sparsity of the list is produced one-shot by
``pruning.oneshot`` with the papers' target rule (``--target`` prune-s: the smallest magnitudes,
the default; prune-l: the largest; prune-r: random) at weight or filter granularity, on every
Conv2d/Linear except the first convolution and the last layer (the head). Each pruned model is
written in the input's kind (ONNX in: the original ModelProto with the pruned weight
initializers; a checkpoint or architecture: a checkpoint; a state_dict: a state_dict; a pickled
module: a pickled module), and all of them are measured in one run of the measure harness (a
fresh worker per execution). Outputs: a terminal table, the results JSON (``--json``; the usual
schema plus a ``sweep`` section), Markdown (``--markdown``), a PNG of latency and speedup over
ONNX Runtime dense versus sparsity (``--plot``), and the crossover per execution: the lowest
sparsity from which it is faster than ONNX Runtime dense at every higher sparsity measured.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from sparsebench.catalog import DEFAULT_SPARSITIES
from sparsebench.errors import SparsebenchError
from sparsebench.model_io import parse_input_flags

if TYPE_CHECKING:
    import torch
    from torch import nn

BASELINE = ("dense", "onnxruntime")


# ----------------------------------------------------------------------------- pruning


def pruned_layers(model: nn.Module) -> list[str]:
    """Every Conv2d/Linear except the first convolution and the last layer (the head)."""
    from torch import nn

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first_conv = next((n for n, m in layers if isinstance(m, nn.Conv2d)), None)
    return [n for n, _ in layers[:-1] if n != first_conv]


def magnitude_prune(model: nn.Module, sparsity: float,
                    layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Zero the ``round(sparsity * numel)`` smallest-magnitude weights of each layer in place
    (already-zero weights count; prune-s at weight granularity); returns the keep-masks by
    parameter name."""
    from sparsebench.pruning.oneshot import one_shot_prune

    return one_shot_prune(model, sparsity, pruned_layers(model) if layers is None else layers)


def check_sweep_args(args: argparse.Namespace) -> None:
    """The sweep's argument errors that need no torch (one line each)."""
    from sparsebench.catalog import check_arch, check_prune_options

    if not (args.arch or args.model):
        raise SparsebenchError("give a model file or --arch NAME")
    if args.arch:
        check_arch(args.arch)
    check_prune_options(getattr(args, "target", "prune-s"), getattr(args, "granularity", "weight"))
    _sparsities(args.sparsities)


def _sparsities(text: str) -> list[float]:
    from sparsebench.registry import split_list

    try:
        values = split_list(text, float)
    except ValueError:
        raise SparsebenchError(f"--sparsities: expected percentages like {DEFAULT_SPARSITIES}, "
                               f"got {text!r}")
    if not values or any(not 0 <= v < 100 for v in values):
        raise SparsebenchError(f"--sparsities are percentages in [0, 100), got {text!r}")
    return sorted(set(values))


def _label(p: float) -> str:
    return f"{p:g}".replace(".", "p")


@dataclass
class _Source:
    """What the sweep prunes: a fresh copy each time, and how a pruned copy is written."""

    base: str
    fresh: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    suffix: str
    write: Callable[[nn.Module, dict[str, Any], float, Path], None]
    trust: bool = False


def _input_shape(args: argparse.Namespace) -> tuple[int, ...] | None:
    from sparsebench.loading import parse_input_shape

    return parse_input_shape(args.input_shape) if args.input_shape else None


def _checkpoint_writer(meta: dict[str, Any], args: argparse.Namespace
                       ) -> Callable[[nn.Module, dict[str, Any], float, Path], None]:
    from sparsebench.checkpoint import save_checkpoint

    def write(model: nn.Module, masks: dict[str, Any], p: float, path: Path) -> None:
        save_checkpoint({**meta, "input_shape": list(model.input_shape),
                         "state_dict": model.state_dict(), "masks": masks, "unit_masks": {},
                         "method": getattr(args, "target", "prune-s"),
                         "config": {"sparsity": p / 100.0, "pruned_layers": pruned_layers(model),
                                    "granularity": getattr(args, "granularity", "weight"),
                                    "one_shot": True, "seed": args.seed}}, path)
    return write


def _torch_writer(what: Callable[[nn.Module], Any]
                  ) -> Callable[[nn.Module, dict[str, Any], float, Path], None]:
    import torch

    from sparsebench.outputs import atomic_write_bytes

    def write(model: nn.Module, masks: dict[str, Any], p: float, path: Path) -> None:
        atomic_write_bytes(path, lambda fh: torch.save(what(model), fh))
    return write


def _source(args: argparse.Namespace) -> _Source:
    import copy

    import torch

    if not args.model:
        from sparsebench.archs import create_model, default_input
        from sparsebench.catalog import zoo_split

        cin, size = default_input(args.arch)
        kwargs: dict[str, Any] = {"in_channels": args.in_channels or cin,
                                  "input_size": args.input_size or size}
        if not zoo_split(args.arch):
            kwargs.update(num_classes=10, dropout=0.0)

        def build() -> nn.Module:
            torch.manual_seed(args.seed)
            return create_model(args.arch, **kwargs).eval()
        shape = tuple(build().input_shape)
        return _Source(args.arch.replace(":", "-"), build, shape, ".pt",
                       _checkpoint_writer({"arch": args.arch, "arch_kwargs": kwargs}, args))
    from sparsebench.loading import load_model

    loaded = load_model(args.model, arch=args.arch, input_shape=_input_shape(args),
                        trust=args.trust, inputs=parse_input_flags(getattr(args, "input", None)))
    if loaded.module is None:
        raise SparsebenchError(f"{args.model}: cannot be pruned: {loaded.onnx_error}")
    if not loaded.swappable:
        raise SparsebenchError(f"{args.model}: a {loaded.kind} model cannot be pruned here (its "
                               "layers are not torch Conv2d/Linear modules); give the module, "
                               "its state_dict or its ONNX export")

    def fresh() -> nn.Module:
        module = copy.deepcopy(loaded.module).eval()
        module.input_shape = tuple(loaded.input_shape)
        return module
    base, shape = Path(args.model).stem, tuple(loaded.input_shape)
    if loaded.kind == "onnx":
        return _Source(base, fresh, shape, ".onnx", _onnx_writer(args.model))
    if loaded.checkpoint:
        meta = {k: loaded.checkpoint[k] for k in ("arch", "arch_kwargs")}
        return _Source(base, fresh, shape, ".pt", _checkpoint_writer(meta, args))
    if loaded.kind == "state-dict":
        return _Source(base, fresh, shape, ".pt", _torch_writer(lambda m: m.state_dict()))
    if loaded.kind == "pickled-module":  # pickled whole again (we wrote it: trust is safe)
        return _Source(base, fresh, shape, ".pt", _torch_writer(lambda m: m), trust=True)
    raise SparsebenchError(f"{args.model}: a {loaded.kind} model cannot be written back pruned; "
                           "give the module, its state_dict or its ONNX export")


def _onnx_writer(path: str) -> Callable[[nn.Module, dict[str, Any], float, Path], None]:
    """Writes the original ModelProto with each pruned layer's weight initializer masked (the
    initializer named by the importer's ``weight_sources``, transposed back where flagged)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from sparsebench.outputs import atomic_write_bytes

    def write(model: nn.Module, masks: dict[str, Any], p: float, out: Path) -> None:
        sources = getattr(model, "weight_sources", None)
        if sources is None:
            raise SparsebenchError("the ONNX importer does not record where each layer's weight "
                                   "comes from (weight_sources): cannot write a pruned ONNX")
        proto = onnx.load(path)
        inits = {i.name: i for i in proto.graph.initializer}
        for param, keep in masks.items():
            layer = param.rpartition(".")[0]
            name, transposed = sources.get(layer, (None, False))
            if name not in inits:
                raise SparsebenchError(f"{path}: layer {layer!r} has no weight initializer in "
                                       "the ONNX file; cannot write it pruned")
            weight = numpy_helper.to_array(inits[name])
            k = keep.detach().cpu().numpy()
            k = (k.T if transposed else k).reshape(weight.shape)
            inits[name].CopyFrom(numpy_helper.from_array(
                np.where(k, weight, np.zeros((), weight.dtype)).astype(weight.dtype), name))
        atomic_write_bytes(out, lambda fh: fh.write(proto.SerializeToString()))
    return write


def make_models(args: argparse.Namespace, sparsities: list[float],
                folder: Path) -> tuple[str, dict[str, float], bool]:
    """Write one pruned model per sparsity into ``folder`` (see the module docstring); returns
    (base name, {path: sparsity %}, whether the files need --trust to load)."""
    from sparsebench.pruning.oneshot import chains_of, one_shot_prune

    target = getattr(args, "target", "prune-s")
    granularity = getattr(args, "granularity", "weight")
    source = _source(args)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, float] = {}
    chains = None
    for p in sparsities:
        model = source.fresh()
        layers = pruned_layers(model)
        if not layers:
            raise SparsebenchError(f"{source.base} has no layer to prune: the sweep prunes every "
                                   "Conv2d/Linear but the first convolution and the last layer")
        if granularity == "filter" and chains is None:
            chains = chains_of(model, source.input_shape)
        masks = one_shot_prune(model, p / 100.0, layers, target=target,
                               granularity=granularity, seed=args.seed, chains=chains)
        path = folder / f"{source.base}-s{_label(p)}{source.suffix}"
        source.write(model, masks, p, path)
        paths[str(path)] = p
    return source.base, paths, source.trust


# ----------------------------------------------------------------------------- analysis


def _p50(row: dict[str, Any] | None) -> float | None:
    if not row or row.get("status") != "ok":
        return None
    return (row.get("latency_ms") or {}).get("p50")


def series(doc: dict[str, Any]) -> dict[tuple[str, str, int, int], dict[float, dict[str, Any]]]:
    """{(format, backend, batch, threads): {sparsity %: row}} over the sweep's models."""
    sp = doc["sweep"]["sparsity_of"]
    out: dict[tuple[str, str, int, int], dict[float, dict[str, Any]]] = {}
    for r in doc["rows"]:
        if r["model"] in sp:
            key = (r["format"], r["backend"], r["batch"], r["threads"])
            out.setdefault(key, {})[sp[r["model"]]] = r
    return out


def speedups(doc: dict[str, Any]) -> dict[tuple[str, str, int, int], dict[float, float]]:
    """p50 of ONNX Runtime dense at the same sparsity, batch and threads / p50 of each row
    (rows with a noise flag, or whose baseline has one, are left out)."""
    s = series(doc)
    out: dict[tuple[str, str, int, int], dict[float, float]] = {}
    for key, rows in s.items():
        base = s.get((*BASELINE, key[2], key[3]), {})
        for p, row in rows.items():
            b, mine = _p50(base.get(p)), _p50(row)
            if b and mine and not row.get("noise") and not (base.get(p) or {}).get("noise"):
                out.setdefault(key, {})[p] = b / mine
    return out


def crossovers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per execution: the lowest sparsity from which it beats ONNX Runtime dense at every
    higher sparsity measured (None if it never does), and the first sparsity it beats it."""
    out = []
    for key, sp in sorted(speedups(doc).items()):
        if key[:2] == BASELINE:
            continue
        points = sorted(sp)
        first = next((p for p in points if sp[p] > 1.0), None)
        stays = None
        for p in reversed(points):
            if sp[p] <= 1.0:
                break
            stays = p
        out.append({"format": key[0], "backend": key[1], "batch": key[2], "threads": key[3],
                    "crossover": stays, "first_faster": first,
                    "max_speedup": max(sp.values()) if sp else None})
    return out


# ----------------------------------------------------------------------------- reports


def _fmt(v: float | None, f: str = "{:.3f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)


def tables(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, lines) tables: p50 latency, speedup vs ORT dense, crossovers, roofline."""
    from sparsebench.measure.roofline import fractions

    s, sp = series(doc), speedups(doc)
    points = sorted({p for rows in s.values() for p in rows})
    head = ["execution", "impl", "batch", "threads"] + [f"{_label(p)}%" for p in points]
    lat, spd = [], []
    for key in sorted(s, key=lambda k: (k[2], k[3], k[0] != "dense", k[1], k[0])):
        rows = s[key]
        impl = next((r.get("impl") for r in rows.values() if r.get("impl")), "-")
        name = f"{key[0]}/{key[1]}"
        cells = [name, impl, str(key[2]), str(key[3])]
        lat.append(cells + [_fmt(_p50(rows.get(p))) for p in points])
        spd.append(cells + [_fmt(sp.get(key, {}).get(p), "{:.2f}x") for p in points])
    cross = [[f"{c['format']}/{c['backend']}", str(c["batch"]), str(c["threads"]),
              "never" if c["crossover"] is None else f"{_label(c['crossover'])}%",
              "-" if c["first_faster"] is None else f"{_label(c['first_faster'])}%",
              _fmt(c["max_speedup"], "{:.2f}x")] for c in crossovers(doc)]
    roof = doc.get("roofline")
    rl = []
    for key, rows in sorted(s.items()):
        for p, r in sorted(rows.items()):
            if r.get("achieved_gbps") is None:
                continue
            fb, fg = fractions(r, roof)
            rl.append([f"{key[0]}/{key[1]}", f"{_label(p)}%", str(key[2]), str(key[3]),
                       _fmt(_p50(r)), _fmt(r["achieved_gbps"], "{:.1f}"),
                       _fmt(fb, "{:.0%}"), _fmt(r.get("achieved_gflops"), "{:.1f}"),
                       _fmt(fg, "{:.0%}")])
    return [
        ("p50 latency (ms) by sparsity", head, lat),
        ("speedup over ONNX Runtime dense (same sparsity, batch, threads)", head, spd),
        ("crossover: lowest sparsity from which it beats ONNX Runtime dense",
         ["execution", "batch", "threads", "crossover", "first faster", "best speedup"], cross),
        ("roofline (GB/s: the native plan's bytes, else weights + input/output)" + (
            f" (copy {roof['copy_gbps']:.1f} GB/s; dense GEMM "
            + ", ".join(f"{v:.0f} GFLOP/s at {t} thread(s)"
                        for t, v in roof["gemm_gflops"].items()) + ")" if roof else ""),
         ["execution", "sparsity", "batch", "threads", "p50 ms", "GB/s", "of copy BW",
          "GFLOP/s", "of dense GEMM"], rl),
    ]


def _pruning(sweep: dict[str, Any]) -> str:
    """How the sweep pruned, e.g. "prune-s, weight" (older files: magnitude pruning)."""
    return f"{sweep.get('target', 'prune-s')}, {sweep.get('granularity', 'weight')}"


def markdown(doc: dict[str, Any]) -> str:
    sw = doc["sweep"]
    m = doc.get("machine", {})
    out = [f"Sweep of `{sw['name']}` ({_pruning(sw)}; pruned layers: "
           f"{', '.join(sw['pruned_layers']) or '-'}); "
           f"machine: {m.get('cpu')} ({m.get('logical_cores')} cores); "
           f"torch {doc['versions'].get('torch')}, onnxruntime "
           f"{doc['versions'].get('onnxruntime')}; commit {doc.get('git_commit')}.", ""]
    if sw.get("command"):
        out += [f"Command: `{sw['command']}`", ""]
    for title, head, lines in tables(doc):
        out += [f"### {title}", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines]
        out.append("")
    from sparsebench.measure.report import noise_note

    note = noise_note(doc["rows"])
    return "\n".join(out + ([f"**Warning:** {note}.", ""] if note else []))


def check_matplotlib() -> None:
    try:
        import matplotlib
    except ImportError:
        raise SparsebenchError("the sweep plot needs matplotlib (pip install 'sparsebench[plots]')"
                               "; or pass --no-plot") from None
    del matplotlib


def plot(doc: dict[str, Any], path: str | Path) -> None:
    """Latency and speedup over ONNX Runtime dense versus sparsity, one row per (batch, threads)."""
    check_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, sp = series(doc), speedups(doc)
    combos = sorted({(k[2], k[3]) for k in s})
    executions = sorted({k[:2] for k in s})
    colour = {e: f"C{i % 10}" for i, e in enumerate(executions)}  # same colour in every panel
    fig, axes = plt.subplots(len(combos), 2, figsize=(11, 3.6 * len(combos)), squeeze=False)
    for (batch, threads), (ax_l, ax_s) in zip(combos, axes):
        for key in sorted(k for k in s if (k[2], k[3]) == (batch, threads)):
            pts = sorted((p, _p50(r)) for p, r in s[key].items() if _p50(r))
            if not pts:
                continue
            label = f"{key[0]}/{key[1]}"
            ax_l.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=label,
                      color=colour[key[:2]])
            spts = sorted(sp.get(key, {}).items())
            if spts and key[:2] != BASELINE:
                ax_s.plot([p for p, _ in spts], [v for _, v in spts], marker="o", label=label,
                          color=colour[key[:2]])
        xlabel = f"sparsity of the pruned layers (%): {_pruning(doc['sweep'])}"
        ax_l.set(yscale="log", xlabel=xlabel,
                 ylabel="p50 latency (ms)", title=f"{doc['sweep']['name']}: batch {batch}, "
                 f"{threads} thread(s)")
        ax_s.axhline(1.0, color="grey", lw=1, ls="--")
        ax_s.set(xlabel=xlabel,
                 ylabel="speedup over ONNX Runtime dense", title="speedup (>1: faster)")
        for ax in (ax_l, ax_s):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- command


def run_sweep(args: argparse.Namespace, out: Any,
              progress_display: Callable[[], Any]) -> int:
    from sparsebench.measure.harness import MeasureConfig, parse_size, timing_from_args
    from sparsebench.measure.results import claim_results
    from sparsebench.outputs import check_output_dir, check_output_file
    from sparsebench.ui import warn_threads
    from sparsebench.registry import split_list

    check_sweep_args(args)
    sparsities = _sparsities(args.sparsities)
    from sparsebench.report import html_output

    html = html_output(args)
    if not args.no_plot:
        check_matplotlib()  # fail before measuring, not after
    cfg = MeasureConfig(
        models=["-"], formats=split_list(args.formats), backends=split_list(args.backends),
        batches=args.batch, threads=args.threads, timing=timing_from_args(args),
        index_dtype=args.index_dtype, seed=args.seed, timeout=args.timeout,
        max_memory=parse_size(args.max_memory),
        inputs=[asdict(s) for s in parse_input_flags(getattr(args, "input", None))])
    if args.model:  # how the pruned copies load: as the input did
        cfg.arch = args.arch
        cfg.input_shape = list(_input_shape(args) or []) or None
    cfg.validate()
    warn_threads(cfg.threads)
    base_name = Path(args.model).stem if args.model else args.arch.replace(":", "-")
    plot_path = None if args.no_plot else (args.plot or f"sweep-{base_name}.png")
    check_output_file(args.markdown, args.force, "--markdown")
    check_output_file(plot_path, args.force, "--plot")
    check_output_dir(args.save_models, args.force, "--save-models")
    claim = claim_results(args.json, force=args.force)
    try:
        return _sweep_claimed(args, out, progress_display, cfg, sparsities, plot_path, claim,
                              html)
    finally:
        if claim:
            claim.release()


def _sweep_claimed(args: argparse.Namespace, out: Any, progress_display: Callable[[], Any],
                   cfg: Any, sparsities: list[float], plot_path: str | None,
                   claim: Any, html: Callable[..., Any] | None) -> int:
    """``sweep`` once its outputs are checked and the results file is claimed."""
    from sparsebench.ui import command_line, console, no_success_exit
    from sparsebench.loading import load_model
    from sparsebench.measure.harness import (estimate_seconds, footprint, model_info, plan,
                                             plan_line, run_plan)
    from sparsebench.measure.results import ResultsFile
    from sparsebench.outputs import atomic_write_text

    with tempfile.TemporaryDirectory(prefix="sparsebench-sweep-") as tmp:
        folder = Path(args.save_models) if args.save_models else Path(tmp)
        base, paths, trust = make_models(args, sparsities, folder)
        cfg.models, cfg.trust = list(paths), trust
        names = {path: Path(path).stem for path in paths}
        results = ResultsFile(claim, config={**cfg.__dict__})

        def load(path: str) -> Any:
            shape = tuple(cfg.input_shape) if cfg.input_shape else None
            return load_model(path, arch=cfg.arch, input_shape=shape, trust=trust,
                              inputs=parse_input_flags(getattr(args, "input", None)))
        first = load(next(iter(paths)))
        results.doc["sweep"] = {
            "name": base, "sparsities": sparsities, "command": command_line(),
            "target": getattr(args, "target", "prune-s"),
            "granularity": getattr(args, "granularity", "weight"),
            "sparsity_of": {names[p]: s for p, s in paths.items()},
            "pruned_layers": pruned_layers(first.module), "baseline": list(BASELINE),
            "models_folder": str(folder) if args.save_models else None}
        footprints = {}
        for path in paths:
            loaded = load(path)
            results.set_model(names[path], model_info(loaded, cfg.formats, cfg.index_dtype))
            try:
                footprints[path] = footprint(loaded.module, tuple(loaded.input_shape))
            except SparsebenchError:
                pass
        jobs = plan(cfg, names, footprints)
        fork = not args.fresh_workers
        err = console(stderr=True)
        err.print(f"sweep {base}: {len(sparsities)} sparsities; " + plan_line(jobs, fork)
                  + (f"; rows -> {args.json}" if args.json else ""), soft_wrap=False,
                  markup=False)
        with progress_display() as progress:
            task = progress.add_task("sweep", total=len(jobs),
                                     estimate=estimate_seconds(jobs, fork))

            def on_row(row: dict[str, Any]) -> None:
                progress.advance(task)
                p50 = _p50(row)
                status = "ok" if row.get("status") == "ok" else f"skipped: {row.get('reason')}"
                progress.console.print(
                    f"  {row['model']} {row['format']}/{row['backend']} b{row['batch']} "
                    f"t{row['threads']}: {row.get('impl') or '-'} p50 {_fmt(p50)} ms  {status}",
                    markup=False, soft_wrap=False)

            run_plan(jobs, results, cfg.timeout, on_row, fork=fork)
        results.doc["sweep"]["crossovers"] = crossovers(results.doc)
        results.flush()
    _print(results.doc, out, wide=args.wide)
    if args.markdown:
        atomic_write_text(args.markdown, markdown(results.doc))
        out.print(f"wrote {args.markdown}")
    if plot_path:
        plot(results.doc, plot_path)
        out.print(f"wrote {plot_path}")
    if html:
        html(results.doc, out)
    if args.json:
        out.print(f"wrote {args.json}")
    return no_success_exit(results.rows)


DETAIL_COLUMNS = ("impl", "batch", "threads")  # only with --wide (batch/threads: in the name)


def compact(head: list[str], lines: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """A sweep table without ``DETAIL_COLUMNS``; batch and threads join the execution's name
    (``csr/native b8 t2``) when they vary."""
    keep = [i for i, h in enumerate(head) if h not in DETAIL_COLUMNS]
    varying = {h: len({line[i] for line in lines}) > 1 for i, h in enumerate(head)
               if h in ("batch", "threads")}
    out = []
    for line in lines:
        cells = [line[i] for i in keep]
        for h, prefix in (("batch", "b"), ("threads", "t")):
            if varying.get(h):
                cells[0] += f" {prefix}{line[head.index(h)]}"
        out.append(cells)
    return [head[i] for i in keep], out


def _print(doc: dict[str, Any], out: Any, wide: bool = False) -> None:
    from rich.markup import escape

    from sparsebench.measure.report import noise_note
    from sparsebench.ui import print_notes, print_table, table

    for title, head, lines in tables(doc):
        if not lines:
            continue
        if not wide:
            head, lines = compact(head, lines)
        lines = [[escape(c) for c in line] for line in lines]
        print_table(out, table(head, lines, title, range(1, len(head)), heavy=wide), wide=wide)
    note = noise_note(doc["rows"])
    if note:
        print_notes(out, [f"[yellow]warning[/]: {note}"])
