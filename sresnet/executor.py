"""Running a :class:`sresnet.network.Network`: timestep-batched, chunked simulation.

Each layer runs once per *chunk* of time steps on the whole ``[Tc, B, ...]`` block (the
linear op on the ``Tc·B`` batch, the neuron scanning Tc inside a spikekernels kernel),
carrying its membrane (or max-pool counts) to the next chunk. Spikes between layers are
uint8. A layer's output is dropped as soon as its last reader has run, so memory is
bounded by the chunk, not by T; only the ``[T, B, classes]`` per-step readout grows with T.

In an inference run on the CPU (no observer, no spike maps), a layer whose spikes only
spiking convs read (their input, or the spike shortcut of a block's second conv:
``Executor.conv_read``) keeps them as bits only: the Numba gather kernel writes the bits the
next conv reads and counts the spikes, and no ``[T, B, C, H, W]`` tensor is written
(``spikekernels.ops.spike_conv.numba_gather.bits_only``). Results are bit-identical;
``BITS_BETWEEN_CONVS = False`` writes every output. Each layer's state (membrane, pool
counts) is given to the next chunk's op to update in place (``spikekernels._checks.donate``:
no copy and no finiteness pass per chunk).

The executor holds no parameters: everything it computes comes from the description, so
the same description runs on any backend, in chunks of any size, with the same result. On
the Numba backend it pins the spiking conv's path for every call (the event-driven kernel
for 0/1 spikes, the dense conv for other inputs: :meth:`Executor.input_path`) instead of
the ops' per-call density switch, whose choice, and so whose rounding, would depend on the
chunk's steps and the batch's images.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import spikekernels as sk
from spikekernels import _checks

from .metrics import _pair
from .network import Layer, Network, Term

# whether outputs read only by spiking convs stay bits in an inference run on the CPU
# (Executor.conv_read); False writes every layer's [T, B, C, H, W] spikes
BITS_BETWEEN_CONVS = True

# target size of the largest intermediate of one chunk (larger tensors are fresh mmaps on
# glibc and page-fault on each allocation, see DESIGN.md); a CPU inference run on the Numba
# backend counts its spikes as 1 byte each (wide_chunks)
CHUNK_BYTES = 32 * 2 ** 20


_pin = None


def conv_path(path: str):
    """A context pinning the Numba spiking conv's path ("event" or "dense") in this thread
    (:func:`spikekernels.ops.spike_conv.numba.conv_path`; other backends have one path, and
    without Numba installed this does nothing)."""
    global _pin
    if _pin is None:
        try:
            from spikekernels.ops.spike_conv.numba import conv_path as pinned
        except ImportError:  # no Numba: the reference / Triton backends have no switch to pin
            pinned = lambda path: contextlib.nullcontext()  # noqa: E731
        _pin = pinned
    return _pin(path)


def apply_op(op: tuple, x: torch.Tensor, backend=None) -> torch.Tensor:
    """A parameter-free op of a term on a time-major tensor ``[T, B, C, H, W]`` (or ``[T, B, F]``)."""
    kind = op[0]
    if kind == "subsample":
        return x[:, :, :, :: op[1], :: op[1]]
    if kind == "chanpad":
        return F.pad(x, (0, 0, 0, 0, op[1], op[2]))
    if kind == "pad":
        # zero padding (left, right, top, bottom) of the spatial dims
        return F.pad(x, tuple(op[1]))
    if kind == "avgpool":
        return sk.spike_avg_pool2d(x, op[1], op[2], op[3], backend=backend)
    if kind == "gap":
        y = sk.global_avg_pool(x, backend=backend)
        return y[..., None, None] if op[1] else y
    if kind == "flatten":
        return x.reshape(x.shape[0], x.shape[1], -1)
    if kind == "maxpool":
        # max pooling of an analog current (the stem's, constant over T; see convert/fuse.py)
        y = F.max_pool2d(x.flatten(0, 1), op[1], op[2], op[3])
        return y.reshape(x.shape[0], x.shape[1], *y.shape[1:])
    raise ValueError(f"unknown op {kind!r} in a network description")


def count_spikes(s: torch.Tensor, binary: bool = True):
    """Spikes in a spike tensor: its nonzero entries when spikes are 0/1
    (:func:`spikekernels.count_spikes`: the count the conv kernel made as it wrote ``s``, or
    numpy's), else the sum of |s| (burst counts, signed spikes)."""
    if not binary:
        return int(s.detach().abs().sum(dtype=torch.int64))
    if s.device.type == "cpu":
        return sk.count_spikes(s)
    return torch.count_nonzero(s)


def squash(v: torch.Tensor) -> torch.Tensor:
    """Monotone map of the membrane into (0, 1) for tie-breaking spike counts. Plain
    arithmetic (no exp), so SIMD and scalar code paths round it identically."""
    return 0.5 + 0.5 * v / (1.0 + v.abs())


def channel_view(v, x: torch.Tensor):
    """A per-channel vector ``[C]`` shaped to broadcast over ``x`` ``[T, B, C, ...]``."""
    if not isinstance(v, torch.Tensor) or not v.dim():
        return v
    return v.view(-1, *([1] * (x.dim() - 3)))


def ceil_mode_pad(pool: dict, hw: tuple) -> tuple | None:
    """Zero padding ``(left, right, top, bottom)`` that turns a pool into torch's ceil_mode pool.

    With ``ceil_mode`` torch adds a partial window at the right/bottom edge when the map does
    not divide evenly (as long as it starts inside the map or its left/top padding). Padding
    the input on the right/bottom by the missing part and pooling in floor mode gives the same
    windows; for a max of non-negative values (ReLU outputs, spikes) zeros change nothing, and
    in the gated spiking max pool a padded position never wins (a window's first real input
    comes before every right/bottom padding in row-major order, and ties go to the first).

    Args:
        pool: max-pool geometry ``{"kernel", "stride", "padding", "ceil_mode"}`` (pairs).
        hw: the input map ``(H, W)``.

    Returns:
        the padding for ``F.pad``, or None when there is nothing to pad.
    """
    if not pool.get("ceil_mode"):
        return None
    extra = []
    for n, k, s, p in zip(hw, pool["kernel"], pool["stride"], pool["padding"]):
        out = -(-(n + 2 * p - k) // s) + 1
        if (out - 1) * s >= n + p:  # torch's rule: the last window must start inside the map or its padding
            out -= 1
        extra.append(max(0, (out - 1) * s + k - (n + 2 * p)))
    return (0, extra[1], 0, extra[0]) if any(extra) else None


def default_chunk(net: Network, batch: int, hw: tuple, itemsize: int = 4) -> int:
    """Time steps per chunk so that the largest intermediate stays near CHUNK_BYTES (32 MiB):
    ``itemsize`` bytes per neuron-step of the widest layer (4: float32 spikes or currents; 1:
    see :func:`wide_chunks`). ValueError for an ``itemsize`` that is not a positive int."""
    if isinstance(itemsize, bool) or not isinstance(itemsize, int) or itemsize < 1:
        raise ValueError(f"default_chunk: itemsize={itemsize!r}; accepted: bytes per neuron-step, an int >= 1")
    area = hw[0] * hw[1] / max(1, net.input_shape[1] * net.input_shape[2])
    widest = max([l.neurons for l in net.layers] + [1]) * max(area, 1e-9)
    return max(1, int(CHUNK_BYTES // (itemsize * batch * widest)))


def wide_chunks(net: Network, backend: str | None, device: torch.device, train: bool) -> bool:
    """Whether a run's largest per-step intermediates are uint8 spikes (1 byte per neuron-step):
    inference on the CPU with the Numba backend and no signed layer (their spikes are float32).
    Its spiking convs' currents never leave the kernel (the gather kernels) or leave it in
    chunks of at most 8 MiB (the dense path), and an average pool's float32 output is no
    larger than its uint8 input. Four times the steps per chunk then keep each intermediate
    within the same budget and cut the per-call overhead: ResNet-20, T=128, B=32, chunks of 64
    steps instead of 16 ran 1.16x faster with the same results, peak RSS 546 MiB instead of
    463 (bench/RESULTS.md "Session 11")."""
    if train or device.type != "cpu" or any(getattr(l.neuron, "kind", None) == "signed" for l in net.layers):
        return False
    from spikekernels import _dispatch

    try:
        return _dispatch.choose("spike_conv2d", device, backend) == "numba"
    except RuntimeError:
        return False


class Executor:
    """Runs a :class:`Network` on one backend ("auto", "reference", "numba", "triton" or None).

    With ``train=True`` spikes between layers are float32 (uint8 otherwise) and every neuron
    takes the surrogate-gradient path of spikekernels when its inputs require grad, so a loss
    on the readout backpropagates through time to the description's tensors
    (``surrogate``/``detach_reset`` as in :func:`spikekernels.if_scan`).
    """

    def __init__(self, net: Network, backend: str | None = None, *, train: bool = False, surrogate=None,
                 detach_reset: bool = False):
        self.net, self.backend = net, backend
        self.spike_dtype = torch.float32 if train else torch.uint8
        # whether each layer's output is 0/1 (a max pool passes its source's spikes)
        self.binary: list[bool] = []
        for layer in net.layers:
            self.binary.append(self.binary[layer.source] if layer.kind == "maxpool" else layer.neuron.binary)
        self.grad_kw = dict(surrogate=surrogate, detach_reset=detach_reset) if train else {}
        self.train = train
        self.conv_read = self._conv_read_layers()

    def _conv_read_layers(self) -> set:
        """Layers whose spikes only spiking convs read: a spiking conv layer or the stem (conv main
        term, 0/1 spikes) whose every reader is a conv term with no op before it and padding <= 1, or the
        spike shortcut (residual) of a spiking conv layer, with no op either (no max pool, no
        subsampled or padded shortcut, no readout reads it). In an inference run on the CPU
        these layers' outputs stay bits (see :meth:`simulate`)."""
        net = self.net
        readers: dict = {}
        for layer in net.layers:
            if layer.kind == "maxpool":
                readers.setdefault(layer.source, []).append(None)
                continue
            for t in layer.terms():
                # the fused kernel reads a spike shortcut (an IF layer's; burst and signed
                # layers sum their terms as tensors)
                shortcut = (t.kind is None and layer.residual_spikes and t is layer.others[0]
                            and layer.main.kind == "conv" and not t.pre and layer.neuron.kind == "if")
                readers.setdefault(t.source, []).append("shortcut" if shortcut else t)
        for t in net.output:
            readers.setdefault(t.source, []).append(None)

        def by_bits(t) -> bool:
            if t == "shortcut":
                return True
            return t is not None and t.kind == "conv" and not t.pre and max(_pair(t.padding)) <= 1

        return {i for i, layer in enumerate(net.layers)
                if layer.kind in ("neuron", "stem") and layer.main is not None and layer.main.kind == "conv"
                and self.binary[i] and readers.get(i) and all(by_bits(t) for t in readers[i])}

    def input_path(self, term: Term) -> str:
        """The Numba spiking conv's path for ``term``'s input, pinned for the whole run: "event"
        (the gather kernel) for 0/1 spikes, "dense" (torch's conv per step) for anything else:
        the analog image, burst counts, signed spikes, averages of spikes (and the analog
        activations of :meth:`analog_layers`, which ``term(analog=True)`` sends dense). Measured
        (bench/RESULTS.md "Session 10"): the gather kernel beat the dense path at 40-80% input
        density on almost every ResNet-20 / ResNet-18 shape; for inputs other than 0/1 the
        event-driven (scatter) kernel was as fast as the dense conv at 10% density and
        1.1-2.6x slower at 30-50%."""
        binary = (term.source >= 0 and self.binary[term.source]
                  and not any(op[0] in ("avgpool", "gap") for op in term.pre))
        return "event" if binary else "dense"

    def term(self, term: Term, outs: list, exact: bool = False, analog: bool = False) -> torch.Tensor:
        """The current of one term ``[T, B, ...]`` float32 from the spikes ``outs`` (``analog``:
        from analog activations, :meth:`analog_layers`, which take the dense conv)."""
        x = outs[term.source]
        for op in term.pre:
            x = apply_op(op, x, self.backend)
        if exact and term.kind in ("conv", "linear"):
            # the readout: computed in float64 and rounded once, so its float32 value does not
            # depend on how many steps are batched together (a float32 matmul's rounding can
            # depend on its row count); chunked and unchunked runs then agree bit for bit
            w, b = term.weight.double(), None if term.bias is None else term.bias.double()
            T, B = x.shape[:2]
            x = x.reshape(T * B, *x.shape[2:]).double()
            x = F.conv2d(x, w, b, term.stride, term.padding) if term.kind == "conv" else F.linear(x, w, b)
            x = x.float().reshape(T, B, *x.shape[1:])
        elif term.kind in ("conv", "linear"):
            with conv_path("dense" if analog else self.input_path(term)):
                if term.kind == "conv":
                    x = sk.spike_conv2d(x, term.weight, term.bias, term.stride, term.padding, neuron=False,
                                        backend=self.backend)
                else:
                    x = sk.spike_linear(x, term.weight, term.bias, neuron=False, backend=self.backend)
        for op in term.post:
            x = apply_op(op, x, self.backend)
        if term.kind is None:
            x = x.float()
            if term.scale is not None:
                x = x * channel_view(term.scale, x)
        return x

    def currents(self, terms: list, outs: list, exact: bool = False, analog: bool = False) -> torch.Tensor:
        total = None
        for t in terms:
            c = self.term(t, outs, exact, analog)
            total = c if total is None else total + c
        return total

    def stem_currents(self, images: torch.Tensor) -> dict:
        """The analog image's conv, computed once per run: ``{layer index: [1, B, C, H, W]}``."""
        out = {}
        for i, layer in enumerate(self.net.layers):
            if layer.kind == "stem":
                t = layer.main
                x = images[None]
                for op in t.pre:
                    x = apply_op(op, x, self.backend)
                # the analog image: the dense conv, whatever the batch's share of zero pixels
                with conv_path(self.input_path(t)):
                    if t.kind == "conv":
                        c = sk.spike_conv2d(x, t.weight, t.bias, t.stride, t.padding, neuron=False,
                                            backend=self.backend)
                    else:
                        c = sk.spike_linear(x, t.weight, t.bias, neuron=False, backend=self.backend)
                for op in t.post:
                    c = apply_op(op, c, self.backend)
                out[i] = c
        return out

    def run_layer(self, i: int, outs: list, steps: int, state, stem_current=None, t0: int = 0, bits=None,
                  donate: bool = False):
        """Run layer ``i`` for ``steps`` steps (global steps ``t0 ..``) on the outputs ``outs`` of earlier layers.

        Returns ``(spikes [steps, B, ...] uint8, state)``; ``state`` None means the start
        (the neuron's v0; zero counts for a max pool). ``bits``: a context in which the
        layer's spiking conv keeps its spikes as bits only (numba_gather.bits_only; only for
        a layer in ``conv_read``): the returned tensor is then valid only as the input of
        another spiking conv and for ``spikekernels.count_spikes``. ``donate``: the caller
        drops ``state`` after this call, so the op may update it in place and return it
        (``spikekernels._checks.donate``: no copy, no finiteness pass per chunk).
        """
        if donate and state is not None and not self.train:
            with _checks.donate(state):
                return self._run_layer(i, outs, steps, state, stem_current, t0, bits)
        return self._run_layer(i, outs, steps, state, stem_current, t0, bits)

    def _run_layer(self, i: int, outs: list, steps: int, state, stem_current, t0: int, bits):
        layer = self.net.layers[i]
        be = self.backend
        keep_bits = bits() if bits is not None else contextlib.nullcontext()
        if layer.kind == "maxpool":
            p = layer.pool
            s = outs[layer.source]
            pad = ceil_mode_pad(p, tuple(s.shape[-2:]))
            if pad is not None:
                s = F.pad(s, pad)
            return sk.spike_max_pool2d(s, p["kernel"], p["stride"], p["padding"], count=state,
                                       return_state=True, backend=be)
        nrn = layer.neuron
        v0 = state if state is not None else nrn.v0
        kw = dict(return_state=True, spike_dtype=self.spike_dtype, backend=be, **self.grad_kw)
        rows = nrn.bias_rows(t0, steps)
        if nrn.kind == "burst":
            cur = self.layer_current(layer, outs, steps, stem_current, rows)
            return sk.burst_scan(cur, nrn.threshold, v0, nrn.max_spikes, return_state=True,
                                 spike_dtype=torch.float32, backend=be)
        if nrn.kind == "signed":
            cur = self.layer_current(layer, outs, steps, stem_current, rows)
            return sk.signed_scan(cur, nrn.threshold, v0, return_state=True, spike_dtype=torch.float32, backend=be)
        main = layer.main
        if layer.kind == "stem" or main is None:
            # the bias schedule's rows go in as step_bias: the stem's constant current stays an
            # expand (never materialized per step); same float32 operations as current + rows
            cur = self.layer_current(layer, outs, steps, stem_current)
            with keep_bits:  # (the stem's IF keeps bits: its current is constant in time)
                return sk.if_scan(cur, nrn.threshold, v0, nrn.reset, step_bias=rows, **kw)
        x = outs[main.source]
        for op in main.pre:
            x = apply_op(op, x, be)
        residual, rscale = None, 1.0
        if layer.residual_spikes:
            other = layer.others[0]
            residual = outs[other.source]
            for op in other.pre:
                residual = apply_op(op, residual, be)
            rscale = other.scale if other.scale is not None else 1.0
        elif layer.others:
            residual = self.currents(layer.others, outs)
        # the bias schedule's rows go in as step_bias: the kernels add (rows[t] + α·residual),
        # the float32 operations of the float residual (α·residual + rows) this replaces, so
        # the uint8 spike shortcut stays uint8 and no [steps, B, C, H, W] float is built
        kw.update(threshold=nrn.threshold, v0=v0, reset=nrn.reset, residual=residual, residual_scale=rscale,
                  step_bias=rows)
        # one path for the whole run (a per-call switch would make the result depend on the
        # chunk and the batch): see input_path
        with conv_path(self.input_path(main)):
            if main.kind == "conv":
                with keep_bits:
                    return sk.spike_conv2d(x, main.weight, main.bias, main.stride, main.padding, **kw)
            return sk.spike_linear(x, main.weight, main.bias, **kw)

    def layer_current(self, layer: Layer, outs: list, steps: int, stem_current=None, rows=None) -> torch.Tensor:
        """The whole input current of a neuron layer ``[steps, B, C, ...]``: the stem's analog
        current (``stem_current`` ``[1, B, ...]``, broadcast without a copy) or the sum of its
        terms and constant bias, plus the bias schedule's ``rows`` ``[steps, C]`` when given."""
        if layer.kind == "stem":
            cur = stem_current.expand(steps, *stem_current.shape[1:])
        else:
            cur = self.currents(layer.terms(), outs)
            if layer.bias is not None:
                cur = cur + channel_view(layer.bias, cur)
        if rows is not None:
            cur = cur + rows.view(steps, 1, -1, *([1] * (cur.dim() - 3)))
        return cur

    def simulate(self, images: torch.Tensor, T: int, per_step: bool = False, chunk: int | None = None,
                 record_maps: bool = False, observer=None):
        """Simulate ``T`` steps; returns ``(scores, stats)`` (see :meth:`SpikingNetwork.forward`).

        ``observer(i, t0, spikes)``, when given, sees the spikes ``[steps, B, ...]`` of layer i
        for the steps starting at t0, before they are dropped (diagnostics).
        """
        net = self.net
        B = images.shape[0]
        dev = images.device
        itemsize = 1 if wide_chunks(net, self.backend, dev, self.train) else 4
        chunk = min(T, chunk or default_chunk(net, B, tuple(images.shape[2:]), itemsize))
        n = len(net.layers)
        states = [None] * n
        counts = torch.zeros(n, dtype=torch.int64, device=dev)
        neurons = [0] * n
        stems = self.stem_currents(images)
        lam = net.output_scale
        readout = net.readout
        spikes_readout = readout.kind == "spikes"
        acc = v_out = cnt_out = None
        # prefix sums of the output current (and of output spikes) after every step: the
        # delayed readout of T' steps is (S[T'] - S[d]) / (T' - d)
        prefix = cprefix = None
        maps = {i: torch.zeros(l.shape, dtype=torch.float64) for i, l in enumerate(net.layers)} if record_maps else None
        # outputs that only spiking convs read stay bits between layers (no [T, B, C, H, W]
        # tensor is written): inference on the CPU, nobody looking at the spikes
        bits_only = None
        if BITS_BETWEEN_CONVS and not self.train and observer is None and maps is None and dev.type == "cpu":
            from spikekernels.ops.spike_conv.numba_gather import bits_only
        for t0 in range(0, T, chunk):
            steps = min(chunk, T - t0)
            outs: list = [None] * n
            for i in range(n):
                bits = bits_only if i in self.conv_read else None
                outs[i], states[i] = self.run_layer(i, outs, steps, states[i], stems.get(i), t0, bits, donate=True)
                counts[i] += count_spikes(outs[i], self.binary[i])
                if t0 == 0:
                    neurons[i] = outs[i][0, 0].numel()
                if observer is not None:
                    observer(i, t0, outs[i])
                if maps is not None:
                    o = outs[i].detach()
                    m = (o if self.binary[i] else o.abs()).sum((0, 1), dtype=torch.float64).cpu()
                    if m.shape != maps[i].shape:
                        maps[i] = torch.zeros(m.shape, dtype=torch.float64)
                    maps[i] += m
                for j in net.free_after[i]:
                    outs[j] = None
            cur = self.currents(net.output, outs, exact=True)
            del outs
            if prefix is None:
                prefix = torch.empty((T,) + tuple(cur.shape[1:]), dtype=torch.float32, device=dev)
            # a sequential running sum ([B, classes] per step, cheap): the additions happen in the
            # same order for any chunking, so chunked and unchunked runs agree bit for bit
            for k in range(steps):
                acc = cur[k].clone() if acc is None else acc + cur[k]
                prefix[t0 + k] = acc
            if spikes_readout:
                s, v_out = sk.if_scan(cur, 1.0, v_out, return_state=True, backend=self.backend, **self.grad_kw)
                ccount = torch.cumsum(s, 0)
                if cnt_out is not None:
                    ccount += cnt_out
                cnt_out = ccount[-1].clone()
                if cprefix is None:
                    cprefix = torch.empty_like(prefix)
                cprefix[t0 : t0 + steps] = ccount
        scores = self._read(prefix, cprefix, v_out, T, per_step, lam)
        stats = {
            "spikes": {l.name: int(c) for l, c in zip(net.layers, counts.tolist()) if l.kind != "maxpool"},
            "neurons": {l.name: neurons[i] for i, l in enumerate(net.layers) if l.kind != "maxpool"},
            "timesteps": T,
            "batch": B,
        }
        if maps is not None:
            stats["maps"] = maps
        return scores, stats

    def _read(self, prefix, cprefix, v_out, T: int, per_step: bool, lam) -> torch.Tensor:
        """Readout after every step ``[T, B, K]`` (per_step) or after the last ``[B, K]``."""
        readout = self.net.readout
        dev = prefix.device
        ts = torch.arange(1, T + 1, device=dev) if per_step else torch.tensor([T], device=dev)
        d = torch.tensor([readout.delay_for(int(t)) for t in ts.tolist()], device=dev)
        end = prefix[ts - 1]
        start = torch.where((d > 0).view(-1, 1, 1), prefix[(d - 1).clamp_min(0)], torch.zeros_like(end))
        span = (ts - d).to(torch.float32).view(-1, 1, 1)
        if readout.kind == "membrane":
            scores = (end - start) / span * lam
        else:
            cend = cprefix[ts - 1]
            cstart = torch.where((d > 0).view(-1, 1, 1), cprefix[(d - 1).clamp_min(0)], torch.zeros_like(cend))
            # subtract reset with θ = 1 from v0 = 1/2: v_t = 1/2 + Σ current − Σ spikes
            v = v_out[None] if not per_step else 0.5 + end - cend
            scores = (cend - cstart + squash(v)) / span * lam
        return scores if per_step else scores[0]

    def analog_layers(self, images: torch.Tensor, clip: bool = False) -> list:
        """Every layer's activation ``[1, B, ...]`` in the analog view (see :meth:`analog`)."""
        net = self.net
        acts: list = [None] * len(net.layers)
        stems = self.stem_currents(images.float())
        for i, layer in enumerate(net.layers):
            if layer.kind == "maxpool":
                p = layer.pool
                a = acts[layer.source][0]
                pad = ceil_mode_pad(p, tuple(a.shape[-2:]))
                if pad is not None:
                    a = F.pad(a, pad)
                y = F.max_pool2d(a, p["kernel"], p["stride"], p["padding"])[None]
            else:
                cur = stems[i] if layer.kind == "stem" else self.currents(layer.terms(), acts, analog=True)
                if layer.bias is not None:
                    cur = cur + channel_view(layer.bias, cur)
                thr = layer.neuron.threshold
                if isinstance(thr, torch.Tensor) or thr != 1.0:
                    cur = cur / channel_view(torch.as_tensor(thr, dtype=torch.float32), cur)
                y = cur.clamp(0, 1) if clip else cur.clamp_min(0)
            acts[i] = y
        return acts

    def analog(self, images: torch.Tensor, clip: bool = False) -> torch.Tensor:
        """The description run with ReLU (``clip``: clamp to [0, 1]) in place of IF neurons.

        A neuron of threshold θ passes relu(x)/θ (clip: clamp(x/θ, 0, 1)); the start membrane
        and the bias schedule are not part of this view (they act on the spike timing).
        Returns the readout ``[B, classes]`` times λ_out.
        """
        acts = self.analog_layers(images, clip)
        return self.currents(self.net.output, acts, analog=True)[0] * self.net.output_scale


def layer_of(net: Network, name: str) -> Layer:
    """The layer of ``net`` that replaced the ReLU call site ``name``."""
    for layer in net.layers:
        if layer.name == name:
            return layer
    raise KeyError(f"no layer named {name!r}; layers: {[l.name for l in net.layers]}")
