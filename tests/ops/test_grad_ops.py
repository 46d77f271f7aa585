"""Gradients of residual_merge, spike_conv2d, spike_linear, the pools and the trainable layers."""

import pytest
import torch
import torch.nn.functional as F

import spikekernels as sk
from spikekernels.testing import assert_close, assert_spikes_match


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def _backward(outputs, seed):
    loss = sum((o * torch.randn(o.shape, generator=_g(seed + i))).sum() for i, o in enumerate(outputs))
    loss.backward()


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per-channel"])
def test_residual_merge_gradients(backend, per_channel):
    cur0 = torch.rand(6, 2, 3, 5, 4, generator=_g(0)) * 0.8 - 0.2
    sc0 = (torch.rand(6, 2, 3, 5, 4, generator=_g(1)) < 0.3).float()
    scale0 = torch.tensor([0.5, 0.8, 1.2]) if per_channel else torch.tensor(0.7)
    results = {}
    for be in ("reference", backend):
        cur, sc, scale = _leaves(cur0, sc0, scale0)
        s, v = sk.residual_merge(cur, sc, scale, threshold=0.9, return_state=True, backend=be, surrogate="atan")
        _backward((s, v), 2)
        results[be] = (s.detach(), cur.grad, sc.grad, scale.grad)
    # the same current formed by hand and fed to if_scan gives the same gradients
    cur, sc, scale = _leaves(cur0, sc0, scale0)
    view = scale.view(-1, 1, 1) if per_channel else scale
    s, v = sk.if_scan(cur + view * sc, 0.9, return_state=True, backend="reference", surrogate="atan")
    _backward((s, v), 2)
    by_hand = (s.detach(), cur.grad, sc.grad, scale.grad)
    for got in (results[backend], by_hand):
        assert_spikes_match(got[0], results["reference"][0])
        for a, b in zip(got[1:], results["reference"][1:]):
            assert_close(a.reshape(b.shape), b, rtol=1e-5, atol=1e-5)
    assert all(g.abs().sum() > 0 for g in results["reference"][1:])


def test_residual_merge_uint8_shortcut_trains_the_branch():
    cur = (torch.rand(4, 2, 3, 5, generator=_g(3)) * 0.8).requires_grad_()
    sc = (torch.rand(4, 2, 3, 5, generator=_g(4)) < 0.3).to(torch.uint8)
    s = sk.residual_merge(cur, sc, 0.5)
    with torch.no_grad():
        assert torch.equal(s.detach(), sk.residual_merge(cur, sc, 0.5))
    s.sum().backward()
    assert cur.grad.abs().sum() > 0


def _conv_case(seed, T=5, residual=False):
    s = (torch.rand(T, 2, 3, 7, 7, generator=_g(seed)) < 0.4).float()
    w = torch.randn(4, 3, 3, 3, generator=_g(seed + 1)) * 0.4
    b = torch.randn(4, generator=_g(seed + 2)) * 0.1
    r = (torch.rand(T, 2, 4, 4, 4, generator=_g(seed + 3)) < 0.3).float() if residual else None
    return s, w, b, r


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_spike_conv2d_gradients(backend, residual, reset):
    s0, w0, b0, r0 = _conv_case(5, residual=residual)
    kw = dict(stride=2, padding=1, threshold=torch.tensor([0.5, 0.7, 0.9, 1.1]), reset=reset, return_state=True)
    results = {}
    for be in ("reference", backend):
        s, w, b = _leaves(s0, w0, b0)
        r = None if r0 is None else r0.clone().requires_grad_()
        out, v = sk.spike_conv2d(s, w, b, residual=r, residual_scale=0.6, backend=be, **kw)
        _backward((out, v), 7)
        results[be] = (out.detach(), s.grad, w.grad, b.grad) + (() if r is None else (r.grad,))
    # ground truth built from torch's conv and the reference neuron
    s, w, b = _leaves(s0, w0, b0)
    r = None if r0 is None else r0.clone().requires_grad_()
    cur = F.conv2d(s.flatten(0, 1), w, b, stride=2, padding=1).view(5, 2, 4, 4, 4)
    if r is not None:
        cur = cur + 0.6 * r
    kw.pop("stride"), kw.pop("padding")
    out, v = sk.if_scan(cur, backend="reference", **kw)
    _backward((out, v), 7)
    want = (out.detach(), s.grad, w.grad, b.grad) + (() if r is None else (r.grad,))
    for got in (results["reference"], results[backend]):
        assert_spikes_match(got[0], want[0])
        for a, b_ in zip(got[1:], want[1:]):
            assert_close(a, b_, rtol=1e-5, atol=1e-5)
    assert all(g.abs().sum() > 0 for g in want[1:])


