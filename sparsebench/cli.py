"""The ``sparsebench`` command line. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsebench import __version__
from sparsebench.errors import SparsebenchError
from sparsebench.report import add_html_flag, html_output
from sparsebench.shipped import DEFAULT_MODEL  # models/lenet5_prune_l.pt, shipped in the wheel
from sparsebench.ui import (command_line, console, floats, force_flag, fresh_workers_flag, ints,
                            no_success_exit, progress_display, record_argv, warn_threads,
                            wide_flag)

COMMANDS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def command(name: str, help: str) -> Callable[[Callable], Callable]:
    """Register ``fn(args) -> int`` as a subcommand; ``fn.configure(parser)`` adds its flags."""
    def wrap(fn: Callable) -> Callable:
        COMMANDS[name] = fn
        fn.help = help
        return fn
    return wrap


class Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"sparsebench: error: {self.prog.removeprefix('sparsebench').strip() or 'usage'}: "
              f"{message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


# --------------------------------------------------------------------------------------------
# archs / presets


def _archs(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sparsebench.archs import ARCHS, create_model, default_input

    table = Table("name", "default input", "params", "classifier", "description")
    for name in ARCHS.names(args.pattern):
        model = create_model(name, *default_input(name))
        count = sum(p.numel() for p in model.parameters())
        table.add_row(name, "x".join(map(str, model.input_shape)), f"{count:,}",
                      ARCHS.meta(name).get("classifier", "-"), ARCHS.help(name))
    console().print(table)
    console().print("and torchvision:NAME / timm:NAME (random weights) where torchvision and timm "
                    "import: docs/zoo.md")
    return 0


def _archs_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'lenet*'")


command("archs", "list the architectures")(_archs).configure = _archs_flags


def _presets(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sparsebench.pruning import PRESETS

    table = Table("name", "arch", "epochs", "fractions", "starts", "ends", "r", "score",
                  "target", "optimizer", "notes")
    for name in PRESETS.names():
        p = PRESETS.get(name)
        table.add_row(name, p.arch, str(p.epochs), ",".join(map(str, p.fractions)),
                      ",".join(map(str, p.starts)), ",".join(map(str, p.ends)), str(p.period),
                      p.score, p.target, p.optimizer, PRESETS.help(name))
    console().print(table)
    return 0


command("presets", "list the paper's training presets")(_presets).configure = lambda p: None


# --------------------------------------------------------------------------------------------
# train


def _train_flags(p: argparse.ArgumentParser) -> None:
    from sparsebench.catalog import ARCHS, DATASETS, METHODS, REENTRY_MODES, SCORES, TARGETS

    g = p.add_argument_group("what to train")
    g.add_argument("--arch", help=f"architecture: {', '.join(ARCHS.names())} (see `sparsebench "
                   "archs`)")
    g.add_argument("--width", type=float, help="channel multiplier for vgg11_bn / resnet18 "
                   "(e.g. 0.25: vgg11_bn 16-32-64-64-128-128-128-128, Linear(128, classes))")
    g.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an architecture argument, repeatable (e.g. --arch-arg d_hidden=2048)")
    g.add_argument("--dataset", default="fashion-mnist",
                   help=f"{', '.join(DATASETS.names())} (default fashion-mnist)")
    g.add_argument("--data-dir", help="dataset folder (fashion-mnist default: "
                   "/usr/share/datasets/fashion-mnist; cifar10: cifar-10-batches-py)")
    g.add_argument("--method", help=f"one of: {', '.join(METHODS)} (default dense, or the "
                   "preset's target)")
    g.add_argument("--preset", help="a paper configuration (see `sparsebench presets`)")
    g.add_argument("--epochs", type=int, help="epochs (default 10; with a preset, rescales it)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights, the batch "
                   "order, augmentation and synthetic data (default 0)")
    g.add_argument("--out", help="checkpoint path (default runs/ARCH-METHOD-sSEED.pt)")
    g.add_argument("--resume", metavar="CKPT", help="continue an interrupted run (with the "
                   "run's --threads, --device and --data-dir unless given again)")
    force_flag(g)
    g = p.add_argument_group("pruning")
    g.add_argument("--granularity", choices=("filter", "weight"), default="filter",
                   help="what an event removes: whole filters/neurons (default) or single "
                        "weights")
    g.add_argument("--layers", help="comma-separated layers to prune (default: the arch's "
                   "default set; see `sparsebench info`)")
    g.add_argument("--fractions", type=floats, help="final fraction removed per layer, in "
                   "[0, 1) (one value or one per layer; default 0.5)")
    g.add_argument("--start", type=ints, help="first event epoch per layer (default 1)")
    g.add_argument("--end", type=ints, help="last event epoch per layer (default epochs-1)")
    g.add_argument("--retrain-period", type=ints, help="epochs between events (r)")
    g.add_argument("--score", choices=SCORES, help="unit score (default l2)")
    g.add_argument("--target", choices=TARGETS, default="prune-l",
                   help="target rule for reentry and scratch (default prune-l)")
    g.add_argument("--reentry-batches", type=int, default=50, help="M: batches a re-entry "
                   "target is perturbed (paper: 1, 50, 1105)")
    g.add_argument("--reentry-mode", choices=REENTRY_MODES, default="zero",
                   help="what a re-entering unit restarts from: zero (default), gaussian noise, "
                        "or its weights when pruned (restore)")
    g.add_argument("--allow-final-event", action="store_true", help="allow a schedule whose "
                   "last event is at the last epoch (no retraining after it; the reported "
                   "accuracy is then the post-prune one)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("adam", "sgd"), help="default adam (lr 1e-3)")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3 for adam, 0.1 for sgd, "
                   "or the preset's)")
    g.add_argument("--momentum", type=float, help="SGD momentum in [0, 1) (default 0.9, or the "
                   "preset's)")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay (default 0, or the "
                   "preset's)")
    g.add_argument("--milestones", type=ints, help="epochs where lr is multiplied by 0.1")
    g.add_argument("--batch-size", type=int, help="training batch size (default 128, or the "
                   "preset's)")
    g.add_argument("--dropout", type=float, help="dropout probability (default 0.5 for "
                   "--method dropout, else 0)")
    g.add_argument("--augment", action="store_true", default=None,
                   help="random crop (pad 4) + horizontal flip")
    g.add_argument("--pad-to-32", action="store_true", help="zero-pad 28x28 images to 32x32")
    g.add_argument("--limit-train", type=int, help="use a class-balanced subset of N training "
                   "images (the first N/classes of each class)")
    g.add_argument("--limit-test", type=int, help="use only the first N test images")
    g = p.add_argument_group("machine")
    g.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    g.add_argument("--quiet", action="store_true", help="no per-epoch log lines")
    g = p.add_argument_group("analysis")
    g.add_argument("--flatness", action="store_true", help="at the end, measure flatness on 512 "
                   "test images: top-5 Hessian eigenvalues (power iteration) and the gradient "
                   "covariance trace (stored in the checkpoint, shown by `info`)")


def _check_train_names(args: argparse.Namespace) -> None:
    """The train flag errors found without importing torch (a fast one-line error)."""
    from sparsebench.catalog import ARCHS, METHODS, check_arch

    if not (args.arch or args.preset):
        raise SparsebenchError("--arch is required (or a --preset); choose from: "
                               + ", ".join(ARCHS.names()))
    if args.arch:
        check_arch(args.arch)
    if args.method and args.method not in METHODS:
        raise SparsebenchError(f"unknown method {args.method!r}; choose from: "
                               f"{', '.join(METHODS)}")


def resolve_config(args: argparse.Namespace) -> Any:
    """Turn train flags (and an optional preset) into a TrainConfig."""
    _check_train_names(args)
    from sparsebench.archs import create_model
    from sparsebench.catalog import METHODS
    from sparsebench.pruning import PRESETS, build_schedules
    from sparsebench.pruning.schedule import default_schedule_epochs
    from sparsebench.train import TrainConfig

    preset = PRESETS.get(args.preset) if args.preset else None
    arch = args.arch or preset.arch
    if preset and preset.arch != arch:
        raise SparsebenchError(f"preset {args.preset!r} is for {preset.arch}, not {arch}")
    arch_kwargs = arch_arguments(args.arch_arg, args.width)
    in_ch = 1 if args.dataset == "fashion-mnist" else 3
    size = 32 if args.pad_to_32 or args.dataset == "cifar10" else 28
    try:
        probe = create_model(arch, in_ch, size, **arch_kwargs)
    except TypeError as exc:  # an argument the architecture does not take
        raise SparsebenchError(f"{arch} does not take {', '.join(arch_kwargs)}: "
                               f"{str(exc).splitlines()[0]}") from None
    method = args.method or (preset.target if preset else "dense")
    if method not in METHODS:
        raise SparsebenchError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")
    if args.epochs is not None and args.epochs < 1:
        raise SparsebenchError(f"--epochs must be at least 1, got {args.epochs}")
    epochs = args.epochs or (preset.epochs if preset else 10)

    dropout = args.dropout if args.dropout is not None else (0.5 if method == "dropout" else 0.0)
    if method == "dropout" and dropout <= 0:
        raise SparsebenchError("--method dropout needs --dropout > 0")
    if not 0.0 <= dropout < 1.0:
        raise SparsebenchError(f"--dropout must be in [0, 1), got {dropout}")

    schedules: list[dict] = []
    score = args.score or (preset.score if preset else "l2")
    if method not in ("dense", "dropout"):
        if preset and not (args.layers or args.fractions or args.start or args.end
                           or args.retrain_period):
            scheds = preset.schedules(probe, epochs)
        else:
            layers = (args.layers.split(",") if args.layers
                      else (preset.layers(probe) if preset else list(probe.default_pruned)))
            start, end, period = default_schedule_epochs(epochs)
            scheds = build_schedules(layers, args.fractions or [0.5], args.start or [start],
                                     args.end or [end], args.retrain_period or [period])
        late = [s.layer for s in scheds if s.event_epochs() and s.event_epochs()[0] > epochs]
        if late:
            raise SparsebenchError(f"no pruning event falls within {epochs} epochs for "
                                   f"{', '.join(late)}: lower --start or raise --epochs")
        last = max((e for s in scheds for e in s.event_epochs() if e <= epochs), default=0)
        if last >= epochs and not args.allow_final_event:
            raise SparsebenchError(
                f"the last pruning event is at epoch {last} of {epochs}: no epoch would retrain "
                "the pruned model, so its accuracy would be the post-prune one; raise --epochs "
                "(the default schedule ends at epochs-1), set --end below --epochs, or pass "
                "--allow-final-event")
        schedules = [s.to_dict() for s in scheds]

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else (getattr(preset, name) if preset else default)

    inf = float("inf")
    if args.lr is not None and not 0 < args.lr < inf:
        raise SparsebenchError(f"--lr must be a positive number, got {args.lr}")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        raise SparsebenchError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.weight_decay is not None and not 0 <= args.weight_decay < inf:
        raise SparsebenchError(f"--weight-decay must be at least 0, got {args.weight_decay}")
    for flag, value in (("--batch-size", args.batch_size), ("--limit-train", args.limit_train),
                        ("--limit-test", args.limit_test)):
        if value is not None and value < 1:
            raise SparsebenchError(f"{flag} must be at least 1, got {value}")
    optimizer = pick("optimizer", "adam")
    lr_default = 0.1 if optimizer == "sgd" else 1e-3
    milestones = (args.milestones if args.milestones is not None
                  else preset.scaled_milestones(epochs) if preset else [])
    return TrainConfig(
        arch=arch, dataset=args.dataset, method=method, granularity=args.granularity,
        score=score, target=args.target, schedules=schedules, preset=args.preset,
        epochs=epochs, batch_size=pick("batch_size", 128), optimizer=optimizer,
        lr=args.lr if args.lr is not None else (preset.lr if preset else lr_default),
        momentum=pick("momentum", 0.9), weight_decay=pick("weight_decay", 0.0),
        milestones=list(milestones), dropout=dropout, augment=bool(pick("augment", False)),
        reentry_batches=args.reentry_batches, reentry_mode=args.reentry_mode, seed=args.seed,
        pad_to_32=args.pad_to_32, limit_train=args.limit_train, limit_test=args.limit_test,
        arch_kwargs=arch_kwargs, flatness=args.flatness)


def arch_arguments(pairs: list[str], width: float | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` architecture arguments (numbers parsed) plus ``--width``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise SparsebenchError(f"--arch-arg needs KEY=VALUE, got {pair!r}")
        value: Any = text.strip()
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        if value in ("true", "false"):
            value = value == "true"
        out[key.strip().replace("-", "_")] = value
    if width is not None:
        out["width"] = width
    return out


def _recorded_run(command: str | None) -> argparse.Namespace | None:
    """The flags of the ``sparsebench train`` command a checkpoint records (None if absent)."""
    import shlex

    words = shlex.split(command or "")[1:]
    if not words or words[0] != "train":
        return None
    sub = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    _train_flags(sub)
    try:
        return sub.parse_known_args(words[1:])[0]
    except (argparse.ArgumentError, SystemExit):  # unparsable: resume with the flags given now
        return None


def _train(args: argparse.Namespace) -> int:
    if not args.resume:
        _check_train_names(args)
    import torch

    from sparsebench.checkpoint import load_checkpoint
    from sparsebench.data import load_dataset
    from sparsebench.outputs import check_output_file
    from sparsebench.train import TrainConfig, Trainer, accuracy_phrase, stability_phrase

    resumed = load_checkpoint(args.resume) if args.resume else None
    recorded = _recorded_run((resumed or {}).get("command"))
    if recorded is not None:  # the interrupted run's machine settings, unless given again
        for name in ("threads", "device", "data_dir"):
            given = getattr(args, name)
            if given is None or (name == "device" and given == "auto"):
                setattr(args, name, getattr(recorded, name))
    if args.threads is not None:
        if args.threads < 1:
            raise SparsebenchError(f"--threads must be at least 1, got {args.threads}")
        warn_threads([args.threads])
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise SparsebenchError(f"device {device!r} is not available here; use cpu or auto")

    if resumed is not None:
        if "resume" not in resumed:
            raise SparsebenchError(f"{args.resume} has no resume state: the run it holds "
                                   "already finished")
        cfg = TrainConfig(**resumed["config"])
        if args.epochs:
            cfg.epochs = args.epochs
        out = args.out or args.resume
    else:
        cfg = resolve_config(args)
        out = args.out or f"runs/{cfg.arch}-{cfg.method}-s{cfg.seed}.pt"
    same = args.resume and Path(out).resolve() == Path(args.resume).resolve()
    check_output_file(out, args.force or bool(same), "--out")

    data = load_dataset(cfg.dataset, data_dir=args.data_dir, pad_to_32=cfg.pad_to_32,
                        seed=cfg.seed, limit_train=cfg.limit_train, limit_test=cfg.limit_test)
    out_console = console()
    log = (lambda msg: None) if args.quiet else out_console.print
    with progress_display() as progress:
        trainer = Trainer(cfg, data, out=out, device=device, log=log, progress=progress,
                          command=command_line())
        if resumed is not None:
            trainer.load_resume(resumed)
            log(f"resumed {args.resume} at epoch {trainer.epoch}/{cfg.epochs}")
        ckpt = trainer.run()
    s = ckpt["summary"]
    out_console.print(
        f"done: {cfg.arch} {cfg.method} seed {cfg.seed} -> {out}\n"
        f"  {accuracy_phrase(s)}, generalization gap {s['generalization_gap']:.2f}, "
        f"{stability_phrase(s)}, params removed {100 * s['params_removed_frac']:.1f}% "
        f"({s['params_nonzero']:,}/{s['params_total']:,} nonzero), {s['wall_seconds']:.0f}s")
    return 0


command("train", "train a model with a pruning method (or dense / dropout)")(_train) \
    .configure = _train_flags


# --------------------------------------------------------------------------------------------
# measure


def _unique_names(paths: list[str]) -> dict[str, str]:
    """path -> display name (the file stem, made unique)."""
    names: dict[str, str] = {}
    for path in paths:
        stem, n = Path(path).stem, 2
        name = stem
        while name in names.values():
            name, n = f"{stem}-{n}", n + 1
        names[path] = name
    return names


def _auto_data(loaded: Any) -> str | None:
    """The checkpoint's dataset when it is installed where the loader looks by default."""
    from sparsebench.data import load_dataset

    name = ((loaded.checkpoint or {}).get("dataset") or {}).get("name")
    if name != "fashion-mnist":
        return None
    try:
        load_dataset(name, limit_train=1, limit_test=1)
    except SparsebenchError:
        return None
    return name


