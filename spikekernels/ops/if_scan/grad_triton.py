"""Triton kernels of the IF scan's training forward and backward (see ``grad_reference``).

The forward is the inference kernel plus one float32 store per neuron and step (``h``, the
membrane before reset); the backward walks T in reverse with the carried gradient in
registers, reading ``h`` and dL/ds once and writing dL/dx once per step. Spikes are not
saved: ``h >= θ`` recomputes them exactly.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["T"])
def _forward_kernel(
    x_ptr, s_ptr, h_ptr, v_ptr, thr_ptr,
    T, N, inner, C, stride_xt, v_reset,
    RESET_ZERO: tl.constexpr, BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    # [BLOCK] threshold of each neuron's channel
    b_thr = tl.load(thr_ptr + (o_n // inner) % C, mask=m_n, other=1.0)
    b_v = tl.load(v_ptr + o_n, mask=m_n, other=0.0)
    p_x = x_ptr + o_n
    p_s = s_ptr + o_n
    p_h = h_ptr + o_n
    for _ in range(0, T):
        b_x = tl.load(p_x, mask=m_n, other=0.0).to(tl.float32)
        b_v = b_v + b_x
        tl.store(p_h, b_v, mask=m_n)
        b_s = b_v >= b_thr
        if RESET_ZERO:
            b_v = tl.where(b_s, v_reset, b_v)
        else:
            b_v = b_v - tl.where(b_s, b_thr, 0.0)
        tl.store(p_s, b_s.to(s_ptr.dtype.element_ty), mask=m_n)
        p_x += stride_xt
        p_s += N
        p_h += N
    tl.store(v_ptr + o_n, b_v, mask=m_n)


@triton.jit
def _surrogate_grad(u, alpha, KIND: tl.constexpr):
    """g'(u) of spikekernels.surrogate: 0 sigmoid, 1 atan, 2 triangle."""
    if KIND == 0:
        b_sg = 1.0 / (1.0 + tl.exp(-alpha * u))
        return alpha * b_sg * (1.0 - b_sg)
    elif KIND == 1:
        b_au = 1.5707963267948966 * alpha * u
        return alpha * 0.5 / (1.0 + b_au * b_au)
    else:
        return tl.maximum(alpha - alpha * alpha * tl.abs(u), 0.0)


@triton.jit(do_not_specialize=["T"])
def _backward_kernel(
    gs_ptr, gv_ptr, h_ptr, thr_ptr, gx_ptr, gthr_ptr, gv0_ptr,
    T, N, inner, C, v_reset, alpha,
    RESET_ZERO: tl.constexpr, DETACH_RESET: tl.constexpr, KIND: tl.constexpr, BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    b_thr = tl.load(thr_ptr + (o_n // inner) % C, mask=m_n, other=1.0)
    # [BLOCK] dL/dv_t carried backwards in time, and dL/dθ summed over t
    b_gv = tl.load(gv_ptr + o_n, mask=m_n, other=0.0)
    b_gth = tl.zeros([BLOCK], dtype=tl.float32)
    o_last = (T - 1).to(tl.int64) * N + o_n
    p_h = h_ptr + o_last
    p_gs = gs_ptr + o_last
    p_gx = gx_ptr + o_last
    for _ in range(0, T):
        b_h = tl.load(p_h, mask=m_n, other=0.0)
        b_gs = tl.load(p_gs, mask=m_n, other=0.0)
        b_u = b_h - b_thr
        b_sg = _surrogate_grad(b_u, alpha, KIND)
        b_s = tl.where(b_u >= 0, 1.0, 0.0)
        if RESET_ZERO:
            b_dvdh = 1.0 - b_s
            b_dvdth = tl.zeros([BLOCK], dtype=tl.float32)
            if not DETACH_RESET:
                b_dvdh = b_dvdh + (v_reset - b_h) * b_sg
                b_dvdth = (b_h - v_reset) * b_sg
        else:
            b_dvdh = tl.full([BLOCK], 1.0, dtype=tl.float32)
            b_dvdth = -b_s
            if not DETACH_RESET:
                b_dvdh = b_dvdh - b_thr * b_sg
                b_dvdth = b_dvdth + b_thr * b_sg
        b_gh = b_gs * b_sg + b_gv * b_dvdh
        b_gth += b_gv * b_dvdth - b_gs * b_sg
        tl.store(p_gx, b_gh, mask=m_n)
        b_gv = b_gh
        p_h -= N
        p_gs -= N
        p_gx -= N
    tl.store(gthr_ptr + o_n, b_gth, mask=m_n)
    tl.store(gv0_ptr + o_n, b_gv, mask=m_n)


def forward(x, T: int, thr, inner: int, v, out, h, reset_zero: bool, v_reset: float, block: int = 1024) -> None:
    n = v.numel()
    s = out.view(torch.uint8) if out.dtype == torch.bool else out
    stride_xt = 0 if x.shape[0] == 1 else n
    _forward_kernel[(triton.cdiv(n, block),)](
        x, s, h, v, thr, T, n, inner, thr.numel(), stride_xt, float(v_reset),
        RESET_ZERO=reset_zero, BLOCK=block,
    )


def backward(grad_s, grad_v, h, thr, inner: int, reset_zero: bool, v_reset: float, kind: int, alpha: float,
             detach_reset: bool, grad_x, grad_thr, grad_v0, block: int = 1024) -> None:
    T, n = h.shape
    _backward_kernel[(triton.cdiv(n, block),)](
        grad_s, grad_v, h, thr, grad_x, grad_thr, grad_v0, T, n, inner, thr.numel(), float(v_reset), float(alpha),
        RESET_ZERO=reset_zero, DETACH_RESET=detach_reset, KIND=kind, BLOCK=block,
    )
