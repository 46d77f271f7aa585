"""Every environment variable spikekernels reads, parsed and validated in one place.

| variable | values | default | effect |
|---|---|---|---|
| SPIKEKERNELS_BACKEND | auto, reference, numba, triton | auto | which kernels the ops run; auto sends CUDA tensors to Triton and CPU tensors to Numba |
| SPIKEKERNELS_CONV_DENSE_DENSITY | float in [0, 1] | 0.4 | input spike density above which the Numba spiking conv/linear switches from the event-driven kernel to the dense path (crossover measured on ResNet-20 layer shapes, see bench/RESULTS.md); decided per call, unless a ``conv_path`` context pins the path (sresnet's executor does) |
| SPIKEKERNELS_OUTPUT_POOL_MB | number >= 0 | 256 | MiB of released large CPU op outputs kept for reuse (``_memory``: outputs of 16 MiB and more come from reused huge-page mappings, no page faults); 0 turns the pool off |
| TRITON_INTERPRET | 0, 1 | 0 | Triton's own switch; with 1, Triton kernels run on CPU tensors (tests) |

Values are read from ``os.environ`` at call time (cheap) and parsed once per distinct raw
value, so tests and users can change them at run time.
"""

from __future__ import annotations

import functools
import math
import os

BACKENDS = ("auto", "reference", "numba", "triton")


@functools.lru_cache(maxsize=None)
def _parse_backend(raw: str) -> str:
    value = raw.strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"SPIKEKERNELS_BACKEND={raw!r} is not a backend; accepted: {', '.join(BACKENDS)}"
        )
    return value


@functools.lru_cache(maxsize=None)
def _parse_flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={raw!r} is not a flag; accepted: 0, 1, true, false")


@functools.lru_cache(maxsize=None)
def _parse_number(name: str, raw: str, low: float, high: float, accepted: str) -> float:
    """``raw`` as a float in ``[low, high]``; the errors name the variable and what is accepted."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; accepted: {accepted}") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={raw!r} is out of range; accepted: {accepted}")
    return value


def backend() -> str:
    """The requested backend: ``auto`` (default), ``reference``, ``numba`` or ``triton``."""
    return _parse_backend(os.environ.get("SPIKEKERNELS_BACKEND", "auto"))


def conv_dense_density() -> float:
    return _parse_number("SPIKEKERNELS_CONV_DENSE_DENSITY", os.environ.get("SPIKEKERNELS_CONV_DENSE_DENSITY", "0.4"),
                         0.0, 1.0, "a float in [0, 1]")


def output_pool_bytes() -> int:
    """SPIKEKERNELS_OUTPUT_POOL_MB in bytes (default 256 MiB)."""
    mib = _parse_number("SPIKEKERNELS_OUTPUT_POOL_MB", os.environ.get("SPIKEKERNELS_OUTPUT_POOL_MB", "256"),
                        0.0, math.inf, "MiB >= 0 (0: off)")
    return int(mib * 2**20)


def triton_interpret() -> bool:
    return _parse_flag("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))
