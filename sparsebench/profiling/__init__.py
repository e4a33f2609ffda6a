"""Embedded-target profiling: per-layer encodings, arena plan, verdict, estimate, cross-build.

``profile_model(module, input_shape, load_target("cortex-m7"))`` returns a :class:`Profile`;
``report.print_profile`` / ``report.markdown`` / ``summary.to_dict`` render it;
``build.build_and_run`` checks it on a real cross-compiled build under QEMU. See docs/profile.md.
"""

from __future__ import annotations

from sparsebench.profiling.summary import Profile, host_latency, profile_model, to_dict

__all__ = ["Profile", "host_latency", "profile_model", "to_dict"]
