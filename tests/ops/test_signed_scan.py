import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikekernels as sk
from spikekernels.testing import assert_close

# (T, shape after T): T=1, primes, odd sizes, sizes that are not multiples of any block
SHAPES = [
    (1, (2, 3, 7, 7)),
    (5, (3, 5)),
    (7, (2, 3, 7, 7)),
    (13, (1, 17, 11)),
    (4, (3, 2, 45, 47)),  # N = 12690: crosses Numba's 2048 and Triton's 1024 blocks
]
IDS = [f"T{t}-{'x'.join(map(str, s))}" for t, s in SHAPES]


def _currents(T, shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((T,) + shape, generator=g) * 0.8).to(dtype)


def _run(x, backend, **kw):
    return sk.signed_scan(x, backend=backend, return_state=True, **kw)


def _equal_state(a, b):
    assert_close(a[0], b[0], rtol=0, atol=0, name="membrane")
    assert a[1].dtype == torch.int32 and torch.equal(a[1], b[1])


@pytest.mark.parametrize("T,shape", SHAPES, ids=IDS)
def test_matches_reference(backend, T, shape):
    x = _currents(T, shape)
    s_ref, st_ref = _run(x, "reference", threshold=0.7)
    s, st = _run(x, backend, threshold=0.7)
    assert s.dtype == x.dtype and s.shape == x.shape
    # every backend does the same float32 operations in the same order: bit-identical
    assert torch.equal(s, s_ref)
    _equal_state(st, st_ref)
    if x.numel() > 1000:
        assert set(s.unique().tolist()) == {-1, 0, 1}


@pytest.mark.parametrize("which", ["reference", "kernel"])
def test_hand_checked(backend, which):
    backend = "reference" if which == "reference" else backend
    # θ = 1, v0 = 0.5, m0 = 0
    x = torch.tensor([-2.0, 0.7, -1.0, -0.2, 2.0, -2.5, 0.0, -1.0]).view(8, 1, 1)
    # membrane after integrating -> spike (membrane after reset, m):
    # -1.5 -> 0, m = 0 blocks the negative spike (-1.5, 0); -0.8 -> 0 (-0.8, 0);
    # -1.8 -> 0 (-1.8, 0); -2.0 -> 0 (-2.0, 0); 0.0 -> 0 (0.0, 0); -2.5 -> 0 (-2.5, 0);
    # -2.5 -> 0 (-2.5, 0); -3.5 -> 0 (-3.5, 0): no positive spike was ever sent
    s, (v, m) = _run(x, backend, threshold=1.0)
    assert s.flatten().tolist() == [0] * 8 and v.item() == -3.5 and m.item() == 0
    x = torch.tensor([2.5, 0.0, -1.0, -3.0, -1.0, 0.25]).view(6, 1, 1)
    # 3.0 -> +1 (2.0, 1); 2.0 -> +1 (1.0, 2); 0.0 -> 0 (0.0, 2); -3.0 -> -1 (-2.0, 1);
    # -3.0 -> -1 (-2.0, 0); -1.75 -> 0, m = 0 (-1.75, 0)
    s, (v, m) = _run(x, backend, threshold=1.0)
    assert s.flatten().tolist() == [1, 1, 0, -1, -1, 0]
    assert v.item() == -1.75 and m.item() == 0
    # the negative side fires on a tie too: 2.0 -> +1 (1.0, 1); -1.0 -> -1, a tie (0.0, 0)
    s, (v, m) = _run(torch.tensor([1.5, -2.0]).view(2, 1), backend, threshold=1.0)
    assert s.flatten().tolist() == [1, -1] and v.item() == 0.0 and m.item() == 0


def test_net_count_never_negative_and_tracks_relu(backend):
    # currents with |x| < θ (no rate saturation), with a per-neuron drift up or down
    g = torch.Generator().manual_seed(7)
    thr = 0.5
    drift = torch.rand(3, 4, 9, generator=g) * 0.2 - 0.1
    x = (torch.rand(40, 3, 4, 9, generator=g) * 0.8 - 0.4 + drift).clamp(-0.49, 0.49)
    s, (v, m) = _run(x, backend, threshold=thr)
    csum = s.to(torch.int32).cumsum(0)
    assert bool((csum >= 0).all())
    assert torch.equal(csum[-1], m)
    # charge is conserved: θ·(net spikes) + v = v0 + Σx
    total = x.double().sum(0) + thr / 2
    assert_close(thr * m.double() + v.double(), total, rtol=0, atol=1e-4)
    # with |x| < θ the membrane ends in (-θ, θ) while m > 0 and below θ when m = 0, so the
    # output θ·m is ReLU of the summed input within one θ; both signs really occur
    assert bool(((thr * m.double() - total.clamp(min=0)).abs() < thr + 1e-4).all())
    assert bool((m == 0).any()) and bool((m > 3).any()) and bool((s == -1).any())


