"""The network description (sresnet.network) and its executor: neuron parameters, per-step
bias schedules, delayed readout, image-size checks and save/load of every field."""

import pytest
import torch

import sresnet
from sresnet.executor import Executor
from sresnet.network import Layer, Network, Neuron, Readout, Term

from _sresnet_nets import make


def _images(n=8, hw=8, seed=1, c=3):
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(seed))


def _one_neuron_net(neuron: Neuron, readout: Readout | None = None) -> Network:
    """A stem of one 1x1 conv channel (weight 1) read out by a linear of weight 1: the logit is
    the stem's spike train, so the expected outputs can be written by hand."""
    stem = Term(-1, [], "conv", torch.ones(1, 1, 1, 1), None, (1, 1), (0, 0))
    layer = Layer("stem", "relu", (1, 1, 1), main=stem, neuron=neuron)
    head = Term(0, [("flatten",)], "linear", torch.ones(1, 1), None)
    return Network([layer], [head], 1.0, (1, 1, 1), readout or Readout())


def _spike_train(net, x, T):
    s, _ = Executor(net).simulate(torch.full((1, 1, 1, 1), float(x)), T, per_step=True)
    # membrane readout without delay: mean output current after t steps -> spikes by differences
    t = torch.arange(1, T + 1, dtype=torch.float32)
    counts = (s[:, 0, 0] * t).round()
    return torch.diff(counts, prepend=torch.zeros(1)).tolist()


def test_plain_if_neuron_by_hand():
    # x = 0.3, v0 = 0.5: v = 0.8, 1.1 (spike), 0.4, 0.7, 1.0 (tie fires), 0.3
    assert _spike_train(_one_neuron_net(Neuron()), 0.3, 6) == [0, 1, 0, 0, 1, 0]


def test_threshold_v0_and_zero_reset_by_hand():
    # θ = 0.5, v0 = 0: v = 0.3, 0.6 (spike -> 0.1), 0.4, 0.7 (spike -> 0.2)
    assert _spike_train(_one_neuron_net(Neuron(threshold=0.5, v0=0.0)), 0.3, 4) == [0, 1, 0, 1]
    # reset to zero: 0.3, 0.6 (spike -> 0), 0.3, 0.6 (spike)
    assert _spike_train(_one_neuron_net(Neuron(threshold=0.5, v0=0.0, reset="zero")), 0.3, 4) == [0, 1, 0, 1]
    # reset to zero differs from subtract once the excess matters: x = 0.35, θ = 0.5, v0 = 0
    # subtract: .35, .7 (-> .2), .55 (-> .05), .4, .75; zero: .35, .7 (-> 0), .35, .7 (-> 0), .35
    sub = _spike_train(_one_neuron_net(Neuron(threshold=0.5, v0=0.0)), 0.35, 5)
    zero = _spike_train(_one_neuron_net(Neuron(threshold=0.5, v0=0.0, reset="zero")), 0.35, 5)
    assert sub == [0, 1, 1, 0, 1] and zero == [0, 1, 0, 1, 0]


def test_bias_schedule_by_hand():
    # x = 0.3 plus rows (0.4, 0, -0.3); the last row repeats: currents 0.7, 0.3, 0, 0, ...
    sched = torch.tensor([[0.4], [0.0], [-0.3]])
    # v0 = 0.5: 1.2 (spike) 0.2, 0.5, 0.5, 0.5
    assert _spike_train(_one_neuron_net(Neuron(bias_schedule=sched)), 0.3, 5) == [1, 0, 0, 0, 0]
    assert Neuron(bias_schedule=sched).bias_rows(2, 3).flatten().tolist() == pytest.approx([-0.3] * 3)


def test_delayed_readout_by_hand_and_per_step():
    net = _one_neuron_net(Neuron(), Readout(delay=2))
    x = torch.full((1, 1, 1, 1), 0.3)
    per, _ = Executor(net).simulate(x, 6, per_step=True)
    train = [0, 1, 0, 0, 1, 0]
    for T in range(1, 7):
        d = min(T - 1, 2)
        assert float(per[T - 1, 0, 0]) == pytest.approx(sum(train[d:T]) / (T - d))
        last, _ = Executor(net).simulate(x, T)
        assert torch.equal(last, per[T - 1])
    assert Readout(delay=1, delay_fraction=0.25).delay_for(16) == 4
    assert Readout(delay=5, delay_fraction=0.25).delay_for(16) == 5
    assert Readout(delay=5).delay_for(3) == 2


