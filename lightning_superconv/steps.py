r"""Optimizer steps outside the fit loop, taken exactly as training takes them.

The loop under the range test and the weight-decay grid's branches.

Why an own loop rather than re-entering the fit loop (as Lightning's ``LearningRateFinder`` does): the fit loop carries
progress counters, logging, callbacks, validation and checkpointing, and each would have to be switched off and
restored. A loop of a few dozen lines that goes through the *strategy* keeps what matters (the DDP wrapper and its
gradient all-reduce, the precision plugin's autocast and gradient scaler, gradient clipping, accumulation, the user's
batch-transfer hooks) and touches nothing else. Run it inside a :func:`~lightning_superconv.sandbox.sandbox`.

Each submodule stays in the train/eval mode it is in, which Lightning keeps for training (a BatchNorm frozen with
``eval()`` stays frozen). The module's own fit, train and epoch start hooks are not run: they may register hooks, add
param groups, build submodules or write to loggers, none of which a snapshot can take back.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_superconv import _compat

# GradScaler halves its scale at every skipped step: from the default 2**16, thirty halvings reach 2**-14, below which
# no gradient that overflows is finite at any scale.
MAX_CONSECUTIVE_SCALER_SKIPS = 30
#: ``training_step`` may return None to skip a batch; this many in a row means it never returns a loss.
MAX_CONSECUTIVE_SKIPPED_BATCHES = 32


class NoLossError(RuntimeError):
    """``training_step`` returned None for :data:`MAX_CONSECUTIVE_SKIPPED_BATCHES` batches in a row."""


def loss_of(output: Any) -> Tensor | None:
    r"""The loss in a ``training_step`` output: a tensor, a mapping's ``"loss"``, or None (batch skipped).

    As Lightning reads it: any ``Mapping`` (found trying the package as a new user: a read-only mapping trained under
    Lightning and was refused by the range test), whose ``"loss"`` must be there and not None.
    """
    if output is None or isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and output.get("loss") is not None:
        loss: Tensor = output["loss"]
        return loss
    raise TypeError(
        "`training_step` must return a loss tensor, a mapping with a 'loss' that is not None, or None; got "
        + (f"a {type(output).__name__} without one" if isinstance(output, Mapping) else type(output).__name__)
    )


@dataclass
class StepRecord:
    r"""What the loop saw: the index and mean loss of each completed optimizer step, and why it stopped.

    Attributes:
        steps: the index (into the caller's plan) of each completed step.
        losses: the raw loss of each completed step (mean over accumulated micro-batches and over ranks).
        stop_reason: ``"completed"``, ``"data-exhausted"``, ``"scaler-skips"``, or the reason the caller's
            ``after_step`` returned.
        skipped_steps: steps the gradient scaler skipped (overflow); each was retried with the same plan index.
        skipped_batches: batches ``training_step`` skipped by returning None; the next batch took their step.
        none_batches: where the data ran out on a pass of None batches only, the None batches passed over.
    """

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stop_reason: str = "completed"
    skipped_steps: int = 0
    skipped_batches: int = 0
    none_batches: int = 0


class BatchStream:
    r"""Batches from the train dataloader, restarting it when it runs out (data shorter than the steps wanted).

    A fresh iterator is built over the same processed dataloaders the fit loop uses (distributed sampler included) and
    with the same per-epoch limits (``limit_train_batches``), without touching the iterator the fit loop already holds.
    When the loader ends, it is restarted, as at a new epoch; a loader that yields nothing after a restart (a one-shot
    iterable) ends the stream. A batch that is None (a ``collate_fn`` dropping a bad batch) is passed over, as
    Lightning's fit loop passes it over (found in a review: ``training_step`` was given it, and the range test
    failed on a loader Lightning trains on); :attr:`none_batches` counts them.
    """

    def __init__(self, trainer: _compat.Trainer) -> None:
        self._combined = _compat.train_combined_loader(trainer)
        self._iterator: Iterator[Any] | None = None
        self._left = math.inf
        self.restarts = 0
        self.exhausted = False
        self.none_batches = 0
        #: the last pass over the data gave None batches only (a `collate_fn` that drops every batch)
        self.none_only = False
        self._pass_nones = self._pass_batches = 0

    def next(self) -> tuple[Any, int] | None:
        """The next ``(batch, batch_idx)``, or None once the data has run out for good."""
        if self.exhausted:
            return None
        for _ in range(2):
            if self._iterator is None:
                self._iterator, self._left = _compat.fresh_train_iterator(self._combined)
                self._pass_nones = self._pass_batches = 0
            try:
                while True:
                    if self._left <= 0:
                        raise StopIteration
                    batch, batch_idx, _ = next(self._iterator)
                    self._left -= 1
                    if batch is not None:
                        self._pass_batches += 1
                        return batch, batch_idx
                    self.none_batches += 1
                    self._pass_nones += 1
            except StopIteration:
                self._iterator = None
                self.restarts += 1
        self.exhausted = True
        # found in a review: a one-shot stream with one None batch among its batches was said to give None only
        self.none_only = self._pass_nones > 0 and self._pass_batches == 0
        return None


def training_step_loss(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    batch: Any,
    batch_idx: int,
    with_batch_idx: bool,
) -> Tensor | None:
    """The module's ``training_step`` loss on ``batch``, prepared as Lightning's fit loop prepares it (None: no loss).

    ``with_batch_idx``: :func:`takes_batch_idx`, read once by the caller.
    """
    moved = move_batch(trainer, pl_module, batch)
    return moved_batch_loss(trainer, pl_module, moved, batch_idx, with_batch_idx)


def move_batch(
    trainer: _compat.Trainer, pl_module: _compat.LightningModule, batch: Any, validation: bool = False
) -> Any:
    """``batch`` to the device through the precision plugin and the module's batch transfer hooks.

    As Lightning's loop of the batch's kind moves it. ``validation``: a validation batch, moved in the validation
    stage (found trying the package as a new user: the trials scored held-out batches with the train-only
    augmentation of an ``on_before_batch_transfer`` that asks ``self.trainer.training``, as Lightning's docs show,
    drawn anew for each trial).
    """
    with _compat.validating(trainer) if validation else contextlib.nullcontext():
        batch = trainer.precision_plugin.convert_input(batch)
        batch = _compat.before_batch_transfer(pl_module, batch)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


def moved_batch_loss(
    trainer: _compat.Trainer, pl_module: _compat.LightningModule, batch: Any, batch_idx: int, with_batch_idx: bool
) -> Tensor | None:
    """The ``training_step`` loss on a batch :func:`move_batch` moved (None: no loss)."""
    _compat.set_current_hook(pl_module, "training_step")
    args = (batch, batch_idx) if with_batch_idx else (batch,)
    return loss_of(trainer.strategy.training_step(*args))


def takes_batch_idx(pl_module: _compat.LightningModule) -> bool:
    """Whether ``training_step`` takes a ``batch_idx``: Lightning passes one only then, and so must every caller.

    Read by Lightning's own rule (a parameter so named, ``*args``, or two positional parameters), so that a step with
    ``**kwargs`` or keyword-only parameters beside ``batch`` is called as Lightning calls it.
    """
    signatures = _compat.module(pl_module, "utilities.signature_utils")
    return bool(signatures.is_param_in_hook_signature(pl_module.training_step, "batch_idx", min_args=2))


def take_steps(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    optimizer: Any,
    num_steps: int,
    before_step: Callable[[int], None],
    after_step: Callable[[int, float], str | None] | None = None,
) -> StepRecord:
    r"""Take up to ``num_steps`` optimizer steps on the train data; the caller sets each step up and reads its loss.

    Each submodule stays in the train/eval mode it is in, as in training.

    Each step: ``accumulate_grad_batches`` micro-batches go through the strategy's ``training_step`` (DDP forward,
    autocast), ``backward`` (loss scaling, DDP all-reduce on the last micro-batch) and ``optimizer_step`` (unscaling,
    gradient clipping, scaler skip logic). The loss of a step is the mean of its micro-batches' raw losses, averaged
    over ranks, so every rank takes the same decisions.

    - A step the gradient scaler skips (overflow) is retried with the same index: the scale was too high, not the LR.
    - A batch for which ``training_step`` returns None is skipped; the next batch takes its place, so a skipped batch
      costs no index. (Lightning counts such a batch as an optimizer step, without gradients, and steps the
      schedulers at it; these steps do not.) After :data:`MAX_CONSECUTIVE_SKIPPED_BATCHES` in a row,
      :class:`NoLossError`.

    Args:
        trainer: the user's ``Trainer``; its strategy, precision plugin and train dataloader are used.
        pl_module: its LightningModule.
        optimizer: the optimizer to step.
        num_steps: how many optimizer steps to complete at most.
        before_step: called with the step's index before its first micro-batch (set the LR, the momentum...).
        after_step: called with the index and the mean loss of each completed step; a non-None return value stops the
            loop and becomes the record's ``stop_reason``. A NaN/inf loss is passed on like any other.
    """
    strategy = trainer.strategy
    accumulate = max(int(trainer.accumulate_grad_batches), 1)
    scaler = _compat.grad_scaler(trainer)
    stream = BatchStream(trainer)
    with_batch_idx = takes_batch_idx(pl_module)
    block_sync = getattr(strategy, "block_backward_sync", None)
    record = StepRecord()
    scaler_skips = skipped_in_a_row = 0
    step = 0
    while step < num_steps:
        # Draw the step's micro-batches before any forward pass, and let all ranks agree that each got them all: a rank
        # whose data ran out must stop together with the others, not leave them waiting in DDP's gradient all-reduce.
        drawn = [stream.next() for _ in range(accumulate)]
        batches = [item for item in drawn if item is not None]
        if not strategy.reduce_boolean_decision(len(batches) == accumulate, all=True):
            record.stop_reason = "data-exhausted"
            record.none_batches = stream.none_batches if stream.none_only else 0
            break
        before_step(step)
        micro_losses: list[Tensor] = []
        ran: list[bool] = []  # the closure given to `optimizer.step` ran
        skipped: list[bool] = []  # a batch whose `training_step` returned None

        def run_micro_batch(
            item: tuple[Any, int],
            final: bool,
            first: bool,
            micro_losses: list[Tensor] = micro_losses,
            ran: list[bool] = ran,
            skipped: list[bool] = skipped,
        ) -> Tensor | None:
            # an optimizer may call the closure again (SAM: at the perturbed weights): the step's loss is the first
            # call's, at the weights it steps from, and the batch is counted once (found in a review: the curve held
            # the mean of both calls, and `skipped_batches` went negative)
            again = final and any(ran)
            ran.append(final)
            # the forward too, as Lightning's loop does: DDP decides at the forward whether its backward all-reduces
            # (found in a review: with the backward alone inside, every micro-batch all-reduced its gradients)
            context = block_sync() if (block_sync is not None and not final) else contextlib.nullcontext()
            with context:
                loss = training_step_loss(trainer, pl_module, *item, with_batch_idx)
                _compat.set_current_hook(pl_module, None)
                if first:
                    # as Lightning's closure does it: after the step's first forward, before its backward. An
                    # optimizer that reads the gradients before it calls the closure (SAM perturbs the weights along
                    # them) finds the previous step's, as in training (found trying the package as a new user:
                    # zeroed before the step, SAM found none in the range test and was tried as plain SGD)
                    optimizer.zero_grad()
                if loss is None:
                    if not again:
                        skipped.append(True)
                    return None
                if not again:
                    micro_losses.append(loss.detach().float())
                # scaled as the fit loop scales it (`ClosureResult`), so clipping thresholds mean the same
                strategy.backward(loss / accumulate, optimizer)
            # what Lightning's closure returns too, for an optimizer that reads it (a line search)
            return loss.detach() / accumulate

        for index, item in enumerate(batches[:-1]):
            run_micro_batch(item, final=False, first=index == 0)
        scale_before = scaler.get_scale() if scaler is not None else None
        closure = functools.partial(run_micro_batch, batches[-1], True, len(batches) == 1)
        strategy.optimizer_step(optimizer, closure, pl_module)
        if not any(ran):
            raise RuntimeError(
                f"`{type(optimizer).__name__}.step(closure)` did not call the closure Lightning gives it (the one that "
                "runs `training_step` and `backward`), in the range test's own steps; Lightning's own training "
                'refuses such an optimizer too ("The closure hasn\'t been executed"). Use an optimizer whose `step` '
                "calls its closure."
            )
        record.skipped_batches += len(skipped)
        if not strategy.reduce_boolean_decision(bool(micro_losses), all=False):
            skipped_in_a_row += len(batches)
            if skipped_in_a_row >= MAX_CONSECUTIVE_SKIPPED_BATCHES:
                raise NoLossError(f"`training_step` returned None for {skipped_in_a_row} batches in a row")
            continue
        skipped_in_a_row = 0
        local = torch.stack(micro_losses).mean() if micro_losses else torch.zeros((), device=pl_module.device)
        # DDP's own correctness rests on every rank receiving the same all-reduced values, so every rank reads the
        # same mean loss and takes the same decisions, with no further broadcast
        mean_loss = float(strategy.reduce(local, reduce_op="mean"))
        if scaler is not None and scaler.get_scale() < scale_before and math.isfinite(mean_loss):
            # the scaler found inf/NaN gradients and skipped the update: the scale was too high, not the LR
            record.skipped_steps += 1
            scaler_skips += 1
            if scaler_skips > MAX_CONSECUTIVE_SCALER_SKIPS:
                record.stop_reason = "scaler-skips"
                break
            continue
        scaler_skips = 0
        reason = after_step(step, mean_loss) if after_step is not None else None
        if reason == "non-finite":
            record.stop_reason = reason
            break
        record.steps.append(step)
        record.losses.append(mean_loss)
        if reason is not None:
            record.stop_reason = reason
            break
        step += 1
    optimizer.zero_grad()
    return record
