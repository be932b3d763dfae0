r"""Short branches of training from one snapshot, each scored on held-out data.

The weight-decay grid's branches and the range test's peak trials run here.

Every branch starts from the same snapshot (parameters, optimizer state, RNG streams, dataloader generators) in one
:func:`~lightning_superconv.sandbox.sandbox`, so branches of data order 0 see the same batches and dropout masks and
differ only in what the caller set (their schedule, their weight decay); order ``k > 0`` reseeds the RNG streams
(global and the dataloaders' own generators) and shifts the seed of each ``DistributedSampler`` (whose order no
generator sets) to give another order of batches. Each branch follows its own LR and
momentum per step and param group. Everything is restored at the end.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection

from lightning_superconv import _compat
from lightning_superconv.param_groups import write_lr, write_momentum
from lightning_superconv.sandbox import random_state_kept, sandbox
from lightning_superconv.snapshot import (
    capture,
    dataloader_generators,
    distributed_samplers,
    held_generators,
    reseed,
)
from lightning_superconv.steps import BatchStream, move_batch, moved_batch_loss, take_steps, takes_batch_idx
from lightning_superconv.weight_decay import GroupTrace


@dataclass(frozen=True)
class Branch:
    r"""One branch: the LR and momentum of each param group at each of its steps, and what else it changes.

    Attributes:
        traces: one :class:`~lightning_superconv.weight_decay.GroupTrace` per param group; the branch runs as many
            steps as they hold.
        weight_decays: ``weight_decay`` to set per param-group index for this branch (the others keep theirs).
        order: 0 for the run's own order of batches; ``k > 0`` for another one.
        label: what the caller calls this branch (a candidate peak, a multiple of ``λ``).
    """

    traces: Sequence[GroupTrace]
    weight_decays: dict[int, float] = field(default_factory=dict)
    order: int = 0
    label: float = 0.0

    @property
    def steps(self) -> int:
        """How many steps the branch runs."""
        return len(self.traces[0].lrs)


class UnscorableBatchesError(RuntimeError):
    """``training_step`` cannot score the held-out batches (it fails on them, or returns no loss for any).

    A validation batch can have another form than a training batch (a dict with ids, say); the caller then scores on
    training batches instead, or leaves its setting as configured. A ``training_step`` may also fail in eval mode or
    without gradients, on any batch: one that returns losses only in train mode (torchvision's detection models), or
    takes gradients itself (adversarial training, input-gradient penalties). Raised inside the branches' sandbox, so
    everything they changed is restored before the caller sees it.
    """


class DataRanOutError(RuntimeError):
    """The train dataloader ran out in a branch and yielded nothing when restarted: its data can be read only once.

    Each branch would train on fewer batches than the one before, and none on what a fresh epoch gives (found in a
    review: a one-shot stream gave the range test's trials no batch at all, which scored the untrained model the same
    at every peak). Raised inside the branches' sandbox, so everything they changed is restored first.
    """


class HeldOutBatches:
    r"""The batches every branch is scored on: the same batches, fetched once, capped in number.

    The first evaluation reads batches up to its cap (or until the source ends); every later branch is scored on
    exactly those batches, so the comparison is like for like and the evaluation stays a bounded part of the cost. The
    cap is a count, not a time, so that a seeded run scores on the same batches, and picks the same, on any machine.

    Args:
        batches: where the batches come from.
        validation: whether they are validation batches, which ``training_step`` may not accept
            (:class:`UnscorableBatchesError`); training batches it has just trained on, it does.
        loaders: the dataloaders the batches are read from, beside the train dataloaders: reading them advances the
            generators of their samplers, which the branches' sandbox restores with the others.
    """

    def __init__(
        self, batches: Iterator[Any] | list[Any], validation: bool = False, loaders: Sequence[Any] = ()
    ) -> None:
        self._iterator = iter(batches)
        self.batches: list[Any] = []
        self.fixed = False
        self.validation_batches = validation
        self.loaders = list(loaders)

    @classmethod
    def validation(cls, trainer: _compat.Trainer) -> HeldOutBatches | None:
        r"""The run's validation dataloaders in order, as far as ``limit_val_batches`` lets the run validate on them.

        None when the run has none, or validates on none (``limit_val_batches=0``, or loaders of no batch: found in a
        review, every trial scored nothing and read as diverged): the held-out batches then come from the training
        data.
        """
        limit = trainer.limit_val_batches
        # not built when not read; built off the record: a `val_dataloader` that draws a random subset draws it
        # again when the run builds its own, the same one
        loaders = None
        if limit != 0:
            with random_state_kept(trainer, trainer.lightning_module):
                loaders = _compat.val_dataloaders(trainer)
        if loaders is None or all(_no_batch(loader) for loader in loaders):
            return None
        # a persistent loader's own iterator is the run's: read by workers of the trials' own (found in a review: the
        # trials started it, and the run's validation, dropout included, differed from its second epoch on)
        loaders = [_compat.own_workers(loader) for loader in loaders]
        limited = (itertools.islice(loader, _batch_limit(loader, limit)) for loader in loaders)
        return cls((batch for loader in limited for batch in loader), validation=True, loaders=loaders)

    @classmethod
    def after_training_batches(cls, trainer: _compat.Trainer, skip: int, count: int) -> HeldOutBatches:
        r"""``count`` train batches that come after the first ``skip``, which the branches train on.

        Call it inside the branches' sandbox: it reads the train data, and the sandbox restores what that advances.
        """
        stream = BatchStream(trainer)
        for _ in range(skip):
            stream.next()
        drawn = [stream.next() for _ in range(count)]
        return cls([item[0] for item in drawn if item is not None])

    def __iter__(self) -> Iterator[Any]:
        """Each batch as a copy: the kept one stays as the loader gave it.

        A user's hook or step may change the batch it gets in place (``on_before_batch_transfer`` normalizing
        ``batch["x"]``, a ``training_step`` that pops a key): fed the kept batch itself, every later branch would be
        scored on a batch normalized once more, or without its targets (found trying the package as a new user: the
        trials' scores rose 0.43, 0.91, 1.35 on one model and the search stopped early). The tensors are copied too
        (a hook may write into them); so are the collections holding them (Lightning's ``apply_to_collection``).
        """
        for batch in self.batches:
            yield _fresh(batch)
        if self.fixed:
            return
        for batch in self._iterator:
            self.batches.append(batch)
            yield _fresh(batch)

    def fix(self) -> None:
        """Score every later branch on the batches read so far."""
        self.fixed = True


def _fresh(batch: Any) -> Any:
    """A copy of ``batch``: its tensors cloned, the lists, tuples, dicts and dataclasses holding them rebuilt.

    A frozen dataclass (a batch type with its own ``to()``, which Lightning moves whole) cannot be rebuilt field by
    field: it is deep-copied; a batch that cannot be copied either is given as it is.
    """
    try:
        return apply_to_collection(batch, torch.Tensor, torch.Tensor.clone)
    except ValueError:  # `apply_to_collection` refuses frozen dataclasses
        try:
            return copy.deepcopy(batch)
        except (TypeError, RuntimeError, copy.Error):
            return batch


def _batch_limit(loader: Any, limit: int | float) -> int | None:
    r"""How many of ``loader``'s batches ``limit_val_batches`` lets a run read (None: all), as Lightning counts them.

    An int is a number of batches; a float a fraction of the loader's length (at least one batch), all of a loader
    whose length cannot be read.

    Example::

        >>> _batch_limit(range(10), 3), _batch_limit(range(10), 0.25), _batch_limit(range(10), 1.0)
        (3, 2, None)
    """
    if isinstance(limit, int):
        return limit
    length = _length(loader)
    if limit >= 1.0 or length is None:
        return None
    return max(1, int(length * limit))


def run_branches(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    optimizer: Any,
    branches: Sequence[Branch] | Callable[[list[float]], Branch | None],
    held_out: HeldOutBatches | None,
) -> tuple[list[float], float]:
    r"""Run each branch from the same snapshot, score it, restore everything; return the scores and training seconds.

    A branch's score is the mean ``training_step`` loss over the held-out batches in eval mode (:func:`held_out_loss`);
    one whose loss turns NaN/inf scores ``inf``. The held-out batches are read up to as many as a branch trains on: a
    forward pass without gradients costs about a third of a training step's, at the same batch size.

    Args:
        trainer: the ``Trainer``, its strategy and optimizer set up and its train data loaded.
        pl_module: its LightningModule.
        optimizer: the optimizer the branches step.
        branches: the branches; or a function of the scores so far that returns the next branch (None: no more), for
            a search that decides where to look next from what it saw.
        held_out: the batches to score on; None: train batches right after the ones the branches train on (as many
            as a tenth of a branch's steps, at least 4): no branch trains on these batches, but one longer than an
            epoch has trained on their samples.
    """
    loaders = _compat.train_loaders(trainer)
    generators, samplers = dataloader_generators(loaders), distributed_samplers(loaders)
    scores: list[float] = []
    train_seconds = 0.0
    accumulate = max(int(trainer.accumulate_grad_batches), 1)
    next_branch = (
        branches if callable(branches) else (lambda done: branches[len(done)] if len(done) < len(branches) else None)
    )

    # a shuffled validation loader draws its order from its sampler's generator when the scoring first reads it
    with sandbox(trainer, pl_module, optimizer, () if held_out is None else held_out.loaders) as snapshot:
        branch = next_branch(scores)
        if held_out is None and branch is not None:
            with _compat.isolate_rng(trainer):
                held_out = HeldOutBatches.after_training_batches(
                    trainer, branch.steps * accumulate, scored_batches(branch.steps)
                )
        # after the first branch's first step, one forward on the first held-out batch: a `training_step` that
        # cannot score (a detection model returns detections, not losses, in eval mode) is known then, not after a
        # whole trial (found trying the package as a new user: each of the two sources trained one first, 368 steps
        # for a 20-step sweep). After a step, not before: a step may create what the eval path reads (found
        # reviewing the package: a running input centre set at the first training batch). Without gradients, in
        # eval mode, with the RNG streams put back: the branch trains on as it would have
        peeked = False

        def after_step(step: int, loss: float) -> str | None:
            nonlocal peeked
            if not peeked:
                peeked = True
                assert held_out is not None
                # the module's own state too: a `training_step` that counts its calls (a loss weight's schedule)
                # counts this one (found trying the package as a new user: the first trial then scored differently)
                # and the generators it holds (found in a review: one a layer draws from kept the look's draw)
                generators = held_generators(pl_module, _compat.datamodule(trainer))
                kept = capture(pl_module, optimizer, generators=generators, module_only=True)
                with _compat.isolate_rng(trainer):
                    try:
                        held_out_loss(trainer, pl_module, held_out, 1, peek=True)
                    finally:
                        kept.restore()
            return _stop_if_non_finite(step, loss)

        while branch is not None:
            snapshot.restore()
            for index, value in branch.weight_decays.items():
                optimizer.param_groups[index]["weight_decay"] = value

            def follow(step: int, traces: Sequence[GroupTrace] = branch.traces) -> None:
                for group, trace in zip(optimizer.param_groups, traces, strict=False):
                    write_lr(group, trace.lrs[step])
                    write_momentum(group, trace.momenta[step])

            start = time.perf_counter()
            with _compat.isolate_rng(trainer), _data_order(branch.order, generators, samplers):
                record = take_steps(trainer, pl_module, optimizer, branch.steps, follow, after_step)
                train_seconds += time.perf_counter() - start
                if record.stop_reason == "data-exhausted":
                    raise DataRanOutError(
                        f"the train dataloader ran out after {len(record.losses)} of a branch's {branch.steps} steps "
                        "and yielded nothing when restarted"
                    )
                # gradients inf/NaN at every loss scale a gradient scaler tried diverged too (found in a review:
                # scored on what 8 of its 50 steps had trained, as a branch that ran its course)
                diverged = record.stop_reason in ("non-finite", "scaler-skips")
                assert held_out is not None
                scores.append(
                    math.inf if diverged else held_out_loss(trainer, pl_module, held_out, branch.steps * accumulate)
                )
            branch = next_branch(scores)
    return scores, train_seconds


@contextlib.contextmanager
def _data_order(order: int, generators: Sequence[Any], samplers: Sequence[Any]) -> Iterator[None]:
    """The data order a branch trains on: 0, the run's own; ``k > 0``, another one.

    For ``k > 0`` torch's global RNG and the loaders' generators are reseeded and each ``DistributedSampler``'s seed is
    shifted by ``k`` (Python's and NumPy's RNGs are not: a sampler or a dataset that draws its order from them gives
    every branch the run's own order). The seeds come back on exit; the RNG streams come back from ``isolate_rng`` and
    the snapshot.
    """
    if not order:
        yield
        return
    seeds = [sampler.seed for sampler in samplers]
    torch.manual_seed(torch.initial_seed() + order)
    for generator in generators:
        reseed(generator, order)
    for sampler, seed in zip(samplers, seeds, strict=True):
        sampler.seed = seed + order
    try:
        yield
    finally:
        for sampler, seed in zip(samplers, seeds, strict=True):
            sampler.seed = seed


def _no_batch(loader: Any) -> bool:
    """Whether ``loader`` says it yields no batch (a length of 0: fewer samples than a batch, with ``drop_last``)."""
    return _length(loader) == 0


def _length(loader: Any) -> int | None:
    """``len(loader)``, or None where it has none (a stream, a CombinedLoader not yet iterated), as Lightning reads."""
    try:
        return len(loader)
    except (TypeError, NotImplementedError, RuntimeError):
        return None


def scored_batches(steps: int) -> int:
    """How many training batches a branch of ``steps`` steps is scored on, when there is no validation data."""
    return max(4, steps // 10)


def _stop_if_non_finite(step: int, loss: float) -> str | None:
    return None if math.isfinite(loss) else "non-finite"


@torch.no_grad()
def held_out_loss(
    trainer: _compat.Trainer,
    pl_module: _compat.LightningModule,
    batches: HeldOutBatches,
    batch_limit: int,
    peek: bool = False,
) -> float:
    r"""Mean ``training_step`` loss over the held-out batches in eval mode, averaged over ranks.

    The module's own ``training_step`` loss is used because every module has one, while what ``validation_step``
    logs is up to the user. The first call reads at most ``batch_limit`` batches (on every rank the same count: the stop
    decision is reduced across ranks). ``peek``: a look at the first batches only, to learn early whether
    ``training_step`` can score them at all: the batches read are kept for the first real call, which reads on from
    them, and a batch without a loss (``training_step`` may return None for some) proves nothing.

    Raises:
        UnscorableBatchesError: batches that ``training_step`` fails on in eval mode without gradients, or validation
            batches, or held-out training batches, it returns no loss for (not one), on every rank.
        Exception: what the module's batch transfer hooks raise on batches that Lightning's own loops move through
            them too (training batches; validation batches of a module that validates), unchanged: the user's code
            failed, not the scoring (found trying the package as a new user: such an error was blamed on
            ``training_step`` and the trials scored other batches).
        RuntimeError: such batches on some ranks only (DDP's state is then out of step between the ranks), or a
            failure of the transfer hooks on another rank.
    """
    strategy = trainer.strategy
    # each submodule's own flag comes back: `train(True)` would also switch on a submodule the user keeps in eval mode
    modes = [(module, module.training) for module in pl_module.modules()]
    pl_module.eval()
    total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
    count = 0
    failure: str | None = None
    with_batch_idx = takes_batch_idx(pl_module)
    kind = "validation" if batches.validation_batches else "training"
    # Lightning moves training batches through the transfer hooks, and validation batches where the module validates
    lightning_moves_them = not batches.validation_batches or _compat.overrides(pl_module, "validation_step")
    raised: Exception | None = None  # the user's own transfer hooks failed: said as they said it
    try:
        for batch_idx, batch in enumerate(batches):
            # said on every rank together below: a rank that raised here alone would leave the others waiting in the
            # reductions that follow (DDP's forward without gradients reduces nothing)
            try:
                moved = move_batch(trainer, pl_module, batch, validation=batches.validation_batches)
            except Exception as err:
                failure = f"the batch transfer hooks failed on {kind} batch {batch_idx} ({type(err).__name__}: {err})"
                raised = err if lightning_moves_them else None
            # every rank goes on to the forward, or none: DDP's forward broadcasts the buffers, which a rank that could
            # not move its batch would never join (found trying the package as a new user: two ranks hung)
            if strategy.reduce_boolean_decision(failure is not None, all=False):
                break
            try:
                loss = moved_batch_loss(trainer, pl_module, moved, batch_idx, with_batch_idx)
            except Exception as err:
                failure = (
                    f"`training_step` failed on {kind} batch {batch_idx} in eval mode without gradients "
                    f"({type(err).__name__}: {err})"
                )
                loss = None
            if loss is not None:
                total += loss.detach().double()
                count += 1
            if not batches.fixed:
                # 2: this rank cannot score; 1: the cap is reached; every rank stops at the same batch
                flag = 2.0 if failure else float(batch_idx + 1 >= batch_limit)
                if float(strategy.reduce(torch.tensor(flag, device=pl_module.device), reduce_op="max")) > 0:
                    break
            elif failure:
                break
    finally:
        for module, mode in modes:
            module.training = mode
    if not peek:
        batches.fix()
    if failure is None and count == 0 and batches.batches and not peek:
        # no score at all is no divergence: read as `inf`, every trial "diverged", even the lowest peak
        held_out = "validation" if batches.validation_batches else "held-out training"
        failure = f"`training_step` returned no loss for any {held_out} batch in eval mode without gradients"
    if strategy.reduce_boolean_decision(failure is not None, all=False):
        # decided on every rank alike: a rank that raised the hooks' error while another went on to score other
        # batches would leave that one waiting in their reductions
        everywhere = strategy.reduce_boolean_decision(failure is not None, all=True)
        hooks_failed = strategy.reduce_boolean_decision(raised is not None, all=False)
        if raised is not None:
            raise raised
        if hooks_failed:
            raise RuntimeError(
                "The module's batch transfer hooks failed on another rank while the range test's trials (or "
                "`WeightDecayBalancer(mode='grid')`) scored held-out batches: that rank raised their error."
            )
        if not everywhere:
            # a forward that raised inside DDP's wrapper on some ranks only leaves DDP's own per-rank state out of
            # step (whether its next forward broadcasts the buffers): no rank can take a step with the others
            raise RuntimeError(
                "The range test's trials (and `WeightDecayBalancer(mode='grid')`) score by the `training_step` "
                f"loss on held-out batches, but on some ranks only that fails "
                f"({failure or 'on another rank'}). Give every rank batches of the same form, or pass "
                "`trial_steps=0` (and another balancer mode)."
            )
        raise UnscorableBatchesError(failure or "`training_step` could not score the held-out batches")
    mean = total / max(count, 1)
    value = float(strategy.reduce(mean, reduce_op="mean"))
    return value if math.isfinite(value) and count > 0 else math.inf
