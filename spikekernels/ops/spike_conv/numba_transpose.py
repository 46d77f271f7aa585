"""Spikes from channels-last bytes to channel rows by vector shuffles.

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

``block_rows`` does the same for a whole tile of a map under 64 pixels (``BLOCKS``: ResNet-18's
4x4 and 2x2 maps on CIFAR): the tile is a contiguous ``[ct, P]`` block of the output, so the
stages stop when a vector holds ``64 / P`` whole channel rows (``_plan(ct, P)``:
``log2(P · ct / 64)`` stages) and every vector is stored whole.
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


def _plan(ct: int, P: int = 64) -> tuple[list, list]:
    """The shuffle stages that turn a block of ``P`` pixels x ``ct`` channels held
    channels-last (``P · ct / 64`` vectors of 64 bytes) into the same block channel by channel
    (``[ct, P]``): ``(stages, final)``. Each stage is a list of ``(a, b, mask)`` (output vector
    = lanes ``mask`` of vectors ``a`` and ``b`` of the previous stage, ``mask`` < 64 from
    ``a``, >= 64 from ``b``; ``b == a`` for the one-vector permute of a 64-byte block);
    ``final[k]``: the vector holding bytes ``64 k .. 64 k + 63`` of the ``[ct, P]`` block
    after the last stage (``P`` = 64: channel ``k``'s 64 pixels)."""
    per = 64 // ct
    vecs = [[(i * per + j // ct, j % ct) for j in range(64)] for i in range(P * ct // 64)]
    stages = []
    width = max(1, 64 // P)
    while any(len({c for _, c in v}) > width for v in vecs):
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
    if len(vecs) == 1 and vecs[0] != sorted(vecs[0], key=lambda e: (e[1], e[0])):
        # one vector (P · ct = 64): a single permute puts it in channel order
        want = sorted(vecs[0], key=lambda e: (e[1], e[0]))
        stages.append([(0, 0, [vecs[0].index(e) for e in want])])
        vecs = [want]
    final = [0] * len(vecs)
    for i, v in enumerate(vecs):
        c0 = v[0][1]
        assert v == [(j % P, c0 + j // P) for j in range(64)]
        final[c0 * P // 64] = i
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


# (pixels P, channels ct) of the blocks below 64 pixels that block_rows writes: with a shuffle
# network (the [ct, P] block is 1 to 16 vectors of 64 bytes), or a 1x1 map (the channels-last
# bytes already are the block: one copy)
BLOCKS = tuple((P, ct) for ct in WIDTHS for P in (1, 2, 4, 8, 16, 32) if P == 1 or 64 <= P * ct <= 1024)


@numba.njit(cache=True, inline="always")
def block_fits(P, ct):
    """Whether ``block_rows`` takes a block of ``P`` pixels x ``ct`` channels (one of BLOCKS)."""
    return (P <= 32 and (P & (P - 1)) == 0 and (ct == 8 or ct == 16 or ct == 32 or ct == 64)
            and (P == 1 or 64 <= P * ct <= 1024))


def _block_codegen(context, builder, sig, args):
    src_t, _, dst_t, _, _, _ = sig.args
    src = context.make_array(src_t)(context, builder, args[0])
    dst = context.make_array(dst_t)(context, builder, args[2])
    s0, d0, P, ct = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4, 5))
    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    v64 = ir.VectorType(i8, 64)
    sp = builder.gep(builder.bitcast(src.data, i8.as_pointer()), [s0])
    floats = isinstance(dst_t.dtype, types.Float)
    elem = ir.FloatType() if floats else i8
    dp = builder.gep(builder.bitcast(dst.data, elem.as_pointer()), [d0])
    end = builder.append_basic_block("block_end")
    switch = builder.switch(builder.add(builder.mul(P, ir.Constant(i64, 256)), ct), end)
    for bp, bct in BLOCKS:
        case = builder.append_basic_block(f"block_{bp}x{bct}")
        switch.add_case(ir.Constant(i64, 256 * bp + bct), case)
        builder.position_at_end(case)
        if bp == 1:
            vt = ir.VectorType(i8, bct)
            value = builder.load(builder.bitcast(sp, vt.as_pointer()), align=1)
            if floats:
                value = builder.uitofp(value, ir.VectorType(elem, bct))
            builder.store(value, builder.bitcast(dp, value.type.as_pointer()), align=1)
            builder.branch(end)
            continue
        stages, final = _plan(bct, bp)
        vecs = [builder.load(builder.bitcast(builder.gep(sp, [ir.Constant(i64, 64 * i)]), v64.as_pointer()),
                             align=1) for i in range(bp * bct // 64)]
        for ops in stages:
            vecs = [builder.shuffle_vector(vecs[a], vecs[b], ir.Constant(ir.VectorType(i32, 64), mask))
                    for a, b, mask in ops]
        values = [builder.uitofp(vecs[i], ir.VectorType(elem, 64)) if floats else vecs[i] for i in final]
        aligned = builder.icmp_unsigned("==", builder.and_(builder.ptrtoint(dp, i64), ir.Constant(i64, 63)),
                                        ir.Constant(i64, 0))
        # non-temporal stores are weakly ordered: the parallel region's join (locked
        # instructions) orders them before any other thread reads the output
        nontemporal = builder.module.add_metadata([ir.Constant(i32, 1)])
        with builder.if_else(aligned) as (then, otherwise):
            for nt in (True, False):
                with (then if nt else otherwise):
                    for k, value in enumerate(values):
                        ptr = builder.bitcast(builder.gep(dp, [ir.Constant(i64, 64 * k)]), value.type.as_pointer())
                        store = builder.store(value, ptr, align=64 if nt else 1)
                        if nt:
                            store.set_metadata("nontemporal", nontemporal)
        builder.branch(end)
    builder.position_at_end(end)
    return context.get_dummy_value()


if numba.config.DISABLE_JIT:
    def block_rows(src, s0, dst, d0, P, ct):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
        block = src.view(np.uint8)[s0:s0 + P * ct].reshape(P, ct)
        dst.reshape(-1)[d0:d0 + P * ct] = block.T.reshape(-1)
else:
    @intrinsic
    def block_rows(typingctx, src, s0, dst, d0, P, ct):
        """``dst.flat[d0 + c·P + p] = src bytes[s0 + p·ct + c]`` for a block of ``P`` pixels x
        ``ct`` channels, ``(P, ct)`` one of BLOCKS (others: nothing is written; see
        ``block_fits``): the ``[ct, P]`` block is contiguous in ``dst``, so the channels-last
        bytes go through ``log2(P · ct / 64)`` stages of ``_plan(ct, P)``'s shuffles and
        leave as whole 64-byte vectors (uint8 ``dst``) or 64 floats (float32 ``dst``, the 0/1
        bytes converted); ``P`` = 1 is one copy of ``ct`` bytes (or floats). A block of
        whole vectors at a 64-byte aligned address is stored non-temporally (it bypasses the
        caches, with no read of the lines it overwrites: the output is written once and read
        much later; 0.98-1.08x on ResNet-18's layers in one process, bench/RESULTS.md "Session
        14"). ``src``: a C-contiguous uint8 or uint64 array (offset in bytes),
        ``dst`` C-contiguous uint8 or float32."""
        return types.void(src, s0, dst, d0, P, ct), _block_codegen


def plan_check(ct: int, P: int = 64) -> np.ndarray:
    """The network of ``_plan(ct, P)`` applied in numpy to lane labels: ``[P · ct / 64, 64]``
    source lanes of each output vector (for tests)."""
    stages, final = _plan(ct, P)
    vecs = [np.arange(64 * i, 64 * i + 64) for i in range(P * ct // 64)]
    for ops in stages:
        vecs = [np.concatenate([vecs[a], vecs[b]])[mask] for a, b, mask in ops]
    return np.stack([vecs[final[k]] for k in range(len(final))])
