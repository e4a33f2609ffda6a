"""The embedded wing: what a model costs on a microcontroller or a small Linux board.

* ``targets/``: the boards (TOML, each citing its sources), ``load_target(name or path)``;
* ``lowering``: the model graph (``sparsebench.graph``) as the C runtime sees it;
* ``encodings``, ``arena``, ``estimate``, ``summary``, ``report``: per-layer bytes under twelve
  weight encodings, the static arena, a labelled estimate (instructions fitted on QEMU counts
  per target where ``calibrate`` has been run, else a roofline), the fits-or-not verdict;
* ``export_c`` (+ ``csrc/``): the model as self-contained C99; ``build`` + ``elf``: a real
  cross-build run under QEMU; ``calibrate``: the fit of the estimate's coefficients from
  single-layer images run under QEMU (``python -m sparsebench.embedded.calibrate``);
* ``command``: what the ``targets``, ``profile`` and ``export-c`` commands do.

``summary.profile_model(module, input_shape, load_target("cortex-m7"))`` returns a ``Profile``.
See docs/profile.md.
"""
