r"""The ``WeightDecayBalancer`` callback: weight decay set from the LR schedule that will actually run.

Thin hooks over :mod:`lightning_superconv.weight_decay` (the maths), :mod:`lightning_superconv.weight_decay_grid`
(planning the grid) and :mod:`lightning_superconv.branches` (running it).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

from typing_extensions import override

from lightning_superconv import _compat, _setups, _trainer
from lightning_superconv._logging import ScheduleLogger
from lightning_superconv._validation import check_bool, check_choice, check_number, check_pair, check_state_version
from lightning_superconv.branches import Branch, DataRanOutError, HeldOutBatches, UnscorableBatchesError, run_branches
from lightning_superconv.param_groups import configured_lrs, configured_weight_decays, lr_scales, step_size_kind
from lightning_superconv.schedule import SafeOneCycleLR
from lightning_superconv.weight_decay import (
    MAX_STEP_DECAY,
    GroupTrace,
    SchedulerSpec,
    ScheduleSwap,
    UnsettledMomentumError,
    bounds_for,
    budget_matched,
    clamp,
    decay_form,
    decay_off_the_lr,
    epoch_ends,
    epochs_spanned,
    group_gain,
    reference_budget,
    step_decay_cap,
    timescale_bounded,
    trace_schedule,
)
from lightning_superconv.weight_decay_grid import MIN_BRANCH_BUDGET, guarded_pick, plan_grid

Mode = Literal["timescale", "grid", "budget", "keep"]
_MODES = ("timescale", "grid", "budget", "keep")
_STATE_VERSION = 1
# what a checkpoint carries across a resume: the user's λ, the chosen one and why (the mode comes from the constructor)
_RESTORED_FIELDS = (
    "weight_decays", "reference_weight_decays", "reference_budgets", "reason", "search", "rebalances", "planned_steps",
    "rescues_balanced",
)  # fmt: skip


# `_compat.Callback` derives from the `Callback` of both Lightning distributions, so
# `pytorch_lightning.cli.LightningCLI` accepts the balancer by `class_path` too (it refused a subclass of
# `lightning.pytorch`'s alone); see tests/test_compat.py
class WeightDecayBalancer(_compat.Callback):
    r"""Set each param group's weight decay for the LR schedule that will actually run.

    Large learning rates regularize, so Smith's super-convergence recipe (arXiv 1708.07120 §3) reduces the other
    regularization, weight decay above all. How much is an empirical question. Measured here (Fashion-MNIST, 3,000
    images for 15 epochs, one-cycle at the ``SuperConvergence`` pick; the README's table): the user recipes spent a
    decay budget ``K = Σ c_t·η_t·λ`` of only 0.006-0.07 over the run, so decay hardly acted; larger ``λ`` helped the
    BatchNorm CNN a little; shrinking ``λ`` by the budget (Smith's prescription) helped nowhere and, at the edge of
    stability, tipped a LeNet into divergence; and short branches could not tell weight decays apart within a quarter
    of the training time. The default is therefore the rule that measured best and costs nothing.

    Modes:

    - ``"timescale"`` (default): ``λ`` is moved, only as far as needed, so that the decay's timescale lies between
      one epoch and the whole run, i.e. ``1 <= K <= epochs`` (``min_budget`` is the lower end); a ``λ`` already
      inside is kept (:func:`~lightning_superconv.weight_decay.timescale_bounded`; Wang & Aitchison's EMA view of
      weight decay, 2024, with SGD's momentum gain). Tuned recipes usually lie inside (Smith's CIFAR
      runs spend ``K`` of 3-16) and are left alone; short runs with a conventional ``λ`` get a larger one. Measured:
      +0.06 to +0.46 points of test accuracy over the user's ``λ`` on every pair, never worse in the mean.
    - ``"grid"``: evidence from the run itself. From a snapshot taken just before the first training step, short
      branches each run the whole schedule compressed into a few steps (warm-up, peak and annealing at the real LRs
      and momenta), one per ``λ`` = the user's value times each of ``factors``, and the user's once more with another
      order of batches to measure the noise; each is scored by validation loss (the module's ``training_step`` loss
      on the validation dataloader, in eval mode). Another ``λ`` is adopted only if it beats the user's by more than
      twice the noise and by at least ``min_gain``; if a branch diverges, the schedule is at the edge of stability
      and ``λ`` is kept (:func:`~lightning_superconv.weight_decay_grid.guarded_pick`). When even the largest ``λ`` could
      not shrink the weights by 5 % within a branch, no branch is run
      (:data:`~lightning_superconv.weight_decay_grid.MIN_BRANCH_BUDGET`). Everything is
      restored afterwards (parameters, buffers, optimizer state, RNG streams, dataloader generators), so the run
      differs from an unbalanced one in ``λ`` alone. The branches train two thirds of ``cost`` of the run's steps
      and score at most as many validation batches as they train on: about ``cost`` of the training time (more with
      validation batches much larger than the training batches); what they took is reported. Without a validation
      dataloader ``λ`` is kept (with a warning): a choice by training loss would favour the smallest ``λ``.
      Measured: it kept the user's ``λ`` every time (at 21-26 % of the training time before the 5 % rule; at no cost
      since).
    - ``"budget"``: the constant ``λ`` whose budget ``K`` matches the user's own recipe (their configured LR,
      momentum and ``λ`` under the scheduler from ``configure_optimizers``, over the same steps; the README's
      budget reading of Smith & Topin), clamped to ``[bounds[0]·λ_ref, λ_ref]``: it only ever reduces ``λ``, as
      Smith prescribes. Measured: no gain, and two of three LeNet runs diverged.
    - ``"keep"``: leave ``λ`` as configured; log it and report the decay budget relative to the reference.

    A Schedule-Free optimizer keeps its ``λ``: its weight decay acts on an averaged iterate, not on the schedule this
    rule reads (there is none), so the balancer says so and leaves it.

    How each optimizer applies decay is read from the param group
    (:func:`~lightning_superconv.weight_decay.decay_form`): SGD's coupled L2 is amplified by momentum
    (``c = 1/(1-μ)``), AdamW's decoupled decay is not (``c = 1``). ``Adam(weight_decay=λ)`` couples the decay
    through its adaptive normalization, where none of this algebra holds: the callback warns; the default
    ``timescale`` mode keeps the user's ``λ`` there, and the ``budget`` mode treats it like decoupled decay. Param
    groups with ``weight_decay=0`` (norms and biases, by convention) are never touched. Every ``λ`` is clamped to
    ``bounds`` times the user's value, and so that no step decays the weights by more than 10 %.

    When it acts: at ``on_train_start``, after every callback's ``on_fit_start`` (so after ``SuperConvergence`` ran
    its range test and installed the one-cycle) and after Lightning restored a checkpoint. The range test runs at the
    user's ``λ`` (``SuperConvergence`` hides the other callbacks during it): it reads where the loss diverges as the
    LR rises within ~100 steps, where ``λ·η`` is far too small to move the pick, and the ``λ`` to choose depends on
    the schedule the pick decides, not the other way round. To read the user's own scheduler as the reference before
    ``SuperConvergence`` replaces it, the balancer moves itself in front of any ``SuperConvergence`` in
    ``trainer.callbacks`` during ``setup``: the order in which the two are listed does not matter.

    Checkpoints: the reference ``λ`` per group (the user's, or the ``reference_weight_decay`` given), the chosen one and
    the reference budget are kept in the callback's state (plain values). On ``fit(ckpt_path=...)`` Lightning loads
    that state before ``on_fit_start``, then restores the optimizer (whose groups hold the chosen ``λ``) and the
    scheduler before ``on_train_start``; the balancer then re-applies the chosen ``λ`` and measures nothing, so an
    already balanced value is never balanced again and the run continues exactly.

    Args:
        mode: ``"timescale"``, ``"grid"``, ``"budget"`` or ``"keep"`` (see above).
        factors: multiples of the user's ``λ`` the grid tries (each >= 0; the user's own, 1, is always tried).
        cost: about this fraction of the run's training time the grid's branches take, in (0, 1]: they train two
            thirds of it in steps and score a capped count of batches (measured: 0.25-0.32 of it at ``cost=0.25``).
        bounds: ``λ`` stays within ``[bounds[0], bounds[1]]`` times the user's value, ``0 <= low <= 1 <= high``.
        reference_lr: the LR of the reference recipe for the first param group (other groups keep their configured
            ratios; under timm's layer decay timm's base LR, each group's ``lr_scale`` in its ratio), held constant;
            refused where the first group's configured LR is 0 (no ratio to take); default: the recipe from
            ``configure_optimizers``.
        reference_weight_decay: the ``λ`` of the reference recipe for the first decayed group (others keep their
            ratios), > 0 (a recipe without weight decay has nothing to balance: leave the balancer out); default: each
            group's configured ``weight_decay``.
        min_budget: the smallest decay budget ``K`` in ``"timescale"`` mode (> 0): 1 lets decay alone shrink the
            weights by at least ``1/e`` over the run.
        min_gain: the smallest relative improvement of validation loss over the user's ``λ`` that the grid acts on
            (``0 <= min_gain < 1``).
        log_weight_decay: log the weight decay every ``log_every_n_steps`` steps (``superconv/weight_decay``; with no
            ``SuperConvergence`` logging them, the LR and momentum too).
        rebalance_on_rescue: when the divergence guard of a ``SuperConvergence`` in the same Trainer rolls back and
            lowers the cycle's peak, set ``λ`` again for the schedule that runs from there (see "After a rescue"); in
            ``"grid"`` or ``"keep"`` mode, or with no guard to follow, a warning at train start says it does nothing.

    After a rescue: a rescue lowers the rest of the cycle, often tenfold or more, so the ``λ`` chosen for the old
    peak no longer fits the schedule that actually runs. By default it is kept: on the pick zoo's tasks with weight
    decay, at peaks 3, 10 and 25 times too high, rebalancing ended no better than keeping it (the README's guard
    section). With ``rebalance_on_rescue=True`` the balancer traces the lowered cycle from the current step to the
    end before the next step, and applies its mode's rule to that rest of the run, from the user's ``λ`` again: in
    ``"timescale"`` mode ``K`` over the remaining steps between ``min_budget`` times their share of the run and
    their epochs (the same decay rate per step as the first balance allowed); in ``"budget"`` mode the reference
    recipe's budget over the remaining steps (in a resumed run, their share of the whole run's). The ``"grid"`` mode
    keeps its ``λ`` (its branches ran the old schedule; running them again mid-run would cost as much as at the
    start), and ``"keep"`` the user's. Each rebalance is recorded in :attr:`rebalances` and in checkpoints; a resume
    re-applies the latest ``λ``.

    Attributes:
        weight_decays: the ``λ`` of each param group once training has started.
        reference_weight_decays: the reference's ``λ`` of each param group: the user's, or the
            ``reference_weight_decay`` given (in the groups that decay).
        reason: one line on what was chosen and why.
        search: the grid's candidates and validation losses (``"grid"`` mode), else None.
        rebalances: one dict per rebalance after a rescue: ``step``, ``peak`` (the cycle's new peak),
            ``weight_decays`` (chosen then) and ``previous``.

    Raises:
        ValueError: if an argument is out of range.
        TypeError: if an argument has the wrong type (a string, a bool or a float where an integer is asked for, too).

    Example::

        >>> import lightning as L
        >>> from lightning_superconv import SuperConvergence
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[SuperConvergence(), WeightDecayBalancer()], logger=False)
    """

    def __init__(
        self,
        mode: Mode = "timescale",
        factors: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0),
        cost: float = 0.25,
        bounds: tuple[float, float] = (0.01, 10.0),
        reference_lr: float | None = None,
        reference_weight_decay: float | None = None,
        min_budget: float = 1.0,
        min_gain: float = 0.01,
        log_weight_decay: bool = True,
        rebalance_on_rescue: bool = False,
    ) -> None:
        mode = cast(Mode, check_choice("mode", mode, _MODES))
        if hasattr(factors, "tolist") and getattr(factors, "ndim", None) == 1:
            factors = factors.tolist()  # a NumPy array or a tensor, as for `bounds`
        if not isinstance(factors, (tuple, list)) or not factors:
            raise TypeError(
                f"`factors` must be a non-empty tuple or list (or 1-D array) of numbers >= 0, got {factors!r}"
            )
        for i, f in enumerate(factors):
            check_number(f"factors[{i}]", f, low=0.0, low_inclusive=True)
        check_number("cost", cost, low=0.0, high=1.0, high_inclusive=True)
        low, high = check_pair("bounds", bounds, "(low, high) with 0 <= low <= 1 <= high")
        check_number("bounds[0]", low, low=0.0, high=1.0, low_inclusive=True, high_inclusive=True)
        check_number("bounds[1]", high, low=1.0, low_inclusive=True)
        check_number("reference_lr", reference_lr, low=0.0, allow_none=True)
        check_number("reference_weight_decay", reference_weight_decay, low=0.0, allow_none=True)
        check_number("min_budget", min_budget, low=0.0)
        # a relative gain in loss, (user's - other) / user's, is below 1 for any loss >= 0
        check_number("min_gain", min_gain, low=0.0, high=1.0, low_inclusive=True)
        log_weight_decay = check_bool("log_weight_decay", log_weight_decay)
        rebalance_on_rescue = check_bool("rebalance_on_rescue", rebalance_on_rescue)
        if mode == "grid" and all(float(f) == 1.0 for f in factors):
            raise ValueError(
                "`factors` must hold a multiple of your λ other than 1 for the grid to compare it with (your own, 1, "
                f"is always tried), got {tuple(factors)!r}"
            )

        self.mode: Mode = mode
        self.factors = tuple(float(f) for f in factors)
        self.cost = float(cost)
        self.bounds = (float(low), float(high))
        self.reference_lr = None if reference_lr is None else float(reference_lr)
        self.reference_weight_decay = None if reference_weight_decay is None else float(reference_weight_decay)
        self.min_budget = float(min_budget)
        self.min_gain = float(min_gain)
        self.log_weight_decay = log_weight_decay
        self.rebalance_on_rescue = rebalance_on_rescue

        self.weight_decays: list[float] | None = None
        self.reference_weight_decays: list[float] | None = None
        self.reference_budgets: list[float] | None = None
        self.reason = ""
        self.search: dict[str, Any] | None = None
        self.rebalances: list[dict[str, Any]] = []
        # the optimizer steps the first balance was planned over (this fit's, from where it started)
        self.planned_steps: int | None = None
        # the global step this fit ends at, read at its start: a rebalance plans over the steps left before it
        self._fit_end: float = math.inf
        # the guard's rescues λ was balanced for (a checkpoint written at a rescue's step holds the rescue, not yet
        # its rebalance, which comes at the next batch: the resumed run makes it)
        self.rescues_balanced: int | None = None
        self._restored = False
        self._logger: ScheduleLogger | None = None
        # the SuperConvergence whose guard's rescues change the schedule (None: λ does not follow them)
        self._rescuer: Any = None
        self._restored_mode: str = mode  # the mode the restored λ was chosen in
        # under manual optimization, the LRs traced for the user's scheduler, checked against those that run
        self._manual_trace: _ManualTrace | None = None
        # the reference recipe as read at `on_fit_start`: each group's trace, explicit LR and gain, and the step read at
        self._reference_read: tuple[list[GroupTrace], list[float | None], list[float], int] | None = None
        self._reference_notes: list[str] = []
        # `max_epochs` before any callback's `on_fit_start` (StochasticWeightAveraging adds an epoch there)
        self._epochs_at_setup: int | None = None
        # each group's StochasticWeightAveraging LR where the trace could not place it (a stream): it bounds λ
        self._unread_lrs: list[float] | None = None

    # The state is keyed by the class name alone (Lightning's default), like `SuperConvergence`'s: a resume with
    # another `mode` finds it and re-applies the checkpoint's λ. Release 0.1.0 keyed it by mode too; such a state
    # is taken over in `on_load_checkpoint`.

    # ------------------------------------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _setups.claim_for_fit(trainer, self, "WeightDecayBalancer")
        self._logger = None
        self._rescuer = None
        self._manual_trace = None
        self._reference_read = None
        self._reference_notes = []
        self._epochs_at_setup = trainer.fit_loop.max_epochs
        self._unread_lrs = None
        self._forget_the_fit()
        _setups.refuse_a_second(trainer, self, WeightDecayBalancer)
        # in front of any SuperConvergence, so `on_fit_start` reads the user's scheduler before it is replaced
        from lightning_superconv.superconvergence import SuperConvergence

        _setups.move_in_front(trainer, self, (SuperConvergence,))

    @override
    def teardown(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, stage: str) -> None:
        if stage == "fit":
            _setups.release_from_fit(trainer, self)

    @override
    def on_exception(
        self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, exception: BaseException
    ) -> None:
        _setups.release_from_fit(trainer, self)

    def _forget_the_fit(self) -> None:
        """Clear what a fit found out: it describes that fit.

        Cleared at setup, so a fit with no step left to run does not show the previous fit's λ beside an optimizer that
        `configure_optimizers` built afresh (a resume brings its own back: `load_state_dict` runs after `setup`).
        """
        self._restored = False
        self.weight_decays = self.reference_weight_decays = self.reference_budgets = self.search = None
        self.reason = ""
        self.rebalances = []
        self.planned_steps = None
        self._fit_end = math.inf
        self.rescues_balanced = None
        self._restored_mode = self.mode

    @override
    def on_fit_start(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        optimizer = _trainer.single_optimizer(trainer, pl_module, "WeightDecayBalancer", automatic=False)
        if _compat.fast_dev_run(trainer) or _compat.overfit_batches(trainer):
            return
        if step_size_kind(optimizer) == "schedule-free":
            return
        after_setup = trainer.strategy.restore_checkpoint_after_setup
        if self._restored and not after_setup and not _compat.checkpoint_to_resume(trainer):
            # found trying the package as a new user: beside `BatchSizeFinder`, which restores a checkpoint of its
            # own in its `on_fit_start`, `fit(ckpt_path=...)` starts over at step 0 (Lightning's behaviour), and the λ
            # loaded from the user's checkpoint was kept with "resumed ... not balanced again"
            self._forget_the_fit()
        if self._restored:
            # the checkpoint holds the λ and the budgets. The recipe is not read again: that loads the train data here,
            # before Lightning restores the loader's state from the checkpoint, which it then never does (found in a
            # review); budget mode's rebalance after a rescue in a resumed run takes the share of the whole budget
            return
        if self.mode == "grid":
            # the grid trains short branches, stepping the optimizer itself: that needs automatic optimization, and
            # train data Lightning trains on
            _trainer.single_optimizer(
                trainer, pl_module, "WeightDecayBalancer(mode='grid')", automatic=True,
                instead="choose another `mode` ('budget', 'timescale' or 'keep')",
            )  # fmt: skip
            _trainer.refuse_dataloader_iter_steps(
                trainer, pl_module, "WeightDecayBalancer(mode='grid')",
                "choose another `mode` ('budget', 'timescale' or 'keep')",
            )  # fmt: skip
            _trainer.refuse_maximize(
                trainer, optimizer, "WeightDecayBalancer(mode='grid')", "the grid's held-out scores",
                "choose another `mode` ('budget', 'timescale' or 'keep')",
            )  # fmt: skip
            _compat.setup_train_data(trainer)
            _trainer.refuse_sequential_train_data(trainer, "WeightDecayBalancer(mode='grid')")
        # Read here, before SuperConvergence (moved behind us in `setup`) replaces the user's scheduler: this is the
        # recipe the user would have run without either callback, over the steps this fit runs (a second `fit` on a
        # Trainer runs the epochs left: found trying the package as a new user, its recipe was read over the whole
        # run, twice the steps, and `mode='budget'` chose twice the λ)
        configured = configured_weight_decays(optimizer)
        self.reference_weight_decays = _explicit_reference(configured, self.reference_weight_decay)
        self._reference_read = self._read_recipe(trainer, optimizer)
        self.reference_budgets = _reference_budgets(*self._reference_read[:3], self.reference_weight_decays, skip=0)

    def _read_recipe(
        self, trainer: _compat.Trainer, optimizer: Any
    ) -> tuple[list[GroupTrace], list[float | None], list[float], int]:
        """The reference recipe over the steps this fit runs: its traces, explicit LRs, gains and the step read at."""
        # loaded now, as the range test loads it: under `max_epochs=-1` Lightning loads it after `on_fit_start`, and
        # its length, unknown here, would read the reference's epochs as a stream's (found in a review)
        _compat.setup_train_data(trainer)
        total = self._steps_this_fit(trainer)
        specs = [] if self.reference_lr is not None else _scheduler_specs(trainer)
        with _refusing_unsettled_momentum(trainer, optimizer):
            gains = []
            for index, group in enumerate(optimizer.param_groups):
                try:
                    gains.append(group_gain(group, optimizer=optimizer))
                except UnsettledMomentumError as err:
                    raise UnsettledMomentumError(err.momentum, index) from None
            traces, notes = trace_schedule(
                optimizer, specs, total, _trainer.steps_per_epoch(trainer), _trainer.step_batch_counts(trainer, total),
                int(trainer.global_step), int(trainer.current_epoch), _trainer.epoch_length_known(trainer),
                _swa_swap(trainer, total),
            )  # fmt: skip
        # what the reference's trace could not foresee: said with the reason, where the run's own trace (the one-cycle,
        # once SuperConvergence replaced the user's scheduler) has no such note (found trying the package as a new user:
        # a `ReduceLROnPlateau` read as constant was no longer said to be, and `mode='budget'` rested on it)
        self._reference_notes = list(notes)
        if self.reference_lr is not None and configured_lrs(optimizer)[0] <= 0:
            # found in a review: the ratios were read against a first group at 0 as against an LR of 1, and the
            # head's reference LR came out as `reference_lr` times its own: its λ cut 20x without a word
            raise _compat.misconfiguration(
                trainer,
                "WeightDecayBalancer: `reference_lr` is the reference recipe's LR of the first param group, the "
                "others' taken at their configured ratios to it, but the first group's configured `lr` is "
                f"{configured_lrs(optimizer)[0]}, so there is no ratio to take. Put a group with a positive `lr` "
                "first in `configure_optimizers` (a group at `lr=0` in a later place stays at 0), or leave "
                "`reference_lr` unset to read the reference from your own schedule.",
            )
        return traces, _reference_lrs(optimizer, self.reference_lr), gains, int(trainer.global_step)

    @override
    def on_train_start(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        _compat.load_resumed_train_loader_states(trainer)  # read the recipe in `on_fit_start`, which loaded the data
        optimizer = _trainer.single_optimizer(trainer, pl_module, "WeightDecayBalancer", automatic=False)
        if self.log_weight_decay and not _superconvergence_logs_schedule(trainer):
            self._logger = ScheduleLogger(trainer, optimizer, all_groups=True)
        if _compat.fast_dev_run(trainer):
            _compat.rank_zero_info(trainer, "WeightDecayBalancer: `fast_dev_run` is on, so weight decay is unchanged.")
            return
        if _compat.overfit_batches(trainer):
            # as SuperConvergence's range test (found in a review: `"timescale"` raised λ 1.3x and the batch was fit
            # worse, a loss of 0.0140 against 0.0111; `"grid"` took 10x the user's)
            _compat.rank_zero_info(
                trainer,
                f"WeightDecayBalancer: `overfit_batches={_compat.overfit_batches(trainer)}` is on, a run that checks "
                "the model can fit a few batches: weight decay is unchanged (a balance is made for a model that "
                "generalizes).",
            )
            return
        if self._restored and self.weight_decays is not None:
            with _compat.without_swa_batch_norm_epoch(trainer, self._epochs_at_setup):
                self._fit_end = _trainer.resumed_fit_end(trainer)
            self._apply(optimizer, self.weight_decays)
            self._watch_rescues(trainer)
            # what changed since the checkpoint applies to new runs: said (found in a review: a resume given another
            # `reference_weight_decay` labelled the checkpoint's reference with it, and did not say it was ignored)
            unused = [f"`mode='{self.mode}'`"] if self._restored_mode != self.mode else []
            given = self.reference_weight_decay
            if given is not None and any(ref != given for ref in self.reference_weight_decays or [] if ref > 0):
                unused.append(f"`reference_weight_decay={given:g}`")
            when = (
                f"when the guard's rescue at step {self.rebalances[-1]['step']} lowered the peak"
                if self.rebalances
                else "at the start"
            )
            # the checkpoint's reference: the λ of the run that wrote it, or the `reference_weight_decay` it was given
            _compat.rank_zero_info(
                trainer,
                f"WeightDecayBalancer: resumed with weight_decay={_fmt(self.weight_decays)} chosen {when} "
                + (f"in `mode='{self._restored_mode}'` " if self._restored_mode != self.mode else "")
                + f"(reference λ {_fmt(self.reference_weight_decays or [])}); not balanced again"
                + (f" ({' and '.join(unused)} {_applies(len(unused))} to new runs)." if unused else "."),
            )
            return
        if step_size_kind(optimizer) == "schedule-free":
            self.weight_decays = configured_weight_decays(optimizer)
            self.reference_weight_decays = list(self.weight_decays)
            self.reason = (
                f"kept: `{type(optimizer).__name__}` is a Schedule-Free optimizer, whose weight decay acts on an "
                "averaged iterate and has no LR schedule to balance against"
            )
            _compat.rank_zero_info(
                trainer, f"WeightDecayBalancer: weight_decay={_fmt(self.weight_decays)} {self.reason}."
            )
            return
        read = self._reference_read
        # steps Lightning restored after `on_fit_start` read the recipe (a resume without the balancer's state)
        skipped = int(trainer.global_step) - read[3] if read is not None else 0
        if self.reference_weight_decays is None or self.reference_budgets is None:
            # a resume from a checkpoint written before the balancer chose (its state holds no λ): nothing to compare
            # against
            self.reference_weight_decays = configured_weight_decays(optimizer)
            self.reference_budgets = [math.nan] * len(optimizer.param_groups)
        elif read is not None and skipped > 0:
            # a resume from a checkpoint written without the balancer: the recipe was read over the whole run; the
            # budget of the steps left is its rest (found in a review: the whole run's was compared with the rest's,
            # and `mode='keep'` reported 0.5x)
            self.reference_budgets = _reference_budgets(*read[:3], self.reference_weight_decays, skipped)
        decayed = [i for i, wd in enumerate(self.reference_weight_decays) if wd > 0]
        if not decayed:
            self.weight_decays = list(self.reference_weight_decays)
            self.reason = "no param group has weight decay, nothing to balance" + (
                " (`reference_weight_decay` sets the reference of the groups that decay; none does)"
                if self.reference_weight_decay is not None
                else ""
            )
            _compat.rank_zero_info(trainer, f"WeightDecayBalancer: {self.reason}.")
            return
        self._warn_adaptive(trainer, optimizer, decayed)
        remaining = self._steps_this_fit(trainer)
        # a fit resumed from inside an epoch runs its rest first (found trying the package as a new user: traced as a
        # whole epoch, a `StepLR` stepped 5 steps late, 1.44x)
        first = _trainer.steps_left_in_resumed_epoch(trainer)
        if skipped > 0:
            # an epoch resumed from inside it runs only its batches left (found in a review: counted whole, 24 steps
            # were planned where 20 ran, and an unchanged recipe read as 1.2x the reference's budget)
            with _compat.without_swa_batch_norm_epoch(trainer, self._epochs_at_setup):
                end = _trainer.resumed_fit_end(trainer)
            remaining = max(int(end) - int(trainer.global_step), 1) if math.isfinite(end) else remaining
        self.planned_steps = remaining
        self._fit_end = int(trainer.global_step) + remaining
        with _refusing_unsettled_momentum(trainer, optimizer):
            traces, notes = trace_schedule(
                optimizer, _scheduler_specs(trainer), remaining, _epochs_from(trainer, first),
                _trainer.step_batch_counts(trainer, remaining, _trainer.batches_done_in_resumed_epoch(trainer) or 0),
                int(trainer.global_step), int(trainer.current_epoch),
                _trainer.epoch_length_known(trainer), _swa_swap(trainer, remaining, first),
            )  # fmt: skip
        swa_notes, self._unread_lrs = _swa_unread(trainer, len(optimizer.param_groups))
        if all(traces[i].decay_sum() == 0 for i in decayed) and self.mode != "keep":
            # decay acts through the LR: at 0 no λ changes anything (found in a review: "K = 0, still below the range",
            # and a grid that compared branches that could not differ)
            chosen = configured_weight_decays(optimizer)
            reason = "kept as configured: the LR of every group that decays is 0 at every step of this run"
        elif self.mode == "budget":
            chosen, reason = self._budget(optimizer, traces, decayed)
        elif self.mode == "timescale":
            chosen, reason = self._timescale(trainer, optimizer, traces, decayed)
        elif self.mode == "grid":
            chosen, reason = self._grid(trainer, pl_module, optimizer, traces, decayed)
        else:
            chosen = configured_weight_decays(optimizer)
            lead = self._lead(traces, decayed)
            ratio = self._budget_ratio(traces, lead, chosen[lead])
            reason = f"kept as configured (`mode='keep'`); decay budget {ratio}"
        self.weight_decays = chosen
        notes = [*notes, *swa_notes]
        said = [*notes, *(f"in the reference recipe, {note}" for note in self._reference_notes if note not in notes)]
        self.reason = reason + ("; " + "; ".join(said) if said else "")
        self._apply(optimizer, chosen)
        specs = _scheduler_specs(trainer)
        # the user steps the scheduler: under manual optimization, or through an `lr_scheduler_step` override (found
        # trying the package as a new user: one stepping a `StepLR` every other call was traced as stepped at every
        # call, and λ raised 1.4x for a budget half the one that ran); the cycle watches its own stepping
        manual = not pl_module.automatic_optimization
        stepped_by_the_user = manual or _compat.overrides(pl_module, "lr_scheduler_step")
        cycle = any(isinstance(spec.scheduler, SafeOneCycleLR) for spec in specs)
        if stepped_by_the_user and not cycle and specs and not notes and self.mode != "keep":
            self._manual_trace = _ManualTrace(optimizer, traces[0].lrs, int(trainer.global_step), specs, manual)
        _compat.rank_zero_info(
            trainer,
            f"WeightDecayBalancer: weight_decay={_fmt([chosen[i] for i in decayed])} "
            f"({self._whose} {_fmt([self.reference_weight_decays[i] for i in decayed])}): {self.reason}.",
        )
        self._watch_rescues(trainer)

    @override
    def on_train_batch_start(
        self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the one per-step check: has the guard lowered the cycle since the last balance? (an int compared)
        rescuer = self._rescuer
        if rescuer is not None and len(rescuer.rescues) != self.rescues_balanced:
            self._rebalance(trainer, pl_module, batch_idx)
        if self._logger is not None:
            self._logger.log(trainer)
        if self._manual_trace is not None and not self._manual_trace.holds(trainer):
            self._manual_trace = None

    @override
    def on_load_checkpoint(
        self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning loads the callbacks' states after this hook: a state under an older release's key (the class
        # name with the mode, e.g. "WeightDecayBalancer{'mode': 'timescale'}") is offered under today's
        states = checkpoint.get("callbacks") or {}
        if self.state_key not in states:
            older = [k for k in states if isinstance(k, str) and k.startswith(f"{type(self).__qualname__}{{")]
            if len(older) == 1:
                states[self.state_key] = states[older[0]]

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called before `on_fit_start` when `fit(ckpt_path=...)` resumes (after it, for the rare strategies that
        # restore after setup; `on_train_start` runs after both). The optimizer's param groups, which hold the chosen
        # λ, are restored by Lightning afterwards; the user's original λ comes from here, never from the groups.
        check_state_version(state_dict, "WeightDecayBalancer", _STATE_VERSION)
        for name in _RESTORED_FIELDS:
            setattr(self, name, state_dict.get(name, getattr(self, name)))
        self._restored = self.weight_decays is not None
        self._restored_mode = str(state_dict.get("mode", self.mode))

    @override
    def state_dict(self) -> dict[str, Any]:
        # plain values only, so checkpoints load with `torch.load(weights_only=True)`. The mode that chose λ: a run
        # resumed under another `mode` keeps the checkpoint's, and so does its own checkpoint (found trying the
        # package as a new user: a second resume then named the new mode as the one that chose λ)
        return {
            "version": _STATE_VERSION,
            "mode": self._restored_mode,
            **{name: getattr(self, name) for name in _RESTORED_FIELDS},
        }

    @property
    def _whose(self) -> str:
        """Whose ``λ`` the balance starts from, in the messages: the user's, or the ``reference_weight_decay`` given."""
        return "user's" if self.reference_weight_decay is None else "`reference_weight_decay`"

    @property
    def _start(self) -> str:
        """The ``λ`` the modes start from, in the reasons: the user's, or the ``reference_weight_decay`` given.

        Found trying the package as a new user: with a ``reference_weight_decay`` the reasons spoke of the user's
        ``λ`` and of leaving it "as configured" while the run trained at the reference's.
        """
        return "the user's λ" if self.reference_weight_decay is None else "the `reference_weight_decay`"

    def _steps_this_fit(self, trainer: _compat.Trainer) -> int:
        """The optimizer steps this fit runs from here, at least 1.

        A ``StochasticWeightAveraging`` batch-norm epoch, which trains nothing, is left out (found trying the package as
        a new user: counted as an epoch at SWA's LR, an unchanged recipe read as 1.47x its own budget with the balancer
        first in the callbacks list, 1x after SWA).
        """
        with _compat.without_swa_batch_norm_epoch(trainer, self._epochs_at_setup):
            return max(_trainer.steps_this_fit(trainer, _trainer.total_steps(trainer, "WeightDecayBalancer")), 1)

    @property
    def _adaptive_handling(self) -> str:
        """What this mode does with a group whose decay is coupled through an adaptive normalization, in warnings."""
        return _ADAPTIVE_HANDLING[self.mode].format(start=self._start)

    @property
    def _left(self) -> str:
        """Where a mode that cannot choose leaves ``λ``, in the reasons: as configured, or at the reference's."""
        return "left as configured" if self.reference_weight_decay is None else "left at the `reference_weight_decay`"

    # ------------------------------------------------------------------------------------------------ rescues

    def _watch_rescues(self, trainer: _compat.Trainer) -> None:
        """Follow the rescues of the ``SuperConvergence`` guard in this Trainer, if ``λ`` is to follow them."""
        from lightning_superconv.superconvergence import SuperConvergence

        self._rescuer = None
        if not self.rebalance_on_rescue:
            return
        # the mode that chose λ decides (a resume with another mode keeps the checkpoint's)
        if self._restored_mode not in ("timescale", "budget"):
            why = (
                "its branches ran the schedule of the first peak, and running them again mid-run would cost as much "
                "as at the start"
                if self._restored_mode == "grid"
                else "it keeps the user's λ"
            )
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer: `rebalance_on_rescue=True` does nothing in `mode='{self._restored_mode}'` "
                f"({why}): λ stays as chosen after a rescue. It applies to `mode='timescale'` and `mode='budget'`.",
            )
            return
        if not any(wd > 0 for wd in self.reference_weight_decays or []):
            return  # nothing decayed, nothing to balance
        rescuer = next((cb for cb in _compat.callbacks(trainer) if isinstance(cb, SuperConvergence)), None)
        if rescuer is None or not rescuer.guard:
            _compat.rank_zero_warn(
                trainer,
                "WeightDecayBalancer: `rebalance_on_rescue=True` follows the rescues of a `SuperConvergence`'s "
                "divergence guard, but "
                + ("this Trainer has no `SuperConvergence`" if rescuer is None else "its guard is off (`guard=False`)")
                + ": λ stays as chosen.",
            )
            return
        self._rescuer = rescuer
        if self.rescues_balanced is None:  # a fresh balance: for the rescues so far (none in a fresh fit)
            self.rescues_balanced = len(rescuer.rescues)

    def _rebalance(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule, batch_idx: int) -> None:
        """Apply the mode's rule again to the rest of the run, as the lowered cycle will run it.

        ``batch_idx``: the batch about to run, in an epoch under way; the trace's first epoch is the rest of it.
        """
        first = None
        if batch_idx > 0 and _trainer.epoch_length_known(trainer):
            first = _trainer.steps_left_in_epoch(trainer, batch_idx)
        rescues = self._rescuer.rescues
        self.rescues_balanced = len(rescues)
        assert self.reference_weight_decays is not None
        assert self.weight_decays is not None
        optimizer = _trainer.single_optimizer(trainer, pl_module, "WeightDecayBalancer", automatic=False)
        step = int(trainer.global_step)
        # the steps left of this fit (a second `fit`'s end is not the whole run's at its data's length: found trying
        # the package as a new user, one on shorter data was rebalanced over 42 steps where 50 were left)
        if math.isfinite(self._fit_end):
            end = self._fit_end
        else:
            with _compat.without_swa_batch_norm_epoch(trainer, self._epochs_at_setup):
                end = _trainer.total_steps(trainer, "WeightDecayBalancer")
        remaining = max(int(end) - step, 1)
        with _refusing_unsettled_momentum(trainer, optimizer):
            traces, _ = trace_schedule(
                optimizer, _scheduler_specs(trainer), remaining, _epochs_from(trainer, first),
                _trainer.step_batch_counts(trainer, remaining, batch_idx), step, int(trainer.current_epoch),
                _trainer.epoch_length_known(trainer), _swa_swap(trainer, remaining, first),
            )  # fmt: skip
        # groups added during training (`BackboneFinetuning`) keep the λ they came with, as at the start
        traces = traces[: len(self.reference_weight_decays)]
        decayed = [i for i, wd in enumerate(self.reference_weight_decays) if wd > 0]
        share = remaining / max(self.planned_steps or remaining, remaining)
        if self._restored_mode == "timescale":
            chosen, _ = self._timescale(trainer, optimizer, traces, decayed, share)
        else:
            chosen, _ = self._budget(optimizer, traces, decayed, share, self._reference_rest(step))
        previous = list(self.weight_decays)
        self.weight_decays = chosen
        self._apply(optimizer, chosen)
        peak = float(rescues[-1]["new_peak"])
        self.rebalances.append({"step": step, "peak": peak, "weight_decays": list(chosen), "previous": previous})
        _compat.rank_zero_info(
            trainer,
            f"WeightDecayBalancer: the divergence guard lowered the cycle's peak to {peak:.4g} at step {step}; "
            f"weight_decay={_fmt([chosen[i] for i in decayed])} for the remaining {remaining} steps (was "
            f"{_fmt([previous[i] for i in decayed])}, `mode='{self._restored_mode}'`).",
        )

    def _reference_rest(self, step: int) -> list[float] | None:
        """Each group's reference budget over the steps from ``step`` to the end of this fit, or None if not read.

        Not read in a resumed run (its ``on_fit_start`` leaves the train data to Lightning, which restores its state).

        The reference recipe's own steps there: a share of the whole run's budget is that only for a constant LR (found
        in a review: after a rescue at step 20 of 128 under the user's cosine, a share of 0.84 asked 1.21 times the
        decay the recipe spends over those steps).
        """
        read = self._reference_read
        if read is None or self.reference_weight_decays is None or step < read[3]:
            return None
        return _reference_budgets(*read[:3], self.reference_weight_decays, skip=step - read[3])

    # ------------------------------------------------------------------------------------------------ modes

    def _budget_ratio(self, traces: Sequence[GroupTrace], index: int, weight_decay: float | None = None) -> str:
        """The schedule's decay budget at ``weight_decay`` (default: the modes' starting ``λ``) over the reference's.

        In words: ``"1.5x the reference recipe's"``, or why there is no ratio. ``mode='keep'`` passes the ``λ`` it
        keeps: with a ``reference_weight_decay`` the start's would cancel out of the ratio (found trying the package
        as a new user: the same 21.4x for every reference given).
        """
        assert self.reference_weight_decays is not None
        assert self.reference_budgets is not None
        ref = self.reference_budgets[index]
        wd = self.reference_weight_decays[index] if weight_decay is None else weight_decay
        if math.isnan(ref):
            return "not compared: the checkpoint resumed from was written before the balancer read the reference"
        if ref <= 0:
            # found in a review: "nanx the reference's" where the reference recipe's LR is 0
            return "not compared: the reference recipe spends none (its LR is 0)"
        return f"{wd * traces[index].decay_sum() / ref:.3g}x the reference recipe's"

    def _bounds(self, optimizer: Any, traces: Sequence[GroupTrace], index: int) -> tuple[float, float]:
        assert self.reference_weight_decays is not None
        form = decay_form(optimizer.param_groups[index], optimizer)
        trace = self._capped_trace(traces, index)
        return bounds_for(self.reference_weight_decays[index], trace, self.bounds[0], self.bounds[1], form)

    def _capped_trace(self, traces: Sequence[GroupTrace], index: int) -> GroupTrace:
        """The group's trace as the cap of decay per step reads it: with SWA's LR, which the trace could not place.

        SWA's LR still bounds the decay of a step (found trying the package as a new user: a stream's steps at SWA's
        10x LR decayed the weights by a third each).
        """
        trace = traces[index]
        if self._unread_lrs is not None and index < len(self._unread_lrs) and trace.lrs:
            lrs, momenta, gains = [*trace.lrs, self._unread_lrs[index]], [*trace.momenta], [*trace.gains]
            trace = GroupTrace(lrs, [*momenta, momenta[-1]], [*gains, gains[-1]])
        return trace

    def _budget(
        self,
        optimizer: Any,
        traces: Sequence[GroupTrace],
        decayed: list[int],
        share: float = 1.0,
        rest: Sequence[float] | None = None,
    ) -> tuple[list[float], str]:
        """Match each decayed group's budget over the traces' steps to the reference recipe's, within its bounds.

        ``rest``: the reference budget over the traces' steps (the rest of the run, after a rescue); else ``share``,
        the traces' part of the run, times the whole run's budget.
        """
        assert self.reference_weight_decays is not None
        assert self.reference_budgets is not None
        chosen = list(self.reference_weight_decays)
        for i in decayed:
            low, high = self._bounds(optimizer, traces, i)
            ref_budget = rest[i] if rest is not None else self.reference_budgets[i] * share
            chosen[i] = (
                chosen[i]
                if not math.isfinite(ref_budget)
                else budget_matched(ref_budget, traces[i], (low, min(high, chosen[i])))
            )
        ratio = self._budget_ratio(traces, self._lead(traces, decayed))
        return chosen, (
            f"decay budget matched to the reference recipe (`mode='budget'`): the schedule's budget at {self._start}: "
            f"{ratio}, clamped to [{self.bounds[0]:g}, 1]x {self._start}"
        )

    def _timescale(
        self,
        trainer: _compat.Trainer,
        optimizer: Any,
        traces: Sequence[GroupTrace],
        decayed: list[int],
        share: float = 1.0,
    ) -> tuple[list[float], str]:
        """``share``: the traces' part of the run (the rest of it, after a rescue): ``min_budget`` scales with it."""
        assert self.reference_weight_decays is not None
        refs = self.reference_weight_decays
        # a stream without a length has no epoch to bound the timescale by: only the lower bound holds
        known = _trainer.epoch_length_known(trainer)
        epochs = epochs_spanned(_trainer.steps_per_epoch(trainer), len(traces[decayed[0]].lrs)) if known else math.inf
        least = self.min_budget * share
        budget_range = (least, max(least, epochs))
        chosen = list(refs)
        adaptive = []
        for i in decayed:
            if decay_form(optimizer.param_groups[i], optimizer) == "adaptive":
                adaptive.append(i)  # no closed form for the shrink: keep the λ the mode starts from (see the warning)
                continue
            chosen[i] = timescale_bounded(refs[i], traces[i], budget_range, self._bounds(optimizer, traces, i))
        first = self._lead(traces, decayed)
        spent = refs[first] * traces[first].decay_sum()
        now = chosen[first] * traces[first].decay_sum()
        inside = lambda budget: budget_range[0] * (1 - 1e-9) <= budget <= budget_range[1] * (1 + 1e-9)  # noqa: E731
        moved = not math.isclose(chosen[first], refs[first])
        # the direction λ moved in, from the user's (found in a review: "raised" where the cap of decay per step had
        # lowered it 5x, from above the range to below it)
        verb = "raised" if chosen[first] > refs[first] else "lowered"
        side = "below" if now < budget_range[0] else "above"
        # a stream has no epoch to bound the timescale by (found in a review: "between one epoch and the whole run",
        # beside "no epoch to bound it by")
        aim = "between one epoch and the whole run" if known else "within the run"
        if first in adaptive:
            verdict = f"{self._start} kept: adaptive coupled decay has no decay budget to bound"
        elif not inside(now) and moved and (now < budget_range[0]) == (verb == "raised"):
            # `bounds` or the 10 %-per-step cap stopped it short: say so rather than claim the range was reached
            verdict = (
                f"{verb} only as far as {self._held_by(optimizer, traces, first, chosen[first])} allows: "
                f"K = {now:.3g}, still {side} the range it aims for"
            )
        elif not inside(now) and moved:
            # the cap of decay per step took it past the range
            verdict = (
                f"{verb} by {self._held_by(optimizer, traces, first, chosen[first])}: K = {now:.3g}, {side} the "
                "range it aims for"
            )
        elif not inside(now):
            verdict = (
                f"kept, held by {self._held_by(optimizer, traces, first, chosen[first])}: K = {now:.3g}, {side} the "
                "range it aims for"
            )
        elif moved and inside(spent):
            # inside the range already, and moved all the same: by the cap (found in a review: "moved so that decay
            # acts on a timescale between one epoch and the whole run", where it already did)
            verdict = (
                f"{verb} by {self._held_by(optimizer, traces, first, chosen[first])}: K = {now:.3g}, still inside the "
                f"range it aims for, {aim}"
            )
        elif not moved:
            verdict = f"kept: its decay timescale already lies {aim}"
        elif epochs < least:
            # found trying the package as a new user: a run of 0.6 epochs said "between one epoch and the whole run"
            verdict = (
                f"moved to the smallest budget allowed, K = {now:.3g} (`min_budget`): the run spans fewer epochs than "
                f"that, so no timescale lies between one epoch and the whole run (`bounds` allow "
                f"{self.bounds[0]:g}-{self.bounds[1]:g}x)"
            )
        else:
            verdict = (
                f"moved so that decay acts on a timescale {aim} (K = {now:.3g}; "
                f"`bounds` allow {self.bounds[0]:g}-{self.bounds[1]:g}x)"
            )
        allowed = (
            f"{budget_range[0]:g} only"
            if budget_range[0] == budget_range[1]
            else f"{budget_range[0]:g}-{budget_range[1]:.3g}"
        )
        others = ""
        if len(decayed) > 1:
            # found trying the package as a new user: the verdict, of the first group alone, read as every group's
            verdict = f"param group {first}: {verdict}"
            others = "; " + ", ".join(
                f"param group {i}: "
                + ("kept (adaptive)" if i in adaptive else self._budget_of(chosen[i], traces[i], budget_range))
                for i in decayed
                if i != first
            )
        span = (
            f"({epochs:.3g} epoch{'' if epochs == 1 else 's'})"
            if known
            else "(a data stream without a length: no epoch to bound it by)"
        )
        if first in adaptive:
            # no budget to quote for it: the verdict says there is none (found trying the package as a new user: "no
            # decay budget to bound ...; the run would spend a decay budget K = ... of 3.19e-05"); the other groups'
            # range, which their words refer to, is said (found in a review)
            allowed_others = f"; the other groups' decay budgets K = Σ c·η·λ are allowed {allowed} {span}"
            return chosen, f"{verdict} (`mode='timescale'`){allowed_others if others else ''}{others}"
        return chosen, (
            f"{verdict} (`mode='timescale'`); at {self._start} the run would spend a decay budget K = Σ c·η·λ of "
            f"{spent:.3g}, allowed {allowed} {span}{others}"
        )

    @staticmethod
    def _lead(traces: Sequence[GroupTrace], decayed: Sequence[int]) -> int:
        """The group the reasons' verdict speaks of: the first decayed one whose LR is not 0 at every step.

        Found in a review: a group held at LR 0 listed first was said to be "raised only as far as `bounds` allows:
        K = 0", and "the whole run spends K = 0" of a run whose head spent 0.16.
        """
        return next((i for i in decayed if traces[i].decay_sum() > 0), decayed[0])

    def _held_by(self, optimizer: Any, traces: Sequence[GroupTrace], index: int, weight_decay: float) -> str:
        """Which limit holds ``weight_decay`` where the mode stopped short: `bounds`, or the cap of decay per step.

        Found trying the package as a new user: both were named where `bounds` alone held (the steps decayed the
        weights by 0.05 % at most, far below the cap's 10 %).
        """
        cap = step_decay_cap(self._capped_trace(traces, index), decay_form(optimizer.param_groups[index], optimizer))
        if weight_decay >= cap * (1 - 1e-9):
            return f"the cap of {MAX_STEP_DECAY:.0%} decay per step"
        return f"`bounds` ({self.bounds[0]:g}-{self.bounds[1]:g}x {self._start})"

    @staticmethod
    def _budget_of(weight_decay: float, trace: GroupTrace, budget_range: tuple[float, float]) -> str:
        """A further group's decay budget under ``weight_decay``, and whether `bounds` or the cap kept it out of range.

        The first group's verdict, in words, is the message's; each further group gets its budget and that.
        """
        budget = weight_decay * trace.decay_sum()
        if trace.decay_sum() == 0:
            return "K = 0: its LR is 0 at every step, where no λ decays"
        if budget < budget_range[0] * (1 - 1e-9):
            return f"K = {budget:.3g}, below the range (`bounds` or the cap)"
        if budget > budget_range[1] * (1 + 1e-9):
            return f"K = {budget:.3g}, above the range (`bounds` or the cap)"
        return f"K = {budget:.3g}"

    def _grid(
        self,
        trainer: _compat.Trainer,
        pl_module: _compat.LightningModule,
        optimizer: Any,
        traces: Sequence[GroupTrace],
        decayed: list[int],
    ) -> tuple[list[float], str]:
        assert self.reference_weight_decays is not None
        refs = self.reference_weight_decays
        val_batches = HeldOutBatches.validation(trainer)
        if val_batches is None:
            given = _compat.has_val_dataloaders(trainer)
            off = trainer.limit_val_batches == 0 and given
            why, fix = (
                ("validates on no batch (`limit_val_batches=0`)", "Let it validate")
                if off
                else ("has validation loaders that hold no batch (none in the list given, or fewer samples than a "
                      "batch with `drop_last=True`)", "Give them batches")
                if given
                else ("has no validation dataloader", "Add a `val_dataloader`")
            )  # fmt: skip
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer(mode='grid') chooses weight decay by validation loss, but this run {why}; weight "
                f"decay is {self._left}. {fix}, or use the default `mode='timescale'`, which needs no validation data.",
            )
            return list(refs), f"{self._left}: no validation data to choose by"
        first = self._lead(traces, decayed)
        total = len(traces[first].lrs)
        first_bounds = self._bounds(optimizer, traces, first)
        high = first_bounds[1]
        if refs[first] > high:
            # the grid measures other λ against the user's, which cannot run here: capped, like every mode's choice
            capped = [
                clamp(refs[i], self._bounds(optimizer, traces, i)) if i in decayed else refs[i]
                for i in range(len(refs))
            ]
            return capped, (
                f"capped at {high:.3g}, no grid: at {self._start} one step at the cycle's peak would shrink the "
                "weights by more than 10 %, and the grid compares other λ with it"
            )
        plan = plan_grid(refs[first], self.factors, first_bounds, total, self.cost)
        if isinstance(plan, str):
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer(mode='grid'): {plan} within `cost={self.cost}`, too few to compare weight "
                f"decays; weight decay is {self._left}.",
            )
            return list(refs), f"{self._left}: the run is too short for a grid within `cost={self.cost}`"
        if len(plan.factors) < 2:
            return list(refs), (
                f"kept: `bounds` ({self.bounds[0]:g}-{self.bounds[1]:g}x {self._start}) and the cap of 10 % decay per "
                f"step clamp every factor of {_fmt(list(self.factors))} onto {self._start}, so the grid has nothing to "
                "compare and no branch was run"
            )
        # whether any group decays enough in a branch to tell weight decays apart, each group's largest λ held within
        # its own bounds (found in a review: read off the first group alone, a body listed first at a hundredth of the
        # head's LR skipped the grid, while the same model with its head listed first ran it)
        top = max(plan.factors)
        spent = {i: plan.budget(traces[i], min(refs[i], self._bounds(optimizer, traces, i)[1] / top)) for i in decayed}
        most = max(decayed, key=spent.__getitem__)
        branch_budget = spent[most]
        if branch_budget < MIN_BRANCH_BUDGET:
            full = refs[most] * traces[most].decay_sum()
            return list(refs), (
                f"kept: in branches of {plan.steps} steps even {max(plan.factors):g}x {self._start} would shrink the "
                f"weights by {100 * (1 - math.exp(-branch_budget)):.2g} % (decay budget K = {branch_budget:.2g}), too "
                f"little to tell weight decays apart, so no branch was run (the whole run spends K = {full:.3g} at "
                f"{self._start})"
            )
        start = time.perf_counter()
        # each group's λ within its own bounds, as the one adopted will be: the factors are planned within the first
        # group's (found in a review: a head at 10x the LR was tried at 50 % decay per step, and a λ no branch ran
        # adopted)
        bounds = {i: self._bounds(optimizer, traces, i) for i in decayed}
        branches = [
            Branch(
                traces=[trace.at(plan.indices) for trace in traces],
                weight_decays={i: clamp(refs[i] * factor, bounds[i]) for i in decayed},
                order=order,
                label=factor,
            )
            for factor, order in plan.runs
        ]
        try:
            losses, train_seconds = run_branches(trainer, pl_module, optimizer, branches, val_batches)
        except UnscorableBatchesError as err:  # everything the branches changed is back
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer(mode='grid') chooses weight decay by the `training_step` loss on the validation "
                f"batches in eval mode without gradients, as validation runs, but {err}; weight decay is "
                f"{self._left}. Make `training_step` accept validation batches there, or use `mode='timescale'`.",
            )
            return list(refs), f"{self._left}: `training_step` cannot score the validation batches: {err}"
        except DataRanOutError as err:
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer(mode='grid'): {err} in the branches, so its data can be read only once: weight "
                f"decay is {self._left}, and training gets only what is left. Give the dataset an `__iter__` that "
                "starts over on each call, or use `mode='timescale'`.",
            )
            return list(refs), f"{self._left}: {err} in the branches"
        seconds = time.perf_counter() - start
        factors = plan.factors
        decision = guarded_pick(factors, losses[: len(factors)], losses[-1], self.min_gain, self._start)
        factor = factors[decision.index]
        chosen = list(refs)
        for i in decayed:
            chosen[i] = clamp(refs[i] * factor, bounds[i])
        # a group whose λ its bounds moved off the factor is said (found in a review: "kept" while a head at 10x the
        # LR had its λ lowered by the cap of 10 % decay per step)
        held = [i for i in decayed if not math.isclose(chosen[i], refs[i] * factor)]
        where = (
            ""
            if not held
            else "; "
            + ", ".join(
                f"param group {i} held at {chosen[i]:.3g} by `bounds` or the cap of 10 % decay per step" for i in held
            )
        )
        step_seconds = train_seconds / max(plan.steps * len(plan.runs), 1)
        fraction = seconds / max(step_seconds * total, 1e-12)
        self.search = {
            "factors": factors,
            "val_losses": losses[: len(factors)],
            "replicate_val_loss": losses[-1],
            "factor": factor,
            "branch_steps": plan.steps,
            "seconds": seconds,
            "cost_fraction": fraction,
        }
        shown = ", ".join(f"{f:.3g}x: {loss:.4g}" for f, loss in zip(factors, losses, strict=False))
        return chosen, (
            f"{decision.reason}{where} [validation loss after {len(plan.runs)} branches of {plan.steps} steps: "
            f"{shown}, 1x again: {losses[-1]:.4g}; the search took {seconds:.1f} s, about {100 * fraction:.0f} % of "
            "the training time]"
        )

    def _apply(self, optimizer: Any, values: Sequence[float]) -> None:
        # groups added later (e.g. by `BackboneFinetuning`, and present on a resume) keep the λ they came with
        for group, value in zip(optimizer.param_groups, values, strict=False):
            # a group with no `weight_decay` (an optimizer of the user's whose defaults lack it) decays at 0 and keeps
            # no such key: found trying the package as a new user, it was given one
            if "weight_decay" in group or value != 0.0:
                group["weight_decay"] = float(value)

    def _warn_adaptive(self, trainer: _compat.Trainer, optimizer: Any, decayed: list[int]) -> None:
        adaptive = [
            optimizer.param_groups[i] for i in decayed if decay_form(optimizer.param_groups[i], optimizer) == "adaptive"
        ]
        option = next((key for group in adaptive if (key := decay_off_the_lr(group)) is not None), None)
        if option is not None:
            shrink = (
                "λ per step, whatever the LR" if option == "fixed_decay" else "λ·η²/η₀ (η₀ the LR it was built with)"
            )
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer: {type(optimizer).__name__} with `{option}=True` shrinks the weights by "
                f"{shrink}, no constant times the LR η times λ. The decay budget has no closed form there; "
                f"{self._adaptive_handling}. For weight decay balanced with the schedule, pass `{option}=False`.",
            )
        elif adaptive and not any(key in adaptive[0] for key in ("eps", "betas")):
            # no key of an adaptive normalization either: an optimizer the balancer cannot read (found trying the
            # package as a new user: a momentum SGD of the user's own was told it normalized its gradients)
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer: its param groups do not say how {type(optimizer).__name__} applies "
                "`weight_decay` (no flag of decoupled decay, not SGD's `momentum` with `dampening`, no `eps` or "
                "`betas` of an adaptive normalization), so the decay budget cannot be computed; "
                f"{self._adaptive_handling}.",
            )
        elif adaptive:
            # Adam, NAdam and RAdam take the flag; Adagrad, RMSprop, Adamax... raise a TypeError on it
            remedy = (
                "pass `decoupled_weight_decay=True`, or use AdamW"
                if "decoupled_weight_decay" in adaptive[0]
                else "use an optimizer with decoupled decay, such as AdamW"
            )
            _compat.rank_zero_warn(
                trainer,
                f"WeightDecayBalancer: {type(optimizer).__name__} applies `weight_decay` as L2 added to the gradient "
                "before its adaptive normalization, so each weight decays inversely to the scale of its gradients "
                "(1/sqrt of their second moment for Adam and RMSprop) and weights with large gradients hardly decay "
                f"at all. The decay budget has no closed form there; {self._adaptive_handling}. For weight "
                f"decay that behaves as specified, {remedy}.",
            )