def test_spike_conv2d_constant_input_gradient():
    img = torch.rand(1, 2, 3, 6, 6, generator=_g(8))
    w0 = torch.randn(4, 3, 3, 3, generator=_g(9)) * 0.3
    grads = []
    for given in ("timesteps", "expand", "repeat"):
        x, w = _leaves(img, w0)
        if given == "timesteps":
            out = sk.spike_conv2d(x, w, padding=1, timesteps=6)
        elif given == "expand":
            out = sk.spike_conv2d(x.expand(6, -1, -1, -1, -1), w, padding=1)
        else:
            out = sk.spike_conv2d(x.repeat(6, 1, 1, 1, 1), w, padding=1)
        assert out.shape == (6, 2, 4, 6, 6)
        _backward((out,), 10)
        grads.append((x.grad, w.grad))
    for g in grads[1:]:
        assert_close(g[0], grads[0][0], rtol=1e-5, atol=1e-5)
        assert_close(g[1], grads[0][1], rtol=1e-5, atol=1e-5)


def test_spike_conv2d_training_spikes_equal_inference(backend):
    s0, w0, b0, _ = _conv_case(11, T=6)
    with torch.no_grad():
        want = sk.spike_conv2d(s0, w0, b0, padding=1, backend=backend)
    w = w0.clone().requires_grad_()
    got = sk.spike_conv2d(s0, w, b0, padding=1, backend=backend)
    # the inference kernel sums the conv in another order: flips only within float rounding of θ
    assert_spikes_match(got.detach(), want)


