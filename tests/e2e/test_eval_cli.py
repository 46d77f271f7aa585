import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sresnet.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "sresnet", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_eval_json(shared_dir, tmp_path):
    out = tmp_path / "res.json"
    r = _run("eval", "--arch", "resnet20", "--checkpoint", str(shared_dir / "models" / "resnet20-12fca82f.th"),
             "--data-dir", str(shared_dir / "data"), "--limit", "32", "--timesteps", "8,16", "--calib-size", "64",
             "--calib-timesteps", "8", "--calib-subset", "16", "--cost", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    for key in ("ann_accuracy", "snn_accuracy", "firing_rate", "images_per_second", "arch", "timesteps", "num_images"):
        assert key in res
    assert res["arch"] == "resnet20" and res["timesteps"] == [8, 16] and res["num_images"] == 32
    assert set(res["snn_accuracy"]) == {"8", "16"}
    assert 0.5 <= res["ann_accuracy"] <= 1
    assert all(0 <= v <= 1 for v in res["snn_accuracy"].values())
    assert 0 < res["firing_rate"] < 1
    assert all(v > 0 for v in res["images_per_second"].values())
    assert "ANN accuracy" in r.stdout
    assert res["cost"]["timesteps"] == 16 and res["cost"]["images"] == 32
    assert 0 < res["cost"]["sops_per_image"] and res["cost"]["ann_macs_per_image"] > 4e7  # ResNet-20: ~41 M MACs
    assert "synaptic ops" in r.stdout


def _one_line_error(code, err):
    assert code == 2
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_checkpoint_subprocess(tmp_path):
    r = _run("eval", "--arch", "resnet20", "--checkpoint", str(tmp_path / "nope.th"), "--data-dir", str(tmp_path))
    assert "nope.th" in _one_line_error(r.returncode, r.stderr)


# the other error paths run main() in-process (a subprocess pays the torch import each time)


def _main(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def test_bad_arch(tmp_path, capsys):
    ck = tmp_path / "ck.th"
    ck.write_bytes(b"x")
    code, err = _main(capsys, "eval", "--arch", "resnet21", "--checkpoint", str(ck), "--data-dir", str(tmp_path))
    assert "resnet21" in _one_line_error(code, err)


def test_bad_data_dir(shared_dir, tmp_path, capsys):
    code, err = _main(capsys, "eval", "--arch", "resnet20", "--checkpoint",
                      str(shared_dir / "models" / "resnet20-12fca82f.th"), "--data-dir", str(tmp_path / "missing"),
                      "--limit", "4")
    assert "missing" in _one_line_error(code, err)


def test_malformed_data(shared_dir, tmp_path, capsys):
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00")
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    code, err = _main(capsys, "eval", "--arch", "resnet20", "--checkpoint",
                      str(shared_dir / "models" / "resnet20-12fca82f.th"), "--data-dir", str(tmp_path), "--limit", "4")
    assert "test_batch" in _one_line_error(code, err)


def test_debug_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["eval", "--debug", "--arch", "resnet20", "--checkpoint", str(tmp_path / "nope.th"),
              "--data-dir", str(tmp_path)])


def test_bad_option_values(capsys):
    with pytest.raises(SystemExit) as err:
        main(["eval", "--arch", "resnet20", "--checkpoint", "x", "--data-dir", "y", "--timesteps", "8,zero"])
    assert err.value.code == 2
    assert "timesteps" in capsys.readouterr().err


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for opt in ("--timesteps", "--limit", "--batch-size", "--backend", "--calib-size", "--percentile", "--json"):
        assert opt in out
    assert "default: 99.9" in out