#: What each mode does with a param group whose decay is coupled through Adam's normalization (the warning's words).
#: ``{start}``: the λ the modes start from (found in a review: with a ``reference_weight_decay`` the warning said the
#: user's was kept, and the run trained at the reference's, 1000x it).
_ADAPTIVE_HANDLING = {
    "timescale": "`mode='timescale'` keeps {start} for such groups",
    "budget": "`mode='budget'` treats it like decoupled decay (shrinks η·λ per step)",
    "grid": "`mode='grid'` compares weight decays by training with them (its check that a grid is worth running "
    "still reads that budget)",
    "keep": "`mode='keep'` leaves it as configured",
}


# ---------------------------------------------------------------------------------------------------- helpers


def _superconvergence_logs_schedule(trainer: _compat.Trainer) -> bool:
    # asked at `on_train_start`, after every callback's `on_fit_start` (found trying the package as a new user: under
    # `overfit_batches` SuperConvergence installs no cycle and logs nothing, and the balancer, seeing it in the list,
    # left the λ it changed unlogged)
    from lightning_superconv.superconvergence import SuperConvergence

    return any(isinstance(cb, SuperConvergence) and cb._logs_schedule_this_fit for cb in _compat.callbacks(trainer))


class _ManualTrace:
    r"""Where the user steps the scheduler, the LRs traced for it, checked at each step against those that run.

    Lightning steps no scheduler under manual optimization: the user does, as often as they choose, and the config's
    ``interval`` (``"epoch"`` unless set), which Lightning then ignores, is all the trace can go by (found trying the
    package as a new user: a ``CosineAnnealingLR`` stepped at every batch, as Lightning's docs show, was traced as
    stepped once per epoch, and λ was chosen for a decay budget 2x the one that ran; 5x for a ``StepLR``). Under
    automatic optimization a module's ``lr_scheduler_step`` override steps it, as it chooses, where Lightning calls it.
    """

    def __init__(
        self, optimizer: Any, lrs: list[float], start_step: int, specs: Sequence[SchedulerSpec], manual: bool = True
    ) -> None:
        self.optimizer = optimizer
        self.lrs = lrs
        self.start_step = start_step
        self.specs = list(specs)
        self.manual = manual

    def holds(self, trainer: _compat.Trainer) -> bool:
        """Whether there is more to check: False once the run has passed the trace, or left it (said, once)."""
        step = int(trainer.global_step) - self.start_step
        if not 0 <= step < len(self.lrs):
            return False
        lr = float(self.optimizer.param_groups[0]["lr"])
        traced = self.lrs[step]
        if math.isclose(lr, traced, rel_tol=1e-6, abs_tol=1e-12):
            return True
        how = ", ".join(
            f"`{type(spec.scheduler).__name__}` once per "
            + (f"{spec.frequency} " if spec.frequency > 1 else "")
            + ("epoch" if spec.interval == "epoch" else "optimizer step")
            + ("s" if spec.frequency > 1 else "")
            for spec in self.specs
        )
        if self.manual:
            message = (
                f"WeightDecayBalancer: under manual optimization you step your scheduler yourself, and the LR at step "
                f"{step} of this fit is {lr:.4g} where the balancer traced {traced:.4g}: it read {how}, from the "
                "scheduler config's `interval` and `frequency` (`interval='epoch'` unless set; Lightning does not use "
                "them under manual optimization), and chose weight decay for that schedule, not the one that runs. "
                "Set `'interval'` (`'step'` for a scheduler you step after each `opt.step()`) and `'frequency'` in "
                "the scheduler config returned by `configure_optimizers` to how you step it."
            )
        else:
            message = (
                f"WeightDecayBalancer: your module's `lr_scheduler_step` override steps your scheduler, and the LR at "
                f"step {step} of this fit is {lr:.4g} where the balancer traced {traced:.4g}: it read {how}, as "
                "Lightning calls `lr_scheduler_step` (from the scheduler config's `interval` and `frequency`), with "
                "the override making one `scheduler.step()` per call, and chose weight decay for that schedule, not "
                "the one that runs. Step it once per call in the override and set the config's `'frequency'` to how "
                "often it should step, or set `weight_decay` yourself and leave out the balancer."
            )
        _compat.rank_zero_warn(trainer, message)
        return False


