"""Ablation harness of the low-latency conversion (issue 12), as used to choose the default.

It builds the normalized network with the library's pipeline steps, calibrates one variant,
simulates the first ``--ntest`` test images once to ``--T`` steps and prints the accuracy at
T = 8..256 for several readout delays (fractions f of T skipped), from the prefix sums of
the output current of that one run. Variants: ``base`` (the paper's constant bias
compensation at T = 128), ``off`` (none), ``cum`` (the per-step bias schedule by
cumulative-count matching, the algorithm of :mod:`sresnet.convert.lowlat` before its two
float-rounding refinements: exact threshold rounding in ``step_bias`` and the run's order of
additions), ``rate`` (FTBC-style: ``b_t += target - rate_t`` over the horizon, ``--passes``
times). Its own runner adds the schedule to the formed current (the library fuses it into
the conv kernel), so numbers can differ from ``python -m sresnet eval`` by float rounding.

    PYTHONPATH=. python bench/lowlat_ablation.py --arch resnet20 --variant cum --H 64 --T 64
"""
import copy, time, json, argparse
import torch
import spikekernels as sk
import sresnet
from sresnet.convert.trace import trace, analyze
from sresnet.convert.fold import fold_batchnorm
from sresnet.convert.observe import observe
from sresnet.convert.normalize import normalize
from sresnet.convert.compensate import ann_targets, compensate
from sresnet.executor import Executor, channel_view as _channel_view
from sresnet.simulate import SpikingNetwork

DATA = "../shared/data"
CK = {"resnet20": "../shared/models/resnet20-12fca82f.th", "resnet56": "../shared/models/resnet56-4bfd9763.th"}
U8 = torch.uint8
BK = "numba"


def build(arch, percentile=99.9, per_channel=False, ncal=1000):
    model = sresnet.load_checkpoint(arch, CK[arch])
    calib, _ = sresnet.load_cifar(DATA, "calib", limit=ncal)
    with torch.no_grad():
        ann = copy.deepcopy(model).eval()
        gm = trace(ann)
        fold_batchnorm(gm)
        program = analyze(gm, calib[:2])
        scales = observe(program, calib, percentile=percentile, per_channel=per_channel, batch_size=128)
        layers, output = normalize(program, scales)
        snn = SpikingNetwork(layers, output, scales["output"], program.input_shape)
    return model, snn, program, scales, calib


def sched_rows(b, t0, steps):
    """rows t0..t0+steps of a schedule [H, C]; beyond H: mean of the last 4 rows."""
    H = b.shape[0]
    if t0 + steps <= H:
        return b[t0:t0 + steps]
    tail = b[-4:].mean(0, keepdim=True)
    rows = [b[t0:min(H, t0 + steps)]] if t0 < H else []
    rows.append(tail.expand(t0 + steps - max(H, t0), -1))
    return torch.cat(rows)


def current(snn, i, outs, steps, stems, t0, sched):
    layer = snn.layers[i]
    if layer.kind == "stem":
        cur = stems[i].expand(steps, *stems[i].shape[1:])
    else:
        terms = ([layer.main] if layer.main else []) + layer.others
        cur = Executor(snn.network, BK).currents(terms, outs)
        if layer.bias is not None:
            cur = cur + _channel_view(layer.bias, cur)
    if sched is not None and i in sched:
        b = sched_rows(sched[i], t0, steps)
        cur = cur + b.view(steps, 1, -1, *([1] * (cur.dim() - 3)))
    return cur


def run(snn, images, T, sched=None, v0=None, chunk=None):
    """Output currents [T, B, classes] (float64) with an optional per-step bias schedule."""
    B = images.shape[0]
    chunk = min(T, chunk or snn.default_chunk(B, tuple(images.shape[2:])))
    n = len(snn.layers)
    states = [None] * n
    if v0:
        for i, v in v0.items():
            states[i] = v
    stems = snn.stem_currents(images, BK)
    outc = torch.empty(T, B, snn.output[0].weight.shape[0], dtype=torch.float64)
    for t0 in range(0, T, chunk):
        steps = min(chunk, T - t0)
        outs = [None] * n
        for i in range(n):
            layer = snn.layers[i]
            if layer.kind == "maxpool":
                outs[i], states[i] = snn.step_layer(i, outs, steps, states[i], None, BK)
            else:
                cur = current(snn, i, outs, steps, stems, t0, sched)
                st = states[i]
                if st is not None and st.dim() == 1:
                    st = st.view(1, -1, *([1] * (cur.dim() - 3))).expand(cur.shape[1:]).contiguous()
                outs[i], states[i] = sk.if_scan(cur, 1.0, st, return_state=True, spike_dtype=U8, backend=BK)
            for j in snn._free[i]:
                outs[j] = None
        outc[t0:t0 + steps] = Executor(snn.network, BK).currents(snn.output, outs, exact=True).double()
    return outc


