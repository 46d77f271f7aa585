"""Image preprocessing: named presets for the common checkpoint conventions, or explicit settings.

A :class:`Preprocess` turns one image (a Pillow image, a ``[H, W, C]`` uint8 array or a
``[C, H, W]`` tensor) into the normalized float32 ``[C, H, W]`` tensor a network takes:
optional resize of the shorter side, optional centre crop, scaling to [0, 1], then
``(x - mean) / std`` per channel. Resize and crop follow torchvision's ``Resize`` and
``CenterCrop`` on Pillow images (bilinear; Pillow's resampling filter widens with the
downscale factor, which is the antialiasing torchvision gets on PIL images), so
checkpoints trained with torchvision's transforms see the same pixels.

Checkpoint families normalize differently and a wrong choice silently costs accuracy, so
the presets name the convention:

- ``imagenet``: shorter side to 256, centre crop 224, ImageNet mean/std (torchvision's
  ImageNet evaluation transform).
- ``cifar``: 32x32 images, CIFAR-10 mean/std (most CIFAR model zoos).
- ``cifar-imagenet-stats``: 32x32 images, ImageNet mean/std (the pytorch_resnet_cifar10
  checkpoints; the default of ``sresnet eval --arch --data-dir``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocess:
    """One image -> normalized float32 ``[C, H, W]``.

    Args:
        mean, std: per-channel statistics of the [0, 1]-scaled images (None: no normalization,
            the image stays in [0, 1]). Their length sets the channel count (1: grayscale).
        resize: shorter side after a bilinear resize (the longer side keeps the aspect ratio,
            truncated as torchvision does); None: no resize.
        crop: side of the centre crop; None: no crop.
        image_size: a preset for fixed-size images (CIFAR's 32) refuses any other input size.
        min_side: a preset for photos (ImageNet) refuses images whose shorter side is below
            this: a 32x32 image under the ``imagenet`` preset is almost surely the wrong preset.
        name: the preset name, or None for explicit settings.

    Raises:
        ValueError: at construction, mean/std of different lengths, std <= 0, non-finite
            values, or resize/crop not positive; when called, an image whose size does not
            match the preset or is smaller than the crop, or whose channel count is not the
            statistics' length.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    crop: int | None = None
    image_size: int | None = None
    min_side: int | None = None
    name: str | None = None
    _stats: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"mean and std go together: got mean={self.mean!r}, std={self.std!r}")
        if self.mean is not None:
            mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
            if len(mean) != len(std) or len(mean) not in (1, 3):
                raise ValueError(f"mean and std need 1 or 3 values each (one per channel), got {mean} and {std}")
            if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
                raise ValueError(f"mean must be finite and std finite and > 0, got mean={mean}, std={std}")
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)
            stats = (torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1))
            object.__setattr__(self, "_stats", stats)
        for label in ("resize", "crop"):
            v = getattr(self, label)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{label} must be a positive int (pixels) or None, got {v!r}")

    @property
    def channels(self) -> int:
        return len(self.mean) if self.mean is not None else 3

    def describe(self) -> dict:
        """The settings as a JSON-friendly dict (recorded in evaluation results)."""
        return {"preset": self.name, "scale": "[0, 1]", "mean": list(self.mean) if self.mean else None,
                "std": list(self.std) if self.std else None, "resize": self.resize, "crop": self.crop,
                "interpolation": "bilinear (antialiased)" if self.resize else None}

    def _check_size(self, h: int, w: int, where: str) -> None:
        if self.image_size is not None and (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"{where}is {h}x{w} but preset {self.name!r} expects {self.image_size}x{self.image_size} images; "
                "choose the preset of your checkpoint (imagenet: resize 256, crop 224) or give --mean/--std "
                "with --resize/--crop"
            )
        if self.min_side is not None and min(h, w) < self.min_side:
            raise ValueError(
                f"{where}is {h}x{w}: preset {self.name!r} expects photos with a shorter side of at least "
                f"{self.min_side} pixels (it resizes to {self.resize}, crops {self.crop}); for 32x32 images use "
                "--preset cifar or cifar-imagenet-stats"
            )
        if self.crop is not None and self.resize is None and min(h, w) < self.crop:
            raise ValueError(f"{where}is {h}x{w}, smaller than the centre crop {self.crop}; add --resize")

    def __call__(self, image, where: str = "") -> torch.Tensor:
        """Preprocess one image.

        Args:
            image: a Pillow image (converted to RGB, or L for one channel), a uint8 numpy
                array ``[H, W, C]`` or ``[H, W]``, or a tensor ``[C, H, W]``: uint8 (0..255)
                or float already in [0, 1] (e.g. torchvision's ``ToTensor`` output).
            where: a prefix for error messages naming the image (e.g. its file).

        Returns:
            float32 ``[C, H', W']``.
        """
        where = f"{where}: image " if where else "image "
        if _is_pil(image):
            image = image.convert("L" if self.channels == 1 else "RGB")
            w, h = image.size
            self._check_size(h, w, where)
            if self.resize is not None:
                image = image.resize(_resized_wh(w, h, self.resize), resample=_pil_bilinear())
            x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
            x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        else:
            x = _to_chw(image, where)
            self._check_size(x.shape[1], x.shape[2], where)
            if self.resize is not None:
                x = _resize_tensor(x, self.resize)
        if x.shape[0] != self.channels:
            raise ValueError(f"{where}has {x.shape[0]} channels but the mean/std have {self.channels} values")
        if self.crop is not None:
            x = _centre_crop(x, self.crop, where)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if self.mean is not None:
            mean, std = self._stats
            x = (x - mean) / std
        return x.contiguous()


