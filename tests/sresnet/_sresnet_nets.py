"""Tiny random networks for the sresnet tests (imported by the test files only)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from sresnet.models import cifar_resnet, imagenet_resnet


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.3 - 0.05)
    return model


class TinyBlock(nn.Module):
    """A CIFAR basic block with selectable shortcut and ReLU style."""

    def __init__(self, cin, cout, stride, shortcut, relu_style):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.style = relu_style
        if shortcut == "B" and (stride != 1 or cin != cout):
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        elif stride != 1 or cin != cout:
            self.pad = (cout - cin) // 2
            self.short = None
        else:
            self.short = nn.Identity()

    def forward(self, x):
        if self.style == "functional":
            out = F.relu(self.bn1(self.conv1(x)))
        elif self.style == "inplace":
            out = self.bn1(self.conv1(x)).relu_()
        else:
            out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.short is None else self.short(x)
        out = out + sc
        return torch.relu(out) if self.style == "functional" else self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, shortcut="A", relu_style="functional", width=4, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.b1 = TinyBlock(width, width, 1, shortcut, relu_style)
        self.b2 = TinyBlock(width, 2 * width, 2, shortcut, relu_style)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.b2(self.b1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def make(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "cifarA":
        m = cifar_resnet("resnet20", "A")
    elif kind == "cifarB":
        m = cifar_resnet("resnet20", "B")
    elif kind == "tv_basic":
        m = imagenet_resnet("resnet18", 5, width=4)
    elif kind == "tv_bottleneck":
        m = imagenet_resnet("resnet50", 5, width=2)
    elif kind.startswith("tiny"):
        _, shortcut, style = kind.split("_")
        m = TinyResNet(shortcut, style)
    else:
        raise KeyError(kind)
    return randomize_bn(m, seed).eval()


def assert_same_tree(a, b, where: str = "value") -> None:
    """Nested dicts/lists/tuples of tensors and primitives are equal, tensors bit for bit (same dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
