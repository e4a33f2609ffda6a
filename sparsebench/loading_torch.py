"""torch models as people save them: pruning state, TorchScript inputs, ``torch.export`` files.

Used by ``loading.py``:

* ``torch.nn.utils.prune`` state is made permanent at load (``prune.remove`` semantics:
  ``weight = weight_orig * weight_mask``), from hooks still attached to a module or from a
  state_dict holding ``NAME_orig`` + ``NAME_mask`` pairs (``fold_prune_state``);
* ``torchscript_input_shape`` reads a TorchScript module's input from its forward signature and
  its first layer, confirmed by trial runs;
* ``.pt2`` archives (``torch.export.save``) load with ``torch.export.load``; the program's
  ``module()`` gets real ``nn.Conv2d``/``nn.Linear`` submodules for its ``aten.conv2d`` /
  ``aten.linear`` calls on parameters, so every format can convert them.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench.errors import SparsebenchError

_ASK = "pass --input-shape (per sample, no batch dimension)"


# --- torch.nn.utils.prune ---------------------------------------------------------------------

def apply_prune_masks(module: nn.Module) -> list[str]:
    """Make every ``torch.nn.utils.prune`` reparametrisation of ``module`` permanent, in place
    (hooks removed, ``NAME = NAME_orig * NAME_mask`` as a plain parameter); returns the
    ``module.NAME`` entries applied."""
    from torch.nn.utils import prune

    applied = []
    for name, mod in module.named_modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(mod, hook._tensor_name)
                applied.append(f"{name}.{hook._tensor_name}".lstrip("."))
        for pname in [p for p in mod._parameters if p.endswith("_orig")]:
            base, mask = pname[: -len("_orig")], mod._buffers.get(f"{pname[:-5]}_mask")
            if mask is None:
                continue
            orig = mod._parameters.pop(pname)
            del mod._buffers[f"{base}_mask"]
            mod.__dict__.pop(base, None)
            mod.register_parameter(base, nn.Parameter((orig * mask).detach(),
                                                      requires_grad=orig.requires_grad))
            applied.append(f"{name}.{base}".lstrip("."))
    return applied


def fold_prune_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """A state_dict with each ``K_orig`` + ``K_mask`` pair replaced by ``K = orig * mask``;
    returns it and how many pairs were folded."""
    out = dict(state)
    folded = 0
    for key in [k for k in state if k.endswith("_orig")]:
        base = key[: -len("_orig")]
        mask = state.get(f"{base}_mask")
        if mask is None or base in state or tuple(mask.shape) != tuple(state[key].shape):
            continue
        out[base] = (state[key] * mask).to(state[key].dtype)
        del out[key], out[f"{base}_mask"]
        folded += 1
    return out, folded


def pruned_note(entries: list[str] | int) -> str:
    count = entries if isinstance(entries, int) else len(entries)
    return (f"applied torch.nn.utils.prune masks to {count} tensor(s) "
            "(weight = weight_orig * weight_mask)")


# --- TorchScript inputs -------------------------------------------------------------------------

_SIDES = (28, 32, 64, 96, 128, 224, 256, 299)


def _forward_inputs(module: Any) -> list[str]:
    try:
        args = module.forward.schema.arguments[1:]
    except Exception:  # noqa: BLE001 - a module without a scripted forward
        return []
    return [a.name for a in args if not a.has_default_value()]


def _first_layer(module: Any) -> tuple[str, torch.Tensor] | None:
    for _, mod in module.named_modules():
        kind = getattr(mod, "original_name", type(mod).__name__)
        if kind in ("Conv2d", "Linear"):
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.Tensor):
                return kind, w
    return None


def _runs(module: Any, shape: tuple[int, ...]) -> bool:
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module(torch.zeros(1, *shape))
        return True
    except Exception:  # noqa: BLE001 - the shape does not fit
        return False


def torchscript_input_shape(p: Path, module: Any) -> tuple[tuple[int, ...], str]:
    """(per-sample input shape, note) of a TorchScript module saved without one: one tensor
    argument of ``forward``, sized from the first Conv2d/Linear and confirmed by a trial run
    (a CNN that runs on several sizes is ambiguous). Otherwise a one-line error asking for
    ``--input-shape``."""
    names = _forward_inputs(module)
    if len(names) != 1:
        raise SparsebenchError(f"{p} is TorchScript whose forward takes {len(names)} inputs "
                               f"({', '.join(names) or 'none'}); cannot infer them: {_ASK}")
    first = _first_layer(module)
    if first is None:
        raise SparsebenchError(f"{p} is TorchScript with no Conv2d/Linear to size its input "
                               f"{names[0]!r} from: {_ASK}")
    kind, w = first
    if kind == "Linear":
        trials = [(int(w.shape[1]),)]
    else:
        trials = [(int(w.shape[1]), s, s) for s in _SIDES]
    fits: list[tuple[int, ...]] = []
    for shape in trials:
        if _runs(module, shape):
            fits.append(shape)
            if len(fits) > 1:
                shown = " and ".join("x".join(map(str, f)) for f in fits)
                raise SparsebenchError(f"{p} is TorchScript that runs on several input sizes "
                                       f"({shown}, ...): {_ASK}")
    if not fits:
        raise SparsebenchError(f"{p} is TorchScript whose input {names[0]!r} could not be "
                               f"sized from its first layer ({kind} {tuple(w.shape)}): {_ASK}")
    shape = fits[0]
    return shape, (f"input {names[0]!r} of shape {'x'.join(map(str, shape))} inferred from the "
                   f"first layer ({kind}) and a trial run")


# --- torch.export (.pt2) --------------------------------------------------------------------------

def is_pt2(p: Path) -> bool:
    """A ``torch.export.save`` archive (``archive_format`` says ``pt2``)."""
    try:
        with zipfile.ZipFile(p) as zf:
            fmt = next((n for n in zf.namelist() if n.endswith("/archive_format")
                        or n == "archive_format"), None)
            return fmt is not None and zf.read(fmt).strip() == b"pt2"
    except (zipfile.BadZipFile, OSError, KeyError):
        return False


def pt2_pickles(p: Path) -> str | None:
    """What in a ``.pt2`` archive ``torch.export.load`` would fully unpickle (None: nothing:
    raw tensors only and sample inputs that load with ``weights_only=True``)."""
    with zipfile.ZipFile(p) as zf:
        names = zf.namelist()
        configs = [n for n in names if n.endswith(("_weights_config.json",
                                                   "_constants_config.json"))]
        if not configs:
            return "an archive in the legacy format (pickled weights)"
        for name in configs:
            try:
                entries = json.loads(zf.read(name)).get("config", {})
            except (ValueError, AttributeError):
                return f"an unreadable {name.rsplit('/', 1)[-1]}"
            for fqn, meta in entries.items():
                path = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or path.startswith(("custom_obj", "opaque_obj")):
                    return f"the pickled object {fqn!r}"
        for name in (n for n in names if "/sample_inputs/" in n):
            try:
                torch.load(io.BytesIO(zf.read(name)), map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - anything but plain tensors
                return "pickled sample inputs"
    return None


def _example_shape(p: Path, program: Any) -> tuple[int, ...] | None:
    args = None
    example = getattr(program, "example_inputs", None)
    if example:
        args = [a for a in list(example[0]) + list(example[1].values())]
    if not args:
        user = [n for n in program.graph.nodes if n.op == "placeholder"
                and n.name in program.graph_signature.user_inputs]
        args = [n.meta.get("val") for n in user]
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise SparsebenchError(f"{p} is a torch.export program with {len(args)} inputs; "
                               "sparsebench reads one input tensor here: pass --input-shape")
    shape = tuple(args[0].shape)
    if len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return tuple(int(d) for d in shape[1:])


def _static_batch(program: Any) -> int | None:
    """The batch size the program was specialised to (its guards refuse others), or None."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() and isinstance(val.shape[0], int):
                return int(val.shape[0])
    return None


