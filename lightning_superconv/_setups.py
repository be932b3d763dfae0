r"""Which ``Trainer`` setups the callbacks serve, and the messages for those they do not.

Strategies that shard or wrap the optimizer, Lightning's own LR finder beside ours, the order of companion callbacks,
and optimizers that set their own step size. Each refusal names the problem and the fix.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from typing import Any

import torch

from lightning_superconv import _compat
from lightning_superconv.param_groups import configured_lrs, step_size_kind

#: the Trainer (weakly held) each callback instance was last set up for a fit by, keyed by the instance's identity (its
#: own `__eq__`, or none, is not asked); the entry goes with the instance
_IN_A_FIT: dict[int, weakref.ReferenceType[Any]] = {}
_CLAIMS = threading.Lock()  # trials in threads set up their Trainers at once


def claim_for_fit(trainer: _compat.Trainer, callback: Any, who: str) -> None:
    r"""Refuse ``callback`` to ``trainer`` while another Trainer's fit runs with it; else mark it as this fit's.

    A callback holds its fit's plan, schedule and snapshot, and each ``setup`` starts them anew: two Trainers that run
    at once with one instance overwrite each other's (found trying the package as a new user: Optuna's ``n_jobs=2``
    runs trials in threads, and a pair created outside the objective trained one trial at the other's weight decay, or
    failed with a bare ``AssertionError``). The other Trainer counts while its ``state`` says it runs a fit: one whose
    fit ended or raised lets the instance go, whether or not the callback's ``teardown`` or ``on_exception`` ran
    (found in a review: a subclass's ``teardown`` without ``super()`` kept it claimed for good).
    """
    with _CLAIMS:
        held = _IN_A_FIT.get(id(callback))
        other = held() if held is not None else None
        if other is not None and other is not trainer and _runs_a_fit(other):
            raise _compat.misconfiguration(
                trainer,
                f"{who}: this instance is in a fit that another Trainer is still running (one instance given to two "
                "Trainers at once, as a hyperparameter search running trials in threads does with callbacks created "
                f"outside its objective); each fit changes its state. Create one {who} per Trainer.",
            )
        if held is None:
            # a callback with `__slots__` and no `__weakref__` has no finalizer: its entry stays, a few bytes
            with contextlib.suppress(TypeError):
                weakref.finalize(callback, _IN_A_FIT.pop, id(callback), None)
        _IN_A_FIT[id(callback)] = weakref.ref(trainer)


def _runs_a_fit(trainer: Any) -> bool:
    state = getattr(trainer, "state", None)
    return state is not None and state.fn == "fit" and state.status == "running"


def in_fit_of(trainer: _compat.Trainer, callback: Any) -> bool:
    """Whether ``callback`` was last set up for a fit by ``trainer`` (:func:`claim_for_fit`), not by another."""
    held = _IN_A_FIT.get(id(callback))
    return held is not None and held() is trainer


def release_from_fit(trainer: _compat.Trainer, callback: Any) -> None:
    """The fit that :func:`claim_for_fit` marked ``callback`` for has ended (or raised): it is free again."""
    with _CLAIMS:
        if in_fit_of(trainer, callback):
            _IN_A_FIT[id(callback)] = _NO_TRAINER


def _nobody() -> None:
    return None


_NO_TRAINER: Any = _nobody  # a released entry: it calls back no Trainer, and its finalizer stays registered


def strategy_problem(strategy: Any, range_test: bool, who: str = "SuperConvergence") -> str | None:
    r"""Why ``strategy`` cannot be served (the message names the problem and the fix), or None.

    DeepSpeed wraps the optimizer (ZeRO's optimizers are no ``torch.optim.Optimizer``, so no ``OneCycleLR`` can be
    built on them) and partitions its state. ``ModelParallelStrategy`` (FSDP2's ``fully_shard``, tensor parallelism)
    holds each rank's shards as DTensors, which the snapshot copies and puts back in place (after FSDP2's modules
    are put at rest: :func:`~lightning_superconv._compat.reshard`): it runs on CPU over gloo, where the range test
    under it is tested against the run given its pick. ``FSDPStrategy`` (FSDP1's flat parameters) runs on GPUs only,
    so its range test is refused rather than trusted unverified. The one-cycle alone (``max_lr=`` given) is a plain
    torch scheduler over the strategy's optimizer.

    ``who``: ``"SuperConvergence"`` or ``"find_max_lr"``, which always runs a range test and builds no cycle of its
    own, so its message points to where the range test is served.
    """
    if who == "find_max_lr":
        return _find_max_lr_strategy_problem(strategy)
    if isinstance(strategy, _compat.strategy_classes(strategy, "DeepSpeedStrategy")):
        return (
            "SuperConvergence does not support `DeepSpeedStrategy`: DeepSpeed wraps the optimizer and partitions its "
            "state, so neither a range test that restores it nor a `OneCycleLR` on it can work. Find the max LR "
            "without DeepSpeed (`lightning_superconv.find_max_lr(model, ...)` on one device or with DDP), return "
            "`torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=..., total_steps=...)` from "
            "`configure_optimizers` yourself, and remove the callback."
        )
    if not range_test:
        return None
    for cls in _compat.strategy_classes(strategy, "FSDPStrategy"):
        if isinstance(strategy, cls):
            return (
                f"SuperConvergence does not run its range test under `{cls.__name__}`: its flat parameters run on GPUs "
                "only, where the range test's snapshot and restore of them are untested. Pass the max LR: "
                "`SuperConvergence(max_lr=...)` installs the one-cycle without a range test; find the value with "
                "`lightning_superconv.find_max_lr(model, ...)` on one device or with DDP, or run the range test under "
                "`ModelParallelStrategy` (FSDP2's `fully_shard` in `configure_model`), where it is served."
            )
    return None


def _find_max_lr_strategy_problem(strategy: Any) -> str | None:
    """``find_max_lr``'s refusals of the strategies whose range test ``SuperConvergence`` refuses too."""
    for name, why in (
        (
            "DeepSpeedStrategy",
            "DeepSpeed wraps the optimizer and partitions its state, which the range test cannot put back",
        ),
        (
            "FSDPStrategy",
            "its flat parameters run on GPUs only, where the range test's snapshot and restore of them are untested",
        ),
    ):
        for cls in _compat.strategy_classes(strategy, name):
            if isinstance(strategy, cls):
                return (
                    f"`find_max_lr` does not run its range test under `{cls.__name__}`: {why}. Run it on one device or "
                    "with `strategy='ddp'` (its pick is the max LR for the sharded run), or under "
                    "`ModelParallelStrategy` (FSDP2's `fully_shard` in `configure_model`), where it is served."
                )
    return None


def refuse_lr_finder(trainer: _compat.Trainer, max_lr_given: bool = False) -> None:
    """Lightning's ``LearningRateFinder`` and ``SuperConvergence`` would both set the LR at fit start.

    ``max_lr_given``: ``SuperConvergence(max_lr=...)`` runs no range test of its own, but its cycle still sets the LR.
    """
    if _compat.callback_of(trainer, "LearningRateFinder") is None:
        return
    if max_lr_given:
        what = (
            "the finder runs an LR range test at fit start and sets the LR, and the one-cycle at the `max_lr` you gave "
            "would overwrite its suggestion at the first step. Remove `LearningRateFinder` (the cycle runs at your "
            "`max_lr`), or pass no `max_lr` to have SuperConvergence pick it, or remove `SuperConvergence`."
        )
    else:
        what = (
            "both run an LR range test at fit start and set the LR, and the one-cycle would overwrite the finder's "
            "suggestion. Remove `LearningRateFinder` (SuperConvergence picks the cycle's max LR itself), or remove "
            "`SuperConvergence`."
        )
    raise _compat.misconfiguration(
        trainer,
        f"`LearningRateFinder` (or `Tuner.lr_find`) and `SuperConvergence` are in the same Trainer: {what}",
    )


def move_behind(trainer: _compat.Trainer, anchor: Any, classes: tuple[type, ...]) -> None:
    r"""Move callbacks of ``classes`` listed before ``anchor`` to just behind it.

    A new list is assigned: the hook loop calling ``setup`` right now iterates over the old one.
    """
    order = _compat.callbacks(trainer)
    mine = next(i for i, cb in enumerate(order) if cb is anchor)
    early = [cb for cb in order[:mine] if classes and isinstance(cb, classes)]
    if not early:
        return
    rest = [cb for cb in order if all(cb is not e for e in early)]
    at = next(i for i, cb in enumerate(rest) if cb is anchor) + 1
    _compat.set_callbacks(trainer, rest[:at] + early + rest[at:])


def refuse_a_second(trainer: _compat.Trainer, mine: Any, cls: type) -> None:
    r"""Refuse a second callback of ``cls`` (or of a subclass) beside ``mine`` in the running Trainer.

    Lightning refuses two callbacks of one state key when the Trainer is built, but not those a module's
    ``configure_callbacks`` adds at fit time, nor a subclass (found trying the package as a new user: both ran, the
    second replaced the first's cycle, the first's guard took that for SWA's scheduler, and one state overwrote the
    other in checkpoints).
    """
    others = [cb for cb in _compat.callbacks(trainer) if isinstance(cb, cls) and cb is not mine]
    if others:
        name = cls.__name__
        raise _compat.misconfiguration(
            trainer,
            f"This Trainer runs {len(others) + 1} `{name}` callbacks (counting subclasses, and those your module's "
            f"`configure_callbacks` returns): they would each set the schedule and the weight decay, one over the "
            f"other, and share one state in checkpoints. Keep one `{name}`.",
        )


def move_in_front(trainer: _compat.Trainer, mover: Any, classes: tuple[type, ...]) -> None:
    """Put ``mover`` in front of the first callback of ``classes`` (a new list, as in :func:`move_behind`)."""
    callbacks = _compat.callbacks(trainer)
    first = next((i for i, cb in enumerate(callbacks) if isinstance(cb, classes)), None)
    mine = next((i for i, cb in enumerate(callbacks) if cb is mover), None)
    if first is None or mine is None or mine < first:
        return
    callbacks.pop(mine)
    callbacks.insert(first, mover)
    _compat.set_callbacks(trainer, callbacks)


def optimizer_refusal(optimizer: Any, who: str) -> str | None:
    r"""Why ``who`` (``"SuperConvergence"`` or ``"find_max_lr"``) cannot serve ``optimizer``, or None where it can.

    ``find_max_lr`` refuses what ``SuperConvergence`` refuses (found in a review: it swept ``LBFGS``, ``Rprop`` and a
    Schedule-Free AdamW and returned a pick, 63.7 for the last), and an optimizer that sets its own step size
    (Prodigy, D-Adaptation), whose ``lr`` a sweep measures nothing of.
    """
    name = type(optimizer).__name__
    kind = step_size_kind(optimizer)
    if kind == "schedule-free":
        return schedule_free_refusal(optimizer, who)
    refusal = schedule_blind_refusal(optimizer, who)
    if refusal is not None:
        return refusal
    if who == "find_max_lr" and kind == "multiplier":
        return (
            f"find_max_lr cannot serve `{name}`: it sets its own step size and reads `lr` as a multiplier or a cap of "
            "it, so a sweep of `lr` measures nothing about the model. Keep its `lr` as its authors advise (1.0 for "
            "Prodigy and D-Adaptation); `SuperConvergence` runs its one-cycle over that value without a range test."
        )
    return None


def cycle_refusal(optimizer: Any, who: str) -> str | None:
    r"""Why torch's ``OneCycleLR`` (the cycle, and each range-test trial's) cannot be built on ``optimizer``, or None.

    It takes a ``torch.optim.Optimizer`` only (found in a review: a wrapper of plain class, which Lightning steps,
    failed with torch's ``TypeError`` after the whole sweep, and the note on it advised ``max_lr=``, which failed the
    same way). ``find_max_lr`` with ``trial_steps=0`` builds none.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        return None
    without = "" if who == "SuperConvergence" else ", or pass `trial_steps=0` (no trial cycles)"
    return (
        f"{who} builds torch's `OneCycleLR` on the optimizer, which takes a `torch.optim.Optimizer` only; "
        f"`{type(optimizer).__name__}` is not one. Make its class a subclass of `torch.optim.Optimizer` that hands "
        f"`step`, `zero_grad`, `param_groups` and `state` to the optimizer it wraps{without}."
    )


def schedule_blind_refusal(optimizer: Any, who: str = "SuperConvergence") -> str | None:
    """The message that refuses an optimizer on which an LR schedule has no meaning (``Rprop``, ``LBFGS``), or None.

    ``Rprop`` reads ``lr`` once, as every weight's first step size, and then sets each step size by itself: a range
    test and a cycle over ``lr`` change nothing after the first step (its trials tie, and the pick is noise).
    ``LBFGS`` evaluates the loss several times per step, and its ``lr`` is the length of a quasi-Newton step (or the
    start of its line search): neither a range test of one loss per step nor a one-cycle of step lengths applies.
    """
    name = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.Rprop):
        why = (
            "reads `lr` only once, as each weight's first step size, and then sets every step size by itself, so a "
            "schedule over `lr` changes nothing after the first step"
        )
    elif isinstance(optimizer, torch.optim.LBFGS):
        why = (
            "evaluates the loss several times per step and takes `lr` as the length of a quasi-Newton step, so "
            "neither a range test of one loss per step nor a one-cycle of step lengths applies"
        )
    else:
        return None
    return (
        f"{who} cannot serve `{name}`: it {why}. Remove {who} and keep the optimizer, or "
        "switch to one whose `lr` scales every step (`torch.optim.SGD` with momentum, `AdamW`, `RMSprop`, ...)."
    )


def schedule_free_refusal(optimizer: Any, who: str = "SuperConvergence") -> str:
    """The message that refuses a Schedule-Free optimizer in ``who``."""
    return (
        f"{who} cannot serve `{type(optimizer).__name__}`: a Schedule-Free optimizer replaces the LR "
        "schedule (it averages its iterates instead of annealing the LR; Defazio et al., arXiv 2405.15682), so a "
        f"one-cycle on top of it{' (whose peak the range test picks)' if who == 'find_max_lr' else ''} would fight "
        f"the method. Remove {who} and keep the optimizer, with its "
        "warm-up (`warmup_steps`) and the `optimizer.train()`/`optimizer.eval()` switches its README asks for; or "
        "switch to its base optimizer (e.g. `torch.optim.AdamW`) to train with SuperConvergence."
    )


def check_first_group_lr(trainer: _compat.Trainer, optimizer: Any, who: str) -> None:
    """Refuse a first param group whose configured LR is not positive: the other groups' ratios are read against it.

    And a group's LR that is not finite (found in a review: `lr=nan` passed, the cycle ran at NaN and trained nothing,
    and the guard "lowered the peak from 0.1 to nan"; `find_max_lr` blamed a warm-up in the module).
    """
    lrs = configured_lrs(optimizer)
    for index, lr in enumerate(lrs):
        if not math.isfinite(lr):
            raise _compat.misconfiguration(
                trainer,
                f"{who} reads the LR ratios between param groups from their configured `lr`, which must be a finite "
                f"number; param group {index} of `{type(optimizer).__name__}` has lr={lr}. Give it a finite `lr` in "
                "`configure_optimizers` (only the ratios between groups matter; the range test and the cycle set the "
                "values).",
            )
    first = lrs[0]
    if first <= 0:
        raise _compat.misconfiguration(
            trainer,
            f"{who} keeps the LR ratios between param groups relative to the first group, so the first "
            f"group's `lr` must be > 0, got {first}. Give the first param group a positive `lr` in "
            "`configure_optimizers` (only the ratios between groups matter; the range test and the cycle set the "
            "values); for a group held at `lr=0` on purpose (a frozen layer), put a group with a positive `lr` "
            "first instead: a group at 0 in any later place stays at 0 through the cycle.",
        )
