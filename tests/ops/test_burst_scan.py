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


def _currents(T, shape, seed=0, dtype=torch.float32, high=2.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((T,) + shape, generator=g) * high - 0.3).to(dtype)


def _run(x, backend, **kw):
    return sk.burst_scan(x, backend=backend, return_state=True, **kw)


def _loop(x, theta, v0, k):
    """Per-neuron float64 burst neuron from the paper's equations: floor(v/θ) clamped to 0..k."""
    v = torch.full(x.shape[1:], v0, dtype=torch.float64)
    out = []
    for t in range(x.shape[0]):
        v = v + x[t].to(torch.float64)
        s = torch.clamp(torch.floor(v / theta), 0, k)
        v = v - theta * s
        out.append(s)
    return torch.stack(out), v


@pytest.mark.parametrize("T,shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_matches_reference(backend, T, shape, k):
    x = _currents(T, shape, high=0.7 * (k + 1))
    s_ref, v_ref = _run(x, "reference", threshold=0.7, max_spikes=k)
    s, v = _run(x, backend, threshold=0.7, max_spikes=k)
    assert s.dtype == x.dtype and s.shape == x.shape
    # every backend does the same float32 operations in the same order: bit-identical
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0, name="membrane")
    # the inputs reach every count 0..k (k > 1 bursts really happen)
    if x.numel() > 1000:
        assert set(s.unique().tolist()) == set(range(k + 1))


def test_reference_follows_the_papers_floor_away_from_ties():
    # dyadic currents and threshold: float32 sums are exact, so floor(v/θ) in float64 agrees
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-8, 40, (11, 4, 3, 5), generator=g).float() / 16
    for k in (1, 2, 3, 7):
        s, v = _run(x, "reference", threshold=0.75, max_spikes=k)
        s64, v64 = _loop(x, 0.75, 0.375, k)
        assert torch.equal(s.double(), s64)
        assert torch.equal(v.double(), v64)


@pytest.mark.parametrize("which", ["reference", "kernel"])
def test_hand_checked(backend, which):
    backend = "reference" if which == "reference" else backend
    # θ = 1, v0 = 0.5, k = 3
    x = torch.tensor([[0.4], [2.6], [0.0], [4.5], [-1.0], [1.0]]).view(6, 1, 1)
    s, v = _run(x, backend, threshold=1.0, max_spikes=3)
    # membrane after integrating -> count (membrane after reset):
    # 0.9 -> 0 (0.9); 3.5 -> 3 (0.5); 0.5 -> 0 (0.5); 5.0 -> 3, clamped (2.0); 1.0 -> 1, a tie (0.0); 1.0 -> 1 (0.0)
    assert s.flatten().tolist() == [0, 3, 0, 3, 1, 1]
    assert v.item() == 0.0


def test_k1_is_if_scan_bit_for_bit(backend):
    x = _currents(9, (2, 3, 45, 47), seed=4, high=1.6)
    thr = torch.tensor([0.4, 0.9, 1.3])
    for v0 in (None, 0.1):
        s_if, v_if = sk.if_scan(x, thr, v0=v0, return_state=True, backend=backend)
        s, v = _run(x, backend, threshold=thr, v0=v0, max_spikes=1)
        assert torch.equal(s, s_if)
        assert torch.equal(v, v_if)


def test_default_v0_is_half_threshold_and_a_tie_fires(backend):
    thr = 2.0
    assert sk.burst_scan(torch.full((1, 4, 3), thr / 2 - 1e-3), thr, backend=backend).sum() == 0
    # v = θ/2 + 3θ/2 = 2θ exactly: two spikes
    s = sk.burst_scan(torch.full((1, 4, 3), 1.5 * thr), thr, max_spikes=4, backend=backend)
    assert bool((s == 2).all())


@pytest.mark.parametrize("T,shape", SHAPES[1:], ids=IDS[1:])
def test_per_channel_threshold_and_given_v0(backend, T, shape):
    x = _currents(T, shape, seed=1)
    thr = torch.linspace(0.3, 1.5, shape[1])
    v0 = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    s_ref, v_ref = _run(x, "reference", threshold=thr, v0=v0, max_spikes=3)
    s, v = _run(x, backend, threshold=thr, v0=v0, max_spikes=3)
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)
    # each channel really uses its own threshold: a rerun with a scalar one differs
    assert not torch.equal(s, _run(x, backend, threshold=1.0, v0=v0, max_spikes=3)[0])


@pytest.mark.parametrize("spike_dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32])
def test_spike_dtype(backend, spike_dtype):
    x = _currents(6, (2, 3, 5, 5))
    s_ref = sk.burst_scan(x, max_spikes=3, backend="reference")
    s = sk.burst_scan(x, max_spikes=3, backend=backend, spike_dtype=spike_dtype)
    assert s.dtype == spike_dtype
    assert torch.equal(s.to(torch.float32), s_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(backend, dtype):
    x = _currents(9, (2, 3, 4), dtype=dtype)
    s_ref, v_ref = _run(x, "reference")
    s, v = _run(x, backend)
    assert s.dtype == dtype and v.dtype == torch.float32
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)
    # the float32 membrane of the float32 copy of the same currents
    assert torch.equal(v, _run(x.float(), backend)[1])


@pytest.mark.parametrize("T", [1, 11])
def test_constant_current_is_not_copied(backend, T):
    c = _currents(1, (2, 3, 6, 5))[0]
    x = c.expand(T, *c.shape)
    s_ref, v_ref = _run(x.contiguous(), "reference", threshold=0.5, max_spikes=3)
    s, v = _run(x, backend, threshold=0.5, max_spikes=3)
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 4, 9])
def test_chunked_equals_whole(backend, split):
    x = _currents(10, (2, 3, 7))
    s_all, v_all = _run(x, backend, threshold=0.6, max_spikes=3)
    s1, v1 = _run(x[:split], backend, threshold=0.6, max_spikes=3)
    s2, v2 = _run(x[split:], backend, threshold=0.6, max_spikes=3, v0=v1)
    assert torch.equal(torch.cat([s1, s2]), s_all)
    assert torch.equal(v2, v_all)


