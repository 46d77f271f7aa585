"""Numba CPU kernels of the spiking convolution: event-driven below a spike density, dense above.

Below the density switch, 0/1 inputs go to the gather kernel (``numba_gather.py``:
output-stationary on bit-packed spikes); inputs with other values (an analog input) to the
scatter kernel here, which multiplies each weight slice by the input value.

Scatter kernel (``_event_kernel``): one work item per (image, output-channel tile), the
T loop inside. At each step the input spikes are gathered into a compact list (8 input bytes
per word read, silent words skipped), then every spike adds its weight slices into an output
current buffer kept channels-last ``[H'*W', Cout]`` as explicit 8-float vector adds; stride
> 1 splits the weight by kernel phase so that every spike still adds contiguous runs. Then
the IF update runs channels-last over the buffer with a channels-last membrane (no fastmath:
the same float32 operations, in the same order, as ``if_scan``), clears it, and the spikes
are transposed to ``[Cout, H', W']`` 8x8 bytes at a time.

All host-side preparation is numpy, not torch: a torch op large enough to go parallel
starts torch's own OpenMP pool, which either spins for milliseconds on the cores the Numba
threads need or, under the OMP_WAIT_POLICY=PASSIVE that spikekernels sets, has to wake its
sleeping threads (tens of microseconds a call: more than a fill or a count of this size).

Dense path (``_dense``): above SPIKEKERNELS_CONV_DENSE_DENSITY input density, torch's conv
runs on chunks of a few steps (no temporary over 32 MiB, so none is a fresh mmap) and
``_if_epilogue`` adds the per-step bias and the residual and runs the neuron.

The density switch is decided per call, from the call's own input: the two paths add in
different orders, so a neuron near its threshold can flip between them, and a call's path
(hence its rounding) can depend on which steps and images it holds. ``conv_path`` pins the
path for a whole run instead (sresnet's executor does: results then depend on neither the
chunk nor the batch).

Every path adds the per-step bias ``step_bias [T, Cout]`` in the reference's order,
``x = (conv + b) + (β_t + α·r)``, where it adds the residual: no extra pass.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ... import _checks, _config
from ..if_scan.numba import spike_buffer
from . import numba_gather
from .numba_rows import (_SPREAD, _current_row, _if_row, _membrane_out, _residual_in, _spikes_out, _step_bias_row,
                         _tile_setup, aligned_zeros, spikes_out_mode)
from .reference import step_convs

# bytes of the largest temporary (float input chunk or current chunk) of the dense path: well
# under glibc's 32 MiB mmap threshold, so chunks are recycled heap memory, not fresh pages
CHUNK_BYTES = 8 * 2**20
# input elements sampled to estimate the spike density: 16K give a standard error of 0.004 at
# the switch's 0.4. Taken as runs of DENSITY_RUN contiguous elements, evenly strided: one
# element per stride was a cache miss each (16K misses: 57 us of a 1.5 ms ResNet-18 1x1
# shortcut call, in a profile of the op), a run is one to four cache lines
DENSITY_SAMPLE = 1 << 14
DENSITY_RUN = 64
BLOCK = 2048


def _axpy8_codegen(context, builder, signature, args):
    dty, doty, sty, soty, fty = signature.args
    dst = context.make_array(dty)(context, builder, args[0])
    src = context.make_array(sty)(context, builder, args[2])
    do = context.cast(builder, args[1], doty, types.intp)
    so = context.cast(builder, args[3], soty, types.intp)
    vt = ir.VectorType(ir.FloatType(), 8)
    dp = builder.bitcast(builder.gep(dst.data, [do]), vt.as_pointer())
    sp = builder.bitcast(builder.gep(src.data, [so]), vt.as_pointer())
    f = context.cast(builder, args[4], fty, types.float32)
    fv = builder.insert_element(ir.Constant(vt, ir.Undefined), f, ir.Constant(ir.IntType(32), 0))
    fv = builder.shuffle_vector(fv, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))
    a = builder.load(dp, align=4)
    w = builder.load(sp, align=4)
    builder.store(builder.fadd(a, builder.fmul(w, fv)), dp, align=4)
    return context.get_dummy_value()


if numba.config.DISABLE_JIT:
    def _axpy8(dst, doff, src, soff, scale):
        dst[doff:doff + 8] += scale * src[soff:soff + 8]
else:
    @intrinsic
    def _axpy8(typingctx, dst, doff, src, soff, scale):
        """``dst[doff:doff+8] += scale * src[soff:soff+8]`` (float32) as one 8-lane vector op.

        Written as an explicit vector so the 8 adds are one ``vaddps ymm`` with no runtime alias
        check or scalar remainder: the loop vectorizer unrolls by 32 floats and left a scalar
        tail on the 48-float runs of 16-channel layers (about 2x slower there).
        """
        return types.void(dst, doff, src, soff, scale), _axpy8_codegen


@numba.njit(cache=True)
def _phase_table(n_in, k, stride, pad, nt, width):
    """Per input coordinate i: where its taps land, for the phase-split weight.

    With ``ph = (i + pad) % stride`` the taps ``kk = ph + stride * j`` (``j < nt``) reach output
    coordinates ``(i + pad - ph) // stride - j``; stored reversed (``r = nt - 1 - j``) they are
    consecutive. Taps past the kernel (``kk >= k``) are zeros at the first ``skip`` positions
    of the reversed order and are skipped. Returns, per i: the offset (in floats, margin of
    ``nt - 1`` included) of the first real tap's output coordinate, the phase, the skip count
    and the number of real taps (0: the input reaches no output).
    """
    off = np.zeros(n_in, np.int64)
    pha = np.zeros(n_in, np.int64)
    skip = np.zeros(n_in, np.int64)
    n_real = np.zeros(n_in, np.int64)
    for i in range(n_in):
        ph = (i + pad) % stride
        pha[i] = ph
        nr = (k - ph + stride - 1) // stride if ph < k else 0
        n_real[i] = nr
        skip[i] = nt - nr
        # first output coordinate (i + pad - ph) // stride - (nt - 1), plus the margin nt - 1
        off[i] = ((i + pad - ph) // stride + skip[i]) * width
    return off, pha, skip, n_real


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _event_kernel(s, words, use_words, fast_out, res_words, fast_res, spread, wr, co_tile, ct, nty,
                  ntx, roff, rwoff, rok, xoff, xpha, xok, xlen, xbits, rowlen, n_rows, Cout, Ho, Wo, bias, thr, rs,
                  v, out, reset_zero, v_reset, res, has_res, neuron, sb, has_sb):
    """Event-driven conv + IF, one work item per (image, output-channel tile), T loop inside.

    ``wr [tiles, sy * sx phases, nty, Cin, ntx * ct]``: for each (row phase, column phase) of an
    input coordinate, its kernel taps reversed, so one spike adds ``nty`` contiguous runs of
    ``ntx * ct`` floats into the margin-padded channels-last current ``acc [n_rows, rowlen]``
    (taps outside the output land in margins that are never read; taps past the kernel are
    skipped through ``rok`` / ``xlen``). Per step: the spikes go into a compact index list
    (uint8 input: 8 bytes a word, silent words skipped), each spike adds 8-float vectors
    (``_axpy8``), then the IF runs row by row channels-last with the membrane channels-last
    too (vectorized, clears the current), and the spikes are transposed to ``[Cout, H'W']``
    8x8 at a time (``fast_out``: a ``_spikes_out`` mode); a uint8 residual comes in the same
    way (``fast_res``).
    ``sb [T, Cout]`` (``has_sb``): the per-step bias, spread over a row once per step.
    """
    T, B, Cin, H, W = s.shape
    n_tiles = wr.shape[0]
    span = ntx * ct
    rstride = Cin * span
    P = Ho * Wo
    WC = Wo * ct
    const_res = res.shape[0] == 1
    vr = np.float32(v_reset)
    xmask = (1 << xbits) - 1
    for item in numba.prange(B * n_tiles):
        b = item // n_tiles
        tile = item % n_tiles
        c0 = tile * co_tile
        nc = min(co_tile, Cout - c0)
        acc = np.zeros(n_rows * rowlen, np.float32)
        vl = np.zeros(Ho * WC, np.float32)
        th = np.ones(WC, np.float32)
        sc = np.zeros(WC, np.float32)
        bi = np.zeros(WC, np.float32)
        sbr = np.zeros(WC, np.float32)
        rr = np.zeros(Ho * WC if has_res and not fast_res else WC, np.float32)
        rr8w = np.zeros(Ho * WC // 8 if fast_res else 1, np.uint64)
        rr8 = rr8w.view(np.uint8)
        spw = np.zeros(Ho * WC // 8 if neuron else 1, np.uint64)
        sp = spw.view(np.uint8)
        xr = np.zeros(1 if neuron else Ho * WC, np.float32)
        idx = np.empty(Cin * H * W, np.int64)
        _tile_setup(thr, rs, bias, v, vl, b, Cout, c0, nc, ct, Wo, P, th, sc, bi, neuron)
        wt = wr[tile]
        for t in range(T):
            st = s[t, b].reshape(Cin * H, W)
            # compact list of this step's spikes, (ci * H + y) << xbits | x
            cnt = 0
            if use_words:
                # uint8 spikes 8 at a time: skip silent words, then 8 branch-free appends
                wd = words[t, b]
                nw = W // 8
                for row in range(Cin * H):
                    if rok[row] == 0:
                        continue
                    base = row << xbits
                    for q in range(nw):
                        wv = wd[row * nw + q]
                        if wv == 0:
                            continue
                        i0 = base + q * 8
                        for j in range(8):
                            idx[cnt] = i0 + j
                            cnt += ((wv >> np.uint64(8 * j)) & np.uint64(0xFF)) != 0
            else:
                for row in range(Cin * H):
                    if rok[row] == 0:
                        continue
                    srow = st[row]
                    base = row << xbits
                    for x in range(W):
                        idx[cnt] = base | x
                        cnt += (srow[x] != 0) & (xok[x] != 0)
            for k in range(cnt):
                i = idx[k]
                row = i >> xbits
                x = i & xmask
                a0 = roff[row] + xoff[x]
                w0 = rwoff[row] + xpha[x]
                fv = np.float32(st[row, x])
                xl = xlen[x]
                for r in range(rok[row]):
                    ab = a0 + r * rowlen
                    wb = w0 + r * rstride
                    for q in range(0, xl, 8):
                        _axpy8(acc, ab + q, wt, wb + q, fv)
            ot = out[t, b]
            tr = 0 if const_res else t
            if fast_res:
                _residual_in(res_words[tr], res[tr], rr8, rr8w, ct, nc, P, b * Cout + c0, spread)
            elif has_res:
                for c in range(nc):
                    src = res[tr, (b * Cout + c0 + c) * P:(b * Cout + c0 + c + 1) * P]
                    for p in range(P):
                        rr[p * ct + c] = np.float32(src[p])
            if has_sb:
                _step_bias_row(sb[t], c0, nc, ct, Wo, sbr)
            # IF (or the current) row by row, channels-last, then one transpose to [Cout, H'W']
            for oy in range(Ho):
                a_lo = (oy + nty - 1) * rowlen + (ntx - 1) * ct
                arow = acc[a_lo:a_lo + WC]
                if fast_res:
                    rrow8 = rr8[oy * WC:(oy + 1) * WC]
                    if neuron:
                        _if_row(arow, bi, sc, rrow8, sbr, th, vl[oy * WC:(oy + 1) * WC], sp[oy * WC:(oy + 1) * WC],
                                True, has_sb, reset_zero, vr)
                    else:
                        _current_row(arow, bi, sc, rrow8, sbr, xr[oy * WC:(oy + 1) * WC], True, has_sb)
                    continue
                rrow = rr[oy * WC:(oy + 1) * WC] if has_res else rr[:WC]
                if neuron:
                    _if_row(arow, bi, sc, rrow, sbr, th, vl[oy * WC:(oy + 1) * WC], sp[oy * WC:(oy + 1) * WC], has_res,
                            has_sb, reset_zero, vr)
                else:
                    _current_row(arow, bi, sc, rrow, sbr, xr[oy * WC:(oy + 1) * WC], has_res, has_sb)
            if neuron:
                _spikes_out(spw, ct, nc, P, ot.reshape(ot.size), 0, c0, spread, fast_out)
                continue
            for c in range(nc):
                orow = ot[c0 + c]
                for p in range(P):
                    orow[p] = xr[p * ct + c]
        if neuron:
            _membrane_out(vl, v, b, Cout, c0, nc, ct, P)


@numba.njit(parallel=True, cache=True, fastmath=False)
def _if_epilogue(x, T, inner, thr, v, out, reset_zero, v_reset, res, rs, has_res, t0, sb, has_sb):
    """IF update over currents ``x [T, N]`` (conv + bias) plus ``sb[t0 + t] + rs * res[t0 + t]``
    (``sb [T, Cout]``: the per-step bias, when ``has_sb``).

    Blocks of neurons across threads, the T loop inside each block (its membrane stays in L1).
    """
    n = v.shape[0]
    n_thr = thr.shape[0]
    n_rs = rs.shape[0]
    n_ch = sb.shape[1]
    const_res = res.shape[0] == 1
    vr = np.float32(v_reset)
    zero = np.float32(0.0)
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in numba.prange(nblk):
        lo = blk * BLOCK
        hi = min(lo + BLOCK, n)
        th = np.empty(hi - lo, np.float32)
        sc = np.empty(hi - lo, np.float32)
        ch = np.empty(hi - lo, np.int64)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_thr]
            sc[i - lo] = rs[(i // inner) % n_rs]
            ch[i - lo] = (i // inner) % n_ch
        vb = v[lo:hi]
        for t in range(T):
            xt = x[t, lo:hi]
            ot = out[t, lo:hi]
            rt = res[0 if const_res else t0 + t, lo:hi] if has_res else res[0, :1]
            sbt = sb[t0 + t] if has_sb else sb[0]
            for i in range(hi - lo):
                xv = xt[i]
                if has_res and has_sb:
                    xv = xv + (sbt[ch[i]] + sc[i] * np.float32(rt[i]))
                elif has_res:
                    xv = xv + sc[i] * np.float32(rt[i])
                elif has_sb:
                    xv = xv + sbt[ch[i]]
                vi = vb[i] + xv
                spk = vi >= th[i]
                ot[i] = spk
                if reset_zero:
                    vb[i] = vr if spk else vi
                else:
                    vb[i] = vi - (th[i] if spk else zero)


def estimate_density(s: torch.Tensor) -> float:
    """Fraction of nonzero inputs: exact up to DENSITY_SAMPLE elements, past that from about
    DENSITY_SAMPLE of them, in runs of DENSITY_RUN contiguous elements evenly strided over the
    input (an odd number of runs apart). ``s``: a CPU tensor of a dtype numpy reads (uint8,
    float32 ...); NaN counts as nonzero, -0.0 as zero. Counted by numpy on this thread (see
    the module docstring on torch's OpenMP threads)."""
    flat = s.numpy().reshape(-1)
    n = flat.shape[0]
    if n <= DENSITY_SAMPLE:
        return np.count_nonzero(flat) / max(1, n)
    runs = flat[: n // DENSITY_RUN * DENSITY_RUN].reshape(-1, DENSITY_RUN)
    step = max(1, runs.shape[0] // (DENSITY_SAMPLE // DENSITY_RUN)) | 1
    sample = runs[::step]
    return np.count_nonzero(sample) / sample.size


def _dense(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, res, rs, neuron, sb=None) -> None:
    T, B = s.shape[:2]
    Cout, Ho, Wo = out.shape[2:]
    step_bytes = 4 * B * max(Cout * Ho * Wo, s[0, 0].numel())
    tc = max(1, min(T, CHUNK_BYTES // step_bytes))
    inner = Ho * Wo
    n = B * Cout * inner
    buf, stage = (None, None) if not neuron else spike_buffer(out)
    dummy = np.zeros((1, 1), np.float32)
    res_np = dummy if res is None else res.numpy()
    sb_np = dummy if sb is None else sb.numpy()
    rs_np = rs.numpy()
    s_f = torch.empty((tc,) + tuple(s.shape[1:]), dtype=torch.float32) if s.dtype != torch.float32 else None
    for t0 in range(0, T, tc):
        t1 = min(T, t0 + tc)
        chunk = s[t0:t1]
        if s_f is not None:
            chunk = s_f[: t1 - t0].copy_(chunk)
        # one conv per step, as the reference: a chunk of steps must not change the rounding
        x = step_convs(chunk, weight, bias, stride, padding)
        if not neuron:
            x = x.view(t1 - t0, B, Cout, Ho, Wo)
            extra = None if sb is None else sb[t0:t1].view(t1 - t0, 1, Cout, 1, 1)
            if res is not None:
                scale = rs.view(-1, 1, 1) if rs.numel() > 1 else rs
                r = res if res.shape[0] == 1 else res[t0:t1]
                r = scale * r.view((r.shape[0], B, Cout, Ho, Wo)).to(torch.float32)
                extra = r if extra is None else extra + r
            if extra is not None:
                x += extra
            out[t0:t1] = x
            continue
        _if_epilogue(x.view(t1 - t0, n).numpy(), t1 - t0, inner, thr.numpy(), v.numpy(),
                     buf[t0:t1].reshape(t1 - t0, n), reset_zero, v_reset, res_np, rs_np, res is not None, t0,
                     sb_np, sb is not None)
    if stage is not None:
        out.copy_(stage)


def _event(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, res, rs, neuron, sb=None) -> None:
    T, B, Cin, H, W = s.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = out.shape[3:]
    sy, sx = stride
    threads = numba.get_num_threads()
    co_tile = Cout
    # too few images to keep every thread busy: split the output channels into tiles too
    while B * -(-Cout // co_tile) < 2 * threads and co_tile > 8:
        co_tile = (co_tile + 1) // 2
    n_tiles = -(-Cout // co_tile)
    # whole 8-float (AVX2) vectors per output pixel: the padded channels get zero weights
    ct = -(-co_tile // 8) * 8
    nty, ntx = -(-kh // sy), -(-kw // sx)
    span = ntx * ct
    # [tiles, ct, Cin, nty, sy, ntx, sx] (kernel tap = phase + stride * j, zeros past the kernel)
    # -> [tiles, row phase, column phase, nty reversed, Cin, ntx reversed, ct]
    # numpy, not torch: a torch op this size wakes torch's OpenMP pool, whose threads then spin
    # for milliseconds on the cores the kernel's Numba threads need
    w_np = weight.numpy()
    wp = np.zeros((n_tiles, ct, Cin, nty * sy, ntx * sx), np.float32)
    for tile in range(n_tiles):
        c0 = tile * co_tile
        nc = min(co_tile, Cout - c0)
        wp[tile, :nc, :, :kh, :kw] = w_np[c0:c0 + nc]
    wp = wp.reshape(n_tiles, ct, Cin, nty, sy, ntx, sx)[:, :, :, ::-1, :, ::-1, :].transpose(0, 4, 6, 3, 2, 5, 1)
    wr = aligned_zeros((n_tiles, wp[0].size))
    wr.reshape(wp.shape)[...] = wp
    cols = max((W - 1 + padding[1]) // sx + 1, Wo) + ntx - 1
    rowlen = cols * ct
    n_rows = max((H - 1 + padding[0]) // sy + 1, Ho) + nty - 1
    yoff, ypha, yskip, yn = _phase_table(H, kh, sy, padding[0], nty, rowlen)
    xoff, xpha, xskip, xn = _phase_table(W, kw, sx, padding[1], ntx, ct)
    # weight offsets: ((row phase * sx + column phase) * nty + skipped rows) * Cin * span
    # + skipped columns * ct; the column skip moves the current offset and shortens the run
    xpha = xpha * (nty * Cin * span) + xskip * ct
    xlen = xn * ct
    xok = (xn > 0).astype(np.uint8)
    # per input row (ci, y): current offset, weight offset, and how many kernel rows it reaches
    roff = np.tile(yoff, Cin)
    rwoff = (ypha * (sx * nty * Cin * span) + yskip * (Cin * span))[None, :] + (np.arange(Cin) * span)[:, None]
    rwoff = np.ascontiguousarray(rwoff).reshape(-1)
    rok = np.tile(yn, Cin)
    xbits = max(1, int(W - 1).bit_length())
    if neuron:
        buf, stage = spike_buffer(out)
        v_np = v.numpy()
    else:
        buf, stage = out.numpy(), None
        v_np = np.zeros(1, np.float32)
    res_np = np.zeros((1, 1), np.float32) if res is None else res.numpy()
    s_np = s.numpy()
    # uint8 rows of whole 8-byte words, every column reaching the output: scan words
    use_words = s_np.dtype == np.uint8 and W % 8 == 0 and bool(xok.all())
    words = s_np.reshape(T, B, -1).view(np.uint64) if use_words else np.zeros((1, 1, 1), np.uint64)
    out4 = buf.reshape(T, B, Cout, Ho * Wo)
    fast_out = spikes_out_mode(out4, neuron)
    # uint8 residual, whole 8-byte words per channel row: transposed by words too
    fast_res = res_np.dtype == np.uint8 and (Ho * Wo) % 8 == 0 and res_np.flags.c_contiguous
    res_words = res_np.view(np.uint64) if fast_res else np.zeros((1, 1), np.uint64)
    _event_kernel(s_np, words, use_words, fast_out, res_words, fast_res, _SPREAD, wr, co_tile, ct, nty, ntx, roff, rwoff, rok, xoff, xpha, xok, xlen, xbits, rowlen, n_rows, Cout, Ho, Wo,
                  bias.numpy(), thr.numpy(), rs.numpy(), v_np, out4, reset_zero,
                  v_reset, res_np, res is not None, neuron,
                  np.zeros((1, 1), np.float32) if sb is None else sb.numpy(), sb is not None)
    if stage is not None:
        out.copy_(stage)


_pinned = _checks.ThreadSetting(None)
CONV_PATHS = ("event", "dense")


def conv_path(path: str | None):
    """A context within which (this thread) the Numba spiking conv / linear takes ``path``
    whatever its input's density: "event" (the event-driven kernels: gather for 0/1 inputs,
    scatter for other values) or "dense" (torch's conv per step, then the neuron); None
    restores the per-call density switch (SPIKEKERNELS_CONV_DENSE_DENSITY).

    A per-call switch makes a neuron near its threshold depend on the call's steps and images
    (the paths add in different orders); a pinned path does not. Contexts nest; the
    innermost wins. ValueError for another ``path``.
    """
    if path is not None and path not in CONV_PATHS:
        raise ValueError(f"conv_path: path={path!r}; accepted: {', '.join(CONV_PATHS)} or None")
    return _pinned(path)


def pinned_path() -> str | None:
    """This thread's pinned path (see :func:`conv_path`), None when the density decides."""
    return _pinned.get()


def spike_conv2d(s, weight, bias, stride, padding, thr, v, out, reset_zero: bool, v_reset: float,
                 residual, res_scale, neuron: bool, step_bias=None) -> None:
    # a neuron output of the gather kernel: its kept bits and exact spike count
    kept = numba_gather.recall(s)
    path = _pinned.get()
    if path is None:
        density = kept.count / s.numel() if kept is not None else estimate_density(s)
        dense = density > _config.conv_dense_density()
    else:
        dense = path == "dense"
    if kept is not None and not kept.written and (dense or max(padding) > numba_gather.KEEP_PAD):
        # a bits_only output read other than from its bits: its tensor is written first
        numba_gather.materialize(s, kept)
        kept = numba_gather.recall(s)
    if residual is not None and (dense or not neuron):
        # only the gather kernel's neuron path reads a residual's bits
        numba_gather.materialize(residual, shape=tuple(out.shape))
    if dense:
        _dense(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, residual, res_scale, neuron,
               step_bias)
    elif not numba_gather.gather(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, residual,
                                 res_scale, neuron, step_bias, kept):
        # not 0/1 (an analog input): the scatter kernel multiplies each weight by the input
        # (and reads tensors: a bits-only input or residual is written first; an input with
        # kept bits gets here only when the gather kernel is switched off, as by
        # bench/conv_shapes.scatter_only)
        if kept is not None:
            numba_gather.materialize(s, kept)
        if residual is not None:
            numba_gather.materialize(residual, shape=tuple(out.shape))
        _event(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, residual, res_scale, neuron,
               step_bias)
