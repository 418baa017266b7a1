"""Synthetic "pooling pattern generation" experiment of VSE∞ (supplementary §2.3, Table 6).

Can a weight generator learn a known pooling from input/output pairs alone, and does what it
learned carry over to set sizes it never saw? Each generator design below is trained to
reproduce a ground-truth pooling of random feature sets (loss: MSE between its pooled vector and
the ground-truth pooled vector); its generated rank coefficients θ are then compared with the
ground-truth coefficients by RMSE, on the training sizes and on unseen smaller / larger sizes.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/pooling_patterns.py [--quick] [--seed 0] [--seeds 1]
        [--out benchmarks/results/pooling_patterns] [--steps N] [--batch B] [--lr LR]

The default run (one seed) takes about 7 minutes on one CPU thread, ``--quick`` under a minute;
``--seeds K`` repeats everything for K seeds and reports the median (K times longer).

Ground-truth poolings (weights θ_k on the k-th largest value of each dimension, k = 1..N, the
same for every dimension, Σθ_k = 1): see :func:`true_weights`.

Generator designs (all end in a softmax at temperature 0.1 over the N valid ranks, padded ranks
get weight exactly 0, and pool with :func:`vsekit.pooling.pool_sorted`, i.e. the same
per-dimension descending sort and weighted sum as GPO):

* ``Index + Interp.``: :class:`InterpGenerator`, FSPool-style: 21 learnable knots on [0, 1]
  (initialised to 1/20), the score of rank ``t`` of a size-``N`` set is the piecewise-linear
  interpolation of the knots at ``t / (N - 1)``. No sequence model.
* ``Cos/Sin + MLP``: :class:`SinMLPGenerator`, a per-position MLP on the sinusoidal encoding of
  the rank; the score of rank ``t`` ignores ``N`` (only the softmax normalisation sees it).
* ``Index + BiGRU``: :class:`IndexGRUGenerator`, GPO's BiGRU fed with learned position vectors
  (``nn.Embedding(1000, 32)``, the historical ``pe_mode='learn'``) instead of sin/cos.
* ``Cos/Sin + BiGRU``: :class:`vsekit.pooling.GPO` itself (``GPO(32, 32)``), imported, not
  re-implemented.

Protocol (the paper gives no feature dim, sample counts, distribution or optimiser; these are our
choices): every training step draws ``batch`` sets with sizes uniform in [20, 100] and D = 32
i.i.d. N(0, 1) features per element (fresh data every step, the same data stream for every
design); Adam with a cosine-decayed learning rate. All designs share every setting. The
evaluation computes, for each size N, ``RMSE_N = sqrt(mean_k (θ_k - θ*_k)^2)`` over the N ranks
and averages it over the sizes of a split: SEEN 20..100, UNSEEN smaller 10..19, UNSEEN larger
101..120. A run whose SEEN RMSE ends above its untrained generator's is flagged as stuck
(:data:`STUCK_MARGIN`): with the sharp temperature-0.1 softmax, a generator that has put all its
weight on a wrong rank gets no gradient to move it (seen with Index + BiGRU on M-1, where it can
lock onto rank 2); such a run is kept in the table, not re-run.

Outputs in ``--out``: ``results.json`` (settings, every RMSE, the untrained RMSE, losses, wall
times), ``table.md`` (our table, the paper's table and the per-pattern comparison) and
``coefficients.png`` (learned vs true θ at N = 15, 50, 120), all written atomically.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vsekit.io import atomic_write, atomic_write_json, atomic_write_text
from vsekit.pooling import (
    GPO,
    GPO_TEMPERATURE,
    check_lengths,
    gpo_size_weights,
    pool_sorted,
    positional_encoding,
)

PATTERNS: tuple[str, ...] = ("A", "M-1", "M-10", "T-50%", "L")
"""Ground-truth poolings, in the paper's column order."""

DESIGNS: tuple[str, ...] = ("Index + Interp.", "Cos/Sin + MLP", "Index + BiGRU", "Cos/Sin + BiGRU")
"""Generator designs, in the paper's row order; the last one is GPO."""

GPO_DESIGN = "Cos/Sin + BiGRU"

SPLITS: dict[str, tuple[int, int]] = {"seen": (20, 100), "smaller": (10, 19), "larger": (101, 120)}
"""Inclusive set-size ranges: training sizes, and the unseen smaller / larger sizes."""

