import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import spikekernels as sk
from spikekernels.ops.spike_conv import numba as sc_numba
from spikekernels.ops.spike_conv import numba_gather
from spikekernels.testing import assert_close, assert_spikes_match, membrane_trace

# (T, B, Cin, Cout, H, W, k, stride, padding): T=1, primes, odd sizes, kernel 1 and 3, stride 1
# and 2, padding 0 and 1; Cout=17/20 cross Triton's 16-channel blocks and split into Numba
# channel tiles when B=1.
CASES = [
    (1, 2, 3, 5, 7, 7, 3, 1, 1),
    (4, 3, 2, 4, 5, 6, 1, 1, 0),
    (3, 1, 5, 17, 9, 8, 3, 2, 1),
    (5, 2, 3, 3, 8, 7, 3, 2, 0),
    (2, 1, 4, 20, 6, 5, 3, 1, 0),
    # H'*W' a multiple of 8: the Numba kernel's word-wise spike and residual transposes
    (3, 2, 9, 11, 8, 8, 3, 1, 1),
    (2, 2, 8, 9, 16, 16, 3, 2, 1),
]
IDS = ["T1-k3s1p1", "T4-k1s1p0", "T3-k3s2p1-B1", "T5-k3s2p0", "T2-k3s1p0-B1", "T3-8x8-k3s1p1", "T2-16x16-k3s2p1"]
PATHS = ["gather", "scatter", "dense"]


@pytest.fixture(params=PATHS)
def path(request, backend, monkeypatch):
    """Numba's two event-driven kernels and its dense path, forced through the density switch.

    "gather" (bit-packed, output-stationary) is what 0/1 inputs get; "scatter" is what
    analog inputs get, forced here on spikes too by making the gather kernel decline.
    """
    if backend != "numba" and request.param != "gather":
        pytest.skip("only the Numba backend has a scatter kernel and a dense path")
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "0.0" if request.param == "dense" else "1.0")
    if request.param == "scatter":
        monkeypatch.setattr(numba_gather, "gather", lambda *args: False)
    return request.param


def _case(case, seed=0, density=0.3, dtype=torch.uint8):
    T, B, Cin, Cout, H, W, k, st, pad = case
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(T, B, Cin, H, W, generator=g) < density).to(dtype)
    w = torch.randn(Cout, Cin, k, k, generator=g) * (1.5 / (Cin * k * k * density)) ** 0.5
    b = torch.randn(Cout, generator=g) * 0.1
    out_hw = ((H + 2 * pad - k) // st + 1, (W + 2 * pad - k) // st + 1)
    return s, w, b, dict(stride=st, padding=pad), (T, B, Cout) + out_hw


def _check_spikes(s, w, b, conv_kw, backend, **kw):
    """Spikes and final membrane of ``backend`` against the reference (flips only near θ)."""
    thr = kw.get("threshold", 1.0)
    cur = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="reference",
                          residual=kw.get("residual"), residual_scale=kw.get("residual_scale", 1.0))
    s_ref, v_ref = sk.spike_conv2d(s, w, b, **conv_kw, backend="reference", return_state=True, **kw)
    out, v = sk.spike_conv2d(s, w, b, **conv_kw, backend=backend, return_state=True, **kw)
    assert out.shape == s_ref.shape and out.dtype == s_ref.dtype
    trace = membrane_trace(cur, thr, kw.get("v0"), kw.get("reset", "subtract"), kw.get("v_reset", 0.0))
    flips = assert_spikes_match(out, s_ref, trace, threshold=thr)
    if flips == 0:
        assert_close(v, v_ref, rtol=1e-5, atol=1e-5, name="membrane")
    assert 0 < s_ref.sum() < s_ref.numel(), "the case should have both spikes and silence"
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_currents_match_reference(backend, path, case):
    s, w, b, conv_kw, out_shape = _case(case)
    ref = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="reference")
    x = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend=backend)
    assert x.shape == out_shape and x.dtype == torch.float32
    assert_close(x, ref, rtol=1e-5, atol=1e-5, name="currents")
    # the reference is conv2d then the IF scan
    # one conv per step: torch's conv rounds differently for different batch sizes (a batch of
    # one image runs as two copies, the rounding of every larger batch)
    def conv(st):
        if st.shape[0] == 1:
            return F.conv2d(st.float().expand(2, *st.shape[1:]), w, b, **conv_kw)[:1]
        return F.conv2d(st.float(), w, b, **conv_kw)

    manual = torch.cat([conv(st) for st in s]).view(out_shape)
    assert_close(ref, manual, rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool])
def test_spikes_match_reference(backend, path, case, dtype):
    s, w, b, conv_kw, _ = _case(case, seed=1, dtype=dtype)
    out = _check_spikes(s, w, b, conv_kw, backend)
    assert out.dtype == dtype


@pytest.mark.parametrize("case", CASES[2:4], ids=IDS[2:4])
def test_no_bias_per_channel_threshold_reset_zero(backend, path, case):
    s, w, _, conv_kw, shape = _case(case, seed=2)
    thr = torch.linspace(0.5, 1.5, shape[2])
    _check_spikes(s, w, None, conv_kw, backend, threshold=thr, reset="zero", v_reset=-0.1)
    _check_spikes(s, w, None, conv_kw, backend, threshold=0.8, v0=0.3)


