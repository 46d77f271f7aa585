"""Argument checks and normalization shared by every op (host code, never in kernels)."""

from __future__ import annotations

import functools
import math
import sys
import threading
from typing import Sequence

import numpy as np
import torch

from . import _memory

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SPIKE_DTYPES = FLOAT_DTYPES + (torch.uint8, torch.bool)
RESETS = ("subtract", "zero")


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite (no NaN, no ±Inf).

    A CPU float32/float64 tensor is summed first with numpy (one thread, no temporary): a NaN
    or an Inf anywhere makes the sum NaN or ±Inf, so a finite sum proves every value finite;
    only a non-finite sum (which a finite overflow can also give) takes the elementwise test.
    The state check of every chunked call (a membrane of up to millions of floats) cost 8% of
    a ResNet-20 simulation with the elementwise test (torch's parallel ``isfinite().all()``:
    25 ms for 512K floats on the 2-core machine under load, the numpy sum 0.6 ms).
    """
    t = t.detach()
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and t.is_contiguous():
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(t.numpy().reshape(-1))
        if np.isfinite(total):
            return True
    return bool(torch.isfinite(t).all())


def check_tensor(x, name: str, *, min_dim: int, dtypes=FLOAT_DTYPES, layout: str = "[T, B, ...]",
                 exact_bits_ok: bool = False) -> None:
    """Type, dtype, rank and emptiness of a time-major tensor; then ``kept_guard``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {x.dtype}; accepted: {_dtype_names(dtypes)}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} ({x.dim()} dims); expected at least {min_dim} dims "
            f"laid out {layout} with time first (add the time dim with x.unsqueeze(0) for T=1)"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); every dim must be >= 1")
    kept_guard(x, exact_bits_ok)


def kept_guard(x: torch.Tensor, exact_bits_ok: bool = False) -> None:
    """Before an op reads ``x``: a spiking conv output that holds its spikes only as bits
    (``numba_gather.bits_only``) and shares memory with ``x`` is written from its bits
    (``numba_gather.guard``). ``exact_bits_ok``: not when ``x`` is that output itself, for the
    readers that take its bits (spike_conv2d's input and residual). Nothing to do, and no
    import, while the Numba conv module is not loaded."""
    gather = sys.modules.get("spikekernels.ops.spike_conv.numba_gather")
    if gather is not None and not torch.compiler.is_compiling():
        gather.guard(x, exact_bits_ok)


def check_reset(reset: str, v_reset: float) -> bool:
    """Validate the reset mode; returns True for 'zero'."""
    if reset not in RESETS:
        raise ValueError(f"reset={reset!r} is not a reset mode; accepted: {', '.join(map(repr, RESETS))}")
    if not isinstance(v_reset, (int, float)) or not math.isfinite(v_reset):
        raise ValueError(f"v_reset={v_reset!r} must be a finite number")
    return reset == "zero"


def check_spike_dtype(spike_dtype, default: torch.dtype) -> torch.dtype:
    if spike_dtype is None:
        return default
    if spike_dtype not in SPIKE_DTYPES:
        raise TypeError(f"spike_dtype={spike_dtype} is not accepted; accepted: {_dtype_names(SPIKE_DTYPES)} or None")
    return spike_dtype


def _checked(vec: torch.Tensor, name: str, positive: bool) -> torch.Tensor:
    """``vec`` (float32, 1-D) contiguous, after checking its values are finite (and > 0 when
    ``positive``)."""
    rule = "finite and > 0" if positive else "finite"
    if vec.device.type == "cpu" and not torch.compiler.is_compiling():
        # numpy: a few microseconds where torch's isfinite / compare / any cost tens per call
        # (every chunked call of a simulation checks its threshold and residual scale; not
        # while torch.compile traces, which takes the torch checks below)
        arr = vec.numpy()
        bad_np = ~np.isfinite(arr) | (arr <= 0) if positive else ~np.isfinite(arr)
        if bad_np.any():
            raise ValueError(f"{name} must be {rule}, got {arr[bad_np][:4].tolist()}")
        return vec.contiguous()
    bad = ~torch.isfinite(vec) | (vec <= 0) if positive else ~torch.isfinite(vec)
    if bool(bad.any()):
        raise ValueError(f"{name} must be {rule}, got {vec[bad][:4].tolist()}")
    return vec.contiguous()


def _number_vector(value: float, name: str, device, positive: bool) -> torch.Tensor:
    """``channel_vector`` of a number: float32 ``[1]`` on ``device``, checked."""
    if not positive and not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be finite")
    return _checked(torch.tensor([float(value)], dtype=torch.float32, device=device), name, positive)


@functools.lru_cache(maxsize=256)
def _cpu_number_vector(value: float, sign: float, positive: bool, name: str) -> torch.Tensor:
    """``_number_vector`` on the CPU, cached (``sign`` keeps -0.0 apart from 0.0; invalid
    values raise, and exceptions are not cached). The tensor is shared: the ops only read it."""
    return _number_vector(value, name, "cpu", positive)


