r"""Running the LR range test inside a ``Trainer`` and putting everything back afterwards.

Why an own loop rather than re-entering the fit loop (as Lightning's ``LearningRateFinder`` does): the fit loop
carries progress counters, logging, callbacks, validation and checkpointing, and each would have to be switched off and
restored. A loop of a few dozen lines that goes through the *strategy* keeps what matters for the measurement (the DDP
wrapper and its gradient all-reduce, the precision plugin's autocast and gradient scaler, gradient clipping,
accumulation, the user's batch-transfer hooks) and touches nothing else. Nothing is written to disk: the snapshot lives
in memory, so no shared filesystem is needed across machines.

Checked against Lightning 2.4-2.6: at ``on_fit_start`` the strategy has wrapped the model and set up the optimizers;
the train dataloader exists once ``trainer.fit_loop.setup_data()`` has run (``trainer.estimated_stepping_batches``
runs it too, but not when ``max_epochs=-1``).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_superconv.curve import DivergenceMonitor


@dataclass
class Snapshot:
    r"""Everything a range test changes, held in memory.

    Parameters and buffers are copied tensor by tensor (non-persistent buffers too, which a ``state_dict`` omits) and
    written back in place, so the optimizer's references to the parameters stay valid. Optimizer state is copied per
    parameter and the param-group dicts are refilled in place, for the same reason (a scheduler holds the optimizer, and
    some code holds its groups).
    """

    tensors: list[tuple[Tensor, Tensor]]
    grads: list[tuple[torch.nn.Parameter, Tensor | None]]
    training_flags: list[tuple[torch.nn.Module, bool]]
    metric_states: list[tuple[torch.nn.Module, dict[str, Any]]]
    optimizer: Optimizer
    optimizer_state: dict[Tensor, Any]
    param_groups: list[dict[str, Any]]
    scaler_state: dict[str, Any] | None
    generator_states: list[tuple[torch.Generator, Tensor]] = field(default_factory=list)


def _metric_state(module: torch.nn.Module) -> dict[str, Any] | None:
    """The accumulated state of a torchmetrics ``Metric`` (its states are attributes, not buffers), else None."""
    defaults = getattr(module, "_defaults", None)
    if not isinstance(defaults, dict) or not hasattr(module, "_update_count"):
        return None
    names = [*defaults, "_update_count", "_computed", "_update_called"]
    return {name: copy.deepcopy(getattr(module, name)) for name in names if hasattr(module, name)}


def dataloader_generators(loaders: list[Any]) -> list[torch.Generator]:
    r"""The ``torch.Generator`` objects that iterating these loaders advances (loader, sampler, batch sampler).

    A loader whose sampler owns a generator draws from it at every new iterator; without restoring it, the range test
    would change the order of the user's first training epoch.
    """
    found: list[torch.Generator] = []
    for loader in loaders:
        candidates = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
        batch_sampler = getattr(loader, "batch_sampler", None)
        candidates.append(getattr(batch_sampler, "sampler", None))
        for obj in candidates:
            generator = getattr(obj, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                found.append(generator)
    return found


def capture(
    module: torch.nn.Module, optimizer: Optimizer, scaler: Any = None, generators: list[torch.Generator] | None = None
) -> Snapshot:
    """Copy the state a range test will change."""
    tensors = [(t, t.detach().clone()) for t in [*module.parameters(), *module.buffers()]]
    grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in module.parameters()]
    metric_states = [(m, state) for m in module.modules() if (state := _metric_state(m)) is not None]
    return Snapshot(
        tensors=tensors,
        grads=grads,
        training_flags=[(m, m.training) for m in module.modules()],
        metric_states=metric_states,
        optimizer=optimizer,
        optimizer_state={p: copy.deepcopy(s) for p, s in optimizer.state.items()},
        param_groups=[{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        scaler_state=None if scaler is None else copy.deepcopy(scaler.state_dict()),
        generator_states=[(g, g.get_state()) for g in generators or []],
    )


def restore(snapshot: Snapshot, scaler: Any = None) -> None:
    """Write a :class:`Snapshot` back, bit for bit."""
    with torch.no_grad():
        for tensor, saved in snapshot.tensors:
            tensor.copy_(saved)
    for param, grad in snapshot.grads:
        param.grad = grad
    for module, flag in snapshot.training_flags:
        module.training = flag
    for module, metric_state in snapshot.metric_states:
        for name, value in metric_state.items():
            setattr(module, name, copy.deepcopy(value))
    optimizer = snapshot.optimizer
    optimizer.state.clear()
    optimizer.state.update({param: copy.deepcopy(kept) for param, kept in snapshot.optimizer_state.items()})
    for group, saved_group in zip(optimizer.param_groups, snapshot.param_groups, strict=True):
        params = group["params"]
        group.clear()
        group.update(copy.deepcopy(saved_group))
        group["params"] = params
    if scaler is not None and snapshot.scaler_state is not None:
        scaler.load_state_dict(copy.deepcopy(snapshot.scaler_state))
    for generator, generator_state in snapshot.generator_states:
        generator.set_state(generator_state)


def _loss_of(output: Any) -> Tensor | None:
    """The loss in a ``training_step`` output: a tensor, a mapping's ``"loss"``, or None (step skipped)."""
    if output is None or isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "loss" in output:
        return output["loss"]
    raise TypeError(
        f"`training_step` must return a loss tensor, a dict with a 'loss' key, or None; got {type(output).__name__}"
    )


