"""Surrogate-gradient BPTT of the IF neuron: formula (gradcheck), backends, custom ops, fast path."""

import pytest
import torch

import spikekernels as sk
from spikekernels.ops.if_scan import autograd as ag
from spikekernels.ops.if_scan import grad_reference
from spikekernels.testing import assert_close, assert_spikes_match

SURROGATES = [sk.surrogate.Sigmoid(), sk.surrogate.ATan(), sk.surrogate.Triangle(), sk.surrogate.Sigmoid(alpha=1.5)]
SUR_IDS = ["sigmoid", "atan", "triangle", "sigmoid1.5"]
# (T, shape after T): T=1, primes, odd sizes, and N = 12690 crossing Numba's and Triton's blocks
SHAPES = [(1, (2, 3, 7)), (7, (2, 3, 5)), (13, (1, 17, 11)), (4, (3, 2, 45, 47))]
SHAPE_IDS = [f"T{t}-{'x'.join(map(str, s))}" for t, s in SHAPES]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _inputs(T, shape, seed=0):
    x = torch.rand((T,) + shape, generator=_g(seed)) * 0.9 - 0.2
    thr = torch.linspace(0.6, 1.2, shape[1])
    v0 = torch.rand(shape, generator=_g(seed + 1)) * 0.5
    gs = torch.randn((T,) + shape, generator=_g(seed + 2))
    gv = torch.randn(shape, generator=_g(seed + 3))
    return x, thr, v0, gs, gv


def _grads(backend, x, thr, v0, gs, gv, **kw):
    x, thr, v0 = (t.clone().requires_grad_() for t in (x, thr, v0))
    s, v = sk.if_scan(x, thr, v0=v0, return_state=True, backend=backend, **kw)
    ((s * gs).sum() + (v * gv).sum()).backward()
    return s.detach(), v.detach(), x.grad, thr.grad, v0.grad


