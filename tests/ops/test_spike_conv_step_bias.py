"""``step_bias`` of spike_conv2d / spike_linear: a bias per time step and output channel ``[T, Cout]``.

The reference defines ``x_t = (conv(s_t) + b) + (step_bias[t] + α·residual_t)``. Every backend
must compute the same float32 operations as the equivalent float residual
``step_bias[t] + α·residual_t`` passed with ``residual_scale=1`` (how sresnet's executor passed
the bias schedule before): that equality is exact, on the same backend and kernel, so it is
checked with ``torch.equal``; against the reference (another conv sum order) currents are
close and spikes may flip only near θ, as in test_spike_conv.py.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import spikekernels as sk
from spikekernels.ops.spike_conv import numba_gather
from spikekernels.ops.spike_conv.reference import step_convs
from spikekernels.testing import assert_close, assert_spikes_match, membrane_trace

from test_spike_conv import CASES, IDS, _case, path  # noqa: F401  (path: the Numba kernel fixture)


def _folded(step_bias, res, scale, shape):
    """The float residual that carries the same float32 operations as ``step_bias`` + α·res."""
    view = step_bias.view(shape[0], 1, shape[2], *([1] * (len(shape) - 3)))
    if res is None:
        return view.expand(shape)
    scale = scale.view(-1, *([1] * (len(shape) - 3))) if isinstance(scale, torch.Tensor) else scale
    return view + scale * res.to(torch.float32)


def _residual(kind, shape, g):
    return {"none": None,
            "uint8": (torch.rand(shape, generator=g) < 0.3).to(torch.uint8),
            "bool": torch.rand(shape, generator=g) < 0.3,
            "float": torch.randn(shape, generator=g) * 0.3}[kind]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("res_kind", ["none", "uint8", "float"])
def test_currents(backend, path, case, res_kind):
    s, w, b, conv_kw, shape = _case(case, seed=21)
    g = torch.Generator().manual_seed(22)
    sb = torch.randn(shape[0], shape[2], generator=g) * 0.4
    res = _residual(res_kind, shape, g)
    scale = torch.linspace(-0.5, 1.0, shape[2])
    kw = dict(conv_kw, neuron=False, residual=res, residual_scale=scale)
    ref = sk.spike_conv2d(s, w, b, **kw, step_bias=sb, backend="reference")
    # the reference is exactly the documented formula
    # (the conv of each step: reference.step_convs, checked against F.conv2d in test_spike_conv)
    conv = step_convs(s, w, b, conv_kw["stride"], conv_kw["padding"]).view(shape)
    manual = conv + _folded(sb, res, scale, shape)
    assert torch.equal(ref, manual)
    x = sk.spike_conv2d(s, w, b, **kw, step_bias=sb, backend=backend)
    assert x.shape == shape and x.dtype == torch.float32
    assert_close(x, ref, rtol=1e-5, atol=1e-5, name="currents with step_bias")
    folded = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, residual=_folded(sb, res, scale, shape),
                             backend=backend)
    assert torch.equal(x, folded)
    # the bias did something: a different step_bias gives different currents
    assert not torch.equal(x, sk.spike_conv2d(s, w, b, **kw, step_bias=sb * 0.5, backend=backend))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("res_kind", ["none", "uint8", "bool", "float"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_spikes(backend, path, case, res_kind, reset):
    s, w, b, conv_kw, shape = _case(case, seed=23)
    g = torch.Generator().manual_seed(24)
    # a bias that moves over time: negative early, positive late (as a lowlat schedule may)
    sb = torch.linspace(-0.3, 0.3, shape[0])[:, None] + torch.randn(shape[0], shape[2], generator=g) * 0.1
    res = _residual(res_kind, shape, g)
    scale = 0.6
    kw = dict(conv_kw, residual=res, residual_scale=scale, reset=reset, v_reset=-0.1, return_state=True)
    cur = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, residual=res, residual_scale=scale, step_bias=sb,
                          backend="reference")
    ref, v_ref = sk.spike_conv2d(s, w, b, **kw, step_bias=sb, backend="reference")
    out, v = sk.spike_conv2d(s, w, b, **kw, step_bias=sb, backend=backend)
    assert out.shape == shape and out.dtype == s.dtype
    if assert_spikes_match(out, ref, membrane_trace(cur, 1.0, None, reset, -0.1)) == 0:
        assert_close(v, v_ref, rtol=1e-5, atol=1e-5, name="membrane")
    assert 0 < ref.sum() < ref.numel()
    folded, v_folded = sk.spike_conv2d(s, w, b, **dict(kw, residual=_folded(sb, res, scale, shape), residual_scale=1.0),
                                       backend=backend)
    assert torch.equal(out, folded) and torch.equal(v, v_folded)


@pytest.mark.parametrize("split", [1, 3, 5])
def test_chunks_take_their_rows(backend, path, split):
    """A call covering steps t0..t1 with rows t0..t1 and the carried membrane continues the run."""
    s, w, b, conv_kw, shape = _case((6, 2, 3, 9, 8, 8, 3, 1, 1), seed=25)
    g = torch.Generator().manual_seed(26)
    sb = torch.randn(6, 9, generator=g) * 0.3
    res = (torch.rand(shape, generator=g) < 0.3).to(torch.uint8)
    kw = dict(conv_kw, residual_scale=0.7, backend=backend, return_state=True)
    whole, v_whole = sk.spike_conv2d(s, w, b, residual=res, step_bias=sb, **kw)
    first, v1 = sk.spike_conv2d(s[:split], w, b, residual=res[:split], step_bias=sb[:split], **kw)
    second, v2 = sk.spike_conv2d(s[split:], w, b, residual=res[split:], step_bias=sb[split:], v0=v1, **kw)
    assert torch.equal(torch.cat([first, second]), whole)
    assert torch.equal(v2, v_whole)


@pytest.mark.parametrize("form", ["timesteps", "expand"])
def test_constant_input(backend, form):
    T = 5
    g = torch.Generator().manual_seed(27)
    img = torch.randn(1, 2, 3, 7, 7, generator=g)
    w = torch.randn(6, 3, 3, 3, generator=g) * 0.3
    sb = torch.randn(T, 6, generator=g) * 0.3
    x = dict(s=img, timesteps=T) if form == "timesteps" else dict(s=img.expand(T, -1, -1, -1, -1))
    cur = sk.spike_conv2d(**x, weight=w, padding=1, neuron=False, step_bias=sb, backend=backend)
    full = img.expand(T, -1, -1, -1, -1).contiguous()
    ref_cur = sk.spike_conv2d(full, w, padding=1, neuron=False, step_bias=sb, backend="reference")
    assert cur.shape == (T, 2, 6, 7, 7)
    assert_close(cur, ref_cur, rtol=1e-5, atol=1e-5)
    # the conv ran once: every step is that one current plus its bias row
    once = sk.spike_conv2d(**x, weight=w, padding=1, neuron=False, backend=backend)
    assert torch.equal(cur, once + sb.view(T, 1, 6, 1, 1))
    out = sk.spike_conv2d(**x, weight=w, padding=1, step_bias=sb, backend=backend)
    ref = sk.spike_conv2d(full, w, padding=1, step_bias=sb, backend="reference")
    assert_spikes_match(out, ref, membrane_trace(ref_cur))


@pytest.mark.parametrize("T,B,Fin,Fout", [(1, 2, 7, 5), (5, 3, 33, 17)])
@pytest.mark.parametrize("with_res", [False, True], ids=["plain", "residual"])
def test_linear(backend, path, T, B, Fin, Fout, with_res):
    g = torch.Generator().manual_seed(28)
    s = (torch.rand(T, B, Fin, generator=g) < 0.3).to(torch.uint8)
    w = torch.randn(Fout, Fin, generator=g) * (5.0 / Fin) ** 0.5
    b = torch.randn(Fout, generator=g) * 0.1
    sb = torch.randn(T, Fout, generator=g) * 0.3
    res = (torch.rand(T, B, Fout, generator=g) < 0.3).to(torch.uint8) if with_res else None
    manual = F.linear(s.float(), w, b) + _folded(sb, res, 0.5, (T, B, Fout))
    kw = dict(residual=res, residual_scale=0.5, step_bias=sb)
    plain = sk.spike_linear(s, w, b, neuron=False, backend="reference")
    assert torch.equal(sk.spike_linear(s, w, b, neuron=False, backend="reference", **kw),
                       plain + _folded(sb, res, 0.5, (T, B, Fout)))
    cur = sk.spike_linear(s, w, b, neuron=False, backend=backend, **kw)
    assert cur.shape == (T, B, Fout)
    assert_close(cur, manual, rtol=1e-5, atol=1e-5)
    out, v = sk.spike_linear(s, w, b, backend=backend, return_state=True, **kw)
    ref = sk.spike_linear(s, w, b, backend="reference", **kw)
    assert out.shape == (T, B, Fout) and v.shape == (B, Fout)
    assert_spikes_match(out, ref, membrane_trace(manual))
    if T > 1:
        first, v1 = sk.spike_linear(s[:2], w, b, backend=backend, return_state=True, residual=None if res is None
                                    else res[:2], residual_scale=0.5, step_bias=sb[:2])
        second = sk.spike_linear(s[2:], w, b, v0=v1, backend=backend, residual=None if res is None else res[2:],
                                 residual_scale=0.5, step_bias=sb[2:])
        assert torch.equal(torch.cat([first, second]), out)


@pytest.mark.parametrize("with_res", [False, True], ids=["plain", "residual"])
def test_gradient(backend, with_res):
    """dL/d step_bias is dL/dx summed over B, H', W': the gradient of the equivalent float
    residual summed over those dims (torch's broadcast backward)."""
    g = torch.Generator().manual_seed(29)
    T, shape = 5, (5, 2, 4, 4, 4)
    s = (torch.rand(T, 2, 3, 8, 8, generator=g) < 0.3).float()
    w = torch.randn(4, 3, 3, 3, generator=g) * 0.4
    sb0 = torch.randn(T, 4, generator=g) * 0.2
    res = (torch.rand(shape, generator=g) < 0.3).float() if with_res else None
    weights = torch.randn(shape, generator=g)
    kw = dict(stride=2, padding=1, residual_scale=0.6, threshold=0.8, return_state=True)
    sb = sb0.clone().requires_grad_()
    out, v = sk.spike_conv2d(s, w, step_bias=sb, residual=res, backend=backend, **kw)
    ((out * weights).sum() + v.sum()).backward()
    folded = _folded(sb0, res, 0.6, shape).clone().requires_grad_()
    out_f, v_f = sk.spike_conv2d(s, w, residual=folded, backend=backend, **dict(kw, residual_scale=1.0))
    ((out_f * weights).sum() + v_f.sum()).backward()
    assert torch.equal(out.detach(), out_f.detach())
    want = folded.grad.sum((1, 3, 4))
    assert_close(sb.grad, want, rtol=1e-5, atol=1e-6)
    assert sb.grad.abs().sum() > 0


BAD = [
    (lambda T, C: torch.zeros(T, C + 1), ValueError, r"step_bias has shape \(2, 5\); expected \[T, C\] = \[2, 4\]"),
    (lambda T, C: torch.zeros(T + 1, C), ValueError, r"step_bias has shape \(3, 4\)"),
    (lambda T, C: torch.zeros(C), ValueError, r"step_bias has shape \(4,\)"),
    (lambda T, C: torch.zeros(T, C, dtype=torch.int32), TypeError, "step_bias has dtype torch.int32"),
    (lambda T, C: torch.full((T, C), float("nan")), ValueError, "step_bias contains NaN or Inf"),
    (lambda T, C: torch.full((T, C), float("inf")), ValueError, "step_bias contains NaN or Inf"),
    (lambda T, C: [[0.0] * C] * T, TypeError, "step_bias must be a torch.Tensor"),
]


@pytest.mark.parametrize("make,exc,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_step_bias_raises(make, exc, match):
    s = torch.zeros(2, 2, 3, 5, 5, dtype=torch.uint8)
    w = torch.zeros(4, 3, 3, 3)
    with pytest.raises(exc, match=match):
        sk.spike_conv2d(s, w, step_bias=make(2, 4), backend="reference")
    with pytest.raises(exc, match=match):
        sk.spike_linear(torch.zeros(2, 2, 3), torch.zeros(4, 3), step_bias=make(2, 4))
    # the training path checks the same way
    with pytest.raises(exc, match=match):
        sk.spike_conv2d(s.float(), w.requires_grad_(), step_bias=make(2, 4))


def test_constant_input_rows_are_per_timestep():
    """With ``timesteps=T`` and a one-frame input, step_bias still needs T rows, not 1."""
    img = torch.zeros(1, 1, 3, 5, 5)
    with pytest.raises(ValueError, match=r"expected \[T, C\] = \[6, 4\]"):
        sk.spike_conv2d(img, torch.zeros(4, 3, 3, 3), timesteps=6, step_bias=torch.zeros(1, 4))


@st.composite
def conv_cases(draw):
    T = draw(st.integers(1, 4))
    B = draw(st.integers(1, 2))
    # below, at and past the Numba kernels' 8-channel vectors and 8-bit input groups
    cin, cout = draw(st.sampled_from([1, 3, 8, 9, 17])), draw(st.sampled_from([1, 3, 5, 8, 9, 20]))
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1))
    h, w = draw(st.integers(k, 9)), draw(st.integers(k, 9))
    density = draw(st.floats(0.0, 0.6))
    thr = draw(st.floats(0.2, 2.0))
    reset = draw(st.sampled_from(["subtract", "zero"]))
    seed = draw(st.integers(0, 2**16))
    split = draw(st.integers(0, T))
    res_kind = draw(st.sampled_from(["none", "uint8", "float"]))
    kernel = draw(st.sampled_from(["default", "scatter", "dense"]))
    return T, B, cin, cout, k, stride, pad, h, w, density, thr, reset, seed, split, res_kind, kernel


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases())
# found in CI: one image per conv call vs two rounded differently (the reference and the dense
# path folded a chunk's steps into torch's batch), so a chunk split changed the membrane
@example(case=(2, 1, 1, 1, 3, 1, 0, 3, 3, 0.5, 1.0, "subtract", 1, 1, "none", "dense"))
def test_properties(backend, case):
    """Random shapes and densities: the reference within rounding, the folded residual exactly,
    and any chunk split (each chunk with its rows) equal to one call."""
    T, B, cin, cout, k, stride, pad, h, w, density, thr, reset, seed, split, res_kind, kernel = case
    if kernel != "default" and backend != "numba":
        kernel = "default"
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(T, B, cin, h, w, generator=g) < density).to(torch.uint8)
    wt = torch.randn(cout, cin, k, k, generator=g) * 0.7
    b = torch.randn(cout, generator=g) * 0.2
    shape = (T, B, cout, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    sb = torch.randn(T, cout, generator=g) * 0.3
    res = _residual(res_kind, shape, g)
    conv = dict(stride=stride, padding=pad, residual=res, residual_scale=0.7)
    kw = dict(conv, threshold=thr, reset=reset)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "0.0" if kernel == "dense" else "1.0")
        if kernel == "scatter":
            mp.setattr(numba_gather, "gather", lambda *args: False)
        cur = sk.spike_conv2d(s, wt, b, **conv, step_bias=sb, neuron=False, backend="reference")
        assert_close(sk.spike_conv2d(s, wt, b, **conv, step_bias=sb, neuron=False, backend=backend), cur,
                     rtol=1e-5, atol=1e-5, name="currents")
        s_ref = sk.spike_conv2d(s, wt, b, backend="reference", step_bias=sb, **kw)
        out, v = sk.spike_conv2d(s, wt, b, backend=backend, return_state=True, step_bias=sb, **kw)
        assert_spikes_match(out, s_ref, membrane_trace(cur, thr, None, reset), threshold=thr)
        folded, v_folded = sk.spike_conv2d(s, wt, b, backend=backend, return_state=True,
                                           **dict(kw, residual=_folded(sb, res, 0.7, shape), residual_scale=1.0))
        assert torch.equal(out, folded) and torch.equal(v, v_folded)
        if 0 < split < T:
            part = lambda lo, hi: dict(kw, residual=None if res is None else res[lo:hi], step_bias=sb[lo:hi])
            o1, v1 = sk.spike_conv2d(s[:split], wt, b, backend=backend, return_state=True, **part(0, split))
            o2, v2 = sk.spike_conv2d(s[split:], wt, b, backend=backend, v0=v1, return_state=True, **part(split, T))
            assert torch.equal(torch.cat([o1, o2]), out) and torch.equal(v2, v)


