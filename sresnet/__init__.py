"""sresnet: convert trained ResNets into spiking ResNets (S-ResNet) and simulate them."""

__version__ = "0.1.0"
