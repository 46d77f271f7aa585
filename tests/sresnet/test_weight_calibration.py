"""Layer-wise weight calibration (issue 12, mechanism 5): the closed-form ridge refit."""

import pytest
import torch
import torch.nn.functional as F

import sresnet
from sresnet.convert import weights
from sresnet.network import Layer, Term

from _sresnet_nets import make


def _spikes_with_rates(counts: torch.Tensor, H: int) -> torch.Tensor:
    """uint8 spikes ``[H, ...]`` whose count over H is ``counts`` (the first ``count`` steps fire)."""
    t = torch.arange(H).view(-1, *([1] * counts.dim()))
    return (t < counts[None]).to(torch.uint8)


def test_refit_hand_checked_linear_doubles_a_halved_input():
    # the spiking input carries half the ANN's activation on every neuron: with a tiny ridge the
    # refitted weight is twice the converted one (P_r = P_a / 2, so W' = 2 W up to the ridge)
    H = 8
    counts = torch.tensor([[0, 2, 4], [2, 4, 0], [4, 0, 2], [2, 2, 2]])  # [B=4, F=3]
    spikes = _spikes_with_rates(counts, H)  # rates counts / 8 = (0, .25, .5) ...
    act = (2.0 * counts.float() / H)[None]  # [1, B, F]
    W = torch.tensor([[0.5, -1.0, 0.25], [1.0, 0.0, -0.5]])
    layer = Layer("neuron", "fc", (2,), main=Term(0, (), "linear", W.clone(), torch.zeros(2)))
    out = weights.refit(layer, spikes, act, H, ridge=1e-9)
    assert torch.allclose(layer.main.weight, 2 * W, atol=1e-5)
    assert out["change"] == pytest.approx(1.0, abs=1e-5)


def test_refit_equals_ridge_regression_on_explicit_patches():
    # conv 3x3, stride 2, padding 1: the refit equals the ridge solution computed independently
    # from explicitly gathered receptive fields (float64, numpy-style normal equations)
    g = torch.Generator().manual_seed(0)
    H, B, C, Cout = 16, 5, 3, 4
    counts = torch.randint(0, H + 1, (B, C, 6, 6), generator=g)
    spikes = _spikes_with_rates(counts, H)
    act = (counts.float() / H + 0.1 * torch.randn(B, C, 6, 6, generator=g)).clamp_min(0)[None]
    W = torch.randn(Cout, C, 3, 3, generator=g)
    layer = Layer("neuron", "c", (Cout, 3, 3), main=Term(0, (), "conv", W.clone(), None, (2, 2), (1, 1)))
    ridge = 0.5
    weights.refit(layer, spikes, act, H, ridge)
    xr = torch.zeros(B, C, 8, 8, dtype=torch.float64)
    xa = torch.zeros_like(xr)
    xr[:, :, 1:7, 1:7] = counts.double() / H
    xa[:, :, 1:7, 1:7] = act[0].double()
    pr, pa = [], []
    for b in range(B):
        for y in range(3):
            for x in range(3):
                pr.append(xr[b, :, 2 * y : 2 * y + 3, 2 * x : 2 * x + 3].reshape(-1))
                pa.append(xa[b, :, 2 * y : 2 * y + 3, 2 * x : 2 * x + 3].reshape(-1))
    Pr, Pa = torch.stack(pr), torch.stack(pa)  # [N, K]
    A = Pr.T @ Pr
    rho = ridge * A.diagonal().mean()
    Wf = W.double().reshape(Cout, -1)
    expected = torch.linalg.solve(A + rho * torch.eye(A.shape[0], dtype=torch.float64),
                                  Pr.T @ Pa @ Wf.T + rho * Wf.T).T
    assert torch.allclose(layer.main.weight.double().reshape(Cout, -1), expected, rtol=1e-5, atol=1e-6)


def test_refit_lowers_the_current_error_and_never_raises_it():
    # least squares with a ridge towards W: the current error on the calibration rows cannot grow
    g = torch.Generator().manual_seed(1)
    H, B, C, Cout = 8, 6, 4, 5
    counts = torch.randint(0, H + 1, (B, C, 5, 5), generator=g)
    spikes = _spikes_with_rates(counts, H)
    act = (counts.float() / H * (1 + 0.5 * torch.rand(1, C, 1, 1, generator=g)))[None]  # per-channel gain
    W = torch.randn(Cout, C, 3, 3, generator=g)
    errors = []
    for ridge in (10.0, 0.1):
        layer = Layer("neuron", "c", (Cout, 5, 5), main=Term(0, (), "conv", W.clone(), None, (1, 1), (1, 1)))
        weights.refit(layer, spikes, act, H, ridge)
        rate = counts.float() / H
        before = (F.conv2d(rate, W, padding=1) - F.conv2d(act[0], W, padding=1)).norm()
        after = (F.conv2d(rate, layer.main.weight, padding=1) - F.conv2d(act[0], W, padding=1)).norm()
        assert after < before
        errors.append(float(after))
    assert errors[1] < errors[0]  # a weaker ridge fits closer


def test_refit_skips_a_layer_whose_input_never_spiked():
    W = torch.randn(2, 3)
    layer = Layer("neuron", "fc", (2,), main=Term(0, (), "linear", W.clone(), None))
    out = weights.refit(layer, torch.zeros(4, 2, 3, dtype=torch.uint8), torch.rand(1, 2, 3), 4, 1.0)
    assert "skipped" in out and torch.equal(layer.main.weight, W)


def _images(n, hw=8, seed=2):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def test_convert_with_weight_calibration_refits_every_spiking_main_term():
    model = make("tiny_A_functional")
    calib = _images(12)
    plain = sresnet.convert(model, calib, horizon=8, calib_subset=12)
    snn = sresnet.convert(model, calib, horizon=8, calib_subset=12, weight_calibration=True)
    refits = snn.info["weight_refits"]
    assert snn.info["weight_calibration"] == weights.DEFAULT_RIDGE
    for a, b in zip(plain.layers, snn.layers):
        if weights.calibratable(b):
            assert b.name in refits and refits[b.name]["change"] > 0
            assert not torch.equal(a.main.weight, b.main.weight), a.name
        elif b.main is not None:  # the stem reads the analog image: exact, left alone
            assert b.name not in refits and torch.equal(a.main.weight, b.main.weight)
    out = snn(_images(3, seed=5), timesteps=8)
    assert out.shape == (3, 5) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(weight_calibration=-1.0), "ridge strength > 0"),
        (dict(weight_calibration=float("nan")), "ridge strength > 0"),
        (dict(weight_calibration="yes"), "weight_calibration must be"),
        (dict(weight_calibration=True, method="s-resnet"), "needs method='lowlat'"),
        (dict(weight_calibration=0.5, compensation=None), "needs method='lowlat'"),
    ],
)
def test_bad_weight_calibration_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        sresnet.convert(make("tiny_A_functional"), _images(4), **kw)
