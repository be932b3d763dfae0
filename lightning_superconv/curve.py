r"""Pure maths of the LR range test: the LR sweep, loss smoothing, divergence detection and the max-LR pick.

Nothing here knows about a ``Trainer``; every function works on plain lists of floats so that it can be tested on
synthetic curves whose divergence point is known.

The range test (Smith, arXiv 1506.01186 §3.3) trains for a few steps while the LR rises from tiny to huge and reads the
loss. Smith's reading for one-cycle training (arXiv 1708.07120, 1803.09820 §4.1) is that the cycle's *maximum* LR is
where the loss stops falling and starts to diverge. That is far larger than the steepest-descent point that other
finders suggest, which aims at a good *constant* LR.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SweepMode = Literal["exponential", "linear"]


def lr_sweep(start: float, end: float, num_steps: int, mode: SweepMode = "exponential") -> list[float]:
    r"""Return the learning rates of a range test, one per optimizer step, from ``start`` to ``end`` inclusive.

    Args:
        start: the first learning rate (> 0).
        end: the last learning rate (> ``start``).
        num_steps: how many steps the sweep has (>= 2).
        mode: ``"exponential"`` spaces the LRs evenly in log space (each step multiplies the LR by the same factor),
            ``"linear"`` evenly in LR.

    Example::

        >>> [round(lr, 6) for lr in lr_sweep(1e-3, 1e-1, 3)]
        [0.001, 0.01, 0.1]
        >>> lr_sweep(0.1, 0.3, 3, mode="linear")
        [0.1, 0.2, 0.3]
    """
    if num_steps < 2:
        raise ValueError(f"`num_steps` must be an integer >= 2, got {num_steps}")
    if mode == "exponential":
        ratio = math.log(end / start)
        return [start * math.exp(ratio * i / (num_steps - 1)) for i in range(num_steps)]
    if mode == "linear":
        return [start + (end - start) * i / (num_steps - 1) for i in range(num_steps)]
    raise ValueError(f"`mode` must be 'exponential' or 'linear', got {mode!r}")


class StreamingEMA:
    r"""An exponential moving average fed one value at a time, with the start-up bias removed.

    Adam's correction (divide by ``1 - beta**t``): without it the first points are pulled towards zero, a loss of 2.3
    would read as 0.05 after one step and the curve would seem to *rise* at the start.

    Example::

        >>> average = StreamingEMA(beta=0.5)
        >>> [average.update(x) for x in (4.0, 2.0)]
        [4.0, 2.6666666666666665]
    """

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.count = 0
        self._avg = 0.0

    def update(self, value: float) -> float:
        """Add ``value``; return the debiased average of everything seen so far."""
        self.count += 1
        self._avg = self.beta * self._avg + (1 - self.beta) * value
        return self._avg / (1 - self.beta**self.count)


def ema(values: Sequence[float], beta: float) -> list[float]:
    r"""The debiased exponential moving average of ``values`` (see :class:`StreamingEMA`).

    Example::

        >>> ema([2.0, 2.0, 2.0], beta=0.9)
        [2.0, 2.0, 2.0]
    """
    average = StreamingEMA(beta)
    return [average.update(value) for value in values]


def running_median(values: Sequence[float], half_width: int) -> list[float]:
    r"""Smooth a finished curve without lag and without letting spikes leak: a centered running median.

    Two things rule out the usual EMA for reading the pick. A forward EMA lags: with ``beta=0.98`` its minimum sits
    about 50 steps after the raw curve's, several decades of LR in a 100-step exponential sweep. And any linear filter
    run backwards (to cancel that lag) drags the exponential blow-up at the end of the sweep over dozens of earlier
    steps. A median over ``2 * half_width + 1`` neighbours has neither problem: a single spike (a hard batch) cannot
    move it, and values far away do not reach it.

    Example::

        >>> running_median([3.0, 2.0, 9.0, 1.0, 2.0, 3.0], half_width=1)
        [2.5, 3.0, 2.0, 2.0, 2.0, 2.5]
    """
    if half_width < 0:
        raise ValueError(f"`half_width` must be >= 0, got {half_width}")
    return [statistics.median(values[max(0, i - half_width) : i + half_width + 1]) for i in range(len(values))]


def median_half_width(num_steps: int) -> int:
    """The running median's half width for a sweep of ``num_steps``: 3 % of the sweep (3 steps of 100), at least 1."""
    return max(1, round(0.03 * num_steps))


