"""The spiking network: timestep-batched, chunked simulation with a per-step readout.

Each layer runs once per *chunk* of time steps on the whole ``[Tc, B, ...]`` block (the
linear op on the ``Tc·B`` batch, the neuron scanning Tc inside a spikekernels kernel),
carrying its membrane (or max-pool counts) to the next chunk. Spikes between layers are
uint8. A layer's output is dropped as soon as its last reader has run, so memory is
bounded by the chunk, not by T; only the ``[T, B, classes]`` per-step readout grows with T.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import spikekernels as sk

# target size of the largest intermediate of one chunk (larger tensors are fresh mmaps on
# glibc and page-fault on each allocation, see DESIGN.md)
CHUNK_BYTES = 32 * 2 ** 20
READOUTS = ("membrane", "spikes")


class RTerm:
    """One input of a neuron: source spikes -> pre ops -> optional conv/linear -> post ops -> x scale."""

    __slots__ = ("source", "pre", "kind", "weight", "bias", "stride", "padding", "post", "scale")

    def __init__(self, source, pre, kind=None, weight=None, bias=None, stride=1, padding=0, post=(), scale=None):
        self.source, self.pre, self.kind = source, list(pre), kind
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding
        self.post, self.scale = list(post), scale

    def apply(self, fn) -> None:
        """Apply ``fn`` to every tensor of the term (device / dtype moves)."""
        self.weight = fn(self.weight) if self.weight is not None else None
        self.bias = fn(self.bias) if self.bias is not None else None
        self.scale = fn(self.scale) if self.scale is not None else None

    def multiply(self, c: float | torch.Tensor) -> None:
        """Scale this term's contribution by ``c`` (a number or one value per output channel)."""
        c = torch.as_tensor(c, dtype=torch.float32, device=self.weight.device if self.weight is not None else None)
        if self.kind is None:
            self.scale = (self.scale if self.scale is not None else torch.ones(())) * c
            return
        self.weight = self.weight * c.reshape(-1, *([1] * (self.weight.dim() - 1))) if c.dim() else self.weight * c
        if self.bias is not None:
            self.bias = self.bias * c


class RLayer:
    """A spiking layer: kind "stem" (conv of the analog image), "neuron" or "maxpool"."""

    __slots__ = ("kind", "name", "shape", "main", "others", "residual_spikes", "bias", "pool", "source")

    def __init__(self, kind, name, shape, main=None, others=(), bias=None, pool=None, source=-1):
        self.kind, self.name, self.shape = kind, name, tuple(shape)
        self.main, self.others, self.bias = main, list(others), bias
        self.pool, self.source = pool, source
        self.residual_spikes = (
            main is not None and len(self.others) == 1 and self.others[0].kind is None and not self.others[0].post
        )

    @property
    def neurons(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    def sources(self) -> list[int]:
        if self.kind == "maxpool":
            return [self.source]
        return [t.source for t in ([self.main] if self.main else []) + self.others]

    def add_bias(self, delta: torch.Tensor) -> None:
        """Add a constant input current per channel ``[C]`` (bias correction)."""
        if self.main is not None:
            b = self.main.bias if self.main.bias is not None else torch.zeros(self.shape[0])
            self.main.bias = b + delta
        else:
            self.bias = (self.bias if self.bias is not None else torch.zeros(self.shape[0])) + delta

    def multiply(self, c) -> None:
        for t in ([self.main] if self.main else []) + self.others:
            t.multiply(c)
        if self.bias is not None:
            self.bias = self.bias * torch.as_tensor(c, dtype=torch.float32)


def _apply(op: tuple, x: torch.Tensor, backend) -> torch.Tensor:
    kind = op[0]
    if kind == "subsample":
        return x[:, :, :, :: op[1], :: op[1]]
    if kind == "chanpad":
        return F.pad(x, (0, 0, 0, 0, op[1], op[2]))
    if kind == "avgpool":
        return sk.spike_avg_pool2d(x, op[1], op[2], op[3], backend=backend)
    if kind == "gap":
        y = sk.global_avg_pool(x, backend=backend)
        return y[..., None, None] if op[1] else y
    if kind == "flatten":
        return x.reshape(x.shape[0], x.shape[1], -1)
    raise AssertionError(kind)


def _count_spikes(s: torch.Tensor):
    """Nonzero entries of a spike tensor; numpy's count on CPU is about 3x torch's."""
    if s.device.type == "cpu":
        return int(np.count_nonzero(s.detach().numpy()))
    return torch.count_nonzero(s)


def _squash(v: torch.Tensor) -> torch.Tensor:
    """Monotone map of the membrane into (0, 1) for tie-breaking spike counts. Plain
    arithmetic (no exp), so SIMD and scalar code paths round it identically."""
    return 0.5 + 0.5 * v / (1.0 + v.abs())


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 3))) if v.dim() else v