PRESETS = {
    "imagenet": Preprocess(IMAGENET_MEAN, IMAGENET_STD, resize=256, crop=224, min_side=64, name="imagenet"),
    "cifar": Preprocess(CIFAR10_MEAN, CIFAR10_STD, image_size=32, name="cifar"),
    "cifar-imagenet-stats": Preprocess(IMAGENET_MEAN, IMAGENET_STD, image_size=32, name="cifar-imagenet-stats"),
}


def make_preprocess(preset: str | None = None, *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, resize: int | None = None,
                    crop: int | None = None) -> Preprocess:
    """A preset by name, or explicit settings (without either: scale to [0, 1] only).

    Args:
        preset: "imagenet", "cifar" or "cifar-imagenet-stats" (see the module docstring).
        mean, std: per-channel statistics of [0, 1]-scaled images (3 values each, or 1).
        resize: shorter side in pixels; crop: centre crop side in pixels.

    Raises:
        ValueError: an unknown preset, a preset combined with explicit settings, or invalid values.

    Example:
        >>> make_preprocess(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
    """
    explicit = {k: v for k, v in dict(mean=mean, std=std, resize=resize, crop=crop).items() if v is not None}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; accepted: {', '.join(PRESETS)}")
        if explicit:
            raise ValueError(f"preset {preset!r} fixes mean/std/resize/crop; do not combine it with "
                             f"{', '.join(explicit)} (give all settings explicitly instead)")
        return PRESETS[preset]
    return Preprocess(mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
                      resize=resize, crop=crop)


def _is_pil(image) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(image, Image.Image)


def _pil_bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


def _resized_wh(w: int, h: int, size: int) -> tuple[int, int]:
    # torchvision's Resize(int): the shorter side becomes `size`, the longer is truncated
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def _to_chw(image, where: str) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"{where}array must be uint8 [H, W] or [H, W, C], got {image.dtype} {image.shape}")
        # a copy: the array may be a read-only memory map, which torch will not wrap
        x = torch.from_numpy(np.array(image, copy=True))
        return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or not (image.dtype == torch.uint8 or image.is_floating_point()):
            raise ValueError(f"{where}tensor must be [C, H, W] uint8 or float in [0, 1], got "
                             f"{image.dtype} {tuple(image.shape)}")
        return image
    raise TypeError(f"{where}must be a PIL image, a uint8 numpy array or a [C, H, W] tensor, "
                    f"got {type(image).__name__}")


def _resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[1:]
    nw, nh = _resized_wh(w, h, size)
    if x.dtype == torch.uint8:
        # through Pillow, so uint8 arrays and tensors get exactly the pixels PIL images get
        from PIL import Image

        img = Image.fromarray(x.permute(1, 2, 0).squeeze(-1).numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy())
        out = torch.from_numpy(np.array(img.resize((nw, nh), resample=_pil_bilinear()), dtype=np.uint8))
        return out.unsqueeze(0) if out.dim() == 2 else out.permute(2, 0, 1)
    return F.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]


def _centre_crop(x: torch.Tensor, size: int, where: str) -> torch.Tensor:
    h, w = x.shape[1:]
    if size > h or size > w:
        raise ValueError(f"{where}is {h}x{w} after resizing, smaller than the centre crop {size}")
    # torchvision's CenterCrop offsets: round((H - size) / 2)
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[:, top : top + size, left : left + size]
