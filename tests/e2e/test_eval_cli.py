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


# --- any ResNet, any image dataset (issue 13): ImageFolder / .npz / factory paths through the CLI ---

CIFAR_MEAN, CIFAR_STD = "0.4914,0.4822,0.4465", "0.2470,0.2435,0.2616"


def _cifar_arrays(shared_dir, batch, n):
    from sresnet.data import _batch_arrays

    data, labels = _batch_arrays(shared_dir / "data" / "cifar-10-batches-py" / batch)
    return data[:n].reshape(-1, 3, 32, 32), labels[:n]


def _export_tree(shared_dir, root, batch, per_class):
    """root/<class name>/<index>.png from a CIFAR batch: the first `per_class` images of each class."""
    from PIL import Image

    from sresnet.data import safe_load_pickle

    names = safe_load_pickle(shared_dir / "data" / "cifar-10-batches-py" / "batches.meta")["label_names"]
    data, labels = _cifar_arrays(shared_dir, batch, 10000)
    kept = []
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in [int(i) for i in (labels == c).nonzero()[0][:per_class]]:
            Image.fromarray(data[i].transpose(1, 2, 0)).save(root / name / f"{i:05d}.png")
            kept.append(i)
    return sorted(kept)


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory):
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data/models folder at {SHARED}")
    root = tmp_path_factory.mktemp("tree")
    test_idx = _export_tree(SHARED, root / "val", "test_batch", 2)
    _export_tree(SHARED, root / "train", "data_batch_1", 4)
    return root, test_idx


def test_design_line_imagefolder_tv_resnet18(shared_dir, cifar_tree, tmp_path):
    import numpy as np
    import torch

    from sresnet.models import load_checkpoint

    root, test_idx = cifar_tree
    ck = shared_dir / "models" / "tv_resnet18_cifar10.pt"
    out = tmp_path / "res.json"
    r = _run("eval", "--model", "resnet18", "--num-classes", "10", "--checkpoint", str(ck), "--data", str(root / "val"),
             "--calib-data", str(root / "train"), "--mean", CIFAR_MEAN, "--std", CIFAR_STD, "--timesteps", "8,16",
             "--calib-size", "40", "--calib-timesteps", "8", "--calib-subset", "8", "--batch-size", "10",
             "--workers", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    for key in ("ann_accuracy", "snn_accuracy", "firing_rate", "images_per_second", "ann_top5", "snn_top5",
                "num_images", "dataset", "calibration", "preprocessing", "model"):
        assert key in res
    assert res["num_images"] == 20 and res["model"] == "resnet18" and res["num_classes"] == 10
    assert res["dataset"]["kind"] == "imagefolder" and res["dataset"]["source"].endswith("val")
    assert res["calibration"]["source"].endswith("train") and res["calib_size"] == 40
    assert res["preprocessing"]["mean"] == [0.4914, 0.4822, 0.4465] and res["preprocessing"]["resize"] is None
    assert all(res["snn_accuracy"][t] <= res["snn_top5"][t] for t in ("8", "16"))
    # the ANN accuracy of the PNG tree equals the accuracy computed here from the pickles (PNG is lossless,
    # class folders sorted by name give CIFAR's label order)
    data, labels = _cifar_arrays(shared_dir, "test_batch", 10000)
    x = torch.from_numpy(data[test_idx].astype(np.float32) / 255)
    x = (x - torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)) / torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = load_checkpoint("resnet18", ck)(x).argmax(1).numpy()
    assert res["ann_accuracy"] == pytest.approx(float((pred == labels[test_idx]).mean()))
    assert "top-5" in r.stdout


