import pytest
import torch

import spikekernels as sk
from spikekernels.testing import assert_close, assert_spikes_match

# (T, shape after T): T=1, primes, odd sizes, sizes that are not multiples of any block
SHAPES = [
    (1, (2, 3, 7, 7)),
    (5, (3, 5)),
    (7, (2, 3, 7, 7)),
    (13, (1, 17, 11)),
    (4, (3, 2, 45, 47)),  # N = 12690: crosses Numba's 2048 and Triton's 1024 blocks
]
IDS = [f"T{t}-{'x'.join(map(str, s))}" for t, s in SHAPES]


def _inputs(T, shape, seed=0, shortcut_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((T,) + shape, generator=g) * 0.8 - 0.3
    y = (torch.rand((T,) + shape, generator=g) < 0.3).to(shortcut_dtype)
    return x, y


def _run(x, y, backend, **kw):
    return sk.residual_merge(x, y, backend=backend, return_state=True, **kw)


@pytest.mark.parametrize("T,shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_matches_reference(backend, T, shape, reset):
    x, y = _inputs(T, shape)
    kw = dict(scale=0.45, threshold=0.7, reset=reset, v_reset=-0.1 if reset == "zero" else 0.0)
    s_ref, v_ref = _run(x, y, "reference", **kw)
    s, v = _run(x, y, backend, **kw)
    assert s.dtype == x.dtype and s.shape == x.shape and v.shape == x.shape[1:]
    assert_spikes_match(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0, name="membrane")
    assert 0 < s.sum() < s.numel()


@pytest.mark.parametrize("T,shape", SHAPES[1:], ids=IDS[1:])
def test_per_channel_scale_threshold_and_given_v0(backend, T, shape):
    x, y = _inputs(T, shape, seed=1)
    C = shape[1]
    thr = torch.linspace(0.3, 1.5, C)
    scale = torch.linspace(1.2, 0.2, C)
    v0 = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    s_ref, v_ref = _run(x, y, "reference", scale=scale, threshold=thr, v0=v0)
    s, v = _run(x, y, backend, scale=scale, threshold=thr, v0=v0)
    assert_spikes_match(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)
    # each channel really uses its own scale: a scalar scale gives another membrane
    _, v_scalar = _run(x, y, backend, scale=float(scale.mean()), threshold=thr, v0=v0)
    assert not torch.equal(v, v_scalar)


def test_scale_weights_the_shortcut_only(backend):
    # with zero branch current the merge is an IF neuron over scale * shortcut (0 + a == a)
    x, y = _inputs(9, (2, 3, 5, 4), seed=3)
    scale = torch.tensor([0.3, 0.9, 1.7])
    s, v = _run(torch.zeros_like(x), y, backend, scale=scale, threshold=0.8)
    s_if, v_if = sk.if_scan(y * scale.view(1, 1, 3, 1, 1), threshold=0.8, return_state=True, backend="reference")
    assert torch.equal(s, s_if) and torch.equal(v, v_if)
    # with scale 0 the shortcut is ignored
    s0, v0 = _run(x, y, backend, scale=0.0, threshold=0.8)
    s_if, v_if = sk.if_scan(x, threshold=0.8, return_state=True, backend="reference")
    assert torch.equal(s0, s_if) and torch.equal(v0, v_if)


def test_default_v0_is_half_threshold(backend):
    thr = 2.0
    x = torch.full((1, 4, 3), thr / 4)
    y = torch.full((1, 4, 3), thr / 4 - 1e-3)
    assert sk.residual_merge(x, y, threshold=thr, backend=backend).sum() == 0
    y = torch.full((1, 4, 3), thr / 4)
    assert sk.residual_merge(x, y, threshold=thr, backend=backend).sum() == 12  # a tie fires


@pytest.mark.parametrize("shortcut_dtype", [torch.float16, torch.float64, torch.uint8, torch.bool])
def test_shortcut_dtypes(backend, shortcut_dtype):
    x, y = _inputs(6, (2, 3, 5, 5), seed=4)
    kw = dict(scale=torch.tensor([0.5, 1.0, 1.5]), threshold=0.9)
    s_ref, v_ref = _run(x, y, "reference", **kw)
    s, v = _run(x, y.to(shortcut_dtype), backend, **kw)
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)


def test_shortcut_currents(backend):
    # the shortcut may carry currents, not only spikes (e.g. a projection conv's output)
    x, _ = _inputs(8, (2, 5, 6), seed=5)
    y = torch.rand(x.shape, generator=torch.Generator().manual_seed(6)) - 0.4
    s_ref, v_ref = _run(x, y, "reference", scale=0.77)
    s, v = _run(x, y, backend, scale=0.77)
    assert_spikes_match(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)


@pytest.mark.parametrize("spike_dtype", [torch.uint8, torch.bool, torch.float32, torch.float16])
def test_spike_dtype(backend, spike_dtype):
    x, y = _inputs(6, (2, 3, 5, 5), seed=7, shortcut_dtype=torch.uint8)
    s_ref = sk.residual_merge(x, y, backend="reference")
    s = sk.residual_merge(x, y, backend=backend, spike_dtype=spike_dtype)
    assert s.dtype == spike_dtype
    assert torch.equal(s.to(torch.float32), s_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_current_dtypes_accumulate_in_float32(backend, dtype):
    x, y = _inputs(9, (2, 3, 4), seed=8)
    s_ref, v_ref = _run(x.to(dtype), y, "reference")
    s, v = _run(x.to(dtype), y, backend)
    assert s.dtype == dtype and v.dtype == torch.float32
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)


@pytest.mark.parametrize("T", [1, 11])
@pytest.mark.parametrize("which", ["current", "shortcut", "both"])
def test_constant_inputs_are_not_copied(backend, T, which):
    x, y = _inputs(T, (2, 3, 6, 5), seed=9)
    if which in ("current", "both"):
        x = x[:1].expand_as(x)
    if which in ("shortcut", "both"):
        y = y[:1].expand_as(y)
    assert T == 1 or (x.stride(0) == 0) == (which != "shortcut")
    s_ref, v_ref = _run(x.contiguous(), y.contiguous(), "reference", scale=0.6, threshold=0.5)
    s, v = _run(x, y, backend, scale=0.6, threshold=0.5)
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 4, 9])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_chunked_equals_whole(backend, split, reset):
    x, y = _inputs(10, (2, 3, 7), seed=10, shortcut_dtype=torch.bool)
    kw = dict(scale=0.7, threshold=0.6, reset=reset)
    s_all, v_all = _run(x, y, backend, **kw)
    s1, v1 = _run(x[:split], y[:split], backend, **kw)
    s2, v2 = _run(x[split:], y[split:], backend, v0=v1, **kw)
    assert torch.equal(torch.cat([s1, s2]), s_all)
    assert torch.equal(v2, v_all)


