"""Fine-tuning converted networks: sresnet.to_trainable (surrogate-gradient BPTT through the executor)."""

import pytest
import torch
import torch.nn.functional as F

import sresnet

from _sresnet_nets import make


def _images(n=8, hw=8, seed=1):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind,hw", [("tiny_A_functional", 8), ("tv_basic", 16)], ids=["optionA", "torchvision"])
def test_forward_equals_inference_and_gradients_reach_every_weight(kind, hw):
    model = make(kind)
    snn = sresnet.convert(model, _images(16, hw, seed=2), calib_timesteps=8)
    trainable = sresnet.to_trainable(snn)
    x = _images(4, hw)
    scores = trainable(x, timesteps=6, per_step=True)
    # the same spikes as inference (float32 spikes instead of uint8 change nothing)
    ref = snn(x, timesteps=6, per_step=True)
    assert torch.allclose(scores, ref, rtol=1e-5, atol=1e-6)
    loss = F.cross_entropy(scores[-1], torch.arange(4) % scores.shape[-1])
    loss.backward()
    names = [n for n, _ in trainable.named_parameters()]
    assert names and all(n.endswith(("_weight", "_bias")) for n in names)
    missing = [n for n, p in trainable.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing
    # the converted network itself is untouched
    assert not any(t.weight.requires_grad for l in snn.layers for t in l.terms() if t.weight is not None)


def test_fine_tuning_lowers_the_loss_and_to_spiking_keeps_it():
    torch.manual_seed(0)
    model = make("tiny_A_functional")
    calib = _images(32, 8, seed=2)
    snn = sresnet.convert(model, calib, calib_timesteps=8)
    trainable = sresnet.to_trainable(snn, surrogate="atan")
    x, y = _images(16, 8, seed=5), torch.arange(16) % 5
    opt = torch.optim.Adam(trainable.parameters(), lr=2e-2)

    def loss_now():
        with torch.no_grad():
            return float(F.cross_entropy(trainable(x, timesteps=8), y))

    before = loss_now()
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(trainable(x, timesteps=8), y).backward()
        opt.step()
    after = loss_now()
    assert after < 0.8 * before, (before, after)
    tuned = trainable.to_spiking()
    with torch.no_grad():
        assert torch.allclose(tuned(x, timesteps=8), trainable(x, timesteps=8), rtol=1e-5, atol=1e-6)
    assert not torch.equal(tuned.layers[0].main.weight, snn.layers[0].main.weight)


def test_to_trainable_errors():
    with pytest.raises(TypeError, match="SpikingNetwork"):
        sresnet.to_trainable(make("tiny_A_functional"))
    snn = sresnet.convert(make("tiny_A_functional"), _images(8, 8), compensation=None)
    with pytest.raises(ValueError, match="timesteps"):
        sresnet.to_trainable(snn)(_images(2, 8), timesteps=0)
