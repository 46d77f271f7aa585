import pytest
import torch
from torch import nn

import spikekernels as sk


def _x(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 0.8 - 0.2


def _s(shape, seed=0):
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def test_if_neuron_matches_op(backend):
    x = _x((6, 2, 3, 5, 5))
    thr = torch.tensor([0.5, 0.8, 1.1])
    layer = sk.IFNeuron(thr, reset="zero", v_reset=-0.1, backend=backend)
    expected = sk.if_scan(x, thr, reset="zero", v_reset=-0.1, backend="reference")
    assert torch.equal(layer(x), expected)
    # stateless: a second call starts fresh
    assert torch.equal(layer(x), expected)
    assert layer.state is None


@pytest.mark.parametrize("split", [1, 4])
def test_stateful_chunks_equal_one_call(backend, split):
    x, y, s = _x((7, 2, 3, 6, 6), 1), _s((7, 2, 3, 6, 6), 2), _s((7, 2, 3, 6, 6), 3)
    whole = (
        sk.IFNeuron(0.7, backend=backend)(x),
        sk.ResidualMerge(torch.tensor([0.4, 0.9, 1.3]), backend=backend)(x, y),
        sk.SpikeMaxPool2d(3, 2, 1, backend=backend)(s),
    )
    layers = (
        sk.IFNeuron(0.7, stateful=True, backend=backend),
        sk.ResidualMerge(torch.tensor([0.4, 0.9, 1.3]), stateful=True, backend=backend),
        sk.SpikeMaxPool2d(3, 2, 1, stateful=True, backend=backend),
    )
    chunks = []
    for part in (slice(0, split), slice(split, None)):
        chunks.append((layers[0](x[part]), layers[1](x[part], y[part]), layers[2](s[part])))
    for i in range(3):
        assert torch.equal(torch.cat([c[i] for c in chunks]), whole[i])
    # reset_state: the next call starts fresh, as a new layer would
    for layer in layers:
        layer.reset_state()
    assert torch.equal(layers[0](x), whole[0])
    assert torch.equal(layers[1](x, y), whole[1])
    assert torch.equal(layers[2](s), whole[2])


def test_stateful_shape_change_needs_reset():
    layer = sk.IFNeuron(stateful=True)
    layer(_x((3, 2, 4)))
    with pytest.raises(ValueError, match="call reset_state"):
        layer(_x((3, 5, 4)))
    layer.reset_state()
    assert layer(_x((3, 5, 4))).shape == (3, 5, 4)


def test_inside_sequential():
    model = nn.Sequential(
        sk.IFNeuron(torch.tensor([1.0, 0.6, 0.8])),
        sk.SpikeMaxPool2d(2),
        sk.SpikeAvgPool2d(3, 1, 1),
        sk.IFNeuron(0.5),
        sk.GlobalAvgPool(),
    )
    x = _x((5, 2, 3, 8, 8), 4)
    out = model(x)
    assert out.shape == (5, 2, 3) and out.dtype == torch.float32
    s = sk.if_scan(x, torch.tensor([1.0, 0.6, 0.8]))
    s = sk.if_scan(sk.spike_avg_pool2d(sk.spike_max_pool2d(s, 2), 3, 1, 1), 0.5)
    assert torch.equal(out, sk.global_avg_pool(s))
    assert "threshold=[1.0, 0.6, 0.8]" in repr(model)
    assert "kernel_size=3, stride=1, padding=1" in repr(model)


def test_state_dict_round_trip():
    a = nn.ModuleDict({
        "neuron": sk.IFNeuron(torch.tensor([0.3, 0.7]), v0=0.1, reset="zero"),
        "merge": sk.ResidualMerge(torch.tensor([0.5, 2.0]), threshold=0.9),
    })
    state = a.state_dict()
    assert set(state) == {"neuron.threshold", "merge.scale", "merge.threshold"}
    b = nn.ModuleDict({
        "neuron": sk.IFNeuron(torch.ones(2), v0=0.1, reset="zero"),
        "merge": sk.ResidualMerge(torch.ones(2), threshold=1.0),
    })
    b.load_state_dict(state)
    x, y = _x((4, 3, 2, 5), 5), _s((4, 3, 2, 5), 6)
    assert torch.equal(b["neuron"](x), a["neuron"](x))
    assert torch.equal(b["merge"](x, y), a["merge"](x, y))
    # a carried membrane is run state, not model state
    c = sk.IFNeuron(stateful=True)
    c(x)
    assert set(c.state_dict()) == {"threshold"}


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match=r"threshold must be finite and > 0, got \[0.0\]"):
        sk.IFNeuron(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="threshold must be finite and > 0"):
        sk.ResidualMerge(threshold=-1.0)
    with pytest.raises(TypeError, match="threshold must be a number or a 1-D tensor"):
        sk.IFNeuron("1.0")
    with pytest.raises(ValueError, match=r"got shape \(2, 2\)"):
        sk.IFNeuron(torch.ones(2, 2))
    with pytest.raises(ValueError, match="scale must be finite"):
        sk.ResidualMerge(float("nan"))
    with pytest.raises(ValueError, match="v0 must be None"):
        sk.IFNeuron(v0=float("inf"))
    with pytest.raises(ValueError, match="per-channel threshold has 2 values"):
        sk.IFNeuron(torch.ones(2))(_x((3, 2, 4, 5)))


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: sk.IFNeuron(reset="hard"), "reset"),
        (lambda: sk.ResidualMerge(reset="soft"), "reset"),
        (lambda: sk.IFNeuron(backend="cuda"), "backend"),
        (lambda: sk.IFNeuron(spike_dtype=torch.int32), "spike_dtype"),
    ],
    ids=["if-reset", "merge-reset", "backend", "spike-dtype"],
)
def test_layer_constructor_rejects_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
