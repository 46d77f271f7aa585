"""Low-latency conversion (issue 12): bias schedule, delayed readout, the paper preset."""

import copy
import math

import pytest
import torch

import sresnet
from sresnet.convert import compensate as comp
from sresnet.convert.fold import fold_batchnorm
from sresnet.convert.fuse import pool_analog_stem
from sresnet.convert.lowlat import schedule_for, step_bias
from sresnet.convert.normalize import normalize
from sresnet.convert.observe import observe
from sresnet.convert.trace import analyze, trace
from sresnet.network import Readout
from sresnet.simulate import SpikingNetwork

from _sresnet_nets import make


def _images(n=8, hw=8, seed=1):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "u,k,expected,fired",
    [
        ([0.9, 0.5, 0.2, 0.7], 2, 1 - 0.7, 2),  # lift the 2nd largest (0.7) to threshold
        ([0.9, 0.5, 0.2, 0.7], 0, 0.0, 0),  # nobody fires without a bias: b = 0
        ([0.9, 0.5, 0.2, 0.7], 4, 1 - 0.2, 4),
        ([1.2, 0.5], 1, 0.0, 1),  # b = 0 already gives one spike
        ([1.5, 1.25, 0.5], 1, None, 1),  # lower until the 2nd (1.25) is just under threshold
        ([0.6, 0.6, 0.1], 1, 1 - 0.6, 2),  # a tie cannot be split: both fire
    ],
    ids=["lift", "zero", "all", "already", "lower", "tie"],
)
def test_step_bias_hand_checked(u, k, expected, fired):
    u = torch.tensor([u])
    b = step_bias(u, torch.tensor([k]))
    if expected is None:
        # just below 1 - 1.25 (in float32): 1.25 + b stays under 1, 1.5 + b reaches it
        expected = float(torch.nextafter(torch.tensor(1 - 1.25), torch.tensor(-1.0)))
    assert float(b[0]) == pytest.approx(expected, abs=0.0, rel=1e-6)
    assert int((u + b[:, None] >= 1).sum()) == fired


def test_schedule_matches_cumulative_count_hand_checked():
    # one channel, two neurons with constant currents 0.3 and 0; target rate 1/2, v0 = 1/2
    H = 6
    x = torch.tensor([0.3, 0.0]).view(1, 1, 1, 2).expand(H, 1, 1, 2).contiguous()  # [H, B=1, C=1, 2 positions]
    b = schedule_for(x, torch.tensor([0.5]))
    # step 1: u = (0.8, 0.5), one spike wanted -> b = 1 - 0.8; then v = (0, 0.7)
    # step 2: u = (0.3, 0.7), one more wanted -> b = 1 - 0.7
    assert b.shape == (H, 1)
    assert float(b[0, 0]) == pytest.approx(0.2, abs=1e-6)
    assert float(b[1, 0]) == pytest.approx(0.3, abs=1e-6)
    v = torch.tensor([0.5, 0.5])
    total = 0
    for t in range(H):
        v = v + (x[t, 0, 0] + b[t, 0])
        s = v >= 1
        v = v - s.float()
        total += int(s.sum())
        assert total == t + 1  # exactly t·rate·M spikes by step t


def test_steps_past_the_horizon_use_the_steady_row():
    H = 8
    snn = sresnet.convert(make("tiny_A_functional"), _images(8, 8, seed=2), horizon=H, calib_subset=8)
    for layer in snn.layers:
        b = layer.neuron.bias_schedule
        assert b.shape == (H + 1, layer.shape[0])
        assert torch.equal(b[H], b[H - 2 : H].mean(0))  # the mean of the last H // 4 = 2 rows
        assert torch.equal(layer.neuron.bias_rows(H - 1, 4), torch.cat([b[H - 1 : H], b[H:].expand(3, -1)]))


@pytest.mark.parametrize("kind,hw", [("tiny_A_functional", 8), ("tv_basic", 16)], ids=["optionA", "torchvision"])
def test_one_network_serves_every_shorter_T(kind, hw):
    # calibrated for horizon 11 and read at T' = 4 (or 7) equals calibrated for T' alone, bit for bit
    model = make(kind)
    calib, x = _images(12, hw, seed=2), _images(6, hw, seed=3)
    long = sresnet.convert(model, calib, horizon=11, calib_subset=12)
    scores = long(x, timesteps=11, per_step=True, chunk=3)
    for short_T in (4, 7):
        short = sresnet.convert(model, calib, horizon=short_T, calib_subset=12)
        for a, b in zip(long.layers, short.layers):
            assert torch.equal(a.neuron.bias_schedule[:short_T], b.neuron.bias_schedule[:short_T]), a.name
        assert torch.equal(short(x, timesteps=short_T, per_step=True), scores[:short_T])
        assert torch.equal(short(x, timesteps=short_T), scores[short_T - 1])


def test_schedule_brings_rates_to_the_targets():
    # on the calibration images the per-layer firing rate over H steps equals the ANN target
    # more closely with the schedule than without
    model = make("tiny_A_functional")
    calib = _images(16, 8, seed=2)
    H = 8
    plain = sresnet.convert(model, calib, compensation=None, calib_subset=16)
    tuned = sresnet.convert(model, calib, horizon=H, calib_subset=16)
    gm = trace(copy.deepcopy(model).eval())
    fold_batchnorm(gm)
    program = analyze(gm, calib[:2])
    targets = comp.ann_targets(program, tuned.scales, calib, 128)
    errors = []
    for snn in (plain, tuned):
        snn(calib, timesteps=H, return_stats=True)
        rates = {k: v / (snn.last_stats["neurons"][k] * H * 16) for k, v in snn.last_stats["spikes"].items()}
        errors.append(sum(abs(rates[k] - float(t.mean())) for k, t in targets.items()))
    assert errors[1] < 0.5 * errors[0], errors


