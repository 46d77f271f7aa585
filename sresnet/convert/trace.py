"""Trace a network with torch.fx and rewrite it as a spiking *program*.

The program is the network seen the way a converted SNN computes it: a list of layers
that emit spikes (one IF neuron layer per ReLU **call site**, and gated max-pool layers),
each fed by a sum of *terms*. A term starts at a spike source (or the analog image), goes
through parameter-free linear ops (subsample, channel zero-padding, average pooling,
flatten), at most one weighted op (conv or linear) and then parameter-free ops again.
The logits are a sum of terms too. Everything between two ReLUs must be affine for the
conversion to hold; anything else is refused with the node's name and position.

The analysis runs the traced graph once on a sample batch with a ``torch.fx.Interpreter``,
so it sees concrete arguments (e.g. ``F.avg_pool2d(x, x.size()[3])``) and shapes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..models import PadShortcut

SUPPORTED = (
    "Conv2d (groups=1, dilation=1, zero padding), BatchNorm after a conv/linear, Linear, ReLU "
    "(nn.ReLU, F.relu, torch.relu, x.relu(), relu_), addition, AvgPool2d / F.avg_pool2d / "
    "AdaptiveAvgPool2d(1), MaxPool2d / F.max_pool2d after a ReLU, flatten / view(B, -1), "
    "Dropout/Identity, strided subsampling x[:, :, ::s, ::s] and channel zero-padding F.pad"
)

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS = {torch.flatten}


@dataclass
class Op:
    """One linear op of a term. kind: subsample, chanpad, avgpool, gap, flatten, conv, linear."""

    kind: str
    node: str
    args: dict = field(default_factory=dict)
    module: nn.Module | None = None
    in_shape: tuple = ()
    out_shape: tuple = ()

    @property
    def weighted(self) -> bool:
        return self.kind in ("conv", "linear")


@dataclass
class Term:
    source: int  # index of a layer of the program, or -1 for the analog image
    ops: list = field(default_factory=list)
    observe: str | None = None  # stats key of this term's own output (shortcut_norm=False)

    def weighted_index(self) -> int | None:
        idx = [i for i, op in enumerate(self.ops) if op.weighted]
        return idx[0] if idx else None


@dataclass
class Layer:
    kind: str  # "neuron" (IF, one per ReLU call site) or "maxpool" (gated, on spikes)
    name: str  # fx node name of the call site
    position: int
    shape: tuple  # per-image output shape, e.g. (C, H, W)
    terms: list = field(default_factory=list)
    source: int = -1  # maxpool input layer
    pool: dict = field(default_factory=dict)


@dataclass
class Program:
    layers: list
    output: list  # terms of the logits
    output_shape: tuple
    input_shape: tuple
    graph_module: fx.GraphModule


def describe(node: fx.Node, position: int) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"node {node.name!r} (graph position {position}, {node.op} {target})"


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; untraceable Python control flow becomes a TypeError."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:
        raise TypeError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); the converter "
            f"needs a graph of supported ops without data-dependent control flow. Supported: {SUPPORTED}"
        ) from exc


class _Sym:
    """Symbolic value of a node: spikes of a layer, an affine expression (terms), or a non-tensor."""

    __slots__ = ("kind", "layer", "terms")

    def __init__(self, kind: str, layer: int = -1, terms: list | None = None):
        self.kind, self.layer, self.terms = kind, layer, terms

    def as_terms(self) -> list:
        if self.kind == "spikes":
            return [Term(self.layer, [])]
        if self.kind == "image":
            return [Term(-1, [])]
        return [Term(t.source, list(t.ops), t.observe) for t in self.terms]


class Analyzer(fx.Interpreter):
    """Runs the graph on a sample batch and builds the :class:`Program`."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.modules = dict(gm.named_modules())
        self.sym: dict[str, _Sym] = {}
        self.layers: list[Layer] = []
        self.output_terms: list | None = None
        self.output_shape: tuple = ()
        self.relu_sites: list[str] = []
        self.positions = {n.name: i for i, n in enumerate(gm.graph.nodes)}

    def _fail(self, node: fx.Node, what: str, exc_type=ValueError):
        raise exc_type(f"unsupported {what} at {describe(node, self.positions[node.name])}; supported: {SUPPORTED}")

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        self.sym[n.name] = self._symbolic(n, result)
        return result

    def _arg_sym(self, node: fx.Node, arg) -> _Sym:
        if not isinstance(arg, fx.Node):
            self._fail(node, f"constant tensor operand {type(arg).__name__}")
        s = self.sym[arg.name]
        if s.kind == "meta":
            self._fail(node, "tensor computed from non-tensor values")
        return s

    def _apply(self, node: fx.Node, src: _Sym, op: Op) -> _Sym:
        if src.kind == "image" and not op.weighted and op.kind != "flatten":
            self._fail(node, f"{op.kind} on the analog input image (only a conv/linear may read the image)")
        terms = src.as_terms()
        if op.weighted:
            if len(terms) > 1:
                self._fail(node, "conv/linear applied to a sum (put a ReLU between the addition and the layer)")
            if terms[0].weighted_index() is not None:
                self._fail(node, "two conv/linear layers without a ReLU between them")
        for t in terms:
            t.ops.append(op)
            t.observe = None
        return _Sym("expr", terms=terms)

    def _symbolic(self, n: fx.Node, result) -> _Sym:
        if n.op == "placeholder":
            if self.sym:
                self._fail(n, "second network input")
            return _Sym("image")
        if n.op == "output":
            arg = n.args[0]
            if not isinstance(arg, fx.Node) or not isinstance(result, torch.Tensor) or result.dim() != 2:
                self._fail(n, "network output (expected one tensor of logits [B, classes])")
            self.output_terms = self._arg_sym(n, arg).as_terms()
            self.output_shape = tuple(result.shape[1:])
            return _Sym("meta")
        if n.op == "get_attr":
            self._fail(n, "parameter or buffer used as a tensor operand")
        if not isinstance(result, torch.Tensor):
            return _Sym("meta")
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x = n.args[0] if n.args else None
        shape_in = tuple(args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else ()
        shape_out = tuple(result.shape[1:])

        def op(kind, module=None, **a):
            return Op(kind, n.name, a, module, shape_in, shape_out)

        if n.op == "call_module":
            mod = self.modules[n.target]
            if isinstance(mod, nn.ReLU):
                return self._relu(n, x, result)
            if isinstance(mod, (nn.Dropout, nn.Identity)) or (isinstance(mod, nn.Sequential) and len(mod) == 0):
                return self.sym[x.name]
            if isinstance(mod, nn.Conv2d):
                if mod.groups != 1 or tuple(mod.dilation) != (1, 1) or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                    self._fail(n, f"Conv2d {n.target!r} with groups={mod.groups}, dilation={mod.dilation}, padding={mod.padding!r}, padding_mode={mod.padding_mode!r}")
                return self._apply(n, self._arg_sym(n, x), op("conv", mod))
            if isinstance(mod, nn.Linear):
                return self._apply(n, self._arg_sym(n, x), op("linear", mod))
            if isinstance(mod, nn.AvgPool2d):
                return self._avgpool(n, x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad, shape_in, shape_out)
            if isinstance(mod, nn.AdaptiveAvgPool2d):
                if shape_out[1:] != (1, 1):
                    self._fail(n, f"AdaptiveAvgPool2d {n.target!r} to {shape_out[1:]} (only output size 1)")
                return self._apply(n, self._arg_sym(n, x), op("gap"))
            if isinstance(mod, nn.MaxPool2d):
                return self._maxpool(n, x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode, shape_out)
            if isinstance(mod, nn.Flatten):
                if mod.start_dim != 1 or mod.end_dim != -1:
                    self._fail(n, f"Flatten {n.target!r}(start_dim={mod.start_dim}, end_dim={mod.end_dim})")
                return self._apply(n, self._arg_sym(n, x), op("flatten"))
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                self._fail(n, f"{type(mod).__name__} {n.target!r} that does not directly follow a conv/linear used only by it")
            self._fail(n, f"module {n.target!r} of type {type(mod).__name__}", TypeError)
        if n.op == "call_function":
            f = n.target
            if f in _RELU_FUNCS:
                return self._relu(n, x, result)
            if f in _ADD_FUNCS:
                if len(n.args) != 2 or kwargs.get("alpha", 1) != 1:
                    self._fail(n, "addition form (expected a + b of two tensors)")
                return self._add(n, n.args[0], n.args[1])
            if f in _FLATTEN_FUNCS:
                start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
                end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
                if start != 1 or end != -1:
                    self._fail(n, f"flatten(start_dim={start}, end_dim={end}) (only flatten(x, 1))")
                return self._apply(n, self._arg_sym(n, x), op("flatten"))
            if f is F.avg_pool2d:
                a = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
                          dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None))
                if a["divisor_override"] is not None:
                    self._fail(n, "avg_pool2d with divisor_override")
                return self._avgpool(n, x, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"], shape_in, shape_out)
            if f is F.adaptive_avg_pool2d:
                if shape_out[1:] != (1, 1):
                    self._fail(n, f"adaptive_avg_pool2d to {shape_out[1:]} (only output size 1)")
                return self._apply(n, self._arg_sym(n, x), op("gap"))
            if f is F.max_pool2d:
                a = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                          dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False))
                return self._maxpool(n, x, a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"], shape_out)
            if f is F.pad:
                return self._pad(n, x, args, kwargs, op)
            if f is operator.getitem:
                return self._getitem(n, x, args[1], op)
            if f is F.dropout:
                return self.sym[x.name]
            self._fail(n, f"function {getattr(f, '__name__', f)!r}", TypeError)
        if n.op == "call_method":
            m = n.target
            if m in ("relu", "relu_"):
                return self._relu(n, x, result)
            if m in ("add", "add_", "__add__", "__iadd__"):
                if len(n.args) != 2 or kwargs.get("alpha", 1) != 1:
                    self._fail(n, "addition form")
                return self._add(n, n.args[0], n.args[1])
            if m in ("view", "reshape", "flatten", "contiguous"):
                if m == "contiguous" or shape_out == shape_in:
                    return self.sym[x.name]
                if len(shape_out) == 1 and result.shape[0] == args[0].shape[0]:
                    return self._apply(n, self._arg_sym(n, x), op("flatten"))
                self._fail(n, f"{m} to {tuple(result.shape)} (only flattening to [B, -1])")
            self._fail(n, f"method .{m}()", TypeError)
        self._fail(n, f"{n.op}", TypeError)

    def _relu(self, n: fx.Node, x, result) -> _Sym:
        src = self._arg_sym(n, x)
        if src.kind == "spikes":
            return src  # relu of a ReLU output (or of a max pool of one) changes nothing
        if src.kind == "image":
            self._fail(n, "ReLU applied directly to the analog input image")
        terms = src.as_terms()
        if any(t.source == -1 for t in terms) and len(terms) > 1:
            self._fail(n, "ReLU of a sum that includes the analog image")
        self.layers.append(Layer("neuron", n.name, self.positions[n.name], tuple(result.shape[1:]), terms))
        self.relu_sites.append(n.name)
        sym = _Sym("spikes", len(self.layers) - 1)
        if n.target in ("relu_",) or n.target is torch.relu_ or n.kwargs.get("inplace") or (
            n.op == "call_module" and getattr(self.modules[n.target], "inplace", False)
        ) or (n.op == "call_function" and len(n.args) > 1 and n.args[1] is True):
            # in-place ReLU: later reads of the input node see the ReLU output
            self.sym[x.name] = sym
        return sym

    def _add(self, n: fx.Node, a, b) -> _Sym:
        sa, sb = self._arg_sym(n, a), self._arg_sym(n, b)
        ta, tb = sa.as_terms(), sb.as_terms()
        for side, terms in ((a, ta), (b, tb)):
            if len(terms) == 1 and terms[0].weighted_index() is not None:
                terms[0].observe = side.name
        sym = _Sym("expr", terms=ta + tb)
        if n.target in (operator.iadd, "add_", "__iadd__"):
            self.sym[a.name] = sym
        return sym

    def _avgpool(self, n, x, kernel, stride, padding, ceil_mode, count_include_pad, shape_in, shape_out) -> _Sym:
        if ceil_mode:
            self._fail(n, "average pooling with ceil_mode=True")
        k, s, p = _pair(kernel), _pair(stride if stride not in (None, []) else kernel), _pair(padding)
        src = self._arg_sym(n, x)
        op_ = Op("avgpool", n.name, dict(kernel=k, stride=s, padding=p), None, shape_in, shape_out)
        if p == (0, 0) and k == tuple(shape_in[1:]) and shape_out[1:] == (1, 1):
            op_ = Op("gap", n.name, dict(keepdim=True), None, shape_in, shape_out)
        elif p != (0, 0) and not count_include_pad:
            self._fail(n, "average pooling with padding and count_include_pad=False")
        return self._apply(n, src, op_)

    def _maxpool(self, n, x, kernel, stride, padding, dilation, ceil_mode, shape_out) -> _Sym:
        if ceil_mode or _pair(dilation) != (1, 1):
            self._fail(n, "max pooling with ceil_mode=True or dilation")
        src = self._arg_sym(n, x)
        if src.kind != "spikes":
            self._fail(n, "max pooling of a value that is not a ReLU output (spiking max pooling gates spikes)")
        k = _pair(kernel)
        pool = dict(kernel=k, stride=_pair(stride if stride not in (None, []) else kernel), padding=_pair(padding))
        self.layers.append(Layer("maxpool", n.name, self.positions[n.name], shape_out, source=src.layer, pool=pool))
        return _Sym("spikes", len(self.layers) - 1)

    def _pad(self, n, x, args, kwargs, op) -> _Sym:
        pad = list(args[1] if len(args) > 1 else kwargs["pad"])
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        value = args[3] if len(args) > 3 else kwargs.get("value", 0.0)
        if mode != "constant" or (value or 0.0) != 0.0 or len(pad) != 6 or any(pad[:4]) or min(pad) < 0:
            self._fail(n, f"F.pad(pad={pad}, mode={mode!r}, value={value}) (only zero channel padding (0,0,0,0,lo,hi))")
        return self._apply(n, self._arg_sym(n, x), op("chanpad", lo=int(pad[4]), hi=int(pad[5])))

    def _getitem(self, n, x, index, op) -> _Sym:
        ok = isinstance(index, tuple) and len(index) == 4 and all(isinstance(i, slice) for i in index)
        if ok:
            full = slice(None)
            h, w = index[2], index[3]
            ok = index[0] == full and index[1] == full and h.start in (None, 0) and w.start in (None, 0) \
                and h.stop is None and w.stop is None and (h.step or 1) == (w.step or 1)
        if not ok:
            self._fail(n, f"indexing {index!r} (only x[:, :, ::s, ::s])")
        return self._apply(n, self._arg_sym(n, x), op("subsample", stride=int(index[2].step or 1)))


def _pair(v) -> tuple:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[1] if len(v) > 1 else v[0]))
    return (int(v), int(v))


def _bind(args, kwargs, names, defaults) -> dict:
    out = dict(defaults)
    out.update(zip(names, args))
    out.update(kwargs)
    return out


def analyze(gm: fx.GraphModule, sample: torch.Tensor) -> Program:
    """Run ``gm`` (BatchNorm already folded) on ``sample`` and build its spiking program."""
    an = Analyzer(gm)
    an.run(sample)
    if an.output_terms is None:
        raise ValueError("the traced graph has no output")
    for layer in an.layers:
        _check_terms(layer.terms, layer.name)
    _check_terms(an.output_terms, "output")
    return Program(an.layers, an.output_terms, an.output_shape, tuple(sample.shape[1:]), gm)


def _check_terms(terms: list, where: str) -> None:
    for t in terms:
        if t.source == -1 and t.weighted_index() is None:
            raise ValueError(f"{where}: the analog image reaches a neuron without a conv/linear layer; unsupported")
