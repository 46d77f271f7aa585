"""Training path of the IF neuron: custom ops with surrogate-gradient BPTT on every backend.

``spikekernels::if_scan_train`` (forward) and ``spikekernels::if_scan_train_backward`` are
registered with ``torch.library.custom_op``, with fake implementations, so ``torch.compile``
sees each as one opaque node, and ``register_autograd`` links them. Both dispatch to the
reference / Numba / Triton kernels of ``grad_*.py`` at run time, like the inference ops.
The forward saves only ``h`` (float32 membrane before reset, ``[T, N]``) and the thresholds.

The other ops (residual merge, spiking conv/linear) train by computing their input current
with differentiable torch ops and calling :func:`if_scan` here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ... import _checks, _dispatch
from ... import surrogate as _surrogate

FWD_IMPLS = {
    "reference": "spikekernels.ops.if_scan.grad_reference.forward",
    "numba": "spikekernels.ops.if_scan.grad_numba.forward",
    "triton": "spikekernels.ops.if_scan.grad_triton.forward",
}
BWD_IMPLS = {
    "reference": "spikekernels.ops.if_scan.grad_reference.backward",
    "numba": "spikekernels.ops.if_scan.grad_numba.backward",
    "triton": "spikekernels.ops.if_scan.grad_triton.backward",
}


def needed(*args) -> bool:
    """True when a call must take the autograd path: a tensor argument requires grad (with
    grad mode on) or torch.compile is tracing. Otherwise the inference kernels run as before."""
    if torch.compiler.is_compiling():
        return True
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(a, Tensor) and a.requires_grad for a in args)


@torch.library.custom_op("spikekernels::if_scan_train", mutates_args=())
def if_scan_train(
    x: Tensor, thr: Tensor, v0: Tensor, T: int, inner: int, reset_zero: bool, v_reset: float,
    kind: int, alpha: float, detach_reset: bool, spike_dtype: torch.dtype, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """x ``[Tx, N]`` (Tx = T or 1), thr float32 ``[C]``, v0 float32 ``[N]`` -> (spikes ``[T, N]``,
    final membrane ``[N]``, h ``[T, N]`` float32). ``backend`` "" means SPIKEKERNELS_BACKEND."""
    n = v0.numel()
    out = _checks.new_output((T, n), spike_dtype, x.device)
    h = _checks.new_output((T, n), torch.float32, x.device)
    v = v0.detach().to(torch.float32).clone()
    impl = _dispatch.resolve("if_scan", x.device, FWD_IMPLS, backend or None)
    impl(x.detach().contiguous(), T, thr.detach().contiguous(), inner, v, out, h, reset_zero, v_reset)
    return out, v, h


@if_scan_train.register_fake
def _(x, thr, v0, T, inner, reset_zero, v_reset, kind, alpha, detach_reset, spike_dtype, backend):
    n = v0.shape[0]
    return x.new_empty((T, n), dtype=spike_dtype), v0.new_empty((n,)), x.new_empty((T, n), dtype=torch.float32)


@torch.library.custom_op("spikekernels::if_scan_train_backward", mutates_args=())
def if_scan_train_backward(
    grad_s: Tensor, grad_v: Tensor, h: Tensor, thr: Tensor, inner: int, x_steps: int, reset_zero: bool,
    v_reset: float, kind: int, alpha: float, detach_reset: bool, x_dtype: torch.dtype, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dL/dx ``[x_steps, N]`` in x_dtype, dL/dθ float32 ``[C]``, dL/dv0 float32 ``[N]``)."""
    T, n = h.shape
    grad_x = _checks.new_output((T, n), torch.float32, h.device)
    grad_thr = _checks.new_output((n,), torch.float32, h.device)
    grad_v0 = _checks.new_output((n,), torch.float32, h.device)
    impl = _dispatch.resolve("if_scan", h.device, BWD_IMPLS, backend or None)
    impl(grad_s.detach().to(torch.float32).contiguous(), grad_v.detach().to(torch.float32).contiguous(), h,
         thr.detach().contiguous(), inner, reset_zero, v_reset, kind, alpha, detach_reset, grad_x, grad_thr, grad_v0)
    if x_steps == 1 and T > 1:
        # a current constant over T was read at every step: its gradient is the sum over steps
        grad_x = grad_x.sum(0, keepdim=True)
    c = thr.numel()
    grad_thr = grad_thr.sum().reshape(1) if c == 1 else grad_thr.view(-1, c, inner).sum((0, 2))
    return grad_x.to(x_dtype), grad_thr, grad_v0


@if_scan_train_backward.register_fake
def _(grad_s, grad_v, h, thr, inner, x_steps, reset_zero, v_reset, kind, alpha, detach_reset, x_dtype, backend):
    n = h.shape[1]
    return h.new_empty((x_steps, n), dtype=x_dtype), thr.new_empty((thr.shape[0],)), h.new_empty((n,))