def test_given_state_is_not_modified(backend):
    x, y = _inputs(4, (2, 3))
    v0 = torch.zeros(2, 3)
    _run(x, y, backend, v0=v0)
    assert torch.equal(v0, torch.zeros(2, 3))


def test_bad_arguments():
    x, y = _inputs(3, (2, 3, 4, 4))
    merge = sk.residual_merge
    with pytest.raises(TypeError, match="current has dtype torch.int64"):
        merge(x.long(), y)
    with pytest.raises(TypeError, match="shortcut has dtype torch.int32"):
        merge(x, y.int())
    with pytest.raises(TypeError, match="current must be a torch.Tensor"):
        merge(x.numpy(), y)
    with pytest.raises(ValueError, match="expected at least 2 dims"):
        merge(x[0, 0, 0, 0], y[0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"shortcut has shape \(3, 2, 3, 4, 3\) but current has"):
        merge(x, y[..., :3])
    with pytest.raises(ValueError, match="threshold must be finite and > 0"):
        merge(x, y, threshold=0.0)
    with pytest.raises(ValueError, match="threshold must be finite and > 0"):
        merge(x, y, threshold=float("nan"))
    with pytest.raises(ValueError, match="per-channel threshold has 2 values"):
        merge(x, y, threshold=torch.ones(2))
    with pytest.raises(ValueError, match="per-channel scale has 4 values"):
        merge(x, y, scale=torch.ones(4))
    with pytest.raises(ValueError, match="scale=inf must be finite"):
        merge(x, y, scale=float("inf"))
    with pytest.raises(ValueError, match="scale must be finite"):
        merge(x, y, scale=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(TypeError, match="scale must be a number or a 1-D tensor"):
        merge(x, y, scale="0.5")
    with pytest.raises(ValueError, match="reset='hard' is not a reset mode"):
        merge(x, y, reset="hard")
    with pytest.raises(ValueError, match="v0 has shape"):
        merge(x, y, v0=torch.zeros(5))
    with pytest.raises(ValueError, match="is not a backend"):
        merge(x, y, backend="cuda")
