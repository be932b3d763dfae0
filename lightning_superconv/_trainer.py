r"""What both callbacks read off the ``Trainer`` at fit start, with the errors that say what is wrong and what to do.

Thin glue over public ``Trainer`` attributes and :mod:`lightning_superconv._compat`.
"""

from __future__ import annotations

import math
from typing import Any

from lightning_superconv import _compat


def single_optimizer(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    who: str,
    automatic: bool = True,
    instead: str | None = None,
) -> Any:
    r"""The one optimizer the callback ``who`` can serve, or a clear error saying why not and what to do.

    Args:
        trainer: the user's ``Trainer``, at fit start.
        pl_module: its LightningModule.
        who: the callback's name, for the messages.
        automatic: the callback needs automatic optimization (it steps the optimizer or sizes a schedule for it).
        instead: what the messages suggest doing instead (default: remove the callback).
    """
    # what to do instead: a callback can be removed; `find_max_lr` is simply not for this module
    if instead is None:
        instead = "do not run `find_max_lr` on this module" if who == "find_max_lr" else "remove the callback"
    optimizers = trainer.optimizers
    if automatic and not pl_module.automatic_optimization:
        # several optimizers: Lightning allows them only here, and its own error had sent the user here (found in a
        # review: switching back, as this message said, met Lightning's refusal, and neither said to use one)
        several = (
            f" It also needs one optimizer, and `configure_optimizers` returned {len(optimizers)}: put all "
            "parameters into one (param groups keep different LRs and weight decays) and switch to automatic "
            f"optimization, or {instead}."
            if len(optimizers) > 1
            else f" Switch to automatic optimization, or {instead}."
        )
        raise _compat.misconfiguration(
            trainer,
            f"{who} needs automatic optimization: with `self.automatic_optimization = False` (and "
            f"`self.manual_backward`) {who} cannot step your optimizer.{several}",
        )
    if len(optimizers) != 1:
        raise _compat.misconfiguration(
            trainer,
            f"{who} needs exactly one optimizer from `configure_optimizers`, got {len(optimizers)}. Put all "
            "parameters into one optimizer (param groups keep different LRs and weight decays), or "
            f"{instead}. An optimizer that takes some parameters only (torch's `Muon`: matrices) beside another for "
            "the rest is not served.",
        )
    if _compat.is_placeholder_optimizer(trainer, optimizers[0]):
        raise _compat.misconfiguration(
            trainer,
            f"{who} needs an optimizer, but `configure_optimizers` returned None. Return the optimizer to train with "
            f"(e.g. `torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)`), or {instead}.",
        )
    optimizer = optimizers[0]
    for index, group in enumerate(optimizer.param_groups):
        if "lr" not in group:
            # pytorch_optimizer's AliG: a Polyak step capped by its `max_lr` (found trying it as a new user: the
            # message spoke of an Adafactor and advised an `lr=` that AliG drops)
            raise _compat.misconfiguration(
                trainer,
                f"{who} needs a number as each param group's `lr`; param group {index} of "
                f"`{type(optimizer).__name__}` has no `lr`: the optimizer computes its own step size, which no LR "
                f"schedule drives and no weight-decay budget can be read from. Use another optimizer, or {instead}.",
            )
        problem = _not_a_number(group.get("lr"))
        if problem is not None:
            raise _compat.misconfiguration(
                trainer,
                f"{who} needs a number as each param group's `lr`; param group {index} of "
                f"`{type(optimizer).__name__}` has lr={group.get('lr')!r}{problem}. Pass a number (e.g. `lr=1e-3`, "
                f"with `relative_step=False` where the optimizer asks for it), or {instead}.",
            )
    return optimizer