def test_given_state_is_not_modified(backend):
    x = _currents(4, (2, 3))
    v0 = torch.zeros(2, 3)
    _run(x, backend, v0=v0)
    assert torch.equal(v0, torch.zeros(2, 3))


@pytest.mark.parametrize("bad,match", [(0, "max_spikes=0 must be an int >= 1"), (2.0, "max_spikes=2.0"),
                                       (True, "max_spikes=True"), (300, "exceeds 255")])
def test_bad_max_spikes(bad, match):
    with pytest.raises(ValueError, match=match):
        sk.burst_scan(torch.rand(2, 3), max_spikes=bad, spike_dtype=torch.uint8)


def test_bad_arguments_name_the_argument():
    x = torch.rand(2, 3, 4)
    with pytest.raises(TypeError, match="spike_dtype=torch.int8 is not accepted by burst_scan"):
        sk.burst_scan(x, spike_dtype=torch.int8)
    with pytest.raises(TypeError, match="spike_dtype=torch.bool"):
        sk.burst_scan(x, spike_dtype=torch.bool)
    with pytest.raises(ValueError, match="threshold must be finite and > 0"):
        sk.burst_scan(x, threshold=0.0)
    with pytest.raises(ValueError, match="per-channel threshold has 2 values"):
        sk.burst_scan(x, threshold=torch.ones(2))
    with pytest.raises(ValueError, match="v0 has shape"):
        sk.burst_scan(x, v0=torch.zeros(5))
    with pytest.raises(ValueError, match="backend='cuda' is not a backend"):
        sk.burst_scan(x, backend="cuda")


def test_inference_only():
    x = torch.rand(3, 2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="burst_scan is inference only.*x requires grad"):
        sk.burst_scan(x)
    with pytest.raises(RuntimeError, match="threshold requires grad"):
        sk.burst_scan(x.detach(), threshold=torch.ones(4, requires_grad=True))
    with torch.no_grad():
        assert sk.burst_scan(x).shape == x.shape


@st.composite
def burst_cases(draw):
    T = draw(st.integers(1, 9))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=4)))
    if len(shape) >= 2 and draw(st.booleans()):
        thr = torch.tensor(draw(st.lists(st.floats(0.05, 4.0), min_size=shape[1], max_size=shape[1])))
    else:
        thr = draw(st.floats(0.05, 4.0))
    v0 = draw(st.one_of(st.none(), st.floats(-1.0, 2.0)))
    k = draw(st.integers(1, 6))
    density = draw(st.floats(0.0, 6.0))
    return T, shape, thr, v0, k, density, draw(st.integers(0, 2**16)), draw(st.integers(0, T))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=burst_cases())
def test_properties(backend, case):
    T, shape, thr, v0, k, density, seed, split = case
    x = torch.rand((T,) + shape, generator=torch.Generator().manual_seed(seed)) * density - 0.2
    kw = dict(threshold=thr, v0=v0, max_spikes=k)
    s_ref, v_ref = _run(x, "reference", **kw)
    s, v = _run(x, backend, **kw)
    assert torch.equal(s, s_ref)
    assert torch.equal(v, v_ref)
    # counts are integers in 0..k; the membrane stays below θ unless the burst was clamped at k
    assert bool(((s >= 0) & (s <= k) & (s == s.round())).all())
    theta = torch.as_tensor(thr).view(-1, *[1] * (len(shape) - 2)) if isinstance(thr, torch.Tensor) else thr
    # (up to float32 rounding of j·θ and of the reset)
    assert bool(((v < theta * (1 + 1e-5)) | (s[-1] == k)).all())
    if 0 < split < T:
        s1, v1 = _run(x[:split], backend, **kw)
        s2, v2 = _run(x[split:], backend, **dict(kw, v0=v1))
        assert torch.equal(torch.cat([s1, s2]), s)
        assert torch.equal(v2, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton on CUDA tensors)")
@pytest.mark.parametrize("T,shape", [(1, (2, 3, 7, 7)), (13, (3, 17, 11, 5)), (64, (8, 16, 32, 32))])
def test_cuda_matches_reference(T, shape):
    # compiled Triton (not the interpreter): the reset must not be fused into an FMA
    x = _currents(T, shape, seed=6, high=3.0)
    thr = torch.linspace(0.3, 1.1, shape[1])
    s_ref, v_ref = _run(x, "reference", threshold=thr, max_spikes=4)
    s, v = _run(x.cuda(), "triton", threshold=thr.cuda(), max_spikes=4, spike_dtype=torch.uint8)
    assert torch.equal(s.cpu().float(), s_ref)
    assert torch.equal(v.cpu(), v_ref)
