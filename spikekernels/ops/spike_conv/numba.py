"""Numba CPU kernels of the spiking convolution: event-driven below a spike density, dense above.

Event-driven path (``_event_kernel``): one work item per (image, output-channel tile), the
T loop inside. At each step every input spike adds its weight slices into an output
current buffer kept channels-last ``[H'*W', Cout]``, so with the weight stored
``[kh, kw, Cin, Cout]`` the innermost loop is a contiguous Cout-vector add; silent inputs
cost one byte read. Then the IF update runs over the buffer (no fastmath: the same float32
operations, in the same order, as ``if_scan``) and clears it for the next step.

Dense path (``_dense``): above SPIKEKERNELS_CONV_DENSE_DENSITY input density, torch's conv
runs on chunks of a few steps (no temporary over 32 MiB, so none is a fresh mmap) and
``_if_epilogue`` adds the residual and runs the neuron.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F

from ... import _config
from ..if_scan.numba import spike_buffer

# bytes of the largest temporary (float input chunk or current chunk) of the dense path: well
# under glibc's 32 MiB mmap threshold, so chunks are recycled heap memory, not fresh pages
CHUNK_BYTES = 8 * 2**20
# input elements sampled to estimate the spike density
DENSITY_SAMPLE = 1 << 16
BLOCK = 2048


@numba.njit(cache=True)
def _taps(n_in, n_out, k, stride, pad):
    """For every input coordinate i: the kernel taps kk and output coordinates o it reaches
    (i = o * stride - pad + kk), as ``tap[i, j]``, ``pos[i, j]`` for ``j < cnt[i]``."""
    width = (k + stride - 1) // stride
    tap = np.zeros((n_in, width), np.int64)
    pos = np.zeros((n_in, width), np.int64)
    cnt = np.zeros(n_in, np.int64)
    for i in range(n_in):
        for kk in range(k):
            num = i + pad - kk
            if num >= 0 and num % stride == 0 and num // stride < n_out:
                tap[i, cnt[i]] = kk
                pos[i, cnt[i]] = num // stride
                cnt[i] += 1
    return tap, pos, cnt


@numba.njit(cache=True, fastmath=False, inline="always")
def _neuron_step(flat, my, mx, Ho, Wo, bi, sc, th, vl, ot, c0, nc, co_tile, b, Cout, t, res, const_res,
                 has_res, neuron, reset_zero, vr):
    """IF update of one tile at one step from the channels-last current ``flat``; clears it.

    Channel-outer order: the membrane ``vl [co_tile, P]``, the residual and the spikes are
    read and written contiguously; only the (cache-resident) current is read with a stride.
    """
    zero = np.float32(0.0)
    tr = 0 if const_res else t
    P = Ho * Wo
    for c in range(nc):
        vrow = vl[c]
        orow = ot[c0 + c]
        rrow = res[tr, (b * Cout + c0 + c) * P:(b * Cout + c0 + c + 1) * P] if has_res else res[0, :1]
        bc = bi[c]
        tc = th[c]
        sc_c = sc[c]
        for oy in range(Ho):
            arow = flat[oy + my, (mx * co_tile + c):]
            for ox in range(Wo):
                k = ox * co_tile
                xv = arow[k] + bc
                arow[k] = zero
                p = oy * Wo + ox
                if has_res:
                    xv = xv + sc_c * np.float32(rrow[p])
                if neuron:
                    vi = vrow[p] + xv
                    spk = vi >= tc
                    orow[p] = spk
                    if reset_zero:
                        vrow[p] = vr if spk else vi
                    else:
                        vrow[p] = vi - (tc if spk else zero)
                else:
                    orow[p] = xv


@numba.njit(parallel=True, cache=True, fastmath=False)
def _event_kernel(s, wr, acc_width, bias, stride1, rtap, rpos, rcnt, ctap, cpos, ccnt, my, mx, Ho, Wo, thr, v, out,
                  reset_zero, v_reset, res, rs, has_res, neuron):
    """Event-driven conv + IF. ``wr [tiles, kh, Cin, kw * co_tile]`` holds the weight with kw
    reversed (``acc_width`` = co_tile), so that with stride 1 one spike and one kernel row add ``kw * co_tile``
    contiguous floats into the margin-padded current ``acc [rows, cols, co_tile]``."""
    T, B, Cin, H, W = s.shape
    n_tiles, kh, _, span = wr.shape
    co_tile = acc_width
    kw = span // co_tile
    Cout = out.shape[2]
    P = Ho * Wo
    n_thr = thr.shape[0]
    n_rs = rs.shape[0]
    const_res = res.shape[0] == 1
    vr = np.float32(v_reset)
    rows = H + kh + 2 * my
    cols = W + kw + 2 * mx
    for item in numba.prange(B * n_tiles):
        b = item // n_tiles
        tile = item % n_tiles
        c0 = tile * co_tile
        nc = min(co_tile, Cout - c0)
        acc = np.zeros((rows, cols, co_tile), np.float32)
        flat = acc.reshape(rows, cols * co_tile)
        vl = np.empty((co_tile, P), np.float32)
        th = np.empty(co_tile, np.float32)
        sc = np.empty(co_tile, np.float32)
        bi = np.zeros(co_tile, np.float32)
        for c in range(nc):
            th[c] = thr[(c0 + c) % n_thr]
            sc[c] = rs[(c0 + c) % n_rs]
            bi[c] = bias[c0 + c]
            if neuron:
                base = (b * Cout + c0 + c) * P
                for p in range(P):
                    vl[c, p] = v[base + p]
        wt = wr[tile]
        for t in range(T):
            st = s[t, b]
            for ci in range(Cin):
                for y in range(H):
                    nr = rcnt[y]
                    if nr == 0:
                        continue
                    srow = st[ci, y]
                    for x in range(W):
                        val = srow[x]
                        if val == 0:
                            continue
                        fv = np.float32(val)
                        if stride1:
                            # kernel row khh reaches output row rpos, columns x+pw-kw+1 .. x+pw
                            col = (x + mx - ccnt[0]) * co_tile
                            for jr in range(nr):
                                a = flat[rpos[y, jr] + my, col:col + span]
                                wv = wt[rtap[y, jr], ci]
                                for j in range(span):
                                    a[j] += fv * wv[j]
                        else:
                            for jr in range(nr):
                                ar = acc[rpos[y, jr] + my]
                                khh = rtap[y, jr]
                                for jc in range(ccnt[x]):
                                    a = ar[cpos[x, jc] + mx]
                                    wv = wt[khh, ci]
                                    wo = (kw - 1 - ctap[x, jc]) * co_tile
                                    for c in range(co_tile):
                                        a[c] += fv * wv[wo + c]
            _neuron_step(flat, my, mx, Ho, Wo, bi, sc, th, vl, out[t, b], c0, nc, co_tile, b, Cout, t, res,
                         const_res, has_res, neuron, reset_zero, vr)
        if neuron:
            for c in range(nc):
                base = (b * Cout + c0 + c) * P
                for p in range(P):
                    v[base + p] = vl[c, p]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _if_epilogue(x, T, inner, thr, v, out, reset_zero, v_reset, res, rs, has_res, t0):
    """IF update over currents ``x [T, N]`` (conv + bias) plus ``rs * res[t0 + t]``.

    Blocks of neurons across threads, the T loop inside each block (its membrane stays in L1).
    """
    n = v.shape[0]
    n_thr = thr.shape[0]
    n_rs = rs.shape[0]
    const_res = res.shape[0] == 1
    vr = np.float32(v_reset)
    zero = np.float32(0.0)
    nblk = (n + BLOCK - 1) // BLOCK
    for blk in numba.prange(nblk):
        lo = blk * BLOCK
        hi = min(lo + BLOCK, n)
        th = np.empty(hi - lo, np.float32)
        sc = np.empty(hi - lo, np.float32)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_thr]
            sc[i - lo] = rs[(i // inner) % n_rs]
        vb = v[lo:hi]
        for t in range(T):
            xt = x[t, lo:hi]
            ot = out[t, lo:hi]
            rt = res[0 if const_res else t0 + t, lo:hi] if has_res else res[0, :1]
            for i in range(hi - lo):
                xv = xt[i]
                if has_res:
                    xv = xv + sc[i] * np.float32(rt[i])
                vi = vb[i] + xv
                spk = vi >= th[i]
                ot[i] = spk
                if reset_zero:
                    vb[i] = vr if spk else vi
                else:
                    vb[i] = vi - (th[i] if spk else zero)


def estimate_density(s: torch.Tensor) -> float:
    """Fraction of nonzero inputs, from an evenly strided sample of at most 64K elements."""
    flat = s.reshape(-1)
    step = max(1, flat.numel() // DENSITY_SAMPLE) | 1
    sample = flat[::step]
    return float(torch.count_nonzero(sample)) / sample.numel()


def _dense(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, res, rs, neuron) -> None:
    T, B = s.shape[:2]
    Cout, Ho, Wo = out.shape[2:]
    step_bytes = 4 * B * max(Cout * Ho * Wo, s[0, 0].numel())
    tc = max(1, min(T, CHUNK_BYTES // step_bytes))
    inner = Ho * Wo
    n = B * Cout * inner
    buf, stage = (None, None) if not neuron else spike_buffer(out)
    dummy = np.zeros((1, 1), np.float32)
    res_np = dummy if res is None else res.numpy()
    rs_np = rs.numpy()
    s_f = torch.empty((tc,) + tuple(s.shape[1:]), dtype=torch.float32) if s.dtype != torch.float32 else None
    for t0 in range(0, T, tc):
        t1 = min(T, t0 + tc)
        chunk = s[t0:t1]
        if s_f is not None:
            chunk = s_f[: t1 - t0].copy_(chunk)
        x = F.conv2d(chunk.flatten(0, 1), weight, bias, stride=stride, padding=padding)
        if not neuron:
            x = x.view(t1 - t0, B, Cout, Ho, Wo)
            if res is not None:
                scale = rs.view(-1, 1, 1) if rs.numel() > 1 else rs
                r = res if res.shape[0] == 1 else res[t0:t1]
                x += scale * r.view((r.shape[0], B, Cout, Ho, Wo)).to(torch.float32)
            out[t0:t1] = x
            continue
        _if_epilogue(x.view(t1 - t0, n).numpy(), t1 - t0, inner, thr.numpy(), v.numpy(),
                     buf[t0:t1].reshape(t1 - t0, n), reset_zero, v_reset, res_np, rs_np, res is not None, t0)
    if stage is not None:
        out.copy_(stage)


def _event(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, res, rs, neuron) -> None:
    T, B, Cin, H, W = s.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = out.shape[3:]
    threads = numba.get_num_threads()
    co_tile = Cout
    # too few images to keep every thread busy: split the output channels into tiles too
    while B * -(-Cout // co_tile) < 2 * threads and co_tile > 8:
        co_tile = (co_tile + 1) // 2
    n_tiles = -(-Cout // co_tile)
    # [tiles, kh, Cin, kw reversed * co_tile], zero-padded in the last tile
    wr = torch.zeros(n_tiles * co_tile, Cin, kh, kw, dtype=torch.float32)
    wr[:Cout] = weight
    wr = wr.flip(3).view(n_tiles, co_tile, Cin, kh, kw).permute(0, 3, 2, 4, 1).reshape(n_tiles, kh, Cin, kw * co_tile)
    wr = wr.contiguous().numpy()
    stride1 = stride == (1, 1)
    rtap, rpos, rcnt = _taps(H, Ho, kh, stride[0], padding[0])
    ctap, cpos, ccnt = _taps(W, Wo, kw, stride[1], padding[1])
    if stride1:
        # ccnt[0] carries the column offset of the first tap: x + pw - (kw - 1)
        ccnt = np.array([kw - 1 - padding[1]], np.int64)
    # margins so that every tap of a stride-1 spike lands inside the buffer
    my = max(kh, padding[0]) + 1
    mx = max(kw, padding[1]) + 1
    if neuron:
        buf, stage = spike_buffer(out)
        v_np = v.numpy()
    else:
        buf, stage = out.numpy(), None
        v_np = np.zeros(1, np.float32)
    res_np = np.zeros((1, 1), np.float32) if res is None else res.numpy()
    _event_kernel(s.numpy(), wr, co_tile, bias.numpy(), stride1, rtap, rpos, rcnt, ctap, cpos, ccnt, my, mx, Ho, Wo,
                  thr.numpy(), v_np, buf.reshape(T, B, Cout, Ho * Wo), reset_zero, v_reset, res_np,
                  rs.numpy(), res is not None, neuron)
    if stage is not None:
        out.copy_(stage)


def spike_conv2d(s, weight, bias, stride, padding, thr, v, out, reset_zero: bool, v_reset: float,
                 residual, res_scale, neuron: bool) -> None:
    if estimate_density(s) > _config.conv_dense_density():
        _dense(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, residual, res_scale, neuron)
    else:
        _event(s, weight, bias, stride, padding, thr, v, out, reset_zero, v_reset, residual, res_scale, neuron)
