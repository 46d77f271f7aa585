"""Saving/loading converted networks, and synaptic-op / MAC counts of a whole network."""

import os
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sresnet
from sresnet import metrics
from sresnet.demo import DigitsResNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    ann = DigitsResNet(width=4).eval()
    snn = sresnet.convert(ann, torch.randn(64, 1, 8, 8), calib_timesteps=8, calib_subset=8)
    return ann, snn


def test_save_load_same_predictions(net, tmp_path):
    _, snn = net
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    path = sresnet.save(snn, tmp_path / "net.snn")
    loaded = sresnet.load(path)
    assert torch.equal(loaded(x, timesteps=20, per_step=True), snn(x, timesteps=20, per_step=True))
    assert loaded.readout == snn.readout and loaded.info.keys() == snn.info.keys()
    # the file is plain tensors and containers: loadable with weights_only=True
    assert torch.load(path, weights_only=True)["format"] == "sresnet.snn"


def test_load_refuses_other_files(tmp_path):
    ckpt = tmp_path / "ckpt.th"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, ckpt)
    with pytest.raises(ValueError, match="not a converted sresnet network"):
        sresnet.load(ckpt)
    junk = tmp_path / "junk.snn"
    junk.write_bytes(b"\x00not a zip or pickle")
    with pytest.raises(ValueError, match="not a readable converted network"):
        sresnet.load(junk)
    with pytest.raises(FileNotFoundError):
        sresnet.load(tmp_path / "missing.snn")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('SRESNET_EVIL_MARK', '/tmp/sresnet_evil_mark')}",))


def test_load_never_runs_code_from_the_file(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("SRESNET_EVIL_MARK", str(mark))
    path = tmp_path / "evil.snn"
    torch.save({"format": "sresnet.snn", "payload": _Evil()}, path, pickle_protocol=2)
    with pytest.raises(ValueError):
        sresnet.load(path)
    assert not mark.exists()


def _ann_macs_by_hooks(ann: nn.Module, x: torch.Tensor) -> float:
    """MACs of every conv and linear call, counted independently with forward hooks."""
    total = [0.0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            total[0] += out[0].numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total[0] += mod.in_features * mod.out_features

    hs = [m.register_forward_hook(hook) for m in ann.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        ann(x[:1])
    for h in hs:
        h.remove()
    return total[0]


def test_network_cost_counts(net):
    ann, snn = net
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cost = sresnet.network_cost(snn, x, 12)
    assert cost["ann_macs_per_image"] == _ann_macs_by_hooks(ann, x)
    # SOPs of every conv term, recounted as the number of (input spike, output position)
    # pairs: a conv of the count map with an all-ones kernel, times Cout
    _, stats = snn(x, timesteps=12, return_stats=True, record_maps=True)
    expected = 0.0
    for layer in snn.layers:
        for term in ([layer.main] if layer.main is not None else []) + list(layer.others):
            if term.kind != "conv" or term.source == -1:
                continue
            m = stats["maps"][term.source].to(torch.float64)
            for op in term.pre:
                m = metrics._map_through(op, m)
            cout, cin, kh, kw = term.weight.shape
            hits = F.conv2d(m[None], torch.ones(1, cin, kh, kw, dtype=torch.float64), stride=term.stride, padding=term.padding)
            expected += float(hits.sum()) * cout / x.shape[0]
    got = sum(r["sops"] for r in cost["per_layer"] if r["kind"] == "conv")
    assert got == pytest.approx(expected, rel=1e-12)
    assert cost["sops_per_image"] >= got
    assert cost["analog_macs_per_image"] > 0  # the stem conv, run once per image
    e = metrics.EnergyModel()
    assert cost["snn_energy_j_per_image"] == pytest.approx(e.snn(cost["sops_per_image"], cost["analog_macs_per_image"]))


def test_evaluate_snn_cost_sums_batches(net):
    """The cost recorded by evaluate_snn over several batches equals one network_cost run on all images."""
    ann, snn = net
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(10, 1, 8, 8, generator=g), torch.randint(0, 10, (10,), generator=g)
    res = sresnet.evaluate_snn(ann, snn, x, y, [6, 12], batch_size=4, cost=True)
    whole = sresnet.network_cost(snn, x, 12)
    assert res["cost"]["images"] == 10 and res["cost"]["timesteps"] == 12
    assert res["cost"]["sops_per_image"] == pytest.approx(whole["sops_per_image"], rel=1e-12)
    assert [r["sops"] for r in res["cost"]["per_layer"]] == pytest.approx([r["sops"] for r in whole["per_layer"]])
    assert res["cost"]["sops_per_image"] > 0
    assert "cost" not in sresnet.evaluate_snn(ann, snn, x, y, [6], batch_size=4)
