"""Our IF neuron against SpikingJelly's IFNode with the same surrogate (test-only peer).

SpikingJelly (Fang et al., Science Advances 2023) is the reference implementation of
surrogate-gradient IF neurons; its IFNode with v_reset=None is our reset="subtract", with a
number our reset="zero" (v_reset), and it starts at v = v_reset (0 for soft reset).
"""

import pytest
import torch

import spikekernels as sk
from spikekernels.testing import assert_close

sj = pytest.importorskip(
    "spikingjelly.activation_based.neuron",
    reason="spikingjelly is not installed (test-only: pip install --no-deps spikingjelly==2.0.0 loguru)",
)
from spikingjelly.activation_based import surrogate as sj_surrogate  # noqa: E402

PAIRS = [
    (sk.surrogate.Sigmoid(4.0), lambda: sj_surrogate.Sigmoid(alpha=4.0)),
    (sk.surrogate.ATan(2.0), lambda: sj_surrogate.ATan(alpha=2.0)),
    (sk.surrogate.Triangle(1.0), lambda: sj_surrogate.PiecewiseQuadratic(alpha=1.0)),
]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=["sigmoid", "atan", "triangle"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["reset-grad", "detach-reset"])
def test_matches_spikingjelly_ifnode(backend, ours, theirs, reset, detach_reset):
    x0 = torch.rand(9, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 0.9 - 0.2
    g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    v_reset = 0.0 if reset == "zero" else None
    node = sj.IFNode(v_threshold=0.8, v_reset=v_reset, surrogate_function=theirs(), detach_reset=detach_reset,
                     step_mode="m")
    x_sj = x0.clone().requires_grad_()
    s_sj = node(x_sj)
    (s_sj * g).sum().backward()
    x = x0.clone().requires_grad_()
    s = sk.if_scan(x, 0.8, v0=0.0, reset=reset, surrogate=ours, detach_reset=detach_reset, backend=backend)
    (s * g).sum().backward()
    assert torch.equal(s.detach(), s_sj.detach())
    assert_close(x.grad, x_sj.grad, rtol=1e-5, atol=1e-5, name="dL/dx vs SpikingJelly")
    assert x.grad.abs().sum() > 0