def refuse_maximize(trainer: _compat.Trainer, optimizer: Any, who: str, reads: str, instead: str) -> None:
    r"""Refuse an optimizer that climbs the value ``training_step`` returns (``maximize=True``) before ``who`` reads it.

    The range test looks for where that value stops falling, its trials and the weight-decay grid keep the lowest,
    and the divergence guard watches it rise: with ``maximize=True`` the optimizer makes it rise, so each would read
    the run upside down (tried as a new user: a pick of 72,500 and a run ended at chance).

    Args:
        trainer: the user's ``Trainer``, at fit start.
        optimizer: the optimizer ``who`` serves.
        who: the callback's (or function's) name, for the message.
        reads: what of ``who`` reads the value, for the message.
        instead: what else the message suggests.

    Raises:
        MisconfigurationException: if a param group of ``optimizer`` has ``maximize=True``.
    """
    for index, group in enumerate(optimizer.param_groups):
        if group.get("maximize", False):
            raise _compat.misconfiguration(
                trainer,
                f"{who} reads the value `training_step` returns as a loss to minimize ({reads}), but param group "
                f"{index} of `{type(optimizer).__name__}` has maximize=True: the optimizer climbs that value, so it "
                "would be read upside down. Return its negative from `training_step` and drop `maximize=True` (the "
                f"same training), or {instead}.",
            )


def _not_a_number(lr: Any) -> str | None:
    """Why ``lr`` cannot be read as one number (what follows the value in the message), or None if it can."""
    if lr is None:
        # timm's and Hugging Face's Adafactor take `lr=None` as "compute my own step size" (`relative_step`)
        return (
            ": an `Adafactor` given `lr=None` (timm's, Hugging Face's) computes its own relative step size, which no "
            "LR schedule drives and no weight-decay budget can be read from"
        )
    try:
        float(lr)  # ints, floats, NumPy scalars, one-element tensors: each is read with `float` later
    except (TypeError, ValueError, RuntimeError) as error:
        return f" (`float` of it: {error})"
    return None


def refuse_dataloader_iter_steps(
    trainer: _compat.Trainer, pl_module: _compat.LightningModule, who: str, instead: str
) -> None:
    r"""Refuse a ``training_step(self, dataloader_iter)`` before ``who`` trains steps of its own with it.

    Lightning hands such a step the iterator and lets it draw its batches; the range test and the grid draw each
    step's batches themselves (to hold out, repeat and restore them), so they cannot serve it.

    Raises:
        MisconfigurationException: if ``training_step`` takes ``dataloader_iter``.
    """
    signatures = _compat.module(pl_module, "utilities.signature_utils")
    if signatures.is_param_in_hook_signature(pl_module.training_step, "dataloader_iter", explicit=True):
        raise _compat.misconfiguration(
            trainer,
            f"{who} trains steps of its own on batches it draws, but your `training_step` takes `dataloader_iter` "
            f"(it draws its batches itself). Take `(batch, batch_idx)` instead, or {instead}.",
        )


def refuse_sequential_train_data(trainer: _compat.Trainer, who: str) -> None:
    """Refuse train data in ``CombinedLoader(mode="sequential")`` before ``who`` trains on it.

    Lightning refuses it only when its first epoch starts: after a whole range test or weight-decay grid had run on it.
    The train dataloader must be loaded (``_compat.setup_train_data``).
    """
    if _compat.train_loader_mode(trainer) == "sequential":
        raise ValueError(
            f'{who} cannot run on train data in `CombinedLoader(mode="sequential")`, and neither can `Trainer.fit`: '
            "training takes the modes 'max_size_cycle' (the default), 'max_size' and 'min_size'. Pass one of these "
            "as the CombinedLoader's `mode`."
        )


def total_steps(trainer: _compat.Trainer, who: str) -> int:
    r"""The run's optimizer steps (0 when the user asked for none), or an error that names the real problem.

    Raises:
        MisconfigurationException: if the train dataloader yields no batches at all (e.g. fewer samples than
            ``batch_size`` with ``drop_last=True``), or the run's length is unknown (no length, no ``max_steps``).
    """
    if trainer.limit_train_batches == 0 or trainer.max_steps == 0 or trainer.max_epochs == 0:
        return 0
    total = estimated_steps(trainer)
    if total == 0 or trainer.num_training_batches == 0:
        raise _compat.misconfiguration(trainer, f"{who}: {_empty_loader_problem(trainer)}")
    # an iterable dataset without `max_steps` reads as `max_steps`, i.e. -1; no epoch limit (`max_epochs=-1`, or
    # `max_time` alone) as infinity
    if not math.isfinite(total) or total < 0:
        raise _compat.misconfiguration(
            trainer, f"{who} reads the schedule over the whole run, but {_unknown_length(trainer)}"
        )
    return int(total)