def _epochs_from(trainer: _compat.Trainer, first: int | None) -> int | list[int]:
    """Optimizer steps per epoch from here, for a trace: ``first``, the steps left of an epoch under way, first.

    ``first``: None where the trace starts at the current epoch's start; 0 where that epoch is over (the trace starts
    at the next one's).
    """
    per_epoch = _trainer.steps_per_epoch(trainer)
    if first is None or not _trainer.epoch_length_known(trainer):
        return per_epoch
    lengths = [per_epoch] if isinstance(per_epoch, int) else list(per_epoch)
    rest = lengths[1:] or lengths
    return rest if first == 0 else [first, *rest]


def _swa_swap(trainer: _compat.Trainer, steps: int, first: int | None = None) -> ScheduleSwap | None:
    """``StochasticWeightAveraging``'s ``SWALR`` from the first step of its start epoch, within the ``steps`` traced.

    The trace starts at the current epoch's start, or ``first`` steps before its end (a resume from inside it, a
    rebalance; 0: at the next epoch's start). SWA takes over at the first epoch start it sees at or after its start
    epoch: a fit resumed past it rebuilds its ``SWALR`` there, with the state the checkpoint gave it (found in a review:
    read as the constant LR or the user's scheduler, an unchanged recipe measured 0.83x the reference's budget). None
    where SWA has taken over already (in this fit its ``SWALR`` is then the Trainer's scheduler, read as such; it
    never swaps again in a later fit on the Trainer), starts after the steps traced, or the epochs have no known
    length.
    """
    takeover = _compat.swa_takeover(trainer)
    if takeover is None:
        return None
    if not _trainer.epoch_length_known(trainer):
        return None  # it takes over, and anneals, at epoch ends no one can foretell: said in the reason (`_swa_unread`)
    epoch, build, state = takeover.epoch, takeover.build, takeover.state
    current = int(trainer.current_epoch)
    ends = epoch_ends(_epochs_from(trainer, first), steps)
    # (epoch, the traced step it starts at) for each epoch start SWA sees
    if first is None:
        starts = [(current, 0), *((current + 1 + i, end) for i, end in enumerate(ends))]
    elif first > 0:
        starts = [(current + 1 + i, end) for i, end in enumerate(ends)]
    else:
        starts = [(current + 1, 0), *((current + 2 + i, end) for i, end in enumerate(ends))]
    at = next((start for number, start in starts if number >= epoch and start < steps), None)
    if at is None:
        return None
    resumed = state is not None and epoch <= current  # it had taken over before the checkpoint: it takes that up

    def rebuilt(optimizer: Any) -> Any:
        scheduler = build(optimizer)
        if resumed:
            scheduler.load_state_dict(state)
        return scheduler

    return ScheduleSwap(at, rebuilt)


