r"""Pure planning of the weight-decay grid.

Which ``λ`` to try, how long each branch runs, when not to run at all, and which result to adopt.

No ``Trainer`` here: :mod:`lightning_superconv.branches` runs the branches this module plans, and the
``WeightDecayBalancer`` callback adopts what :func:`guarded_pick` decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_superconv.weight_decay import GroupTrace, clamp

# Below this many steps a branch has not yet seen the schedule's peak and annealing in any useful detail.
MIN_BRANCH_STEPS = 4
# A grid branch whose largest λ spends less decay budget than this (decay alone shrinks the weights by under 5 %)
# cannot tell weight decays apart: measured on Fashion-MNIST, such branches differed by 0.03 % in validation loss
# across a 100x range of λ, while two orders of the same batches differed by 2-30 %. The search is skipped.
MIN_BRANCH_BUDGET = 0.05


@dataclass(frozen=True)
class GridPlan:
    r"""The branches of a grid: one per candidate ``λ``, and the user's ``λ`` once more with another data order.

    Attributes:
        factors: the candidates as multiples of the user's ``λ`` (clamped into the bounds), rising; 1 among them.
        runs: ``(factor, data order)`` per branch; the last one repeats factor 1 with order 1 to measure the noise.
        steps: training steps per branch.
        indices: the run's step each branch step follows (the whole schedule, compressed: :func:`compressed_indices`).
    """

    factors: list[float]
    runs: list[tuple[float, int]]
    steps: int
    indices: list[int]

    def budget(self, trace: GroupTrace, weight_decay: float) -> float:
        """The decay budget ``K`` the largest candidate spends in one branch."""
        return max(self.factors) * weight_decay * math.fsum(trace.gains[t] * trace.lrs[t] for t in self.indices)


def plan_grid(
    reference: float, factors: Sequence[float], bounds: tuple[float, float], total_steps: int, cost: float
) -> GridPlan | str:
    r"""Plan the branches for a run of ``total_steps`` within ``cost`` of its training time, or say why there are none.

    Two thirds of the budget go to training steps; scoring a branch reads at most as many validation batches as it
    trains on, forward passes without gradients that take about a third as long at the training batch size (longer
    with larger validation batches: the count, not the time, is capped, so that a seeded run scores alike anywhere).

    Example::

        >>> plan = plan_grid(1e-3, [0.1, 1.0, 10.0], (1e-5, 1e-2), total_steps=1000, cost=0.25)
        >>> plan.factors, plan.steps, plan.runs[-1]
        ([0.1, 1.0, 10.0], 41, (1.0, 1))
        >>> plan_grid(1e-3, [0.1, 1.0, 10.0], (1e-5, 1e-2), total_steps=40, cost=0.25)
        'a 40-step run leaves 1 step(s) for each of 4 branches'
    """
    candidates = grid_candidates(reference, [*factors, 1.0], bounds)
    scaled = [c / reference for c in candidates]
    runs = [(f, 0) for f in scaled] + [(1.0, 1)]
    steps = int(cost * total_steps / len(runs) * (2.0 / 3.0))
    if steps < MIN_BRANCH_STEPS:
        return f"a {total_steps}-step run leaves {steps} step(s) for each of {len(runs)} branches"
    return GridPlan(scaled, runs, steps, compressed_indices(total_steps, steps))


def grid_candidates(reference: float, factors: Sequence[float], bounds: tuple[float, float]) -> list[float]:
    r"""The distinct ``λ`` values a grid tries: ``λ_ref·f`` for each factor, clamped, in rising order.

    Example::

        >>> grid_candidates(1e-3, [0.1, 1.0, 10.0, 30.0], (1e-5, 1e-2))
        [0.0001, 0.001, 0.01]
    """
    values = sorted({clamp(reference * f, bounds) for f in factors})
    out: list[float] = []
    for v in values:
        if not out or not math.isclose(v, out[-1], rel_tol=1e-9):
            out.append(v)
    return out


def pick_lowest(values: Sequence[float], scores: Sequence[float]) -> int:
    r"""Index of the lowest finite score; ties go to the value nearest the middle of the list (the least extreme).

    Raises:
        ValueError: if no score is finite.

    Example::

        >>> pick_lowest([0.1, 1.0, 10.0], [0.5, float("nan"), 0.4])
        2
    """
    finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
    if not finite:
        raise ValueError("no candidate produced a finite validation loss")
    middle = (len(values) - 1) / 2
    return min(finite, key=lambda i: (scores[i], abs(i - middle)))


@dataclass(frozen=True)
class GridDecision:
    """Which grid candidate to adopt, and why in words."""

    index: int
    reason: str


def guarded_pick(
    factors: Sequence[float],
    losses: Sequence[float],
    replicate: float,
    min_gain: float = 0.01,
    start: str = "the user's λ",
) -> GridDecision:
    r"""Adopt the grid's best ``λ`` only on clear evidence; otherwise keep the user's (factor 1).

    Short branches measure ``λ`` through a lot of noise: at a large LR, two branches that differ in the order of the
    batches alone end apart by as much as two weight decays ten times apart. So the user's branch is run twice (the
    ``replicate``, with another data order), and another ``λ`` must beat the user's validation loss by more than twice
    that difference, and by at least ``min_gain`` of it. A branch that diverged says the schedule is at the edge of
    stability, where a different ``λ`` is a gamble with the whole run: the user's value is kept.

    Args:
        factors: the candidates as multiples of the user's ``λ``; one of them must be 1.
        losses: each candidate's validation loss (NaN/inf: the branch diverged).
        replicate: the user's branch's validation loss with another data order.
        min_gain: the smallest relative improvement that counts.
        start: what factor 1 is, in the reason: the user's ``λ``, or a reference value given instead.

    Where the replicate ends bit-identical to the user's branch (a train loader without shuffling: reseeding changes
    no order, and without dropout nothing else differs), no noise was measured and the reason says so: ``min_gain``
    alone guards the pick then.

    Example::

        >>> guarded_pick([0.1, 1.0, 10.0], [0.52, 0.50, 0.40], replicate=0.51).index
        2
        >>> guarded_pick([0.1, 1.0, 10.0], [0.52, 0.50, 0.47], replicate=0.48).index
        1
    """
    user = min(range(len(factors)), key=lambda i: abs(math.log(factors[i]) if factors[i] > 0 else math.inf))
    if not math.isclose(factors[user], 1.0):
        raise ValueError(f"the grid must contain the user's λ (factor 1), got factors {list(factors)}")
    diverged = [factors[i] for i, loss in enumerate(losses) if not math.isfinite(loss)]
    if diverged or not math.isfinite(replicate):
        which = ", ".join(f"{f:.3g}x" for f in diverged) or f"the replicate of {start}"
        return GridDecision(user, f"kept: branch(es) at {which} diverged, so the schedule is at the edge of stability")
    best = pick_lowest(factors, losses)
    noise = abs(losses[user] - replicate)
    threshold = max(2.0 * noise, min_gain * abs(losses[user]))
    gain = losses[user] - losses[best]
    # found in a review: an unshuffled loader's replicate repeats the same batches, and "0 between two data orders"
    # read as a measured noise of 0
    measured = (
        f"{noise:.3g} between two data orders"
        if noise > 0
        else "no noise measured: the run again with reseeded data ended identical, as where the train loader does "
        "not shuffle, so `min_gain` alone guards"
    )
    if best != user and gain > threshold:
        return GridDecision(
            best,
            f"{factors[best]:.3g}x had the lowest validation loss, {gain:.3g} below {start}, beyond the noise "
            f"({measured})",
        )
    if best == user:
        # the reason names the user's λ as what did best (found in a review: it read "the best other λ (1x)")
        others = [i for i in range(len(factors)) if i != user]
        runner = min(others, key=lambda i: losses[i]) if others else user
        return GridDecision(
            user,
            f"kept: {start} had the lowest validation loss (the next, {factors[runner]:.3g}x, "
            f"{losses[runner] - losses[user]:.3g} higher; {measured})",
        )
    return GridDecision(
        user,
        f"kept: the best other λ ({factors[best]:.3g}x) was not ahead of {start} by more than the noise "
        f"(gain {gain:.3g}, needed {threshold:.3g}; {measured})",
    )


def compressed_indices(total_steps: int, steps: int) -> list[int]:
    r"""``steps`` step indices spread evenly over a run of ``total_steps``, first and last included.

    A branch that follows these indices sees the whole schedule (warm-up, peak, annealing) in ``steps`` steps and ends
    where the real run ends, at the lowest LR, so its validation loss is read from an annealed model.

    Example::

        >>> compressed_indices(100, 5)
        [0, 25, 50, 74, 99]
    """
    if steps >= total_steps:
        return list(range(total_steps))
    if steps == 1:
        return [total_steps - 1]
    return [round(k * (total_steps - 1) / (steps - 1)) for k in range(steps)]
