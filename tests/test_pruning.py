"""Pruning per papers.md: schedule formula, target rules, masks that hold, re-entry, presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.archs import create_model
from sparsebench.errors import SparsebenchError
from sparsebench.pruning import PRESETS, LayerSchedule, Pruner, select_targets


def train_step(model, pruner, opt, x, y, steps: int) -> None:
    """The trainer's per-batch protocol around an optimizer step, ``steps`` times."""
    for _ in range(steps):
        pruner.before_batch()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.before_step()
        opt.step()
        pruner.after_step()


def test_vgg11_preset_kept_counts_match_formula():
    model = create_model("vgg11_bn", 3, 32)
    scheds = PRESETS.get("vgg11").schedules(model)
    assert [s.layer for s in scheds] == ["features.15", "features.18", "features.22",
                                         "features.25"]
    # fraction 0.3 of 512, events at 3, 43, 83, 123 (r=40, end 150): F = ceil(0.7*512) = 359
    assert scheds[0].event_epochs() == [3, 43, 83, 123]
    assert scheds[0].kept_counts(512) == [474, 436, 398, 359]
    assert scheds[1].event_epochs() == [4, 44, 84, 124]
    # fraction 0.9, events 6..246 (end 275): F = ceil(0.1*512) = 52, seven equal chunks
    assert scheds[3].event_epochs() == [6, 46, 86, 126, 166, 206, 246]
    assert scheds[3].kept_counts(512) == [447, 381, 315, 250, 184, 118, 52]
    # ~13% of the last layer per event, as papers.md says for r = 40
    assert round((512 - 447) / 512, 2) == 0.13
    # r = 4 gives ~1.3% per event
    r4 = PRESETS.get("vgg11-r4").schedules(model)[3]
    counts = [512] + r4.kept_counts(512)
    assert round((counts[0] - counts[1]) / 512, 3) == pytest.approx(0.013, abs=0.002)


@pytest.mark.parametrize("units,frac,n_events", [(10, 0.3, 3), (512, 0.9, 7), (7, 0.5, 1),
                                                 (100, 0.0, 4), (3, 0.99, 2)])
def test_kept_counts_formula_general(units, frac, n_events):
    import math
    sched = LayerSchedule("l", frac, 1, n_events, 1)
    final = math.ceil(round((1 - frac) * units, 9))
    expected = [math.ceil(round(final + (units - final) * (n_events - i) / n_events, 9))
                for i in range(1, n_events + 1)]
    assert sched.kept_counts(units) == expected
    assert sched.kept_counts(units)[-1] == final


def test_schedule_rejects_bad_values():
    with pytest.raises(SparsebenchError, match=r"\[0, 1\)"):
        LayerSchedule("l", 1.0, 1, 2, 1)
    with pytest.raises(SparsebenchError, match=r"\[0, 1\)"):
        LayerSchedule("l", -0.1, 1, 2, 1)
    with pytest.raises(SparsebenchError, match="before start"):
        LayerSchedule("l", 0.5, 5, 2, 1)
    with pytest.raises(SparsebenchError, match="retrain period"):
        LayerSchedule("l", 0.5, 1, 2, 0)


def test_short_presets_scale_epochs():
    model = create_model("vgg11_bn", 3, 32)
    short = PRESETS.get("vgg11-short")
    assert short.epochs == 32 and list(short.milestones) == [15, 30]
    scheds = short.schedules(model)
    assert all(1 <= s.start <= s.end <= short.epochs for s in scheds)
    assert [s.fraction for s in scheds] == [0.3, 0.3, 0.3, 0.9]
    assert PRESETS.get("resnet18").score == "activation"
    layers = PRESETS.get("resnet18").layers(create_model("resnet18", 3, 32))
    assert layers == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]


def test_select_targets_rules():
    scores = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 2.0])
    alive = torch.tensor([True, True, False, True, True, True])
    assert select_targets(scores, alive, 2, "prune-l").tolist() == [0, 4]   # 9 is dead
    assert select_targets(scores, alive, 2, "prune-s").tolist() == [1, 5]
    rand = select_targets(scores, alive, 3, "prune-r", torch.Generator().manual_seed(0))
    assert len(set(rand.tolist())) == 3 and 2 not in rand.tolist()
    with pytest.raises(SparsebenchError, match="only 5 are alive"):
        select_targets(scores, alive, 6, "prune-l")


def _linear_model(norms: list[float]) -> nn.Module:
    model = create_model("lenet300")
    with torch.no_grad():
        w = torch.randn_like(model.fc2.weight[: len(norms)])
        model.fc2.weight[: len(norms)] = w / w.norm(dim=1, keepdim=True) * torch.tensor(
            norms)[:, None]
    return model


@pytest.mark.parametrize("target,expect_removed", [("prune-l", "largest"),
                                                   ("prune-s", "smallest")])
def test_filter_pruning_removes_highest_or_lowest_live_units(target, expect_removed):
    model = create_model("lenet300")
    norms = torch.linspace(0.1, 10.0, 100)
    with torch.no_grad():
        w = torch.randn_like(model.fc2.weight)
        model.fc2.weight.copy_(w / w.norm(dim=1, keepdim=True) * norms[torch.randperm(100)][:, None])
    scores = model.fc2.weight.norm(dim=1).clone()
    sched = LayerSchedule("fc2", 0.5, 1, 2, 1)   # 100 -> 75 -> 50
    pruner = Pruner(model, [sched], target=target)
    pruner.prune_event(1, None)
    removed = (~pruner.unit_masks["fc2"]).nonzero().reshape(-1)
    assert removed.numel() == 25
    order = scores.argsort(descending=(target == "prune-l"))
    assert set(removed.tolist()) == set(order[:25].tolist())
    # second event ranks only live units: the next 25 in the same order
    pruner.prune_event(2, None)
    removed2 = set((~pruner.unit_masks["fc2"]).nonzero().reshape(-1).tolist())
    assert removed2 == set(order[:50].tolist())
    # the whole row and bias are zero; fc3 untouched
    assert torch.all(model.fc2.weight[order[:50]] == 0)
    assert torch.all(model.fc2.bias[order[:50]] == 0)
    assert int((model.fc2.weight.abs().sum(1) > 0).sum()) == 50


