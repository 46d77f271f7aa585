"""CIFAR-10/100 loader for the python-pickle layout, with a restricted unpickler; :func:`take`.

Streaming datasets (ImageFolder, CIFAR, .npz) are in :mod:`sresnet.datasets`; :func:`take`
collects the first N images of any batch iterable (calibration for :func:`sresnet.convert`).

Pickle can run arbitrary code on load. The CIFAR batches only need builtin containers and
numpy array reconstruction, so :class:`SafeUnpickler` resolves exactly those globals and
refuses every other one *before* anything is called (``find_class`` raises, so a
malicious ``__reduce__`` never reaches its callable).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("_codecs", "encode"),
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR batch needs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise ForbiddenGlobal(
            f"refusing to load global {module}.{name}: a CIFAR batch only needs builtin containers "
            "and numpy arrays (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype)"
        )


def safe_load_pickle(path: str | Path) -> object:
    """Unpickle ``path`` with :class:`SafeUnpickler` (latin1 strings, as the CIFAR files need).

    Raises:
        FileNotFoundError: no such file.
        ValueError: truncated/corrupt file, or a pickle that asks for a forbidden global.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    data = path.read_bytes()
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenGlobal as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as exc:
        raise ValueError(f"{path} is not a valid CIFAR pickle batch (truncated or corrupt): {type(exc).__name__}: {exc}") from exc


def _batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = safe_load_pickle(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}; a CIFAR batch is a dict with 'data' and labels")
    keys = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data = keys.get("data")
    labels = keys.get("labels", keys.get("fine_labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise ValueError(f"{path} lacks 'data' (uint8 array) or 'labels'/'fine_labels'; keys found: {sorted(map(str, keys))}")
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: 'data' must be uint8 [N, 3072] with N labels, got {data.dtype} {data.shape} "
            f"and {labels.shape[0]} labels"
        )
    return data, labels


def _find_batch_dir(data_dir: Path, name: str) -> Path:
    for cand in (data_dir, data_dir / "cifar-10-batches-py", data_dir / "cifar-100-python"):
        if (cand / name).is_file():
            return cand
    raise FileNotFoundError(
        f"no CIFAR file {name!r} in {data_dir} (also looked in its cifar-10-batches-py/ and cifar-100-python/)"
    )


def normalize_images(data: np.ndarray) -> torch.Tensor:
    """uint8 rows ``[N, 3072]`` (R, G, B planes of 32x32) -> normalized float32 ``[N, 3, 32, 32]``."""
    x = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_cifar(data_dir: str | Path, split: str = "test", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 (or CIFAR-100) images and labels, normalized as the models were trained.

    Args:
        data_dir: folder holding the batches (``test_batch``, ``data_batch_1``; CIFAR-100's
            ``test``/``train``), or its parent.
        split: "test" (``test_batch``), or "calib" (``data_batch_1`` only: the other training
            batches are never assumed to exist).
        limit: keep the first ``limit`` images (None: all).

    Returns:
        images ``[N, 3, 32, 32]`` float32 (scaled to [0, 1], minus mean (0.485, 0.456, 0.406),
        over std (0.229, 0.224, 0.225)) and labels ``[N]`` int64.
    """
    if split not in ("test", "calib"):
        raise ValueError(f"split={split!r}; accepted: 'test', 'calib'")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist")
    names = ("test_batch", "test") if split == "test" else ("data_batch_1", "train")
    for name in names:
        try:
            folder = _find_batch_dir(data_dir, name)
        except FileNotFoundError:
            continue
        data, labels = _batch_arrays(folder / name)
        if limit is not None:
            data, labels = data[:limit], labels[:limit]
        return normalize_images(data), torch.from_numpy(labels)
    raise FileNotFoundError(
        f"no CIFAR {split} batch in {data_dir}: looked for {' or '.join(names)} there and in its "
        "cifar-10-batches-py/ and cifar-100-python/ subfolders"
    )


def take(batches, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images and labels of an iterable of ``(images, labels)`` batches.

    For calibration: :func:`sresnet.convert` takes one tensor, and this reads only as many
    batches of a loader as it needs.

    Args:
        batches: e.g. a ``torch.utils.data.DataLoader`` yielding ``([B, C, H, W], [B])``.
        n: images wanted (fewer are returned when the data holds fewer).

    Returns:
        images ``[min(n, N), C, H, W]`` and labels ``[min(n, N)]``.

    Raises:
        ValueError: n < 1, or no images at all.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    xs, ys, got = [], [], 0
    for images, labels in batches:
        xs.append(images[: n - got])
        ys.append(torch.as_tensor(labels)[: n - got])
        got += xs[-1].shape[0]
        if got >= n:
            break
    if not got:
        raise ValueError("no images to take: the data yielded no batches")
    return torch.cat(xs), torch.cat(ys)
