"""Program rewrites that make the spiking network more faithful without changing the ANN.

``pool_analog_stem``: a max pool right after the stem neuron (torchvision ResNets: conv 7x7 ->
BN -> ReLU -> max pool 3x3/2) moves in front of the neuron. The stem's input current is the
analog image's conv, the same at every step, so pooling it is exact:
``maxpool(relu(a)) = relu(maxpool(a))`` (max and ReLU are both monotone), and an IF neuron
on the pooled constant current fires at the rate of the pooled activation. The spiking
alternative, a gated max pool over spike trains, only approaches the max rate as spike
counts separate, and loses accuracy at short T. The merged layer keeps the max pool's node
name, so its scale λ is observed on the pooled activations it now represents.
"""

from __future__ import annotations

from .trace import Layer, Op, Program


def _readers(program: Program, idx: int) -> int:
    n = sum(1 for l in program.layers if l.kind == "maxpool" and l.source == idx)
    n += sum(1 for l in program.layers if l.kind == "neuron" for t in l.terms if t.source == idx)
    return n + sum(1 for t in program.output if t.source == idx)


def _is_analog_stem(layer: Layer) -> bool:
    return (layer.kind == "neuron" and len(layer.terms) == 1 and layer.terms[0].source == -1
            and layer.terms[0].weighted_index() == len(layer.terms[0].ops) - 1)


def pool_analog_stem(program: Program) -> int:
    """Move every max pool that is the only reader of an analog-stem neuron in front of it.

    Returns:
        the number of max pools moved (the program is changed in place).
    """
    moved = 0
    j = 0
    while j < len(program.layers):
        pool = program.layers[j]
        i = pool.source
        if (pool.kind != "maxpool" or i < 0 or set(pool.pool) != {"kernel", "stride", "padding"}
                or not _is_analog_stem(program.layers[i]) or _readers(program, i) != 1):
            j += 1
            continue
        stem = program.layers[i]
        stem.terms[0].ops.append(Op("maxpool", pool.name, dict(pool.pool), None, stem.shape, pool.shape))
        stem.name, stem.shape = pool.name, pool.shape
        del program.layers[j]
        _renumber(program, removed=j, into=i)
        moved += 1
    return moved


def _renumber(program: Program, removed: int, into: int) -> None:
    def fix(s: int) -> int:
        if s == removed:
            return into
        return s - 1 if s > removed else s

    for layer in program.layers:
        layer.source = fix(layer.source) if layer.source >= 0 else layer.source
        for t in layer.terms:
            t.source = fix(t.source) if t.source >= 0 else t.source
    for t in program.output:
        t.source = fix(t.source) if t.source >= 0 else t.source
