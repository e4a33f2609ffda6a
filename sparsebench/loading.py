"""Load any model file sparsebench can measure, safely by default.

Detected in order: ONNX (converted to torch by ``graph.onnx_torch``; the original bytes are kept
for onnxruntime), TorchScript (run as given for dense, read as its ONNX graph by the other
formats; input inferred when not given), a ``torch.export`` ``.pt2`` archive, then
``torch.load(weights_only=True)`` with an allow-list of ``torch.nn`` and sparsebench module
classes: a sparsebench checkpoint, a pickled ``nn.Module`` or a state_dict (which needs
``arch``). A pickle that references any other class or function needs full unpickling, which
can run code: only with ``trust=True``. ``torch.nn.utils.prune`` state (hooks or
``_orig``/``_mask`` pairs) is applied at load; see ``loading_torch``.
"""

from __future__ import annotations

import collections
import importlib
import inspect
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench.archs import ARCHS, create_model, default_input
from sparsebench.catalog import check_arch, zoo_split
from sparsebench.checkpoint import (check_file, first_sentence, model_from_checkpoint,
                                   refused_global, validate_checkpoint)
from sparsebench.errors import SparsebenchError
from sparsebench.loading_torch import (apply_prune_masks, fold_prune_state, is_pt2, load_pt2,
                                       pruned_note, torchscript_input_shape)
from sparsebench.model_io import (DEFAULT_SEQUENCE, InputSpec, apply_flags, float_input,
                                  forward_inputs, signature_inputs, with_defaults)
from sparsebench.registry import resolve

KINDS = ("checkpoint", "state-dict", "pickled-module", "torchscript", "exported-program", "onnx")
_NEITHER = "is neither a sparsebench checkpoint, a state_dict, a torch module, TorchScript nor ONNX"


