"""Issue 11, kind 3: every attribute of every accepted module/functional is honoured or refused.

The property test builds random layer stacks with random attribute values; whenever
``convert`` accepts one, the normalized network (``snn.analog``) must equal the ANN, and
whenever it refuses one, the error must name the graph node.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

import sresnet


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.3 - 0.05)
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            # positive biases keep the ReLUs active, so the stacks do not die out
            m.bias.data.copy_(torch.rand(m.out_channels, generator=g) * 0.2)
    return model


class Stack(nn.Module):
    """A random plain stack: convs with BN/ReLU variants, pools, dropouts, and a linear head.

    ``spec`` is a list of (kind, options) built by the strategies below; forward dispatches on
    it with plain Python, which torch.fx unrolls while tracing.
    """

    def __init__(self, spec: list, head: dict):
        super().__init__()
        self.spec, self.head_spec = spec, head
        self.mods = nn.ModuleList()
        cin = 3
        for kind, o in spec:
            if kind == "conv":
                self.mods.append(nn.Conv2d(cin, o["out"], o["k"], o["stride"], o["padding"], o["dilation"],
                                           o["groups"], o["bias"], o["padding_mode"]))
                cin = o["out"]
                self.mods.append(nn.BatchNorm2d(cin, o["eps"], affine=o["affine"], track_running_stats=o["stats"])
                                 if o["bn"] else nn.Identity())
                self.mods.append(nn.ReLU(inplace=o["relu"] == "module_inplace"))
            elif kind == "maxpool" and o["form"] == "module":
                self.mods.append(nn.MaxPool2d(o["k"], o["stride"], o["padding"], o["dilation"], ceil_mode=o["ceil"]))
            elif kind == "avgpool" and o["form"] == "module":
                self.mods.append(nn.AvgPool2d(o["k"], o["stride"], o["padding"], o["ceil"], o["count_include_pad"],
                                              o["divisor_override"]))
            elif kind == "adaptive" and o["form"] == "module":
                self.mods.append((nn.AdaptiveMaxPool2d if o["max"] else nn.AdaptiveAvgPool2d)(o["size"]))
            elif kind == "dropout" and o["form"] == "module":
                self.mods.append(o["cls"](o["p"]))
            else:
                self.mods.append(nn.Identity())
        self.flatten = nn.Flatten(head["start"], head["end"])
        self.fc = nn.Linear(cin * head["pool"] ** 2, 5)

    def forward(self, x):
        it = iter(self.mods)
        for kind, o in self.spec:
            m = next(it)
            if kind == "conv":
                x = next(it)(m(x))
                relu = next(it)
                style = o["relu"]
                if style.startswith("module"):
                    x = relu(x)
                elif style == "functional":
                    x = F.relu(x, inplace=o["relu_inplace"])
                elif style == "method":
                    x = x.relu()
                else:
                    x = x.relu_()
            elif kind == "maxpool":
                x = m(x) if o["form"] == "module" else F.max_pool2d(
                    x, o["k"], o["stride"], o["padding"], o["dilation"], ceil_mode=o["ceil"])
            elif kind == "avgpool":
                x = m(x) if o["form"] == "module" else F.avg_pool2d(
                    x, o["k"], o["stride"], o["padding"], o["ceil"], o["count_include_pad"], o["divisor_override"])
            elif kind == "adaptive":
                fn = F.adaptive_max_pool2d if o["max"] else F.adaptive_avg_pool2d
                x = m(x) if o["form"] == "module" else fn(x, o["size"])
            elif kind == "dropout":
                x = m(x) if o["form"] == "module" else o["fn"](x, o["p"], training=o["training"])
        h = self.head_spec
        if h["pool"] == 1 and h["mean"]:
            x = x.mean((2, 3), keepdim=h["keepdim"])
        else:
            x = F.adaptive_avg_pool2d(x, h["pool"])
        if h["flatten"] == "module":
            x = self.flatten(x)
        elif h["flatten"] == "function":
            x = torch.flatten(x, h["start"], h["end"])
        else:
            x = x.view(x.shape[0], -1)
        return self.fc(x)


def _rare(usual, *others):
    """``usual`` 15 times in 16, else one of ``others``: most stacks are convertible, some are not."""
    return st.sampled_from([usual] * (15 * len(others)) + list(others))


_pad = st.sampled_from([0, 1, (1, 0), (0, 1), "same", "valid"])
_conv = st.fixed_dictionaries(dict(
    out=st.sampled_from([3, 6]), k=st.sampled_from([1, 2, 3, (3, 1)]), stride=st.sampled_from([1, 2, (2, 1)]),
    padding=_pad, dilation=_rare(1, 2), groups=_rare(1, 3),
    bias=st.booleans(), padding_mode=_rare("zeros", "reflect", "replicate", "circular"),
    bn=st.booleans(), eps=st.sampled_from([1e-5, 1e-2, 0.5]), affine=st.booleans(),
    stats=_rare(True, False),
    relu=st.sampled_from(["module", "module_inplace", "functional", "method", "method_"]),
    relu_inplace=st.booleans()))
_maxpool = st.fixed_dictionaries(dict(
    form=st.sampled_from(["module", "functional"]), k=st.sampled_from([2, 3, (2, 3)]),
    stride=st.sampled_from([None, 1, 2, (1, 2)]), padding=st.sampled_from([0, 1]),
    dilation=_rare(1, 2), ceil=st.booleans()))
_avgpool = st.fixed_dictionaries(dict(
    form=st.sampled_from(["module", "functional"]), k=st.sampled_from([2, 3, (3, 2)]),
    stride=st.sampled_from([None, 1, 2]), padding=st.sampled_from([0, 1]), ceil=st.booleans(),
    count_include_pad=st.booleans(), divisor_override=st.sampled_from([None, None, None, 3])))
_adaptive = st.fixed_dictionaries(dict(
    form=st.sampled_from(["module", "functional"]), max=st.booleans(), size=st.sampled_from([1, 2, 3, (2, 1)])))
_dropout = st.one_of(
    st.fixed_dictionaries(dict(form=st.just("module"), p=st.sampled_from([0.0, 0.3]), cls=st.sampled_from(
        [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout])))
    if hasattr(nn, "Dropout1d") else st.nothing(),
    st.fixed_dictionaries(dict(form=st.just("functional"), p=st.sampled_from([0.0, 0.3]), training=st.booleans(),
                               fn=st.sampled_from([F.dropout, F.dropout2d, F.alpha_dropout]))))
_layer = st.one_of(
    st.tuples(st.just("conv"), _conv), st.tuples(st.just("maxpool"), _maxpool),
    st.tuples(st.just("avgpool"), _avgpool), st.tuples(st.just("adaptive"), _adaptive),
    st.tuples(st.just("dropout"), _dropout))
_head = st.fixed_dictionaries(dict(
    pool=st.sampled_from([1, 1, 1, 2]), mean=st.booleans(), keepdim=st.booleans(),
    flatten=st.sampled_from(["module", "function", "view"]), start=st.sampled_from([1, -3]),
    end=st.sampled_from([-1, 3])))


_PLAIN_CONV = dict(out=6, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True, padding_mode="zeros", bn=True,
                   eps=1e-5, affine=True, stats=True, relu="module", relu_inplace=False)
_PLAIN_HEAD = dict(pool=1, mean=False, keepdim=False, flatten="view", start=1, end=-1)


# torch warns that it pads even kernels with padding="same" by copying the input: the ANN's business
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
# the attribute the tracer dropped before issue 11 (AvgPool2d's divisor_override), pinned as an example
@example(first=_PLAIN_CONV, head=_PLAIN_HEAD, hw=8, seed=0, rest=[("avgpool", dict(
    form="module", k=2, stride=None, padding=0, ceil=False, count_include_pad=True, divisor_override=3))])
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(first=_conv, rest=st.lists(_layer, min_size=1, max_size=4), head=_head, hw=st.sampled_from([7, 8, 9]),
       seed=st.integers(0, 2 ** 16))
def test_random_stacks_convert_exactly_or_are_refused_by_node(first, rest, head, hw, seed):
    torch.manual_seed(seed)
    spec = [("conv", first)] + rest
    x = torch.randn(6, 3, hw, hw, generator=torch.Generator().manual_seed(seed + 1))
    try:
        model = _randomize(Stack(spec, head), seed).eval()
        with torch.no_grad():
            ref = model(x)
    except (RuntimeError, ValueError, IndexError):
        assume(False)  # torch itself rejects this combination (e.g. a window larger than the map)
    assume(bool(ref.abs().max() > 1e-6))
    try:
        snn = sresnet.convert(model, x, compensation=None)
    except (ValueError, TypeError) as exc:
        assert "at node '" in str(exc), str(exc)
        event("refused: " + str(exc).split(" (")[0][:70])
        return
    event("accepted")
    assert _rel(snn.analog(x), ref) < 1e-5


class _One(nn.Module):
    """conv -> ReLU -> ``layer`` -> adaptive average pool -> linear."""

    def __init__(self, layer, conv=None, channels: int = 6):
        super().__init__()
        self.conv = conv or nn.Conv2d(3, channels, 3, padding=1)
        self.layer = layer
        self.fc = nn.Linear(channels, 4)

    def forward(self, x):
        x = self.layer(F.relu(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _check_exact(model: nn.Module, hw: int = 9) -> None:
    model = _randomize(model, 0).eval()
    x = torch.randn(8, 3, hw, hw, generator=torch.Generator().manual_seed(7))
    snn = sresnet.convert(model, x, compensation=None)
    with torch.no_grad():
        ref = model(x)
    assert _rel(snn.analog(x), ref) < 1e-5


@pytest.mark.parametrize(
    "layer",
    [nn.Dropout(0.5), nn.Dropout2d(0.5), nn.AlphaDropout(0.5), nn.FeatureAlphaDropout(0.2),
     nn.AdaptiveAvgPool2d(3), nn.AdaptiveAvgPool2d((3, 1)), nn.AdaptiveMaxPool2d(3),
     nn.AvgPool2d(2, ceil_mode=True, padding=1), nn.MaxPool2d(3, 3, ceil_mode=True), nn.MaxPool2d(2, ceil_mode=True),
     nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d((2, 3), (2, 2), ceil_mode=True)],
    ids=["dropout", "dropout2d", "alpha-dropout", "feature-alpha-dropout", "adaptive-avg-3x3", "adaptive-avg-3x1",
         "adaptive-max-3x3", "avg-ceil-no-partial-window", "max-ceil-no-partial-window", "max-ceil-2",
         "max-ceil-3-2-1", "max-ceil-2x3"],
)
def test_common_layers_are_accepted_and_exact(layer):
    _check_exact(_One(layer))


@pytest.mark.parametrize("padding,k", [("same", 3), ("same", 5), ("valid", 3), ("same", (3, 1))])
def test_conv_padding_strings(padding, k):
    _check_exact(_One(nn.Identity(), nn.Conv2d(3, 6, k, padding=padding)))


def test_padding_mode_without_padding_is_accepted():
    _check_exact(_One(nn.Identity(), nn.Conv2d(3, 6, 3, padding=0, padding_mode="reflect")))


@pytest.mark.parametrize(
    "model,pattern",
    [
        (_One(nn.AvgPool2d(2, divisor_override=3)), r"AvgPool2d 'layer' attribute divisor_override=3 .*at node 'layer'"),
        (_One(nn.AvgPool2d(2, ceil_mode=True)), r"AvgPool2d 'layer' attribute ceil_mode=True where it adds a partial"),
        (_One(nn.AvgPool2d(3, padding=1, count_include_pad=False)), r"attribute count_include_pad=False"),
        (_One(nn.MaxPool2d(2, dilation=2)), r"MaxPool2d 'layer' attribute dilation=2 .*at node 'layer'"),
        (_One(nn.AdaptiveAvgPool2d(2)), r"AdaptiveAvgPool2d 'layer' to 2x2 of a 9x9 map"),
        (_One(nn.Identity(), nn.Conv2d(3, 6, 3, padding=1, groups=3)), r"Conv2d 'conv' attribute groups=3 .*at node 'conv'"),
        (_One(nn.Identity(), nn.Conv2d(3, 6, 3, padding=2, dilation=2)), r"Conv2d 'conv' attribute dilation=\(2, 2\)"),
        (_One(nn.Identity(), nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")),
         r"Conv2d 'conv' attribute padding_mode='reflect' with padding=\(1, 1\) .*at node 'conv'"),
        (_One(nn.Identity(), nn.Conv2d(3, 6, 2, padding="same")), r"attribute padding='same' with the even kernel"),
        (_One(nn.Identity(), nn.Conv2d(3, 6, 3, padding=1, bias=False)), None),
    ],
    ids=["divisor_override", "avg-ceil", "count_include_pad", "max-dilation", "adaptive-uneven", "groups",
         "dilation", "padding_mode", "same-even", "plain"],
)
def test_attributes_refused_by_name(model, pattern):
    model = _randomize(model, 0).eval()
    x = torch.randn(4, 3, 9, 9)
    if pattern is None:
        sresnet.convert(model, x, compensation=None)
        return
    with pytest.raises(ValueError, match=pattern):
        sresnet.convert(model, x, compensation=None)


class _FunctionalPools(nn.Module):
    def __init__(self, which: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 4)
        self.which = which

    def forward(self, x):
        x = F.relu(self.conv(x))
        if self.which == "avg-divisor":
            x = F.avg_pool2d(x, 2, divisor_override=2)
        elif self.which == "max-indices":
            x = F.max_pool2d(x, 2, return_indices=True)[0]
        elif self.which == "dropout-training":
            x = F.avg_pool2d(F.dropout(x, 0.5), 2)
        elif self.which == "linear-on-map":
            return self.fc(nn.functional.linear(x, torch.ones(1, 8)).flatten(1)[:, :96])
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(
    "which,pattern",
    [("avg-divisor", r"avg_pool2d attribute divisor_override=2 .*at node"),
     ("max-indices", r"max_pool2d_with_indices"),
     ("dropout-training", r"dropout\(p=0.5, training=True\).*at node 'dropout'")],
    ids=["avg-divisor", "max-indices", "dropout-training"],
)
def test_functional_attributes_refused_by_name(which, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        sresnet.convert(_FunctionalPools(which).eval(), torch.randn(4, 3, 8, 8), compensation=None)


class _LinearOnMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x))).mean((1, 2))


def test_linear_on_a_feature_map_is_refused():
    with pytest.raises(ValueError, match=r"Linear 'fc' applied to a \[B, 4, 6, 6\] tensor"):
        sresnet.convert(_LinearOnMap().eval(), torch.randn(4, 3, 6, 6), compensation=None)


def test_batchnorm_without_running_statistics_is_refused_by_name():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4, track_running_stats=False)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))

    with pytest.raises(ValueError, match=r"BatchNorm2d at node 'bn'.*module 'bn'.*track_running_stats=False"):
        sresnet.convert(Net().eval(), torch.randn(4, 3, 6, 6), compensation=None)


class _CeilPool(nn.Module):
    """Two ceil_mode max pools with partial windows, and a global-pool head (any image size)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.c1(x)))
        x = F.max_pool2d(F.relu(self.c2(x)), 2, ceil_mode=True)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_max_pool_ceil_mode_is_exact_at_every_image_size():
    torch.manual_seed(0)
    model = _randomize(_CeilPool(), 1).eval()
    snn = sresnet.convert(model, torch.randn(8, 3, 10, 10), compensation=None)
    assert [l.pool.get("ceil_mode") for l in snn.layers if l.kind == "maxpool"] == [True, True]
    for hw in (10, 9, 7):  # 10: partial windows in the 2nd pool; 9, 7: in both
        x = torch.randn(4, 3, hw, hw, generator=torch.Generator().manual_seed(hw))
        with torch.no_grad():
            ref = model(x)
        assert _rel(snn.analog(x), ref) < 1e-5
        # the spiking pools: the rates approach the ANN
        assert _rel(snn(x, timesteps=64, backend="reference"), ref) < 0.2
    # and every backend pads and pools the same spikes
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    runs = {b: snn(x, timesteps=6, backend=b) for b in ("reference", "numba", "triton")}
    assert torch.equal(runs["numba"], runs["reference"]) and torch.equal(runs["triton"], runs["reference"])


