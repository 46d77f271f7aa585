"""Triton kernels on real CUDA tensors against the CPU reference (skipped without a GPU)."""

import pytest
import torch

import spikekernels as sk
from spikekernels.testing import assert_close, assert_spikes_match, membrane_trace

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton on CUDA tensors)")

SHAPES = [(1, (2, 3, 7, 7)), (13, (3, 17, 11, 5)), (64, (8, 16, 32, 32))]


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("T,shape", SHAPES)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_if_scan_cuda(T, shape, reset):
    x = torch.rand((T,) + shape, generator=_g(0)) - 0.2
    thr = torch.linspace(0.5, 1.5, shape[1])
    s_ref, v_ref = sk.if_scan(x, thr, reset=reset, return_state=True, backend="reference")
    s, v = sk.if_scan(x.cuda(), thr.cuda(), reset=reset, return_state=True, backend="triton", spike_dtype=torch.uint8)
    assert_spikes_match(s.cpu(), s_ref)
    assert_close(v.cpu(), v_ref, rtol=0, atol=0)


@pytest.mark.parametrize("T,shape", SHAPES)
def test_residual_merge_cuda(T, shape):
    cur = torch.rand((T,) + shape, generator=_g(1)) - 0.3
    sc = (torch.rand((T,) + shape, generator=_g(2)) < 0.2).to(torch.uint8)
    s_ref = sk.residual_merge(cur, sc, 0.7, backend="reference")
    s = sk.residual_merge(cur.cuda(), sc.cuda(), 0.7, backend="triton")
    assert torch.equal(s.cpu(), s_ref)


@pytest.mark.parametrize("k,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_pools_cuda(k, stride, pad):
    s = (torch.rand(9, 3, 5, 13, 11, generator=_g(3)) < 0.3).to(torch.float32)
    assert torch.equal(sk.spike_avg_pool2d(s.cuda(), k, stride, pad, backend="triton").cpu(),
                       sk.spike_avg_pool2d(s, k, stride, pad, backend="reference"))
    m, c = sk.spike_max_pool2d(s.cuda(), k, stride, pad, return_state=True, backend="triton")
    m_ref, c_ref = sk.spike_max_pool2d(s, k, stride, pad, return_state=True, backend="reference")
    assert torch.equal(m.cpu(), m_ref) and torch.equal(c.cpu(), c_ref)
    assert_close(sk.global_avg_pool(s.cuda(), backend="triton").cpu(), sk.global_avg_pool(s, backend="reference"),
                 rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", [(4, 3, 16, 16, 32, 32, 3, 1, 1), (8, 2, 16, 32, 32, 32, 3, 2, 1),
                                  (5, 2, 7, 13, 9, 9, 1, 1, 0), (32, 8, 64, 64, 8, 8, 3, 1, 1)])
def test_spike_conv_cuda(case):
    T, B, cin, cout, h, w, k, st, pad = case
    s = (torch.rand(T, B, cin, h, w, generator=_g(4)) < 0.15).to(torch.uint8)
    wt = torch.randn(cout, cin, k, k, generator=_g(5)) * (2.0 / (cin * k * k * 0.15)) ** 0.5
    b = torch.randn(cout, generator=_g(6)) * 0.1
    res = (torch.rand(T, B, cout, (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1, generator=_g(7)) < 0.2)
    res = res.to(torch.uint8)
    cur = sk.spike_conv2d(s, wt, b, st, pad, neuron=False, residual=res, residual_scale=0.5, backend="reference")
    s_ref = sk.spike_conv2d(s, wt, b, st, pad, residual=res, residual_scale=0.5, backend="reference")
    out = sk.spike_conv2d(s.cuda(), wt.cuda(), b.cuda(), st, pad, residual=res.cuda(), residual_scale=0.5,
                          backend="triton")
    assert_spikes_match(out.cpu(), s_ref, membrane_trace(cur), threshold=1.0)
    lin_in = s.flatten(2)[:, :, :200]
    wl = torch.randn(10, lin_in.shape[-1], generator=_g(8)) * 0.3
    assert_close(sk.spike_linear(lin_in.cuda(), wl.cuda(), neuron=False, backend="triton").cpu(),
                 sk.spike_linear(lin_in, wl, neuron=False, backend="reference"), rtol=1e-4, atol=1e-4)