def _measure(args: argparse.Namespace) -> int:
    from sparsebench.catalog import BACKENDS
    from sparsebench.measure.harness import MeasureConfig, parse_size, timing_from_args
    from sparsebench.measure.results import claim_results
    from sparsebench.outputs import check_output_file
    from sparsebench.registry import split_list

    if not args.models and args.arch and _zoo_arch(args.arch):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="sparsebench-zoo-") as tmp:
            args.models = [_zoo_model_file(args.arch, tmp, args.seed)]
            return _measure(args)
    paths = args.models or [str(DEFAULT_MODEL)]
    input_shape = None
    if args.input_shape:
        from sparsebench.loading import parse_input_shape

        input_shape = parse_input_shape(args.input_shape)
    from dataclasses import asdict

    from sparsebench.model_io import parse_input_flags

    args.inputs = parse_input_flags(args.input)
    cfg = MeasureConfig(
        models=paths, formats=split_list(args.formats), backends=split_list(args.backends)
        or BACKENDS.names(), batches=args.batch, threads=args.threads, streams=args.streams,
        timing=timing_from_args(args),
        data=None if args.data in ("auto", "none") else args.data, data_dir=args.data_dir,
        data_limit=args.data_limit, per_layer=args.per_layer, arch=args.arch,
        input_shape=list(input_shape) if input_shape else None, trust=args.trust,
        inputs=[asdict(s) for s in args.inputs],
        index_dtype=args.index_dtype, seed=args.seed, timeout=args.timeout,
        max_memory=parse_size(args.max_memory), inject_slowdown=args.inject_slowdown)
    cfg.validate()
    if args.ab and cfg.streams > 1:
        raise SparsebenchError("--streams does not combine with --ab (A/B alternates one "
                               "caller per side)")
    warn_threads(cfg.threads, cfg.streams)
    html = html_output(args)
    ab = None
    if args.ab:
        from sparsebench.measure.ab import ABRunner

        ab = ABRunner(args.ab, args.ab_rounds, paths)
    check_output_file(args.markdown, args.force, "--markdown")
    claim = claim_results(args.json, append=args.append, force=args.force)
    try:
        return _measure_claimed(args, cfg, paths, input_shape, ab, claim, html)
    finally:
        if claim:
            claim.release()


