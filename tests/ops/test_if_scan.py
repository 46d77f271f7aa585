import pytest
import torch

import spikekernels as sk
from spikekernels.testing import assert_close, assert_spikes_match, membrane_trace

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
    return (torch.rand((T,) + shape, generator=g) * 0.9 - 0.2).to(dtype)


def _run(x, backend, **kw):
    return sk.if_scan(x, backend=backend, return_state=True, **kw)


@pytest.mark.parametrize("T,shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_matches_reference(backend, T, shape, reset):
    x = _currents(T, shape)
    kw = dict(threshold=0.7, reset=reset, v_reset=-0.1 if reset == "zero" else 0.0)
    s_ref, v_ref = _run(x, "reference", **kw)
    s, v = _run(x, backend, **kw)
    assert s.dtype == x.dtype and s.shape == x.shape
    assert_spikes_match(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0, name="membrane")
    assert 0 < s.sum() < s.numel()


@pytest.mark.parametrize("T,shape", SHAPES[1:], ids=IDS[1:])
def test_per_channel_threshold_and_given_v0(backend, T, shape):
    x = _currents(T, shape, seed=1)
    if len(shape) < 2:
        pytest.skip("no channel dim")
    thr = torch.linspace(0.3, 1.5, shape[1])
    v0 = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    s_ref, v_ref = _run(x, "reference", threshold=thr, v0=v0)
    s, v = _run(x, backend, threshold=thr, v0=v0)
    assert_spikes_match(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)
    # each channel really uses its own threshold: a rerun with a scalar one differs
    assert not torch.equal(s, _run(x, backend, threshold=1.0, v0=v0)[0])


def test_default_v0_is_half_threshold(backend):
    # one step of zero current fires only if v0 >= θ; a current of θ/2 - ε must not fire
    thr = 2.0
    x = torch.full((1, 4, 3), thr / 2 - 1e-3)
    assert sk.if_scan(x, threshold=thr, backend=backend).sum() == 0
    x = torch.full((1, 4, 3), thr / 2)
    assert sk.if_scan(x, threshold=thr, backend=backend).sum() == 12  # a tie fires


@pytest.mark.parametrize("spike_dtype", [torch.uint8, torch.bool, torch.float32])
def test_spike_dtype(backend, spike_dtype):
    x = _currents(6, (2, 3, 5, 5))
    s_ref = sk.if_scan(x, backend="reference")
    s = sk.if_scan(x, backend=backend, spike_dtype=spike_dtype)
    assert s.dtype == spike_dtype
    assert torch.equal(s.to(torch.float32), s_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_input_dtypes_accumulate_in_float32(backend, dtype):
    x = _currents(9, (2, 3, 4), dtype=dtype)
    s_ref, v_ref = _run(x, "reference")
    s, v = _run(x, backend)
    assert s.dtype == dtype and v.dtype == torch.float32
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)


@pytest.mark.parametrize("T", [1, 11])
def test_constant_current_is_not_copied(backend, T):
    c = _currents(1, (2, 3, 6, 5))[0]
    x = c.expand(T, *c.shape)
    assert T == 1 or x.stride(0) == 0
    s_ref, v_ref = _run(x.contiguous(), "reference", threshold=0.5)
    s, v = _run(x, backend, threshold=0.5)
    assert torch.equal(s, s_ref)
    assert_close(v, v_ref, rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 4, 9])
def test_chunked_equals_whole(backend, split):
    x = _currents(10, (2, 3, 7))
    s_all, v_all = _run(x, backend, threshold=0.6)
    s1, v1 = _run(x[:split], backend, threshold=0.6)
    s2, v2 = _run(x[split:], backend, threshold=0.6, v0=v1)
    assert torch.equal(torch.cat([s1, s2]), s_all)
    assert torch.equal(v2, v_all)


