r"""Pure maths of weight-decay balancing: how each optimizer applies decay, the decay budget, the rules, the bounds.

Nothing here knows about a ``Trainer``: the functions take param-group dicts, torch schedulers and lists of floats, so
they can be tested on bare optimizers and known schedules.

How torch applies ``weight_decay=λ``:

- ``SGD``: coupled L2. ``λθ`` is added to the gradient *before* momentum, so in steady state a step shrinks the
  weights by ``η·λ·(1-d)/(1-μ)`` (momentum ``μ``, dampening ``d``): momentum multiplies the decay too.
- ``AdamW``, every optimizer built with ``decoupled_weight_decay=True``, ``Adafactor`` and ``Muon``: decoupled,
  ``θ ← θ(1 - η·λ)``.
- ``Adam(weight_decay=λ)`` and other adaptive optimizers: coupled L2 passed through the adaptive normalization, so
  the shrink of a weight depends on its gradient history (``λθ / sqrt(v)``); no closed form holds.

The quantity that behaves consistently across schedules is the integrated decay budget
``K = Σ_t c_t·η_t·λ`` with ``c_t = (1-d)/(1-μ_t)`` for SGD and ``c_t = 1`` for decoupled decay. Smith & Topin
(arXiv 1708.07120) reduce weight decay when the LR is large; read as budgets, their super-convergence run (CLR 0.1-3
over 10k iterations, λ=1e-4) and its conventional baseline (0.35 multistep over 80k, λ=1e-4) spend about the same
``K`` (≈15.5 and ≈18.2), as do their 1cycle 0.08-0.8 run and He et al.'s CIFAR recipe (≈3.4 each): thin evidence,
but the best quantitative reading of their "balance" (the README's ``WeightDecayBalancer`` section).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from lightning_superconv.param_groups import detached_copy, read_momentum
from lightning_superconv.schedule import SafeOneCycleLR

DecayForm = Literal["coupled", "decoupled", "adaptive"]

# The strongest decay one step may apply, as a fraction of the weights (``c·η·λ`` at the schedule's peak). Beyond it a
# weight loses a tenth of its norm per step from decay alone, and the L2 term no longer acts as a gentle pull: coupled
# L2 through momentum starts to oscillate (stability needs ``η·λ < 2(1+μ)`` on the penalty alone), and decoupled decay
# erases what the gradient wrote within a few steps.
MAX_STEP_DECAY = 0.1


#: a param-group key of each of torch's optimizers that always decouple their decay: ``Adafactor``'s second-moment
#: decay rate, ``Muon``'s Newton-Schulz iteration count
_ALWAYS_DECOUPLED_KEYS = ("beta2_decay", "ns_steps")
# Flags that switch decoupled decay on, by library: torch's, timm's (`decoupled_decay`: AdaBelief, Lamb, MADGRAD,
# RMSpropTF, NvNovoGrad, Kron; `decoupled`: Adopt) and pytorch_optimizer's (`weight_decouple`). Where one is present,
# it decides.
_DECOUPLED_FLAGS = ("decoupled_weight_decay", "decoupled_decay", "decoupled", "weight_decouple")
# Options under which the shrink is no `η·λ` at all: `λ` alone per step (pytorch_optimizer's and timm's
# `fixed_decay`), or `λ·η²/η₀` (timm's `corrected_weight_decay`, `η₀` the LR the optimizer was built with)
_NOT_LR_TIMES_DECAY = ("fixed_decay", "corrected_weight_decay")
# Keys of timm's optimizers that shrink by `1 - η·λ` (or `1/(1 + η·λ)`) with no flag to say so: the
# `corrected_weight_decay` option only its decoupled ones have (Lion, NAdamW, LaProp, AdafactorBigVision, SGDW),
# Adan's `no_prox`, Adafactor's `relative_step` and Mars's `mars_type`. Read for timm's optimizers only: other
# libraries use some of these keys for decay of other forms (Hugging Face's Adafactor scales it by the weights' RMS,
# pytorch_optimizer's MARS and AdaFactor couple it unless flagged, D-Adaptation's Adan multiplies it by its own step)
_TIMM_UNFLAGGED_DECOUPLED_KEYS = ("corrected_weight_decay", "no_prox", "relative_step", "mars_type")


def decay_off_the_lr(group: Mapping[str, Any]) -> str | None:
    """The option of ``group`` that makes its shrink no constant times ``η·λ``, or None.

    ``fixed_decay=True`` shrinks by ``λ`` per step, timm's ``corrected_weight_decay=True`` by ``λ·η²/η₀``.

    Example::

        >>> decay_off_the_lr({"lr": 0.01, "fixed_decay": True}), decay_off_the_lr({"lr": 0.01, "fixed_decay": False})
        ('fixed_decay', None)
    """
    return next((key for key in _NOT_LR_TIMES_DECAY if group.get(key)), None)


def decay_form(group: Mapping[str, Any], optimizer: Any = None) -> DecayForm:
    r"""How a param group applies its ``weight_decay``, read from the group itself.

    Decided from the group's keys, not from ``isinstance``: torch's ``AdamW`` subclasses ``Adam``, and ``Adam``,
    ``RAdam`` and ``NAdam`` switch to decoupled decay with their ``decoupled_weight_decay`` flag.

    - ``"decoupled"``: the group has ``decoupled_weight_decay=True`` (``AdamW``, ``Adam(decoupled_weight_decay=True)``),
      or is torch's ``Adafactor`` (``beta2_decay``) or ``Muon`` (``ns_steps``), which shrink by ``1 - η·λ`` without
      such a flag (``Muon`` with the group's own LR, before its shape adjustment). Other libraries' flags alike
      (timm's ``decoupled_decay`` and ``decoupled``, pytorch_optimizer's ``weight_decouple``); and, for an
      ``optimizer`` from timm, no flag and one of the keys only its decoupled optimizers have (``Lion``, ``NAdamW``,
      ``LaProp``, ``Adan``, ``Adafactor``, ``AdafactorBigVision``, ``SGDW``, ``Mars``; found trying the package as a
      new user: eight of them were read as adaptive and left unbalanced).
    - ``"coupled"``: SGD-style L2 through momentum (the group has ``momentum`` and ``dampening`` and no ``eps``), or
      ``ASGD``'s (``lambd`` and ``t0``: L2 added to the gradient, no momentum and no normalization, so ``c = 1``).
    - ``"adaptive"``: anything else (``Adam``, ``RMSprop``, ``Adagrad``, unknown optimizers): L2 added to the gradient
      and then rescaled by the optimizer's own normalization; and decay whose shrink is no multiple of ``η·λ``
      (``fixed_decay=True``: ``λ`` per step; timm's ``corrected_weight_decay=True``: ``λ·η²/η₀``).

    Example::

        >>> p = [torch.nn.Parameter(torch.zeros(1))]
        >>> decay_form(torch.optim.SGD(p, lr=0.1).param_groups[0])
        'coupled'
        >>> decay_form(torch.optim.AdamW(p).param_groups[0]), decay_form(torch.optim.Adam(p).param_groups[0])
        ('decoupled', 'adaptive')
    """
    if decay_off_the_lr(group) is not None:
        return "adaptive"  # no constant `c` makes its shrink `c·η·λ`
    flags = [key for key in _DECOUPLED_FLAGS if key in group]
    if any(group[key] for key in flags) or any(key in group for key in _ALWAYS_DECOUPLED_KEYS):
        return "decoupled"
    from_timm = type(optimizer).__module__.split(".")[0] == "timm"
    if from_timm and not flags and any(key in group for key in _TIMM_UNFLAGGED_DECOUPLED_KEYS):
        return "decoupled"
    if "momentum" in group and "dampening" in group and "eps" not in group:
        return "coupled"
    if "lambd" in group and "t0" in group:  # ASGD: its averaging starts at step `t0`; the steps are plain SGD's
        return "coupled"
    return "adaptive"


def momentum_of(group: Mapping[str, Any]) -> float:
    """The group's momentum (:func:`~lightning_superconv.param_groups.read_momentum`), 0 for none."""
    momentum = read_momentum(group)  # type: ignore[arg-type]
    return 0.0 if momentum is None else momentum


class UnsettledMomentumError(ValueError):
    """Coupled weight decay through a momentum of 1 or more: it never settles at a rate of decay (torch's SGD takes it).

    ``group`` and ``step``: the param group and the traced step it was met at, where known.
    """

    def __init__(self, momentum: float, group: int | None = None, step: int | None = None) -> None:
        self.momentum, self.group, self.step = momentum, group, step
        where = "" if group is None else f" (param group {group}" + ("" if step is None else f", step {step}") + ")"
        super().__init__(f"momentum must be < 1 for coupled weight decay to settle, got {momentum}{where}")


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
        raise UnsettledMomentumError(momentum)
    if nesterov:
        return 1.0 + momentum * (1.0 - dampening) / (1.0 - momentum)
    return (1.0 - dampening) / (1.0 - momentum)


def group_gain(group: Mapping[str, Any], momentum: float | None = None, optimizer: Any = None) -> float:
    """:func:`decay_gain` of a param group of ``optimizer``, at its current momentum or at ``momentum`` when given.

    NaN for a group without weight decay whose momentum is 1 or more: no decay enters it, so its gain is never read
    (found in a review: such a group was refused, even where no group decayed).
    """
    form = decay_form(group, optimizer)
    mu = momentum_of(group) if momentum is None else momentum
    try:
        return decay_gain(form, mu, float(group.get("dampening", 0.0)), bool(group.get("nesterov", False)))
    except UnsettledMomentumError:
        if not group.get("weight_decay"):
            return math.nan
        raise


@dataclass
class GroupTrace:
    r"""The LR and momentum one param group will see at every optimizer step of the run.

    Attributes:
        lrs: the LR in effect during step ``t``.
        momenta: the momentum (or ``beta1``) in effect during step ``t``.
        gains: ``c_t`` of :func:`decay_gain` at each step (NaN in a group without weight decay whose momentum is 1
            or more: no decay enters it, and no rate of decay could).
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

    def at(self, steps: Sequence[int]) -> GroupTrace:
        """The trace at these steps only (a compressed schedule)."""
        lrs, momenta, gains = ([values[t] for t in steps] for values in (self.lrs, self.momenta, self.gains))
        return GroupTrace(lrs, momenta, gains)


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler and when the training loop steps it, as Lightning's ``LRSchedulerConfig`` says."""

    scheduler: Any
    interval: Literal["step", "epoch"] = "step"
    frequency: int = 1


@dataclass(frozen=True)
class ScheduleSwap:
    """A scheduler that takes over the LR at a step of the run, as ``StochasticWeightAveraging``'s ``SWALR`` does.

    Attributes:
        step: the traced step (counted from 0) whose LR the new scheduler sets: the first of the epoch it starts in.
        build: builds it on the optimizer it is given (the trace's copy), as the callback builds it on the real one.
            It is stepped at every epoch end from there on, and replaces every other scheduler.
    """

    step: int
    build: Callable[[Optimizer], Any]


def epoch_ends(steps_per_epoch: int | Sequence[int] | None, total_steps: int) -> list[int]:
    r"""The optimizer steps, counted from 1, after which each epoch of a ``total_steps``-step run ends.

    ``steps_per_epoch``: one length for every epoch, or each epoch's own in order (a ``GradientAccumulationScheduler``
    changes them), the last repeating; None: epochs of one step.

    Example::

        >>> epoch_ends(4, 10), epoch_ends([4, 1], 7)
        ([4, 8], [4, 5, 6, 7])
    """
    lengths = [steps_per_epoch or 1] if not isinstance(steps_per_epoch, Sequence) else list(steps_per_epoch) or [1]
    ends: list[int] = []
    step = index = 0
    while True:
        step += max(int(lengths[min(index, len(lengths) - 1)]), 1)
        if step > total_steps:
            return ends
        ends.append(step)
        index += 1


def epochs_spanned(steps_per_epoch: int | Sequence[int], steps: int) -> float:
    r"""How many epochs ``steps`` optimizer steps span: the whole ones, and the part of the next.

    Example::

        >>> epochs_spanned(4, 10), epochs_spanned([16, 4], 28)
        (2.5, 4.0)
    """
    if not isinstance(steps_per_epoch, Sequence):
        return steps / max(int(steps_per_epoch), 1)
    ends = epoch_ends(steps_per_epoch, steps)
    done = ends[-1] if ends else 0
    lengths = list(steps_per_epoch) or [1]
    following = max(int(lengths[min(len(ends), len(lengths) - 1)]), 1)
    return len(ends) + (steps - done) / following


def trace_schedule(
    optimizer: Optimizer,
    schedulers: Sequence[SchedulerSpec],
    total_steps: int,
    steps_per_epoch: int | Sequence[int] | None = None,
    step_batches: Sequence[int] | None = None,
    start_step: int = 0,
    start_epoch: int = 0,
    epochs_known: bool = True,
    swap: ScheduleSwap | None = None,
) -> tuple[list[GroupTrace], list[str]]:
    r"""Replay the schedulers on a detached copy of the optimizer and record each group's LR and momentum per step.

    Nothing the training run holds is touched: the schedulers and optimizer are deep-copied without parameters or
    state. ``"step"`` schedulers step after an optimizer step whose epoch has read a multiple of ``frequency`` batches
    (``step_batches``), and ``"epoch"`` schedulers after every ``frequency``-th epoch, as Lightning does. A scheduler
    that needs a metric (``ReduceLROnPlateau``) cannot be foreseen: it is left out and named in the returned notes;
    the traced LR then stays at its current value.

    Args:
        optimizer: the optimizer the schedulers drive, in the state it will start training from.
        schedulers: the run's schedulers (empty: constant LR and momentum).
        total_steps: optimizer steps of the run.
        steps_per_epoch: optimizer steps per epoch, for ``"epoch"`` schedulers: one for all, or each epoch's own
            (:func:`epoch_ends`).
        step_batches: for each optimizer step, the batches its epoch has read when it is taken (from 1), for
            ``"step"`` schedulers of a ``frequency`` above 1 (found trying the package as a new user: under
            accumulation of 4 a scheduler of frequency 2 steps at every optimizer step, and was traced at every other
            one); None: one batch per step, in one epoch.
        start_step: optimizer steps taken before the first traced one (a second ``fit`` on a Trainer starts at its
            ``global_step``): timm's schedulers are stepped at that time, as Lightning's docs step them (found
            reviewing the package: a second fit's cosine was traced from its start, its decay budget 2.2x the one
            that ran); torch's count their own steps.
        start_epoch: the epochs before the first traced step's (the Trainer's ``current_epoch``), likewise; an
            ``"epoch"`` scheduler of a ``frequency`` above 1 steps at the epochs Lightning counts from the run's first
            (found in a review: a second fit's were counted from its own first epoch, a budget 1.3x the one that ran).
        epochs_known: False for data without a length (a stream): when its epochs end cannot be foreseen, so
            ``"epoch"`` schedulers are left out and named in the notes, as a metric's are (found in a review: each
            step was traced as an epoch, and a ``StepLR`` Lightning never stepped was traced as halving the LR at each
            step).
        swap: a scheduler that takes over at a step (found in a review: ``StochasticWeightAveraging``'s ``SWALR``,
            which sets the LR from its start epoch, was not traced, and λ chosen for a schedule that did not run
            decayed the weights by 31 % a step at its LR).

    Returns:
        One :class:`GroupTrace` per param group, and notes on what could not be traced.
    """
    notes: list[str] = []
    usable = []
    for spec in schedulers:
        if _needs_metric(spec.scheduler):
            notes.append(f"`{type(spec.scheduler).__name__}` depends on a metric and was read as constant")
        elif spec.interval == "epoch" and not epochs_known:
            notes.append(
                f"`{type(spec.scheduler).__name__}` steps at epoch ends, which data without a length does not "
                "foretell, and was read as constant"
            )
        else:
            usable.append(spec)
    twin, copies = detached_copy(optimizer, [s.scheduler for s in usable])
    _quiet(twin, copies)
    traces = [GroupTrace() for _ in twin.param_groups]
    finished: set[int] = set()
    # the step (counted from 1) each epoch ends at -> that epoch's number (from 1), for "epoch" schedulers
    ended = {end: number for number, end in enumerate(epoch_ends(steps_per_epoch, total_steps), start=1)}
    epochs_done = 0
    for step in range(total_steps):
        if swap is not None and step == swap.step:
            taken_over = swap.build(twin)
            usable, copies, finished = [SchedulerSpec(taken_over, "epoch", 1)], [taken_over], set()
            _quiet(twin, copies)
        for index, (group, trace) in enumerate(zip(twin.param_groups, traces, strict=True)):
            mu = momentum_of(group)
            trace.lrs.append(float(group["lr"]))
            trace.momenta.append(mu)
            try:
                trace.gains.append(group_gain(group, mu, twin))
            except UnsettledMomentumError as err:
                raise UnsettledMomentumError(err.momentum, index, start_step + step) from None
        if step == total_steps - 1:
            break
        epoch = epochs_done  # the epoch of the step just taken, as Lightning's `current_epoch` reads at its end
        epochs_done = ended.get(step + 1, epochs_done)
        for index, (spec, scheduler) in enumerate(zip(usable, copies, strict=True)):
            if index in finished:
                continue
            if spec.interval == "epoch":
                due = step + 1 in ended and (start_epoch + ended[step + 1]) % max(spec.frequency, 1) == 0
            else:
                read = step_batches[step] if step_batches is not None and step < len(step_batches) else step + 1
                due = read % max(spec.frequency, 1) == 0
            if due:
                try:
                    _step(scheduler, start_step + step + 1, start_epoch + epoch)
                except ValueError:
                    # torch's OneCycleLR raises one step past its end; the LR then stays where it ended
                    finished.add(index)
    return traces, notes


def _quiet(twin: Optimizer, copies: Sequence[Any]) -> None:
    """Keep the replay from warning of what the real run warns of itself, when it happens.

    The copy is never stepped, so torch's schedulers would warn at their first step that the optimizer had not
    stepped, and the one-cycle when the replay runs past its end. They were silenced by ``warnings.catch_warnings``
    around each step, which resets Python's record of the warnings already shown: a warning the user's run had shown
    once came back once per replay, four times in a fit with trials (found trying the package as a new user). A user's
    scheduler that warns of something else in a replay warns as it would in training, once.
    """
    twin._opt_called = True  # type: ignore[attr-defined]  # what torch's schedulers read (`LRScheduler.step`)
    for scheduler in copies:
        if isinstance(scheduler, SafeOneCycleLR):
            scheduler.quiet()


def _needs_metric(scheduler: Any) -> bool:
    """Whether the scheduler waits for a metric: torch's ``ReduceLROnPlateau``, or timm's, which wraps one."""
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    return isinstance(scheduler, plateau) or isinstance(getattr(scheduler, "lr_scheduler", None), plateau)


def _step(scheduler: Any, steps_taken: int, epoch: int) -> None:
    r"""Step a scheduler as the module's ``lr_scheduler_step`` would, after ``steps_taken`` optimizer steps.

    timm's schedulers read the time they are at (``step(epoch)``, ``step_update(num_updates)``, whichever its
    ``t_in_epochs`` says it follows): they are stepped as Lightning's docs step them in that override,
    ``step(epoch=self.current_epoch)`` (``epoch``: the epoch of the step just taken, counted from 0, which Lightning
    has not yet counted as ended at the epoch's last step) and ``step_update(num_updates=self.global_step)`` (found
    trying the package as a new user: a bare ``step()`` raised a ``TypeError`` at fit start for every timm
    scheduler). torch's schedulers count their own steps.
    """
    if callable(getattr(scheduler, "step_update", None)) and hasattr(scheduler, "t_in_epochs"):
        if scheduler.t_in_epochs:
            scheduler.step(epoch=epoch)
        else:
            scheduler.step_update(num_updates=steps_taken)
        return
    scheduler.step()


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
    lo, hi = low * reference, min(high * reference, step_decay_cap(trace, form))
    return min(lo, hi), hi


def step_decay_cap(trace: GroupTrace, form: DecayForm) -> float:
    r"""The largest ``λ`` under which no step of ``trace`` decays more than :data:`MAX_STEP_DECAY` (inf: no cap).

    Only where the shrink has a closed form (coupled SGD, decoupled) and some step decays at all.
    """
    peak = trace.peak_step_decay()
    return MAX_STEP_DECAY / peak if form != "adaptive" and peak > 0 else math.inf


def clamp(value: float, bounds: tuple[float, float]) -> float:
    """``value`` clamped into ``bounds``."""
    return min(max(value, bounds[0]), bounds[1])


def budget_matched(reference_budget_value: float, trace: GroupTrace, bounds: tuple[float, float]) -> float:
    r"""Smith's balance as a budget: the constant ``λ*`` whose budget over ``trace`` equals the reference budget.

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
    is the decay's memory, the EMA timescale of Wang & Aitchison ("How to set AdamW's weight decay as you scale model
    and dataset size", 2024), who find the best timescale roughly constant in epochs across model and data size,
    between one epoch and the whole run (the SGD gain ``c`` extends it to coupled decay).
    ``budget_range = (1, epochs)`` says exactly that. A ``λ`` already inside is kept: the rule corrects a decay that
    cannot act within the run (``K < 1``) or that forgets within an epoch, and leaves tuned recipes alone (Smith's
    CIFAR runs spend ``K`` of 3-16). The result is clamped into ``bounds``.

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
