r"""Pure maths of choosing the cycle's peak: candidates read off the range-test curve, then the trials' verdict.

No ``Trainer`` here: :mod:`lightning_superconv.range_test` reads the curve and runs the trials
(:mod:`lightning_superconv.branches`), this module says which peaks to try and which one won.

Why trials. Smith reads the cycle's maximum LR where the range test's loss stops falling and starts to rise (arXiv
1708.07120 §2, 1803.09820 §4.1). How far below that point the best peak of a whole run lies depends on the model:
measured on the pick zoo's tuning half (``benchmarks/zoo``), the best peak sat at about the LR where the loss rose back
above its start for a recurrent model with clipped gradients, a half to a quarter of it for a LeNet and a small CNN
(whose runs collapse just above the best peak), and anywhere from a twentieth to a half for a BatchNorm CNN and an
MLP (whose accuracy is flat across that band). No fixed fraction served them all; a short run of the cycle itself at a
few candidate peaks told them apart. One range test of about a hundred noisy steps also moves that point by 2-3x with
the order of the data alone, while trials compare the candidates on the same batches.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from torch.optim import Optimizer

from lightning_superconv.param_groups import detached_copy
from lightning_superconv.schedule import OneCycleConfig, build_one_cycle
from lightning_superconv.weight_decay import GroupTrace, SchedulerSpec, trace_schedule

#: The first candidate peaks, as fractions of the LR where the range test's loss rose back above its start.
LADDER = (0.25, 0.5, 0.125)
#: The most trials a search runs: the ladder, and two more rungs up or down when the best lies at its edge.
MAX_TRIALS = 5
#: How far up the search may climb: this many times the LR where the loss rose back.
HIGHEST = 2.0
#: A trial cycle lasts the run it stands for divided by this (``trial_steps=None``), from :data:`FEWEST_TRIAL_STEPS`
#: to :data:`MOST_TRIAL_STEPS` steps (:func:`trial_length`).
RUN_PER_TRIAL = 3
#: The shortest trial a run is given: a run of up to three times this many steps is searched with trials of it.
FEWEST_TRIAL_STEPS = 100
#: The longest: five trials of it (:data:`MAX_TRIALS`) cost 1,500 steps, a tenth of a 15,000-step run.
MOST_TRIAL_STEPS = 300
#: The most trials from the optimizer's own LR up, once no trial of the search learned (:func:`own_lr_peak`).
OWN_LR_TRIALS = 3
#: A trial learned when its held-out loss ended this fraction (of its magnitude) below where the range test's loss
#: started. One that did not never wins: a network killed by too high a peak predicts chance, a loss (ln 10 for ten
#: classes) that can sit just below a start its first noisy steps raised; dead networks' trials differ by noise alone.
LEARNED = 0.1


def start_level(losses: Sequence[float], half_width: int) -> float:
    """The loss before the LR moved the model: the median of the first tenth of the losses (at least ``2h + 1``)."""
    head = max(2 * half_width + 1, len(losses) // 10)
    return statistics.median(losses[:head])


def rise_index(smoothed: Sequence[float], level: float, lowest: int | None = None) -> int:
    r"""The step where the smoothed loss, after its lowest point, is back above ``level``; else the last step.

    The last step is the LR where the sweep stopped: there the loss had diverged (or the sweep ran out), so the rise
    lies at or above it. ``lowest``: the step of the lowest point, as :func:`~lightning_superconv.curve.descent` reads
    it past the running median's first points (found in a review: a curve low in its first few losses, a bump above its
    start, then a clear dip, had its rise read in the bump, and a peak 30,000x too low picked); by default the lowest
    of all.

    Example::

        >>> rise_index([2.3, 1.5, 0.6, 0.5, 0.9, 2.6, 9.0], level=2.3)
        5
        >>> rise_index([2.3, 1.5, 0.6, 0.5, 0.6], level=2.3)
        4
        >>> rise_index([0.4, 2.9, 2.0, 1.0, 3.0], level=2.3), rise_index([0.4, 2.9, 2.0, 1.0, 3.0], 2.3, lowest=3)
        (1, 4)
    """
    if lowest is None:
        lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    return next((i for i in range(lowest, len(smoothed)) if smoothed[i] > level), len(smoothed) - 1)


def trial_length(run_steps: int | None) -> int:
    r"""Steps of each trial cycle for a run of ``run_steps`` optimizer steps: a third of it, from 100 to 300.

    Why it grows with the run. A trial compresses the run's cycle into its own steps, and how far the best peak of a
    run lies below the range test's rise depends on how long the run anneals from it: on the pick zoo's tuning half
    (``benchmarks/zoo``), trials of 100 steps for a demo LSTM's 855-step run favoured peaks 3-5x below the best (8.31
    points from the oracle); trials of 285 steps closed 5.02 points of that, and the 21 tasks the rule may be tuned on
    gained 0.30 points on average (a demo Transformer +0.79, an MLP on scikit-learn's diabetes -2.60: its 80 held-out
    patients cannot rank peaks, whatever the trials' length). Capped because the trials are paid for before training:
    five trials of 300 steps are a tenth of a 15,000-step run. ``None`` or not positive (the run's length unknown): 100.

    Example::

        >>> trial_length(240), trial_length(855), trial_length(20_000), trial_length(None)
        (100, 285, 300, 100)
    """
    if run_steps is None or run_steps <= 0:
        return FEWEST_TRIAL_STEPS
    return max(FEWEST_TRIAL_STEPS, min(MOST_TRIAL_STEPS, run_steps // RUN_PER_TRIAL))


def candidates(rise_lr: float, ladder: Sequence[float] = LADDER) -> list[float]:
    r"""The first peaks to try: ``rise_lr`` times each fraction of the ladder, in the order they are tried.

    Example::

        >>> candidates(0.8)
        [0.2, 0.4, 0.1]
    """
    return [rise_lr * fraction for fraction in ladder]


def learned(score: float, start: float, lowest: float = math.inf) -> bool:
    r"""Whether a trial's held-out loss ended a tenth (:data:`LEARNED`) below ``start`` and not stuck above ``lowest``.

    ``start``: the range test's start level; ``lowest``: the sweep's lowest smoothed loss, above which a trial that
    kept over half of ``start`` learned nothing either (:func:`stuck_above_sweep`; ``inf``: not compared).

    Example::

        >>> learned(1.2, start=2.3), learned(2.303, start=2.39), learned(math.inf, start=2.3)
        (True, False, False)
        >>> learned(3.24, start=4.7, lowest=3.0), learned(2.8, start=4.7, lowest=3.0)  # stuck above the sweep, below
        (False, True)
    """
    fell = math.isfinite(score) and score < start - LEARNED * abs(start)
    return fell and not stuck_above_sweep(score, lowest, start)


def usable(scores: Sequence[float], start: float, lowest: float = math.inf) -> list[float]:
    """The trials' scores as the search reads them: ``inf`` for one that diverged or did not learn (:func:`learned`)."""
    return [score if learned(score, start, lowest) else math.inf for score in scores]


def stuck_above_sweep(score: float, lowest: float, start: float) -> bool:
    r"""Whether a trial barely learned: over half of ``start`` left, and no lower than the sweep's ``lowest`` loss.

    ``lowest``: the lowest point of the sweep's smoothed curve. A trial trains from the same snapshot for 100-300
    steps, several times the few steps the sweep spent reaching its lowest loss. Ending no lower than that, with more
    than half the untrained loss still there, says its peak was too high for a whole cycle: a network that collapsed
    to one output for every input, whose loss sits still below where it started, where neither the tenth-below-start
    test nor the divergence guard sees it. Measured on the pick zoo's 81 range tests (27 tasks, 3 seeds), the best
    trial was stuck so on exactly three: Lightning's demo Transformer with Adam, whose trials all ended at the loss of
    predicting the characters' frequencies (5-9 % above its sweep's lowest, at two thirds of its start) and whose runs
    at the peak they picked ended at that score. Both conditions are needed: on scikit-learn's breast-cancer MLP the
    best trial's held-out loss (0.035-0.05) lies above a training loss the sweep drove to 0.001-0.009, a
    generalization gap on 300 patients, but at a fourteenth of its start; on every other task the best trial ended
    4-98 % below its sweep's lowest. Its limits: a held-out set much harder than the training data can make every
    trial stuck (the held-out loss is compared with a training loss, whose running median reads low on noisy
    batches); and "over half of ``start`` left" depends on where the loss's zero lies, so a loss with a large constant
    offset, or one that crosses zero (a negative log-likelihood), can read as stuck when it learned (on the zoo,
    diabetes's best trials end only 4-8 % below its sweep's lowest, and one of its lesser trials is stuck). Then the
    search goes lower: a lower peak costs little where a collapse costs the run, and a warning says so.

    Example::

        >>> stuck_above_sweep(3.24, lowest=3.0, start=4.7)  # the demo Transformer's shape
        True
        >>> stuck_above_sweep(0.05, lowest=0.004, start=0.7)  # a generalization gap: the model learned
        False
        >>> stuck_above_sweep(0.41, lowest=0.69, start=2.4)
        False
    """
    return math.isfinite(score) and score >= lowest and start - score < 0.5 * abs(start)


def all_equal(scores: Sequence[float]) -> bool:
    r"""Whether two or more trials left the same finite held-out loss, to one part in a million: they measured nothing.

    Trials that diverged (NaN/inf) are left out: the others' tie still says that what they score does not move as the
    model trains (found in a review: a tie read as "did best" beside one diverged trial, with no warning).

    Example::

        >>> all_equal([2.3131, 2.3131, 2.3131]), all_equal([0.50, 0.45]), all_equal([0.5])
        (True, False, False)
        >>> all_equal([1.0, 1.0, float("inf")]), all_equal([1.0, float("nan")])
        (True, False)
    """
    finite = [s for s in scores if math.isfinite(s)]
    if len(finite) < 2:
        return False
    return max(finite) - min(finite) <= 1e-6 * max(abs(min(finite)), 1e-12)


def next_peak(
    rise_lr: float, tried: Sequence[float], scores: Sequence[float], lowest_lr: float = math.inf
) -> float | None:
    r"""The next peak to try, or None when the search is done.

    ``scores``: the held-out losses of the trials so far, ``inf`` for one that diverged or did not learn
    (:func:`usable`). First the ladder (a quarter, a half and an eighth of ``rise_lr``). Then, while the best trial is
    the highest peak tried, one rung (x2) higher, up to ``HIGHEST`` times ``rise_lr``; while it is the lowest, or no
    trial has learned yet, one rung below the lowest tried, or below ``lowest_lr`` (the LR of the sweep's lowest loss)
    if that is lower: a model whose every trial got stuck above that loss (:func:`stuck_above_sweep`) needs a peak
    below where the sweep did best (the demo Transformer with Adam: its best peaks lie at a half to a quarter of that
    LR, where the ladder had tried 2-12 times above it); at most ``MAX_TRIALS`` in all. A range test's rise can come
    early (RMSprop's first steps are large, before its averages of squared gradients fill up: measured, a ShuffleNet's
    rose at a third of its best peak), so the search may climb above it; a higher peak is kept only if its trial did
    better.

    Example::

        >>> next_peak(0.8, [0.2, 0.4, 0.1], [0.50, 0.45, 0.60])  # the top rung was best: one higher
        0.8
        >>> next_peak(0.8, [0.2, 0.4, 0.1, 0.8], [0.50, 0.45, 0.60, math.inf]) is None  # then no better: done
        True
    """
    ladder = candidates(rise_lr)
    if len(tried) < len(ladder):
        return ladder[len(tried)]
    if len(tried) >= MAX_TRIALS:
        return None
    best = min(range(len(scores)), key=lambda i: scores[i])
    if not math.isfinite(scores[best]):  # every peak tried so far was too high: lower still
        return min(min(tried), lowest_lr) / 2
    if tried[best] == max(tried) and tried[best] * 2 <= HIGHEST * rise_lr * (1 + 1e-9):
        return tried[best] * 2
    if tried[best] == min(tried):
        return tried[best] / 2
    return None


def own_lr_peak(
    own_lr: float, tried: Sequence[float], scores: Sequence[float], start: float, lowest: float, own_from: int | None
) -> float | None:
    r"""With no trial of the search learned: the optimizer's own LR, then one rung up while the highest does best.

    ``tried``, ``scores``: every trial so far and its held-out loss (``inf``: diverged); ``start``, ``lowest``: as for
    :func:`learned`; ``own_from``: the index in ``tried`` of the trial at ``own_lr``, None before it. None when there
    is nothing more to try.

    Why. The search reads "no trial learned" as "every peak too high" and goes lower, which serves a network that too
    high an LR killed. A sweep misread by noise sends it the wrong way: found trying the package as a new user, an MLP
    regressing a skewed target with SGD (batch losses from 0.1 to 5) had its sweep's lowest point and rise read from
    noise at LRs 100-1000x below those that train it; all five trials, from 2.9e-6 to 2.1e-4, ended at the held-out
    loss of predicting the mean, and the run at the least bad of them learned nothing, where the user's own constant
    0.01 ended at a twelfth of that loss. The LR the user trains with is the one candidate known to be sensible, and
    after it the search climbs as the ladder's does (:func:`next_peak`): one rung (x2) above the highest peak tried
    while that did best, learned or not (that regression's trial at its own LR did: 0.98 against 1.05), at most
    :data:`OWN_LR_TRIALS` trials from the own LR on. A peak wins only by the trials' verdict
    (:func:`choose`). Of the pick zoo's 222 cached range tests with trials (``benchmarks/zoo``), one (a rule not
    adopted) had no trial learn; none of the rule's own did, so this changes none of their picks.

    Example::

        >>> own_lr_peak(0.01, [2e-4, 4e-4, 1e-4], [1.05, 1.05, 1.05], start=1.06, lowest=0.45, own_from=None)
        0.01
        >>> own_lr_peak(0.01, [2e-4, 4e-4, 1e-4], [0.4, 1.05, 1.05], start=1.06, lowest=0.45, own_from=None) is None
        True
        >>> own_lr_peak(0.01, [2e-4, 0.01], [1.05, 0.98], start=1.06, lowest=0.45, own_from=1)  # better: one rung up
        0.02
        >>> own_lr_peak(0.01, [2e-4, 0.01, 0.02], [1.05, 0.98, 1.0], start=1.06, lowest=0.45, own_from=1) is None
        True
        >>> own_lr_peak(1e-3, [7e-4, 1.5e-3, 1e-3], [1.04, 0.99, 1.03], start=1.06, lowest=0.45, own_from=2)  # above it
        0.003
    """
    if own_from is None:
        if any(learned(score, start, lowest) for score in scores) or not (math.isfinite(own_lr) and own_lr > 0):
            return None
        return None if any(math.isclose(own_lr, peak, rel_tol=1e-6) for peak in tried) else own_lr
    if len(tried) - own_from >= OWN_LR_TRIALS:
        return None
    read = usable(scores, start, lowest)
    ranked = read if any(math.isfinite(score) for score in read) else scores
    best = min(range(len(ranked)), key=ranked.__getitem__)
    return tried[best] * 2 if tried[best] == max(tried) and math.isfinite(ranked[best]) else None


@dataclass(frozen=True)
class Verdict:
    """Which candidate peak the trials chose, and why in words; ``learned``: whether its trial learned.

    A verdict that did not learn is the least bad of trials none of which learned: a warning's matter, not a pick to
    trust (every peak tried may have killed the network, or the held-out loss barely moves in a trial's few steps).
    """

    index: int
    reason: str
    learned: bool = True


def choose(
    peaks: Sequence[float], scores: Sequence[float], steps: int, start: float = math.inf, lowest: float = math.inf
) -> Verdict:
    r"""The candidate whose trial left the lowest held-out loss, among those that learned if any did.

    A trial that diverged (``inf``) never wins. ``start``: the range test's start level, which a trial's held-out loss
    must end a tenth below to have learned (:func:`learned`); while any did, one that did not never wins (a network
    killed by too high a peak predicts chance, just below a noisy start), nor does one stuck above the sweep's
    ``lowest`` loss (:func:`stuck_above_sweep`). If none learned, the lowest loss wins, with ``learned=False``.
    ``start=inf``: any finite loss counts as learned.

    Raises:
        ValueError: if every trial diverged.

    Example::

        >>> choose([0.1, 0.2, 0.4], [0.50, 0.45, math.inf], steps=100).index
        1
        >>> verdict = choose([0.25, 0.5, 1.0, 2.0], [1.4, 2.31, 2.309, 2.334], steps=100, start=2.39)
        >>> verdict.index, verdict.learned
        (0, True)
    """
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        raise ValueError(f"every trial cycle diverged, even the lowest peak, {min(peaks):.3g}")
    kept = [i for i in finite if not math.isfinite(start) or learned(scores[i], start, lowest)]
    best = min(kept or finite, key=lambda i: scores[i])
    order = sorted(range(len(peaks)), key=lambda i: peaks[i])

    def said(i: int) -> str:
        if not math.isfinite(scores[i]):
            return f"{peaks[i]:.3g}: diverged"
        if i in kept:
            return f"{peaks[i]:.3g}: {scores[i]:.4g}"
        stuck = learned(scores[i], start) and stuck_above_sweep(scores[i], lowest, start)
        why = "stuck above the sweep's lowest" if stuck else "learned nothing"
        return f"{peaks[i]:.3g}: {scores[i]:.4g} ({why})"

    shown = ", ".join(said(i) for i in order)
    reason = f"of one-cycles of {steps} steps peaking at {shown} (held-out loss), {peaks[best]:.3g} did best"
    return Verdict(best, reason, learned=bool(kept))


def trial_traces(optimizer: Optimizer, peak: float, steps: int, config: OneCycleConfig) -> list[GroupTrace]:
    r"""The LR and momentum of every param group at each step of a ``steps``-long one-cycle peaking at ``peak``.

    The cycle is built on a detached copy of the optimizer (its param groups without parameters or state), exactly as
    :func:`~lightning_superconv.schedule.build_one_cycle` builds the real one, and replayed step by step.
    """
    twin, _ = detached_copy(optimizer)
    scheduler = build_one_cycle(twin, peak, steps, config)
    traces, _ = trace_schedule(twin, [SchedulerSpec(scheduler)], steps)
    return traces