def test_npz_path_equals_cifar_path(shared_dir, tmp_path, capsys):
    import numpy as np

    test_x, test_y = _cifar_arrays(shared_dir, "test_batch", 12)
    cal_x, cal_y = _cifar_arrays(shared_dir, "data_batch_1", 48)
    np.savez(tmp_path / "test.npz", images=test_x.transpose(0, 2, 3, 1), labels=test_y)
    np.savez(tmp_path / "calib.npz", images=cal_x, labels=cal_y)  # [N, C, H, W] also accepted
    ck = str(shared_dir / "models" / "resnet20-12fca82f.th")
    common = ["--timesteps", "4,8", "--calib-size", "48", "--calib-timesteps", "4", "--calib-subset", "8",
              "--no-progress"]
    assert main(["eval", "--arch", "resnet20", "--checkpoint", ck, "--data-dir", str(shared_dir / "data"), "--limit",
                 "12", "--json", str(tmp_path / "a.json"), *common]) == 0
    assert main(["eval", "--model", "resnet20", "--checkpoint", ck, "--data", str(tmp_path / "test.npz"), "--calib-data",
                 str(tmp_path / "calib.npz"), "--preset", "cifar-imagenet-stats", "--json", str(tmp_path / "b.json"),
                 *common]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["preprocessing"] == b["preprocessing"] and b["dataset"]["kind"] == "npz"
    for key in ("ann_accuracy", "snn_accuracy", "ann_top5", "snn_top5", "firing_rate", "num_images"):
        assert a[key] == b[key], key


FACTORY = '''
from sresnet.models import imagenet_resnet


def build(num_classes=1000):
    return imagenet_resnet("resnet18", num_classes)
'''


def test_user_factory_through_cli(shared_dir, tmp_path):
    (tmp_path / "zoo.py").write_text(FACTORY)
    out = tmp_path / "f.json"
    code = main(["eval", "--model", f"{tmp_path / 'zoo.py'}:build", "--num-classes", "10", "--checkpoint",
                 str(shared_dir / "models" / "tv_resnet18_cifar10.pt"), "--data", str(shared_dir / "data"),
                 "--preset", "cifar", "--limit", "8", "--timesteps", "4", "--calib-size", "16", "--calib-timesteps",
                 "4", "--calib-subset", "4", "--no-progress", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["model"].endswith("zoo.py:build") and res["num_images"] == 8 and res["preprocessing"]["preset"] == "cifar"


@pytest.fixture
def r20(shared_dir):
    return str(shared_dir / "models" / "resnet20-12fca82f.th")


FAST = ["--timesteps", "4", "--calib-size", "16", "--calib-timesteps", "4", "--calib-subset", "4", "--no-progress"]


def test_flat_folder_error(r20, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "flat").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "flat" / "a.png")
    code, err = _main(capsys, "eval", "--model", "resnet20", "--checkpoint", r20, "--data", str(tmp_path / "flat"),
                      "--calib-data", str(tmp_path / "flat"), *FAST)
    assert "has no class subfolders" in _one_line_error(code, err)


def test_wrong_class_count_error(shared_dir, capsys):
    code, err = _main(capsys, "eval", "--model", "resnet18", "--num-classes", "100", "--checkpoint",
                      str(shared_dir / "models" / "tv_resnet18_cifar10.pt"), "--data", str(shared_dir / "data"), *FAST)
    line = _one_line_error(code, err)
    assert "is for 10 classes" in line and "100 outputs" in line


def test_preset_size_mismatch_error(shared_dir, cifar_tree, capsys):
    root, _ = cifar_tree
    code, err = _main(capsys, "eval", "--model", "resnet18", "--checkpoint",
                      str(shared_dir / "models" / "tv_resnet18_cifar10.pt"), "--data", str(root / "val"),
                      "--preset", "imagenet", *FAST)
    line = _one_line_error(code, err)
    assert "32x32" in line and "preset 'imagenet'" in line and ".png" in line


@pytest.mark.parametrize("workers", ["0", "1"], ids=["in-process", "worker"])
def test_unreadable_image_error_names_file(r20, cifar_tree, tmp_path, capsys, workers):
    import shutil

    root, _ = cifar_tree
    shutil.copytree(root / "val", tmp_path / "val")
    (tmp_path / "val" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, err = _main(capsys, "eval", "--model", "resnet20", "--checkpoint", r20, "--data", str(tmp_path / "val"),
                      "--calib-data", str(root / "train"), "--preset", "cifar-imagenet-stats", "--workers", workers,
                      "--batch-size", "64", *FAST)
    line = _one_line_error(code, err)
    assert "cannot read image" in line and "broken.png" in line


def test_calibration_errors(r20, shared_dir, cifar_tree, tmp_path, capsys):
    import numpy as np

    root, _ = cifar_tree
    np.savez(tmp_path / "t.npz", images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.array([0, 1]))
    code, err = _main(capsys, "eval", "--model", "resnet20", "--checkpoint", r20, "--data", str(tmp_path / "t.npz"), *FAST)
    assert "pass --calib-data" in _one_line_error(code, err)
    code, err = _main(capsys, "eval", "--model", "resnet20", "--checkpoint", r20, "--data", str(root / "val"),
                      "--calib-data", str(root / "val"), *FAST)
    assert "never on the test images" in _one_line_error(code, err)
    code, err = _main(capsys, "eval", "--model", "resnet20", "--checkpoint", r20, "--data", str(root / "val"),
                      "--preset", "cifar", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2", *FAST)
    assert "do not combine" in _one_line_error(code, err)
    code, err = _main(capsys, "eval", "--model", "resnet20", "--data", str(root / "val"), *FAST)
    assert "--checkpoint is required" in _one_line_error(code, err)


def test_convert_command_with_imagefolder_calibration(r20, cifar_tree, tmp_path, capsys):
    import sresnet

    root, _ = cifar_tree
    out = tmp_path / "net.snn"
    assert main(["convert", "--model", "resnet20", "--checkpoint", r20, "--data", str(root / "val"), "--preset",
                 "cifar-imagenet-stats", "--calib-size", "20", "--calib-timesteps", "4", "--calib-subset", "4",
                 "--no-progress", "--out", str(out)]) == 0
    assert sresnet.load(out).info["arch"] == "resnet20"


def test_convert_command_with_weight_calibration(r20, cifar_tree, tmp_path):
    import sresnet

    root, _ = cifar_tree
    out = tmp_path / "net.snn"
    assert main(["convert", "--model", "resnet20", "--checkpoint", r20, "--calib-data", str(root / "train"),
                 "--preset", "cifar-imagenet-stats", "--calib-size", "20", "--horizon", "4", "--calib-subset", "4",
                 "--weight-calibration", "0.5", "--no-progress", "--out", str(out)]) == 0
    info = sresnet.load(out).info
    assert info["weight_calibration"] == 0.5 and len(info["weight_refits"]) == 18  # every layer but the stem


@pytest.mark.parametrize("value", ["-1", "0", "nan", "abc"])
def test_bad_weight_calibration_value(value, capsys):
    with pytest.raises(SystemExit) as err:
        main(["eval", "--arch", "resnet20", "--checkpoint", "x", "--data-dir", "y", "--weight-calibration", value])
    assert err.value.code == 2
    assert "--weight-calibration" in capsys.readouterr().err


def test_convert_with_calibration_data_only(r20, cifar_tree, tmp_path, capsys):
    root, _ = cifar_tree
    out = tmp_path / "net.snn"
    assert main(["convert", "--model", "resnet20", "--checkpoint", r20, "--calib-data", str(root / "train"),
                 "--preset", "cifar-imagenet-stats", "--calib-size", "20", "--calib-timesteps", "4", "--calib-subset",
                 "4", "--no-progress", "--out", str(out)]) == 0
    code, err = _main(capsys, "convert", "--model", "resnet20", "--checkpoint", r20, "--out", str(out))
    assert "needs calibration images" in _one_line_error(code, err)


TINY_FACTORY = '''
import torch.nn as nn


def tiny(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 5, stride=4, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))
'''


def test_imagefolder_photos_with_imagenet_preset_equals_explicit_flags(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from sresnet.models import build_model

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("beagle", "kite", "tabby"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(150, 300, 2)  # photos of mixed sizes: resize + crop make them 224x224
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    tmp_path / "img" / split / c / f"{i}.jpg", quality=90)
    (tmp_path / "zoo.py").write_text(TINY_FACTORY)
    spec = f"{tmp_path / 'zoo.py'}:tiny"
    torch.manual_seed(0)
    torch.save(build_model(spec).state_dict(), tmp_path / "tiny.pt")
    common = ["eval", "--model", spec, "--checkpoint", str(tmp_path / "tiny.pt"), "--data", str(tmp_path / "img"),
              "--timesteps", "4,8", "--calib-timesteps", "4", "--calib-subset", "4", "--workers", "1", "--no-progress"]
    assert main(common + ["--preset", "imagenet", "--json", str(tmp_path / "a.json")]) == 0
    assert main(common + ["--resize", "256", "--crop", "224", "--mean", "0.485,0.456,0.406", "--std",
                          "0.229,0.224,0.225", "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["num_images"] == 6 and a["calib_size"] == 18 and a["dataset"]["source"].endswith("val")
    assert a["calibration"]["source"].endswith("train")
    assert a["preprocessing"]["preset"] == "imagenet" and b["preprocessing"]["preset"] is None
    assert (a["preprocessing"]["resize"], a["preprocessing"]["crop"]) == (b["preprocessing"]["resize"], 224)
    for key in ("ann_accuracy", "snn_accuracy", "snn_top5", "firing_rate", "neurons_per_image"):
        assert a[key] == b[key], key
    assert a["neurons_per_image"] == 4 * 56 * 56  # one neuron per conv output of a 224x224 image


def test_long_eval_in_parts_with_a_saved_network(r20, shared_dir, tmp_path, capsys):
    # convert once, evaluate two image ranges from the file, merge: the same numbers as one run over
    # all the images converting in-process with the same settings (the file loses nothing)
    data = ["--data-dir", str(shared_dir / "data")]
    conv = ["--calib-size", "32", "--calib-subset", "8", "--horizon", "8"]
    net = tmp_path / "r20.snn"
    assert main(["convert", "--arch", "resnet20", "--checkpoint", r20, *data, *conv, "--no-progress",
                 "--out", str(net)]) == 0
    run = ["eval", "--arch", "resnet20", "--checkpoint", r20, *data, "--timesteps", "4,8", "--batch-size", "8",
           "--no-progress"]
    whole, a, b, merged = (tmp_path / f"{k}.json" for k in ("whole", "a", "b", "merged"))
    assert main([*run, *conv, "--limit", "24", "--json", str(whole)]) == 0
    assert main([*run, "--network", str(net), "--limit", "16", "--json", str(a)]) == 0
    assert main([*run, "--network", str(net), "--skip", "16", "--limit", "8", "--json", str(b)]) == 0
    assert "images 16..23 of" in capsys.readouterr().out
    assert main(["merge", str(b), str(a), "--json", str(merged)]) == 0
    assert "24 images of" in capsys.readouterr().out
    w, m = json.loads(whole.read_text()), json.loads(merged.read_text())
    for key in ("counts", "snn_accuracy", "ann_accuracy", "agreement", "firing_rate", "num_images"):
        assert m[key] == w[key], key
    part = json.loads(b.read_text())
    assert part["first_image"] == 16 and part["network_file"] == str(net) and part["horizon"] == 8
    # the conversion's time as `convert` measured it
    assert part["convert_seconds"] > 0 and part["convert_seconds"] == json.loads(a.read_text())["convert_seconds"]
    assert part["calibration"]["split"] == "calib" and part["calib_size"] == 32
    # the saved network fixes the conversion: its options are refused, named as flags
    code, err = _main(capsys, *run, "--network", str(net), "--horizon", "16", "--percentile", "99")
    assert "--percentile, --horizon cannot be given with it" in _one_line_error(code, err)
    code, err = _main(capsys, "eval", "--arch", "resnet56", "--checkpoint",
                      str(shared_dir / "models" / "resnet56-4bfd9763.th"), *data, "--network", str(net), "--limit", "8")
    assert "was converted from resnet20, not from --model resnet56" in _one_line_error(code, err)
    code, err = _main(capsys, "merge", str(a), str(a))
    assert "overlaps" in _one_line_error(code, err)
