import itertools

import pytest
import torch
import torch.nn.functional as F

from sresnet import metrics


def brute_force_sops(spikes, cout, k, stride, pad):
    """Count every (spike, output position, output channel) synapse by enumeration."""
    c, h, w = spikes.shape
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    total = 0
    for ci, y, x in itertools.product(range(c), range(h), range(w)):
        n = int(spikes[ci, y, x])
        if not n:
            continue
        for oy, ox in itertools.product(range(ho), range(wo)):
            y0, x0 = oy * stride - pad, ox * stride - pad
            if y0 <= y < y0 + k and x0 <= x < x0 + k:
                total += n * cout
    return total


@pytest.mark.parametrize("h,w,k,stride,pad", [(7, 7, 3, 1, 1), (8, 5, 3, 2, 1), (6, 6, 1, 2, 0), (5, 9, 3, 2, 0), (4, 4, 3, 1, 2)])
def test_conv_sops_match_brute_force(h, w, k, stride, pad):
    g = torch.Generator().manual_seed(h * 100 + w)
    counts = torch.randint(0, 4, (3, h, w), generator=g)
    assert metrics.conv_sops(counts, 5, k, stride, pad) == brute_force_sops(counts, 5, k, stride, pad)


def test_conv_sops_equal_dense_conv_of_ones_count():
    # a spike map of all ones: SOPs = sum over outputs of the number of in-bounds taps
    counts = torch.ones(2, 6, 6)
    taps = F.conv2d(torch.ones(1, 2, 6, 6), torch.ones(4, 2, 3, 3), stride=2, padding=1).sum()
    assert metrics.conv_sops(counts, 4, 3, 2, 1) == taps.item()


def test_macs_and_linear():
    assert metrics.conv_macs(16, 32, 3, (16, 16)) == 16 * 32 * 9 * 256
    assert metrics.linear_sops(7, 10) == 70
    assert metrics.linear_macs(64, 10) == 640


def test_firing_rate_hand_case():
    # 2 neurons, 4 steps, batch 1: spike trains 1010 and 0001 -> 3 spikes / 8 neuron-steps
    s = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 1]])
    assert metrics.firing_rate(s.sum().item(), 2, 4, 1) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="firing_rate"):
        metrics.firing_rate(1, 0, 4, 1)


def test_energy_model():
    e = metrics.EnergyModel()
    assert e.snn(1e6) == pytest.approx(0.9e-6)
    assert e.ann(1e6) == pytest.approx(4.6e-6)
    assert metrics.EnergyModel(e_ac=1.0, e_mac=2.0).snn(3, 4) == 11.0
    with pytest.raises(ValueError, match="e_ac"):
        metrics.EnergyModel(e_ac=0)