@pytest.mark.parametrize("case", CASES[:3] + CASES[5:], ids=IDS[:3] + IDS[5:])
@pytest.mark.parametrize("kind", ["spikes-uint8", "spikes-bool", "current", "constant", "per-channel"])
def test_residual_epilogue(backend, path, case, kind):
    s, w, b, conv_kw, shape = _case(case, seed=3)
    g = torch.Generator().manual_seed(4)
    scale = 0.6
    if kind == "spikes-uint8":
        res = (torch.rand(shape, generator=g) < 0.3).to(torch.uint8)
    elif kind == "spikes-bool":
        res = torch.rand(shape, generator=g) < 0.3
    elif kind == "current":
        res = torch.randn(shape, generator=g) * 0.3
    elif kind == "constant":
        res = (torch.randn(shape[1:], generator=g) * 0.3).expand(shape)
    else:
        res = (torch.rand(shape, generator=g) < 0.3).float()
        scale = torch.linspace(-0.5, 1.0, shape[2])
    ref = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, residual=res, residual_scale=scale, backend="reference")
    x = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, residual=res, residual_scale=scale, backend=backend)
    assert_close(x, ref, rtol=1e-5, atol=1e-5, name="currents with residual")
    _check_spikes(s, w, b, conv_kw, backend, residual=res, residual_scale=scale)


def test_chunked_time_carries_state(backend, path):
    s, w, b, conv_kw, _ = _case((6, 2, 3, 4, 7, 7, 3, 1, 1), seed=5)
    whole, v_whole = sk.spike_conv2d(s, w, b, **conv_kw, backend=backend, return_state=True)
    first, v1 = sk.spike_conv2d(s[:2], w, b, **conv_kw, backend=backend, return_state=True)
    second, v2 = sk.spike_conv2d(s[2:], w, b, **conv_kw, backend=backend, return_state=True, v0=v1)
    assert torch.equal(torch.cat([first, second]), whole)
    assert_close(v2, v_whole, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["timesteps", "expand"])
def test_constant_analog_input(backend, path, form):
    T = 6
    g = torch.Generator().manual_seed(6)
    img = torch.randn(1, 2, 3, 7, 7, generator=g)
    w = torch.randn(5, 3, 3, 3, generator=g) * 0.3
    b = torch.randn(5, generator=g) * 0.1
    x = dict(s=img, timesteps=T) if form == "timesteps" else dict(s=img.expand(T, -1, -1, -1, -1))
    cur = sk.spike_conv2d(**x, weight=w, bias=b, padding=1, neuron=False, backend=backend)
    assert cur.shape == (T, 2, 5, 7, 7) and cur.stride(0) == 0, "a constant current is broadcast, not copied"
    ref_cur = sk.spike_conv2d(img.expand(T, -1, -1, -1, -1).contiguous(), w, b, padding=1, neuron=False,
                              backend="reference")
    assert_close(cur, ref_cur, rtol=1e-5, atol=1e-5)
    out, v = sk.spike_conv2d(**x, weight=w, bias=b, padding=1, backend=backend, return_state=True)
    s_ref, v_ref = sk.spike_conv2d(img.expand(T, -1, -1, -1, -1).contiguous(), w, b, padding=1,
                                   backend="reference", return_state=True)
    assert out.dtype == img.dtype
    assert_spikes_match(out, s_ref, membrane_trace(ref_cur))
    assert 0 < out.sum() < out.numel()


@pytest.mark.parametrize("spike_dtype", [torch.uint8, torch.bool, torch.float32, torch.float16])
def test_spike_dtype(backend, spike_dtype):
    s, w, b, conv_kw, _ = _case(CASES[0], seed=7)
    out = sk.spike_conv2d(s, w, b, **conv_kw, spike_dtype=spike_dtype, backend=backend)
    ref = sk.spike_conv2d(s, w, b, **conv_kw, spike_dtype=spike_dtype, backend="reference")
    assert out.dtype == spike_dtype
    cur = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="reference")
    assert_spikes_match(out, ref, membrane_trace(cur))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("T,B,Fin,Fout", [(1, 2, 7, 5), (5, 3, 33, 17), (3, 1, 20, 10)])
def test_spike_linear_matches_reference(backend, path, T, B, Fin, Fout, dtype):
    g = torch.Generator().manual_seed(8)
    s = (torch.rand(T, B, Fin, generator=g) < 0.3).to(dtype)
    w = torch.randn(Fout, Fin, generator=g) * (5.0 / Fin) ** 0.5
    b = torch.randn(Fout, generator=g) * 0.1
    res = (torch.rand(T, B, Fout, generator=g) < 0.3).to(torch.uint8)
    manual = F.linear(s.float(), w, b) + 0.5 * res
    cur = sk.spike_linear(s, w, b, neuron=False, residual=res, residual_scale=0.5, backend=backend)
    assert cur.shape == (T, B, Fout)
    assert_close(cur, manual, rtol=1e-5, atol=1e-5)
    out, v = sk.spike_linear(s, w, b, residual=res, residual_scale=0.5, backend=backend, return_state=True)
    ref, v_ref = sk.spike_linear(s, w, b, residual=res, residual_scale=0.5, backend="reference", return_state=True)
    assert out.shape == (T, B, Fout) and v.shape == (B, Fout) and out.dtype == dtype
    assert_spikes_match(out, ref, membrane_trace(manual))
    # chunked time with the carried state, and a constant analog input
    first, v1 = sk.spike_linear(s[:1], w, b, residual=res[:1], residual_scale=0.5, backend=backend, return_state=True)
    if T > 1:
        second = sk.spike_linear(s[1:], w, b, v0=v1, residual=res[1:], residual_scale=0.5, backend=backend)
        assert torch.equal(torch.cat([first, second]), out)
    x = torch.randn(1, B, Fin, generator=g)
    const = sk.spike_linear(x, w, b, timesteps=4, backend=backend)
    const_ref = sk.spike_linear(x.expand(4, -1, -1).contiguous(), w, b, backend="reference")
    assert_spikes_match(const, const_ref, membrane_trace(F.linear(x, w, b).expand(4, -1, -1)))