def check_batches_to_run(trainer: _compat.Trainer, who: str) -> None:
    r"""Refuse a run with no training batch at all, saying why (``limit_train_batches=0``, an empty loader).

    Raises:
        MisconfigurationException: if the train dataloader yields no batch, or the Trainer is told to run none.
    """
    if trainer.limit_train_batches == 0 or trainer.max_steps == 0 or trainer.max_epochs == 0:
        raise _compat.misconfiguration(
            trainer,
            f"{who} has no training batch to run: the Trainer is told to run none (`limit_train_batches="
            f"{trainer.limit_train_batches}`, `max_steps={trainer.max_steps}`, `max_epochs={trainer.max_epochs}`). "
            "Leave them at their defaults.",
        )
    _compat.setup_train_data(trainer)
    if trainer.num_training_batches == 0:
        raise _compat.misconfiguration(trainer, f"{who}: {_empty_loader_problem(trainer)}")


def steps_this_fit(trainer: _compat.Trainer, total: int) -> int:
    r"""The optimizer steps this ``fit`` will run from where the Trainer stands (0: none left).

    ``total``: the run's steps (:func:`total_steps`), which a new Trainer runs. A second ``fit`` on the same Trainer
    continues from the epoch the first reached, over the data it is given now, whose length may differ: Lightning runs
    the epochs left (``max_epochs`` minus ``current_epoch``; a fit that ``max_steps`` stopped mid-epoch counts that
    epoch as done) at the new length, within ``max_steps``. Sizing it as the whole run at the new length minus the
    steps taken would stretch a cycle over steps that never run, or see no step left where there are some.
    """
    done = int(trainer.global_step)
    if done == 0 or total == 0:
        return total
    epochs, batches = trainer.max_epochs, trainer.num_training_batches
    if epochs is None or epochs < 0 or not math.isfinite(batches):
        return max(total - done, 0)  # `max_steps` bounds the run
    left = _steps_in_epochs(trainer, range(trainer.current_epoch, epochs))
    if trainer.max_steps != -1:
        left = min(left, trainer.max_steps - done)
    return max(left, 0)


def resumed_fit_end(trainer: _compat.Trainer) -> float:
    r"""The global step a fit resumed from a checkpoint ends at, read in ``on_train_start`` (inf: no limit).

    As Lightning 2.5 and later resume: an epoch the checkpoint was written inside goes on from the batch it had reached
    at the accumulation in force, since Lightning calls no ``on_train_epoch_start`` for it and a
    ``GradientAccumulationScheduler`` does not set that epoch's value. Where that count reaches the epoch's length, the
    epoch is over, unless the checkpoint was written in ``on_train_batch_end``: Lightning then runs the epoch again
    from its start. The epochs left run at the resumed Trainer's length and accumulation, within ``max_steps``.
    Lightning 2.4 does not say where it resumes: its own estimate of a fresh run (:func:`estimated_steps`) is taken.
    """
    max_steps = trainer.max_steps if trainer.max_steps != -1 else math.inf
    epochs, batches = trainer.max_epochs, trainer.num_training_batches
    if epochs is None or epochs < 0 or not math.isfinite(batches):
        return max_steps
    mid_epoch = _compat.resumes_mid_epoch(trainer)
    if mid_epoch is None:
        return estimated_steps(trainer)
    epoch, steps = trainer.current_epoch, 0
    if mid_epoch and epoch < epochs:
        steps = steps_left_in_resumed_epoch(trainer) or 0
        epoch += 1
    steps += _steps_in_epochs(trainer, range(epoch, epochs))
    return min(int(trainer.global_step) + steps, max_steps)


def steps_left_in_resumed_epoch(trainer: _compat.Trainer) -> int | None:
    r"""The optimizer steps a fit resumed from inside an epoch runs of that epoch (None: no such resume).

    As :func:`resumed_fit_end` reads it: from the batch reached, at the accumulation in force; 0 where the count
    reached the epoch's length (it is over), the whole epoch where the checkpoint was written in ``on_train_batch_end``
    at its last batch (Lightning runs it again).
    """
    done = batches_done_in_resumed_epoch(trainer)
    if done is None or not math.isfinite(trainer.num_training_batches):
        return None
    return steps_left_in_epoch(trainer, done) if done < trainer.num_training_batches else 0


