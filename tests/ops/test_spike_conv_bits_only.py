"""Spiking-conv outputs kept only as bits (``numba_gather.bits_only``) and residuals read as
bits, and sresnet's executor, which keeps the outputs that only spiking convs read as bits.

The oracle is always the same computation on ordinary tensors: a producer run outside the
context (its output holds its spikes) and readers run on a clone of it (no kept bits, packed
by ``_pack``). Spikes, membranes and counts must be equal bit for bit.
"""

import sys
from pathlib import Path

import pytest
import torch

import spikekernels as sk
from spikekernels.ops.spike_conv import numba_gather

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sresnet"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def gather_path(monkeypatch):
    """Every conv below the density switch takes the gather kernel."""
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "1.0")


def _producer(T, B, Cin, Cout, H, W, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(T, B, Cin, H, W, generator=g) < 0.25).to(torch.uint8)
    w = torch.randn(Cout, Cin, 3, 3, generator=g) * (4.0 / (Cin * 9)) ** 0.5
    b = torch.randn(Cout, generator=g) * 0.1
    if bits:
        with numba_gather.bits_only():
            return sk.spike_conv2d(s, w, b, 1, 1, backend="numba", spike_dtype=torch.uint8)
    return sk.spike_conv2d(s, w, b, 1, 1, backend="numba", spike_dtype=torch.uint8)


