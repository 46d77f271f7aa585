"""The spiking network module: a converted network you call like the ANN plus ``timesteps``.

What the network computes is described by :mod:`sresnet.network` (layers, terms, neuron
parameters, readout); how it is run (timestep-batched, chunked, per-step readout) by
:mod:`sresnet.executor`. :class:`SpikingNetwork` joins the two as an ``nn.Module``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .executor import CHUNK_BYTES, Executor, default_chunk  # noqa: F401  (re-exported)
from .network import READOUTS, Layer, Network, Neuron, Readout, Term  # noqa: F401  (re-exported)

# the names of the description's classes before the description/executor split
RLayer, RTerm = Layer, Term


class SpikingNetwork(nn.Module):
    """A converted spiking network; call it like the ANN plus ``timesteps``.

    Built by :func:`sresnet.convert`. A thin module over a :class:`sresnet.network.Network`
    (the description, ``.network``), run by a :class:`sresnet.executor.Executor`. The
    description's fields are readable here too: ``layers``, ``output``, ``output_scale``,
    ``input_shape``, ``readout``, ``info``, ``scales`` (λ per site), ``compensation``;
    ``last_stats`` holds the spike counts of the last run (see :meth:`forward`).
    """

    def __init__(self, layers, output=None, output_scale=None, input_shape=None, readout="membrane", info=None):
        super().__init__()
        if isinstance(layers, Network):
            self.network = layers
        else:
            self.network = Network(layers, output, output_scale, input_shape, readout, info)
        self.last_stats: dict | None = None

    # the description's fields, as attributes of the module
    layers = property(lambda self: self.network.layers)
    output = property(lambda self: self.network.output)
    input_shape = property(lambda self: self.network.input_shape)
    readout = property(lambda self: self.network.readout.kind)
    info = property(lambda self: self.network.info)
    _free = property(lambda self: self.network.free_after)

    @property
    def output_scale(self) -> torch.Tensor:
        return self.network.output_scale

    @property
    def scales(self) -> dict:
        return self.network.scales

    @scales.setter
    def scales(self, value: dict) -> None:
        self.network.scales = dict(value)

    @property
    def compensation(self) -> dict:
        return self.network.compensation

    @compensation.setter
    def compensation(self, value: dict) -> None:
        self.network.compensation = dict(value)

    def _apply(self, fn, recurse=True):
        # weights live in plain tensors of the description: move them with the module (.to, .cuda)
        self.network.apply(fn)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        kinds = [l.kind for l in self.layers]
        r = self.network.readout
        delay = f", readout delay={r.delay}/{r.delay_fraction:g}T" if r.delay or r.delay_fraction else ""
        return (f"layers={len(kinds)} (neurons={kinds.count('neuron') + kinds.count('stem')}, "
                f"maxpool={kinds.count('maxpool')}), readout={r.kind!r}{delay}")

    def default_chunk(self, batch: int, hw: tuple) -> int:
        """Time steps per chunk so that the largest float32 intermediate stays near 32 MiB."""
        return default_chunk(self.network, batch, hw)

    def step_layer(self, i: int, outs: list, steps: int, state, stem_current=None, backend=None, t0: int = 0):
        """Run layer ``i`` for ``steps`` steps (see :meth:`sresnet.executor.Executor.run_layer`)."""
        return Executor(self.network, backend).run_layer(i, outs, steps, state, stem_current, t0)

    def stem_currents(self, images: torch.Tensor, backend=None) -> dict:
        """The analog image's conv, computed once per run: ``{layer index: [1, B, C, H, W]}``."""
        return Executor(self.network, backend).stem_currents(images)

    def analog(self, images: torch.Tensor, clip: bool = False) -> torch.Tensor:
        """The normalized network with ReLU (``clip``: clamp to [0, 1]) instead of IF neurons.

        Without ``clip`` this is the ANN with normalized weights: logits / λ_out exactly
        (up to float rounding), a check of folding and normalization. With ``clip`` it is
        the rate an ideal SNN converges to as T grows.

        Args:
            images: ``[B, C, H, W]``.

        Returns:
            the readout ``[B, classes]`` times λ_out (ANN logits without ``clip``).

        Raises:
            TypeError / ValueError: as :meth:`check_images`.
        """
        self.check_images(images)
        with torch.no_grad():
            return Executor(self.network, "reference").analog(images.float(), clip)

    def check_images(self, images) -> None:
        """Raise a TypeError/ValueError naming what is wrong with ``images`` for this network."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
        c, h, w = (list(self.input_shape) + [None, None, None])[:3]
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a batch [B, {c}, H, W] with B >= 1 (this network was converted for "
                             f"images {list(self.input_shape)}); got shape {list(images.shape)}")
        if images.shape[1] != c:
            raise ValueError(f"this network was converted for images {list(self.input_shape)} ([C, H, W]); "
                             f"got images with {images.shape[1]} channels (shape {list(images.shape)})")
        if tuple(images.shape[2:]) != (h, w) and not self.network.size_agnostic:
            fixed = self.network.info.get("size_specific")
            why = f"Its {fixed[0]} are fixed" if fixed else "Its head flattens a spatial map"
            raise ValueError(
                f"this network was converted for images {list(self.input_shape)} ([C, H, W]); got "
                f"{list(images.shape[2:])} (H, W). {why}, so it only accepts "
                f"{h}x{w} images: resize them, or convert the model on images of the new size")
        if not images.is_floating_point():
            raise TypeError(f"images must be a normalized float tensor, got dtype {images.dtype}")
        if not bool(torch.isfinite(images).all()):
            bad = int((~torch.isfinite(images)).sum())
            raise ValueError(f"images contain {bad} NaN/Inf values; the spiking network needs finite inputs")

    def forward(self, images: torch.Tensor, timesteps: int, per_step: bool = False, *, chunk: int | None = None,
                backend: str | None = None, return_stats: bool = False, record_maps: bool = False):
        """Simulate ``timesteps`` steps and read out the class scores.

        Args:
            images: normalized images ``[B, C, H, W]`` (finite floats) of the size the network
                was converted for (any size when its head is global pooling).
            timesteps: T >= 1.
            per_step: return the readout after every step ``[T, B, classes]`` (one run gives
                the accuracy at every T' <= T) instead of after the last ``[B, classes]``.
            chunk: time steps simulated together (default: largest intermediate ~32 MiB,
                :func:`sresnet.executor.default_chunk`; uint8 spikes count 1 byte in a CPU
                inference run on the Numba backend, :func:`sresnet.executor.wide_chunks`).
                Results do not depend on it.
            backend: spikekernels backend for every op ("auto", "reference", "numba", "triton").
            return_stats: also return the spike statistics (also kept in ``self.last_stats``).
            record_maps: also record spike-count maps (for synaptic-op counts).

        Returns:
            scores ``[B, classes]`` or ``[T, B, classes]``: "membrane" readout: the mean output
            current times λ_out (estimates the ANN logits); "spikes" readout: (spike count +
            squash(membrane)) (squash maps into (0, 1) monotonically) / t · λ_out, so counts
            decide and the membrane breaks ties. With a readout delay d(T') (see
            :class:`sresnet.network.Readout`) the means and counts cover steps d+1 .. T' only.
            With ``record_maps`` the stats also hold ``"maps"``: {layer index: spike counts of
            that layer's output per neuron, summed over steps and images}.
            With ``return_stats``: ``(scores, stats)``, stats = ``{"spikes": {layer: count},
            "neurons": {layer: neurons per image}, "timesteps": T, "batch": B}``; firing rate
            = spikes / (neurons · T · B).

        Raises:
            TypeError / ValueError: bad images (see :meth:`check_images`), timesteps or chunk.
        """
        self.check_images(images)
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
        with torch.no_grad():
            scores, stats = Executor(self.network, backend).simulate(images.float(), timesteps, per_step, chunk,
                                                                     record_maps)
        self.last_stats = stats
        return (scores, stats) if return_stats else scores


def firing_rate(stats: dict) -> float:
    """Mean firing rate over all neurons of a run: total spikes / (neurons · T · B)."""
    spikes = sum(stats["spikes"].values())
    neurons = sum(stats["neurons"].values())
    return spikes / max(1, neurons * stats["timesteps"] * stats["batch"])