def batches_done_in_resumed_epoch(trainer: _compat.Trainer) -> int | None:
    r"""The batches a fit resumed from inside an epoch does not run again of it (None: no such resume).

    The batch reached (a stream's too: one long epoch); 0 where the checkpoint was written in ``on_train_batch_end`` at
    the epoch's last batch (Lightning runs the epoch again); the epoch's length where the count reached it (it is
    over).
    """
    batches = trainer.num_training_batches
    if not _compat.resumes_mid_epoch(trainer):
        return None
    reached = _compat.batches_reached_this_epoch(trainer)
    if reached < batches:
        return reached
    return 0 if _compat.resumes_after_a_train_batch_end(trainer) else int(batches)


def steps_left_in_epoch(trainer: _compat.Trainer, batches_done: int) -> int:
    """The optimizer steps of the current epoch after its first ``batches_done`` batches, at the accumulation in force.

    The epoch's length must be known (:func:`epoch_length_known`).
    """
    accumulation = max(int(trainer.accumulate_grad_batches), 1)
    return math.ceil(trainer.num_training_batches / accumulation) - batches_done // accumulation


def estimated_steps(trainer: _compat.Trainer) -> float:
    r"""``trainer.estimated_stepping_batches``, counting the accumulation a ``GradientAccumulationScheduler`` sets.

    Lightning's estimate divides every epoch by the accumulation in force when it is asked (before the first epoch),
    while the scheduler changes it epoch by epoch: with ``{0: 1, 1: 4}`` over 4 epochs of 44 batches it says 176 steps,
    and the run takes 44 + 3 x 11 = 77 (a cycle sized to 176 would never anneal). An epoch of ``n`` batches at
    accumulation ``k`` takes ``ceil(n / k)`` optimizer steps (its last, short group steps too).
    """
    total = trainer.estimated_stepping_batches
    batches, epochs = trainer.num_training_batches, trainer.max_epochs
    if not math.isfinite(total) or not math.isfinite(batches) or epochs is None or epochs < 0:
        return total
    if _compat.callback_of(trainer, "GradientAccumulationScheduler") is None:
        return total
    steps = _steps_in_epochs(trainer, range(max(epochs, 1)))
    return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps


def _steps_in_epochs(trainer: _compat.Trainer, epochs: range) -> int:
    """Optimizer steps in these epochs: ``ceil(batches / accumulation)`` each, at each epoch's own accumulation."""
    schedule = _compat.callback_of(trainer, "GradientAccumulationScheduler")
    batches = trainer.num_training_batches

    def accumulation(epoch: int) -> int:
        return schedule.get_accumulate_grad_batches(epoch) if schedule is not None else trainer.accumulate_grad_batches

    return sum(math.ceil(batches / max(int(accumulation(epoch)), 1)) for epoch in epochs)


