"""Streaming evaluation: any iterable of batches, top-1/top-5, memory independent of the image count."""

import weakref

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import sresnet
from _sresnet_nets import make
from sresnet.datasets import Transformed
from sresnet.evaluate import merge_results
from sresnet.preprocess import make_preprocess

TS = [4, 9]


@pytest.fixture(scope="module")
def net():
    ann = make("tiny_A_module")  # 3 x H x W -> 5 classes
    g = torch.Generator().manual_seed(0)
    snn = sresnet.convert(ann, torch.randn(48, 3, 8, 8, generator=g), calib_timesteps=8, calib_subset=8)
    return ann, snn


def _data(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _without_speed(res):
    return {k: v for k, v in res.items() if k != "images_per_second"}


def test_loader_equals_tensor_call(net):
    ann, snn = net
    x, y = _data(11)
    old = sresnet.evaluate_snn(ann, snn, x, y, TS, batch_size=4)
    new = sresnet.evaluate_snn(ann, snn, DataLoader(TensorDataset(x, y), batch_size=4), TS)
    assert _without_speed(new) == _without_speed(old)
    # a loader batch larger than batch_size is simulated in slices, with the same results
    big = sresnet.evaluate_snn(ann, snn, DataLoader(TensorDataset(x, y), batch_size=11), timesteps=TS, batch_size=4)
    assert _without_speed(big) == _without_speed(old)
    assert old["num_images"] == 11 and old["num_classes"] == 5


def test_top1_top5_against_direct_computation(net):
    ann, snn = net
    x, y = _data(13, seed=2)
    res = sresnet.evaluate_snn(ann, snn, x, y, TS, batch_size=5)
    with torch.no_grad():
        logits = ann(x)
    per_step = snn(x, timesteps=max(TS), per_step=True)
    assert res["ann_accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert res["ann_top5"] == 1.0  # five classes: the label is always among the best five
    for t in TS:
        pred = per_step[t - 1].argmax(1)
        top3 = per_step[t - 1].topk(3, 1).indices
        assert res["snn_accuracy"][str(t)] == pytest.approx(float((pred == y).float().mean()))
        assert res["snn_top5"][str(t)] == 1.0
        assert 0 < float((top3 == y[:, None]).any(1).float().mean()) <= 1
        assert res["agreement"][str(t)] == pytest.approx(float((pred == logits.argmax(1)).float().mean()))


def test_top5_below_one_with_many_classes():
    torch.manual_seed(0)
    ann = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 20)).eval()
    x, y = torch.randn(40, 3, 2, 2), torch.randint(0, 20, (40,))
    snn = sresnet.convert(ann, torch.randn(32, 3, 2, 2), compensation=None)
    res = sresnet.evaluate_snn(ann, snn, x, y, [16], batch_size=16)
    with torch.no_grad():
        expected = (ann(x).topk(5, 1).indices == y[:, None]).any(1).float().mean()
    assert res["ann_top5"] == pytest.approx(float(expected))
    assert res["ann_accuracy"] <= res["ann_top5"] < 1
    assert res["snn_accuracy"]["16"] <= res["snn_top5"]["16"]


def _counting_batches(n_batches, live, peak, batch=4):
    """Fresh batches whose pixel storage is owned by a numpy array: its finalizer tracks when the
    storage (not just one view of it) is freed."""
    g = np.random.default_rng(0)
    for _ in range(n_batches):
        arr = g.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        live[0] += 1
        weakref.finalize(arr, lambda: live.__setitem__(0, live[0] - 1))
        peak[0] = max(peak[0], live[0])
        yield torch.from_numpy(arr), torch.from_numpy(g.integers(0, 5, batch))
        del arr


@pytest.mark.parametrize("cost", [False, True], ids=["plain", "cost"])
def test_live_images_do_not_grow_with_dataset(net, cost):
    ann, snn = net
    peaks = {}
    for n_batches in (3, 15):
        live, peak = [0], [0]
        res = sresnet.evaluate_snn(ann, snn, _counting_batches(n_batches, live, peak), TS, cost=cost)
        assert res["num_images"] == 4 * n_batches
        peaks[n_batches] = peak[0]
        assert live[0] == 0
    # at most the batch being simulated and the one being produced, whatever the image count
    assert peaks[3] == peaks[15] <= 2


def test_limit_stops_reading(net):
    ann, snn = net
    live, peak = [0], [0]
    gen = _counting_batches(100, live, peak)
    res = sresnet.evaluate_snn(ann, snn, gen, TS, limit=6)
    assert res["num_images"] == 6
    assert next(gen)[0].shape[0] == 4  # the generator was not drained


class TorchvisionLike(torch.utils.data.Dataset):
    """A torchvision dataset's interface: (PIL image, int) items, optional transform."""

    def __init__(self, n, transform=None):
        g = np.random.default_rng(3)
        self.images = g.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        self.labels = g.integers(0, 5, n)
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def test_torchvision_like_dataset_through_the_api(net):
    ann, snn = net
    prep = make_preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    # the user's own transform inside the dataset, batched by a plain DataLoader
    own = sresnet.evaluate_snn(ann, snn, DataLoader(TorchvisionLike(9, prep), batch_size=4), TS)
    # a dataset of PIL images with our preprocessing applied
    ours = sresnet.evaluate_snn(ann, snn, Transformed(TorchvisionLike(9), prep), TS, batch_size=4)
    ds = TorchvisionLike(9, prep)
    x = torch.stack([ds[i][0] for i in range(9)])
    direct = sresnet.evaluate_snn(ann, snn, x, torch.tensor(ds.labels), TS, batch_size=4)
    assert _without_speed(own) == _without_speed(direct) == _without_speed(ours)