# GradScaler halves its scale at every skipped step: from the default 2**16, thirty halvings reach 2**-14, below which
# no gradient that overflows is finite at any scale.
_MAX_CONSECUTIVE_SKIPS = 30


@dataclass
class SweepRecord:
    """What the sweep loop saw: the LR and mean loss of each completed optimizer step."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    stop_reason: str = "completed"
    skipped_steps: int = 0


class _BatchStream:
    r"""Batches from the train dataloader, restarting it when it runs out (data shorter than the range test).

    A fresh iterator is built over the same processed dataloaders the fit loop uses (distributed sampler included) and
    with the same per-epoch limits (``limit_train_batches``), without touching the iterator the fit loop already holds.
    When the loader ends, it is restarted, as at a new epoch; a loader that yields nothing after a restart (a one-shot
    iterable) ends the stream.
    """

    def __init__(self, combined_loader: Any) -> None:
        self._make = _fresh_iterator_factory(combined_loader)
        self._iterator: Iterator[Any] | None = None
        self._left = math.inf
        self.restarts = 0
        self.exhausted = False

    def next(self) -> tuple[Any, int] | None:
        """The next ``(batch, batch_idx)``, or None once the data has run out for good."""
        if self.exhausted:
            return None
        for _ in range(2):
            if self._iterator is None:
                self._iterator, self._left = self._make()
            try:
                if self._left <= 0:
                    raise StopIteration
                batch, batch_idx, _ = next(self._iterator)
                self._left -= 1
                return batch, batch_idx
            except StopIteration:
                self._iterator = None
                self.restarts += 1
        self.exhausted = True
        return None


def _fresh_iterator_factory(combined_loader: Any) -> Callable[[], tuple[Iterator[Any], float]]:
    """A function that returns a new iterator over the fit loop's loaders and the number of batches in its epoch."""
    cls = type(combined_loader)

    def make() -> tuple[Iterator[Any], float]:
        fresh = cls(combined_loader.iterables, combined_loader._mode)
        fresh.flattened = combined_loader.flattened
        fresh.limits = combined_loader.limits
        iterator = iter(fresh)
        # the limits only shorten the iterator's length, which the fit loop counts against; iterating goes on
        try:
            length: float = len(fresh)
        except (TypeError, NotImplementedError):  # no length (an iterable dataset without a limit)
            length = math.inf
        return iterator, length

    return make


