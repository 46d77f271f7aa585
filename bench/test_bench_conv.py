"""Spiking convolution benchmarks: fused kernels vs strong dense baselines.

CPU: ResNet-20 layer shapes (3x3, stride 1, padding 1, Cin = Cout), B=32, T=32, input spike
densities 5-40%: ``sk.spike_conv2d`` (Numba, event-driven with the automatic dense switch)
against torch conv2d on chunks of a few steps plus an in-place IF update with reused buffers.

    .venv/bin/python -m pytest -q -p no:cacheprovider bench/test_bench_conv.py \
        --benchmark-columns=min,median,rounds --benchmark-group-by=param:layer,param:density

GPU (skipped without CUDA): B=128, T=32/64, Triton fused vs cuDNN conv + separate torch IF,
float32 and bfloat16 weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import spikekernels as sk

LAYERS = {"c16-32x32": (16, 32), "c32-16x16": (32, 16), "c64-8x8": (64, 8)}
DENSITIES = [0.05, 0.10, 0.20, 0.40]
B, T = 32, 32
CHUNK_BYTES = 32 * 2**20


def _inputs(layer: str, density: float, device="cpu", batch=B, steps=T):
    C, H = LAYERS[layer]
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(steps, batch, C, H, H, generator=g) < density).to(torch.uint8)
    # weights scaled so that the output fires at a rate similar to the input
    w = torch.randn(C, C, 3, 3, generator=g) * (1.0 / (C * 9 * density)) ** 0.5
    b = torch.randn(C, generator=g) * 0.05
    return s.to(device), w.to(device), b.to(device)


class DenseIF:
    """torch conv2d on chunks of steps (no tensor over 32 MiB) + in-place IF, buffers reused.

    Spikes out as ``out_dtype`` (uint8 by default; float32 to match a float32 spike input).
    """

    def __init__(self, s, w, b, threshold=1.0, stride=1, padding=1, out_dtype=torch.uint8):
        T_, B_, C, H, W = s.shape
        Ho = (H + 2 * padding - w.shape[2]) // stride + 1
        Wo = (W + 2 * padding - w.shape[3]) // stride + 1
        self.step_bytes = 4 * B_ * max(C * H * W, w.shape[0] * Ho * Wo)
        self.tc = max(1, min(T_, CHUNK_BYTES // self.step_bytes // 2))
        self.w, self.b, self.thr = w, b, threshold
        self.stride, self.padding, self.out_dtype = stride, padding, out_dtype
        self.s_f = torch.empty((self.tc * B_, C, H, W), device=s.device)
        self.v = torch.empty((B_, w.shape[0], Ho, Wo), device=s.device)
        self.spk = torch.empty_like(self.v, dtype=torch.bool)

    def __call__(self, s):
        T_, B_ = s.shape[:2]
        out = torch.empty((T_, B_) + self.v.shape[1:], dtype=self.out_dtype, device=s.device)
        self.v.fill_(self.thr / 2)
        for t0 in range(0, T_, self.tc):
            t1 = min(T_, t0 + self.tc)
            chunk = s[t0:t1].flatten(0, 1)
            if chunk.dtype != torch.float32:
                chunk = self.s_f[: (t1 - t0) * B_].copy_(chunk)
            x = F.conv2d(chunk, self.w, self.b, stride=self.stride, padding=self.padding)
            x = x.view((t1 - t0, B_) + self.v.shape[1:])
            for t in range(t1 - t0):
                self.v.add_(x[t])
                torch.ge(self.v, self.thr, out=self.spk)
                self.v.sub_(self.spk.to(self.v.dtype), alpha=self.thr)
                out[t0 + t].copy_(self.spk)
        return out


def _agree(a, b, limit=1e-3):
    frac = (a != b).float().mean().item()
    assert frac < limit, f"outputs disagree on {frac:.2e} of spikes"


@pytest.mark.parametrize("density", DENSITIES, ids=[f"d{int(d * 100)}" for d in DENSITIES])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("provider", ["numba", "dense"])
def test_cpu_spike_conv(benchmark, provider, layer, density):
    s, w, b = _inputs(layer, density)
    base = DenseIF(s, w, b)
    fused = lambda: sk.spike_conv2d(s, w, b, padding=1, backend="numba")  # noqa: E731
    _agree(fused(), base(s))
    fn = fused if provider == "numba" else (lambda: base(s))
    benchmark.extra_info.update(layer=layer, density=density, image_timesteps=B * T)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("steps", [32, 64])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("provider", ["triton", "cudnn"])
def test_gpu_spike_conv(benchmark, provider, layer, steps, dtype):
    s, w, b = _inputs(layer, 0.1, device="cuda", batch=128, steps=steps)
    w = w.to(dtype)
    b = b.to(dtype)
    if provider == "triton":
        fn = lambda: sk.spike_conv2d(s, w, b, padding=1, backend="triton")  # noqa: E731
    else:
        def fn():
            x = F.conv2d(s.flatten(0, 1).to(dtype), w, b, padding=1)
            return sk.if_scan(x.view((steps, 128) + x.shape[1:]), spike_dtype=torch.uint8, backend="triton")
    _agree(sk.spike_conv2d(s, w.float(), b.float(), padding=1, backend="triton"),
           sk.spike_conv2d(s, w.float(), b.float(), padding=1, backend="reference"), limit=1e-2)

    def run():
        fn()
        torch.cuda.synchronize()

    benchmark.extra_info.update(layer=layer, steps=steps, dtype=str(dtype))
    benchmark.pedantic(run, rounds=10, warmup_rounds=2)