def test_density_switch_picks_the_dense_path(monkeypatch):
    s, w, b, conv_kw, _ = _case(CASES[0], density=0.5)
    calls = []
    monkeypatch.setattr(sc_numba, "_dense", lambda *a: calls.append("dense"))
    monkeypatch.setattr(numba_gather, "gather", lambda *a: calls.append("gather") or True)
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "0.3")
    sk.spike_conv2d(s, w, b, **conv_kw, backend="numba")
    sk.spike_conv2d((s[:, :, :, :, :] * 0).contiguous(), w, b, **conv_kw, backend="numba")
    assert calls == ["dense", "gather"]
    assert abs(sc_numba.estimate_density(s) - 0.5) < 0.1


# (T, B, Cin, Cout, H, W, (kh, kw), (sy, sx), (py, px)): channel counts below, across and far
# past the 8-channel vector and the 64-bit word (several words per kernel row, several
# channel tiles), non-square kernels, strides and paddings, T=1, prime sizes
GATHER_CASES = [
    (1, 3, 1, 1, 5, 7, (3, 3), (1, 1), (1, 1)),
    (3, 2, 9, 17, 7, 5, (3, 5), (2, 1), (1, 2)),
    (2, 1, 70, 130, 5, 6, (3, 3), (1, 2), (0, 1)),
    (4, 2, 24, 10, 11, 3, (1, 1), (2, 2), (0, 0)),
    (2, 5, 3, 64, 9, 9, (5, 3), (3, 2), (2, 0)),
]


@pytest.mark.parametrize("case", GATHER_CASES, ids=[f"case{i}" for i in range(len(GATHER_CASES))])
@pytest.mark.parametrize("res_kind", ["none", "uint8", "float"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_gather_kernel_shape_classes(monkeypatch, case, res_kind, reset):
    T, B, Cin, Cout, H, W, k, st, pad = case
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1.0")
    ran = []
    real = numba_gather.gather
    monkeypatch.setattr(numba_gather, "gather", lambda *a: ran.append(1) or real(*a))
    g = torch.Generator().manual_seed(11)
    s = (torch.rand(T, B, Cin, H, W, generator=g) < 0.25).to(torch.uint8)
    w = torch.randn(Cout, Cin, *k, generator=g) * (3.0 / (Cin * k[0] * k[1])) ** 0.5
    b = torch.randn(Cout, generator=g) * 0.1
    conv_kw = dict(stride=st, padding=pad)
    Ho, Wo = (H + 2 * pad[0] - k[0]) // st[0] + 1, (W + 2 * pad[1] - k[1]) // st[1] + 1
    res = {"none": None,
           "uint8": (torch.rand(T, B, Cout, Ho, Wo, generator=g) < 0.3).to(torch.uint8),
           "float": torch.randn(T, B, Cout, Ho, Wo, generator=g) * 0.3}[res_kind]
    kw = dict(residual=res, residual_scale=torch.linspace(-0.5, 1.0, Cout), reset=reset, v_reset=-0.2)
    cur = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="numba", residual=res,
                          residual_scale=kw["residual_scale"])
    ref_cur = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="reference", residual=res,
                              residual_scale=kw["residual_scale"])
    assert_close(cur, ref_cur, rtol=1e-5, atol=1e-5, name="currents")
    out, v = sk.spike_conv2d(s, w, b, **conv_kw, backend="numba", return_state=True, **kw)
    ref, v_ref = sk.spike_conv2d(s, w, b, **conv_kw, backend="reference", return_state=True, **kw)
    trace = membrane_trace(ref_cur, 1.0, None, reset, -0.2)
    if assert_spikes_match(out, ref, trace) == 0:
        assert_close(v, v_ref, rtol=1e-5, atol=1e-5, name="membrane")
    assert len(ran) == 2, "the gather kernel should have run (0/1 input below the dense switch)"
    assert 0 < ref.sum() < ref.numel()


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_non_binary_input_takes_the_scatter_kernel(monkeypatch, dtype):
    """Inputs other than 0/1 cannot be bits: the gather kernel declines, the scatter kernel runs."""
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1.0")
    g = torch.Generator().manual_seed(12)
    mask = torch.rand(3, 2, 5, 8, 8, generator=g) < 0.2
    values = (torch.rand(mask.shape, generator=g) * 3).floor() + 1 if dtype == torch.uint8 else \
        torch.rand(mask.shape, generator=g) * 2
    s = (values * mask).to(dtype)
    assert (s > 1).any()
    w = torch.randn(6, 5, 3, 3, generator=g) * 0.3
    scatter = []
    real = sc_numba._event
    monkeypatch.setattr(sc_numba, "_event", lambda *a: scatter.append(1) or real(*a))
    cur = sk.spike_conv2d(s, w, padding=1, neuron=False, backend="numba")
    assert_close(cur, sk.spike_conv2d(s, w, padding=1, neuron=False, backend="reference"), rtol=1e-5, atol=1e-5)
    assert scatter == [1]


def _emulate(s, w, b, padding, sets, order):
    """A current ``[T, B, Cout, H', W']`` (stride 1) emulated in numpy: per output pixel,
    ``order(active)`` yields ``(set, ci, ky, kx)`` for its active inputs in the kernel's order
    (``active(ci, ky, kx)``: whether that input of the pixel's field spikes); each set of sums
    adds its weights in that order, the sets are added pairwise, then the bias."""
    import numpy as np

    T, B = s.shape[:2]
    Cout = w.shape[0]
    sp = np.pad(s.numpy(), ((0, 0), (0, 0), (0, 0), (padding, padding), (padding, padding)))
    wn, bn = w.numpy(), b.numpy()
    Ho, Wo = sp.shape[3] - w.shape[2] + 1, sp.shape[4] - w.shape[3] + 1
    out = np.zeros((T, B, Cout, Ho, Wo), np.float32)
    for t in range(T):
        for i in range(B):
            for oy in range(Ho):
                for ox in range(Wo):
                    parts = [np.zeros(Cout, np.float32) for _ in range(sets)]
                    for m, ci, ky, kx in order(lambda ci, ky, kx: sp[t, i, ci, oy + ky, ox + kx]):
                        parts[m] += wn[:, ci, ky, kx]
                    while len(parts) > 1:
                        parts = [parts[m] + parts[m + 1] for m in range(0, len(parts), 2)]
                    out[t, i, :, oy, ox] = parts[0] + bn
    return torch.from_numpy(out)