def _setup_context(ctx, inputs, output) -> None:
    x, thr, v0, T, inner, reset_zero, v_reset, kind, alpha, detach_reset, spike_dtype, backend = inputs
    h = output[2]
    ctx.mark_non_differentiable(h)
    ctx.save_for_backward(h, thr)
    ctx.args = (inner, x.shape[0], reset_zero, v_reset, kind, alpha, detach_reset, x.dtype, backend)


def _backward(ctx, grad_s, grad_v, grad_h):
    h, thr = ctx.saved_tensors
    if grad_s is None:
        grad_s = torch.zeros_like(h)
    if grad_v is None:
        grad_v = h.new_zeros(h.shape[1])
    grad_x, grad_thr, grad_v0 = if_scan_train_backward(grad_s, grad_v, h, thr, *ctx.args)
    return (grad_x, grad_thr, grad_v0) + (None,) * 9


if_scan_train.register_autograd(_backward, setup_context=_setup_context)


def vector(value, name: str, channels: int | None, device: torch.device, *, positive: bool,
           shape: Sequence[int] | None = None) -> Tensor:
    """Like ``_checks.channel_vector`` (float32 ``[1]`` or ``[C]``) but keeps the autograd graph.

    Value checks that read tensor data are skipped while torch.compile traces (they would
    break the graph); shapes are always checked.
    """
    if not isinstance(value, Tensor) or (not value.requires_grad and not torch.compiler.is_compiling()):
        return _checks.channel_vector(value, name, channels, device, positive=positive, shape=shape)
    if value.dim() > 1 or value.numel() not in (1, channels):
        where = f"the input {tuple(shape)}" if shape is not None else "the layer"
        raise ValueError(f"{name} has shape {tuple(value.shape)} but {where} has {channels} channels at dim 2; "
                         "accepted: a number, a 1-element tensor or one value per channel [C]")
    _checks.same_device(name, value, "the input", torch.empty(0, device=device))
    vec = value.reshape(-1).to(torch.float32)
    if not torch.compiler.is_compiling():
        bad = ~torch.isfinite(vec) | (vec <= 0) if positive else ~torch.isfinite(vec)
        if bool(bad.any()):
            raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {vec[bad][:4].tolist()}")
    return vec


def start_membrane(v0, thr: Tensor, state_shape: Sequence[int], device: torch.device) -> Tensor:
    """Float32 ``[N]`` start membrane (``_checks.initial_membrane`` semantics), differentiable in
    v0 and, for v0=None (θ/2), in the threshold."""
    state_shape = tuple(state_shape)
    if v0 is None:
        if thr.numel() == 1:
            return (thr * 0.5).expand(state_shape).reshape(-1)
        view = [1] * len(state_shape)
        view[1] = thr.numel()
        return (thr * 0.5).view(view).expand(state_shape).reshape(-1)
    if isinstance(v0, Tensor):
        if v0.device != device:
            raise ValueError(f"v0 is on {v0.device} but the input is on {device}; put both on one device")
        lead = len(state_shape) - v0.dim()
        if lead < 0 or any(d not in (1, state_shape[lead + i]) for i, d in enumerate(v0.shape)):
            raise ValueError(f"v0 has shape {tuple(v0.shape)}, not broadcastable to the state shape {state_shape} "
                             "(the input shape without T)")
        v = v0.to(torch.float32).expand(state_shape).reshape(-1)
        if not torch.compiler.is_compiling() and not _checks.all_finite(v):
            raise ValueError("v0 contains NaN or Inf")
        return v
    return _checks.initial_membrane(v0, thr.detach(), state_shape, device).view(-1)


def if_scan(x: Tensor, threshold, v0, reset: str, return_state: bool, v_reset: float,
            spike_dtype: torch.dtype | None, surrogate: _surrogate.Surrogate | str | None, detach_reset: bool,
            backend: str | None):
    """The public ``sk.if_scan`` when gradients are needed (same arguments and checks)."""
    _checks.check_tensor(x, "x", min_dim=2)
    reset_zero = _checks.check_reset(reset, v_reset)
    sur = _surrogate.get(surrogate)
    if not isinstance(detach_reset, bool):
        raise TypeError(f"detach_reset must be a bool, got {type(detach_reset).__name__}")
    spike_dtype = _checks.check_spike_dtype(spike_dtype, x.dtype)
    if not spike_dtype.is_floating_point and torch.is_grad_enabled():
        raise TypeError(f"spike_dtype={spike_dtype} cannot carry gradients; use a float dtype (or None for x's) "
                        "when training, or call under torch.no_grad() for 1-byte spikes")
    _dispatch.check_backend(backend)
    channels = x.shape[2] if x.dim() >= 3 else None
    thr = vector(threshold, "threshold", channels, x.device, positive=True, shape=x.shape)
    T = x.shape[0]
    v = start_membrane(v0, thr, x.shape[1:], x.device)
    s, v_end, _ = if_scan_train(
        _checks.time_source(x), thr, v.contiguous(), T, _checks.inner_size(x.shape), reset_zero, float(v_reset),
        sur.kind, sur.alpha, detach_reset, spike_dtype, backend or "",
    )
    s = s.view(x.shape)
    return (s, v_end.view(x.shape[1:])) if return_state else s