def _measure_claimed(args: argparse.Namespace, cfg: Any, paths: list[str], input_shape: Any,
                     ab: Any, claim: Any, html: Callable[..., Any] | None) -> int:
    """``measure`` once its outputs are checked and the results file is claimed."""
    from sparsebench.loading import load_model
    from sparsebench.measure.harness import (estimate_seconds, footprint, model_info, plan,
                                             plan_line, run_plan)
    from sparsebench.measure.report import print_report, progress_line
    from sparsebench.measure.results import ResultsFile
    from sparsebench.outputs import atomic_write_text

    out = console()
    names = _unique_names(paths)
    loaded = {p: load_model(p, arch=args.arch, input_shape=input_shape, trust=args.trust,
                            inputs=args.inputs) for p in paths}
    if args.data == "auto":
        found = {_auto_data(m) for m in loaded.values()} - {None}
        cfg.data = found.pop() if len(found) == 1 else None
    if ab:
        cfg.data = None  # A/B runs time the two sides only
    results = ResultsFile(claim, config={**cfg.__dict__})
    footprints = {}
    for path, model in loaded.items():
        results.set_model(names[path], model_info(model, cfg.formats, cfg.index_dtype))
        if model.module is not None:
            try:
                footprints[path] = footprint(model.module, tuple(model.input_shape))
            except SparsebenchError:
                pass  # model_info has recorded why it does not run
    if ab:
        ab.record(results, names[paths[0]], lambda p: load_model(
            p, arch=args.arch, input_shape=input_shape, trust=args.trust, inputs=args.inputs),
            lambda m: model_info(m, cfg.formats, cfg.index_dtype), loaded[paths[0]].input_shape)
    del loaded
    jobs = plan(cfg, names, footprints)
    fork = not args.fresh_workers
    err = console(stderr=True)
    err.print(plan_line(jobs, fork) + ("; each twice (A/B)" if ab else "")
              + (f"; accuracy on {cfg.data}" if cfg.data else "")
              + (f"; rows -> {args.json}" + (" (appending)" if args.append else "")
                 if args.json else ""), soft_wrap=False, markup=False)
    try:
        with progress_display() as progress:
            task = progress.add_task("measure", total=len(jobs) * (2 if ab else 1),
                                     estimate=estimate_seconds(jobs, fork) * (2 if ab else 1))

            def on_row(row: dict[str, Any]) -> None:
                progress.advance(task)
                progress.console.print(progress_line(results.rows, row), markup=False,
                                       soft_wrap=False)

            if ab:
                ab(jobs, results, cfg.timeout, on_row)
            else:
                run_plan(jobs, results, cfg.timeout, on_row, fork=fork)
    except KeyboardInterrupt:
        if args.json and results.rows:
            err.print(f"interrupted: {len(results.rows)} completed rows kept in {args.json}")
        elif args.json:
            err.print(f"interrupted before the first row: {args.json} was not written (a "
                      "previous file there is unchanged)")
        raise
    print_report(results.doc, out, wide=args.wide)
    if args.markdown:
        from sparsebench.measure.report import markdown

        atomic_write_text(args.markdown, markdown(results.doc))
        out.print(f"wrote {args.markdown}")
    if html:
        html(results.doc, out)
    if args.json:
        out.print(f"wrote {args.json}" if results.rows else f"{args.json} not written: no rows")
    return no_success_exit(results.rows)