class DivergenceMonitor:
    r"""Online divergence test for the range test, fed one loss per step.

    The loss is smoothed by a debiased EMA (``beta``). The run has clearly diverged when the smoothed loss has risen
    above the best smoothed loss so far by ``threshold - 1`` times the best's magnitude (for a positive loss: it
    exceeds ``threshold`` times its best, the convention of fastai and Lightning), or as soon as a loss is NaN/inf.
    Stopping there saves time: diverging steps are the slow ones on CPU (NaN/inf and denormal arithmetic).

    The best is counted only once the average spans about ``1 / (1 - beta)`` losses (10 at ``beta=0.9``): before
    that the debiased EMA is little more than the last few batches' losses, and with small batches one lucky batch
    would set a "best" that ordinary batches exceed four times over (measured: Lightning's ``BoringModel``, one
    sample per batch, stopped as "diverged" after 10 steps at LRs that had not moved the model).

    Args:
        threshold: how many times the best loss counts as diverged (> 1).
        beta: EMA factor of the online smoothing, in [0, 1).

    Example::

        >>> monitor = DivergenceMonitor(threshold=4.0, beta=0.0)
        >>> [monitor.update(x) for x in [2.0, 1.0, 3.0, 5.0]]
        [None, None, None, 'diverged']
        >>> DivergenceMonitor().update(float("nan"))
        'non-finite'
    """

    def __init__(self, threshold: float = 4.0, beta: float = 0.9) -> None:
        self.threshold = threshold
        self.beta = beta
        self.warmup = warmup_steps(beta)
        self._average = StreamingEMA(beta)
        self.best = math.inf
        self.last = math.nan

    def update(self, loss: float) -> str | None:
        """Feed the next step's loss; return why the test should stop (``"non-finite"``, ``"diverged"``) or None."""
        if not math.isfinite(loss):
            return "non-finite"
        smoothed = self.last = self._average.update(loss)
        if self._average.count < self.warmup:
            return None
        self.best = min(self.best, smoothed)
        scale = abs(self.best) if self.best != 0 else 1.0
        if smoothed - self.best > (self.threshold - 1) * scale:
            return "diverged"
        return None


def warmup_steps(beta: float) -> int:
    """How many losses a debiased EMA with factor ``beta`` must have seen to average over its span, ``1/(1-beta)``."""
    return max(1, math.ceil(1.0 / (1.0 - beta) - 1e-9))


@dataclass(frozen=True)
class Pick:
    """The maximum LR read off a range-test curve, and where and why it was read."""

    lr: float
    index: int
    reason: str


def pick_max_lr(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float] | None = None) -> Pick:
    r"""Read the one-cycle maximum LR off a range-test curve: the last LR before the loss rises out of its floor.

    Smith reads the cycle's maximum LR where the loss "stops decreasing and becomes ragged or starts to rise"
    (arXiv 1708.07120 §2, 1803.09820 §4.1). On the smoothed curve (:func:`running_median`) that reads as:

    1. The *floor* is the band within ``FLOOR_FRACTION`` (10 %) of the whole drop above the lowest smoothed loss:
       ``floor = min + 0.1 * (start - min)``.
    2. The loss first reaches the floor, stays in it while the LR keeps rising, and then leaves it: it has stopped
       decreasing and starts to rise. The pick is the largest LR of that first stay in the floor.
    3. A stay shorter than the running median's half width plus one (4 steps of 100) is a blip the smoother could
       not remove, not a floor, and is passed over; if every stay is that short (a sharp V), the longest one counts.
       Measured: one of 12 range tests of the Fashion-MNIST example's network in ``benchmarks/speedup_benchmark.py``
       (and none of 16 more) touched the floor for a single step at lr 0.0034, a tenth of where the others' floors
       ended; its 8-epoch cycle ended at 89.7 % validation accuracy, against 91.6 % for the other seed's, picked at
       0.034.

    Why not the minimum itself: on a long, noisy floor the lowest point is wherever the noise put it, easily a decade
    beyond the first rise (measured: an MLP with AdamW whose floor spans 1.5e-3 to 3e-2; the best one-cycle peak is
    4e-3, where the loss first turns ragged). Why not the steepest descent: that point suits a constant LR and lies
    orders of magnitude below a usable peak. The rule is scale-free in the loss (it uses fractions of the observed
    drop) and in the LR (it uses positions on the curve), so neither the loss's units nor the LR the user configured
    move it. Its constants were set on two of the three pairs of ``benchmarks/pick_benchmark.py``; the third is held
    out.

    Args:
        lrs: the learning rate of each recorded step.
        losses: the raw loss of each recorded step (all finite).
        smoothed: the smoothed curve, if already computed with :func:`running_median`.

    Raises:
        ValueError: if fewer than 3 points were recorded, the lengths differ, or the loss never fell.

    Example::

        >>> lrs = [10 ** (-4 + i / 4) for i in range(17)]  # 1e-4 .. 1
        >>> losses = [2.3, 2.3, 2.2, 2.0, 1.6, 1.1, 0.7, 0.5, 0.45, 0.44, 0.45, 0.6, 1.2, 3.0, 9.0, 30.0, 99.0]
        >>> pick = pick_max_lr(lrs, losses, smoothed=losses)
        >>> round(pick.lr, 4), pick.index
        (0.0562, 11)
    """
    if len(lrs) != len(losses):
        raise ValueError(f"`lrs` and `losses` must have the same length, got {len(lrs)} and {len(losses)}")
    if len(lrs) < 3:
        raise ValueError(f"the range test must record at least 3 steps to pick an LR, got {len(lrs)}")
    curve = list(smoothed) if smoothed is not None else running_median(losses, median_half_width(len(losses)))
    lowest = min(range(len(curve)), key=curve.__getitem__)
    drop = curve[0] - curve[lowest]
    if drop <= 0:
        raise ValueError(
            f"the loss never fell below its start ({curve[0]:.4g}) anywhere in the sweep from lr {lrs[0]:.3g} to "
            f"{lrs[-1]:.3g}, so there is no floor to read a maximum LR from"
        )
    floor = curve[lowest] + FLOOR_FRACTION * drop
    first, last = _first_real_stay(curve, floor, min_length=median_half_width(len(curve)) + 1)
    rose = "rises out of it" if last + 1 < len(curve) else "stays in it to the end of the sweep"
    return Pick(
        lrs[last],
        last,
        f"the smoothed loss reaches its floor (within {FLOOR_FRACTION:.0%} of its drop above the minimum) at lr "
        f"{lrs[first]:.3g} and {rose} after lr {lrs[last]:.3g}",
    )