TRAIN_SIZES = SPLITS["seen"]
PLOT_SIZES: tuple[int, ...] = (15, 50, 120)
D_PE = 32
D_HIDDEN = 32
N_KNOTS = 21
MAX_POSITIONS = 1000

PAPER_RMSE: dict[str, dict[str, tuple[float, float, float]]] = {
    # design -> pattern -> (SEEN, UNSEEN smaller, UNSEEN larger); VSE∞ supplementary Table 6.
    "Index + Interp.": {
        "A": (0.0, 0.0, 0.0),
        "M-1": (0.065, 0.017, 0.070),
        "M-10": (0.030, 0.141, 0.014),
        "T-50%": (0.011, 0.039, 0.005),
        "L": (0.004, 0.016, 0.002),
    },
    "Cos/Sin + MLP": {
        "A": (0.012, 0.054, 0.006),
        "M-1": (0.003, 0.003, 0.003),
        "M-10": (0.047, 0.093, 0.030),
        "T-50%": (0.032, 0.096, 0.026),
        "L": (0.022, 0.065, 0.028),
    },
    "Index + BiGRU": {
        "A": (0.002, 0.006, 0.003),
        "M-1": (0.002, 0.004, 0.001),
        "M-10": (0.026, 0.052, 0.018),
        "T-50%": (0.011, 0.049, 0.007),
        "L": (0.008, 0.015, 0.005),
    },
    "Cos/Sin + BiGRU": {
        "A": (0.0, 0.002, 0.0),
        "M-1": (0.005, 0.010, 0.004),
        "M-10": (0.010, 0.031, 0.007),
        "T-50%": (0.006, 0.046, 0.004),
        "L": (0.0, 0.005, 0.001),
    },
}

FULL = {"steps": 500, "batch": 32}
QUICK = {"steps": 50, "batch": 16}
LR = 1e-2
DIM = 32
STUCK_MARGIN = 1e-3
"""A run is reported as stuck when training left its SEEN RMSE more than this above the RMSE of
the untrained generator (the table's precision): the temperature-0.1 softmax saturated on wrong
ranks, where its gradient vanishes."""


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


def true_weights(pattern: str, n: int) -> Tensor:
    """Ground-truth coefficients θ_1..θ_N of a pooling over the descending-sorted values.

    With ranks k = 1..N (k = 1 the maximum):

    * ``"A"`` (average): θ_k = 1/N.
    * ``"M-1"`` (max): θ_1 = 1, all others 0.
    * ``"M-10"`` (K-max, K = 10): θ_k = 1/min(10, N) for k <= min(10, N), else 0.
    * ``"T-50%"`` (top 50%): with K = ceil(N/2), θ_k = 1/K for k <= K, else 0.
    * ``"L"`` (linear decay): θ_k = (N - k + 1) / (N(N + 1)/2) = 2(N - k + 1) / (N(N + 1)), i.e.
      proportional to N - k + 1, falling linearly by the same step from rank 1 down to rank N
      (and reaching 0 at the would-be rank N + 1). For N = 4: [0.4, 0.3, 0.2, 0.1].

    Args:
        pattern: one of :data:`PATTERNS`.
        n: set size (>= 1).

    Returns:
        Float32 tensor of shape (N,) summing to 1.

    Raises:
        ValueError: for an unknown pattern or a size below 1.
    """
    if n < 1:
        raise ValueError(f"set size must be >= 1, got {n}")
    theta = torch.zeros(n, dtype=torch.float64)
    if pattern == "A":
        theta[:] = 1.0 / n
    elif pattern == "M-1":
        theta[0] = 1.0
    elif pattern == "M-10":
        top = min(10, n)
        theta[:top] = 1.0 / top
    elif pattern == "T-50%":
        top = math.ceil(n / 2)
        theta[:top] = 1.0 / top
    elif pattern == "L":
        theta = torch.arange(n, 0, -1, dtype=torch.float64) * (2.0 / (n * (n + 1)))
    else:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    return theta.float()


def true_weight_table(pattern: str, sizes: Sequence[int]) -> Tensor:
    """U×max(sizes) table whose row ``u`` is :func:`true_weights` of ``sizes[u]``, zero-padded."""
    table = torch.zeros(len(sizes), max(sizes))
    for row, size in enumerate(sizes):
        table[row, :size] = true_weights(pattern, size)
    return table


