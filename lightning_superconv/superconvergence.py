r"""The ``SuperConvergence`` callback: range test at fit start, max LR where the loss diverges, one cycle installed."""

from __future__ import annotations

import importlib
import math
from typing import Any, Literal

from typing_extensions import override

from lightning_superconv import _compat
from lightning_superconv._logging import log_range_test, log_schedule
from lightning_superconv.curve import (
    DivergenceMonitor,
    SweepMode,
    lr_sweep,
    median_half_width,
    pick_max_lr,
    running_median,
)
from lightning_superconv.range_test import capture, dataloader_generators, quiet_trainer, restore, sweep
from lightning_superconv.result import RangeTestResult
from lightning_superconv.schedule import SafeOneCycleLR, build_one_cycle, configured_lrs, group_ratios

_STATE_VERSION = 2

_NO_STATE_TO_RESUME = (
    "`fit(ckpt_path=...)` resumes from a checkpoint that holds no `SuperConvergence` state: it was written by a run "
    "without this callback (or before its cycle was installed). Resuming would load that run's optimizer and scheduler "
    "state into a new one-cycle. Resume without `SuperConvergence`; or, to run a range test and a new cycle from the "
    "checkpoint's weights, start a new fit without `ckpt_path` (`model = YourModel.load_from_checkpoint(path)`, then "
    "`trainer.fit(model)`)."
)