def test_evaluate_with_module_dataset_and_calibration_tensor(net):
    ann, _ = net
    prep = make_preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    calib = torch.randn(32, 3, 8, 8)
    res = sresnet.evaluate(ann, None, TorchvisionLike(6), TS, calib_data=calib, preprocess=prep, calib_timesteps=8,
                           calib_subset=8)
    assert res["num_images"] == 6 and res["calib_size"] == 32 and res["model"] == "TinyResNet"
    assert res["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and res["calibration"]["kind"] == "tensor"
    with pytest.raises(ValueError, match="calib_data is required"):
        sresnet.evaluate(ann, None, TorchvisionLike(6), TS, preprocess=prep)


def test_errors(net):
    ann, snn = net
    x, y = _data(4)
    with pytest.raises(TypeError, match="labels are given with an images tensor only"):
        sresnet.evaluate_snn(ann, snn, DataLoader(TensorDataset(x, y), batch_size=2), y, TS)
    with pytest.raises(ValueError, match="label 7 is outside the network's 5 outputs"):
        sresnet.evaluate_snn(ann, snn, x, torch.tensor([0, 7, 1, 1]), TS)
    with pytest.raises(ValueError, match="no images to evaluate"):
        sresnet.evaluate_snn(ann, snn, [], TS)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        sresnet.evaluate_snn(ann, snn, x, y[:3], TS)
    with pytest.raises(ValueError, match="timesteps is missing"):
        sresnet.evaluate_snn(ann, snn, [(x, y)])
    assert ann.training is False


def _counts_and_rates(res):
    keep = ("ann_accuracy", "snn_accuracy", "ann_top5", "snn_top5", "agreement", "firing_rate",
            "firing_rate_per_layer", "num_images")
    return {k: res[k] for k in keep}, res["counts"]


def test_parts_merge_to_the_whole(net, tmp_path):
    # a long evaluation split with skip/limit (part edges on batch edges) adds up to the unsplit run exactly
    ann, snn = net
    x, y = _data(11)
    ds = TensorDataset(x, y)
    whole = sresnet.evaluate(ann, None, ds, TS, network=snn, batch_size=4)
    assert whole["first_image"] == 0 and whole["num_images"] == 11 and whole["convert_seconds"] is None
    assert sum(whole["counts"]["snn_correct"].values()) > 0
    parts = [sresnet.evaluate(ann, None, ds, TS, network=snn, batch_size=4, skip=s, limit=l)
             for s, l in ((8, None), (0, 4), (4, 4))]
    assert [p["first_image"] for p in parts] == [8, 0, 4] and [p["num_images"] for p in parts] == [3, 4, 4]
    merged = merge_results(parts, ["c.json", "a.json", "b.json"])
    assert _counts_and_rates(merged) == _counts_and_rates(whole)
    assert merged["images"] == [[0, 11]] and [p["name"] for p in merged["parts"]] == ["a.json", "b.json", "c.json"]
    # the counts match the fractions the run reports
    assert whole["snn_accuracy"] == {t: c / 11 for t, c in whole["counts"]["snn_correct"].items()}
    # a saved network gives the same numbers as the object it was saved from
    path = sresnet.save(snn, tmp_path / "net.snn")
    again = sresnet.evaluate(ann, None, ds, TS, network=path, batch_size=4)
    assert _counts_and_rates(again) == _counts_and_rates(whole) and again["network_file"] == str(path)


def test_merge_refuses_what_does_not_add_up(net):
    ann, snn = net
    ds = TensorDataset(*_data(8))
    a = sresnet.evaluate(ann, None, ds, TS, network=snn, batch_size=4, limit=4)
    b = sresnet.evaluate(ann, None, ds, TS, network=snn, batch_size=4, skip=2, limit=4)
    with pytest.raises(ValueError, match=r"y.json \(images 2..5\) overlaps x.json: each image may be counted once"):
        merge_results([a, b], ["x.json", "y.json"])
    c = sresnet.evaluate(ann, None, ds, [4, 8], network=snn, batch_size=4, skip=4)
    with pytest.raises(ValueError, match=r"part 2 differs from part 1 in timesteps \(timesteps: \[4, 8\] vs \[4, 9\]\)"):
        merge_results([a, c])
    old = {k: v for k, v in a.items() if k != "counts"}
    with pytest.raises(ValueError, match="old.json has no counts or first_image: .*older than merge"):
        merge_results([old], ["old.json"])
    with pytest.raises(ValueError, match="holds --cost results"):
        merge_results([{**a, "cost": {}}])
    with pytest.raises(ValueError, match="no results to merge"):
        merge_results([])
    # a gap is allowed and shown
    d = sresnet.evaluate(ann, None, ds, TS, network=snn, batch_size=4, skip=6)
    assert merge_results([d, a])["images"] == [[0, 4], [6, 8]]


def test_network_with_conversion_arguments_is_an_error(net):
    ann, snn = net
    ds = TensorDataset(*_data(4))
    with pytest.raises(ValueError, match="network is already converted, so percentile, horizon cannot be given"):
        sresnet.evaluate(ann, None, ds, TS, network=snn, percentile=99.0, horizon=16)
    with pytest.raises(TypeError, match="network must be a SpikingNetwork or the path of a saved one, got int"):
        sresnet.evaluate(ann, None, ds, TS, network=3)
