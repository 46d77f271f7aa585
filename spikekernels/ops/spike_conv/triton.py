"""Triton kernel of the spiking convolution: implicit GEMM, T loop inside, IF in the epilogue.

One program owns a tile of BM output pixels (over B * H' * W') by BN output channels and
runs all T steps over it: each step gathers the [BM, BK] input patches straight from the
spike tensor (no im2col buffer), multiplies them with the [BK, BN] weight tile
(K = Cin * kh * kw) into a float32 accumulator, then adds bias, then the step's row of the
per-step bias plus the residual (``(acc + b) + (β_t + α·r)``, the reference's order) and runs
the IF update with the membrane held in registers. Only spikes (one byte each with uint8/bool
outputs) leave the kernel. Spikes are exact in any float format, so the product is exact up
to the weight's own format: float32 weights use IEEE float32 products (input_precision
"ieee", not tf32, so the currents match the reference to float32 rounding as the shared
semantics require); bf16 weights take the tensor-core bf16 path with float32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import _config


def _configs():
    if _config.triton_interpret():
        return [triton.Config({"BM": 16, "BN": 16, "BK": 16}, num_warps=1)]
    return [
        triton.Config({"BM": 64, "BN": 32, "BK": 32}, num_warps=4, num_stages=2),
        triton.Config({"BM": 128, "BN": 32, "BK": 32}, num_warps=4, num_stages=2),
        triton.Config({"BM": 64, "BN": 64, "BK": 32}, num_warps=4, num_stages=2),
        triton.Config({"BM": 128, "BN": 64, "BK": 32}, num_warps=8, num_stages=2),
        triton.Config({"BM": 32, "BN": 16, "BK": 16}, num_warps=2, num_stages=2),
    ]


@triton.autotune(configs=_configs(), key=["M", "Cout", "K"])
@triton.jit(do_not_specialize=["T"])
def _spike_conv_kernel(
    s_ptr, w_ptr, b_ptr, thr_ptr, v_ptr, out_ptr, res_ptr, rs_ptr, sb_ptr,
    T, M, Cout, K, Cin, H, W, Ho, Wo, KH, KW, SH, SW, PH, PW,
    n_thr, n_rs, stride_rt, v_reset,
    NEURON: tl.constexpr, HAS_RES: tl.constexpr, HAS_SB: tl.constexpr, RESET_ZERO: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    i_n = tl.program_id(1).to(tl.int64)
    o_m = i_m * BM + tl.arange(0, BM)
    o_n = i_n * BN + tl.arange(0, BN)
    m_m = o_m < M
    m_n = o_n < Cout
    # output pixel -> (image, row, column)
    P = Ho * Wo
    o_b = o_m // P
    o_p = o_m % P
    o_oy = o_p // Wo
    o_ox = o_p % Wo
    # [BM, BN] flat offsets of (t=0, b, c, oy, ox) in the [T, B, Cout, H', W'] output
    o_out = (o_b * Cout * P + o_p)[:, None] + (o_n * P)[None, :]
    m_out = m_m[:, None] & m_n[None, :]
    step_out = M * Cout
    b_thr = tl.load(thr_ptr + o_n % n_thr, mask=m_n, other=1.0)
    b_bias = tl.load(b_ptr + o_n, mask=m_n, other=0.0)
    b_rs = tl.load(rs_ptr + o_n % n_rs, mask=m_n, other=0.0)
    if NEURON:
        b_v = tl.load(v_ptr + o_out, mask=m_out, other=0.0)
    step_in = (M // P) * Cin * H * W
    for t in range(0, T):
        b_acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < K
            # k -> (input channel, kernel row, kernel column)
            o_ci = o_k // (KH * KW)
            o_kh = (o_k // KW) % KH
            o_kw = o_k % KW
            o_iy = o_oy[:, None] * SH - PH + o_kh[None, :]
            o_ix = o_ox[:, None] * SW - PW + o_kw[None, :]
            m_a = (m_m[:, None] & m_k[None, :] & (o_iy >= 0) & (o_iy < H) & (o_ix >= 0) & (o_ix < W))
            p_a = s_ptr + t * step_in + ((o_b[:, None] * Cin + o_ci[None, :]) * H + o_iy) * W + o_ix
            # [BM, BK] input patches, [BK, BN] weights (laid out [K, Cout])
            b_a = tl.load(p_a, mask=m_a, other=0).to(w_ptr.dtype.element_ty)
            b_w = tl.load(w_ptr + o_k[:, None] * Cout + o_n[None, :], mask=m_k[:, None] & m_n[None, :], other=0.0)
            b_acc += tl.dot(b_a, b_w, input_precision=DOT_PRECISION)
        b_x = b_acc + b_bias[None, :]
        if HAS_SB:
            # row t of the per-step bias [T, Cout]
            b_sb = tl.load(sb_ptr + t * Cout + o_n, mask=m_n, other=0.0)
        if HAS_RES:
            b_r = tl.load(res_ptr + t * stride_rt + o_out, mask=m_out, other=0).to(tl.float32)
            if HAS_SB:
                b_x = b_x + (b_sb[None, :] + b_rs[None, :] * b_r)
            else:
                b_x = b_x + b_rs[None, :] * b_r
        elif HAS_SB:
            b_x = b_x + b_sb[None, :]
        if NEURON:
            b_v = b_v + b_x
            b_s = b_v >= b_thr[None, :]
            if RESET_ZERO:
                b_v = tl.where(b_s, v_reset, b_v)
            else:
                b_v = b_v - tl.where(b_s, b_thr[None, :], 0.0)
            tl.store(out_ptr + t * step_out + o_out, b_s.to(out_ptr.dtype.element_ty), mask=m_out)
        else:
            tl.store(out_ptr + t * step_out + o_out, b_x, mask=m_out)
    if NEURON:
        tl.store(v_ptr + o_out, b_v, mask=m_out)


def spike_conv2d(s, weight, bias, stride, padding, thr, v, out, reset_zero: bool, v_reset: float,
                 residual, res_scale, neuron: bool, step_bias=None, weight_dtype: torch.dtype | None = None) -> None:
    T, B, Cin, H, W = s.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = out.shape[3:]
    M = B * Ho * Wo
    K = Cin * kh * kw
    # [K, Cout]: k = (ci, kh, kw) row-major, matching the kernel's patch gather
    w_kc = weight.reshape(Cout, K).t().contiguous()
    if weight_dtype is not None:
        w_kc = w_kc.to(weight_dtype)
    o = out.view(torch.uint8) if out.dtype == torch.bool else out
    has_res = residual is not None
    res = residual if has_res else bias
    stride_rt = 0 if (not has_res or residual.shape[0] == 1) else residual.shape[1]
    v_arg = v if v is not None else bias
    grid = lambda meta: (triton.cdiv(M, meta["BM"]), triton.cdiv(Cout, meta["BN"]))
    _spike_conv_kernel[grid](
        s, w_kc, bias, thr, v_arg, o, res, res_scale, bias if step_bias is None else step_bias,
        T, M, Cout, K, Cin, H, W, Ho, Wo, kh, kw, stride[0], stride[1], padding[0], padding[1],
        thr.numel(), res_scale.numel(), stride_rt, float(v_reset),
        NEURON=neuron, HAS_RES=has_res, HAS_SB=step_bias is not None, RESET_ZERO=reset_zero,
        DOT_PRECISION="ieee" if w_kc.dtype == torch.float32 else None,
    )
