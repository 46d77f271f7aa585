"""ResNet architectures the converter supports, and checkpoint loading.

- CIFAR ResNets 20/32/44/56/110 (He et al. 2016, section 4.2) exactly as in the public
  pytorch_resnet_cifar10 repository, so its checkpoints load: functional ``F.relu``,
  option-A shortcuts (stride-2 subsample + zero channel padding) or option-B projections.
- torchvision-style ResNets 18/34/50/101/152 and Wide ResNets 50-2/101-2 (BasicBlock /
  Bottleneck, 7x7 stem + max pool, one ``self.relu`` module called twice per block), with
  torchvision's parameter names so its state dicts load. Written here because torchvision
  cannot be installed beside the torch version this project pins.
- a user's own network: ``"package.module:factory"`` or ``"path/to/file.py:factory"``, a
  callable returning an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
# name -> (block, blocks per stage, bottleneck width per 64 planes), as in torchvision
IMAGENET_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 128),
}
# torchvision's ResNeXt: grouped 3x3 convs, which the converter does not map (groups=1 only)
GROUPED = {"resnext50_32x4d": 32, "resnext101_32x8d": 32, "resnext101_64x4d": 64}
SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option-A shortcut: keep every ``stride``-th pixel and zero-pad channels on both sides.

    ``[B, C, H, W] -> [B, C + 2*pad, ceil(H/stride), ceil(W/stride)]``; no parameters.
    """

    def __init__(self, pad: int, stride: int = 2):
        super().__init__()
        self.pad = int(pad)
        self.stride = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}, stride={self.stride}"


class CifarBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes // 4, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, shortcut: str = "A", num_classes: int = 10):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, blocks_per_stage, 1, shortcut)
        self.layer2 = self._stage(32, blocks_per_stage, 2, shortcut)
        self.layer3 = self._stage(64, blocks_per_stage, 2, shortcut)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _stage(self, planes: int, n: int, stride: int, shortcut: str) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(CifarBasicBlock(self.in_planes, planes, s, shortcut))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linear(out)


def cifar_resnet(name: str, shortcut: str = "A", num_classes: int = 10) -> CifarResNet:
    """A CIFAR ResNet (pytorch_resnet_cifar10 layout) with random weights.

    Args:
        name: "resnet20", "resnet32", "resnet44", "resnet56" or "resnet110".
        shortcut: "A" (subsample + zero channel padding, no parameters) or "B" (1x1 conv + BN).
        num_classes: outputs of the final linear layer.

    Returns:
        the model (training mode, like any new nn.Module): ``[B, 3, 32, 32] -> [B, num_classes]``.

    Example:
        >>> model = cifar_resnet("resnet20")
    """
    if name not in CIFAR_DEPTHS:
        raise ValueError(f"unknown CIFAR ResNet {name!r}; accepted: {', '.join(CIFAR_DEPTHS)}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut={shortcut!r} is not a shortcut type; accepted: 'A', 'B'")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return CifarResNet(CIFAR_DEPTHS[name], shortcut, num_classes)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one ``self.relu`` called twice."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, "ResNet v1.5"); ``base_width`` 128: Wide ResNet."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ImageNetResNet(nn.Module):
    def __init__(self, block: type, layers: tuple, num_classes: int = 1000, width: int = 64, base_width: int = 64):
        super().__init__()
        self.inplanes = width
        self.extra = {"base_width": base_width} if block is Bottleneck else {}
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, width, layers[0], 1)
        self.layer2 = self._stage(block, width * 2, layers[1], 2)
        self.layer3 = self._stage(block, width * 4, layers[2], 2)
        self.layer4 = self._stage(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _stage(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **self.extra)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **self.extra) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def imagenet_resnet(name: str, num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """A torchvision-style ResNet with random weights (torchvision's module names).

    Args:
        name: "resnet18", "resnet34" (BasicBlock), "resnet50", "resnet101", "resnet152",
            "wide_resnet50_2" or "wide_resnet101_2" (Bottleneck; the wide ones have twice
            the bottleneck width).
        num_classes: outputs of ``fc``.
        width: channels of the stem (64 in torchvision; smaller for tests).

    Returns:
        the model: ``[B, 3, H, W] -> [B, num_classes]``.

    Raises:
        ValueError: an unknown name; ResNeXt names (grouped convolutions, which the
            converter does not support).
    """
    if name in GROUPED:
        raise ValueError(
            f"{name} uses grouped 3x3 convolutions (groups={GROUPED[name]}), which the converter does not "
            "support (groups=1 only); accepted: " + ", ".join(IMAGENET_LAYOUTS)
        )
    if name not in IMAGENET_LAYOUTS:
        raise ValueError(f"unknown torchvision-style ResNet {name!r}; accepted: {', '.join(IMAGENET_LAYOUTS)}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    kind, layers, base_width = IMAGENET_LAYOUTS[name]
    block = BasicBlock if kind == "basic" else Bottleneck
    return ImageNetResNet(block, layers, num_classes, width, base_width)


def _read_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch.load raises many types for truncated or foreign files
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint (truncated or not a torch.save file): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path} holds a {type(obj).__name__}, not a state dict; accepted: a dict of tensors "
            "or {'state_dict': dict of tensors}"
        )
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(f"model {spec!r}: expected 'package.module:factory' or 'path/to/file.py:factory'")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise FileNotFoundError(f"model file {file} does not exist")
            mod_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules.setdefault(file.stem, module)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model {spec!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH "
                         "(or give a path to a .py file)?") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def build_model(name: str, num_classes: int | None = None, shortcut: str = "A") -> nn.Module:
    """A network with random weights from a name or a user factory.

    Args:
        name: a CIFAR ResNet ("resnet20" ... "resnet110"), a torchvision-style one
            ("resnet18" ... "resnet152", "wide_resnet50_2", "wide_resnet101_2"), or
            ``"package.module:factory"`` / ``"path/to/file.py:factory"``: a callable returning
            an ``nn.Module``, called as ``factory(num_classes=K)`` when ``num_classes`` is
            given, else ``factory()``.
        num_classes: outputs of the head (default: 10 for CIFAR ResNets, 1000 for
            torchvision-style ones, the factory's own default).
        shortcut: "A" or "B" for CIFAR ResNets.

    Raises:
        ValueError: unknown name, ResNeXt (grouped convolutions), a factory that cannot be
            imported or does not return an ``nn.Module``.
    """
    if ":" in name:
        factory = _import_factory(name)
        model = factory(num_classes=num_classes) if num_classes is not None else factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model factory {name!r} returned a {type(model).__name__}, not an nn.Module")
        return model
    if name in CIFAR_DEPTHS:
        return cifar_resnet(name, shortcut, 10 if num_classes is None else num_classes)
    if name in IMAGENET_LAYOUTS or name in GROUPED:
        return imagenet_resnet(name, 1000 if num_classes is None else num_classes)
    raise ValueError(
        f"unknown architecture {name!r}; accepted: {', '.join(list(CIFAR_DEPTHS) + list(IMAGENET_LAYOUTS))}, "
        "or 'package.module:factory'"
    )


