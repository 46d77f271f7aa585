"""Channels-last row helpers shared by the two Numba spiking-conv kernels.

``_if_row`` / ``_current_row``: the IF update (or the current) of one output row kept
channels-last ``[W', ct]``, vectorized over the whole row (a per-pixel loop over 16 channels
would leave LLVM's 32-float vector body unused and run scalar). ``_spikes_out``: channels-last
0/1 bytes ``[H'W', ct]`` to the user layout ``[Cout, H'W']``.
"""

from __future__ import annotations

import numba
import numpy as np

from .numba_transpose import rows64

# byte b -> uint64 whose byte j is bit j of b
_SPREAD = np.array([sum(((b >> j) & 1) << (8 * j) for j in range(8)) for b in range(256)], np.uint64)
# byte b -> 8 float32 whose j-th is bit j of b (a global: frozen into the kernels as a constant)
_SPREAD_F32 = np.array([[(b >> j) & 1 for j in range(8)] for b in range(256)], np.float32)
# how _spikes_out writes: element by element, uint8 words, float32 rows of 8 through _SPREAD_F32
OUT_ELEMENTS, OUT_WORDS, OUT_F32_ROWS = 0, 1, 2


def aligned_zeros(shape: tuple[int, ...], dtype=np.float32, align: int = 64) -> np.ndarray:
    """``np.zeros(shape, dtype)`` whose first element starts on an ``align``-byte boundary.

    numpy's allocations start 16 bytes past a boundary as often as not; a kernel's 64-byte
    vector loads from such an array straddle two cache lines. The gather kernel's weight rows
    from an aligned array ran 1.2-1.6x faster on ResNet-20/18's 32-128 channel layers
    (bench/RESULTS.md "Session 11").
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    raw = np.zeros(size * dtype.itemsize + align, np.uint8)
    skip = -raw.ctypes.data % align
    return raw[skip:skip + size * dtype.itemsize].view(dtype).reshape(shape)


def spikes_out_views(out: np.ndarray, neuron: bool, P: int) -> tuple[int, np.ndarray]:
    """``(mode, words)`` for ``_spikes_out`` writing the output ``out [T, B, Cout, P]``.

    uint8 spikes with ``P`` a multiple of 8: OUT_WORDS and ``out`` viewed as uint64 (whole
    8-byte words per channel row); float32 spikes, same ``P``: OUT_F32_ROWS (rows of 8 from a
    table); otherwise, or without the neuron, OUT_ELEMENTS. ``words`` is a dummy unless
    OUT_WORDS.
    """
    mode = OUT_ELEMENTS
    if neuron and P % 8 == 0:
        mode = OUT_WORDS if out.dtype == np.uint8 else OUT_F32_ROWS if out.dtype == np.float32 else OUT_ELEMENTS
    # the dummy has [T, B] so that `words[t, b]` also works without the JIT (NUMBA_DISABLE_JIT)
    words = out.view(np.uint64) if mode == OUT_WORDS else np.zeros(out.shape[:2] + (1, 1), np.uint64)
    return mode, words


@numba.njit(cache=True, inline="always")
def _tile_setup(thr, rs, bias, v, vl, b, Cout, c0, nc, ct, Wo, P, th, sc, bi, neuron):
    """Per work item: the channel tile's threshold, residual scale and bias spread over an
    output row channels-last (``th``, ``sc``, ``bi`` ``[W' * ct]``; per-channel vectors of one
    value broadcast), and with the neuron the membrane ``v [B * Cout * P]`` of image ``b``
    transposed to channels-last ``vl [P * ct]``."""
    n_thr = thr.shape[0]
    n_rs = rs.shape[0]
    for ox in range(Wo):
        for c in range(nc):
            th[ox * ct + c] = thr[(c0 + c) % n_thr]
            sc[ox * ct + c] = rs[(c0 + c) % n_rs]
            bi[ox * ct + c] = bias[c0 + c]
    if neuron:
        _membrane_in(v, vl, b, Cout, c0, nc, ct, P)


@numba.njit(cache=True, inline="always")
def _membrane_in(v, vl, b, Cout, c0, nc, ct, P):
    """Channels ``c0 .. c0+nc`` of image ``b``'s membrane ``v [B * Cout * P]`` to channels-last
    ``vl [P * ct]``."""
    for c in range(nc):
        base = (b * Cout + c0 + c) * P
        for p in range(P):
            vl[p * ct + c] = v[base + p]


@numba.njit(cache=True, inline="always")
def _membrane_out(vl, v, b, Cout, c0, nc, ct, P):
    """``_membrane_in`` backwards: channels-last ``vl [P * ct]`` to ``v [B * Cout * P]``."""
    for c in range(nc):
        base = (b * Cout + c0 + c) * P
        for p in range(P):
            v[base + p] = vl[p * ct + c]


@numba.njit(cache=True, fastmath=False, inline="always")
def _if_row(arow, bi, sc, rr, sb, th, vrow, sp, has_res, has_sb, reset_zero, vr):
    """IF update of one output row, channels-last ``[W', co_tile]``; clears the current.

    Same float32 operations, in the same order, as ``if_scan`` on the reference's current:
    ``x = (acc + b) + (β_t + α·r)`` (``sb``: the step's bias row β_t, read when ``has_sb``),
    ``v = v + x``, ``s = v >= θ``, then the reset. Branches outside the loops so each
    vectorizes; the step bias costs one load and add per neuron, no pass of its own.
    """
    zero = np.float32(0.0)
    n = arow.shape[0]
    if has_res and has_sb:
        if reset_zero:
            for j in range(n):
                vi = vrow[j] + ((arow[j] + bi[j]) + (sb[j] + sc[j] * np.float32(rr[j])))
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vr if spk else vi
        else:
            for j in range(n):
                vi = vrow[j] + ((arow[j] + bi[j]) + (sb[j] + sc[j] * np.float32(rr[j])))
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vi - (th[j] if spk else zero)
    elif has_res:
        if reset_zero:
            for j in range(n):
                vi = vrow[j] + ((arow[j] + bi[j]) + sc[j] * np.float32(rr[j]))
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vr if spk else vi
        else:
            for j in range(n):
                vi = vrow[j] + ((arow[j] + bi[j]) + sc[j] * np.float32(rr[j]))
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vi - (th[j] if spk else zero)
    elif has_sb:
        if reset_zero:
            for j in range(n):
                vi = vrow[j] + ((arow[j] + bi[j]) + sb[j])
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vr if spk else vi
        else:
            for j in range(n):
                vi = vrow[j] + ((arow[j] + bi[j]) + sb[j])
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vi - (th[j] if spk else zero)
    else:
        if reset_zero:
            for j in range(n):
                vi = vrow[j] + (arow[j] + bi[j])
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vr if spk else vi
        else:
            for j in range(n):
                vi = vrow[j] + (arow[j] + bi[j])
                arow[j] = zero
                spk = vi >= th[j]
                sp[j] = spk
                vrow[j] = vi - (th[j] if spk else zero)


@numba.njit(cache=True, fastmath=False, inline="always")
def _current_row(arow, bi, sc, rr, sb, xr, has_res, has_sb):
    """``x = (acc + b) + (β_t + α·r)`` of one output row into ``xr`` (``neuron=False``); clears the current."""
    zero = np.float32(0.0)
    for j in range(arow.shape[0]):
        xv = arow[j] + bi[j]
        if has_res and has_sb:
            xv = xv + (sb[j] + sc[j] * np.float32(rr[j]))
        elif has_res:
            xv = xv + sc[j] * np.float32(rr[j])
        elif has_sb:
            xv = xv + sb[j]
        xr[j] = xv
        arow[j] = zero


@numba.njit(cache=True, inline="always")
def _step_bias_row(sbt, c0, nc, ct, Wo, row):
    """The step's bias ``sbt [Cout]`` for channels ``c0 .. c0+nc`` spread channels-last over a
    row: ``row[ox * ct + c] = sbt[c0 + c]`` (``Wo * nc`` writes per step and channel tile)."""
    for ox in range(Wo):
        for c in range(nc):
            row[ox * ct + c] = sbt[c0 + c]


@numba.njit(cache=True, inline="always")
def _spikes_out(spw, ct, nc, P, ot, ow, c0, spread, mode):
    """Channels-last spikes ``spw`` (as bytes: ``[P, ct]`` 0/1) to rows ``c0:c0+nc`` of the output.

    ``mode`` OUT_WORDS with ``P`` a multiple of 64 and ``ct`` in 8, 16, 32, 64: 64 pixels at a
    time through ``numba_transpose.rows64`` (vector shuffles) into ``ot``. Otherwise OUT_WORDS:
    write ``ow``, the uint8 output ``[Cout, P]`` viewed as uint64
    ``[Cout, P / 8]`` (P a multiple of 8): 8 pixels x 8 channels at a time, OR the 8 pixel
    words (one 0/1 byte per channel) shifted by the pixel into one bit matrix, then spread
    each channel's byte of it back to 8 bytes through a table: one uint64 store per 8 spikes.
    OUT_F32_ROWS: the same bit matrix, each channel's byte spread to 8 float32 through
    ``_SPREAD_F32`` into ``ot`` (float32 ``[Cout, P]``): one 32-byte row copy per 8 spikes.
    OUT_ELEMENTS: ``ot`` ``[Cout, P]`` (any dtype) element by element.
    """
    if mode == OUT_WORDS and P % 64 == 0 and (ct == 8 or ct == 16 or ct == 32 or ct == 64):
        # 64 pixels at a time by vector shuffles (numba_transpose)
        sp = spw.view(np.uint8)
        for pb in range(P // 64):
            rows64(ct, sp, pb * 64 * ct, ot, c0 * P + pb * 64, P, nc)
        return
    if mode == OUT_ELEMENTS:
        # indexed, not through a row view per channel (a view costs more than a row of a few
        # pixels: ResNet-18's 2x2 and 1x1 layers)
        sp = spw.view(np.uint8)
        for c in range(nc):
            for p in range(P):
                ot[c0 + c, p] = sp[p * ct + c]
        return
    cg = ct // 8
    for g in range(cg):
        kn = min(8, nc - 8 * g)
        for pb in range(P // 8):
            m = np.uint64(0)
            for j in range(8):
                m |= spw[(pb * 8 + j) * cg + g] << np.uint64(j)
            for k in range(kn):
                bits = np.int64((m >> np.uint64(8 * k)) & np.uint64(0xFF))
                if mode == OUT_WORDS:
                    ow[c0 + 8 * g + k, pb] = spread[bits]
                else:
                    orow = ot[c0 + 8 * g + k]
                    for j in range(8):
                        orow[pb * 8 + j] = _SPREAD_F32[bits, j]


@numba.njit(cache=True, inline="always")
def _residual_in(rw, rt, rr8, rr8w, ct, nc, P, row0, spread):
    """uint8 residual rows ``row0 .. row0+nc`` of ``rt [rows * P]`` to channels-last ``rr8 [P, ct]``.

    ``rw`` is ``rt`` viewed as uint64 (P a multiple of 8), ``rr8w`` is ``rr8`` viewed as
    uint64. 8 channels x 8 pixels at a time (the spike transpose of ``_spikes_out`` run
    backwards); blocks with a value other than 0/1 are copied bytewise.
    """
    cg = ct // 8
    for g in range(cg):
        kn = min(8, nc - 8 * g)
        w_lo = ((row0 + 8 * g) * P) // 8
        for pb in range(P // 8):
            m = np.uint64(0)
            big = np.uint64(0)
            for k in range(kn):
                wv = rw[w_lo + k * (P // 8) + pb]
                big |= wv
                m |= wv << np.uint64(k)
            if big & np.uint64(0xFEFEFEFEFEFEFEFE):
                for k in range(kn):
                    for j in range(8):
                        rr8[(pb * 8 + j) * ct + 8 * g + k] = rt[(row0 + 8 * g + k) * P + pb * 8 + j]
            else:
                for j in range(8):
                    rr8w[(pb * 8 + j) * cg + g] = spread[np.int64((m >> np.uint64(8 * j)) & np.uint64(0xFF))]
