"""``sparsebench compare``: match the rows of two results files (or the two subjects of one
interleaved A/B file) and decide, per row, whether latency, size or memory regressed.

Rows match by (model, format, backend, batch, threads); in an A/B file by (format, backend,
batch, threads) within the file. Latency: see ``stats``. Exact byte counts (``weight_bytes``)
compare exactly: any increase is a regression. Peak RSS is noisy: it regresses only when it
grows by more than ``rss_tolerance`` and by more than ``rss_min_bytes``.

The gate fails closed: a row that is ok in BASE but not ok in NEW (crashed, skipped, timed
out), or whose latency cannot be judged (no raw samples, fewer than 2, or too few blocks to
reach p < alpha, on either side) fails with its reason unless ``allow_missing``, which turns
those into notes. Rows present in only one file, or skipped in BASE, are reported, not failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparsebench.errors import SparsebenchError
from sparsebench.gate.config import GateConfig
from sparsebench.gate.stats import Change, latency_change, min_p_value, verdict
from sparsebench.measure.results import load_results, row_key


@dataclass
class RowResult:
    """One matched row: the latency change and verdict, the byte deltas, what regressed."""

    key: tuple
    base: dict[str, Any]
    new: dict[str, Any]
    change: Change | None
    latency: str
    weight_delta: int | None
    rss_delta: int | None
    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unjudged: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """Every reason this row fails the gate (regressions first)."""
        return self.regressions + self.unjudged


@dataclass
class Comparison:
    """Everything ``compare`` reports; ``exit_code`` is 1 when anything regressed."""

    base_label: str
    new_label: str
    mode: str
    config: GateConfig
    rows: list[RowResult]
    only_base: list[tuple]
    only_new: list[tuple]
    skipped: list[tuple[tuple, str]]
    notes: list[str]

    @property
    def regressions(self) -> list[RowResult]:
        return [r for r in self.rows if r.regressions]

    @property
    def unjudged(self) -> list[RowResult]:
        """Rows the gate cannot vouch for (not ok or too few samples in NEW, ...)."""
        return [r for r in self.rows if r.unjudged and not r.regressions]

    @property
    def exit_code(self) -> int:
        return 1 if any(r.failures for r in self.rows) else 0


def split_ab(doc: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base and new halves of an interleaved A/B results file."""
    if not doc.get("ab"):
        raise SparsebenchError(f"{path} is not an A/B results file (`measure --ab`): give two "
                               "files, BASE.json NEW.json")
    halves = []
    for subject in ("base", "new"):
        halves.append({**doc, "rows": [r for r in doc["rows"] if r.get("subject") == subject]})
    return halves[0], halves[1]


def check_machines(base: dict[str, Any], new: dict[str, Any], allow: bool) -> list[str]:
    """Refuse different CPUs or core counts unless ``allow``; return notes."""
    mb, mn = base.get("machine") or {}, new.get("machine") or {}
    facts = [(k, mb.get(k), mn.get(k)) for k in ("cpu", "logical_cores")]
    differ = [f"{k} {a!r} vs {b!r}" for k, a, b in facts if a != b]
    if not differ:
        return []
    text = "machines differ (" + "; ".join(differ) + ")"
    if not allow:
        raise SparsebenchError(f"{text}: timings are not comparable; pass "
                               "--allow-machine-mismatch to compare anyway")
    return [f"{text}: compared anyway (--allow-machine-mismatch)"]


def load_inputs(paths: list[str], allow_machine_mismatch: bool = False
                ) -> tuple[dict[str, Any], dict[str, Any], str, list[str]]:
    """(base doc, new doc, mode, notes) from ``BASE.json NEW.json`` or one A/B file."""
    if len(paths) not in (1, 2):
        raise SparsebenchError(f"compare takes BASE.json NEW.json, or one A/B file; got "
                               f"{len(paths)} files")
    docs = [load_results(p) for p in paths]
    for path, doc in zip(paths, docs):
        if not doc["rows"]:
            raise SparsebenchError(f"{path} has no result rows")
    if len(docs) == 1:
        base, new = split_ab(docs[0], paths[0])
        return base, new, docs[0]["ab"].get("mode", "ab"), []
    for path, doc in zip(paths, docs):
        if doc.get("ab"):
            raise SparsebenchError(f"{path} is an A/B results file: compare it on its own "
                                   f"(sparsebench compare {path})")
    notes = check_machines(docs[0], docs[1], allow_machine_mismatch)
    vb, vn = docs[0].get("versions") or {}, docs[1].get("versions") or {}
    changed = [f"{k} {vb.get(k)} -> {vn.get(k)}" for k in sorted(set(vb) | set(vn))
               if vb.get(k) != vn.get(k)]
    if changed:
        notes.append("library versions differ: " + ", ".join(changed))
    return docs[0], docs[1], "files", notes


def _key(row: dict[str, Any], ab: bool) -> tuple:
    key = row_key(row)
    return key[1:] if ab else key


def _samples_problem(row: dict[str, Any], side: str) -> str | None:
    """Why a row's raw samples cannot be tested, or None."""
    raw = row.get("samples_ns") or []
    if not raw:
        return f"no raw samples in {side} ({row.get('samples') or 0} calls reported)"
    if len(raw) < 2:
        return f"too few samples in {side} ({len(raw)})"
    return None


