"""Shared argument checks: the finite-state test every chunked call runs on its membrane."""

import pytest
import torch

import spikekernels as sk
from spikekernels._checks import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize(
    "fill,expected",
    [
        (None, True),
        ("nan", False),
        ("inf", False),
        ("-inf", False),
        ("both", False),  # +inf and -inf: the sum is NaN
        ("huge", True),  # finite values whose sum overflows: the elementwise test decides
    ],
)
def test_all_finite(dtype, fill, expected):
    t = torch.randn(4097, dtype=dtype)
    if fill == "both":
        t[5], t[4000] = float("inf"), -float("inf")
    elif fill == "huge":
        big = torch.finfo(dtype).max
        t[:8] = big
    elif fill is not None:
        t[1234] = float(fill)
    assert all_finite(t) is expected
    assert all_finite(t[::3]) is bool(torch.isfinite(t[::3]).all())  # not contiguous


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_state_with_one_bad_value_is_refused(backend, bad):
    x = torch.rand(3, 2, 4, 6, 6)
    _, v = sk.if_scan(x, return_state=True, backend=backend)
    v = v.clone()
    v[1, 2, 3, 4] = float(bad)
    with pytest.raises(ValueError, match="v0 contains NaN or Inf"):
        sk.if_scan(x, v0=v, backend=backend)
    s = (torch.rand(3, 2, 4, 6, 6) < 0.3).to(torch.uint8)
    w = torch.randn(5, 4, 3, 3)
    _, vc = sk.spike_conv2d(s, w, padding=1, return_state=True, backend=backend)
    vc = vc.clone()
    vc.view(-1)[17] = float(bad)
    with pytest.raises(ValueError, match="v0 contains NaN or Inf"):
        sk.spike_conv2d(s, w, padding=1, v0=vc, backend=backend)


def test_number_vector_is_cached_and_keeps_the_sign_of_zero():
    """A number on the CPU becomes one shared float32 [1] tensor per value; -0.0 stays apart
    from 0.0 (a residual scale of -0.0 must not turn into +0.0), bad values still raise."""
    from spikekernels._checks import channel_vector

    cpu = torch.device("cpu")
    a = channel_vector(0.75, "threshold", 4, cpu, positive=True)
    assert a is channel_vector(0.75, "threshold", 4, cpu, positive=True)
    assert a.dtype == torch.float32 and a.tolist() == [0.75]
    neg = channel_vector(-0.0, "residual_scale", 4, cpu, positive=False)
    pos = channel_vector(0.0, "residual_scale", 4, cpu, positive=False)
    assert torch.signbit(neg).item() and not torch.signbit(pos).item()
    assert channel_vector(2, "threshold", 4, cpu, positive=True).tolist() == [2.0]
    with pytest.raises(ValueError, match=r"threshold must be finite and > 0, got \[0.0\]"):
        channel_vector(0, "threshold", 4, cpu, positive=True)
    with pytest.raises(ValueError, match="residual_scale=nan must be finite"):
        channel_vector(float("nan"), "residual_scale", 4, cpu, positive=False)
