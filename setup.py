"""Packaging hook (the metadata is in pyproject.toml): a wheel carries the files outside the
package that an installed sparsebench needs, copied into ``sparsebench/_shipped/`` when the wheel
is built (see sparsebench/shipped.py). Editable installs read them from the checkout instead."""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

# repository-relative globs; also listed in MANIFEST.in for the sdist
SHIPPED = ["kernels/*.cpp", "kernels/*.hpp", "kernels/*.h", "kernels/Makefile",
           "kernels/test_kernels.c", "models/lenet5_prune_l.pt"]


class BuildWithShippedFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = os.path.dirname(os.path.abspath(__file__))
        for pattern in SHIPPED:
            matches = sorted(glob.glob(os.path.join(here, pattern)))
            if not matches:
                raise RuntimeError(f"setup.py: nothing matches {pattern!r}")
            for src in matches:
                rel = os.path.relpath(src, here)
                dest = os.path.join(self.build_lib, "sparsebench", "_shipped", rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(src, dest)


setup(cmdclass={"build_py": BuildWithShippedFiles})
