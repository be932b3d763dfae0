r"""The LR range test as an engine.

One public entry point, :func:`run_range_test`, that the ``SuperConvergence`` callback and
:func:`~lightning_superconv.find_max_lr` both call.

:func:`run_range_test` takes a ``Trainer`` at fit start (the strategy has wrapped the model and set up the optimizer)
and does the whole job: load the train data, take the sweep's steps in a :func:`~lightning_superconv.sandbox.sandbox`
(snapshot, isolated RNG, quiet trainer; everything restored however it ends), read the curve, pick the maximum LR,
and explain in a clear error whatever makes the curve unreadable. Nothing is written to disk, so no shared filesystem
is needed across machines. Lightning keeps its own finder's engine (``tuner/lr_finder.py``) apart from its callback in
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_superconv import _compat
from lightning_superconv._validation import check_choice, check_number, check_pair
from lightning_superconv.curve import (
    DivergenceMonitor,
    SweepMode,
    descent,
    lr_sweep,
    median_half_width,
    pick_max_lr,
    running_median,
)
from lightning_superconv.param_groups import group_ratios
from lightning_superconv.result import RangeTestResult
from lightning_superconv.sandbox import sandbox
from lightning_superconv.steps import MAX_CONSECUTIVE_SKIPPED_BATCHES, NoLossError, StepRecord, take_steps

#: The fewest range-test steps that can give a pick (see :class:`RangeTestConfig`).
MIN_STEPS = 10


@dataclass(frozen=True)
class RangeTestConfig:
    r"""What the range test sweeps and when it stops, validated once.

    Attributes:
        lr_range: the first and last LR of the sweep, ``0 < start < end``.
        num_steps: optimizer steps of the sweep at most, at least 10 (:data:`MIN_STEPS`): the online divergence check
            averages about 10 losses before it trusts a best (at ``smoothing=0.9``), and the pick reads a running
            median of at least 3 neighbours off a curve that must fall, stay in its floor and rise; fewer points
            cannot show that.
        mode: ``"exponential"`` or ``"linear"`` spacing of the swept LRs.
        divergence_threshold: the sweep stops once the smoothed loss exceeds this many times its best (> 1).
        smoothing: EMA factor in [0, 1) of the online divergence check.

    Raises:
        ValueError: if a value is out of range.
        TypeError: if a value has the wrong type.
    """

    lr_range: tuple[float, float] = (1e-6, 10.0)
    num_steps: int = 100
    mode: SweepMode = "exponential"
    divergence_threshold: float = 4.0
    smoothing: float = 0.9

    def __post_init__(self) -> None:
        start, end = check_pair("lr_range", self.lr_range, "(start, end) of positive floats")
        check_number("lr_range[0]", start, low=0.0)
        check_number("lr_range[1]", end, low=0.0)
        if start >= end:
            raise ValueError(f"`lr_range` must rise: start < end, got start={start} and end={end}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < MIN_STEPS:
            raise ValueError(
                f"`num_steps` must be an integer >= {MIN_STEPS} (fewer range-test steps cannot show the loss fall, "
                f"level off and rise), got {self.num_steps!r}"
            )
        check_choice("mode", self.mode, ("exponential", "linear"))
        check_number("divergence_threshold", self.divergence_threshold, low=1.0)
        check_number("smoothing", self.smoothing, low=0.0, high=1.0, low_inclusive=True)
        object.__setattr__(self, "lr_range", (float(start), float(end)))
        object.__setattr__(self, "divergence_threshold", float(self.divergence_threshold))
        object.__setattr__(self, "smoothing", float(self.smoothing))

    def lrs(self) -> list[float]:
        """The swept LRs, one per step."""
        return lr_sweep(self.lr_range[0], self.lr_range[1], self.num_steps, self.mode)


def run_range_test(
    trainer: _compat.Trainer, pl_module: _compat.LightningModule, optimizer: Any, config: RangeTestConfig | None = None
) -> RangeTestResult:
    r"""Run the LR range test on the trainer's model, data and optimizer, restore everything, and pick the max LR.

    Call it at fit start (``on_fit_start``) or later, before training steps. Under DDP every rank calls it and all get
    the same result.

    Raises:
        MisconfigurationException: (of the trainer's distribution) if no curve can be read: the loss is NaN/inf or
            diverges from the very first steps, never falls below its start, or the reading lies below the step where
            the loss last stood at its starting level (noise read as a floor); ``training_step`` returns None for
            every batch, or the data runs out within 3 steps. The state is restored before the error propagates,
            and the message says what to change.

    Warns:
        RuntimeWarning: if the loss fell by less than ``CLEAR_FALL`` standard errors of its noise: the pick is
            installed, but may be noise.
    """
    config = config or RangeTestConfig()
    lrs = config.lrs()
    ratios = group_ratios(optimizer)
    monitor = DivergenceMonitor(config.divergence_threshold, config.smoothing)
    # `estimated_stepping_batches` loads the train dataloader, except when `max_epochs=-1` (which `Trainer(max_steps=N)`
    # alone implies): load it here, as the fit loop would
    _compat.setup_train_data(trainer)

    def set_lr(step: int) -> None:
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lrs[step] * ratio

    def check(step: int, loss: float) -> str | None:
        return monitor.update(loss)

    try:
        with sandbox(trainer, pl_module, optimizer):
            record = take_steps(trainer, pl_module, optimizer, len(lrs), set_lr, check)
    except NoLossError as err:
        raise _compat.misconfiguration(
            trainer,
            f"The range test got no loss: {err} (Lightning skips a batch whose `training_step` returns None; the range "
            f"test moves its LR on to the next batch, and gives up after {MAX_CONSECUTIVE_SKIPPED_BATCHES} in a row). "
            "Make `training_step` return the loss, or pass `max_lr=` to skip the range test. The model and optimizer "
            "were restored.",
        ) from err
    swept = [lrs[i] for i in record.steps]
    if len(record.losses) < 3:
        raise _compat.misconfiguration(trainer, _no_curve_message(record, lrs))
    if record.stop_reason == "data-exhausted":
        _compat.rank_zero_warn(
            trainer,
            f"SuperConvergence: the train dataloader ran out after {len(record.losses)} range-test steps and "
            "yielded nothing when restarted, so its data can be read only once: the range test stopped there, "
            "and training gets only what is left. Give the dataset an `__iter__` that starts over on each call.",
        )
    half_width = median_half_width(config.num_steps)
    smoothed = running_median(record.losses, half_width)
    stopped = _stop_description(record, swept, monitor, config)
    fell = descent(record.losses, smoothed, half_width)
    try:
        pick = pick_max_lr(swept, record.losses, smoothed=smoothed)
    except ValueError as err:
        raise _compat.misconfiguration(
            trainer,
            f"The range test found no usable maximum LR: {err}. {stopped} The model may not be learning (check the "
            "loss and the data), or the sweep does not reach LRs that train it: widen `lr_range`, or pass `max_lr=`. "
            "The model and optimizer were restored.",
        ) from err
    if pick.index < fell.begins:
        raise _compat.misconfiguration(
            trainer,
            f"The range test's reading, lr {pick.lr:.3g}, cannot be right: the loss was back at its starting level "
            f"({fell.start_level:.4g}) at lr {swept[fell.begins]:.3g}, so what it read below that was batch noise, "
            f"not the end of the loss's descent. {stopped} Pass `max_lr=` (a value near lr "
            f"{swept[min(len(swept) - 1, fell.begins + half_width)]:.3g}, where the descent began, or your own), or "
            "use larger batches so that one batch's loss says more. The model and optimizer were restored.",
        )
    if not fell.clear:
        _compat.rank_zero_warn(
            trainer,
            f"SuperConvergence: the range test's loss fell only from {fell.start_level:.4g} to "
            f"{fell.start_level - fell.fall:.4g}, while batch-to-batch noise alone moves its smoothed curve by about "
            f"{fell.noise:.2g}: the reading (max_lr={pick.lr:.3g}) may be noise. {stopped} If the model learns "
            "little at this batch size, pass `max_lr=` (your own LR is a safe start), or raise `num_steps` for more "
            "points per decade.",
        )
    return RangeTestResult(
        lrs=swept,
        losses=record.losses,
        smoothed=smoothed,
        max_lr=pick.lr,
        pick_index=pick.index,
        pick_reason=pick.reason,
        stop_reason=record.stop_reason,
        skipped_steps=record.skipped_steps,
        skipped_batches=record.skipped_batches,
    )


def _stop_description(record: StepRecord, swept: list[float], monitor: DivergenceMonitor, config: Any) -> str:
    """Why the sweep ended, in a sentence that says what to change if that was wrong."""
    if record.stop_reason == "diverged":
        return (
            f"The test stopped at lr {swept[-1]:.3g} after {len(swept)} steps because it judged the loss diverged: "
            f"its running average rose to {monitor.last:.4g}, more than "
            f"`divergence_threshold={config.divergence_threshold:g}` times its best ({monitor.best:.4g}). If that was "
            "batch noise, raise `divergence_threshold`."
        )
    if record.stop_reason == "non-finite":
        return f"The test stopped at lr {swept[-1]:.3g} after {len(swept)} steps: the loss became NaN/inf."
    return f"The sweep ended after {len(swept)} steps ({record.stop_reason})."


def _no_curve_message(record: StepRecord, lrs: list[float]) -> str:
    """Why the range test recorded too few points to read, and what to do about it."""
    n = len(record.losses)
    at = f" (lr {lrs[n]:.3g})" if n < len(lrs) else ""
    advice = (
        "Check that `training_step` returns a finite loss for your data, or start the sweep lower with "
        "`SuperConvergence(lr_range=(start, end))`, or pass `max_lr=` to skip the range test."
    )
    if record.stop_reason == "non-finite":
        why = f"the loss was non-finite (NaN/inf) after {n} step(s){at}"
    elif record.stop_reason == "diverged":
        why = f"the loss diverged after {n} step(s){at}"
    elif record.stop_reason == "scaler-skips":
        why = (
            f"the gradient scaler skipped {record.skipped_steps} steps in a row (inf/NaN gradients at every loss "
            f"scale) after {n} step(s){at}"
        )
    elif record.stop_reason == "data-exhausted":
        why = (
            f"the train dataloader ran out after {n} step(s) and yielded nothing when restarted (data that can be "
            "read only once)"
        )
        advice = (
            "Give the dataset an `__iter__` that starts over on each call, or pass `max_lr=` to skip the range test."
        )
    else:
        why = f"only {n} step(s) ran"
        advice = "Raise `num_steps`, or pass `max_lr=` to skip the range test."
    return f"The range test could not read a loss curve: {why}. {advice} The model and optimizer were restored."
