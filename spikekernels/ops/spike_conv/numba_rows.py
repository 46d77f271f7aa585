"""Channels-last row helpers shared by the two Numba spiking-conv kernels.

``_if_row`` / ``_current_row``: the IF update (or the current) of one output row kept
channels-last ``[W', ct]``, vectorized over the whole row (a per-pixel loop over 16 channels
would leave LLVM's 32-float vector body unused and run scalar). ``_spikes_out``: channels-last
0/1 bytes ``[H'W', ct]`` to the user layout ``[Cout, H'W']``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .numba_transpose import block_fits, block_rows, rows64

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


def spikes_out_mode(out: np.ndarray, neuron: bool) -> int:
    """How ``_spikes_out`` writes the output ``out [T, B, Cout, P]``: uint8 spikes OUT_WORDS,
    float32 OUT_F32_ROWS, other dtypes or no neuron (a current, not spikes) OUT_ELEMENTS."""
    if not neuron:
        return OUT_ELEMENTS
    return OUT_WORDS if out.dtype == np.uint8 else OUT_F32_ROWS if out.dtype == np.float32 else OUT_ELEMENTS


@numba.njit(cache=True, inline="always")
def _tile_setup(thr, rs, bias, v, vl, b, Cout, c0, nc, ct, Wo, P, th, sc, bi, neuron):
    """Per work item: the channel tile's threshold, residual scale and bias spread over an
    output row channels-last (``th``, ``sc``, ``bi`` ``[W' * ct]``; per-channel vectors of one
    value broadcast), and with the neuron the membrane ``v [B * Cout * P]`` of image ``b``
    transposed to channels-last ``vl [P * ct]``."""
    # one value or one per channel: no division per element (a modulo per channel and pixel
    # held 7% of the kernel samples in a perf profile of a ResNet-18 1x1 shortcut)
    t_one = thr.shape[0] == 1
    r_one = rs.shape[0] == 1
    for c in range(nc):
        th[c] = thr[0 if t_one else c0 + c]
        sc[c] = rs[0 if r_one else c0 + c]
        bi[c] = bias[c0 + c]
    for ox in range(1, Wo):
        for c in range(nc):
            th[ox * ct + c] = th[c]
            sc[ox * ct + c] = sc[c]
            bi[ox * ct + c] = bi[c]
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


def _byte_pointer(context, builder, sig, args, it):
    """A pointer of type ``it*`` to byte ``args[1]`` of the array ``args[0]`` (an intrinsic's
    first two arguments)."""
    arr = context.make_array(sig.args[0])(context, builder, args[0])
    off = context.cast(builder, args[1], sig.args[1], types.intp)
    ptr = builder.gep(builder.bitcast(arr.data, ir.IntType(8).as_pointer()), [off])
    return builder.bitcast(ptr, it.as_pointer())


def _store_codegen(bits: int):
    def codegen(context, builder, sig, args):
        it = ir.IntType(bits)
        val = context.cast(builder, args[2], sig.args[2], types.uint64)
        builder.store(builder.trunc(val, it) if bits < 64 else val, _byte_pointer(context, builder, sig, args, it),
                      align=1)
        return context.get_dummy_value()
    return codegen


def _store_twin(nbytes: int):
    def store(arr, off, value):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
        flat = arr.reshape(-1)
        flat[off:off + nbytes] = np.array([value], np.uint64).view(np.uint8)[:nbytes]
    return store


def _load_codegen(bits: int):
    def codegen(context, builder, sig, args):
        val = builder.load(_byte_pointer(context, builder, sig, args, ir.IntType(bits)), align=1)
        return builder.zext(val, ir.IntType(64)) if bits < 64 else val
    return codegen


def _load_twin(nbytes: int):
    def load(arr, off):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
        return np.uint64(int.from_bytes(arr.reshape(-1)[off:off + nbytes].tobytes(), "little"))
    return load


if numba.config.DISABLE_JIT:
    _store_u64, _store_u32 = _store_twin(8), _store_twin(4)
    _load_u64, _load_u32, _load_u16, _load_u8 = _load_twin(8), _load_twin(4), _load_twin(2), _load_twin(1)
else:
    def _store_intrinsic(bits: int):
        @intrinsic
        def store(typingctx, arr, off, value):
            """The low ``bits`` of ``value`` (little-endian) to bytes ``off ..`` of the uint8
            array ``arr`` (C-contiguous, ``off`` counted from its first element), one store
            with no alignment assumed and no index check."""
            return types.void(arr, off, value), _store_codegen(bits)
        return store

    _store_u64, _store_u32 = _store_intrinsic(64), _store_intrinsic(32)

    def _load_intrinsic(bits: int):
        @intrinsic
        def load(typingctx, arr, off):
            """``bits`` bits (little-endian) from bytes ``off ..`` of the uint8 array ``arr``
            (C-contiguous, ``off`` counted from its first element) as a uint64, one load with
            no alignment assumed and no index check."""
            return types.uint64(arr, off), _load_codegen(bits)
        return load

    _load_u64, _load_u32, _load_u16, _load_u8 = (_load_intrinsic(b) for b in (64, 32, 16, 8))


def _row_codegen(lanes: int):
    def codegen(context, builder, sig, args):
        dty, oty, tty, ity = sig.args
        dst = context.make_array(dty)(context, builder, args[0])
        tbl = context.make_array(tty)(context, builder, args[2])
        off = context.cast(builder, args[1], oty, types.intp)
        row = context.cast(builder, args[3], ity, types.intp)
        vt = ir.VectorType(ir.FloatType(), lanes)
        first = builder.mul(row, ir.Constant(ir.IntType(64), 8))
        src = builder.bitcast(builder.gep(tbl.data, [first]), vt.as_pointer())
        builder.store(builder.load(src, align=4), builder.bitcast(builder.gep(dst.data, [off]), vt.as_pointer()),
                      align=4)
        return context.get_dummy_value()
    return codegen


def _row_twin(lanes: int):
    def store_row(dst, off, table, row):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
        dst.reshape(-1)[off:off + lanes] = table[row, :lanes]
    return store_row


if numba.config.DISABLE_JIT:
    _store_row8, _store_row4 = _row_twin(8), _row_twin(4)
else:
    def _row_intrinsic(lanes: int):
        @intrinsic
        def store_row(typingctx, dst, off, table, row):
            """``dst.flat[off:off + lanes] = table[row, :lanes]`` (float32; ``table [rows, 8]``
            C-contiguous) as one vector load and store, no index check."""
            return types.void(dst, off, table, row), _row_codegen(lanes)
        return store_row

    _store_row8, _store_row4 = _row_intrinsic(8), _row_intrinsic(4)


@numba.njit(cache=True, inline="always")
def _spikes_out(spw, ct, nc, P, of, o0, c0, spread, mode):
    """Channels-last spikes ``spw`` (as bytes: ``[P, ct]`` 0/1) to rows ``c0:c0+nc`` of the
    ``[Cout, P]`` block at element ``o0`` of the flat output ``of``.

    A whole tile (``nc == ct``) of a small map (``(P, ct)`` in ``numba_transpose.BLOCKS``:
    ResNet-18's 4x4, 2x2 and 1x1 maps on CIFAR) is a contiguous ``[ct, P]`` block of the
    output: one shuffle network (``block_rows``); everything else: ``_spikes_rows``. Inlined
    or not, a call of this function takes a reference count on each array argument (the
    inlined arguments become new variables): atomic adds that every thread makes on the
    shared output and table, once per call. The gather kernel, which calls it once per step
    and item, makes the same choice itself (``out_block`` in ``_gather_items``) and calls
    ``block_rows`` directly (bench/RESULTS.md "Session 14").
    """
    if mode != OUT_ELEMENTS and nc == ct and block_fits(P, ct):
        block_rows(spw, 0, of, o0 + c0 * P, P, ct)
    else:
        _spikes_rows(spw, ct, nc, P, of, o0, c0, spread, mode)


@numba.njit(cache=True)
def _spikes_rows(spw, ct, nc, P, of, o0, c0, spread, mode):
    """Channels-last spikes ``spw`` (as bytes: ``[P, ct]`` 0/1) to rows ``c0:c0+nc`` of the
    ``[Cout, P]`` block at element ``o0`` of the flat output ``of`` (a step and image of
    ``out [T, B, Cout, P]``: passed flat with an offset, not as a view, since a view made per
    step costs an atomic reference count on the output shared by every thread).

    OUT_WORDS (uint8 ``of``): with ``P`` a multiple of 64 and ``ct`` in 8, 16, 32, 64, 64
    pixels at a time through ``numba_transpose.rows64`` (vector shuffles). With ``P`` = 1 the
    channels-last bytes are already the rows: 8 channels per 8-byte store. Otherwise 8
    channels x 8 pixels at a time: OR the 8 pixel words (one 0/1 byte per channel) shifted by
    the pixel into one bit matrix, then spread each channel's byte of it back to 8 bytes
    through a table: one 8-byte store per 8 spikes (unaligned, so any ``P`` takes it); the
    last ``P % 8`` pixels of a row the same way, stored as 4 bytes (a 2x2 map) or byte by byte.
    OUT_F32_ROWS (float32 ``of``): the same bit matrix, each channel's byte spread to 8
    float32 through ``_SPREAD_F32`` (one 8-lane vector store per 8 spikes, a 4-lane one for a
    tail of 4, element by element for other tails); ``P`` = 1 converts the channel bytes in
    order. The full 8-pixel blocks and the tail are separate loops: one loop over blocks of
    ``min(8, P - 8 pb)`` pixels kept the width's branches in the hot loop. OUT_ELEMENTS: element by element (any dtype).
    On one thread, per spike slot, against session 12's element loop: 1.1-2.8x on 1x1, 2x2,
    7x7 and 14x14 maps with uint8 spikes, 1.05-2.4x with float32 (bench/RESULTS.md
    "Session 13").
    """
    sp = spw.view(np.uint8)
    if mode == OUT_WORDS and P % 64 == 0 and (ct == 8 or ct == 16 or ct == 32 or ct == 64):
        # 64 pixels at a time by vector shuffles (numba_transpose)
        for pb in range(P // 64):
            rows64(ct, sp, pb * 64 * ct, of, o0 + c0 * P + pb * 64, P, nc)
        return
    if mode == OUT_ELEMENTS:
        # indexed, not through a row view per channel (a view costs more than a row of a few
        # pixels: ResNet-18's 2x2 and 1x1 layers)
        for c in range(nc):
            for p in range(P):
                of[o0 + (c0 + c) * P + p] = sp[p * ct + c]
        return
    cg = ct // 8
    if P == 1:
        # [1, ct] channels-last already is the channel row
        if mode == OUT_WORDS:
            for g in range(nc // 8):
                _store_u64(of, o0 + c0 + 8 * g, spw[g])
            for c in range(nc // 8 * 8, nc):
                of[o0 + c0 + c] = sp[c]
        else:
            for c in range(nc):
                of[o0 + c0 + c] = np.float32(sp[c])
        return
    n = P % 8
    for g in range(cg):
        kn = min(8, nc - 8 * g)
        for pb in range(P // 8):
            m = np.uint64(0)
            for j in range(8):
                m |= spw[(pb * 8 + j) * cg + g] << np.uint64(j)
            for k in range(kn):
                bits = np.int64((m >> np.uint64(8 * k)) & np.uint64(0xFF))
                o = o0 + (c0 + 8 * g + k) * P + 8 * pb
                if mode == OUT_WORDS:
                    _store_u64(of, o, spread[bits])
                else:
                    _store_row8(of, o, _SPREAD_F32, bits)
        if n == 0:
            continue
        # the last n pixels of each row
        p0 = P - n
        m = np.uint64(0)
        for j in range(n):
            m |= spw[(p0 + j) * cg + g] << np.uint64(j)
        for k in range(kn):
            bits = np.int64((m >> np.uint64(8 * k)) & np.uint64(0xFF))
            o = o0 + (c0 + 8 * g + k) * P + p0
            if mode == OUT_WORDS:
                wv = spread[bits]
                if n == 4:
                    _store_u32(of, o, wv)
                else:
                    for j in range(n):
                        of[o + j] = np.uint8((wv >> np.uint64(8 * j)) & np.uint64(0xFF))
            elif n == 4:
                _store_row4(of, o, _SPREAD_F32, bits)
            else:
                for j in range(n):
                    of[o + j] = _SPREAD_F32[bits, j]


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
