"""The behaviours of paper B's official code (github.com/bbartoldson/GeneralizationStabilityTradeoff,
models.py and experiments.py) that sparsebench follows, one test each."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsebench.archs import create_model
from sparsebench.pruning import PRESETS, LayerSchedule, Pruner

from test_pruning import train_step


def _layers_per_event(scheds: list[LayerSchedule]) -> dict[int, int]:
    count: dict[int, int] = {}
    for s in scheds:
        for e in s.event_epochs():
            count[e] = count.get(e, 0) + 1
    return count


@pytest.mark.parametrize("preset, epochs", [("vgg11-short", None), ("vgg11", 65),
                                            ("vgg11", 100), ("resnet18-short", None)])
def test_scaled_schedules_keep_one_layer_per_event(preset, epochs):
    # official: starts 3,4,5,6 with r=40 -> every event prunes exactly one layer
    p = PRESETS.get(preset)
    model = create_model(p.arch, 3, 32)
    full = PRESETS.get(preset.removesuffix("-short")).schedules(model)
    assert set(_layers_per_event(full).values()) == {1}
    scaled = p.schedules(model, epochs)
    starts = [s.start for s in scaled]
    assert starts == list(range(starts[0], starts[0] + 4))       # staggered by one epoch
    assert set(_layers_per_event(scaled).values()) == {1}


def test_r4_short_scales_the_period_exactly_and_keeps_the_share_per_event():
    model = create_model("vgg11_bn", 3, 32)
    for name, share in (("vgg11-r4", 0.013), ("vgg11", 0.13)):
        full, short = PRESETS.get(name), PRESETS.get(f"{name}-short")
        assert full.period * (short.epochs / full.epochs) == pytest.approx(short.period, rel=0.05)
        for p in (full, short):
            last = p.schedules(model)[-1]
            counts = [512] + last.kept_counts(512)
            per_event = max(a - b for a, b in zip(counts, counts[1:])) / 512
            assert per_event == pytest.approx(share, abs=0.006), (p, per_event)
    assert PRESETS.get("vgg11-r4-short").period == 1


def _scores(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).norm(dim=1)


def test_reentry_targets_each_unit_at_most_once_scoring_only_untargeted():
    torch.manual_seed(0)
    model = create_model("lenet300")
    pruner = Pruner(model, [LayerSchedule("fc1", 0.6, 1, 3, 1)], permanent=False,
                    reentry_batches=1)
    seen: set[int] = set()
    for epoch in (1, 2, 3):
        scores = _scores(model.fc1.weight).clone()
        untargeted = [i for i in range(300) if i not in seen]
        rec = pruner.prune_event(epoch, None)[0]
        now = set((~pruner.unit_masks["fc1"]).nonzero().reshape(-1).tolist()) - seen
        # the k highest-scoring units among the never-targeted ones (Prune_L)
        expect = sorted(untargeted, key=lambda i: -float(scores[i]))[:rec["targeted"]]
        assert now == set(expect) and not now & seen
        seen |= now
        with torch.no_grad():  # let the zeroed rows grow back, as training would
            model.fc1.weight[list(now)] = torch.randn(len(now), 784) * 10
        pruner.active.clear()
    assert len(seen) == 300 - math.ceil(0.4 * 300)   # the schedule's final count, as permanent


def test_zero_reentry_zeroes_every_forward_and_lets_adam_update():
    torch.manual_seed(0)
    model = create_model("lenet300")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, [LayerSchedule("fc1", 0.5, 1, 1, 1)], permanent=False,
                    reentry_batches=3, reentry_mode="zero")
    with torch.no_grad():
        model.fc1.bias.fill_(0.1)
    pruner.prune_event(1, opt)
    targets = (~pruner.unit_masks["fc1"]).nonzero().reshape(-1)
    seen = []
    hook = model.fc1.register_forward_pre_hook(
        lambda m, i: seen.append(float(m.weight.detach()[targets].abs().sum())))
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    train_step(model, pruner, opt, x, y, 3)
    assert seen == [0.0, 0.0, 0.0]                       # zero at every forward of the window
    moments = opt.state[model.fc1.weight]["exp_avg"][targets]
    assert float(moments.abs().sum()) > 0                 # gradients were not masked
    assert float(model.fc1.weight[targets].abs().sum()) > 0   # and the weights regrow
    train_step(model, pruner, opt, x, y, 1)
    assert seen[-1] > 0 and not pruner.active


def test_gaussian_reentry_noise_accumulates_with_sigma_of_a_live_filter():
    torch.manual_seed(0)
    model = create_model("lenet300")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)     # only the noise moves the weights
    pruner = Pruner(model, [LayerSchedule("fc1", 0.5, 1, 1, 1)], permanent=False,
                    reentry_batches=8, reentry_mode="gaussian")
    clean = model.fc1.weight.detach().clone()
    pruner.prune_event(1, opt)                            # first draw (post-event evaluation)
    targets = (~pruner.unit_masks["fc1"]).nonzero().reshape(-1)
    first_live = int(pruner.unit_masks["fc1"].nonzero()[0])
    sigma = float(clean[first_live].std())
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    train_step(model, pruner, opt, x, y, 8)               # eight more draws
    delta = (model.fc1.weight.detach() - clean)[targets]
    assert float(delta.std()) == pytest.approx(sigma * 3.0, rel=0.05)   # sqrt(9) draws
    untargeted = pruner.unit_masks["fc1"]
    assert torch.equal(model.fc1.weight[untargeted], clean[untargeted])
    assert not pruner.active                              # the window ended; nothing restored
    assert float((model.fc1.weight.detach() - clean)[targets].abs().min()) > 0


def test_restore_reentry_is_cumulative_and_restores_batchnorm_statistics():
    torch.manual_seed(0)
    model = create_model("vgg11_bn", 1, 32, width=0.25)
    conv, bn = "features.25", "features.26"
    mods = dict(model.named_modules())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, [LayerSchedule(conv, 0.5, 1, 2, 1)], permanent=False,
                    reentry_batches=2, reentry_mode="restore")
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    pruner.prune_event(1, opt)
    first = (~pruner.unit_masks[conv]).nonzero().reshape(-1)
    train_step(model, pruner, opt, x, y, 2)               # first window over
    saved = {k: getattr(mods[bn], k).detach().clone()
             for k in ("weight", "bias", "running_mean", "running_var")}
    w_saved = mods[conv].weight.detach().clone()
    pruner.prune_event(2, opt)
    both = (~pruner.unit_masks[conv]).nonzero().reshape(-1)
    assert set(first.tolist()) < set(both.tolist())
    # every unit targeted so far is zeroed, with its BatchNorm scale and shift
    assert float(mods[conv].weight[both].abs().sum()) == 0
    assert float(mods[bn].weight[both].abs().sum()) == 0 == float(mods[bn].bias[both].abs().sum())
    train_step(model, pruner, opt, x, y, 2)               # running stats move during the window
    for k, v in saved.items():
        assert torch.equal(getattr(mods[bn], k)[both], v[both]), k
    assert torch.equal(mods[conv].weight[both], w_saved[both])


def test_resnet_conv2_is_scored_after_the_shortcut_add():
    torch.manual_seed(0)
    model = create_model("resnet18", 3, 32, width=0.125)
    name = "layer4.1.conv2"
    pruner = Pruner(model, [LayerSchedule(name, 0.5, 1, 1, 1),
                            LayerSchedule("layer4.1.conv1", 0.5, 1, 1, 1)], score="activation")
    block = model.layer4[1]
    captured = {}
    h1 = block.bn2.register_forward_hook(lambda m, i, o: captured.__setitem__("bn2", o))
    h2 = block.register_forward_hook(lambda m, i, o: captured.__setitem__("in", i[0]))
    model.train()
    model(torch.randn(4, 3, 32, 32))
    post_add = captured["bn2"] + block.shortcut(captured["in"])
    expect = post_add.detach().abs().mean(dim=(0, 2, 3))
    assert torch.allclose(pruner.tracker.ema[name], expect, atol=1e-5)
    assert not torch.allclose(pruner.tracker.ema[name],
                              captured["bn2"].detach().abs().mean(dim=(0, 2, 3)), atol=1e-3)


def test_vgg_init_is_kaiming_fan_out_with_zero_bias():
    torch.manual_seed(0)
    model = create_model("vgg11_bn", 3, 32)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    for conv in convs[2:]:   # enough weights for a tight estimate
        fan_out = conv.out_channels * 9
        assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
        assert float(conv.bias.abs().max()) == 0
    for bn in (m for m in model.features if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
