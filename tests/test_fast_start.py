"""Fast start: building the parser, rendering every --help and the common argument errors do not
import torch (nor numpy); torch is imported inside the commands that need it. Run in a fresh
interpreter, since the test process has torch loaded already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "scipy", "onnx", "onnxruntime")

PROBE = r"""
import contextlib, io, json, sys
from sparsebench.cli import COMMANDS, build_parser, main
parser = build_parser()
codes = {}
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    codes["--help"] = main(["--help"])
    for name in sorted(COMMANDS):
        codes[name + " --help"] = main([name, "--help"])
    for argv in ARGV:
        codes[" ".join(argv)] = main(argv)
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"codes": codes, "heavy": heavy}))
"""

# one-line errors that must not cost a torch import: argparse errors and name checks
ERRORS = [["measure", "--batch", "x"], ["measure", "--streams", "x"],
          ["measure", "--streams", "0"], ["measure", "--formats", "nope"],
          ["measure", "--backends", "nope"], ["train"], ["train", "--arch", "nope"],
          ["train", "--arch", "lenet5", "--method", "nope"], ["sweep"],
          ["sweep", "--arch", "nope"], ["compare"], ["nope"], ["claims", "--executor", "x"]]


def _probe(argv: list[list[str]]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"ARGV = {argv!r}\nHEAVY = {HEAVY!r}\n" + PROBE
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_and_argument_errors_do_not_import_torch() -> None:
    out = _probe(ERRORS)
    assert out["heavy"] == [], f"imported while building the parser or failing early: {out}"
    assert out["codes"]["--help"] == 0
    assert all(code == 0 for k, code in out["codes"].items() if k.endswith("--help")), out
    assert all(out["codes"][" ".join(a)] == 2 for a in ERRORS), out["codes"]


def test_help_still_lists_registry_names() -> None:
    """The names come from sparsebench.catalog, without importing the implementations."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv, names in ((["train", "--help"], ("lenet5", "vgg11_bn", "fashion-mnist", "prune-l")),
                        (["measure", "--help"], ("csr", "bsr-8x8", "onnxruntime", "native")),
                        (["sweep", "--help"], ("resnet18", "ffn"))):
        proc = subprocess.run([sys.executable, "-m", "sparsebench", *argv], capture_output=True,
                              text=True, env={**env, "COLUMNS": "200"}, cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr
        for name in names:
            assert name in proc.stdout, (argv, name)


def test_catalog_entries_resolve_to_the_implementations() -> None:
    """Every "module:attr" entry of the catalog imports (no name lists out of sync)."""
    from sparsebench.catalog import ARCHS, BACKENDS, DATASETS, FORMATS
    from sparsebench.registry import resolve

    for registry in (ARCHS, DATASETS, FORMATS, BACKENDS):
        for name in registry.names():
            assert callable(registry.get(name)), (registry.kind, name)
    assert callable(resolve(ARCHS.meta("ffn")["from_state"]))
