r"""Running the weight-decay grid: short branches of the run's own schedule from one snapshot, scored on validation.

The engine under ``WeightDecayBalancer(mode="grid")``; :mod:`lightning_superconv.weight_decay_grid` plans what it
runs. Every branch starts from the same snapshot (parameters, optimizer state, RNG streams, dataloader generators) in
one :func:`~lightning_superconv.sandbox.sandbox`, so branches of data order 0 see the same batches and dropout masks
and differ in ``λ`` alone; order ``k > 0`` reseeds the RNG streams (global and the dataloaders' own generators) to
give another order of batches. Everything is restored at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from lightning_superconv import _compat
from lightning_superconv.param_groups import write_momentum
from lightning_superconv.sandbox import sandbox
from lightning_superconv.snapshot import dataloader_generators
from lightning_superconv.steps import loss_of, take_steps
from lightning_superconv.weight_decay import GroupTrace
from lightning_superconv.weight_decay_grid import GridPlan


class ValidationSet:
    r"""The validation batches the grid scores every branch on: the same batches, fetched once, capped in time.

    The first evaluation reads batches until it has taken ``time_share`` of the first branch's training time (or the
    loader ends); every later branch is scored on exactly those batches, so the comparison is like for like and the
    evaluation stays a bounded part of the search's cost.
    """

    def __init__(self, loaders: list[Any]) -> None:
        self._iterator = (batch for loader in loaders for batch in loader)
        self.batches: list[Any] = []
        self.fixed = False

    @classmethod
    def of(cls, trainer: _compat.Trainer) -> ValidationSet | None:
        """The run's validation dataloaders (all of them, in order), or None when the run has none."""
        loaders = _compat.val_dataloaders(trainer)
        return None if loaders is None else cls(loaders)

    def __iter__(self) -> Iterator[Any]:
        yield from self.batches
        if self.fixed:
            return
        for batch in self._iterator:
            self.batches.append(batch)
            yield batch

    def fix(self) -> None:
        """Score every later branch on the batches read so far."""
        self.fixed = True


def run_grid(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    optimizer: Any,
    traces: Sequence[GroupTrace],
    plan: GridPlan,
    decayed: list[int],
    refs: Sequence[float],
    val_batches: ValidationSet,
) -> tuple[list[float], float]:
    r"""Run one compressed branch per ``(factor, data order)`` of ``plan``; return validation losses and train seconds.

    A branch whose loss turns NaN/inf scores ``inf``.
    """
    generators = dataloader_generators(_compat.train_loaders(trainer))
    losses: list[float] = []
    train_seconds = 0.0

    def follow_schedule(step: int) -> None:
        t = plan.indices[step]
        for group, trace in zip(optimizer.param_groups, traces, strict=True):
            group["lr"] = trace.lrs[t]
            write_momentum(group, trace.momenta[t])

    def stop_if_non_finite(step: int, loss: float) -> str | None:
        return None if math.isfinite(loss) else "non-finite"

    with sandbox(trainer, pl_module, optimizer) as snapshot:
        for factor, order in plan.runs:
            snapshot.restore()
            for i in decayed:
                optimizer.param_groups[i]["weight_decay"] = refs[i] * factor
            start = time.perf_counter()
            with _compat.isolate_rng(trainer):
                if order:
                    torch.manual_seed(torch.initial_seed() + order)
                    for generator in generators:
                        generator.manual_seed(generator.initial_seed() + order)
                record = take_steps(trainer, pl_module, optimizer, plan.steps, follow_schedule, stop_if_non_finite)
                elapsed = time.perf_counter() - start
                train_seconds += elapsed
                diverged = record.stop_reason == "non-finite"
                # evaluation may take up to half a branch's training time: the plan's cost budget allows for it
                losses.append(math.inf if diverged else validation_loss(trainer, pl_module, val_batches, elapsed / 2))
    return losses, train_seconds


@torch.no_grad()
def validation_loss(
    trainer: _compat.Trainer, pl_module: _compat.LightningModule, batches: ValidationSet, time_limit: float
) -> float:
    r"""Mean ``training_step`` loss over the validation batches in eval mode, averaged over ranks.

    The module's own ``training_step`` loss is used because every module has one, while what ``validation_step``
    logs is up to the user. The first call stops reading batches once ``time_limit`` seconds have passed (on every rank
    at the same count: the stop decision is reduced across ranks).
    """
    strategy = trainer.strategy
    was_training = pl_module.training
    pl_module.eval()
    total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
    count = 0
    start = time.perf_counter()
    try:
        for batch_idx, batch in enumerate(batches):
            batch = _compat.before_batch_transfer(pl_module, batch)
            batch = strategy.batch_to_device(batch, dataloader_idx=0)
            _compat.set_current_hook(pl_module, "training_step")
            loss = loss_of(strategy.training_step(batch, batch_idx))
            if loss is not None:
                total += loss.detach().double()
                count += 1
            if not batches.fixed:
                late = torch.tensor(float(time.perf_counter() - start > time_limit), device=pl_module.device)
                if float(strategy.reduce(late, reduce_op="max")) > 0:
                    break
    finally:
        pl_module.train(was_training)
    batches.fix()
    mean = total / max(count, 1)
    value = float(strategy.reduce(mean, reduce_op="mean"))
    return value if math.isfinite(value) and count > 0 else math.inf
