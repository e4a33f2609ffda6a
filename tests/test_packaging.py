"""A wheel carries what an installed sparsebench needs outside the package: the kernel sources
and the zoo's default model (setup.py ``SHIPPED``, read by sparsebench/shipped.py). The full
check, a wheel installed in a fresh venv measuring with the native backend, is in .ci/run."""

from __future__ import annotations

import ast
import glob
from pathlib import Path

import sparsebench.shipped as shipped
from sparsebench.native.build import HEADERS, SOURCES

ROOT = Path(__file__).resolve().parents[1]


def _shipped_globs() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SHIPPED":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no SHIPPED list")


def test_wheel_ships_the_kernel_sources_and_the_default_model() -> None:
    files = {Path(f).relative_to(ROOT).as_posix()
             for pattern in _shipped_globs() for f in glob.glob(str(ROOT / pattern))}
    needed = {f"kernels/{name}" for name in SOURCES + HEADERS}
    assert needed <= files, needed - files
    assert "models/lenet5_prune_l.pt" in files
    manifest = (ROOT / "MANIFEST.in").read_text()  # the sdist carries them too
    for pattern in _shipped_globs():
        assert pattern in manifest, pattern


def test_checkout_paths_and_the_wheel_copy_preferred(monkeypatch, tmp_path) -> None:
    assert shipped.KERNEL_SOURCES == ROOT / "kernels"  # a checkout: no _shipped/ folder
    assert shipped.DEFAULT_MODEL == ROOT / "models" / "lenet5_prune_l.pt"
    assert shipped.DEFAULT_MODEL.is_file()
    (tmp_path / "kernels").mkdir()
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    assert shipped.shipped_path("kernels") == tmp_path / "kernels"
    assert shipped.shipped_path("models/lenet5_prune_l.pt") == ROOT / "models/lenet5_prune_l.pt"
