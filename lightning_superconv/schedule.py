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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lightning_utilities.core.rank_zero import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import OneCycleLR

from lightning_superconv._validation import check_bool, check_choice, check_number
from lightning_superconv.param_groups import group_ratios, momentum_key, read_momentum, write_lr, write_momentum


def resolve_cycle_momentum(optimizer: Optimizer, cycle_momentum: bool | None) -> bool:
    r"""Decide whether momentum cycles.

    ``None`` (automatic) cycles whenever the optimizer already uses momentum: ``betas`` (Adam family) or an SGD with
    ``momentum > 0`` in any group. An SGD built with ``momentum=0`` keeps none, unless the user asks with ``True``.

    Raises:
        ValueError: if cycling is asked for an optimizer without ``momentum`` or ``betas``.
    """
    key = momentum_key(optimizer)
    if cycle_momentum is None:
        if key == "betas":
            return True
        return key == "momentum" and any(group.get("momentum", 0) > 0 for group in optimizer.param_groups)
    if cycle_momentum and key is None:
        raise ValueError(
            f"`cycle_momentum=True` needs an optimizer with `momentum` or `betas`; {type(optimizer).__name__} has "
            "neither. Pass `cycle_momentum=None` (automatic) or False."
        )
    return cycle_momentum


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
        check_choice("anneal_strategy", self.anneal_strategy, ("cos", "linear"))
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


class SafeOneCycleLR(OneCycleLR):
    r"""A :class:`~torch.optim.lr_scheduler.OneCycleLR` that holds its final LR past ``total_steps`` instead of raising.

    Lightning steps the scheduler after every optimizer step; if the run turns out longer than the estimate it was sized
    with (``max_epochs`` raised on resume, a dataloader that grew), torch's scheduler would raise mid-training. This one
    stays at the end of the cycle, the lowest LR, and warns once. It is still a ``OneCycleLR``: checkpoints, the
    ``LearningRateMonitor`` and users' ``isinstance`` checks see the real thing.

    Param groups added to the optimizer after the scheduler was built (``BackboneFinetuning`` unfreezing a backbone,
    say) would make torch's scheduler fail with a ``KeyError`` at its next step. Here such a group joins the cycle
    (:meth:`adopt_added_groups`): its LR keeps the ratio to the first group's LR that it was added with, and it cycles
    the first group's momentum, like the groups configured from the start.
    """

    _warned_past_end = False
    _warned_epoch = False
    # a re-warm-up after the divergence guard rolled the weights back (see `rewarm`); plain values, in the state_dict
    rewarm_start = -1
    rewarm_steps = 0
    rewarm_from = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # index of each param group added after construction -> its LR relative to the first group's (plain values:
        # part of the state_dict, so a resumed run keeps them)
        self.added_group_ratios: dict[int, float] = {}
        super().__init__(*args, **kwargs)
        #: the step at which the LR reaches its peak (the end of the first phase, as torch computes it)
        self.peak_step = float(self._schedule_phases[0]["end_step"])

    def adopt_added_groups(self) -> list[int]:
        r"""Give param groups that were added since the last call their place in the cycle; return their indices.

        A new group's ratio is its LR now over the first group's LR now; ``initial_lr``, ``max_lr`` and ``min_lr`` are
        the first group's times that ratio, so the closed-form cycle carries it from here on without a jump.
        """
        groups = self.optimizer.param_groups
        first = groups[0]
        adopted = []
        for index, group in enumerate(groups):
            if all(key in group for key in ("initial_lr", "max_lr", "min_lr")):
                continue
            ratio = float(group["lr"]) / float(first["lr"])
            for key in ("initial_lr", "max_lr", "min_lr"):
                group[key] = float(first[key]) * ratio
            if self.cycle_momentum:
                group["base_momentum"] = first["base_momentum"]
                group["max_momentum"] = first["max_momentum"]
            self.base_lrs.append(group["initial_lr"])
            self.added_group_ratios[index] = ratio
            adopted.append(index)
        self.follow_first_group()
        return adopted

    def follow_first_group(self) -> None:
        r"""Set each added group's LR (and momentum, when it cycles) from the first group's current values.

        Called before every training step: a callback that writes an added group's LR between steps
        (``BackboneFinetuning`` does at every epoch start) does not move it off the cycle.
        """
        groups = self.optimizer.param_groups
        first = groups[0]
        for index, ratio in self.added_group_ratios.items():
            if index >= len(groups):
                continue
            group = groups[index]
            write_lr(group, float(first["lr"]) * ratio)
            momentum = read_momentum(first)
            if self.cycle_momentum and momentum is not None:
                write_momentum(group, momentum)

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
            return super().get_lr()
        if self.last_epoch > self.total_steps and not self._warned_past_end:
            self._warned_past_end = True
            rank_zero_warn(
                f"The one-cycle schedule was sized for {self.total_steps} steps and training went past it; the LR "
                "stays at the cycle's final value.",
                category=RuntimeWarning,
            )
        stepped = self.last_epoch
        self.last_epoch = self.total_steps - 1
        try:
            return super().get_lr()
        finally:
            self.last_epoch = stepped


def safe_pct_start(pct_start: float, total_steps: int) -> float:
    r"""Nudge ``pct_start`` off the one value that makes torch's OneCycleLR divide by zero.

    With ``pct_start * total_steps == 1`` the warm-up phase starts and ends at step 0 and torch computes ``0 / 0``.
    Lengthening the warm-up by a millionth of a step keeps the schedule and removes the singularity.

    Example::

        >>> safe_pct_start(0.3, 1000)
        0.3
        >>> safe_pct_start(0.25, 4) > 0.25
        True
    """
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
    scheduler = SafeOneCycleLR(
        optimizer,
        max_lr=[max_lr * ratio for ratio in ratios],
        total_steps=int(total_steps),
        pct_start=safe_pct_start(config.pct_start, int(total_steps)),
        anneal_strategy=config.anneal_strategy,
        cycle_momentum=resolve_cycle_momentum(optimizer, config.cycle_momentum),
        base_momentum=config.base_momentum,
        max_momentum=config.max_momentum,
        div_factor=config.div_factor,
        final_div_factor=config.final_div_factor,
        three_phase=config.three_phase,
    )
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
