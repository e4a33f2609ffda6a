"""Provenance recorded with checkpoints and result files: machine, library versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ISA_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma", "sse4_2", "neon",
             "asimd")


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key in ("flags", "Features"):
                flags = set(value.split())
            if model and flags:
                break
    except OSError:
        pass
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        memory = psutil.virtual_memory().total
    except ImportError:  # psutil is a dependency; this only guards odd installs
        physical, memory = None, None
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags],
            "logical_cores": os.cpu_count(), "physical_cores": physical,
            "memory_bytes": memory, "system": platform.system(), "arch": platform.machine()}


def git_commit(path: Path | None = None) -> str | None:
    """The project's git commit (with ``-dirty`` for uncommitted changes), or None."""
    root = path or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "sparsebench", "kernels"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    from sparsebench import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "sparsebench": __version__}
    for name in ("torch", "numpy", "scipy", "onnx", "onnxruntime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
