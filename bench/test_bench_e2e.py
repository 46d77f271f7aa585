"""End to end: the converted ResNet-20 in sresnet vs the same network in peer libraries vs the ANN.

Run:  .venv/bin/python -m pytest bench/test_bench_e2e.py --benchmark-only
Needs ../shared (CIFAR-10 test/calib batches and the ResNet-20 checkpoint); skipped without
it. B=32 real test images, T=32 and T=128. Every exact peer (SpikingJelly multi- and
single-step, snnTorch, sinabs) is first checked to give sresnet's predictions (at most one
image may differ, and only through near-threshold rounding: per-layer spike counts must agree
within 1e-3); Norse (hard reset only) is timed and its agreement printed. The timed results
are checked again afterwards. The final table (ratios of sresnet to the fastest peer and to
the ANN run T times) is printed by bench/conftest.py.
"""

from __future__ import annotations

import pytest
import torch

import peers

B = 32
TIMESTEPS = (32, 128)
PROVIDERS = ("sresnet", "spikingjelly-m", "spikingjelly-s", "snntorch", "sinabs", "norse", "ann-xT", "ann-folded-xT")
# sinabs (optional peer, the slowest by far: its IAF loops over [B, T] in Python with dict
# state copies) is timed at T=32 only, to keep the suite near 10 minutes on 2 cores
CASES = [(T, p) for T in TIMESTEPS for p in PROVIDERS if not (p == "sinabs" and T > TIMESTEPS[0])]

pytestmark = pytest.mark.skipif(
    not (peers.DATA_DIR.is_dir() and peers.CHECKPOINT.is_file()),
    reason=f"needs the shared CIFAR-10 data and ResNet-20 checkpoint under {peers.SHARED} (absent in a user's clone)",
)


@pytest.fixture(scope="module")
def e2e():
    torch.set_grad_enabled(False)
    ann, snn, images, labels = peers.load_real(n_test=B)
    runners, skipped = peers.build_providers(snn, ann)
    print("\nagreement with sresnet (T=32, 32 CIFAR-10 test images):")
    report = peers.check_agreement(snn, runners, images, labels, timesteps=32)
    peers.E2E_REPORT.update(report)
    yield runners, skipped, images, {}
    torch.set_grad_enabled(True)


@pytest.mark.parametrize(("T", "provider"), CASES, ids=[f"T{T}-{p}" for T, p in CASES])
def test_e2e_cpu(benchmark, e2e, T, provider):
    runners, skipped, images, outputs = e2e
    if provider in skipped:
        pytest.skip(f"{provider} unavailable: {skipped[provider]}")
    benchmark.group = f"resnet20 end to end, B={B}, T={T} (CPU)"
    # T=128 follows T=32 in the same process: every provider is already warm
    out = benchmark.pedantic(runners[provider], args=(images, T), rounds=3, iterations=1,
                             warmup_rounds=1 if T == TIMESTEPS[0] else 0)
    median = benchmark.stats.stats.median
    benchmark.extra_info["image_timesteps_per_s"] = B * T / median
    peers.E2E_MEDIANS[(T, provider)] = median
    outputs[(T, provider)] = out.argmax(1)
    ref = outputs.get((T, "sresnet"))
    if provider in peers.EXACT_PEERS and ref is not None:
        flips = int((outputs[(T, provider)] != ref).sum())
        benchmark.extra_info["prediction_flips_vs_sresnet"] = flips
        assert flips <= 1, f"{provider} differs from sresnet on {flips} images at T={T}"