# --------------------------------------------------------------------------------------------
# Ablation generators (the fourth design is vsekit.pooling.GPO)
# --------------------------------------------------------------------------------------------


def _masked_softmax(scores: Tensor, sizes: Tensor, temperature: float = GPO_TEMPERATURE) -> Tensor:
    """Softmax of ``scores / temperature`` over the first ``sizes[u]`` entries of each row ``u``
    of a U×L score table; the other entries get weight exactly 0."""
    valid = torch.arange(scores.shape[1]) < sizes.unsqueeze(1)
    return torch.softmax(scores.masked_fill(~valid, float("-inf")) / temperature, dim=1)


class RankWeightGenerator(nn.Module):
    """Base of the ablation generators: weights over ranks that depend only on the set size.

    Subclasses implement :meth:`scores`; :meth:`size_weights` and :meth:`forward` match the
    interface of :class:`vsekit.pooling.GPO` (``size_weights(sizes)`` and
    ``forward(features, lengths) -> (pooled B×D, weights B×L)``).
    """

    def scores(self, sizes: Tensor) -> Tensor:  # pragma: no cover - abstract
        """U×max(sizes) raw scores (before the temperature softmax) for the given sizes."""
        raise NotImplementedError

    def size_weights(self, sizes: Sequence[int] | Tensor) -> Tensor:
        """U×max(sizes) rank weights for the given set sizes; rows sum to 1, padding is 0."""
        sizes = torch.as_tensor(sizes, dtype=torch.int64).cpu()
        return _masked_softmax(self.scores(sizes), sizes)

    def forward(self, features: Tensor, lengths: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """Pool ``features`` (B×L×D, valid elements first) by sort and weighted sum.

        Returns:
            ``(pooled B×D, weights B×L)``; weights past each length are exactly 0.
        """
        lens = check_lengths(features, lengths)
        sizes, inverse = torch.unique(lens, return_inverse=True)
        weights = self.size_weights(sizes)[inverse]
        pooled = pool_sorted(features, lens, weights)
        return pooled, F.pad(weights, (0, features.shape[1] - weights.shape[1]))


class InterpGenerator(RankWeightGenerator):
    """"Index + Interp.": FSPool-style piecewise-linear scores over the relative rank.

    ``n_knots`` learnable values at the evenly spaced points ``j / (n_knots - 1)`` of [0, 1]
    (initialised to ``1 / (n_knots - 1)``); the score of rank ``t`` (0-based) of a size-``N`` set is
    their linear interpolation at ``r = t / (N - 1)`` (``r = 0`` when ``N = 1``).

    Args:
        n_knots: number of knots (21 in the historical VSE∞ code, i.e. 20 pieces).
    """

    def __init__(self, n_knots: int = N_KNOTS) -> None:
        super().__init__()
        self.knots = nn.Parameter(torch.full((n_knots,), 1.0 / (n_knots - 1)))

    def scores(self, sizes: Tensor) -> Tensor:
        pieces = self.knots.numel() - 1
        ranks = torch.arange(int(sizes.max()), dtype=torch.float32)
        ratio = ranks / (sizes.unsqueeze(1).float() - 1).clamp(min=1)
        x = ratio.clamp(0, 1) * pieces
        left = x.floor().long().clamp(max=pieces - 1)
        frac = x - left
        return self.knots[left] * (1 - frac) + self.knots[left + 1] * frac


class SinMLPGenerator(RankWeightGenerator):
    """"Cos/Sin + MLP": score of rank ``t`` = MLP(sinusoidal encoding of ``t``), unaware of N.

    Args:
        d_pe: size of the sin/cos encoding.
        d_hidden: hidden width of the two-layer ReLU MLP.
    """

    def __init__(self, d_pe: int = D_PE, d_hidden: int = D_HIDDEN) -> None:
        super().__init__()
        self.d_pe = d_pe
        self.mlp = nn.Sequential(nn.Linear(d_pe, d_hidden), nn.ReLU(), nn.Linear(d_hidden, 1))

    def scores(self, sizes: Tensor) -> Tensor:
        pe = positional_encoding(int(sizes.max()), self.d_pe)
        return self.mlp(pe).squeeze(-1).unsqueeze(0).expand(sizes.numel(), -1)


class IndexGRUGenerator(RankWeightGenerator):
    """"Index + BiGRU": GPO's generator with learned position vectors instead of sin/cos.

    Rank ``t`` is represented by row ``t`` of ``nn.Embedding(max_positions, d_pe)``; the BiGRU,
    direction averaging and bias-free scorer are those of GPO
    (:func:`vsekit.pooling.gpo_size_weights`). Rows of ranks never seen in training keep their
    random initialisation.

    Args:
        d_pe: position-vector size.
        d_hidden: BiGRU hidden size.
        max_positions: number of position vectors (largest supported set size).
    """

    def __init__(self, d_pe: int = D_PE, d_hidden: int = D_HIDDEN, max_positions: int = MAX_POSITIONS) -> None:
        super().__init__()
        self.position = nn.Embedding(max_positions, d_pe)
        self.gru = nn.GRU(d_pe, d_hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def size_weights(self, sizes: Sequence[int] | Tensor) -> Tensor:
        sizes = torch.as_tensor(sizes, dtype=torch.int64).cpu()
        return gpo_size_weights(sizes, self.gru, self.linear, self.position.weight)


def build_generator(design: str) -> nn.Module:
    """A fresh generator of the named design (one of :data:`DESIGNS`)."""
    if design == "Index + Interp.":
        return InterpGenerator()
    if design == "Cos/Sin + MLP":
        return SinMLPGenerator()
    if design == "Index + BiGRU":
        return IndexGRUGenerator()
    if design == GPO_DESIGN:
        return GPO(D_PE, D_HIDDEN)
    raise ValueError(f"unknown design {design!r}; expected one of {', '.join(DESIGNS)}")


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def sample_sets(
    batch: int, dim: int, sizes: tuple[int, int], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random padded sets: sizes uniform in ``sizes`` (inclusive), N(0, 1) features, zero padding.

    Returns:
        ``(features B×max_size×dim, lengths B)``.
    """
    low, high = sizes
    lengths = torch.randint(low, high + 1, (batch,), generator=generator)
    features = torch.randn(batch, int(lengths.max()), dim, generator=generator)
    features[torch.arange(features.shape[1]) >= lengths.unsqueeze(1)] = 0
    return features, lengths


def generated_weights(model: nn.Module, sizes: Sequence[int]) -> Tensor:
    """U×max(sizes) coefficients the model generates for the given sizes (no autograd)."""
    with torch.no_grad():
        return model.size_weights(list(sizes)).detach().float()


def rmse_per_size(model: nn.Module, pattern: str, sizes: Sequence[int]) -> list[float]:
    """``RMSE_N = sqrt(mean_k (θ_k - θ*_k)^2)`` over the N ranks, for each N in ``sizes``."""
    sizes = list(sizes)
    error = (generated_weights(model, sizes) - true_weight_table(pattern, sizes)).square().sum(1)
    return (error / torch.tensor(sizes, dtype=torch.float32)).sqrt().tolist()


def evaluate(model: nn.Module, pattern: str) -> dict[str, float]:
    """Mean over the sizes of each split (:data:`SPLITS`) of the per-size coefficient RMSE."""
    result = {}
    for split, (low, high) in SPLITS.items():
        per_size = rmse_per_size(model, pattern, range(low, high + 1))
        result[split] = sum(per_size) / len(per_size)
    return result


def train_generator(
    model: nn.Module, pattern: str, *, steps: int, batch: int, lr: float, dim: int, seed: int
) -> list[float]:
    """Fit ``model`` so that its pooled output matches the ground-truth pooling ``pattern``.

    Each step draws fresh random sets (:func:`sample_sets`, sizes in :data:`TRAIN_SIZES`), pools
    them with the model and with the true coefficients, and takes an Adam step on the MSE between
    the two pooled vectors; the learning rate follows a cosine from ``lr`` down to ``lr / 100``.

    Returns:
        The training loss of every step.
    """
    data = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
    )
    truth = true_weight_table(pattern, list(range(TRAIN_SIZES[1] + 1))[1:])  # row n-1 = size n
    model.train()
    losses = []
    for _ in range(steps):
        features, lengths = sample_sets(batch, dim, TRAIN_SIZES, data)
        with torch.no_grad():
            target = pool_sorted(features, lengths, truth[lengths - 1, : features.shape[1]])
        pooled, _ = model(features, lengths)
        loss = F.mse_loss(pooled, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def run_all(
    designs: Sequence[str],
    patterns: Sequence[str],
    *,
    steps: int,
    batch: int,
    lr: float,
    dim: int,
    seeds: Sequence[int],
    log: Callable[[str], None] = print,
) -> tuple[dict[str, dict[str, dict]], dict[str, dict[str, Tensor]]]:
    """Train and evaluate every design on every pattern, once per seed.

    For a given seed, every design starts from the same seed-determined initialisation for
    every pattern and all designs see the same stream of training sets.

    Returns:
        ``(results, coefficients)``: ``results[design][pattern]`` holds the median over the seeds
        of the RMSE per split (``seen``/``smaller``/``larger``), ``stuck_seeds`` (seeds whose
        trained SEEN RMSE is above the untrained one by more than :data:`STUCK_MARGIN`) and
        ``per_seed``, a list with each seed's RMSEs, untrained RMSEs, first/last losses and wall
        time; ``coefficients[design][pattern]`` is the θ learned with the first seed at
        :data:`PLOT_SIZES`. ``log`` receives one progress line per design, pattern and seed.
    """
    results: dict[str, dict[str, dict]] = {d: {} for d in designs}
    coefficients: dict[str, dict[str, Tensor]] = {d: {} for d in designs}
    total = len(designs) * len(patterns) * len(seeds)
    done = 0
    for design in designs:
        for pattern in patterns:
            runs = []
            for seed in seeds:
                start = time.perf_counter()
                torch.manual_seed(seed)
                model = build_generator(design)
                untrained = evaluate(model, pattern)
                losses = train_generator(model, pattern, steps=steps, batch=batch, lr=lr, dim=dim, seed=seed)
                rmse = evaluate(model, pattern)
                tail = losses[-max(1, len(losses) // 10) :]
                elapsed = time.perf_counter() - start
                stuck = rmse["seen"] > untrained["seen"] + STUCK_MARGIN
                runs.append(
                    {
                        "seed": seed,
                        **rmse,
                        "untrained": untrained,
                        "stuck": stuck,
                        "first_loss": losses[0],
                        "final_loss": sum(tail) / len(tail),
                        "seconds": round(elapsed, 2),
                    }
                )
                if seed == seeds[0]:
                    coefficients[design][pattern] = generated_weights(model, PLOT_SIZES)
                done += 1
                log(
                    f"[{done:2d}/{total}] {design:<16} {pattern:<6} seed {seed}: RMSE seen {rmse['seen']:.4f} "
                    f"smaller {rmse['smaller']:.4f} larger {rmse['larger']:.4f} (untrained seen "
                    f"{untrained['seen']:.4f}) loss {losses[0]:.2e} -> {runs[-1]['final_loss']:.2e} "
                    f"{elapsed:5.1f}s{'  STUCK: worse than untrained' if stuck else ''}"
                )
            results[design][pattern] = {
                **{split: statistics.median(r[split] for r in runs) for split in SPLITS},
                "stuck_seeds": [r["seed"] for r in runs if r["stuck"]],
                "per_seed": runs,
            }
    return results, coefficients


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    """Paper-style number: three decimals without the leading zero, ``0`` if it rounds to 0."""
    text = f"{value:.3f}"
    if float(text) == 0:
        return "0"
    return text[1:] if text.startswith("0.") else text


def markdown_table(table: dict[str, dict[str, tuple[float, float, float]]], title: str) -> str:
    """A table in the layout of the paper's Table 6 (rows: designs; SEEN and UNSEEN columns)."""
    head = "| Design | SEEN " + " | ".join(PATTERNS) + " | UNSEEN (smaller/larger) " + " | ".join(PATTERNS) + " |"
    lines = [f"**{title}**", "", head, "|" + "---|" * (1 + 2 * len(PATTERNS))]
    for design, row in table.items():
        seen = [fmt(row[p][0]) for p in PATTERNS]
        unseen = [f"{fmt(row[p][1])}/{fmt(row[p][2])}" for p in PATTERNS]
        name = f"**{design}**" if design == GPO_DESIGN else design
        lines.append(f"| {name} | " + " | ".join(seen + unseen) + " |")
    return "\n".join(lines)


def as_triples(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """``results`` reduced to ``design -> pattern -> (seen, smaller, larger)``."""
    return {
        d: {p: (r["seen"], r["smaller"], r["larger"]) for p, r in rows.items()} for d, rows in results.items()
    }


def rank_of(values: dict[str, float], design: str) -> int:
    """Competition rank (1 = lowest) of ``design`` among ``values``, compared at the paper's
    3-decimal precision so that ties count as ties (as in the paper's table)."""
    rounded = {d: round(v, 3) for d, v in values.items()}
    return 1 + sum(v < rounded[design] for v in rounded.values())


def best_of(values: dict[str, float]) -> str:
    """Designs with the lowest value at 3-decimal precision, joined with ``=``."""
    rounded = {d: round(v, 3) for d, v in values.items()}
    low = min(rounded.values())
    return " = ".join(d for d, v in rounded.items() if v == low)


def comparison_lines(ours: dict, paper: dict) -> list[str]:
    """Per pattern: the best design (SEEN, and the mean of SEEN/smaller/larger) in our run and
    in the paper, and the rank of Cos/Sin + BiGRU; then the mean rank of every design over all
    15 columns."""
    designs = list(ours)
    lines = []
    for pattern in PATTERNS:
        parts = []
        for label, table in (("ours", ours), ("paper", paper)):
            seen = {d: table[d][pattern][0] for d in designs}
            mean = {d: sum(table[d][pattern]) / 3 for d in designs}
            parts.append(
                f"{label}: best SEEN {best_of(seen)}, best mean-of-3 {best_of(mean)}; "
                f"Cos/Sin+BiGRU rank SEEN {rank_of(seen, GPO_DESIGN)}/{len(designs)}, "
                f"mean-of-3 {rank_of(mean, GPO_DESIGN)}/{len(designs)}"
            )
        lines.append(f"- **{pattern}**: " + " | ".join(parts))
    for label, table in (("ours", ours), ("paper", paper)):
        mean_rank = {}
        for design in designs:
            ranks = [
                rank_of({d: table[d][p][s] for d in designs}, design) for p in PATTERNS for s in range(3)
            ]
            mean_rank[design] = sum(ranks) / len(ranks)
        ordered = ", ".join(f"{d} {r:.2f}" for d, r in sorted(mean_rank.items(), key=lambda kv: kv[1]))
        lines.append(f"- mean rank over the 15 columns ({label}): {ordered}")
    return lines


def stuck_line(results: dict[str, dict[str, dict]]) -> str:
    """One line naming the stuck runs (see :data:`STUCK_MARGIN`)."""
    stuck = [
        f"{design} on {pattern} (seed {', '.join(map(str, row['stuck_seeds']))})"
        for design, rows in results.items()
        for pattern, row in rows.items()
        if row["stuck_seeds"]
    ]
    if not stuck:
        return "- no run ended with a SEEN RMSE above its untrained generator's"
    return (
        "- stuck runs (SEEN RMSE above the untrained generator's; typically the temperature-0.1 softmax has "
        "saturated on wrong ranks, where its gradient vanishes): " + "; ".join(stuck)
    )


def _seed_text(seeds: Sequence[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"median of seeds {seeds[0]}..{seeds[-1]}"


def plot_coefficients(coefficients: dict[str, dict[str, Tensor]], path: Path) -> Path:
    """Grid of learned vs true θ: one row per pattern, one column per size of :data:`PLOT_SIZES`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = list(coefficients)
    patterns = [p for p in PATTERNS if p in coefficients[designs[0]]]
    fig, axes = plt.subplots(len(patterns), len(PLOT_SIZES), figsize=(4.2 * len(PLOT_SIZES), 2.6 * len(patterns)),
                             squeeze=False)
    for row, pattern in enumerate(patterns):
        for col, size in enumerate(PLOT_SIZES):
            ax = axes[row][col]
            ranks = range(1, size + 1)
            ax.plot(ranks, true_weights(pattern, size).tolist(), color="black", lw=2.0, ls="--", zorder=5,
                    label="ground truth")
            for design in designs:
                ax.plot(ranks, coefficients[design][pattern][PLOT_SIZES.index(size), :size].tolist(), lw=1.1,
                        label=design)
            split = "seen" if TRAIN_SIZES[0] <= size <= TRAIN_SIZES[1] else "unseen"
            ax.set_title(f"{pattern}, N={size} ({split})", fontsize=9)
            ax.grid(alpha=0.3)
            if row == len(patterns) - 1:
                ax.set_xlabel("rank k")
            if col == 0:
                ax.set_ylabel("θ_k")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Argument parser whose errors are a single line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = _Parser(prog="pooling_patterns.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (about a minute at most)")
    parser.add_argument("--out", default="benchmarks/results/pooling_patterns", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="first seed of the initialisations and the data (default 0)")
    parser.add_argument("--seeds", type=_positive_int, default=1, help="number of seeds (seed, seed+1, ...); the "
                        "table reports the median over seeds (default 1; the run time scales with it)")
    parser.add_argument("--steps", type=_positive_int, help="training steps per design and pattern "
                        f"(default {FULL['steps']}, {QUICK['steps']} with --quick)")
    parser.add_argument("--batch", type=_positive_int, help=f"sets per step (default {FULL['batch']}, "
                        f"{QUICK['batch']} with --quick)")
    parser.add_argument("--lr", type=_positive_float, default=LR, help=f"peak Adam learning rate (default {LR})")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.steps = args.steps or preset["steps"]
    args.batch = args.batch or preset["batch"]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment, print the tables and write the results; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seed, args.seed + args.seeds))
    out = Path(args.out)
    start, cpu_start = time.perf_counter(), time.process_time()
    print(
        f"pooling patterns: {len(DESIGNS)} designs x {len(PATTERNS)} patterns, {args.steps} steps of "
        f"{args.batch} sets (sizes {TRAIN_SIZES[0]}..{TRAIN_SIZES[1]}, D={DIM}, N(0,1)), Adam lr {args.lr} "
        f"cosine, {_seed_text(seeds)}{' [quick]' if args.quick else ''}",
        flush=True,
    )
    results, coefficients = run_all(
        DESIGNS, PATTERNS, steps=args.steps, batch=args.batch, lr=args.lr, dim=DIM, seeds=seeds,
        log=lambda line: print(line, flush=True),
    )
    ours = as_triples(results)
    comparison = comparison_lines(ours, PAPER_RMSE) + [stuck_line(results)]
    mode = "quick run, " if args.quick else ""
    report = "\n\n".join(
        [
            "# Pooling pattern generation: coefficient RMSE (lower is better)",
            markdown_table(ours, f"Ours ({mode}{args.steps} steps x {args.batch} sets, {_seed_text(seeds)})"),
            markdown_table(PAPER_RMSE, "Paper (VSE∞ supplementary Table 6)"),
            "Per pattern (ties at 3 decimals share a rank; mean-of-3 = mean of SEEN, smaller, larger):\n\n"
            + "\n".join(comparison),
        ]
    )
    print("\n" + report + "\n", flush=True)
    plot_path = plot_coefficients(coefficients, out / "coefficients.png")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    payload = {
        "experiment": "VSE∞ supp. §2.3 / Table 6: pooling pattern generation",
        "settings": {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "schedule": "cosine from lr to lr/100",
            "optimizer": "Adam",
            "feature_dim": DIM,
            "feature_distribution": "iid N(0,1)",
            "train_sizes": list(TRAIN_SIZES),
            "splits": {k: list(v) for k, v in SPLITS.items()},
            "temperature": GPO_TEMPERATURE,
            "d_pe": D_PE,
            "d_hidden": D_HIDDEN,
            "interp_knots": N_KNOTS,
            "index_positions": MAX_POSITIONS,
            "seeds": seeds,
            "quick": args.quick,
            "torch_threads": torch.get_num_threads(),
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "rmse": results,
        "paper_rmse": {d: {p: dict(zip(SPLITS, v)) for p, v in rows.items()} for d, rows in PAPER_RMSE.items()},
        "comparison": comparison,
        "coefficients": {
            d: {p: {str(n): w[i, :n].tolist() for i, n in enumerate(PLOT_SIZES)} for p, w in rows.items()}
            for d, rows in coefficients.items()
        },
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
    }
    atomic_write_json(payload, out / "results.json")
    atomic_write_text(report + "\n", out / "table.md")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {plot_path}; total {wall:.1f}s "
          f"(CPU {cpu:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
