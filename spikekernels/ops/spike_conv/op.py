"""Public ``spike_conv2d`` and ``spike_linear``: argument checks, layout, dispatch."""

from __future__ import annotations

import contextlib
import math
import sys

import torch

from ... import _checks, _dispatch
from ...surrogate import Surrogate
from ..if_scan import autograd, if_scan
from . import train

IMPLS = {
    "reference": "spikekernels.ops.spike_conv.reference.spike_conv2d",
    "numba": "spikekernels.ops.spike_conv.numba.spike_conv2d",
    "triton": "spikekernels.ops.spike_conv.triton.spike_conv2d",
}

INPUT_DTYPES = _checks.SPIKE_DTYPES
RESIDUAL_DTYPES = _checks.SPIKE_DTYPES


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return items


def _time_steps(s: torch.Tensor, timesteps) -> tuple[int, bool]:
    """(T, constant): constant when s is one frame broadcast over T steps."""
    if timesteps is None:
        T = s.shape[0]
    else:
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
            raise ValueError(f"timesteps={timesteps!r} must be a positive int or None")
        T = timesteps
        if s.shape[0] not in (1, T):
            raise ValueError(
                f"timesteps={T} but the input has {s.shape[0]} steps at dim 0; accepted: 1 step "
                f"(a constant input broadcast over T) or exactly {T}"
            )
    constant = T > 1 and (s.shape[0] == 1 or s.stride(0) == 0)
    return T, constant


def _residual(residual, out_shape, device) -> torch.Tensor | None:
    if residual is None:
        return None
    _checks.check_tensor(residual, "residual", min_dim=len(out_shape), dtypes=RESIDUAL_DTYPES, exact_bits_ok=True)
    _checks.same_device("residual", residual, "input", torch.empty(0, device=device))
    T = out_shape[0]
    if tuple(residual.shape[1:]) != tuple(out_shape[1:]) or residual.shape[0] not in (1, T):
        raise ValueError(
            f"residual has shape {tuple(residual.shape)}; accepted: the output shape {tuple(out_shape)} "
            f"(or 1 step at dim 0 for a residual constant over T)"
        )
    if residual.dtype == torch.bool:
        residual = residual.view(torch.uint8)
    elif residual.dtype != torch.uint8 and residual.dtype != torch.float32:
        residual = residual.to(torch.float32)
    src = _checks.time_source(residual)
    return src


def _spiking(s, weight4, bias, stride, padding, out_hw, threshold, v0, reset, return_state, neuron,
             residual, residual_scale, timesteps, v_reset, spike_dtype, backend, op_name, surrogate=None,
             detach_reset=False, step_bias=None):
    """Shared body of spike_conv2d / spike_linear, on the 5-D conv layout [T, B, C, H, W]."""
    T, constant = _time_steps(s, timesteps)
    B, Cout = s.shape[1], weight4.shape[0]
    device = s.device
    if not isinstance(neuron, bool):
        raise TypeError(f"neuron must be a bool, got {type(neuron).__name__}")
    if return_state and not neuron:
        raise ValueError("return_state=True needs neuron=True (without the neuron there is no membrane)")
    if step_bias is not None:
        _checks.check_step_bias(step_bias, T, Cout, device)
    if autograd.needed(s, weight4, bias, threshold, v0, residual, residual_scale, step_bias):
        return train.spiking(s, weight4, bias, stride, padding, out_hw, T, constant, threshold, v0, reset,
                             return_state, neuron, residual, residual_scale, v_reset, spike_dtype, surrogate,
                             detach_reset, backend, step_bias)
    reset_zero = _checks.check_reset(reset, v_reset)
    thr = _checks.channel_vector(threshold, "threshold", Cout, device, positive=True)
    res_scale = _checks.channel_vector(residual_scale, "residual_scale", Cout, device, positive=False)
    spike_dtype = _checks.check_spike_dtype(spike_dtype, s.dtype)
    out_shape = (T, B, Cout) + tuple(out_hw)
    res = _residual(residual, out_shape, device)
    if bias is None:
        bias32 = torch.zeros(Cout, dtype=torch.float32, device=device)
    else:
        bias32 = bias.detach().to(torch.float32).contiguous()
    w32 = weight4.detach().to(torch.float32).contiguous()
    sb32 = None if step_bias is None else step_bias.detach().to(torch.float32).contiguous()
    v = _checks.initial_membrane(v0, thr, out_shape[1:], device) if neuron else None
    name = _dispatch.choose(op_name, device, backend)
    impl = _dispatch._load(IMPLS[name])
    if name != "numba" or constant:
        # only the Numba gather kernel reads kept bits: a bits-only input or residual is written
        _checks.kept_guard(s)
        if res is not None:
            _checks.kept_guard(res)
    if s.dtype == torch.bool:
        s = s.view(torch.uint8)
    elif s.dtype not in (torch.uint8, torch.float32):
        s = s.to(torch.float32)

    if constant:
        # the input is the same at every step: the conv runs once, only the neuron scans T
        cur = torch.empty((1,) + out_shape[1:], dtype=torch.float32, device=device)
        impl(s[:1].contiguous(), w32, bias32, stride, padding, thr, None, cur, False, 0.0, None, res_scale, False,
             None)
        # the per-step terms in the order of reference.currents: conv + (step_bias + α·residual)
        extra = None if sb32 is None else sb32.view(T, 1, Cout, 1, 1)
        if res is not None:
            scale = res_scale.view(-1, 1, 1) if res_scale.numel() > 1 else res_scale
            r = scale * res.view((res.shape[0],) + out_shape[1:]).to(torch.float32)
            extra = r if extra is None else extra + r
        x = cur.expand(out_shape) if extra is None else (cur + extra).expand(out_shape)
        if not neuron:
            return x
        out, v = if_scan(x, threshold=thr, v0=v, reset=reset, return_state=True, v_reset=v_reset,
                         spike_dtype=spike_dtype, backend=name)
        return (out, v) if return_state else out

    out = _checks.new_output(out_shape, spike_dtype if neuron else torch.float32, device)
    impl(s.contiguous(), w32, bias32, stride, padding, thr, None if v is None else v.view(-1), out,
         reset_zero, float(v_reset), res, res_scale, neuron, sb32)
    return (out, v) if return_state else out


