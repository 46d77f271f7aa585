"""Triton kernels of spiking pooling: one program per block of outputs.

avg: every output loops over its window (row-major, from 0) and divides by kh*kw with an
IEEE-rounded division, like the reference.

max: a program holds, for each of its BLOCK outputs, the counts of all KK window inputs in
registers ``[BLOCK, KK]`` (KK = kh*kw rounded up to a power of two) and runs the T loop:
add the step's spikes, take the first maximum, store that input's spike. Inputs shared by
overlapping windows are counted in several programs with the same float32 adds, so every
copy agrees and no program writes a count another one reads. The final counts (also of
inputs no window covers) come from a second, elementwise kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _avg_pool_kernel(
    s_ptr, out_ptr, N, H, W, HO, WO,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    o_j = o_n % WO
    o_i = (o_n // WO) % HO
    o_p = o_n // (WO * HO)
    r0 = o_i * SH - PH
    c0 = o_j * SW - PW
    p_plane = s_ptr + o_p * H * W
    b_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for di in range(0, KH):
        r = r0 + di
        m_r = m_n & (r >= 0) & (r < H)
        for dj in range(0, KW):
            c = c0 + dj
            m = m_r & (c >= 0) & (c < W)
            b_acc += tl.load(p_plane + r * W + c, mask=m, other=0).to(tl.float32)
    # div_rn: Triton's '/' may lower to an approximate division on GPUs
    b_div = tl.full([BLOCK], KH * KW, dtype=tl.float32)
    tl.store(out_ptr + o_n, tl.math.div_rn(b_acc, b_div), mask=m_n)


@triton.jit(do_not_specialize=["T"])
def _max_pool_kernel(
    s_ptr, cnt_ptr, out_ptr, T, N, H, W, HO, WO, stride_t, stride_ot,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, KK: tl.constexpr, BLOCK: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    o_j = o_n % WO
    o_i = (o_n // WO) % HO
    o_p = o_n // (WO * HO)
    o_k = tl.arange(0, KK)
    # [BLOCK, KK] input row / column of every window slot
    r = (o_i * SH - PH)[:, None] + (o_k // KW)[None, :]
    c = (o_j * SW - PW)[:, None] + (o_k % KW)[None, :]
    m_k = m_n[:, None] & (o_k < KH * KW)[None, :] & (r >= 0) & (r < H) & (c >= 0) & (c < W)
    o_in = o_p[:, None] * H * W + r * W + c
    # padding and unused slots start at -inf and never win
    b_cnt = tl.load(cnt_ptr + o_in, mask=m_k, other=float("-inf"))
    p_s = s_ptr + o_in
    p_o = out_ptr + o_n
    for _ in range(0, T):
        b_s = tl.load(p_s, mask=m_k, other=0).to(tl.float32)  # [BLOCK, KK]
        b_cnt = b_cnt + b_s
        b_max = tl.max(b_cnt, axis=1)
        # first slot (row-major) holding the maximum
        b_pick = tl.min(tl.where(b_cnt == b_max[:, None], o_k[None, :], KK), axis=1)
        b_out = tl.sum(tl.where(o_k[None, :] == b_pick[:, None], b_s, 0.0), axis=1)
        tl.store(p_o, b_out.to(out_ptr.dtype.element_ty), mask=m_n)
        p_s += stride_t
        p_o += stride_ot


@triton.jit(do_not_specialize=["T"])
def _count_kernel(s_ptr, cnt_ptr, T, N, BLOCK: tl.constexpr):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK)
    m_n = o_n < N
    b_cnt = tl.load(cnt_ptr + o_n, mask=m_n, other=0.0)
    p_s = s_ptr + o_n
    for _ in range(0, T):
        b_cnt = b_cnt + tl.load(p_s, mask=m_n, other=0).to(tl.float32)
        p_s += N
    tl.store(cnt_ptr + o_n, b_cnt, mask=m_n)


def avg_pool(s, out, geom, block: int = 256) -> None:
    kh, kw, sh, sw, ph, pw = geom
    P, H, W = s.shape
    ho, wo = out.shape[1], out.shape[2]
    n = out.numel()
    _avg_pool_kernel[(triton.cdiv(n, block),)](
        s, out, n, H, W, ho, wo, KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, BLOCK=block
    )


def max_pool(s, count, out, geom, block: int = 128) -> None:
    kh, kw, sh, sw, ph, pw = geom
    T, P, H, W = s.shape
    ho, wo = out.shape[2], out.shape[3]
    n = P * ho * wo
    kk = triton.next_power_of_2(kh * kw)
    _max_pool_kernel[(triton.cdiv(n, block),)](
        s, count, out, T, n, H, W, ho, wo, P * H * W, n,
        KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, KK=kk, BLOCK=block,
    )
    m = count.numel()
    _count_kernel[(triton.cdiv(m, 1024),)](s, count, T, m, BLOCK=1024)