class SuperConvergence(_compat.Callback):
    r"""Train with one cycle of a very large learning rate, its peak found by an LR range test on your own model.

    When ``fit`` starts, before the first training step, the callback runs Leslie Smith's LR range test on the
    model's own ``training_step`` loss, data and optimizer: the LR rises exponentially from ``lr_range[0]`` to
    ``lr_range[1]`` over at most ``num_steps`` optimizer steps, and the test stops as soon as the loss has clearly
    diverged (see :class:`~lightning_superconv.curve.DivergenceMonitor`). The cycle's maximum LR is read off the curve
    where the loss stops falling (see :func:`~lightning_superconv.curve.pick_max_lr`), *not* at the steepest slope:
    that point suits a constant LR and is typically orders of magnitude too small for a one-cycle peak.

    Everything is then put back exactly as it was (parameters, buffers, optimizer state, gradient scaler, RNG streams,
    dataloader generators; nothing is written to disk), and a :class:`torch.optim.lr_scheduler.OneCycleLR` sized by
    ``trainer.estimated_stepping_batches`` replaces any scheduler from ``configure_optimizers``. With several param
    groups, the configured LR ratios between groups are kept in the test and the cycle; ``max_lr`` is the first
    group's.

    Defaults of the cycle: ``pct_start=0.3``, ``div_factor=25`` and ``final_div_factor=1e4`` are torch's, and Smith's
    advice fits them: start the cycle 10-25x below the peak, spend under half of the run rising, and let the LR fall
    several orders of magnitude below its start at the end (arXiv 1708.07120 §3, 1803.09820 §4.1). Momentum cycles
    0.95 -> 0.85 -> 0.95 inversely to the LR (1803.09820 §4.3), for SGD with momentum and for Adam's ``beta1``.

    Each ``fit`` plans its own cycle over the training steps it will run (a second ``fit`` on the same ``Trainer``
    continues from the step it reached, and gets a new cycle over the steps left). ``fit(ckpt_path=...)`` is a resume:
    the pick, the cycle and its position come from the checkpoint, and no range test runs; Lightning restores the
    callback's state before ``on_fit_start`` and the optimizer and the ``OneCycleLR`` state after it (the fresh
    scheduler installed at fit start is the object the checkpoint's state is loaded into), so the LR and momentum
    continue exactly where the interrupted run was. A run whose length differs from the checkpoint's keeps its cycle,
    with a warning: past its end the LR stays at the final value.

    Under DDP every rank runs the range-test steps in lockstep, the loss of each step is the mean over the ranks, and
    every rank reads the same curve and installs the same cycle; nothing is written to disk. The range test is not
    available under FSDP, ``ModelParallelStrategy`` and DeepSpeed (see the errors below).

    Args:
        max_lr: the cycle's maximum LR; when given, no range test runs.
        lr_range: the first and last LR of the range test, ``0 < start < end``.
        num_steps: optimizer steps of the range test at most (>= 2); it usually stops earlier, at divergence.
        mode: ``"exponential"`` (default) or ``"linear"`` spacing of the swept LRs.
        divergence_threshold: the test stops once the smoothed loss exceeds this many times its best (> 1).
        smoothing: EMA factor in [0, 1) of the online divergence check (the pick reads a centered running median
            over 3 % of the sweep, without lag, see :func:`~lightning_superconv.curve.running_median`).
        pct_start: fraction of the run spent raising the LR, in (0, 1).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: cycle momentum (``beta1``) inversely to the LR. ``None`` (default) cycles whenever the
            optimizer has momentum to cycle; an SGD built with ``momentum=0`` then keeps none (torch's OneCycleLR
            would switch it to 0.95).
        base_momentum: momentum at the LR's peak, in [0, 1).
        max_momentum: momentum at the cycle's ends, in [``base_momentum``, 1).
        div_factor: the cycle starts at ``max_lr / div_factor`` (>= 1).
        final_div_factor: the cycle ends at ``max_lr / (div_factor * final_div_factor)`` (>= 1).
        three_phase: use torch's three-phase cycle (symmetric rise and fall, then a final annihilation).
        log_schedule: log LR and momentum of the first param group every ``log_every_n_steps`` steps.

    Attributes:
        max_lr: the cycle's maximum LR once ``fit`` has started (the given one or the pick).
        result: the :class:`~lightning_superconv.result.RangeTestResult`, or None when no range test ran.

    Raises:
        ValueError: if an argument is out of range.
        TypeError: if an argument has the wrong type.
        MisconfigurationException: at fit start, for a setup the callback cannot serve: manual optimization, no
            optimizer, an unknown run length, Lightning's ``LearningRateFinder`` in the same ``Trainer``, DeepSpeed, a
            range test under FSDP or ``ModelParallelStrategy``, a first param group with LR 0, a resume from a
            checkpoint without this callback's state, or a range test that reads no curve.

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
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool | None = None,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        log_schedule: bool = True,
    ) -> None:
        _check_number("max_lr", max_lr, low=0.0, allow_none=True)
        if not isinstance(lr_range, (tuple, list)) or len(lr_range) != 2:
            raise TypeError(f"`lr_range` must be a pair (start, end) of positive floats, got {lr_range!r}")
        _check_number("lr_range[0]", lr_range[0], low=0.0)
        _check_number("lr_range[1]", lr_range[1], low=0.0)
        if lr_range[0] >= lr_range[1]:
            raise ValueError(f"`lr_range` must rise: start < end, got start={lr_range[0]} and end={lr_range[1]}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"`num_steps` must be an integer >= 2, got {num_steps!r}")
        if mode not in ("exponential", "linear"):
            raise ValueError(f"`mode` must be 'exponential' or 'linear', got {mode!r}")
        _check_number("divergence_threshold", divergence_threshold, low=1.0)
        _check_number("smoothing", smoothing, low=0.0, high=1.0, low_inclusive=True)
        _check_number("pct_start", pct_start, low=0.0, high=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"`anneal_strategy` must be 'cos' or 'linear', got {anneal_strategy!r}")
        if cycle_momentum is not None and not isinstance(cycle_momentum, bool):
            raise TypeError(f"`cycle_momentum` must be True, False or None (automatic), got {cycle_momentum!r}")
        _check_number("base_momentum", base_momentum, low=0.0, high=1.0, low_inclusive=True)
        _check_number("max_momentum", max_momentum, low=0.0, high=1.0, low_inclusive=True)
        if max_momentum < base_momentum:
            raise ValueError(
                f"`max_momentum` must be >= `base_momentum`, got max_momentum={max_momentum} and "
                f"base_momentum={base_momentum}"
            )
        _check_number("div_factor", div_factor, low=1.0, low_inclusive=True)
        _check_number("final_div_factor", final_div_factor, low=1.0, low_inclusive=True)

        self.requested_max_lr = None if max_lr is None else float(max_lr)
        self.lr_range = (float(lr_range[0]), float(lr_range[1]))
        self.num_steps = num_steps
        self.mode: SweepMode = mode
        self.divergence_threshold = float(divergence_threshold)
        self.smoothing = float(smoothing)
        self.pct_start = float(pct_start)
        self.anneal_strategy: Literal["cos", "linear"] = anneal_strategy
        self.cycle_momentum = cycle_momentum
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.three_phase = bool(three_phase)
        self.log_schedule = bool(log_schedule)

        self.max_lr: float | None = self.requested_max_lr
        self.result: RangeTestResult | None = None
        self.total_steps: int | None = None
        self._start_step = 0
        self._restored = False
        self._optimizer: Any = None
        self._scheduler: SafeOneCycleLR | None = None

    # The state key is the class name alone (Lightning refuses a second instance with the same key when the Trainer is
    # built, and one optimizer can follow only one cycle anyway): a resume with changed arguments still finds its state.

    # ------------------------------------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        # A new fit plans its own cycle. On `fit(ckpt_path=...)` Lightning calls `load_state_dict` after `setup`, and
        # the checkpoint's pick and cycle replace these.
        self.max_lr = self.requested_max_lr
        self.result = None
        self.total_steps = None
        self._start_step = 0
        self._restored = False
        self._optimizer = None
        self._scheduler = None
        _arrange_companions(trainer, self)
        problem = _strategy_problem(trainer.strategy, range_test=self.requested_max_lr is None)
        if problem is not None:
            raise _compat.misconfiguration(trainer, problem)

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = _single_automatic_optimizer(trainer, pl_module)
        if trainer.fast_dev_run:
            _compat.rank_zero_info(
                trainer, "SuperConvergence: `fast_dev_run` is on, so no range test runs and the schedule is unchanged."
            )
            return
        if trainer.ckpt_path and not trainer.strategy.restore_checkpoint_after_setup:
            self._resume(trainer, optimizer)
            return
        total_steps = _total_steps(trainer)
        if total_steps == 0:
            # Lightning runs such a fit without a training step; a range test would train where the user asked not to
            _compat.rank_zero_info(
                trainer,
                "SuperConvergence: this run has no training steps (`max_steps=0` or `limit_train_batches=0`), so no "
                "range test runs and the schedule is unchanged.",
            )
            return
        start_step = int(trainer.global_step)
        if start_step >= total_steps:
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: this Trainer has already run its {total_steps} training steps (a second `fit` "
                "without a larger `max_epochs`/`max_steps`), so no range test runs and the schedule is unchanged.",
            )
            return
        _check_first_group_lr(trainer, optimizer)
        if self.max_lr is None:
            self.result = self.run_range_test(trainer, pl_module, optimizer)
            self.max_lr = self.result.max_lr
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: range test picked max_lr={self.max_lr:.4g} after {len(self.result.lrs)} steps "
                f"(stopped: {self.result.stop_reason}); {self.result.pick_reason}.",
            )
            log_range_test(trainer, self.result)
        # a second `fit` on the same Trainer continues from the step it reached: the cycle spans the steps left
        self._start_step = start_step
        self._install_schedule(trainer, optimizer, total_steps - start_step)

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._scheduler is None:
            return
        if trainer.ckpt_path and not self._restored:
            # FSDP, DeepSpeed and ModelParallel restore callback states only after `on_fit_start`: checked here
            raise _compat.misconfiguration(trainer, _NO_STATE_TO_RESUME)
        # on a resume, Lightning has loaded the checkpoint's OneCycleLR state into the scheduler installed at fit start
        self.total_steps = int(self._scheduler.total_steps)
        if not self._restored:
            return
        _compat.rank_zero_info(
            trainer,
            f"SuperConvergence: resumed the one-cycle at step {self._scheduler.last_epoch} of {self.total_steps} "
            f"(max_lr={self.max_lr:.4g}); no range test.",
        )
        # (a new fit sized its cycle from this very estimate; only a resume can disagree with it)
        planned = self._start_step + self.total_steps
        steps = trainer.estimated_stepping_batches
        if math.isfinite(steps) and int(steps) != planned:
            final = float(self._scheduler.optimizer.param_groups[0]["min_lr"])
            outcome = (
                f"from step {planned} on, the LR stays at the cycle's final value {final:.3g}"
                if steps > planned
                else f"the run ends at step {int(steps)}, before the LR has annealed"
            )
            _compat.rank_zero_warn(
                trainer,
                f"SuperConvergence: this run has {int(steps)} training steps, but its one-cycle was planned for "
                f"{planned} (the length changed since the checkpoint was written: `max_epochs`, `max_steps` or the "
                f"data). The cycle continues as planned: {outcome}. To train a new cycle over the new length, start a "
                "new fit from the checkpoint's weights instead of resuming.",
            )

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        scheduler = self._scheduler
        if scheduler is not None and any(config.scheduler is scheduler for config in trainer.lr_scheduler_configs):
            added = scheduler.adopt_added_groups()
            if added:
                ratios = ", ".join(f"{scheduler.added_group_ratios[i]:.3g}x" for i in added)
                _compat.rank_zero_info(
                    trainer,
                    f"SuperConvergence: param group(s) {added} were added to the optimizer during training (e.g. by "
                    f"`BackboneFinetuning`); they join the one-cycle at {ratios} the first group's LR, and the cycle "
                    "sets their LR and momentum from now on.",
                )
        if self.log_schedule and self._optimizer is not None:
            log_schedule(trainer, self._optimizer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "start_step": self._start_step,
            "result": None if self.result is None else self.result.to_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning calls this after `setup` and, except under FSDP/DeepSpeed/ModelParallel, before `on_fit_start`,
        # so a resume runs no range test. The optimizer and the OneCycleLR state are restored by Lightning after
        # `on_fit_start` installed a fresh scheduler, which then continues exactly where the checkpoint left it.
        self.max_lr = state_dict.get("max_lr", self.max_lr)
        self.total_steps = state_dict.get("total_steps", self.total_steps)
        self._start_step = int(state_dict.get("start_step", 0))
        result = state_dict.get("result")
        self.result = None if result is None else RangeTestResult.from_dict(result)
        # a checkpoint written before the cycle was installed has nothing to resume
        self._restored = self.max_lr is not None

    # ------------------------------------------------------------------------------------------------ work

    def run_range_test(self, trainer: Any, pl_module: Any, optimizer: Any) -> RangeTestResult:
        r"""Run the range test on the trainer's model, data and optimizer, restore everything, and pick the max LR.

        Raises:
            MisconfigurationException: if the loss is NaN/inf or diverges from the very first steps, so that no
                curve can be read; the state is restored before the error propagates.
        """
        lrs = lr_sweep(self.lr_range[0], self.lr_range[1], self.num_steps, self.mode)
        ratios = group_ratios(optimizer)
        monitor = DivergenceMonitor(self.divergence_threshold, self.smoothing)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        # `estimated_stepping_batches` loads the train dataloader, except when `max_epochs=-1` (which
        # `Trainer(max_steps=N)` alone implies): load it here, as the fit loop would (a no-op when it is loaded)
        trainer.fit_loop.setup_data()
        loaders = list(trainer.fit_loop._combined_loader.flattened)
        snapshot = capture(pl_module, optimizer, scaler, dataloader_generators(loaders))
        failure: BaseException | None = None
        try:
            with _compat.isolate_rng(trainer), quiet_trainer(trainer, pl_module):
                try:
                    record = sweep(trainer, pl_module, optimizer, lrs, ratios, monitor)
                except BaseException as err:
                    # Lightning's `isolate_rng` restores the RNG only when its block exits normally: leave it
                    # normally, re-raise after it
                    failure = err
        finally:
            # also on KeyboardInterrupt and SystemExit: nothing the test did may survive it
            restore(snapshot, scaler)
            _reset_persistent_iterators(trainer, loaders)
        if failure is not None:
            raise failure
        if len(record.losses) < 3:
            raise _compat.misconfiguration(trainer, _no_curve_message(record, lrs))
        if record.stop_reason == "data-exhausted":
            _compat.rank_zero_warn(
                trainer,
                f"SuperConvergence: the train dataloader ran out after {len(record.losses)} range-test steps and "
                "yielded nothing when restarted, so its data can be read only once: the range test stopped there, "
                "and training gets only what is left. Give the dataset an `__iter__` that starts over on each call.",
            )
        smoothed = running_median(record.losses, median_half_width(self.num_steps))
        try:
            pick = pick_max_lr(record.lrs, record.losses, smoothed=smoothed)
        except ValueError as err:
            raise _compat.misconfiguration(
                trainer,
                f"The range test found no usable maximum LR: {err}. The model may not be learning (check the loss "
                "and the data), or the sweep does not reach LRs that train it: widen `lr_range`, or pass `max_lr=`. "
                "The model and optimizer were restored.",
            ) from err
        return RangeTestResult(
            lrs=record.lrs,
            losses=record.losses,
            smoothed=smoothed,
            max_lr=pick.lr,
            pick_index=pick.index,
            pick_reason=pick.reason,
            stop_reason=record.stop_reason,
            skipped_steps=record.skipped_steps,
        )

    def _resume(self, trainer: Any, optimizer: Any) -> None:
        """Install the scheduler object Lightning will load the checkpoint's cycle into; no range test."""
        if not self._restored:
            raise _compat.misconfiguration(trainer, _NO_STATE_TO_RESUME)
        assert self.max_lr is not None
        if self.requested_max_lr is not None and self.requested_max_lr != self.max_lr:
            _compat.rank_zero_warn(
                trainer,
                f"SuperConvergence: the resumed run continues the checkpoint's cycle with max_lr={self.max_lr:.4g}; "
                f"the given `max_lr={self.requested_max_lr:.4g}` applies to new fits only.",
            )
        # the checkpoint's OneCycleLR state (its total steps, phases and position) replaces this sizing after fit start
        total_steps = self.total_steps if self.total_steps else max(_total_steps(trainer), 1)
        self._install_schedule(trainer, optimizer, total_steps, announce=False)

    def _install_schedule(self, trainer: Any, optimizer: Any, total_steps: int, announce: bool = True) -> None:
        assert self.max_lr is not None
        scheduler = build_one_cycle(
            optimizer,
            self.max_lr,
            total_steps,
            pct_start=self.pct_start,
            anneal_strategy=self.anneal_strategy,
            cycle_momentum=self.cycle_momentum,
            base_momentum=self.base_momentum,
            max_momentum=self.max_momentum,
            div_factor=self.div_factor,
            final_div_factor=self.final_div_factor,
            three_phase=self.three_phase,
        )
        replaced = [type(config.scheduler).__name__ for config in trainer.strategy.lr_scheduler_configs]
        config_cls = _compat.module(trainer, "utilities.types").LRSchedulerConfig
        trainer.strategy.lr_scheduler_configs = [config_cls(scheduler, interval="step", frequency=1)]
        self.total_steps = total_steps
        self._optimizer = optimizer
        self._scheduler = scheduler
        if not announce:
            return
        if replaced:
            _compat.rank_zero_info(
                trainer,
                f"SuperConvergence: replacing the scheduler {', '.join(f'`{n}`' for n in replaced)} from "
                "`configure_optimizers` with `OneCycleLR`.",
            )
        _compat.rank_zero_info(
            trainer,
            f"SuperConvergence: `OneCycleLR` installed, max_lr={self.max_lr:.4g} over {total_steps} steps "
            f"(momentum {'cycling' if scheduler.cycle_momentum else 'unchanged'}).",
        )


