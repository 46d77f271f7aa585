"""Training path of ``spike_conv2d`` / ``spike_linear``: torch conv currents, then the IF neuron's
surrogate-gradient op.

The current is ``F.conv2d`` on the float32 input (the reference's arithmetic), so torch's conv
kernels give dL/ds, dL/dweight and dL/dbias; the neuron is ``if_scan``'s custom op, which
runs the backend's BPTT kernel. The event-driven CPU kernel is for inference only: its sum
order differs, so a spike whose membrane is within a few ulp of θ may differ from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import _checks
from ...surrogate import Surrogate
from ..if_scan import autograd


def _residual_current(residual, residual_scale, out_shape, device) -> torch.Tensor | None:
    if residual is None:
        return None
    _checks.check_tensor(residual, "residual", min_dim=len(out_shape), dtypes=_checks.SPIKE_DTYPES)
    _checks.same_device("residual", residual, "input", torch.empty(0, device=device))
    T = out_shape[0]
    if tuple(residual.shape[1:]) != tuple(out_shape[1:]) or residual.shape[0] not in (1, T):
        raise ValueError(
            f"residual has shape {tuple(residual.shape)}; accepted: the output shape {tuple(out_shape)} "
            f"(or 1 step at dim 0 for a residual constant over T)"
        )
    scale = autograd.vector(residual_scale, "residual_scale", out_shape[2], device, positive=False)
    if scale.numel() > 1:
        scale = scale.view(-1, 1, 1)
    return scale * residual.to(torch.float32)


def spiking(s, weight4, bias, stride, padding, out_hw, T: int, constant: bool, threshold, v0, reset: str,
            return_state: bool, neuron: bool, residual, residual_scale, v_reset: float,
            spike_dtype: torch.dtype | None, surrogate: Surrogate | str | None, detach_reset: bool,
            backend: str | None, step_bias: torch.Tensor | None = None):
    """``op._spiking`` with gradients for s, weight, bias, residual, residual_scale, step_bias,
    threshold and v0 (``step_bias`` ``[T, Cout]``, already validated: its gradient is torch's
    broadcast backward, the current's gradient summed over B, H' and W').

    Spikes default to s's dtype when it is a float dtype, else float32 (gradients need floats).
    """
    B, Cout = s.shape[1], weight4.shape[0]
    out_shape = (T, B, Cout) + tuple(out_hw)
    # a constant input is convolved once; its current is broadcast over T (gradients summed)
    frames = s[:1] if constant else s
    w = weight4.to(torch.float32)
    b = None if bias is None else bias.to(torch.float32)
    x = F.conv2d(frames.flatten(0, 1).to(torch.float32), w, b, stride=stride, padding=padding)
    x = x.view((frames.shape[0], B) + tuple(x.shape[1:]))
    res = _residual_current(residual, residual_scale, out_shape, s.device)
    # the order of reference.currents: conv + (step_bias + α·residual)
    extra = None if step_bias is None else step_bias.to(torch.float32).view(T, 1, Cout, 1, 1)
    if res is not None:
        extra = res if extra is None else extra + res
    if extra is not None:
        x = x + extra
    if x.shape[0] != T:
        x = x.expand(out_shape)
    if not neuron:
        return x
    if spike_dtype is None:
        spike_dtype = s.dtype if s.dtype.is_floating_point else torch.float32
    return autograd.if_scan(x, threshold, v0, reset, return_state, v_reset, spike_dtype, surrogate, detach_reset,
                            backend)
