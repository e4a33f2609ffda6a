"""Flatness of a trained model (paper B's mechanism: less stable pruning -> flatter minima).

Two measures, as in the official code (github.com/bbartoldson/GeneralizationStabilityTradeoff),
both in eval mode on the first ``samples`` test images:

* the top eigenvalues of the Hessian of the mean cross-entropy loss, by power iteration with
  deflation (Hessian-vector products by double backpropagation) and their sum;
* the trace of the gradient covariance: the mean over the images of the squared norm of the
  per-image loss gradient (batch size 1).

Only the live parameters count: pruned entries (the pruner's masks) are projected out of every
vector, so a removed weight adds no curvature and no gradient. The official code computes 100
eigenvalues on a GPU; on a CPU the default is the top 5 (at most 20 power steps each; the sum is
dominated by the largest).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _live_params(model: nn.Module, masks: dict[str, torch.Tensor] | None
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    masks = masks or {}
    return [p for _, p in named], [masks[n].to(p.dtype) if n in masks else None
                                   for n, p in named]


def _project(vecs: list[torch.Tensor], masks: list[torch.Tensor | None]) -> list[torch.Tensor]:
    return [v if m is None else v * m for v, m in zip(vecs, masks)]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


def hessian_top_eigenvalues(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 10,
                            iters: int = 20, tol: float = 1e-3, seed: int = 0,
                            masks: dict[str, torch.Tensor] | None = None) -> list[float]:
    """The ``k`` largest-magnitude Hessian eigenvalues by deflated power iteration."""
    params, pmasks = _live_params(model, masks)
    was_training = model.training
    model.eval()
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        out = torch.autograd.grad(grads, params, grad_outputs=_project(v, pmasks),
                                  retain_graph=True)
        return _project([o.detach() for o in out], pmasks)

    gen = torch.Generator().manual_seed(seed)
    found: list[tuple[float, list[torch.Tensor]]] = []
    for _ in range(k):
        v = _project([torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params],
                     pmasks)
        norm = _dot(v, v) ** 0.5
        v = [t / norm for t in v]
        value = 0.0
        for step in range(iters):
            hv = hvp(v)
            for lam, u in found:  # deflation: subtract the eigenpairs found so far
                c = lam * _dot(u, v)
                hv = [h - c * e for h, e in zip(hv, u)]
            new_value = _dot(v, hv)
            norm = _dot(hv, hv) ** 0.5
            if norm == 0.0:
                value = 0.0
                break
            v = [h / norm for h in hv]
            converged = step > 0 and abs(new_value - value) <= tol * max(abs(new_value), 1e-12)
            value = new_value
            if converged:
                break
        found.append((value, v))
    model.train(was_training)
    return sorted((lam for lam, _ in found), reverse=True)


def gradient_covariance_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                              masks: dict[str, torch.Tensor] | None = None) -> float:
    """Mean over the samples of the squared norm of the per-sample loss gradient."""
    params, pmasks = _live_params(model, masks)
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(len(x)):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = _project(list(torch.autograd.grad(loss, params)), pmasks)
        total += float(sum((g * g).sum() for g in grads))
    model.train(was_training)
    return total / max(1, len(x))


def flatness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, samples: int = 512,
             k: int = 5, seed: int = 0, masks: dict[str, torch.Tensor] | None = None
             ) -> dict[str, Any]:
    """Both measures on the first ``samples`` of ``x, y`` (stored in a run's summary)."""
    x, y = x[:samples], y[:samples]
    eig = hessian_top_eigenvalues(model, x, y, k=k, seed=seed, masks=masks)
    return {"samples": int(len(x)), "hessian_top_k": k, "hessian_top_eigenvalues": eig,
            "hessian_top_sum": float(sum(eig)),
            "grad_cov_trace": gradient_covariance_trace(model, x, y, masks=masks)}
