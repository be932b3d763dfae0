r"""Pure maths of the LR range test: the LR sweep, loss smoothing, divergence detection and the max-LR pick.

Nothing here knows about a ``Trainer``; every function works on plain lists of floats so that it can be tested on
synthetic curves whose divergence point is known.

The range test (Smith, arXiv 1506.01186 §3.3) trains for a few steps while the LR rises from tiny to huge and reads the
loss. Smith's reading for one-cycle training (arXiv 1708.07120, 1803.09820 §4.1) is that the cycle's *maximum* LR is
where the loss stops falling and starts to diverge. That is far larger than the steepest-descent point that other
finders suggest, which aims at a good *constant* LR.
"""

from __future__ import annotations

import math
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


def ema(values: Sequence[float], beta: float) -> list[float]:
    r"""Exponential moving average with the start-up bias removed (Adam's correction, divided by ``1 - beta**t``).

    Without the correction the first points are pulled towards zero: a loss of 2.3 would read as 0.05 after one step
    and the curve would seem to *rise* at the start.

    Example::

        >>> ema([2.0, 2.0, 2.0], beta=0.9)
        [2.0, 2.0, 2.0]
    """
    out: list[float] = []
    avg = 0.0
    for t, value in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta**t))
    return out


def zero_lag_smooth(values: Sequence[float], beta: float) -> list[float]:
    r"""Smooth a finished curve without shifting it: the mean of a forward and a backward debiased EMA.

    A forward EMA lags: with ``beta=0.98`` its minimum sits about 50 steps after the raw curve's, several decades of LR
    in a 100-step exponential sweep. Averaging it with the same filter run backwards cancels the lag to first order,
    which matters because the pick is read off the LR axis.

    Example::

        >>> smooth = zero_lag_smooth([3.0, 2.0, 1.0, 2.0, 3.0], beta=0.5)
        >>> min(range(5), key=smooth.__getitem__)
        2
    """
    forward = ema(values, beta)
    backward = ema(values[::-1], beta)[::-1]
    return [(f + b) / 2 for f, b in zip(forward, backward)]


class DivergenceMonitor:
    r"""Online divergence test for the range test, fed one loss per step.

    The loss is smoothed by a debiased EMA (``beta``). The run has clearly diverged when the smoothed loss has risen
    above the best smoothed loss so far by ``threshold - 1`` times the best's magnitude (for a positive loss: it
    exceeds ``threshold`` times its best, the convention of fastai and Lightning), or as soon as a loss is NaN/inf.
    Stopping there saves time: diverging steps are the slow ones on CPU (NaN/inf and denormal arithmetic).

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
        self._avg = 0.0
        self._count = 0
        self.best = math.inf

    def update(self, loss: float) -> str | None:
        """Feed the next step's loss; return why the test should stop (``"non-finite"``, ``"diverged"``) or None."""
        if not math.isfinite(loss):
            return "non-finite"
        self._count += 1
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smoothed = self._avg / (1 - self.beta**self._count)
        self.best = min(self.best, smoothed)
        scale = abs(self.best) if self.best != 0 else 1.0
        if smoothed - self.best > (self.threshold - 1) * scale:
            return "diverged"
        return None


@dataclass(frozen=True)
class Pick:
    """The maximum LR read off a range-test curve, and where and why it was read."""

    lr: float
    index: int
    reason: str


def pick_max_lr(
    lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float] | None = None, beta: float = 0.8
) -> Pick:
    r"""Read the one-cycle maximum LR off a range-test curve: the LR where the loss stops falling.

    The rule, in Smith's terms (arXiv 1803.09820 §4.1, "the maximum LR is where the loss stops decreasing"):

    1. Smooth the loss without lag (:func:`zero_lag_smooth`) and find its minimum ``m``: past it the loss rises, so
       the cycle's peak must lie at or below ``lr[m]``.
    2. The loss *stops falling* before it reaches its minimum: the curve flattens into a floor and then turns up.
       The pick is the largest LR before ``m`` whose smoothed loss is still above the floor by 10 % of the total
       drop (start to minimum). On a sharply diverging curve this is within a few steps of ``m``; on a curve with a
       long flat floor it is where the floor begins, not where noise happens to put the minimum.

    The rule is scale-free in both the loss (it only uses fractions of the observed drop) and the LR (it only uses
    positions on the curve), so neither the loss's units nor the LR the user configured move it.

    Args:
        lrs: the learning rate of each recorded step.
        losses: the raw loss of each recorded step (all finite).
        smoothed: the smoothed curve, if already computed with :func:`zero_lag_smooth`.
        beta: smoothing factor used when ``smoothed`` is not given.

    Raises:
        ValueError: if fewer than 3 points were recorded or the lengths differ.

    Example::

        >>> lrs = [10 ** (-4 + i / 4) for i in range(17)]  # 1e-4 .. 1
        >>> losses = [2.3, 2.3, 2.2, 2.0, 1.6, 1.1, 0.7, 0.5, 0.45, 0.44, 0.45, 0.6, 1.2, 3.0, 9.0, 30.0, 99.0]
        >>> pick = pick_max_lr(lrs, losses, beta=0.0)
        >>> round(pick.lr, 4), pick.index
        (0.0178, 7)
    """
    if len(lrs) != len(losses):
        raise ValueError(f"`lrs` and `losses` must have the same length, got {len(lrs)} and {len(losses)}")
    if len(lrs) < 3:
        raise ValueError(f"the range test must record at least 3 steps to pick an LR, got {len(lrs)}")
    curve = list(smoothed) if smoothed is not None else zero_lag_smooth(losses, beta)
    m = min(range(len(curve)), key=curve.__getitem__)
    drop = curve[0] - curve[m]
    if drop <= 0:
        return Pick(lrs[m], m, "the loss never fell below its start; the pick is the lowest loss")
    floor = curve[m] + FLOOR_FRACTION * drop
    i = m
    while i > 0 and curve[i - 1] <= floor:
        i -= 1
    return Pick(
        lrs[i],
        i,
        f"the smoothed loss reaches its floor at step {i} (within {FLOOR_FRACTION:.0%} of its total drop) and bottoms "
        f"out at step {m} (lr {lrs[m]:.3g})",
    )


#: How close to the minimum (as a fraction of the whole drop) the smoothed loss must be to count as "stopped falling".
FLOOR_FRACTION = 0.1
