import pytest
import torch
import torch.nn.functional as F

import spikekernels as sk

# (T, B, C, H, W): T=1, primes, odd sizes; 2*3*23*29 outputs cross Triton's pool blocks
SHAPES = [(1, 2, 3, 7, 7), (3, 1, 2, 9, 11), (2, 2, 3, 23, 29)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]
# (kernel_size, stride, padding)
GEOMS = [(2, None, 0), (2, 1, 0), (2, 2, 1), (3, 1, 1), (3, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))]
GEOM_IDS = [f"k{k}-s{s}-p{p}" for k, s, p in GEOMS]


def _spikes(shape, seed=0, dtype=torch.float32, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < p).to(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("k,stride,pad", GEOMS, ids=GEOM_IDS)
def test_avg_pool_matches_reference(backend, shape, k, stride, pad):
    s = _spikes(shape)
    ref = sk.spike_avg_pool2d(s, k, stride, pad, backend="reference")
    out = sk.spike_avg_pool2d(s, k, stride, pad, backend=backend)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)
    # the reference is torch's average pooling (count_include_pad=True) on 0/1 spikes
    T, B = shape[:2]
    expected = F.avg_pool2d(s.flatten(0, 1), k, stride, pad).unflatten(0, (T, B))
    assert torch.equal(ref, expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float16, torch.float64])
def test_avg_pool_spike_dtypes(backend, dtype):
    s = _spikes((3, 2, 3, 7, 9), seed=1)
    ref = sk.spike_avg_pool2d(s, 3, 2, 1, backend="reference")
    assert torch.equal(sk.spike_avg_pool2d(s.to(dtype), 3, 2, 1, backend=backend), ref)


def test_avg_pool_of_currents(backend):
    # float currents also pool; all backends add in the same order, so results are identical
    x = torch.randn(2, 2, 3, 9, 7, generator=torch.Generator().manual_seed(2))
    ref = sk.spike_avg_pool2d(x, 3, 1, 1, backend="reference")
    assert torch.equal(sk.spike_avg_pool2d(x, 3, 1, 1, backend=backend), ref)
    torch.testing.assert_close(ref, F.avg_pool2d(x.flatten(0, 1), 3, 1, 1).unflatten(0, (2, 2)))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 3, 5, 7, 7), (3, 2, 3, 8, 8), (1, 2, 17, 3, 5)],
                         ids=["1x1x1x1x1", "2x3x5x7x7", "3x2x3x8x8", "1x2x17x3x5"])
def test_global_avg_pool(backend, shape):
    s = _spikes(shape, seed=3, dtype=torch.uint8)
    out = sk.global_avg_pool(s, backend=backend)
    assert out.shape == shape[:3] and out.dtype == torch.float32
    assert torch.equal(out, sk.global_avg_pool(s, backend="reference"))
    assert torch.equal(out, s.float().sum((-2, -1)) / (shape[-1] * shape[-2]))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("k,stride,pad", GEOMS, ids=GEOM_IDS)
def test_max_pool_matches_reference(backend, shape, k, stride, pad):
    s = _spikes(shape, seed=4)
    ref, c_ref = sk.spike_max_pool2d(s, k, stride, pad, return_state=True, backend="reference")
    out, cnt = sk.spike_max_pool2d(s, k, stride, pad, return_state=True, backend=backend)
    assert out.dtype == s.dtype
    assert torch.equal(out, ref)
    assert torch.equal(cnt, c_ref)
    assert torch.equal(cnt, s.sum(0))
    # a gate passes at most what a plain max pool of this step would
    T, B = shape[:2]
    assert bool((out <= F.max_pool2d(s.flatten(0, 1), k, stride, pad).unflatten(0, (T, B))).all())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float16, torch.float64])
def test_max_pool_spike_dtypes(backend, dtype):
    s = _spikes((5, 2, 3, 7, 9), seed=5)
    ref = sk.spike_max_pool2d(s, 3, 2, 1, backend="reference")
    out = sk.spike_max_pool2d(s.to(dtype), 3, 2, 1, backend=backend)
    assert out.dtype == dtype
    assert torch.equal(out.float(), ref)


