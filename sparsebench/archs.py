"""Model architectures by name.

Every architecture takes ``in_channels``, ``input_size``, ``num_classes`` and ``dropout`` so it
fits both 28x28x1 (Fashion-MNIST) and 32x32x3 (CIFAR-10) data. Each model carries

* ``input_shape``: the per-sample input shape (no batch dimension);
* ``prunable_layers``: the Conv2d/Linear layers in forward order, each with the BatchNorm that
  follows it (masked together with the filter, as in paper B), the module owning an ``out_mask``
  buffer to mask too (ResNet block outputs, so shortcut additions into pruned channels are
  masked), and the layer that consumes its outputs (used for structured compaction);
* ``default_pruned``: the layers pruned when no preset or ``--layers`` is given (every prunable
  layer except the classifier head and ResNet shortcuts).

Where dropout sits (the ``dropout`` baseline): after every hidden activation of a fully connected
stack (lenet300, lenet5's fc1/fc2, ffn's GELU) and on the flattened features just before the
classifier head of the convolutional networks (vgg11_bn, resnet18).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from sparsebench.errors import SparsebenchError
from sparsebench.catalog import ARCHS, ZOO_INSTALL, zoo_split


@dataclass(frozen=True)
class PrunableLayer:
    """A Conv2d/Linear whose output units (filters/neurons) can be pruned."""

    name: str
    bn: str | None = None
    out_mask: str | None = None
    consumer: str | None = None
    score_at: str | None = None   # module whose output activation scoring reads (default: bn)


def _chain(names: list[str], bns: dict[str, str] | None = None) -> list[PrunableLayer]:
    """Prunable layers of a plain feed-forward chain: each layer feeds the next."""
    bns = bns or {}
    return [
        PrunableLayer(n, bns.get(n), None, names[i + 1] if i + 1 < len(names) else None)
        for i, n in enumerate(names)
    ]


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class LeNet300(nn.Module):
    """LeNet-300-100: a 784-300-100-10 MLP (input flattened)."""

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        self.fc1 = nn.Linear(in_channels * input_size * input_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.drop1, self.drop2 = _dropout(dropout), _dropout(dropout)
        self.prunable_layers = _chain(["fc1", "fc2", "fc3"])
        self.default_pruned = ["fc1", "fc2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = self.drop1(torch.relu(self.fc1(x)))
        x = self.drop2(torch.relu(self.fc2(x)))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: conv 6@5x5 (pad 2), conv 16@5x5, fc 120, 84, classes."""

    def __init__(self, in_channels: int = 1, input_size: int = 28, num_classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.input_shape = (in_channels, input_size, input_size)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = (input_size // 2 - 4) // 2
        if side < 1:
            raise SparsebenchError(f"lenet5 needs an input size of at least 12, got {input_size}")
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.drop1, self.drop2 = _dropout(dropout), _dropout(dropout)
        self.prunable_layers = _chain(["conv1", "conv2", "fc1", "fc2", "fc3"])
        self.default_pruned = ["conv2", "fc1", "fc2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = self.drop1(torch.relu(self.fc1(x)))
        x = self.drop2(torch.relu(self.fc2(x)))
        return self.fc3(x)


VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def _scaled(channels: int, width: float) -> int:
    """A channel count times the width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def _check_width(width: float) -> None:
    if not 0 < width <= 16:
        raise SparsebenchError(f"width must be in (0, 16], got {width}")


class VGG11BN(nn.Module):
    """VGG11 with BatchNorm in its CIFAR form: the paper's single ``Linear(512, classes)`` head.

    ``width`` multiplies every channel count (0.25 gives 16-32-64-64-128-128-128-128 and a
    ``Linear(128, classes)`` head). Initialised as in paper B's official code: convolutions
    Kaiming-normal (fan_out, ReLU) with zero bias, BatchNorm scale 1 and shift 0; the head keeps
    torch's default initialisation (the official code replaces the classifier after initialising).
    A max-pool is skipped when the feature map is already 1x1 (28x28 inputs reach 1x1 after four
    pools), so the head sees ``512 * width`` features for both 28x28 and 32x32 inputs.
    """

    def __init__(self, in_channels: int = 3, input_size: int = 32, num_classes: int = 10,
                 dropout: float = 0.0, width: float = 1.0) -> None:
        super().__init__()
        _check_width(width)
        self.input_shape = (in_channels, input_size, input_size)
        layers: list[nn.Module] = []
        convs: list[str] = []
        bns: dict[str, str] = {}
        channels, side = in_channels, input_size
        for item in VGG11_CFG:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            name = f"features.{len(layers)}"
            convs.append(name)
            bns[name] = f"features.{len(layers) + 1}"
            out = _scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        for mod in self.features:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
        self.drop = _dropout(dropout)
        self.classifier = nn.Linear(channels * side * side, num_classes)
        self.prunable_layers = _chain(convs + ["classifier"], bns)
        self.default_pruned = convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(torch.flatten(self.features(x), 1)))


class BasicBlock(nn.Module):
    """ResNet basic block with an ``out_mask`` over its output channels (after the addition).

    ``post_add`` marks the residual sum before the ReLU: paper B's official code scores a block's
    conv2 by the activation there (after the shortcut add), conv1 by its BatchNorm output."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.post_add = nn.Identity()  # the sum before the ReLU: conv2's activation score
        self.register_buffer("out_mask", torch.ones(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.post_add(self.bn2(self.conv2(out)) + self.shortcut(x))
        return torch.relu(out) * self.out_mask.view(1, -1, 1, 1)


class ResNet18(nn.Module):
    """ResNet18 in its CIFAR form: 3x3 stem, no max-pool, global average pool, one Linear head.

    ``width`` multiplies every channel count (stem 64, stages 64/128/256/512)."""

    def __init__(self, in_channels: int = 3, input_size: int = 32, num_classes: int = 10,
                 dropout: float = 0.0, width: float = 1.0) -> None:
        super().__init__()
        _check_width(width)
        self.input_shape = (in_channels, input_size, input_size)
        stem = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        prunable = [PrunableLayer("conv1", "bn1")]
        cin = stem
        for i, (cout, stride) in enumerate([(_scaled(c, width), s) for c, s in
                                            [(64, 1), (128, 2), (256, 2), (512, 2)]], start=1):
            blocks = []
            for b in range(2):
                blocks.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                p = f"layer{i}.{b}"
                prunable.append(PrunableLayer(f"{p}.conv1", f"{p}.bn1", None, f"{p}.conv2"))
                prunable.append(PrunableLayer(f"{p}.conv2", f"{p}.bn2", p,
                                              score_at=f"{p}.post_add"))
                if len(blocks[-1].shortcut):
                    prunable.append(PrunableLayer(f"{p}.shortcut.0", f"{p}.shortcut.1", p))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.drop = _dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        prunable.append(PrunableLayer("fc"))
        self.prunable_layers = prunable
        self.default_pruned = [p.name for p in prunable
                               if p.name not in ("conv1", "fc") and "shortcut" not in p.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.drop(x))


class FFN(nn.Module):
    """Transformer feed-forward block 1024-4096-1024 with GELU, on vectors, plus a Linear head.

    The input is flattened; when it does not have 1024 features (e.g. 28x28 images) a
    ``Linear(in_features, 1024)`` embedding comes first. ``in_channels=1024, input_size=1`` gives
    the pure block on 1024-vectors (the form used for kernel benchmarks).
    """

    def __init__(self, in_channels: int = 1024, input_size: int = 1, num_classes: int = 10,
                 dropout: float = 0.0, d_model: int = 1024, d_hidden: int = 4096) -> None:
        super().__init__()
        features = in_channels * input_size * input_size
        self.input_shape = (features,) if input_size == 1 else (in_channels, input_size, input_size)
        self.embed = nn.Linear(features, d_model) if features != d_model else None
        self.fc1 = nn.Linear(d_model, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_model)
        self.drop = _dropout(dropout)
        self.head = nn.Linear(d_model, num_classes)
        names = (["embed"] if self.embed is not None else []) + ["fc1", "fc2", "head"]
        self.prunable_layers = _chain(names)
        self.default_pruned = names[:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        if self.embed is not None:
            x = self.embed(x)
        return self.head(self.fc2(self.drop(nn.functional.gelu(self.fc1(x)))))


def ffn_kwargs(state: dict[str, Any]) -> dict[str, Any]:
    """FFN's widths, read from its weights."""
    w = state.get("fc1.weight")
    return {} if w is None else {"d_model": int(w.shape[1]), "d_hidden": int(w.shape[0])}


# The entries (names, summaries, facts) are declared in sparsebench/catalog.py.


def default_input(name: str) -> tuple[int, int]:
    """(in_channels, input_size) an architecture is built for by default (a zoo model's own:
    3, 224 for torchvision, timm's ``pretrained_cfg`` input size)."""
    zoo = zoo_split(name)
    if zoo:
        return _zoo_default_input(*zoo)
    return tuple(ARCHS.meta(name).get("input", (3, 32)))  # type: ignore[return-value]


def small_model(name: str, **kwargs: Any) -> nn.Module:
    """A quick test-size instance of a registry architecture."""
    return create_model(name, **{**ARCHS.meta(name).get("small", {}), **kwargs})


def infer_prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """Prunable layers of a foreign model: Conv2d/Linear in registration order, each paired with
    a BatchNorm registered right after it. No consumers (no structured compaction)."""
    mods = list(model.named_modules())
    out = []
    for i, (name, mod) in enumerate(mods):
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            bn = nxt[0] if nxt and isinstance(nxt[1], (nn.BatchNorm1d, nn.BatchNorm2d)) else None
            out.append(PrunableLayer(name, bn))
    return out


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The model's declared prunable layers, or ones inferred from its modules."""
    declared = getattr(model, "prunable_layers", None)
    return list(declared) if declared is not None else infer_prunable_layers(model)


def _zoo_library(lib: str) -> Any:
    """torchvision.models or timm, or a one-line error saying how to install it."""
    try:
        if lib == "torchvision":
            from torchvision import models
            return models
        import timm
        return timm
    except Exception as exc:  # noqa: BLE001 - a mismatched torchvision fails in many ways
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise SparsebenchError(f"{lib} architectures need {lib}, which does not import here "
                               f"({why}); {ZOO_INSTALL}") from None


_TORCHVISION_SIZES = {"inception_v3": 299}  # everything else in torchvision.models: 224


def _zoo_default_input(lib: str, name: str) -> tuple[int, int]:
    if lib == "torchvision":
        return 3, _TORCHVISION_SIZES.get(name, 224)
    timm = _zoo_library(lib)
    try:
        size = tuple(timm.get_pretrained_cfg(name).input_size)
    except Exception:  # noqa: BLE001 - no config for this name: build it and ask the model
        size = tuple(build_zoo_model(lib, name).pretrained_cfg["input_size"])
    return int(size[0]), int(size[-1])


def build_zoo_model(lib: str, name: str, in_channels: int | None = None,
                    input_size: int | None = None, num_classes: int | None = None) -> nn.Module:
    """A torchvision or timm architecture with random weights (``weights=None`` /
    ``pretrained=False``: nothing is downloaded); ``num_classes`` None keeps its own head."""
    library = _zoo_library(lib)
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if lib == "torchvision":
            if in_channels not in (None, 3):
                raise SparsebenchError(f"torchvision:{name} takes 3 input channels, not "
                                       f"{in_channels}")
            if name not in library.list_models(module=library):
                raise LookupError(name)
            model = library.get_model(name, weights=None, **extra)
        else:
            if in_channels is not None:
                extra["in_chans"] = in_channels
            model = library.create_model(name, pretrained=False, **extra)
    except SparsebenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - unknown names, bad arguments
        import difflib

        known = (library.list_models(module=library) if lib == "torchvision"
                 else library.list_models())
        close = difflib.get_close_matches(name, known, n=5)
        if name not in known:
            raise SparsebenchError(f"unknown {lib} architecture {name!r}"
                                   + (f"; close: {', '.join(close)}" if close else "")) from None
        raise SparsebenchError(f"{lib}:{name} could not be built: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    _redraw_zero_weights(model)
    c, size = _zoo_default_input(lib, name)
    model.input_shape = (in_channels or c, input_size or size, input_size or size)
    return model.eval()


@torch.no_grad()
def _redraw_zero_weights(model: nn.Module) -> None:
    """Weights a zoo initialises to exactly zero (torchvision ViT's head, the last BatchNorm of
    each block of timm's ResNets) are drawn anew (norm scales set to 1), so every layer reaches
    the output and a measured error against the dense output means something."""
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if not isinstance(w, nn.Parameter) or w.numel() == 0 or bool(w.any()):
            continue
        if isinstance(mod, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            w.fill_(1.0)
        elif hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
        else:
            nn.init.normal_(w, std=0.02)


def create_model(name: str, in_channels: int | None = None, input_size: int | None = None,
                 num_classes: int | None = None, dropout: float = 0.0, **kwargs: Any
                 ) -> nn.Module:
    """Build an architecture by registry name (default input 1x28x28, 10 classes), or
    ``torchvision:NAME`` / ``timm:NAME`` where those import (default: their own input size and
    head)."""
    if not 0.0 <= dropout < 1.0:
        raise SparsebenchError(f"dropout must be in [0, 1), got {dropout}")
    zoo = zoo_split(name)
    if zoo:
        if kwargs:
            raise SparsebenchError(f"{name} takes no arguments ({', '.join(kwargs)})")
        return build_zoo_model(*zoo, in_channels, input_size, num_classes)
    factory = ARCHS.get(name)
    return factory(in_channels=1 if in_channels is None else in_channels,
                   input_size=28 if input_size is None else input_size,
                   num_classes=10 if num_classes is None else num_classes, dropout=dropout,
                   **kwargs)


def list_archs(pattern: str = "*") -> list[str]:
    return ARCHS.names(pattern)
