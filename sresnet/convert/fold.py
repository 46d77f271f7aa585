"""Prepare the traced copy for conversion: one module per call site, then BatchNorm folding."""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn

# node.meta key holding the user's module name when a call site got its own copy
ORIGIN = "sresnet_module"


def split_call_sites(gm: fx.GraphModule) -> int:
    """Give every call site of a module with parameters or buffers its own copy, in place.

    Folding rewrites a conv's weights with the BatchNorm that follows it; a weight-tied
    conv called twice (each call with its own BatchNorm, or none) must be folded once per
    call, so each later call site gets a deep copy of the module (``<name>_call2``, ...).
    Parameter-free modules (a shared ``nn.ReLU``) are left shared: every ReLU call site is
    already a neuron layer of its own.

    Args:
        gm: traced model (a copy of the user's model).

    Returns:
        the number of copies added. Each re-targeted node keeps the user's module name in
        ``node.meta["sresnet_module"]`` for error messages.
    """
    modules = dict(gm.named_modules())
    sites: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            sites.setdefault(node.target, []).append(node)
    added = 0
    for target, nodes in sites.items():
        mod = modules[target]
        stateful = any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())
        if len(nodes) < 2 or not stateful:
            continue
        for k, node in enumerate(nodes[1:], start=2):
            name = f"{target.replace('.', '_')}_call{k}"
            while name in modules:
                name += "_"
            gm.add_submodule(name, copy.deepcopy(mod))
            modules[name] = gm.get_submodule(name)
            node.meta[ORIGIN] = target
            node.target = name
            added += 1
    if added:
        gm.recompile()
    return added


def module_name(node: fx.Node) -> str:
    """The user's name of the module a call_module node calls (before :func:`split_call_sites`)."""
    return node.meta.get(ORIGIN, node.target)


def _fold_into(layer: nn.Module, bn: nn.Module, where: str) -> None:
    """W' = W·γ/σ, b' = β + (b − μ)·γ/σ with σ = sqrt(var + eps): the running (eval) statistics."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"unsupported {type(bn).__name__} at {where}: track_running_stats=False normalizes each batch by "
            "its own statistics, which is not a fixed affine map; accepted: BatchNorm with running statistics"
        )
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    w = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    # new Parameters (never in-place): a weight shared with another module stays untouched there
    layer.weight = nn.Parameter(w * scale.view(-1, *([1] * (w.dim() - 1))), requires_grad=False)
    layer.bias = nn.Parameter(beta + (bias - bn.running_mean) * scale, requires_grad=False)


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold, in place, each BatchNorm2d (BatchNorm1d) whose input is a Conv2d (Linear) used by it alone.

    Call :func:`split_call_sites` first when a conv/linear module may be called at several
    places: folding changes the module, which every call of it would see.

    Args:
        gm: traced model (a copy: its conv/linear modules are modified).

    Returns:
        the number of BatchNorm layers folded. Others are left in the graph, and the
        program analysis rejects them with their position.

    Raises:
        ValueError: a BatchNorm to fold has no running statistics (track_running_stats=False).
    """
    modules = dict(gm.named_modules())
    positions = {n.name: i for i, n in enumerate(gm.graph.nodes)}
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
        where = f"node {node.name!r} (graph position {positions[node.name]}, module {module_name(node)!r})"
        _fold_into(layer, bn, where)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded
