"""Numba CPU kernels of the IF scan's training forward and backward (see ``grad_reference``).

Same layout as the inference kernel: each thread owns a block of neurons and runs the time
loop inside, forward in the forward and backward in the backward, so a block's membrane,
thresholds and carried gradient stay in L1. No fastmath: reassociation could move v across θ.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .numba import BLOCK, as_numpy_f32, spike_buffer


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(x, T, thr, inner, v, out, h, reset_zero, v_reset):
    n = v.shape[0]
    const = x.shape[0] == 1
    n_chan = thr.shape[0]
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
        for t in range(T):
            xt = x[0, lo:hi] if const else x[t, lo:hi]
            ot = out[t, lo:hi]
            htb = h[t, lo:hi]
            for i in range(hi - lo):
                vi = vb[i] + xt[i]
                htb[i] = vi
                s = vi >= th[i]
                ot[i] = s
                if reset_zero:
                    vb[i] = vr if s else vi
                else:
                    vb[i] = vi - (th[i] if s else zero)


@numba.njit(inline="always")
def surrogate_grad(kind, alpha, u):
    """g'(u) of spikekernels.surrogate: 0 sigmoid, 1 atan, 2 triangle (float32 math)."""
    if kind == 0:
        sg = np.float32(1.0) / (np.float32(1.0) + np.float32(math.exp(-alpha * u)))
        return alpha * sg * (np.float32(1.0) - sg)
    if kind == 1:
        au = np.float32(math.pi / 2) * alpha * u
        return alpha * np.float32(0.5) / (np.float32(1.0) + au * au)
    return max(np.float32(0.0), alpha - alpha * alpha * abs(u))


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(grad_s, grad_v, h, thr, inner, reset_zero, v_reset, kind, alpha, detach_reset,
                     grad_x, grad_thr, grad_v0):
    T, n = h.shape
    n_chan = thr.shape[0]
    vr = np.float32(v_reset)
    a = np.float32(alpha)
    one = np.float32(1.0)
    nblk = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(nblk):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        th = np.empty(hi - lo, np.float32)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_chan]
        gv = grad_v[lo:hi].copy()
        gth = np.zeros(hi - lo, np.float32)
        for t in range(T - 1, -1, -1):
            htb = h[t, lo:hi]
            gsb = grad_s[t, lo:hi]
            gxb = grad_x[t, lo:hi]
            for i in range(hi - lo):
                ht = htb[i]
                u = ht - th[i]
                sg = surrogate_grad(kind, a, u)
                s = one if u >= 0 else np.float32(0.0)
                if reset_zero:
                    dvdh = one - s
                    dvdth = np.float32(0.0)
                    if not detach_reset:
                        dvdh = dvdh + (vr - ht) * sg
                        dvdth = (ht - vr) * sg
                else:
                    dvdh = one
                    dvdth = -s
                    if not detach_reset:
                        dvdh = dvdh - th[i] * sg
                        dvdth = dvdth + th[i] * sg
                gh = gsb[i] * sg + gv[i] * dvdh
                gth[i] += gv[i] * dvdth - gsb[i] * sg
                gxb[i] = gh
                gv[i] = gh
        grad_thr[lo:hi] = gth
        grad_v0[lo:hi] = gv


def forward(x, T: int, thr, inner: int, v, out, h, reset_zero: bool, v_reset: float) -> None:
    buf, stage = spike_buffer(out)
    _forward_kernel(as_numpy_f32(x), T, thr.numpy(), inner, v.numpy(), buf, h.numpy(), reset_zero, v_reset)
    if stage is not None:
        out.copy_(stage)


def backward(grad_s, grad_v, h, thr, inner: int, reset_zero: bool, v_reset: float, kind: int, alpha: float,
             detach_reset: bool, grad_x, grad_thr, grad_v0) -> None:
    _backward_kernel(grad_s.numpy(), grad_v.numpy(), h.numpy(), thr.numpy(), inner, reset_zero, v_reset, kind,
                     alpha, detach_reset, grad_x.numpy(), grad_thr.numpy(), grad_v0.numpy())
