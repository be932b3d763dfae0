r"""Pure maths of weight-decay balancing: how each optimizer applies decay, the decay budget, the rules, the bounds.

Nothing here knows about a ``Trainer``: the functions take param-group dicts, torch schedulers and lists of floats, so
they can be tested on bare optimizers and known schedules.

How torch applies ``weight_decay=λ`` (SCIENCE.md §4):

- ``SGD``: coupled L2. ``λθ`` is added to the gradient *before* momentum, so in steady state a step shrinks the
  weights by ``η·λ·(1-d)/(1-μ)`` (momentum ``μ``, dampening ``d``): momentum multiplies the decay too.
- ``AdamW`` and every optimizer built with ``decoupled_weight_decay=True``: decoupled, ``θ ← θ(1 - η·λ)``.
- ``Adam(weight_decay=λ)`` and other adaptive optimizers: coupled L2 passed through the adaptive normalization, so
  the shrink of a weight depends on its gradient history (``λθ / sqrt(v)``); no closed form holds.

The quantity that behaves consistently across schedules is the integrated decay budget
``K = Σ_t c_t·η_t·λ`` with ``c_t = (1-d)/(1-μ_t)`` for SGD and ``c_t = 1`` for decoupled decay (Smith & Topin,
arXiv 1708.07120, reduce weight decay when the LR is large; the budget reading of their runs is in SCIENCE.md §4).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.optim import Optimizer

DecayForm = Literal["coupled", "decoupled", "adaptive"]

# The strongest decay one step may apply, as a fraction of the weights (``c·η·λ`` at the schedule's peak). Beyond it a
# weight loses a tenth of its norm per step from decay alone, and the L2 term no longer acts as a gentle pull: coupled
# L2 through momentum starts to oscillate (stability needs ``η·λ < 2(1+μ)`` on the penalty alone), and decoupled decay
# erases what the gradient wrote within a few steps.
MAX_STEP_DECAY = 0.1


def decay_form(group: Mapping[str, Any]) -> DecayForm:
    r"""How a param group applies its ``weight_decay``, read from the group itself.

    Decided from the group's keys, not from ``isinstance``: torch's ``AdamW`` subclasses ``Adam``, and ``Adam``,
    ``RAdam`` and ``NAdam`` switch to decoupled decay with their ``decoupled_weight_decay`` flag.

    - ``"decoupled"``: the group has ``decoupled_weight_decay=True`` (``AdamW``, ``Adam(decoupled_weight_decay=True)``).
    - ``"coupled"``: SGD-style L2 through momentum (the group has ``momentum`` and ``dampening`` and no ``eps``).
    - ``"adaptive"``: anything else (``Adam``, ``RMSprop``, ``Adagrad``, unknown optimizers): L2 added to the gradient
      and then rescaled by the optimizer's own normalization.

    Example::

        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> decay_form(torch.optim.SGD(p, lr=0.1).param_groups[0])
        'coupled'
        >>> decay_form(torch.optim.AdamW(p).param_groups[0]), decay_form(torch.optim.Adam(p).param_groups[0])
        ('decoupled', 'adaptive')
    """
    if group.get("decoupled_weight_decay", False):
        return "decoupled"
    if "momentum" in group and "dampening" in group and "eps" not in group:
        return "coupled"
    return "adaptive"


def momentum_of(group: Mapping[str, Any]) -> float:
    """The group's momentum: ``momentum`` (SGD), else Adam's ``beta1``, else 0."""
    if "momentum" in group:
        return float(group["momentum"])
    if "betas" in group:
        return float(group["betas"][0])
    return 0.0


def decay_gain(form: DecayForm, momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False) -> float:
    r"""``c``: how many times ``η·λ`` one step shrinks the weights by, in steady state.

    Coupled L2 enters the momentum buffer like a gradient, so it is amplified like one: the buffer settles at
    ``(1-d)·g/(1-μ)``; Nesterov's update adds the gradient once more, ``1 + μ(1-d)/(1-μ)`` (both ``1/(1-μ)`` without
    dampening). Decoupled decay bypasses the buffer: ``c = 1``. For adaptive coupled decay no constant exists; 1 is
    used so that two schedules of the same optimizer still compare by their LRs.

    Example::

        >>> round(decay_gain("coupled", momentum=0.9), 6), decay_gain("decoupled", momentum=0.9)
        (10.0, 1.0)
    """
    if form != "coupled" or momentum <= 0.0:
        return 1.0
    if momentum >= 1.0:
        raise ValueError(f"momentum must be < 1 for coupled weight decay to settle, got {momentum}")
    if nesterov:
        return 1.0 + momentum * (1.0 - dampening) / (1.0 - momentum)
    return (1.0 - dampening) / (1.0 - momentum)


def group_gain(group: Mapping[str, Any], momentum: float | None = None) -> float:
    """:func:`decay_gain` of a param group, at its current momentum or at ``momentum`` when given."""
    form = decay_form(group)
    mu = momentum_of(group) if momentum is None else momentum
    return decay_gain(form, mu, float(group.get("dampening", 0.0)), bool(group.get("nesterov", False)))


@dataclass
class GroupTrace:
    r"""The LR and momentum one param group will see at every optimizer step of the run.

    Attributes:
        lrs: the LR in effect during step ``t``.
        momenta: the momentum (or ``beta1``) in effect during step ``t``.
        gains: ``c_t`` of :func:`decay_gain` at each step.
    """

    lrs: list[float] = field(default_factory=list)
    momenta: list[float] = field(default_factory=list)
    gains: list[float] = field(default_factory=list)

    def decay_sum(self) -> float:
        r"""``Σ_t c_t·η_t``: the decay budget per unit of ``λ``."""
        return math.fsum(c * lr for c, lr in zip(self.gains, self.lrs, strict=True))

    def peak_step_decay(self) -> float:
        """``max_t c_t·η_t``: the strongest per-step shrink per unit of ``λ``."""
        return max((c * lr for c, lr in zip(self.gains, self.lrs, strict=True)), default=0.0)


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler and when the training loop steps it, as Lightning's ``LRSchedulerConfig`` says."""

    scheduler: Any
    interval: Literal["step", "epoch"] = "step"
    frequency: int = 1


