"""Prints the end-to-end summary table (bench/test_bench_e2e.py) after the benchmark tables."""

from __future__ import annotations

# first, before torch: sets OMP_WAIT_POLICY=PASSIVE for every provider alike (see spikekernels/_threads.py)
import spikekernels  # noqa: F401,E402


def pytest_terminal_summary(terminalreporter):
    import sys

    peers = sys.modules.get("peers")
    if peers is None or not peers.E2E_MEDIANS:
        return
    tr = terminalreporter
    tr.section("end to end: ResNet-20, sresnet vs peers vs ANN x T (medians)")
    for T in sorted({t for t, _ in peers.E2E_MEDIANS}):
        med = {p: s for (t, p), s in peers.E2E_MEDIANS.items() if t == T}
        B = peers.E2E_BATCH
        tr.write_line(f"T={T}, B={B}:  provider  median s  image-timesteps/s  sresnet speedup")
        s0 = med.get("sresnet")
        for p, s in sorted(med.items(), key=lambda kv: kv[1]):
            ratio = f"{s / s0:6.2f}x" if s0 else ""
            tr.write_line(f"  {p:15s} {s:8.3f}  {B * T / s:12.0f}  {ratio}")
        peer = {p: s for p, s in med.items() if p in peers.PEER_ADAPTERS}
        if s0 and peer:
            best = min(peer, key=peer.get)
            tr.write_line(f"  sresnet vs fastest peer ({best}): {peer[best] / s0:.2f}x")
        for ann in ("ann-xT", "ann-folded-xT"):
            if s0 and ann in med:
                tr.write_line(f"  sresnet vs {ann}: {med[ann] / s0:.2f}x")
