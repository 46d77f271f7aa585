"""``nn.Module`` wrappers over the spiking ops, multi-step: every input is time-major ``[T, B, ...]``.

The layers hold parameters as buffers (so ``state_dict`` and ``.to(device)`` carry them)
and call the public ops, which pick the kernel by device; no layer branches on backends.

With ``stateful=True`` a layer keeps its state (membrane or spike counts) between calls, so
a long run can be fed in chunks of T: ``layer(x[:k]); layer(x[k:])`` gives the same spikes
as ``layer(x)``. ``reset_state()`` clears it (call it between unrelated inputs). The state is
not part of ``state_dict``: it belongs to one run, not to the model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks, _dispatch
from .ops.if_scan import if_scan
from .ops.pool import global_avg_pool, spike_avg_pool2d, spike_max_pool2d
from .ops.residual_merge import residual_merge

__all__ = ["IFNeuron", "ResidualMerge", "SpikeAvgPool2d", "SpikeMaxPool2d", "GlobalAvgPool"]


def _vector_buffer(value, name: str, positive: bool) -> torch.Tensor:
    """A float32 scalar or [C] tensor, checked at construction so errors surface early."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a 1-D tensor [C], got {type(value).__name__}")
    t = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if t.dim() > 1:
        raise ValueError(f"{name} must be a number or a 1-D tensor [C], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or (positive and bool((t <= 0).any())):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {t.tolist()}")
    return t


def _check_v0(v0) -> float | None:
    if v0 is None:
        return None
    if isinstance(v0, bool) or not isinstance(v0, (int, float)) or not math.isfinite(v0):
        raise ValueError(f"v0 must be None (θ/2) or a finite number, got {v0!r}")
    return float(v0)


def _fmt(t: torch.Tensor):
    values = [float(f"{v:.6g}") for v in t.reshape(-1).tolist()]
    return values[0] if t.dim() == 0 else values


class _Stateful(nn.Module):
    """Holds one run's state tensor when ``stateful``; never saved in ``state_dict``."""

    def __init__(self, stateful: bool) -> None:
        super().__init__()
        self.stateful = bool(stateful)
        self.state: torch.Tensor | None = None

    def reset_state(self) -> None:
        """Forget the carried state; the next call starts fresh."""
        self.state = None

    def _neuron_options(self, threshold, v0, reset, v_reset, spike_dtype, backend) -> None:
        """Validate and store the IF neuron's settings (shared by the neuron layers)."""
        self.register_buffer("threshold", _vector_buffer(threshold, "threshold", positive=True))
        self.v0 = _check_v0(v0)
        _checks.check_reset(reset, v_reset)
        self.reset = reset
        self.v_reset = float(v_reset)
        self.spike_dtype = _checks.check_spike_dtype(spike_dtype, torch.float32) if spike_dtype is not None else None
        self.backend = _dispatch.check_backend(backend)

    def _carried(self, shape, what: str) -> torch.Tensor | None:
        if not self.stateful or self.state is None:
            return None
        if tuple(self.state.shape) != tuple(shape):
            raise ValueError(
                f"{type(self).__name__} carries a {what} of shape {tuple(self.state.shape)} but this input needs "
                f"{tuple(shape)}; call reset_state() before feeding a differently shaped input"
            )
        return self.state

    def _keep(self, state: torch.Tensor) -> None:
        if self.stateful:
            self.state = state


