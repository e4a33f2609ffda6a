"""The trainer: dense, dropout, prune-l/s/r, re-entry and scratch runs, with history and
instability (paper B).

One pruning event happens at the end of an epoch: evaluate test accuracy (pre), prune, step the
LR scheduler, evaluate again (post). Instability = (pre - post) / pre; stability =
100 * (1 - instability). There is no separate fine-tuning phase. The reported accuracy is the
best test accuracy over the epochs after the last event, and the generalization gap is the
train accuracy minus the test accuracy at that epoch. Train accuracy is measured in eval mode on
a fixed subset of up to 10,000 training images (honest under dropout).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sparsebench.catalog import METHODS
from sparsebench.archs import create_model
from sparsebench.checkpoint import library_versions, save_checkpoint
from sparsebench.data import Dataset, iterate_batches
from sparsebench.errors import SparsebenchError
from sparsebench.pruning import Pruner
from sparsebench.pruning.schedule import LayerSchedule

TRAIN_EVAL_SAMPLES = 10_000


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in the checkpoint)."""

    arch: str
    dataset: str
    method: str = "dense"
    granularity: str = "filter"
    score: str = "l2"
    target: str = "prune-l"
    schedules: list[dict[str, Any]] = field(default_factory=list)
    preset: str | None = None
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    dropout: float = 0.0
    augment: bool = False
    reentry_batches: int = 50
    reentry_mode: str = "zero"
    seed: int = 0
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    pad_to_32: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    flatness: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SparsebenchError(f"unknown method {self.method!r}; choose from: "
                                   f"{', '.join(METHODS)}")
        if self.epochs < 1:
            raise SparsebenchError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise SparsebenchError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "sgd"):
            raise SparsebenchError(f"unknown optimizer {self.optimizer!r}; choose from: adam, sgd")
        if self.reentry_batches < 1:
            raise SparsebenchError("--reentry-batches must be at least 1")

    def layer_schedules(self) -> list[LayerSchedule]:
        return [LayerSchedule(**s) for s in self.schedules]


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy in %) in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
        out = model(xb)
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(1, len(x))
    return loss_sum / n, 100.0 * correct / n


