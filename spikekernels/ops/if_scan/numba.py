"""Numba CPU kernel of the IF scan: neurons in blocks across threads, time loop inside.

Each thread owns a block of neurons and runs all T steps over it, so the block's
membrane and thresholds stay in L1 while the currents stream through. The neuron update
is compiled without fastmath: reassociation could move v across the threshold.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

BLOCK = 2048


@numba.njit(parallel=True, cache=True, fastmath=False)
def _if_scan_kernel(x, T, thr, inner, v, out, reset_zero, v_reset, sb, has_sb):
    n = v.shape[0]
    const = x.shape[0] == 1
    n_chan = thr.shape[0]
    n_sb = sb.shape[1]
    vr = np.float32(v_reset)
    zero = np.float32(0.0)
    nblk = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(nblk):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        th = np.empty(hi - lo, np.float32)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_chan]
        vb = v[lo:hi]
        xs = np.empty(hi - lo if has_sb else 1, np.float32)
        for t in range(T):
            xt = x[0, lo:hi] if const else x[t, lo:hi]
            ot = out[t, lo:hi]
            if has_sb:
                # x + β_t of each neuron's channel, the block in runs of one channel (each run vectorizes)
                i = lo
                while i < hi:
                    stop = min(hi, (i // inner + 1) * inner)
                    beta = sb[t, (i // inner) % n_sb]
                    for j in range(i, stop):
                        xs[j - lo] = xt[j - lo] + beta
                    i = stop
                xt = xs
            if reset_zero:
                for i in range(hi - lo):
                    vi = vb[i] + xt[i]
                    s = vi >= th[i]
                    ot[i] = s
                    vb[i] = vr if s else vi
            else:
                for i in range(hi - lo):
                    vi = vb[i] + xt[i]
                    s = vi >= th[i]
                    ot[i] = s
                    vb[i] = vi - (th[i] if s else zero)


def as_numpy_f32(x: torch.Tensor) -> np.ndarray:
    """A float32 numpy view of a CPU tensor (a copy only when the dtype is not float32)."""
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    return x.contiguous().numpy()


def spike_buffer(out: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None]:
    """A numpy array the kernel can write spikes into, and the staging tensor if one was needed.

    float32 and uint8 outputs are written in place; bool is written through a uint8 view;
    other float dtypes (float16, bfloat16, float64) go through a uint8 staging buffer.
    """
    if out.dtype in (torch.float32, torch.uint8):
        return out.numpy(), None
    if out.dtype == torch.bool:
        return out.view(torch.uint8).numpy(), None
    stage = torch.empty(out.shape, dtype=torch.uint8)
    return stage.numpy(), stage


def if_scan(x, T: int, thr, inner: int, v, out, reset_zero: bool, v_reset: float, sb=None) -> None:
    buf, stage = spike_buffer(out)
    sb_np = np.zeros((1, 1), np.float32) if sb is None else sb.numpy()
    _if_scan_kernel(as_numpy_f32(x), T, thr.numpy(), inner, v.numpy(), buf, reset_zero, v_reset, sb_np, sb is not None)
    if stage is not None:
        out.copy_(stage)