class IFNeuron(_Stateful):
    """Integrate-and-fire neurons over ``[T, B, ...]`` currents (see ``spikekernels.if_scan``).

    Args:
        threshold: positive number or per-channel ``[C]`` tensor (channel = dim 2 of the input).
        v0: start membrane, None for θ/2 or a number.
        reset: "subtract" or "zero"; v_reset: membrane after a spike for "zero".
        spike_dtype: dtype of the output spikes (default: the input's).
        stateful: carry the membrane across calls (chunked runs); ``reset_state()`` clears it.
        backend: passed to the op (default: SPIKEKERNELS_BACKEND / by device).

    Shape:
        input ``[T, B, C, ...]`` float -> spikes of the same shape.
    """

    def __init__(
        self,
        threshold: float | torch.Tensor = 1.0,
        v0: float | None = None,
        reset: str = "subtract",
        v_reset: float = 0.0,
        spike_dtype: torch.dtype | None = None,
        stateful: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__(stateful)
        self._neuron_options(threshold, v0, reset, v_reset, spike_dtype, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v0 = self._carried(x.shape[1:], "membrane") if self.stateful else None
        s, v = if_scan(
            x, self.threshold, self.v0 if v0 is None else v0, self.reset, return_state=True,
            v_reset=self.v_reset, spike_dtype=self.spike_dtype, backend=self.backend,
        )
        self._keep(v)
        return s

    def extra_repr(self) -> str:
        return f"threshold={_fmt(self.threshold)}, v0={self.v0}, reset={self.reset!r}, stateful={self.stateful}"


class ResidualMerge(_Stateful):
    """The merge neuron of a spiking residual block: IF over ``current + scale * shortcut``.

    Args:
        scale: shortcut weight, a number or per-channel ``[C]`` tensor.
        threshold, v0, reset, v_reset, spike_dtype, stateful, backend: as in :class:`IFNeuron`.

    Shape:
        ``forward(current, shortcut)``: both ``[T, B, C, ...]`` (shortcut float, uint8 or
        bool) -> spikes of the same shape.
    """

    def __init__(
        self,
        scale: float | torch.Tensor = 1.0,
        threshold: float | torch.Tensor = 1.0,
        v0: float | None = None,
        reset: str = "subtract",
        v_reset: float = 0.0,
        spike_dtype: torch.dtype | None = None,
        stateful: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__(stateful)
        self.register_buffer("scale", _vector_buffer(scale, "scale", positive=False))
        self._neuron_options(threshold, v0, reset, v_reset, spike_dtype, backend)

    def forward(self, current: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        v0 = self._carried(current.shape[1:], "membrane") if self.stateful else None
        s, v = residual_merge(
            current, shortcut, self.scale, self.threshold, self.v0 if v0 is None else v0, self.reset,
            return_state=True, v_reset=self.v_reset, spike_dtype=self.spike_dtype, backend=self.backend,
        )
        self._keep(v)
        return s

    def extra_repr(self) -> str:
        return (
            f"scale={_fmt(self.scale)}, threshold={_fmt(self.threshold)}, v0={self.v0}, "
            f"reset={self.reset!r}, stateful={self.stateful}"
        )


class SpikeAvgPool2d(nn.Module):
    """Average pooling of ``[T, B, C, H, W]`` spikes at every step (stateless).

    Args: kernel_size, stride, padding, backend as in ``spikekernels.spike_avg_pool2d``.
    Shape: ``[T, B, C, H, W]`` -> float32 ``[T, B, C, H', W']``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, backend: str | None = None) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.backend = kernel_size, stride, padding, backend

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return spike_avg_pool2d(s, self.kernel_size, self.stride, self.padding, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GlobalAvgPool(nn.Module):
    """Spatial mean of ``[T, B, C, H, W]`` at every step -> float32 ``[T, B, C]`` (stateless)."""

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self.backend = _dispatch.check_backend(backend)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(s, backend=self.backend)


class SpikeMaxPool2d(_Stateful):
    """Gated spiking max pooling (see ``spikekernels.spike_max_pool2d``).

    Args:
        kernel_size, stride, padding: as in ``torch.nn.MaxPool2d`` (padding at most half the kernel).
        stateful: carry the spike counts across calls; ``reset_state()`` clears them.
        backend: passed to the op.

    Shape: ``[T, B, C, H, W]`` spikes -> ``[T, B, C, H', W']`` spikes of the same dtype.
    """

    def __init__(self, kernel_size, stride=None, padding=0, stateful: bool = False, backend: str | None = None) -> None:
        super().__init__(stateful)
        self.kernel_size, self.stride, self.padding, self.backend = kernel_size, stride, padding, backend

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        count = self._carried(s.shape[1:], "spike count") if self.stateful else None
        out, count = spike_max_pool2d(
            s, self.kernel_size, self.stride, self.padding, count=count, return_state=True, backend=self.backend
        )
        self._keep(count)
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, stateful={self.stateful}"