@dataclass
class LoadedModel:
    """A model ready to measure: ``module`` is in eval mode with any checkpoint masks applied.
    ``inputs`` are its inputs in call order (``input_shape`` is the first one's shape, for code
    that handles one input); ``module.input_specs`` records them for the stages that only see
    the module."""

    name: str
    path: str
    kind: str
    module: nn.Module | None
    input_shape: tuple[int, ...]
    arch: str | None = None
    checkpoint: dict[str, Any] | None = None
    onnx_bytes: bytes | None = None
    onnx_error: str | None = None
    swappable: bool = True
    notes: list[str] = field(default_factory=list)
    inputs: list[InputSpec] = field(default_factory=list)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` or ``"1x28x28"`` -> ``(1, 28, 28)``; anything else is a one-line error."""
    parts = [s.strip() for s in re.split(r"[,xX]", str(text).strip().strip("()[]"))]
    try:
        shape = tuple(int(s) for s in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise SparsebenchError(f"bad input shape {text!r}: expected positive integers like "
                               "1,28,28 or 1x28x28 (per sample, no batch dimension)")
    return shape


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    marker = re.search(r"WeightsUnpickler error: (.*)", text)
    if marker:
        return first_sentence(marker.group(1))
    line = first_sentence(text)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


@lru_cache(maxsize=1)
def safe_globals() -> tuple[Any, ...]:
    """What a weights-only load may construct: torch.nn and sparsebench module classes,
    parameters and the containers their pickles use (no functions that run code)."""
    import sparsebench.archs as archs

    found: set[Any] = set()
    spaces = [vars(torch.nn.modules), vars(archs)]
    spaces += [vars(m) for m in vars(torch.nn.modules).values()
               if inspect.ismodule(m) and m.__name__.startswith("torch.nn.modules.")]
    for space in spaces:
        found.update(v for v in space.values()
                     if inspect.isclass(v) and issubclass(v, nn.Module))
    found.update({archs.PrunableLayer, nn.parameter.Parameter, torch._utils._rebuild_parameter,
                  torch._utils._rebuild_tensor_v2, collections.OrderedDict, torch.Size, set})
    extra = getattr(torch._utils, "_rebuild_parameter_with_state", None)
    if extra is not None:
        found.add(extra)
    return tuple(sorted(found, key=lambda o: f"{o.__module__}.{o.__qualname__}"))


class _NeedsTrust(Exception):
    pass


def _weights_only_load(p: Path) -> Any:
    try:
        with torch.serialization.safe_globals(list(safe_globals())):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        name = refused_global(exc)
        if name:
            raise _NeedsTrust(name) from exc
        raise


def load_model(path: str | Path, *, arch: str | None = None,
               input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
               trust: bool = False, inputs: list[InputSpec] | None = None) -> LoadedModel:
    """Detect the file's kind and load it (see the module docstring); one-line errors.

    ``arch`` (a registry name or ``module:callable``) rebuilds a state_dict's model;
    ``input_shape`` (per sample) is used where the file does not record one; ``num_classes``
    overrides the head size read from a state_dict; ``trust`` allows full unpickling;
    ``inputs`` (``--input`` flags) set inputs by name: shape, dtype, value range.
    """
    p = check_file(path, "model")
    given = list(inputs or [])
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d <= 0 for d in input_shape):
            raise SparsebenchError(f"bad input shape {input_shape}: expected positive integers")
    with open(p, "rb") as fh:
        head = fh.read(4)
    is_zip, is_pickle = head[:2] == b"PK", head[:1] == b"\x80"
    if p.suffix.lower() == ".onnx" or not (is_zip or is_pickle):
        loaded = _try_onnx(p, input_shape, strict=not (is_zip or is_pickle), given=given)
        if loaded is not None:
            return _finish(loaded)
    shape = input_shape if input_shape is not None or not given else given[0].shape
    if is_zip and _is_torchscript(p):
        loaded = _load_torchscript(p, shape)
    elif is_zip and is_pt2(p):
        module, shape, notes = load_pt2(p, shape, trust)
        loaded = LoadedModel(p.stem, str(p), "exported-program", module, shape, notes=notes)
    else:
        loaded = _load_pickle(p, arch, shape, num_classes, trust, is_zip or is_pickle)
    return _finish(loaded, given, input_shape)


def _torch_inputs(loaded: LoadedModel, given: list[InputSpec],
                  input_shape: tuple[int, ...] | None) -> list[InputSpec]:
    """A torch model's inputs: its ``forward`` signature (token inputs), else one float input
    named after its parameter; ``--input`` flags applied by name."""
    module = loaded.module
    tokens = [g.shape for g in given if "ids" in g.name.lower() or "mask" in g.name.lower()]
    seq = input_shape if input_shape is not None or not tokens else tokens[0]  # shared
    script = isinstance(module, torch.jit.ScriptModule)
    names = [] if script else forward_inputs(module)
    detected = None if script else signature_inputs(module, seq)
    if detected is None and len(names) > 1:  # several inputs, not all tokens: --input each
        flags = {g.name: g for g in given}
        for g in given:
            if g.name not in names:
                raise SparsebenchError(f"--input {g.name}: {loaded.path} has no input named "
                                       f"{g.name!r} (its inputs: {', '.join(names)})")
        missing = [n for n in names if n not in flags]
        if missing:
            raise SparsebenchError(f"{loaded.path} takes {len(names)} inputs ({', '.join(names)})"
                                   f": give each one's shape and dtype, e.g. --input "
                                   f"{missing[0]}:Bx{'x'.join(map(str, loaded.input_shape))}:"
                                   "float32 (--input-shape fits one input)")
        return [with_defaults(flags[n]) for n in names]
    if detected is None:
        name = names[0] if names else "input"
        detected = [float_input(loaded.input_shape, name)]
        if given and len(given) == 1 and given[0].name not in (name, "input"):
            raise SparsebenchError(f"--input {given[0].name}: {loaded.path} has no input named "
                                   f"{given[0].name!r} (its inputs: {name})")
        if given and len(given) == 1:
            return [with_defaults(InputSpec(name, *_fields(given[0])))]
    return apply_flags(detected, given, loaded.path, fixed_dtypes=False)


def _fields(spec: InputSpec) -> tuple[Any, ...]:
    return spec.shape, spec.dtype, spec.low, spec.high


def _finish(loaded: LoadedModel, given: list[InputSpec] | None = None,
            input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    module = loaded.module
    if module is not None and not loaded.inputs:
        loaded.inputs = _torch_inputs(loaded, list(given or []), input_shape)
    if loaded.inputs:
        loaded.input_shape = tuple(loaded.inputs[0].shape)
    if module is None:
        return loaded
    module.eval()
    try:
        module.input_shape = tuple(loaded.input_shape)
        module.input_specs = list(loaded.inputs)
    except Exception:  # noqa: BLE001 - a ScriptModule refuses new attributes: set them directly
        object.__setattr__(module, "input_shape", tuple(loaded.input_shape))
        object.__setattr__(module, "input_specs", list(loaded.inputs))
    for name, mod in module.named_modules():
        tensors = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
            loaded.notes.append(f"non-finite weights in {name or '(root)'}")
    return loaded


# --- ONNX ---------------------------------------------------------------------------------------

def _onnx_dims(value_info: Any) -> list[int | str] | None:
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tt.shape.dim]


def _try_onnx(p: Path, input_shape: tuple[int, ...] | None, strict: bool,
              given: list[InputSpec] | None = None) -> LoadedModel | None:
    """The ONNX model at ``p``, or None when the bytes are not an ONNX ModelProto (and the
    suffix does not insist; ``strict``: the file is not a zip/pickle either). A graph the
    importer cannot convert still loads (``module`` None, ``onnx_error`` says why): its
    original bytes run on onnxruntime."""
    import onnx
    from onnx import external_data_helper

    data = p.read_bytes()
    insist = strict and p.suffix.lower() == ".onnx"
    try:
        model = onnx.load_model_from_string(data)
        looks_onnx = model.ir_version > 0 and model.HasField("graph")
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        if insist:
            raise SparsebenchError(f"{p} is not a valid ONNX model: {_first_line(exc)}")
        return None
    if not looks_onnx:
        if insist:
            raise SparsebenchError(f"{p} is not a valid ONNX model (no graph)")
        return None
    try:
        if any(external_data_helper.uses_external_data(t) for t in model.graph.initializer):
            external_data_helper.load_external_data_for_model(model, str(p.parent))
            data = model.SerializeToString()  # one buffer for onnxruntime (the same graph)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - checker and external data errors
        raise SparsebenchError(f"{p} is not a valid ONNX model: {_first_line(exc)}")
    specs, notes = onnx_inputs(p, model, input_shape, list(given or []))
    loaded = LoadedModel(p.stem, str(p), "onnx", None, specs[0].shape, onnx_bytes=data,
                         notes=notes, inputs=specs)
    from sparsebench.graph.onnx_torch import to_torch
    from sparsebench.model_io import make_inputs

    try:
        module = to_torch(model)
        with torch.inference_mode():
            module(*make_inputs(specs, 1))
        loaded.module = module
    except SparsebenchError as exc:  # the op and node; the list of supported ops left out
        loaded.onnx_error = str(exc).split("; supported:")[0]
    except Exception as exc:  # noqa: BLE001 - the original bytes can still run on onnxruntime
        loaded.onnx_error = f"the converted ONNX graph does not run: {_first_line(exc)}"
    loaded.swappable = loaded.module is not None
    return loaded


def _onnx_dtype(elem_type: int) -> str | None:
    from onnx import helper

    try:
        name = str(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:  # noqa: BLE001 - an element type numpy has no dtype for
        return None
    return {"bool": "bool"}.get(name, name)


def _onnx_vocab(model: Any, name: str) -> int | None:
    """The vocabulary of the embedding ``name`` indexes: a Gather whose data is a constant
    [vocab, d] initializer and whose indices are ``name`` (possibly through a Cast)."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    names = {name}
    for node in model.graph.node:  # ids cast to int64/int32 first (dynamo exports)
        if node.op_type == "Cast" and node.input and node.input[0] in names:
            names.update(node.output)
    vocabs = [shapes[n.input[0]][0] for n in model.graph.node
              if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in names
              and len(shapes.get(n.input[0], [])) == 2]
    return min(vocabs) if vocabs else None


def onnx_inputs(p: Path, model: Any, given_shape: tuple[int, ...] | None,
                given: list[InputSpec]) -> tuple[list[InputSpec], list[str]]:
    """The graph's inputs (not initializers) as InputSpecs, batch dimension first; notes."""
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    if not graph_inputs:
        raise SparsebenchError(f"{p} has no graph input")
    if given_shape is not None and len(graph_inputs) > 1:
        raise SparsebenchError(f"--input-shape fits a model with one input; {p} has "
                               f"{len(graph_inputs)} ({', '.join(i.name for i in graph_inputs)}):"
                               f" use --input NAME:SHAPE:DTYPE per input")
    flags = {g.name: g for g in given}
    named: dict[str, int] = {}  # symbolic dim -> the size a --input gave it (e.g. "seq": 16)
    for vi in graph_inputs:
        dims, flag = _onnx_dims(vi), flags.get(vi.name)
        if dims is not None and flag is not None and len(flag.shape) == len(dims) - 1:
            named.update({d: g for d, g in zip(dims[1:], flag.shape) if isinstance(d, str)})
    specs: list[InputSpec] = []
    notes: list[str] = []
    for vi in graph_inputs:
        dtype = _onnx_dtype(vi.type.tensor_type.elem_type)
        if dtype is None or dtype not in {"float32", "float64", "float16", "int64", "int32",
                                          "int16", "int8", "uint8", "bool"}:
            raise SparsebenchError(f"{p}: input {vi.name!r} has an element type sparsebench "
                                   "cannot feed")
        dims = _onnx_dims(vi)
        if dims is not None:
            dims = [dims[0]] + [named.get(d, d) if isinstance(d, str) else d for d in dims[1:]]
        if dims is not None and len(dims) < 1:
            raise SparsebenchError(f"{p} has an input of rank 0 ({vi.name!r}); expected a "
                                   "batch dimension first")
        spec, note = _onnx_input(p, vi.name, dtype, dims, given_shape, flags.get(vi.name))
        notes += note
        specs.append(spec if spec.is_float else with_defaults(spec, _onnx_vocab(model, vi.name)))
    return apply_flags(specs, given, str(p), fixed_dtypes=True), notes


def _onnx_input(p: Path, name: str, dtype: str, dims: list[int | str] | None,
                given: tuple[int, ...] | None, flag: InputSpec | None
                ) -> tuple[InputSpec, list[str]]:
    """One graph input: its static dims, else ``--input``/``--input-shape``, else (integer
    inputs) ``DEFAULT_SEQUENCE`` for each symbolic non-batch dimension."""
    shown = dims if dims is not None else "unknown"
    wanted = flag.shape if flag is not None else given
    if dims is not None and wanted is not None and (len(wanted) != len(dims) - 1 or any(
            isinstance(d, int) and d > 0 and d != g for d, g in zip(dims[1:], wanted))):
        what = f"--input {name}" if flag is not None else f"input shape {wanted}"
        raise SparsebenchError(f"{what} does not fit the input {name!r} of {p} "
                               f"(dims: {shown}, batch first)")
    notes = []
    if dims is not None and isinstance(dims[0], int) and dims[0] > 1:
        notes.append(f"the ONNX graph fixes the batch size of {name!r} to {dims[0]}")
    static = dims is not None and all(isinstance(d, int) and d > 0 for d in dims[1:])
    if static:
        shape = tuple(int(d) for d in dims[1:])  # type: ignore[union-attr]
        if given and given != shape:
            notes.append(f"ignored input shape {given}: the ONNX graph fixes {shape}")
        return InputSpec(name, shape, dtype), notes
    if wanted is not None:
        return InputSpec(name, tuple(wanted), dtype), notes
    if dims is not None and dtype != "float32" and not dtype.startswith("float"):
        shape = tuple(d if isinstance(d, int) and d > 0 else DEFAULT_SEQUENCE for d in dims[1:])
        return InputSpec(name, shape, dtype), notes
    raise SparsebenchError(f"cannot determine the shape of input {name!r} of {p} (dims: "
                           f"{shown}); pass --input-shape or --input {name}:SHAPE:{dtype}")


# --- TorchScript --------------------------------------------------------------------------------

def _is_torchscript(p: Path) -> bool:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _load_torchscript(p: Path, input_shape: tuple[int, ...] | None) -> LoadedModel:
    try:
        with warnings.catch_warnings():  # torch.jit's deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - corrupt archives raise RuntimeError and others
        raise SparsebenchError(f"{p} is not a loadable TorchScript archive: {_first_line(exc)}")
    notes = ["TorchScript: dense rows run the archive as given; the other formats convert its "
             "graph (exported to ONNX and imported)"]
    if input_shape is None:  # TorchScript does not record its input shape
        input_shape, note = torchscript_input_shape(p, module.eval())
        notes.append(note)
    return LoadedModel(p.stem, str(p), "torchscript", module, input_shape, notes=notes)


# --- torch.load ---------------------------------------------------------------------------------

def _load_pickle(p: Path, arch: str | None, input_shape: tuple[int, ...] | None,
                 num_classes: int | None, trust: bool, torch_file: bool) -> LoadedModel:
    notes: list[str] = []
    try:
        obj = _weights_only_load(p)
    except _NeedsTrust as need:
        if not trust:
            raise SparsebenchError(f"{p} needs full unpickling (it references {need}, which "
                                   "could run code); pass --trust if you trust its source")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - arbitrary user code and missing modules
            raise SparsebenchError(f"{p} could not be unpickled even with --trust: "
                                   f"{_first_line(exc)}")
        notes.append("loaded with full unpickling (--trust)")
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        if torch_file:
            raise SparsebenchError(f"{p} is not a readable torch file (corrupt or truncated): "
                                   f"{_first_line(exc)}")
        raise SparsebenchError(f"{p} {_NEITHER}")
    return _from_object(p, obj, arch, input_shape, num_classes, notes)


def _registry_name(module: nn.Module) -> str | None:
    for name in ARCHS.names():
        try:
            if type(module) is ARCHS.get(name):
                return name
        except SparsebenchError:
            continue
    return None


def _module_shape(p: Path, module: nn.Module, given: tuple[int, ...] | None,
                  what: str) -> tuple[int, ...]:
    if given is not None:
        return given
    shape = getattr(module, "input_shape", None)
    if shape is None:
        tokens = signature_inputs(module, None)  # token inputs (input_ids, attention_mask)
        if tokens:
            return tokens[0].shape
        names = forward_inputs(module)
        if len(names) > 1:
            raise SparsebenchError(f"{p} takes {len(names)} inputs ({', '.join(names)}): give "
                                   f"each one's shape and dtype, e.g. --input "
                                   f"{names[0]}:Bx16:float32")
        raise SparsebenchError(f"cannot determine the input shape of {p} ({what}); "
                               "pass --input-shape")
    return tuple(int(d) for d in shape)


def _from_object(p: Path, obj: Any, arch: str | None, input_shape: tuple[int, ...] | None,
                 num_classes: int | None, notes: list[str]) -> LoadedModel:
    if isinstance(obj, dict) and obj.get("format") == "sparsebench-checkpoint":
        ckpt = validate_checkpoint(obj, p)
        module = model_from_checkpoint(ckpt)
        shape = tuple(int(d) for d in ckpt.get("input_shape") or module.input_shape)
        if input_shape is not None and tuple(input_shape) != shape:
            raise SparsebenchError(f"{p} is a checkpoint of input shape {','.join(map(str, shape))}"
                                   f"; --input-shape {','.join(map(str, input_shape))} "
                                   "contradicts it (leave --input-shape out)")
        return LoadedModel(p.stem, str(p), "checkpoint", module, shape, ckpt["arch"], ckpt,
                           notes=notes)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if isinstance(obj, nn.Module):
        pruned = apply_prune_masks(obj)
        if pruned:
            notes.append(pruned_note(pruned))
        shape = _module_shape(p, obj, input_shape, "a pickled module")
        return LoadedModel(p.stem, str(p), "pickled-module", obj, shape, _registry_name(obj),
                           notes=notes)
    state = _state_dict_of(obj)
    if state is None:
        held = type(obj).__name__
        raise SparsebenchError(f"{p} {_NEITHER} (it holds a {held})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        notes.append("stripped the 'module.' prefix (DataParallel) from the state_dict keys")
    state, pruned = fold_prune_state(state)
    if pruned:
        notes.append(pruned_note(pruned))
    if not arch:
        raise SparsebenchError(f"{p} is a state_dict: pass --arch NAME (one of "
                               f"{', '.join(ARCHS.names())}) or --arch module:callable")
    if ":" in arch and not zoo_split(arch):
        module = _from_callable(p, arch, state)
        shape = _module_shape(p, module, input_shape, f"built by {arch}")
        notes.append(f"built by {arch}")
        return LoadedModel(p.stem, str(p), "state-dict", module, shape, None, notes=notes)
    module, shape = _from_registry(p, arch, state, input_shape, num_classes)
    return LoadedModel(p.stem, str(p), "state-dict", module, shape, arch, notes=notes)


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    def tensors(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if tensors(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if tensors(obj.get(key)):
                return dict(obj[key])
    return None


def _mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """The first reason ``state`` does not load into ``module``, or None."""
    own = module.state_dict()
    missing = next((k for k in own if k not in state), None)
    if missing is not None:
        return f"missing key {missing!r}"
    unexpected = next((k for k in state if k not in own), None)
    if unexpected is not None:
        return f"unexpected key {unexpected!r}"
    for k, t in own.items():
        if tuple(state[k].shape) != tuple(t.shape):
            return (f"size mismatch for {k!r}: file {tuple(state[k].shape)}, "
                    f"model {tuple(t.shape)}")
    return None


def _load_state(p: Path, module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    problem = _mismatch(module, state)
    if problem is None:
        try:
            module.load_state_dict(state)
            return
        except Exception as exc:  # noqa: BLE001 - dtype or custom load hooks
            problem = _first_line(exc)
    raise SparsebenchError(f"{p} does not fit {what}: {problem}")


def _from_callable(p: Path, spec: str, state: dict[str, torch.Tensor]) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SparsebenchError(f"--arch {spec}: {_first_line(exc)}")
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise SparsebenchError(f"--arch {spec}: importing {mod_name} failed: {_first_line(exc)}")
    try:
        module = target()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise SparsebenchError(f"--arch {spec}: calling it failed: {_first_line(exc)}")
    if not isinstance(module, nn.Module):
        raise SparsebenchError(f"--arch {spec} returned a {type(module).__name__}, "
                               "not a torch.nn.Module")
    _load_state(p, module, state, spec)
    return module


def _guess_shapes(first: torch.Tensor) -> list[tuple[int, ...]]:
    """Plausible per-sample input shapes from the first layer's weight."""
    if first.dim() == 4:
        c = int(first.shape[1])
        sizes = (28, 32) if c == 1 else (32, 28)
        return [(c, s, s) for s in sizes]
    features = int(first.shape[1])
    side = {784: (1, 28, 28), 3072: (3, 32, 32)}.get(features)
    return ([side] if side else []) + [(features,)]


def _from_registry(p: Path, arch: str, state: dict[str, torch.Tensor],
                   input_shape: tuple[int, ...] | None, num_classes: int | None
                   ) -> tuple[nn.Module, tuple[int, ...]]:
    check_arch(arch)
    weights = [t for k, t in state.items() if k.endswith("weight") and t.dim() in (2, 4)]
    if not weights:
        raise SparsebenchError(f"{p} has no 2-D or 4-D weights; it is not a state_dict of {arch}")
    classes = num_classes or int(weights[-1].shape[0])
    from_state = resolve(ARCHS.meta(arch).get("from_state")) if arch in ARCHS else None
    kwargs = from_state(state) if from_state else {}
    if input_shape:
        candidates = [input_shape]
    elif zoo_split(arch):
        channels, size = default_input(arch)
        candidates = [(channels, size, size)]
    else:
        candidates = _guess_shapes(weights[0])
    problems = []
    for shape in candidates:
        if len(shape) == 3 and shape[1] == shape[2]:
            channels, size = shape[0], shape[1]
        elif len(shape) == 1:
            channels, size = shape[0], 1
        else:
            raise SparsebenchError(f"architecture {arch!r} takes an input shape C,H,W with H == W"
                                   f" or F; got {shape}")
        try:
            module = create_model(arch, in_channels=channels, input_size=size,
                                  num_classes=classes, **kwargs)
        except SparsebenchError as exc:
            problems.append(str(exc))
            continue
        problem = _mismatch(module, state)
        if problem is None:
            _load_state(p, module, state, f"architecture {arch!r}")
            return module, shape
        guessed = not input_shape and problem.startswith("size mismatch")
        problems.append(f"{problem} (input shape {shape})" if guessed else problem)
    raise SparsebenchError(f"{p} does not fit architecture {arch!r}: {problems[0]}")

