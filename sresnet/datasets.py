"""Image datasets for evaluation and calibration, streamed in batches through DataLoaders.

Each dataset yields ``(image [C, H, W] float32, label int)`` after a :class:`Preprocess`,
so a ``torch.utils.data.DataLoader`` (with worker processes for the decoding) turns it into
``(images [B, C, H, W], labels [B])`` batches for :func:`sresnet.evaluate_snn`.

- :class:`ImageFolder`: ``root/<class>/<image>``, classes sorted by name to indices 0..K-1
  (torchvision's convention; ImageNet's ``train/`` and class-foldered ``val/``), read with Pillow.
- :class:`CifarFolder`: the CIFAR-10 / CIFAR-100 python-pickle folders (safe unpickler).
- :class:`NpzImages`: an ``.npz`` file with ``images`` (uint8 ``[N, H, W, C]``,
  ``[N, C, H, W]`` with C in {1, 3}, or ``[N, H, W]``) and ``labels`` (int ``[N]``).
- :class:`Transformed`: any dataset yielding ``(PIL image | array | tensor, int)``, e.g. a
  torchvision dataset, with a :class:`Preprocess` applied to its images.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .data import _batch_arrays, _find_batch_dir, cifar_batch_path
from .preprocess import Preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = {"train", "val", "test"}


class ImageFolder(Dataset):
    """Images in ``root/<class name>/<file>``; class indices follow the sorted class names.

    Args:
        root: the folder of class folders.
        transform: a :class:`Preprocess` (default: scale to [0, 1] only).

    Attributes:
        classes: sorted class folder names; samples: ``[(path, class index)]`` in class order,
        files sorted by name within a class; targets: the class indices.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds images but no class folders (a flat folder), or no images.
        Reading an item raises ValueError naming the file when Pillow cannot decode it.
    """

    def __init__(self, root: str | Path, transform: Preprocess | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        self.transform = transform or Preprocess()
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            n = sum(1 for f in self.root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            raise ValueError(
                f"{self.root} has no class subfolders ({n} images directly in it): an ImageFolder is "
                "root/<class name>/<image> with one folder per class (sorted names give the labels 0..K-1)"
            )
        self.samples: list[tuple[Path, int]] = []
        for idx, name in enumerate(self.classes):
            files = sorted(f for f in (self.root / name).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            self.samples += [(f, idx) for f in files]
        if not self.samples:
            raise ValueError(f"{self.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders "
                             f"{', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''}")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path, target = self.samples[i]
        try:
            with Image.open(path) as img:
                img.load()
                return self.transform(img, str(path)), target
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


class CifarFolder(Dataset):
    """CIFAR-10 (``test_batch``, ``data_batch_1``) or CIFAR-100 (``test``, ``train``) pickles.

    Args:
        data_dir: the batch folder or its parent (``cifar-10-batches-py/``, ``cifar-100-python/``).
        split: "test", or "calib" (``data_batch_1`` / CIFAR-100's ``train``; the other
            CIFAR-10 training batches are never assumed to exist).
        transform: a :class:`Preprocess` applied to each uint8 ``[3, 32, 32]`` image.

    The uint8 pixels of the split stay in memory (30 MB for 10,000 images); the float images
    are made per item.
    """

    def __init__(self, data_dir: str | Path, split: str = "test", transform: Preprocess | None = None):
        self.path = cifar_batch_path(data_dir, split)
        data, labels = _batch_arrays(self.path)
        self.images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
        self.targets = torch.from_numpy(labels)
        self.transform = transform or Preprocess()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i], f"{self.path}[{i}]"), int(self.targets[i])


def _memmap_npz_member(path: Path, key: str) -> np.ndarray | None:
    """Memory-map array ``key`` of an uncompressed ``.npz`` (``numpy.savez``); None if compressed.

    An ``.npz`` is a zip of ``.npy`` files; a stored (uncompressed) member is a plain ``.npy``
    at an offset of the file, so its pixels can stay on disk and be paged in per item.
    """
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        # zip local file header: name and extra-field lengths at bytes 26..29, then the data
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class NpzImages(Dataset):
    """Images and labels from an ``.npz`` file (``numpy.savez``), loaded without pickle.

    Expected arrays: ``images``: uint8, ``[N, H, W, C]`` (channels last, as numpy/Pillow
    write them) or ``[N, C, H, W]`` with C in {1, 3}, or grayscale ``[N, H, W]``; ``labels``:
    integer ``[N]`` class indices. ``images`` of an uncompressed file (``numpy.savez``) is
    memory-mapped, so memory does not grow with the file; ``numpy.savez_compressed`` files
    are read whole.

    Raises:
        ValueError: missing keys (the message lists the keys found), a non-uint8 or
            wrongly shaped ``images``, or a label count that differs from the image count.
    """

    def __init__(self, path: str | Path, transform: Preprocess | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} does not exist or is not a file")
        unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile, struct.error)
        try:
            z = np.load(self.path, allow_pickle=False)
        except unreadable as exc:
            raise ValueError(f"{self.path} is not a readable .npz file: {type(exc).__name__}: {exc}") from exc
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"{self.path} holds one array, not an .npz archive with 'images' and 'labels'")
        with z:
            keys = list(z.keys())
            if "images" not in keys or "labels" not in keys:
                raise ValueError(f"{self.path} needs arrays 'images' and 'labels'; found {keys}")
            try:
                labels = z["labels"]
                images = _memmap_npz_member(self.path, "images")
                if images is None:
                    images = z["images"]
            except unreadable as exc:
                raise ValueError(f"{self.path} is not a readable .npz file: {type(exc).__name__}: {exc}") from exc
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"{self.path}: 'images' must be uint8 [N, H, W, C], [N, C, H, W] or [N, H, W], "
                             f"got {images.dtype} {images.shape}")
        if images.ndim == 3:
            images = images[:, :, :, None]
        elif images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
            images = images.transpose(0, 2, 3, 1)
        if images.shape[-1] not in (1, 3):
            raise ValueError(f"{self.path}: 'images' has no channel axis of size 1 or 3: {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{self.path}: 'labels' must be integer [N] with N = {images.shape[0]} images, "
                             f"got {labels.dtype} {labels.shape}")
        self.images = images
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform or Preprocess()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        return self.transform(img[:, :, 0] if img.shape[-1] == 1 else img, f"{self.path}[{i}]"), int(self.targets[i])


class Transformed(Dataset):
    """Apply a :class:`Preprocess` to the images of any ``(image, label)`` dataset.

    For torchvision datasets created without a transform (items ``(PIL image, int)``) or with
    ``ToTensor`` (``([C, H, W] float in [0, 1], int)``).
    """

    def __init__(self, dataset, transform: Preprocess):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        return self.transform(image, f"item {i}"), int(label)


def open_dataset(path: str | Path, split: str = "test", transform: Preprocess | None = None) -> Dataset:
    """Open ``path`` as a CIFAR pickle folder, an ImageFolder or an ``.npz`` file.

    Args:
        path: an ``.npz`` file; a folder with CIFAR batches (or its parent); an ImageFolder
            root; or a folder whose subfolders are ``train``/``val`` (ImageNet's layout: "test"
            reads ``val/`` (or ``test/``), "calib" reads ``train/``).
        split: "test" or "calib" (which CIFAR batch / ImageNet subfolder to read).
        transform: the :class:`Preprocess` of every image.

    Returns:
        a map-style dataset of ``(float32 [C, H, W], int)`` with an attribute ``kind``
        ("cifar", "imagefolder", "npz") and ``source`` (the file or folder read).
    """
    path = Path(path)
    if split not in ("test", "calib"):
        raise ValueError(f"split={split!r}; accepted: 'test', 'calib'")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"data file {path} is not an .npz; accepted: a CIFAR folder, an ImageFolder or an .npz")
        ds: Dataset = NpzImages(path, transform)
        ds.kind, ds.source = "npz", str(path)
        return ds
    if not path.is_dir():
        raise FileNotFoundError(f"data path {path} does not exist")
    names = ("test_batch", "test") if split == "test" else ("data_batch_1", "train")
    if any(_has_batch(path, n) for n in names + ("test_batch", "data_batch_1")):
        ds = CifarFolder(path, split, transform)
        ds.kind, ds.source = "cifar", str(ds.path)
        return ds
    subdirs = {d.name for d in path.iterdir() if d.is_dir()}
    if subdirs and subdirs <= SPLIT_FOLDERS:
        want = ("train",) if split == "calib" else ("val", "test")
        found = [w for w in want if w in subdirs]
        if not found:
            raise FileNotFoundError(f"{path} has split folders {sorted(subdirs)} but no {' or '.join(want)}/ for "
                                    f"the {split} images")
        path = path / found[0]
    ds = ImageFolder(path, transform)
    ds.kind, ds.source = "imagefolder", str(path)
    return ds


def default_calibration(data: str | Path) -> Path:
    """Where calibration images come from when none are given: never the test images.

    CIFAR folder: the same folder (its ``data_batch_1``/``train``); ImageFolder ``.../val``
    (or any folder) with a ``train/`` sibling: that sibling; a root with ``train/`` and
    ``val/``: the root (read as "calib": its ``train/``).

    Raises:
        ValueError: no training images beside ``data`` (an ``.npz``, or an ImageFolder
            without a ``train/`` sibling): pass calibration data explicitly.
    """
    data = Path(data)
    if data.is_dir():
        if any(_has_batch(data, n) for n in ("data_batch_1", "train")):
            return data
        if (data / "train").is_dir():
            return data
        sibling = data.parent / "train"
        if data.name != "train" and sibling.is_dir():
            return sibling
    raise ValueError(
        f"no calibration images for --data {data}: calibration needs training images (never the test "
        "images); pass --calib-data (a CIFAR folder, an ImageFolder or an .npz), or put a train/ folder "
        "beside the evaluated folder"
    )


def _has_batch(folder: Path, name: str) -> bool:
    try:
        _find_batch_dir(folder, name)
        return True
    except FileNotFoundError:
        return False


def class_interleaved(targets, n: int | None = None) -> list[int]:
    """Indices that take the classes in turn (first image of each class, then the second, ...).

    ImageFolder items are sorted by class, so "the first N" would be one or two classes; this
    order makes the first N a class-balanced, deterministic subset.
    """
    targets = [int(t) for t in targets]
    per_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        per_class.setdefault(t, []).append(i)
    order: list[int] = []
    depth = 0
    lists = [per_class[c] for c in sorted(per_class)]
    while len(order) < len(targets) and (n is None or len(order) < n):
        for lst in lists:
            if depth < len(lst):
                order.append(lst[depth])
        depth += 1
    return order if n is None else order[:n]


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` items; images of different sizes get a clear error."""
    shapes = {tuple(x.shape) for x, _ in batch}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise ValueError(
            f"images of different sizes in one batch ({'x'.join(map(str, a))} and {'x'.join(map(str, b))}): "
            "give --resize and --crop (or a preset) so that every image has the same size"
        )
    return torch.stack([x for x, _ in batch]), torch.tensor([int(y) for _, y in batch], dtype=torch.int64)


