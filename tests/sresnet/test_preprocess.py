import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sresnet.datasets import CifarFolder
from sresnet.data import load_cifar
from sresnet.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, PRESETS, Preprocess, make_preprocess


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content plus noise, so resampling differences are visible but bounded
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / w), (yy * 255 / h), ((xx + yy) * 127 / (h + w))], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def test_scale_only_without_settings():
    arr = _photo(7, 5)
    x = make_preprocess()(arr)
    assert x.shape == (3, 7, 5) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("preset,mean,std", [("cifar", CIFAR10_MEAN, CIFAR10_STD),
                                             ("cifar-imagenet-stats", IMAGENET_MEAN, (0.229, 0.224, 0.225))])
def test_cifar_presets_normalize(preset, mean, std):
    arr = _photo(32, 32, 1)
    x = make_preprocess(preset)(Image.fromarray(arr))
    for c in range(3):
        assert np.allclose(x[c].numpy(), (arr[..., c] / 255.0 - mean[c]) / std[c], atol=1e-6)


def test_cifar_preset_is_bit_identical_to_load_cifar(shared_dir):
    # the default of `eval --arch --data-dir`: results must not change with the streaming path
    x_old, y_old = load_cifar(shared_dir / "data", "test", limit=20)
    ds = CifarFolder(shared_dir / "data", "test", PRESETS["cifar-imagenet-stats"])
    x_new = torch.stack([ds[i][0] for i in range(20)])
    assert torch.equal(x_new, x_old) and [ds[i][1] for i in range(20)] == y_old.tolist()


def test_imagenet_preset_geometry_like_torchvision():
    # torchvision: Resize(256) on 500x375 (W x H) gives 341x256; CenterCrop(224) offsets round((256-224)/2)=16
    # and round((341-224)/2)=58 (Python rounds half to even, as torchvision does)
    arr = _photo(375, 500, 2)
    x = PRESETS["imagenet"](Image.fromarray(arr))
    assert x.shape == (3, 224, 224)
    resized = np.asarray(Image.fromarray(arr).resize((341, 256), Image.Resampling.BILINEAR))
    expected = (resized[16:240, 58:282, 0] / 255.0 - 0.485) / 0.229
    assert np.allclose(x[0].numpy(), expected, atol=1e-5)


def test_resize_is_antialiased():
    # an independent antialiased bilinear (torch's) agrees with the Pillow path to within a few grey levels;
    # without antialiasing a 4x downscale of noisy content differs far more
    arr = _photo(400, 300, 3)
    ours = make_preprocess(resize=75)(arr)  # uint8 arrays go through Pillow
    t = torch.from_numpy(arr).permute(2, 0, 1).float()[None] / 255
    anti = F.interpolate(t, size=(100, 75), mode="bilinear", antialias=True, align_corners=False)[0]
    plain = F.interpolate(t, size=(100, 75), mode="bilinear", antialias=False, align_corners=False)[0]
    assert ours.shape == (3, 100, 75)
    err_anti = (ours - anti).abs().mean().item()
    err_plain = (ours - plain).abs().mean().item()
    assert err_anti < 0.01 and err_plain > 3 * err_anti
    # a float tensor (ToTensor output) takes torch's antialiased path, close to Pillow's
    assert (make_preprocess(resize=75)(t[0]) - ours).abs().mean().item() < 0.01


def test_uint8_tensor_array_and_pil_agree():
    arr = _photo(50, 70, 4)
    p = make_preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=40, crop=32)
    a = p(arr)
    assert torch.equal(a, p(Image.fromarray(arr))) and torch.equal(a, p(torch.from_numpy(arr).permute(2, 0, 1)))
    assert a.shape == (3, 32, 32)


def test_grayscale_and_rgba_pil_become_rgb():
    arr = _photo(32, 32, 5)
    assert make_preprocess("cifar")(Image.fromarray(arr[..., 0])).shape == (3, 32, 32)
    assert make_preprocess("cifar")(Image.fromarray(np.dstack([arr, arr[..., :1]]))).shape == (3, 32, 32)


@pytest.mark.parametrize("preset,size", [("cifar", (40, 40)), ("cifar-imagenet-stats", (32, 28)), ("imagenet", (32, 32))],
                         ids=["cifar-40", "cifar-stats-32x28", "imagenet-32"])
def test_preset_size_mismatch(preset, size):
    img = Image.fromarray(_photo(*size))
    with pytest.raises(ValueError, match=f"{size[0]}x{size[1]}.*preset '{preset}'"):
        PRESETS[preset](img, "some/file.png")
    with pytest.raises(ValueError, match="some/file.png"):
        PRESETS[preset](img, "some/file.png")


def test_crop_larger_than_image():
    with pytest.raises(ValueError, match="smaller than the centre crop 40"):
        make_preprocess(crop=40)(_photo(32, 32))
    with pytest.raises(ValueError, match="after resizing, smaller than the centre crop 64"):
        make_preprocess(resize=48, crop=64)(_photo(32, 32))


@pytest.mark.parametrize("kwargs,match", [
    (dict(mean=(0.5, 0.5, 0.5)), "mean and std go together"),
    (dict(mean=(0.5, 0.5), std=(0.2, 0.2)), "1 or 3 values"),
    (dict(mean=(0.5, 0.5, 0.5), std=(0.2, 0.0, 0.2)), "std finite and > 0"),
    (dict(mean=(0.5, float("nan"), 0.5), std=(0.2, 0.2, 0.2)), "finite"),
    (dict(resize=0), "resize must be a positive int"),
    (dict(crop=2.5), "crop must be a positive int"),
], ids=["mean-alone", "two-values", "zero-std", "nan-mean", "resize-0", "crop-float"])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_preprocess(**kwargs)


def test_preset_names_and_combination():
    with pytest.raises(ValueError, match="unknown preset 'imagenet1k'; accepted: imagenet, cifar"):
        make_preprocess("imagenet1k")
    with pytest.raises(ValueError, match="do not combine it with mean"):
        make_preprocess("cifar", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


def test_channel_mismatch_and_bad_input_types():
    with pytest.raises(ValueError, match="has 1 channels but the mean/std have 3"):
        make_preprocess("cifar")(torch.zeros(1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="array must be uint8"):
        make_preprocess()(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="got list"):
        make_preprocess()([[0, 1]])


def test_describe_is_recorded():
    d = PRESETS["imagenet"].describe()
    assert d["preset"] == "imagenet" and d["resize"] == 256 and d["crop"] == 224 and d["mean"][0] == 0.485
    assert Preprocess().describe()["mean"] is None