def spike_conv2d(
    s: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    threshold: float | torch.Tensor = 1.0,
    v0: float | torch.Tensor | None = None,
    reset: str = "subtract",
    return_state: bool = False,
    *,
    neuron: bool = True,
    residual: torch.Tensor | None = None,
    residual_scale: float | torch.Tensor = 1.0,
    timesteps: int | None = None,
    v_reset: float = 0.0,
    spike_dtype: torch.dtype | None = None,
    surrogate: Surrogate | str | None = None,
    detach_reset: bool = False,
    backend: str | None = None,
    step_bias: torch.Tensor | None = None,
):
    """2-D convolution of a spike train fused with the integrate-and-fire neuron.

    Per step t, in float32:
    ``x_t = conv2d(s_t, weight, bias) + (step_bias[t] + residual_scale * residual_t)``
    (the terms that are given, added in this order; see spike_conv/README.md), then the IF
    update of ``sk.if_scan``: ``v += x_t``; spike when ``v >= threshold``; then
    ``v -= threshold`` (reset="subtract") or ``v = v_reset`` (reset="zero"). The CPU kernel
    is event-driven (it adds one weight slice per input spike and skips silent inputs); above
    SPIKEKERNELS_CONV_DENSE_DENSITY input density it runs a chunked dense conv instead,
    decided per call (the two add in different orders: a neuron within rounding of θ can
    differ); ``spikekernels.ops.spike_conv.numba.conv_path`` pins one path instead.

    Args:
        s: input ``[T, B, Cin, H, W]``: spikes (0/1) as float, uint8 or bool, or an analog
            input constant over time given as ``[1, B, Cin, H, W]`` with ``timesteps=T`` or as
            ``x.expand(T, ...)`` (the conv then runs once, not T times).
        weight: ``[Cout, Cin, kh, kw]`` float (groups=1, dilation=1).
        bias: ``[Cout]`` or None.
        stride: int or pair, >= 1.
        padding: int or pair, >= 0 (zero padding).
        threshold: a positive number, or one value per output channel ``[Cout]``.
        v0: start membrane: None for θ/2, a number, or a tensor broadcastable to
            ``[B, Cout, H', W']`` (e.g. the state returned by an earlier call).
        reset: "subtract" (default) or "zero".
        return_state: also return the final membrane ``[B, Cout, H', W']`` float32.
        neuron: False returns the float32 currents ``x`` ``[T, B, Cout, H', W']`` (no IF;
            a stride-0 view over T for a constant input).
        residual: None, or ``[T, B, Cout, H', W']`` (spikes as float/uint8/bool, or a float
            current; ``[1, ...]`` or stride 0 over T when constant) added into the current:
            a residual block's second conv, shortcut and merge neuron in one op.
        residual_scale: weight of the residual: a number or one value per channel ``[Cout]``.
        step_bias: None, or a bias per time step and output channel ``[T, Cout]`` (float, any
            float dtype, computed in float32; finite), broadcast over B, H', W': row t is
            added at step t of this call, so a call covering global steps t0 .. t0+T-1 (a
            chunk, with ``v0`` from the previous one) takes rows t0 .. t0+T-1 of a schedule.
            Added together with the residual term, before it meets the conv: the same
            float32 operations as passing ``step_bias[t][:, None, None] + α·residual_t`` as a
            float residual with ``residual_scale=1`` (which the kernels would read as a full
            ``[T, B, Cout, H', W']`` float tensor; here they read ``T * Cout`` floats).
            TypeError when it is not a float tensor; ValueError for another shape (T is the
            input's, or ``timesteps``), NaN/Inf, or another device than ``s``.
        timesteps: T for a ``[1, B, ...]`` constant input (None: ``s.shape[0]``).
        v_reset: membrane after a spike when reset="zero".
        spike_dtype: dtype of the spikes (default ``s.dtype``; uint8/bool store one byte).
        surrogate, detach_reset: the backward's spike derivative and reset handling, as in
            :func:`spikekernels.if_scan`.
        backend: "auto", "reference", "numba" or "triton" for this call (default:
            SPIKEKERNELS_BACKEND, else auto).

    Gradients: when s, weight, bias, residual, step_bias or a threshold / residual_scale / v0
    tensor requires grad (or under torch.compile), the current is computed with ``F.conv2d`` in
    float32 (torch's conv backward gives the input, weight and bias gradients) and the
    neuron runs the surrogate-gradient path of :func:`spikekernels.if_scan`. Spikes are then
    s's dtype when it is a float dtype, else float32.

    Returns:
        spikes ``[T, B, Cout, H', W']`` (or the currents when ``neuron=False``), and the final
        membrane ``[B, Cout, H', W']`` when ``return_state``.
        ``H' = (H + 2 * padding - kh) // stride + 1``, likewise W'.

    Example:
        >>> s = (torch.rand(8, 2, 16, 32, 32) < 0.1).to(torch.uint8)
        >>> w = torch.randn(16, 16, 3, 3) * 0.1
        >>> out = spike_conv2d(s, w, padding=1)          # [8, 2, 16, 32, 32] uint8
    """
    _checks.check_tensor(s, "s", min_dim=5, dtypes=INPUT_DTYPES, layout="[T, B, Cin, H, W]", exact_bits_ok=True)
    if s.dim() != 5:
        raise ValueError(f"s has shape {tuple(s.shape)}; expected 5 dims [T, B, Cin, H, W]")
    _check_weight(weight, 4, "[Cout, Cin, kh, kw]", s, s.shape[2])
    bias = _check_bias(bias, weight, s)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    H, W = s.shape[3:]
    kh, kw = weight.shape[2:]
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(
            f"kernel {kh}x{kw} is larger than the padded input {H + 2 * ph}x{W + 2 * pw} "
            f"(input {H}x{W}, padding {(ph, pw)})"
        )
    return _spiking(s, weight, bias, (sh, sw), (ph, pw), (Ho, Wo), threshold, v0, reset, return_state,
                    neuron, residual, residual_scale, timesteps, v_reset, spike_dtype, backend, "spike_conv2d",
                    surrogate, detach_reset, step_bias)


