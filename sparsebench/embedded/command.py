"""What the ``targets``, ``profile`` and ``export-c`` commands do (cli.py holds only flags)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sparsebench.errors import SparsebenchError

EXIT_FITS, EXIT_DOES_NOT_FIT = 0, 1


def parse_block(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SparsebenchError(f"bad block {text!r}: expected RxC, e.g. 4x4") from None
    if r < 1 or c < 1:
        raise SparsebenchError(f"bad block {text!r}: sizes must be positive")
    return r, c


def load(args: argparse.Namespace) -> Any:
    """The model named on the command line, as a torch module with its input shape; weights
    that are NaN or infinite are an error (no size or verdict means anything for them)."""
    from sparsebench.formats import has_nonfinite
    from sparsebench.loading import load_model, parse_input_shape

    from sparsebench.model_io import is_single_float, parse_input_flags

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    loaded = load_model(args.model, arch=args.arch, input_shape=shape, trust=args.trust,
                        inputs=parse_input_flags(getattr(args, "input", None)))
    if not is_single_float(loaded.inputs):
        raise SparsebenchError(f"{args.model} takes {', '.join(s.describe() for s in loaded.inputs)}"
                               ": profile and export-c run models with one float32 input")
    if loaded.module is None:
        raise SparsebenchError(f"{args.model} could not be converted to a torch module"
                               + (f": {loaded.onnx_error}" if loaded.onnx_error else ""))
    bad = has_nonfinite(loaded.module)
    if bad:
        raise SparsebenchError(f"{args.model} has non-finite weights (NaN or Inf) in layer "
                               f"{', '.join(repr(b) for b in bad)}: fix or retrain the model "
                               "first")
    return loaded


def run_targets(args: argparse.Namespace, con: Any) -> int:
    from rich.markup import escape

    from sparsebench.embedded.summary import fmt_bytes
    from sparsebench.embedded.targets import list_targets, load_target
    from sparsebench.ui import print_table, table

    targets = [load_target(p) for p in args.files] if args.files else list_targets()
    if args.json:
        con.print_json(json.dumps([t.to_dict() for t in targets]))
        return 0
    lines = []
    for t in targets:
        b = t.build
        build = "-" if b is None else f"{b.cc}" + (f" -> {b.qemu}" if b.qemu else "") + \
            (f" -machine {b.machine}" if b.machine else "")
        lines.append([escape(t.name), f"{t.clock_mhz:g} MHz", str(t.cores),
                      fmt_bytes(t.ram_bytes),
                      "no limit" if t.flash_bytes is None else fmt_bytes(t.flash_bytes),
                      t.weights_in, escape(t.description), t.fpu, f"{t.simd_bits} bit",
                      f"{t.mem_bandwidth_mb_s:g} MB/s" if t.mem_bandwidth_mb_s else "-",
                      escape(build), escape("; ".join(t.sources))])
    head = ["name", "clock", "cores", "RAM", "flash", "weights in", "description", "FPU", "SIMD",
            "bandwidth", "build (emulator)", "sources"]
    wide = getattr(args, "wide", False)
    if not wide:  # what fits 80 columns; the rest with --wide or --json
        head, lines = head[:7], [line[:7] for line in lines]
    print_table(con, table(head, lines, numeric=(1, 2, 3, 4), whole=(0, 5), heavy=wide),
                wide=wide)
    con.print("add your own: sparsebench profile MODEL --target my-board.toml (keys: see "
              "docs/profile.md); --wide: FPU, SIMD, bandwidth, build and sources",
              soft_wrap=False)
    return 0


def check_calibration(args: argparse.Namespace) -> None:
    n = getattr(args, "calibration", 500)
    if n < 1:
        raise SparsebenchError(f"--calibration {n}: need at least one calibration image")


def build_encoding(args: argparse.Namespace) -> str:
    """``--build-encoding``, checked before any work: ``verdict`` or an export-c encoding."""
    from sparsebench.embedded.export_c import resolve_encoding

    if args.build_encoding != "verdict":
        return resolve_encoding(args.build_encoding)
    return "verdict"


def estimate_seconds(prof: Any, per_layer: dict[str, str]) -> float:
    """The estimated latency of the profile's model with these per-layer encodings."""
    from sparsebench.embedded.estimate import op_seconds

    by_key = {r.name: r for r in prof.layers}
    total = 0.0
    for op in prof.graph.ops:
        key = op.weight_key or op.name
        if op.weight is not None and key in by_key:
            enc = per_layer[key]
            total += op_seconds(op, prof.target, enc, by_key[key].stats,
                                by_key[key].sizes[enc] or 0)
        else:
            total += op_seconds(op, prof.target)
    return total