@pytest.mark.parametrize("T,shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["reset-grad", "detach-reset"])
def test_backend_gradients_equal_reference(backend, T, shape, reset, detach_reset):
    args = _inputs(T, shape)
    kw = dict(reset=reset, v_reset=-0.1 if reset == "zero" else 0.0, detach_reset=detach_reset)
    ref = _grads("reference", *args, **kw)
    got = _grads(backend, *args, **kw)
    # the training forward does the inference arithmetic: same spikes, same membrane
    assert_spikes_match(got[0], ref[0])
    assert_close(got[1], ref[1], rtol=0, atol=0, name="membrane")
    for name, a, b in zip(("dL/dx", "dL/dthreshold", "dL/dv0"), got[2:], ref[2:]):
        assert_close(a, b, rtol=1e-5, atol=1e-5, name=name)
        assert b.abs().sum() > 0, f"{name} is all zero: the test would not see a wrong gradient"


@pytest.mark.parametrize("sur", SURROGATES, ids=SUR_IDS)
def test_backend_gradients_equal_reference_per_surrogate(backend, sur):
    args = _inputs(9, (2, 3, 4, 5), seed=4)
    ref = _grads("reference", *args, surrogate=sur)
    got = _grads(backend, *args, surrogate=sur)
    assert_spikes_match(got[0], ref[0])
    for a, b in zip(got[2:], ref[2:]):
        assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_surrogate_changes_the_gradient_not_the_spikes():
    args = _inputs(6, (2, 3, 5))
    a = _grads("reference", *args, surrogate="sigmoid")
    b = _grads("reference", *args, surrogate=sk.surrogate.ATan(alpha=2.0))
    assert torch.equal(a[0], b[0])
    assert not torch.allclose(a[2], b[2])


def test_constant_current_gradient_is_summed_over_steps(backend):
    c = torch.rand(1, 2, 3, 5, generator=_g(7))
    gs = torch.randn(6, 2, 3, 5, generator=_g(8))
    grads = []
    for make in (lambda t: t.expand(6, -1, -1, -1), lambda t: t.repeat(6, 1, 1, 1)):
        leaf = c.clone().requires_grad_()
        s = sk.if_scan(make(leaf), 0.8, backend=backend)
        (s * gs).sum().backward()
        grads.append(leaf.grad)
    assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    assert grads[0].abs().sum() > 0


class _SmoothChunks(torch.autograd.Function):
    """The IF scan with g(u) for the spike, run in chunks; backward = the reference BPTT formula."""

    @staticmethod
    def forward(ctx, x, thr, v0, splits, reset_zero, v_reset, sur, detach_reset):
        inner = x[0, 0, 0].numel()
        v, spikes, hs = v0.reshape(-1), [], []
        for chunk in torch.split(x, splits):
            s, v, h = grad_reference.smooth_forward(chunk.reshape(chunk.shape[0], -1), thr, inner, v, reset_zero,
                                                    v_reset, sur.kind, sur.alpha)
            spikes.append(s)
            hs.append(h)
        ctx.save_for_backward(thr, *hs)
        ctx.args = (inner, reset_zero, v_reset, sur, detach_reset, x.shape)
        return torch.cat(spikes).view(x.shape), v.view(x.shape[1:])

    @staticmethod
    def backward(ctx, grad_s, grad_v):
        thr, *hs = ctx.saved_tensors
        inner, reset_zero, v_reset, sur, detach_reset, shape = ctx.args
        n = hs[0].shape[1]
        grad_s = grad_s.reshape(shape[0], n)
        gv, gthr, gxs, end = grad_v.reshape(n), torch.zeros_like(thr), [], shape[0]
        for h in reversed(hs):
            T = h.shape[0]
            gx, gth_n, gv0 = torch.empty_like(h), torch.empty(n, dtype=h.dtype), torch.empty(n, dtype=h.dtype)
            grad_reference.backward(grad_s[end - T:end], gv, h, thr, inner, reset_zero, v_reset, sur.kind, sur.alpha,
                                    detach_reset, gx, gth_n, gv0, smooth=True)
            gthr += gth_n.view(-1, thr.numel(), inner).sum((0, 2))
            gxs.insert(0, gx)
            gv, end = gv0, end - T
        return torch.cat(gxs).view(shape), gthr, gv.view(shape[1:]), None, None, None, None, None


@pytest.mark.parametrize("splits", [[1], [5], [2, 3], [1, 3, 1]], ids=["T1", "T5", "chunks2+3", "chunks1+3+1"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("sur", SURROGATES[:3], ids=SUR_IDS[:3])
def test_reference_backward_passes_gradcheck_on_the_smooth_network(splits, reset, sur):
    # float64, spike = g(v - θ): the analytic BPTT of grad_reference must match finite differences
    T = sum(splits)
    x = (torch.rand(T, 2, 3, 2, generator=_g(11), dtype=torch.float64) * 1.2 - 0.2).requires_grad_()
    thr = torch.tensor([0.7, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    v0 = (torch.rand(2, 3, 2, generator=_g(12), dtype=torch.float64) * 0.5).requires_grad_()
    v_reset = -0.2 if reset == "zero" else 0.0
    fn = lambda x, thr, v0: _SmoothChunks.apply(x, thr, v0, splits, reset == "zero", v_reset, sur, False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, thr, v0), eps=1e-6, atol=1e-6, rtol=1e-5)


def _unrolled_smooth(x, thr, v0, reset_zero, v_reset, sur, detach_reset):
    """The smooth network written with plain autograd, reset optionally detached (SpikingJelly's way)."""
    theta = thr.view(1, -1, 1)
    v, out = v0, []
    for t in range(x.shape[0]):
        h = v + x[t]
        s = sur.smooth(h - theta)
        r = s.detach() if detach_reset else s
        v = h * (1 - r) + v_reset * r if reset_zero else h - theta * r
        out.append(s)
    return torch.stack(out), v


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["reset-grad", "detach-reset"])
def test_reference_backward_equals_autograd_of_the_smooth_network(reset, detach_reset):
    sur = sk.surrogate.ATan()
    x = (torch.rand(6, 2, 3, 2, generator=_g(13), dtype=torch.float64) * 1.2 - 0.2).requires_grad_()
    thr = torch.tensor([0.7, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    v0 = torch.zeros(2, 3, 2, dtype=torch.float64, requires_grad=True)
    gs, gv = torch.randn(x.shape, generator=_g(14), dtype=torch.float64), torch.randn(v0.shape, generator=_g(15),
                                                                                       dtype=torch.float64)
    v_reset = -0.2 if reset == "zero" else 0.0
    args = (reset == "zero", v_reset, sur, detach_reset)
    want = torch.autograd.grad(sum((o * g).sum() for o, g in zip(_unrolled_smooth(x, thr, v0, *args), (gs, gv))),
                               (x, thr, v0))
    got = torch.autograd.grad(sum((o * g).sum() for o, g in zip(_SmoothChunks.apply(x, thr, v0, [2, 4], *args),
                                                                 (gs, gv))), (x, thr, v0))
    for a, b in zip(got, want):
        assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("be", ["reference", "numba"])
@pytest.mark.parametrize("reset_zero", [False, True])
def test_custom_ops_pass_opcheck(be, reset_zero):
    x = torch.rand(5, 24, generator=_g(16)).requires_grad_()
    thr = torch.tensor([0.6, 0.9, 1.1]).requires_grad_()
    v0 = torch.full((24,), 0.3).requires_grad_()
    fwd = (x, thr, v0, 5, 4, reset_zero, -0.1, 1, 2.0, False, torch.float32, be)
    torch.library.opcheck(torch.ops.spikekernels.if_scan_train.default, fwd)
    _, _, h = torch.ops.spikekernels.if_scan_train(*fwd)
    bwd = (torch.randn(5, 24, generator=_g(17)), torch.randn(24, generator=_g(18)), h.detach(), thr.detach(), 4, 5,
           reset_zero, -0.1, 1, 2.0, False, torch.float32, be)
    torch.library.opcheck(torch.ops.spikekernels.if_scan_train_backward.default, bwd)


def test_fast_path_unchanged_without_grad(monkeypatch):
    x = torch.rand(5, 2, 3, 4, generator=_g(19))
    want = sk.if_scan(x.requires_grad_(), 0.7).detach()
    x = x.detach()

    def fail(*args, **kwargs):
        raise AssertionError("the training path ran although nothing requires grad")

    monkeypatch.setattr(ag, "if_scan", fail)
    s = sk.if_scan(x, 0.7)
    assert s.grad_fn is None and torch.equal(s, want)
    with torch.no_grad():
        s = sk.if_scan(x.clone().requires_grad_(), 0.7)
    assert s.grad_fn is None and torch.equal(s, want)


def test_user_report_conv_then_ifneuron_without_no_grad(backend):
    # issue 16: `conv -> sk.IFNeuron` outside no_grad failed with "Can't call numpy() on
    # Tensor that requires grad" in the Numba backend
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(6 * 2, 3, 8, 8, generator=_g(20))
    cur = conv(x).view(6, 2, 4, 8, 8)
    s = sk.IFNeuron(threshold=0.3, backend=backend)(cur)
    assert s.grad_fn is not None and s.requires_grad
    s.mean().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_uint8_spikes_cannot_carry_gradients():
    x = torch.rand(3, 2, 4).requires_grad_()
    with pytest.raises(TypeError, match="spike_dtype=torch.uint8 cannot carry gradients"):
        sk.if_scan(x, spike_dtype=torch.uint8)
    with torch.no_grad():
        assert sk.if_scan(x, spike_dtype=torch.uint8).dtype == torch.uint8


def test_bad_surrogate_is_named():
    with pytest.raises(ValueError, match="surrogate='relu' is not a surrogate"):
        sk.if_scan(torch.rand(2, 3).requires_grad_(), surrogate="relu")
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        sk.surrogate.ATan(alpha=0)


@pytest.mark.parametrize("sur", SURROGATES, ids=SUR_IDS)
def test_surrogate_derivative_is_the_derivative_of_its_smooth_step(sur):
    u = torch.linspace(-3, 3, 601, dtype=torch.float64).requires_grad_()
    (d,) = torch.autograd.grad(sur.smooth(u).sum(), u)
    assert_close(sur.derivative(u.detach()), d, rtol=1e-9, atol=1e-12)
    # a probability-like smooth step: 0 far below the threshold, 1 far above, 1/2 at it
    assert float(sur.smooth(torch.tensor(0.0))) == pytest.approx(0.5)
    assert float(sur.smooth(torch.tensor(-50.0))) < 0.01 < 0.99 < float(sur.smooth(torch.tensor(50.0)))


@pytest.mark.parametrize("split", [1, 3])
def test_stateful_chunks_give_the_gradient_of_one_call(backend, split):
    x0 = torch.rand(7, 2, 3, 5, generator=_g(21)) * 0.8 - 0.1
    gs = torch.randn(x0.shape, generator=_g(22))
    layer = sk.IFNeuron(threshold=0.6, stateful=True, backend=backend)
    x = x0.clone().requires_grad_()
    s = torch.cat([layer(x[:split]), layer(x[split:])])
    (s * gs).sum().backward()
    layer.reset_state()
    x1 = x0.clone().requires_grad_()
    (layer(x1) * gs).sum().backward()
    assert_close(x.grad, x1.grad, rtol=1e-5, atol=1e-6)
    # truncated BPTT: cutting the carried graph changes the early chunk's gradient
    layer.reset_state()
    x2 = x0.clone().requires_grad_()
    first = layer(x2[:split])
    layer.detach_state()
    (torch.cat([first, layer(x2[split:])]) * gs).sum().backward()
    assert not torch.allclose(x2.grad[:split], x1.grad[:split])
    assert_close(x2.grad[split:], x1.grad[split:], rtol=1e-5, atol=1e-6)