def _single_automatic_optimizer(trainer: Any, pl_module: Any) -> Any:
    """The one optimizer the callback can serve, or a clear error saying why not and what to do."""
    if not pl_module.automatic_optimization:
        raise _compat.misconfiguration(
            trainer,
            "SuperConvergence needs automatic optimization: with `self.automatic_optimization = False` the "
            "callback cannot step your optimizer. Remove the callback, or switch to automatic optimization.",
        )
    optimizers = trainer.optimizers
    if len(optimizers) != 1:
        raise _compat.misconfiguration(
            trainer,
            f"SuperConvergence needs exactly one optimizer from `configure_optimizers`, got {len(optimizers)}. "
            "Put all parameters into one optimizer (param groups keep different LRs), or remove the callback.",
        )
    # `configure_optimizers` returning None leaves Lightning's stand-in optimizer, which has no LR to schedule
    mock = getattr(_compat.module(trainer, "core.optimizer"), "_MockOptimizer", ())
    if isinstance(optimizers[0], mock):
        raise _compat.misconfiguration(
            trainer,
            "SuperConvergence needs an optimizer, but `configure_optimizers` returned None. Return the optimizer "
            "to train with (e.g. `torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)`), or remove the "
            "callback.",
        )
    return optimizers[0]


def _arrange_companions(trainer: Any, callback: SuperConvergence) -> None:
    """Refuse Lightning's own LR finder beside the callback, and run before ``StochasticWeightAveraging``."""
    callbacks = _compat.module(trainer, "callbacks")
    finder = getattr(callbacks, "LearningRateFinder", ())
    if any(isinstance(cb, finder) for cb in trainer.callbacks):
        raise _compat.misconfiguration(
            trainer,
            "`LearningRateFinder` (or `Tuner.lr_find`) and `SuperConvergence` are in the same Trainer: both run an LR "
            "range test at fit start and set the LR, and the one-cycle would overwrite the finder's suggestion. "
            "Remove `LearningRateFinder` (SuperConvergence picks the cycle's max LR itself), or remove "
            "`SuperConvergence`.",
        )
    # A second SuperConvergence never gets here: its state key equals the first one's, which Lightning refuses when the
    # Trainer is built ("Found more than one stateful callback of type `SuperConvergence`").

    # SWA's `on_fit_start` adds an epoch to `max_epochs` for its batch-norm pass, which has no optimizer step of its
    # own. Sizing the cycle after that would depend on the order of the callbacks list; so SWA moves behind us (it does
    # nothing before its start epoch, and its average starts from the weights the range test restored).
    swa = getattr(callbacks, "StochasticWeightAveraging", ())
    order = list(trainer.callbacks)
    mine = next(i for i, cb in enumerate(order) if cb is callback)
    early = [cb for cb in order[:mine] if isinstance(cb, swa)]
    if early:
        rest = [cb for cb in order if all(cb is not e for e in early)]
        at = next(i for i, cb in enumerate(rest) if cb is callback) + 1
        # a new list: the hook loop that is calling `setup` right now iterates over the old one
        trainer.callbacks = rest[:at] + early + rest[at:]


