"""Triton kernel of the residual merge neuron: one program per block of neurons, T loop inside.

The membrane lives in float32 registers for all T steps; each step reads one branch
current and one shortcut value per neuron and writes one spike, so the kernel moves
T·N·(bytes(x) + bytes(y) + bytes(s)) + 8N bytes. Either input, when constant over T, is
read with time stride 0. The launch passes ``enable_fp_fusion=False`` so that
``x + scale * y`` is not contracted into an FMA: spikes then match the reference exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["T"])
def _residual_merge_kernel(
    x_ptr, y_ptr, s_ptr, v_ptr, thr_ptr, scale_ptr,
    T, N, inner, C, CS, stride_xt, stride_yt, v_reset,
    RESET_ZERO: tl.constexpr, BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    o_c = o_n // inner
    # [BLOCK] threshold and shortcut weight of each neuron's channel
    b_thr = tl.load(thr_ptr + o_c % C, mask=m_n, other=1.0)
    b_scale = tl.load(scale_ptr + o_c % CS, mask=m_n, other=0.0)
    b_v = tl.load(v_ptr + o_n, mask=m_n, other=0.0)
    p_x = x_ptr + o_n
    p_y = y_ptr + o_n
    p_s = s_ptr + o_n
    for _ in range(0, T):
        b_x = tl.load(p_x, mask=m_n, other=0.0).to(tl.float32)
        b_y = tl.load(p_y, mask=m_n, other=0).to(tl.float32)
        b_i = b_x + b_scale * b_y
        b_v = b_v + b_i
        b_s = b_v >= b_thr
        if RESET_ZERO:
            b_v = tl.where(b_s, v_reset, b_v)
        else:
            b_v = b_v - tl.where(b_s, b_thr, 0.0)
        tl.store(p_s, b_s.to(s_ptr.dtype.element_ty), mask=m_n)
        p_x += stride_xt
        p_y += stride_yt
        p_s += N
    tl.store(v_ptr + o_n, b_v, mask=m_n)


def residual_merge(
    x, y, T: int, thr, scale, inner: int, v, out, reset_zero: bool, v_reset: float, block: int = 1024
) -> None:
    n = v.numel()
    s = out.view(torch.uint8) if out.dtype == torch.bool else out
    grid = (triton.cdiv(n, block),)
    _residual_merge_kernel[grid](
        x, y, s, v, thr, scale, T, n, inner, thr.numel(), scale.numel(),
        0 if x.shape[0] == 1 else n, 0 if y.shape[0] == 1 else n, float(v_reset),
        RESET_ZERO=reset_zero, BLOCK=block, enable_fp_fusion=False,
    )