def spike_linear(
    s: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    threshold: float | torch.Tensor = 1.0,
    v0: float | torch.Tensor | None = None,
    reset: str = "subtract",
    return_state: bool = False,
    *,
    neuron: bool = True,
    residual: torch.Tensor | None = None,
    residual_scale: float | torch.Tensor = 1.0,
    timesteps: int | None = None,
    v_reset: float = 0.0,
    spike_dtype: torch.dtype | None = None,
    surrogate: Surrogate | str | None = None,
    detach_reset: bool = False,
    backend: str | None = None,
    step_bias: torch.Tensor | None = None,
):
    """Fully connected layer on a spike train fused with the integrate-and-fire neuron.

    Same semantics as :func:`spike_conv2d` with a 1x1 kernel on 1x1 images:
    ``x_t = (s_t @ weight.T + bias) + (step_bias[t] + residual_scale * residual_t)`` then the IF update.

    Args:
        s: input ``[T, B, Fin]``: spikes (float, uint8, bool) or an analog input constant over
            time (``[1, B, Fin]`` with ``timesteps=T``, or stride 0 over T).
        weight: ``[Fout, Fin]`` float; bias: ``[Fout]`` or None.
        threshold: a positive number or ``[Fout]``.
        v0: None for θ/2, a number, or a tensor broadcastable to ``[B, Fout]``.
        reset, return_state, v_reset, spike_dtype, surrogate, detach_reset, backend: as in
            :func:`spike_conv2d` (gradients likewise).
        neuron: False returns the float32 currents ``[T, B, Fout]``.
        residual: None or ``[T, B, Fout]`` added with ``residual_scale`` (number or ``[Fout]``).
        step_bias: None or ``[T, Fout]``: a bias per time step, as in :func:`spike_conv2d`.
        timesteps: T for a ``[1, B, Fin]`` constant input.

    Returns:
        spikes ``[T, B, Fout]`` (or currents when ``neuron=False``), and the final membrane
        ``[B, Fout]`` when ``return_state``.

    Example:
        >>> s = (torch.rand(8, 4, 64) < 0.1).to(torch.uint8)
        >>> logits_current = spike_linear(s, torch.randn(10, 64), neuron=False)  # [8, 4, 10]
    """
    _checks.check_tensor(s, "s", min_dim=3, dtypes=INPUT_DTYPES, layout="[T, B, F]")
    if s.dim() != 3:
        raise ValueError(f"s has shape {tuple(s.shape)}; expected 3 dims [T, B, F]")
    _check_weight(weight, 2, "[Fout, Fin]", s, s.shape[2])
    bias = _check_bias(bias, weight, s)
    Fout = weight.shape[0]
    if residual is not None and isinstance(residual, torch.Tensor):
        if residual.dim() != 3:
            raise ValueError(f"residual has shape {tuple(residual.shape)}; expected [T, B, {Fout}]")
        residual = residual[..., None, None]
    if isinstance(v0, torch.Tensor):
        try:
            v0 = torch.broadcast_to(v0, (s.shape[1], Fout))[..., None, None]
        except RuntimeError:
            raise ValueError(
                f"v0 has shape {tuple(v0.shape)}, not broadcastable to the state shape {(s.shape[1], Fout)}"
            ) from None
    # the output is a reshaped view of the kernel's: it cannot keep bits, so it is always written
    gather = sys.modules.get("spikekernels.ops.spike_conv.numba_gather")
    with gather.bits_only(False) if gather is not None else contextlib.nullcontext():
        result = _spiking(s[..., None, None], weight[..., None, None], bias, (1, 1), (0, 0), (1, 1), threshold,
                          v0, reset, return_state, neuron, residual, residual_scale, timesteps, v_reset,
                          spike_dtype, backend, "spike_linear", surrogate, detach_reset, step_bias)
    if return_state:
        return result[0].flatten(2), result[1].flatten(1)
    return result.flatten(2)


def _check_weight(weight, rank: int, layout: str, s: torch.Tensor, cin: int) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor {layout}, got {type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight has dtype {weight.dtype}; accepted: a float dtype")
    if weight.dim() != rank:
        raise ValueError(f"weight has shape {tuple(weight.shape)} ({weight.dim()} dims); expected {layout}")
    if weight.numel() == 0:
        raise ValueError(f"weight is empty (shape {tuple(weight.shape)})")
    if weight.shape[1] != cin:
        raise ValueError(
            f"weight {tuple(weight.shape)} expects {weight.shape[1]} input channels but s "
            f"{tuple(s.shape)} has {cin} at dim 2"
        )
    _checks.same_device("weight", weight, "s", s)


def _check_bias(bias, weight, s):
    if bias is None:
        return None
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor [Cout] or None, got {type(bias).__name__}")
    if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected [{weight.shape[0]}] (one per output channel)")
    if not bias.dtype.is_floating_point:
        raise TypeError(f"bias has dtype {bias.dtype}; accepted: a float dtype")
    _checks.same_device("bias", bias, "s", s)
    return bias
