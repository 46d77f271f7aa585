"""Output-stationary Numba kernel of the spiking convolution on bit-packed spikes.

Second design of the CPU event-driven conv (the first, ``numba._event_kernel``, scatters each
input spike's weights into a current buffer in memory). Here each output pixel gathers:

1. ``_pack`` converts the user's spike tensor ``[T, B, Cin, H, W]`` (uint8 or float32, read
   once) into bits, channels-last with the zero padding materialized:
   ``pk [T, B, Hp * Wp * Cb + 8]`` bytes, ``Cb = ceil(Cin / 8)``, bit ``ci % 8`` of byte
   ``(y * Wp + x) * Cb + ci // 8``. One kernel row of a receptive field (``kw`` neighbouring
   pixels, all channels) is then one contiguous run of ``kw * 8 * Cb`` bits. uint8 spikes on
   maps of 8x8 and smaller are packed inside the kernel's parallel region instead, each
   thread the images it convolves (``FUSE_PACK``: one region a call, not two).
2. ``_gather_kernel``: one work item per (image, output-channel tile), the T loop inside
   (items tile by tile past TILE_MAJOR_BYTES of the weight rows read). Per step and output pixel,
   ``_gather_sum`` reads the receptive field as 64-bit words (one unaligned load each, masked
   at the run's end; ``_tables`` leaves out the words of the pixel's class that lie wholly
   in the padding). On a CPU with AVX-512 VBMI2 (``COMPRESS``)
   each word's set bits are compressed (``vpcompressw``, no branch) into one list of 16-bit
   row indices for the whole receptive field; elsewhere (or past ``LIST_CAP`` entries) the
   set bits of each word are walked (count trailing zeros, clear lowest bit). The weight row
   of each active input (``wg [tile, kh, kw * 8 * Cb + 1, ct]``, row = bit index, last row
   zeros) is added into ``ct / 8`` accumulator vectors that stay in registers, ``unroll``
   rows per trip of the loop (the zero row fills the last trip) into ``sets`` independent
   sets of sums added pairwise at the end (``WALK``). The list leaves one exit of the add
   loop (the branch a predictor misses) per pixel instead of one per word, the unrolling
   makes the trips ``1 / unroll`` as many and the sets make the chains of dependent adds
   ``1 / sets`` as long. At most the sum goes to memory, once (with the neuron not even that:
   3.). Padding and skipped channels are zero bits, so there are no bounds checks.
3. With the neuron, the sums of a pixel never go to memory: ``_gather_if`` runs the IF update
   on them while they are in registers (``_if_tail``: the float32 operations of ``if_scan``
   in its order, ``x = (sum + b) + (β_t + α·r)``, ``v = v + x``, ``s = v >= θ``, the reset;
   the per-step bias β_t is one row per step and channel tile, read beside the constant bias
   ``b``) on a channels-last membrane that stays in cache for the T loop. The vector compare
   that gives the spikes is also their bits: the pixel's ``ct`` lanes are one 8-64-bit word,
   stored in ``_pack``'s layout (border KEEP_PAD) and counted with ``popcnt``. Fused this
   way, ResNet-20's layers ran 1.05-1.28x faster and the whole network 1.12-1.14x (T=128,
   B=32) than with a row pass of the IF and a pass that packed the spike bytes (bench/RESULTS.md
   "Session 9"). After each step the spikes are transposed to ``out``. Without the neuron
   (``neuron=False``, the current is the output) ``_gather_sum`` stores the sums and a row
   pass adds the bias and the residual.
4. The kept bits stay beside the output tensor until it dies (``_keep``); a later call on
   that tensor reads them instead of packing it (``recall``), a residual of the output's
   shape is read from them (``IF_RESBITS``), and ``spikekernels.count_spikes`` reads their
   count. Under ``bits_only()`` the output tensor is not written at all (sresnet's executor,
   for outputs only spiking convs read); any other reader writes it first (``materialize``,
   ``guard``). ``if_scan_kept``: the IF of a constant current (a network's stem) keeps its
   spikes' bits the same way.
5. The column kernel (``_column_if``): a 3x3 stride-1 conv with the neuron runs a whole
   output row per call. Each input column's three kernel rows are compressed into one list
   once, and each active input adds its three weight rows (kx = 0, 1, 2) into the sums of the
   three output pixels that column reaches, all in registers; after column ``c`` pixel
   ``c - 2`` is complete and goes through ``_if_tail``. One list entry serves three vector
   adds, and each input is found once per row instead of three times (spike_conv/README.md).

Work per output neuron-step: one word per 64 receptive-field inputs plus ``ct / 8`` vector
adds per active input (their count rounded up to ``unroll``); no current buffer is written
and read back and silent inputs cost one bit each. Inputs other than 0/1 (an analog current)
cannot be bits: ``spike_conv2d`` falls back to the scatter kernel for them.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
import weakref
from collections import OrderedDict
from typing import NamedTuple

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.typing import signature
from numba.extending import intrinsic

from ... import _checks
from ..if_scan.numba import spike_buffer
from .numba_rows import (_SPREAD, OUT_ELEMENTS, _byte_pointer, _current_row, _load_u8, _load_u16, _load_u32,
                         _load_u64, _membrane_in, _membrane_out, _residual_in, _spikes_out, _spikes_rows,
                         _step_bias_row, _tile_setup, aligned_zeros, spikes_out_mode)
from .numba_transpose import block_fits, block_rows

# accumulator width per output pixel in units of 8 float32 (ct = 8 * nv channels per tile); in
# the generated code an even nv is nv / 2 vectors of 16 lanes (one zmm each with AVX-512,
# two ymm with AVX2: the same adds per lane either way), an odd one vectors of 8
VECTORS = (1, 2, 4, 8)
# rearranged weights kept between calls, most recent last: (weight, version, sample, rows)
WEIGHT_CACHE_BYTES = 128 * 2**20
_weight_cache: OrderedDict = OrderedDict()
_weight_cache_lock = threading.Lock()


def _host_compresses() -> bool:
    """Whether the kernels are compiled for a CPU with AVX-512 VBMI2: then LLVM's vector
    compress of 16-bit lanes is one instruction (``vpcompressw``), elsewhere it is expanded
    lane by lane. ``NUMBA_CPU_NAME`` naming a target other than the host turns it off."""
    if numba.config.CPU_NAME and numba.config.CPU_NAME != "host":
        return False
    try:
        return bool(llvm.get_host_cpu_features().get("avx512vbmi2", False))
    except Exception:  # noqa: BLE001 - feature query unavailable: the portable walk
        return False


# whether the receptive field's set bits are first compressed into a list of row indices
COMPRESS = _host_compresses()
# entries of that list (16-bit row indices); larger receptive fields take the bit walk
LIST_CAP = 8192
# weight floats of a tile whose offsets / 2 all fit a 16-bit list entry (read as a byte offset
# / 8 with x86's scaled index, no shift per input); larger tiles list row indices
SCALED_FLOATS = 2 * 65535
# weight rows read past this many bytes (the rows of the kernel taps that land in the image for
# some output pixel, _taps_read): the work items go tile by tile (each thread adds one tile's
# rows for many images while they stay in its L2) rather than image by image (the tiles of an
# image in one thread: no two threads write the same cache line of its kept bits; the pack can
# run in the kernel's region, FUSE_PACK). ResNet-18's 256-512 channel 3x3 layers (2.1-2.4 MB
# read) ran 1.1-1.4x faster tile by tile, two of its three 1x1 shortcuts (0.03-0.5 MB) 1.1x
# slower (bench/RESULTS.md "Session 12"); image by image, with the fused pack, 1.15x faster at
# 1.2 MB (128->256, 3x3 stride 2) and 1.22x at 1.05 MB (512 channels, a 3x3 on a 1x1 map: one
# tap of nine read), 0.92-0.95x at 2.1-2.4 MB (bench/RESULTS.md "Session 15")
TILE_MAJOR_BYTES = 3 << 19
# per accumulator width nv: (active inputs added per trip of the add loop, independent sets of
# sums), measured on ResNet-20/18 layer shapes (bench/RESULTS.md "Session 6" and "Session 7";
# with the list the CPU has AVX-512's 32 vector registers: nv = 8 keeps 4 sets of 4 zmm);
# without the list, 8 vectors keep one set (16 ymm registers on AVX2)
WALK = {1: (4, 4), 2: (4, 4), 4: (4, 4), 8: (4, 4)} if COMPRESS else {1: (2, 2), 2: (2, 2), 4: (2, 2), 8: (2, 1)}


def _pairwise(parts: list, add):
    """The sets of sums added pairwise, ``(s0 + s1) + (s2 + s3)``, the kernels' order (``add``:
    the IR builder's ``fadd`` or the Python twins' ``+``)."""
    while len(parts) > 1:
        parts = [add(parts[m], parts[m + 1]) for m in range(0, len(parts), 2)]
    return parts[0]


def _word_arrays(context, builder, sig, args):
    """The arrays ``pk``, ``toff``, ``wrow``, ``mask``, ``w`` of a gather intrinsic's arguments
    (positions 0, 2, 3, 4, 6), as Numba array structures."""
    return tuple(context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 2, 3, 4, 6))


def _compress_list(builder, lst, word_at, wrow, mask, nw, q, step, upper=None):
    """IR: the set bits of the ``nw`` words ``word_at(i)`` as one list of 16-bit entries at
    ``lst``; returns its length (i64). Bit ``j`` of word ``i`` becomes ``(wrow[i] >> q) + step * j``
    (``wrow``: the word's first weight row, in floats). Each half word's 32 lanes are compressed
    into a register (``llvm.experimental.vector.compress``: ``vpcompressw`` with AVX-512 VBMI2)
    and stored whole, so ``lst`` needs 32 entries of slack; a half with no valid bits in
    ``mask[i]`` (a row of at most 32 inputs) is skipped, a branch the same for every pixel
    (``upper``: an i1 that replaces that test)."""
    i64, i16 = ir.IntType(64), ir.IntType(16)
    v32i16, v32i1 = ir.VectorType(i16, 32), ir.VectorType(ir.IntType(1), 32)
    squeeze = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v32i16, [v32i16, v32i1, v32i16]), "llvm.experimental.vector.compress.v32i16")
    lane0 = ir.Constant(ir.VectorType(ir.IntType(32), 32), [0] * 32)
    n_var = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))
    with cgutils.for_range(builder, nw) as loop:
        word = word_at(loop.index)
        first = builder.trunc(builder.lshr(builder.load(builder.gep(wrow.data, [loop.index])), q), i16)
        splat = builder.shuffle_vector(builder.insert_element(ir.Constant(v32i16, None), first, ir.Constant(
            ir.IntType(32), 0)), ir.Constant(v32i16, None), lane0)
        has_upper = upper if upper is not None else builder.icmp_unsigned(
            "!=", builder.lshr(builder.load(builder.gep(mask.data, [loop.index])), ir.Constant(i64, 32)),
            ir.Constant(i64, 0))
        for half in range(2):
            bits = builder.trunc(builder.lshr(word, ir.Constant(i64, 32 * half)), ir.IntType(32))
            lanes = builder.add(splat, ir.Constant(v32i16, [step * j for j in range(32 * half, 32 * half + 32)]))

            def store_half(bits=bits, lanes=lanes):
                packed = builder.call(squeeze, [lanes, builder.bitcast(bits, v32i1), ir.Constant(v32i16, None)])
                n = builder.load(n_var)
                builder.store(packed, builder.bitcast(builder.gep(lst, [n]), v32i16.as_pointer()), align=2)
                builder.store(builder.add(n, builder.zext(builder.ctpop(bits), i64)), n_var)

            if half:
                with builder.if_then(has_upper, likely=True):
                    store_half()
            else:
                store_half()
    return builder.load(n_var)


def _pad_list(builder, lst, n, zero_entry, count):
    """IR: ``count`` entries of the zero row after the list's ``n``: the last trip of an add
    loop unrolled ``count`` times adds zeros instead of branching per input."""
    for u in range(count):
        builder.store(zero_entry, builder.gep(lst, [builder.add(n, ir.Constant(ir.IntType(64), u))]))


def _gather_codegen(nv: int, unroll: int, sets: int, compress: bool, neuron: bool = False):
    """LLVM IR of ``_gather_sum`` for ``ct = 8 * nv`` channels of sums (vectors of 16 lanes for
    an even ``nv``, of 8 for an odd one; each lane's additions are the same either way); with
    ``neuron``, of ``_gather_if`` (the sums go through ``_if_tail``, not to memory).

    The active inputs' weight rows are added ``unroll`` per trip of a loop (rows past the last
    active one are the zero row at the end of ``w``: no branch per input, one loop exit per
    ``unroll`` inputs) into ``sets`` independent sets of sums (input ``u`` of a trip into set
    ``u % sets``), added pairwise at the end (chains of dependent adds ``1 / sets`` as long).
    ``compress``: the set bits of every word are first stored as a list of 16-bit row indices
    (``llvm.experimental.vector.compress`` of each half word's 32 lanes into a register,
    ``vpcompressw``, then one whole-vector store; no branch) and one loop walks the whole
    receptive field's list (one loop exit per pixel, not one per word). Otherwise the loop
    walks each word's set bits (count trailing zeros, clear lowest bit).
    """
    i64, i16 = ir.IntType(64), ir.IntType(16)
    lw = 16 if nv % 2 == 0 else 8
    nvec = 8 * nv // lw
    vt = ir.VectorType(ir.FloatType(), lw)
    shift = ir.Constant(i64, (8 * nv).bit_length() - 1)

    def codegen(context, builder, sig, args):
        pk, toff, wrow, mask, w = _word_arrays(context, builder, sig, args)
        base = context.cast(builder, args[1], sig.args[1], types.int64)
        nw = context.cast(builder, args[5], sig.args[5], types.int64)
        zero_row = builder.sub(cgutils.unpack_tuple(builder, w.shape, 1)[0], ir.Constant(i64, 8 * nv))
        zero, one = ir.Constant(i64, 0), ir.Constant(i64, 1)
        # allocas in the entry block: LLVM promotes the scalars and sums to registers (mem2reg)
        sums = [[cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * lw)) for _ in range(nvec)]
                for _ in range(sets)]
        bytes_ = builder.bitcast(pk.data, ir.IntType(8).as_pointer())

        def add_rows(rows):
            for u, row in enumerate(rows):
                for k in range(nvec):
                    src = builder.gep(w.data, [builder.add(row, ir.Constant(i64, lw * k))])
                    val = builder.load(builder.bitcast(src, vt.as_pointer()), align=4)
                    acc_k = sums[u % sets][k]
                    builder.store(builder.fadd(builder.load(acc_k), val), acc_k)

        def word_at(i):
            p = builder.gep(bytes_, [builder.add(base, builder.load(builder.gep(toff.data, [i])))])
            word = builder.load(builder.bitcast(p, i64.as_pointer()), align=1)
            return builder.and_(word, builder.load(builder.gep(mask.data, [i])))

        def walk_words():
            word_var = cgutils.alloca_once(builder, i64)
            row_var = cgutils.alloca_once(builder, i64)
            with cgutils.for_range(builder, nw) as loop:
                builder.store(word_at(loop.index), word_var)
                builder.store(builder.load(builder.gep(wrow.data, [loop.index])), row_var)
                cond = builder.append_basic_block("bits.cond")
                body = builder.append_basic_block("bits.body")
                done = builder.append_basic_block("bits.done")
                builder.branch(cond)
                builder.position_at_end(cond)
                wv = builder.load(word_var)
                builder.cbranch(builder.icmp_unsigned("!=", wv, zero), body, done)
                builder.position_at_end(body)
                wv = builder.load(word_var)
                rows = []
                for u in range(unroll):
                    # the first bit of a trip exists (loop condition); later ones may not
                    j = builder.cttz(wv, ir.Constant(ir.IntType(1), u == 0))
                    row = builder.add(builder.load(row_var), builder.mul(j, ir.Constant(i64, 8 * nv)))
                    if u:
                        row = builder.select(builder.icmp_unsigned("!=", wv, zero), row, zero_row)
                    rows.append(row)
                    wv = builder.and_(wv, builder.sub(wv, one))
                add_rows(rows)
                builder.store(wv, word_var)
                builder.branch(cond)
                builder.position_at_end(done)

        # 32 entries of slack: each half word's compressed lanes are stored as a whole vector
        lst = cgutils.alloca_once(builder, i16, size=LIST_CAP + 32) if compress else None

        def walk_list(scaled):
            # an entry is a weight row's offset in floats shifted right by ``q``: the row index
            # (q = log2(ct)), or, when every offset / 2 fits in 16 bits (``scaled``), offset / 2,
            # which the add loop reads as a byte offset / 8 (x86's scaled index: no shift per input)
            q = ir.Constant(i64, 1) if scaled else shift
            n = _compress_list(builder, lst, word_at, wrow, mask, nw, q, 4 * nv if scaled else 1)
            _pad_list(builder, lst, n, builder.trunc(builder.lshr(zero_row, q), i16), unroll)
            trips = builder.udiv(builder.add(n, ir.Constant(i64, unroll - 1)), ir.Constant(i64, unroll))
            with cgutils.for_range(builder, trips) as loop:
                first = builder.mul(loop.index, ir.Constant(i64, unroll))
                rows = []
                for u in range(unroll):
                    idx = builder.load(builder.gep(lst, [builder.add(first, ir.Constant(i64, u))]))
                    rows.append(builder.shl(builder.zext(idx, i64), q))
                add_rows(rows)

        if compress:
            fits = builder.icmp_unsigned("<=", builder.mul(nw, ir.Constant(i64, 64)),
                                         ir.Constant(i64, LIST_CAP - unroll))
            small = builder.icmp_unsigned("<=", cgutils.unpack_tuple(builder, w.shape, 1)[0],
                                          ir.Constant(i64, SCALED_FLOATS))
            with builder.if_else(fits) as (then, otherwise):
                with then:
                    with builder.if_else(small) as (then_small, otherwise_small):
                        with then_small:
                            walk_list(True)
                        with otherwise_small:
                            walk_list(False)
                with otherwise:
                    walk_words()
        else:
            walk_words()
        totals = [_pairwise([builder.load(sums[m][k]) for m in range(sets)], builder.fadd) for k in range(nvec)]
        if neuron:
            return _if_tail(context, builder, sig, args, totals, lw)
        acc = context.make_array(sig.args[7])(context, builder, args[7])
        aoff = context.cast(builder, args[8], sig.args[8], types.int64)
        for k, total in enumerate(totals):
            dst = builder.gep(acc.data, [builder.add(aoff, ir.Constant(i64, lw * k))])
            builder.store(total, builder.bitcast(dst, vt.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


# flags of _gather_if: residual, step bias, reset to v_reset (else subtract), write the bits
IF_RES, IF_SB, IF_ZERO, IF_KEEP = 1, 2, 4, 8
# the (uint8) residual is bits in the kept layout, not 0/1 bytes channels-last
IF_RESBITS = 16


def _if_tail(context, builder, sig, args, totals, lw, offsets=None):
    """IR of the IF update of one output pixel from its receptive-field sums ``totals`` (``ct``
    channels as vectors of ``lw`` float32, still in registers), for ``_gather_if``.

    The float32 operations of ``numba_rows._if_row`` in its order: ``x = (sum + b) + (β_t +
    α·r)`` (the terms by the flags ``IF_RES``/``IF_SB``, one predictable branch per pixel),
    ``v = v + x``, ``s = v >= θ`` (ordered: NaN does not fire), then ``v = v_reset`` (IF_ZERO)
    or ``v = v - θ·s``. The membrane ``vl``, the spikes ``sp`` (0/1 bytes) and the residual
    ``rr`` (uint8 or float32) are channels-last at ``voff`` / ``voff`` / ``roff``; ``θ``, ``b``,
    ``α``, ``β_t`` are the tile's first ``ct`` entries. The spike mask of the ``ct`` lanes is
    also the pixel's byte(s) of bits in ``_pack``'s layout: with IF_KEEP its first ``nbytes``
    bytes go to ``kept[koff:]``. Returns the pixel's spike count (popcount of the mask).
    ``offsets``: IR values ``(voff, roff, koff)`` that replace those arguments (the column
    kernel's pixels along a row).
    """
    i64, i8, f32 = ir.IntType(64), ir.IntType(8), ir.FloatType()
    vt = ir.VectorType(f32, lw)
    ct = lw * len(totals)
    arr = [context.make_array(sig.args[i])(context, builder, args[i]) if isinstance(sig.args[i], types.Array)
           else None for i in range(len(args))]
    vl, th, bi, sc, sb, rr, sp, kept = (arr[i] for i in (7, 9, 10, 11, 12, 13, 15, 16))
    voff, roff, koff, nbytes, flags = (context.cast(builder, args[i], sig.args[i], types.int64)
                                       for i in (8, 14, 17, 18, 19))
    vr = context.cast(builder, args[20], sig.args[20], types.float32)
    if offsets is not None:
        voff, roff, koff = offsets
    rr_bytes = sig.args[13].dtype == types.uint8

    def flag(bit):
        return builder.icmp_unsigned("!=", builder.and_(flags, ir.Constant(i64, bit)), ir.Constant(i64, 0))

    def vload(a, off, k, t=vt, align=4):
        p = builder.gep(a.data, [builder.add(off, ir.Constant(i64, lw * k))])
        return builder.load(builder.bitcast(p, t.as_pointer()), align=align)

    zero = ir.Constant(i64, 0)
    base = [builder.fadd(total, vload(bi, zero, k)) for k, total in enumerate(totals)]
    xs = [cgutils.alloca_once(builder, vt) for _ in totals]
    with builder.if_else(flag(IF_RES)) as (with_res, without_res):
        with with_res:
            if rr_bytes:
                # 0/1 as float: from ct bits at roff (IF_RESBITS) or from ct bytes
                rs = [cgutils.alloca_once(builder, vt) for _ in totals]
                with builder.if_else(flag(IF_RESBITS)) as (from_bits, from_bytes):
                    with from_bits:
                        word = builder.load(builder.bitcast(builder.gep(rr.data, [roff]), ir.IntType(ct).as_pointer()),
                                            align=1)
                        lanes = builder.bitcast(word, ir.VectorType(ir.IntType(1), ct))
                        for k in range(len(totals)):
                            part = builder.shuffle_vector(lanes, ir.Constant(lanes.type, None), ir.Constant(
                                ir.VectorType(ir.IntType(32), lw), list(range(lw * k, lw * k + lw))))
                            builder.store(builder.uitofp(part, vt), rs[k])
                    with from_bytes:
                        for k in range(len(totals)):
                            builder.store(builder.uitofp(vload(rr, roff, k, ir.VectorType(i8, lw), 1), vt), rs[k])
                r_vecs = [builder.load(r) for r in rs]
            else:
                r_vecs = [vload(rr, roff, k) for k in range(len(totals))]
            terms = [builder.fmul(vload(sc, zero, k), r) for k, r in enumerate(r_vecs)]
            with builder.if_else(flag(IF_SB)) as (with_sb, without_sb):
                with with_sb:
                    for k, term in enumerate(terms):
                        builder.store(builder.fadd(base[k], builder.fadd(vload(sb, zero, k), term)), xs[k])
                with without_sb:
                    for k, term in enumerate(terms):
                        builder.store(builder.fadd(base[k], term), xs[k])
        with without_res:
            with builder.if_else(flag(IF_SB)) as (with_sb, without_sb):
                with with_sb:
                    for k in range(len(totals)):
                        builder.store(builder.fadd(base[k], vload(sb, zero, k)), xs[k])
                with without_sb:
                    for k in range(len(totals)):
                        builder.store(base[k], xs[k])
    to_zero = flag(IF_ZERO)
    vr_vec = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, None), vr, ir.Constant(ir.IntType(32), 0)),
                                    ir.Constant(vt, None), ir.Constant(ir.VectorType(ir.IntType(32), lw), [0] * lw))
    fzero = ir.Constant(vt, [0.0] * lw)
    it = ir.IntType(ct)
    bits = ir.Constant(it, 0)
    for k in range(len(totals)):
        vp = builder.gep(vl.data, [builder.add(voff, ir.Constant(i64, lw * k))])
        vp = builder.bitcast(vp, vt.as_pointer())
        vi = builder.fadd(builder.load(vp, align=4), builder.load(xs[k]))
        thk = vload(th, zero, k)
        spk = builder.fcmp_ordered(">=", vi, thk)
        after = builder.select(to_zero, builder.select(spk, vr_vec, vi),
                               builder.fsub(vi, builder.select(spk, thk, fzero)))
        builder.store(after, vp, align=4)
        sq = builder.gep(sp.data, [builder.add(voff, ir.Constant(i64, lw * k))])
        builder.store(builder.zext(spk, ir.VectorType(i8, lw)), builder.bitcast(sq, ir.VectorType(i8, lw).as_pointer()),
                      align=1)
        lane_bits = builder.zext(builder.bitcast(spk, ir.IntType(lw)), it)
        bits = builder.or_(bits, builder.shl(lane_bits, ir.Constant(it, lw * k)) if k else lane_bits)
    with builder.if_then(flag(IF_KEEP)):
        dst = builder.gep(kept.data, [koff])
        whole = builder.icmp_unsigned("==", nbytes, ir.Constant(i64, ct // 8))
        with builder.if_else(whole, likely=True) as (all_bytes, some_bytes):
            with all_bytes:
                builder.store(bits, builder.bitcast(dst, it.as_pointer()), align=1)
            with some_bytes:
                if ct > 8:  # (ct = 8: one byte, always whole)
                    with cgutils.for_range(builder, nbytes) as loop:
                        shift = builder.mul(loop.index, ir.Constant(i64, 8))
                        shift = builder.trunc(shift, it) if ct < 64 else shift
                        builder.store(builder.trunc(builder.lshr(bits, shift), i8), builder.gep(dst, [loop.index]))
    return builder.zext(builder.ctpop(bits), i64) if ct < 64 else builder.ctpop(bits)


def _make_gather(nv: int):
    ct = 8 * nv
    unroll, sets = WALK[nv]
    if numba.config.DISABLE_JIT:
        def gather_py(pk, base, toff, wrow, mask, nw, w, acc, aoff):
            """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs, for coverage)."""
            totals = [np.zeros(ct, np.float32) for _ in range(sets)]
            per_pixel = COMPRESS and nw * 64 <= LIST_CAP - unroll
            n = 0
            for i in range(nw):
                o = base + toff[i]
                word = int(np.frombuffer(pk[o:o + 8].tobytes(), np.uint64)[0]) & int(mask[i])
                if not per_pixel:
                    n = 0
                while word:
                    j = (word & -word).bit_length() - 1
                    r = wrow[i] + j * ct
                    totals[(n % unroll) % sets] += w[r:r + ct]
                    word &= word - 1
                    n += 1
            acc[aoff:aoff + ct] = _pairwise(totals, operator.add)

        return gather_py

    @intrinsic
    def gather(typingctx, pk, base, toff, wrow, mask, nw, w, acc, aoff):
        """``acc[aoff:aoff + 8 nv] = Σ`` over words ``i < nw`` of ``pk[base + toff[i]:+8] & mask[i]``
        (a little-endian uint64) and its set bits ``j`` of ``w[wrow[i] + j * 8 nv:+8 nv]``.

        The sums are ``<16 x float>`` (even ``nv``) or ``<8 x float>`` values kept in registers
        across the whole bit walk (an array accumulator would be reloaded and stored per active
        input).
        """
        return types.void(pk, base, toff, wrow, mask, nw, w, acc, aoff), _gather_codegen(nv, unroll, sets, COMPRESS)

    return gather


_gather1, _gather2, _gather4, _gather8 = (_make_gather(nv) for nv in VECTORS)


@numba.njit(cache=True, inline="always")
def _gather_sum(nv, pk, base, toff, wrow, mask, nw, w, acc, aoff):
    """Receptive-field sum of one output pixel into ``acc[aoff:aoff + 8 nv]`` (``nv`` in VECTORS)."""
    if nv == 1:
        _gather1(pk, base, toff, wrow, mask, nw, w, acc, aoff)
    elif nv == 2:
        _gather2(pk, base, toff, wrow, mask, nw, w, acc, aoff)
    elif nv == 4:
        _gather4(pk, base, toff, wrow, mask, nw, w, acc, aoff)
    else:
        _gather8(pk, base, toff, wrow, mask, nw, w, acc, aoff)


def _gather_if_codegen(context, builder, sig, args):
    """``_gather_codegen(nv, ..., neuron=True)`` for each ``nv`` in VECTORS, chosen by a switch on
    the first argument (one intrinsic, not an inlined Python dispatch: Numba's reference-count
    pruning left one incref/decref pair per array argument per pixel there)."""
    inner = signature(sig.return_type, *sig.args[1:])
    nv = context.cast(builder, args[0], sig.args[0], types.int64)
    return _switch_nv(builder, nv, lambda n: _gather_codegen(n, *WALK[n], COMPRESS, neuron=True)(
        context, builder, inner, args[1:]))


def _if_py(acc, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff, nbytes, flags, vr, ct):
    """Python twin of ``_if_tail`` (NUMBA_DISABLE_JIT runs): the IF update of one pixel's sums."""
    x = acc + bi[:ct]
    if flags & IF_RES:
        if flags & IF_RESBITS:
            r = np.unpackbits(rr[roff:roff + ct // 8], bitorder="little").astype(np.float32)
        else:
            r = rr[roff:roff + ct].astype(np.float32)
        term = sc[:ct] * r
        x = x + (sb[:ct] + term if flags & IF_SB else term)
    elif flags & IF_SB:
        x = x + sb[:ct]
    vi = vl[voff:voff + ct] + x
    spk = vi >= th[:ct]
    vl[voff:voff + ct] = np.where(spk, np.float32(vr), vi) if flags & IF_ZERO else vi - np.where(
        spk, th[:ct], np.float32(0))
    sp[voff:voff + ct] = spk
    if flags & IF_KEEP:
        kept[koff:koff + nbytes] = np.packbits(spk, bitorder="little")[:nbytes]
    return np.uint64(spk.sum())


# independent sets of sums per output pixel of the column kernel, per nv (3 pixels' sums are
# live: 3 * sets * nv / 2 zmm, at most 24 of AVX-512's 32)
COLUMN_SETS = {1: 4, 2: 4, 4: 4, 8: 2}
# whether 3x3 stride-1 layers take the column kernel (off: the per-pixel gather for every layer)
COLUMN = True


def _column_codegen(nv: int, sets: int):
    """LLVM IR of ``_column_if`` for ``ct = 8 * nv`` channels: a whole output row of a 3x3,
    stride-1 conv, sums and IF update.

    The row's input columns are walked left to right. Column ``c`` (its three kernel rows, all
    channels: the words of ``toff``/``wrow``/``mask`` from ``base + c * Cb``) is compressed into
    one list of active inputs; entry ``e`` of the weight (``[3 * 8 * Cb + 1, 3, ct]``, kernel
    row and channel, then the three kernel columns) holds the input's three weight rows, added
    into the sums of output pixels ``c`` (kx = 0), ``c - 1`` (kx = 1) and ``c - 2`` (kx = 2),
    all in registers. One list and one exit of the add loop serve three output pixels, and one
    16-bit entry load serves three vector adds (the per-pixel gather loads one entry per add).
    Input ``n`` of a column's list goes into set ``n % sets`` of each of the three pixels; the
    list is padded to a whole trip with the zero entry. After column ``c`` the sums of pixel
    ``c - 2`` are complete: pairwise over the sets, then ``_if_tail`` at that pixel's offsets
    (``voff + ox * ct``, ``roff + ox * rstep``, ``koff + ox * kstep``), and the three pixels'
    sums move down one place. Returns the row's spike count.
    """
    i64, i16 = ir.IntType(64), ir.IntType(16)
    lw = 16 if nv % 2 == 0 else 8
    nvec = 8 * nv // lw
    ct = 8 * nv
    vt = ir.VectorType(ir.FloatType(), lw)

    def codegen(context, builder, sig, args):
        pk, toff, wrow, mask, w = _word_arrays(context, builder, sig, args)
        base, nw, voff, roff, koff = (context.cast(builder, args[i], sig.args[i], types.int64)
                                      for i in (1, 5, 8, 14, 17))
        rstep, kstep, Wo, Cb = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (21, 22, 23, 24))
        zero_entry = builder.sub(cgutils.unpack_tuple(builder, w.shape, 1)[0], ir.Constant(i64, 3 * ct))
        zero_idx = builder.trunc(builder.lshr(zero_entry, ir.Constant(i64, 1)), i16)
        fzero = ir.Constant(vt, [0.0] * lw)
        # sums[pos][set][k]: pos 0, 1, 2 = output pixels c, c - 1, c - 2 (allocas: mem2reg)
        sums = [[[cgutils.alloca_once_value(builder, fzero) for _ in range(nvec)] for _ in range(sets)]
                for _ in range(3)]
        lst = cgutils.alloca_once(builder, i16, size=LIST_CAP + 32)
        count = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))
        bytes_ = builder.bitcast(pk.data, ir.IntType(8).as_pointer())
        with cgutils.for_range(builder, builder.add(Wo, ir.Constant(i64, 2))) as col:
            c = col.index
            cbase = builder.add(base, builder.mul(c, Cb))

            def word_at(i):
                p = builder.gep(bytes_, [builder.add(cbase, builder.load(builder.gep(toff.data, [i])))])
                word = builder.load(builder.bitcast(p, i64.as_pointer()), align=1)
                return builder.and_(word, builder.load(builder.gep(mask.data, [i])))

            def rows_merged(_):
                # at most 16 channels (Cb <= 2): the column's three kernel rows of 8 Cb bits
                # side by side in one word, bit ky * 8 Cb + ci (= the entry), compressed once
                word = word_at(ir.Constant(i64, 0))
                for ky in (1, 2):
                    shift = builder.mul(Cb, ir.Constant(i64, 8 * ky))
                    word = builder.or_(word, builder.shl(word_at(ir.Constant(i64, ky)), shift))
                return word

            # entries: offset / 2 (floats), read as a byte offset / 8 (x86's scaled index)
            n_var = cgutils.alloca_once(builder, i64)
            one = ir.Constant(i64, 1)
            with builder.if_else(builder.icmp_unsigned("<=", Cb, ir.Constant(i64, 2))) as (merged, per_row):
                with merged:
                    builder.store(_compress_list(builder, lst, rows_merged, wrow, mask, one, one, 12 * nv,
                                                 upper=builder.icmp_unsigned("==", Cb, ir.Constant(i64, 2))), n_var)
                with per_row:
                    builder.store(_compress_list(builder, lst, word_at, wrow, mask, nw, one, 12 * nv), n_var)
            n = builder.load(n_var)
            _pad_list(builder, lst, n, zero_idx, sets)
            trips = builder.udiv(builder.add(n, ir.Constant(i64, sets - 1)), ir.Constant(i64, sets))
            with cgutils.for_range(builder, trips) as loop:
                first = builder.mul(loop.index, ir.Constant(i64, sets))
                for u in range(sets):
                    idx = builder.load(builder.gep(lst, [builder.add(first, ir.Constant(i64, u))]))
                    row = builder.shl(builder.zext(idx, i64), ir.Constant(i64, 1))
                    for pos in range(3):
                        for k in range(nvec):
                            src = builder.gep(w.data, [builder.add(row, ir.Constant(i64, pos * ct + lw * k))])
                            val = builder.load(builder.bitcast(src, vt.as_pointer()), align=4)
                            acc = sums[pos][u][k]
                            builder.store(builder.fadd(builder.load(acc), val), acc)
            with builder.if_then(builder.icmp_unsigned(">=", c, ir.Constant(i64, 2))):
                ox = builder.sub(c, ir.Constant(i64, 2))
                totals = [_pairwise([builder.load(sums[2][m][k]) for m in range(sets)], builder.fadd)
                          for k in range(nvec)]
                offsets = (builder.add(voff, builder.mul(ox, ir.Constant(i64, ct))),
                           builder.add(roff, builder.mul(ox, rstep)), builder.add(koff, builder.mul(ox, kstep)))
                spikes = _if_tail(context, builder, sig, args, totals, lw, offsets)
                builder.store(builder.add(builder.load(count), spikes), count)
            for m in range(sets):
                for k in range(nvec):
                    builder.store(builder.load(sums[1][m][k]), sums[2][m][k])
                    builder.store(builder.load(sums[0][m][k]), sums[1][m][k])
                    builder.store(fzero, sums[0][m][k])
        return builder.load(count)

    return codegen


