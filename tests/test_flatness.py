"""Flatness: Hessian top eigenvalues by deflated power iteration against the exact Hessian,
the gradient covariance trace against a direct sum, masks, and `train --flatness` / `info`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.checkpoint import load_checkpoint
from sparsebench.cli import main
from sparsebench.flatness import gradient_covariance_trace, hessian_top_eigenvalues


def _exact_hessian(model: nn.Linear, x, y) -> torch.Tensor:
    def loss(w, b):
        return nn.functional.cross_entropy(x @ w.T + b, y)
    hw, hb = torch.autograd.functional.hessian(loss, (model.weight.detach(),
                                                      model.bias.detach()))
    nw, nb = model.weight.numel(), model.bias.numel()
    h = torch.zeros(nw + nb, nw + nb)
    h[:nw, :nw], h[:nw, nw:] = hw[0].reshape(nw, nw), hw[1].reshape(nw, nb)
    h[nw:, :nw], h[nw:, nw:] = hb[0].reshape(nb, nw), hb[1].reshape(nb, nb)
    return h


def test_power_iteration_finds_the_exact_top_eigenvalues():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    exact = torch.linalg.eigvalsh(_exact_hessian(model, x, y)).flip(0)[:3]
    found = hessian_top_eigenvalues(model, x, y, k=3, iters=300, tol=1e-10)
    assert found == pytest.approx(exact.tolist(), rel=1e-3)


def test_masks_project_pruned_weights_out():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append(float((model.weight.grad[mask] ** 2).sum() + (model.bias.grad ** 2).sum()))
    got = gradient_covariance_trace(model, x, y, masks={"weight": mask})
    assert got == pytest.approx(sum(grads) / len(grads), rel=1e-5)
    assert got < gradient_covariance_trace(model, x, y)
    # the masked Hessian is the exact one with the pruned row and column removed
    h = _exact_hessian(model, x, y)
    keep = torch.cat([mask.reshape(-1), torch.ones(3, dtype=torch.bool)])
    exact = torch.linalg.eigvalsh(h[keep][:, keep]).flip(0)[:2]
    found = hessian_top_eigenvalues(model, x, y, k=2, iters=300, tol=1e-10,
                                    masks={"weight": mask})
    assert found == pytest.approx(exact.tolist(), rel=1e-3)


def test_train_flatness_is_stored_and_shown(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", "--arch", "lenet300", "--dataset", "synthetic", "--method", "prune-l",
                 "--epochs", "2", "--limit-train", "256", "--limit-test", "64", "--fractions",
                 "0.5", "--start", "1", "--end", "1", "--flatness", "--out", str(out),
                 "--quiet"]) == 0
    flat = load_checkpoint(out)["history"]["flatness"]
    assert flat["samples"] == 64 and len(flat["hessian_top_eigenvalues"]) == 5
    assert flat["hessian_top_sum"] == pytest.approx(sum(flat["hessian_top_eigenvalues"]))
    assert flat["grad_cov_trace"] > 0
    assert load_checkpoint(out)["summary"]["flatness"] == flat
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "flatness on 64 test images: Hessian top-5 eigenvalues sum" in capsys.readouterr().out
