"""The demo, info and convert commands end to end, and the CLI's error paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sresnet

ROOT = Path(__file__).resolve().parents[2]
EVAL_KEYS = ("ann_accuracy", "snn_accuracy", "agreement", "firing_rate", "firing_rate_per_layer",
             "images_per_second", "num_images", "arch", "timesteps")


def _run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "sresnet", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_quick_writes_report_and_plots(tmp_path):
    r = _run("demo", "--quick", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    for key in EVAL_KEYS:
        assert key in report, key
    assert report["timesteps"] == [4, 8, 16]
    assert set(report["snn_accuracy"]) == {"4", "8", "16"}
    assert all(0 <= a <= 1 for a in report["snn_accuracy"].values())
    assert 0 < report["firing_rate"] < 1
    cost = report["cost"]
    assert cost["sops_per_image"] > 0 and cost["ann_macs_per_image"] > 0
    assert cost["snn_energy_j_per_image"] > 0 and cost["ann_energy_j_per_image"] > 0
    for png in ("accuracy_vs_T.png", "firing_rates.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # the table is printed, with every T
    assert "ANN accuracy" in r.stdout and "SNN accuracy" in r.stdout
    for t in ("4", "8", "16"):
        assert f"\n   {t} " in r.stdout or f"\n  {t} " in r.stdout


def test_demo_is_deterministic(tmp_path):
    from sresnet.demo import run_demo

    a = run_demo(tmp_path / "a", quick=True, timesteps=[4], progress=False, echo=lambda *_: None)
    b = run_demo(tmp_path / "b", quick=True, timesteps=[4], progress=False, echo=lambda *_: None)
    for key in ("ann_accuracy", "snn_accuracy", "firing_rate", "firing_rate_per_layer"):
        assert a[key] == b[key], key


def test_info_lists_backends():
    r = _run("info")
    assert r.returncode == 0, r.stderr
    for word in ("torch", "numba", "triton", "cpu", "cuda", "reference", "SPIKEKERNELS_BACKEND"):
        assert word in r.stdout
    assert "cpu  numba     ok" in r.stdout
    import torch

    if not torch.cuda.is_available():
        # a machine without CUDA must not read as if Triton could run here
        assert "cuda triton    ok for CUDA tensors, but there is no CUDA device here" in r.stdout
    from spikekernels.ops.spike_conv import numba_gather

    walk = "list of active inputs" if numba_gather.COMPRESS else "bit walk per word"
    assert "numba CPU target" in r.stdout and walk in r.stdout


@pytest.mark.parametrize("command", ["demo", "eval", "convert", "info"])
def test_help_explains_every_option(command):
    r = _run(command, "--help")
    assert r.returncode == 0
    assert "--debug" in r.stdout
    if command in ("eval", "convert"):
        assert "default" in r.stdout and "--percentile" in r.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (["convert", "--arch", "resnet20", "--checkpoint", "/nonexistent.th", "--data-dir", "/nonexistent", "--out", "x.snn"],
         "error:"),
        (["convert", "--arch", "resnet999", "--checkpoint", "/nonexistent.th", "--data-dir", "/nonexistent", "--out", "x.snn"],
         "error:"),
        (["demo", "--timesteps", "4,-1"], "timesteps"),
    ],
    ids=["missing-checkpoint", "bad-arch", "bad-timesteps"],
)
def test_user_errors_are_one_line_without_traceback(args, match):
    r = _run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert match in r.stderr


def test_debug_shows_traceback():
    r = _run("convert", "--debug", "--arch", "resnet20", "--checkpoint", "/nonexistent.th", "--data-dir",
             "/nonexistent", "--out", "x.snn")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_convert_then_load_gives_same_predictions(shared_dir, tmp_path):
    out = tmp_path / "r20.snn"
    r = _run("convert", "--arch", "resnet20", "--checkpoint", str(shared_dir / "models" / "resnet20-12fca82f.th"),
             "--data-dir", str(shared_dir / "data"), "--out", str(out), "--calib-size", "64",
             "--calib-timesteps", "8", "--calib-subset", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bias schedule (H=" in r.stderr  # the default (low-latency) calibration's progress bar
    snn = sresnet.load(out)
    images, _ = sresnet.load_cifar(shared_dir / "data", "test", limit=8)
    scores = snn(images, timesteps=16)
    assert scores.shape == (8, 10) and torch.isfinite(scores).all()
    assert snn.info["arch"] == "resnet20"