class _AdaptiveMid(nn.Module):
    def __init__(self, pool: nn.Module):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.pool, self.fc = pool, nn.Linear(4, 5)

    def forward(self, x):
        x = F.relu(self.c2(self.pool(F.relu(self.c1(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d(2), nn.AdaptiveMaxPool2d(2)], ids=["avg", "max"])
def test_adaptive_pool_windows_pin_the_image_size(pool):
    # its windows are fixed for the conversion's map (4x4 on 8x8 images): other sizes are refused,
    # not silently pooled with the wrong windows
    model = _randomize(_AdaptiveMid(pool), 2).eval()
    snn = sresnet.convert(model, torch.randn(8, 3, 8, 8), compensation=None)
    assert not snn.network.size_agnostic
    with pytest.raises(ValueError, match=rf"converted for images \[3, 8, 8\].*{type(pool).__name__} 'pool' at node "
                                         r"'pool' \(4x4 windows for the 8x8 map\) are fixed"):
        snn(torch.randn(2, 3, 12, 12), timesteps=2)


class _ConstantWholeMapPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(F.avg_pool2d(F.relu(self.conv(x)), 6).flatten(1))


def test_constant_pool_kernel_stays_constant():
    # F.avg_pool2d(x, 6) covers the whole 6x6 map, but on 12x12 images it would not: it is a 6x6
    # window (the head then flattens a 1x1 map), not a global average pool
    model = _randomize(_ConstantWholeMapPool(), 3).eval()
    x = torch.randn(4, 3, 6, 6)
    snn = sresnet.convert(model, x, compensation=None)
    assert snn.output[0].pre[0][0] == "avgpool"
    with torch.no_grad():
        assert _rel(snn.analog(x), model(x)) < 1e-5
    assert not snn.network.size_agnostic


class _HalfMapPool(nn.Module):
    def __init__(self, global_pool: bool):
        super().__init__()
        self.conv, self.fc, self.global_pool = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5), global_pool

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = F.avg_pool2d(x, x.size()[3] if self.global_pool else x.size(3) // 2)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("global_pool", [True, False], ids=["whole-map", "half-map"])
def test_kernel_computed_from_the_map(global_pool):
    # x.size()[3]: a global pool at every (square) size; x.size(3) // 2: windows fixed at conversion
    model = _randomize(_HalfMapPool(global_pool), 4).eval()
    snn = sresnet.convert(model, torch.randn(4, 3, 8, 8), compensation=None)
    assert snn.network.size_agnostic == global_pool
    x = torch.randn(4, 3, 12, 12)
    if global_pool:
        with torch.no_grad():
            assert _rel(snn.analog(x), model(x)) < 1e-5
    else:
        with pytest.raises(ValueError, match=r"avg_pool2d at node 'avg_pool2d' \(4x4 windows for the 8x8 map\)"):
            snn.analog(x)
