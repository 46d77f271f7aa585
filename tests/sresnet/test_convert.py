import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sresnet
from sresnet.convert.fold import fold_batchnorm
from sresnet.convert.trace import analyze, trace

from _sresnet_nets import TinyResNet, make, randomize_bn


def _images(n=8, hw=8, seed=1):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["cifarA", "cifarB", "tv_basic", "tv_bottleneck"])
def test_folding_keeps_outputs(kind):
    model = make(kind)
    x = _images(4, 16)
    gm = trace(copy.deepcopy(model))
    n = fold_batchnorm(gm)
    assert n == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    with torch.no_grad():
        ref, out = model(x), gm(x)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize(
    "kind,sites",
    [
        ("tiny_A_functional", 5),  # F.relu / torch.relu
        ("tiny_B_module", 5),  # one nn.ReLU module called twice per block = two sites
        ("tiny_A_inplace", 5),  # x.relu_() and the module
        ("cifarA", 19),
        ("tv_basic", 17),
        ("tv_bottleneck", 49),
    ],
)
def test_every_relu_call_site_is_a_neuron(kind, sites):
    model = make(kind)
    snn = sresnet.convert(model, _images(4, 16), compensation=None)
    neurons = [l for l in snn.layers if l.kind in ("stem", "neuron")]
    assert len(neurons) == sites
    assert len(set(l.name for l in neurons)) == sites


@pytest.mark.parametrize("kind", ["tiny_A_functional", "tiny_B_module", "tv_basic", "tv_bottleneck"])
@pytest.mark.parametrize("percentile,per_channel", [(99.9, False), ("max", False), (99.0, True)], ids=["p99.9", "max", "p99-channel"])
def test_normalized_network_equals_ann(kind, percentile, per_channel):
    model = make(kind)
    x = _images(8, 16)
    snn = sresnet.convert(model, x, percentile, per_channel=per_channel, compensation=None)
    with torch.no_grad():
        ref = model(x)
    out = snn.analog(x)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_shortcut_scales_follow_the_paper():
    model = make("tiny_A_functional")
    # the paper's rule for per-layer λ (lowlat's per-channel λ: test_per_channel_shortcut_scales)
    snn = sresnet.convert(model, _images(8, 8), compensation=None, per_channel=False)
    sc = snn.scales
    names = [l.name for l in snn.layers]
    # block 1: sites stem (x), block conv1 (a), merge (y); identity shortcut enters with λx/λy
    x_site, y_site = names[0], names[2]
    merge = snn.layers[2]
    assert merge.residual_spikes
    assert torch.allclose(merge.others[0].scale, sc[x_site] / sc[y_site])
    # option A in block 2: subsample + channel padding ops, same weight rule
    merge2 = snn.layers[4]
    assert [op[0] for op in merge2.others[0].pre] == ["subsample", "chanpad"]
    assert torch.allclose(merge2.others[0].scale, sc[y_site] / sc[names[4]])


def test_shortcut_norm_off_is_naive():
    model = make("tiny_A_functional")
    x = _images(8, 8)
    good = sresnet.convert(model, x, compensation=None, per_channel=False)
    naive = sresnet.convert(model, x, compensation=None, shortcut_norm=False, per_channel=False)
    assert float(naive.layers[2].others[0].scale) == 1.0
    assert not torch.allclose(naive.layers[2].main.weight, good.layers[2].main.weight)


def test_training_mode_model_uses_eval_statistics_and_is_restored():
    model = make("tiny_B_module").train()
    before = copy.deepcopy(model.state_dict())
    x = _images(8, 8)
    snn = sresnet.convert(model, x, compensation=None)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    assert (snn.analog(x) - ref).abs().max() <= 1e-4 * ref.abs().max()


class _Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.Sigmoid()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.act(self.conv(x)), 1).flatten(1))


class _LayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(F.relu(self.norm(self.fc1(x.flatten(1)))))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


class _Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(torch.flatten(x, 1))))


@pytest.mark.parametrize(
    "net,hw,pattern",
    [
        (_Sigmoid, 6, r"module 'act' of type Sigmoid at node 'act' \(graph position 2"),
        (_LayerNorm, 2, r"module 'norm' of type LayerNorm at node 'norm' \(graph position 3"),
        (_Gelu, 2, r"function 'gelu' at node 'gelu' \(graph position 3"),
        (_Branchy, 2, r"cannot trace _Branchy"),
    ],
    ids=["sigmoid", "layernorm", "gelu", "control-flow"],
)
def test_unsupported_layers_named_with_position(net, hw, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern) as err:
        sresnet.convert(net().eval(), torch.randn(4, 3, hw, hw), compensation=None)
    if net is not _Branchy:
        assert "supported:" in str(err.value)


def test_bad_arguments():
    model = make("tiny_A_functional")
    x = _images(4, 8)
    with pytest.raises(ValueError, match="percentile"):
        sresnet.convert(model, x, percentile=101)
    with pytest.raises(ValueError, match="readout"):
        sresnet.convert(model, x, readout="votes")
    with pytest.raises(ValueError, match="compensation"):
        sresnet.convert(model, x, compensation="magic")
    with pytest.raises(ValueError, match="NaN"):
        sresnet.convert(model, torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(TypeError, match="nn.Module"):
        sresnet.convert(lambda z: z, x)
    with pytest.raises(ValueError, match="unknown sites"):
        sresnet.convert(model, x, method="s-resnet", compensation={"no_such_relu": 1.2})
    with pytest.raises(ValueError, match="5 neuron layers"):
        sresnet.convert(model, x, method="s-resnet", compensation=[1.0, 1.0])


def test_user_factors_multiply_the_layer_input():
    model = make("tiny_A_functional")
    x = _images(4, 8)
    base = sresnet.convert(model, x, method="s-resnet", compensation=None)
    scaled = sresnet.convert(model, x, method="s-resnet", compensation=[1.0, 2.0, 1.0, 1.0, 1.0])
    assert torch.allclose(scaled.layers[1].main.weight, 2 * base.layers[1].main.weight)
    assert torch.equal(scaled.layers[0].main.weight, base.layers[0].main.weight)


def test_calibrated_compensation_runs_and_records():
    model = make("tiny_A_functional")
    x = _images(16, 8)
    snn = sresnet.convert(model, x, method="s-resnet", compensation="bias", calib_timesteps=8, calib_subset=8)
    assert set(snn.compensation) == {l.name for l in snn.layers}
    assert all(torch.isfinite(v["bias"]).all() for v in snn.compensation.values())


def test_progress_bar_only_when_asked(capsys):
    model = make("tiny_A_functional")
    x = _images(8, 8)
    sresnet.convert(model, x, method="s-resnet", calib_timesteps=4, calib_subset=4)
    sresnet.convert(model, x, horizon=4, calib_subset=4)
    assert capsys.readouterr().err == ""
    sresnet.convert(model, x, method="s-resnet", calib_timesteps=4, calib_subset=4, progress=True)
    err = capsys.readouterr().err
    assert "compensation (bias, T=4)" in err and "layer" in err
    sresnet.convert(model, x, horizon=4, calib_subset=4, progress=True)
    assert "bias schedule (H=4)" in capsys.readouterr().err