def step_batch_counts(trainer: _compat.Trainer, steps: int, batches_done: int = 0) -> list[int]:
    r"""For each of the next ``steps`` optimizer steps, the batches of its epoch read when it is taken (from 1).

    Lightning steps a ``"step"`` scheduler of ``frequency`` f after an optimizer step whose epoch has read a multiple
    of f batches by then (``batch_idx + 1``), not after every f-th optimizer step: under accumulation, and at each
    epoch's end, the two differ. Each epoch at its own accumulation (a ``GradientAccumulationScheduler``); a stream
    without a length is one long epoch. ``batches_done``: the current epoch's batches already read (a fit resumed
    from inside it, a rebalance during it), whose steps are not among the next (found in a review: a resume at the
    epoch's second batch traced a scheduler of frequency 3 as stepping at the epoch's third batch from there); that
    epoch runs at the accumulation in force, as :func:`steps_left_in_epoch` reads it (a
    ``GradientAccumulationScheduler`` sets its own at an epoch's start, which a resume inside it does not run).
    """
    schedule = _compat.callback_of(trainer, "GradientAccumulationScheduler")
    known = epoch_length_known(trainer)
    batches = int(trainer.num_training_batches) if known else None
    counts: list[int] = []
    epoch = int(trainer.current_epoch)
    while len(counts) < steps:
        done = batches_done if epoch == int(trainer.current_epoch) else 0
        every = schedule.get_accumulate_grad_batches(epoch) if schedule is not None and not done else None
        every = max(int(every if every is not None else trainer.accumulate_grad_batches), 1)
        if batches is None:
            counts += [every * k for k in range(done // every + 1, done // every + steps - len(counts) + 1)]
            break
        counts += [count for k in range(1, math.ceil(batches / every) + 1) if (count := min(every * k, batches)) > done]
        epoch += 1
    return counts[:steps]


def accumulates(trainer: _compat.Trainer) -> bool:
    """Whether gradients accumulate: ``accumulate_grad_batches`` above 1, or a ``GradientAccumulationScheduler``."""
    scheduled = _compat.callback_of(trainer, "GradientAccumulationScheduler") is not None
    return scheduled or int(trainer.accumulate_grad_batches) > 1


def _unknown_length(trainer: _compat.Trainer) -> str:
    """Why the run's length is unknown, and what sets it."""
    if trainer.max_epochs is None or trainer.max_epochs < 0:
        # Lightning does not load the train dataloader to estimate a run without an epoch limit: whether it has a
        # length is not known here, and `max_epochs` helps only if it has
        limit = (
            "`max_time` alone limits it (no `max_epochs`, no `max_steps`), and it stops by the clock after a number "
            "of steps nobody knows in advance"
            if _compat.callback_of(trainer, "Timer") is not None  # what `Trainer(max_time=...)` adds
            else f"it has no epoch limit (`max_epochs={trainer.max_epochs}`) and `max_steps` is not set"
        )
        return (
            f"this run's length is unknown: {limit}. Set `Trainer(max_steps=...)`, or `Trainer(max_epochs=...)` if "
            "the train dataloader has a length; the schedule is read over those."
        )
    return (
        "this run's length is unknown (the train dataloader has no length and `max_steps` is not set). Set "
        "`Trainer(max_steps=...)`."
    )


def _empty_loader_problem(trainer: _compat.Trainer) -> str:
    """What makes the train dataloader empty, as precisely as the loader says."""
    details = []
    for loader in _compat.train_loaders(trainer):
        dataset = getattr(loader, "dataset", None)
        batch_size = getattr(loader, "batch_size", None)
        try:
            samples = len(dataset) if dataset is not None else None
        except TypeError:
            samples = None
        if samples is not None and batch_size is not None:
            drop = " with `drop_last=True`" if getattr(loader, "drop_last", False) else ""
            details.append(f"{samples} samples, `batch_size={batch_size}`{drop}")
    found = f" ({'; '.join(details)})" if details else ""
    return (
        f"the train dataloader yields no batches{found}, so there is no training step to plan for. Use a batch size "
        "no larger than the dataset (or `drop_last=False`), or give the run more data."
    )


def steps_per_epoch(trainer: _compat.Trainer) -> int | list[int]:
    """Optimizer steps per epoch (1 when the loader has no length: see :func:`epoch_length_known`).

    Under a ``GradientAccumulationScheduler``, each epoch's own from the current one on, until the last change of the
    accumulation (the last repeats): the accumulation at fit start is only the first epoch's.
    """
    if not epoch_length_known(trainer):
        return 1
    schedule = _compat.callback_of(trainer, "GradientAccumulationScheduler")
    if schedule is None:
        return max(math.ceil(int(trainer.num_training_batches) / max(int(trainer.accumulate_grad_batches), 1)), 1)
    first = int(trainer.current_epoch)
    last = max(first, *(int(epoch) for epoch in schedule.scheduling))
    return [max(_steps_in_epochs(trainer, range(epoch, epoch + 1)), 1) for epoch in range(first, last + 1)]


def epoch_length_known(trainer: _compat.Trainer) -> bool:
    """Whether an epoch has a known number of batches (a stream without a length, an ``IterableDataset``, has not)."""
    batches = trainer.num_training_batches
    return isinstance(batches, int) or (isinstance(batches, float) and math.isfinite(batches))


def install_scheduler(trainer: _compat.Trainer, scheduler: Any) -> list[str]:
    """Make ``scheduler`` the run's only scheduler, stepped every optimizer step; return the replaced ones' classes.

    It takes over the ``name`` the user gave the scheduler it replaces (``{"lr_scheduler": ..., "name": ...}``), under
    which ``LearningRateMonitor`` logs the LR: the user's dashboards and monitored keys stay as they were.
    """
    configs = trainer.strategy.lr_scheduler_configs
    replaced = [type(config.scheduler).__name__ for config in configs]
    names = {config.name for config in configs if config.name}
    name = names.pop() if len(names) == 1 else None
    trainer.strategy.lr_scheduler_configs = [_compat.scheduler_config(trainer, scheduler, name)]
    return replaced


def scheduler_in_use(trainer: _compat.Trainer, scheduler: Any) -> bool:
    """Whether ``scheduler`` still drives the run (``StochasticWeightAveraging`` swaps in its own at its start)."""
    return any(config.scheduler is scheduler for config in trainer.lr_scheduler_configs)


def warn_of_a_frozen_backbone(trainer: _compat.Trainer, who: str, instead: str, run_steps: int | None = None) -> None:
    """Say that a range test beside ``BackboneFinetuning`` (any ``BaseFinetuning``) measures the unfrozen part alone.

    Found trying the package as a new user: a digits MLP whose backbone joined at epoch 2 got a pick 15x its whole
    network's (7 against 0.44); once the backbone trained, the run diverged on every seed without the guard.

    Args:
        trainer: the Trainer the range test runs in, at fit start (after ``BaseFinetuning`` froze, in ``setup``).
        who: what runs the range test, for the message.
        instead: what to do instead, a sentence.
        run_steps: the steps of the run the pick is for (0: read the Trainer's ``max_epochs``), None where no run is
            described: a ``BackboneFinetuning`` whose backbone joins at or after the epoch that run ends before leaves
            the range test's measure as it is, and is not warned of (found in a review: ``find_max_lr`` was not told
            the run its ``trainer_kwargs`` described, and warned of a backbone joining at epoch 10 of a 3-epoch run).
    """
    finetuning = _compat.callback_of(trainer, "BaseFinetuning")
    if finetuning is None or all(p.requires_grad for p in trainer.lightning_module.parameters()):
        return
    name = type(finetuning).__name__
    joins_at = getattr(finetuning, "unfreeze_backbone_at_epoch", None)
    run_epochs = _run_end_epoch(trainer, run_steps) if isinstance(joins_at, int) and run_steps is not None else None
    if isinstance(joins_at, int) and run_epochs is not None and 0 <= run_epochs <= joins_at:
        return  # `BackboneFinetuning` whose backbone joins after the run: nothing joins what the range test measured
    # when another `BaseFinetuning` unfreezes, if ever, its own `finetune_function` decides (found trying the package
    # as a new user: a frozen distillation teacher that never joins was told its pick would be too high)
    when = f"once the backbone joins at epoch {joins_at}" if isinstance(joins_at, int) else "if the rest joins later"
    _compat.rank_zero_warn(
        trainer,
        f"{who}: the range test runs while `{name}` holds part of the model frozen, so its pick suits the trainable "
        f"part alone and can be many times too high {when} (15x on a small MLP; the divergence guard then lowers "
        f"it, at the cost of rescues). {instead}",
    )


def _run_end_epoch(trainer: _compat.Trainer, steps: int) -> int | None:
    """The epoch this run ends before (counted from 0, as ``current_epoch``), or None if unknown.

    From its steps where its epochs have a length (a run sized in steps, ``max_epochs=-1``: found in a review), else
    ``max_epochs``. Loads the train data, as the range test that follows does.
    """
    _compat.setup_train_data(trainer)
    per_epoch = steps_per_epoch(trainer)
    if epoch_length_known(trainer) and isinstance(per_epoch, int) and steps > 0:
        return int(trainer.current_epoch) + math.ceil(steps / per_epoch)
    epochs = trainer.max_epochs
    return epochs if isinstance(epochs, int) and epochs > 0 else None
