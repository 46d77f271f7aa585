"""Pure-PyTorch training forward and backward of the IF scan: the gradients' ground truth.

Contract shared by every backend (``autograd.py`` prepares the arguments); the forward is
the inference contract of ``reference.py`` plus one output:

- ``forward(x, T, thr, inner, v, out, h, reset_zero, v_reset)`` also writes ``h``: float32
  ``[T, N]``, the membrane after integrating step t and before its reset. It is all the
  backward needs: the spike is ``h >= θ`` again, bit for bit.
- ``backward(grad_s, grad_v, h, thr, inner, reset_zero, v_reset, kind, alpha, detach_reset,
  grad_x, grad_thr, grad_v0)``: ``grad_s`` float32 ``[T, N]`` (dL/ds), ``grad_v`` float32
  ``[N]`` (dL/d final membrane); writes float32 ``grad_x`` ``[T, N]``, ``grad_thr`` ``[N]``
  (dL/dθ of each neuron, summed over T) and ``grad_v0`` ``[N]``.

Backpropagation through time, step t from T down to 1, with ``u = h_t - θ``, surrogate
``g'(u)`` for dH/du and ``gv`` = dL/dv_t (starting at ``grad_v``):

    subtract: v_t = h_t - θ s_t        dv/dh = 1 - θ g'   dv/dθ = -s_t + θ g'
    zero:     v_t = h_t (1 - s_t) + v_reset s_t
                                       dv/dh = 1 - s_t + (v_reset - h_t) g'   dv/dθ = (h_t - v_reset) g'
    (detach_reset drops the g' terms of the reset, as SpikingJelly's detach_reset=True)
    dL/dh_t = grad_s_t g' + gv dv/dh;  dL/dθ += -grad_s_t g' + gv dv/dθ;  dL/dx_t = dL/dh_t;
    gv <- dL/dh_t (= dL/dv_{t-1});  grad_v0 = gv after step 1.
"""

from __future__ import annotations

import torch

from ... import surrogate as _surrogate
from .reference import per_neuron


def forward(x, T: int, thr, inner: int, v, out, h, reset_zero: bool, v_reset: float) -> None:
    theta = per_neuron(thr, inner, v.numel())
    for t in range(T):
        v += x[t if x.shape[0] > 1 else 0].to(torch.float32)
        h[t] = v
        s = v >= theta
        if reset_zero:
            v.masked_fill_(s, v_reset)
        else:
            v -= torch.where(s, theta, torch.zeros_like(theta))
        out[t] = s


def backward(grad_s, grad_v, h, thr, inner: int, reset_zero: bool, v_reset: float, kind: int, alpha: float,
             detach_reset: bool, grad_x, grad_thr, grad_v0, smooth: bool = False) -> None:
    """The BPTT above, in h's dtype.

    ``smooth=True`` (tests only) uses the surrogate's smooth step ``g(u)`` for ``s_t``
    instead of ``H(u)``: the result is then the exact gradient of the smooth network that
    ``torch.autograd.gradcheck`` can check by finite differences.
    """
    sur = _surrogate.from_kind(kind, alpha)
    theta = per_neuron(thr, inner, h.shape[1]).to(h.dtype)
    gv = grad_v.to(h.dtype).clone()
    gthr = torch.zeros_like(gv)
    for t in range(h.shape[0] - 1, -1, -1):
        ht = h[t]
        u = ht - theta
        sg = sur.derivative(u)
        s = sur.smooth(u) if smooth else (u >= 0).to(h.dtype)
        if reset_zero:
            dvdh, dvdth = 1 - s, torch.zeros_like(u)
            if not detach_reset:
                dvdh = dvdh + (v_reset - ht) * sg
                dvdth = (ht - v_reset) * sg
        else:
            dvdh, dvdth = torch.ones_like(u), -s
            if not detach_reset:
                dvdh = dvdh - theta * sg
                dvdth = dvdth + theta * sg
        gs = grad_s[t].to(h.dtype)
        gh = gs * sg + gv * dvdh
        gthr += gv * dvdth - gs * sg
        grad_x[t] = gh
        gv = gh
    grad_thr.copy_(gthr)
    grad_v0.copy_(gv)


def smooth_forward(x, thr, inner: int, v, reset_zero: bool, v_reset: float, kind: int, alpha: float):
    """Tests only: the IF scan with ``s_t = g(h_t - θ)`` in x's dtype; returns (s, v, h)."""
    sur = _surrogate.from_kind(kind, alpha)
    theta = per_neuron(thr, inner, v.numel()).to(x.dtype)
    v = v.to(x.dtype)
    spikes, hs = [], []
    for t in range(x.shape[0]):
        h = v + x[t]
        s = sur.smooth(h - theta)
        v = h * (1 - s) + v_reset * s if reset_zero else h - theta * s
        spikes.append(s)
        hs.append(h)
    return torch.stack(spikes), v, torch.stack(hs)
