"""Property-based tests: random shapes, thresholds, resets, v0, densities and chunk splits,
every backend against the reference. Bounded by max_examples so the suite stays fast."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikekernels as sk
from spikekernels.ops.spike_conv import numba_gather
from spikekernels.testing import assert_close, assert_spikes_match, membrane_trace

PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def if_cases(draw):
    T = draw(st.integers(1, 9))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=4)))
    per_channel = len(shape) >= 2 and draw(st.booleans())
    if per_channel:
        thr = torch.tensor(draw(st.lists(st.floats(0.05, 4.0), min_size=shape[1], max_size=shape[1])))
    else:
        thr = draw(st.floats(0.05, 4.0))
    reset = draw(st.sampled_from(["subtract", "zero"]))
    v0 = draw(st.one_of(st.none(), st.floats(-1.0, 2.0)))
    density = draw(st.floats(0.0, 1.5))
    seed = draw(st.integers(0, 2**16))
    split = draw(st.integers(0, T))
    return T, shape, thr, reset, v0, density, seed, split


@PROFILE
@given(case=if_cases())
def test_if_scan_properties(backend, case):
    T, shape, thr, reset, v0, density, seed, split = case
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((T,) + shape, generator=g) * density
    kw = dict(threshold=thr, reset=reset, v0=v0, v_reset=0.0)
    s_ref, v_ref = sk.if_scan(x, backend="reference", return_state=True, **kw)
    s, v = sk.if_scan(x, backend=backend, return_state=True, **kw)
    assert_spikes_match(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)
    # spikes are exactly 0/1 and a chunk split changes nothing
    assert bool(((s == 0) | (s == 1)).all())
    if 0 < split < T:
        s1, v1 = sk.if_scan(x[:split], backend=backend, return_state=True, **kw)
        kw2 = dict(kw, v0=v1)
        s2, v2 = sk.if_scan(x[split:], backend=backend, return_state=True, **kw2)
        assert torch.equal(torch.cat([s1, s2]), s)
        assert torch.equal(v2, v)


@st.composite
def merge_cases(draw):
    T = draw(st.integers(1, 7))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 6)))
    per_channel = draw(st.booleans())
    scale = torch.tensor(draw(st.lists(st.floats(-2.0, 2.0), min_size=shape[1], max_size=shape[1]))) if per_channel else draw(st.floats(-2.0, 2.0))
    thr = draw(st.floats(0.1, 3.0))
    reset = draw(st.sampled_from(["subtract", "zero"]))
    shortcut_dtype = draw(st.sampled_from([torch.float32, torch.uint8, torch.bool]))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**16))
    split = draw(st.integers(0, T))
    return T, shape, scale, thr, reset, shortcut_dtype, density, seed, split


@PROFILE
@given(case=merge_cases())
def test_residual_merge_properties(backend, case):
    T, shape, scale, thr, reset, sdtype, density, seed, split = case
    g = torch.Generator().manual_seed(seed)
    current = torch.rand((T,) + shape, generator=g) - 0.3
    shortcut = (torch.rand((T,) + shape, generator=g) < density).to(sdtype)
    kw = dict(scale=scale, threshold=thr, reset=reset)
    s_ref, v_ref = sk.residual_merge(current, shortcut, backend="reference", return_state=True, **kw)
    s, v = sk.residual_merge(current, shortcut, backend=backend, return_state=True, **kw)
    # shortcut values are 0/1, so scale*shortcut is exact and the sums are bit-identical
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)
    if 0 < split < T:
        s1, v1 = sk.residual_merge(current[:split], shortcut[:split], backend=backend, return_state=True, **kw)
        s2 = sk.residual_merge(current[split:], shortcut[split:], backend=backend, v0=v1, **kw)
        assert torch.equal(torch.cat([s1, s2]), s)


@st.composite
def pool_cases(draw):
    T = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k // 2))
    h = draw(st.integers(k, 9))
    w = draw(st.integers(k, 9))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**16))
    split = draw(st.integers(0, T))
    return T, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), k, stride, pad, density, seed, split


@PROFILE
@given(case=pool_cases())
def test_pool_properties(backend, case):
    T, shape, k, stride, pad, density, seed, split = case
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand((T,) + shape, generator=g) < density).to(torch.float32)
    avg_ref = sk.spike_avg_pool2d(s, k, stride, pad, backend="reference")
    assert torch.equal(sk.spike_avg_pool2d(s, k, stride, pad, backend=backend), avg_ref)
    m_ref, c_ref = sk.spike_max_pool2d(s, k, stride, pad, return_state=True, backend="reference")
    m, c = sk.spike_max_pool2d(s, k, stride, pad, return_state=True, backend=backend)
    assert torch.equal(m, m_ref) and torch.equal(c, c_ref)
    # the gate passes at most one spike per window and step: never more than a plain max-pool
    assert bool((m <= avg_ref.gt(0).to(m.dtype)).all())
    if 0 < split < T:
        m1, c1 = sk.spike_max_pool2d(s[:split], k, stride, pad, return_state=True, backend=backend)
        m2 = sk.spike_max_pool2d(s[split:], k, stride, pad, count=c1, backend=backend)
        assert torch.equal(torch.cat([m1, m2]), m)


@st.composite
def conv_cases(draw):
    T = draw(st.integers(1, 4))
    B = draw(st.integers(1, 2))
    # below, at and past the Numba kernels' 8-channel vectors and 8-bit input groups
    cin, cout = draw(st.sampled_from([1, 2, 3, 4, 8, 9, 17])), draw(st.sampled_from([1, 3, 5, 6, 8, 9, 20]))
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1))
    h, w = draw(st.integers(k, 9)), draw(st.integers(k, 9))
    density = draw(st.floats(0.0, 0.6))
    thr = draw(st.floats(0.2, 2.0))
    reset = draw(st.sampled_from(["subtract", "zero"]))
    seed = draw(st.integers(0, 2**16))
    split = draw(st.integers(0, T))
    res_kind = draw(st.sampled_from(["none", "spikes", "current"]))
    return T, B, cin, cout, k, stride, pad, h, w, density, thr, reset, seed, split, res_kind


@pytest.mark.parametrize("kernel", ["default", "per-pixel", "scatter"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases())
def test_spike_conv_properties(backend, kernel, case):
    """Below the dense switch 0/1 inputs take Numba's gather kernel ("default": the column
    kernel for 3x3 stride-1 convs with the neuron on a CPU with AVX-512 VBMI2, the per-pixel
    gather for the rest); "per-pixel" turns the column kernel off; "scatter" makes the gather
    kernel decline so the scatter kernel (the one analog inputs get) runs instead."""
    if kernel != "default" and backend != "numba":
        pytest.skip("only the Numba backend has the per-pixel and scatter kernels")
    with pytest.MonkeyPatch.context() as mp:
        if kernel == "scatter":
            mp.setattr(numba_gather, "gather", lambda *args: False)
        if kernel == "per-pixel":
            mp.setattr(numba_gather, "COLUMN", False)
        _spike_conv_properties(backend, case)


def _spike_conv_properties(backend, case):
    T, B, cin, cout, k, stride, pad, h, w, density, thr, reset, seed, split, res_kind = case
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(T, B, cin, h, w, generator=g) < density).to(torch.uint8)
    wt = torch.randn(cout, cin, k, k, generator=g) * 0.7
    b = torch.randn(cout, generator=g) * 0.2
    out_shape = (T, B, cout, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
    res = {"none": None,
           "spikes": (torch.rand(out_shape, generator=g) < 0.3).to(torch.uint8),
           "current": torch.randn(out_shape, generator=g) * 0.3}[res_kind]
    conv = dict(stride=stride, padding=pad, residual=res, residual_scale=0.7)
    kw = dict(conv, threshold=thr, reset=reset)
    cur = sk.spike_conv2d(s, wt, b, **conv, neuron=False, backend="reference")
    assert_close(sk.spike_conv2d(s, wt, b, **conv, neuron=False, backend=backend), cur,
                 rtol=1e-5, atol=1e-5, name="currents")
    s_ref = sk.spike_conv2d(s, wt, b, backend="reference", **kw)
    out, v = sk.spike_conv2d(s, wt, b, backend=backend, return_state=True, **kw)
    assert_spikes_match(out, s_ref, membrane_trace(cur, thr, None, reset), threshold=thr)
    if 0 < split < T:
        first = dict(kw, residual=None if res is None else res[:split])
        second = dict(kw, residual=None if res is None else res[split:])
        o1, v1 = sk.spike_conv2d(s[:split], wt, b, backend=backend, return_state=True, **first)
        o2 = sk.spike_conv2d(s[split:], wt, b, backend=backend, v0=v1, **second)
        # above the dense-path density the conv runs on batches of a different size, so
        # near-threshold flips are possible; everything else must match
        assert_spikes_match(torch.cat([o1, o2]), s_ref, membrane_trace(cur, thr, None, reset), threshold=thr)
