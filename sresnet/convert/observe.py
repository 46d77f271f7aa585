"""Activation statistics per ReLU call site (and for the logits): the scales λ.

λ is the p-th percentile of the *positive* activations of a site over the calibration
images (or their maximum). All values are kept while a site's activations (positive or
not) fit in ``max_values``, and the percentile is then exact; beyond that each batch keeps
a uniform random sample (drawn with replacement, fixed seed) of ``max_values / n_batches``
of its values and the percentile is taken over the positives of the sample. For a
uniform sample of n positives the empirical p-quantile has a rank error of standard
deviation sqrt(q(1-q)/n), q = p/100: with n = 2**19 (half of 2**20 values positive) and
p = 99.9 that is 4.4e-5, so λ lies between the true 99.887th and 99.913th percentiles
with probability ~0.997. "max" is always exact.

``percentile="search"`` instead picks, from the same sample, the λ that minimizes the
quantization error of an IF neuron over ``search_timesteps`` steps (the threshold search of
SNN Calibration, Li et al., ICML 2021, Sec. 4.1): with v0 = θ/2 a constant normalized input
a/λ gives floor(a·T/λ + 1/2) spikes in T steps, so the neuron represents
q_λ(a) = λ·clip(floor(a·T/λ + 1/2), 0, T)/T, and λ is the candidate of
``max · k/SEARCH_GRID`` (k = 1..SEARCH_GRID) with the least Σ (a − q_λ(a))² over the
positive sample (negative activations cost the same for every λ).

Several processes (:mod:`sresnet.distributed`) each observe a share of the batches (batch b
on rank b mod world). Each site's generator is advanced past the batches a rank skips by the
exact number of draws those batches would have made, so every batch is sampled as one
process would sample it; the samples are gathered and the maxima merged by MAX. λ is then
bit-identical for any number of processes.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx


# candidates of the threshold search (fractions k/SEARCH_GRID of the maximum) and the most
# positive values it scores per site or channel (a strided take of the uniform sample)
SEARCH_GRID = 100
SEARCH_VALUES = 1 << 18


class SiteStats:
    """Streaming percentile of the positive values of one site (scalar or per channel dim 1)."""

    def __init__(self, percentile, per_channel: bool, max_values: int, n_batches: int, seed: int,
                 batch_size: int | None = None, search_timesteps: int | None = None):
        self.percentile = percentile
        self.search_timesteps = search_timesteps
        self.batch_size = batch_size
        self.next_batch = 0
        self.per_channel = per_channel
        self.per_batch = max(1, max_values // max(1, n_batches))
        self.gen = torch.Generator().manual_seed(seed)
        self.samples: list[torch.Tensor] = []
        self.maximum: torch.Tensor | None = None

    def _skip(self, batches: int, x: torch.Tensor) -> None:
        """Advance the generator by the draws of ``batches`` full batches (as ``x``'s per-image shape)."""
        if batches <= 0 or self.percentile == "max":
            return
        per_image = x[0].numel()
        full = per_image * self.batch_size
        if self.per_channel:
            n, cols = full // x.shape[1], self.per_batch // x.shape[1] + 1
            if n > cols:
                torch.randint(n, (cols * batches,), generator=self.gen)
        elif full > self.per_batch:
            torch.randint(full, (self.per_batch * batches,), generator=self.gen)

    def update(self, x: torch.Tensor, batch: int | None = None) -> None:
        """Add the activations ``x`` ``[B, C, ...]`` of batch number ``batch`` (None: the next one)."""
        x = x.detach().float()
        if batch is not None:
            self._skip(batch - self.next_batch, x)
            self.next_batch = batch + 1
        if self.per_channel:
            flat = x.movedim(1, 0).reshape(x.shape[1], -1)  # [C, N]
            m = flat.amax(dim=1)
        else:
            flat = x.reshape(-1)
            m = flat.max()
        self.maximum = m if self.maximum is None else torch.maximum(self.maximum, m)
        if self.percentile == "max":
            return
        if self.per_channel:
            cols = self.per_batch // flat.shape[0] + 1
            if flat.shape[1] > cols:
                flat = flat[:, torch.randint(flat.shape[1], (cols,), generator=self.gen)]
            self.samples.append(flat.clone())
        else:
            # a uniform sample of all values, then its positives: a uniform sample of the positives
            if flat.numel() > self.per_batch:
                flat = flat[torch.randint(flat.numel(), (self.per_batch,), generator=self.gen)]
            self.samples.append(flat[flat > 0].clone())

    def merge(self, shard) -> None:
        """Join the samples and maxima of every rank of ``shard`` (in rank order)."""
        if not shard.active:
            return
        parts = shard.gather((self.maximum, self.samples))
        maxima = [m for m, _ in parts if m is not None]
        self.maximum = None
        for m in maxima:
            self.maximum = m if self.maximum is None else torch.maximum(self.maximum, m)
        self.samples = [t for _, samples in parts for t in samples]

    def scale(self) -> torch.Tensor:
        """λ: a 0-dim tensor, or ``[C]`` per channel. Sites that never fire get λ = 1 (per channel:
        the site's scalar λ), so their (zero) activations stay harmless."""
        if self.maximum is None:
            raise ValueError("no calibration data reached this site")
        if self.percentile == "max":
            lam = self.maximum.clone()
            if self.per_channel:
                glob = lam.max() if lam.max() > 0 else torch.tensor(1.0)
                return torch.where(lam > 0, lam, glob)
            return lam if lam > 0 else torch.tensor(1.0)
        if self.percentile == "search":
            pick = lambda v, default=None: _search(v, self.search_timesteps, default)  # noqa: E731
        else:
            q = float(self.percentile) / 100.0
            pick = lambda v, default=None: _quantile(v, q, default)  # noqa: E731
        if not self.per_channel:
            return pick(torch.cat(self.samples))
        allv = torch.cat(self.samples, dim=1)
        glob = pick(allv[allv > 0])
        return torch.stack([pick(row[row > 0], glob) for row in allv])


def _quantile(values: torch.Tensor, q: float, default: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-rank q-quantile of ``values`` (1-D); ``default`` (else 1.0) when empty."""
    n = values.numel()
    if n == 0:
        return default.clone() if default is not None else torch.tensor(1.0)
    k = min(n, max(1, math.ceil(q * n)))
    return values.kthvalue(k).values


def _search(values: torch.Tensor, T: int, default: torch.Tensor | None = None) -> torch.Tensor:
    """The λ of the threshold search (module docstring) over the positive ``values`` (1-D);
    ``default`` (else 1.0) when empty. Ties go to the larger λ (less clipping)."""
    if values.numel() == 0:
        return default.clone() if default is not None else torch.tensor(1.0)
    v = values[:: -(-values.numel() // SEARCH_VALUES)].double()
    cands = v.max() * torch.arange(1, SEARCH_GRID + 1, dtype=torch.float64) / SEARCH_GRID
    err = torch.empty(SEARCH_GRID, dtype=torch.float64)
    for i, lam in enumerate(cands):
        q = lam * torch.floor(v * (T / lam) + 0.5).clamp_(0, T) / T
        err[i] = (v - q).square().sum()
    best = SEARCH_GRID - 1 - int(torch.argmin(err.flip(0)))
    return cands[best].float()


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, stats: dict[str, SiteStats]):
        super().__init__(gm)
        self.stats = stats
        self.batch: int | None = None

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if n.op == "output":
            self.stats["output"].update(self.env[n.args[0]], self.batch)
        elif n.name in self.stats:
            self.stats[n.name].update(result, self.batch)
        return result


def observe(program, images: torch.Tensor, *, percentile, per_channel: bool, batch_size: int,
            max_values: int = 2 ** 20, seed: int = 0, shard=None,
            search_timesteps: int | None = None) -> dict[str, torch.Tensor]:
    """λ for every neuron layer, every observed term (shortcut_norm=False) and the logits.

    Args:
        program: from :func:`sresnet.convert.trace.analyze`.
        images: calibration images ``[N, C, H, W]``.
        percentile: a number in (0, 100], "max", or "search" (the threshold search over
            ``search_timesteps`` steps, module docstring).
        per_channel: one λ per channel (dim 1) instead of one per site.
        batch_size: images per ANN forward.
        shard: a :class:`sresnet.distributed.Shard`: this process observes batches b with
            b mod world = rank and the statistics are merged (λ identical for any world size).

    Returns:
        ``{site node name: λ, ..., "output": λ}``, λ float32 0-dim or ``[C]``.
    """
    if percentile == "search" and not (isinstance(search_timesteps, int) and search_timesteps >= 1):
        raise ValueError(f"percentile='search' needs search_timesteps, an int >= 1, got {search_timesteps!r}")
    keys = [l.name for l in program.layers if l.kind == "neuron"]
    keys += [t.observe for l in program.layers if l.kind == "neuron" for t in l.terms if t.observe]
    n_batches = math.ceil(images.shape[0] / batch_size)
    stats = {k: SiteStats(percentile, per_channel, max_values, n_batches, seed + i, batch_size, search_timesteps)
             for i, k in enumerate(keys)}
    # the logits have no channel structure worth a per-channel scale (argmax must not change)
    stats["output"] = SiteStats(percentile, False, max_values, n_batches, seed + len(keys), batch_size,
                                search_timesteps)
    rec = _Recorder(program.graph_module, stats)
    for b in range(n_batches):
        if shard is not None and not shard.owns(b):
            continue
        rec.batch = b
        rec.run(images[b * batch_size : (b + 1) * batch_size])
    if shard is not None:
        for st in stats.values():
            st.merge(shard)
    return {k: s.scale().float() for k, s in stats.items()}