def _switch_nv(builder, nv, make):
    """IR: ``make(n)`` (which emits the code for ``nv == n`` and returns an i64) for each ``n``
    in VECTORS, chosen by a switch on the i64 ``nv``; returns the result of the one that ran."""
    result = cgutils.alloca_once(builder, ir.IntType(64))
    done = builder.append_basic_block("nv.done")
    blocks = {n: builder.append_basic_block(f"nv{n}") for n in VECTORS}
    switch = builder.switch(nv, blocks[VECTORS[-1]])
    for n, block in blocks.items():
        if n != VECTORS[-1]:
            switch.add_case(ir.Constant(ir.IntType(64), n), block)
        builder.position_at_end(block)
        builder.store(make(n), result)
        builder.branch(done)
    builder.position_at_end(done)
    return builder.load(result)


def _column_if_codegen(context, builder, sig, args):
    """``_column_codegen(nv, COLUMN_SETS[nv])`` for each ``nv`` in VECTORS, by a switch on the
    first argument (as ``_gather_if_codegen``)."""
    inner = signature(sig.return_type, *sig.args[1:])
    nv = context.cast(builder, args[0], sig.args[0], types.int64)
    return _switch_nv(builder, nv, lambda n: _column_codegen(n, COLUMN_SETS[n])(context, builder, inner, args[1:]))


