import pytest
import torch

from sresnet.models import cifar_resnet, imagenet_resnet, load_checkpoint


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
