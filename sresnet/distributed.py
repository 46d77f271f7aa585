"""Several processes (``torchrun``) converting and evaluating one network, exactly.

Each process (rank) takes a disjoint share of the work: no image is padded or counted twice,
and the last share may be smaller. What the ranks measure is merged so that the result does
not depend on the number of processes: maxima by MAX, counts as integer sums, and sampled
activations gathered whole, with samples drawn exactly as one process would draw them (see
:mod:`sresnet.convert.observe`), float sums per batch added in batch order, and order
statistics found by bisection with integer count all-reduces
(:func:`sresnet.convert.lowlat.kth_largest`). The converted network is then bit-identical to a
single-process conversion over the same calibration images, and evaluation numbers are
the same integers.

Backends: gloo for CPU tensors, nccl for CUDA (one GPU per rank, ``LOCAL_RANK``). Use
:func:`init_from_env` under ``torchrun`` (and :func:`shutdown` before exiting), or pass your own
initialized process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes of ``group`` (None: the default group)."""

    rank: int = 0
    world: int = 1
    group: object = None

    @property
    def active(self) -> bool:
        return self.world > 1

    def owns(self, index: int) -> bool:
        """Round-robin ownership of work item ``index`` (a batch of images)."""
        return index % self.world == self.rank

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def sum(self, values):
        """Elementwise sum over ranks of a number, an int64/float64 tensor, or a dict of them."""
        if not self.active:
            return values
        parts = self.gather(values)
        if isinstance(values, dict):
            return {k: _add([p[k] for p in parts]) for k in values}
        return _add(parts)


    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Elementwise ``op`` ("sum", "min" or "max") of an integer tensor over the ranks (exact,
        one all-reduce; a copy, ``tensor`` is not changed). Integer sums are exact in any order,
        so this is what per-step counts use; floats go through :meth:`gather` in a fixed order."""
        if not self.active:
            return tensor
        if tensor.is_floating_point() and op == "sum":
            raise TypeError("Shard.reduce sums integers only (a float sum would depend on the order of the ranks)")
        # nccl reduces CUDA tensors only: a CPU tensor (the calibration runs on the CPU) travels
        # through this rank's GPU and back
        nccl = tensor.device.type == "cpu" and dist.get_backend(self.group) == "nccl"
        out = tensor.cuda() if nccl else tensor.clone()
        dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op],
                        group=self.group)
        return out.cpu() if nccl else out

    def block(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` items as a slice (see :func:`shard_range`)."""
        r = shard_range(n, self)
        return slice(r.start, r.stop)


def _add(parts: list):
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def shard_from(process_group=None) -> Shard:
    """The :class:`Shard` of this process: from ``process_group`` (an initialized
    ``torch.distributed`` group), else the default group when one is initialized, else a
    single process."""
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return Shard()
        return Shard(dist.get_rank(), dist.get_world_size(), None)
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group was given but torch.distributed is not initialized; call "
                         "torch.distributed.init_process_group first (or run under torchrun)")
    return Shard(dist.get_rank(process_group), dist.get_world_size(process_group), process_group)


def shard_range(n: int, shard: Shard) -> range:
    """The contiguous block of ``range(n)`` owned by ``shard``: sizes differ by at most one,
    the first ``n % world`` ranks take one more, nothing is padded or repeated."""
    base, extra = divmod(n, shard.world)
    start = shard.rank * base + min(shard.rank, extra)
    return range(start, start + base + (1 if shard.rank < extra else 0))


def numba_threads_per_process(env: dict, cpus: int) -> int | None:
    """Numba threads for one of ``LOCAL_WORLD_SIZE`` processes sharing ``cpus`` cores: the
    cores divided among them (at least 1), or None when the user set ``NUMBA_NUM_THREADS``
    (their choice stands) or this is the only process. Numba's default is every core in
    every process: 2 processes on 2 cores would run 4 threads."""
    local = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if "NUMBA_NUM_THREADS" in env or local <= 1:
        return None
    return max(1, cpus // local)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_OWNED_GROUP = False  # True once init_from_env has initialized the default process group


def init_from_env() -> Shard:
    """Initialize torch.distributed from torchrun's environment (RANK, WORLD_SIZE, ...).

    A single process (no WORLD_SIZE, or 1) initializes nothing. CUDA available: nccl, one GPU
    per rank (``LOCAL_RANK``); else gloo, and unless ``NUMBA_NUM_THREADS`` is set the Numba
    kernels of each process get the machine's cores divided by ``LOCAL_WORLD_SIZE`` (torchrun
    already gives torch one thread per process through ``OMP_NUM_THREADS``).

    Call :func:`shutdown` before the process exits (the CLI does): a process that exits with
    its gloo group alive can abort in the group's threads ("terminate called without an active
    exception").

    Raises:
        ValueError: more ranks on this machine than GPUs when using CUDA.
    """
    global _OWNED_GROUP
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s); "
                                 "run at most one process per GPU (--nproc-per-node)")
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
            threads = numba_threads_per_process(os.environ, _usable_cpus())
            if threads is not None:
                import numba

                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        _OWNED_GROUP = True
    return shard_from(None)


def shutdown() -> None:
    """Destroy the default process group if :func:`init_from_env` created it (a group the
    caller initialized is left alone). Safe to call more than once and in a single process."""
    global _OWNED_GROUP
    if _OWNED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED_GROUP = False