def channel_vector(value, name: str, channels: int | None, device: torch.device, *, positive: bool,
                   shape: Sequence[int] | None = None) -> torch.Tensor:
    """A float32 vector on ``device``: ``[1]`` from a number, ``[channels]`` per channel.

    ``positive`` values (thresholds) must be finite and > 0; others (scales) finite.
    ``shape`` (the input's) only makes error messages clearer.
    """
    kind = "positive number" if positive else "number"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if getattr(device, "type", device) == "cpu" and not torch.compiler.is_compiling():
            # a number on the CPU: one shared read-only tensor per value (every chunked call
            # of a simulation passes the same threshold and residual scale; making and
            # checking the tensor cost 20-25 us a call there, with the kernels' data in the
            # caches)
            return _cpu_number_vector(float(value), math.copysign(1.0, value), positive, name)
        return _number_vector(value, name, device, positive)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a {kind} or a 1-D tensor [C], got {type(value).__name__}")
    vec = value.detach()
    if vec.dim() > 1:
        raise ValueError(f"{name} must be a {kind} or a 1-D tensor [C], got shape {tuple(vec.shape)}")
    vec = vec.reshape(-1)
    if vec.numel() != 1 and vec.numel() != channels:
        where = f"the input {tuple(shape)}" if shape is not None else "the layer"
        raise ValueError(
            f"per-channel {name} has {vec.numel()} values but {where} has "
            f"{channels if channels is not None else 'no'} channels at dim 2; "
            f"accepted: a {kind} or one value per channel"
        )
    return _checked(vec.to(device=device, dtype=torch.float32), name, positive)


def check_step_bias(step_bias, steps: int, channels: int, device: torch.device) -> None:
    """Validate a per-step, per-channel bias ``[T, C]``: a float tensor of exactly that shape
    (``steps`` = the input's T, ``channels`` = the output channels), finite (not checked while
    torch.compile traces), on ``device``."""
    if not isinstance(step_bias, torch.Tensor):
        raise TypeError(f"step_bias must be a torch.Tensor [T, C] or None, got {type(step_bias).__name__}")
    if not step_bias.dtype.is_floating_point:
        raise TypeError(f"step_bias has dtype {step_bias.dtype}; accepted: {_dtype_names(FLOAT_DTYPES)}")
    if tuple(step_bias.shape) != (steps, channels):
        raise ValueError(
            f"step_bias has shape {tuple(step_bias.shape)}; expected [T, C] = [{steps}, {channels}] "
            f"(one row per time step of this call, one value per output channel; slice the rows "
            f"of the steps a chunked call covers)"
        )
    if step_bias.device != device:
        raise ValueError(f"step_bias is on {step_bias.device} but the input is on {device}; put both on one device")
    # the value check reads the tensor, which would break a torch.compile graph (as for v0)
    if not torch.compiler.is_compiling() and not all_finite(step_bias):
        raise ValueError("step_bias contains NaN or Inf; accepted: finite values")


def prepare_threshold(threshold, x: torch.Tensor, name: str = "threshold") -> torch.Tensor:
    """A float32 vector [C] on x's device: C=1 for a scalar, C=x.shape[2] per channel."""
    channels = x.shape[2] if x.dim() >= 3 else None
    return channel_vector(threshold, name, channels, x.device, positive=True, shape=x.shape)


def inner_size(shape: Sequence[int]) -> int:
    """Neurons per channel in one sample: prod(shape[3:]) of a [T, B, C, ...] tensor."""
    return math.prod(shape[3:]) if len(shape) > 3 else 1


class ThreadSetting:
    """A value per thread, set for the length of a ``with setting(value):`` block (blocks
    nest; leaving one restores the value before it); ``default`` outside every block."""

    __slots__ = ("_local", "default")

    def __init__(self, default=None):
        self._local = threading.local()
        self.default = default

    def get(self):
        return getattr(self._local, "value", self.default)

    def __call__(self, value) -> "_Setting":
        return _Setting(self, value)


class _Setting:
    __slots__ = ("setting", "value", "prev")

    def __init__(self, setting: ThreadSetting, value):
        self.setting, self.value = setting, value

    def __enter__(self):
        self.prev = self.setting.get()
        self.setting._local.value = self.value
        return self

    def __exit__(self, *exc) -> None:
        self.setting._local.value = self.prev


_donated_state = ThreadSetting(None)


def donate(state) -> _Setting:
    """A context within which (this thread) the tensor ``state`` is the caller's to give away:
    an op that takes it as its start state (``v0``, a max pool's ``count``) and would copy
    it updates it in place instead and returns it as its new state, without checking it for
    NaN / Inf (it is an op's own returned state, as finite as the run that made it: an
    unchunked run does not check its membrane between steps either).

    For a caller that drops ``state`` once the op returns (sresnet's executor, chunk after
    chunk): a float32 membrane of 2 MB cost a copy and a finiteness pass per call, 4.7% of a
    ResNet-20 run (bench/RESULTS.md "Session 10"). Only a float32, contiguous tensor of the
    state's exact shape, device and no grad is taken as it is; any other is copied as usual.
    """
    return _donated_state(state)