def _gather_order_current(s, w, b, padding, nv):
    """The gather kernel's current, emulated in numpy in its documented float32 order.

    Per output pixel the active inputs come in receptive-field bit order (kernel row, then
    column, then input channel); the ``n``-th one of the pixel (of its 64-bit word when the
    active-input list is not used) goes to set ``(n % unroll) % sets``; each set is summed in
    order, the sets are added pairwise, then the bias.
    """
    Cin = s.shape[2]
    _, _, kh, kw = w.shape
    unroll, sets = numba_gather.WALK[nv]
    run = kw * 8 * (-(-Cin // 8))
    nw = kh * -(-run // 64)
    per_pixel = numba_gather.COMPRESS and nw * 64 <= numba_gather.LIST_CAP - unroll

    def order(active):
        n, word = 0, None
        for ky in range(kh):
            for kx in range(kw):
                for ci in range(Cin):
                    bit = kx * 8 * (-(-Cin // 8)) + ci
                    if not per_pixel and (ky, bit // 64) != word:
                        n, word = 0, (ky, bit // 64)
                    if active(ci, ky, kx):
                        yield (n % unroll) % sets, ci, ky, kx
                        n += 1

    return _emulate(s, w, b, padding, sets, order)


@pytest.mark.parametrize("Cin,Cout", [(9, 12), (40, 12), (600, 32), (1030, 12)],
                         ids=["one-word-rows", "two-word-rows", "row-index-list", "past-the-list"])
def test_gather_kernel_summation_order(monkeypatch, Cin, Cout):
    """The gather kernel's current, bit for bit, against its documented order: the unrolled add
    loop (the zero row past the last active input adds nothing), the independent sets of
    sums, the per-pixel list of active inputs (entries as offsets / 2 for a tile of at most
    2 x 65535 weight floats, as row indices past that) and, past LIST_CAP, the per-word bit
    walk."""
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1.0")
    g = torch.Generator().manual_seed(21)
    H = 3 if Cin > 100 else 5
    threads = numba_gather.numba.get_num_threads()
    # enough images for a whole-Cout tile (_vectors splits tiles to give every thread two items)
    B = 2 * threads if Cout > 16 else 1
    s = (torch.rand(2, B, Cin, H, H, generator=g) < 0.3).to(torch.uint8)
    w = torch.randn(Cout, Cin, 3, 3, generator=g)
    b = torch.randn(Cout, generator=g)
    nv = numba_gather._vectors(Cout, B, threads)
    cur = sk.spike_conv2d(s, w, b, padding=1, neuron=False, backend="numba")
    expected = _gather_order_current(s, w, b, 1, nv)
    assert torch.equal(cur, expected)
    words = 3 * -(-3 * 8 * -(-Cin // 8) // 64)
    tile_floats = (9 * 8 * -(-Cin // 8) + 1) * 8 * nv
    if Cin == 600:
        assert words * 64 <= numba_gather.LIST_CAP - 4 and tile_floats > 2 * 65535, \
            "the case should take the row-index list"
    if Cin > 1000:
        assert words * 64 > numba_gather.LIST_CAP, "the case should pass the list"



def _column_order_current(s, w, b, padding, nv):
    """The column kernel's current (3x3, stride 1), emulated in numpy in its documented order.

    Output pixel ``ox`` of a row gets input column ``ox`` (kx = 0), then ``ox + 1`` (kx = 1),
    then ``ox + 2`` (kx = 2); within a column the active inputs come in kernel-row, then
    input-channel order, and the ``n``-th of the column goes to set ``n % sets``; each set is
    summed in that order, the sets are added pairwise, then the bias.
    """
    Cin = s.shape[2]
    sets = numba_gather.COLUMN_SETS[nv]

    def order(active):
        for kx in range(3):
            n = 0
            for ky in range(3):
                for ci in range(Cin):
                    if active(ci, ky, kx):
                        yield n % sets, ci, ky, kx
                        n += 1

    return _emulate(s, w, b, padding, sets, order)


@pytest.mark.skipif(not numba_gather.COMPRESS, reason="the column kernel needs AVX-512 VBMI2 (vpcompressw)")
@pytest.mark.parametrize("Cin,Cout,padding", [(9, 12, 1), (16, 16, 1), (40, 32, 0), (16, 64, 1)],
                         ids=["8-channel-tile", "16-channel-tile", "32-channel-tile-no-padding", "64-channel-tile"])
def test_column_kernel_summation_order(monkeypatch, Cin, Cout, padding):
    """A 3x3 stride-1 conv with the neuron takes the column kernel; its spikes and final
    membrane, bit for bit, are ``if_scan`` of the current in the column kernel's documented
    order (``_column_order_current``), for tiles of 8 to 64 channels."""
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1.0")
    g = torch.Generator().manual_seed(Cin + Cout)
    threads = numba_gather.numba.get_num_threads()
    B = 2 * threads if Cout > 16 else 2
    s = (torch.rand(3, B, Cin, 6, 7, generator=g) < 0.3).to(torch.uint8)
    w = torch.randn(Cout, Cin, 3, 3, generator=g) * 0.4
    b = torch.randn(Cout, generator=g) * 0.1
    nv = numba_gather._vectors(Cout, B, threads)
    assert numba_gather._column_fits(True, (3, 3), (1, 1), -(-Cin // 8), nv)
    out, v = sk.spike_conv2d(s, w, b, padding=padding, threshold=0.8, backend="numba", return_state=True)
    ref, v_ref = sk.if_scan(_column_order_current(s, w, b, padding, nv), 0.8, return_state=True,
                            backend="reference")
    assert torch.equal(out, ref)
    assert torch.equal(v, v_ref)
    with monkeypatch.context() as m:
        m.setattr(numba_gather, "COLUMN", False)
        out_gather = sk.spike_conv2d(s, w, b, padding=padding, threshold=0.8, backend="numba")
    # the per-pixel kernel adds in another order: at most near-threshold flips
    assert (out_gather != out).float().mean() < 0.01


def test_word_walk_where_the_cpu_cannot_compress(tmp_path):
    """Without AVX-512 VBMI2 (forced here with NUMBA_CPU_NAME=generic, a portable target) the
    list is off and each word's bits are walked with that path's unroll and sets; the order
    test above passes there too (own process: the choice is made when the kernels compile)."""
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    probe = subprocess.run([sys.executable, "-c", "from spikekernels.ops.spike_conv import numba_gather as g; "
                            "print(g.COMPRESS, g.WALK[2])"], env=env, capture_output=True, text=True, timeout=300)
    assert probe.stdout.split() == ["False", "(2,", "2)"], probe.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "summation_order and word-rows"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-3000:]


def test_weight_rows_end_with_a_zero_row():
    w = torch.randn(20, 9, 3, 3)
    rows = numba_gather.weight_rows(w, 16)
    assert rows.shape == (2, (9 * 16 + 1) * 16)
    assert (rows[:, -16:] == 0).all() and (rows[:, :-16] != 0).any()


def test_weight_rows_follow_in_place_updates():
    """The rearranged weight is cached per tensor; an in-place change must not serve stale rows."""
    s, w, b, conv_kw, _ = _case(CASES[5], seed=13)
    first = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="numba")
    w.mul_(-2.0)
    second = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="numba")
    assert_close(second, sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="reference"),
                 rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, second)
    # a write that bypasses the version counter is caught by the sampled values
    w.data.mul_(0.5)
    third = sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="numba")
    assert_close(third, sk.spike_conv2d(s, w, b, **conv_kw, neuron=False, backend="reference"),
                 rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        fourth = sk.spike_conv2d(s, w.clone(), b, **conv_kw, neuron=False, backend="numba")
    assert_close(fourth, third, rtol=0, atol=0)


BAD = [
    (lambda s, w: dict(s=s, weight=w[:, :2]), ValueError, "input channels"),
    (lambda s, w: dict(s=s[0], weight=w), ValueError, "5 dims"),
    (lambda s, w: dict(s=s, weight=w[0]), ValueError, "Cout, Cin, kh, kw"),
    (lambda s, w: dict(s=s, weight=w, padding=-1), ValueError, "padding"),
    (lambda s, w: dict(s=s, weight=w, stride=0), ValueError, "stride"),
    (lambda s, w: dict(s=s, weight=w, stride=1.5), TypeError, "stride"),
    (lambda s, w: dict(s=s, weight=w, bias=torch.zeros(3)), ValueError, "bias"),
    (lambda s, w: dict(s=s, weight=w, residual=torch.zeros(2, 2, 4, 5, 5)), ValueError, "residual"),
    (lambda s, w: dict(s=s, weight=w, threshold=torch.ones(3)), ValueError, "threshold"),
    (lambda s, w: dict(s=s, weight=w, residual_scale=torch.ones(3)), ValueError, "residual_scale"),
    (lambda s, w: dict(s=s, weight=w, timesteps=3), ValueError, "timesteps"),
    (lambda s, w: dict(s=s.long(), weight=w), TypeError, "dtype"),
    (lambda s, w: dict(s=s, weight=w.long()), TypeError, "weight"),
    (lambda s, w: dict(s=s, weight=w, neuron=False, return_state=True), ValueError, "neuron"),
    (lambda s, w: dict(s=s[:, :, :, :2, :2], weight=w), ValueError, "larger than"),
    (lambda s, w: dict(s=[1, 2], weight=w), TypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("make,exc,match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_raises(make, exc, match):
    s = torch.zeros(2, 2, 3, 5, 5, dtype=torch.uint8)
    w = torch.zeros(4, 3, 3, 3)
    with pytest.raises(exc, match=match):
        sk.spike_conv2d(**make(s, w), backend="reference")


def test_linear_bad_input_raises():
    with pytest.raises(ValueError, match="3 dims"):
        sk.spike_linear(torch.zeros(2, 3, 4, 5), torch.zeros(6, 4))
    with pytest.raises(ValueError, match="Fout, Fin"):
        sk.spike_linear(torch.zeros(2, 3, 4), torch.zeros(6, 4, 1))
    with pytest.raises(ValueError, match="input channels"):
        sk.spike_linear(torch.zeros(2, 3, 4), torch.zeros(6, 5))
    with pytest.raises(ValueError, match="residual"):
        sk.spike_linear(torch.zeros(2, 3, 4), torch.zeros(6, 4), residual=torch.zeros(2, 3, 5))


@pytest.mark.parametrize("Cout,Cin,ct", [(16, 16, 16), (32, 32, 32), (64, 64, 16), (64, 64, 64), (20, 3, 8)])
def test_weight_rows_start_on_a_cache_line(Cout, Cin, ct):
    """The gather kernel's weight rows start on a 64-byte boundary (its 16-float loads then
    never straddle two cache lines; numpy's own allocations often start 16 bytes past one),
    and hold the weight: row ``(ky * kw + kx) * 8 * Cb + ci`` of tile ``i`` is channels
    ``i * ct ...`` of ``w[:, ci, ky, kx]``, zeros past Cout and in the last row."""
    import numpy as np

    w = torch.randn(Cout, Cin, 3, 3, generator=torch.Generator().manual_seed(Cout + Cin + ct))
    wg = numba_gather.weight_rows(w, ct)
    assert wg.ctypes.data % 64 == 0
    Cb = -(-Cin // 8)
    n_tiles = -(-Cout // ct)
    rows = wg.reshape(n_tiles, 9 * 8 * Cb + 1, ct)
    wpad = np.zeros((n_tiles * ct, 8 * Cb, 3, 3), np.float32)
    wpad[:Cout, :Cin] = w.numpy()
    expected = wpad.reshape(n_tiles, ct, 8 * Cb, 9).transpose(0, 3, 2, 1).reshape(n_tiles, 9 * 8 * Cb, ct)
    assert np.array_equal(rows[:, :-1], expected)
    assert not rows[:, -1].any()


def _bits_numpy(s, ph, pw):
    """``_pack``'s layout built with numpy: bit ``c % 8`` of byte ``((y + ph) * Wp + x + pw) * Cb
    + c // 8`` is ``s[item, c, y, x] != 0``; the padding and the 8 bytes of slack are zeros."""
    TB, C, H, W = s.shape
    Cb, Hp, Wp = -(-C // 8), H + 2 * ph, W + 2 * pw
    planes = np.zeros((TB, 8 * Cb, H, W), np.uint8)
    planes[:, :C] = s != 0
    groups = np.packbits(planes.reshape(TB, Cb, 8, H, W), axis=2, bitorder="little")[:, :, 0]
    pk = np.zeros((TB, Hp, Wp, Cb), np.uint8)
    pk[:, ph:ph + H, pw:pw + W] = groups.transpose(0, 2, 3, 1)
    return np.concatenate([pk.reshape(TB, -1), np.zeros((TB, 8), np.uint8)], axis=1)


# (Cin, H, W): uint8 words of 8 pixels in planes (8x8, 32x16) and channel by channel (4x4),
# words of 4 pixels (2x2, 14x14 in planes), single bytes (1x1, 7x7, 3x5); float32 planes of
# pixels (4 or more) or pixel by pixel (1x1, 1x3); channels not a multiple of 8
PACK_SHAPES = [(16, 8, 8), (3, 32, 16), (64, 4, 4), (20, 2, 2), (9, 14, 14), (512, 1, 1), (13, 7, 7), (8, 3, 5),
               (40, 1, 3), (20, 1, 1), (12, 2, 3), (13, 4, 4)]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("Cin,H,W", PACK_SHAPES, ids=[f"{c}ch-{h}x{w}" for c, h, w in PACK_SHAPES])
@pytest.mark.parametrize("ph,pw", [(0, 0), (1, 1), (2, 1)])
def test_pack_matches_numpy(dtype, Cin, H, W, ph, pw):
    """Every loop form of ``_pack`` (uint8: words of 8 / 4 / 2 / 1 pixels in planes or a
    group's channels at a time, a 1x1 map by the multiply, whole and partial groups of 8
    channels; float32 planes or pixel by pixel) against numpy's packbits; a value other than
    0/1 at any place is reported."""
    rng = np.random.default_rng(Cin * H * W + ph)
    s = (rng.random((6, Cin, H, W)) < 0.3).astype(dtype)
    Cb, Wp = -(-Cin // 8), W + 2 * pw
    pk = np.full((6, (H + 2 * ph) * Wp * Cb + 8), 0xAA, np.uint8)
    assert not numba_gather._pack(s.reshape(6, Cin, H * W), pk, H, W, Cb, Wp, ph, pw)
    np.testing.assert_array_equal(pk, _bits_numpy(s, ph, pw))
    for item, c, y, x in [(0, 0, 0, 0), (5, Cin - 1, H - 1, W - 1), (3, Cin // 2, H // 2, W - 1)]:
        bad = s.copy()
        bad[item, c, y, x] = 2 if dtype == np.uint8 else 0.5
        assert numba_gather._pack(bad.reshape(6, Cin, H * W), pk, H, W, Cb, Wp, ph, pw), (item, c, y, x)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("Cin,H", [(128, 4), (256, 2), (20, 4), (13, 2), (8, 4), (3, 2)])
def test_picked_pack(Cin, H, dtype):
    """A 1x1 stride-2 conv on a map of PICKED packs only the pixels it reads into a compact map
    (uint8 or float32 spikes): the bits are numpy's of the subsampled input (whole and partial
    8-channel groups, the border-free layout), a value other than 0/1 anywhere is reported
    (picked pixel or not; NaN too), and the op gives the same spikes and membrane as with the
    whole map packed (PICK off)."""
    rng = np.random.default_rng(Cin + H)
    s = (rng.random((6, Cin, H, H)) < 0.3).astype(dtype)
    Cb, Ho = -(-Cin // 8), (H - 1) // 2 + 1
    pk = np.full((6, Ho * Ho * Cb + 8), 0xAA, np.uint8)
    picked = numba_gather.PICKED[(H, H, 2, 2)]
    assert not numba_gather._pack_picked(s.reshape(6, -1), pk, Cin, H * H, Cb, np.array(picked))
    np.testing.assert_array_equal(pk, _bits_numpy(np.ascontiguousarray(s[:, :, ::2, ::2]), 0, 0))
    for item, c, y, x in [(0, 0, 0, 0), (5, Cin - 1, H - 1, H - 1), (3, Cin // 2, 0, H - 1)]:
        for value in ([2] if dtype == np.uint8 else [0.5, np.nan, -1.0]):
            bad = s.copy()
            bad[item, c, y, x] = value
            assert numba_gather._pack_picked(bad.reshape(6, -1), pk, Cin, H * H, Cb, np.array(picked)), (item, c, y, x)
    x = torch.from_numpy(s).view(2, 3, Cin, H, H)
    g = torch.Generator().manual_seed(Cin)
    w, b = torch.randn(24, Cin, 1, 1, generator=g) / Cin ** 0.5, torch.randn(24, generator=g) * 0.1
    runs = {}
    for pick in (True, False):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(numba_gather, "PICK", pick)
            runs[pick] = sk.spike_conv2d(x, w, b, stride=2, backend="numba", return_state=True)
    assert torch.equal(runs[True][0], runs[False][0]) and torch.equal(runs[True][1], runs[False][1])
    assert runs[True][0].sum() > 0


# (Cin, H, W, k, stride, padding): the picked pack (1x1 stride 2 on 4x4 and 2x2), the word
# pack (8x8, 4x4, a 1x1 map, an odd map, partial 8-channel groups)
FUSED_CASES = [(128, 4, 4, 1, 2, 0), (13, 2, 2, 1, 2, 0), (16, 8, 8, 3, 1, 1), (20, 4, 4, 3, 1, 1),
               (64, 1, 1, 3, 1, 1), (9, 5, 4, 3, 2, 1)]


def _fused_runs(s, w, b, stride, padding, **kw):
    """The op with the pack fused into the kernel's region, then with the pack on its own;
    the first must not call the separate packs."""
    runs = {}
    for fuse in (True, False):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(numba_gather, "FUSE_PACK", fuse)
            if fuse:
                for name in ("_pack", "_pack_picked"):
                    m.setattr(numba_gather, name, lambda *a, name=name: pytest.fail(f"{name} ran: the pack was not fused"))
            runs[fuse] = sk.spike_conv2d(s, w, b, stride=stride, padding=padding, backend="numba", **kw)
    return runs[True], runs[False]


@pytest.mark.parametrize("case", FUSED_CASES, ids=[str(c) for c in FUSED_CASES])
@pytest.mark.parametrize("variant", ["neuron", "residual-zero-reset", "currents"])
def test_fused_pack_equals_the_separate_pack(case, variant):
    """uint8 spikes on small maps are packed inside the gather kernel's parallel region, each
    thread its own images (FUSE_PACK): spikes, membrane and currents are those of the pack run
    on its own first, bit for bit, with a residual, the zero reset, a given v0, or no neuron."""
    Cin, H, W, k, stride, padding = case
    g = torch.Generator().manual_seed(Cin * H + k)
    B, Cout = 4, 24
    s = (torch.rand(5, B, Cin, H, W, generator=g) < 0.3).to(torch.uint8)
    w, b = torch.randn(Cout, Cin, k, k, generator=g) / (Cin * k * k) ** 0.5, torch.randn(Cout, generator=g) * 0.1
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    kw = {}
    if variant == "residual-zero-reset":
        kw = dict(residual=(torch.rand(5, B, Cout, Ho, Wo, generator=g) < 0.3).to(torch.uint8), reset="zero",
                  v0=torch.rand(B, Cout, Ho, Wo, generator=g), return_state=True)
    elif variant == "currents":
        kw = dict(neuron=False)
    else:
        kw = dict(return_state=True)
    fused, separate = _fused_runs(s, w, b, stride, padding, **kw)
    if variant == "currents":
        assert torch.equal(fused, separate)
    else:
        assert torch.equal(fused[0], separate[0]) and torch.equal(fused[1], separate[1])
        assert 0 < int(fused[0].count_nonzero()) < fused[0].numel()


@pytest.mark.parametrize("case", FUSED_CASES[:3], ids=[str(c) for c in FUSED_CASES[:3]])
@pytest.mark.parametrize("image", [0, 3])
def test_fused_pack_with_a_value_other_than_0_1_runs_the_scatter_kernel(case, image):
    """A value other than 0/1 found by the fused pack (in the first or the last image): the op
    falls back to the scatter kernel from the membrane it was given (the other thread's images
    were already stepped: their membranes are put back), as the separate pack does."""
    Cin, H, W, k, stride, padding = case
    g = torch.Generator().manual_seed(7 + image)
    B, Cout = 4, 16
    s = (torch.rand(5, B, Cin, H, W, generator=g) < 0.3).to(torch.uint8)
    s[2, image, Cin - 1, H - 1, W - 1] = 2
    w, b = torch.randn(Cout, Cin, k, k, generator=g) / (Cin * k * k) ** 0.5, torch.randn(Cout, generator=g) * 0.1
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    v0 = torch.rand(B, Cout, Ho, Wo, generator=g)
    keep = v0.clone()
    fused, separate = _fused_runs(s, w, b, stride, padding, v0=v0, return_state=True)
    assert torch.equal(fused[0], separate[0]) and torch.equal(fused[1], separate[1])
    assert torch.equal(v0, keep)
    # the scatter kernel's answer: the reference's currents, within rounding of the threshold
    assert_spikes_match(fused[0], sk.spike_conv2d(s.float(), w, b, stride=stride, padding=padding, v0=v0,
                                                  backend="reference"))


# (H, W, k, stride, padding, Cin): 1x1 and 2x2 images under a 3x3 field, stride 2, a wide
# padding, channels sharing a word across taps (Cin < 64) and not (Cin = 128)
TABLE_CASES = [(1, 1, 3, 1, 1, 512), (2, 2, 3, 1, 1, 256), (2, 2, 3, 2, 1, 256), (5, 4, 3, 2, 1, 16),
               (4, 4, 3, 1, 2, 128), (3, 6, 1, 2, 0, 64), (7, 5, 3, 1, 1, 9)]


@pytest.mark.parametrize("H,W,k,stride,padding,Cin", TABLE_CASES, ids=[str(c) for c in TABLE_CASES])
def test_tables_leave_out_only_words_in_the_padding(H, W, k, stride, padding, Cin):
    """Each output pixel's class table is the whole field's words, in their order, less words
    whose bits all lie in the padding (where ``_pack`` writes zeros)."""
    Cb = -(-Cin // 8)
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    Wp = W + 2 * padding
    geometry = (Ho, Wo, stride, stride, padding, padding, H, W)
    full = numba_gather._tables(k, k, Cb, Wp, 8, geometry, False)
    toff, wrow, mask, nws, cls_y, cls_x = numba_gather._tables(k, k, Cb, Wp, 8, geometry)
    assert full[3].tolist() == [full[0].shape[1]]
    words = list(zip(full[0][0].tolist(), full[1][0].tolist()))
    dropped_any = False
    for oy in range(Ho):
        for ox in range(Wo):
            c = cls_y[oy] * (cls_x.max() + 1) + cls_x[ox]
            kept = list(zip(toff[c, :nws[c]].tolist(), wrow[c, :nws[c]].tolist()))
            assert kept == [w for w in words if w in kept], "the kept words changed order"
            for i, word in enumerate(words):
                if word in kept:
                    continue
                dropped_any = True
                for j in range(64):
                    if not int(full[2][0, i]) >> j & 1:
                        continue
                    row = full[1][0, i] // 8 + j  # weight row = (ky * kw + kx) * 8 Cb + ci
                    ky, kx = divmod(row // (8 * Cb), k)
                    y, x = oy * stride + ky - padding, ox * stride + kx - padding
                    assert not (0 <= y < H and 0 <= x < W), f"pixel {(oy, ox)} dropped an input in the image"
    assert dropped_any == (padding > 0), "a padded field should drop a word somewhere, an unpadded one none"
    if (H, W, Cin) == (1, 1, 512):
        assert nws.tolist() == [8], "a 3x3 field on a 1x1 image reads only the centre's 8 words"


@pytest.mark.parametrize("k,stride,padding,size,want", [
    (3, 1, 1, 1, 1), (3, 2, 1, 2, 4), (3, 2, 1, 4, 9), (3, 1, 1, 2, 9), (1, 2, 0, 4, 1), (3, 1, 1, 32, 9),
    (5, 1, 2, 1, 1), (5, 1, 2, 2, 9), (5, 2, 2, 3, 25), (3, 2, 0, 4, 9)])
def test_taps_read_are_the_taps_that_land_in_the_image(k, stride, padding, size, want):
    """The work-item order is chosen by the weight rows the kernel reads: those of the taps
    that land in the image for some output pixel (a 3x3 field on a 1x1 map reads one tap)."""
    out = (size + 2 * padding - k) // stride + 1
    got = numba_gather._taps_read(k, k, (stride, stride), (padding, padding), (size, size), (out, out))
    brute = {(ky, kx) for oy in range(out) for ox in range(out) for ky in range(k) for kx in range(k)
             if 0 <= oy * stride - padding + ky < size and 0 <= ox * stride - padding + kx < size}
    assert got == len(brute) == want


def test_tile_major_order_changes_nothing(monkeypatch):
    """Work items in tile-major order (layers with large weights) give the same spikes,
    membrane and kept bits, bit for bit, as image-major order."""
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1.0")
    g = torch.Generator().manual_seed(5)
    s = (torch.rand(3, 2, 24, 6, 6, generator=g) < 0.2).to(torch.uint8)
    w = torch.randn(40, 24, 3, 3, generator=g) * 0.3
    # two images, two tiles (the second partial) on two threads: the orders differ
    assert -(-40 // (8 * numba_gather._vectors(40, 2, 2))) > 1
    runs = []
    for limit in (2**40, 0):
        monkeypatch.setattr(numba_gather, "TILE_MAJOR_BYTES", limit)
        out, v = sk.spike_conv2d(s, w, stride=2, padding=1, threshold=0.7, backend="numba", return_state=True)
        runs.append((out, v, numba_gather.recall(out).pk.copy()))
    for a, b in zip(*runs):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert runs[0][0].sum() > 0


@pytest.mark.parametrize("density", [0.05, 0.4, 0.8])
def test_density_estimate_of_a_large_input(density):
    """Past DENSITY_SAMPLE elements the switch's density comes from evenly strided runs:
    within 0.02 of the true density (the sample's standard error is at most 0.004)."""
    g = torch.Generator().manual_seed(int(density * 100))
    s = (torch.rand(8, 32, 64, 16, 16, generator=g) < density).to(torch.uint8)
    assert s.numel() > 64 * sc_numba.DENSITY_SAMPLE
    true = s.float().mean().item()
    assert abs(sc_numba.estimate_density(s) - true) < 0.02


def test_density_estimate_of_a_structured_input():
    """Runs of contiguous elements, not one element per stride: a layer whose even channels are
    silent and odd ones fire at 0.6 (a channel plane is 4 runs) or whose second half of steps
    is silent is still estimated within 0.02; a small input is counted exactly."""
    g = torch.Generator().manual_seed(3)
    s = (torch.rand(8, 32, 64, 16, 16, generator=g) < 0.6).to(torch.uint8)
    s[:, :, ::2] = 0
    assert abs(sc_numba.estimate_density(s) - s.float().mean().item()) < 0.02
    s = (torch.rand(8, 32, 64, 16, 16, generator=g) < 0.6).to(torch.float32)
    s[4:] = 0
    assert abs(sc_numba.estimate_density(s) - s.float().mean().item()) < 0.02
    small = torch.tensor([0, 1, 1, 0, 1], dtype=torch.uint8)
    assert sc_numba.estimate_density(small) == 0.6
