"""Embedded targets: capacities, throughput figures and (optionally) how to cross-build for them.

Targets are TOML files. The library ships ``cortex-m4``, ``cortex-m7``, ``cortex-m55``,
``cortex-a53``, ``cortex-a72`` and ``host`` (in this folder, each citing its sources); a user
passes their own as a path (``--target board.toml``). Keys (sizes in KiB, 1 KiB = 1024 bytes):

* required: ``name``, ``description``, ``clock_mhz``, ``ram_kib``, ``fp32_mac_cycles``,
  ``int8_mac_cycles``, ``sparse_fp32_mac_cycles``, ``sparse_int8_mac_cycles``;
* optional: ``core``, ``cores`` (1), ``flash_kib`` (absent: no flash limit), ``weights_in``
  (``flash``: const weights execute in place; ``ram``: they are loaded into RAM; default flash
  when ``flash_kib`` is given), ``fpu``, ``simd_bits`` (32), ``mem_bandwidth_mb_s``,
  ``elementwise_cycles`` (1.0), ``sources`` (list of strings), ``notes``, ``detect`` (host only:
  read clock, cores, RAM and SIMD width from this machine), ``calibration`` (a
  ``sparsebench-calibration`` JSON file, relative to the TOML file or else one shipped in this
  folder: instructions per kernel feature fitted on QEMU counts by ``python -m
  sparsebench.embedded.calibrate``; the estimate then counts instructions, not the roofline);
* ``[build]`` (for ``profile --build``): ``kind`` (``baremetal-m``, ``linux-user`` or ``host``),
  ``cc``, ``cflags``; QEMU settings ``qemu``, ``machine``, ``cpu``; for bare metal the emulated
  board's memory ``flash_origin``/``flash_length``/``ram_origin``/``ram_length``, ``sysclk_hz``
  (the SysTick clock) and ``stack_bytes``.

The ``*_mac_cycles`` figures are cycles per multiply-accumulate including operand loads; the
roofline estimate built from them (targets without a calibration) is an estimate and is
labelled as such.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from sparsebench.errors import SparsebenchError, UnknownNameError

TARGET_DIR = Path(__file__).resolve().parent
KIND_BUILD = ("baremetal-m", "linux-user", "host")

_REQUIRED = {"name": str, "description": str, "clock_mhz": (int, float), "ram_kib": (int, float),
             "fp32_mac_cycles": (int, float), "int8_mac_cycles": (int, float),
             "sparse_fp32_mac_cycles": (int, float), "sparse_int8_mac_cycles": (int, float)}
_OPTIONAL = {"core": str, "cores": int, "flash_kib": (int, float), "weights_in": str,
             "fpu": str, "simd_bits": int, "mem_bandwidth_mb_s": (int, float),
             "elementwise_cycles": (int, float), "sources": list, "notes": str, "detect": bool,
             "build": dict, "calibration": str}
_BUILD = {"kind": str, "cc": str, "cflags": list, "qemu": str, "machine": str, "cpu": str,
          "flash_origin": int, "flash_length": int, "ram_origin": int, "ram_length": int,
          "sysclk_hz": int, "stack_bytes": int}


@dataclass(frozen=True)
class BuildSpec:
    """How ``profile --build`` compiles and runs the exported C for a target."""

    kind: str
    cc: str
    cflags: tuple[str, ...] = ()
    qemu: str | None = None
    machine: str | None = None
    cpu: str | None = None
    flash_origin: int = 0
    flash_length: int = 0
    ram_origin: int = 0
    ram_length: int = 0
    sysclk_hz: int = 0
    stack_bytes: int = 8192


@dataclass(frozen=True)
class Target:
    """One device: what it holds and how fast it computes (see the module docstring)."""

    name: str
    description: str
    clock_mhz: float
    ram_bytes: int
    flash_bytes: int | None
    weights_in: str
    fp32_mac_cycles: float
    int8_mac_cycles: float
    sparse_fp32_mac_cycles: float
    sparse_int8_mac_cycles: float
    elementwise_cycles: float = 1.0
    core: str = ""
    cores: int = 1
    fpu: str = ""
    simd_bits: int = 32
    mem_bandwidth_mb_s: float | None = None
    sources: tuple[str, ...] = ()
    notes: str = ""
    build: BuildSpec | None = None
    calibration: str | None = None      # absolute path of the calibration JSON, if any
    origin: str = ""
    detected: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.toml"))


def list_targets() -> list[Target]:
    """Every shipped target, by name."""
    return [load_target(n) for n in builtin_names()]


def load_target(spec: str | os.PathLike[str]) -> Target:
    """A shipped target by name, or a user's TOML file by path; one-line errors."""
    text = str(spec)
    path = Path(text)
    if text.endswith(".toml") or os.sep in text or path.is_file():
        if not path.is_file():
            raise SparsebenchError(f"target file not found: {path}")
        return parse_target(path)
    if text not in builtin_names():
        raise UnknownNameError(f"unknown target {text!r}; choose from: "
                               f"{', '.join(builtin_names())} (or pass a .toml file)")
    return parse_target(TARGET_DIR / f"{text}.toml")


