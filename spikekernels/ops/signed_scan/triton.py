"""Triton kernel of the signed IF scan with memory: one program per block of neurons, T inside.

As the IF scan's kernel (``ops/if_scan/triton.py``); the float32 membrane and the int32 net
spike count m stay in registers for all T steps.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["T"])
def _signed_scan_kernel(
    x_ptr, s_ptr, v_ptr, m_ptr, thr_ptr,
    T, N, inner, C, stride_xt,
    BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    # [BLOCK] threshold of each neuron's channel
    b_thr = tl.load(thr_ptr + (o_n // inner) % C, mask=m_n, other=1.0)
    b_v = tl.load(v_ptr + o_n, mask=m_n, other=0.0)
    b_m = tl.load(m_ptr + o_n, mask=m_n, other=0)
    p_x = x_ptr + o_n
    p_s = s_ptr + o_n
    for _ in range(0, T):
        b_x = tl.load(p_x, mask=m_n, other=0.0).to(tl.float32)
        b_v = b_v + b_x
        b_pos = b_v >= b_thr
        b_neg = (b_v < b_thr) & (b_v <= -b_thr) & (b_m > 0)
        b_v = b_v - tl.where(b_pos, b_thr, 0.0)
        b_v = b_v + tl.where(b_neg, b_thr, 0.0)
        # [BLOCK] int32 spike -1/0/+1
        b_s = b_pos.to(tl.int32) - b_neg.to(tl.int32)
        b_m = b_m + b_s
        # through float32: Triton's interpreter converts int32 to bfloat16 wrongly
        tl.store(p_s, b_s.to(tl.float32).to(s_ptr.dtype.element_ty), mask=m_n)
        p_x += stride_xt
        p_s += N
    tl.store(v_ptr + o_n, b_v, mask=m_n)
    tl.store(m_ptr + o_n, b_m, mask=m_n)


def signed_scan(x, T: int, thr, inner: int, v, m, out, block: int = 1024) -> None:
    n = v.numel()
    stride_xt = 0 if x.shape[0] == 1 else n
    grid = (triton.cdiv(n, block),)
    _signed_scan_kernel[grid](x, out, v, m, thr, T, n, inner, thr.numel(), stride_xt, BLOCK=block)
