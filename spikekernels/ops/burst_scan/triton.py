"""Triton kernel of the burst IF scan: one program per block of neurons, the T loop inside.

As the IF scan's kernel (``ops/if_scan/triton.py``), plus an inner loop over the k spike
levels; the membrane stays in float32 registers for all T steps.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["T", "K"])
def _burst_scan_kernel(
    x_ptr, s_ptr, v_ptr, thr_ptr,
    T, N, inner, C, stride_xt, K,
    BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    # [BLOCK] threshold of each neuron's channel
    b_thr = tl.load(thr_ptr + (o_n // inner) % C, mask=m_n, other=1.0)
    b_v = tl.load(v_ptr + o_n, mask=m_n, other=0.0)
    p_x = x_ptr + o_n
    p_s = s_ptr + o_n
    for _ in range(0, T):
        b_x = tl.load(p_x, mask=m_n, other=0.0).to(tl.float32)
        b_v = b_v + b_x
        # [BLOCK] count of the levels j·θ (j = 1..K) the membrane reaches (a tie fires), and
        # the highest level reached, which is θ·count rounded to float32 as in the reference;
        # subtracting it (not b_thr * b_c) keeps the compiler from fusing an FMA into the reset
        b_c = tl.zeros([BLOCK], dtype=tl.float32)
        b_lvl = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(1, K + 1):
            b_l = b_thr * (j * 1.0)
            b_hit = b_v >= b_l
            b_c += b_hit.to(tl.float32)
            b_lvl = tl.where(b_hit, b_l, b_lvl)
        b_v = b_v - b_lvl
        tl.store(p_s, b_c.to(s_ptr.dtype.element_ty), mask=m_n)
        p_x += stride_xt
        p_s += N
    tl.store(v_ptr + o_n, b_v, mask=m_n)


def burst_scan(x, T: int, thr, inner: int, v, out, k: int, block: int = 1024) -> None:
    n = v.numel()
    stride_xt = 0 if x.shape[0] == 1 else n
    grid = (triton.cdiv(n, block),)
    _burst_scan_kernel[grid](x, out, v, thr, T, n, inner, thr.numel(), stride_xt, k, BLOCK=block)