def _first_real_stay(curve: Sequence[float], floor: float, min_length: int) -> tuple[int, int]:
    """First and last index of the first run of ``curve <= floor`` at least ``min_length`` long, else the longest."""
    stays: list[tuple[int, int]] = []
    start = 0
    for inside, run in itertools.groupby(curve, key=lambda value: value <= floor):
        length = len(list(run))
        if inside:
            stays.append((start, start + length - 1))
        start += length
    for first, last in stays:
        if last - first + 1 >= min_length:
            return first, last
    return max(stays, key=lambda stay: stay[1] - stay[0])  # max() keeps the first of equally long stays


def smoothed_noise(losses: Sequence[float], smoothed: Sequence[float], half_width: int) -> float:
    r"""The standard error of the smoothed curve: how far it moves on batch-to-batch noise alone.

    The raw losses' spread around the smoothed curve is measured robustly (1.4826 times the median absolute residual,
    the standard deviation for Gaussian noise): the median ignores the large residuals of a diverging tail, which
    says nothing about noise, as long as it is less than half the curve. A running median over ``2 * half_width + 1``
    losses has about 1.25 times the standard error of their mean.

    Example::

        >>> losses = [2.0, 2.2, 1.8, 2.0, 2.2, 1.8, 2.0]
        >>> round(smoothed_noise(losses, [2.0] * 7, half_width=1), 2)
        0.21
    """
    residuals = [abs(raw - smooth) for raw, smooth in zip(losses, smoothed, strict=True)]
    spread = 1.4826 * statistics.median(residuals) if residuals else 0.0
    return 1.2533 * spread / math.sqrt(2 * half_width + 1)


@dataclass(frozen=True)
class Descent:
    r"""Where and how clearly the loss fell in a range test (:func:`descent`).

    Attributes:
        start_level: the loss before the LR moved the model: the median of the first tenth of the raw losses (at
            least ``2 * half_width + 1`` of them), steadier than the smoothed curve's first point.
        fall: ``start_level`` minus the lowest smoothed loss.
        noise: the standard error of the smoothed curve (:func:`smoothed_noise`).
        begins: the last step before the lowest point at which the smoothed loss still stood at its start level:
            where the descent into the minimum begins. A pick below it cannot be right (the loss rose back to where
            it started after it, so whatever dip came before was noise).
    """

    start_level: float
    fall: float
    noise: float
    begins: int

    @property
    def clear(self) -> bool:
        r"""Whether the fall exceeds ``CLEAR_FALL`` (6) standard errors of the smoothed curve.

        Measured on pure noise (Gaussian, chi-square and log-normal losses, 30-100 steps, 2,000 curves each): the
        lowest smoothed point lies a median 2 and at the 99th percentile 6-9 standard errors below the start level.
        Every range test of the pick zoo's tuning half and of the pick benchmark fell by 10 to thousands.
        """
        return self.fall > CLEAR_FALL * self.noise


def descent(losses: Sequence[float], smoothed: Sequence[float], half_width: int) -> Descent:
    r"""How the loss fell in a range test: from what level, how far against its noise, and from which step on.

    Example::

        >>> noisy_start = [2.0, 2.2, 1.8, 2.1, 1.7, 2.2, 1.9, 2.0, 1.4, 1.0, 0.5, 0.4, 0.5, 3.0]
        >>> fell = descent(noisy_start, running_median(noisy_start, 1), half_width=1)
        >>> fell.begins, fell.clear
        (6, True)
        >>> flat = [2.0, 2.2, 1.8] * 10
        >>> descent(flat, running_median(flat, 1), half_width=1).clear
        False
    """
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    head = max(2 * half_width + 1, len(losses) // 10)
    level = statistics.median(losses[:head])
    begins = max((i for i in range(lowest + 1) if smoothed[i] >= level), default=0)
    return Descent(level, level - smoothed[lowest], smoothed_noise(losses, smoothed, half_width), begins)


#: How many standard errors of the smoothed curve a fall of the loss must exceed to count (:class:`Descent`).
CLEAR_FALL = 6.0

#: The floor of the loss curve: within this fraction of the whole drop (start to minimum) above the minimum.
FLOOR_FRACTION = 0.1
