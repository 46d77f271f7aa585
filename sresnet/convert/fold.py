"""Fold every BatchNorm into the conv/linear layer before it (eval statistics)."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn


def _fold_into(layer: nn.Module, bn: nn.Module) -> None:
    """W' = W·γ/σ, b' = β + (b − μ)·γ/σ with σ = sqrt(var + eps): the running (eval) statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} has no running statistics (track_running_stats=False); cannot fold it")
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    w = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    layer.weight = nn.Parameter(w * scale.view(-1, *([1] * (w.dim() - 1))), requires_grad=False)
    layer.bias = nn.Parameter(beta + (bias - bn.running_mean) * scale, requires_grad=False)


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold, in place, each BatchNorm2d (BatchNorm1d) whose input is a Conv2d (Linear) used by it alone.

    Args:
        gm: traced model (a copy: its conv/linear modules are modified).

    Returns:
        the number of BatchNorm layers folded. Others are left in the graph, and the
        program analysis rejects them with their position.
    """
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer = modules[prev.target]
        bn = modules[node.target]
        pairs_ok = (isinstance(bn, nn.BatchNorm2d) and isinstance(layer, nn.Conv2d)) or (
            isinstance(bn, nn.BatchNorm1d) and isinstance(layer, nn.Linear)
        )
        if not pairs_ok:
            continue
        _fold_into(layer, bn)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded
