"""``profile --build``: cross-compile the C export, read its real sizes, run it under QEMU.

* ``baremetal-m`` (Cortex-M): ``arm-none-eabi-gcc -nostdlib`` with ``port/port_cm.c`` (reset
  handler copying .data, zeroing .bss, painting the stack; semihosting output and exit) and a
  link map of the emulated MPS2/MPS3 board; run with ``qemu-system-arm -machine ...
  -semihosting-config enable=on,target=native -icount shift=0``. With ``-icount shift=0`` every
  instruction advances the virtual clock by 1 ns, so SysTick ticks (at ``sysclk_hz``) read
  around ``sb_run()`` give the executed instructions: ``ticks * 1e9 / sysclk_hz`` (resolution
  one tick, 40 instructions at 25 MHz).
* ``linux-user`` (Cortex-A): ``aarch64-linux-gnu-gcc -static -nostdlib`` with
  ``port/port_linux.c`` (raw write/exit system calls, no libc); run with ``qemu-aarch64 -cpu``.
  Instructions are counted in a second run with one instruction per translation block and the
  execution log (``-singlestep -d exec,nochain``), keeping the model's functions only.
* ``host``: the host compiler, run natively (no instruction count).

Sizes come from the ELF file itself: flash = text + rodata (+ the .data image), RAM = data +
bss; the weight arrays (``sbw_*``), the test vector (``sbt_*``) and the arena (``sb_arena``)
are read from the symbol table, so the rest is the runtime's own overhead (code, start-up).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsebench.errors import SparsebenchError
from sparsebench.embedded.export_c import Export, export_c
from sparsebench.embedded.elf import memory_sizes, read_elf
from sparsebench.embedded.encodings import encoding_label, layer_bytes
from sparsebench.embedded.targets import BuildSpec, Target

TOLERANCE = 1e-4
APT_HINT = {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
            "qemu-system-arm": "qemu-system-arm",
            "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
            "qemu-aarch64": "qemu-user"}
_LINE = re.compile(r"^sb: (output\[(\d+)\] = .*\(0x([0-9a-f]{8})\)|ticks = (\d+)|"
                   r"stack_used = (\d+)|(PASS|FAIL|FAULT)|qoutput\[(\d+)\] = (-?\d+)|"
                   r"mismatches = (\d+))")


def _spec(target: Target) -> BuildSpec:
    if target.build is None:
        raise SparsebenchError(f"target {target.name!r} has no [build] section: --build needs "
                               f"a compiler (and an emulator) for it")
    return target.build


def check_tools(target: Target) -> list[str]:
    """The tools ``--build`` needs for ``target``; a one-line error naming the missing ones."""
    spec = _spec(target)
    tools = [spec.cc] + ([spec.qemu] if spec.qemu and spec.kind != "host" else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = " ".join(APT_HINT.get(t, t) for t in missing)
        raise SparsebenchError(f"--build for {target.name} needs {' and '.join(missing)}, not "
                               f"found on PATH (Debian/Ubuntu: apt-get install {pkgs})")
    return tools


def _run(cmd: list[str], what: str, timeout: float, cwd: Path | None = None
         ) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SparsebenchError(f"{what} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise SparsebenchError(f"{what} could not start: {exc}") from None


def compile_export(exp: Export, target: Target, work: Path) -> tuple[Path, list[str]]:
    """Compile ``exp`` for ``target`` into ``work/model.elf``; returns (path, command)."""
    spec = _spec(target)
    src, port = exp.out_dir, exp.out_dir / "port"
    elf = work / "model.elf"
    sources = [str(src / f) for f in ("main.c", "sb_model.c", "sb_kernels.c")]
    common = [spec.cc, *spec.cflags, "-std=c99", "-O2", "-Wall", "-I", str(src)]
    if spec.kind == "baremetal-m":
        script = (port / "link_cm.ld").read_text()
        for key, value in (("FLASH_ORIGIN", spec.flash_origin), ("FLASH_LENGTH", spec.flash_length),
                           ("RAM_ORIGIN", spec.ram_origin), ("RAM_LENGTH", spec.ram_length),
                           ("STACK_BYTES", spec.stack_bytes)):
            script = script.replace(f"@{key}@", hex(value))
        (work / "link.ld").write_text(script)
        cmd = [*common, "-ffreestanding", "-nostdlib", "-ffunction-sections", "-fdata-sections",
               "-DSB_PORT", "-DSB_PORT_TICKS", "-DSB_PORT_STACK", "-I", str(port),
               "-T", str(work / "link.ld"), "-Wl,--gc-sections", *sources,
               str(port / "port_cm.c"), "-o", str(elf), "-lgcc"]
    elif spec.kind == "linux-user":
        cmd = [*common, "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector",
               "-fno-pie", "-no-pie", "-DSB_PORT", "-I", str(port), *sources,
               str(port / "port_linux.c"), "-o", str(elf), "-lgcc"]
    else:
        cmd = [*common, *sources, "-o", str(elf)]
    proc = _run(cmd, f"{spec.cc}", 600)
    if proc.returncode != 0:
        text = proc.stderr.strip()
        overflow = re.search(r"region `?(\w+)'? overflowed by (\d+) bytes", text)
        if overflow:
            raise SparsebenchError(f"the model does not fit the emulated board's "
                                   f"{overflow.group(1)} ({spec.machine}): overflowed by "
                                   f"{int(overflow.group(2)):,} bytes")
        first = next((ln for ln in text.splitlines() if "error" in ln), text[:300])
        raise SparsebenchError(f"{spec.cc} failed: {first}")
    return elf, cmd


def run_command(target: Target, elf: Path) -> list[str]:
    spec = _spec(target)
    if spec.kind == "baremetal-m":
        return [spec.qemu or "qemu-system-arm", "-machine", spec.machine or "",
                *(["-cpu", spec.cpu] if spec.cpu else []), "-nographic", "-monitor", "none",
                "-serial", "none", "-semihosting-config", "enable=on,target=native",
                "-icount", "shift=0", "-kernel", str(elf)]
    if spec.kind == "linux-user":
        return [spec.qemu or "qemu-aarch64", *(["-cpu", spec.cpu] if spec.cpu else []),
                str(elf)]
    return [str(elf)]


def parse_output(text: str, n_out: int) -> dict[str, Any]:
    """Outputs (exact float32 from their bits), ticks, stack use and the verdict line."""
    out = np.full(n_out, np.nan, dtype=np.float32)
    qout = np.full(n_out, -1000, dtype=np.int64)       # int8 models: -1000 = not printed
    found: dict[str, Any] = {"status": None, "ticks": None, "stack_used": None,
                             "mismatches": None}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        if m.group(2) is not None and int(m.group(2)) < n_out:
            out[int(m.group(2))] = struct.unpack("<f", bytes.fromhex(m.group(3))[::-1])[0]
        elif m.group(4) is not None:
            found["ticks"] = int(m.group(4))
        elif m.group(5) is not None:
            found["stack_used"] = int(m.group(5))
        elif m.group(6) is not None:
            found["status"] = m.group(6)
        elif m.group(7) is not None and int(m.group(7)) < n_out:
            qout[int(m.group(7))] = int(m.group(8))
        elif m.group(9) is not None:
            found["mismatches"] = int(m.group(9))
    found["outputs"] = out
    found["qoutputs"] = qout
    return found


def count_user_instructions(target: Target, elf: Path, timeout: float) -> int | None:
    """Instructions executed inside ``sb_run`` and the kernels, under qemu-user with one
    instruction per translation block and the exec log; None if this QEMU cannot log them."""
    spec = _spec(target)
    qemu = spec.qemu or "qemu-aarch64"
    help_text = _run([qemu, "-h"], qemu, 30).stdout
    flag = "-one-insn-per-tb" if "-one-insn-per-tb" in help_text else \
        "-singlestep" if "-singlestep" in help_text else None
    if flag is None:
        return None
    cmd = [qemu, *(["-cpu", spec.cpu] if spec.cpu else []), flag, "-d", "exec,nochain",
           str(elf)]
    count = 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail = line.rstrip().rsplit(b" ", 1)[-1]
            if tail == b"sb_run" or tail.startswith((b"sbk_", b"sbq_", b"sb_conv")):
                count += 1
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
    return count


def analytic_weight_bytes(exp: Export, block: tuple[int, int] = (4, 4)) -> int:
    """The exported encodings' bytes by the profile's formulas (independent of the arrays)."""
    total = 0
    for op in exp.graph.weight_ops():
        key = op.weight_key or op.name
        assert op.weight is not None
        _, sizes = layer_bytes(op.weight, op.bias_len, block)
        total += sizes[exp.encodings[key]] or 0
    consts = [op for op in exp.graph.ops if op.weight is None and op.consts and not exp.int8]
    for op in consts:
        if op.kind == "bn":
            total += 4 * (op.consts["scale"].size + op.consts["shift"].size)
        else:
            from sparsebench.embedded.export_c import _channel_const

            value = _channel_const(op)
            total += 4 * (value.size if value is not None else 0)
    return total


def _estimate_fields(est: Any, target: Target, emulated: int | None) -> dict[str, Any]:
    """The estimate beside the emulated count: instructions when calibrated, else cycles."""
    if est is None:
        return {"estimated_instructions": None, "estimated_cycles": None}
    if est.instructions is None:
        return {"estimated_instructions": None, "estimate_source": est.source,
                "estimated_cycles": est.seconds * target.clock_mhz * 1e6}
    return {"estimated_instructions": est.instructions, "estimated_cycles": None,
            "estimate_source": est.source, "estimate_uncalibrated_ops": est.uncalibrated,
            "estimate_error": (None if not emulated else (est.instructions - emulated) / emulated)}


def build_and_run(module: torch.nn.Module, input_shape: tuple[int, ...], target: Target, *,
                  encoding: str | dict[str, str] = "auto", work_dir: str | Path | None = None,
                  timeout: float = 300.0, name: str = "model", count: bool = True,
                  estimate: Any = None, qmodel: Any = None,
                  test_input: np.ndarray | None = None, block: tuple[int, int] = (4, 4)
                  ) -> dict[str, Any]:
    """Export, cross-compile, measure and run ``module`` for ``target`` (see the docstring).
    int8 encodings need ``qmodel``; their emulated int8 output must equal the Python integer
    reference's exactly. ``estimate`` (``estimate.ModelEstimate``) is reported beside the
    emulated count."""
    spec = _spec(target)
    check_tools(target)
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sparsebench-build-")
        work = Path(tmp.name)
    else:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        exp = export_c(module, input_shape, work / "src", encoding=encoding, name=name,
                       qmodel=qmodel, test_input=test_input, block=block)
        elf_path, cmd = compile_export(exp, target, work)
        elf = read_elf(elf_path)
        sizes = memory_sizes(elf)
        weights = sum(elf.symbol_sizes("sbw_").values())
        vector = sum(elf.symbol_sizes("sbt_").values())
        arena = elf.symbols.get("sb_arena", (0, 0))[0]
        stack_sec = next((s.size for s in elf.sections if s.name == ".stack"), None)
        run = run_command(target, elf_path)
        proc = _run(run, run[0], timeout)
        parsed = parse_output(proc.stdout + "\n" + proc.stderr,
                              exp.expected.size)  # type: ignore[union-attr]
        if parsed["status"] is None:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise SparsebenchError(f"the emulated run printed no result (exit code "
                                   f"{proc.returncode}): {' | '.join(tail)[:300]}")
        int8: dict[str, Any] = {"int8": exp.int8}
        if exp.int8:
            got = parsed["qoutputs"]
            want = np.asarray(exp.expected_q, dtype=np.int64)
            equal = int((got == want).sum())
            deq = exp.qmodel.output.dequantize(np.clip(got, -128, 127))
            err = float(np.max(np.abs(deq - exp.expected.astype(np.float64))))  # type: ignore
            int8.update(bit_exact=equal == want.size, outputs_equal=equal,
                        outputs=want.size, emulated_q=got.tolist(), reference_q=want.tolist(),
                        dequantized_err_vs_torch=err)
            ok = equal == want.size
        else:
            err = float(np.max(np.abs(parsed["outputs"].astype(np.float64)
                                      - exp.expected.astype(np.float64))))  # type: ignore
            ok = bool(err <= TOLERANCE)
        instructions, note = None, ""
        if spec.kind == "baremetal-m" and parsed["ticks"] is not None:
            per_tick = 1e9 / spec.sysclk_hz
            instructions = round(parsed["ticks"] * per_tick)
            note = (f"SysTick {parsed['ticks']:,} ticks x {per_tick:g} instructions/tick "
                    f"(-icount shift=0); at 1 instruction/cycle "
                    f"{instructions / (target.clock_mhz * 1e3):.2f} ms at {target.clock_mhz:g} MHz")
        elif spec.kind == "linux-user" and count:
            instructions = count_user_instructions(target, elf_path, timeout)
            note = ("qemu-user exec log, one instruction per block, sb_run + kernels"
                    if instructions is not None else "this qemu cannot count instructions")
            if instructions is not None:
                note += (f"; at 1 instruction/cycle {instructions / (target.clock_mhz * 1e3):.2f}"
                         f" ms at {target.clock_mhz:g} MHz")
        analytic_w = analytic_weight_bytes(exp, block)
        return {
            "compiler": " ".join([spec.cc, *spec.cflags]),
            "runner": " ".join(run[:-1]) + " model.elf" if spec.kind != "host" else "native",
            "command": cmd, "encodings": ", ".join(f"{k}={encoding_label(v, block)}"
                                                  for k, v in exp.encodings.items()),
            "sections": {s.name: s.size for s in elf.sections if s.alloc},
            "flash": sizes["flash"], "ram": sizes["ram"],
            "analytic_flash": analytic_w, "analytic_ram": exp.arena.size,
            "weights_measured": weights, "weights_analytic": analytic_w,
            "test_vector": vector, "runtime_flash": sizes["flash"] - weights - vector,
            "arena_measured": arena, "arena_analytic": exp.arena.size,
            "runtime_ram": sizes["ram"] - arena,
            "stack_used": parsed["stack_used"], "stack_reserved": stack_sec,
            "instructions": instructions, "instructions_note": note,
            **_estimate_fields(estimate, target, instructions),
            "max_abs_err": err, "tolerance": TOLERANCE, **int8,
            "output_ok": ok and parsed["status"] == "PASS",
            "status": parsed["status"], "exit_code": proc.returncode,
            "work_dir": str(work) if tmp is None else None,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
