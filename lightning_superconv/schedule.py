r"""The one-cycle schedule: a real :class:`torch.optim.lr_scheduler.OneCycleLR`, sized and guarded for Lightning runs.

Pure torch; no ``Trainer`` here. The callback decides *what* maximum LR and how many steps; this module builds the
scheduler so that:

- the user's LR ratios between param groups are kept (``max_lr`` refers to the first group; under timm's layer decay
  to timm's base LR, each group's ``lr_scale`` in its ratio);
- momentum (SGD) or ``beta1`` (Adam family) cycles inversely to the LR, except for an optimizer that has no momentum
  to cycle: torch's ``OneCycleLR(cycle_momentum=True)`` silently switches a momentum-free SGD to 0.95;
- the run can never crash on its last step: torch's scheduler raises one step past ``total_steps`` (a resume with a
  longer run, a dataloader that grew) and divides by zero when the warm-up is exactly one step long.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

from lightning_utilities.core.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR

from lightning_superconv._validation import check_bool, check_choice, check_number
from lightning_superconv.param_groups import (
    copy_momentum,
    group_ratios,
    keep_momentum_tensors,
    momentum_key,
    momentum_tensor,
    read_momentum,
    write_lr,
)


def resolve_cycle_momentum(optimizer: Optimizer, cycle_momentum: bool | None) -> bool:
    r"""Decide whether momentum cycles.

    ``None`` (automatic) cycles whenever the optimizer already uses momentum: ``momentum`` (SGD, RMSprop) or the Adam
    family's ``beta1`` above 0 in any group. An optimizer built without (an SGD with ``momentum=0``, an Adam with
    ``betas=(0, 0.99)`` as GANs often train) keeps none, unless the user asks with ``True``; so does each group built
    without momentum beside groups with it (:func:`cycle_momenta`).

    Raises:
        ValueError: if cycling is asked for an optimizer without ``momentum`` or ``betas``.
    """
    key = momentum_key(optimizer)
    if cycle_momentum is None:
        # found reviewing the package: an Adam built with `beta1` 0 had it cycled to 0.95, where an SGD without
        # momentum keeps none
        return key is not None and any((read_momentum(group) or 0) > 0 for group in optimizer.param_groups)
    if cycle_momentum and key is None:
        raise ValueError(
            f"`cycle_momentum=True` needs an optimizer with `momentum` or `betas`; {type(optimizer).__name__} has "
            "neither. Pass `cycle_momentum=None` (automatic) or False."
        )
    return cycle_momentum


def cycle_momenta(optimizer: Optimizer, config: OneCycleConfig) -> tuple[float | list[float], float | list[float]]:
    r"""The cycle's ``base_momentum`` and ``max_momentum``: the config's, or per group where a group has none.

    With ``cycle_momentum=None`` (automatic), a param group whose momentum (or Adam's ``beta1``) is 0 keeps 0 while
    the others cycle: a user who built one group without momentum meant it, as one who built the whole SGD so (found
    trying the package as a new user: a head at ``momentum=0`` beside a backbone at 0.9 ran at 0.85-0.95, which also
    multiplies its coupled decay by up to 20). Torch's ``OneCycleLR`` takes the bounds per group.

    Example::

        >>> import torch
        >>> w, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        >>> sgd = torch.optim.SGD([{"params": [w], "momentum": 0.9}, {"params": [b], "momentum": 0.0}], lr=0.1)
        >>> cycle_momenta(sgd, OneCycleConfig())
        ([0.85, 0.0], [0.95, 0.0])
        >>> cycle_momenta(sgd, OneCycleConfig(cycle_momentum=True))
        (0.85, 0.95)
    """
    base, top = config.base_momentum, config.max_momentum
    without = groups_without_momentum(optimizer) if config.cycle_momentum is None else []
    if not without:
        return base, top
    return (
        [0.0 if i in without else base for i in range(len(optimizer.param_groups))],
        [0.0 if i in without else top for i in range(len(optimizer.param_groups))],
    )


def groups_without_momentum(optimizer: Optimizer) -> list[int]:
    """The param groups built with momentum (or ``beta1``) 0 beside groups with some: the cycle leaves them at 0.

    Empty when no group has momentum, or every group has some (then all cycle, or none does).

    >>> import torch
    >>> w, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    >>> groups_without_momentum(torch.optim.SGD([{"params": [w]}, {"params": [b], "momentum": 0.0}], 0.1, 0.9))
    [1]
    """
    momenta = [read_momentum(group) for group in optimizer.param_groups]
    without = [i for i, momentum in enumerate(momenta) if momentum == 0]
    return without if any(momentum for momentum in momenta) else []


@dataclass(frozen=True)
class OneCycleConfig:
    r"""The shape of the one cycle, validated once: everything but its peak and its length.

    The defaults are torch's, and Smith's advice fits them: start the cycle 10-25x below the peak, spend under half
    of the run rising, and let the LR fall several orders of magnitude below its start at the end (arXiv 1708.07120
    §3, 1803.09820 §4.1). Momentum cycles 0.95 -> 0.85 -> 0.95, inversely to the LR (1803.09820 §4.3).

    Attributes:
        pct_start: fraction of the run spent raising the LR, in (0, 1).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: cycle momentum (``beta1``) inversely to the LR; ``None`` cycles whenever the optimizer has
            momentum to cycle (:func:`resolve_cycle_momentum`).
        base_momentum: momentum at the LR's peak, in [0, 1).
        max_momentum: momentum at the cycle's ends, in [``base_momentum``, 1).
        div_factor: the cycle starts at ``max_lr / div_factor`` (>= 1).
        final_div_factor: the cycle ends at ``max_lr / (div_factor * final_div_factor)`` (>= 1).
        three_phase: torch's three-phase cycle (symmetric rise and fall, then a final annihilation).

    Raises:
        ValueError: if a value is out of range.
        TypeError: if a value has the wrong type.

    Example::

        >>> OneCycleConfig(pct_start=0.25).div_factor
        25.0
        >>> OneCycleConfig(pct_start=1.5)
        Traceback (most recent call last):
        ...
        ValueError: `pct_start` must be in (0.0, 1.0), got 1.5
    """

    pct_start: float = 0.3
    anneal_strategy: Literal["cos", "linear"] = "cos"
    cycle_momentum: bool | None = None
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False

    def __post_init__(self) -> None:
        check_number("pct_start", self.pct_start, low=0.0, high=1.0)
        object.__setattr__(
            self, "anneal_strategy", check_choice("anneal_strategy", self.anneal_strategy, ("cos", "linear"))
        )
        object.__setattr__(self, "cycle_momentum", check_bool("cycle_momentum", self.cycle_momentum, allow_none=True))
        check_number("base_momentum", self.base_momentum, low=0.0, high=1.0, low_inclusive=True)
        check_number("max_momentum", self.max_momentum, low=0.0, high=1.0, low_inclusive=True)
        if self.max_momentum < self.base_momentum:
            raise ValueError(
                f"`max_momentum` must be >= `base_momentum`, got max_momentum={self.max_momentum} and "
                f"base_momentum={self.base_momentum}"
            )
        check_number("div_factor", self.div_factor, low=1.0, low_inclusive=True)
        check_number("final_div_factor", self.final_div_factor, low=1.0, low_inclusive=True)
        object.__setattr__(self, "three_phase", check_bool("three_phase", self.three_phase))
        # plain floats, so the config compares and prints the same whichever numbers it was given
        for name in ("pct_start", "base_momentum", "max_momentum", "div_factor", "final_div_factor"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.three_phase and self.pct_start >= 0.5:
            # torch's three phases rise for `pct_start` of the run and fall back for as long: from half the run on,
            # the run ends before the LR has come down (found reviewing the package: 0.6 ended at a quarter of the
            # peak, 0.9 at the peak)
            raise ValueError(
                "`pct_start` must be below 0.5 with `three_phase=True` (the LR rises for `pct_start` of the run, "
                f"falls back for as long, then anneals), got {self.pct_start}"
            )


class SafeOneCycleLR(OneCycleLR):
    r"""A :class:`~torch.optim.lr_scheduler.OneCycleLR` that holds its final LR past ``total_steps`` instead of raising.

    Lightning steps the scheduler after every optimizer step; if the run turns out longer than the estimate it was sized
    with (``max_epochs`` raised on resume, a dataloader that grew), torch's scheduler would raise mid-training. This one
    stays at the end of the cycle, the lowest LR, and warns once. It is still a ``OneCycleLR``: checkpoints, the
    ``LearningRateMonitor`` and users' ``isinstance`` checks see the real thing.

    Param groups added to the optimizer after the scheduler was built (``BackboneFinetuning`` unfreezing a backbone,
    say) would make torch's scheduler fail with a ``KeyError`` at its next step. Here such a group joins the cycle
    (:meth:`adopt_added_groups`): its LR keeps the ratio to the first group's LR that it was added with, and it cycles
    the momentum of the first group that cycles, like the groups configured from the start; one added with momentum
    0 keeps none where ``still_groups_kept`` (the automatic ``cycle_momentum``, :func:`cycle_momenta`).
    """

    _warned_past_end = False
    _warned_epoch = False
    #: whether a group built (or added) with momentum 0 beside groups with some keeps 0; a plain value, in the
    #: state_dict (False in checkpoints written before it was kept: every group cycled then)
    still_groups_kept = False
    # a re-warm-up after the divergence guard rolled the weights back (see `rewarm`); plain values, in the state_dict
    rewarm_start = -1
    rewarm_steps = 0
    rewarm_from = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # index of each param group added after construction -> its LR relative to the first group's (plain values:
        # part of the state_dict, so a resumed run keeps them)
        self.added_group_ratios: dict[int, float] = {}
        #: how many param groups the cycle was built on; those after them are added ones (plain value, in the
        #: state_dict: a resumed run's is the first build's)
        groups = (args[0] if args else kwargs["optimizer"]).param_groups
        self.built_groups = len(groups)
        held = [momentum_tensor(group) for group in groups]
        super().__init__(*args, **kwargs)
        keep_momentum_tensors(groups, held)
        #: the step at which the LR reaches its peak (the end of the first phase, as torch computes it)
        self.peak_step = float(self._schedule_phases[0]["end_step"])

    def quiet(self) -> None:
        """Say neither warning this scheduler gives once: for a copy that replays the cycle (the balancer's trace)."""
        self._warned_past_end = self._warned_epoch = True

    def adopt_added_groups(self) -> list[int]:
        r"""Give param groups that were added since the last call their place in the cycle; return their indices.

        A new group's ratio is its LR now over the first group's LR now; ``initial_lr``, ``max_lr`` and ``min_lr`` are
        the first group's times that ratio, so the closed-form cycle carries it from here on without a jump.
        """
        groups = self.optimizer.param_groups
        first = groups[0]
        adopted = []
        for index, group in enumerate(groups):
            # by place, not by the cycle's keys: a group added as a copy of the first group's settings holds them (found
            # in a review: added at a tenth of the first group's LR, it ran at the first group's from its second step)
            if index < self.built_groups or index in self.added_group_ratios:
                continue
            ratio = float(group["lr"]) / float(first["lr"])
            for key in ("initial_lr", "max_lr", "min_lr"):
                group[key] = float(first[key]) * ratio
            if self.cycle_momentum:
                leader = self._momentum_leader()
                still = self.still_groups_kept and read_momentum(group) == 0 and leader["max_momentum"] > 0
                group["base_momentum"] = 0.0 if still else leader["base_momentum"]
                group["max_momentum"] = 0.0 if still else leader["max_momentum"]
            self.base_lrs.append(group["initial_lr"])
            self.added_group_ratios[index] = ratio
            adopted.append(index)
        self.follow_first_group()
        return adopted

    def follow_first_group(self) -> None:
        r"""Set each added group's LR from the first group's, and its momentum from the first group that cycles.

        An added group kept at momentum 0 stays there (:meth:`adopt_added_groups`). Called before every training
        step: a callback that writes an added group's LR between steps (``BackboneFinetuning`` does at every epoch
        start) does not move it off the cycle.
        """
        if not self.added_group_ratios:  # the common case, at every scheduler step: nothing to follow
            return
        groups = self.optimizer.param_groups
        first = groups[0]
        leader = self._momentum_leader() if self.cycle_momentum else None
        for index, ratio in self.added_group_ratios.items():
            if index >= len(groups):
                continue
            group = groups[index]
            write_lr(group, float(first["lr"]) * ratio)
            if leader is not None and group.get("max_momentum", 1.0) > 0:  # a group kept at 0 stays there
                copy_momentum(group, leader)

    def _momentum_leader(self) -> dict[str, Any]:
        """The first param group whose momentum cycles (the first, where none does): added groups follow it.

        Where the first group was built without momentum and keeps none, a group added later cycles as the others
        do (found reviewing the package: ``BackboneFinetuning``'s backbone ran at momentum 0 behind such a head).
        """
        groups = self.optimizer.param_groups
        return next((g for g in groups if g.get("max_momentum", 0) > 0 and "initial_lr" in g), groups[0])

    def rewarm(self, steps: int, from_factor: float) -> None:
        r"""Ramp the LR up again over the next ``steps`` steps, from ``from_factor`` times the cycle's LR to the cycle.

        After the divergence guard rolled the weights back to an earlier step, they face the cycle's LR of now, which
        can be far above the LR they were trained at (a blow-up early in the warm-up rolls back to the initial
        weights): without a new warm-up they would diverge at once. The factor rises linearly to 1; the cycle's own
        shape is unchanged. It replaces a re-warm-up still climbing (a second rescue soon after the first): the
        groups' LRs carry that one's factor, which comes off before this one's goes on.
        """
        earlier = self.rewarm_factor()
        own = [float(g["lr"]) / earlier for g in self.optimizer.param_groups] if earlier > 0 else self._cycle_lr()
        self.rewarm_start = self.last_epoch
        self.rewarm_steps = max(int(steps), 1)
        self.rewarm_from = min(max(float(from_factor), 0.0), 1.0)
        for group, lr in zip(self.optimizer.param_groups, own, strict=True):
            write_lr(group, float(lr) * self.rewarm_from)
        # what `get_last_lr()` reports until the next step (found in a review: the LR of before the rescue, while the
        # step ran at the re-warm-up's)
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]

    def highest_lr_ahead(self) -> float:
        r"""The highest LR the first param group trains at from this step to the cycle's end, a re-warm-up included.

        After a rescue past the cycle's peak, the re-warm-up climbs while the cycle anneals, and the run stays below the
        lowered cycle's LR (found trying the package as a new user: "lowered the cycle's peak to 0.01739", and no step
        trained above 0.0055). Read off a copy of this schedule, over copies of the param groups' values; past the
        peak and the re-warm-up's end the LR only falls, so the steps up to the later of them are read.
        """
        ahead = copy.copy(self)
        # plain values: an LR or a momentum held in a Tensor is filled in place, and this copy writes nothing the run
        # reads
        groups = [_plain(group) for group in self.optimizer.param_groups]
        ahead.optimizer = SimpleNamespace(param_groups=groups)  # type: ignore[assignment]
        ahead.added_group_ratios, ahead.base_lrs = dict(self.added_group_ratios), list(self.base_lrs)
        ahead._get_lr_called_within_step = True  # torch's flag: no warning of a call
        ahead._warned_past_end = True
        rising_until = max(math.ceil(self.peak_step), self.rewarm_start + self.rewarm_steps)
        highest = 0.0
        for step in range(self.last_epoch, min(max(rising_until, self.last_epoch), self.total_steps - 1) + 1):
            ahead.last_epoch = step
            highest = max(highest, float(ahead.get_lr()[0]))
        return highest

    def rewarm_factor(self) -> float:
        """The re-warm-up's factor at the current step (1 outside one): the LR is the cycle's own LR times this."""
        if self.rewarm_start < 0 or self.last_epoch >= self.rewarm_start + self.rewarm_steps:
            return 1.0
        done = (self.last_epoch - self.rewarm_start) / self.rewarm_steps
        return self.rewarm_from + (1.0 - self.rewarm_from) * done

    def step(self, epoch: int | None = None) -> None:
        r"""Advance the cycle by one optimizer step. An ``epoch`` argument is ignored, with a warning once.

        Lightning steps the installed cycle through the module's ``lr_scheduler_step`` hook, once per optimizer step. A
        module that overrides that hook for a scheduler of its own (timm's idiom: ``scheduler.step(epoch=...)``) would
        otherwise set the cycle's position to the epoch number, and the LR would stay at the start of the warm-up.
        """
        if epoch is not None and not self._warned_epoch:
            self._warned_epoch = True
            rank_zero_warn(
                f"The one-cycle schedule was stepped with `epoch={epoch}` (an `lr_scheduler_step` override of your "
                "module?); it advances one optimizer step per call whatever the argument, as Lightning calls it once "
                "per optimizer step.",
                category=RuntimeWarning,
            )
        super().step()

    def past_end_told(self) -> None:
        """The user was told why training will go past the cycle's end: no warning of it when it does."""
        self._warned_past_end = True

    def step_update(self, num_updates: int, metric: Any = None) -> None:
        r"""One step of the cycle for timm's per-update call (its arguments ignored, as :meth:`step`'s ``epoch``).

        A module written for timm's schedulers overrides ``lr_scheduler_step`` to call
        ``scheduler.step_update(num_updates=self.global_step)`` at each optimizer step (found trying the package as a
        new user: it failed with an ``AttributeError`` after the whole range test had run). Lightning calls that hook
        once per optimizer step, so each call advances the cycle by one.
        """
        self.step()

    def get_lr(self) -> list[Any]:
        """The LR of the current step, clamped to the end of the cycle (and re-warmed after a rollback)."""
        factor = self.rewarm_factor()
        return [lr * factor for lr in self._cycle_lr()]

    def _cycle_lr(self) -> list[Any]:
        self.adopt_added_groups()
        # The cycle's last step is `total_steps - 1`. At step `total_steps` torch does not raise yet but extrapolates
        # the final phase past its end: with "cos" the LR climbs back to its value two steps earlier, with "linear"
        # it turns negative. So the clamp starts there; the warning only once a step past it was really taken.
        if self.last_epoch < self.total_steps:
            return self._torch_lr()
        if self.last_epoch > self.total_steps and not self._warned_past_end:
            self._warned_past_end = True
            # found trying the package as a new user: a curriculum whose reloaded epochs grow ran 45 % of its steps
            # past the cycle, and the warning named neither a cause nor a fix
            rank_zero_warn(
                f"The one-cycle schedule was sized for {self.total_steps} steps and training went past it; the LR "
                "stays at the cycle's final value. The run took more steps than when the cycle was planned: epochs "
                "that came out longer (a train dataloader that `reload_dataloaders_every_n_epochs` reloads with more "
                "batches: where the epochs' lengths change, size the run in steps, `Trainer(max_steps=..., "
                "max_epochs=-1)`), or a resume that asked for more epochs or steps than the cycle was planned for.",
                category=RuntimeWarning,
            )
        stepped = self.last_epoch
        self.last_epoch = self.total_steps - 1
        try:
            return self._torch_lr()
        finally:
            self.last_epoch = stepped

    def _torch_lr(self) -> list[Any]:
        """The LR of this step, as torch's `OneCycleLR` reads it; a momentum held in a Tensor stays that Tensor."""
        groups = self.optimizer.param_groups
        held = [momentum_tensor(group) for group in groups]
        try:
            return super().get_lr()
        finally:
            keep_momentum_tensors(groups, held)


def short_three_phase_warm_up(pct_start: float, total_steps: int) -> bool:
    """Whether a three-phase cycle of ``total_steps`` (4 or more) rises for under 2 steps (:func:`safe_pct_start`)."""
    return total_steps >= 4 and pct_start * total_steps < 2.0


def safe_pct_start(pct_start: float, total_steps: int, three_phase: bool = False) -> float:
    r"""Nudge ``pct_start`` off the values that break torch's OneCycleLR.

    With ``pct_start * total_steps == 1`` the warm-up phase starts and ends at step 0 and torch computes ``0 / 0``.
    Lengthening the warm-up by a millionth of a step keeps the schedule and removes the singularity.

    With ``three_phase`` and a warm-up under 2 steps (``pct_start * total_steps < 2``), torch's phases end at
    fractions of a step: the step after the first lies in the fall back, or already in the final annealing, and the
    LR stops short of the peak (found in a review: 100 steps at ``pct_start=0.01`` peaked at a 25th of ``max_lr``, at
    0.018 at 0.86 of it).
    The warm-up is lengthened to 2 steps, where the cycle has 4 or more.

    A two-phase warm-up under 1 step (``pct_start * total_steps < 1``: a run of 3 steps at the default 0.3) peaks
    before step 0, and the cycle starts at about ``max_lr`` rather than at ``max_lr / div_factor`` (found in a review):
    it is lengthened to 2 steps (the start at step 0, the peak at step 1), where the cycle has 3 or more.

    Example::

        >>> safe_pct_start(0.3, 1000)
        0.3
        >>> safe_pct_start(0.25, 4) > 0.25
        True
        >>> safe_pct_start(0.01, 100, three_phase=True)
        0.02
        >>> safe_pct_start(0.1, 7) * 7
        2.0
    """
    if three_phase and short_three_phase_warm_up(pct_start, total_steps):
        return 2.0 / total_steps
    if not three_phase and pct_start * total_steps < 1.0 and total_steps >= 3:
        return 2.0 / total_steps
    if abs(pct_start * total_steps - 1.0) < 1e-9:
        return (1.0 + 1e-6) / total_steps
    return pct_start


def build_one_cycle(
    optimizer: Optimizer,
    max_lr: float,
    total_steps: int,
    config: OneCycleConfig | None = None,
    ratios: Sequence[float] | None = None,
) -> SafeOneCycleLR:
    r"""Build the one-cycle scheduler on ``optimizer``, peaking at ``max_lr`` for the first param group.

    Args:
        optimizer: the user's optimizer; its param groups are rewritten by torch's scheduler (``lr``, ``initial_lr``,
            ``max_lr``, ``min_lr``, and the momentum when it cycles).
        max_lr: the cycle's peak LR for the first param group (times its ratio, its timm ``lr_scale``, where it has
            one: timm's base LR).
        total_steps: optimizer steps in the run (>= 1).
        config: the cycle's shape (default: torch's, see :class:`OneCycleConfig`).
        ratios: each group's LR relative to the first; default: the ratios the optimizer was configured with.
    """
    config = config or OneCycleConfig()
    folded = ratios is None
    if ratios is None:
        ratios = group_ratios(optimizer)
    base_momentum, max_momentum = cycle_momenta(optimizer, config)
    still = config.cycle_momentum is None
    scheduler = SafeOneCycleLR(
        optimizer,
        max_lr=[max_lr * ratio for ratio in ratios],
        total_steps=int(total_steps),
        pct_start=safe_pct_start(config.pct_start, int(total_steps), config.three_phase),
        anneal_strategy=config.anneal_strategy,
        cycle_momentum=resolve_cycle_momentum(optimizer, config.cycle_momentum),
        base_momentum=base_momentum,
        max_momentum=max_momentum,
        div_factor=config.div_factor,
        final_div_factor=config.final_div_factor,
        three_phase=config.three_phase,
    )
    scheduler.still_groups_kept = still
    if folded and any("lr_scale" in group for group in optimizer.param_groups):
        # timm's layer-decay shares are in the cycle's LRs (`initial_lr`...) now; with the first group's share in
        # every group a later read of the ratios (a second `fit` on this optimizer) gives the same ratios back,
        # `max_lr` still timm's base LR
        for group in optimizer.param_groups:
            group["lr_scale"] = float(ratios[0])
    return scheduler


def scale_peak(scheduler: OneCycleLR, factor: float) -> None:
    r"""Scale the whole cycle, from the current step on, by ``factor``: its start, peak and end LR in every group.

    torch's ``OneCycleLR`` computes each step's LR from the ``initial_lr``, ``max_lr`` and ``min_lr`` it keeps in the
    param groups, so scaling the three keeps the cycle's shape and position: the LR follows the same curve, lower.
    They live in the optimizer's state dict, so a checkpoint written afterwards resumes on the scaled cycle. The
    current ``lr`` is scaled at once, so the step about to run uses the new cycle.

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> sched = build_one_cycle(opt, max_lr=1.0, total_steps=10)
        >>> scale_peak(sched, 0.5)
        >>> opt.param_groups[0]["max_lr"], round(opt.param_groups[0]["lr"], 6)
        (0.5, 0.02)
    """
    for group in scheduler.optimizer.param_groups:
        for key in ("initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] = float(group[key]) * factor
        if "lr" in group:
            write_lr(group, float(group["lr"]) * factor)
    scheduler.base_lrs = [float(lr) * factor for lr in scheduler.base_lrs]
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [float(group["lr"]) for group in scheduler.optimizer.param_groups]


def _plain(group: dict[str, Any]) -> dict[str, Any]:
    """A copy of a param group's values, without its parameters, with its LR and momentum as floats."""
    values = {key: value for key, value in group.items() if key != "params"}
    values["lr"] = float(group["lr"])
    if "momentum" in values:
        values["momentum"] = float(values["momentum"])
    if "betas" in values:
        values["betas"] = tuple(float(beta) for beta in values["betas"])
    return values