def _swa_unread(trainer: _compat.Trainer, groups: int) -> tuple[list[str], list[float] | None]:
    """A note for the reason, and each group's SWA LR, where ``StochasticWeightAveraging`` cannot be traced.

    On a stream its LR follows epochs no one can foretell; the LR still bounds the decay of a step
    (:meth:`WeightDecayBalancer._bounds`).

    Found trying the package as a new user: on data without a length, SWA's ``SWALR`` at 10x the LR was left out
    without a word, and its steps decayed the weights by a third each.
    """
    takeover = _compat.swa_takeover(trainer)
    if takeover is None or _trainer.epoch_length_known(trainer):
        return [], None
    note = (
        f"`StochasticWeightAveraging`'s `SWALR` takes over at the start of epoch {takeover.epoch} and anneals at epoch "
        "ends, which data without a length does not foretell, and was not read"
    )
    return [note], takeover.lrs(groups)


def _scheduler_specs(trainer: _compat.Trainer) -> list[SchedulerSpec]:
    return [
        SchedulerSpec(config.scheduler, "epoch" if config.interval == "epoch" else "step", int(config.frequency))
        for config in trainer.strategy.lr_scheduler_configs
    ]


@contextlib.contextmanager
def _refusing_unsettled_momentum(trainer: _compat.Trainer, optimizer: Any) -> Iterator[None]:
    """Turn a momentum of 1 or more met in a trace into a refusal that names the balancer, the group and the fix.

    torch's SGD accepts ``momentum=1`` (found in a review: a bare ``ValueError`` from the maths, naming neither the
    balancer nor the param group).
    """
    try:
        yield
    except UnsettledMomentumError as err:
        raise _compat.misconfiguration(
            trainer,
            f"WeightDecayBalancer cannot trace the weight decay of param group {err.group} of "
            f"`{type(optimizer).__name__}`: its momentum is {err.momentum:g}"
            + (
                " at fit start (as configured, or as its scheduler set it)"
                if err.step is None
                else f" at step {err.step} (as its scheduler sets it)"
            )
            + ". Weight decay that enters a momentum of 1 or more never settles at a rate of decay (the buffer never "
            "forgets), so there is none to trace or balance. Use a momentum below 1 (0.9 is usual), or remove the "
            "callback.",
        ) from err