@pytest.mark.parametrize("T,shape", [(7, (2, 3, 7, 7)), (4, (3, 2, 45, 47)), (5, (2, 4))],
                         ids=["T7-2x3x7x7", "T4-crosses-blocks", "T5-features"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("constant", [False, True], ids=["varying", "expanded"])
def test_step_bias_equals_the_bias_added_to_the_current(backend, T, shape, reset, constant):
    # v += (x[t] + β[t, c]) in the kernel: bit for bit the current x + β given whole, also for a
    # current constant over T passed as an expand (the stem of a converted network); numba's
    # block of 2048 neurons and Triton's 1024 fall inside channels on the 45x47 maps
    x = _currents(1 if constant else T, shape, seed=3)
    x = x.expand(T, *shape) if constant else x
    C = shape[1]
    g = torch.Generator().manual_seed(4)
    beta = torch.randn(T, C, generator=g) * 0.3
    whole = x + beta.view(T, 1, C, *([1] * (len(shape) - 2)))
    s_ref, v_ref = _run(whole.contiguous(), "reference", threshold=0.6, reset=reset)
    for be in ("reference", backend):
        s, v = _run(x, be, threshold=0.6, reset=reset, step_bias=beta)
        assert torch.equal(s, s_ref), be
        assert torch.equal(v, v_ref), be
    # a split call continues exactly with the rows of its own steps
    k = T // 2
    s1, v1 = _run(x[:k], backend, threshold=0.6, reset=reset, step_bias=beta[:k])
    s2, v2 = _run(x[k:], backend, threshold=0.6, reset=reset, step_bias=beta[k:], v0=v1)
    assert torch.equal(torch.cat([s1, s2]), s_ref) and torch.equal(v2, v_ref)


def test_step_bias_gradient_through_the_materialized_sum():
    x = _currents(5, (2, 3, 4)).requires_grad_()
    beta = (torch.randn(5, 3) * 0.2).requires_grad_()
    s, v = sk.if_scan(x, 0.5, step_bias=beta, return_state=True, spike_dtype=torch.float32)
    (s.sum() + v.sum()).backward()
    x2 = x.detach().clone().requires_grad_()
    beta2 = beta.detach().clone().requires_grad_()
    s2, v2 = sk.if_scan(x2 + beta2.view(5, 1, 3, 1), 0.5, return_state=True, spike_dtype=torch.float32)
    (s2.sum() + v2.sum()).backward()
    assert torch.equal(s, s2) and torch.equal(v, v2)
    assert torch.equal(x.grad, x2.grad) and torch.equal(beta.grad, beta2.grad)
    assert beta.grad.abs().sum() > 0


def test_step_bias_errors():
    x = _currents(4, (2, 3, 5))
    with pytest.raises(ValueError, match=r"step_bias has shape \(4, 5\); expected \[T, C\] = \[4, 3\]"):
        sk.if_scan(x, step_bias=torch.zeros(4, 5))
    with pytest.raises(TypeError, match="step_bias must be a torch.Tensor"):
        sk.if_scan(x, step_bias=[0.0] * 3)
    with pytest.raises(ValueError, match="step_bias contains NaN or Inf"):
        sk.if_scan(x, step_bias=torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match=r"step_bias needs x with a channel dim \(dim 2\): x has shape \(4, 2\)"):
        sk.if_scan(_currents(4, (2,)), step_bias=torch.zeros(4, 2))


def test_given_state_is_not_modified(backend):
    x = _currents(4, (2, 3))
    v0 = torch.zeros(2, 3)
    _run(x, backend, v0=v0)
    assert torch.equal(v0, torch.zeros(2, 3))


def test_near_threshold_helper_counts_flips():
    x = _currents(8, (2, 3, 5))
    s = sk.if_scan(x, backend="reference")
    flipped = s.clone()
    flipped[0, 0, 0, 0] = 1 - flipped[0, 0, 0, 0]
    trace = membrane_trace(x)
    with pytest.raises(AssertionError, match="first differs"):
        assert_spikes_match(flipped, s, membrane=trace)
    # move that neuron's membrane onto the threshold: now the flip is tolerated and counted
    trace[0, 0, 0, 0] = 1.0
    assert assert_spikes_match(flipped, s, membrane=trace) == 1


def test_float64_trace_matches_reference_decisions():
    x = _currents(12, (3, 4, 5), seed=5)
    s = sk.if_scan(x, backend="reference")
    trace = membrane_trace(x)
    assert torch.equal((trace >= 1.0).to(s.dtype), s)