def _measure_flags(p: argparse.ArgumentParser) -> None:
    from sparsebench.catalog import BACKENDS, FORMATS
    from sparsebench.measure.harness import DEFAULT_FORMATS, add_timing_flags

    p.add_argument("models", nargs="*", help="checkpoints, state_dicts (with --arch), pickled "
                   "torch.nn modules, TorchScript, torch.export .pt2 or ONNX files (default: "
                   "the zoo's lenet5 prune-l)")
    p.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated formats (see docs/formats.md): "
                        f"{', '.join(FORMATS.names())} (default {','.join(DEFAULT_FORMATS)})")
    p.add_argument("--backends", default="", help=f"comma-separated backends (default: all: "
                   f"{', '.join(BACKENDS.names())})")
    p.add_argument("--batch", type=ints, default="1", help="batch sizes, e.g. 1,8,32 (default 1)")
    p.add_argument("--threads", type=ints, default="1",
                   help="thread counts, e.g. 1,2 (default 1)")
    p.add_argument("--streams", type=int, default=1, metavar="N", help="throughput mode: each "
                   "execution also runs as N concurrent streams (processes, each with its own "
                   "copy and --threads threads) and reports items/s and the p50 under that load "
                   "(default 1: latency only)")
    p.add_argument("--json", metavar="OUT", help="write the results (rows, raw samples, machine) "
                   "to this JSON file, updated after every row; an existing results file needs "
                   "--append or --force")
    p.add_argument("--append", action="store_true", help="add the rows to an existing --json "
                   "results file (an execution measured again replaces its old row)")
    p.add_argument("--markdown", metavar="OUT", help="write the tables as Markdown")
    force_flag(p)
    p.add_argument("--data", default="auto", help="accuracy on fashion-mnist or cifar10; auto "
                   "(default): the checkpoint's dataset when installed; none: skip")
    p.add_argument("--data-dir", help="dataset folder")
    p.add_argument("--data-limit", type=int, help="use only the first N test images")
    p.add_argument("--per-layer", action="store_true", help="median time per layer "
                   "(module-based executions)")
    p.add_argument("--arch", help="architecture for a state_dict: a registry name, "
                   "torchvision:NAME, timm:NAME or module:callable; with no model file, a "
                   "torchvision:/timm: architecture is built (random weights) and measured")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28 (when the file "
                   "does not say)")
    add_input_flag(p)
    p.add_argument("--trust", action="store_true", help="allow full unpickling of a model file "
                   "(runs code from the file: only for files you trust)")
    p.add_argument("--index-dtype", default="auto", choices=("auto", "int16", "int32"),
                   help="CSR/BSR column index width (auto: int16 when the columns fit)")
    add_timing_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random input")
    p.add_argument("--ab", metavar="BASE", help="interleaved A/B against BASE for "
                   "`sparsebench compare`: a model file (calls alternate in one process) or a "
                   "folder with the base commit's checkout (processes alternate); the model "
                   "given is the new side (docs/ci-gate.md)")
    p.add_argument("--ab-rounds", type=int, default=10, metavar="N", help="base/new process "
                   "pairs with a checkout as --ab (default 10; 8 at least for p < 0.01)")
    p.add_argument("--inject-slowdown", type=float, metavar="FRACTION", help="testing aid: "
                   "after every timed call, busy-wait FRACTION of its duration (with --ab: the "
                   "new side only)")
    fresh_workers_flag(p)
    wide_flag(p)
    add_html_flag(p)


command("measure", "measure latency, memory, size and accuracy of models across formats and "
        "backends")(_measure).configure = _measure_flags


# --------------------------------------------------------------------------------------------
# compare


