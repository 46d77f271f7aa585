"""Opt-in multi-bit neurons in converted networks: burst (up to k spikes per step) and signed (SNM)."""

import pytest
import torch

import sresnet

from _sresnet_nets import make


def _images(n=8, hw=8, seed=1):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def _err(a, b):
    return float((a - b).abs().mean() / b.abs().mean())


def test_burst_of_one_is_the_if_network():
    model = make("tiny_B_module")
    calib, x = _images(16, seed=2), _images(6)
    plain = sresnet.convert(model, calib, method="s-resnet", compensation=None)
    burst = sresnet.convert(model, calib, method="s-resnet", compensation=None, neuron="burst", max_spikes=1)
    assert all(l.neuron.kind == "burst" for l in burst.layers)
    a, b = plain(x, timesteps=24, per_step=True), burst(x, timesteps=24, per_step=True)
    # same neurons; the current is summed in another order (dense op vs fused kernel): rounding only
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_burst_removes_saturation_and_counts_every_spike():
    # λ at the 50th percentile: half the activations exceed λ and a binary neuron saturates at one
    # spike per step; a burst neuron of 4 sends the excess
    model = make("tiny_A_functional")
    calib, x = _images(32, seed=2), _images(8)
    with torch.no_grad():
        ref = model(x)
    plain = sresnet.convert(model, calib, 50.0, method="s-resnet", compensation=None)
    burst = sresnet.convert(model, calib, 50.0, method="s-resnet", compensation=None, neuron="burst", max_spikes=4)
    e_plain, e_burst = _err(plain(x, timesteps=64), ref), _err(burst(x, timesteps=64), ref)
    assert e_burst < 0.6 * e_plain, (e_plain, e_burst)
    _, stats = burst(x, timesteps=16, return_stats=True, record_maps=True)
    first = burst.layers[0].name
    assert stats["spikes"][first] == int(stats["maps"][0].sum())
    # more spikes than neuron-steps somewhere: bursts are counted spike by spike
    assert max(stats["spikes"][n] / (stats["neurons"][n] * 16 * 8) for n in stats["spikes"]) > 1.0
    res = sresnet.evaluate_snn(model, burst, x, ref.argmax(1), [16])
    assert res["neuron"] == "burst" and res["bits_per_neuron_step"] == pytest.approx(torch.log2(torch.tensor(5.0)).item())


def test_signed_neurons_cancel_overshoot():
    model = make("tiny_B_module")
    calib, x = _images(32, seed=2), _images(8)
    with torch.no_grad():
        ref = model(x)
    signed = sresnet.convert(model, calib, method="s-resnet", compensation=None, neuron="signed")
    scores, stats = signed(x, timesteps=64, per_step=True, return_stats=True)
    assert _err(scores[-1], ref) < 0.15
    assert _err(scores[-1], ref) < _err(scores[7], ref)
    res = sresnet.evaluate_snn(model, signed, x, ref.argmax(1), [8])
    assert res["neuron"] == "signed" and res["bits_per_neuron_step"] == pytest.approx(1.58496, abs=1e-4)


def test_neuron_kind_errors(tmp_path):
    model = make("tiny_A_functional")
    calib = _images(8)
    with pytest.raises(ValueError, match="neuron='burst' needs method='s-resnet'"):
        sresnet.convert(model, calib, neuron="burst", max_spikes=2)
    with pytest.raises(ValueError, match="neuron kind 'lif'"):
        sresnet.convert(model, calib, method="s-resnet", neuron="lif")
    with pytest.raises(ValueError, match="max_spikes"):
        sresnet.convert(model, calib, method="s-resnet", neuron="burst", max_spikes=0)
    snn = sresnet.convert(model, calib, method="s-resnet", compensation=None, neuron="burst", max_spikes=3)
    back = sresnet.load(sresnet.save(snn, tmp_path / "b.snn"))
    assert back.layers[1].neuron.kind == "burst" and back.layers[1].neuron.max_spikes == 3
    x = _images(2)
    assert torch.equal(back(x, timesteps=6), snn(x, timesteps=6))
