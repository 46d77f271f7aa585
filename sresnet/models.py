"""ResNet architectures the converter supports, and checkpoint loading.

- CIFAR ResNets 20/32/44/56/110 (He et al. 2016, section 4.2) exactly as in the public
  pytorch_resnet_cifar10 repository, so its checkpoints load: functional ``F.relu``,
  option-A shortcuts (stride-2 subsample + zero channel padding) or option-B projections.
- torchvision-style ResNets 18/34/50/101 (BasicBlock / Bottleneck, 7x7 stem + max pool,
  one ``self.relu`` module called twice per block), with torchvision's parameter names so
  its state dicts load. Written here because torchvision cannot be installed beside the
  torch version this project pins.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
IMAGENET_LAYOUTS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
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
    """torchvision's Bottleneck (stride on the 3x3 conv, "ResNet v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
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
    def __init__(self, block: type, layers: tuple, num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.inplanes = width
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
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def imagenet_resnet(name: str, num_classes: int = 1000, width: int = 64) -> ImageNetResNet:
    """A torchvision-style ResNet with random weights (torchvision's module names).

    Args:
        name: "resnet18", "resnet34" (BasicBlock), "resnet50" or "resnet101" (Bottleneck).
        num_classes: outputs of ``fc``.
        width: channels of the stem (64 in torchvision; smaller for tests).

    Returns:
        the model: ``[B, 3, H, W] -> [B, num_classes]``.
    """
    if name not in IMAGENET_LAYOUTS:
        raise ValueError(f"unknown torchvision-style ResNet {name!r}; accepted: {', '.join(IMAGENET_LAYOUTS)}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    kind, layers = IMAGENET_LAYOUTS[name]
    return ImageNetResNet(BasicBlock if kind == "basic" else Bottleneck, layers, num_classes, width)


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


def load_checkpoint(name: str, path: str | Path, shortcut: str = "A", num_classes: int | None = None) -> nn.Module:
    """Build a ResNet and load a checkpoint into it (pytorch_resnet_cifar10 format or a bare state dict).

    Args:
        name: a CIFAR ResNet ("resnet20" ... "resnet110") or a torchvision-style one
            ("resnet18" ... "resnet101").
        path: file written by ``torch.save``; ``{"state_dict": ...}`` or a bare state dict,
            ``module.`` prefixes (DataParallel) are stripped. Loaded with ``weights_only=True``.
        shortcut: "A" or "B" for CIFAR ResNets.
        num_classes: classes of the head; default: read from the checkpoint.

    Returns:
        the model in eval mode.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unknown name, unreadable file, or keys / shapes that do not match the
            architecture (the message lists them).
    """
    path = Path(path)
    if name not in CIFAR_DEPTHS and name not in IMAGENET_LAYOUTS:
        raise ValueError(
            f"unknown architecture {name!r}; accepted: {', '.join(list(CIFAR_DEPTHS) + list(IMAGENET_LAYOUTS))}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    state = _read_state_dict(path)
    head = "linear.weight" if name in CIFAR_DEPTHS else "fc.weight"
    if num_classes is None:
        num_classes = int(state[head].shape[0]) if head in state and state[head].dim() == 2 else (
            10 if name in CIFAR_DEPTHS else 1000
        )
    model = cifar_resnet(name, shortcut, num_classes) if name in CIFAR_DEPTHS else imagenet_resnet(name, num_classes)
    expected = model.state_dict()
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
        raise ValueError(f"checkpoint {path} does not fit {name} (shortcut {shortcut}): " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model.eval()
