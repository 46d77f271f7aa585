"""Triton kernel of the IF scan: one program per block of neurons, the T loop inside.

The membrane lives in float32 registers for all T steps; each step reads one current and
writes one spike per neuron, so the kernel moves (bytes(x) + bytes(s)) * T * N and
nothing else. A current constant over T is read with time stride 0; a per-step bias
``[T, C]`` is added to it in the kernel (one row read per step, cached).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["T"])
def _if_scan_kernel(
    x_ptr, s_ptr, v_ptr, thr_ptr, sb_ptr,
    T, N, inner, C, C_SB, stride_xt, v_reset,
    RESET_ZERO: tl.constexpr, HAS_SB: tl.constexpr, BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    # [BLOCK] threshold of each neuron's channel
    b_thr = tl.load(thr_ptr + (o_n // inner) % C, mask=m_n, other=1.0)
    b_v = tl.load(v_ptr + o_n, mask=m_n, other=0.0)
    p_x = x_ptr + o_n
    p_s = s_ptr + o_n
    # [BLOCK] offset of each neuron's channel in a row of the step bias
    o_sb = (o_n // inner) % C_SB
    for t in range(0, T):
        b_x = tl.load(p_x, mask=m_n, other=0.0).to(tl.float32)
        if HAS_SB:
            b_x = b_x + tl.load(sb_ptr + t * C_SB + o_sb, mask=m_n, other=0.0)
        b_v = b_v + b_x
        b_s = b_v >= b_thr
        if RESET_ZERO:
            b_v = tl.where(b_s, v_reset, b_v)
        else:
            b_v = b_v - tl.where(b_s, b_thr, 0.0)
        tl.store(p_s, b_s.to(s_ptr.dtype.element_ty), mask=m_n)
        p_x += stride_xt
        p_s += N
    tl.store(v_ptr + o_n, b_v, mask=m_n)


def if_scan(x, T: int, thr, inner: int, v, out, reset_zero: bool, v_reset: float, sb=None,
            block: int = 1024) -> None:
    n = v.numel()
    s = out.view(torch.uint8) if out.dtype == torch.bool else out
    stride_xt = 0 if x.shape[0] == 1 else n
    grid = (triton.cdiv(n, block),)
    _if_scan_kernel[grid](
        x, s, v, thr, thr if sb is None else sb, T, n, inner, thr.numel(), 1 if sb is None else sb.shape[1],
        stride_xt, float(v_reset), RESET_ZERO=reset_zero, HAS_SB=sb is not None, BLOCK=block,
    )