def run_profile(args: argparse.Namespace, con: Any) -> int:
    from sparsebench.embedded.report import markdown, print_profile, verdict_line
    from sparsebench.embedded.summary import check_policy, host_latency, profile_model, to_dict
    from sparsebench.embedded.targets import load_target

    from sparsebench.outputs import check_output_dir, check_output_file

    from sparsebench.report import html_output

    html = html_output(args)
    target = load_target(args.target)
    policy = check_policy(args.encoding)
    block = parse_block(args.block)
    check_calibration(args)
    benc = build_encoding(args) if args.build else None
    if args.json != "-":
        check_output_file(args.json, args.force, "--json")
    check_output_file(args.markdown, args.force, "--markdown")
    if args.build:
        check_output_dir(args.build_dir, args.force, "--build-dir")
    if args.build:
        from sparsebench.embedded.build import check_tools

        check_tools(target)   # fail before the slow part
    loaded = load(args)
    info = {"name": Path(args.model).stem, "path": str(args.model), "kind": loaded.kind,
            "arch": loaded.arch}
    prof = profile_model(loaded.module, loaded.input_shape, target, policy=policy, block=block,
                         model_info=info)
    encodings: str | dict[str, str] | None = None
    if args.build:
        encodings = prof.verdict.per_layer if benc == "verdict" else benc
    qmodel = data = None
    from sparsebench.embedded.export_c import is_int8

    wants_int8 = encodings is not None and is_int8(encodings)
    if wants_int8 and prof.int8_blocker:
        raise SparsebenchError(prof.int8_blocker)
    if prof.int8_blocker is None and (wants_int8 or not args.no_accuracy):
        from sparsebench.embedded import quant

        qmodel, data, notes = quant.prepare(loaded.module, prof.graph, loaded.checkpoint,
                                            loaded.input_shape, args.calibration,
                                            getattr(args, "data_dir", None))
        prof.notes.extend(notes)
        if data is not None and not args.no_accuracy:
            prof.accuracy = quant.accuracy(qmodel, loaded.module, data)
    if not args.no_host:
        prof.host = host_latency(loaded.module, loaded.input_shape)
    if args.build:
        from sparsebench.embedded.build import build_and_run
        from sparsebench.embedded.export_c import choose_encodings

        assert encodings is not None
        per_layer = choose_encodings(prof.graph, encodings, block)   # names unbuildable layers
        est = estimate_seconds(prof, per_layer)
        test_input = data.test_x[0].numpy() if data is not None and wants_int8 else None
        prof.build = build_and_run(loaded.module, loaded.input_shape, target,
                                   encoding=per_layer, work_dir=args.build_dir,
                                   timeout=args.timeout, name=info["name"], est_seconds=est,
                                   qmodel=qmodel if wants_int8 else None,
                                   test_input=test_input, block=block)
    to_stdout = args.json == "-"
    if to_stdout:   # keep stdout pure JSON; messages go to stderr
        from sparsebench.ui import console

        con = console(stderr=True)
    else:
        print_profile(prof, con, wide=getattr(args, "wide", False))
    if args.json:
        text = json.dumps(to_dict(prof), indent=1, default=_jsonable)
        if to_stdout:
            print(text)
        else:
            _write(Path(args.json), text)
            con.print(f"wrote {args.json}")
    if args.markdown:
        _write(Path(args.markdown), markdown(prof))
        con.print(f"wrote {args.markdown}")
    if html:
        html(json.loads(json.dumps(to_dict(prof), default=_jsonable)), con)
    if prof.build and not prof.build["output_ok"]:
        status = prof.build["status"]
        b = prof.build
        what = (f"the emulated int8 output differs from the Python integer reference in "
                f"{b['outputs'] - b['outputs_equal']} of {b['outputs']} outputs" if b.get("int8")
                else f"the emulated output does not match torch: max abs error "
                     f"{b['max_abs_err']:.3g} (tolerance {b['tolerance']:g})")
        con.print(f"[bold red]{what}[/], program status {status}"
                  + (" (a CPU fault)" if status == "FAULT" else ""))
        return EXIT_DOES_NOT_FIT
    if to_stdout:
        con.print(verdict_line(prof))
    return EXIT_FITS if prof.verdict.fits else EXIT_DOES_NOT_FIT


def run_export(args: argparse.Namespace, con: Any) -> int:
    from sparsebench.embedded.export_c import export_c, resolve_encoding
    from sparsebench.outputs import check_output_dir

    from sparsebench.embedded.export_c import is_int8

    enc = resolve_encoding(args.encoding)
    block = parse_block(getattr(args, "block", "4x4"))
    check_calibration(args)
    check_output_dir(args.out, args.force, "--out")
    loaded = load(args)
    qmodel = test_input = None
    if is_int8(enc):
        from sparsebench.embedded import quant
        from sparsebench.embedded.lowering import trace

        graph = trace(loaded.module, loaded.input_shape)
        qmodel, data, notes = quant.prepare(loaded.module, graph, loaded.checkpoint,
                                            loaded.input_shape, args.calibration,
                                            getattr(args, "data_dir", None))
        for note in notes:
            con.print(f"note: {note}")
        if data is not None:
            test_input = data.test_x[0].numpy()
    exp = export_c(loaded.module, loaded.input_shape, args.out, encoding=enc,
                   name=Path(args.model).stem, seed=args.seed, qmodel=qmodel,
                   test_input=test_input, block=block)
    con.print(f"wrote {len(exp.files)} files to {exp.out_dir}: weights {exp.weight_bytes:,} B "
              f"(const), arena {exp.arena.size:,} B (static{', int8' if exp.int8 else ''}), "
              f"test vector {exp.test_vector_bytes:,} B")
    if exp.int8:
        con.print(f"int8 (TFLite scheme), calibrated on {exp.qmodel.calibration}; input scale "
                  f"{exp.qmodel.input.scale:.6g}, zero point {exp.qmodel.input.zero_point}")
    for layer, enc in exp.encodings.items():
        con.print(f"  {layer}: {enc}")
    con.print(f"build and check on this machine: make -C {exp.out_dir} && "
              f"{exp.out_dir}/sb_test")
    return 0


def _write(path: Path, text: str) -> None:
    from sparsebench.outputs import atomic_write_text

    atomic_write_text(path, text)


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