@pytest.mark.parametrize("readout", ["membrane", "spikes"])
def test_delayed_readout_skips_the_first_steps(readout):
    model = make("tiny_A_functional")
    x = _images(5, 8, seed=3)
    snn = sresnet.convert(model, _images(8, 8, seed=2), method="s-resnet", compensation=None, readout=readout)
    assert snn.network.readout.delay_fraction == 0.0
    T = 9
    full = snn(x, timesteps=T, per_step=True).double()
    snn.network.readout = Readout(readout, delay_fraction=0.4)
    delayed = snn(x, timesteps=T, per_step=True)
    # (the "spikes" readout of a single T squashes the kernel's membrane, per_step rebuilds it
    # from the sums: equal up to rounding)
    assert torch.allclose(snn(x, timesteps=T), delayed[-1], rtol=0, atol=1e-6)
    lam = float(snn.output_scale)
    if readout == "membrane":
        # running sums S[t] = t · score[t] / λ; readout over steps d+1..t = (S[t] - S[d]) / (t - d)
        S = torch.cat([torch.zeros(1, *full.shape[1:], dtype=torch.float64),
                       full * torch.arange(1, T + 1).view(-1, 1, 1) / lam])
        for t in range(1, T + 1):
            d = math.floor(0.4 * t)
            ref = (S[t] - S[d]) / (t - d) * lam
            assert torch.allclose(delayed[t - 1].double(), ref, rtol=1e-5, atol=1e-5), t
    else:
        # steps 1 and 2 have d = floor(0.4 t) = 0: the same readout as without delay
        assert torch.equal(delayed[:2], full[:2].float())
        assert not torch.equal(delayed[2:], full[2:].float())


def test_paper_preset_is_the_old_default_bit_for_bit():
    # method="s-resnet" = the pre-issue-12 convert(): trace, fold, observe, normalize, then the
    # constant bias compensation calibrated at T = calib_timesteps; no schedule, no delay
    model = make("tiny_A_functional")
    calib, x = _images(16, 8, seed=2), _images(6, 8, seed=3)
    snn = sresnet.convert(model, calib, method="s-resnet", calib_timesteps=8, calib_subset=8)
    with torch.no_grad():
        gm = trace(copy.deepcopy(model).eval())
        fold_batchnorm(gm)
        program = analyze(gm, calib[:2])
        pool_analog_stem(program)
        scales = observe(program, calib, percentile=99.9, per_channel=False, batch_size=128)
        layers, output = normalize(program, scales)
        old = SpikingNetwork(layers, output, scales["output"], program.input_shape)
        comp.compensate(old, program, scales, calib, "bias", "auto", timesteps=8, subset=8, batch_size=128)
    assert snn.network.readout.delay_fraction == 0.0
    for a, b in zip(snn.layers, old.layers):
        assert a.neuron.default
        for ta, tb in zip(([a.main] if a.main else []) + a.others, ([b.main] if b.main else []) + b.others):
            for f in ("weight", "bias", "scale"):
                va, vb = getattr(ta, f), getattr(tb, f)
                assert (va is None and vb is None) or torch.equal(va, vb), (a.name, f)
    assert torch.equal(snn(x, timesteps=12, per_step=True), old(x, timesteps=12, per_step=True))


def test_save_load_keeps_schedule_and_delay(tmp_path):
    model = make("tiny_A_functional")
    x = _images(4, 8, seed=3)
    snn = sresnet.convert(model, _images(8, 8, seed=2), horizon=6, calib_subset=8)
    back = sresnet.load(sresnet.save(snn, tmp_path / "net.pt"))
    assert back.network.readout.delay_fraction == snn.network.readout.delay_fraction == 0.5
    assert all(torch.equal(a.neuron.bias_schedule, b.neuron.bias_schedule) for a, b in zip(snn.layers, back.layers))
    assert torch.equal(back(x, timesteps=9, per_step=True), snn(x, timesteps=9, per_step=True))


def test_bad_method_arguments():
    model = make("tiny_A_functional")
    x = _images(4, 8)
    with pytest.raises(ValueError, match="method='fast'; accepted: 'lowlat', 's-resnet'"):
        sresnet.convert(model, x, method="fast")
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        sresnet.convert(model, x, horizon=0)
    with pytest.raises(ValueError, match=r"readout_delay must be a fraction of T in \[0, 1\), got 1.0"):
        sresnet.convert(model, x, readout_delay=1.0)
    with pytest.raises(ValueError, match="compensation='scale' applies to method='s-resnet'"):
        sresnet.convert(model, x, compensation="scale")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_order_statistics_by_selection_equal_a_sort(seed):
    # the one-process path selects (O(M)); a descending sort padded with +-inf is the definition
    from sresnet.convert.lowlat import _order_stats

    g = torch.Generator().manual_seed(seed)
    C, M = 9, 257
    u = torch.randn(C, M, generator=g)
    u[0] = u[0].round()  # ties
    u[1, :100] = 0.0
    k = torch.randint(0, M + 1, (C,), generator=g)
    k[2], k[3] = 0, M  # the ends: nothing fires / everything fires
    srt = torch.sort(u, dim=1, descending=True).values
    inf = torch.full((C, 1), float("inf"))
    padded = torch.cat([inf, srt, -inf], 1)
    kth, nxt = _order_stats(u, k, None, M)
    assert torch.equal(kth, padded.gather(1, k.view(-1, 1)).squeeze(1))
    assert torch.equal(nxt, padded.gather(1, (k + 1).view(-1, 1)).squeeze(1))
