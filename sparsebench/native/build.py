"""Building and loading the compiled kernels: compiler, build cache keyed by sources, flags,
compiler and CPU, ctypes loading with the ABI check, and the status of the library.
"""

from __future__ import annotations

import ctypes
import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from sparsebench.errors import SparsebenchError
from sparsebench.native.abi import _SIGNATURES, ABI_VERSION
from sparsebench.shipped import KERNEL_SOURCES

KERNEL_SRC = KERNEL_SOURCES  # the checkout's kernels/, or the copy a wheel ships
SOURCES = ("api.cpp", "csr_linear.cpp", "bsr_linear.cpp", "csr_conv.cpp", "dense_conv.cpp",
           "pool.cpp", "threadpool.cpp", "transformer.cpp")
HEADERS = ("sparsebench_kernels.h", "common.hpp")
CXXFLAGS = ("-O3", "-march=native", "-pthread", "-fPIC", "-shared", "-std=c++17")
LIB_NAME = "libsparsebench_kernels.so"

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_load_error: str | None = None


def _disabled() -> bool:
    return os.environ.get("SPARSEBENCH_NO_NATIVE", "").strip() not in ("", "0")


def _compiler() -> list[str]:
    """The C++ compiler command: $CXX (may hold arguments), else g++ / c++ / clang++."""
    env = os.environ.get("CXX", "").strip()
    if env:
        cmd = shlex.split(env)
        if shutil.which(cmd[0]) is None:
            raise SparsebenchError(f"C++ compiler CXX={env!r} not found")
        return cmd
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return [name]
    raise SparsebenchError("no C++ compiler found (install g++ or set CXX)")


def _cpu_signature() -> str:
    """Identifies the CPU for the -march=native build (model and feature flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.machine() + platform.processor()
    keep = [ln for ln in text.splitlines()[:40] if ln.startswith(("model name", "flags"))]
    return "\n".join(keep) or platform.machine()


def _check_sources() -> None:
    if not (KERNEL_SRC / SOURCES[0]).is_file():
        raise SparsebenchError(
            f"kernel sources not found at {KERNEL_SRC} (a wheel carries them in "
            "sparsebench/_shipped/kernels; reinstall sparsebench, or use a checkout)"
        )


def build_dir(compiler: Sequence[str] | None = None) -> Path:
    """Cache folder for the current sources, flags, compiler and CPU."""
    _check_sources()
    cmd = list(compiler) if compiler is not None else _compiler()
    digest = hashlib.sha256()
    for part in (shutil.which(cmd[0]) or cmd[0], *cmd[1:], *CXXFLAGS, _cpu_signature()):
        digest.update(part.encode() + b"\0")
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (KERNEL_SRC / name).read_bytes() + b"\0")
    root = os.environ.get("SPARSEBENCH_KERNEL_DIR")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        base = base / "sparsebench" / "kernels"
    return base / digest.hexdigest()[:16]


def _first_error(stderr: str, returncode: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln[:300]
    return lines[0][:300] if lines else f"compiler exit status {returncode}"


def build(force: bool = False) -> Path:
    """Compile the kernel sources (once per source/flag/compiler/CPU combination) and return the .so path."""
    if _disabled():
        raise SparsebenchError("native kernels disabled by SPARSEBENCH_NO_NATIVE=1")
    cmd = _compiler()
    out_dir = build_dir(cmd)
    target = out_dir / LIB_NAME
    if target.is_file() and not force:
        return target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out_dir)
        os.close(fd)
    except OSError as exc:
        raise SparsebenchError(f"cannot create kernel build dir {out_dir}: {exc}") from exc
    args = [*cmd, *CXXFLAGS, "-o", tmp, *(str(KERNEL_SRC / s) for s in SOURCES)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            try:
                (out_dir / "build.log").write_text(shlex.join(args) + "\n" + proc.stderr)
            except OSError:
                pass
            raise SparsebenchError(
                f"kernel build failed: {_first_error(proc.stderr, proc.returncode)}"
            )
        os.replace(tmp, target)  # atomic: concurrent builders never see a partial file
    except (OSError, subprocess.SubprocessError) as exc:
        raise SparsebenchError(f"kernel build failed: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL:
    """The kernel library with argtypes set (built on first use); checks the ABI version."""
    global _lib, _load_error
    if _disabled():
        raise SparsebenchError("native kernels disabled by SPARSEBENCH_NO_NATIVE=1")
    with _lock:
        if _lib is None and _load_error is None:
            try:
                path = build()
                lib = ctypes.CDLL(str(path))
                for name, (restype, argtypes) in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
                _lib = lib
            except SparsebenchError as exc:
                _load_error = str(exc)
            except (OSError, AttributeError) as exc:
                _load_error = f"cannot load kernel library: {exc}"
        if _lib is None:
            raise SparsebenchError(_load_error or "native kernels unavailable")
        lib = _lib
    version = lib.sb_abi_version()
    if version != ABI_VERSION:
        raise SparsebenchError(
            f"kernel library ABI version {version} does not match sparsebench's {ABI_VERSION}; "
            "rebuild with sparsebench.native.build(force=True)"
        )
    return lib


def available() -> str | None:
    """None if the kernels can be used, else a one-line reason. Never raises."""
    try:
        load()
    except SparsebenchError as exc:
        return str(exc)
    except Exception as exc:  # never crash the caller
        return f"native kernels unavailable: {type(exc).__name__}: {exc}"
    return None


def build_info(force: bool = False) -> dict[str, Any]:
    """Build (or find in the cache) and load the library; describe it. Raises
    SparsebenchError with the reason when that is not possible."""
    path = build(force)
    reset()
    lib = load()
    return {"path": str(path), "isa": lib.sb_isa().decode(), "abi": int(lib.sb_abi_version()),
            "compiler": shlex.join(_compiler()), "flags": " ".join(CXXFLAGS)}


def reset() -> None:
    """Forget a cached load failure (e.g. after installing a compiler)."""
    global _load_error
    with _lock:
        _load_error = None


def isa() -> str:
    """Instruction set the kernels were compiled for: "avx512", "avx2" or "scalar"."""
    return load().sb_isa().decode()


@contextlib.contextmanager
def pool_held(threads: int) -> Iterator[None]:
    """Hold the kernels' thread pool while a plan calls its kernels back to back (threads > 1):
    waiting pool threads then spin up to the "pool_hold_us" knob instead of "pool_spin_us"
    before they sleep, since waking a sleeping thread costs tens of us on a VM. A no-op for one
    thread. Thread-safe (holds are counted)."""
    if threads <= 1:
        yield
        return
    hold = (_lib or load()).sb_pool_hold  # once loaded (and checked), no lock per run
    hold(1)
    try:
        yield
    finally:
        hold(-1)


def tuning(key: str, value: int = -1) -> int:
    """Set a benchmark-only kernel knob ("spmv_gather", "transpose_batch", "batch_chunk", the
    thread pool's "pool_backoff_us" / "pool_spin_us" / "pool_hold_us"; see kernels/README.md)
    or reset a counter ("pool_jobs", "pool_degraded_jobs", "pool_straggles",
    "pool_worker_chunks", "pool_sleeps") and return its old value; a negative value only
    queries."""
    old = load().sb_tuning(key.encode(), int(value))
    if old < 0:
        raise SparsebenchError(f"unknown kernel tuning key {key!r}")
    return int(old)