def calibrate(snn, program, scales, images, H, mode="cum", passes=3, v0mode=None, bclip=None, progress=True):
    """Per-step per-channel bias schedule, layer by layer on calibration images. Returns (sched, v0)."""
    targets = ann_targets(program, scales, images, 128)
    n = len(snn.layers)
    outs = [None] * n
    stems = snn.stem_currents(images, BK)
    sched, v0s = {}, {}
    for i, layer in enumerate(snn.layers):
        if layer.kind == "maxpool":
            outs[i], _ = snn.step_layer(i, outs, H, None, None, BK)
        else:
            cur = current(snn, i, outs, H, stems, 0, None).contiguous()
            if layer.kind == "stem":
                cur = cur.clone()
            tgt = targets[layer.name].double()
            C = cur.shape[2]
            x = cur.transpose(1, 2).reshape(H, C, -1)  # [H, C, M]
            M = x.shape[2]
            b = torch.zeros(H, C)
            if mode == "cum":
                v = torch.full((C, M), 0.5)
                cum = torch.zeros(C, dtype=torch.float64)
                for t in range(H):
                    u = v + x[t]
                    need = ((t + 1) * tgt * M - cum)  # spikes wanted at this step
                    k = need.round().clamp(0, M).long()
                    # the smallest |b| that makes exactly the k largest u reach threshold 1
                    srt = torch.sort(u, dim=1, descending=True).values
                    inf = torch.full((C, 1), float("inf"))
                    padded = torch.cat([inf, srt, -inf], 1)  # padded[:, j] = u_(j), 1-indexed
                    lo = 1.0 - padded.gather(1, k.view(-1, 1)).squeeze(1)
                    hi = 1.0 - padded.gather(1, (k + 1).view(-1, 1)).squeeze(1)
                    bt = torch.maximum(torch.minimum(torch.zeros(C), hi - 1e-6), lo)
                    if bclip is not None:
                        bt = bt.clamp(-bclip, bclip)
                    b[t] = bt
                    u = u + bt[:, None]
                    s = u >= 1.0
                    v = u - s.float()
                    cum += s.sum(1).double()
            else:  # FTBC-style per-step rate matching, several passes
                for _ in range(passes):
                    s = sk.if_scan(cur + b.view(H, 1, C, *([1] * (cur.dim() - 3))), 1.0, None, spike_dtype=U8, backend=BK)
                    rate = s.transpose(1, 2).reshape(H, C, -1).float().mean(2)
                    b += (tgt.float() - rate)
            sched[i] = b
            outs[i] = sk.if_scan(cur + b.view(H, 1, C, *([1] * (cur.dim() - 3))), 1.0, None, spike_dtype=U8, backend=BK)
            del cur, x
        for j in snn._free[i]:
            outs[j] = None
    return sched, v0s


def accuracies(outc, labels, Ts, delays):
    """{(T, delay rule): acc}; delay rule: fraction f -> d = floor(f T)."""
    S = torch.cat([torch.zeros(1, *outc.shape[1:], dtype=outc.dtype), outc.cumsum(0)])
    res = {}
    for T in Ts:
        if T > outc.shape[0]:
            continue
        for f in delays:
            d = int(f * T)
            r = S[T] - S[d]
            res[(T, f)] = float((r.argmax(1) == labels).float().mean() * 100)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--variant", default="base")
    ap.add_argument("--percentile", default="99.9")
    ap.add_argument("--per-channel", action="store_true")
    ap.add_argument("--H", type=int, default=64)
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--ncalsub", type=int, default=32)
    ap.add_argument("--ntest", type=int, default=500)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--bclip", type=float, default=None)
    ap.add_argument("--jsonl", default=None, help="append the results as one JSON line to this file")
    a = ap.parse_args()
    torch.set_num_threads(1)
    pct = a.percentile if a.percentile == "max" else float(a.percentile)
    model, snn, program, scales, calib = build(a.arch, pct, a.per_channel)
    test, labels = sresnet.load_cifar(DATA, "test", limit=a.ntest)
    with torch.no_grad():
        ann_acc = float((model(test).argmax(1) == labels).float().mean() * 100)
    t = time.time()
    sched = v0 = None
    sub = calib[: a.ncalsub]
    if a.variant == "base":
        compensate(snn, program, scales, calib, "bias", "auto", timesteps=128, subset=32, batch_size=128)
    elif a.variant == "off":
        pass
    elif a.variant in ("cum", "rate"):
        with torch.no_grad():
            sched, v0 = calibrate(snn, program, scales, sub, a.H, mode=a.variant, passes=a.passes, bclip=a.bclip)
    ctime = time.time() - t
    t = time.time()
    outs = []
    with torch.no_grad():
        for s in range(0, a.ntest, 100):
            outs.append(run(snn, test[s:s + 100], a.T, sched, v0))
    outc = torch.cat(outs, 1)
    etime = time.time() - t
    Ts = [8, 16, 32, 64, 128, 256]
    delays = [0, 0.125, 0.25, 0.5]
    acc = accuracies(outc, labels, Ts, delays)
    tag = f"{a.arch} {a.variant} p={a.percentile} pc={a.per_channel} H={a.H} ncal={a.ncalsub} passes={a.passes} bclip={a.bclip}"
    print(f"{tag}  ANN {ann_acc:.1f}  calib {ctime:.0f}s  eval {etime:.0f}s")
    for f in delays:
        print(f"  delay {f:5.3f}: " + "  ".join(f"T={T}:{acc[(T, f)]:.1f}" for T in Ts if (T, f) in acc))
    if a.jsonl:
        with open(a.jsonl, "a") as fh:
            fh.write(json.dumps(dict(tag=tag, ann=ann_acc, calib_s=ctime, acc={f"{k[0]}/{k[1]}": v for k, v in acc.items()})) + "\n")