def _owner(gm: nn.Module, target: str) -> tuple[str, nn.Module] | None:
    """(name, module) holding the parameter ``target`` when it holds just a weight and a bias
    (so a Conv2d/Linear can take its place), else None."""
    parent, _, attr = target.rpartition(".")
    mod = gm.get_submodule(parent) if parent else None
    if mod is None or attr != "weight" or list(mod.children()) or list(mod.buffers(False)):
        return None
    return (parent, mod) if set(mod._parameters) <= {"weight", "bias"} else None


def layers_as_modules(gm: Any) -> int:
    """Rewrite ``aten.linear``/``aten.conv2d`` calls on parameters of an ``ExportedProgram``'s
    ``module()`` as calls of ``nn.Linear``/``nn.Conv2d`` submodules sharing those parameters
    (in place); returns how many were rewritten."""
    aten = torch.ops.aten
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.linear.default,
                                                             aten.conv2d.default):
            continue
        args = list(node.args) + [None] * 7
        x, w, b = args[0], args[1], args[2]
        if getattr(w, "op", None) != "get_attr" or (b is not None
                                                    and getattr(b, "op", None) != "get_attr"):
            continue
        found = _owner(gm, str(w.target))
        if found is None:
            continue
        name, holder = found
        weight = holder.weight
        bias = getattr(holder, "bias", None) if b is not None else None
        if b is not None and f"{name}.bias" != str(b.target):
            continue
        if node.target is aten.linear.default:
            layer: nn.Module = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0],
                                                  bias is not None)
        else:
            stride, padding, dilation = (args[i] or d for i, d in ((3, [1, 1]), (4, [0, 0]),
                                                                   (5, [1, 1])))
            groups = int(args[6] or 1)
            if not all(isinstance(v, (list, tuple)) for v in (stride, padding, dilation)):
                continue
            layer = nn.utils.skip_init(nn.Conv2d, weight.shape[1] * groups, weight.shape[0],
                                       tuple(weight.shape[2:]), tuple(stride), tuple(padding),
                                       tuple(dilation), groups, bias is not None)
        layer.weight = weight
        if bias is not None:
            layer.bias = bias
        parent, _, attr = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, layer)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (x,))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        rewritten += 1
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()
    return rewritten