def _head_key(model: nn.Module) -> str | None:
    """State-dict key of the weight of the last Linear layer (the classifier head)."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    return None if last is None else f"{last}.weight"


def load_checkpoint(name: str, path: str | Path | None, shortcut: str = "A", num_classes: int | None = None) -> nn.Module:
    """Build a network and load a checkpoint into it (pytorch_resnet_cifar10 format or a bare state dict).

    Args:
        name: a CIFAR ResNet ("resnet20" ... "resnet110"), a torchvision-style one
            ("resnet18" ... "resnet152", "wide_resnet50_2", "wide_resnet101_2"), or a user
            factory ``"package.module:factory"`` (see :func:`build_model`).
        path: file written by ``torch.save``; ``{"state_dict": ...}`` or a bare state dict,
            ``module.`` prefixes (DataParallel) are stripped. Loaded with ``weights_only=True``.
            None only for a factory (its model is used as returned).
        shortcut: "A" or "B" for CIFAR ResNets.
        num_classes: classes of the head; default: read from the checkpoint (named models).

    Returns:
        the model in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unknown name, unreadable file, a checkpoint for another number of
            classes (both counts named), or keys / shapes that do not match the
            architecture (the message lists them).
    """
    if path is None:
        if ":" not in name:
            raise ValueError(f"model {name!r} needs a checkpoint file (only a user factory may go without one)")
        return build_model(name, num_classes).eval()
    path = Path(path)
    if ":" not in name and name not in CIFAR_DEPTHS and name not in IMAGENET_LAYOUTS:
        build_model(name)  # raises the unknown-name / ResNeXt error
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    state = _read_state_dict(path)
    if ":" not in name and num_classes is None:
        head = "linear.weight" if name in CIFAR_DEPTHS else "fc.weight"
        if head in state and state[head].dim() == 2:
            num_classes = int(state[head].shape[0])
    model = build_model(name, num_classes, shortcut)
    expected = model.state_dict()
    head = _head_key(model)
    if head in state and head in expected and state[head].dim() == 2 and state[head].shape[0] != expected[head].shape[0]:
        raise ValueError(
            f"checkpoint {path} is for {state[head].shape[0]} classes ({head} {tuple(state[head].shape)}) but the "
            f"model has {expected[head].shape[0]} outputs (num_classes / --num-classes "
            f"{num_classes if num_classes is not None else 'not given'}); pass --num-classes "
            f"{state[head].shape[0]} or the checkpoint of the right model"
        )
    # checkpoints written before PyTorch 0.4.1 have no BatchNorm step counter: not a mismatch
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                parts.append(f"{label}: {shown}")
        what = f"{name} (shortcut {shortcut})" if name in CIFAR_DEPTHS else name
        raise ValueError(f"checkpoint {path} does not fit {what}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model.eval()
