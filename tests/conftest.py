"""Shared fixtures and helpers: test-size registry models, pruned the same way everywhere, BN
statistics that matter, the native-kernel skip marker and the error measure."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from sparsebench import native
from sparsebench.archs import prunable_layers, small_model

NATIVE_REASON = native.available()
needs_kernels = pytest.mark.skipif(NATIVE_REASON is not None,
                                   reason=f"native kernels: {NATIVE_REASON}")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference relative to the reference's largest magnitude."""
    y, ref = torch.as_tensor(y).double(), torch.as_tensor(ref).double()
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def randomize_bn(model: nn.Module, seed: int | torch.Generator = 0) -> nn.Module:
    """Non-trivial BatchNorm affine parameters and running statistics (a fresh BN is the
    identity, which would hide folding mistakes); ``seed`` may be a generator to draw from."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = mod.num_features
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def prune_units(model: nn.Module, gen: torch.Generator, unit_frac: float = 1 / 3,
                weight_frac: float = 0.7, full: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Filter-prune (whole units: weight, bias, BN gamma and beta, ResNet out_mask) and
    weight-prune every default-pruned layer; layers in ``full`` lose every unit. Returns the
    pruned unit indices per layer."""
    layers = {p.name: p for p in prunable_layers(model)}
    dead_units: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in getattr(model, "default_pruned", []):
            p, mod = layers[name], model.get_submodule(name)
            units = mod.weight.shape[0]
            count = units if name in full else int(units * unit_frac)
            dead = torch.randperm(units, generator=gen)[:count]
            mod.weight.mul_(torch.rand(mod.weight.shape, generator=gen) >= weight_frac)
            mod.weight[dead] = 0
            if mod.bias is not None:
                mod.bias[dead] = 0
            if p.bn:
                bn = model.get_submodule(p.bn)
                bn.weight[dead] = 0
                bn.bias[dead] = 0
            if p.out_mask:
                model.get_submodule(p.out_mask).out_mask[dead] = 0
            dead_units[name] = dead
    return dead_units


@functools.lru_cache(maxsize=None)
def pruned_small(arch: str, seed: int = 0) -> nn.Module:
    """The registry's test-size ``arch`` with random BN statistics, pruned (cached: do not
    modify it)."""
    torch.manual_seed(seed)
    model = randomize_bn(small_model(arch).eval(), seed)
    prune_units(model, torch.Generator().manual_seed(seed))
    return model


@pytest.fixture
def lenet5() -> nn.Module:
    return pruned_small("lenet5")
