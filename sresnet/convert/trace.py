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
from torch.nn.modules.dropout import _DropoutNd

from .fold import module_name

SUPPORTED = (
    "Conv2d (groups=1, dilation=1, padding_mode='zeros', padding int/tuple/'valid'/'same' with odd kernels), "
    "BatchNorm with running statistics after a conv/linear, Linear on [B, features], ReLU (nn.ReLU, F.relu, "
    "torch.relu, x.relu(), relu_), addition, AvgPool2d / F.avg_pool2d (no divisor_override), "
    "AdaptiveAvgPool2d / AdaptiveMaxPool2d to sizes that divide the input, spatial mean x.mean((2, 3)), "
    "MaxPool2d / F.max_pool2d after a ReLU (dilation 1), flatten from dim 1 / view(B, -1), "
    "Dropout variants/Identity, strided subsampling x[:, :, ::s, ::s] and channel zero-padding F.pad"
)

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS = {torch.flatten}
# functional dropout -> its default `training`; with training=True it is random even in eval mode
_DROPOUT_FUNCS = {F.dropout: True, F.dropout1d: True, F.dropout2d: True, F.dropout3d: True,
                  F.alpha_dropout: False, F.feature_alpha_dropout: False}


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
    # ops whose geometry was fixed for the conversion's image size (e.g. adaptive pooling to 2x2)
    size_specific: list = field(default_factory=list)


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
        self.size_specific: list[str] = []
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
            what = f"{type(mod).__name__} {module_name(n)!r}"
            if isinstance(mod, nn.ReLU):
                return self._relu(n, x, result)
            # every dropout variant is the identity in eval mode (the copy being converted is in eval)
            if isinstance(mod, (_DropoutNd, nn.Identity)) or (isinstance(mod, nn.Sequential) and len(mod) == 0):
                return self.sym[x.name]
            if isinstance(mod, nn.Conv2d):
                return self._apply(n, self._arg_sym(n, x), op("conv", mod, **self._conv_geometry(n, mod, what)))
            if isinstance(mod, nn.Linear):
                if len(shape_in) != 1:
                    self._fail(n, f"{what} applied to a [B, {', '.join(map(str, shape_in))}] tensor "
                                  "(only to [B, features]: flatten first)")
                return self._apply(n, self._arg_sym(n, x), op("linear", mod))
            if isinstance(mod, nn.AvgPool2d):
                return self._avgpool(n, x, what, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                     mod.count_include_pad, mod.divisor_override, shape_in, shape_out)
            if isinstance(mod, nn.AdaptiveAvgPool2d):
                return self._adaptive(n, x, what, "avg", False, shape_in, shape_out)
            if isinstance(mod, nn.MaxPool2d):
                return self._maxpool(n, x, what, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                     mod.return_indices, shape_in, shape_out)
            if isinstance(mod, nn.AdaptiveMaxPool2d):
                return self._adaptive(n, x, what, "max", mod.return_indices, shape_in, shape_out)
            if isinstance(mod, nn.Flatten):
                return self._flatten(n, x, what, mod.start_dim, mod.end_dim, shape_in, op)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                self._fail(n, f"{what} that does not directly follow a conv/linear used only by it")
            self._fail(n, f"module {module_name(n)!r} of type {type(mod).__name__}", TypeError)
        if n.op == "call_function":
            f = n.target
            fname = getattr(f, "__name__", str(f))
            if f in _RELU_FUNCS:
                return self._relu(n, x, result)
            if f in _ADD_FUNCS:
                if len(n.args) != 2 or kwargs.get("alpha", 1) != 1:
                    self._fail(n, "addition form (expected a + b of two tensors)")
                return self._add(n, n.args[0], n.args[1])
            if f in _FLATTEN_FUNCS:
                a = _bind(args, kwargs, ("input", "start_dim", "end_dim"), dict(start_dim=0, end_dim=-1))
                return self._flatten(n, x, "flatten", a["start_dim"], a["end_dim"], shape_in, op)
            if f is torch.mean:
                a = _bind(args, kwargs, ("input", "dim", "keepdim"), dict(dim=None, keepdim=False, dtype=None))
                return self._mean(n, x, a, shape_in, op)
            if f is F.avg_pool2d:
                a = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
                          dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None))
                return self._avgpool(n, x, "avg_pool2d", a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                                     a["count_include_pad"], a["divisor_override"], shape_in, shape_out)
            if f is F.adaptive_avg_pool2d:
                return self._adaptive(n, x, "adaptive_avg_pool2d", "avg", False, shape_in, shape_out)
            if f is F.adaptive_max_pool2d:
                a = _bind(args, kwargs, ("input", "output_size", "return_indices"), dict(return_indices=False))
                return self._adaptive(n, x, "adaptive_max_pool2d", "max", a["return_indices"], shape_in, shape_out)
            if f is F.max_pool2d:
                a = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                          dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False))
                return self._maxpool(n, x, "max_pool2d", a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                                     a["ceil_mode"], a["return_indices"], shape_in, shape_out)
            if f is F.pad:
                return self._pad(n, x, args, kwargs, op)
            if f is operator.getitem:
                return self._getitem(n, x, args[1], op)
            if f in _DROPOUT_FUNCS:
                a = _bind(args, kwargs, ("input", "p", "training", "inplace"),
                          dict(p=0.5, training=_DROPOUT_FUNCS[f], inplace=False))
                if a["training"] and a["p"] > 0:
                    self._fail(n, f"{fname}(p={a['p']}, training=True): it drops values at random even when the "
                                  "model is in eval mode (pass training=self.training)")
                return self.sym[x.name]
            self._fail(n, f"function {fname!r}", TypeError)
        if n.op == "call_method":
            m = n.target
            if m in ("relu", "relu_"):
                return self._relu(n, x, result)
            if m in ("add", "add_", "__add__", "__iadd__"):
                if len(n.args) != 2 or kwargs.get("alpha", 1) != 1:
                    self._fail(n, "addition form")
                return self._add(n, n.args[0], n.args[1])
            if m == "mean":
                a = _bind(args, kwargs, ("input", "dim", "keepdim"), dict(dim=None, keepdim=False, dtype=None))
                return self._mean(n, x, a, shape_in, op)
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

    def _conv_geometry(self, n: fx.Node, mod: nn.Conv2d, what: str) -> dict:
        """Stride and (symmetric) zero padding of a Conv2d; attributes the spiking conv lacks are refused."""
        if mod.groups != 1:
            self._fail(n, f"{what} attribute groups={mod.groups} (the spiking convolutions compute groups=1)")
        if tuple(mod.dilation) != (1, 1):
            self._fail(n, f"{what} attribute dilation={tuple(mod.dilation)} (the spiking convolutions compute dilation=1)")
        padding = mod.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if any(k % 2 == 0 for k in mod.kernel_size):
                self._fail(n, f"{what} attribute padding='same' with the even kernel_size={tuple(mod.kernel_size)} "
                              "(it pads asymmetrically; only odd kernels)")
            padding = tuple((k - 1) // 2 for k in mod.kernel_size)
        padding = tuple(int(v) for v in padding)
        # without padding the mode has nothing to fill
        if mod.padding_mode != "zeros" and padding != (0, 0):
            self._fail(n, f"{what} attribute padding_mode={mod.padding_mode!r} with padding={padding} (only 'zeros': "
                          "spikes are padded with 0)")
        return dict(stride=tuple(int(v) for v in mod.stride), padding=padding)

    def _flatten(self, n, x, what, start, end, shape_in, op) -> _Sym:
        ndim = len(shape_in) + 1
        if ndim == 2 and start in (1, -1) and end in (1, -1):
            return self.sym[x.name]  # flattening [B, F] changes nothing
        if start % ndim != 1 or end % ndim != ndim - 1:
            self._fail(n, f"{what}(start_dim={start}, end_dim={end}) of a {ndim}-D tensor (only flattening all "
                          "dims after the batch: start_dim=1, end_dim=-1)")
        return self._apply(n, self._arg_sym(n, x), op("flatten"))

    def _mean(self, n, x, a, shape_in, op) -> _Sym:
        dims = a["dim"]
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        ndim = len(shape_in) + 1
        if ndim != 4 or sorted(d % ndim for d in dims) != [2, 3] or a["dtype"] is not None:
            self._fail(n, f"mean(dim={a['dim']}, dtype={a['dtype']}) of a {ndim}-D tensor (only the spatial mean "
                          "of [B, C, H, W]: dim=(2, 3))")
        return self._apply(n, self._arg_sym(n, x), op("gap", keepdim=bool(a["keepdim"])))

    def _avgpool(self, n, x, what, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
                 shape_in, shape_out) -> _Sym:
        k, s, p = _pair(kernel), _pair(stride if stride not in (None, []) else kernel), _pair(padding)
        if divisor_override is not None:
            self._fail(n, f"{what} attribute divisor_override={divisor_override} (the spiking average pool "
                          "divides by the window size)")
        floor = _pool_out(shape_in, k, s, p, (1, 1))
        if ceil_mode and floor != tuple(shape_out[1:]):
            # the extra window is averaged over its part inside the padded input, not over kh*kw
            self._fail(n, f"{what} attribute ceil_mode=True where it adds a partial window ({shape_in[1:]} -> "
                          f"{shape_out[1:]}, {floor} without it)")
        if p != (0, 0) and not count_include_pad:
            self._fail(n, f"{what} attribute count_include_pad=False with padding={p} (the spiking average pool "
                          "counts the padding)")
        src = self._arg_sym(n, x)
        op_ = Op("avgpool", n.name, dict(kernel=k, stride=s, padding=p), None, shape_in, shape_out)
        # a kernel computed from the map (F.avg_pool2d(x, x.size()[3])) follows the image size: a
        # global average pool; a constant kernel stays a constant window at every image size
        dynamic = _has_node(n.args[1:]) or _has_node(n.kwargs)
        if dynamic and p == (0, 0) and k == tuple(shape_in[1:]) and shape_out[1:] == (1, 1):
            op_ = Op("gap", n.name, dict(keepdim=True), None, shape_in, shape_out)
        elif dynamic:
            self._size_specific(n, what, k, shape_in)
        return self._apply(n, src, op_)

    def _adaptive(self, n, x, what, kind, return_indices, shape_in, shape_out) -> _Sym:
        """Adaptive pooling whose output size divides the input: a plain pool with kernel = stride = in/out."""
        if return_indices:
            self._fail(n, f"{what} attribute return_indices=True (the network must return only the pooled values)")
        (h, w), (ho, wo) = shape_in[1:], shape_out[1:]
        if h % ho or w % wo:
            self._fail(n, f"{what} to {ho}x{wo} of a {h}x{w} map (only output sizes that divide the input: the "
                          "windows then do not overlap)")
        k = (h // ho, w // wo)
        if kind == "max" or (ho, wo) != (1, 1):
            self._size_specific(n, what, k, shape_in)
        if kind == "max":
            return self._maxpool(n, x, what, k, k, 0, 1, False, False, shape_in, shape_out)
        if (ho, wo) == (1, 1):
            return self._apply(n, self._arg_sym(n, x), Op("gap", n.name, dict(keepdim=True), None, shape_in, shape_out))
        return self._avgpool(n, x, what, k, k, 0, False, True, None, shape_in, shape_out)

    def _size_specific(self, n: fx.Node, what: str, k: tuple, shape_in: tuple) -> None:
        """Record a pool whose windows were computed for this map size (they pin the image size)."""
        entry = f"{what} at node {n.name!r} ({k[0]}x{k[1]} windows for the {shape_in[1]}x{shape_in[2]} map)"
        if entry not in self.size_specific:
            self.size_specific.append(entry)

    def _maxpool(self, n, x, what, kernel, stride, padding, dilation, ceil_mode, return_indices,
                 shape_in, shape_out) -> _Sym:
        if return_indices:
            self._fail(n, f"{what} attribute return_indices=True (the network must return only the pooled values)")
        if _pair(dilation) != (1, 1):
            self._fail(n, f"{what} attribute dilation={dilation} (the spiking max pool has dilation 1)")
        k, s, p = _pair(kernel), _pair(stride if stride not in (None, []) else kernel), _pair(padding)
        src = self._arg_sym(n, x)
        if src.kind != "spikes":
            self._fail(n, "max pooling of a value that is not a ReLU output (spiking max pooling gates spikes)")
        pool = dict(kernel=k, stride=s, padding=p)
        if _has_node(n.args[1:]) or _has_node(n.kwargs):
            self._size_specific(n, what, k, shape_in)
        if ceil_mode:
            # exact: the executor pads the spikes with zeros on the right/bottom for the partial
            # windows, at the size of each run; a zero padding never wins a gated max (see executor)
            pool["ceil_mode"] = True
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


def _pool_out(shape_in: tuple, k: tuple, s: tuple, p: tuple, d: tuple) -> tuple:
    """Output size (H', W') of a floor-mode pool of a ``(C, H, W)`` input (torch's formula)."""
    return tuple((n + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for n, kk, ss, pp, dd in zip(shape_in[1:], k, s, p, d))


def _has_node(value) -> bool:
    """Whether an argument (nested in tuples/lists/dicts) is a graph value rather than a constant."""
    found = []
    fx.node.map_arg(value, lambda v: found.append(v) or v)
    return bool(found)


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
    return Program(an.layers, an.output_terms, an.output_shape, tuple(sample.shape[1:]), gm, an.size_specific)


def _check_terms(terms: list, where: str) -> None:
    for t in terms:
        if t.source == -1 and t.weighted_index() is None:
            raise ValueError(f"{where}: the analog image reaches a neuron without a conv/linear layer; unsupported")
