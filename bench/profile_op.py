"""Run spike_conv2d on one layer shape in a loop, for ``perf``, with Numba's JIT code named.

perf cannot name the functions Numba compiles in the process (no perf map, no debug info), so
after the first (compiling) call this writes ``/tmp/perf-PID.map`` (perf reads it by itself) with the address and
size of every function in the libraries of spikekernels' Numba dispatchers, and dumps each
function's code to ``/tmp/jitcode-PID/ADDRESS.bin`` for disassembly. The kernels must be
compiled in this process, not loaded from Numba's cache (a cached library has no module to
list): point ``NUMBA_CACHE_DIR`` at an empty folder. The imports and the compile take 25-30 s
on a 2-core machine (more where it is loaded), which ``perf record -D`` (milliseconds) leaves
out; give enough calls to run well past it (30,000 calls of a 1 ms layer: 30 s). Sizes are
the gaps between consecutive functions, cut at the end of the memory mapping that holds the
function (reading past it crashed the process: SIGSEGV).

    rm -rf /tmp/nc && NUMBA_CACHE_DIR=/tmp/nc PYTHONPATH=. perf record -F 2000 -D 30000 \\
        -o /tmp/perf.data .venv/bin/python bench/profile_op.py --shape "r18 128->256 1x1 s2" --calls 30000
    perf report -i /tmp/perf.data --no-children --sort sym
    # one function's hottest instructions:
    perf script -i /tmp/perf.data -F ip,sym | grep _gather_items | sort | uniq -c | sort -rn | head
    objdump -D -b binary -m i386:x86-64 --adjust-vma=0xADDRESS /tmp/jitcode-PID/ADDRESS.bin
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path

import spikekernels as sk  # first: the OpenMP wait policy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_shapes import SHAPES, inputs  # noqa: E402


def jit_functions() -> dict[int, str]:
    """Address -> symbol of every compiled function in the libraries of the Numba dispatchers
    that spikekernels' modules hold (their own code and the libraries linked into it)."""
    from numba.core.registry import CPUDispatcher

    found: dict[int, str] = {}
    modules = [m for name, m in list(sys.modules.items()) if name.startswith("spikekernels") and m is not None]
    for obj in (o for m in modules for o in list(vars(m).values())):
        if not isinstance(obj, CPUDispatcher):
            continue
        for cres in obj.overloads.values():
            for lib in [cres.library, *getattr(cres.library, "_linking_libraries", [])]:
                try:
                    functions = lib._final_module.functions
                except Exception:  # a library loaded from the cache has no module
                    continue
                for fn in functions:
                    if fn.is_declaration:
                        continue
                    addr = lib.get_pointer_to_function(fn.name)
                    if addr:
                        found[addr] = fn.name
    return found


def _mapping_ends() -> list[tuple[int, int]]:
    """(start, end) of every mapping of this process (/proc/self/maps)."""
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = line.split()[0].split("-")
            spans.append((int(lo, 16), int(hi, 16)))
    return spans


def write_perf_map() -> None:
    found = jit_functions()
    spans = _mapping_ends()
    pid = os.getpid()
    dump = Path(f"/tmp/jitcode-{pid}")
    dump.mkdir(exist_ok=True)
    addrs = sorted(found)
    with open(f"/tmp/perf-{pid}.map", "w") as f:
        for i, a in enumerate(addrs):
            end = next((hi for lo, hi in spans if lo <= a < hi), a)
            size = min(addrs[i + 1] - a if i + 1 < len(addrs) else 1 << 16, 1 << 20, end - a)
            f.write(f"{a:x} {size:x} {found[a][:200]}\n")
            (dump / f"{a:x}.bin").write_bytes(ctypes.string_at(a, size))
    print(f"perf map: {len(addrs)} functions -> /tmp/perf-{pid}.map, code in {dump}"
          + ("" if addrs else " (none: the kernels came from Numba's cache; set NUMBA_CACHE_DIR to an empty folder)"),
          flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="r18 128->256 1x1 s2", help=f"one of: {', '.join(SHAPES)}")
    p.add_argument("--dtype", choices=["uint8", "float32"], default="uint8")
    p.add_argument("--calls", type=int, default=15000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--timesteps", type=int, default=32)
    p.add_argument("--density", type=float, default=0.1)
    args = p.parse_args(argv)
    if args.shape not in SHAPES:
        p.error(f"--shape {args.shape!r}: accepted: {', '.join(SHAPES)}")
    if args.calls < 1:
        p.error(f"--calls {args.calls}: accepted: 1 or more")
    shape = SHAPES[args.shape]
    s, w, b = inputs(shape, args.density, args.batch, args.timesteps, getattr(torch, args.dtype))
    stride, padding = shape[4], shape[5]
    t0 = time.perf_counter()
    sk.spike_conv2d(s, w, b, stride=stride, padding=padding, backend="numba")
    print(f"first call (compiles) {time.perf_counter() - t0:.1f} s", flush=True)
    # now, not at exit: every kernel this shape runs is compiled by now
    write_perf_map()
    t0 = time.perf_counter()
    for _ in range(args.calls):
        sk.spike_conv2d(s, w, b, stride=stride, padding=padding, backend="numba")
    print(f"{args.calls} calls, {(time.perf_counter() - t0) / args.calls * 1e3:.3f} ms a call", flush=True)


if __name__ == "__main__":
    main()
