"""The DeepSparse side of ``deepsparse_compare.py``: run with the side venv's Python (DeepSparse
1.8 needs Python <= 3.11 and numpy < 2, so it never shares a process with sparsebench).

Reads one JSON command per line on stdin and answers one JSON line on stdout:

* ``{"cmd": "hello"}`` -> versions (the parent's "is the side venv usable" check);
* ``{"cmd": "compile", "model": PATH, "batch": B, "threads": T, "inputs": NPZ, "names": [...],
  "outputs": NPZ}`` -> compiles once (``num_cores=T``), runs the inputs once and saves the
  outputs for the parent's error check;
* ``{"cmd": "time", "calls": N, "settle": S}`` -> ``samples_ns``: S untimed calls, then N timed
  ones with sparsebench's own timing loop (``sparsebench.measure.timing`` is stdlib only; this
  file puts the checkout on ``sys.path`` for it, nothing else of the package is imported);
* ``{"cmd": "quit"}``.

Errors answer ``{"ok": false, "error": "..."}``. Whatever DeepSparse prints goes to stderr: the
protocol owns the original stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NM_DISABLE_ANALYTICS", "True")


def _protocol_stdout() -> Any:
    """A private copy of stdout for the replies; fd 1 then points at stderr, so banners and
    logs of the engine (C++ code writing to fd 1) cannot corrupt the protocol."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Server:
    def __init__(self) -> None:
        self.engine: Any = None
        self.inputs: list[Any] = []

    def hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        import platform

        import deepsparse
        import numpy

        return {"deepsparse": deepsparse.__version__, "numpy": numpy.__version__,
                "python": platform.python_version()}

    def compile(self, msg: dict[str, Any]) -> dict[str, Any]:
        import deepsparse
        import numpy as np

        from sparsebench.measure.timing import clock

        data = np.load(msg["inputs"])
        self.inputs = [np.ascontiguousarray(data[name]) for name in msg["names"]]
        t0 = clock()
        self.engine = deepsparse.compile_model(msg["model"], batch_size=int(msg["batch"]),
                                               num_cores=int(msg["threads"]))
        compile_s = (clock() - t0) / 1e9
        outputs = self.engine.run(self.inputs)
        np.savez(msg["outputs"], *outputs)
        facts = {}
        for key in ("num_cores", "num_streams", "fraction_of_supported_ops", "cpu_avx_type"):
            try:
                value = getattr(self.engine, key)
                facts[key] = value if isinstance(value, (int, float, str)) else str(value)
            except Exception:  # noqa: BLE001 - facts are optional
                pass
        return {"compile_s": compile_s, "engine": facts}

    def time(self, msg: dict[str, Any]) -> dict[str, Any]:
        from sparsebench.measure.timing import TimingPolicy, time_calls

        if self.engine is None:
            raise RuntimeError("time before compile")
        calls = int(msg["calls"])
        engine, inputs = self.engine, self.inputs
        policy = TimingPolicy(warmup_calls=int(msg.get("settle", 1)), warmup_seconds=0.0,
                              min_calls=calls, min_seconds=0.0, max_calls=calls)
        return {"samples_ns": time_calls(lambda: engine.run(inputs, val_inp=False), policy)}


def main() -> int:
    out = _protocol_stdout()
    server = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "quit":
            break
        try:
            if cmd not in ("hello", "compile", "time"):
                raise ValueError(f"unknown command {cmd!r}")
            reply = {"ok": True, **getattr(server, cmd)(msg)}
        except Exception as exc:  # noqa: BLE001 - every failure is an answer to the parent
            text = (str(exc).strip().splitlines() or [""])[0]
            reply = {"ok": False, "error": f"{type(exc).__name__}: {text}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
