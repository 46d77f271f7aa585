"""Large CPU op outputs from a pool of reused, huge-page-backed anonymous mappings.

A fresh output of tens of MB (a float32 ``[T, B, C, H, W]`` spike tensor: 64 MiB for T = B =
32 on a 16 x 32 x 32 layer) is a new ``mmap`` from glibc (always at 32 MiB and more, its
largest mmap threshold; often below, depending on what the process freed before) and is
page-faulted in 4 KiB at a time on first write: 28 ms for 64 MiB on the 2-core machine of
bench/RESULTS.md "Session 8", about half of the spiking conv that fills it. Outputs of
POOL_MIN_BYTES and more come from here instead:

- the mapping asks for transparent huge pages (``MADV_HUGEPAGE``; THP is commonly in
  ``madvise`` mode), so a first write faults 2 MiB at a time (64 MiB: 12 ms);
- when the output's memory is released (its storage dies: the numpy array under it is
  finalized), the mapping goes back to a pool of at most SPIKEKERNELS_OUTPUT_POOL_MB MiB
  (default 256; 0 turns the pool and the huge pages off), and the next output of the same
  rounded size reuses it with its pages already in (64 MiB: 8 ms to fill, no faults).

The tensors are ordinary CPU tensors (``torch.from_numpy`` of the mapping): every torch op,
``share_memory_``, pickling work; only ``resize_`` past their size does not (their storage is
not resizable). Memory handed out is not cleared, as with ``torch.empty``.
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref

import numpy as np
import torch

from . import _config

# outputs at least this large come from the pool (smaller ones stay on torch's allocator,
# which glibc serves from its heap without fresh faults in sresnet's chunked simulation,
# whose uint8 spike tensors are about 8 MiB by default)
POOL_MIN_BYTES = 16 << 20
_HUGE = 2 << 20
_free: dict[int, list[mmap.mmap]] = {}
_held = 0
_lock = threading.RLock()  # reentrant: a finalizer may run during a collection under it


def pool_bytes() -> int:
    """The pool's capacity: SPIKEKERNELS_OUTPUT_POOL_MB (0 where mappings are not available)."""
    return _config.output_pool_bytes() if hasattr(mmap, "MAP_PRIVATE") else 0


def _release(m: mmap.mmap, size: int) -> None:
    global _held
    with _lock:
        if _held + size <= pool_bytes():
            _free.setdefault(size, []).append(m)
            _held += size
            return
    try:
        m.close()
    except BufferError:  # the dying array's view is released just after this callback
        pass


def empty(shape, dtype: torch.dtype) -> torch.Tensor | None:
    """An uninitialized CPU tensor ``shape`` of ``dtype`` from the pool (a torch view of the
    mapping's bytes, any dtype), or None when the pool does not apply: fewer than
    POOL_MIN_BYTES, or the pool is off."""
    global _held
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES or pool_bytes() == 0:
        return None
    size = -(-nbytes // _HUGE) * _HUGE
    with _lock:
        spare = _free.get(size)
        m = spare.pop() if spare else None
        if m is not None:
            _held -= size
    if m is None:
        # one huge page more than needed, so the data can start on a 2 MiB boundary
        m = mmap.mmap(-1, size + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                m.madvise(mmap.MADV_HUGEPAGE)
            except OSError:  # kernel without THP: 4 KiB pages, still pooled
                pass
    base = np.frombuffer(m, np.uint8)
    start = -base.ctypes.data % _HUGE
    data = base[start:start + nbytes]
    del base
    weakref.finalize(data, _release, m, size)
    flat = torch.from_numpy(data)
    return (flat.view(dtype) if dtype != torch.uint8 else flat).view(tuple(shape))


def pooled() -> int:
    """Bytes held by the pool now (mappings waiting for reuse)."""
    return _held