@pytest.mark.parametrize("T,shape", SHAPES[1:], ids=IDS[1:])
def test_per_channel_threshold_and_given_state(backend, T, shape):
    x = _currents(T, shape, seed=1)
    thr = torch.linspace(0.3, 1.5, shape[1])
    g = torch.Generator().manual_seed(2)
    state = (torch.rand(shape, generator=g) - 0.5, torch.randint(0, 3, shape, generator=g, dtype=torch.int32))
    s_ref, st_ref = _run(x, "reference", threshold=thr, v0=state)
    s, st = _run(x, backend, threshold=thr, v0=state)
    assert torch.equal(s, s_ref)
    _equal_state(st, st_ref)
    # each channel really uses its own threshold; the given memory m really matters
    assert not torch.equal(s, _run(x, backend, threshold=1.0, v0=state)[0])
    assert not torch.equal(s, _run(x, backend, threshold=thr, v0=state[0])[0])


def test_default_state(backend):
    thr = 2.0
    x = torch.full((1, 4, 3), thr / 2 - 1e-3)
    s, (v, m) = _run(x, backend, threshold=thr)
    assert s.sum() == 0 and torch.equal(m, torch.zeros(4, 3, dtype=torch.int32))
    # v0 = θ/2: one step of θ/2 is a tie and fires
    assert bool((sk.signed_scan(x + 1e-3, threshold=thr, backend=backend) == 1).all())


@pytest.mark.parametrize("spike_dtype", [torch.int8, torch.float16, torch.bfloat16, torch.float32])
def test_spike_dtype(backend, spike_dtype):
    x = _currents(6, (2, 3, 5, 5))
    s_ref = sk.signed_scan(x, backend="reference")
    s = sk.signed_scan(x, backend=backend, spike_dtype=spike_dtype)
    assert s.dtype == spike_dtype
    assert torch.equal(s.to(torch.float32), s_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(backend, dtype):
    x = _currents(9, (2, 3, 4), dtype=dtype)
    s_ref, st_ref = _run(x, "reference")
    s, st = _run(x, backend)
    assert s.dtype == dtype and st[0].dtype == torch.float32
    assert torch.equal(s, s_ref)
    _equal_state(st, st_ref)
    _equal_state(st, _run(x.float(), backend)[1])


@pytest.mark.parametrize("T", [1, 11])
def test_constant_current_is_not_copied(backend, T):
    c = _currents(1, (2, 3, 6, 5))[0]
    x = c.expand(T, *c.shape)
    s_ref, st_ref = _run(x.contiguous(), "reference", threshold=0.5)
    s, st = _run(x, backend, threshold=0.5)
    assert torch.equal(s, s_ref)
    _equal_state(st, st_ref)


@pytest.mark.parametrize("split", [1, 4, 9])
def test_chunked_equals_whole(backend, split):
    x = _currents(10, (2, 3, 7))
    s_all, st_all = _run(x, backend, threshold=0.6)
    s1, st1 = _run(x[:split], backend, threshold=0.6)
    s2, st2 = _run(x[split:], backend, threshold=0.6, v0=st1)
    assert torch.equal(torch.cat([s1, s2]), s_all)
    assert torch.equal(st2[0], st_all[0]) and torch.equal(st2[1], st_all[1])


def test_given_state_is_not_modified(backend):
    x = _currents(4, (2, 3))
    v0, m0 = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.int32)
    _run(x, backend, v0=(v0, m0))
    assert torch.equal(v0, torch.zeros(2, 3)) and torch.equal(m0, torch.ones(2, 3, dtype=torch.int32))


