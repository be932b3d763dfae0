r"""The LR range test as an engine.

One public entry point, :func:`run_range_test`, that the ``SuperConvergence`` callback and
:func:`~lightning_superconv.find_max_lr` both call.

:func:`run_range_test` takes a ``Trainer`` at fit start (the strategy has wrapped the model and set up the optimizer)
and does the whole job: load the train data, take the sweep's steps in a :func:`~lightning_superconv.sandbox.sandbox`
(snapshot, isolated RNG, quiet trainer; everything restored however it ends), read the curve, pick the maximum LR,
and explain in a clear error whatever makes the curve unreadable. Nothing of its own is written to disk, so no shared
filesystem is needed across machines (the trainer's callbacks and ``self.log`` are silenced; a module's own direct
writes to a logger's experiment are not). Lightning keeps its own finder's engine (``tuner/lr_finder.py``) apart
from its callback in the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_superconv import _compat, _trainer
from lightning_superconv._validation import check_choice, check_integer, check_number, check_pair
from lightning_superconv.branches import (
    Branch,
    DataRanOutError,
    HeldOutBatches,
    UnscorableBatchesError,
    run_branches,
    scored_batches,
)
from lightning_superconv.curve import (
    DivergenceMonitor,
    SweepMode,
    descent,
    lr_sweep,
    median_half_width,
    rise_over_best,
    running_median,
)
from lightning_superconv.param_groups import configured_lrs, detached_copy, group_ratios, write_lr
from lightning_superconv.peak import (
    MAX_TRIALS,
    OWN_LR_TRIALS,
    all_equal,
    choose,
    next_peak,
    own_lr_peak,
    rise_index,
    start_level,
    trial_length,
    trial_traces,
    usable,
)
from lightning_superconv.result import RangeTestResult
from lightning_superconv.sandbox import refuse_lazy_modules, sandbox, unrestored
from lightning_superconv.schedule import OneCycleConfig
from lightning_superconv.steps import MAX_CONSECUTIVE_SKIPPED_BATCHES, NoLossError, StepRecord, take_steps

#: The module's hooks Lightning calls after the callbacks' ``on_fit_start`` (where the range test runs) and before
#: the first training step: state they set is not there yet while the range test trains.
TRAINING_START_HOOKS = ("on_fit_start", "on_train_start", "on_train_epoch_start")
#: The fewest range-test steps that can give a pick (see :class:`RangeTestConfig`).
MIN_STEPS = 10
#: The shortest trial cycle at a candidate peak (see :class:`RangeTestConfig`).
MIN_TRIAL_STEPS = 50


@dataclass(frozen=True)
class RangeTestConfig:
    r"""What the range test sweeps and when it stops, validated once.

    Attributes:
        lr_range: the first and last LR of the sweep, ``0 < start < end``.
        num_steps: optimizer steps of the sweep up to ``lr_range[1]`` (up to ``num_steps // 2`` more follow past it:
            :meth:`lrs`), at least 10 (:data:`MIN_STEPS`): the online divergence check
            averages about 10 losses before it trusts a best (at ``smoothing=0.9``), and the pick reads a running
            median of at least 3 neighbours off a curve that must fall, stay in its floor and rise; fewer points
            cannot show that.
        mode: ``"exponential"`` or ``"linear"`` spacing of the swept LRs.
        divergence_threshold: the sweep stops once the smoothed loss exceeds this many times its best (> 1); a best
            below zero: once it rises above it by one less than this many times its size.
        smoothing: EMA factor in [0, 1) of the online divergence check.
        trial_steps: steps of each trial cycle at a candidate peak; ``None`` (the default): a third of the run the
            peak is for, from 100 to 300 steps (:func:`~lightning_superconv.peak.trial_length`); 0: no trials, the
            pick is a quarter of the LR where the loss rose back; else at least 50: shorter cycles did not separate
            the candidates (measured on the pick zoo's tuning half, 50 steps chose a peak that collapsed a run that
            100 steps avoided).

    Raises:
        ValueError: if a value is out of range.
        TypeError: if a value has the wrong type.
    """

    lr_range: tuple[float, float] = (1e-6, 10.0)
    num_steps: int = 100
    mode: SweepMode = "exponential"
    divergence_threshold: float = 4.0
    smoothing: float = 0.9
    trial_steps: int | None = None

    def __post_init__(self) -> None:
        start, end = check_pair("lr_range", self.lr_range, "(start, end) of positive floats")
        check_number("lr_range[0]", start, low=0.0)
        check_number("lr_range[1]", end, low=0.0)
        if start >= end:
            raise ValueError(f"`lr_range` must rise: start < end, got start={start} and end={end}")
        check_integer(
            "num_steps",
            self.num_steps,
            MIN_STEPS,
            why="fewer range-test steps cannot show the loss fall, level off and rise",
        )
        object.__setattr__(self, "mode", check_choice("mode", self.mode, ("exponential", "linear")))
        check_number("divergence_threshold", self.divergence_threshold, low=1.0)
        check_number("smoothing", self.smoothing, low=0.0, high=1.0, low_inclusive=True)
        check_integer(
            "trial_steps", self.trial_steps, MIN_TRIAL_STEPS, zero_means="no trials", none_means="sized to the run"
        )
        object.__setattr__(self, "lr_range", (float(start), float(end)))
        object.__setattr__(self, "divergence_threshold", float(self.divergence_threshold))
        object.__setattr__(self, "smoothing", float(self.smoothing))
        object.__setattr__(self, "num_steps", int(self.num_steps))  # a NumPy integer too: plain, for checkpoints
        if self.trial_steps is not None:
            object.__setattr__(self, "trial_steps", int(self.trial_steps))
        # found in a review: ends near the limits of a float passed the checks above and swept NaN or inf (the ratio
        # of the ends overflows, or the steps past `lr_range[1]` do), and the error then blamed the module's own code
        swept = self.lrs(extended=True)
        step = next((i for i, lr in enumerate(swept) if not (math.isfinite(lr) and lr > 0)), None)
        if step is not None:
            raise ValueError(
                f"`lr_range` must give finite positive LRs over the sweep ({self.num_steps} steps, {self.mode}, and"
                f" up to {self.num_steps // 2} more past its end at the same pace): got lr_range={self.lr_range},"
                f" whose step {step} is {swept[step]}: bring its ends away from the limits of a float"
            )

    def trial_length(self, run_steps: int | None) -> int:
        """Steps of each trial cycle for a run of ``run_steps`` (0: no trials): as given, else sized to the run."""
        return trial_length(run_steps) if self.trial_steps is None else self.trial_steps

    def lrs(self, extended: bool = False) -> list[float]:
        """The swept LRs, one per step; ``extended``: followed by ``num_steps // 2`` more at the same pace."""
        lrs = lr_sweep(self.lr_range[0], self.lr_range[1], self.num_steps, self.mode)
        if extended:
            extra = self.num_steps // 2
            if self.mode == "exponential":
                ratio = lrs[-1] / lrs[-2]
                lrs += [lrs[-1] * ratio ** (k + 1) for k in range(extra)]
            else:
                step = lrs[-1] - lrs[-2]
                lrs += [lrs[-1] + step * (k + 1) for k in range(extra)]
        return lrs