@contextlib.contextmanager
def _detached_copy(optimizer: Optimizer, schedulers: Sequence[Any]) -> Iterator[tuple[Optimizer, list[Any]]]:
    r"""Deep copies of the schedulers and the optimizer they share, without the parameters or optimizer state.

    The parameters are swapped for empty tensors and the state for an empty dict in the copy's memo, so tracing a
    billion-parameter model's schedule costs no memory; only the param-group hyperparameters are copied.
    """
    memo: dict[int, Any] = {id(optimizer.state): {}}
    for group in optimizer.param_groups:
        for param in group["params"]:
            memo[id(param)] = torch.empty(0)
    copies = [copy.deepcopy(s, memo) for s in schedulers]
    twin = memo.get(id(optimizer))
    if twin is None:
        twin = copy.deepcopy(optimizer, memo)
    yield twin, copies


def trace_schedule(
    optimizer: Optimizer, schedulers: Sequence[SchedulerSpec], total_steps: int, steps_per_epoch: int | None = None
) -> tuple[list[GroupTrace], list[str]]:
    r"""Replay the schedulers on a detached copy of the optimizer and record each group's LR and momentum per step.

    Nothing the training run holds is touched: the schedulers and optimizer are deep-copied without parameters or
    state. ``"step"`` schedulers step after every ``frequency`` optimizer steps and ``"epoch"`` schedulers after every
    ``frequency * steps_per_epoch``, as Lightning does. A scheduler that needs a metric (``ReduceLROnPlateau``) cannot
    be foreseen: it is left out and named in the returned notes; the traced LR then stays at its current value.

    Args:
        optimizer: the optimizer the schedulers drive, in the state it will start training from.
        schedulers: the run's schedulers (empty: constant LR and momentum).
        total_steps: optimizer steps of the run.
        steps_per_epoch: optimizer steps per epoch, for ``"epoch"`` schedulers.

    Returns:
        One :class:`GroupTrace` per param group, and notes on what could not be traced.
    """
    notes: list[str] = []
    usable = []
    for spec in schedulers:
        if isinstance(spec.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            notes.append(f"`{type(spec.scheduler).__name__}` depends on a metric and was read as constant")
        else:
            usable.append(spec)
    with _detached_copy(optimizer, [s.scheduler for s in usable]) as (twin, copies):
        traces = [GroupTrace() for _ in twin.param_groups]
        finished: set[int] = set()
        for step in range(total_steps):
            for group, trace in zip(twin.param_groups, traces, strict=True):
                mu = momentum_of(group)
                trace.lrs.append(float(group["lr"]))
                trace.momenta.append(mu)
                trace.gains.append(group_gain(group, mu))
            if step == total_steps - 1:
                break
            for index, (spec, scheduler) in enumerate(zip(usable, copies, strict=True)):
                if index in finished:
                    continue
                period = spec.frequency * ((steps_per_epoch or 1) if spec.interval == "epoch" else 1)
                if (step + 1) % max(period, 1) == 0:
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            scheduler.step()
                    except ValueError:
                        # torch's OneCycleLR raises one step past its end; the LR then stays where it ended
                        finished.add(index)
    return traces, notes


def decay_budget(trace: GroupTrace, weight_decay: float) -> float:
    r"""``K = λ·Σ_t c_t·η_t``, the integrated decay of one param group over the run.

    Example::

        >>> trace = GroupTrace(lrs=[0.1, 0.2], momenta=[0.9, 0.9], gains=[10.0, 10.0])
        >>> round(decay_budget(trace, 1e-3), 9)
        0.003
    """
    return weight_decay * trace.decay_sum()


def reference_budget(lr: float, gain: float, weight_decay: float, steps: int) -> float:
    """The budget of the user's own recipe: their configured LR, momentum and ``λ``, held for the same steps."""
    return steps * gain * lr * weight_decay


def bounds_for(reference: float, trace: GroupTrace, low: float, high: float, form: DecayForm) -> tuple[float, float]:
    r"""The sane range of ``λ`` for a group: ``[low·λ_ref, high·λ_ref]``, and no step may decay more than 10 %.

    The per-step cap (:data:`MAX_STEP_DECAY`) applies where the shrink has a closed form (coupled SGD, decoupled);
    adaptive coupled decay is bounded by the optimizer's own step size.
    """
    lo, hi = low * reference, high * reference
    peak = trace.peak_step_decay()
    if form != "adaptive" and peak > 0:
        hi = min(hi, MAX_STEP_DECAY / peak)
    return min(lo, hi), hi


def clamp(value: float, bounds: tuple[float, float]) -> float:
    """``value`` clamped into ``bounds``."""
    return min(max(value, bounds[0]), bounds[1])


def budget_matched(reference_budget_value: float, trace: GroupTrace, bounds: tuple[float, float]) -> float:
    r"""Rule 1 of SCIENCE.md §4: the constant ``λ*`` whose budget over ``trace`` equals the reference budget.

    ``λ* = K_ref / Σ_t c_t·η_t``, clamped into ``bounds``. A trace with no decay at all (all LRs zero) keeps the upper
    bound's value: there is nothing to balance against.

    Example::

        >>> trace = GroupTrace(lrs=[0.1] * 10, momenta=[0.9] * 10, gains=[10.0] * 10)
        >>> ref = reference_budget(lr=0.01, gain=10.0, weight_decay=5e-4, steps=10)
        >>> round(budget_matched(ref, trace, (5e-6, 5e-4)), 9)
        5e-05
    """
    total = trace.decay_sum()
    if total <= 0:
        return bounds[1]
    return clamp(reference_budget_value / total, bounds)


def timescale_bounded(
    weight_decay: float, trace: GroupTrace, budget_range: tuple[float, float], bounds: tuple[float, float]
) -> float:
    r"""``λ`` moved just enough that the run's decay budget ``K = Σ_t c_t·η_t·λ`` lies in ``budget_range``.

    ``K`` counts e-foldings: decay alone would shrink the weights by ``exp(-K)`` over the run, so ``1/K`` of the run
    is the decay's memory, the EMA timescale of Wang & Aitchison (2024), who find the best timescale roughly constant
    in epochs across model and data size, between one epoch and the whole run (SCIENCE.md §4, rule 3; the SGD gain
    ``c`` extends it to coupled decay). ``budget_range = (1, epochs)`` says exactly that. A ``λ`` already inside is
    kept: the rule corrects a decay that cannot act within the run (``K < 1``) or that forgets within an epoch, and
    leaves tuned recipes alone (Smith's CIFAR runs spend ``K`` of 3-16). The result is clamped into ``bounds``.

    Example::

        >>> trace = GroupTrace(lrs=[0.1] * 100, momenta=[0.9] * 100, gains=[10.0] * 100)  # Σ c·η = 100
        >>> timescale_bounded(1e-4, trace, (1.0, 20.0), (1e-6, 1.0))  # K = 0.01: raised to K = 1
        0.01
        >>> timescale_bounded(0.05, trace, (1.0, 20.0), (1e-6, 1.0))  # K = 5: inside, kept
        0.05
    """
    total = trace.decay_sum()
    if total <= 0:
        return weight_decay
    budget = weight_decay * total
    low, high = budget_range
    if budget < low:
        weight_decay = low / total
    elif budget > high:
        weight_decay = high / total
    return clamp(weight_decay, bounds)


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
    factors: Sequence[float], losses: Sequence[float], replicate: float, min_gain: float = 0.01
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
        which = ", ".join(f"{f:.3g}x" for f in diverged) or "the user's replicate"
        return GridDecision(user, f"kept: branch(es) at {which} diverged, so the schedule is at the edge of stability")
    best = pick_lowest(factors, losses)
    noise = abs(losses[user] - replicate)
    threshold = max(2.0 * noise, min_gain * abs(losses[user]))
    gain = losses[user] - losses[best]
    if best != user and gain > threshold:
        return GridDecision(
            best,
            f"{factors[best]:.3g}x had the lowest validation loss, {gain:.3g} below the user's λ, beyond the noise "
            f"({noise:.3g} between two data orders)",
        )
    return GridDecision(
        user,
        f"kept: the best other λ ({factors[best]:.3g}x) was not ahead of the user's by more than the noise "
        f"(gain {gain:.3g}, needed {threshold:.3g}; {noise:.3g} between two data orders)",
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
