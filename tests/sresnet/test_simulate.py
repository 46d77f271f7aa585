import pytest
import torch

import sresnet
from sresnet.simulate import firing_rate

from _sresnet_nets import make


def _images(n=8, hw=8, seed=1):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def _rel_err(a, b):
    return float((a - b).abs().mean() / b.abs().mean())


@pytest.mark.parametrize(
    "kind,hw",
    [("tiny_A_functional", 8), ("tiny_B_module", 8), ("tiny_A_inplace", 8), ("tv_basic", 16), ("tv_bottleneck", 16)],
    ids=["optionA", "projection", "relu_", "torchvision-basic", "torchvision-bottleneck"],
)
def test_per_step_readout_converges_to_ann(kind, hw):
    model = make(kind)
    calib = _images(32, hw, seed=2)
    x = _images(8, hw, seed=3)
    snn = sresnet.convert(model, calib, 100.0, compensation=None)
    with torch.no_grad():
        ref = model(x)
    scores = snn(x, timesteps=256, per_step=True)
    assert scores.shape == (256, 8, ref.shape[1])
    errs = [_rel_err(scores[t - 1], ref) for t in (8, 32, 256)]
    assert errs[2] < errs[0], errs
    assert errs[2] < 0.1, errs
    agree = (scores[-1].argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree >= 0.75, agree


def test_spikes_readout_converges():
    model = make("tiny_A_functional")
    x = _images(8, 8, seed=3)
    snn = sresnet.convert(model, _images(32, 8, seed=2), 100.0, compensation=None, readout="spikes")
    with torch.no_grad():
        ref = model(x)
    scores = snn(x, timesteps=256, per_step=True)
    assert (scores[-1].argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75
    final = snn(x, timesteps=256)
    assert torch.allclose(final, scores[-1], atol=1e-5)


@pytest.mark.parametrize("readout", ["membrane", "spikes"])
@pytest.mark.parametrize("chunk", [1, 3, 7], ids=["chunk1", "chunk3", "chunk7"])
def test_chunked_equals_unchunked(readout, chunk):
    model = make("tiny_B_module")
    x = _images(3, 8)
    snn = sresnet.convert(model, _images(16, 8, seed=2), compensation=None, readout=readout)
    full, stats_full = snn(x, timesteps=17, per_step=True, chunk=17, return_stats=True)
    part, stats_part = snn(x, timesteps=17, per_step=True, chunk=chunk, return_stats=True)
    assert torch.equal(full, part)
    assert stats_full == stats_part
    assert torch.equal(snn(x, timesteps=17, chunk=chunk), full[-1]) or torch.allclose(
        snn(x, timesteps=17, chunk=chunk), full[-1], rtol=1e-6, atol=1e-6
    )


def test_maxpool_stem_chunked_equals_unchunked():
    model = make("tv_basic")
    x = _images(2, 16)
    snn = sresnet.convert(model, _images(8, 16, seed=2), compensation=None, analog_stem_pool=False)
    assert any(l.kind == "maxpool" for l in snn.layers)
    assert torch.equal(snn(x, timesteps=9, per_step=True, chunk=2), snn(x, timesteps=9, per_step=True, chunk=9))


def test_reference_and_numba_agree():
    model = make("tiny_A_functional")
    x = _images(8, 8, seed=4)
    snn = sresnet.convert(model, _images(16, 8, seed=2), compensation=None)
    ref = snn(x, timesteps=32, backend="reference")
    fast = snn(x, timesteps=32, backend="numba")
    # spikes may differ only where v is within float rounding of θ: predictions agree
    assert (ref.argmax(-1) == fast.argmax(-1)).float().mean() >= 0.875
    assert _rel_err(fast, ref) < 0.05


def test_stats_and_firing_rate():
    model = make("tiny_A_functional")
    x = _images(4, 8)
    snn = sresnet.convert(model, _images(16, 8, seed=2), compensation=None)
    _, stats = snn(x, timesteps=10, return_stats=True)
    assert stats is snn.last_stats
    assert stats["timesteps"] == 10 and stats["batch"] == 4
    assert set(stats["spikes"]) == {l.name for l in snn.layers}
    assert stats["neurons"][snn.layers[0].name] == 4 * 8 * 8
    for name, s in stats["spikes"].items():
        assert 0 <= s <= stats["neurons"][name] * 10 * 4
    assert 0 < firing_rate(stats) < 1
    # the counts equal the spike-count maps, summed by another path (a float64 sum of the spikes)
    _, stats = snn(x, timesteps=10, return_stats=True, record_maps=True)
    for i, layer in enumerate(snn.layers):
        if layer.name in stats["spikes"]:  # every layer but max pooling
            assert stats["spikes"][layer.name] == int(stats["maps"][i].sum())
    assert sum(stats["spikes"].values()) > 0


def test_input_errors():
    model = make("tiny_A_functional")
    snn = sresnet.convert(model, _images(8, 8), compensation=None)
    bad = _images(2, 8)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        snn(bad, timesteps=4)
    inf = _images(2, 8)
    inf[0, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf"):
        snn(inf, timesteps=4)
    with pytest.raises(ValueError, match="timesteps"):
        snn(_images(2, 8), timesteps=0)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        snn(torch.randn(3, 8, 8), timesteps=4)
    with pytest.raises(ValueError, match="chunk"):
        snn(_images(2, 8), timesteps=4, chunk=0)


def test_default_chunk_bounds_memory():
    from sresnet.executor import default_chunk

    model = make("tiny_A_functional")
    snn = sresnet.convert(model, _images(8, 8), compensation=None)
    c = snn.default_chunk(32, (8, 8))
    widest = max(l.neurons for l in snn.layers)
    assert c * 32 * widest * 4 <= 32 * 2 ** 20 < (c + 1) * 32 * widest * 4
    c1 = default_chunk(snn.network, 32, (8, 8), itemsize=1)
    assert c1 * 32 * widest <= 32 * 2 ** 20 < (c1 + 1) * 32 * widest
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="itemsize"):
            default_chunk(snn.network, 32, (8, 8), itemsize=bad)


def test_wide_chunks_only_where_spikes_are_the_largest_intermediates(monkeypatch):
    """Chunks 4x as long (uint8 spikes counted 1 byte) only for CPU inference on the Numba
    backend without signed layers; and the default run then uses them."""
    pytest.importorskip("numba")
    from sresnet import executor

    cpu = torch.device("cpu")
    snn = sresnet.convert(make("cifarA"), _images(16, 16, seed=2), compensation=None)
    net = snn.network
    assert executor.wide_chunks(net, None, cpu, train=False)
    assert executor.wide_chunks(net, "numba", cpu, train=False)
    assert not executor.wide_chunks(net, "reference", cpu, train=False)
    assert not executor.wide_chunks(net, None, cpu, train=True)
    signed = sresnet.convert(make("cifarA"), _images(16, 16, seed=2), compensation=None, method="s-resnet",
                             neuron="signed")
    assert not executor.wide_chunks(signed.network, None, cpu, train=False)
    seen = []
    real = executor.Executor.run_layer

    def spy(self, i, outs, steps, *args, **kw):
        seen.append(steps)
        return real(self, i, outs, steps, *args, **kw)

    monkeypatch.setattr(executor.Executor, "run_layer", spy)
    monkeypatch.setattr(executor, "CHUNK_BYTES", 16 * 2 * max(l.neurons for l in net.layers))
    snn(_images(2, 16), timesteps=64)
    assert max(seen) == 16  # 1 byte per neuron-step: 16 steps of 2 images fit, not 4
    seen.clear()
    snn(_images(2, 16), timesteps=64, backend="reference")
    assert max(seen) == 4


def test_module_to_moves_weights():
    model = make("tiny_A_functional")
    x = _images(2, 8)
    snn = sresnet.convert(model, _images(8, 8), compensation=None)
    before = snn(x, timesteps=6)
    snn.layers[0].main.weight = snn.layers[0].main.weight.double()
    snn.to(torch.float32)  # every weight goes through Module._apply
    assert snn.layers[0].main.weight.dtype == torch.float32
    assert torch.equal(snn(x, timesteps=6), before)


@pytest.mark.parametrize("kind,hw,density,neuron", [("cifarA", 16, "0.1", "if"), ("cifarA", 16, "0.2", "if"),
                                                     ("cifarA", 16, "0.4", "if"), ("tv_bottleneck", 16, "0.2", "if"),
                                                     ("cifarA", 16, "0.2", "burst"), ("cifarA", 16, "0.2", "signed")])
def test_results_depend_on_neither_chunk_nor_batch(kind, hw, density, neuron, monkeypatch):
    # the ops' per-call density switch (event-driven kernel vs dense conv, which add in
    # different orders) would choose per chunk and per batch; the executor pins the path, so
    # the switch's setting (thresholds the layers' densities straddle) changes nothing
    model = make(kind)
    x = _images(8, hw, seed=3)
    kw = dict(method="s-resnet", neuron=neuron, max_spikes=3) if neuron == "burst" else (
        dict(method="s-resnet", neuron=neuron) if neuron == "signed" else {})
    snn = sresnet.convert(model, _images(16, hw, seed=2), compensation=None, **kw)
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1")
    full, stats = snn(x, timesteps=48, per_step=True, chunk=48, return_stats=True)
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", density)
    for chunk in (48, 3, 5):
        part, part_stats = snn(x, timesteps=48, per_step=True, chunk=chunk, return_stats=True)
        assert torch.equal(part, full), chunk
        assert part_stats == stats, chunk
    # an image's scores do not depend on the other images of its batch
    for lo, hi in ((0, 1), (2, 5)):
        assert torch.equal(snn(x[lo:hi], timesteps=48, per_step=True, chunk=7), full[:, lo:hi]), (lo, hi)


def test_input_path_event_for_spikes_dense_for_other_inputs():
    from sresnet.executor import Executor

    calib = _images(16, 16, seed=2)
    snn = sresnet.convert(make("cifarA"), calib, compensation=None)
    ex = Executor(snn.network)
    paths = {(l.name, id(t)): ex.input_path(t) for l in snn.layers if l.kind != "maxpool" for t in l.terms()
             if t.kind in ("conv", "linear")}
    stem = [l for l in snn.layers if l.kind == "stem"][0]
    assert ex.input_path(stem.main) == "dense"  # the analog image
    assert sum(p == "event" for p in paths.values()) >= 18  # ResNet-20's 18 spiking convs read 0/1 spikes
    burst = sresnet.convert(make("cifarA"), calib, method="s-resnet", compensation=None, neuron="burst",
                            max_spikes=3)
    ex = Executor(burst.network)
    # burst counts are not 0/1: every conv takes the dense path
    assert {ex.input_path(t) for l in burst.layers if l.kind != "maxpool" for t in l.terms()
            if t.kind in ("conv", "linear")} == {"dense"}