def nonzero_params(model: nn.Module) -> tuple[int, int]:
    """(total parameters, nonzero parameters)."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return total, nonzero


def summarize(history: dict[str, list[dict]], method: str, total: int, nonzero: int
              ) -> dict[str, Any]:
    """Mean stability, best post-pruning test accuracy and its generalization gap.

    "After the last event" means the epochs strictly after it (an event epoch's ``test_acc`` is
    the pre-prune accuracy); when the last event closes the run, its post-prune accuracy is used.
    """
    epochs, events = history["epochs"], history["events"]
    last_event = max((e["epoch"] for e in events), default=0)
    after = [e for e in epochs if e["epoch"] > last_event]
    epochs_after = len(after)
    if not after and events:
        final = next(e for e in epochs if e["epoch"] == last_event)
        after = [{**final, "test_acc": events[-1]["post_acc"]}]
    best = max(after, key=lambda e: e["test_acc"]) if after else None
    stabilities = [e["stability"] for e in events]
    return {
        "best_test_acc": best["test_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "train_acc_at_best": best["train_acc"] if best else None,
        "generalization_gap": (best["train_acc"] - best["test_acc"]) if best else None,
        "mean_stability": sum(stabilities) / len(stabilities) if stabilities else 100.0,
        "events": len(events),
        "epochs_after_last_event": epochs_after,
        "params_total": total,
        "params_nonzero": nonzero,
        "params_removed_frac": 1.0 - nonzero / total if total else 0.0,
        "wall_seconds": sum(e["seconds"] for e in epochs),
        "flatness": history.get("flatness"),
    }


def accuracy_phrase(s: dict[str, Any]) -> str:
    """The summary's reported accuracy, saying which one it is: the best after the last event,
    the best of a run without events, or (no epoch trained after the last event) the post-prune
    accuracy of that event."""
    if s.get("best_test_acc") is None:
        return "no test accuracy"
    acc, epoch = s["best_test_acc"], s["best_epoch"]
    if not s.get("events"):
        return f"best test acc {acc:.2f}% (epoch {epoch})"
    if s.get("epochs_after_last_event") == 0:
        return (f"test acc {acc:.2f}% right after the last event (epoch {epoch}; no epoch "
                "retrained after it)")
    return f"best test acc after last event {acc:.2f}% (epoch {epoch})"


def stability_phrase(s: dict[str, Any]) -> str:
    """``mean stability S over N events``, or ``no pruning events``."""
    if not s.get("events"):
        return "no pruning events"
    return f"mean stability {s['mean_stability']:.2f} over {s['events']} events"


class Trainer:
    """Runs one configuration; ``run()`` returns the checkpoint dict (also saved to ``out``)."""

    def __init__(self, cfg: TrainConfig, data: Dataset, out: str | Path | None = None,
                 device: str = "cpu", log: Callable[[str], None] = print,
                 progress: Any = None, command: str | None = None) -> None:
        self.cfg, self.data, self.out, self.command = cfg, data, out, command
        self.device = torch.device(device)
        self.log, self.progress = log, progress
        torch.manual_seed(cfg.seed)
        c, h = data.input_shape[0], data.input_shape[-1]
        kwargs = {"in_channels": c, "input_size": h, "num_classes": data.num_classes,
                  "dropout": cfg.dropout, **cfg.arch_kwargs}
        cfg.arch_kwargs = kwargs
        self.model = create_model(cfg.arch, **kwargs).to(self.device)
        self.optimizer = make_optimizer(cfg, self.model)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.milestones), gamma=cfg.lr_gamma)
        self.pruner: Pruner | None = None
        if cfg.method in ("prune-l", "prune-s", "prune-r", "reentry", "scratch"):
            target = cfg.method if cfg.method.startswith("prune-") else cfg.target
            self.pruner = Pruner(self.model, cfg.layer_schedules(), granularity=cfg.granularity,
                                 score=cfg.score, target=target,
                                 permanent=cfg.method != "reentry",
                                 reentry_batches=cfg.reentry_batches,
                                 reentry_mode=cfg.reentry_mode, seed=cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: dict[str, list[dict]] = {"epochs": [], "events": []}
        self.epoch = 0
        sub = torch.Generator().manual_seed(cfg.seed + 1)
        n_eval = min(TRAIN_EVAL_SAMPLES, len(data.train_x))
        self.train_eval_idx = torch.randperm(len(data.train_x), generator=sub)[:n_eval]

    # -- resume -----------------------------------------------------------------------------
    def load_resume(self, ckpt: dict[str, Any]) -> None:
        state = ckpt.get("resume")
        if not state:
            raise SparsebenchError("checkpoint has no resume state (it was written by a "
                                   "finished or foreign run)")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.pruner is not None:
            self.pruner.load_state_dict(state["pruner"])
        self.history = ckpt["history"]
        self.epoch = int(state["epoch"])
        self.command = ckpt.get("command") or self.command

    # -- evaluation helpers ---------------------------------------------------------------
    def test_accuracy(self) -> tuple[float, float]:
        return evaluate(self.model, self.data.test_x, self.data.test_y, device=self.device)

    def train_accuracy(self) -> float:
        idx = self.train_eval_idx
        return evaluate(self.model, self.data.train_x[idx], self.data.train_y[idx],
                        device=self.device)[1]

    # -- the loop -------------------------------------------------------------------------
    def train_epoch(self) -> float:
        cfg, model, pruner = self.cfg, self.model, self.pruner
        model.train()
        loss_sum, seen = 0.0, 0
        n_batches = math.ceil(len(self.data.train_x) / cfg.batch_size)
        task = self.progress.add_task(f"epoch {self.epoch + 1}/{cfg.epochs}",
                                      total=n_batches) if self.progress else None
        for xb, yb in iterate_batches(self.data.train_x, self.data.train_y, cfg.batch_size,
                                      shuffle=True, generator=self.generator,
                                      augment=cfg.augment):
            xb, yb = xb.to(self.device), yb.to(self.device)
            if pruner:
                pruner.before_batch()
            loss = nn.functional.cross_entropy(model(xb), yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if pruner:
                pruner.before_step()
            self.optimizer.step()
            if pruner:
                pruner.after_step()
            loss_sum += float(loss.detach()) * len(xb)
            seen += len(xb)
            if task is not None:
                self.progress.advance(task)
        if task is not None:
            self.progress.remove_task(task)
        return loss_sum / max(1, seen)

    def event(self, pre_acc: float) -> dict[str, Any]:
        """Prune at the end of the current epoch; the LR step happens between pre and post."""
        assert self.pruner is not None
        layers = self.pruner.prune_event(self.epoch, self.optimizer)
        self.scheduler.step()
        post_loss, post_acc = self.test_accuracy()
        instability = (pre_acc - post_acc) / pre_acc if pre_acc > 0 else 0.0
        record = {"epoch": self.epoch, "layers": layers, "pre_acc": pre_acc,
                  "post_acc": post_acc, "instability": instability,
                  "stability": 100.0 * (1.0 - instability)}
        self.history["events"].append(record)
        kept = ", ".join(f"{r['layer']} {r['kept_before']}->{r['kept_after']}"
                         if self.cfg.method != "reentry" else
                         f"{r['layer']} {r['targeted']} targeted" for r in layers)
        self.log(f"  event @ epoch {self.epoch}: pre {pre_acc:.2f}% post {post_acc:.2f}% "
                 f"instability {instability:.4f} ({kept})")
        return record

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.pruner and cfg.method == "scratch" and self.epoch == 0:
            layers = self.pruner.prune_to_final(self.optimizer)
            self.log("  scratch: " + ", ".join(f"{r['layer']} {r['units']}->{r['kept_after']}"
                                               for r in layers))
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            train_loss = self.train_epoch()
            self.epoch += 1
            test_loss, test_acc = self.test_accuracy()
            record = {"epoch": self.epoch, "train_loss": train_loss,
                      "train_acc": self.train_accuracy(), "test_loss": test_loss,
                      "test_acc": test_acc, "lr": self.optimizer.param_groups[0]["lr"]}
            has_event = (self.pruner is not None and cfg.method != "scratch"
                         and self.pruner.event_layers(self.epoch))
            if has_event:
                self.event(test_acc)
            else:
                self.scheduler.step()
            total, nonzero = nonzero_params(self.model)
            record.update(params_nonzero=nonzero, seconds=time.perf_counter() - t0)
            self.history["epochs"].append(record)
            self.log(f"epoch {self.epoch}/{cfg.epochs}: train loss {train_loss:.4f} "
                     f"acc {record['train_acc']:.2f}% | test loss {test_loss:.4f} "
                     f"acc {test_acc:.2f}% | nonzero {nonzero}/{total} "
                     f"| {record['seconds']:.1f}s")
            if self.out is not None:
                save_checkpoint(self.checkpoint(resume=not self.finished()), self.out)
        if cfg.flatness and "flatness" not in self.history:
            self.log("flatness: top Hessian eigenvalues and gradient covariance trace ...")
            self.history["flatness"] = self.measure_flatness()
            f = self.history["flatness"]
            self.log(f"  hessian top-{f['hessian_top_k']} sum {f['hessian_top_sum']:.4g}, "
                     f"gradient covariance trace {f['grad_cov_trace']:.4g}")
        ckpt = self.checkpoint(resume=False)
        if self.out is not None:
            save_checkpoint(ckpt, self.out)
        return ckpt

    def finished(self) -> bool:
        """All epochs trained and, when asked, the flatness measured."""
        return self.epoch >= self.cfg.epochs and (not self.cfg.flatness
                                                  or "flatness" in self.history)

    def measure_flatness(self) -> dict[str, Any]:
        from sparsebench.flatness import flatness

        masks = self.pruner.masks if self.pruner and self.pruner.permanent else None
        return flatness(self.model, self.data.test_x.to(self.device),
                        self.data.test_y.to(self.device), seed=self.cfg.seed, masks=masks)

    def checkpoint(self, resume: bool) -> dict[str, Any]:
        total, nonzero = nonzero_params(self.model)
        masks = self.pruner.masks if self.pruner and self.pruner.permanent else {}
        unit_masks = (self.pruner.unit_masks if self.pruner and self.pruner.permanent
                      and self.cfg.granularity == "filter" else {})
        ckpt: dict[str, Any] = {
            "arch": self.cfg.arch, "arch_kwargs": dict(self.cfg.arch_kwargs),
            "input_shape": list(self.data.input_shape),
            "state_dict": {k: v.detach().cpu().clone() for k, v in
                           self.model.state_dict().items()},
            "masks": {k: v.clone() for k, v in masks.items()},
            "unit_masks": {k: v.clone() for k, v in unit_masks.items()},
            "method": self.cfg.method, "config": asdict(self.cfg),
            "history": self.history,
            "summary": summarize(self.history, self.cfg.method, total, nonzero),
            "dataset": {"name": self.data.name, "mean": list(self.data.mean),
                        "std": list(self.data.std)},
            "seed": self.cfg.seed, "versions": library_versions(), "command": self.command,
        }
        if resume:
            ckpt["resume"] = {
                "epoch": self.epoch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "pruner": self.pruner.state_dict() if self.pruner else None,
            }
        return ckpt