if numba.config.DISABLE_JIT:
    def _gather_if(nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff, nbytes,
                   flags, vr):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
        ct = 8 * nv
        acc = np.zeros(ct, np.float32)
        (_gather1, _gather2, _gather4, _gather8)[VECTORS.index(nv)](pk, base, toff, wrow, mask, nw, w, acc, 0)
        return _if_py(acc, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff, nbytes, flags, vr, ct)

    def _column_if(nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff, nbytes,
                   flags, vr, rstep, kstep, Wo, Cb):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs), in its summation order."""
        ct, sets = 8 * nv, COLUMN_SETS[nv]
        sums = [[np.zeros(ct, np.float32) for _ in range(sets)] for _ in range(3)]
        count = np.uint64(0)
        for c in range(Wo + 2):
            n = 0
            for i in range(nw):
                o = base + c * Cb + toff[i]
                word = int(np.frombuffer(pk[o:o + 8].tobytes(), np.uint64)[0]) & int(mask[i])
                while word:
                    e = wrow[i] + ((word & -word).bit_length() - 1) * 3 * ct
                    for pos in range(3):
                        sums[pos][n % sets] += w[e + pos * ct:e + (pos + 1) * ct]
                    word &= word - 1
                    n += 1
            if c >= 2:
                ox = c - 2
                count += _if_py(_pairwise(sums[2], operator.add), vl, voff + ox * ct, th, bi, sc, sb, rr,
                                roff + ox * rstep, sp, kept, koff + ox * kstep, nbytes, flags, vr, ct)
            sums = [[np.zeros(ct, np.float32) for _ in range(sets)], sums[0], sums[1]]
        return count
else:
    @intrinsic
    def _gather_if(typingctx, nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept,
                   koff, nbytes, flags, vr):
        """Receptive-field sum of one output pixel (``gather``'s, not stored) and its IF update
        (``_if_tail``) for ``ct = 8 nv`` channels (``nv`` in VECTORS); returns its spike count."""
        sig = types.uint64(nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff,
                           nbytes, flags, vr)
        return sig, _gather_if_codegen

    @intrinsic
    def _column_if(typingctx, nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept,
                   koff, nbytes, flags, vr, rstep, kstep, Wo, Cb):
        """Sums and IF update of a whole output row of a 3x3 stride-1 conv (``_column_codegen``)
        for ``ct = 8 nv`` channels; the arguments of ``_gather_if`` (``base``, ``voff``, ``roff``,
        ``koff`` those of the row's first pixel, the words those of one input column) and the
        steps of ``roff`` and ``koff`` per pixel, the row's width and the input's bytes per
        pixel. Returns the row's spike count."""
        sig = types.uint64(nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff,
                           nbytes, flags, vr, rstep, kstep, Wo, Cb)
        return sig, _column_if_codegen


# border of the bits a neuron output is kept in (see _Packed): a 3x3 conv with padding 1 reads
# them as they are, a 1x1 conv with padding 0 from one pixel in
KEEP_PAD = 1
# whether neuron outputs keep their bits at all (off: every conv packs its input itself)
KEEP = True


class _Packed(NamedTuple):
    """A neuron output's spikes as bits, kept for the layer that reads it next."""

    ref: weakref.ref  # the output tensor (the entry dies with it)
    version: int  # its version counter when written
    pk: np.ndarray  # [T, B, (H + 2 KEEP_PAD) * (W + 2 KEEP_PAD) * Cb + 8] uint8, _pack's layout
    count: int  # spikes in it
    sample: np.ndarray  # flat positions of the output checked before reuse
    values: np.ndarray  # the output's values there when written
    written: bool = True  # False: the spikes are only in pk (bits_only), the tensor holds garbage


# kept bits of live outputs: (data_ptr, shape, dtype) -> _Packed
_kept: dict = {}
_kept_lock = threading.RLock()  # reentrant: a dying output's callback may run under it
# outputs are checked at this many evenly spaced positions before their bits are reused
KEEP_SAMPLE = 64


def _flat(t: torch.Tensor) -> np.ndarray:
    """``t``'s elements as a flat numpy view (bool as uint8, bfloat16's bits as int16)."""
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    elif t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().reshape(-1)


def _key(t: torch.Tensor, shape: tuple | None = None) -> tuple:
    """Where a kept entry is filed: address, shape, dtype (bool as uint8: the ops read a bool
    spike tensor through its uint8 view)."""
    return (t.data_ptr(), tuple(t.shape) if shape is None else tuple(shape),
            torch.uint8 if t.dtype == torch.bool else t.dtype)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit (a NaN in an unwritten output equals itself)."""
    return np.array_equal(a.view(np.uint8), b.view(np.uint8))


@functools.lru_cache(maxsize=64)
def _sample_at(n: int) -> np.ndarray:
    """KEEP_SAMPLE evenly spaced positions of ``n`` elements (fewer when n is smaller), read-only."""
    pos = np.linspace(0, n - 1, min(KEEP_SAMPLE, n)).astype(np.int64)
    pos.flags.writeable = False
    return pos


def _keep(out: torch.Tensor, pk: np.ndarray, count: int, written: bool = True) -> None:
    """Remember ``pk`` (the bits of the spikes just written to ``out``, or, ``written=False``,
    of the spikes ``out`` stands for without holding them: see bits_only) until ``out`` dies."""
    if out.is_inference() or out.device.type != "cpu" or not out.is_contiguous():
        return  # inference tensors have no version counter: a later write could not be seen
    key = _key(out)
    flat = _flat(out)
    sample = _sample_at(flat.shape[0])

    def drop(ref, key=key):
        with _kept_lock:
            if key in _kept and _kept[key].ref is ref:
                del _kept[key]

    with _kept_lock:
        _kept[key] = _Packed(weakref.ref(out, drop), out._version, pk, count, sample, flat[sample].copy(), written)


# per thread: whether gather() leaves neuron outputs unwritten, their spikes only kept as bits
_bits_only = _checks.ThreadSetting(False)


# output dtypes whose readers take the tensor as it is (others are converted to float32
# first, a new tensor with no bits): only these are left unwritten under bits_only
BITS_ONLY_DTYPES = (torch.uint8, torch.bool, torch.float32)


def bits_only(on: bool = True):
    """Within this context (this thread), a spiking conv run by the gather kernel (or the IF
    of a constant current, ``if_scan_kept``) whose uint8, bool or float32 output keeps its
    bits does not write the output tensor: the spikes exist only as the kept bits
    (``recall``), the tensor's memory is left as allocated (garbage). For a caller that knows
    every reader of the output is a spiking conv of this backend or the residual of one
    (sresnet's executor): the gather kernel takes the bits (input with padding <= KEEP_PAD,
    residual of the output's shape); any other read of the tensor or of a view of it writes it
    from the bits first (``materialize``: the dense path, wider padding, other backends,
    ``spikekernels.count_spikes`` of a view, and every op's input check through ``guard``).
    Skips the transpose of every step's spikes to ``[Cout, H'W']``. ``on=False`` turns it
    off inside (``spike_linear``: its output is a reshaped view, which cannot keep bits).
    """
    return _bits_only(on)


def guard(t: torch.Tensor, exact_ok: bool = False) -> None:
    """Write every unwritten (``bits_only``) output that shares memory with ``t`` from its bits,
    before something reads ``t`` as a tensor. ``exact_ok``: not when ``t`` is that output itself
    (same memory, shape and dtype), whose reader takes its bits."""
    if not _kept or not isinstance(t, torch.Tensor) or t.device.type != "cpu":
        return
    with _kept_lock:
        pending = [(k, e) for k, e in _kept.items() if not e.written]
    if not pending:
        return
    storage = t.untyped_storage().data_ptr()
    # (an expand of a 1-step slice has the output's address and shape, but not its strides)
    key = _key(t) if exact_ok and t.is_contiguous() else None
    for k, e in pending:
        orig = e.ref()
        if orig is None or orig.untyped_storage().data_ptr() != storage or k == key:
            continue
        materialize(orig, e)


@numba.njit(parallel=True, cache=True)
def _unpack(pk, out, H, W, Cb, Wk):
    """Bits ``pk [T * B, (H + 2 KEEP_PAD) * Wk * Cb + 8]`` -> spikes ``out [T * B, C, H * W]`` (0/1)."""
    TB, C, _ = out.shape
    for item in numba.prange(TB):
        src = pk[item]
        dst = out[item]
        for c in range(C):
            g = c // 8
            bit = np.uint8(1 << (c % 8))
            for y in range(H):
                o = ((y + KEEP_PAD) * Wk + KEEP_PAD) * Cb + g
                for x in range(W):
                    dst[c, y * W + x] = 1 if src[o + x * Cb] & bit else 0


def materialize(s: torch.Tensor, hit: _Packed | None = None, shape: tuple | None = None) -> None:
    """Write the spikes of a ``bits_only`` output into its tensor ``s`` (or a reshaped view of
    it: ``shape``, the output's) from its kept bits; a no-op for a tensor that holds its spikes
    or has none kept. Afterwards its entry is an ordinary one."""
    hit = recall(s, shape) if hit is None else hit
    orig = None if hit is None else hit.ref()
    if hit is None or hit.written or orig is None:
        return
    T, B, C, H, W = orig.shape
    _unpack(hit.pk.reshape(T * B, -1), _flat(orig).reshape(T * B, C, H * W), H, W, (C + 7) // 8, W + 2 * KEEP_PAD)
    _keep(orig, hit.pk, hit.count)


def recall(s: torch.Tensor, shape: tuple | None = None) -> _Packed | None:
    """The kept bits of ``s`` if ``s`` is (a view with the same shape of) a neuron output this
    module wrote and nothing changed it since: same memory, version counter unchanged (every
    in-place torch op bumps it) and its values at KEEP_SAMPLE positions unchanged (catches most
    writes that bypass the counter: ``.data``, numpy views). ``shape``: the output's shape
    when ``s`` is a reshaped view of it (contiguous, same first element)."""
    if not _kept or s.device.type != "cpu" or s.is_inference() or not s.is_contiguous():
        return None
    shape = tuple(s.shape) if shape is None else tuple(shape)
    if math.prod(shape) != s.numel():
        return None
    with _kept_lock:
        hit = _kept.get(_key(s, shape))
    if hit is None or hit.ref() is None or hit.version != s._version:
        return None
    if not _same_bits(_flat(s)[hit.sample], hit.values):
        return None
    return hit


def spike_count(s: torch.Tensor) -> int | None:
    """Spikes in ``s`` as counted by the kernel that wrote it, or None if not known (see recall)."""
    hit = recall(s)
    return None if hit is None else hit.count


# 8 bytes of 0/1 (little-endian uint64) -> their bits in the top byte; -> their sum in the top byte
_PACK8 = np.uint64(0x0102040810204080)
_SUM8 = np.uint64(0x0101010101010101)


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _if_kept_kernel(x, T, thr, v, out, fast_out, write_out, reset_zero, v_reset, sb, has_sb, kept,
                    n_kept, spread, W):
    """IF over a current constant in time ``x [B, C, P]`` (``P = H * W``) for ``T`` steps, its
    spikes kept as bits (``kept [T, B, bytes]``, ``_pack``'s layout with a border of
    KEEP_PAD) and, with ``write_out``, written to ``out [T, B, C, P]``.

    The float32 operations of ``if_scan._if_scan_kernel`` in its order: ``x_t = x + β_t``
    (``sb [T, C]``, ``has_sb``), ``v = v + x_t``, ``s = v >= θ``, the reset. One work item per
    image: the current and the membrane ``v [B * C * P]`` go channels-last once (``[P, ct]``,
    ``ct`` = C rounded up to 8, the lanes past C never fire), then per step and pixel the IF
    of its ``ct`` channels and its bytes of bits (8 spike bytes -> one byte of bits by one
    multiply), then the step's spikes transposed to ``out`` as the gather kernel does.
    """
    B, C, P = x.shape
    Cb = (C + 7) // 8
    ct = 8 * Cb
    nv = Cb
    H = P // W
    Wk = W + 2 * KEEP_PAD
    n_thr = thr.shape[0]
    n_sb = sb.shape[1]
    vr = np.float32(v_reset)
    zero = np.float32(0.0)
    for b in numba.prange(B):
        xl = np.zeros(P * ct, np.float32)
        vl = np.zeros(P * ct, np.float32)
        th = np.ones(ct, np.float32)
        sbt = np.zeros(ct, np.float32)
        spw = np.zeros(P * nv, np.uint64)
        sp = spw.view(np.uint8)
        _membrane_in(x.reshape(-1), xl, b, C, 0, C, ct, P)
        _membrane_in(v, vl, b, C, 0, C, ct, P)
        for c in range(C):
            th[c] = thr[c % n_thr]
        n = np.uint64(0)
        outf = out.reshape(out.size)
        for t in range(T):
            if has_sb:
                for c in range(C):
                    sbt[c] = sb[t, c % n_sb]
            kt = kept[t, b]
            for y in range(H):
                for xx in range(W):
                    o = (y * W + xx) * ct
                    for c in range(ct):
                        xs = xl[o + c] + sbt[c] if has_sb else xl[o + c]
                        vi = vl[o + c] + xs
                        s = vi >= th[c]
                        sp[o + c] = s
                        if reset_zero:
                            vl[o + c] = vr if s else vi
                        else:
                            vl[o + c] = vi - (th[c] if s else zero)
                    k = ((y + KEEP_PAD) * Wk + xx + KEEP_PAD) * Cb
                    for g in range(Cb):
                        w8 = spw[(y * W + xx) * nv + g]
                        kt[k + g] = np.uint8((w8 * _PACK8) >> np.uint64(56))
                        n += (w8 * _SUM8) >> np.uint64(56)
            if write_out:
                _spikes_out(spw, ct, C, P, outf, (t * B + b) * C * P, 0, spread, fast_out)
        _membrane_out(vl, v, b, C, 0, C, ct, P)
        n_kept[b] = n


def if_scan_kept(x: torch.Tensor, thr: torch.Tensor, v: torch.Tensor, out: torch.Tensor, reset_zero: bool,
                 v_reset: float, step_bias: torch.Tensor | None) -> bool:
    """``if_scan`` of a current constant in time ``x [1, B, C, H, W]`` (float32) into the spikes
    ``out [T, B, C, H, W]`` and the membrane ``v`` (float32, ``B * C * H * W``, updated), the
    spikes also kept as bits for the convs that read them (as ``gather`` keeps its outputs;
    under ``bits_only`` the tensor is not written). False (nothing done) when ``out`` cannot
    keep bits (KEEP off, inference mode, not contiguous or not 5-D); the caller then runs
    the plain kernel. A converted network's stem: its spikes feed a conv and a shortcut.
    """
    if not KEEP or out.dim() != 5 or x.dim() != 5 or x.shape[0] != 1 or out.is_inference() or not out.is_contiguous():
        return False
    T, B, C, H, W = out.shape
    buf, stage = spike_buffer(out)
    out4 = buf.reshape(T, B, C, H * W)
    fast_out = spikes_out_mode(out4, True)
    write = stage is not None or out.dtype not in BITS_ONLY_DTYPES or not _bits_only.get()
    bits = np.zeros((T, B, (H + 2 * KEEP_PAD) * (W + 2 * KEEP_PAD) * -(-C // 8) + 8), np.uint8)
    n_kept = np.zeros(B, np.uint64)
    sb = np.zeros((1, 1), np.float32) if step_bias is None else step_bias.numpy()
    xs = x.detach().to(torch.float32).contiguous().numpy().reshape(B, C, H * W)
    _if_kept_kernel(xs, T, thr.numpy(), v.numpy().reshape(-1), out4, fast_out, write, reset_zero,
                    v_reset, sb, step_bias is not None, bits, n_kept, _SPREAD, W)
    if stage is not None:
        out.copy_(stage)
    _keep(out, bits, int(n_kept.sum()), write)
    return True


# _pack_bytes reads n pixels' spike bytes as one word: the word type for n (the largest n of
# these that divides H * W)
_PIXEL_WORDS = {8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}
# words of n pixels per channel from which _pack_bytes's planes (the loop over a channel's words
# inside, vectorized) beat _pack_words (the loop over a group's 8 channels inside, no index
# checks): ResNet-18's 8x8 to 2x2 maps (up to 8 words a channel) ran 1.2-1.6x faster as words
# (1x1: 4.3x), 16x16, 14x14 and 7x7 (32-49 words) 1.3-2.3x slower (bench/RESULTS.md "Session 13")
PLANES_WORDS = 16


def _pack(s: np.ndarray, pk: np.ndarray, H: int, W: int, Cb: int, Wp: int, ph: int, pw: int) -> bool:
    """Spikes ``s [T * B, Cin, H * W]`` (uint8 or float32) -> bits ``pk [T * B, Hp * Wp * Cb + 8]``
    (see module doc; ``Wp = W + 2 pw``, the border of ``ph`` rows and ``pw`` columns zeros).

    Returns True when some input is neither 0 nor 1 (then the bits are not the input).
    Per (step, image) and group of 8 channels, the 8 channels' bits of each pixel are OR-ed
    into one byte, which goes to byte ``((y + ph) * Wp + x + pw) * Cb + group``. uint8 spikes
    are read as words of 8 (or 4, 2, 1) pixels, so one shift and OR places ``n`` pixels' bits
    of a channel; with PLANES_WORDS or more words per channel the loop over words is the inner
    one (``_pack_bytes``: it vectorizes), with fewer (ResNet-18's layers) the loop over a
    group's 8 channels is (``_pack_words``), so no loop runs a handful of trips per channel.
    float32 spikes: planes of bytes over the pixels (4 or more), else pixel by pixel.
    Against session 12's forms in one process (bench/RESULTS.md "Session 13"): uint8 1.2-1.6x
    on the 8x8 to 2x2 maps, 4.3x at 512 channels 1x1 (8 channel bytes -> 8 bits by one
    multiply); session 12 against session 11: uint8 1.7-2.1x on 16-128 channels, float32 4.9x
    at 1x1, 1.2-1.5x on 16-256 channels.
    """
    TB, Cin, HW = s.shape
    doff, n, ones = _pixel_words(H, W, Cb, Wp, ph, pw)
    if s.dtype == np.uint8:
        s = np.ascontiguousarray(s)
        if HW // n < PLANES_WORDS:
            return _pack_words(s.reshape(TB, Cin * HW), pk, Cin, HW, Cb, doff, n, ones)
        return _pack_bytes(s.view(_PIXEL_WORDS[n]), pk, Cb, doff, ones)
    if HW == 1 or (HW <= FLOAT_WORDS_PIXELS and HW % 4 == 0):
        s = np.ascontiguousarray(s)
        return _pack_float_words(s.reshape(TB, Cin * HW), pk, Cin, HW, Cb, doff, 8 if HW % 8 == 0 else 4, _SPREAD)
    return _pack_floats(s, pk, Cb, doff)


@functools.lru_cache(maxsize=256)
def _pixel_words(H: int, W: int, Cb: int, Wp: int, ph: int, pw: int) -> tuple[np.ndarray, int, np.uint64]:
    """``_pack``'s plan for an ``H x W`` map: ``doff`` (each pixel's byte in a row of bits;
    cached, not writable), ``n`` (pixels a uint8 word holds: 8, 4, 2 or 1, the most that
    divides ``H W``) and ``ones`` (the word of ``n`` bytes 1). uint8 spikes go through
    ``_pack_words`` when fewer than PLANES_WORDS words make a channel row."""
    y, x = np.divmod(np.arange(H * W, dtype=np.int64), W)
    n = next(n for n in _PIXEL_WORDS if (H * W) % n == 0)
    doff = ((y + ph) * Wp + pw + x) * Cb
    doff.flags.writeable = False
    return doff, n, np.uint64(int.from_bytes(b"\x01" * n, "little"))


@numba.njit(parallel=True, cache=True)
def _pack_bytes(sw, pk, Cb, doff, ones):
    """``_pack`` of uint8 spikes read as words ``sw [T * B, Cin, H * W / n]`` of ``n`` pixels'
    bytes (``n`` = the word's size), a plane of words per group of 8 channels: byte ``j`` of
    the OR of channel ``8 g + k``'s word shifted by ``k`` is pixel ``j``'s byte of group
    ``g``; it goes to ``doff[pixel] + g``. The loop over a channel's words is inside (it
    vectorizes). ``ones``: the word with every byte 1 (a value other than 0/1 sets a bit
    outside it)."""
    TB, Cin, nw = sw.shape
    n = sw.itemsize
    bad = np.zeros(TB, np.uint8)
    for item in numba.prange(TB):
        dst = pk[item]
        dst[:] = 0
        big = np.uint64(0)
        plane = np.empty(nw, sw.dtype)
        planeb = plane.view(np.uint8)
        for g in range(Cb):
            src = sw[item, 8 * g]
            for i in range(nw):
                plane[i] = src[i]
                big |= src[i]
            for k in range(1, min(8, Cin - 8 * g)):
                src = sw[item, 8 * g + k]
                for i in range(nw):
                    word = src[i]
                    big |= word
                    plane[i] |= word << k
            for p in range(nw * n):
                dst[doff[p] + g] = planeb[p]
        bad[item] = (big & ~ones) != np.uint64(0)
    return bad.any()


@numba.njit(cache=True, inline="always")
def _load_pixels(src, off, n):
    """``n`` (8, 4, 2 or 1) bytes of ``src`` from ``off`` as a uint64."""
    if n == 8:
        return _load_u64(src, off)
    if n == 4:
        return _load_u32(src, off)
    if n == 2:
        return _load_u16(src, off)
    return _load_u8(src, off)


@numba.njit(parallel=True, cache=True)
def _pack_words(s8, pk, Cin, HW, Cb, doff, n, ones):
    """``_pack`` of uint8 spikes ``s8 [T * B, Cin * H * W]`` on small maps, row by row
    (``_words_row``); True when some value is not 0/1."""
    TB = s8.shape[0]
    bad = np.zeros(TB, np.uint8)
    for item in numba.prange(TB):
        bad[item] = _words_row(s8[item], pk[item], Cin, HW, Cb, doff, n, ones)
    return bad.any()


@numba.njit(cache=True, inline="always")
def _words_row(src, dst, Cin, HW, Cb, doff, n, ones):
    """One row (a step of an image) of ``_pack_words``: uint8 spikes ``src [Cin * H * W]`` ->
    bits ``dst`` (zeroed first); True when a value is not 0/1. The loop over a group's 8
    channels inside: per group and word of ``n`` pixels, the OR of the 8 channels' words
    shifted by the channel is the ``n`` pixels' bytes of the group. Loads at byte offsets
    (``_load_u64`` and kin: no index arithmetic or checks per word, a whole group's 8 loads
    unrolled). A 1x1 map has its channels in a row: 8 channel bytes -> their bits by one
    multiply (``_PACK8``). ``ones``: as ``_pack_bytes``. (Inlined, on row views, as the loop
    body it was: the same function on flat arrays with offsets ran 10-15% slower.)"""
    full = Cin // 8
    nw = HW // n
    dst[:] = 0
    big = np.uint64(0)
    if HW == 1:
        d0 = doff[0]
        for g in range(full):
            w = _load_u64(src, 8 * g)
            big |= w
            dst[d0 + g] = np.uint8((w * _PACK8) >> np.uint64(56))
        if full < Cb:
            m = np.uint64(0)
            for k in range(Cin - 8 * full):
                w = _load_u8(src, 8 * full + k)
                big |= w
                m |= w << np.uint64(k)
            dst[d0 + full] = np.uint8(m)
        # 8 channel bytes a word here, not n = 1 pixel's
        return (big & ~_SUM8) != np.uint64(0)
    for g in range(Cb):
        kn = min(8, Cin - 8 * g)
        for i in range(nw):
            m = np.uint64(0)
            o = 8 * g * HW + i * n
            if kn == 8:
                for k in range(8):
                    w = _load_pixels(src, o + k * HW, n)
                    big |= w
                    m |= w << np.uint64(k)
            else:
                for k in range(kn):
                    w = _load_pixels(src, o + k * HW, n)
                    big |= w
                    m |= w << np.uint64(k)
            for j in range(n):
                dst[doff[i * n + j] + g] = np.uint8((m >> np.uint64(8 * j)) & np.uint64(0xFF))
    return (big & ~ones) != np.uint64(0)


# 1x1 stride-2 convs on the maps of PICKED (H, W, sy, sx; ResNet-18's 128->256 and 256->512
# shortcuts on CIFAR) pack only the pixels they read (_pack_picked; value: those pixels,
# row-major in the map). PICK off: the whole map, as every other layer
PICK = True
PICKED = {(4, 4, 2, 2): (0, 2, 8, 10), (2, 2, 2, 2): (0,)}
# the same as int64 arrays (not writable), as the pack takes them
_PICKED_PX = {key: np.array(px, np.int64) for key, px in PICKED.items()}
for _px in _PICKED_PX.values():
    _px.flags.writeable = False


def _picked_codegen(HW: int, pixels: tuple):
    n_in, n_out = 8 * HW, 8 * len(pixels)

    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        floats = isinstance(sig.args[0].dtype, types.Float)
        elem = ir.FloatType() if floats else ir.IntType(8)
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        off = context.cast(builder, args[1], sig.args[1], types.intp)
        vt = ir.VectorType(elem, n_in)
        block = builder.load(builder.bitcast(builder.gep(arr.data, [off]), vt.as_pointer()), align=1)
        # pixel-major: element 8 j + k is channel k of picked pixel j
        mask = [k * HW + q for q in pixels for k in range(8)]
        picked = builder.shuffle_vector(block, block, ir.Constant(ir.VectorType(i32, n_out), mask))
        zero_out, zero_in = ir.Constant(ir.VectorType(elem, n_out), [0] * n_out), ir.Constant(vt, [0] * n_in)
        one_in = ir.Constant(vt, [1] * n_in)
        if floats:
            # une: NaN counts as nonzero and as neither 0 nor 1, as Python's != does
            nz = builder.fcmp_unordered("!=", picked, zero_out)
            big = builder.and_(builder.fcmp_unordered("!=", block, zero_in), builder.fcmp_unordered("!=", block, one_in))
        else:
            nz = builder.icmp_unsigned("!=", picked, zero_out)
            big = builder.icmp_unsigned(">", block, one_in)
        bits = builder.zext(builder.bitcast(nz, ir.IntType(n_out)), i64)
        # any element of the block (every pixel of the 8 channels) other than 0/1: bit 63
        bad = builder.icmp_unsigned("!=", builder.bitcast(big, ir.IntType(n_in)), ir.Constant(ir.IntType(n_in), 0))
        return builder.or_(bits, builder.shl(builder.zext(bad, i64), ir.Constant(i64, 63)))

    return codegen


def _picked_twin(HW: int, pixels: tuple):
    def picked(arr, off):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
        block = arr[off:off + 8 * HW].reshape(8, HW)
        bits = sum(int(block[k, q] != 0) << (8 * j + k) for j, q in enumerate(pixels) for k in range(8))
        return np.uint64(bits | (int(((block != 0) & (block != 1)).any()) << 63))
    return picked


if numba.config.DISABLE_JIT:
    _picked4, _picked2 = (_picked_twin(H * W, PICKED[(H, W, 2, 2)]) for H, W in ((4, 4), (2, 2)))
else:
    def _picked_intrinsic(HW: int, pixels: tuple):
        @intrinsic
        def picked(typingctx, arr, off):
            """Of the 8 channel rows of ``HW`` pixels (uint8 or float32) at element ``off`` of
            ``arr`` (one vector load): bit ``8 j + k`` set where channel ``k`` of pixel
            ``pixels[j]`` is not 0, bit 63 where any of the ``8 HW`` values is neither 0 nor 1
            (NaN included). One permute picks the pixels, one compare makes their bits."""
            return types.uint64(arr, off), _picked_codegen(HW, pixels)
        return picked

    _picked4, _picked2 = (_picked_intrinsic(H * W, PICKED[(H, W, 2, 2)]) for H, W in ((4, 4), (2, 2)))


@numba.njit(parallel=True, cache=True)
def _pack_picked(s8, pk, Cin, HW, Cb, picked):
    """``_pack`` of uint8 or float32 spikes ``s8 [T * B, Cin * H * W]`` for a 1x1 stride-2 conv
    on a map of PICKED, row by row (``_picked_row``); True when some value is not 0/1."""
    TB = s8.shape[0]
    bad = np.zeros(TB, np.uint8)
    for item in numba.prange(TB):
        bad[item] = _picked_row(s8[item], pk[item], Cin, HW, Cb, picked)
    return bad.any()


@numba.njit(cache=True, inline="always")
def _picked_row(src, dst, Cin, HW, Cb, picked):
    """One row (a step of an image) of ``_pack_picked``: only the pixels the conv reads (``HW``
    16 or 4; ``picked``: the PICKED entry, as an int64 array), into a compact map of ``n_pick
    = len(picked)`` pixels (no border): byte ``j * Cb + g`` of ``dst`` (the rest of ``dst``
    zeroed). A whole group of 8 channels by one intrinsic (``_picked4`` / ``_picked2``: its 8
    rows are one block), a partial last group channel by channel. Every input value is still
    checked to be 0/1 (True: some is not)."""
    full = Cin // 8
    n_pick = picked.shape[0]
    flag = np.uint64(0)
    for g in range(full):
        bits = _picked4(src, 8 * g * HW) if HW == 16 else _picked2(src, 8 * g * HW)
        flag |= bits >> np.uint64(63)
        for j in range(n_pick):
            dst[j * Cb + g] = np.uint8((bits >> np.uint64(8 * j)) & np.uint64(0xFF))
    if full < Cb:
        for j in range(n_pick):
            dst[j * Cb + full] = 0
        for k in range(Cin - 8 * full):
            row = (8 * full + k) * HW
            for i in range(HW):
                val = src[row + i]
                flag |= np.uint64((val != 0) & (val != 1))
            for j in range(n_pick):
                if src[row + picked[j]] != 0:
                    dst[j * Cb + full] |= np.uint8(1 << k)
    dst[n_pick * Cb:] = 0
    return flag != np.uint64(0)


def _float_bits_codegen(lanes: int):
    def codegen(context, builder, sig, args):
        aty, oty = sig.args
        arr = context.make_array(aty)(context, builder, args[0])
        off = context.cast(builder, args[1], oty, types.intp)
        vt = ir.VectorType(ir.FloatType(), lanes)
        x = builder.load(builder.bitcast(builder.gep(arr.data, [off]), vt.as_pointer()), align=4)
        # une: NaN counts as neither 0 nor 1, as Python's != does
        nz = builder.fcmp_unordered("!=", x, ir.Constant(vt, [0.0] * lanes))
        bad = builder.and_(nz, builder.fcmp_unordered("!=", x, ir.Constant(vt, [1.0] * lanes)))
        i64, it = ir.IntType(64), ir.IntType(lanes)
        return builder.or_(builder.zext(builder.bitcast(nz, it), i64),
                           builder.shl(builder.zext(builder.bitcast(bad, it), i64), ir.Constant(i64, 8)))
    return codegen


def _float_bits_twin(lanes: int):
    def float_bits(arr, off):
        """Python twin of the intrinsic (NUMBA_DISABLE_JIT runs)."""
        x = arr[off:off + lanes]
        nz = x != 0
        bad = nz & (x != 1)
        return np.uint64(sum(int(v) << i for i, v in enumerate(nz)) | sum(int(v) << (8 + i) for i, v in enumerate(bad)))
    return float_bits


if numba.config.DISABLE_JIT:
    _float_bits8, _float_bits4 = _float_bits_twin(8), _float_bits_twin(4)
else:
    def _float_bits_intrinsic(lanes: int):
        @intrinsic
        def float_bits(typingctx, arr, off):
            """Of the ``lanes`` float32 ``arr[off:off + lanes]`` (one unaligned vector load, no
            index check): bit ``i`` set where element ``i`` is not 0, bit ``8 + i`` where it is
            neither 0 nor 1 (NaN included)."""
            return types.uint64(arr, off), _float_bits_codegen(lanes)
        return float_bits

    _float_bits8, _float_bits4 = _float_bits_intrinsic(8), _float_bits_intrinsic(4)


# float32 maps of up to this many pixels (a multiple of 4) take _pack_float_words: 1.2x, 1.6x and
# 5.6x faster than the planes of _pack_floats on ResNet-18's 4x4, 2x2 and 1x1 maps, 0.8x on 8x8
# (one process, bench/RESULTS.md "Session 13")
FLOAT_WORDS_PIXELS = 16


@numba.njit(parallel=True, cache=True)
def _pack_float_words(s, pk, Cin, HW, Cb, doff, n, spread):
    """``_pack`` of float32 spikes ``s [T * B, Cin * H * W]`` on small maps (``H * W`` a multiple
    of ``n``, 8 or 4, or 1): per group of 8 channels and ``n`` pixels, each channel's ``n``
    floats are one vector compare (``_float_bits8`` / ``_float_bits4``: their nonzero bits, and
    the bits of values other than 0/1), spread to bytes through ``spread`` (``_SPREAD``) and
    shifted by the channel, so the OR is the ``n`` pixels' bytes of the group. A 1x1 map has
    its 8 channels of a group side by side: one compare is the byte. The loop is
    ``_pack_words``'s with the float32 steps: one kernel for both dtypes with a runtime switch
    ran 1.1-1.6x slower on uint8 maps (the switch stays in the loops), and Numba's literal
    dispatch of the switch cost 0.4 s a call (bench/RESULTS.md "Session 13")."""
    TB = s.shape[0]
    full = Cin // 8
    nw = HW // n
    low = np.uint64((1 << n) - 1)
    bad = np.zeros(TB, np.uint8)
    for item in numba.prange(TB):
        src = s[item]
        dst = pk[item]
        dst[:] = 0
        flag = np.uint64(0)
        if HW == 1:
            d0 = doff[0]
            for g in range(full):
                r = _float_bits8(src, 8 * g)
                flag |= r >> np.uint64(8)
                dst[d0 + g] = np.uint8(r & np.uint64(0xFF))
            byte = np.uint8(0)
            for k in range(Cin - 8 * full):
                val = src[8 * full + k]
                nz = val != 0
                byte |= np.uint8(1 << k) if nz else np.uint8(0)
                flag |= np.uint64(nz & (val != 1))
            if full < Cb:
                dst[d0 + full] = byte
            bad[item] = flag != 0
            continue
        for g in range(Cb):
            kn = min(8, Cin - 8 * g)
            for i in range(nw):
                m = np.uint64(0)
                o = 8 * g * HW + i * n
                for k in range(kn):
                    r = _float_bits8(src, o + k * HW) if n == 8 else _float_bits4(src, o + k * HW)
                    flag |= r >> np.uint64(8)
                    m |= spread[np.int64(r & low)] << np.uint64(k)
                for j in range(n):
                    dst[doff[i * n + j] + g] = np.uint8((m >> np.uint64(8 * j)) & np.uint64(0xFF))
        bad[item] = flag != 0
    return bad.any()


@numba.njit(parallel=True, cache=True)
def _pack_floats(s, pk, Cb, doff):
    """``_pack`` of float32 spikes ``s [T * B, Cin, H * W]``: with 4 or more pixels the 8
    channel planes of a group are OR-ed into a plane of bytes (loops over the pixels with no
    reduction, so they vectorize), else each pixel's byte from its 8 channels."""
    TB, Cin, HW = s.shape
    bad = np.zeros(TB, np.uint8)
    zero = np.uint8(0)
    for item in numba.prange(TB):
        dst = pk[item]
        dst[:] = 0
        if HW >= 4:
            plane = np.empty(HW, np.uint8)
            flags = np.zeros(HW, np.uint8)
            for g in range(Cb):
                plane[:] = 0
                for k in range(min(8, Cin - 8 * g)):
                    src = s[item, 8 * g + k]
                    # a select of uint8 constants, not a shift by k: Numba's shift of small
                    # ints is 64-bit, and LLVM vectorized it 8 lanes at a time (1.3-1.7x)
                    bit = np.uint8(1 << k)
                    for i in range(HW):
                        val = src[i]
                        nz = val != 0
                        plane[i] |= bit if nz else zero
                        flags[i] |= nz & (val != 1)
                for i in range(HW):
                    dst[doff[i] + g] = plane[i]
            bad[item] = flags.max()
        else:
            flag = False
            for i in range(HW):
                for g in range(Cb):
                    byte = np.uint8(0)
                    for k in range(min(8, Cin - 8 * g)):
                        val = s[item, 8 * g + k, i]
                        nz = val != 0
                        byte |= np.uint8(1 << k) if nz else zero
                        flag |= nz & (val != 1)
                    dst[doff[i] + g] = byte
            bad[item] = flag
    return bad.any()


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _column_row(nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff, nbytes,
                flags, vr, rstep, kstep, Wo, Cb):
    """``_column_if`` in a function of its own: compiled once per residual type (two), not
    inlined into every specialization of ``_gather_items`` (its code for the four tile widths
    made each of those compile 1.5x as long)."""
    return _column_if(nv, pk, base, toff, wrow, mask, nw, w, vl, voff, th, bi, sc, sb, rr, roff, sp, kept, koff,
                      nbytes, flags, vr, rstep, kstep, Wo, Cb)


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _gather_items(lo, hi, pk, nv, n_tiles, Wp, Cb, sy, sx, toff, wrow, mask, nws, cls_y, cls_x, wg, Cout, Ho, Wo,
                  bias, thr, rs, v, out, fast_out, spread, reset_zero, v_reset, res, has_res, res_words, fast_res,
                  neuron, sb, has_sb, origin, keep, kept, n_kept, write_out, res_bits, rkept, column, tile_major):
    """Conv + IF of work items ``lo .. hi - 1`` (each an image and a channel tile of ``ct = 8
    nv``), T loop inside.

    One call per thread's run of items, not per item: a call takes a reference count on each
    array argument at entry and returns it at exit, atomic adds that every thread makes on the
    same memory (on ResNet-18's 256->512 1x1 shortcut, 256 items a call, 21 array arguments:
    NRT_incref / NRT_decref held 12% of the samples of a perf profile of the op).

    ``pk [T, B, bytes]`` bits from ``_pack``; ``toff``/``wrow``/``mask`` ``[classes, words]``
    per receptive-field word of a class of output pixels: byte offset from the pixel's corner,
    first weight row (in floats), valid bits; ``nws [classes]`` words per class, pixel (oy,
    ox) in class ``cls_y[oy] * (max(cls_x) + 1) + cls_x[ox]`` (``_tables``);
    ``wg [n_tiles, rows * ct]`` float32 weight rows. Per step and output pixel, with the
    neuron: ``_gather_if`` (sum and IF update, the membrane channels-last in ``vl [P, ct]``,
    the spikes as bytes in ``sp [P, ct]`` and, with ``keep``, as bits in ``kept [T, B,
    bytes]``); per step the spikes go to ``out [T, B, Cout, H'W']`` (``fast_out``: a
    ``_spikes_out`` mode). Without: ``_gather_sum`` of each pixel
    into the channels-last row ``acc [W', ct]``, then the current of the row. A uint8
    residual comes in channels-last once per step through ``res_words`` (``fast_res``), any
    other residual row by row. ``sb [T, Cout]`` (``has_sb``): the per-step bias, spread
    channels-last over a row once per step. ``origin``: byte offset of the first receptive
    field's corner in ``pk``. The spike count goes to ``n_kept [item]``; item ``i`` is image
    ``i // n_tiles``, tile ``i % n_tiles``, or with ``tile_major`` image ``i % B``, tile ``i //
    B`` (TILE_MAJOR_BYTES). ``column`` (a 3x3
    stride-1 conv with the neuron): ``_column_if`` per output row instead of ``_gather_if`` per
    pixel, class 0 of ``toff``/``wrow``/``mask`` the words of one input column, ``wg`` in its
    layout.
    """
    T, B = pk.shape[:2]
    ct = 8 * nv
    P = Ho * Wo
    WC = Wo * ct
    n_cx = cls_x.max() + 1
    # class 0's tables (the column kernel's only ones); the class of the current pixel
    tf0, wr0, mk0, nw0 = toff[0], wrow[0], mask[0], nws[0]
    cls, tf, wr, mk, nw = 0, tf0, wr0, mk0, nw0
    const_res = res.shape[0] == 1
    vr = np.float32(v_reset)
    # the kept bits: pixels of Ck bytes in rows of Wk, this tile's k_bytes of each
    Wk = Wo + 2 * KEEP_PAD
    Ck = (Cout + 7) // 8
    flags = ((IF_RES if has_res else 0) | (IF_SB if has_sb else 0) | (IF_ZERO if reset_zero else 0)
             | (IF_KEEP if keep else 0) | (IF_RESBITS if res_bits else 0))
    # the [T, B] arrays every thread reads or writes go in flat, with a step's offset: a view
    # per step costs an atomic reference count on memory shared by the threads (on a 1x1
    # map, where a step is one pixel, about a quarter of the kernel's time)
    pkf = pk.reshape(pk.size)
    ktf = kept.reshape(kept.size)
    outf = out.reshape(out.size)
    rkf = rkept.reshape(rkept.size)
    # the item's scratch rows, allocated once per run and set as fresh at each item (an
    # allocation per item: malloc, free and Numba's reference counts, 4% of a 1x1 shortcut's
    # profile)
    acc = np.empty(WC, np.float32)
    rr = np.empty(WC, np.float32)
    th = np.empty(WC, np.float32)
    sc = np.empty(WC, np.float32)
    bi = np.empty(WC, np.float32)
    sbr = np.empty(WC, np.float32)
    vl = np.empty(P * ct if neuron else 1, np.float32)
    spw = np.empty(P * nv if neuron else 1, np.uint64)
    sp = spw.view(np.uint8)
    xr = np.empty(1 if neuron else P * ct, np.float32)
    rr8w = np.empty(P * nv if fast_res else 1, np.uint64)
    rr8 = rr8w.view(np.uint8)
    for item in range(lo, hi):
        b, tile = (item % B, item // B) if tile_major else (item // n_tiles, item % n_tiles)
        c0 = tile * ct
        nc = min(ct, Cout - c0)
        acc[:] = 0
        rr[:] = 0
        th[:] = 1
        sc[:] = 0
        bi[:] = 0
        sbr[:] = 0
        vl[:] = 0
        spw[:] = 0
        xr[:] = 0
        rr8w[:] = 0
        _tile_setup(thr, rs, bias, v, vl, b, Cout, c0, nc, ct, Wo, P, th, sc, bi, neuron)
        wt = wg[tile]
        n_out = np.uint64(0)
        k_bytes = (nc + 7) // 8
        out_block = fast_out != OUT_ELEMENTS and nc == ct and block_fits(P, ct)
        # a uint8 residual: its bits (res_bits: the kept bits of the residual, same layout as
        # the output's) or its bytes channels-last
        rsrc = rkf if res_bits else rr8
        for t in range(T):
            tb = t * B + b
            po = tb * pk.shape[2]
            ko = tb * kept.shape[2] if keep else 0
            ro = tb * rkept.shape[2] if res_bits else 0
            tr = 0 if const_res else t
            if fast_res and not res_bits:
                _residual_in(res_words[tr], res[tr], rr8, rr8w, ct, nc, P, b * Cout + c0, spread)
            if has_sb:
                _step_bias_row(sb[t], c0, nc, ct, Wo, sbr)
            for oy in range(Ho):
                cy = cls_y[oy] * n_cx
                if has_res and not fast_res and not res_bits:
                    # indexed, not a view per row or channel (a view is a reference count on the
                    # residual every thread reads)
                    for c in range(nc):
                        r0 = (b * Cout + c0 + c) * P + oy * Wo
                        for ox in range(Wo):
                            rr[ox * ct + c] = np.float32(res[tr, r0 + ox])
                if neuron:
                    # sum and IF per pixel (_if_tail), the spikes' bits straight to the kept layout
                    k_row = ((oy + KEEP_PAD) * Wk + KEEP_PAD) * Ck + c0 // 8
                    if column:
                        base = po + oy * Wp * Cb + origin
                        p = oy * Wo * ct
                        if res_bits or fast_res or not has_res:
                            roff, rstep = (ro + k_row, Ck) if res_bits else (p, ct)
                            n_out += _column_row(nv, pkf, base, tf0, wr0, mk0, nw0, wt, vl, p, th, bi, sc, sbr, rsrc,
                                                 roff, sp, ktf, ko + k_row, k_bytes, flags, vr, rstep, Ck, Wo, Cb)
                        else:
                            n_out += _column_row(nv, pkf, base, tf0, wr0, mk0, nw0, wt, vl, p, th, bi, sc,
                                                 sbr, rr, 0, sp, ktf, ko + k_row, k_bytes, flags, vr, ct, Ck, Wo, Cb)
                        continue
                    for ox in range(Wo):
                        base = po + (oy * sy * Wp + ox * sx) * Cb + origin
                        p = oy * Wo + ox
                        c = cy + cls_x[ox]
                        if c != cls:
                            # the class's tables: views made when the class changes, not per pixel
                            cls, tf, wr, mk, nw = c, toff[c], wrow[c], mask[c], nws[c]
                        if res_bits or fast_res or not has_res:
                            n_out += _gather_if(nv, pkf, base, tf, wr, mk, nw, wt, vl, p * ct, th, bi, sc,
                                                sbr, rsrc, ro + k_row + ox * Ck if res_bits else p * ct, sp, ktf,
                                                ko + k_row + ox * Ck, k_bytes, flags, vr)
                        else:
                            n_out += _gather_if(nv, pkf, base, tf, wr, mk, nw, wt, vl, p * ct, th, bi, sc,
                                                sbr, rr, ox * ct, sp, ktf, ko + k_row + ox * Ck, k_bytes, flags, vr)
                    continue
                for ox in range(Wo):
                    c = cy + cls_x[ox]
                    if c != cls:
                        cls, tf, wr, mk, nw = c, toff[c], wrow[c], mask[c], nws[c]
                    _gather_sum(nv, pkf, po + (oy * sy * Wp + ox * sx) * Cb + origin, tf, wr, mk, nw, wt, acc, ox * ct)
                r_lo = oy * WC
                if fast_res:
                    _current_row(acc, bi, sc, rr8[r_lo:r_lo + WC], sbr, xr[r_lo:r_lo + WC], True, has_sb)
                else:
                    _current_row(acc, bi, sc, rr, sbr, xr[r_lo:r_lo + WC], has_res, has_sb)
            if neuron:
                if write_out:
                    # not through _spikes_out: inlined, its array arguments are reference
                    # counted once per step (the output and the table are shared by the threads)
                    if out_block:
                        block_rows(spw, 0, outf, (tb * Cout + c0) * P, P, ct)
                    else:
                        _spikes_rows(spw, ct, nc, P, outf, tb * Cout * P, c0, spread, fast_out)
            else:
                ot = out[t, b]
                for c in range(nc):
                    for p in range(P):
                        ot[c0 + c, p] = xr[p * ct + c]
        if neuron:
            _membrane_out(vl, v, b, Cout, c0, nc, ct, P)
        n_kept[item] = n_out


# switch: the pack of uint8 spikes on small maps runs inside the gather kernel's parallel
# region (see _gather_kernel); off, in a region of its own first
FUSE_PACK = True
# placeholder arguments of the kernel where the pack is not fused (the same Numba types)
_NO_U8 = np.zeros((1, 1), np.uint8)
_NO_I64 = np.zeros(1, np.int64)
_NO_I64.flags.writeable = False  # as the tables it stands for (_pixel_words, _PICKED_PX)
_NO_F32 = np.zeros(1, np.float32)

# fused pack (_gather_kernel's pack_mode): each thread packs the images it then convolves,
# in the kernel's parallel region; PACK_NONE: the bits are in pk already
PACK_NONE, PACK_WORDS, PACK_PICKED = 0, 1, 2


@numba.njit(parallel=True, cache=True)
def _gather_kernel(pk, nv, n_tiles, Wp, Cb, sy, sx, toff, wrow, mask, nws, cls_y, cls_x, wg, Cout, Ho, Wo, bias, thr,
                   rs, v, out, fast_out, spread, reset_zero, v_reset, res, has_res, res_words, fast_res,
                   neuron, sb, has_sb, origin, keep, kept, n_kept, write_out, res_bits, rkept, column, tile_major,
                   n_chunks, pack_mode, s8, Cin, HW, doff, n_px, ones, picked, v_save, bad):
    """``_gather_items`` for every (image, channel tile), in parallel: ``n_chunks`` (the
    threads) runs of consecutive items.

    The items are a function of their own, not the body of the parallel loop. With the body in
    the loop, the kernel loaded from Numba's cache ran slower than the same kernel freshly
    compiled in the process (the same instructions: an effect of where the code lands, not
    identified without performance counters): 1.3-2x on ResNet-20's 32-channel layer, 1.1-1.3x
    end to end; split, 0.98-1.16x end to end (bench/RESULTS.md "Session 8").

    ``pack_mode`` PACK_WORDS / PACK_PICKED (image-major items): run ``chunk`` is whole images
    ``chunk * B // n_chunks ..``, and its thread first packs them, every step, from uint8
    spikes ``s8 [T * B, Cin * HW]`` into ``pk`` (``_words_row`` with ``doff``, ``n_px``,
    ``ones``; ``_picked_row`` with ``picked``): one parallel region a call instead of two
    (waking the sleeping OpenMP threads costs tens of microseconds each). It first copies its
    images' membranes ``v`` to ``v_save``; images with a value other than 0/1 set ``bad
    [chunk]`` and are not convolved, and the caller, which then runs another kernel from the
    start, puts ``v_save`` back (the other runs may have stepped theirs).
    """
    T, B = pk.shape[:2]
    n_items = B * n_tiles
    P = Ho * Wo
    for chunk in numba.prange(n_chunks):
        if pack_mode == PACK_NONE:
            lo, hi, ok = chunk * n_items // n_chunks, (chunk + 1) * n_items // n_chunks, True
        else:
            b_lo, b_hi = chunk * B // n_chunks, (chunk + 1) * B // n_chunks
            lo, hi = b_lo * n_tiles, b_hi * n_tiles
            if neuron:
                for i in range(b_lo * Cout * P, b_hi * Cout * P):
                    v_save[i] = v[i]
            _pack_images(b_lo, b_hi, T, B, pk, pack_mode, s8, Cin, HW, Cb, doff, n_px, ones, picked, bad, chunk)
            ok = bad[chunk] == 0
        if ok:
            _gather_items(lo, hi, pk, nv, n_tiles, Wp, Cb, sy, sx, toff, wrow, mask, nws, cls_y, cls_x, wg, Cout, Ho,
                          Wo, bias, thr, rs, v, out, fast_out, spread, reset_zero, v_reset, res, has_res, res_words,
                          fast_res, neuron, sb, has_sb, origin, keep, kept, n_kept, write_out, res_bits, rkept, column,
                          tile_major)


@numba.njit(cache=True)
def _pack_images(b_lo, b_hi, T, B, pk, pack_mode, s8, Cin, HW, Cb, doff, n_px, ones, picked, bad, chunk):
    """Images ``b_lo .. b_hi - 1`` of ``s8`` packed into ``pk`` at every step (``pack_mode``);
    ``bad[chunk] = 1`` when a value is not 0/1."""
    flag = False
    for t in range(T):
        for b in range(b_lo, b_hi):
            if pack_mode == PACK_WORDS:
                flag |= _words_row(s8[t * B + b], pk[t, b], Cin, HW, Cb, doff, n_px, ones)
            else:
                flag |= _picked_row(s8[t * B + b], pk[t, b], Cin, HW, Cb, picked)
    bad[chunk] = 1 if flag else 0


@functools.lru_cache(maxsize=256)
def _taps_read(kh: int, kw: int, stride: tuple, padding: tuple, size: tuple, out_size: tuple) -> int:
    """How many of a ``kh x kw`` kernel's taps land in the image (not the padding) for some
    output pixel: the taps whose weight rows the gather kernel reads (``_tables`` leaves out
    the others' words). A 3x3 field on a 1x1 image: 1."""
    used = [len({t for lo, hi in _taps_in_image(o, st, k, p, n)[0] for t in range(lo, hi)})
            for o, st, k, p, n in zip(out_size, stride, (kh, kw), padding, size)]
    return used[0] * used[1]


def _taps_in_image(n_out: int, stride: int, k: int, pad: int, n_in: int) -> tuple[list, np.ndarray]:
    """Along one axis: the distinct intervals ``[lo, hi)`` of kernel taps that land in the image
    (not in the padding) for some output index, and the interval's index for each output."""
    spans = [(max(0, pad - o * stride), min(k, n_in + pad - o * stride)) for o in range(n_out)]
    kinds = sorted(set(spans))
    return kinds, np.array([kinds.index(sp) for sp in spans], np.int64)


@functools.lru_cache(maxsize=256)
def _tables(kh: int, kw: int, Cb: int, Wp: int, ct: int, geometry: tuple,
            split: bool = True) -> tuple[np.ndarray, ...]:
    """Per receptive-field word: byte offset, first weight row (floats), mask of valid bits;
    per class of output pixels, the words that can hold a set bit.

    Kernel row ``ky`` is the run of ``kw * 8 * Cb`` bits starting at byte ``ky * Wp * Cb``
    from the pixel's corner, read as 64-bit words; bit ``j`` of word ``q`` is weight row
    ``ky * kw * 8 * Cb + 64 q + j``. ``geometry = (Ho, Wo, sy, sx, ph, pw, H, W)``: the
    output pixels whose fields reach the same taps in the image form a class (an image edge,
    a corner, the inside), and a class's table leaves out the words that lie wholly in the
    padding (always zero bits: a 3x3 field on a 1x1 image keeps 8 of 72 words at 512
    channels). The words kept are in the same order, so the sums are too. Without ``split``
    (the column kernel's tables: one input column), or when the whole field's list would not
    fit LIST_CAP (the list-or-walk choice, which sets the order, must not change from pixel
    to pixel), one class holds every word.

    Returns ``toff``, ``wrow``, ``mask`` ``[classes, words]`` (int64, int64, uint64; rows
    padded with zero-mask words), ``nw [classes]`` and the class of each output row and
    column, ``cls_y [Ho]`` and ``cls_x [Wo]`` (class ``cls_y[oy] * len(x classes) +
    cls_x[ox]``). Cached: the arrays must not be written.
    """
    run = kw * 8 * Cb
    nq = -(-run // 64)
    words = [(ky, q) for ky in range(kh) for q in range(nq)]
    Ho, Wo, sy, sx, ph, pw, H, W = geometry
    if not split or kh * nq * 64 > LIST_CAP - max(u for u, _ in WALK.values()):
        ys, xs, cls_y, cls_x = [(0, kh)], [(0, kw)], np.zeros(Ho, np.int64), np.zeros(Wo, np.int64)
    else:
        ys, cls_y = _taps_in_image(Ho, sy, kh, ph, H)
        xs, cls_x = _taps_in_image(Wo, sx, kw, pw, W)
    kept = []
    for ylo, yhi in ys:
        for xlo, xhi in xs:
            # word q of a row covers the taps kx of bits 64 q .. 64 q + 63
            kept.append([(ky, q) for ky, q in words if ylo <= ky < yhi
                         and (64 * q + 63) // (8 * Cb) >= xlo and (64 * q) // (8 * Cb) < xhi])
    width = max(1, max(len(k) for k in kept))
    toff = np.zeros((len(kept), width), np.int64)
    wrow = np.zeros((len(kept), width), np.int64)
    mask = np.zeros((len(kept), width), np.uint64)
    for c, ws in enumerate(kept):
        for i, (ky, q) in enumerate(ws):
            toff[c, i] = ky * Wp * Cb + 8 * q
            wrow[c, i] = (ky * run + 64 * q) * ct
            mask[c, i] = (1 << min(64, run - 64 * q)) - 1
    nw = np.array([len(k) for k in kept], np.int64)
    for a in (toff, wrow, mask, nw, cls_y, cls_x):
        a.flags.writeable = False
    return toff, wrow, mask, nw, cls_y, cls_x


def weight_rows(weight: torch.Tensor, ct: int, column: bool = False) -> np.ndarray:
    """``weight [Cout, Cin, kh, kw]`` float32 -> rows ``[tiles, (kh * kw * 8 * Cb + 1) * ct]``, cached.

    Row ``(ky * kw + kx) * 8 * Cb + ci`` of tile ``i`` holds output channels ``i * ct ...``
    (zeros past Cout and for the padded input channels); the last row of each tile is zeros.
    ``column`` (the column kernel's layout): entry ``ky * 8 * Cb + ci`` of ``kw * ct`` floats
    holds the rows of ``kx = 0 .. kw - 1`` in turn, and the last entry is zeros.
    Rearranging a 512-channel 3x3 weight (9.4 MB) costs more than the convolution at 10% density, so the rows are kept
    for the next call with the same weight: keyed by storage address and shape, valid while
    the tensor's version counter is unchanged (every in-place torch op bumps it) and a
    strided sample of 1024 of its values is unchanged (catches most writes that bypass the
    counter: ``.data``, numpy views). Entries hold a reference to the weight, so its address
    cannot be reused while cached; the least recently used go first once the rows exceed
    WEIGHT_CACHE_BYTES. Inference tensors (no version counter) are rearranged every call.
    """
    flat = weight.numpy().reshape(-1)
    sample = flat[::max(1, flat.shape[0] // 1024)]
    # inference tensors have no version counter: not cached
    cacheable = not weight.is_inference()
    key = (weight.data_ptr(), tuple(weight.shape), ct, column)
    with _weight_cache_lock:
        hit = _weight_cache.get(key) if cacheable else None
        if hit is not None and hit[1] == weight._version and np.array_equal(hit[2], sample):
            _weight_cache.move_to_end(key)
            return hit[3]
    Cout, Cin, kh, kw = weight.shape
    Cb = -(-Cin // 8)
    n_tiles = -(-Cout // ct)
    # numpy, not torch: see numba.py on torch's OpenMP threads
    wg = np.zeros((kh, kw, 8 * Cb, n_tiles * ct), np.float32)
    wg[:, :, :Cin, :Cout] = weight.numpy().transpose(2, 3, 1, 0)
    rows = wg.reshape(-1, n_tiles, ct).transpose(1, 0, 2)
    if column:
        rows = rows.reshape(n_tiles, kh, kw, 8 * Cb, ct).transpose(0, 1, 3, 2, 4)
    rows = rows.reshape(n_tiles, -1)
    # one zero row (entry) after each tile's rows: the bit walk adds it for a bit that is not set
    pad = kw * ct if column else ct
    wg = aligned_zeros((n_tiles, rows.shape[1] + pad))
    wg[:, :-pad] = rows
    if not cacheable:
        return wg
    with _weight_cache_lock:
        _weight_cache[key] = (weight, weight._version, sample.copy(), wg)
        total = sum(e[3].nbytes for e in _weight_cache.values())
        while total > WEIGHT_CACHE_BYTES and len(_weight_cache) > 1:
            total -= _weight_cache.popitem(last=False)[1][3].nbytes
    return wg


def _column_fits(neuron: bool, kernel: tuple[int, int], stride: tuple[int, int], Cb: int, nv: int) -> bool:
    """Whether a layer takes the column kernel (``_column_if``): COLUMN on, the list of active
    inputs compiled in (COMPRESS), a 3x3 stride-1 conv with the neuron, a column's list within
    LIST_CAP and every entry's offset / 2 within 16 bits."""
    ct = 8 * nv
    return (COLUMN and COMPRESS and neuron and tuple(kernel) == (3, 3) and tuple(stride) == (1, 1)
            and 3 * 64 * -(-Cb // 8) <= LIST_CAP - COLUMN_SETS[nv] and 3 * 8 * Cb * 3 * ct <= SCALED_FLOATS)


def _vectors(Cout: int, B: int, threads: int) -> int:
    """Accumulator vectors per tile: the fewest tiles, but enough items for every thread."""
    nv = next((n for n in VECTORS if 8 * n >= Cout), VECTORS[-1])
    while nv > 1 and B * -(-Cout // (8 * nv)) < 2 * threads:
        nv //= 2
    return nv


def gather(s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: tuple[int, int],
           padding: tuple[int, int], thr: torch.Tensor, v: torch.Tensor | None, out: torch.Tensor, reset_zero: bool,
           v_reset: float, res: torch.Tensor | None, rs: torch.Tensor, neuron: bool,
           step_bias: torch.Tensor | None = None, kept: _Packed | None = None) -> bool:
    """Run the bit-packed output-stationary kernel; False (nothing written) if ``s`` is not 0/1.

    Same contract as ``reference.spike_conv2d`` (see spike_conv/README.md). ``kept``: what
    ``recall(s)`` gave, when the caller already asked (the bits of ``s``, read instead of
    packing ``s`` when the padding fits in KEEP_PAD).
    """
    T, B, Cin, H, W = s.shape
    Cout, _, kh, kw = weight.shape
    Ho, Wo = out.shape[3:]
    sy, sx = stride
    ph, pw = padding
    Cb = -(-Cin // 8)
    kept_in = kept if max(ph, pw) <= KEEP_PAD else None
    picked = (PICKED.get((H, W, sy, sx)) if PICK and kept_in is None and (kh, kw) == (1, 1) and (ph, pw) == (0, 0)
              else None)
    threads = numba.get_num_threads()
    nv = _vectors(Cout, B, threads)
    ct = 8 * nv
    n_tiles = -(-Cout // ct)
    column = _column_fits(neuron, (kh, kw), stride, Cb, nv)
    wg = weight_rows(weight, ct, column)
    tile_major = wg.nbytes * _taps_read(kh, kw, stride, padding, (H, W), (Ho, Wo)) // (kh * kw) > TILE_MAJOR_BYTES
    # the pack in the kernel's parallel region (PACK_WORDS / PACK_PICKED): uint8 spikes on the
    # maps _pack_words takes, items image-major, every thread at least one whole image
    fuse = (FUSE_PACK and kept_in is None and s.dtype == torch.uint8 and not tile_major and B >= threads
            and (B % threads == 0 or B >= 4 * threads))
    pack_mode, s8, HW, n_px, ones, picked_px, doff = PACK_NONE, _NO_U8, H * W, 1, np.uint64(0), _NO_I64, _NO_I64
    if kept_in is not None:
        # the bits the kernel that wrote s kept (border KEEP_PAD): start ph, pw inside it
        pk, Wp = kept_in.pk, W + 2 * KEEP_PAD
        origin = ((KEEP_PAD - ph) * Wp + KEEP_PAD - pw) * Cb
    elif picked is not None:
        # only the pixels a 1x1 stride-2 conv reads, as a compact map on which it is a 1x1
        # stride-1 conv (same inputs, same weights, same order)
        pk = np.empty((T, B, Ho * Wo * Cb + 8), np.uint8)
        picked_px = _PICKED_PX[(H, W, sy, sx)]
        if fuse:
            pack_mode = PACK_PICKED
        elif _pack_picked(s.numpy().reshape(T * B, Cin * H * W), pk.reshape(T * B, -1), Cin, H * W, Cb, picked_px):
            return False
        H, W, sy, sx, Wp, origin = Ho, Wo, 1, 1, Wo, 0
    else:
        Hp, Wp = H + 2 * ph, W + 2 * pw
        # 8 bytes of slack: the last word of a receptive field is read whole, then masked
        pk = np.empty((T, B, Hp * Wp * Cb + 8), np.uint8)
        if fuse:
            doff, n_px, ones = _pixel_words(H, W, Cb, Wp, ph, pw)
            if HW // n_px < PLANES_WORDS:
                pack_mode = PACK_WORDS
        if pack_mode == PACK_NONE and _pack(s.numpy().reshape(T * B, Cin, H * W), pk.reshape(T * B, -1), H, W, Cb,
                                            Wp, ph, pw):
            return False
        origin = 0
    if pack_mode != PACK_NONE:
        s8 = s.numpy().reshape(T * B, Cin * HW)
    geometry = (Ho, Wo, sy, sx, ph, pw, H, W)
    tables = _tables(3, 1, Cb, Wp, 3 * ct, geometry, False) if column else _tables(kh, kw, Cb, Wp, ct, geometry)
    if neuron:
        buf, stage = spike_buffer(out)
        v_np = v.numpy()
    else:
        buf, stage = out.numpy(), None
        v_np = np.zeros(1, np.float32)
    res_np = np.zeros((1, 1), np.float32) if res is None else res.numpy()
    sb_np = np.zeros((1, 1), np.float32) if step_bias is None else step_bias.numpy()
    out4 = buf.reshape(T, B, Cout, Ho * Wo)
    fast_out = spikes_out_mode(out4, neuron)
    # uint8 residual, whole 8-byte words per channel row: read 8 pixels x 8 channels at a time
    fast_res = res_np.dtype == np.uint8 and (Ho * Wo) % 8 == 0 and res_np.flags.c_contiguous
    res_words = res_np.view(np.uint64) if fast_res else np.zeros((1, 1), np.uint64)
    # a residual that is a neuron output with kept bits (at every step): read as bits
    res_kept = None if res is None or not neuron else recall(res, (T, B, Cout, Ho, Wo))
    rkept = res_kept.pk if res_kept is not None else np.zeros((1, 1, 1), np.uint8)
    # the output's bits, for the layer that reads it next (zeros: the border is padding)
    keep = KEEP and neuron and not out.is_inference()
    # bits_only: the output tensor is not written (the spikes stay in the kept bits)
    write = not (keep and out.is_contiguous() and out.dtype in BITS_ONLY_DTYPES and _bits_only.get())
    bits = np.zeros((T, B, (Ho + 2 * KEEP_PAD) * (Wo + 2 * KEEP_PAD) * -(-Cout // 8) + 8) if keep else (1, 1, 1),
                    np.uint8)
    n_kept = np.zeros(B * n_tiles, np.uint64)
    n_chunks = threads if pack_mode != PACK_NONE else min(threads, B * n_tiles)
    v_save = np.empty_like(v_np) if pack_mode != PACK_NONE and neuron else _NO_F32
    bad = np.zeros(n_chunks, np.uint8)
    _gather_kernel(pk, nv, n_tiles, Wp, Cb, sy, sx, *tables, wg, Cout, Ho, Wo, bias.numpy(), thr.numpy(),
                   rs.numpy(), v_np, out4, fast_out, _SPREAD, reset_zero, v_reset, res_np,
                   res is not None, res_words, fast_res, neuron, sb_np, step_bias is not None, origin, keep, bits,
                   n_kept, write, res_kept is not None, rkept, column, tile_major, n_chunks, pack_mode, s8, Cin, HW,
                   doff, n_px, ones, picked_px, v_save, bad)
    if bad.any():
        # a value other than 0/1 (found by the fused pack): the membranes as they came in, and
        # the caller runs the scatter kernel; out and the bits are rewritten or dropped
        if neuron:
            v_np[:] = v_save
        return False
    if stage is not None and write:
        out.copy_(stage)
    if keep:
        _keep(out, bits, int(n_kept.sum()), write)
    return True
