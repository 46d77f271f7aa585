"""The real pretrained ResNet-20 on real CIFAR-10 images (skips without /work/shared)."""

import pytest
import torch

import sresnet


@pytest.fixture(scope="module")
def resnet20(request):
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data/models folder at {SHARED} (absent in a user's clone)")
    ann = sresnet.load_checkpoint("resnet20", SHARED / "models" / "resnet20-12fca82f.th")
    x, y = sresnet.load_cifar(SHARED / "data", "test", limit=48)
    calib, _ = sresnet.load_cifar(SHARED / "data", "calib", limit=256)
    return ann, x, y, calib


def test_ann_accuracy_on_shared_images(resnet20):
    ann, x, y, _ = resnet20
    with torch.no_grad():
        acc = (ann(x).argmax(1) == y).float().mean()
    assert acc >= 0.7  # ~81% on these JPEG-recompressed images


def test_snn_agrees_with_ann(resnet20):
    ann, x, y, calib = resnet20
    with torch.no_grad():
        ref = ann(x).argmax(1)
    plain = sresnet.convert(ann, calib, compensation=None)
    assert torch.equal(plain.analog(x).argmax(1), ref)
    snn = sresnet.convert(ann, calib, method="s-resnet", compensation="bias", calib_timesteps=16, calib_subset=8)
    scores = snn(x, timesteps=32, per_step=True)
    agree = (scores[-1].argmax(-1) == ref).float().mean()
    assert agree >= 0.75, agree
    # more steps, more agreement (T=8 is far from converged)
    assert agree > (scores[7].argmax(-1) == ref).float().mean()


def test_lowlat_agrees_with_ann_at_short_T(resnet20):
    # the bias schedule's point: at T = 16 the low-latency network agrees with the ANN more
    # often than the paper's, even with the paper's correction calibrated at that same T
    ann, x, y, calib = resnet20
    with torch.no_grad():
        ref = ann(x).argmax(1)
    fast = sresnet.convert(ann, calib, horizon=16, calib_subset=8)
    paper = sresnet.convert(ann, calib, method="s-resnet", calib_timesteps=16, calib_subset=8)
    agree = [(net(x, timesteps=16).argmax(-1) == ref).float().mean() for net in (fast, paper)]
    assert agree[0] >= 0.75 and agree[0] > agree[1], agree
