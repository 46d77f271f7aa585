import pytest
import torch

from sresnet.models import build_model, cifar_resnet, imagenet_resnet, load_checkpoint


@pytest.mark.parametrize("name,blocks", [("resnet20", 3), ("resnet32", 5), ("resnet56", 9), ("resnet110", 18)])
def test_cifar_resnet_structure(name, blocks):
    m = cifar_resnet(name)
    assert len(m.layer1) == blocks and len(m.layer3) == blocks
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnet_param_count_resnet20():
    # 0.27M parameters as in He et al. 2016 / pytorch_resnet_cifar10
    n = sum(p.numel() for p in cifar_resnet("resnet20").parameters())
    assert 0.26e6 < n < 0.28e6


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_resnet_names_match_torchvision(name):
    m = imagenet_resnet(name, 7, width=4).eval()
    keys = set(m.state_dict())
    assert {"conv1.weight", "bn1.running_var", "fc.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.weight"} <= keys
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_bad_names():
    with pytest.raises(ValueError, match="resnet21"):
        cifar_resnet("resnet21")
    with pytest.raises(ValueError, match="shortcut"):
        cifar_resnet("resnet20", shortcut="C")


def _save(tmp_path, sd, wrap=True):
    path = tmp_path / "ck.th"
    torch.save({"best_prec1": 1.0, "state_dict": {"module." + k: v for k, v in sd.items()}} if wrap else sd, path)
    return path


def test_round_trip_with_module_prefix(tmp_path):
    m = cifar_resnet("resnet20")
    path = _save(tmp_path, m.state_dict())
    loaded = load_checkpoint("resnet20", path)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    assert torch.equal(loaded(x), m(x))


def test_bare_state_dict_option_b(tmp_path):
    m = cifar_resnet("resnet20", "B")
    path = _save(tmp_path, m.state_dict(), wrap=False)
    assert isinstance(load_checkpoint("resnet20", path, shortcut="B"), torch.nn.Module)


def test_wrong_depth_lists_keys(tmp_path):
    path = _save(tmp_path, cifar_resnet("resnet32").state_dict())
    with pytest.raises(ValueError) as err:
        load_checkpoint("resnet20", path)
    assert "unexpected keys" in str(err.value) and "layer1.3.conv1.weight" in str(err.value)


def test_missing_keys_listed(tmp_path):
    sd = cifar_resnet("resnet20").state_dict()
    del sd["layer2.1.conv2.weight"]
    path = _save(tmp_path, sd)
    with pytest.raises(ValueError, match=r"missing keys: layer2\.1\.conv2\.weight"):
        load_checkpoint("resnet20", path)


def test_shape_mismatch_listed(tmp_path):
    sd = cifar_resnet("resnet20").state_dict()
    sd["linear.weight"] = torch.zeros(10, 32)
    path = _save(tmp_path, sd)
    with pytest.raises(ValueError, match="shape mismatches: linear.weight"):
        load_checkpoint("resnet20", path)


def test_truncated_and_garbage_files(tmp_path):
    good = _save(tmp_path, cifar_resnet("resnet20").state_dict())
    trunc = tmp_path / "trunc.th"
    trunc.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint("resnet20", trunc)
    junk = tmp_path / "junk.th"
    junk.write_text("hello, not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint("resnet20", junk)
    with pytest.raises(FileNotFoundError):
        load_checkpoint("resnet20", tmp_path / "absent.th")


def test_shared_checkpoints_load(shared_dir):
    for name, f in [("resnet20", "resnet20-12fca82f.th"), ("resnet56", "resnet56-4bfd9763.th")]:
        m = load_checkpoint(name, shared_dir / "models" / f)
        assert not m.training
    with pytest.raises(ValueError, match="unexpected keys"):
        load_checkpoint("resnet20", shared_dir / "models" / "resnet56-4bfd9763.th")


# parameter counts of torchvision's models (its documentation's "num_params"), independent of this code
@pytest.mark.parametrize("name,params", [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
                                         ("resnet101", 44_549_160), ("resnet152", 60_192_808),
                                         ("wide_resnet50_2", 68_883_240), ("wide_resnet101_2", 126_886_696)])
def test_torchvision_parameter_counts(name, params):
    with torch.device("meta"):  # no memory, no initialization cost
        m = imagenet_resnet(name)
    assert sum(p.numel() for p in m.parameters()) == params


def test_wide_resnet_bottleneck_width():
    with torch.device("meta"):
        m = imagenet_resnet("wide_resnet50_2")
    # torchvision: width = planes * 128 / 64 inside the block, the output stays planes * 4
    assert m.layer1[0].conv2.weight.shape == (128, 128, 3, 3) and m.layer1[0].conv3.weight.shape == (256, 128, 1, 1)


def test_resnext_refused_with_reason():
    with pytest.raises(ValueError, match=r"resnext50_32x4d uses grouped 3x3 convolutions \(groups=32\).*groups=1 only"):
        imagenet_resnet("resnext50_32x4d")
    with pytest.raises(ValueError, match="grouped"):
        load_checkpoint("resnext101_32x8d", "unused.pt")


def test_class_count_mismatch_names_both(tmp_path):
    path = tmp_path / "tv.pt"
    torch.save(imagenet_resnet("resnet18", 10).state_dict(), path)
    assert load_checkpoint("resnet18", path).fc.out_features == 10  # read from the checkpoint
    with pytest.raises(ValueError, match=r"is for 10 classes \(fc.weight \(10, 512\)\) but the model has 100 outputs"):
        load_checkpoint("resnet18", path, num_classes=100)


FACTORY = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes=7):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


def build(num_classes=7):
    return Net(num_classes)


def not_a_module():
    return 3
'''


def test_user_factory_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(FACTORY)
    spec = f"{tmp_path / 'mynets.py'}:build"
    ref = build_model(spec, num_classes=3).eval()
    ck = tmp_path / "net.pt"
    torch.save({"state_dict": ref.state_dict()}, ck)
    loaded = load_checkpoint(spec, ck, num_classes=3)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(loaded(x), ref(x)) and not loaded.training
    monkeypatch.syspath_prepend(str(tmp_path))
    assert isinstance(load_checkpoint("mynets:build", ck, num_classes=3), torch.nn.Module)
    # the factory's default head (7 classes) against a 3-class checkpoint: both counts named
    with pytest.raises(ValueError, match=r"is for 3 classes \(head.weight \(3, 4\)\) but the model has 7 outputs"):
        load_checkpoint("mynets:build", ck)
    assert load_checkpoint("mynets:build", None).head.out_features == 7
    with pytest.raises(ValueError, match="returned a int, not an nn.Module"):
        build_model("mynets:not_a_module")
    with pytest.raises(ValueError, match="has no callable 'absent'"):
        build_model("mynets:absent")
    with pytest.raises(ValueError, match="cannot import 'no_such_pkg.nets'.*PYTHONPATH"):
        build_model("no_such_pkg.nets:build")
    with pytest.raises(ValueError, match="needs a checkpoint file"):
        load_checkpoint("resnet18", None)
