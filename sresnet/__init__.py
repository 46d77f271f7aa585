"""sresnet: convert trained ResNets into spiking ResNets (S-ResNet) and simulate them."""

import spikekernels  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch starts OpenMP)

from .convert import convert
from .data import load_cifar
from .evaluate import evaluate, evaluate_snn
from .io import load, save
from .metrics import cost_from_maps, network_cost
from .models import cifar_resnet, imagenet_resnet, load_checkpoint
from .simulate import SpikingNetwork, firing_rate
from .trainable import TrainableSpikingNetwork, to_trainable

__version__ = "0.1.0"

__all__ = [
    "SpikingNetwork",
    "TrainableSpikingNetwork",
    "cifar_resnet",
    "convert",
    "cost_from_maps",
    "evaluate",
    "evaluate_snn",
    "firing_rate",
    "imagenet_resnet",
    "load",
    "load_checkpoint",
    "network_cost",
    "save",
    "load_cifar",
    "to_trainable",
]