def _one_thread(_: int) -> None:
    # decoding workers run beside the simulation: one thread each avoids oversubscribing the cores
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_size: int = 32, workers: int = 0, limit: int | None = None,
                balanced: bool | None = None, skip: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` in a fixed order (no shuffling).

    Args:
        dataset: a map-style dataset of ``(float [C, H, W], int)`` items.
        batch_size: images per batch; workers: decoding processes (0: in this process).
        limit: keep the first ``limit`` items after ``skip`` (None: all).
        balanced: take the classes in turn (:func:`class_interleaved`); default: for
            ImageFolders, whose files are sorted by class.
        skip: leave out the first ``skip`` items of that order (so a long evaluation can be
            run in parts: ``skip=0, limit=500``, then ``skip=500, limit=500``, ...).

    Raises:
        ValueError: a batch_size, workers, limit or skip out of range (skip past the end of
            the dataset included: nothing would be left).

    Returns:
        a DataLoader yielding ``(images [B, C, H, W] float32, labels [B] int64)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int (0: decode in this process), got {workers!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    check_skip(skip)
    if skip >= len(dataset) > 0:
        raise ValueError(f"skip={skip} leaves no image: the dataset has {len(dataset)}")
    if balanced is None:
        balanced = isinstance(dataset, ImageFolder)
    stop = None if limit is None else skip + limit
    if balanced:
        dataset = Subset(dataset, class_interleaved(dataset.targets, stop)[skip:])
    elif skip or (stop is not None and stop < len(dataset)):
        dataset = Subset(dataset, range(skip, len(dataset) if stop is None else min(stop, len(dataset))))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      worker_init_fn=_one_thread if workers else None)


def check_skip(skip) -> int:
    """``skip`` if it is an int >= 0 (images left out at the start), else a ValueError."""
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ValueError(f"skip must be a non-negative int (images left out at the start), got {skip!r}")
    return skip


def limit_batches(batches: Iterable, limit: int | None, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``batches`` after the first ``skip`` images, up to ``limit`` images in all.

    Batches straddling either edge are cut; the images skipped are still read (a plain
    iterable cannot seek).
    """
    check_skip(skip)
    seen = 0
    for images, labels in batches:
        if skip:
            drop = min(skip, images.shape[0])
            images, labels, skip = images[drop:], labels[drop:], skip - drop
        if limit is not None and seen + images.shape[0] > limit:
            images, labels = images[: limit - seen], labels[: limit - seen]
        if images.shape[0]:
            yield images, labels
        seen += images.shape[0]
        if limit is not None and seen >= limit:
            return
