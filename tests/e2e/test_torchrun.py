"""`torchrun --nproc-per-node 2 -m sresnet eval ...` gives the numbers of one process (gloo on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

FACTORY = '''
import torch
import torch.nn as nn


def tiny(num_classes=4):
    torch.manual_seed(0)  # every process builds the same random network
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)).eval()
'''

TIMING = ("images_per_second", "convert_seconds", "world_size")


def _eval(tmp_path, out: str, launcher: list[str], *extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", OMP_NUM_THREADS="1")
    cmd = [*launcher, "-m", "sresnet", "eval", "--model", "zoo:tiny", "--data", str(tmp_path / "test.npz"),
           "--calib-data", str(tmp_path / "calib.npz"), "--calib-size", "24", "--batch-size", "4", "--timesteps",
           "4,8", "--horizon", "8", "--calib-subset", "8", "--cost", "--no-progress", "--json", str(tmp_path / out), *extra]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((tmp_path / out).read_text())


def test_torchrun_two_processes_equal_one(tmp_path):
    (tmp_path / "zoo.py").write_text(FACTORY)
    rng = np.random.default_rng(0)
    # 13 test images: the shards are uneven (7 + 6)
    np.savez(tmp_path / "test.npz", images=rng.integers(0, 256, (13, 12, 12, 3), dtype=np.uint8),
             labels=rng.integers(0, 4, 13))
    np.savez(tmp_path / "calib.npz", images=rng.integers(0, 256, (24, 12, 12, 3), dtype=np.uint8),
             labels=rng.integers(0, 4, 24))
    one = _eval(tmp_path, "one.json", [sys.executable], "--diagnose", str(tmp_path / "diag"))
    diag = json.loads((tmp_path / "diag" / "diagnosis.json").read_text())
    assert diag["timesteps"] == 8 and len(diag["layers"]) == 2 and (tmp_path / "diag" / "diagnosis.png").is_file()
    two = _eval(tmp_path, "two.json", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc-per-node", "2"])
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["num_images"] == two["num_images"] == 13
    for k in TIMING:
        one.pop(k), two.pop(k)
    assert one == two