def test_bad_arguments_name_the_argument():
    x = torch.rand(2, 3, 4)
    with pytest.raises(TypeError, match="spike_dtype=torch.uint8 is not accepted by signed_scan"):
        sk.signed_scan(x, spike_dtype=torch.uint8)
    with pytest.raises(ValueError, match="threshold must be finite and > 0"):
        sk.signed_scan(x, threshold=-1.0)
    with pytest.raises(ValueError, match="pair"):
        sk.signed_scan(x, v0=(torch.zeros(3, 4),))
    with pytest.raises(TypeError, match="m must be an integer tensor"):
        sk.signed_scan(x, v0=(torch.zeros(3, 4), torch.zeros(3, 4)))
    with pytest.raises(ValueError, match="m must be >= 0"):
        sk.signed_scan(x, v0=(torch.zeros(3, 4), -torch.ones(3, 4, dtype=torch.int32)))
    with pytest.raises(ValueError, match="m has shape"):
        sk.signed_scan(x, v0=(torch.zeros(3, 4), torch.zeros(5, dtype=torch.int32)))
    with pytest.raises(ValueError, match="v is None"):
        sk.signed_scan(x, v0=(None, torch.zeros(3, 4, dtype=torch.int32)))


def test_inference_only():
    x = torch.randn(3, 2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="signed_scan is inference only.*x requires grad"):
        sk.signed_scan(x)
    with pytest.raises(RuntimeError, match="v0 requires grad"):
        sk.signed_scan(x.detach(), v0=(torch.zeros(2, 4, requires_grad=True), torch.zeros(2, 4, dtype=torch.int32)))
    with torch.inference_mode():
        assert sk.signed_scan(x).shape == x.shape


@st.composite
def signed_cases(draw):
    T = draw(st.integers(1, 9))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=4)))
    if len(shape) >= 2 and draw(st.booleans()):
        thr = torch.tensor(draw(st.lists(st.floats(0.05, 4.0), min_size=shape[1], max_size=shape[1])))
    else:
        thr = draw(st.floats(0.05, 4.0))
    v0 = draw(st.one_of(st.none(), st.floats(-2.0, 2.0)))
    m0 = draw(st.one_of(st.none(), st.integers(0, 3)))
    scale = draw(st.floats(0.0, 3.0))
    return T, shape, thr, v0, m0, scale, draw(st.integers(0, 2**16)), draw(st.integers(0, T))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=signed_cases())
def test_properties(backend, case):
    T, shape, thr, v0, m0, scale, seed, split = case
    x = torch.randn((T,) + shape, generator=torch.Generator().manual_seed(seed)) * scale
    if m0 is not None:
        v0 = (torch.full(shape, 0.0 if v0 is None else v0), torch.full(shape, m0, dtype=torch.int32))
    kw = dict(threshold=thr, v0=v0)
    s_ref, (v_ref, m_ref) = _run(x, "reference", **kw)
    s, (v, m) = _run(x, backend, **kw)
    assert torch.equal(s, s_ref)
    assert torch.equal(v, v_ref) and torch.equal(m, m_ref)
    # spikes are -1/0/+1 and the net count m = m0 + Σ s never goes below 0
    assert bool(((s == -1) | (s == 0) | (s == 1)).all())
    csum = s.to(torch.int32).cumsum(0) + (0 if m0 is None else m0)
    assert bool((csum >= 0).all()) and torch.equal(csum[-1], m)
    if 0 < split < T:
        s1, st1 = _run(x[:split], backend, **kw)
        s2, (v2, m2) = _run(x[split:], backend, **dict(kw, v0=st1))
        assert torch.equal(torch.cat([s1, s2]), s)
        assert torch.equal(v2, v) and torch.equal(m2, m)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton on CUDA tensors)")
@pytest.mark.parametrize("T,shape", [(1, (2, 3, 7, 7)), (13, (3, 17, 11, 5)), (64, (8, 16, 32, 32))])
def test_cuda_matches_reference(T, shape):
    x = _currents(T, shape, seed=6)
    thr = torch.linspace(0.3, 1.1, shape[1])
    s_ref, (v_ref, m_ref) = _run(x, "reference", threshold=thr)
    s, (v, m) = _run(x.cuda(), "triton", threshold=thr.cuda(), spike_dtype=torch.int8)
    assert torch.equal(s.cpu().float(), s_ref)
    assert torch.equal(v.cpu(), v_ref) and torch.equal(m.cpu(), m_ref)
