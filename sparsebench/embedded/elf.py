"""Section and symbol sizes of an ELF file (32/64-bit, little-endian), read without binutils."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from sparsebench.errors import SparsebenchError

SHF_WRITE, SHF_ALLOC = 0x1, 0x2
SHT_SYMTAB, SHT_NOBITS = 2, 8


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    size: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def writable(self) -> bool:
        return bool(self.flags & SHF_WRITE)

    @property
    def nobits(self) -> bool:
        return self.type == SHT_NOBITS


@dataclass(frozen=True)
class Elf:
    sections: list[Section]
    symbols: dict[str, tuple[int, int]]   # name -> (size, value); the first definition wins

    def symbol_sizes(self, prefix: str) -> dict[str, int]:
        return {n: s for n, (s, _) in self.symbols.items() if n.startswith(prefix)}

    def symbol_range(self, name: str) -> tuple[int, int] | None:
        if name not in self.symbols:
            return None
        size, value = self.symbols[name]
        value &= ~1   # Thumb function addresses have bit 0 set
        return value, value + size


def read_elf(path: str | Path) -> Elf:
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[5] != 1:
        raise SparsebenchError(f"{path} is not a little-endian ELF file")
    wide = data[4] == 2
    if wide:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        shdr = "<IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
        shdr = "<IIIIIIIIII"
    raw = [struct.unpack_from(shdr, data, shoff + i * shentsize) for i in range(shnum)]
    # fields: name, type, flags, addr, offset, size, link, info, addralign, entsize
    strtab_off = raw[shstrndx][4]

    def name_at(base: int, off: int) -> str:
        end = data.index(b"\0", base + off)
        return data[base + off:end].decode("utf-8", "replace")

    sections = [Section(name_at(strtab_off, h[0]), h[1], h[2], h[5]) for h in raw]
    symbols: dict[str, tuple[int, int]] = {}
    for h in raw:
        if h[1] != SHT_SYMTAB:
            continue
        names_off = raw[h[6]][4]
        entsize = h[9] or (24 if wide else 16)
        for i in range(h[5] // entsize):
            off = h[4] + i * entsize
            if wide:
                st_name, _info, _other, _shndx, value, size = struct.unpack_from("<IBBHQQ",
                                                                                 data, off)
            else:
                st_name, value, size, _info, _other, _shndx = struct.unpack_from("<IIIBBH",
                                                                                 data, off)
            if st_name:
                symbols.setdefault(name_at(names_off, st_name), (size, value))
    return Elf(sections, symbols)


def memory_sizes(elf: Elf, skip: tuple[str, ...] = (".stack",)) -> dict[str, int]:
    """``flash`` = read-only allocated sections + the initialised-data image; ``ram`` = data +
    bss (writable allocated sections); ``skip``ped sections (the reserved stack) excluded."""
    flash = ram = 0
    for s in elf.sections:
        if not s.alloc or s.name in skip:
            continue
        if s.writable:
            ram += s.size
            if not s.nobits:
                flash += s.size   # the initial values of .data live in flash
        elif not s.nobits:
            flash += s.size
    return {"flash": flash, "ram": ram}