def test_filter_pruning_masks_following_batchnorm_and_output_is_zero():
    model = create_model("vgg11_bn", 3, 32)
    layer, bn = "features.25", "features.26"
    pruner = Pruner(model, [LayerSchedule(layer, 0.5, 1, 1, 1)])
    pruner.prune_event(1, None)
    dead = (~pruner.unit_masks[layer]).nonzero().reshape(-1)
    bn_mod = dict(model.named_modules())[bn]
    assert dead.numel() == 256
    assert torch.all(bn_mod.weight[dead] == 0) and torch.all(bn_mod.bias[dead] == 0)
    acts = {}
    bn_mod.register_forward_hook(lambda m, i, o: acts.setdefault("out", o))
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert torch.all(acts["out"][:, dead] == 0)


def test_resnet_block_output_mask_covers_shortcut():
    model = create_model("resnet18", 3, 32)
    pruner = Pruner(model, [LayerSchedule("layer4.0.conv2", 0.5, 1, 1, 1)])
    pruner.prune_event(1, None)
    dead = (~pruner.unit_masks["layer4.0.conv2"]).nonzero().reshape(-1)
    block = model.layer4[0]
    assert torch.all(block.out_mask[dead] == 0)
    out = {}
    block.register_forward_hook(lambda m, i, o: out.setdefault("y", o))
    model.eval()
    model(torch.randn(2, 3, 32, 32))
    assert torch.all(out["y"][:, dead] == 0)


@pytest.mark.parametrize("granularity,optim", [("filter", "adam"), ("weight", "adam"),
                                               ("filter", "sgd")])
def test_pruned_weights_stay_zero_after_optimizer_steps(granularity, optim):
    torch.manual_seed(0)
    model = create_model("lenet5")
    opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if optim == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4))
    scheds = [LayerSchedule(n, 0.6, 1, 1, 1) for n in ("conv2", "fc1", "fc2")]
    pruner = Pruner(model, scheds, granularity=granularity)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))

    train_step(model, pruner, opt, x, y, 3)   # build up optimizer state before the event
    pruner.prune_event(1, opt)
    train_step(model, pruner, opt, x, y, 5)
    params = dict(model.named_parameters())
    assert pruner.masks
    for name, mask in pruner.masks.items():
        assert torch.all(params[name][~mask] == 0), name
        state = opt.state[params[name]]
        for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
            if key in state:
                assert torch.all(state[key][~mask] == 0), (name, key)
    # and the kept weights did train
    assert int(torch.count_nonzero(params["fc1.weight"])) > 0


@pytest.mark.parametrize("mode", ["zero", "gaussian", "restore"])
def test_reentry_ends_with_full_parameter_count(mode):
    torch.manual_seed(0)
    model = create_model("lenet5")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner = Pruner(model, [LayerSchedule("fc1", 0.5, 1, 1, 1)], permanent=False,
                    reentry_batches=3, reentry_mode=mode)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with torch.no_grad():  # live ReLUs, so zeroed rows receive gradient once released
        model.fc1.bias.fill_(0.1)
    before = model.fc1.weight.detach().clone()
    records = pruner.prune_event(1, opt)
    targeted = records[0]["targeted"]
    assert targeted == 60
    if mode != "gaussian":
        zero_rows = (model.fc1.weight.abs().sum(1) == 0).nonzero().reshape(-1)
        assert zero_rows.numel() == 60
        # the targets are the 60 largest-norm rows (Prune_L rule)
        assert set(zero_rows.tolist()) == set(before.norm(dim=1).argsort(descending=True)[
            :60].tolist())
    targets = before.norm(dim=1).argsort(descending=True)[:60]
    train_step(model, pruner, opt, x, y, 3)
    if mode == "restore":  # window over: the saved values are back exactly
        assert torch.equal(model.fc1.weight[targets], before[targets])
    train_step(model, pruner, opt, x, y, 2)
    assert not pruner.active and not pruner.masks   # nothing is masked any more
    # every targeted unit is back: regrew from zero (zero), kept training (gaussian), or restored
    assert int((model.fc1.weight.abs().sum(1) > 0).sum()) == 120


def test_activation_scoring_needs_statistics_and_filter_granularity():
    model = create_model("vgg11_bn", 3, 32)
    with pytest.raises(SparsebenchError, match="granularity filter"):
        Pruner(model, [LayerSchedule("features.25", 0.5, 1, 1, 1)], granularity="weight",
               score="activation")
    pruner = Pruner(model, [LayerSchedule("features.25", 0.5, 1, 1, 1)], score="activation")
    with pytest.raises(SparsebenchError, match="no activation statistics"):
        pruner.prune_event(1, None)
    model.train()
    model(torch.randn(4, 3, 32, 32))
    pruner.after_step()
    ema = pruner.tracker.ema["features.25"].clone()
    pruner.prune_event(1, None)
    dead = (~pruner.unit_masks["features.25"]).nonzero().reshape(-1)
    assert set(dead.tolist()) == set(ema.argsort(descending=True)[:256].tolist())


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(SparsebenchError, match="not prunable; choose from: conv1"):
        Pruner(create_model("lenet5"), [LayerSchedule("nope", 0.5, 1, 1, 1)])