def _compare(args: argparse.Namespace) -> int:
    import json

    from sparsebench.gate import GateConfig, compare_files
    from sparsebench.gate.report import markdown, print_comparison, to_json
    from sparsebench.outputs import atomic_write_text, check_output_file

    cfg = GateConfig(alpha=args.alpha, threshold=args.threshold, blocks=args.blocks,
                     resamples=args.resamples, seed=args.seed, rss_tolerance=args.rss_tolerance,
                     rss_min_bytes=round(args.rss_min_mib * 1024 ** 2),
                     allow_missing=args.allow_missing)
    check_output_file(args.markdown, args.force, "--markdown")
    check_output_file(args.json, args.force, "--json")
    html = html_output(args)
    result = compare_files(args.files, cfg, args.allow_machine_mismatch)
    out = console()
    print_comparison(result, out, wide=args.wide)
    for path, text in ((args.markdown, lambda: markdown(result)),
                       (args.json, lambda: json.dumps(to_json(result), indent=1))):
        if path:
            atomic_write_text(path, text())
            out.print(f"wrote {path}")
    if html:
        from sparsebench.report import from_comparison

        html(from_comparison(result, args.files), out)
    return result.exit_code


def _compare_flags(p: argparse.ArgumentParser) -> None:
    from sparsebench.gate.config import GateConfig

    d = GateConfig()
    p.add_argument("files", nargs="+", metavar="FILE", help="BASE.json NEW.json (from `measure "
                   "--json`), or one file from `measure --ab`")
    p.add_argument("--alpha", type=float, default=d.alpha, help="significance level of the rank "
                   f"test; the CI is 1-alpha (default {d.alpha:g})")
    p.add_argument("--threshold", type=float, default=d.threshold, help="smallest latency change "
                   f"that counts, as a fraction (default {d.threshold:.2f})")
    p.add_argument("--rss-tolerance", type=float, default=d.rss_tolerance, help="peak RSS growth "
                   f"allowed, as a fraction (default {d.rss_tolerance:g}) ...")
    p.add_argument("--rss-min-mib", type=float, default=d.rss_min_bytes / 2 ** 20,
                   help=f"... and in MiB (default {d.rss_min_bytes / 2 ** 20:g})")
    p.add_argument("--blocks", type=int, default=d.blocks, help="contiguous blocks per row for "
                   f"the test and the bootstrap (default {d.blocks}; 0: per call, not "
                   "recommended)")
    p.add_argument("--resamples", type=int, default=d.resamples,
                   help=f"bootstrap resamples (default {d.resamples})")
    p.add_argument("--seed", type=int, default=d.seed, help="bootstrap seed")
    p.add_argument("--allow-machine-mismatch", action="store_true",
                   help="compare files from different CPUs or core counts")
    p.add_argument("--allow-missing", action="store_true", help="pass rows the gate cannot "
                   "judge (ok in BASE but crashed, skipped or too few samples in NEW; no raw "
                   "samples) instead of failing them")
    p.add_argument("--markdown", metavar="OUT", help="write the comparison as Markdown (a "
                   "pull-request comment)")
    p.add_argument("--json", metavar="OUT", help="write the comparison as JSON")
    wide_flag(p)
    force_flag(p)
    add_html_flag(p)


command("compare", "regression gate: compare two results files (or one A/B file); exit 1 on "
        "a latency, size or memory regression")(_compare).configure = _compare_flags


# --------------------------------------------------------------------------------------------
# claims


def _claims(args: argparse.Namespace) -> int:
    from sparsebench import claims
    from sparsebench.archs import ARCHS
    from sparsebench.registry import split_list

    if args.grid:
        grid = claims.load_grid(Path(args.grid))
        if args.seeds:
            grid.seeds = split_list(args.seeds, int)
    else:
        configs = [claims.parse_config(c) for c in args.config] or [
            claims.parse_config(m) for m in split_list(args.methods)]
        grid = claims.Grid(arch=args.arch, dataset=args.dataset, configs=configs,
                           seeds=split_list(args.seeds or "0,1,2", int),
                           common=shlex.split(args.train_args or ""),
                           subset=split_list(args.correlation_subset or ""))
        claims.check_grid(grid)
    if args.only:
        keep = split_list(args.only)
        unknown = [k for k in keep if k not in {c.name for c in grid.configs}]
        if unknown:
            raise SparsebenchError(f"--only names unknown configurations: {', '.join(unknown)}")
        grid.configs = [c for c in grid.configs if c.name in keep]
    ARCHS.check(grid.arch)
    if args.jobs < 1 or args.threads < 1:
        raise SparsebenchError("--jobs and --threads must be at least 1")
    runs = Path(args.runs)
    summaries = Path(args.summaries) if args.summaries else runs / "summaries"
    from sparsebench.outputs import check_output_file

    check_output_file(args.markdown, args.force, "--markdown")
    check_output_file(args.plot, args.force, "--plot")
    out = console()
    if not args.table_only:
        total = len(grid.runs())
        with progress_display() as progress:
            task = progress.add_task(f"{grid.arch}: {total} runs", total=total)
            done = sum(claims.is_done(grid, c, s, runs, summaries) for c, s in grid.runs())
            progress.advance(task, done)
            out.print(f"{grid.arch}: {total} runs, {done} done, {total - done} to train "
                      f"({args.jobs} at a time, {args.threads} thread(s) each)")
            failures = claims.run_grid(
                grid, runs, summaries, args.jobs, args.threads,
                lambda what: (progress.advance(task), out.print(f"finished {what}")),
                executor=args.executor, address=args.address)
        for f in failures:
            out.print(f"[red]failed[/] {f}")
    results = claims.collect(grid, summaries)
    text = claims.markdown(grid, results, command_line())
    out.print(text)
    if args.gate:
        out.print("\n".join(["gate:"] + claims.gate(results, grid)))
    if args.markdown:
        claims.write_markdown(Path(args.markdown), text)
        out.print(f"wrote {args.markdown}")
    if args.plot:
        claims.plot(grid, results, Path(args.plot))
        out.print(f"wrote {args.plot}")
    return 0


