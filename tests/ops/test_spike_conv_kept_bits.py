"""The bits a Numba spiking conv keeps of its output for the next conv (numba_gather's
``_keep`` / ``recall``), and ``sk.count_spikes``, which reads the count the kernel made.

The oracle of every reuse is the same call on a copy of the input (a fresh tensor has no
kept bits, so it is packed by ``_pack``): spikes and membranes must be equal bit for bit.
"""

import gc
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spikekernels as sk
from spikekernels.ops.spike_conv import numba_gather

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sresnet"))


@pytest.fixture(autouse=True)
def gather_path(monkeypatch):
    """Every conv below the density switch takes the gather kernel."""
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1.0")


def _first_layer(T, B, Cin, Cout, H, W, dtype=torch.uint8, seed=0):
    """Spikes of a first spiking conv (the producer whose bits are kept) and its input."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(T, B, Cin, H, W, generator=g) < 0.2).to(torch.uint8)
    w = torch.randn(Cout, Cin, 3, 3, generator=g) * (4.0 / (Cin * 9)) ** 0.5
    b = torch.randn(Cout, generator=g) * 0.1
    out = sk.spike_conv2d(s, w, b, 1, 1, backend="numba", spike_dtype=dtype)
    assert 0 < int(out.count_nonzero()) < out.numel(), "the producer should have both spikes and silence"
    return out


def _packed(s, ph, pw):
    """``_pack``'s bits of ``s`` with padding (ph, pw), as the kernel would build them."""
    T, B, C, H, W = s.shape
    Cb, Hp, Wp = -(-C // 8), H + 2 * ph, W + 2 * pw
    pk = np.empty((T, B, Hp * Wp * Cb + 8), np.uint8)
    flat = (s.view(torch.uint8) if s.dtype == torch.bool else s).numpy().reshape(T * B, C, H * W)
    assert not numba_gather._pack(flat, pk.reshape(T * B, -1), H, W, Cb, Wp, ph, pw)
    return pk


# (T, B, C of the kept output, H, W): one channel tile holding every channel (16, B=4: the
# vectorized 64-spikes-at-a-time path), several tiles (B=1 splits 64 channels), channels not
# a multiple of 8 (20: the masked pixel-by-pixel path), odd sizes
SHAPES = [(3, 4, 16, 8, 8), (2, 1, 64, 5, 6), (3, 2, 20, 7, 5), (1, 3, 9, 4, 9)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"C{s[2]}-B{s[1]}" for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bool])
def test_kept_bits_are_the_packed_output(shape, dtype):
    T, B, C, H, W = shape
    out = _first_layer(T, B, 5, C, H, W, dtype)
    kept = numba_gather.recall(out)
    assert kept is not None, "a neuron output of the gather kernel should keep its bits"
    assert np.array_equal(kept.pk, _packed(out, numba_gather.KEEP_PAD, numba_gather.KEEP_PAD))
    assert kept.count == int(out.count_nonzero()) == sk.count_spikes(out)


# (kernel, stride, padding) of the reader: padding 1 reads the bits as kept, 0 from one pixel
# in, 2 is wider than the kept border (the reader packs the input itself)
READERS = [((3, 3), (1, 1), (1, 1)), ((1, 1), (2, 2), (0, 0)), ((3, 3), (2, 1), (1, 0)), ((5, 5), (1, 1), (2, 2))]


@pytest.mark.parametrize("shape", SHAPES[:3], ids=[f"C{s[2]}-B{s[1]}" for s in SHAPES[:3]])
@pytest.mark.parametrize("reader", READERS, ids=["k3p1", "k1s2p0", "k3s21p10", "k5p2"])
def test_next_conv_reads_the_kept_bits(monkeypatch, shape, reader):
    T, B, C, H, W = shape
    out = _first_layer(T, B, 6, C, H, W)
    k, st, pad = reader
    g = torch.Generator().manual_seed(3)
    w = torch.randn(11, C, *k, generator=g) * (4.0 / (C * k[0] * k[1])) ** 0.5
    b = torch.randn(11, generator=g) * 0.1
    packs = []
    real = numba_gather._pack
    monkeypatch.setattr(numba_gather, "_pack", lambda *a: packs.append(1) or real(*a))
    monkeypatch.setattr(numba_gather, "FUSE_PACK", False)  # every pack through _pack, counted
    got, v = sk.spike_conv2d(out, w, b, st, pad, backend="numba", return_state=True)
    reads_kept = max(pad) <= numba_gather.KEEP_PAD
    assert len(packs) == (0 if reads_kept else 1), "the kept bits should replace the pack exactly when they fit"
    fresh, v_fresh = sk.spike_conv2d(out.clone(), w, b, st, pad, backend="numba", return_state=True)
    assert len(packs) == (1 if reads_kept else 2), "a copy has no kept bits"
    assert torch.equal(got, fresh) and torch.equal(v, v_fresh)
    assert 0 < int(fresh.count_nonzero()) < fresh.numel()


