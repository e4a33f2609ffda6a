"""Fresh worker processes without the start-up cost: a parent that has imported what every
worker imports (torch, sparsebench, the first shape trace) forks one child per execution.

Each execution still runs in its own new process (architecture rule 5): the child measures
its baseline RSS after the fork, frees its setup, and is gone once its row is written, so no
execution sees another's memory; only the ~2-3 s of interpreter start, imports and tracing
are paid once per run instead of once per execution. The parent never runs a model and starts
no thread pool (forking after one has run is unsafe).

Protocol (one JSON object per line): the harness writes a job on the server's stdin; the
server answers ``{"pid": N}`` once the child is forked, then ``{"rc": CODE, "row": ROW|null,
"stderr": LAST_LINE}`` once it has exited. The child's own stdout and stderr go to a file
(libraries that print cannot break the protocol).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from typing import IO, Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


PAGE = os.sysconf("SC_PAGE_SIZE")
MADV_POPULATE_READ = 22  # Linux 5.14+


def resident_file_pages() -> list[tuple[int, int]]:
    """(address, length) runs of this process's file-backed pages (library code, constants)
    that are mapped in its page tables now (``/proc/self/pagemap``: present bit)."""
    import numpy as np

    runs: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps:
                parts = line.split()
                if len(parts) < 6 or parts[4] == "0" or not parts[5].startswith("/"):
                    continue
                start, end = (int(x, 16) for x in parts[0].split("-"))
                pagemap.seek(start // PAGE * 8)
                entries = np.frombuffer(pagemap.read((end - start) // PAGE * 8), dtype="<u8")
                present = np.concatenate([[0], (entries >> 63).astype(np.int8), [0]])
                edges = np.flatnonzero(np.diff(present))
                runs += [(start + int(a) * PAGE, int(b - a) * PAGE)
                         for a, b in zip(edges[::2], edges[1::2])]
    except (OSError, ValueError):
        return []
    return runs


def map_like_parent(runs: list[tuple[int, int]]) -> None:
    """Map the parent's resident file pages into this forked child's page tables. A fork
    copies the page-table entries of anonymous memory but not of file mappings, so without
    this the child would count the interpreter's and libraries' code pages it touches again
    as new memory; with it, its RSS starts where a fresh worker's does after the imports."""
    import ctypes

    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for addr, length in runs:
        madvise(addr, length, MADV_POPULATE_READ)


def _child(job: dict[str, Any], out_path: str, log_path: str,
           runs: list[tuple[int, int]]) -> None:
    """In the forked child: run the job, write its row to ``out_path``, never return."""
    code = 0
    try:
        map_like_parent(runs)
        for var in THREAD_VARS:
            os.environ[var] = str(job["threads"])
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        from sparsebench.measure.worker import safe_run_job

        row = safe_run_job(job)
        with open(out_path, "w") as f:
            f.write(json.dumps(row))
    except BaseException:  # noqa: BLE001 - the parent reports the exit code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def serve(stdin: IO[str] = sys.stdin, stdout: IO[str] = sys.stdout) -> int:
    """The server loop (``python -m sparsebench.measure.forkserver``)."""
    import torch  # noqa: F401 - the imports every worker makes, once

    import sparsebench.backends  # noqa: F401
    import sparsebench.formats  # noqa: F401
    import sparsebench.loading  # noqa: F401
    from sparsebench.measure import timing, worker  # noqa: F401

    worker.warm_up_tracing()
    runs = resident_file_pages()
    stdout.write(json.dumps({"ready": os.getpid()}) + "\n")
    stdout.flush()
    with tempfile.TemporaryDirectory(prefix="sparsebench-worker-") as tmp:
        out_path, log_path = os.path.join(tmp, "row.json"), os.path.join(tmp, "log.txt")
        for line in stdin:
            job = json.loads(line)
            for path in (out_path, log_path):
                if os.path.exists(path):
                    os.unlink(path)
            worker.release_memory()  # no free heap to inherit: a child's trim would count it
            pid = os.fork()
            if pid == 0:
                _child(job, out_path, log_path, runs)
            stdout.write(json.dumps({"pid": pid}) + "\n")
            stdout.flush()
            _, status = os.waitpid(pid, 0)
            row = None
            if os.path.exists(out_path):
                with open(out_path) as f:
                    row = json.loads(f.read())
            stdout.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "row": row,
                                     "stderr": _last_line(log_path)}) + "\n")
            stdout.flush()
    return 0


class ForkServer:
    """The harness's handle on one server process (started on first use, restarted if it
    dies). ``run`` executes one job in a child forked for it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sparsebench.measure.forkserver"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0)
            self._buf = b""
            self._read(None)  # {"ready": pid}
        return self.proc

    def _read(self, timeout: float | None) -> dict[str, Any] | None:
        """The server's next line (None: nothing within ``timeout`` seconds); raises
        ``ChildProcessError`` when the server has exited."""
        import time

        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            if deadline is not None:
                ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.close()
                raise ChildProcessError("the worker server exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, job: dict[str, Any], timeout: float) -> tuple[int, dict[str, Any] | None, str]:
        """(exit code, row or None, last stderr line) of ``job`` in a freshly forked child;
        ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the child is killed)."""
        import signal

        proc = self._start()
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(job) + "\n").encode())
        pid = (self._read(None) or {})["pid"]
        finished = False
        try:
            done = self._read(timeout)
            if done is None:  # the server has not reaped the child: its pid is still its own
                os.kill(pid, signal.SIGKILL)
                self._read(None)
                finished = True
                raise subprocess.TimeoutExpired("worker", timeout)
            finished = True
        except BaseException:  # Ctrl-C, SIGTERM: the running child and the server end too
            if not finished:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.close()
            raise
        return int(done["rc"]), done.get("row"), done.get("stderr") or ""

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f:
                    f.close()
            self.proc = None

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    try:
        raise SystemExit(serve())
    except (KeyboardInterrupt, BrokenPipeError):
        os._exit(1)
