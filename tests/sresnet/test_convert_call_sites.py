"""Issue 11, kind 1: a module called at several places is converted per call site."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sresnet

from _sresnet_nets import randomize_bn


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return float((out - ref).abs().max() / ref.abs().max())


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class TiedConv(nn.Module):
    """``self.conv`` called twice; ``bn``: "same" (one BN object twice), "two" (a BN per call) or "none"."""

    def __init__(self, bn: str):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1, bias=bn == "none")
        self.bn_a = _bn2d(6) if bn != "none" else nn.Identity()
        self.bn_b = (_bn2d(6) if bn == "two" else self.bn_a) if bn != "none" else nn.Identity()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn_a(self.conv(x)))
        x = F.relu(self.bn_b(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TiedLinear(nn.Module):
    """``self.fc`` (12 -> 12) called twice, with the same / a different / no BatchNorm1d."""

    def __init__(self, bn: str):
        super().__init__()
        self.stem = nn.Linear(3 * 4 * 4, 12)
        self.fc = nn.Linear(12, 12, bias=bn == "none")
        make = lambda: nn.BatchNorm1d(12)  # noqa: E731
        self.bn_a = make() if bn != "none" else nn.Identity()
        self.bn_b = (make() if bn == "two" else self.bn_a) if bn != "none" else nn.Identity()
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.stem(x.flatten(1)))
        x = F.relu(self.bn_a(self.fc(x)))
        x = F.relu(self.bn_b(self.fc(x)))
        return self.head(x)


class SharedWeight(nn.Module):
    """Two conv modules holding the same Parameter object, each with its own BatchNorm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.conv2.weight = self.conv1.weight
        self.bn1, self.bn2 = _bn2d(6), _bn2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SharedReLU(nn.Module):
    """One ``nn.ReLU`` module called at three places (works before issue 11; must keep working)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.bn1, self.bn2 = _bn2d(6), _bn2d(6)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.c1(x)))
        x = self.relu(self.bn2(self.c2(x)) + x)
        return self.fc(self.relu(F.adaptive_avg_pool2d(x, 1).flatten(1)))


def _randomize_bn1d(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) * 0.3 - 0.05)
    return model


CASES = [
    ("conv-one-bn", lambda: TiedConv("same"), 3),
    ("conv-two-bns", lambda: TiedConv("two"), 3),
    ("conv-no-bn", lambda: TiedConv("none"), 3),
    ("linear-one-bn", lambda: TiedLinear("same"), 3),
    ("linear-two-bns", lambda: TiedLinear("two"), 3),
    ("linear-no-bn", lambda: TiedLinear("none"), 3),
    ("shared-parameter", SharedWeight, 3),
    ("shared-relu", SharedReLU, 3),
]


@pytest.mark.parametrize("make,sites", [(m, s) for _, m, s in CASES], ids=[c[0] for c in CASES])
def test_every_call_site_is_folded_and_normalized_on_its_own(make, sites):
    torch.manual_seed(0)
    model = _randomize_bn1d(randomize_bn(make(), seed=3), seed=4).eval()
    x = torch.randn(16, 3, 4 if isinstance(model, TiedLinear) else 8, 4 if isinstance(model, TiedLinear) else 8,
                    generator=torch.Generator().manual_seed(5))
    snn = sresnet.convert(model, x, compensation=None)
    with torch.no_grad():
        ref = model(x)
    assert _rel(snn.analog(x), ref) < 1e-5
    assert torch.equal(snn.analog(x).argmax(1), ref.argmax(1))
    assert len([l for l in snn.layers if l.kind != "maxpool"]) == sites


@pytest.mark.parametrize("method", ["s-resnet", "lowlat"])
def test_call_sites_keep_their_own_scales_through_compensation(method):
    # per-site λ and the calibrated corrections (bias correction / bias schedule) stay per call site
    torch.manual_seed(1)
    model = randomize_bn(TiedConv("two"), seed=2).eval()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    snn = sresnet.convert(model, x, method=method, calib_timesteps=8, calib_subset=8, horizon=8)
    names = [l.name for l in snn.layers]
    assert len(set(names)) == 3 and set(names) <= set(snn.scales)
    if method == "s-resnet":
        assert set(snn.compensation) == set(names)
    else:
        schedules = [l.neuron.bias_schedule for l in snn.layers]
        assert all(s is not None for s in schedules)
        assert schedules[1].data_ptr() != schedules[2].data_ptr()
    w2, w3 = snn.layers[1].main.weight, snn.layers[2].main.weight
    assert w2.data_ptr() != w3.data_ptr() and not torch.equal(w2, w3)