@pytest.mark.parametrize("readout", ["membrane", "spikes"])
def test_delayed_readout_chunks_and_description_hooks(readout):
    model = make("tiny_B_module")
    x = _images(3, 8)
    snn = sresnet.convert(model, _images(16, 8, seed=2), compensation=None, readout=readout)
    snn.network.readout.delay_fraction = 0.25
    torch.manual_seed(3)
    for layer in snn.layers:
        if layer.kind != "maxpool":
            layer.neuron.bias_schedule = 0.05 * torch.randn(5, layer.shape[0])
    full = snn(x, timesteps=13, per_step=True, chunk=13)
    for chunk in (1, 4):
        assert torch.equal(snn(x, timesteps=13, per_step=True, chunk=chunk), full)
    # reading T' = 8 from the 13-step run equals an 8-step run (the spikes readout's final
    # tie-break uses the kernel's membrane, the per-step one its running sums: rounding apart)
    assert torch.allclose(snn(x, timesteps=8), full[7], rtol=1e-6, atol=1e-6)
    assert torch.equal(snn(x, timesteps=8, per_step=True), full[:8])


def test_bias_schedule_matches_constant_bias():
    # a schedule of identical rows is the same current as the layer's own bias
    model = make("tiny_A_functional")
    x = _images(4, 8)
    a = sresnet.convert(model, _images(16, 8, seed=2), compensation=None)
    b = sresnet.convert(model, _images(16, 8, seed=2), compensation=None)
    layer_a, layer_b = a.layers[1], b.layers[1]
    delta = torch.full((layer_a.shape[0],), 0.125)
    layer_a.add_bias(delta)
    layer_b.neuron.bias_schedule = delta[None].repeat(3, 1)
    ra, rb = a(x, timesteps=16, per_step=True), b(x, timesteps=16, per_step=True)
    assert (ra.argmax(-1) == rb.argmax(-1)).float().mean() > 0.95
    assert float((ra - rb).abs().max()) < 0.05 * float(ra.abs().max())


def test_image_size_errors_name_the_conversion_size():
    # flatten + linear head: converted for 8x10, called with 12x12
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 8, 5))
    snn = sresnet.convert(net, torch.randn(16, 1, 8, 10), compensation=None)
    with pytest.raises(ValueError, match=r"converted for images \[1, 8, 10\].*got \[12, 12\]"):
        snn(torch.randn(2, 1, 12, 12), timesteps=4)
    with pytest.raises(ValueError, match=r"converted for images \[1, 8, 10\].*3 channels"):
        snn(torch.randn(2, 3, 8, 10), timesteps=4)
    with pytest.raises(ValueError, match=r"\[1, 8, 10\]"):
        snn.analog(torch.randn(2, 1, 12, 12))


def test_global_pool_head_accepts_other_sizes():
    model = make("tiny_A_functional")  # global average pool head
    snn = sresnet.convert(model, _images(16, 8, seed=2), compensation=None)
    x = _images(3, 12)
    with torch.no_grad():
        ref = model(x)
    rel = float((snn.analog(x) - ref).abs().max() / ref.abs().max())
    assert rel < 1e-5
    scores, stats = snn(x, timesteps=8, return_stats=True)
    assert scores.shape == ref.shape
    first = snn.layers[0]
    assert stats["neurons"][first.name] == first.shape[0] * 12 * 12


def _all_fields(net: Network) -> dict:
    return net.to_dict()


