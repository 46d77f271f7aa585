"""Training path on real CUDA tensors (Triton kernels) against the CPU reference (skipped without a GPU)."""

import pytest
import torch

import spikekernels as sk
from spikekernels.testing import assert_close, assert_spikes_match

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton on CUDA tensors)")

SHAPES = [(1, (2, 3, 7, 7)), (13, (3, 17, 11, 5)), (64, (8, 16, 32, 32))]


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _grads(device, backend, x, thr, v0, gs, gv, **kw):
    x, thr, v0 = (t.to(device).requires_grad_() for t in (x, thr, v0))
    s, v = sk.if_scan(x, thr, v0=v0, return_state=True, backend=backend, **kw)
    ((s * gs.to(device)).sum() + (v * gv.to(device)).sum()).backward()
    return [t.detach().cpu() for t in (s, v, x.grad, thr.grad, v0.grad)]


@pytest.mark.parametrize("T,shape", SHAPES)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("sur", ["sigmoid", "atan", "triangle"])
def test_if_scan_gradients_cuda(T, shape, reset, sur):
    args = (torch.rand((T,) + shape, generator=_g(0)) - 0.2, torch.linspace(0.5, 1.5, shape[1]),
            torch.rand(shape, generator=_g(1)) * 0.5, torch.randn((T,) + shape, generator=_g(2)),
            torch.randn(shape, generator=_g(3)))
    kw = dict(reset=reset, surrogate=sur, v_reset=-0.1 if reset == "zero" else 0.0)
    ref = _grads("cpu", "reference", *args, **kw)
    got = _grads("cuda", "triton", *args, **kw)
    assert_spikes_match(got[0], ref[0])
    assert_close(got[1], ref[1], rtol=0, atol=0, name="membrane")
    for name, a, b in zip(("dL/dx", "dL/dthreshold", "dL/dv0"), got[2:], ref[2:]):
        # dL/dthreshold sums over B*H*W neurons and T steps: allow for the summation order
        assert_close(a, b, rtol=1e-4, atol=1e-4, name=name)


def test_spike_conv2d_gradients_cuda():
    s0 = (torch.rand(8, 4, 16, 16, 16, generator=_g(4)) < 0.2).float()
    w0 = torch.randn(32, 16, 3, 3, generator=_g(5)) * 0.2
    g = torch.randn(8, 4, 32, 16, 16, generator=_g(6))
    out = {}
    for device, backend in (("cpu", "reference"), ("cuda", "triton")):
        s, w = s0.to(device).requires_grad_(), w0.to(device).requires_grad_()
        o = sk.spike_conv2d(s, w, padding=1, threshold=0.5, backend=backend)
        (o * g.to(device)).sum().backward()
        out[device] = (o.detach().cpu(), s.grad.cpu(), w.grad.cpu())
    assert_spikes_match(out["cuda"][0], out["cpu"][0])
    # cuDNN's conv sums in another order than the CPU's: a near-threshold flip changes a gradient,
    # so compare gradients only when no spike flipped
    if torch.equal(out["cuda"][0], out["cpu"][0]):
        assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-3, atol=1e-3)
        assert_close(out["cuda"][2], out["cpu"][2], rtol=1e-3, atol=1e-3)