def test_spike_linear_gradients(backend):
    s0 = (torch.rand(6, 3, 10, generator=_g(12)) < 0.4).float()
    w0 = torch.randn(5, 10, generator=_g(13)) * 0.5
    b0 = torch.randn(5, generator=_g(14)) * 0.1
    results = {}
    for be in ("reference", backend):
        s, w, b = _leaves(s0, w0, b0)
        out, v = sk.spike_linear(s, w, b, threshold=0.8, return_state=True, backend=be)
        assert out.shape == (6, 3, 5) and v.shape == (3, 5)
        _backward((out, v), 15)
        results[be] = (out.detach(), s.grad, w.grad, b.grad)
    s, w, b = _leaves(s0, w0, b0)
    out, v = sk.if_scan(F.linear(s, w, b), 0.8, return_state=True, backend="reference")
    _backward((out, v), 15)
    for got in results.values():
        assert_spikes_match(got[0], out.detach())
        for a, b_ in zip(got[1:], (s.grad, w.grad, b.grad)):
            assert_close(a, b_, rtol=1e-5, atol=1e-5)
    # neuron=False: currents, gradient of a linear map
    s, w = _leaves(s0, w0)
    cur = sk.spike_linear(s, w, neuron=False)
    cur.sum().backward()
    assert_close(w.grad, s0.sum((0, 1)).expand(5, -1), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_avg_pools_gradients(k, stride, pad):
    s0 = (torch.rand(4, 2, 3, 7, 9, generator=_g(16)) < 0.4).float()
    with torch.no_grad():
        want = sk.spike_avg_pool2d(s0, k, stride, pad)
    s = s0.clone().requires_grad_()
    out = sk.spike_avg_pool2d(s, k, stride, pad)
    assert torch.equal(out.detach(), want)
    g = torch.randn(out.shape, generator=_g(17))
    (out * g).sum().backward()
    s1 = s0.clone().requires_grad_()
    (F.avg_pool2d(s1.flatten(0, 1), k, stride, pad).view(out.shape) * g).sum().backward()
    assert_close(s.grad, s1.grad, rtol=1e-6, atol=1e-7)
    s = s0.clone().requires_grad_()
    out = sk.global_avg_pool(s)
    with torch.no_grad():
        assert_close(out.detach(), sk.global_avg_pool(s0), rtol=1e-6, atol=1e-7)
    out.sum().backward()
    assert_close(s.grad, torch.full_like(s0, 1 / 63), rtol=1e-6, atol=0)


@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_max_pool_gradient_goes_to_the_gated_input(k, stride, pad):
    s0 = (torch.rand(6, 2, 2, 7, 6, generator=_g(18)) < 0.4).float()
    count0 = torch.randint(0, 3, (2, 2, 7, 6), generator=_g(19)).float()
    with torch.no_grad():
        want, want_count = sk.spike_max_pool2d(s0, k, stride, pad, count=count0, return_state=True)
    s = s0.clone().requires_grad_()
    out, count = sk.spike_max_pool2d(s, k, stride, pad, count=count0, return_state=True)
    assert torch.equal(out.detach(), want) and torch.equal(count, want_count)
    g = torch.randn(out.shape, generator=_g(20))
    (out * g).sum().backward()
    # by hand: at each step, each window's gradient lands on its largest-count input (first of ties)
    expect = torch.zeros_like(s0)
    counts = count0.clone()
    T, B, C, H, W = s0.shape
    for t in range(T):
        counts += s0[t]
        for b in range(B):
            for c in range(C):
                for i in range(out.shape[3]):
                    for j in range(out.shape[4]):
                        best = None
                        for di in range(k):
                            for dj in range(k):
                                y, x = i * stride - pad + di, j * stride - pad + dj
                                if 0 <= y < H and 0 <= x < W and (best is None or counts[b, c, y, x] > best[0]):
                                    best = (counts[b, c, y, x], y, x)
                        expect[t, b, c, best[1], best[2]] += g[t, b, c, i, j]
    assert_close(s.grad, expect, rtol=1e-6, atol=1e-6)


def test_trainable_layers_learn(backend):
    # a few SGD steps on a fixed batch lower the loss: the gradients point downhill
    torch.manual_seed(0)
    model = torch.nn.ModuleList([
        sk.SpikeConv2d(2, 4, 3, padding=1, threshold=0.5, backend=backend),
        sk.SpikeMaxPool2d(2, backend=backend),
        sk.SpikeLinear(4 * 3 * 3, 3, neuron=False, backend=backend),
    ])
    x = torch.rand(1, 8, 2, 6, 6, generator=_g(21))
    y = torch.arange(8) % 3
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def loss_fn():
        s = model[1](model[0](x, timesteps=4))
        logits = model[2](s.flatten(2)).mean(0)
        return F.cross_entropy(logits, y)

    first = loss_fn()
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn() < first - 0.05


def test_spike_conv2d_layer_matches_the_op_and_keeps_state():
    torch.manual_seed(1)
    layer = sk.SpikeConv2d(3, 4, 3, stride=1, padding=1, threshold=0.4, stateful=True)
    s0 = (torch.rand(6, 2, 3, 5, 5, generator=_g(22)) < 0.5).float()
    with torch.no_grad():
        want = sk.spike_conv2d(s0, layer.weight, layer.bias, padding=1, threshold=0.4)
        chunked = torch.cat([layer(s0[:2]), layer(s0[2:])])
    assert_spikes_match(chunked, want)
    layer.reset_state()
    out = torch.cat([layer(s0[:2]), layer(s0[2:])])
    out.sum().backward()
    grad_chunked = layer.weight.grad.clone()
    layer.weight.grad = None
    layer.reset_state()
    layer(s0).sum().backward()
    assert_close(grad_chunked, layer.weight.grad, rtol=1e-5, atol=1e-5)
    assert isinstance(layer.weight, torch.nn.Parameter) and "weight" in layer.state_dict()


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="in_channels=0 must be a positive int"):
        sk.SpikeConv2d(0, 4, 3)
    with pytest.raises(ValueError, match="stateful=True needs neuron=True"):
        sk.SpikeLinear(3, 4, neuron=False, stateful=True)
    with pytest.raises(ValueError, match="surrogate='step' is not a surrogate"):
        sk.IFNeuron(surrogate="step")
    with pytest.raises(ValueError, match=r"SpikeLinear takes \[T, B, Fin\]"):
        sk.SpikeLinear(3, 4)(torch.rand(2, 3))
