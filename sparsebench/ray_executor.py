"""Grids beyond one machine: each training run as a Ray task (``claims --executor ray``).

Ray is an optional extra (``pip install 'sparsebench[ray]'``), imported only here. Without
``address`` a local Ray instance is started (and stopped afterwards); with it, the driver joins
that cluster. Each task runs one ``sparsebench train`` command with ``num_cpus`` equal to its
thread count and returns the finished run's summary record (history, no weights), which the
driver writes, so the summaries come back even when the run folders are not shared between the
machines (the checkpoints then stay on the machine that trained them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from sparsebench.errors import SparsebenchError


def run_commands(jobs: list[tuple[list[str], Path, str]], threads: int, address: str | None,
                 task: Callable[[list[str], str, str], tuple[str | None, dict | None]]
                 ) -> list[tuple[str | None, dict[str, Any] | None]]:
    """Run ``(command, checkpoint path, name)`` jobs as Ray tasks of ``task(command, out,
    name) -> (error, record)`` (``claims.train_task``); per job (error, record)."""
    try:
        import ray
    except ImportError:
        raise SparsebenchError("--executor ray needs Ray: pip install 'sparsebench[ray]'") \
            from None
    started = not ray.is_initialized()
    if started:
        # Ray runs its workers at niceness 15 by default; a training run is the work itself,
        # and at nice 15 it starves beside any other busy process (measured: import torch
        # 34 s instead of 2 s with two trainings running). Applies to a local instance.
        os.environ.setdefault("RAY_worker_niceness", "0")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds for a bad address
            raise SparsebenchError(f"cannot start or join Ray"
                                   f"{' at ' + address if address else ''}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                   ) from None
    try:
        remote = ray.remote(num_cpus=threads)(task)
        refs = [remote.remote(cmd, str(out), name) for cmd, out, name in jobs]
        results = []
        for ref in refs:
            try:
                results.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - a task that died (node lost, ...)
                results.append((f"Ray task failed: {type(exc).__name__}", None))
        return results
    finally:
        if started:
            ray.shutdown()