def _strategy_problem(strategy: Any, range_test: bool) -> str | None:
    r"""Why ``strategy`` cannot be served (the message names the problem and the fix), or None.

    DeepSpeed wraps the optimizer (ZeRO's optimizers are no ``torch.optim.Optimizer``, so no ``OneCycleLR`` can be
    built on them) and partitions its state. FSDP and ``ModelParallelStrategy`` shard parameters and optimizer state;
    the range test's snapshot copies them whole, and neither strategy runs on CPU, where this project is tested, so the
    range test is refused there rather than trusted unverified. The one-cycle alone (``max_lr=`` given) is a plain
    torch scheduler over the strategy's optimizer.
    """
    strategies = importlib.import_module(f"{_compat.namespace(strategy)}.strategies")
    deepspeed = getattr(strategies, "DeepSpeedStrategy", ())
    if isinstance(strategy, deepspeed):
        return (
            "SuperConvergence does not support `DeepSpeedStrategy`: DeepSpeed wraps the optimizer and partitions its "
            "state, so neither a range test that restores it nor a `OneCycleLR` on it can work. Find the max LR "
            "without DeepSpeed (`lightning_superconv.find_max_lr(model, ...)` on one device or with DDP), return "
            "`torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=..., total_steps=...)` from "
            "`configure_optimizers` yourself, and remove the callback."
        )
    if not range_test:
        return None
    for name in ("FSDPStrategy", "ModelParallelStrategy"):
        cls = getattr(strategies, name, ())
        if isinstance(strategy, cls):
            return (
                f"SuperConvergence cannot run its range test under `{name}`: the test snapshots and restores whole "
                "parameters and optimizer state in memory, which sharded training does not have. Pass the max LR: "
                "`SuperConvergence(max_lr=...)` installs the one-cycle without a range test; find the value with "
                "`lightning_superconv.find_max_lr(model, ...)` on one device or with DDP."
            )
    return None


