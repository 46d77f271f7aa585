"""bench/sj_convert.py without SpikingJelly: its install message, the SpikingJelly-ready ResNet, --merge."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sresnet
from sresnet.models import PadShortcut

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "sj_convert.py"


def _script_module():
    spec = importlib.util.spec_from_file_location("sj_convert", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(code: str):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_missing_spikingjelly_names_the_install(tmp_path):
    # a None entry in sys.modules makes `import spikingjelly` raise ImportError, installed or not
    r = _run("import runpy, sys; sys.modules['spikingjelly'] = None; "
             f"sys.argv = ['sj_convert.py', '--limit', '1', '--json', {str(tmp_path / 'x.json')!r}]; "
             f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "spikingjelly" in r.stderr and "pip install --no-deps spikingjelly" in r.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(("in_channels", "pad", "size"), [(16, 8, 32), (3, 2, 7)], ids=["cifar-16to32", "odd-3to7"])
def test_pad_as_conv_is_the_option_a_shortcut(in_channels, pad, size):
    sj = _script_module()
    shortcut = PadShortcut(pad, stride=2)
    x = torch.randn(2, in_channels, size, size)
    assert torch.equal(sj.pad_as_conv(shortcut, in_channels)(x), shortcut(x))


@pytest.mark.parametrize("arch", ["resnet20", "resnet32"])
def test_sj_ready_resnet_gives_the_ann_logits(arch):
    sj = _script_module()
    torch.manual_seed(0)
    ann = sresnet.cifar_resnet(arch).eval()
    # non-trivial BatchNorm statistics, so a dropped or reordered BN would show
    for m in ann.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ready = sj.SJReadyResNet(ann).eval()
    relus = [m for m in ready.modules() if isinstance(m, torch.nn.ReLU)]
    # one per call site: the stem, then two per block
    assert len(relus) == 1 + 2 * 3 * sresnet.models.CIFAR_DEPTHS[arch] and len(set(map(id, relus))) == len(relus)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ready(x), ann(x))


def _report(offset: int, num_images: int, correct: dict) -> dict:
    return {"arch": "resnet20", "checkpoint": "c.th", "calib_size": 1000, "calib_batch_size": 100,
            "ltb_batch_size": 10, "ltb_passes": 10, "timesteps": [8, 16], "delay_start": {"robust": {"8": 3, "16": 11}},
            "delay_start_unclamped": {"robust": 67}, "offset": offset, "num_images": num_images,
            "ann_accuracy": correct["ann"] / num_images, "command": f"run {offset}",
            "snn_accuracy": {"robust+delay": {t: correct[t] / num_images for t in ("8", "16")}},
            "convert_seconds": {"robust": 1.0}, "simulate_seconds": {"robust": 2.0}}


def test_merge_pools_correct_counts(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    out = tmp_path / "m.json"
    a.write_text(json.dumps(_report(0, 3, {"ann": 2, "8": 1, "16": 2})))
    b.write_text(json.dumps(_report(3, 7, {"ann": 6, "8": 2, "16": 5})))
    r = _run(f"import runpy, sys; sys.argv = ['sj_convert.py', '--merge', {str(b)!r}, {str(a)!r}, '--json', {str(out)!r}]; "
             f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    assert r.returncode == 0, r.stderr
    merged = json.loads(out.read_text())
    assert merged["num_images"] == 10 and merged["offset"] == 0
    assert merged["ann_accuracy"] == pytest.approx(0.8)
    assert merged["snn_accuracy"]["robust+delay"] == pytest.approx({"8": 0.3, "16": 0.7})
    assert merged["merged_from"] == ["run 0", "run 3"] and merged["simulate_seconds"] == {"robust": 4.0}


def test_merge_rejects_a_gap():
    sj = _script_module()
    with pytest.raises(ValueError, match="consecutive"):
        sj.merge_reports([_report(0, 3, {"ann": 2, "8": 1, "16": 2}), _report(4, 7, {"ann": 6, "8": 2, "16": 5})])
    other = dict(_report(3, 7, {"ann": 6, "8": 2, "16": 5}), calib_batch_size=50)
    with pytest.raises(ValueError, match="calib_batch_size"):
        sj.merge_reports([_report(0, 3, {"ann": 2, "8": 1, "16": 2}), other])