def _claims_flags(p: argparse.ArgumentParser) -> None:
    from sparsebench.catalog import EXECUTORS, METHODS

    g = p.add_argument_group("the grid (a TOML file, or flags)")
    g.add_argument("--grid", metavar="FILE.toml", help="a grid file: arch, dataset, seeds, "
                   "train_args, [configs] NAME = \"METHOD flags\", correlation_subset "
                   "(example: docs/claims-vgg11/grid.toml)")
    g.add_argument("--arch", default="lenet5", help="architecture (default lenet5)")
    g.add_argument("--dataset", default="fashion-mnist", help="dataset (default fashion-mnist)")
    g.add_argument("--methods", default="dense,dropout,prune-l,prune-s,prune-r",
                   help=f"comma-separated methods, one configuration each (from: "
                        f"{', '.join(METHODS)})")
    g.add_argument("--config", action="append", default=[], metavar="NAME=METHOD [FLAGS]",
                   help="a named configuration with its own train flags, repeatable, e.g. "
                        "\"prune-s-r1=prune-s --retrain-period 1\" (replaces --methods)")
    g.add_argument("--seeds", help="comma-separated seeds (default 0,1,2, or the grid's)")
    g.add_argument("--train-args", default="",
                   help="train flags shared by every run, quoted, e.g. \"--epochs 8 "
                        "--fractions 0.5,0.85,0.5 --start 1 --end 5 --retrain-period 1\"")
    g.add_argument("--correlation-subset", help="configurations for the first correlation "
                   "(paper B's Figure 2: Prune_S 1%%, Prune_S 13%%, Prune_L 13%%)")
    g.add_argument("--only", help="train/tabulate only these configurations (comma-separated)")
    g = p.add_argument_group("where and how")
    g.add_argument("--runs", default="runs/claims", help="folder for the run checkpoints")
    g.add_argument("--summaries", help="folder for the finished runs' summaries (histories, "
                   "no weights; default RUNS/summaries): runs found there are skipped")
    g.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    g.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    g.add_argument("--executor", choices=EXECUTORS, default="local", help="local process pool "
                   "(default) or ray (pip install ray; a local Ray instance unless --address)")
    g.add_argument("--address", help="address of an existing Ray cluster (with --executor ray)")
    g = p.add_argument_group("output")
    g.add_argument("--markdown", help="write the table to this file")
    g.add_argument("--plot", metavar="OUT.png", help="plot test accuracy vs mean stability")
    g.add_argument("--gate", action="store_true", help="print the regime checks: dense "
                   "overfitting, lowest post-event accuracy, plateau after the last event")
    g.add_argument("--table-only", action="store_true", help="do not train; tabulate only")
    force_flag(g)


command("claims", "reproduce the papers' claim at small scale: several seeds per method, "
        "one table")(_claims).configure = _claims_flags


# --------------------------------------------------------------------------------------------
# targets / profile / export-c (logic in sparsebench.embedded.command)


def add_input_flag(p: argparse.ArgumentParser) -> None:
    """``--input NAME:SHAPE:DTYPE[:LOW-HIGH]`` (repeatable; parsed by model_io)."""
    p.add_argument("--input", action="append", metavar="NAME:SHAPE:DTYPE[:LOW-HIGH]",
                   help="one model input by name: batch-first shape (B or a number first, "
                        "replaced by --batch), dtype, value range [LOW, HIGH); repeatable, e.g. "
                        "--input input_ids:Bx128:int64:0-30522 (default: from the graph or the "
                        "forward signature)")


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?",
                   help="a checkpoint, state_dict (with --arch), pickled torch module (traceable "
                        "by torch.fx), TorchScript, torch.export .pt2 or ONNX file (default: "
                        "the zoo's lenet5 prune-l)")
    p.add_argument("--arch", help="architecture for a state_dict; with no model file, a "
                   "torchvision:NAME or timm:NAME architecture is built (random weights)")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28 (when the file "
                   "does not say and it cannot be inferred)")
    add_input_flag(p)
    p.add_argument("--trust", action="store_true", help="allow full unpickling (runs code from "
                   "the file: only for files you trust)")


def _targets(args: argparse.Namespace) -> int:
    from sparsebench.embedded.command import run_targets

    return run_targets(args, console())


def _targets_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE.toml", help="show these target files "
                   "instead of the shipped ones (validates them)")
    p.add_argument("--json", action="store_true", help="print the targets as JSON")
    wide_flag(p)


command("targets", "list the embedded targets profile knows (RAM, flash, clock, SIMD, "
        "sources)")(_targets).configure = _targets_flags


def _profile(args: argparse.Namespace) -> int:
    from sparsebench.embedded.command import run_profile

    if args.model is None and args.arch and _zoo_arch(args.arch):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="sparsebench-zoo-") as tmp:
            args.model = _zoo_model_file(args.arch, tmp, 0)
            return run_profile(args, console())
    args.model = args.model or str(DEFAULT_MODEL)
    return run_profile(args, console())


def _profile_flags(p: argparse.ArgumentParser) -> None:
    from sparsebench.embedded.targets import builtin_names

    _model_flags(p)
    p.add_argument("--target", required=True, help=f"a target name ({', '.join(builtin_names())};"
                   " see `sparsebench targets`) "
                   "or a TOML file describing your board")
    p.add_argument("--encoding", default="best", help="weights for the verdict: best (cheapest "
                   "per layer, default), lossless (cheapest fp32), c (what export-c writes), or "
                   "one encoding everywhere (fp32-dense, int8-csr16, ...; see docs/profile.md)")
    p.add_argument("--block", default="4x4", help="block of the block-sparse encoding (RxC)")
    p.add_argument("--json", metavar="OUT", help="write the profile as JSON ('-': to stdout "
                   "instead of the tables)")
    p.add_argument("--markdown", metavar="OUT", help="write the report as Markdown")
    wide_flag(p)
    p.add_argument("--no-host", action="store_true", help="skip timing torch on this machine")
    force_flag(p)
    g = p.add_argument_group("cross-build (needs the target's compiler and QEMU)")
    g.add_argument("--build", action="store_true", help="export C, cross-compile, read the real "
                   "section sizes, run under QEMU, check against torch, count instructions")
    g.add_argument("--build-encoding", default="verdict", help="C encodings: verdict (the "
                   "verdict's, default), auto (smaller of fp32 dense/csr16 per layer), int8 "
                   "(smallest int8 per layer), dense, csr, or one encoding for every layer "
                   "(int8-csr8, fp32-bitmask, ...)")
    g.add_argument("--build-dir", help="keep the sources and the ELF here (default: a temporary "
                   "folder)")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds per emulator run")
    _int8_flags(p)
    p.add_argument("--no-accuracy", action="store_true", help="skip the fp32/int8 accuracy on "
                   "the checkpoint's test set")
    add_html_flag(p)


def _int8_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("int8 (TFLite scheme: activation scales calibrated on real data)")
    g.add_argument("--calibration", type=int, default=500, metavar="N", help="calibrate the "
                   "int8 activation ranges on N training images of the checkpoint's dataset "
                   "(default 500)")
    g.add_argument("--data-dir", help="where the checkpoint's dataset is (default: its usual "
                   "place)")


command("profile", "does this model fit an embedded target, and how fast will it run? "
        "Exit 0 fits, 1 does not fit, 2 error")(_profile).configure = _profile_flags


