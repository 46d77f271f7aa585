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
def _surrogate_grads(kind, alpha, h, th, sg):
    """sg[i] = g'(h[i] - th[i]) of spikekernels.surrogate: 0 sigmoid, 1 atan, 2 triangle.

    One loop per kind, so the branch is taken once per block and step, not per neuron.
    """
    one = np.float32(1.0)
    if kind == 0:
        # e = exp(-alpha |u|) by Cephes' expf (range reduction, degree-5 polynomial, 2^n from
        # the exponent bits): no libm call, so LLVM vectorizes the loop (Numba has no SVML here);
        # g' = alpha e / (1 + e)^2, which is alpha sigmoid(alpha u)(1 - sigmoid(alpha u))
        m = h.shape[0]
        pow2 = np.empty(m, np.int32)
        for i in range(m):
            z = max(-alpha * abs(h[i] - th[i]), np.float32(-80.0))
            fx = np.float32(math.floor(z * np.float32(1.44269504088896341) + np.float32(0.5)))
            r = z - fx * np.float32(0.693359375) + fx * np.float32(2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            sg[i] = p * r * r + r + one
            pow2[i] = (np.int32(fx) + np.int32(127)) << np.int32(23)
        scale = pow2.view(np.float32)
        for i in range(m):
            e = sg[i] * scale[i]
            d = one + e
            sg[i] = alpha * e / (d * d)
    elif kind == 1:
        c = np.float32(math.pi / 2) * alpha
        for i in range(h.shape[0]):
            au = c * (h[i] - th[i])
            sg[i] = alpha * np.float32(0.5) / (one + au * au)
    else:
        for i in range(h.shape[0]):
            sg[i] = max(np.float32(0.0), alpha - alpha * alpha * abs(h[i] - th[i]))


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(grad_s, grad_v, h, thr, inner, reset_zero, v_reset, kind, alpha, detach_reset,
                     grad_x, grad_thr, grad_v0):
    T, n = h.shape
    n_chan = thr.shape[0]
    vr = np.float32(v_reset)
    a = np.float32(alpha)
    one = np.float32(1.0)
    zero = np.float32(0.0)
    nblk = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(nblk):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        m = hi - lo
        th = np.empty(m, np.float32)
        for i in range(lo, hi):
            th[i - lo] = thr[(i // inner) % n_chan]
        gv = grad_v[lo:hi].copy()
        gth = np.zeros(m, np.float32)
        sg = np.empty(m, np.float32)
        for t in range(T - 1, -1, -1):
            htb = h[t, lo:hi]
            gsb = grad_s[t, lo:hi]
            gxb = grad_x[t, lo:hi]
            _surrogate_grads(kind, a, htb, th, sg)
            # the reset variant is chosen once per block and step; each loop is branch-light
            if reset_zero and detach_reset:
                for i in range(m):
                    s = one if htb[i] >= th[i] else zero
                    gh = gsb[i] * sg[i] + gv[i] * (one - s)
                    gth[i] -= gsb[i] * sg[i]
                    gxb[i] = gh
                    gv[i] = gh
            elif reset_zero:
                for i in range(m):
                    ht = htb[i]
                    s = one if ht >= th[i] else zero
                    gh = gsb[i] * sg[i] + gv[i] * (one - s + (vr - ht) * sg[i])
                    gth[i] += gv[i] * ((ht - vr) * sg[i]) - gsb[i] * sg[i]
                    gxb[i] = gh
                    gv[i] = gh
            elif detach_reset:
                for i in range(m):
                    s = one if htb[i] >= th[i] else zero
                    gh = gsb[i] * sg[i] + gv[i]
                    gth[i] += gv[i] * (-s) - gsb[i] * sg[i]
                    gxb[i] = gh
                    gv[i] = gh
            else:
                for i in range(m):
                    s = one if htb[i] >= th[i] else zero
                    gh = gsb[i] * sg[i] + gv[i] * (one - th[i] * sg[i])
                    gth[i] += gv[i] * (th[i] * sg[i] - s) - gsb[i] * sg[i]
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
