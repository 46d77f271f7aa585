"""Weight normalization with the S-ResNet shortcut rule, producing the runtime layers.

A neuron with scale λ_out whose pre-activation is ``Σ_k f_k(x_k) + b`` (x_k the output of
an earlier ReLU with scale λ_k, carried by spikes s_k ≈ x_k/λ_k) integrates
``Σ_k f_k(λ_k s_k)/λ_out + b/λ_out``: the weighted layer of a term gets
``W·λ_k/λ_out`` (per input channel / output channel when λ is per channel) and
``b/λ_out``; a term without weights (identity or option-A shortcut) enters with weight
``λ_k/λ_out``. For a residual block that is exactly the paper's rule: conv2 uses the
post-sum scale λ_y, the shortcut λ_x/λ_y. ``shortcut_norm=False`` is the naive ablation:
in a sum, each weighted term is normalized by its *own* output scale and shortcuts enter
with weight 1.
"""

from __future__ import annotations

import math

import torch

from ..network import Layer as RLayer, Term as RTerm
from .trace import Program, Term


def _layer_scale(program: Program, scales: dict, idx: int) -> torch.Tensor:
    if idx == -1:
        return torch.tensor(1.0)
    layer = program.layers[idx]
    if layer.kind == "maxpool":
        return _layer_scale(program, scales, layer.source)
    return scales[layer.name]


def _runtime_op(op) -> tuple:
    a = op.args
    if op.kind == "subsample":
        return ("subsample", a["stride"])
    if op.kind == "chanpad":
        return ("chanpad", a["lo"], a["hi"])
    if op.kind == "avgpool":
        return ("avgpool", a["kernel"], a["stride"], a["padding"])
    if op.kind == "gap":
        return ("gap", bool(a.get("keepdim", len(op.out_shape) == 3)))
    if op.kind == "flatten":
        return ("flatten",)
    if op.kind == "maxpool":
        return ("maxpool", a["kernel"], a["stride"], a["padding"])
    raise AssertionError(op.kind)


def _carry(lam: torch.Tensor, op) -> torch.Tensor:
    """How a per-channel scale vector follows a parameter-free op."""
    if lam.dim() == 0:
        return lam
    if op.kind == "chanpad":
        one = torch.ones(1)
        return torch.cat([one.expand(op.args["lo"]), lam, one.expand(op.args["hi"])])
    if op.kind == "flatten" and len(op.in_shape) > 1:
        return lam.repeat_interleave(math.prod(op.in_shape[1:]))
    return lam


def scale_term(term: Term, lam_in: torch.Tensor, lam_out: torch.Tensor, where: str) -> RTerm:
    """The runtime term of ``term`` normalized from ``lam_in`` (its source) to ``lam_out``."""
    w = term.weighted_index()
    pre_ops = term.ops if w is None else term.ops[:w]
    for op in pre_ops:
        lam_in = _carry(lam_in, op)
    pre = [_runtime_op(op) for op in pre_ops]
    if w is None:
        if lam_out.dim() and lam_in.dim() and lam_in.numel() != lam_out.numel():
            raise ValueError(f"{where}: per-channel scales of a shortcut do not line up ({lam_in.numel()} vs {lam_out.numel()})")
        return RTerm(term.source, pre, scale=(lam_in / lam_out).float())
    wop = term.ops[w]
    post = term.ops[w + 1:]
    mod = wop.module
    W = mod.weight.detach().float()
    b = mod.bias.detach().float() if mod.bias is not None else None
    if lam_out.dim() and lam_out.numel() != W.shape[0]:
        raise ValueError(
            f"{where}: per-channel scale has {lam_out.numel()} values but {wop.node} has {W.shape[0]} outputs "
            "(ops after the layer change the channels); use per_channel=False"
        )
    out_view = lam_out.view(-1, *([1] * (W.dim() - 1))) if lam_out.dim() else lam_out
    in_view = lam_in.view(1, -1, *([1] * (W.dim() - 2))) if lam_in.dim() else lam_in
    if lam_in.dim() and lam_in.numel() != W.shape[1]:
        raise ValueError(f"{where}: input scale has {lam_in.numel()} values but {wop.node} reads {W.shape[1]} channels")
    Wn = (W * in_view / out_view).contiguous()
    bn = (b / lam_out).contiguous() if b is not None else None
    if wop.kind == "conv":
        # stride and padding as the tracer resolved them (padding="same" -> numbers)
        return RTerm(term.source, pre, "conv", Wn, bn, wop.args["stride"], wop.args["padding"],
                     [_runtime_op(o) for o in post])
    return RTerm(term.source, pre, "linear", Wn, bn, post=[_runtime_op(o) for o in post])


def normalize(program: Program, scales: dict, *, shortcut_norm: bool = True) -> tuple[list, list]:
    """Runtime layers and output terms with normalized weights.

    Args:
        program: the analyzed network.
        scales: λ per site name (and per observed term, and "output"), from ``observe``.
        shortcut_norm: the S-ResNet shortcut rule (True) or the naive per-layer ablation.

    Returns:
        ``(layers, output_terms)`` for :class:`sresnet.simulate.SpikingNetwork`.
    """
    layers = []
    for idx, layer in enumerate(program.layers):
        if layer.kind == "maxpool":
            layers.append(RLayer("maxpool", layer.name, layer.shape, pool=layer.pool, source=layer.source))
            continue
        lam_out = scales[layer.name]
        naive = not shortcut_norm and len(layer.terms) > 1
        rterms = []
        for t in layer.terms:
            lam_in = _layer_scale(program, scales, t.source)
            where = f"neuron {layer.name!r} (graph position {layer.position})"
            if naive and t.weighted_index() is None:
                rterms.append(scale_term(t, torch.tensor(1.0), torch.tensor(1.0), where))
            elif naive and t.observe:
                rterms.append(scale_term(t, lam_in, scales[t.observe], where))
            else:
                rterms.append(scale_term(t, lam_in, lam_out, where))
        if len(rterms) == 1 and rterms[0].source == -1:
            if any(op[0] != "maxpool" for op in rterms[0].post):
                raise ValueError(f"neuron {layer.name!r}: ops after the first conv/linear on the image are unsupported")
            layers.append(RLayer("stem", layer.name, layer.shape, main=rterms[0]))
            continue
        main = next((t for t in rterms if t.kind is not None and not t.post and t.source != -1), None)
        others = [t for t in rterms if t is not main]
        if any(t.source == -1 for t in rterms):
            raise ValueError(f"neuron {layer.name!r} mixes the analog image with spikes; unsupported")
        layers.append(RLayer("neuron", layer.name, layer.shape, main=main, others=others))
    lam_logits = scales["output"]
    output = [scale_term(t, _layer_scale(program, scales, t.source), lam_logits, "output") for t in program.output]
    if any(t.source == -1 for t in output):
        raise ValueError("the logits read the analog image directly; unsupported")
    return layers, output
