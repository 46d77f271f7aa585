import numpy as np
import pytest
import torch
from PIL import Image

from sresnet.data import take
from sresnet.datasets import (CifarFolder, ImageFolder, NpzImages, Transformed, class_interleaved, collate,
                              default_calibration, limit_batches, make_loader, open_dataset)
from sresnet.preprocess import make_preprocess


def _images(n, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _folder(root, classes, per_class=2, size=(8, 8), seed=0):
    """root/<class>/<i>.png; returns {class: [uint8 arrays in file order]}."""
    out = {}
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        arrs = _images(per_class, *size, seed=seed + k)
        for i, a in enumerate(arrs):
            Image.fromarray(a).save(root / name / f"{i:03d}.png")
        out[name] = list(arrs)
    return out


def test_imagefolder_classes_sorted_and_pixels_exact(tmp_path):
    # created in non-sorted order: labels must follow the sorted names, not the creation order
    arrays = _folder(tmp_path, ["zebra", "ant", "mole"], per_class=3)
    ds = ImageFolder(tmp_path)
    assert ds.classes == ["ant", "mole", "zebra"] and len(ds) == 9
    assert ds.targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    x, y = ds[4]
    assert y == 1
    assert torch.equal(x, torch.from_numpy(arrays["mole"][1]).permute(2, 0, 1).float() / 255)


def test_flat_folder_is_a_clear_error(tmp_path):
    for i, a in enumerate(_images(3)):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match=r"no class subfolders \(3 images directly in it\).*root/<class name>/<image>"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="no class subfolders"):
        open_dataset(tmp_path)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path)


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "one-worker"])
def test_unreadable_image_names_the_file(tmp_path, workers):
    _folder(tmp_path, ["a", "b"])
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    loader = make_loader(ImageFolder(tmp_path), batch_size=2, workers=workers)
    with pytest.raises(ValueError, match="broken.png") as err:
        list(loader)
    assert "cannot read image" in str(err.value)


def test_imagenet_layout_and_default_calibration(tmp_path):
    _folder(tmp_path / "train", ["c1", "c2"], per_class=3, seed=1)
    _folder(tmp_path / "val", ["c1", "c2"], per_class=1, seed=9)
    test = open_dataset(tmp_path, "test")
    calib = open_dataset(tmp_path, "calib")
    assert test.source.endswith("val") and len(test) == 2 and test.kind == "imagefolder"
    assert calib.source.endswith("train") and len(calib) == 6
    # --data .../val: the train/ sibling; --data root: the root, read as "calib" (its train/)
    assert default_calibration(tmp_path / "val") == tmp_path / "train"
    assert default_calibration(tmp_path) == tmp_path
    with pytest.raises(ValueError, match="pass --calib-data"):
        default_calibration(tmp_path / "train")


def test_no_calibration_beside_npz_or_lone_folder(tmp_path):
    np.savez(tmp_path / "d.npz", images=_images(2), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="never the test images.*--calib-data"):
        default_calibration(tmp_path / "d.npz")
    _folder(tmp_path / "lone", ["a"])
    with pytest.raises(ValueError, match="--calib-data"):
        default_calibration(tmp_path / "lone")


def test_npz_layouts_agree(tmp_path):
    imgs = _images(4, 6, 5)
    labels = np.array([3, 1, 0, 2])
    np.savez(tmp_path / "hwc.npz", images=imgs, labels=labels)
    np.savez(tmp_path / "chw.npz", images=imgs.transpose(0, 3, 1, 2), labels=labels)
    a, b = NpzImages(tmp_path / "hwc.npz"), open_dataset(tmp_path / "chw.npz")
    assert b.kind == "npz" and len(a) == 4
    for i in range(4):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] == labels[i]
    assert torch.equal(a[2][0], torch.from_numpy(imgs[2]).permute(2, 0, 1).float() / 255)
    np.savez(tmp_path / "gray.npz", images=imgs[..., 0], labels=labels)
    gray = NpzImages(tmp_path / "gray.npz", make_preprocess(mean=(0.5,), std=(0.5,)))
    assert gray[0][0].shape == (1, 6, 5)


@pytest.mark.parametrize("arrays,match", [
    (dict(x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(2, np.int64)), r"needs arrays 'images' and 'labels'; found \['x', 'y'\]"),
    (dict(images=np.zeros((2, 4, 4, 3), np.float32), labels=np.zeros(2, np.int64)), "must be uint8"),
    (dict(images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(3, np.int64)), "N = 2 images"),
    (dict(images=np.zeros((2, 4, 4, 5), np.uint8), labels=np.zeros(2, np.int64)), "no channel axis"),
], ids=["keys", "float-images", "label-count", "channels"])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        NpzImages(tmp_path / "d.npz")


def test_not_npz_file(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npz"):
        NpzImages(tmp_path / "d.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(ValueError, match="not an .npz"):
        open_dataset(tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "absent")


class TorchvisionLike(torch.utils.data.Dataset):
    """The interface of a torchvision dataset created without a transform: (PIL image, int)."""

    def __init__(self, arrays, labels):
        self.arrays, self.labels = arrays, labels

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        return Image.fromarray(self.arrays[i]), int(self.labels[i])


def test_transformed_torchvision_like_dataset():
    arrs = _images(5, 32, 32)
    ds = Transformed(TorchvisionLike(arrs, [1, 0, 1, 0, 1]), make_preprocess("cifar"))
    x, y = next(iter(make_loader(ds, batch_size=5)))
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [1, 0, 1, 0, 1]
    assert torch.allclose(x[3], make_preprocess("cifar")(arrs[3]))


def test_class_interleaved():
    assert class_interleaved([0, 0, 0, 1, 2, 2]) == [0, 3, 4, 1, 5, 2]
    assert class_interleaved([0, 0, 0, 1, 2, 2], 4) == [0, 3, 4, 1]


def test_loader_limit_balanced_and_workers_agree(tmp_path):
    _folder(tmp_path, ["a", "b", "c"], per_class=4)
    ds = ImageFolder(tmp_path)
    one = list(make_loader(ds, batch_size=4, limit=6))
    labels = torch.cat([y for _, y in one]).tolist()
    assert labels == [0, 1, 2, 0, 1, 2]
    two = list(make_loader(ds, batch_size=4, workers=2, limit=6))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    plain = torch.cat([y for _, y in make_loader(ds, batch_size=5, limit=6, balanced=False)]).tolist()
    assert plain == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="workers must be a non-negative int"):
        make_loader(ds, workers=-1)


def test_loader_skip_continues_the_same_order(tmp_path):
    # parts of a long evaluation: skip=k, limit=m must be items k..k+m-1 of the unsplit order,
    # class-interleaved for ImageFolders, plain otherwise
    _folder(tmp_path, ["a", "b", "c"], per_class=4)
    ds = ImageFolder(tmp_path)
    for balanced in (None, False):
        whole = torch.cat([x for x, _ in make_loader(ds, batch_size=5, balanced=balanced)])
        for skip, limit in ((0, 4), (4, 5), (9, 100), (11, None)):
            part = torch.cat([x for x, _ in make_loader(ds, batch_size=5, limit=limit, skip=skip, balanced=balanced)])
            assert torch.equal(part, whole[skip: None if limit is None else skip + limit]), (balanced, skip, limit)
    with pytest.raises(ValueError, match="skip=12 leaves no image: the dataset has 12"):
        make_loader(ds, skip=12)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="skip must be a non-negative int"):
            make_loader(ds, skip=bad)


def test_limit_batches_skip_cuts_batches_at_both_edges():
    batches = [(torch.arange(3 * i, 3 * i + 3).view(3, 1).float(), torch.arange(3 * i, 3 * i + 3)) for i in range(4)]
    got = list(limit_batches(batches, 5, skip=4))
    assert [y.tolist() for _, y in got] == [[4, 5], [6, 7, 8]]
    assert [y.tolist() for _, y in limit_batches(batches, None, skip=10)] == [[10, 11]]
    assert list(limit_batches(batches, None, skip=12)) == []


def test_collate_mixed_sizes_is_a_clear_error():
    batch = [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 9, 8), 1)]
    with pytest.raises(ValueError, match=r"different sizes in one batch \(3x8x8 and 3x9x8\).*--resize and --crop"):
        collate(batch)


def test_take_and_limit_batches():
    batches = [(torch.full((3, 1), float(i)), torch.tensor([i] * 3)) for i in range(4)]
    x, y = take(batches, 7)
    assert x.shape == (7, 1) and y.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert take(batches, 100)[0].shape[0] == 12
    assert [b[0].shape[0] for b in limit_batches(batches, 5)] == [3, 2]
    with pytest.raises(ValueError, match="n must be a positive int"):
        take(batches, 0)
    with pytest.raises(ValueError, match="no batches"):
        take([], 3)


def test_take_reads_only_what_it_needs():
    read = []

    def gen():
        for i in range(100):
            read.append(i)
            yield torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)

    take(gen(), 25)
    assert read == [0, 1, 2]


def test_cifar_folder_splits(shared_dir):
    test = CifarFolder(shared_dir / "data", "test")
    calib = open_dataset(shared_dir / "data", "calib")
    assert len(test) == 10000 and test.path.name == "test_batch"
    assert calib.kind == "cifar" and calib.source.endswith("data_batch_1")
    assert default_calibration(shared_dir / "data") == shared_dir / "data"


def test_npz_images_memory_mapped_when_uncompressed(tmp_path):
    imgs, labels = _images(6, 5, 4, seed=3), np.arange(6) % 2
    np.savez(tmp_path / "plain.npz", images=imgs, labels=labels)
    np.savez_compressed(tmp_path / "small.npz", images=imgs, labels=labels)
    plain, small = NpzImages(tmp_path / "plain.npz"), NpzImages(tmp_path / "small.npz")
    # the pixels stay on disk (a memory map of the file), read per item
    assert isinstance(plain.images, np.memmap) and not isinstance(small.images, np.memmap)
    for i in range(6):
        assert torch.equal(plain[i][0], small[i][0]) and plain[i][1] == small[i][1]
    # Fortran-ordered arrays keep their layout through the map
    np.savez(tmp_path / "fortran.npz", images=np.asfortranarray(imgs), labels=labels)
    assert torch.equal(NpzImages(tmp_path / "fortran.npz")[5][0], plain[5][0])


def test_npy_is_not_npz(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="one array, not an .npz archive"):
        NpzImages(tmp_path / "x.npz")


def test_cifar100_folder(tmp_path):
    import pickle

    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("test", 5), ("train", 7)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(v) for v in rng.integers(0, 100, n)], b"coarse_labels": [0] * n}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    test, calib = open_dataset(tmp_path, "test"), open_dataset(default_calibration(tmp_path), "calib")
    assert (test.kind, len(test), len(calib)) == ("cifar", 5, 7)
    assert test.source.endswith("test") and calib.source.endswith("train")
    raw = pickle.loads((root / "test").read_bytes())
    assert [test[i][1] for i in range(5)] == raw[b"fine_labels"]
    assert torch.equal(test[2][0], torch.from_numpy(raw[b"data"][2].reshape(3, 32, 32)).float() / 255)
