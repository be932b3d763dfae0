r"""Training off the record inside a ``Trainer``: whatever runs in a :func:`sandbox` is undone when it ends.

The range test and the weight-decay grid's branches take real optimizer steps on the user's model, data and optimizer
before training starts. Around a :class:`~lightning_superconv.snapshot.Snapshot` this adds what a ``Trainer`` needs:

- the RNG streams Lightning knows (torch, CUDA, NumPy, Python) are isolated (Lightning's ``isolate_rng``), so dropout
  masks and shuffles in training are those of a run without the callbacks;
- no other callback sees the steps (``ModelCheckpoint``, ``EarlyStopping``, ``LearningRateMonitor``, our own
  ``WeightDecayBalancer`` must not act on them), and the user's ``self.log`` calls go to a throwaway collection;
- everything is restored however the block ends: normally, with an exception, or with Ctrl-C.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from lightning_superconv import _compat
from lightning_superconv.snapshot import (
    Snapshot,
    capture,
    data_order_numbers,
    data_order_sequences,
    held_generators,
    lazy_modules,
    random_generators,
    rng_state,
    set_rng_state,
    stream_positions,
    streams_moved,
)

#: the attribute that marks an error raised while a sandbox's snapshot was put back (:func:`note_unrestored`)
_UNRESTORED = "_lightning_superconv_unrestored"


@contextlib.contextmanager
def quiet_trainer(trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> Iterator[None]:
    r"""Run steps that no other callback sees and whose ``self.log`` calls go nowhere.

    - ``trainer.callbacks`` is emptied: ``strategy.backward`` and the precision plugin fire every callback's
      backward and optimizer-step hooks.
    - The user's ``self.log`` in ``training_step`` writes into a throwaway result collection, never to the loggers.
    - The module's own hooks (``backward``, ``on_before_optimizer_step``, ``configure_gradient_clipping``) still run:
      they are part of how the user trains; the Trainer's profiler does not time them (found trying the package as a
      new user: ``profiler="simple"`` counted the range test's hundreds of steps into each hook's calls and mean
      duration; the block's whole time still shows in the hook that runs it, such as ``on_fit_start``).
    - ``trainer.should_stop`` comes back as it was: a ``training_step`` that stops the run once its loss is low enough
      set it in the sweep (found in a review: the real run then trained no step, without a word).
    """
    saved_stop = trainer.should_stop
    saved_callbacks = _compat.callbacks(trainer)
    saved_results = _compat.epoch_results(trainer)
    saved_hook = _compat.current_hook(pl_module)
    # Lightning's `self.log` records its hook in the logger connector too (found in a review: the range test left it
    # "training_step", where a fit starts with None)
    saved_logging_hook = _compat.logging_hook(trainer)
    _compat.set_callbacks(trainer, [])
    _compat.set_epoch_results(trainer, type(saved_results)(training=True))
    try:
        with _compat.unprofiled(trainer):
            yield
    finally:
        _compat.set_callbacks(trainer, saved_callbacks)
        _compat.set_epoch_results(trainer, saved_results)
        _compat.set_current_hook(pl_module, saved_hook)
        _compat.set_logging_hook(trainer, saved_logging_hook)
        trainer.should_stop = saved_stop


def refuse_lazy_modules(trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
    """Refuse a module with a lazy submodule that has no weights yet: a snapshot has nothing to copy of it.

    Raises:
        MisconfigurationException: naming the lazy modules and the fix.
    """
    lazy = lazy_modules(pl_module)
    if lazy:
        raise _compat.misconfiguration(
            trainer,
            f"Training off the record (the range test, the weight-decay grid) starts from a snapshot of your model and "
            f"puts it back afterwards, but {', '.join(lazy)} {'has' if len(lazy) == 1 else 'have'} no weights yet: a "
            "lazy module creates them at its first forward pass. Run one forward pass on an example batch before "
            "`fit` (`model(x)`; torch's docs advise it for lazy modules before the optimizer is built, too), or pass "
            "`SuperConvergence(max_lr=...)` (and `WeightDecayBalancer(mode='timescale')`), which take no snapshot "
            "before training.",
        )


@contextlib.contextmanager
def sandbox(
    trainer: _compat.Trainer, pl_module: _compat.LightningModule, optimizer: Any, other_loaders: Sequence[Any] = ()
) -> Iterator[Snapshot]:
    r"""Run the block on the user's model, data and optimizer, then put everything back exactly.

    Yields the snapshot taken on entry; a block that runs several branches calls ``snapshot.restore()`` before each.
    The train dataloader must be loaded (``_compat.setup_train_data``): the generators of its samplers and datasets
    are restored too, those of ``other_loaders`` (the validation loaders the block reads: the run's own validation
    then sees the order it would have seen without the block), and those the module and the datamodule hold.

    Raises:
        MisconfigurationException: if a lazy module has not created its weights yet (nothing to snapshot).
    """
    refuse_lazy_modules(trainer, pl_module)
    scaler = _compat.grad_scaler(trainer)
    loaders = _compat.train_loaders(trainer)
    generators = random_generators([*loaders, *other_loaders], pl_module, _compat.datamodule(trainer))
    snapshot = capture(pl_module, optimizer, scaler, generators)
    datamodule = _compat.datamodule(trainer)
    if datamodule is not None:
        # its hooks (`on_before_batch_transfer`, `transfer_batch_to_device`, ...) run at each of the block's batches:
        # what they count or record there comes back too (found in a review: a count of the batches transferred read
        # 28 after a fit of 8 steps)
        snapshot.attributes.append((datamodule, dict(vars(datamodule))))
    snapshot.scalars += data_order_numbers([*loaders, *other_loaders])
    snapshot.sequences += data_order_sequences([*loaders, *other_loaders])
    streams = stream_positions([*loaders, *other_loaders])
    if snapshot.uncaptured:
        # found trying the package as a new user: an observer whose `get_extra_state` raises until it is calibrated
        # started training having counted the range test's batches; what cannot be copied cannot be put back
        _compat.rank_zero_warn(
            trainer,
            f"lightning_superconv: the extra state of {', '.join(snapshot.uncaptured)} could not be copied "
            "(`get_extra_state` raised, or its value cannot be copied) before training off the record (the range "
            "test, the weight-decay grid): what that training changes in it stays. Make `get_extra_state` return "
            "its state at any time, or pass `SuperConvergence(max_lr=...)` (and another `WeightDecayBalancer` "
            "mode), which train nothing off the record.",
        )
    failure: BaseException | None = None
    try:
        with _compat.isolate_rng(trainer), quiet_trainer(trainer, pl_module):
            try:
                yield snapshot
            except BaseException as err:
                # Lightning's `isolate_rng` restores the RNG only when its block exits normally: leave it normally,
                # re-raise after it
                failure = err
    finally:
        # also on KeyboardInterrupt and SystemExit: nothing the block did may survive it
        try:
            snapshot.restore()
        except BaseException as err:
            note_unrestored(err, failure)
            raise
    moved = streams_moved(streams)
    if moved:
        # found in a review: a stream that reads a file it holds open went on after what the range test had read
        _compat.rank_zero_warn(
            trainer,
            f"lightning_superconv: training off the record (the range test, the weight-decay grid) read from "
            f"{', '.join(f'`{name}`' for name in moved)}, a source your dataset holds and reads in the main process, "
            "which cannot be rewound: training goes on after what it read. Open the source in the dataset's "
            "`__iter__`, so that each pass reads its own, or pass `SuperConvergence(max_lr=...)` (and another "
            "`WeightDecayBalancer` mode), which train nothing off the record.",
        )
    if failure is not None:
        raise failure


def note_unrestored(err: BaseException, during: BaseException | None = None) -> None:
    """Mark an error raised while a sandbox's snapshot was put back: the messages then claim no exact restore."""
    setattr(err, _UNRESTORED, True)
    if hasattr(err, "add_note"):  # Python >= 3.11
        after = f", after that training raised {type(during).__name__}: {during}" if during is not None else ""
        err.add_note(
            "Raised while lightning_superconv put back the snapshot it took before training off the record (the "
            f"range test, the weight-decay grid){after}: unless a note above says what was, the model, the optimizer "
            "and the RNG streams may not all be as they were. Please report it; `SuperConvergence(max_lr=...)` "
            "trains nothing off the record."
        )


def unrestored(err: BaseException) -> bool:
    """Whether ``err`` was raised while a sandbox's snapshot was put back (:func:`note_unrestored`)."""
    return bool(getattr(err, _UNRESTORED, False))


@contextlib.contextmanager
def random_state_kept(trainer: _compat.Trainer, pl_module: _compat.LightningModule | None) -> Iterator[None]:
    r"""Run the block, then put back the RNG streams and the generators the module and datamodule hold, however it ends.

    For a user hook called off the record: the range test builds the validation loaders once more for its trials,
    and a ``val_dataloader`` that draws a random subset (``torch.randperm``) would otherwise leave the run's own
    draws shifted (found trying the package as a new user: the trials scored one subset, the run validated on
    another, and its weights differed from a run given the pick).
    """
    generators = [(g, rng_state(g)) for g in held_generators(pl_module, _compat.datamodule(trainer))]
    failure: BaseException | None = None
    try:
        with _compat.isolate_rng(trainer):
            try:
                yield
            except BaseException as err:  # `isolate_rng` restores only on a normal exit: leave it so, re-raise after
                failure = err
    finally:
        for generator, state in generators:
            set_rng_state(generator, state)
    if failure is not None:
        raise failure
