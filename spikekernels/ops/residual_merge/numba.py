"""Numba CPU kernel of the residual merge neuron: neurons in blocks across threads, T loop inside.

Same layout as the if_scan kernel, with a second input stream: per step each neuron reads
its branch current and its shortcut value (float32 or uint8 spikes, never widened in
memory), forms ``i = x + scale * y`` and integrates it. No fastmath: LLVM must neither
contract ``x + scale * y`` into an FMA nor reassociate the membrane update, so the spikes
are bit-identical to the reference.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ..if_scan.numba import as_numpy_f32, spike_buffer

BLOCK = 2048


@numba.njit(parallel=True, cache=True, fastmath=False)
def _residual_merge_kernel(x, y, T, thr, scale, inner, v, out, reset_zero, v_reset):
    n = v.shape[0]
    x_const = x.shape[0] == 1
    y_const = y.shape[0] == 1
    n_chan = thr.shape[0]
    n_scale = scale.shape[0]
    vr = np.float32(v_reset)
    zero = np.float32(0.0)
    nblk = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(nblk):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        th = np.empty(hi - lo, np.float32)
        sc = np.empty(hi - lo, np.float32)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_chan]
            sc[i - lo] = scale[(i // inner) % n_scale]
        vb = v[lo:hi]
        for t in range(T):
            xt = x[0, lo:hi] if x_const else x[t, lo:hi]
            yt = y[0, lo:hi] if y_const else y[t, lo:hi]
            ot = out[t, lo:hi]
            if reset_zero:
                for i in range(hi - lo):
                    cur = xt[i] + sc[i] * np.float32(yt[i])
                    vi = vb[i] + cur
                    s = vi >= th[i]
                    ot[i] = s
                    vb[i] = vr if s else vi
            else:
                for i in range(hi - lo):
                    cur = xt[i] + sc[i] * np.float32(yt[i])
                    vi = vb[i] + cur
                    s = vi >= th[i]
                    ot[i] = s
                    vb[i] = vi - (th[i] if s else zero)


def residual_merge(x, y, T: int, thr, scale, inner: int, v, out, reset_zero: bool, v_reset: float) -> None:
    buf, stage = spike_buffer(out)
    y_np = y.contiguous().numpy() if y.dtype == torch.uint8 else as_numpy_f32(y)
    _residual_merge_kernel(
        as_numpy_f32(x), y_np, T, thr.numpy(), scale.numpy(), inner, v.numpy(), buf, reset_zero, v_reset
    )
    if stage is not None:
        out.copy_(stage)