def test_a_changed_output_is_packed_again(monkeypatch):
    out = _first_layer(2, 3, 4, 16, 6, 6)
    kept = numba_gather.recall(out)
    assert kept is not None
    # a write that bypasses torch's version counter, at a position the check samples
    flat = out.numpy().reshape(-1)
    flat[kept.sample[5]] ^= 1
    assert numba_gather.recall(out) is None
    assert sk.count_spikes(out) == int(out.count_nonzero())
    flat[kept.sample[5]] ^= 1
    assert numba_gather.recall(out) is not None, "restored values: the bits describe it again"
    # an in-place torch op bumps the version counter
    out.view(-1)[1] ^= 1
    assert numba_gather.recall(out) is None
    assert sk.count_spikes(out) == int(out.count_nonzero())
    w = torch.randn(7, 16, 3, 3, generator=torch.Generator().manual_seed(4)) * 0.3
    got = sk.spike_conv2d(out, w, None, 1, 1, backend="numba")
    assert torch.equal(got, sk.spike_conv2d(out.clone(), w, None, 1, 1, backend="numba"))


def test_bits_die_with_the_output():
    out = _first_layer(2, 2, 3, 8, 5, 5)
    key = (out.data_ptr(), tuple(out.shape), out.dtype)
    assert key in numba_gather._kept
    del out
    gc.collect()
    assert key not in numba_gather._kept


def test_outputs_made_in_inference_mode_keep_nothing():
    with torch.inference_mode():
        out = _first_layer(2, 2, 3, 8, 5, 5)
    assert numba_gather.recall(out) is None
    assert sk.count_spikes(out) == int(out.count_nonzero())


def test_views_and_other_shapes_are_not_matched():
    out = _first_layer(2, 2, 3, 16, 4, 4)
    assert numba_gather.recall(out) is not None
    assert numba_gather.recall(out[:1]) is None  # same memory, other shape
    assert numba_gather.recall(out.view(2, 2, 16, 16, 1)) is None
    assert numba_gather.recall(out.transpose(3, 4)) is None  # not contiguous


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dims", [1, 3, 5])
def test_count_spikes_counts_nonzero_entries(dtype, dims):
    g = torch.Generator().manual_seed(dims)
    s = (torch.rand(*(3,) * dims, generator=g) < 0.3).to(dtype)
    assert sk.count_spikes(s) == int((s != 0).sum())
    assert sk.count_spikes(s.transpose(0, -1)) == int((s != 0).sum())


def test_count_spikes_rejects_non_tensors():
    with pytest.raises(TypeError, match="s must be a torch.Tensor"):
        sk.count_spikes([0, 1, 1])


def test_simulation_is_the_same_with_and_without_kept_bits(monkeypatch):
    """A whole spiking ResNet: scores and per-layer spike counts equal with the bits kept
    (counts from the kernels) and without (every conv packs, numpy counts)."""
    import sresnet
    from _sresnet_nets import make

    g = torch.Generator().manual_seed(5)
    snn = sresnet.convert(make("tiny_A_functional"), torch.randn(8, 3, 8, 8, generator=g), horizon=8,
                          calib_subset=8)
    images = torch.randn(4, 3, 8, 8, generator=g)
    real = numba_gather._pack
    runs = []
    for keep in (True, False):
        packs = []
        monkeypatch.setattr(numba_gather, "_pack", lambda *a: packs.append(1) or real(*a))
        monkeypatch.setattr(numba_gather, "KEEP", keep)
        monkeypatch.setattr(numba_gather, "FUSE_PACK", False)  # every pack through _pack, counted
        with torch.no_grad():
            scores = snn(images, timesteps=8, backend="numba")
        runs.append((scores, dict(snn.last_stats["spikes"]), len(packs)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1] and sum(runs[0][1].values()) > 0
    assert runs[0][2] < runs[1][2], "with kept bits some convs should read them instead of packing"
