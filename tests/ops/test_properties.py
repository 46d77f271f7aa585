"""Property-based tests: random shapes, thresholds, resets, v0, densities and chunk splits,
every backend against the reference. Bounded by max_examples so the suite stays fast."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikekernels as sk
from spikekernels.testing import assert_close, assert_spikes_match

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