def _weights(Cout, Cin, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(Cout, Cin, *k, generator=g) * (4.0 / (Cin * k[0] * k[1])) ** 0.5, torch.randn(Cout, generator=g) * 0.1


# (T, B, C, H, W) of the producer: one channel tile (16, B=4), several (64, B=1), channels
# that are not a multiple of 8 (20), a map whose pixels are not a multiple of 8 (5 x 5)
SHAPES = [(3, 4, 16, 8, 8), (2, 1, 64, 5, 6), (3, 2, 20, 7, 5), (2, 3, 12, 5, 5)]
IDS = [f"C{s[2]}-B{s[1]}-{s[3]}x{s[4]}" for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_bits_only_output_holds_its_spikes_as_bits(shape):
    T, B, C, H, W = shape
    ref = _producer(T, B, 5, C, H, W, bits=False)
    out = _producer(T, B, 5, C, H, W, bits=True)
    hit = numba_gather.recall(out)
    assert hit is not None and not hit.written
    assert sk.count_spikes(out) == int(ref.count_nonzero()) > 0
    assert torch.equal(torch.as_tensor(hit.pk), torch.as_tensor(numba_gather.recall(ref).pk))
    numba_gather.materialize(out)
    assert torch.equal(out, ref), "materialize should write exactly the spikes of an ordinary run"
    assert numba_gather.recall(out).written


READERS = [((3, 3), (1, 1), (1, 1)), ((1, 1), (2, 2), (0, 0)), ((3, 3), (2, 1), (1, 0)), ((5, 5), (1, 1), (2, 2))]


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("reader", READERS, ids=["k3p1", "k1s2p0", "k3s21p10", "k5p2"])
def test_a_conv_reads_a_bits_only_output(shape, reader):
    T, B, C, H, W = shape
    out = _producer(T, B, 5, C, H, W, bits=True)
    ref = _producer(T, B, 5, C, H, W, bits=False)
    k, st, pad = reader
    w, b = _weights(11, C, k, 3)
    got, v = sk.spike_conv2d(out, w, b, st, pad, backend="numba", return_state=True)
    want, v_want = sk.spike_conv2d(ref.clone(), w, b, st, pad, backend="numba", return_state=True)
    assert torch.equal(got, want) and torch.equal(v, v_want)
    # padding wider than the kept border writes the tensor from the bits first
    assert numba_gather.recall(out).written == (max(pad) > numba_gather.KEEP_PAD)


def test_the_dense_path_writes_a_bits_only_input_first(monkeypatch):
    out = _producer(3, 2, 5, 16, 6, 6, bits=True)
    ref = _producer(3, 2, 5, 16, 6, 6, bits=False)
    w, b = _weights(8, 16, (3, 3), 4)
    monkeypatch.setenv("SPIKEKERNELS_CONV_DENSE_DENSITY", "0.0")
    got = sk.spike_conv2d(out, w, b, 1, 1, backend="numba")
    assert numba_gather.recall(out).written
    assert torch.equal(got, sk.spike_conv2d(ref.clone(), w, b, 1, 1, backend="numba"))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("bits", [True, False], ids=["bits-only", "written"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_residual_is_read_from_its_bits(shape, bits, reset, stride):
    """The second conv of a block: its residual is a neuron output with kept bits (written or
    not); the kernel reads the residual's bits (IF_RESBITS) instead of its bytes. With stride
    2 the conv's input is twice the residual's size."""
    T, B, C, H, W = shape
    x = _producer(T, B, 5, C, H, W, bits=bits)
    ref = _producer(T, B, 5, C, H, W, bits=False)
    # the block's first conv output (the main conv's input)
    y = _producer(T, B, 5, C, stride * H, stride * W, bits=False, seed=1)
    w, b = _weights(C, C, (3, 3), 5)
    g = torch.Generator().manual_seed(6)
    scale = torch.rand(C, generator=g) + 0.5
    sb = torch.randn(T, C, generator=g) * 0.05
    kw = dict(residual_scale=scale, step_bias=sb, reset=reset, backend="numba", return_state=True)
    got, v = sk.spike_conv2d(y, w, b, stride, 1, residual=x, **kw)
    want, v_want = sk.spike_conv2d(y.clone(), w, b, stride, 1, residual=ref.clone(), **kw)
    assert torch.equal(got, want) and torch.equal(v, v_want)
    assert 0 < int(got.count_nonzero()) < got.numel()


def test_a_current_with_a_bits_only_residual_writes_it_first():
    x = _producer(2, 2, 5, 16, 6, 6, bits=True)
    ref = _producer(2, 2, 5, 16, 6, 6, bits=False)
    y = _producer(2, 2, 5, 16, 6, 6, bits=False, seed=1)
    w, b = _weights(16, 16, (3, 3), 7)
    got = sk.spike_conv2d(y, w, b, 1, 1, residual=x, neuron=False, backend="numba")
    assert numba_gather.recall(x).written
    assert torch.equal(got, sk.spike_conv2d(y.clone(), w, b, 1, 1, residual=ref.clone(), neuron=False,
                                            backend="numba"))


def test_bits_only_is_per_thread_and_restored():
    assert not numba_gather._bits_only.get()
    with numba_gather.bits_only():
        assert numba_gather._bits_only.get()
        with numba_gather.bits_only():
            pass
        assert numba_gather._bits_only.get()
    assert not numba_gather._bits_only.get()


@pytest.mark.parametrize("kind", ["tiny_A_functional", "tiny_B_module", "cifarA", "tv_basic"])
def test_simulation_is_the_same_with_outputs_kept_as_bits(monkeypatch, kind):
    """A whole spiking ResNet: scores and per-layer spike counts equal whether the outputs
    that only spiking convs read are kept as bits or written as tensors."""
    import sresnet
    import sresnet.executor as ex
    from _sresnet_nets import make

    g = torch.Generator().manual_seed(5)
    size = 32 if kind == "tv_basic" else 8
    snn = sresnet.convert(make(kind), torch.randn(8, 3, size, size, generator=g), horizon=8, calib_subset=8)
    images = torch.randn(3, 3, size, size, generator=g)
    for chunk in (None, 4):  # one chunk of 6 steps, or chunks of 4 and 2 (membranes carried)
        runs = []
        for on in (True, False):
            monkeypatch.setattr(ex, "BITS_BETWEEN_CONVS", on)
            with torch.no_grad():
                scores = snn(images, 6, per_step=True, chunk=chunk, backend="numba")
            runs.append((scores, dict(snn.last_stats["spikes"])))
        assert torch.equal(runs[0][0], runs[1][0])
        assert runs[0][1] == runs[1][1] and sum(runs[0][1].values()) > 0
    conv_read = ex.Executor(snn.network).conv_read
    assert conv_read, "some layer's spikes should be read only by spiking convs"
    for i in conv_read:
        layer = snn.network.layers[i]
        assert layer.kind in ("neuron", "stem") and layer.main.kind == "conv"


def test_the_executor_keeps_bits_only_between_convs():
    """Which outputs stay bits in a CIFAR ResNet with option-A shortcuts: the stem (read by
    the first block's conv and shortcut), the first conv of every block, and block outputs
    read by the next block's conv and shortcut; not a block output read through a subsampled
    shortcut or by the readout."""
    import sresnet
    from _sresnet_nets import make
    from sresnet.executor import Executor

    g = torch.Generator().manual_seed(2)
    snn = sresnet.convert(make("tiny_A_functional"), torch.randn(8, 3, 8, 8, generator=g), horizon=8,
                          calib_subset=8)
    net = snn.network
    conv_read = Executor(net).conv_read
    # layers: stem 0, block 1 (1, 2), block 2 (3, 4): 2 is read through subsample + chanpad
    assert [layer.kind for layer in net.layers] == ["stem", "neuron", "neuron", "neuron", "neuron"]
    assert conv_read == {0, 1, 3}
    assert Executor(net, train=True).conv_read == {0, 1, 3}  # computed, but simulate() skips it when training


def test_an_observer_sees_written_spikes():
    """With an observer (diagnostics) every output is written: the spikes it sees add up to
    the counts."""
    import sresnet
    from _sresnet_nets import make
    from sresnet.executor import Executor

    g = torch.Generator().manual_seed(3)
    snn = sresnet.convert(make("tiny_A_functional"), torch.randn(8, 3, 8, 8, generator=g), horizon=8,
                          calib_subset=8)
    seen = {}

    def observer(i, t0, spikes):
        seen[i] = seen.get(i, 0) + int(spikes.count_nonzero())

    with torch.no_grad():
        _, stats = Executor(snn.network, "numba").simulate(torch.randn(3, 3, 8, 8, generator=g), 6,
                                                           observer=observer)
    names = [layer.name for layer in snn.network.layers]
    assert {names[i]: n for i, n in seen.items()} == stats["spikes"]


def _twin_case():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(3, 2, 5, 6, 6, generator=g) < 0.3).to(torch.uint8)
    w1, w2 = torch.randn(12, 5, 3, 3, generator=g) * 0.4, torch.randn(12, 12, 3, 3, generator=g) * 0.3
    with numba_gather.bits_only():
        x = sk.spike_conv2d(s, w1, None, 1, 1, backend="numba")
    y, v = sk.spike_conv2d(x, w2, None, 1, 1, backend="numba", residual=x, reset="zero", return_state=True)
    return sk.count_spikes(x), y, v


def test_python_twins_without_the_jit(tmp_path):
    """Under NUMBA_DISABLE_JIT the intrinsics run as their Python twins (coverage runs): a
    bits-only producer, a conv reading its bits and a block conv reading it as a residual
    give what the compiled kernels give, bit for bit."""
    import subprocess

    code = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from test_spike_conv_bits_only import _twin_case
torch.save(_twin_case(), {str(tmp_path / "twin.pt")!r})
"""
    env = dict(__import__("os").environ, NUMBA_DISABLE_JIT="1", SPIKEKERNELS_CONV_DENSE_DENSITY="1.0")
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    count, y, v = torch.load(tmp_path / "twin.pt")
    want_count, want_y, want_v = _twin_case()
    assert count == want_count > 0
    assert torch.equal(y, want_y) and torch.equal(v, want_v) and 0 < int(y.count_nonzero()) < y.numel()


# the stem: IF over a current constant in time, its spikes kept as bits (if_scan_kept)
STEMS = [(16, 8, 8), (12, 5, 7), (3, 4, 4), (32, 6, 6)]


@pytest.mark.parametrize("stem", STEMS, ids=[f"C{c}-{h}x{w}" for c, h, w in STEMS])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32, torch.float16])
def test_if_scan_of_a_constant_current_keeps_its_bits(stem, reset, dtype):
    """``if_scan`` of ``c.expand(T, ...)`` on the Numba backend runs the channels-last kernel
    that keeps the bits: spikes and membrane equal the plain kernel's (the same current as a
    4-D tensor, which that kernel takes) and the reference's, bit for bit; the bits are the
    packed spikes and the count is theirs."""
    C, H, W = stem
    T, B = 5, 3
    g = torch.Generator().manual_seed(C)
    cur = torch.rand(1, B, C, H, W, generator=g) * 0.6
    thr = torch.rand(C, generator=g) + 0.5
    sb = torch.randn(T, C, generator=g) * 0.1
    v0 = torch.rand(B, C, H, W, generator=g)
    kw = dict(threshold=thr, v0=v0, reset=reset, v_reset=-0.25, step_bias=sb, return_state=True, spike_dtype=dtype)
    got, v = sk.if_scan(cur.expand(T, B, C, H, W), backend="numba", **kw)
    hit = numba_gather.recall(got)
    assert hit is not None and hit.written
    kw4 = dict(kw, v0=v0.reshape(B, C, H * W))
    plain, v_plain = sk.if_scan(cur.reshape(1, B, C, H * W).expand(T, B, C, H * W), backend="numba", **kw4)  # 4-D
    ref, v_ref = sk.if_scan(cur.expand(T, B, C, H, W), backend="reference", **kw)
    assert torch.equal(got.reshape(plain.shape), plain) and torch.equal(v.reshape(v_plain.shape), v_plain)
    assert torch.equal(got, ref) and torch.equal(v, v_ref)
    flat = got.to(torch.uint8)
    assert 0 < int(flat.count_nonzero()) < flat.numel()
    from test_spike_conv_kept_bits import _packed

    assert torch.equal(torch.as_tensor(hit.pk), torch.as_tensor(_packed(flat, 1, 1)))
    assert sk.count_spikes(got) == hit.count == int(flat.count_nonzero())


def test_a_bits_only_stem_feeds_a_conv_and_a_shortcut():
    T, B, C, H, W = 4, 2, 16, 6, 6
    g = torch.Generator().manual_seed(9)
    cur = (torch.rand(1, B, C, H, W, generator=g) * 0.6).expand(T, B, C, H, W)
    with numba_gather.bits_only():
        x = sk.if_scan(cur, backend="numba", spike_dtype=torch.uint8)
    assert not numba_gather.recall(x).written
    ref = sk.if_scan(cur, backend="numba", spike_dtype=torch.uint8)
    w, b = _weights(C, C, (3, 3), 10)
    got = sk.spike_conv2d(x, w, b, 1, 1, residual=x, backend="numba", reset="zero")
    want = sk.spike_conv2d(ref.clone(), w, b, 1, 1, residual=ref.clone(), backend="numba", reset="zero")
    assert torch.equal(got, want) and 0 < int(want.count_nonzero()) < want.numel()
    numba_gather.materialize(x)
    assert torch.equal(x, ref)


# (the suite's outputs start poisoned, NaN / 0xFF: conftest.poison_outputs; an unwritten
# output read as a tensor shows as such)


def _producer_dtype(dtype, bits, T=3, B=2, C=12, H=5, W=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(T, B, 5, H, W, generator=g) < 0.25).to(torch.uint8)
    w, b = torch.randn(C, 5, 3, 3, generator=g) * 0.4, torch.randn(C, generator=g) * 0.1
    with numba_gather.bits_only(bits):
        return sk.spike_conv2d(s, w, b, 1, 1, backend="numba", spike_dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32, torch.float16, torch.bfloat16])
def test_bits_only_outputs_of_every_spike_dtype(dtype):
    """bool outputs are filed under their uint8 view (as the ops read them), float32 ones
    whose unwritten memory holds NaN are recognized bit for bit, and dtypes that a reader
    converts to float32 first (float16, bfloat16) are always written."""
    x = _producer_dtype(dtype, bits=True)
    ref = _producer_dtype(dtype, bits=False)
    hit = numba_gather.recall(x)
    assert hit is not None and hit.written == (dtype in (torch.float16, torch.bfloat16))
    assert sk.count_spikes(x) == int(ref.count_nonzero()) > 0
    w, b = _weights(7, 12, (3, 3), 11)
    got, v = sk.spike_conv2d(x, w, b, 1, 1, backend="numba", return_state=True)
    want, v_want = sk.spike_conv2d(ref.clone(), w, b, 1, 1, backend="numba", return_state=True)
    assert torch.equal(got, want) and torch.equal(v, v_want)
    w2, b2 = _weights(12, 12, (3, 3), 12)
    got = sk.spike_conv2d(x, w2, b2, 1, 1, residual=x, backend="numba")
    assert torch.equal(got, sk.spike_conv2d(ref.clone(), w2, b2, 1, 1, residual=ref.clone(), backend="numba"))
    numba_gather.materialize(x)
    assert torch.equal(x, ref)


def test_views_of_a_bits_only_output_are_written_before_they_are_read():
    """A spikekernels op reading it other than the gather kernel does (a slice, a reshape,
    another backend, a pool, a 1-step residual broadcast over T) writes the output from its
    bits first. (Plain torch ops see the unwritten memory: bits_only is for callers that
    know every reader.)"""
    w, b = _weights(8, 12, (3, 3), 13)
    w12, b12 = _weights(12, 12, (3, 3), 14)
    ref = _producer_dtype(torch.uint8, bits=False)
    cases = {
        "count of a slice": lambda x: sk.count_spikes(x[:1]),
        "conv of a slice": lambda x: sk.spike_conv2d(x[:2], w, b, 1, 1, backend="numba"),
        "reference backend": lambda x: sk.spike_conv2d(x, w, b, 1, 1, backend="reference"),
        "max pool": lambda x: sk.spike_max_pool2d(x, 2, 2, 0, backend="numba"),
        "1-step residual": lambda x: sk.spike_conv2d(x, w12, b12, 1, 1, residual=x[:1], backend="numba"),
        "expanded residual": lambda x: sk.spike_conv2d(x, w12, b12, 1, 1, residual=x[:1].expand(x.shape),
                                                       backend="numba"),
        "linear of its flattening": lambda x: sk.spike_linear(x.reshape(3, 2, -1), torch.ones(4, 360) * 0.05,
                                                              backend="numba"),
    }
    for name, read in cases.items():
        x = _producer_dtype(torch.uint8, bits=True)
        assert not numba_gather.recall(x).written
        got, want = read(x), read(ref.clone())
        assert (got == want if isinstance(got, int) else torch.equal(got, want)), name


def test_spike_linear_writes_its_output_under_bits_only():
    g = torch.Generator().manual_seed(15)
    s = (torch.rand(4, 3, 40, generator=g) < 0.3).to(torch.uint8)
    w = torch.randn(9, 40, generator=g) * 0.3
    with numba_gather.bits_only():
        out = sk.spike_linear(s, w, backend="numba")
    ref = sk.spike_linear(s, w, backend="numba")
    assert torch.equal(out, ref) and sk.count_spikes(out) == int(ref.count_nonzero()) > 0


def test_a_burst_layer_reading_a_spike_shortcut_gets_a_tensor():
    """A description whose merge layer is a burst neuron (legal, not made by convert): its
    shortcut is summed as a tensor, so the shortcut's source is not kept as bits only."""
    import sresnet
    import sresnet.executor as ex
    from _sresnet_nets import make

    g = torch.Generator().manual_seed(16)
    snn = sresnet.convert(make("cifarB"), torch.randn(8, 3, 8, 8, generator=g), horizon=8, calib_subset=8)
    net = snn.network
    conv_read = ex.Executor(net).conv_read
    k = next(i for i, layer in enumerate(net.layers) if layer.residual_spikes and layer.others[0].source in conv_read)
    net.layers[k].neuron.kind, net.layers[k].neuron.max_spikes = "burst", 2
    assert net.layers[k].others[0].source not in ex.Executor(net).conv_read
    images = torch.randn(2, 3, 8, 8, generator=g)
    runs = []
    for on in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ex, "BITS_BETWEEN_CONVS", on)
            with torch.no_grad():
                runs.append((snn(images, 4, backend="numba"), dict(snn.last_stats["spikes"])))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]


def test_the_scatter_kernel_writes_a_bits_only_input_first(monkeypatch):
    """With the gather kernel switched off (bench/conv_shapes.scatter_only) a bits-only input
    and residual reach the scatter kernel, which reads tensors: they are written first."""
    x = _producer_dtype(torch.uint8, bits=True)
    ref = _producer_dtype(torch.uint8, bits=False)
    w, b = _weights(12, 12, (3, 3), 17)
    want = sk.spike_conv2d(ref.clone(), w, b, 1, 1, residual=ref.clone(), backend="numba")
    monkeypatch.setattr(numba_gather, "gather", lambda *a: False)
    got = sk.spike_conv2d(x, w, b, 1, 1, residual=x, backend="numba")
    assert numba_gather.recall(x).written
    scatter = sk.spike_conv2d(ref.clone(), w, b, 1, 1, residual=ref.clone(), backend="numba")
    assert torch.equal(got, scatter)
    assert (got != want).float().mean() < 0.02  # the two kernels sum in different orders