def _assert_same(a, b, where="network"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_save_load_keeps_every_field(tmp_path):
    model = make("tiny_B_module")
    snn = sresnet.convert(model, _images(16, 8, seed=2), method="s-resnet", calib_timesteps=8)
    assert snn.scales and snn.compensation  # the conversion's metadata exists before saving
    snn.network.readout.delay = 3
    snn.layers[1].neuron.threshold = torch.linspace(0.5, 1.5, snn.layers[1].shape[0])
    snn.layers[1].neuron.v0 = 0.25
    snn.layers[2].neuron.bias_schedule = torch.randn(4, snn.layers[2].shape[0])
    path = sresnet.save(snn, tmp_path / "net.snn")
    back = sresnet.load(path)
    _assert_same(_all_fields(snn.network), _all_fields(back.network))
    assert back.network.size_agnostic == snn.network.size_agnostic
    x = _images(2, 8)
    assert torch.equal(back(x, timesteps=9, per_step=True), snn(x, timesteps=9, per_step=True))


def test_load_format_version_1(tmp_path):
    """Files written before the description/executor split (format 1) still load and run the same."""
    model = make("tiny_A_functional")
    # format 1 predates neuron parameters and readout delays: the paper preset's network
    snn = sresnet.convert(model, _images(16, 8, seed=2), method="s-resnet", calib_timesteps=8)
    net = snn.network
    old = {
        "format": "sresnet.snn", "format_version": 1, "sresnet_version": "0.1.0", "readout": "membrane",
        "output_scale": net.output_scale.clone(), "input_shape": list(net.input_shape), "info": dict(net.info),
        "layers": [{"kind": l.kind, "name": l.name, "shape": list(l.shape),
                    "main": l.main.to_dict() if l.main else None, "others": [t.to_dict() for t in l.others],
                    "bias": l.bias, "pool": l.pool, "source": l.source} for l in net.layers],
        "output": [t.to_dict() for t in net.output],
    }
    torch.save(old, tmp_path / "v1.snn")
    back = sresnet.load(tmp_path / "v1.snn")
    x = _images(2, 8)
    assert torch.equal(back(x, timesteps=7), snn(x, timesteps=7))
    future = dict(old, format_version=99)
    torch.save(future, tmp_path / "v99.snn")
    with pytest.raises(ValueError, match="format version 99.*reads versions 1, 2"):
        sresnet.load(tmp_path / "v99.snn")


def test_description_rejects_bad_fields():
    with pytest.raises(ValueError, match="reset='soft'"):
        Neuron(reset="soft")
    with pytest.raises(ValueError, match="bias_schedule"):
        Neuron(bias_schedule=torch.zeros(3))
    with pytest.raises(ValueError, match="delay"):
        Readout(delay=-1)
    with pytest.raises(ValueError, match="delay_fraction"):
        Readout(delay_fraction=1.0)
    with pytest.raises(ValueError, match="readout='logits'"):
        Readout("logits")


def test_stem_max_pool_moves_before_the_neuron():
    """torchvision stem (conv -> BN -> ReLU -> max pool): the pool acts on the constant analog
    current, exactly; the gated spiking max pool stays available as the paper's variant."""
    model = make("tv_basic")
    calib, x = _images(16, 16, seed=2), _images(4, 16, seed=3)
    fused = sresnet.convert(model, calib, compensation=None)
    gated = sresnet.convert(model, calib, compensation=None, analog_stem_pool=False)
    assert not any(l.kind == "maxpool" for l in fused.layers)
    assert any(l.kind == "maxpool" for l in gated.layers)
    assert fused.info["analog_stem_pools"] == 1 and gated.info["analog_stem_pools"] == 0
    assert fused.layers[0].main.post[0][0] == "maxpool"
    with torch.no_grad():
        ref = model(x)
    for snn in (fused, gated):
        assert float((snn.analog(x) - ref).abs().max() / ref.abs().max()) < 1e-5
    # the pooled stem's λ is observed on the pooled activations (the max-pool node)
    assert fused.layers[0].name in fused.scales and fused.layers[0].name == gated.layers[1].name
    # the stem's spikes at every step are IF of the pooled current: check against if_scan
    import spikekernels as sk
    ex = Executor(fused.network, "reference")
    cur = ex.stem_currents(x)[0]
    s_ref = sk.if_scan(cur.expand(6, *cur.shape[1:]), 1.0, backend="reference")
    s, _ = ex.run_layer(0, [None], 6, None, cur)
    assert torch.equal(s.float(), s_ref)


def test_diagnosis_by_hand_and_written(tmp_path):
    from sresnet.diagnose import diagnose

    # one stem neuron fed 0.3 from v0 = 0.5 over 6 steps fires at steps 2 and 5: rate 1/3 vs 0.3
    net = _one_neuron_net(Neuron())
    snn = sresnet.SpikingNetwork(net)
    rep = diagnose(snn, torch.full((2, 1, 1, 1), 0.3), 6)
    (row,) = rep["layers"]
    assert row["first_spike_delay"] == 2.0
    assert row["firing_rate"] == pytest.approx(1 / 3) and row["target_rate"] == pytest.approx(0.3)
    assert row["rate_error"] == pytest.approx(1 / 3 - 0.3, abs=1e-6)
    # a silent neuron: delay T + 1
    rep = diagnose(snn, torch.full((1, 1, 1, 1), -1.0), 4)
    assert rep["layers"][0]["first_spike_delay"] == 5.0 and rep["layers"][0]["firing_rate"] == 0.0
    # deeper layers of a real conversion start later
    deep = sresnet.convert(make("tiny_B_module"), _images(16, 8, seed=2), compensation=None)
    rows = diagnose(deep, _images(4, 8), 16)["layers"]
    assert rows[-1]["first_spike_delay"] >= rows[0]["first_spike_delay"]
    from sresnet.diagnose import write_diagnosis

    j, png = write_diagnosis(diagnose(deep, _images(4, 8), 8), tmp_path / "d")
    assert j.is_file() and png.stat().st_size > 1000
