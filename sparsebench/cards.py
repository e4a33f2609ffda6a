"""Model cards: a Markdown page per checkpoint (command, metrics, schedule, layers, events)."""

from __future__ import annotations

from typing import Any

from torch import nn

from sparsebench.sparsity import layer_rows
from sparsebench.train import accuracy_phrase, stability_phrase


def card_markdown(name: str, ckpt: dict[str, Any], model: nn.Module) -> str:
    s = ckpt.get("summary") or {}
    cfg = ckpt.get("config") or {}
    lines = [f"# {name}", "",
             f"{ckpt['arch']} trained on {(ckpt.get('dataset') or {}).get('name')} with "
             f"`{ckpt.get('method')}` ({cfg.get('granularity', 'filter')} granularity), "
             f"seed {ckpt.get('seed')}.", "",
             "Command:", "", "```bash", str(ckpt.get("command") or "(not recorded)"), "```", "",
             "| metric | value |", "|---|---|"]
    if s:
        lines += [
            f"| reported test accuracy | {accuracy_phrase(s)} |",
            f"| train accuracy at that epoch | {s['train_acc_at_best']:.2f}% |",
            f"| generalization gap | {s['generalization_gap']:.2f} |",
            f"| pruning events | {stability_phrase(s)} |",
            f"| parameters | {s['params_total']:,} ({s['params_nonzero']:,} nonzero, "
            f"{100 * s['params_removed_frac']:.1f}% removed) |",
            f"| training wall time | {s['wall_seconds']:.0f} s on this machine |"]
        flat = s.get("flatness") or (ckpt.get("history") or {}).get("flatness")
        if flat:
            lines += [f"| flatness ({flat['samples']} test images) | Hessian top-"
                      f"{flat['hessian_top_k']} sum {flat['hessian_top_sum']:.4g}, gradient "
                      f"covariance trace {flat['grad_cov_trace']:.4g} |"]
    versions = ckpt.get("versions") or {}
    lines += [f"| library versions | torch {versions.get('torch')}, sparsebench "
              f"{versions.get('sparsebench')} |", ""]
    if cfg.get("schedules"):
        lines += ["Schedule:", "", "| layer | fraction | start | end | period |",
                  "|---|---|---|---|---|"]
        lines += [f"| {x['layer']} | {x['fraction']} | {x['start']} | {x['end']} | "
                  f"{x['period']} |" for x in cfg["schedules"]]
        lines.append("")
    lines += ["Layers:", "", "| layer | type | shape | params | nonzero | sparsity | units alive |",
              "|---|---|---|---|---|---|---|"]
    for r in layer_rows(model, ckpt.get("unit_masks", {})):
        lines.append(f"| {r['name']} | {r['type']} | {'x'.join(map(str, r['shape']))} | "
                     f"{r['params']:,} | {r['nonzero']:,} | {100 * r['sparsity']:.1f}% | "
                     f"{r['alive']} |")
    events = (ckpt.get("history") or {}).get("events", [])
    if events:
        lines += ["", "Pruning events:", "", "| epoch | pre acc | post acc | instability |",
                  "|---|---|---|---|"]
        lines += [f"| {e['epoch']} | {e['pre_acc']:.2f}% | {e['post_acc']:.2f}% | "
                  f"{e['instability']:.4f} |" for e in events]
    epochs = (ckpt.get("history") or {}).get("epochs", [])
    if epochs:
        lines += ["", "Epochs:", "", "| epoch | train acc | test acc | seconds |",
                  "|---|---|---|---|"]
        lines += [f"| {e['epoch']} | {e['train_acc']:.2f}% | {e['test_acc']:.2f}% | "
                  f"{e['seconds']:.0f} |" for e in epochs]
    return "\n".join(lines) + "\n"
