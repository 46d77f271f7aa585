"""Public ``signed_scan``: argument checks, layout, dispatch."""

from __future__ import annotations

from typing import Sequence

import torch

from ... import _checks, _dispatch

IMPLS = {
    "reference": "spikekernels.ops.signed_scan.reference.signed_scan",
    "numba": "spikekernels.ops.signed_scan.numba.signed_scan",
    "triton": "spikekernels.ops.signed_scan.triton.signed_scan",
}

SPIKE_DTYPES = _checks.FLOAT_DTYPES + (torch.int8,)


def _initial_memory(m0, state_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """A fresh int32 net-spike count of ``state_shape`` from the ``m`` of a state (v, m)."""
    if not isinstance(m0, torch.Tensor) or m0.dtype.is_floating_point or m0.dtype.is_complex or m0.dtype == torch.bool:
        got = m0.dtype if isinstance(m0, torch.Tensor) else type(m0).__name__
        raise TypeError(f"v0=(v, m): m must be an integer tensor (the int32 net spike count of an earlier call), got {got}")
    if m0.device != device:
        raise ValueError(f"v0=(v, m): m is on {m0.device} but the input is on {device}; put both on one device")
    try:
        m = torch.broadcast_to(m0, tuple(state_shape))
    except RuntimeError:
        raise ValueError(f"v0=(v, m): m has shape {tuple(m0.shape)}, not broadcastable to the state shape "
                         f"{tuple(state_shape)} (the input shape without T)") from None
    if bool((m < 0).any()):
        raise ValueError("v0=(v, m): m must be >= 0 (a neuron never sends more negative than positive spikes)")
    return m.to(torch.int32).contiguous().clone()


def signed_scan(
    x: torch.Tensor,
    threshold: float | torch.Tensor = 1.0,
    v0: float | torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
    return_state: bool = False,
    *,
    spike_dtype: torch.dtype | None = None,
    backend: str | None = None,
):
    """Multi-step signed integrate-and-fire neuron with memory (spikes -1, 0 or +1).

    Per neuron and step (signed neuron with memory, SNM: Wang et al., "Signed Neuron with
    Memory: Towards Simple, Accurate and High-Efficient ANN-SNN Conversion", IJCAI 2022)::

        v += x[t]
        if v >= θ:              s[t] = +1;  v -= θ;  m += 1      (a tie fires)
        elif v <= -θ and m > 0: s[t] = -1;  v += θ;  m -= 1      (a tie fires too)
        else:                   s[t] = 0

    m is the neuron's net spike count so far (positive minus negative spikes); it never goes
    below 0, so the summed output spikes approximate ReLU of the summed input (over θ). The
    membrane is float32 whatever the input dtype; m is int32. Equations:
    ``spikekernels/ops/signed_scan/README.md``.

    Inference only: there is no backward. A tensor argument that requires grad while grad mode
    is on raises RuntimeError.

    Args:
        x: currents ``[T, B, ...]`` (e.g. ``[T, B, C, H, W]``), float16/bfloat16/float32/float64.
            A current constant over time may be passed as ``c.expand(T, ...)``: it is read
            without copying.
        threshold: θ, a positive number, or one value per channel ``[C]`` (C = dim 2).
        v0: start state: None for v = θ/2 and m = 0; a number or a float tensor broadcastable to
            ``x.shape[1:]`` for v (m = 0); or the state ``(v, m)`` returned by an earlier call
            (m an integer tensor >= 0, broadcastable to ``x.shape[1:]``), to continue exactly.
        return_state: also return the final state ``(v, m)``: v float32 ``[B, ...]``, m int32
            ``[B, ...]``.
        spike_dtype: dtype of the spikes (default x's dtype; torch.int8 stores one byte per spike).
        backend: "auto", "reference", "numba" or "triton" for this call (default:
            SPIKEKERNELS_BACKEND, else auto).

    Returns:
        spikes ``[T, B, ...]`` of -1/0/+1, and the state ``(v, m)`` when ``return_state``.

    Raises:
        TypeError / ValueError naming the argument (x, threshold, v0, spike_dtype, backend) that
        is wrong; RuntimeError when an input requires grad with grad mode on.

    Example:
        >>> x = torch.randn(8, 2, 4)
        >>> s, state = signed_scan(x[:4], threshold=1.0, return_state=True)
        >>> s2, (v, m) = signed_scan(x[4:], threshold=1.0, v0=state, return_state=True)
    """
    if isinstance(v0, (tuple, list)):
        if len(v0) != 2:
            raise ValueError(f"v0 as a state must be a pair (v, m), got {len(v0)} items")
        v_start, m_start = v0
    else:
        v_start, m_start = v0, None
    _checks.check_inference_only("signed_scan", x=x, threshold=threshold, v0=v_start)
    _checks.check_tensor(x, "x", min_dim=2)
    thr = _checks.prepare_threshold(threshold, x)
    if spike_dtype is not None and spike_dtype not in SPIKE_DTYPES:
        raise TypeError(f"spike_dtype={spike_dtype} is not accepted by signed_scan (spikes are -1/0/+1); accepted: "
                        f"{_checks._dtype_names(SPIKE_DTYPES)} or None (x's dtype)")
    spike_dtype = x.dtype if spike_dtype is None else spike_dtype
    T = x.shape[0]
    state_shape = x.shape[1:]
    if m_start is not None and v_start is None:
        raise ValueError("v0=(v, m): v is None; pass the membrane returned with m, or v0=None for a fresh start")
    v = _checks.initial_membrane(v_start, thr, state_shape, x.device)
    if m_start is None:
        m = torch.zeros(state_shape, dtype=torch.int32, device=x.device)
    else:
        m = _initial_memory(m_start, state_shape, x.device)
    out = _checks.new_output(x.shape, spike_dtype, x.device)
    impl = _dispatch.resolve("signed_scan", x.device, IMPLS, backend)
    impl(_checks.time_source(x), T, thr, _checks.inner_size(x.shape), v.view(-1), m.view(-1), out.view(T, -1))
    return (out, (v, m)) if return_state else out