def _latency(base: dict[str, Any], new: dict[str, Any], cfg: GateConfig, paired: bool
             ) -> tuple[Change | None, str, list[str]]:
    """(change, verdict, reasons the latency cannot be judged)."""
    problems = [p for p in (_samples_problem(base, "BASE"), _samples_problem(new, "NEW")) if p]
    if problems:
        return None, "not compared", problems
    try:
        change = latency_change(base["samples_ns"], new["samples_ns"], alpha=cfg.alpha,
                                blocks=cfg.blocks, resamples=cfg.resamples, seed=cfg.seed,
                                paired=paired, base_sizes=base.get("block_sizes"),
                                new_sizes=new.get("block_sizes"))
    except ValueError as exc:
        return None, "not compared", [str(exc)]
    if min_p_value(change.blocks, change.test.startswith("wilcoxon")) >= cfg.alpha:
        return change, "not compared", [
            f"too few samples: {min(change.blocks)} blocks cannot reach p < {cfg.alpha:g} "
            "(measure longer or more rounds)"]
    return change, verdict(change, cfg.alpha, cfg.threshold, cfg.rule), []


def compare_row(key: tuple, base: dict[str, Any], new: dict[str, Any], cfg: GateConfig,
                paired: bool) -> RowResult:
    change, latency, problems = _latency(base, new, cfg, paired)
    result = RowResult(key, base, new, change, latency, None, None)
    _unjudged(result, problems, cfg)
    if latency == "slower":
        result.regressions.append(f"latency x{change.ratio:.3f}")
    wb, wn = base.get("weight_bytes"), new.get("weight_bytes")
    if isinstance(wb, int) and isinstance(wn, int):
        result.weight_delta = wn - wb
        if wn > wb:
            result.regressions.append(f"weights +{wn - wb:,} B")
    rb, rn = base.get("peak_rss_bytes"), new.get("peak_rss_bytes")
    if isinstance(rb, int) and isinstance(rn, int):
        result.rss_delta = rn - rb
        if rn - rb > max(cfg.rss_min_bytes, cfg.rss_tolerance * max(rb, 0)):
            result.regressions.append(f"peak RSS +{(rn - rb) / 1024 ** 2:.1f} MiB")
    return result


def _unjudged(result: RowResult, reasons: list[str], cfg: GateConfig) -> None:
    """Reasons the gate cannot vouch for a row: failures, or notes with ``allow_missing``."""
    if cfg.allow_missing:
        result.notes += [f"{r} (passed: --allow-missing)" for r in reasons]
    else:
        result.unjudged += reasons


def missing_row(key: tuple, base: dict[str, Any], new: dict[str, Any],
                cfg: GateConfig) -> RowResult:
    """A row ok in BASE that NEW did not measure (crashed, skipped, timed out)."""
    result = RowResult(key, base, new, None, "missing", None, None)
    _unjudged(result, [f"{new.get('status') or 'missing'} in NEW: {new.get('reason')}"], cfg)
    return result


def compare_docs(base: dict[str, Any], new: dict[str, Any], cfg: GateConfig = GateConfig(),
                 mode: str = "files", labels: tuple[str, str] = ("BASE", "NEW"),
                 notes: list[str] | None = None) -> Comparison:
    """Match rows and compare each (see the module docstring)."""
    cfg.validate()
    ab = mode != "files"
    rows_b: dict[tuple, dict[str, Any]] = {}
    rows_n: dict[tuple, dict[str, Any]] = {}
    for rows, out in ((base["rows"], rows_b), (new["rows"], rows_n)):
        for r in rows:
            out.setdefault(_key(r, ab), r)
    common = [k for k in rows_b if k in rows_n]
    if not common:
        raise SparsebenchError(f"no matching rows: {labels[0]} has {_keys_text(rows_b)}, "
                               f"{labels[1]} has {_keys_text(rows_n)}")
    results, skipped = [], []
    for k in common:
        b, n = rows_b[k], rows_n[k]
        if b.get("status") != "ok":
            skipped.append((k, f"skipped in {labels[0]}: {b.get('reason')}"))
        elif n.get("status") != "ok":
            results.append(missing_row(k, b, n, cfg))
        else:
            results.append(compare_row(k, b, n, cfg, paired=ab))
    if not results:
        raise SparsebenchError(f"no row was measured in both files ({len(skipped)} matching "
                               f"rows were skipped in {labels[0]})")
    return Comparison(labels[0], labels[1], mode, cfg, results,
                      [k for k in rows_b if k not in rows_n],
                      [k for k in rows_n if k not in rows_b], skipped, list(notes or []))


def _keys_text(rows: dict[tuple, Any], limit: int = 3) -> str:
    keys = [" ".join(map(str, k)) for k in rows]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def compare_files(paths: list[str], cfg: GateConfig = GateConfig(),
                  allow_machine_mismatch: bool = False) -> Comparison:
    """Load, check and compare ``BASE.json NEW.json`` or one A/B file."""
    cfg.validate()
    base, new, mode, notes = load_inputs(paths, allow_machine_mismatch)
    if mode == "files":
        labels = (paths[0], paths[1])
    else:
        labels = ("base", "new")
    return compare_docs(base, new, cfg, mode, labels, notes)
