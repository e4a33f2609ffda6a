"""Throughput mode (``measure --streams N``): N concurrent callers of one execution, as in
DeepSparse's asynchronous scenario, and the items per second they complete together.

Each stream is a **process** forked from the worker, which prepares its own copy of the
execution (load, convert, prepare: ``worker.prepare_call``) and calls it in a loop on its own
input. Processes, not threads in the worker:

* a native plan owns its scratch buffers (not re-entrant), and the kernels' thread pool runs
  one job at a time per process (``kernels/threadpool.cpp``): threads would take turns;
* torch modules under ``inference_mode`` and ONNX Runtime's ``InferenceSession.run`` are safe
  to call from several threads, and both release the GIL inside their ops, but the Python
  between the ops holds it: on small models (LeNet-5: 0.02-0.2 ms a call, mostly Python) N
  threads serialise to about one stream's rate;
* a process gives each stream exactly ``--threads`` intra-op threads of its own (a torch pool,
  an ONNX Runtime session pool, a kernel pool), as a DeepSparse stream has.

The streams are forked when the worker starts, before it has run anything: a process forked
after torch's OpenMP (libgomp) pool has run hangs at its next parallel op, and a fork copies
no pool threads (ONNX Runtime's, the kernels'). Sequence: the streams set up while the worker
does; each warms up (``--warmup`` calls) and reports ready; the worker waits for all of them
before timing its own calls (nothing overlaps its latency), then gives every stream the same
start time, ``--warmup`` seconds ahead (``clock`` is CLOCK_MONOTONIC: the same in every
process); each warms up until then and calls for the timed window (``timing.time_stream``:
``--min-calls`` and ``--min-time``), and sends its raw durations back.

Row fields (``stream_fields``): ``streams``, ``stream_calls`` (completed timed calls of all
streams), ``stream_wall_s`` (the first timed call's start to the last one's end, over all
streams), ``throughput_items_s`` (batch x stream_calls / stream_wall_s) and ``stream_p50_ms``
(the median latency of every call under that load). A stream that fails leaves them None,
with a warning on the row. The streams' memory is not in the row (each is its own process).
"""

from __future__ import annotations

import json
import os
import signal
from typing import IO, Any, Callable

from sparsebench.measure.timing import TimingPolicy, clock, percentile, time_stream

FIELDS = ("streams", "stream_calls", "stream_wall_s", "throughput_items_s", "stream_p50_ms")
MIN_LEAD_SECONDS = 0.05  # the start time is at least this far ahead (the streams must get it)


def stream_fields(count: int, samples: list[list[int]] | None = None,
                  spans: list[tuple[int, int]] | None = None,
                  batch: int = 1) -> dict[str, Any]:
    """The row fields of ``count`` streams from their raw durations (ns) and (first start, last
    end) spans; None values when not measured."""
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    out["streams"] = count
    if not samples or not spans:
        return out
    calls = sum(len(s) for s in samples)
    wall = (max(end for _, end in spans) - min(first for first, _ in spans)) / 1e9
    pooled = sorted(d / 1e6 for s in samples for d in s)
    out.update(stream_calls=calls, stream_wall_s=wall,
               throughput_items_s=batch * calls / wall if wall > 0 else None,
               stream_p50_ms=percentile(pooled, 50))
    return out


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:200]


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the worker that forked it dies (timeouts kill it)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stream(job: dict[str, Any], make_call: Callable[[dict[str, Any]], Callable[[], object]],
            go: IO[bytes], out: IO[bytes]) -> None:
    """In a forked stream process: prepare, warm up, say ready, time from the start time given,
    send the durations; never returns."""
    code = 0
    try:
        _die_with_parent()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # the worker's stdout carries its row (fresh-interpreter mode)
        policy = TimingPolicy(**job.get("timing", {}))
        call = make_call(job)
        for _ in range(max(policy.warmup_calls, 1)):
            call()
        out.write(b"ready\n")
        out.flush()
        line = go.readline().strip()
        if line:
            samples, first, end = time_stream(call, int(line), policy)
            out.write((json.dumps({"samples_ns": samples, "span": [first, end]}) + "\n").encode())
            out.flush()
    except BaseException as exc:  # noqa: BLE001 - reported to the worker as one line
        code = 1
        try:
            out.write(f"error: {_first_line(exc)}\n".encode())
            out.flush()
        except OSError:
            pass
    finally:
        os._exit(code)


class Streams:
    """``count`` stream processes of ``job``, forked now (call it before the worker runs
    anything); ``make_call(job)`` runs in each and returns the call to time. Use ``ready`` before
    the worker's own timed calls, then ``measure``; ``close`` always (ends what is left)."""

    def __init__(self, job: dict[str, Any], count: int,
                 make_call: Callable[[dict[str, Any]], Callable[[], object]]) -> None:
        self.count = count
        self.children: list[tuple[int, IO[bytes], IO[bytes]]] = []  # (pid, from it, to it)
        self.failed: str | None = None
        try:
            for _ in range(count):
                self._fork(job, make_call)
        except BaseException:
            self.close()
            raise

    def _fork(self, job: dict[str, Any],
              make_call: Callable[[dict[str, Any]], Callable[[], object]]) -> None:
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(up_r)
            os.close(down_w)
            for _, frm, to in self.children:  # the other streams' pipes are not this one's
                frm.close()
                to.close()
            _stream(job, make_call, os.fdopen(down_r, "rb"), os.fdopen(up_w, "wb"))
        os.close(up_w)
        os.close(down_r)
        self.children.append((pid, os.fdopen(up_r, "rb"), os.fdopen(down_w, "wb")))

    def _line(self, frm: IO[bytes]) -> str:
        return frm.readline().decode(errors="replace").strip()

    def ready(self) -> str | None:
        """Wait until every stream is prepared and warmed up; None, or why one is not."""
        for _, frm, _ in self.children:
            line = self._line(frm)
            if line != "ready" and self.failed is None:
                self.failed = line.removeprefix("error: ") or "a stream process ended"
        return self.failed

    def measure(self, batch: int, policy: TimingPolicy) -> tuple[dict[str, Any], str | None]:
        """Start every stream together and collect them: (row fields, None or why not)."""
        if self.failed is None:
            start = clock() + int(max(policy.warmup_seconds, MIN_LEAD_SECONDS) * 1e9)
            for _, _, to in self.children:
                try:
                    to.write(f"{start}\n".encode())
                    to.flush()
                except OSError:  # that stream has died: its line below says so
                    pass
            samples, spans = [], []
            for _, frm, _ in self.children:
                line = self._line(frm)
                if not line.startswith("{"):
                    self.failed = self.failed or (line.removeprefix("error: ")
                                                  or "a stream process ended")
                    continue
                got = json.loads(line)
                samples.append(got["samples_ns"])
                spans.append(tuple(got["span"]))
            if self.failed is None:
                return stream_fields(self.count, samples, spans, batch), None
        return stream_fields(self.count), self.failed

    def close(self) -> None:
        """Close the pipes (a waiting stream then exits) and reap every stream process."""
        for pid, frm, to in self.children:
            for f in (to, frm):
                try:
                    f.close()
                except OSError:
                    pass
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children = []