def test_max_pool_gate_and_ties_by_hand(backend):
    # one 2x2 window over 5 steps; counts after each step and the winner:
    # t0 [[0,1],[0,0]] -> (0,1) passes its spike           -> 1
    # t1 [[1,1],[0,0]] tie -> first in row-major: (0,0)     -> 1
    # t2 [[1,2],[1,0]] -> (0,1)                             -> 1
    # t3 [[1,2],[2,0]] tie (0,1)/(1,0) -> (0,1), silent now -> 0 (the spike of (1,0) is gated)
    # t4 [[1,2],[3,0]] -> (1,0)                             -> 1
    steps = [[[0, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 1], [1, 0]], [[0, 0], [1, 0]], [[0, 0], [1, 0]]]
    s = torch.tensor(steps, dtype=torch.float32).view(5, 1, 1, 2, 2)
    out, cnt = sk.spike_max_pool2d(s, 2, return_state=True, backend=backend)
    assert out.flatten().tolist() == [1, 1, 1, 0, 1]
    assert cnt.view(2, 2).tolist() == [[1, 2], [3, 0]]
    # counts all equal after the step: the first input of the window is chosen, though it
    # is the only one silent now
    s = torch.tensor([[[0, 1], [1, 1]]], dtype=torch.float32).view(1, 1, 1, 2, 2)
    count = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    assert sk.spike_max_pool2d(s, 2, count=count, backend=backend).item() == 0


def test_max_pool_padding_never_wins(backend):
    # real counts are negative (a given start count); padding, if it counted as 0, would win
    s = torch.ones(2, 1, 1, 2, 2)
    count = torch.full((1, 1, 2, 2), -5.0)
    out = sk.spike_max_pool2d(s, 3, 1, 1, count=count, backend=backend)
    assert out.shape == (2, 1, 1, 2, 2)
    assert bool((out == 1).all())


@pytest.mark.parametrize("split", [1, 3, 6])
def test_max_pool_chunked_equals_whole(backend, split):
    s = _spikes((7, 2, 3, 9, 8), seed=6, dtype=torch.uint8)
    whole, c_whole = sk.spike_max_pool2d(s, 3, 2, 1, return_state=True, backend=backend)
    a, c1 = sk.spike_max_pool2d(s[:split], 3, 2, 1, return_state=True, backend=backend)
    b, c2 = sk.spike_max_pool2d(s[split:], 3, 2, 1, count=c1, return_state=True, backend=backend)
    assert torch.equal(torch.cat([a, b]), whole)
    assert torch.equal(c2, c_whole)


def test_max_pool_given_count_is_not_modified(backend):
    s = _spikes((3, 1, 2, 4, 4), seed=7)
    count = torch.zeros(1, 2, 4, 4)
    sk.spike_max_pool2d(s, 2, count=count, backend=backend)
    assert torch.equal(count, torch.zeros(1, 2, 4, 4))


def test_bad_arguments():
    s = _spikes((2, 1, 2, 6, 6))
    for op in (sk.spike_avg_pool2d, sk.spike_max_pool2d):
        with pytest.raises(TypeError, match="s has dtype torch.int64"):
            op(s.long(), 2)
        with pytest.raises(TypeError, match="s must be a torch.Tensor"):
            op(s.numpy(), 2)
        with pytest.raises(ValueError, match=r"expected at least 5 dims laid out \[T, B, C, H, W\]"):
            op(s[0], 2)
        with pytest.raises(ValueError, match="expected 5 dims"):
            op(s.unsqueeze(0), 2)
        with pytest.raises(ValueError, match="kernel_size=0 must be >= 1"):
            op(s, 0)
        with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints"):
            op(s, 2.0)
        with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints"):
            op(s, (2, 2, 2))
        with pytest.raises(ValueError, match="stride=0 must be >= 1"):
            op(s, 2, 0)
        with pytest.raises(ValueError, match="padding=-1 must be >= 0"):
            op(s, 2, 1, -1)
        with pytest.raises(ValueError, match="padding=2 is too large for kernel_size=3"):
            op(s, 3, 1, 2)
        with pytest.raises(ValueError, match="does not fit the input of size 6x6"):
            op(s, 7)
    with pytest.raises(ValueError, match="expected 5 dims"):
        sk.global_avg_pool(s.unsqueeze(0))
    with pytest.raises(TypeError, match="s has dtype torch.int32"):
        sk.global_avg_pool(s.int())
    with pytest.raises(ValueError, match=r"count has shape \(1, 2, 6\); expected \(1, 2, 6, 6\)"):
        sk.spike_max_pool2d(s, 2, count=torch.zeros(1, 2, 6))
    with pytest.raises(TypeError, match="count must be None or a tensor"):
        sk.spike_max_pool2d(s, 2, count=0)
    with pytest.raises(ValueError, match="count contains NaN"):
        sk.spike_max_pool2d(s, 2, count=torch.full((1, 2, 6, 6), float("nan")))
