"""Backend choice, made once per op call from the tensor's device and SPIKEKERNELS_BACKEND.

Every op folder has ``reference.py``, ``numba.py`` and ``triton.py`` exposing functions
with one contract; ``op.py`` calls :func:`resolve` to pick one. Implementations are
imported lazily, so ``import spikekernels`` needs neither Numba nor Triton.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Callable, Mapping

import torch

from . import _config

_INSTALL_HINT = {
    "numba": "install it with `pip install numba`",
    "triton": "install it with `pip install triton` (GPU), or use backend='reference'",
}
_warned: set[tuple[str, str]] = set()


@functools.lru_cache(maxsize=None)
def _import_status(module: str) -> str | None:
    """None when ``module`` imports, else the reason it does not (never hides the error)."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}); {_INSTALL_HINT[module]}"
    except Exception as exc:  # a broken install must be reported as broken, not as missing
        return f"{module} is installed but failed to import: {type(exc).__name__}: {exc}"
    return None


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on tensors of ``device``, or None when it can."""
    if backend == "reference":
        return None
    if backend == "numba":
        if device.type != "cpu":
            return f"numba kernels run on CPU tensors, got a tensor on {device}; use backend='triton' or 'reference'"
        return _import_status("numba")
    if backend == "triton":
        reason = _import_status("triton")
        if reason:
            return reason
        if device.type == "cuda":
            return None
        if device.type == "cpu" and _config.triton_interpret():
            return None
        return (
            f"triton kernels need a CUDA tensor, got a tensor on {device}; "
            "set TRITON_INTERPRET=1 (before importing triton) to run them on CPU for testing"
        )
    raise ValueError(f"unknown backend {backend!r}; accepted: {', '.join(_config.BACKENDS)}")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run on ``device`` in this process."""
    device = torch.device(device)
    return [b for b in ("reference", "numba", "triton") if unavailable_reason(b, device) is None]


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Callable:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_backend(backend: str | None) -> str | None:
    """``backend`` if it names a backend (None: SPIKEKERNELS_BACKEND decides), else ValueError."""
    if backend is not None and backend not in _config.BACKENDS:
        raise ValueError(f"backend={backend!r} is not a backend; accepted: {', '.join(_config.BACKENDS)} "
                         "(or None for SPIKEKERNELS_BACKEND)")
    return backend


def choose(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend name that ``op`` will use on ``device``.

    ``backend`` (per call) overrides SPIKEKERNELS_BACKEND. An explicit backend that cannot
    run raises RuntimeError with the reason; ``auto`` falls back to the reference with one
    warning per (op, reason).
    """
    requested = _config.backend() if backend is None else check_backend(backend)
    if requested != "auto":
        reason = unavailable_reason(requested, device)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {requested!r} cannot run: {reason}")
        return requested
    preferred = "triton" if device.type == "cuda" else "numba"
    reason = unavailable_reason(preferred, device)
    if reason is None:
        return preferred
    key = (op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"{op}: {preferred} backend unavailable ({reason}); falling back to the slow PyTorch reference",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


def resolve(op: str, device: torch.device, impls: Mapping[str, str], backend: str | None = None) -> Callable:
    """The implementation of ``op`` for ``device``: ``impls`` maps backend to 'module.function'."""
    return _load(impls[choose(op, device, backend)])
