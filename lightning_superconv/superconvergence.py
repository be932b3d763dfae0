r"""The ``SuperConvergence`` callback: range test at fit start, max LR from where the loss rises, one cycle installed.

Thin hooks over the engines: :func:`~lightning_superconv.range_test.run_range_test` reads the peak,
:func:`~lightning_superconv.schedule.build_one_cycle` builds the cycle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from typing import Any, Literal

from typing_extensions import override

from lightning_superconv import _compat, _setups, _trainer
from lightning_superconv._logging import SCHEDULE_PREFIX, ScheduleLogger, log_range_test
from lightning_superconv._validation import check_bool, check_integer, check_number, check_state_version
from lightning_superconv.curve import SweepMode
from lightning_superconv.guard import (
    NONFINITE_REASON,
    SPREAD_SKIPS_REASON,
    DivergenceError,
    DivergenceGuard,
    GuardedCycle,
    Rescue,
)
from lightning_superconv.param_groups import configured_lrs, momentum_key, read_momentum, step_size_kind
from lightning_superconv.range_test import RangeTestConfig, plan_line, run_range_test
from lightning_superconv.result import RangeTestResult
from lightning_superconv.schedule import (
    OneCycleConfig,
    SafeOneCycleLR,
    build_one_cycle,
    groups_without_momentum,
    resolve_cycle_momentum,
    safe_pct_start,
    short_three_phase_warm_up,
)

# 3: the guard keeps its losses as `training_step` returned them (before, some or all divided by the accumulation)
_STATE_VERSION = 3

#: A cycle whose LR is still above this share of its peak has not annealed: its last phase falls by orders of
#: magnitude, to the peak over ``div_factor * final_div_factor`` (10^4 by torch's defaults).
ANNEALED = 0.1

_NO_STATE_TO_RESUME = (
    "`fit(ckpt_path=...)` resumes from a checkpoint that holds no `SuperConvergence` state: it was written by a run "
    "without this callback. Resuming would load that run's optimizer and scheduler "
    "state into a new one-cycle. Resume without `SuperConvergence`; or, to run a range test and a new cycle from the "
    "checkpoint's weights, start a new fit without `ckpt_path` (`model = YourModel.load_from_checkpoint(path)`, then "
    "`trainer.fit(model)`)."
)

_NO_CYCLE_TO_RESUME = (
    "`fit(ckpt_path=...)` resumes from a checkpoint whose `SuperConvergence` state has no cycle: it was written before "
    "the cycle was installed, e.g. by `OnExceptionCheckpoint` after an error inside the range test (the weights in it "
    "are those training started from). There is no cycle to continue: start a new fit without `ckpt_path` "
    "(`model = YourModel.load_from_checkpoint(path)`, then `trainer.fit(model)`), or resume without `SuperConvergence`."
)

_WEIGHTS_ONLY_CHECKPOINT = (
    "`fit(ckpt_path=...)` resumes from a checkpoint that holds the weights only (`ModelCheckpoint(save_weights_only="
    "True)`): no optimizer, scheduler or callback state, so there is no cycle to continue (Lightning itself cannot "
    "resume from it). Start a new fit from its weights: `model = YourModel.load_from_checkpoint(path)`, then "
    "`trainer.fit(model)` (a new range test and cycle, or `SuperConvergence(max_lr=...)`)."
)


class SuperConvergence(_compat.Callback):
    r"""Train with one cycle of a very large learning rate, its peak found by an LR range test on your own model.

    When ``fit`` starts, before the first training step, the callback runs Leslie Smith's LR range test on the
    model's own ``training_step`` loss, data and optimizer: the LR rises exponentially from ``lr_range[0]`` to
    ``lr_range[1]`` over ``num_steps`` optimizer steps (and on at the same pace for up to half as many more, where the
    loss has not diverged by then), and the test stops as soon as the loss has clearly diverged (see
    :class:`~lightning_superconv.curve.DivergenceMonitor`). The cycle's maximum LR is read where the loss, past its
    lowest point, rises back above where it started (Smith's "where the loss starts to rise"), *not* at the
    steepest slope: that point suits a constant LR and is typically orders of magnitude too small for a one-cycle
    peak. A quarter, a half and an eighth of that LR are then tried, each in a short one-cycle of ``trial_steps``
    steps (a third of the run, from 100 to 300) from the same snapshot, and the one that leaves the lowest held-out
    loss (validation data, else the training batches after the trials' own) is the peak; when the best lies at the
    edge, the search goes one rung further (see :func:`~lightning_superconv.range_test.run_range_test` and
    :mod:`lightning_superconv.peak`).

    Everything is then put back exactly as it was (parameters, buffers, optimizer state, gradient scaler, RNG streams,
    dataloader generators, torchmetrics states, tensors a module keeps outside its parameters; nothing is written to
    disk), and a :class:`torch.optim.lr_scheduler.OneCycleLR` sized by ``trainer.estimated_stepping_batches`` (each
    epoch's accumulation counted under a ``GradientAccumulationScheduler``) replaces
    any scheduler from ``configure_optimizers``. With several param groups, the configured LR ratios between groups
    are kept in the test and the cycle; ``max_lr`` is the first group's (timm's base LR under its layer decay: each
    group's ``lr_scale`` is in its ratio). The cycle's shape arguments are those of
    :class:`~lightning_superconv.schedule.OneCycleConfig` (torch's defaults, which fit Smith's advice).

    Optimizers that set their own step size: Prodigy and D-Adaptation treat ``lr`` as a multiplier of their own
    estimate, and AdamG as a cap on it, so no range test runs (a sweep of either measures nothing) and the cycle runs
    over the configured value. A Schedule-Free optimizer replaces the schedule altogether and is refused.

    Each ``fit`` plans its own cycle over the training steps it will run (a second ``fit`` on the same ``Trainer``
    continues from the step it reached, and gets a new cycle over the steps left). ``fit(ckpt_path=...)`` is a resume:
    the pick, the cycle and its position come from the checkpoint, and no range test runs; Lightning restores the
    callback's state before ``on_fit_start`` and the optimizer and the ``OneCycleLR`` state after it (the fresh
    scheduler installed at fit start is the object the checkpoint's state is loaded into), so the LR and momentum
    continue exactly where the interrupted run was. A run whose length differs from the checkpoint's keeps its cycle,
    with a warning: past its end the LR stays at the final value. ``ModelParallelStrategy`` restores the callback's
    state only after ``on_fit_start``, where the checkpoint's path is not yet known: without ``max_lr=`` a range test
    runs there and is discarded for the checkpoint's cycle, with a warning.

    Under DDP every rank runs the range-test steps in lockstep, the loss of each step is the mean over the ranks, and
    every rank reads the same curve and installs the same cycle; the range test writes nothing to disk of its own.
    ``ModelParallelStrategy`` (FSDP2, tensor parallelism) is served alike. The range test is not available under
    ``FSDPStrategy`` (FSDP1) and DeepSpeed (see the errors below).

    Args:
        max_lr: the cycle's maximum LR; when given, no range test runs. Once ``fit`` has started, the attribute holds
            the one the cycle runs (the given one or the pick; lowered by rescues).
        lr_range: the first and last LR of the range test, ``0 < start < end``.
        num_steps: optimizer steps of the sweep from ``lr_range[0]`` to ``lr_range[1]`` (>= 10, see
            :class:`~lightning_superconv.range_test.RangeTestConfig`), followed by up to ``num_steps // 2`` more past
            ``lr_range[1]``; it usually stops earlier, at divergence. The trials come on top.
        mode: ``"exponential"`` (default) or ``"linear"`` spacing of the swept LRs.
        divergence_threshold: the test stops once the smoothed loss exceeds this many times its best (> 1).
        smoothing: EMA factor in [0, 1) of the online divergence check (the reading uses a centered running median
            whose half width is 3 % of the sweep, a window of 7 steps of 100, without lag, see
            :func:`~lightning_superconv.curve.running_median`).
        trial_steps: steps of the short trial cycle run at each candidate peak. ``None`` (default): a third of the
            run, from 100 to 300 steps (:func:`~lightning_superconv.peak.trial_length`: a cycle compressed much more
            than that favoured peaks far below the best of long runs); 0: no trials; else >= 50.
        pct_start: fraction of the run spent raising the LR, in (0, 1).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: cycle momentum (``beta1``) inversely to the LR. ``None`` (default) cycles whenever the
            optimizer has momentum to cycle; an SGD built with ``momentum=0`` then keeps none (torch's OneCycleLR
            would switch it to 0.95), and an optimizer that sets its own step size keeps its own.
        base_momentum: momentum at the LR's peak, in [0, 1).
        max_momentum: momentum at the cycle's ends, in [``base_momentum``, 1).
        div_factor: the cycle starts at ``max_lr / div_factor`` (>= 1).
        final_div_factor: the cycle ends at ``max_lr / (div_factor * final_div_factor)`` (>= 1).
        three_phase: use torch's three-phase cycle (symmetric rise and fall, then a final annihilation).
        log_schedule: log LR and momentum of the first param group, and each group's weight decay, every
            ``log_every_n_steps`` steps.
        guard: watch the training loss; when it clearly diverges, roll back to an in-memory snapshot, lower the rest
            of the cycle and go on (:mod:`lightning_superconv.guard` says when and by how much).
        max_rescues: rescues allowed (>= 0); one more divergence raises
            :class:`~lightning_superconv.guard.DivergenceError`. With none left (``0`` from the start) the guard holds
            no copy of the weights.

    Attributes:
        rescues: one dict per rescue of the guard: ``step``, ``restored_step``, ``old_peak``, ``new_peak``, ``reason``.
        result: the :class:`~lightning_superconv.result.RangeTestResult`, or None when no range test ran.
        range_test: the range test's settings (:class:`~lightning_superconv.range_test.RangeTestConfig`).
        cycle: the cycle's shape (:class:`~lightning_superconv.schedule.OneCycleConfig`).

    Raises:
        ValueError: if an argument is out of range.
        TypeError: if an argument has the wrong type (a string, a bool or a float where an integer is asked for, too).
        MisconfigurationException: at fit start, for a setup the callback cannot serve: manual optimization, no
            optimizer, an unknown run length, a train dataloader without batches, Lightning's ``LearningRateFinder``
            in the same ``Trainer``, DeepSpeed, a range test under ``FSDPStrategy`` (FSDP1), a Schedule-Free
            optimizer, ``Rprop`` or ``LBFGS`` (an LR schedule means nothing to them), a first param group with LR 0,
            a resume from a checkpoint without this callback's state, a range test that reads no curve, or one on a
            lazy module whose weights do not exist yet; an optimizer with ``maximize=True`` where the range test or
            the guard would read the loss.
        ValueError: at fit start, for train data in ``CombinedLoader(mode="sequential")`` when a range test would run
            on it (Lightning trains on no such data, and refuses it when its first epoch starts), and for
            ``cycle_momentum=True`` on an optimizer with neither ``momentum`` nor ``betas``.

    Example::

        >>> import lightning as L
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[SuperConvergence()], logger=False)
    """

    def __init__(
        self,
        max_lr: float | None = None,
        lr_range: tuple[float, float] = (1e-6, 10.0),
        num_steps: int = 100,
        mode: SweepMode = "exponential",
        divergence_threshold: float = 4.0,
        smoothing: float = 0.9,
        trial_steps: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool | None = None,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        log_schedule: bool = True,
        guard: bool = True,
        max_rescues: int = 3,
    ) -> None:
        check_number("max_lr", max_lr, low=0.0, allow_none=True)
        log_schedule = check_bool("log_schedule", log_schedule)
        guard = check_bool("guard", guard)
        check_integer("max_rescues", max_rescues, 0)
        self.range_test = RangeTestConfig(lr_range, num_steps, mode, divergence_threshold, smoothing, trial_steps)
        self.cycle = OneCycleConfig(
            pct_start, anneal_strategy, cycle_momentum, base_momentum, max_momentum, div_factor, final_div_factor,
            three_phase,
        )  # fmt: skip
        self.requested_max_lr = None if max_lr is None else float(max_lr)
        self.log_schedule = log_schedule
        self.guard = guard
        self.max_rescues = int(max_rescues)

        self.max_lr: float | None
        self.result: RangeTestResult | None
        self.total_steps: int | None
        self._start_step: int
        self._restored: bool
        self._state_loaded: bool  # a checkpoint gave this fit a state of this callback (with a cycle or not)
        self._warned_stepping: bool  # said that the cycle is not stepped once per optimizer step
        self._told_the_end: int | None  # the step a resume said at its start the run ends at, elsewhere than its cycle
        self._range_test_to_log: bool  # this fit's range test is yet to be logged
        self._stops_at_start: dict[int, tuple[int, str]]  # each EarlyStopping's stop as training started (`_stop_of`)
        self._first_pass_read: bool  # the first epoch of this fit has ended (a stream's pass length is known)
        self._scheduler: SafeOneCycleLR | None
        self._group_count = 0
        self._logger: ScheduleLogger | None
        self._watch: GuardedCycle | None
        self._guard_state: dict[str, Any] | None
        self._guard_state_version: int
        self._checkpoint_cycle: dict[str, Any] | None  # the cycle's shape a checkpoint ran (None: not kept there)
        self.rescues: list[dict[str, Any]]
        # the Trainer whose loggers the last range test went to, and the first step after it: a second `fit` on that
        # Trainer logs its range test after the first's (`log_range_test`)
        # (by `id`: a reference would keep the Trainer alive, and a weak one cannot be pickled with the callback)
        self._range_test_logged: tuple[int, int] | None = None
        self._epochs_at_setup: int | None = None
        self._new_fit()

    # The state key is the class name alone (Lightning refuses a second instance with the same key when the Trainer is
    # built, and one optimizer can follow only one cycle anyway): a resume with changed arguments still finds its state.

    # ------------------------------------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _setups.claim_for_fit(trainer, self, "SuperConvergence")
        self._new_fit()
        self._epochs_at_setup = trainer.fit_loop.max_epochs  # before SWA's `on_fit_start` adds its BatchNorm epoch
        _setups.refuse_lr_finder(trainer, max_lr_given=self.requested_max_lr is not None)
        # A second SuperConvergence given to the Trainer never gets here: its state key equals the first one's, which
        # Lightning refuses when the Trainer is built; one from `configure_callbacks`, or a subclass, does
        _setups.refuse_a_second(trainer, self, SuperConvergence)
        # SWA's `on_fit_start` adds an epoch to `max_epochs` for its batch-norm pass, which has no optimizer step of
        # its own. Sizing the cycle after that would depend on the order of the callbacks list; so SWA moves behind
        # us (it does nothing before its start epoch, and its average starts from the weights the range test
        # restored).
        _setups.move_behind(trainer, self, _compat.callback_classes(trainer, "StochasticWeightAveraging"))
        problem = _setups.strategy_problem(trainer.strategy, range_test=self.requested_max_lr is None)
        if problem is not None:
            raise _compat.misconfiguration(trainer, problem)

    @override
    def on_fit_start(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        optimizer = _trainer.single_optimizer(trainer, pl_module, "SuperConvergence")
        kind = step_size_kind(optimizer)
        refusal = _setups.optimizer_refusal(optimizer, "SuperConvergence")
        if refusal is not None:
            raise _compat.misconfiguration(trainer, refusal)
        if self.requested_max_lr is None or self.guard:
            readers = [
                ("the range test's curve and trials", self.requested_max_lr is None),
                ("the divergence guard", self.guard),
            ]
            _trainer.refuse_maximize(
                trainer,
                optimizer,
                "SuperConvergence",
                " and ".join(reader for reader, reads in readers if reads),
                # name only what is left to pass (found in a review: the advice named `max_lr=` to a user who gave it)
                ("pass `guard=False`" if self.requested_max_lr is not None else "pass `max_lr=` and `guard=False`")
                + " (the cycle alone reads no loss)",
            )
        if _compat.fast_dev_run(trainer):
            _compat.rank_zero_info(
                trainer, "SuperConvergence: `fast_dev_run` is on, so no range test runs and the schedule is unchanged."
            )
            return
        if trainer.ckpt_path and not trainer.strategy.restore_checkpoint_after_setup:
            if _compat.checkpoint_to_resume(trainer):
                self._resume(trainer, optimizer)
                return
            # a checkpoint restored inside another callback's `on_fit_start` (BatchSizeFinder's own, written when this
            # fit started): all of it is loaded already, this is still a new fit
            if self.total_steps is not None:
                _warn_of_a_resume_dropped(trainer)
            self._new_fit()
        total_steps = _trainer.total_steps(trainer, "SuperConvergence")
        if total_steps == 0:
            # Lightning runs such a fit without a training step; a range test would train where the user asked not to
            _compat.rank_zero_info(
                trainer,
                "SuperConvergence: this run has no training steps (`max_steps=0`, `max_epochs=0` or "
                "`limit_train_batches=0`), so no range test runs and the schedule is unchanged.",
            )
            return
        start_step = int(trainer.global_step)
        steps = _trainer.steps_this_fit(trainer, total_steps)
        if steps == 0:
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: this Trainer has no training step left ({start_step} run, epoch "
                f"{trainer.current_epoch} of `max_epochs={trainer.max_epochs}`, `max_steps={trainer.max_steps}`: a "
                "second `fit` without a larger `max_epochs`/`max_steps`), so no range test runs and the schedule is "
                "unchanged.",
            )
            return
        if self.max_lr is None and kind != "multiplier" and _compat.overfit_batches(trainer):
            # found trying the package as a new user: its trials, made to choose a peak that generalizes, picked one
            # that overfit the batch worse than the user's own constant LR (a loss of 1.99 against 1.20)
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: `overfit_batches={_compat.overfit_batches(trainer)}` is on, a run that checks the "
                "model can fit a few batches: no range test runs (its pick is made for a model that generalizes) and "
                "the schedule is unchanged. Pass `max_lr=` to run the one-cycle at a peak of your own.",
            )
            return
        # a cycle will be built: what it would refuse is refused now, before the range test (found in a review: after
        # the whole sweep)
        refusal = _setups.cycle_refusal(optimizer, "SuperConvergence")
        if refusal is not None:
            raise _compat.misconfiguration(trainer, refusal)
        resolve_cycle_momentum(optimizer, self.cycle.cycle_momentum)
        _setups.check_first_group_lr(trainer, optimizer, "SuperConvergence")
        _warn_of_a_clock(trainer, steps)
        if self.max_lr is None and kind == "multiplier":
            self.max_lr = configured_lrs(optimizer)[0]
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: `{type(optimizer).__name__}` sets its own step size and reads `lr` as a multiplier "
                f"or a cap of it, so no range test runs (a sweep of it measures nothing about the model); the "
                f"one-cycle runs over the configured value, lr={self.max_lr:.4g}.",
            )
        elif self.max_lr is None:
            _trainer.refuse_dataloader_iter_steps(
                trainer, pl_module, "SuperConvergence's range test", "pass `max_lr=` (the cycle needs no range test)"
            )
            instead = "Pass `max_lr=`, e.g. from `find_max_lr` on the model with nothing frozen."
            _trainer.warn_of_a_frozen_backbone(trainer, "SuperConvergence", instead, steps)
            _compat.rank_zero_info(
                trainer, plan_line("SuperConvergence", self.range_test, steps, "before training starts")
            )
            self.result = run_range_test(trainer, pl_module, optimizer, self.range_test, self.cycle, run_steps=steps)
            self.max_lr = self.result.max_lr
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: range test picked max_lr={self.max_lr:.4g} after {len(self.result.lrs)} steps "
                f"(stopped: {self.result.stop_reason}); {self.result.pick_reason}.",
            )
            # a strategy that loads a checkpoint after fit start, where Lightning names none yet, discards this pick
            # on a resume (`on_train_start`): logged now, the resumed run's logger showed a curve and a pick no step
            # ran at (found in a review)
            self._range_test_to_log = bool(trainer.strategy.restore_checkpoint_after_setup)
            if not self._range_test_to_log:
                self._log_the_range_test(trainer)
        # a second `fit` on the same Trainer continues from the step it reached: the cycle spans the steps left
        self._start_step = start_step
        self._install_schedule(trainer, optimizer, steps, own_step_size=kind is not None)

    @override
    def on_train_start(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        # under a strategy that restores the checkpoint after `on_fit_start` (ModelParallelStrategy), where the data was
        # loaded to size the cycle (found in a review: a resume read its epoch's first batches again)
        _compat.load_resumed_train_loader_states(trainer)
        # a loaded guard state is handed to the guard now or never (`guard=False`): checkpoints from here on hold the
        # guard's own, or none
        guard_state, self._guard_state = self._guard_state, None
        self._stops_at_start = {
            id(stopper): _stop_of(stopper) for stopper in _compat.callbacks_of(trainer, "EarlyStopping")
        }
        if self._scheduler is None:
            return
        late = bool(trainer.ckpt_path) and trainer.strategy.restore_checkpoint_after_setup
        self._log_the_pending_range_test(trainer)  # a resume's, discarded: never
        if late:
            # FSDP, DeepSpeed and ModelParallel restore callback states only after `on_fit_start`: checked here
            if not self._restored:
                raise _compat.misconfiguration(trainer, self._nothing_to_resume())
            self._warn_of_arguments_given_anew(trainer)
            if self.requested_max_lr is None:
                # Lightning gives no callback the checkpoint's path before it loads it, after `on_fit_start`
                _compat.rank_zero_warn(
                    trainer,
                    f"SuperConvergence: `{type(trainer.strategy).__name__}` loads the checkpoint after fit start, "
                    "where the range test ran on the weights not yet restored; its pick is discarded and the resumed "
                    "run continues the checkpoint's cycle. Pass `max_lr=` to resume under this strategy without a "
                    "range test (the checkpoint's peak still applies).",
                )
        # on a resume, Lightning has loaded the checkpoint's OneCycleLR state into the scheduler installed at fit start
        self.total_steps = int(self._scheduler.total_steps)
        self._group_count = len(self._scheduler.optimizer.param_groups)
        if self.guard:
            self._watch = GuardedCycle(DivergenceGuard(), self._scheduler, self.max_rescues, len(self.rescues))
            if guard_state is not None:
                state = guard_state
                if self._guard_state_version < 3 and _trainer.accumulates(trainer):
                    # before version 3 the guard kept some or all of its losses on the hooks' scale (divided by the
                    # accumulation): its loss statistics are left out, and it reads where training started again
                    state = {key: state[key] for key in ("stall_check", "collapse_from") if key in state}
                self._watch.load_state_dict(state)
            self._watch.start(trainer, pl_module, self._scheduler.optimizer)
        if not self._restored:
            return
        range_test = "the range test run at fit start discarded" if late and self.requested_max_lr is None else None
        _compat.rank_zero_info(
            trainer,
            f"SuperConvergence: resumed the one-cycle at step {self._scheduler.last_epoch} of {self.total_steps} "
            f"(max_lr={self.max_lr:.4g}); {range_test or 'no range test'}.",
        )
        # (a new fit sized its cycle to the steps it runs; only a resume can disagree with them)
        planned = self._start_step + self.total_steps
        # StochasticWeightAveraging's epoch for BatchNorm statistics trains nothing (found in a review: counted, an
        # unchanged run resumed was told its length had changed)
        with _compat.without_swa_batch_norm_epoch(trainer, self._epochs_at_setup):
            end = _trainer.resumed_fit_end(trainer)
        if math.isfinite(end) and int(end) != planned:
            self._told_the_end = int(end)  # the end of training need not say it again, if it ends there
            final = float(self._scheduler.optimizer.param_groups[0]["min_lr"])
            outcome = (
                f"from step {planned} on, the LR stays at the cycle's final value {final:.3g} (the first param group's)"
                if end > planned
                else "the run ends before the LR has annealed"
            )
            why = (
                "the length changed since the checkpoint was written: `max_epochs`, `max_steps`, "
                "`limit_train_batches`, the accumulation or the data"
            )
            advice = "To train a new cycle over the new length, start a new fit from the checkpoint's weights instead"
            if _compat.resumes_mid_epoch(trainer) and _compat.callback_of(trainer, "GradientAccumulationScheduler"):
                # found trying the package as a new user: a crash-resume with nothing changed was told of a change
                why = (
                    "Lightning resumes the epoch the checkpoint was written inside without calling its "
                    "`on_train_epoch_start`, so the `GradientAccumulationScheduler` does not set that epoch's "
                    f"accumulation: its remaining batches step at {max(int(trainer.accumulate_grad_batches), 1)}; or "
                    + why
                )
                advice = (
                    "Checkpoints written at an epoch's end resume at the next epoch's start, where the scheduler "
                    "sets the accumulation. " + advice
                )
            _compat.rank_zero_warn(
                trainer,
                f"SuperConvergence: this run ends at step {int(end)}, but its one-cycle was planned to end at step "
                f"{planned} ({why}). The cycle continues as planned: {outcome}. {advice} of resuming.",
            )
            # the steps past the cycle are told here, with their cause: the cycle's own warning, which guesses at
            # causes, would come again when they run (found trying the package as a new user)
            self._scheduler.past_end_told()

    @override
    def on_train_epoch_end(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        self._stepped_once_per_step(trainer)
        # an epoch cut short by a stop (EarlyStopping, `max_time`) ends the run: its length is no pass's
        if self._scheduler is None or self._first_pass_read or self._restored or trainer.should_stop:
            return
        assert self.total_steps is not None
        if int(trainer.global_step) > self._start_step:
            self._first_pass_read = True
            _warn_if_the_epoch_limit_ends_a_stream_first(
                trainer, self._start_step, self._start_step + self.total_steps, _compat.epoch_ended_by_a_hook(trainer)
            )

    @override
    def on_exception(
        self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, exception: BaseException
    ) -> None:
        if not _setups.in_fit_of(trainer, self):
            return  # another Trainer refused this instance, in use by a fit that goes on: its guard stays
        _setups.release_from_fit(trainer, self)
        if self._watch is not None:
            self._watch.release()
        self._log_the_pending_range_test(trainer)

    @override
    def teardown(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, stage: str) -> None:
        if stage == "fit":
            _setups.release_from_fit(trainer, self)
            self._log_the_pending_range_test(trainer)

    @override
    def on_train_end(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        if self._watch is not None:
            self._watch.release()
        # a stop asked for (EarlyStopping, `max_time`) ends mid-cycle by design, and a stream's shortfall was told at
        # its first epoch's end; a run whose epochs came out shorter than planned would end silently, its LR high
        scheduler = self._scheduler
        if scheduler is not None and trainer.should_stop:
            _warn_of_a_stop_before_the_anneal(trainer, scheduler, self._stops_at_start)
            return
        told = self._told_the_end
        if scheduler is None or told == trainer.global_step or not _trainer.epoch_length_known(trainer):
            return
        left = int(scheduler.total_steps) - int(scheduler.last_epoch)
        if left <= 0 or not _trainer.scheduler_in_use(trainer, scheduler) or not self._stepped_once_per_step(trainer):
            return
        final = scheduler.optimizer.param_groups[0]["min_lr"]
        # found in a review: Lightning 2.6 resumes a checkpoint written at an epoch's end under both `max_epochs` and
        # `max_steps` with its epoch count one behind, and ends an epoch early; the resume's start, reading that count,
        # had said the run goes on past its cycle
        also = (
            f"The resumed fit ended at step {trainer.global_step}, not at step {told} as it expected at its start: "
            "Lightning 2.6 resumes a checkpoint written at an epoch's end under both `max_epochs` and `max_steps` an "
            "epoch short; or "
            if told is not None
            else ""
        )
        idle = _compat.batches_that_trained_nothing(trainer)
        cut = (
            f"{idle} batch(es) trained nothing (None from the loader, or `on_train_batch_start` returning -1, which "
            "ends the epoch there); or "
            if idle
            else ""
        )
        why = (
            f"{also}{'i' if also else 'I'}ts epochs came out shorter than planned: {cut}e.g. a train dataloader that "
            "`reload_dataloaders_every_n_epochs` reloaded with fewer batches. Where the epochs' lengths change, or to "
            "resume such a run, size it in steps: `Trainer(max_steps=..., max_epochs=-1)`."
        )
        _compat.rank_zero_warn(
            trainer,
            f"SuperConvergence: training ended {left} steps before the end of the one-cycle, planned at fit start "
            f"over {scheduler.total_steps} steps, with the first param group's LR at {scheduler.get_last_lr()[0]:.4g} "
            f"(the cycle ends at {final:.4g}): the model did not anneal. {why}",
        )

    @override
    def on_train_epoch_start(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        # BackboneFinetuning adds its group and writes its LR in its own `on_train_epoch_start`: set the cycle's
        # before any batch hook, where a `LearningRateMonitor` listed before this callback logs the LR (found trying
        # the package as a new user: it logged BackboneFinetuning's LR, which no step ran)
        if self._scheduler is not None:
            self._follow_groups(trainer, self._scheduler)

    @override
    def on_train_batch_start(
        self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        scheduler = self._scheduler
        if scheduler is None:
            return
        self._follow_groups(trainer, scheduler)
        if self._logger is not None:
            self._logger.log(trainer)

    def _follow_groups(self, trainer: _compat.Trainer, scheduler: SafeOneCycleLR) -> None:
        """Adopt param groups added since the last call; keep the added ones on the cycle."""
        if len(scheduler.optimizer.param_groups) != self._group_count:
            self._group_count = len(scheduler.optimizer.param_groups)
            self._adopt_added_groups(trainer, scheduler)
        elif scheduler.added_group_ratios and _trainer.scheduler_in_use(trainer, scheduler):
            # a callback may write an added group's LR between steps (BackboneFinetuning does at every epoch start);
            # once StochasticWeightAveraging's SWALR took over, its LR is the added groups' too (found in a review:
            # the backbone's group stayed at a tenth of it)
            scheduler.follow_first_group()

    @override
    def on_train_batch_end(
        self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        watch = self._watch
        if watch is None:
            return
        step = int(trainer.global_step)
        if step % watch.guard.check_every == 0 and not _trainer.scheduler_in_use(trainer, self._scheduler):
            # StochasticWeightAveraging's SWALR replaced the cycle: a rescue would lower a cycle that sets no LR any
            # more, and roll the LR back to the cycle's value of the snapshot's time until SWALR sets its own again
            self._watch = None
            _compat.rank_zero_info(
                trainer,
                "SuperConvergence: StochasticWeightAveraging's SWALR has replaced the one-cycle (seen at step "
                f"{trainer.global_step}, the divergence guard's first check since); the guard stands down (it lowers "
                "the one-cycle, which no longer runs).",
            )
            return
        rescue, gave_up = watch.after_batch(trainer, pl_module, self._scheduler_optimizer(), outputs, step)
        if gave_up is not None:
            if self.rescues:
                what = (
                    f"diverged again, as the check at step {trainer.global_step} found ({gave_up}), after "
                    f"{len(self.rescues)} rescue(s) had lowered the peak to {self.max_lr:.4g}"
                )
            else:  # `max_rescues=0`: the guard only stops the run
                what = (
                    f"diverged, as the check at step {trainer.global_step} found ({gave_up}), with the peak at "
                    f"{self.max_lr:.4g}"
                )
            # found trying CTC as a new user: a loss that is inf on a few samples (an input shorter than its target)
            # is met again at every peak, where a lower `max_lr=` or more rescues cannot help
            reasons = [gave_up, *(str(rescue["reason"]) for rescue in self.rescues)]
            nonfinite = (
                f" A loss that turns NaN/inf{' at every peak tried' if self.rescues else ''} may come from the data "
                "or the loss rather than the LR: a NaN or inf in a sample or target, or a loss that is infinite on "
                "some samples (CTC on an input shorter than its target: `CTCLoss(zero_infinity=True)`, or drop such "
                "samples); check those first."
                if all(reason.startswith((NONFINITE_REASON, SPREAD_SKIPS_REASON)) for reason in reasons)
                else ""
            )
            raise DivergenceError(
                f"SuperConvergence: the loss {what}; training stops (`max_rescues={self.max_rescues}`). The model may "
                "not train at these LRs at all: check the loss and the data, pass a lower `max_lr=`, or raise "
                f"`max_rescues`.{nonfinite}"
            )
        if rescue is not None:
            self._record_rescue(trainer, rescue)

    @override
    def state_dict(self) -> dict[str, Any]:
        # a guard state loaded and not yet handed to a guard (training has not started) is written as it came, where
        # this release wrote it (found trying the package as a new user: a state loaded into a fresh callback came
        # back without it); an older one is read only by the guard it is handed to
        held = self._guard_state if self._guard_state_version == _STATE_VERSION else None
        return {
            "version": _STATE_VERSION,
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "start_step": self._start_step,
            "result": None if self.result is None else self.result.to_dict(),
            "rescues": self.rescues,
            "guard": held if self._watch is None else self._watch.state_dict(),
            # the shape that runs: a resumed run's is its checkpoint's (None: an older one kept none), not the one given
            "cycle": self._checkpoint_cycle if self._restored else asdict(self.cycle),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning calls this after `setup` and, except under FSDP/DeepSpeed/ModelParallel, before `on_fit_start`,
        # so a resume runs no range test. The optimizer and the OneCycleLR state are restored by Lightning after
        # `on_fit_start` installed a fresh scheduler, which then continues exactly where the checkpoint left it.
        check_state_version(state_dict, "SuperConvergence", _STATE_VERSION)
        self.max_lr = state_dict.get("max_lr", self.max_lr)
        self.total_steps = state_dict.get("total_steps", self.total_steps)
        self._start_step = int(state_dict.get("start_step", 0))
        result = state_dict.get("result")
        self.result = None if result is None else RangeTestResult.from_dict(result)
        self.rescues = list(state_dict.get("rescues", []))
        self._guard_state = state_dict.get("guard")
        self._checkpoint_cycle = state_dict.get("cycle")
        version = state_dict.get("version", _STATE_VERSION)
        self._guard_state_version = version if isinstance(version, int) else _STATE_VERSION
        # a checkpoint written before the cycle was installed has nothing to resume
        self._restored = self.max_lr is not None
        self._state_loaded = True

    @property
    def _logs_schedule_this_fit(self) -> bool:
        """Whether this fit's LR, momentum and weight decay are logged by this callback.

        Known once its ``on_fit_start`` has run: it logs them with the cycle it installs (unless
        ``log_schedule=False``), and not at all where it returns without one (``overfit_batches`` without ``max_lr``,
        ``fast_dev_run``, no training step left).
        """
        return self._logger is not None

    # ------------------------------------------------------------------------------------------------ work

    def _new_fit(self) -> None:
        """Forget any earlier fit: a new fit plans its own cycle.

        On ``fit(ckpt_path=...)`` Lightning calls ``load_state_dict`` after ``setup``, and the checkpoint's pick and
        cycle replace these.
        """
        self.max_lr = self.requested_max_lr
        self.result = None
        self.total_steps = None
        self._start_step = 0
        self._restored = False
        self._state_loaded = False
        self._warned_stepping = False
        self._told_the_end = None
        self._range_test_to_log = False
        self._stops_at_start = {}
        self._first_pass_read = False
        self._scheduler = None
        self._logger = None
        self._watch = None
        self._guard_state = None
        self._guard_state_version = _STATE_VERSION
        self._checkpoint_cycle = None
        self.rescues = []

    def _log_the_pending_range_test(self, trainer: _compat.Trainer) -> None:
        """Log the range test left to log at train start, or at the end of a fit that ended before; not a resume's.

        Under a strategy that loads checkpoints after fit start it waits for ``on_train_start``, where a resume
        discards it; a fit whose sanity check failed, or that a callback stopped before its first step, never gets
        there (found in reviews).
        """
        if self._range_test_to_log and not (trainer.ckpt_path and trainer.strategy.restore_checkpoint_after_setup):
            self._log_the_range_test(trainer)
        self._range_test_to_log = False

    def _log_the_range_test(self, trainer: _compat.Trainer) -> None:
        """Log this fit's range test to the Trainer's loggers, after the steps of an earlier fit's on this Trainer."""
        assert self.result is not None
        first = trainer.global_step
        if self._range_test_logged is not None and self._range_test_logged[0] == id(trainer):
            first = max(first, self._range_test_logged[1])
        self._range_test_logged = (id(trainer), log_range_test(trainer, self.result, first))

    def _stepped_once_per_step(self, trainer: _compat.Trainer) -> bool:
        """Whether the cycle has advanced once per optimizer step of this fit; if not, say so (once) and why.

        The cycle's position counts the optimizer steps since it started, in a resumed run too. A module's
        ``lr_scheduler_step`` override that steps it every other call, twice, or not at all (found trying the package
        as a new user: the LR stayed at the cycle's start for the whole run, and only a misleading message at its end
        hinted at it) moves it otherwise; so does manual optimization that steps it other than once per step.
        """
        scheduler = self._scheduler
        if scheduler is None or not _trainer.scheduler_in_use(trainer, scheduler):
            return True
        ran = int(trainer.global_step) - self._start_step
        stepped = int(scheduler.last_epoch)
        # Lightning steps it at a batch that trains nothing too (None from the loader, `on_train_batch_start` returning
        # -1; found in a review: such batches were blamed on an override the module did not have): at most one each
        if ran <= stepped <= ran + _compat.batches_that_trained_nothing(trainer):
            return True
        if not self._warned_stepping:
            self._warned_stepping = True
            _compat.rank_zero_warn(
                trainer,
                f"SuperConvergence: the one-cycle was stepped {stepped} times in the {ran} optimizer steps of this fit "
                "so far: your module steps it other than once per optimizer step (an `lr_scheduler_step` override, "
                "or manual optimization), so the LR does not follow the planned cycle. Lightning calls "
                "`lr_scheduler_step` once per optimizer step: call `scheduler.step()` once in it, or remove the "
                "override.",
            )
        return False

    def _nothing_to_resume(self) -> str:
        """Why a checkpoint gives no cycle to resume: no state of this callback in it, or a state without a cycle.

        Found trying the package as a new user: `OnExceptionCheckpoint`'s checkpoint after an error in the range test
        holds this callback's state, and the message said it was written by a run without the callback.
        """
        return _NO_CYCLE_TO_RESUME if self._state_loaded else _NO_STATE_TO_RESUME

    def _resume(self, trainer: _compat.Trainer, optimizer: Any) -> None:
        """Install the scheduler object Lightning will load the checkpoint's cycle into; no range test."""
        if not self._restored:
            if _compat.weights_only_checkpoint(trainer):
                raise _compat.misconfiguration(trainer, _WEIGHTS_ONLY_CHECKPOINT)
            raise _compat.misconfiguration(trainer, self._nothing_to_resume())
        self._warn_of_arguments_given_anew(trainer)
        # the checkpoint's OneCycleLR state (its total steps, phases and position) replaces this sizing after fit start
        total_steps = (
            self.total_steps if self.total_steps else max(_trainer.total_steps(trainer, "SuperConvergence"), 1)
        )
        self._install_schedule(trainer, optimizer, total_steps, announce=False)
        # a resumed run meets the clock as a new one does (found in a review: it was told only at a fresh fit), if it
        # has steps left to run
        done = _compat.resumed_global_step(trainer)
        if done is None or trainer.estimated_stepping_batches > done:
            _warn_of_a_clock(trainer, total_steps)

    def _warn_of_arguments_given_anew(self, trainer: _compat.Trainer) -> None:
        """Say which arguments given now the resumed run does not take: a `max_lr` or a cycle shape of their own."""
        assert self.max_lr is not None
        # the peak the checkpoint's run was given or picked: a guard rescue lowered it since (found trying the package
        # as a new user: resuming a rescued run with its own `max_lr` was told that the given value was not taken)
        started = float(self.rescues[0]["old_peak"]) if self.rescues else self.max_lr
        if self.requested_max_lr is not None and not math.isclose(self.requested_max_lr, started, rel_tol=1e-9):
            rescued = len(self.rescues)
            plural = "s" if rescued > 1 else ""
            lowered = f" (its peak of {started:.4g} lowered by {rescued} guard rescue{plural})" if rescued else ""
            _compat.rank_zero_warn(
                trainer,
                f"SuperConvergence: the resumed run continues the checkpoint's cycle with max_lr={self.max_lr:.4g}"
                f"{lowered}; the given `max_lr={self.requested_max_lr:.4g}` applies to new fits only.",
            )
        self._warn_of_another_shape(trainer)

    def _warn_of_another_shape(self, trainer: _compat.Trainer) -> None:
        """Say which of the cycle's shape arguments given now differ from the checkpoint's: the resume keeps those.

        Found trying the package through LightningCLI as a new user: a resume whose config changed `pct_start` ran the
        checkpoint's cycle (as it must: Lightning loads the scheduler's state) and said nothing, where a changed
        `max_lr` was said. Checkpoints written before the shape was kept say nothing.
        """
        kept = self._checkpoint_cycle
        if not isinstance(kept, dict):
            return
        given = asdict(self.cycle)
        differ = [name for name, value in given.items() if name in kept and kept[name] != value]
        if differ:
            _compat.rank_zero_warn(
                trainer,
                "SuperConvergence: the resumed run continues the checkpoint's cycle ("
                + ", ".join(f"{name}={kept[name]!r}" for name in differ)
                + "); the given "
                + ", ".join(f"`{name}={given[name]!r}`" for name in differ)
                + (" apply" if len(differ) > 1 else " applies")
                + " to new fits only.",
            )

    def _install_schedule(
        self, trainer: _compat.Trainer, optimizer: Any, total_steps: int, announce: bool = True,
        own_step_size: bool = False,
    ) -> None:  # fmt: skip
        assert self.max_lr is not None
        config = self.cycle
        if own_step_size and config.cycle_momentum is None:
            # Prodigy and D-Adaptation fold their betas into their step-size estimate: the cycle leaves them alone
            config = OneCycleConfig(**{**config.__dict__, "cycle_momentum": False})
        still = groups_without_momentum(optimizer) if config.cycle_momentum is None else []
        own_lr, own_momentum = configured_lrs(optimizer)[0], _configured_momentum(optimizer)
        scheduler = build_one_cycle(optimizer, self.max_lr, total_steps, config)
        replaced = _trainer.install_scheduler(trainer, scheduler)
        self.total_steps = total_steps
        self._scheduler = scheduler
        self._group_count = len(optimizer.param_groups)
        self._logger = ScheduleLogger(trainer, optimizer) if self.log_schedule else None
        if not announce:
            return
        if replaced:
            cli = _compat.optimizers_from_the_cli(trainer.lightning_module)
            source = "LightningCLI's `--lr_scheduler`" if cli else "`configure_optimizers`"
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: replacing the scheduler {', '.join(f'`{n}`' for n in replaced)} from {source} "
                "with `OneCycleLR`.",
            )
        momentum = "unchanged"
        if scheduler.cycle_momentum:
            name = "beta1" if momentum_key(optimizer) == "betas" else "momentum"
            configured = f", configured {own_momentum:g}" if own_momentum is not None else ""
            momentum = f"cycling: {name} {config.max_momentum:g} -> {config.base_momentum:g} -> {config.max_momentum:g}"
            momentum += configured
        if scheduler.cycle_momentum and still:
            momentum += (
                f"; param group{'s' if len(still) > 1 else ''} {', '.join(map(str, still))}, built without momentum, "
                f"keep{'' if len(still) > 1 else 's'} none"
            )
        _compat.rank_zero_info(
            trainer,
            f"SuperConvergence: `OneCycleLR` installed, max_lr={self.max_lr:.4g}{_against(self.max_lr, own_lr)} over "
            f"{total_steps} steps (momentum {momentum}).",
        )
        if config.three_phase and short_three_phase_warm_up(config.pct_start, total_steps):
            pct_start = safe_pct_start(config.pct_start, total_steps, config.three_phase)
            _compat.rank_zero_warn(
                trainer,
                f"SuperConvergence: `three_phase=True` with `pct_start={config.pct_start}` gives a warm-up of "
                f"{config.pct_start * total_steps:.3g} of this run's {total_steps} steps, in which torch's three-phase "
                f"cycle stops short of max_lr (at a 25th of it up to 1.5 steps): the warm-up is 2 steps "
                f"(pct_start={pct_start:.3g}). Raise `pct_start` for a longer one.",
            )

    def _scheduler_optimizer(self) -> Any:
        assert self._scheduler is not None
        return self._scheduler.optimizer

    def _record_rescue(self, trainer: _compat.Trainer, rescue: Rescue) -> None:
        assert self.max_lr is not None
        # the guard reads the first group's peak; said in `max_lr`'s terms (under timm's layer decay the first group
        # runs at its share of `max_lr`)
        old_peak = self.max_lr
        self.max_lr *= rescue.new_peak / rescue.old_peak  # the cycle's peak is positive, and so is every factor
        rescue = replace(rescue, old_peak=old_peak, new_peak=self.max_lr)
        self.rescues.append(asdict(rescue))
        ended = self._watch is not None and self._watch.cycle_ended()
        rest = (
            "; the cycle has no step left to train at a lowered peak: training goes on, if at all, from that step's "
            "weights at the cycle's final LR"
            if ended
            # the LR the run will reach: after the peak the re-warm-up climbs while the cycle anneals (found trying
            # the package as a new user: "lowered to 0.01739", and no step trained above 0.0055)
            else f" for the rest of the run (the highest LR ahead: {self._scheduler.highest_lr_ahead():.4g})"
            if self._scheduler is not None
            else " for the rest of the run"
        )
        _compat.rank_zero_warn(
            trainer,
            f"SuperConvergence: the loss diverged, as the check at step {rescue.step} found ({rescue.reason}); rolled "
            "back to the "
            f"weights and optimizer state of step {rescue.restored_step} and lowered the cycle's peak from "
            f"{rescue.old_peak:.4g} to {rescue.new_peak:.4g}{rest} (rescue {len(self.rescues)} of at most "
            f"{self.max_rescues}).",
        )
        values = {f"{SCHEDULE_PREFIX}/rescues": float(len(self.rescues)), f"{SCHEDULE_PREFIX}/max_lr": self.max_lr}
        for logger in trainer.loggers:
            logger.log_metrics(values, step=_compat.logging_step(trainer))

    def _adopt_added_groups(self, trainer: _compat.Trainer, scheduler: SafeOneCycleLR) -> None:
        if not _trainer.scheduler_in_use(trainer, scheduler):
            return  # StochasticWeightAveraging's SWALR took over: its schedule, its groups
        added = scheduler.adopt_added_groups()
        if added:
            ratios = ", ".join(f"{scheduler.added_group_ratios[i]:.3g}x" for i in added)
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: param group(s) {added} were added to the optimizer during training (e.g. by "
                f"`BackboneFinetuning`); they join the one-cycle at {ratios} the first group's LR, and the cycle sets "
                "their LR and momentum from now on.",
            )


def _warn_of_a_clock(trainer: _compat.Trainer, steps: int) -> None:
    """Say that ``max_time`` may end the run mid-cycle: the cycle is sized in steps, the clock knows nothing of them.

    Lightning's ``max_time`` is a ``Timer`` callback it adds; a ``Timer(duration=...)`` of the user's is the same
    clock (found trying the package as a new user: told of a `max_time` they had not set, of "0 s" for a short one).
    """
    timer = _compat.callback_of(trainer, "Timer")
    left = None if timer is None else timer.time_remaining("train")
    if left is None or left <= 0:
        return  # no clock; or one already run out, which stops the run at once
    _compat.rank_zero_warn(
        trainer,
        f"SuperConvergence: the time limit (`max_time`, or a `Timer` callback's `duration`: "
        f"{left:.4g} s) may stop this run before its cycle "
        f"ends: the cycle is planned over the {steps} steps that `max_epochs`/`max_steps` allow, and a run the clock "
        "stops ends with the LR not yet annealed. The range test runs before the clock starts (it starts with "
        "training). To end on the cycle's final LR, set `max_epochs` or `max_steps` to what fits in the time.",
    )


def _warn_of_a_stop_before_the_anneal(
    trainer: _compat.Trainer, scheduler: SafeOneCycleLR, stops_at_start: dict[int, tuple[int, str]]
) -> None:
    """``EarlyStopping`` whose patience ran out before the cycle annealed: say so, and what to do.

    Found trying the package as a new user: a forecasting GRU with the usual ``max_epochs=30`` and
    ``EarlyStopping(patience=3)`` stopped at 43 % of its cycle, at 91 % of the peak, silently; sized to 8 epochs, where
    the cycle anneals, it ended 2.5 % lower in validation error. At high LRs the validation loss is noisy and flat, and
    ``EarlyStopping`` reads that as the end of learning; a one-cycle learns most in its anneal. Before the anneal:
    before the peak, or above :data:`ANNEALED` of it. Other stops are the user's choice (a metric's target reached, a
    divergence, a hook) or were told at fit start (``max_time``), and are not said again.
    """
    left = int(scheduler.total_steps) - int(scheduler.last_epoch)
    if left <= 0 or not _trainer.scheduler_in_use(trainer, scheduler):
        return
    stoppers = _compat.callbacks_of(trainer, "EarlyStopping")
    if not any(_out_of_patience(stopper, stops_at_start.get(id(stopper))) for stopper in stoppers):
        return
    lr = float(scheduler.get_last_lr()[0])
    peak = float(scheduler.optimizer.param_groups[0].get("max_lr", math.nan))
    before_the_peak = scheduler.last_epoch < float(getattr(scheduler, "peak_step", 0.0))
    if not (before_the_peak or lr > ANNEALED * peak):
        return
    _compat.rank_zero_warn(
        trainer,
        f"SuperConvergence: `EarlyStopping` ran out of patience and stopped training at step "
        f"{int(scheduler.last_epoch)} of the one-cycle's {scheduler.total_steps}, with the first param group's LR at "
        f"{lr:.4g}, {100 * lr / peak:.0f} % of the peak{' (still ahead)' if before_the_peak else ''}: the model did "
        "not anneal, and a one-cycle learns most in its anneal. At high LRs the validation loss is noisy and flat, "
        "which `EarlyStopping` reads as the end of learning: size the run to end where it should (`max_epochs`), so "
        "the cycle anneals there, or give `EarlyStopping` a larger `patience`.",
    )


def _configured_momentum(optimizer: Any) -> float | None:
    """The momentum (or ``beta1``) the first group that has one was configured with; None where unknown.

    A user's cyclic scheduler (torch's ``OneCycleLR``, ``CyclicLR``) wrote its own into the groups when it was built:
    the configured value is gone (found in a review: "configured 0.95" of a user's 0.9).
    """
    groups = optimizer.param_groups
    if any("max_momentum" in group for group in groups):
        return None
    return next((m for group in groups if (m := read_momentum(group))), None)


def _against(max_lr: float, own_lr: float) -> str:
    """The peak against the optimizer's configured LR, as the install line says it.

    Found trying the package as a new user: a fine-tuning recipe's peak came out 91x its own LR, and only a sum said so.
    """
    if not (math.isfinite(own_lr) and own_lr > 0) or math.isclose(max_lr, own_lr, rel_tol=1e-9):
        return ""
    ratio = max_lr / own_lr
    return (
        f" ({ratio:.0f}x the configured lr={own_lr:.3g})"
        if ratio >= 100
        else f" ({ratio:.3g}x the configured lr={own_lr:.3g})"
    )


def _warn_of_a_resume_dropped(trainer: _compat.Trainer) -> None:
    """Say that ``fit(ckpt_path=...)`` beside ``BatchSizeFinder`` starts over, which Lightning does silently.

    The finder saves a checkpoint of its own in its ``on_fit_start``, before Lightning loads the training state of the
    user's, and restores it when done: the fit starts at step 0 from the user's checkpoint's weights, with or without
    this callback (found trying the package as a new user: the run was planned anew, and nothing said why).
    """
    _compat.rank_zero_warn(
        trainer,
        "SuperConvergence: `fit(ckpt_path=...)` does not resume beside `BatchSizeFinder`: the finder restores a "
        "checkpoint of its own in its `on_fit_start`, written before Lightning loads your checkpoint's training state, "
        "so this fit starts at step 0 from your checkpoint's weights (Lightning's behaviour, with or without this "
        "callback) and runs as a new one: a range test on those weights and a cycle over the whole run. Find the batch "
        "size in a fit of its own (`Tuner(trainer).scale_batch_size(...)`) and resume without the finder.",
    )


def _stop_of(stopper: Any) -> tuple[int, str]:
    """An ``EarlyStopping``'s last stop: its epoch and its reason (Lightning 2.6 on; ``""`` before)."""
    return int(getattr(stopper, "stopped_epoch", 0)), str(
        getattr(getattr(stopper, "stopping_reason", None), "name", "")
    )


def _out_of_patience(stopper: Any, at_start: tuple[int, str] | None) -> bool:
    """Whether ``stopper`` (an ``EarlyStopping``) stopped this run because its patience ran out.

    This run: a stop other than the one it held as training started (``at_start``), which a checkpoint gives back and
    Lightning never resets (found in a review: a resumed run that a hook stopped was said to have run out of
    patience). Before Lightning 2.6 there is no reason to read: a patience spent tells it (a target reached leaves
    the count where it was; found in that review: such a stop was said to have run out of patience).
    """
    now = _stop_of(stopper)
    if now == at_start or now == (0, "") or now[1] == "NOT_STOPPED":
        return False
    if now[1]:
        return now[1] == "PATIENCE_EXHAUSTED"
    return int(getattr(stopper, "wait_count", 0)) >= max(int(getattr(stopper, "patience", 0)), 1)


def _warn_if_the_epoch_limit_ends_a_stream_first(
    trainer: _compat.Trainer, start_step: int, cycle_end: int, cut: bool = False
) -> None:
    """Say, once the first epoch of a stream has ended, that ``max_epochs`` will stop the run before its cycle ends.

    A train dataloader without a length (an ``IterableDataset``) has its cycle planned over ``max_steps``: Lightning
    cannot know how many steps ``max_epochs`` passes over it take until one has run. Read from the first pass of this
    fit (a stream whose passes differ in length may end elsewhere). ``cut``: ``on_train_batch_start`` returned -1 and
    ended that pass, which is said (found in a review: a pass cut only in the first epoch read as the stream's length;
    one cut in every epoch is, and must be told).
    """
    epochs = trainer.max_epochs
    if _trainer.epoch_length_known(trainer) or epochs is None or epochs < 0:
        return
    per_pass = int(trainer.global_step) - start_step
    ends_at = int(trainer.global_step) + (epochs - int(trainer.current_epoch) - 1) * per_pass
    if per_pass <= 0 or ends_at >= cycle_end:
        return
    _compat.rank_zero_warn(
        trainer,
        f"SuperConvergence: the train data has no length, so the cycle was planned over `max_steps={trainer.max_steps}`"
        f"; its first pass took {per_pass} steps{' (ended by `on_train_batch_start` returning -1)' if cut else ''},"
        f" and if each pass takes as many, `max_epochs={epochs}` will stop the run at "
        f"about step {ends_at}, before the LR has annealed. To end on the cycle's final LR, set `max_epochs=-1` (then "
        f"`max_steps` alone ends the run) or `max_steps={ends_at}`.",
    )