def donated(t, shape: Sequence[int], device: torch.device) -> bool:
    """Whether ``t`` is the state given away by an enclosing :class:`donate` and usable in place."""
    return (t is not None and t is _donated_state.get() and isinstance(t, torch.Tensor)
            and t.dtype == torch.float32 and t.device == device and tuple(t.shape) == tuple(shape)
            and t.is_contiguous() and not t.requires_grad)


def initial_membrane(v0, thr: torch.Tensor, state_shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """A fresh float32 membrane of ``state_shape`` (the input shape without T), set to v0.

    v0=None gives θ/2 (the half-threshold start); a number or a tensor broadcastable to
    the state (e.g. the membrane returned by an earlier call) is used as is; a tensor given
    away by an enclosing :class:`donate` is returned itself (no copy, no finiteness check).
    """
    state_shape = tuple(state_shape)
    if donated(v0, state_shape, device):
        return v0
    # on the CPU numpy fills, not torch: a torch fill of this size can start an OpenMP region,
    # and under OMP_WAIT_POLICY=PASSIVE waking its threads costs more than the fill (tens of us)
    cpu = torch.device(device).type == "cpu"
    if v0 is None:
        if thr.numel() == 1:
            if cpu:
                return _filled(state_shape, np.float32(float(thr[0]) * 0.5))
            return torch.full(state_shape, float(thr[0]) * 0.5, dtype=torch.float32, device=device)
        view = [1] * len(state_shape)
        view[1] = thr.numel()
        if cpu:
            return _filled(state_shape, thr.detach().numpy().reshape(view) * np.float32(0.5))
        return (thr * 0.5).view(view).expand(state_shape).contiguous()
    if isinstance(v0, torch.Tensor):
        if v0.device != device:
            raise ValueError(f"v0 is on {v0.device} but the input is on {device}; put both on one device")
        try:
            v = torch.broadcast_to(v0.detach().to(torch.float32), state_shape)
        except RuntimeError:
            raise ValueError(
                f"v0 has shape {tuple(v0.shape)}, not broadcastable to the state shape {state_shape} "
                "(the input shape without T)"
            ) from None
        if not all_finite(v):
            raise ValueError("v0 contains NaN or Inf")
        return v.contiguous().clone() if v.data_ptr() == v0.data_ptr() else v.contiguous()
    if isinstance(v0, (int, float)) and not isinstance(v0, bool):
        if not math.isfinite(v0):
            raise ValueError(f"v0={v0!r} must be finite")
        if cpu:
            return _filled(state_shape, np.float32(v0))
        return torch.full(state_shape, float(v0), dtype=torch.float32, device=device)
    raise TypeError(f"v0 must be None, a number or a tensor, got {type(v0).__name__}")


def _filled(shape: tuple, value: np.ndarray | np.float32) -> torch.Tensor:
    """A new float32 CPU tensor of ``shape`` set to ``value`` (broadcast) by numpy, on this thread."""
    out = torch.empty(shape, dtype=torch.float32)
    np.copyto(out.numpy(), value)
    return out


def time_source(x: torch.Tensor) -> torch.Tensor:
    """x as a contiguous [Tx, N] matrix with Tx = 1 when x is constant over T (stride 0).

    A current given as ``c.expand(T, ...)`` is read once per step from one copy: it is
    never materialized T times.
    """
    if x.shape[0] > 1 and x.stride(0) == 0:
        return x[:1].reshape(1, -1).contiguous()
    return x.reshape(x.shape[0], -1).contiguous()


def same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; put both on one device")


# Tests set this to True (see tests/conftest.py) so that every output an op allocates starts
# as NaN (float) or 0xFF (integer): an element a kernel forgets to write then fails the test.
POISON_OUTPUTS = False


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for op outputs (large CPU ones from ``_memory``'s pool), poisoned under test."""
    out = _memory.empty(shape, dtype) if torch.device(device).type == "cpu" else None
    if out is None:
        out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if POISON_OUTPUTS:
        if dtype.is_floating_point:
            out.fill_(float("nan"))
        elif dtype == torch.bool:
            out.view(torch.uint8).fill_(0xFF)
        else:
            out.fill_(0xFF if dtype == torch.uint8 else -1)
    return out


def check_inference_only(op: str, **tensors) -> None:
    """RuntimeError when an inference-only op gets a tensor that requires grad with grad mode on.

    Such ops have no backward; silently detaching would hand the caller a graph that ends
    without a gradient.
    """
    if not torch.is_grad_enabled():
        return
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise RuntimeError(
                f"{op} is inference only (no backward), but {name} requires grad with grad mode on; "
                f"call it under torch.no_grad() / torch.inference_mode() or pass {name}.detach()"
            )