def _check_first_group_lr(trainer: Any, optimizer: Any) -> None:
    first = configured_lrs(optimizer)[0]
    if first <= 0:
        raise _compat.misconfiguration(
            trainer,
            "SuperConvergence keeps the LR ratios between param groups relative to the first group, so the first "
            f"group's `lr` must be > 0, got {first}. Give the first param group a positive `lr` in "
            "`configure_optimizers` (only the ratios between groups matter; the range test and the cycle set the "
            "values).",
        )


def _no_curve_message(record: Any, lrs: list[float]) -> str:
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
        advice = "Raise `num_steps` to 3 or more, or pass `max_lr=` to skip the range test."
    return f"The range test could not read a loss curve: {why}. {advice} The model and optimizer were restored."


def _total_steps(trainer: Any) -> int:
    if trainer.limit_train_batches == 0:
        return 0
    total = trainer.estimated_stepping_batches
    # an iterable dataset without `max_steps` reads as `max_steps`, i.e. -1
    if not math.isfinite(total) or total < 0:
        raise _compat.misconfiguration(
            trainer,
            "SuperConvergence sizes the one cycle to the run, but this run's length is unknown (the train dataloader "
            "has no length and `max_steps` is not set). Set `Trainer(max_steps=...)`.",
        )
    return int(total)


def _reset_persistent_iterators(trainer: Any, loaders: list[Any]) -> None:
    """Rebuild the fit loop's iterator if the range test shared it (``persistent_workers`` reuse one iterator)."""
    if any(getattr(loader, "persistent_workers", False) and loader.num_workers > 0 for loader in loaders):
        fetcher = trainer.fit_loop._data_fetcher
        if fetcher is not None:
            iter(fetcher)


def _check_number(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    low_inclusive: bool = False,
    allow_none: bool = False,
) -> None:
    """Raise a ``TypeError``/``ValueError`` naming the argument, the accepted range and the given value."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    above = value >= low if low_inclusive else value > low
    below = high is None or value < high
    if not (math.isfinite(value) and above and below):
        accepted = f"{'[' if low_inclusive else '('}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"`{name}` must be in {accepted}, got {value}")