def _training_step_takes_batch_idx(pl_module: Any) -> bool:
    params = list(inspect.signature(pl_module.training_step).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    return len(params) >= 2 or any(p.name == "batch_idx" for p in params)


@contextlib.contextmanager
def quiet_trainer(trainer: Any, pl_module: Any) -> Iterator[None]:
    r"""Run steps that no other callback sees and whose ``self.log`` calls go nowhere.

    - ``trainer.callbacks`` is emptied: ``strategy.backward`` and the precision plugin fire every callback's
      backward and optimizer-step hooks, and ModelCheckpoint, EarlyStopping, LearningRateMonitor (or our own
      ``WeightDecayBalancer``) must not act on a range-test step.
    - The user's ``self.log`` in ``training_step`` writes into a throwaway result collection, never to the loggers.
    - The module's hooks (``backward``, ``on_before_optimizer_step``, ``configure_gradient_clipping``) still run: they
      are part of how the user trains.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    saved_callbacks = trainer.callbacks
    saved_results = epoch_loop._results
    saved_fx = pl_module._current_fx_name
    trainer.callbacks = []
    epoch_loop._results = type(saved_results)(training=True)
    try:
        yield
    finally:
        trainer.callbacks = saved_callbacks
        epoch_loop._results = saved_results
        pl_module._current_fx_name = saved_fx


def sweep(
    trainer: Any,
    pl_module: Any,
    optimizer: Optimizer,
    lrs: list[float],
    ratios: list[float],
    monitor: DivergenceMonitor,
) -> SweepRecord:
    r"""Run one optimizer step per LR in ``lrs`` and record the loss; stop early once the loss has clearly diverged.

    Each step: ``accumulate_grad_batches`` micro-batches go through the strategy's ``training_step`` (DDP forward,
    autocast), ``backward`` (loss scaling, DDP all-reduce on the last micro-batch) and ``optimizer_step`` (unscaling,
    gradient clipping, scaler skip logic). The loss recorded for the step is the mean of the micro-batches' raw losses,
    averaged over ranks, so every rank takes the same stop decision. A step the gradient scaler skipped (overflow) is
    retried at the same LR rather than read as divergence.
    """
    strategy = trainer.strategy
    accumulate = max(int(trainer.accumulate_grad_batches), 1)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    stream = _BatchStream(trainer.fit_loop._combined_loader)
    with_batch_idx = _training_step_takes_batch_idx(pl_module)
    block_sync = getattr(strategy, "block_backward_sync", None)
    record = SweepRecord()
    consecutive_skips = 0
    step = 0
    pl_module.train()
    while step < len(lrs):
        # Draw the step's micro-batches before any forward pass, and let all ranks agree that each got them all: a rank
        # whose data ran out must stop together with the others, not leave them waiting in DDP's gradient all-reduce.
        drawn = [stream.next() for _ in range(accumulate)]
        batches = [item for item in drawn if item is not None]
        if not strategy.reduce_boolean_decision(len(batches) == accumulate, all=True):
            record.stop_reason = "data-exhausted"
            break
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lrs[step] * ratio
        micro_losses: list[Tensor] = []

        def run_micro_batch(
            item: tuple[Any, int], final: bool, micro_losses: list[Tensor] = micro_losses
        ) -> Tensor | None:
            batch, batch_idx = item
            batch = trainer.precision_plugin.convert_input(batch)
            batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=0)
            batch = strategy.batch_to_device(batch, dataloader_idx=0)
            pl_module._current_fx_name = "training_step"
            args = (batch, batch_idx) if with_batch_idx else (batch,)
            loss = _loss_of(strategy.training_step(*args))
            pl_module._current_fx_name = None
            if loss is None:
                return None
            micro_losses.append(loss.detach().float())
            context = block_sync() if (block_sync is not None and not final) else contextlib.nullcontext()
            with context:
                # scaled as the fit loop scales it (`ClosureResult`), so clipping thresholds mean the same
                strategy.backward(loss / accumulate, optimizer)
            return loss

        optimizer.zero_grad()
        for item in batches[:-1]:
            run_micro_batch(item, final=False)
        scale_before = scaler.get_scale() if scaler is not None else None
        last = batches[-1]
        strategy.optimizer_step(optimizer, lambda last=last: run_micro_batch(last, final=True), pl_module)
        if not micro_losses:
            raise RuntimeError(
                "`training_step` returned None for every batch of a range-test step; the range test needs a loss"
            )
        local = torch.stack(micro_losses).mean()
        # DDP's own correctness rests on every rank receiving the same all-reduced values, so every rank reads the
        # same mean loss and takes the same stop decision below, with no further broadcast
        mean_loss = float(strategy.reduce(local, reduce_op="mean"))
        if scaler is not None and scaler.get_scale() < scale_before and math.isfinite(mean_loss):
            # the scaler found inf/NaN gradients and skipped the update: the scale was too high, not the LR
            record.skipped_steps += 1
            consecutive_skips += 1
            if consecutive_skips > _MAX_CONSECUTIVE_SKIPS:
                record.stop_reason = "scaler-skips"
                break
            continue
        consecutive_skips = 0
        reason = monitor.update(mean_loss)
        if reason == "non-finite":
            record.stop_reason = reason
            break
        record.lrs.append(lrs[step])
        record.losses.append(mean_loss)
        if reason is not None:
            record.stop_reason = reason
            break
        step += 1
    optimizer.zero_grad()
    return record