def _check_types(data: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if key not in schema:
            raise SparsebenchError(f"{where}: unknown key {key!r} (known: "
                                   f"{', '.join(sorted(schema))})")
        want = schema[key]
        ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
        if not ok:
            names = (want if isinstance(want, tuple) else (want,))
            raise SparsebenchError(f"{where}: {key!r} must be "
                                   f"{' or '.join(t.__name__ for t in names)}, got "
                                   f"{type(value).__name__} {value!r}")


def parse_target(path: Path) -> Target:
    """Parse and validate one target TOML file."""
    where = f"target file {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SparsebenchError(f"{where} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SparsebenchError(f"{where} cannot be read: {exc}") from None
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise SparsebenchError(f"{where}: missing required key(s) {', '.join(missing)}")
    _check_types(data, {**_REQUIRED, **_OPTIONAL}, where)
    for key in ("clock_mhz", "ram_kib", "fp32_mac_cycles", "int8_mac_cycles",
                "sparse_fp32_mac_cycles", "sparse_int8_mac_cycles"):
        if data[key] <= 0:
            raise SparsebenchError(f"{where}: {key!r} must be positive, got {data[key]}")
    if "flash_kib" in data and data["flash_kib"] <= 0:
        raise SparsebenchError(f"{where}: 'flash_kib' must be positive (omit it for no limit)")
    weights_in = data.get("weights_in", "flash" if "flash_kib" in data else "ram")
    if weights_in not in ("flash", "ram"):
        raise SparsebenchError(f"{where}: 'weights_in' must be 'flash' or 'ram', got "
                               f"{weights_in!r}")
    if weights_in == "flash" and "flash_kib" not in data:
        raise SparsebenchError(f"{where}: weights_in = 'flash' needs 'flash_kib'")
    build = _parse_build(data.get("build"), where)
    calibration = None
    if "calibration" in data:
        # beside the TOML file, else a shipped one (a copied shipped target keeps its fit)
        cal = next((c.resolve() for c in (path.parent / data["calibration"],
                                          TARGET_DIR / data["calibration"]) if c.is_file()),
                   None)
        if cal is None:
            raise SparsebenchError(f"{where}: calibration file not found: "
                                   f"{path.parent / data['calibration']}")
        calibration = str(cal)
    values = dict(
        name=data["name"], description=data["description"], clock_mhz=float(data["clock_mhz"]),
        ram_bytes=int(data["ram_kib"] * 1024),
        flash_bytes=int(data["flash_kib"] * 1024) if "flash_kib" in data else None,
        weights_in=weights_in, fp32_mac_cycles=float(data["fp32_mac_cycles"]),
        int8_mac_cycles=float(data["int8_mac_cycles"]),
        sparse_fp32_mac_cycles=float(data["sparse_fp32_mac_cycles"]),
        sparse_int8_mac_cycles=float(data["sparse_int8_mac_cycles"]),
        elementwise_cycles=float(data.get("elementwise_cycles", 1.0)),
        core=data.get("core", data["name"]), cores=data.get("cores", 1), fpu=data.get("fpu", ""),
        simd_bits=data.get("simd_bits", 32),
        mem_bandwidth_mb_s=(float(data["mem_bandwidth_mb_s"])
                            if "mem_bandwidth_mb_s" in data else None),
        sources=tuple(str(s) for s in data.get("sources", [])), notes=data.get("notes", ""),
        build=build, calibration=calibration, origin=str(path))
    if data.get("detect"):
        values.update(_detect_host(values))
    return Target(**values)


def _parse_build(raw: Any, where: str) -> BuildSpec | None:
    if raw is None:
        return None
    _check_types(raw, _BUILD, f"{where} [build]")
    for key in ("kind", "cc"):
        if key not in raw:
            raise SparsebenchError(f"{where} [build]: missing required key {key!r}")
    if raw["kind"] not in KIND_BUILD:
        raise SparsebenchError(f"{where} [build]: kind must be one of {', '.join(KIND_BUILD)}, "
                               f"got {raw['kind']!r}")
    need = {"baremetal-m": ("qemu", "machine", "flash_length", "ram_length", "sysclk_hz"),
            "linux-user": ("qemu",), "host": ()}[raw["kind"]]
    missing = [k for k in need if k not in raw]
    if missing:
        raise SparsebenchError(f"{where} [build]: kind {raw['kind']!r} needs "
                               f"{', '.join(missing)}")
    return BuildSpec(**{**raw, "cflags": tuple(str(f) for f in raw.get("cflags", []))})


def _detect_host(values: dict[str, Any]) -> dict[str, Any]:
    """Clock, cores, RAM and SIMD width of this machine (the ``host`` target)."""
    from sparsebench.provenance import cpu_info

    info = cpu_info()
    out: dict[str, Any] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("cpu mhz"):
                out["clock_mhz"] = float(line.split(":")[1])
                break
    except (OSError, ValueError, IndexError):
        pass
    out["cores"] = os.cpu_count() or 1
    if info.get("memory_bytes"):
        out["ram_bytes"] = int(info["memory_bytes"])
    isa = set(info.get("isa", []))
    simd = 512 if "avx512f" in isa else 256 if "avx2" in isa else 128
    scale = simd / values["simd_bits"]
    out["simd_bits"] = simd
    out["fp32_mac_cycles"] = values["fp32_mac_cycles"] / scale
    out["int8_mac_cycles"] = values["int8_mac_cycles"] / scale
    out["fpu"] = f"{info.get('cpu')}; {', '.join(sorted(isa)) or 'no SIMD flags seen'}"
    out["description"] = f"this machine ({info.get('cpu')}), one core"
    out["detected"] = {k: out[k] for k in ("clock_mhz", "cores", "ram_bytes", "simd_bits")
                       if k in out}
    return out