def load_pt2(p: Path, input_shape: tuple[int, ...] | None, trust: bool
             ) -> tuple[nn.Module, tuple[int, ...], list[str]]:
    """(module, per-sample input shape, notes) of a ``torch.export`` archive."""
    notes = []
    needs = pt2_pickles(p)
    if needs is not None:
        if not trust:
            raise SparsebenchError(f"{p} is a torch.export program whose loading needs full "
                                   f"unpickling ({needs}, which could run code); pass --trust "
                                   "if you trust its source")
        notes.append(f"loaded with torch.export.load, which unpickled {needs} (--trust)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(p))
    except Exception as exc:  # noqa: BLE001 - version skew, missing custom ops, bad archives
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SparsebenchError(f"{p} is a torch.export archive torch.export.load cannot read "
                               f"({type(exc).__name__}: {first})") from None
    shape = _example_shape(p, program)
    if input_shape is not None:
        if shape is not None and tuple(input_shape) != shape:
            notes.append(f"input shape {tuple(input_shape)} given; the program was exported "
                         f"with {shape}")
        shape = tuple(input_shape)
    if shape is None:
        raise SparsebenchError(f"{p} is a torch.export program with a symbolic input shape: "
                               f"{_ASK}")
    batch = _static_batch(program)
    if batch is not None:
        notes.append(f"exported with a static batch of {batch}: its guards refuse other batch "
                     "sizes (export with a torch.export.Dim batch to measure them)")
    exported = program.module()
    count = layers_as_modules(exported)
    # a plain GraphModule of the same graph: the program's own module refuses eval()/train()
    # (the mode is baked in at export time)
    module = torch.fx.GraphModule(exported, exported.graph)
    notes.append(f"torch.export program: {count} aten conv2d/linear call(s) as layers")
    return module, shape, notes
