r"""Pure maths of the LR range test's curve: the LR sweep, loss smoothing, divergence detection, the loss's descent.

Nothing here knows about a ``Trainer``; every function works on plain lists of floats so that it can be tested on
synthetic curves whose divergence point is known. :mod:`lightning_superconv.peak` reads the cycle's peak off it.

The range test (Smith, arXiv 1506.01186 §3.3) trains for a few steps while the LR rises from tiny to huge and reads the
loss. Smith's reading for one-cycle training (arXiv 1708.07120, 1803.09820 §4.1) is that the cycle's *maximum* LR lies
where the loss stops falling and starts to rise. That is far larger than the steepest-descent point that other
finders suggest, which aims at a good *constant* LR.
"""

from __future__ import annotations

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


def rise_over_best(best: float, threshold: float) -> str:
    r"""How far above its best a loss must rise to count as diverged, in words, as :class:`DivergenceMonitor` measures.

    Above zero ``threshold`` times the best; below zero (a log-likelihood) the rise is measured in the best's size,
    where "times its best" would read as a fall; at zero in the loss's own units.

    Example::

        >>> rise_over_best(0.5, 4.0), rise_over_best(-2.0, 4.0), rise_over_best(0.0, 4.0)
        ('4 times its best', "3 times its best's size above its best", '3 above its best')
    """
    if best > 0:
        return f"{threshold:g} times its best"
    above = "times its best's size above its best" if best < 0 else "above its best"
    return f"{threshold - 1:g} {above}"


def warmup_steps(beta: float) -> int:
    """How many losses a debiased EMA with factor ``beta`` must have seen to average over its span, ``1/(1-beta)``."""
    return max(1, math.ceil(1.0 / (1.0 - beta) - 1e-9))


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
        lowest: the step of the lowest smoothed loss, looked for past the running median's first ``half_width``
            points (read from shortened windows) and the middle of the losses ``start_level`` is read from: where
            the rise is looked for after.
    """

    start_level: float
    fall: float
    noise: float
    begins: int
    lowest: int

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
        >>> fell.begins, fell.lowest, fell.clear
        (6, 10, True)
        >>> flat = [2.0, 2.2, 1.8] * 10
        >>> descent(flat, running_median(flat, 1), half_width=1).clear
        False
    """
    # the first `half_width` points of a running median are read from shortened windows: on a loss that rose from its
    # first step the very first lay below the median of the start, and a loss that never fell read as one that had,
    # a little (found checking the README's claims as a new user)
    # and a loss that rose from its first step had its start level read from a tenth of the sweep, whose median lies
    # at its middle, above the running median's first points: from 80 steps, such a loss read as one that had fallen,
    # clearly where it rose smoothly (found in a review): the lowest point is looked for from that middle on
    head = max(2 * half_width + 1, len(losses) // 10)
    edge = min(max(half_width, head // 2), len(smoothed) - 1)
    lowest = min(range(edge, len(smoothed)), key=smoothed.__getitem__)
    level = statistics.median(losses[:head])
    begins = max((i for i in range(lowest + 1) if smoothed[i] >= level), default=0)
    return Descent(level, level - smoothed[lowest], smoothed_noise(losses, smoothed, half_width), begins, lowest)


#: How many standard errors of the smoothed curve a fall of the loss must exceed to count (:class:`Descent`).
CLEAR_FALL = 6.0