def _reference_budgets(
    traces: Sequence[GroupTrace],
    lrs: Sequence[float | None],
    gains: Sequence[float],
    weight_decays: Sequence[float],
    skip: int,
) -> list[float]:
    """Each group's decay budget under the reference recipe, over its steps after the first ``skip``."""
    budgets = []
    for trace, lr, gain, wd in zip(traces, lrs, gains, weight_decays, strict=True):
        steps = max(len(trace.lrs) - skip, 0)
        if wd == 0:
            budgets.append(0.0)  # whatever its trace (a momentum of 1 leaves its gain unread: NaN)
        elif lr is None:
            budgets.append(wd * trace.at(range(skip, skip + steps)).decay_sum())
        else:
            budgets.append(reference_budget(lr, gain, wd, steps))
    return budgets


def _reference_lrs(optimizer: Any, reference_lr: float | None) -> list[float | None]:
    """The explicit reference LR per group (keeping configured ratios), or None: use the traced user schedule."""
    if reference_lr is None:
        return [None] * len(optimizer.param_groups)
    lrs = configured_lrs(optimizer)
    base = lrs[0] if lrs[0] > 0 else 1.0
    return [reference_lr * lr * scale / base for lr, scale in zip(lrs, lr_scales(optimizer), strict=True)]


def _applies(count: int) -> str:
    return "applies" if count == 1 else "apply"


def _explicit_reference(configured: list[float], reference: float | None) -> list[float]:
    if reference is None:
        return configured
    first = next((wd for wd in configured if wd > 0), None)
    if first is None:
        return configured
    return [reference * wd / first for wd in configured]


def _fmt(values: Sequence[float]) -> str:
    unique = sorted(set(values))
    return f"{unique[0]:.3g}" if len(unique) == 1 else "[" + ", ".join(f"{v:.3g}" for v in values) + "]"