def _export_c(args: argparse.Namespace) -> int:
    from sparsebench.embedded.command import run_export

    args.model = args.model or str(DEFAULT_MODEL)
    return run_export(args, console())


def _export_c_flags(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument("--encoding", default="auto", help="auto (smaller of fp32 dense/csr16 per "
                   "layer, default), dense (fp32), csr (fp32 values, 16-bit indices), int8 "
                   "(smallest int8 per layer), or one of fp32-/int8-dense, -csr8, -csr16, "
                   "-csr32, -bitmask, -bsr")
    p.add_argument("--block", default="4x4", help="block of the block-sparse encodings (RxC)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the test vector's input (fp32; "
                   "int8 uses the first test image of the checkpoint's dataset)")
    _int8_flags(p)
    force_flag(p)


command("export-c", "write a model as self-contained C99 (const weights, static arena, test "
        "vector)")(_export_c).configure = _export_c_flags


def _zoo_arch(arch: str) -> bool:
    from sparsebench.catalog import zoo_split

    return zoo_split(arch) is not None


def _zoo_model_file(arch: str, folder: str, seed: int) -> str:
    """A torchvision:/timm: architecture with random weights, as a checkpoint in ``folder``
    (what measure and profile run when --arch is given without a model file)."""
    import torch

    from sparsebench.archs import create_model
    from sparsebench.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = create_model(arch)
    shape = [int(d) for d in model.input_shape]
    path = Path(folder) / f"{arch.replace(':', '-').replace('/', '-')}.pt"
    save_checkpoint({"arch": arch, "arch_kwargs": {"in_channels": shape[0],
                                                   "input_size": shape[-1]},
                     "input_shape": shape, "state_dict": model.state_dict(),
                     "method": "dense"}, path)
    return str(path)


# --------------------------------------------------------------------------------------------
# sweep, build-kernels (implemented in sparsebench/sweep.py and sparsebench/native/)


def _sweep(args: argparse.Namespace) -> int:
    from sparsebench.sweep import check_sweep_args

    check_sweep_args(args)  # checked again by run_sweep; here before torch is imported
    from sparsebench.sweep import run_sweep

    return run_sweep(args, console(), progress_display)


def _sweep_flags(p: argparse.ArgumentParser) -> None:
    from sparsebench.catalog import ARCHS, DEFAULT_SPARSITIES, TARGETS
    from sparsebench.measure.harness import add_timing_flags

    p.add_argument("model", nargs="?", help="a model file to prune (any file measure takes: "
                   "checkpoint, state_dict with --arch, pickled module with --trust, ONNX, ...)")
    p.add_argument("--arch", help="architecture to create randomly initialised (with no model "
                   "file), or of a state_dict: " + ", ".join(ARCHS.names())
                   + ", torchvision:NAME, timm:NAME")
    p.add_argument("--sparsities", default=DEFAULT_SPARSITIES,
                   help=f"percent of each pruned layer's units removed (default "
                        f"{DEFAULT_SPARSITIES})")
    p.add_argument("--target", default="prune-s", help=f"which units go: {', '.join(TARGETS)} "
                   "(largest, smallest score or random; default prune-s: magnitude pruning)")
    p.add_argument("--granularity", default="weight", help="unit: weight (default) or filter "
                   "(output channels/neurons; a unit's consumer columns go with it)")
    p.add_argument("--formats", default="dense,csr", help="formats (default dense,csr)")
    p.add_argument("--backends", default="torch,onnxruntime,native",
                   help="backends (default torch,onnxruntime,native; onnxruntime is the "
                        "crossover baseline)")
    p.add_argument("--batch", type=ints, default="1", help="batch sizes, e.g. 1,8,32 (default 1)")
    p.add_argument("--threads", type=ints, default="1",
                   help="thread counts, e.g. 1,2 (default 1)")
    p.add_argument("--in-channels", type=int, help="input channels for --arch (default: per "
                   "architecture, e.g. ffn 1024, vgg11_bn 3)")
    p.add_argument("--input-size", type=int, help="input side for --arch (ffn: 1 = vectors)")
    p.add_argument("--input-shape", help="per-sample input shape of a model file that does not "
                   "record it")
    add_input_flag(p)
    p.add_argument("--trust", action="store_true", help="allow full unpickling of the model file")
    p.add_argument("--index-dtype", default="auto", choices=("auto", "int16", "int32"),
                   help="CSR/BSR column index width (auto: int16 when the columns fit)")
    p.add_argument("--json", metavar="OUT", help="results JSON (rows, raw samples, crossovers)")
    p.add_argument("--markdown", metavar="OUT", help="the sweep tables as Markdown")
    fresh_workers_flag(p)
    wide_flag(p)
    p.add_argument("--plot", metavar="OUT.png", help="latency/speedup plot (default: "
                   "sweep-NAME.png in the current folder)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot")
    p.add_argument("--save-models", metavar="DIR", help="keep the pruned models here, in the "
                   "input's kind (ONNX in: ONNX out; torch: checkpoint, state_dict or module; "
                   "default: a temporary folder)")
    add_timing_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the input")
    force_flag(p)
    add_html_flag(p)


command("sweep", "prune a model (or an architecture) to a list of sparsities, measure every "
        "execution in one run; latency/speedup plots and crossovers")(_sweep) \
    .configure = _sweep_flags


def _build_kernels(args: argparse.Namespace) -> int:
    from sparsebench import native

    info = native.build_info(force=args.force)
    out = console()
    out.print(f"kernels: {info['path']}\n  ISA {info['isa']}, ABI {info['abi']}, "
              f"{info['compiler']} {info['flags']}")
    if args.check:
        err = native.self_test()
        if not err <= 1e-4:
            raise SparsebenchError(f"kernel self-test failed: max rel err {err:.2e}")
        out.print(f"  self-test ok (max rel err {err:.1e})")
    return 0


def _build_kernels_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--check", action="store_true", help="run a small self-test afterwards")


command("build-kernels", "compile the native kernels (kernels/) for this CPU into the cache")(
    _build_kernels).configure = _build_kernels_flags


# --------------------------------------------------------------------------------------------
# report (sparsebench/report/)


def _report(args: argparse.Namespace) -> int:
    from sparsebench.report import run_report

    return run_report(args, console())


def _report_flags(p: argparse.ArgumentParser) -> None:
    from sparsebench.report import add_report_flags

    add_report_flags(p)


command("report", "an HTML report (one self-contained file) of results from measure, sweep, "
        "compare or profile (their --json)")(_report).configure = _report_flags


# --------------------------------------------------------------------------------------------
# info


def _info(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sparsebench.checkpoint import load_checkpoint, model_from_checkpoint
    from sparsebench.outputs import atomic_write_text, check_output_file
    from sparsebench.sparsity import layer_rows

    check_output_file(args.card, args.force, "--card")
    try:
        ckpt = load_checkpoint(args.model)
    except SparsebenchError as not_checkpoint:
        return _info_model_file(args, not_checkpoint)
    model = model_from_checkpoint(ckpt)
    out = console()
    cfg = ckpt.get("config", {})
    method = ckpt.get("method")
    if method not in ("dense", "dropout", None):  # granularity only means something when pruned
        method = f"{method} ({cfg.get('granularity', '-')})"
    out.print(f"[bold]{args.model}[/]: {ckpt['arch']} {ckpt.get('arch_kwargs')} | method "
              f"{method} | dataset "
              f"{(ckpt.get('dataset') or {}).get('name')} | seed {ckpt.get('seed')} | "
              f"input {ckpt.get('input_shape')}")
    table = Table("layer", "type", "shape", "params", "nonzero", "sparsity", "units alive")
    rows = layer_rows(model, ckpt.get("unit_masks", {}))
    for r in rows:
        table.add_row(r["name"], r["type"], "x".join(map(str, r["shape"])), f"{r['params']:,}",
                      f"{r['nonzero']:,}", f"{100 * r['sparsity']:.1f}%", r["alive"])
    total = sum(r["params"] for r in rows)
    nonzero = sum(r["nonzero"] for r in rows)
    table.add_row("total", "", "", f"{total:,}", f"{nonzero:,}",
                  f"{100 * (1 - nonzero / max(1, total)):.1f}%", "", style="bold")
    out.print(table)
    s = ckpt.get("summary") or {}
    if s:
        from sparsebench.train import accuracy_phrase, stability_phrase

        out.print(f"{accuracy_phrase(s)}, generalization gap {s['generalization_gap']:.2f}, "
                  f"{stability_phrase(s)}, trained {s['wall_seconds']:.0f}s")
    flat = (ckpt.get("history") or {}).get("flatness")
    if flat:
        out.print(f"flatness on {flat['samples']} test images: Hessian top-{flat['hessian_top_k']}"
                  f" eigenvalues sum {flat['hessian_top_sum']:.4g} ("
                  + ", ".join(f"{v:.4g}" for v in flat["hessian_top_eigenvalues"])
                  + f"), gradient covariance trace {flat['grad_cov_trace']:.4g}")
    for e in (ckpt.get("history") or {}).get("events", []) if args.events else []:
        out.print(f"  event @ epoch {e['epoch']}: pre {e['pre_acc']:.2f}% post "
                  f"{e['post_acc']:.2f}% instability {e['instability']:.4f}")
    if args.card:
        from sparsebench.cards import card_markdown

        atomic_write_text(args.card, card_markdown(Path(args.model).stem, ckpt, model))
        out.print(f"wrote {args.card}")
    return 0


def _info_model_file(args: argparse.Namespace, not_checkpoint: SparsebenchError) -> int:
    """``info`` of any other model file ``measure`` accepts: kind, input, notes, layers and
    the exact bytes and converted/total layers of each default format."""
    from rich.table import Table

    from sparsebench.loading import load_model, parse_input_shape
    from sparsebench.measure.harness import DEFAULT_FORMATS, model_info
    from sparsebench.sparsity import layer_rows

    if args.card:
        raise not_checkpoint  # model cards describe sparsebench checkpoints
    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    try:
        loaded = load_model(args.model, arch=args.arch, input_shape=shape, trust=args.trust)
    except SparsebenchError as exc:
        generic = ("is neither", "corrupt or truncated")
        raise (not_checkpoint if any(g in str(exc) for g in generic) else exc) from None
    out = console()
    info = model_info(loaded, list(DEFAULT_FORMATS), "auto")
    out.print(f"[bold]{args.model}[/]: {loaded.kind}"
              + (f" ({loaded.arch})" if loaded.arch else "")
              + f" | input {'x'.join(map(str, loaded.input_shape))}")
    for note in info["notes"]:
        out.print(f"  {note}")
    if loaded.module is None:
        return 0
    table = Table("layer", "type", "shape", "params", "nonzero", "sparsity")
    for r in layer_rows(loaded.module):
        table.add_row(r["name"], r["type"], "x".join(map(str, r["shape"])), f"{r['params']:,}",
                      f"{r['nonzero']:,}", f"{100 * r['sparsity']:.1f}%")
    table.add_row("total", "", "", f"{info['params']:,}", f"{info['nonzero']:,}",
                  f"{100 * info['sparsity']:.1f}%", style="bold")
    out.print(table)
    sizes = Table("format", "bytes", "layers converted", "kept dense")
    for fmt, f in info["formats"].items():
        if "error" in f:
            sizes.add_row(fmt, "-", "-", f["error"])
            continue
        counts = f["layer_counts"]
        dense = "; ".join(f"{k}: {v}" for k, v in list(counts["dense"].items())[:3])
        sizes.add_row(fmt, f"{f['weight_bytes']:,}", f"{counts['converted']}/{counts['total']}",
                      dense)
    out.print(sizes)
    return 0


def _info_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=str(DEFAULT_MODEL),
                   help="a sparsebench checkpoint or any model file measure accepts "
                   "(default: the zoo's lenet5 prune-l)")
    p.add_argument("--arch", help="architecture for a state_dict: a registry name or "
                   "module:callable")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28 (when the file "
                   "does not say)")
    p.add_argument("--trust", action="store_true", help="allow full unpickling of a model file "
                   "(runs code from the file: only for files you trust)")
    p.add_argument("--events", action="store_true", help="list every pruning event")
    p.add_argument("--card", metavar="OUT.md", help="write a Markdown model card")
    force_flag(p)


command("info", "show a model's layers, sparsity, sizes (and a checkpoint's training "
        "metrics)")(_info) \
    .configure = _info_flags


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sparsebench",
        description="Train with the pruning methods of Bartoldson et al. and measure what "
                    "sparsity buys at CPU inference.")
    parser.add_argument("--version", action="version", version=f"sparsebench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn in COMMANDS.items():
        p = sub.add_parser(name, help=fn.help, description=fn.help)
        fn.configure(p)
        p.set_defaults(func=fn)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: running workers are killed, completed rows are kept."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    record_argv(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error (Parser.error)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except SparsebenchError as exc:
        print(f"sparsebench: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("sparsebench: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("sparsebench: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
