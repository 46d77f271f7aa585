"""Spikes from channels-last bytes to channel rows, 64 pixels at a time, by vector shuffles.

The Numba spiking-conv kernels hold a step's spikes channels-last (``[P, ct]`` bytes 0/1 per
channel tile) and the output is ``[Cout, P]``: a byte transpose. ``_rows64`` moves a block of
64 pixels: the ``ct`` 64-byte vectors that hold it (``64 / ct`` pixels each) go through
``log2(ct)`` stages of two-input shuffles (``shufflevector`` of ``<64 x i8>``, one
``vpermt2b`` each with AVX-512 VBMI; LLVM expands them on other CPUs). Each stage pairs two
vectors that hold the same channels for different pixels and splits them into one vector of
the lower half of the channels and one of the upper half, each with the pixels of both; after
the last stage each vector is one channel's 64 pixels in order and is stored as 64 bytes of
its row. That is ``ct · log2(ct)`` shuffles per ``64 · ct`` spikes (16 channels: 64 shuffles
per 1024 spikes), against a table lookup and a store per 8 spikes of the 8 x 8 bit-matrix
transpose it replaces where it applies (``numba_rows._spikes_out``).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# tile widths (channels) with a shuffle network
WIDTHS = (8, 16, 32, 64)


def _plan(ct: int) -> tuple[list, list]:
    """The shuffle stages for ``ct`` channels: ``(stages, final)``; each stage is a list of
    ``(a, b, mask)`` (output vector = lanes ``mask`` of vectors ``a`` and ``b`` of the previous
    stage, ``mask`` < 64 from ``a``, >= 64 from ``b``); ``final[c]``: the vector holding
    channel ``c`` after the last stage, its pixels in order."""
    per = 64 // ct
    vecs = [[(i * per + j // ct, j % ct) for j in range(64)] for i in range(ct)]
    stages = []
    while any(len({c for _, c in v}) > 1 for v in vecs):
        groups: dict = {}
        for i, v in enumerate(vecs):
            groups.setdefault(tuple(sorted({c for _, c in v})), []).append(i)
        ops, new = [], []
        for chans, members in groups.items():
            half = len(chans) // 2
            for k in range(0, len(members), 2):
                a, b = members[k], members[k + 1]
                for part in (set(chans[:half]), set(chans[half:])):
                    want = sorted((e for e in vecs[a] + vecs[b] if e[1] in part), key=lambda e: (e[1], e[0]))
                    mask = [vecs[a].index(e) if e in vecs[a] else 64 + vecs[b].index(e) for e in want]
                    ops.append((a, b, mask))
                    new.append(want)
        stages.append(ops)
        vecs = new
    final = [0] * ct
    for i, v in enumerate(vecs):
        assert [p for p, _ in v] == list(range(64))
        final[v[0][1]] = i
    return stages, final


def _rows64_codegen(ct: int):
    stages, final = _plan(ct)
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v64 = ir.VectorType(i8, 64)

    def codegen(context, builder, sig, args):
        src_t, _, dst_t, _, _, _ = sig.args
        src = context.make_array(src_t)(context, builder, args[0])
        dst = context.make_array(dst_t)(context, builder, args[2])
        s0, d0, stride, nc = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4, 5))
        sp = builder.bitcast(src.data, i8.as_pointer())
        dp = builder.bitcast(dst.data, i8.as_pointer())
        vecs = [builder.load(builder.bitcast(builder.gep(sp, [builder.add(s0, ir.Constant(i64, 64 * i))]),
                                             v64.as_pointer()), align=1) for i in range(ct)]
        for ops in stages:
            vecs = [builder.shuffle_vector(vecs[a], vecs[b], ir.Constant(ir.VectorType(i32, 64), mask))
                    for a, b, mask in ops]
        for c in range(ct):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(i64, c), nc), likely=True):
                at = builder.add(d0, builder.mul(ir.Constant(i64, c), stride))
                builder.store(vecs[final[c]], builder.bitcast(builder.gep(dp, [at]), v64.as_pointer()), align=1)
        return context.get_dummy_value()

    return codegen


def _make(ct: int):
    if numba.config.DISABLE_JIT:
        def rows64_py(src, s0, dst, d0, stride, nc):
            """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
            block = src[s0:s0 + 64 * ct].reshape(64, ct)
            flat = dst.reshape(-1)
            for c in range(nc):
                flat[d0 + c * stride:d0 + c * stride + 64] = block[:, c]

        return rows64_py

    @intrinsic
    def rows64(typingctx, src, s0, dst, d0, stride, nc):
        """Rows ``dst.flat[d0 + c·stride:+64] = src[s0 + ct·p + c]`` for pixels ``p < 64``,
        channels ``c < nc`` (``src``, ``dst``: C-contiguous uint8 arrays)."""
        return types.void(src, s0, dst, d0, stride, nc), _rows64_codegen(ct)

    return rows64


_r8, _r16, _r32, _r64 = (_make(ct) for ct in WIDTHS)


@numba.njit(cache=True, inline="always")
def rows64(ct, src, s0, dst, d0, stride, nc):
    """``_rows64`` for a tile of ``ct`` channels (one of WIDTHS)."""
    if ct == 8:
        _r8(src, s0, dst, d0, stride, nc)
    elif ct == 16:
        _r16(src, s0, dst, d0, stride, nc)
    elif ct == 32:
        _r32(src, s0, dst, d0, stride, nc)
    else:
        _r64(src, s0, dst, d0, stride, nc)


def plan_check(ct: int) -> np.ndarray:
    """The network of ``_plan(ct)`` applied in numpy to lane labels: ``[ct, 64]`` source lanes
    (for tests)."""
    stages, final = _plan(ct)
    vecs = [np.arange(64 * i, 64 * i + 64) for i in range(ct)]
    for ops in stages:
        vecs = [np.concatenate([vecs[a], vecs[b]])[mask] for a, b, mask in ops]
    return np.stack([vecs[final[c]] for c in range(ct)])
