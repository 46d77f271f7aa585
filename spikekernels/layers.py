"""``nn.Module`` wrappers over the spiking ops, multi-step: every input is time-major ``[T, B, ...]``.

The layers hold parameters as buffers (so ``state_dict`` and ``.to(device)`` carry them)
and call the public ops, which pick the kernel by device; no layer branches on backends.

With ``stateful=True`` a layer keeps its state (membrane or spike counts) between calls, so
a long run can be fed in chunks of T: ``layer(x[:k]); layer(x[k:])`` gives the same spikes
as ``layer(x)``. ``reset_state()`` clears it (call it between unrelated inputs). The state is
not part of ``state_dict``: it belongs to one run, not to the model.

Every layer trains: called on inputs that require grad (or holding parameters that do), it
returns spikes with a grad_fn (surrogate gradients, see ``spikekernels.surrogate``). A
stateful layer's carried membrane keeps its graph, so feeding ``x[:k]`` then ``x[k:]`` and
backpropagating gives the gradient of the whole run (full BPTT); call ``reset_state()``
after each batch, or ``detach_state()`` between chunks for truncated BPTT.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _checks, _dispatch
from . import surrogate as _surrogate
from .ops.if_scan import if_scan
from .ops.pool import global_avg_pool, spike_avg_pool2d, spike_max_pool2d
from .ops.residual_merge import residual_merge
from .ops.spike_conv import spike_conv2d, spike_linear

__all__ = ["IFNeuron", "ResidualMerge", "SpikeConv2d", "SpikeLinear", "SpikeAvgPool2d", "SpikeMaxPool2d",
           "GlobalAvgPool"]


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

    def detach_state(self) -> None:
        """Keep the carried state's value but cut its graph (truncated BPTT between chunks)."""
        if self.state is not None:
            self.state = self.state.detach()

    def _neuron_options(self, threshold, v0, reset, v_reset, spike_dtype, backend, surrogate=None,
                        detach_reset: bool = False) -> None:
        """Validate and store the IF neuron's settings (shared by the neuron layers)."""
        self.register_buffer("threshold", _vector_buffer(threshold, "threshold", positive=True))
        self.v0 = _check_v0(v0)
        _checks.check_reset(reset, v_reset)
        self.reset = reset
        self.v_reset = float(v_reset)
        self.spike_dtype = _checks.check_spike_dtype(spike_dtype, torch.float32) if spike_dtype is not None else None
        self.backend = _dispatch.check_backend(backend)
        self.surrogate = _surrogate.get(surrogate)
        if not isinstance(detach_reset, bool):
            raise TypeError(f"detach_reset must be a bool, got {type(detach_reset).__name__}")
        self.detach_reset = detach_reset

    def _neuron_kwargs(self) -> dict:
        return dict(v_reset=self.v_reset, spike_dtype=self.spike_dtype, surrogate=self.surrogate,
                    detach_reset=self.detach_reset, backend=self.backend)

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
        surrogate: spike derivative for training (default ``sk.surrogate.Sigmoid(alpha=4)``).
        detach_reset: cut the reset's gradient (SpikingJelly's ``detach_reset``).

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
        surrogate: _surrogate.Surrogate | str | None = None,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(stateful)
        self._neuron_options(threshold, v0, reset, v_reset, spike_dtype, backend, surrogate, detach_reset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v0 = self._carried(x.shape[1:], "membrane") if self.stateful else None
        s, v = if_scan(x, self.threshold, self.v0 if v0 is None else v0, self.reset, return_state=True,
                       **self._neuron_kwargs())
        self._keep(v)
        return s

    def extra_repr(self) -> str:
        return f"threshold={_fmt(self.threshold)}, v0={self.v0}, reset={self.reset!r}, stateful={self.stateful}"


class ResidualMerge(_Stateful):
    """The merge neuron of a spiking residual block: IF over ``current + scale * shortcut``.

    Args:
        scale: shortcut weight, a number or per-channel ``[C]`` tensor.
        threshold, v0, reset, v_reset, spike_dtype, stateful, backend, surrogate, detach_reset:
            as in :class:`IFNeuron`.

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
        surrogate: _surrogate.Surrogate | str | None = None,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(stateful)
        self.register_buffer("scale", _vector_buffer(scale, "scale", positive=False))
        self._neuron_options(threshold, v0, reset, v_reset, spike_dtype, backend, surrogate, detach_reset)

    def forward(self, current: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        v0 = self._carried(current.shape[1:], "membrane") if self.stateful else None
        s, v = residual_merge(current, shortcut, self.scale, self.threshold, self.v0 if v0 is None else v0,
                              self.reset, return_state=True, **self._neuron_kwargs())
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


class _SpikeSynapse(_Stateful):
    """Shared body of SpikeConv2d / SpikeLinear: weight and bias parameters, neuron options."""

    def _init_parameters(self, weight_shape: tuple[int, ...], fan_in: int, bias: bool) -> None:
        # torch.nn.Conv2d / Linear's default initialization (kaiming_uniform with a=sqrt(5)),
        # so a layer swapped in for its ANN twin starts from the same distribution
        self.weight = nn.Parameter(torch.empty(weight_shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            bound = 1 / math.sqrt(fan_in)
            self.bias = nn.Parameter(torch.empty(weight_shape[0]).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def _options(self, threshold, v0, reset, v_reset, neuron, residual_scale, spike_dtype, stateful, backend,
                 surrogate, detach_reset) -> None:
        if not isinstance(neuron, bool):
            raise TypeError(f"neuron must be a bool, got {type(neuron).__name__}")
        if stateful and not neuron:
            raise ValueError("stateful=True needs neuron=True (without the neuron there is no membrane to carry)")
        self.neuron = neuron
        self.register_buffer("residual_scale", _vector_buffer(residual_scale, "residual_scale", positive=False))
        self._neuron_options(threshold, v0, reset, v_reset, spike_dtype, backend, surrogate, detach_reset)

    def _run(self, op, s: torch.Tensor, state_shape, residual, **geometry) -> torch.Tensor:
        v0 = self._carried(state_shape, "membrane") if self.stateful else None
        result = op(s, self.weight, self.bias, threshold=self.threshold, v0=self.v0 if v0 is None else v0,
                    reset=self.reset, return_state=self.neuron, neuron=self.neuron, residual=residual,
                    residual_scale=self.residual_scale, **geometry, **self._neuron_kwargs())
        if not self.neuron:
            return result
        self._keep(result[1])
        return result[0]


class SpikeConv2d(_SpikeSynapse):
    """Trainable 2-D convolution fused with integrate-and-fire neurons (``sk.spike_conv2d``).

    Per step: ``x_t = conv2d(s_t, weight, bias) + residual_scale * residual_t`` then the IF
    update. In inference (no grad) the event-driven kernels run; in training the conv is
    torch's and the neuron backpropagates with the surrogate derivative.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as ``torch.nn.Conv2d``
            (groups=1, dilation=1, zero padding); weight and bias are ``nn.Parameter`` s
            initialized like ``nn.Conv2d``.
        threshold: positive number or per-output-channel ``[Cout]`` tensor (a buffer).
        v0: start membrane, None for θ/2 or a number.
        reset: "subtract" or "zero"; v_reset: membrane after a spike for "zero".
        neuron: False makes the layer return float32 currents (no IF), e.g. a readout.
        residual_scale: weight of the optional residual input (number or ``[Cout]``).
        spike_dtype, stateful, backend, surrogate, detach_reset: as in :class:`IFNeuron`.

    Shape:
        ``forward(s, residual=None)``: s ``[T, B, Cin, H, W]`` (spikes, or a constant analog
        input ``[1, B, Cin, H, W]`` with ``timesteps=T``); residual None or
        ``[T, B, Cout, H', W']`` -> spikes ``[T, B, Cout, H', W']``.

    Example:
        >>> layer = SpikeConv2d(3, 16, 3, padding=1)
        >>> out = layer(torch.rand(8, 2, 3, 32, 32).requires_grad_())   # [8, 2, 16, 32, 32]
        >>> out.sum().backward()                                         # layer.weight.grad set
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        threshold: float | torch.Tensor = 1.0,
        v0: float | None = None,
        reset: str = "subtract",
        v_reset: float = 0.0,
        neuron: bool = True,
        residual_scale: float | torch.Tensor = 1.0,
        spike_dtype: torch.dtype | None = None,
        stateful: bool = False,
        backend: str | None = None,
        surrogate: _surrogate.Surrogate | str | None = None,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(stateful)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self._init_parameters((out_channels, in_channels, kh, kw), in_channels * kh * kw, bias)
        self._options(threshold, v0, reset, v_reset, neuron, residual_scale, spike_dtype, stateful, backend,
                      surrogate, detach_reset)

    def forward(self, s: torch.Tensor, residual: torch.Tensor | None = None, timesteps: int | None = None):
        if s.dim() != 5:
            raise ValueError(f"SpikeConv2d takes [T, B, Cin, H, W]; got shape {tuple(s.shape)}")
        ph, pw = (self.padding, self.padding) if isinstance(self.padding, int) else self.padding
        sh, sw = (self.stride, self.stride) if isinstance(self.stride, int) else self.stride
        kh, kw = self.kernel_size
        state = (s.shape[1], self.out_channels, (s.shape[3] + 2 * ph - kh) // sh + 1,
                 (s.shape[4] + 2 * pw - kw) // sw + 1)
        return self._run(spike_conv2d, s, state, residual, stride=self.stride, padding=self.padding,
                         timesteps=timesteps)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, threshold={_fmt(self.threshold)}, "
                f"reset={self.reset!r}, neuron={self.neuron}, surrogate={self.surrogate}, stateful={self.stateful}")


class SpikeLinear(_SpikeSynapse):
    """Trainable fully connected layer fused with integrate-and-fire neurons (``sk.spike_linear``).

    Args:
        in_features, out_features, bias: as ``torch.nn.Linear`` (same initialization).
        threshold, v0, reset, v_reset, neuron, residual_scale, spike_dtype, stateful, backend,
        surrogate, detach_reset: as in :class:`SpikeConv2d`.

    Shape:
        ``forward(s, residual=None)``: s ``[T, B, Fin]``; residual None or ``[T, B, Fout]``
        -> spikes ``[T, B, Fout]`` (float32 currents with ``neuron=False``).

    Example:
        >>> head = SpikeLinear(64, 10, neuron=False)
        >>> logits = head(torch.rand(8, 4, 64)).mean(0)   # [4, 10]
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float | torch.Tensor = 1.0,
        v0: float | None = None,
        reset: str = "subtract",
        v_reset: float = 0.0,
        neuron: bool = True,
        residual_scale: float | torch.Tensor = 1.0,
        spike_dtype: torch.dtype | None = None,
        stateful: bool = False,
        backend: str | None = None,
        surrogate: _surrogate.Surrogate | str | None = None,
        detach_reset: bool = False,
    ) -> None:
        super().__init__(stateful)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")
        self.in_features, self.out_features = in_features, out_features
        self._init_parameters((out_features, in_features), in_features, bias)
        self._options(threshold, v0, reset, v_reset, neuron, residual_scale, spike_dtype, stateful, backend,
                      surrogate, detach_reset)

    def forward(self, s: torch.Tensor, residual: torch.Tensor | None = None, timesteps: int | None = None):
        if s.dim() != 3:
            raise ValueError(f"SpikeLinear takes [T, B, Fin]; got shape {tuple(s.shape)}")
        return self._run(spike_linear, s, (s.shape[1], self.out_features), residual, timesteps=timesteps)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"threshold={_fmt(self.threshold)}, reset={self.reset!r}, neuron={self.neuron}, "
                f"surrogate={self.surrogate}, stateful={self.stateful}")