class SpikingNetwork(nn.Module):
    """A converted spiking ResNet; call it like the ANN plus ``timesteps``.

    Built by :func:`sresnet.convert`. Attributes: ``layers`` (list of :class:`RLayer`),
    ``output`` (terms of the logits), ``output_scale`` (λ of the logits), ``readout``,
    ``last_stats`` (spike counts of the last run, see :meth:`forward`).
    """

    def __init__(self, layers, output, output_scale, input_shape, readout="membrane", info=None):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout={readout!r}; accepted: {', '.join(map(repr, READOUTS))}")
        self.layers, self.output, self.readout = layers, output, readout
        self.output_scale = torch.as_tensor(output_scale, dtype=torch.float32)
        self.input_shape = tuple(input_shape)
        self.info = dict(info or {})
        self.last_stats: dict | None = None
        self.scales: dict = {}
        self.compensation: dict = {}
        self._plan()

    def _apply(self, fn, recurse=True):
        # weights live in plain tensors of the layers: move them with the module (.to, .cuda)
        for layer in self.layers:
            for t in ([layer.main] if layer.main else []) + layer.others:
                t.apply(fn)
            if layer.bias is not None:
                layer.bias = fn(layer.bias)
        for t in self.output:
            t.apply(fn)
        self.output_scale = fn(self.output_scale)
        return super()._apply(fn, recurse)

    def _plan(self) -> None:
        last = {}
        for i, layer in enumerate(self.layers):
            for s in layer.sources():
                if s >= 0:
                    last[s] = i
        n = len(self.layers)
        for t in self.output:
            last[t.source] = n
        self._free = [[j for j, k in last.items() if k == i] for i in range(n + 1)]

    def extra_repr(self) -> str:
        kinds = [l.kind for l in self.layers]
        return f"layers={len(kinds)} (neurons={kinds.count('neuron') + kinds.count('stem')}, maxpool={kinds.count('maxpool')}), readout={self.readout!r}"

    def default_chunk(self, batch: int, hw: tuple) -> int:
        """Time steps per chunk so that the largest float32 intermediate stays near 32 MiB."""
        area = hw[0] * hw[1] / max(1, self.input_shape[1] * self.input_shape[2])
        widest = max([l.neurons for l in self.layers] + [1]) * max(area, 1e-9)
        return max(1, int(CHUNK_BYTES // (4 * batch * widest)))

    def _term(self, term: RTerm, outs: list, backend, exact: bool = False) -> torch.Tensor:
        x = outs[term.source]
        for op in term.pre:
            x = _apply(op, x, backend)
        if exact and term.kind in ("conv", "linear"):
            # the readout: computed in float64 and rounded once, so its float32 value does not
            # depend on how many steps are batched together (a float32 matmul's rounding can
            # depend on its row count); chunked and unchunked runs then agree bit for bit
            w, b = term.weight.double(), None if term.bias is None else term.bias.double()
            T, B = x.shape[:2]
            x = x.reshape(T * B, *x.shape[2:]).double()
            x = F.conv2d(x, w, b, term.stride, term.padding) if term.kind == "conv" else F.linear(x, w, b)
            x = x.float().reshape(T, B, *x.shape[1:])
        elif term.kind == "conv":
            x = sk.spike_conv2d(x, term.weight, term.bias, term.stride, term.padding, neuron=False, backend=backend)
        elif term.kind == "linear":
            x = sk.spike_linear(x, term.weight, term.bias, neuron=False, backend=backend)
        for op in term.post:
            x = _apply(op, x, backend)
        if term.kind is None:
            x = x.float()
            if term.scale is not None:
                x = x * _channel_view(term.scale, x)
        return x

    def _currents(self, terms, outs, backend, exact: bool = False) -> torch.Tensor:
        total = None
        for t in terms:
            c = self._term(t, outs, backend, exact)
            total = c if total is None else total + c
        return total

    def step_layer(self, i: int, outs: list, steps: int, state, stem_current=None, backend=None):
        """Run layer ``i`` for ``steps`` steps on the outputs ``outs`` of earlier layers.

        Returns ``(spikes [steps, B, ...] uint8, state)``; ``state`` is None at the start (θ/2).
        """
        layer = self.layers[i]
        u8 = torch.uint8
        if layer.kind == "stem":
            cur = stem_current.expand(steps, *stem_current.shape[1:])
            return sk.if_scan(cur, 1.0, state, return_state=True, spike_dtype=u8, backend=backend)
        if layer.kind == "maxpool":
            p = layer.pool
            return sk.spike_max_pool2d(outs[layer.source], p["kernel"], p["stride"], p["padding"], count=state,
                                       return_state=True, backend=backend)
        main = layer.main
        if main is None:
            cur = self._currents(layer.others, outs, backend)
            if layer.bias is not None:
                cur = cur + _channel_view(layer.bias, cur)
            return sk.if_scan(cur, 1.0, state, return_state=True, spike_dtype=u8, backend=backend)
        x = outs[main.source]
        for op in main.pre:
            x = _apply(op, x, backend)
        residual, rscale = None, 1.0
        if layer.residual_spikes:
            other = layer.others[0]
            residual = outs[other.source]
            for op in other.pre:
                residual = _apply(op, residual, backend)
            rscale = other.scale if other.scale is not None else 1.0
        elif layer.others:
            residual = self._currents(layer.others, outs, backend)
        kw = dict(threshold=1.0, v0=state, return_state=True, residual=residual, residual_scale=rscale,
                  spike_dtype=u8, backend=backend)
        if main.kind == "conv":
            return sk.spike_conv2d(x, main.weight, main.bias, main.stride, main.padding, **kw)
        return sk.spike_linear(x, main.weight, main.bias, **kw)

    def stem_currents(self, images: torch.Tensor, backend=None) -> dict:
        """The analog image's conv, computed once per run: ``{layer index: [1, B, C, H, W]}``."""
        out = {}
        for i, layer in enumerate(self.layers):
            if layer.kind == "stem":
                t = layer.main
                x = images[None]
                for op in t.pre:
                    x = _apply(op, x, backend)
                if t.kind == "conv":
                    out[i] = sk.spike_conv2d(x, t.weight, t.bias, t.stride, t.padding, neuron=False, backend=backend)
                else:
                    out[i] = sk.spike_linear(x, t.weight, t.bias, neuron=False, backend=backend)
        return out

    def analog(self, images: torch.Tensor, clip: bool = False) -> torch.Tensor:
        """The normalized network with ReLU (``clip``: clamp to [0, 1]) instead of IF neurons.

        Without ``clip`` this is the ANN with normalized weights: logits / λ_out exactly
        (up to float rounding), a check of folding and normalization. With ``clip`` it is
        the rate an ideal SNN converges to as T grows.

        Args:
            images: ``[B, C, H, W]``.

        Returns:
            the readout ``[B, classes]`` times λ_out (ANN logits without ``clip``).
        """
        self.check_images(images)
        with torch.no_grad():
            x = images.float()[None]
            acts: list = [None] * len(self.layers)
            for i, layer in enumerate(self.layers):
                if layer.kind == "maxpool":
                    a = acts[layer.source]
                    p = layer.pool
                    y = F.max_pool2d(a[0], p["kernel"], p["stride"], p["padding"])[None]
                else:
                    terms = ([layer.main] if layer.main else []) + layer.others
                    if layer.kind == "stem":
                        cur = self.stem_currents(images.float())[i]
                    else:
                        cur = self._currents(terms, acts, "reference")
                    if layer.bias is not None:
                        cur = cur + _channel_view(layer.bias, cur)
                    y = cur.clamp(0, 1) if clip else cur.clamp_min(0)
                acts[i] = y
            del x
            return self._currents(self.output, acts, "reference")[0] * self.output_scale

    def check_images(self, images) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != self.input_shape[0] or images.shape[0] == 0:
            raise ValueError(
                f"images must be [B, {self.input_shape[0]}, H, W] with B >= 1, got shape {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(f"images must be a normalized float tensor, got dtype {images.dtype}")
        if not bool(torch.isfinite(images).all()):
            bad = int((~torch.isfinite(images)).sum())
            raise ValueError(f"images contain {bad} NaN/Inf values; the spiking network needs finite inputs")

    def forward(self, images: torch.Tensor, timesteps: int, per_step: bool = False, *, chunk: int | None = None,
                backend: str | None = None, return_stats: bool = False, record_maps: bool = False):
        """Simulate ``timesteps`` steps and read out the class scores.

        Args:
            images: normalized images ``[B, C, H, W]`` (finite floats).
            timesteps: T >= 1.
            per_step: return the readout after every step ``[T, B, classes]`` (one run gives
                the accuracy at every T' <= T) instead of after the last ``[B, classes]``.
            chunk: time steps simulated together (default: largest intermediate ~32 MiB).
                Results do not depend on it.
            backend: spikekernels backend for every op ("auto", "reference", "numba", "triton").
            return_stats: also return the spike statistics (also kept in ``self.last_stats``).

        Returns:
            scores ``[B, classes]`` or ``[T, B, classes]``: "membrane" readout: the mean output
            current times λ_out (estimates the ANN logits); "spikes" readout: (spike count +
            squash(membrane)) (squash maps into (0, 1) monotonically) / t · λ_out, so counts decide and the membrane breaks ties.
            With ``record_maps`` the stats also hold ``"maps"``: {layer index: spike counts of
            that layer's output per neuron, summed over steps and images} (for synaptic-op counts).
            With ``return_stats``: ``(scores, stats)``, stats = ``{"spikes": {layer: count},
            "neurons": {layer: neurons per image}, "timesteps": T, "batch": B}``; firing rate
            = spikes / (neurons · T · B).
        """
        self.check_images(images)
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
        if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
        with torch.no_grad():
            return self._run(images.float(), timesteps, per_step, chunk, backend, return_stats, record_maps)

    def _run(self, images, T, per_step, chunk, backend, return_stats, record_maps=False):
        B = images.shape[0]
        chunk = min(T, chunk or self.default_chunk(B, tuple(images.shape[2:])))
        n = len(self.layers)
        dev = images.device
        states = [None] * n
        counts = torch.zeros(n, dtype=torch.int64, device=dev)
        stems = self.stem_currents(images, backend)
        lam = self.output_scale
        acc = v_out = cnt_out = None
        scores = None
        maps = {i: torch.zeros(l.shape, dtype=torch.float64) for i, l in enumerate(self.layers)} if record_maps else None
        for t0 in range(0, T, chunk):
            steps = min(chunk, T - t0)
            outs: list = [None] * n
            for i in range(n):
                outs[i], states[i] = self.step_layer(i, outs, steps, states[i], stems.get(i), backend)
                counts[i] += _count_spikes(outs[i])
                if maps is not None:
                    maps[i] += outs[i].sum((0, 1), dtype=torch.float64).cpu()
                for j in self._free[i]:
                    outs[j] = None
            cur = self._currents(self.output, outs, backend, exact=True)
            del outs
            # a sequential running sum ([B, classes] per step, cheap): the additions happen in the
            # same order for any chunking, so chunked and unchunked runs agree bit for bit
            csum = torch.empty_like(cur)
            for k in range(steps):
                acc = cur[k].clone() if acc is None else acc + cur[k]
                csum[k] = acc
            if self.readout == "membrane":
                if per_step:
                    t = torch.arange(t0 + 1, t0 + steps + 1, dtype=torch.float32, device=dev).view(-1, 1, 1)
                    block = csum / t * lam
            else:
                s, v_out = sk.if_scan(cur, 1.0, v_out, return_state=True, backend=backend)
                ccount = torch.cumsum(s, 0)
                if cnt_out is not None:
                    ccount += cnt_out
                cnt_out = ccount[-1].clone()
                if per_step:
                    t = torch.arange(t0 + 1, t0 + steps + 1, dtype=torch.float32, device=dev).view(-1, 1, 1)
                    # subtract reset with θ = 1 from v0 = 1/2: v_t = 1/2 + Σ current − Σ spikes
                    block = (ccount + _squash(0.5 + csum - ccount)) / t * lam
            if per_step:
                if scores is None:
                    scores = torch.empty((T,) + tuple(cur.shape[1:]), dtype=torch.float32, device=dev)
                scores[t0 : t0 + steps] = block
        if not per_step:
            if self.readout == "membrane":
                scores = acc / T * lam
            else:
                scores = (cnt_out + _squash(v_out)) / T * lam
        self.last_stats = {
            "spikes": {l.name: int(c) for l, c in zip(self.layers, counts.tolist()) if l.kind != "maxpool"},
            "neurons": {l.name: l.neurons for l in self.layers if l.kind != "maxpool"},
            "timesteps": T,
            "batch": B,
        }
        if maps is not None:
            self.last_stats["maps"] = maps
        return (scores, self.last_stats) if return_stats else scores


def firing_rate(stats: dict) -> float:
    """Mean firing rate over all neurons of a run: total spikes / (neurons · T · B)."""
    spikes = sum(stats["spikes"].values())
    neurons = sum(stats["neurons"].values())
    return spikes / max(1, neurons * stats["timesteps"] * stats["batch"])