def plan_line(who: str, config: RangeTestConfig, run_steps: int | None, restored: str) -> str:
    """The line said as the range test starts: what it takes at most, and when everything is put back.

    Found trying the package as a new user: a fit stayed silent for 19 s, some 20 epochs of its small model, before
    the range test's result. ``restored``: when the state comes back ("before training starts").
    """
    sweep = config.num_steps + config.num_steps // 2
    trials = config.trial_length(run_steps)
    then = (
        "and no trials (`trial_steps=0`)"
        if trials == 0
        else f"then up to {MAX_TRIALS} trial cycles of {trials} steps (up to {MAX_TRIALS + OWN_LR_TRIALS} where none "
        "of them learns), each scored on held-out batches"
    )
    return (
        f"{who}: running the LR range test: a sweep of up to {sweep} steps, {then}; the weights and all training "
        f"state are put back {restored}."
    )


def run_range_test(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    optimizer: Any,
    config: RangeTestConfig | None = None,
    cycle: OneCycleConfig | None = None,
    run_steps: int | None = None,
    who: str = "SuperConvergence",
) -> RangeTestResult:
    r"""Run the LR range test on the trainer's model, data and optimizer, try the candidate peaks, restore everything.

    1. The sweep: one optimizer step per LR, from ``lr_range[0]`` up, stopped once the loss has clearly diverged. If by
       ``lr_range[1]`` the loss has not risen back above where it started, the sweep goes on past it at the same pace
       (at most ``num_steps // 2`` more steps) until it has: a model trained at LR 20 needs a sweep beyond 10.
    2. The reading: the LR where the smoothed loss, after its lowest point, is back above its starting level
       (:func:`~lightning_superconv.peak.rise_index`), Smith's "where the loss starts to rise" made robust to a
       noisy floor. The candidate peaks are a quarter, a half and an eighth of it.
    3. The trials: from the same snapshot, a one-cycle of ``trial_steps`` steps (by default a third of ``run_steps``,
       from 100 to 300: :func:`~lightning_superconv.peak.trial_length`; the cycle's own shape, compressed) at
       each candidate, scored by the held-out loss (the validation data, else the training batches after those the
       trials train on); the lowest wins (:func:`~lightning_superconv.peak.choose`). With ``trial_steps=0``, the
       quarter.

    Call it at fit start (``on_fit_start``) or later, before training steps. Under DDP every rank calls it and all get
    the same result.

    Args:
        trainer: the ``Trainer``, its strategy and optimizer set up.
        pl_module: its LightningModule.
        optimizer: the optimizer to sweep (its param groups keep their LR ratios).
        config: the sweep and the trials (:class:`RangeTestConfig`).
        cycle: the shape of the cycle the trials run (default: torch's).
        run_steps: the optimizer steps of the run the peak is for, which sizes the trials when ``config.trial_steps``
            is None (unknown: 100-step trials).
        who: the name the warnings start with (found in a review: ``find_max_lr``'s said "SuperConvergence").

    Raises:
        MisconfigurationException: (of the trainer's distribution) if no curve can be read: the loss is NaN/inf or
            diverges from the very first steps, or never falls below its start; ``training_step`` returns None for
            every batch, the data runs out within 3 steps, or every trial diverged. The state is restored before the
            error propagates, and the message says what to change.

    Warns:
        RuntimeWarning: if the loss fell by less than ``CLEAR_FALL`` standard errors of its noise and no trial
            showed the pick learns (none ran, or none learned): the pick is installed, but may be noise; if no trial
            learned (:func:`~lightning_superconv.peak.learned`): the least bad is installed, but may train poorly; if
            ``training_step`` cannot score the validation batches: the trials score training batches instead; if it
            cannot score those either (in eval mode without gradients): no trials, the sweep's pick.
    """
    config = config or RangeTestConfig()
    cycle = cycle or OneCycleConfig()
    lrs = config.lrs(extended=True)
    ratios = group_ratios(optimizer)
    monitor = DivergenceMonitor(config.divergence_threshold, config.smoothing)
    half_width = median_half_width(config.num_steps)
    seen: list[float] = []
    # `estimated_stepping_batches` loads the train dataloader, except when `max_epochs=-1` (which `Trainer(max_steps=N)`
    # alone implies): load it here, as the fit loop would
    _compat.setup_train_data(trainer)
    _trainer.refuse_sequential_train_data(trainer, "The range test")

    written: list[float] = []  # the first group's LR as written: a float32 Tensor holds it rounded

    def set_lr(step: int) -> None:
        # also here: a batch `training_step` skipped (returned None) is never checked (found in a review)
        _refuse_a_group_added(trainer, len(optimizer.param_groups), len(ratios), step)
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            write_lr(group, lrs[step] * ratio)
        written[:] = [float(optimizer.param_groups[0]["lr"])]

    def check(step: int, loss: float) -> str | None:
        _refuse_a_group_added(trainer, len(optimizer.param_groups), len(ratios), step)
        _refuse_an_lr_the_module_set(trainer, float(optimizer.param_groups[0]["lr"]), written[0], step)
        reason = monitor.update(loss)
        seen.append(loss)
        if reason is not None or step + 1 < config.num_steps:
            return reason
        # at or past `lr_range[1]`: go on only while the loss has not risen back above where it started
        # above it by more than rounding: a flat loss's debiased average may read 1.0000000000000002 against 1.0
        # (found in a review: such a sweep stopped, said to have "rose")
        level = start_level(seen, half_width)
        if monitor.last > level and not math.isclose(monitor.last, level, rel_tol=1e-9):
            return "completed" if step + 1 == config.num_steps else "rose"
        return None

    # before the sweep's notes on errors from its steps: no step runs (found in a review: the note sent the user to
    # their data)
    refuse_lazy_modules(trainer, pl_module)
    try:
        with sandbox(trainer, pl_module, optimizer):
            record = take_steps(trainer, pl_module, optimizer, len(lrs), set_lr, check)
    except NoLossError as err:
        raise _compat.misconfiguration(trainer, _no_loss_message(err, who)) from err
    except Exception as err:
        _note_where(err, "sweep")
        if isinstance(err, AttributeError) and hasattr(err, "add_note"):  # Python >= 3.11
            hooks = [name for name in TRAINING_START_HOOKS if _compat.overrides_hook(pl_module, name)]
            if hooks:
                err.add_note(_start_hooks_note(pl_module, hooks))
        raise
    swept = [lrs[i] for i in record.steps]
    if len(record.losses) < 3:
        raise _compat.misconfiguration(trainer, _no_curve_message(record, lrs, who))
    if record.stop_reason == "data-exhausted":
        _compat.rank_zero_warn(
            trainer,
            f"{who}: the train dataloader ran out after {len(record.losses)} range-test steps and "
            "yielded nothing when restarted, so its data can be read only once: the range test stopped there, "
            "and training gets only what is left. Give the dataset an `__iter__` that starts over on each call.",
        )
    smoothed = running_median(record.losses, half_width)
    stopped = _stop_description(record, swept, monitor, config)
    fell = descent(record.losses, smoothed, half_width)
    blown_up = _blown_up_from_the_start(record.losses, swept)
    if fell.fall <= 0 and blown_up:
        # found trying the package as a new user: a loss scaled by 1e8 blew up at the sweep's first LR, and the
        # message named a start of 1.8e24 read from the blown-up losses, and nothing of `lr_range[0]`
        raise _compat.misconfiguration(
            trainer,
            f"The range test found no usable maximum LR: {blown_up} {stopped} The model and optimizer were restored.",
        )
    window = 2 * half_width + 1
    if fell.fall <= 0 and len(record.losses) <= window:
        # found in a review: a loss that fell for seven steps and then was NaN, in a sweep of 200 steps (a window of
        # 13), was said never to have fallen: the start level and the running median were both read from all seven
        raise _compat.misconfiguration(
            trainer,
            f"The range test found no usable maximum LR: the sweep ran {len(record.losses)} steps, too few to read a "
            f"fall from (its start level and its smoothed curve are medians over {window} losses: {half_width} on "
            f"each side, 3 % of `num_steps={config.num_steps}`, at least 1). {stopped} Start the sweep lower with "
            "`lr_range=(start, end)`, or pass `SuperConvergence(max_lr=...)`. The model and optimizer were restored.",
        )
    if fell.fall <= 0:
        raise _compat.misconfiguration(
            trainer,
            f"The range test found no usable maximum LR: the loss never fell below where it started "
            f"({fell.start_level:.4g}) anywhere in the sweep from lr {swept[0]:.3g} to {swept[-1]:.3g}. {stopped} The "
            "model may not be learning (check the loss and the data), or the sweep does not reach LRs that train it: "
            "widen `lr_range`, or pass `SuperConvergence(max_lr=...)`. The model and optimizer were restored.",
        )
    _warn_of_a_sweep_that_starts_blown_up(trainer, record.losses, swept, who)
    rise = rise_index(smoothed, fell.start_level, fell.lowest)
    rose = smoothed[rise] > fell.start_level
    # a sweep stopped by a loss that blew up (the online check) ends in a divergence that the centred running median,
    # made to pass over single batches, may not show yet: the LR it stopped at is where the loss diverged
    # (and gradients inf/NaN at every loss scale a gradient scaler tried: found in a review, read as no divergence,
    # with advice about optimizers that bound their own step)
    diverged = record.stop_reason in ("diverged", "non-finite", "scaler-skips")
    if rose:
        reading = f"the smoothed loss is back above its start ({fell.start_level:.3g}) at lr {swept[rise]:.3g}"
    elif diverged:
        # a NaN/inf loss, or a skipped step, is not recorded: it came at the step after the last swept (found in a
        # review)
        where = "at" if record.stop_reason == "diverged" else "at the step after"
        what = (
            "its gradients were inf/NaN at every loss scale"
            if record.stop_reason == "scaler-skips"
            else "the loss diverged"
        )
        reading = (
            f"{what} {where} lr {swept[rise]:.3g}, where the sweep stopped ({record.stop_reason}), before "
            f"its smoothed curve was back above its start ({fell.start_level:.3g})"
        )
    else:
        reading = (
            f"the sweep ended at lr {swept[rise]:.3g} ({record.stop_reason}) before the loss was back above its start"
        )
    trials: list[dict[str, float]] = []
    trial_steps = config.trial_length(run_steps)
    ran_out = False  # the train data ran out in the trials
    # the sweep's lowest smoothed loss and its LR: a trial stuck above it with over half the start left learned nothing
    bottom = fell.lowest
    lowest = smoothed[bottom]
    if trial_steps:
        peaks: list[float] = []
        # the param groups as configured (the trials move the real ones), to build each trial's cycle from
        configured, _ = detached_copy(optimizer)
        own_lr = configured_lrs(optimizer)[0]
        own_from: int | None = None  # where among the peaks the trials from the optimizer's own LR up start

        def plan(scores: list[float]) -> Branch | None:
            nonlocal own_from
            peak = None
            if own_from is None:
                peak = next_peak(swept[rise], peaks, usable(scores, fell.start_level, lowest), lowest_lr=swept[bottom])
            if peak is None:
                peak = own_lr_peak(own_lr, peaks, scores, fell.start_level, lowest, own_from)
                if peak is not None and own_from is None:
                    own_from = len(peaks)
            if peak is None:
                return None
            peaks.append(peak)
            return Branch(trial_traces(configured, peak, trial_steps, cycle), label=peak)

        validation = HeldOutBatches.validation(trainer)
        scores: list[float] | None = None
        passed_over: UnscorableBatchesError | None = None
        try:
            if validation is not None:
                try:
                    scores, _ = run_branches(trainer, pl_module, optimizer, plan, validation)
                except UnscorableBatchesError as err:
                    # everything the trials changed is back: try again on the training batches after the trials' own
                    validation, passed_over = None, err
                    peaks.clear()
                    own_from = None
            if scores is None:
                scores, trial_steps = _score_on_training_batches(
                    trainer, pl_module, optimizer, plan, passed_over, trial_steps, who
                )
                if not trial_steps:
                    peaks.clear()
        except DataRanOutError as err:  # everything the trials changed is back
            _compat.rank_zero_warn(
                trainer,
                f"{who}: {err} in the range test's trials, so its data can be read only once: the pick is "
                "the sweep's alone, as with `trial_steps=0`, and training gets only what is left. Give the dataset an "
                "`__iter__` that starts over on each call.",
            )
            trial_steps, ran_out = 0, True
            peaks.clear()
        except Exception as err:
            _note_where(err, "trials")
            raise
    if trial_steps:
        assert scores is not None
        trials = [{"peak": p, "held_out_loss": s} for p, s in zip(peaks, scores, strict=True)]
        if validation is None:
            _say_if_the_trials_trained_on_what_they_were_scored_on(trainer, trial_steps, who, passed_over is not None)
        try:
            verdict = choose(peaks, scores, trial_steps, fell.start_level, lowest)
        except ValueError as err:
            raise _compat.misconfiguration(
                trainer,
                f"The range test found no usable maximum LR: {err} ({reading}). {stopped} Pass "
                f"`SuperConvergence(max_lr=...)` below {min(peaks):.3g}. A loss that turns NaN or inf in every trial, "
                "down to LRs this low, may come from the data rather than the LR: a sample or target holding a NaN or "
                "inf (each trial meets the same batches) gives a NaN loss at any LR, and so does a loss that is "
                "infinite on some samples (CTC on an input shorter than its target: `CTCLoss(zero_infinity=True)`); "
                "check the data and the loss first. The model and optimizer were restored.",
            ) from err
        max_lr, reason = peaks[verdict.index], f"{reading}; {verdict.reason}"
        if all_equal(scores):
            finite = [(peak, score) for peak, score in zip(peaks, scores, strict=True) if math.isfinite(score)]
            blown = len(scores) - len(finite)  # trials that diverged
            _compat.rank_zero_warn(
                trainer,
                f"{who}: every trial {'that did not diverge ' if blown else ''}left the same held-out loss "
                f"({finite[0][1]:.6g}) at peaks from {min(p for p, _ in finite):.3g} to {max(p for p, _ in finite):.3g}"
                f"{f' ({blown} diverged)' if blown else ''}: what the trials score does not change as the model "
                f"trains, so they chose nothing (max_lr={max_lr:.3g} left the lowest, by under a millionth). The "
                "held-out loss is "
                "`training_step`'s on validation batches in eval mode; it may read weights the trials do not move, "
                "such as an average of the weights (EMA) that your module updates in a hook of its own "
                "(`on_train_batch_end`): the range test runs `training_step`, `backward` and the optimizer step, not "
                "the batch hooks. Or it "
                "scores the same samples whatever batch it is given: a `training_step` that selects its training "
                "samples itself (a mask of training nodes on a whole graph, as in PyTorch Geometric's node "
                "classification) scores them on the validation batches too, where a small training set can reach the "
                "same loss, such as 0, at every peak. Pass `SuperConvergence(max_lr=...)`, or `trial_steps=0` to take "
                "a quarter of where the loss rose back.",
            )
        elif not verdict.learned:
            also = f", nor from your optimizer's own LR ({own_lr:.3g}) up, tried last" if own_from is not None else ""
            _compat.rank_zero_warn(
                trainer,
                f"{who}: no trial learned: none ended a tenth below where the range test's loss started "
                f"({fell.start_level:.4g}) and below the sweep's own lowest loss ({lowest:.4g}, at lr "
                f"{swept[bottom]:.3g}; or, above it, with under half of the start left), even at {min(peaks):.3g}, the "
                f"lowest peak tried{also}; the least bad, max_lr={max_lr:.3g}, may train poorly: every peak tried may "
                "have killed the network (its loss at chance, or collapsed to one output for every input), or the "
                "held-out loss barely moves in a trial's few steps (a validation set unlike the training data, a task "
                f"with little to learn){_slow_batch_norm_note(pl_module)}. Look at the curve (`result.plot()`), or "
                "pass `SuperConvergence(max_lr=...)`.",
            )
        elif own_from is not None and verdict.index >= own_from:
            _compat.rank_zero_warn(
                trainer,
                f"{who}: no trial at the peaks read off the range test's curve learned ({reading}); one "
                f"from your optimizer's own LR ({own_lr:.3g}) up did, tried last, so the cycle peaks there: "
                f"max_lr={max_lr:.3g}. The curve's lowest point and rise may be batch noise (`result.plot()`): a "
                "larger `num_steps`, or `SuperConvergence(max_lr=...)`, may find a better peak.",
            )
            reason = f"{reason} (the trials from your optimizer's own LR up ran once no other trial had learned)"
        confirmed = verdict.learned
        # the trials from the optimizer's own LR up, above where the sweep ended, gave the pick
        from_own = own_from is not None and verdict.index >= own_from and max_lr > swept[-1] and own_lr > swept[-1]
    else:
        # no trials asked for, or none that could score (found in a review: the reason named `trial_steps=0`, which
        # the user had not set)
        why = (
            "`trial_steps=0`: no trials"
            if not config.trial_length(run_steps)
            else "the train data ran out in the trials"
            if ran_out
            else "the trials could not score"
        )
        max_lr, reason = swept[rise] * 0.25, f"{reading}; a quarter of it ({why})"
        confirmed = from_own = False
    if not rose and not diverged and from_own:
        # found trying the package as a new user: with `lr_range=(1e-3, 2e-3)` the warning below blamed the pick on
        # the sweep's end (and on optimizers that bound their step) while the trials from the user's LR had given it
        _compat.rank_zero_warn(
            trainer,
            f"{who}: the range test's loss never rose back above where it started ({fell.start_level:.4g}) "
            f"up to lr {swept[-1]:.3g}, where the sweep ended ({record.stop_reason}), below your optimizer's own LR "
            f"({own_lr:.3g}): the pick, max_lr={max_lr:.3g}, came from the trials from that LR up, not from a "
            "divergence. Widen `lr_range` upwards to read where the loss diverges, or pass "
            "`SuperConvergence(max_lr=...)`.",
        )
    elif not rose and not diverged:
        _compat.rank_zero_warn(
            trainer,
            f"{who}: the range test's loss never rose back above where it started ({fell.start_level:.4g}) "
            f"up to lr {swept[-1]:.3g}, where the sweep ended ({record.stop_reason}): there was no divergence to read "
            f"the peak from, and max_lr={max_lr:.3g} comes from the sweep's end. LRs this high may change nothing in "
            "your setup: an optimizer that bounds its own step (`torch.optim.Adafactor` steps by min(lr, 1/sqrt(step)) "
            "of each weight's size), gradients clipped by norm under an adaptive optimizer, or a loss that saturates. "
            "Look at the curve (`result.plot()`), widen `lr_range`, or pass `SuperConvergence(max_lr=...)`.",
        )
    # a trial that learned at the pick answers the doubt: the advice below would cost such a run what the pick gained
    if not fell.clear and not confirmed:
        _compat.rank_zero_warn(
            trainer,
            f"{who}: the range test's loss fell only from {fell.start_level:.4g} to "
            f"{fell.start_level - fell.fall:.4g}, while batch-to-batch noise alone moves its smoothed curve by about "
            f"{fell.noise:.2g}: the reading (max_lr={max_lr:.3g}) may be noise. {stopped} If the model learns "
            "little at this batch size, pass `SuperConvergence(max_lr=...)` (your own LR is a safe start), or raise "
            "`num_steps` for more points per decade.",
        )
    return RangeTestResult(
        lrs=swept,
        losses=record.losses,
        smoothed=smoothed,
        max_lr=max_lr,
        pick_index=rise,
        pick_reason=reason,
        stop_reason=record.stop_reason,
        skipped_steps=record.skipped_steps,
        skipped_batches=record.skipped_batches,
        trials=trials,
    )


