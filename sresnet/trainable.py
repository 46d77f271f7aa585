"""Fine-tuning a converted network with surrogate gradients (hybrid conversion).

:func:`to_trainable` copies a :class:`sresnet.SpikingNetwork`'s description and registers its
weights and biases as ``nn.Parameter``s; running it (``model(images, timesteps=T)``) goes
through the same executor as inference, with float32 spikes between layers and the
surrogate-gradient path of every spikekernels op, so a loss on the readout backpropagates
through time (BPTT) to every conv/linear layer. Thresholds, start membranes, shortcut
scales and bias schedules stay fixed. :meth:`TrainableSpikingNetwork.to_spiking` gives back
a :class:`SpikingNetwork` with the trained weights for fast inference and ``sresnet.save``.

Converting, then fine-tuning a few epochs at the target T, is the established way past the
training-free limit at very short T (e.g. Rathi et al., ICLR 2020, "Enabling deep spiking
neural networks with hybrid conversion and spike timing dependent backpropagation").
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .executor import Executor
from .simulate import SpikingNetwork


class TrainableSpikingNetwork(nn.Module):
    """A converted network whose conv/linear weights and biases are trainable parameters.

    Args:
        snn: the converted network (copied; it is not changed).
        surrogate: the spike's surrogate derivative (None: spikekernels' default, a sigmoid
            of slope 4; "atan", "triangle" or a ``spikekernels.surrogate`` instance).
        detach_reset: treat the spike in the reset as a constant in the backward pass.

    Parameters are named ``layer{i}_{main|other{k}}_{weight|bias}`` and ``output{k}_{weight|bias}``.
    """

    def __init__(self, snn: SpikingNetwork, surrogate=None, detach_reset: bool = False):
        super().__init__()
        if not isinstance(snn, SpikingNetwork):
            raise TypeError(f"to_trainable() takes a SpikingNetwork (from sresnet.convert), got {type(snn).__name__}")
        self.network = copy.deepcopy(snn.network)
        self.surrogate, self.detach_reset = surrogate, detach_reset
        terms = []
        for i, layer in enumerate(self.network.layers):
            if layer.main is not None:
                terms.append((f"layer{i}_main", layer.main))
            terms += [(f"layer{i}_other{k}", t) for k, t in enumerate(layer.others)]
        terms += [(f"output{k}", t) for k, t in enumerate(self.network.output)]
        for name, term in terms:
            for field in ("weight", "bias"):
                value = getattr(term, field)
                if value is not None:
                    p = nn.Parameter(value.detach().clone().float())
                    self.register_parameter(f"{name}_{field}", p)
                    # the description holds the Parameter itself: the executor reads it
                    setattr(term, field, p)

    def _apply(self, fn, recurse=True):
        # parameters move in place (their .data), the description's other tensors here
        out = super()._apply(fn, recurse)
        params = {id(p) for p in self.parameters()}
        for layer in self.network.layers:
            for t in layer.terms():
                if t.scale is not None:
                    t.scale = fn(t.scale)
            if layer.bias is not None and id(layer.bias) not in params:
                layer.bias = fn(layer.bias)
            layer.neuron.apply(fn)
        for t in self.network.output:
            if t.scale is not None:
                t.scale = fn(t.scale)
        self.network.output_scale = fn(self.network.output_scale)
        return out

    def forward(self, images: torch.Tensor, timesteps: int, per_step: bool = False, *,
                backend: str | None = None) -> torch.Tensor:
        """Simulate ``timesteps`` steps with autograd and read out the class scores.

        Args:
            images: normalized ``[B, C, H, W]`` float tensor of the conversion's image size.
            timesteps: T >= 1 (all T steps are kept for backpropagation through time:
                memory grows with T · B).
            per_step: scores after every step ``[T, B, classes]`` instead of ``[B, classes]``.
            backend: spikekernels backend.

        Returns:
            scores ``[B, classes]`` (or ``[T, B, classes]``): the readout of
            :meth:`SpikingNetwork.forward` (≈ the ANN's logits), differentiable.
        """
        SpikingNetwork.check_images(self, images)
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
        ex = Executor(self.network, backend, train=True, surrogate=self.surrogate, detach_reset=self.detach_reset)
        scores, _ = ex.simulate(images.float(), timesteps, per_step, chunk=timesteps)
        return scores

    # check_images reads these two, as on SpikingNetwork
    input_shape = property(lambda self: self.network.input_shape)

    def to_spiking(self) -> SpikingNetwork:
        """A :class:`SpikingNetwork` with the current weights (detached copies), for inference."""
        net = copy.deepcopy(self.network)
        for layer in net.layers:
            for t in layer.terms():
                t.apply(lambda x: x.detach().clone())
        for t in net.output:
            t.apply(lambda x: x.detach().clone())
        return SpikingNetwork(net)


def to_trainable(snn: SpikingNetwork, surrogate=None, detach_reset: bool = False) -> TrainableSpikingNetwork:
    """An ``nn.Module`` over a copy of ``snn`` whose weights train with surrogate gradients.

    Example:
        >>> model = sresnet.to_trainable(snn)
        >>> opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        >>> loss = F.cross_entropy(model(images, timesteps=16), labels); loss.backward(); opt.step()
        >>> snn = model.to_spiking()        # fast inference, sresnet.save
    """
    return TrainableSpikingNetwork(snn, surrogate, detach_reset)