def test_compiled_gradient():
    """Under torch.compile(fullgraph=True) the step_bias checks do not break the graph (the
    finiteness check is skipped while tracing) and the gradient matches eager mode."""
    g = torch.Generator().manual_seed(30)
    s = (torch.rand(4, 2, 3, 6, 6, generator=g) < 0.3).float()
    w = torch.randn(5, 3, 3, 3, generator=g) * 0.5
    r = (torch.rand(4, 2, 5, 6, 6, generator=g) < 0.3).to(torch.uint8)
    sb0 = torch.randn(4, 5, generator=g) * 0.3

    def f(sb):
        out, v = sk.spike_conv2d(s, w, padding=1, residual=r, residual_scale=0.5, step_bias=sb, return_state=True,
                                 backend="numba")
        return out, v

    results = []
    for fn in (f, torch.compile(f, fullgraph=True)):
        sb = sb0.clone().requires_grad_()
        out, v = fn(sb)
        (out.sum() * 0.3 + v.sum()).backward()
        results.append((out.detach(), v.detach(), sb.grad))
    assert_spikes_match(results[1][0], results[0][0])
    assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-5, name="membrane")
    assert_close(results[1][2], results[0][2], rtol=1e-5, atol=1e-5, name="step_bias gradient")
    assert results[0][2].abs().sum() > 0
