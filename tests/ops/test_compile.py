"""torch.compile of a small spiking model: same outputs and gradients, no graph break."""

import pytest
import torch
import torch.nn.functional as F

import spikekernels as sk
from spikekernels.testing import assert_close


class _Small(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.conv = sk.SpikeConv2d(2, 4, 3, padding=1, threshold=0.5, backend=backend)
        self.conv2 = sk.SpikeConv2d(4, 4, 3, padding=1, threshold=0.5, surrogate="atan", backend=backend)
        self.merge = sk.ResidualMerge(0.8, threshold=0.7, reset="zero", backend=backend)
        self.pool = sk.SpikeMaxPool2d(2, backend=backend)
        self.avg = sk.GlobalAvgPool(backend=backend)
        self.head = sk.SpikeLinear(4, 3, neuron=False, backend=backend)

    def forward(self, x):
        s = self.conv(x, timesteps=4)
        s = self.merge(self.conv2(s), s)
        return self.head(self.avg(self.pool(s))).mean(0)


@pytest.mark.parametrize("be", ["numba"])
def test_compiled_model_gives_the_same_outputs_and_gradients(be):
    torch.manual_seed(0)
    model = _Small(be)
    x = torch.rand(1, 3, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2])
    results = []
    # fullgraph=True: a graph break (e.g. a kernel's .numpy() call being traced) fails the test;
    # inductor (the default) takes about 2 minutes to compile this on 2 loaded cores
    for fn in (model, torch.compile(model, fullgraph=True)):
        model.zero_grad()
        logits = fn(x)
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-6, name="logits")
    for a, b in zip(results[1][1], results[0][1]):
        assert_close(a, b, rtol=1e-5, atol=1e-6, name="parameter gradient")
    assert any(g.abs().sum() > 0 for g in results[0][1])