def _slow_batch_norm_note(pl_module: _compat.LightningModule) -> str:
    """Why no trial may have learned where BatchNorm's running statistics move slowly; empty where none do.

    The trials score in eval mode, where BatchNorm normalizes by its running statistics: at a momentum of 0.01
    (torchvision's MobileNetV3 and EfficientNet) they keep most of the untrained network's after a trial's 100 steps,
    and a network that learned scores as one that did not (found trying the package as a new user: LRASPP's trials all
    "learned nothing", the pick fell back to the optimizer's own LR, and a peak 40x higher trained the run far better).
    """
    norms = [m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    slow = [m for m in norms if m.track_running_stats and (m.momentum is None or m.momentum < 0.1)]
    if not slow:
        return ""
    momenta = sorted({"None (a cumulative average)" if m.momentum is None else f"{m.momentum:g}" for m in slow})
    return (
        f"; or, as {len(slow)} of your {len(norms)} BatchNorm layers have a momentum of {' or '.join(momenta)}, their "
        "running statistics, which the trials score by (in eval mode), may still describe the untrained network after "
        "a trial's few steps, so that a network that learned scores as one that did not: a BatchNorm momentum of 0.1 "
        "(PyTorch's default) lets the trials see what the network learned"
    )


def _refuse_a_group_added(trainer: _compat.Trainer, groups: int, had: int, step: int) -> None:
    """Raise where the optimizer gained a param group during a sweep step: the sweep has no LR to give it.

    Found trying the package as a new user: a module that built its head in its first training forward and handed it
    to the optimizer there (``add_param_group``) failed with a bare ``zip()`` error, blamed on the train batches.
    """
    if groups == had:
        return
    raise _own(
        _compat.misconfiguration(
            trainer,
            f"The optimizer had {had} param group{'s' if had != 1 else ''} when the range test started and {groups} "
            f"at its step {step}: your module adds one while it trains (`add_param_group` in `training_step`, the "
            "forward or a hook), so the range test has no LR to sweep it with. Build those parameters before `fit` "
            "(in `__init__`, `setup` or `configure_model`) and give them to the optimizer in `configure_optimizers`, "
            "or pass `SuperConvergence(max_lr=...)`: the cycle takes in a group added during training at the ratio of "
            "its LR to the first group's when it joins, as it does `BackboneFinetuning`'s. The model and optimizer "
            "were restored.",
        )
    )


def _own(err: Exception) -> Exception:
    """Mark an error whose message says what to change: no note on where the range test raised it is added."""
    setattr(err, _OWN_MESSAGE, True)
    return err


_OWN_MESSAGE = "_lightning_superconv_says_what_to_change"


def _refuse_an_lr_the_module_set(trainer: _compat.Trainer, found: float, set_to: float, step: int) -> None:
    """Raise where the LR the sweep set for a step was changed during it: the curve would not be the sweep's.

    Found trying the package as a new user: a warm-up in ``on_before_optimizer_step`` (``global_step`` is 0 in every
    range-test step) held the LR at 5e-4 through the whole sweep; the curve never rose, the trials scored alike, and
    a peak of 8576 was installed.
    """
    if found == set_to:
        return
    raise _own(
        _compat.misconfiguration(
            trainer,
            f"The range test set the LR of its step {step} to {set_to:.4g}, and it was {found:.4g} after the step: "
            "your module sets the LR itself (a warm-up in `on_before_optimizer_step` or `training_step`, a scheduler "
            "it steps by hand), so the range test cannot sweep it. The one-cycle has a warm-up of its own: remove "
            "yours, or pass `SuperConvergence(max_lr=...)` (your code then overrides the cycle's LR where it sets its "
            "own). The model and optimizer were restored.",
        )
    )


def _warn_of_a_sweep_that_starts_blown_up(
    trainer: _compat.Trainer, losses: Sequence[float], swept: Sequence[float], who: str
) -> None:
    r"""Say so where every loss after the first is over three times the first: the sweep started above divergence.

    The first loss is the model's as given (before the first step); the reading takes its start from the first tenth
    of the sweep, which is then already blown up, and every trial below it looks as if it learned (found trying the
    package as a new user: `lr_range=(50, 1000)` picked a peak whose held-out loss was at chance, and said it did
    best).
    """
    said = _blown_up_from_the_start(losses, swept)
    if said:
        _compat.rank_zero_warn(trainer, f"{who}: {said}")


def _blown_up_from_the_start(losses: Sequence[float], swept: Sequence[float]) -> str:
    """What to say of a sweep whose every loss after the first is over three times the first ("": it is not one)."""
    first, later = losses[0], min(losses[1:])
    head = max(3, len(losses) // 10)
    # every later loss over three times the first, and the head's median over ten times it: a noisy first batch alone
    # (heavy-tailed losses at a small batch size) rarely does both
    if not (first > 0 and later > 3 * first and statistics.median(losses[1:head]) > 10 * first):
        return ""
    return (
        f"the range test's loss was {first:.4g} before its first step and at least {later:.4g} at every step after "
        f"it: the sweep starts, at lr {swept[0]:.3g}, above where this model's loss diverges, and the reading (its "
        "start included) is taken from a blown-up model. Lower `lr_range[0]` (the default starts at 1e-6), or pass "
        "`SuperConvergence(max_lr=...)`."
    )


def _score_on_training_batches(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    optimizer: Any,
    plan: Callable[[list[float]], Branch | None],
    passed_over: UnscorableBatchesError | None,
    trial_steps: int,
    who: str,
) -> tuple[list[float], int]:
    """Run the trials scored on the training batches after their own; ``([], 0)`` where those cannot be scored.

    The fallback that the README's step 3 promises: a `training_step` that gives no loss in eval mode leaves the pick
    to the sweep alone, with one warning that names why (and why the validation batches could not be used either).
    """
    try:
        scores, _ = run_branches(trainer, pl_module, optimizer, plan, None)
    except UnscorableBatchesError as err:
        # the validation batches first, where they were given (found trying the package as a new user: the training
        # batches' failure led, with the validation batches the user gave in parentheses)
        what = (
            f"the validation batches ({passed_over}), nor held-out training batches ({err})"
            if passed_over is not None
            else f"held-out training batches: {err}"
        )
        _compat.rank_zero_warn(
            trainer,
            f"{who}: the trials cannot score {what}. The pick is "
            "the sweep's alone, as with `trial_steps=0`. The trials score `training_step`'s loss in eval mode "
            "without gradients, as validation runs; pass `SuperConvergence(max_lr=...)` to choose the peak yourself.",
        )
        return [], 0
    if passed_over is not None:
        _compat.rank_zero_warn(
            trainer,
            f"{who}: the trials score each candidate peak by the `training_step` loss on the "
            f"validation batches, but {passed_over}; they scored the training batches after those the "
            "trials train on instead. Make `training_step` (and the batch transfer hooks) accept validation "
            "batches to have the peak chosen on them.",
        )
    return scores, trial_steps


def _say_if_the_trials_trained_on_what_they_were_scored_on(
    trainer: _compat.Trainer, trial_steps: int, who: str, validation_unscorable: bool = False
) -> None:
    r"""Say so when the training batches the trials are scored on hold samples the trials trained on.

    Without validation data (or with validation batches ``training_step`` cannot score: ``validation_unscorable``)
    the trials are scored on the training batches that follow the ones they train on. Where a trial's batches and
    those run past the end of an epoch, the scored ones come from the next epoch, which draws the same samples again
    (in a new order, if shuffled): the score is then partly or wholly a training loss, which favours a peak that fits
    the training data over one that generalizes.
    """
    batches = trainer.num_training_batches
    if not _trainer.epoch_length_known(trainer):
        return  # a stream: whether a pass ended within a trial is unknown
    trained = trial_steps * max(int(trainer.accumulate_grad_batches), 1)
    scored = scored_batches(trial_steps)
    if trained + scored <= batches:
        return
    if validation_unscorable:
        why = "`training_step` cannot score this run's validation batches (see the warning above)"
        fix = "Make `training_step` accept the validation batches"
    elif trainer.limit_val_batches == 0:
        # found in a review: validation data given, and "this run has no validation data. Give `fit` validation data"
        why = "`limit_val_batches=0` leaves no validation batch to score"
        fix = "Give `fit` validation data and a `limit_val_batches` above 0"
    else:
        why, fix = "this run has no validation data", "Give `fit` validation data"
    _compat.rank_zero_info(
        trainer,
        f"{who}: {why}, so the trials were scored on training batches: the {scored} after the {trained} "
        f"each trial trains on ({trial_steps} steps). Together they span more than an epoch ({int(batches)} batches), "
        "so the scored batches hold samples the trials trained on, and the pick was judged partly or wholly by "
        f"training loss. {fix} to judge it on samples the trials never see.",
    )


def _start_hooks_note(pl_module: _compat.LightningModule, hooks: list[str]) -> str:
    name = type(pl_module).__name__
    own = ", ".join(f"{name}.{hook}" for hook in hooks)
    return (
        f"The range test runs in a callback's `on_fit_start` (SuperConvergence's, or find_max_lr's), which Lightning "
        f"calls before {own}: if the missing attribute is set there, it is not there yet while the range test trains. "
        "Set it in `__init__` or `setup`, or pass `SuperConvergence(max_lr=...)`, which runs no range test."
    )


def _note_where(err: Exception, phase: str) -> None:
    """Say on an error from the range test's own steps where it came from, and what was put back.

    Found trying the package as a new user: a BatchNorm model whose last batch held one sample trained its 20 steps
    without the callback, and with it failed with torch's bare "Expected more than 1 value per channel" from a sweep
    that had read past the end of the epoch.
    """
    if getattr(err, _OWN_MESSAGE, False):
        return
    if hasattr(err, "add_note") and not unrestored(err):  # Python >= 3.11; else the restore's own note says it
        # the advice on a one-sample batch for BatchNorm's own error only (found trying the package as a new user: a
        # dtype error of a model's own was sent to `drop_last=True`, which its loader already had)
        one_sample = "Expected more than 1 value per channel" in str(err)
        last_batch = (
            ", a smaller last batch among them (BatchNorm fails in training on a batch of one sample: pass "
            "`drop_last=True` to the DataLoader, or, where every batch holds one sample, a `batch_size` above 1)"
        )
        err.add_note(
            f"Raised in the LR range test's {phase}, which SuperConvergence (or find_max_lr) runs at fit start on "
            "batches of its own: it reads the train dataloader for as many steps as it needs, starting it over at "
            f"its end, so it can meet batches a short run never reaches{last_batch if one_sample else ''}. The "
            "model, the optimizer and the RNG streams were restored. `SuperConvergence(max_lr=...)` runs no range "
            "test."
        )


def _no_loss_message(err: NoLossError, who: str) -> str:
    return (
        f"The range test got no loss: {err} (Lightning skips a batch whose `training_step` returns None; the range "
        f"test moves its LR on to the next batch, and gives up after {MAX_CONSECUTIVE_SKIPPED_BATCHES} in a row). "
        f"Make `training_step` return the loss, or {_without_a_range_test(who)}. The model and optimizer were "
        "restored."
    )


def _without_a_range_test(who: str) -> str:
    """The advice to choose the peak without a range test, in the words of the API the user called.

    Found in a review: ``find_max_lr``'s errors told its users to "skip the range test" they had asked for.
    """
    if who == "SuperConvergence":
        return "pass `SuperConvergence(max_lr=...)` to skip the range test"
    return "choose the peak yourself: `SuperConvergence(max_lr=...)` runs no range test"


def _argument(who: str, given: str) -> str:
    """How the user passes a range-test argument (``given``: ``"name=value"``) to what they called."""
    return f"`find_max_lr(..., {given})`" if who == "find_max_lr" else f"`{who}({given})`"


def _stop_description(record: StepRecord, swept: list[float], monitor: DivergenceMonitor, config: Any) -> str:
    """Why the sweep ended, in a sentence that says what to change if that was wrong."""
    if record.stop_reason == "diverged":
        return (
            f"The test stopped at lr {swept[-1]:.3g} after {len(swept)} steps because it judged the loss diverged: "
            f"its running average rose to {monitor.last:.4g}, more than "
            f"{rise_over_best(monitor.best, config.divergence_threshold)} ({monitor.best:.4g}; "
            f"`divergence_threshold={config.divergence_threshold:g}`). If that was batch noise, raise "
            "`divergence_threshold`."
        )
    if record.stop_reason == "non-finite":
        # the NaN/inf loss is not recorded: its step is the one after the last swept (found in a review)
        return f"The test stopped after {len(swept)} steps (the last at lr {swept[-1]:.3g}): the next loss was NaN/inf."
    return f"The sweep ended after {len(swept)} steps ({record.stop_reason})."


def _no_curve_message(record: StepRecord, lrs: list[float], who: str) -> str:
    """Why the range test recorded too few points to read, and what to do about it."""
    n = len(record.losses)
    # a diverged loss is recorded, a NaN/inf one or a skipped step is not (found in a review: the LR of a step that
    # never ran was named)
    last = n - 1 if record.stop_reason == "diverged" else n
    at = f" (lr {lrs[last]:.3g})" if 0 <= last < len(lrs) else ""
    advice = (
        "Check that `training_step` returns a finite loss for your data, or start the sweep lower with "
        f"{_argument(who, 'lr_range=(start, end)')}, or {_without_a_range_test(who)}."
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
    elif record.stop_reason == "data-exhausted" and record.none_batches:
        # found in a review: a loader whose every batch is None was said to be one that can be read only once
        why = f"the train dataloader ran out after {n} step(s), its batches None ({record.none_batches} passed over)"
        advice = (
            f"Check its `collate_fn` and dataset, which gave no batch to train on, or {_without_a_range_test(who)}."
        )
    elif record.stop_reason == "data-exhausted":
        why = (
            f"the train dataloader ran out after {n} step(s) and yielded nothing when restarted (data that can be "
            "read only once)"
        )
        advice = f"Give the dataset an `__iter__` that starts over on each call, or {_without_a_range_test(who)}."
    else:
        why = f"only {n} step(s) ran"
        advice = f"Raise `num_steps`, or {_without_a_range_test(who)}."
    return f"The range test could not read a loss curve: {why}. {advice} The model and optimizer were restored."
