"""The self-describing sparsebench checkpoint.

One ``.pt`` file holding a plain dict (loadable with ``torch.load(..., weights_only=True)``):

==================  ==============================================================
``format``          ``"sparsebench-checkpoint"``
``version``         schema version (int)
``arch``            architecture registry name; ``arch_kwargs`` its constructor args
``input_shape``     per-sample input shape, e.g. ``[1, 28, 28]``
``state_dict``      weights (pruned entries are exactly zero)
``masks``           ``{param name: bool tensor}``: elementwise keep-masks of pruned params
``unit_masks``      ``{layer name: bool tensor[out units]}``: filter-level keep-masks
``method``          dense, dropout, prune-l, prune-s, prune-r, reentry, scratch
``config``          the training configuration (granularity, schedule, optimizer, ...)
``history``         ``{"epochs": [...], "events": [...]}``; ``summary`` the run's metrics
``dataset``, ``seed``, ``versions``  provenance
``resume``          optional optimizer/scheduler/RNG/pruner state for ``--resume``
==================  ==============================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench.archs import create_model
from sparsebench.errors import SparsebenchError
from sparsebench.outputs import atomic_write_bytes  # noqa: F401  (re-exported)
from sparsebench.provenance import library_versions  # noqa: F401  (re-exported)

FORMAT = "sparsebench-checkpoint"
VERSION = 1


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a checkpoint dict atomically."""
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    atomic_write_bytes(path, lambda fh: torch.save(ckpt, fh))


def check_file(path: str | os.PathLike[str], what: str = "model") -> Path:
    """A readable, non-empty regular file, else a one-line error."""
    p = Path(path)
    if not p.exists():
        raise SparsebenchError(f"{what} file not found: {p}")
    if p.is_dir():
        raise SparsebenchError(f"{what} path is a directory, not a file: {p}")
    if p.stat().st_size == 0:
        raise SparsebenchError(f"{what} file is empty: {p}")
    return p


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a sparsebench checkpoint (``weights_only=True``)."""
    p = check_file(path, "checkpoint")
    obj = safe_torch_load(p)
    return validate_checkpoint(obj, p)


def refused_global(exc: BaseException) -> str | None:
    """The class or function a weights-only ``torch.load`` refused (so the file needs full
    unpickling, which can run code), or None when the failure is something else. Knows every
    wording torch uses ("Unsupported global: GLOBAL x", "unsupported GLOBAL x ... is blocked",
    refused reduce/new-object calls) and undoes pickle's Python 2 renames (``commands.call``
    is ``subprocess.call``)."""
    import re

    text = str(exc)
    found = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", text, re.IGNORECASE)
    if found:
        return _python3_name(found.group(1))
    found = re.search(r"(?:call reduce for unrecognized function|only create new object for "
                      r"nn\.Parameter or classes allowlisted via `add_safe_globals` but got) "
                      r"<?(?:class |function |built-in function )?'?([\w.<>]+)", text)
    if found:
        return _python3_name(found.group(1))
    return None


def _python3_name(dotted: str) -> str:
    """``commands.call`` -> ``subprocess.call``: pickle protocol 2 stores Python 2 names."""
    import _compat_pickle

    module, _, name = dotted.rpartition(".")
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    else:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}" if module else name


def first_sentence(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, ended at a sentence boundary within ``limit``."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    if len(line) <= limit:
        return line
    cut = line.rfind(". ", 0, limit)
    return line[:cut + 1] if cut > 0 else line[:limit - 3].rstrip() + "..."


def safe_torch_load(p: Path) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors: a refused global means the file
    needs full unpickling (code execution); anything else means corrupt or not torch at all."""
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        name = refused_global(exc)
        if name:
            raise SparsebenchError(f"{p} needs full unpickling (it references {name}, which "
                                   f"could run code)")
        raise SparsebenchError(f"{p} is not a readable torch checkpoint (corrupt or truncated):"
                               f" {first_sentence(str(exc)) or type(exc).__name__}")


def validate_checkpoint(obj: Any, origin: Any = "checkpoint") -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise SparsebenchError(f"{origin} is not a sparsebench checkpoint "
                               f"(no 'format: {FORMAT}' field)")
    if obj.get("version") != VERSION:
        raise SparsebenchError(f"{origin} has checkpoint schema version {obj.get('version')!r}; "
                               f"this sparsebench reads version {VERSION}")
    for key in ("arch", "arch_kwargs", "state_dict"):
        if key not in obj:
            raise SparsebenchError(f"{origin} is missing the {key!r} field")
    return obj


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked entry of the named parameters in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name in params:
                params[name].mul_(mask.to(params[name].dtype))


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture, load the weights, apply the masks; returns it in eval mode."""
    model = create_model(ckpt["arch"], **ckpt["arch_kwargs"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise SparsebenchError(f"checkpoint weights do not fit architecture {ckpt['arch']!r}: "
                               f"{str(exc).splitlines()[0]}")
    apply_masks(model, ckpt.get("masks", {}))
    return model.eval()
