r"""Match the Lightning distribution of the user's ``Trainer``, and every private Lightning attribute we touch.

Projects import either ``lightning.pytorch`` (the unified package) or the standalone ``pytorch_lightning``. The two
ship separate copies of every class, so an exception, a scheduler config, a logger type or the RNG helpers must come
from the same distribution as the ``Trainer`` they are used with, not merely look alike.

The callbacks themselves derive from :data:`Callback`: the ``Callback`` of *both* distributions where both are
installed, so ``isinstance(callback, Callback)`` holds for either one. Trainers call hooks by name, but
``LightningCLI`` (through jsonargparse) accepts a ``class_path`` under ``trainer.callbacks`` only for a subclass of its
own distribution's ``Callback``.

Lightning's private attributes (``fit_loop._combined_loader``, ``epoch_loop._results``, ``_logger_connector``...)
are read and written only through the named functions at the end of this module, each with a test
(``tests/test_compat.py``): when a Lightning release moves one, this file is the one place that breaks. Checked
against Lightning 2.4-2.6.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

from lightning.pytorch.callbacks import Callback as _LightningCallback
from torch.utils.data import DistributedSampler

from lightning_superconv import _lightning_log

if TYPE_CHECKING:
    import lightning.pytorch
    import pytorch_lightning

    #: A ``Trainer`` of either distribution: ``lightning.pytorch`` or the standalone ``pytorch_lightning``.
    Trainer: TypeAlias = lightning.pytorch.Trainer | pytorch_lightning.Trainer
    #: A ``LightningModule`` of either distribution.
    LightningModule: TypeAlias = lightning.pytorch.LightningModule | pytorch_lightning.LightningModule
else:
    Trainer = Any
    LightningModule = Any


def _callback_bases() -> tuple[type, ...]:
    kept = _lightning_log.state()  # `lightning.pytorch`'s, or the user's: the other distribution's import resets it
    try:
        from pytorch_lightning.callbacks import Callback as _StandaloneCallback
    except Exception:  # not installed, or an install too old or broken to import: nothing to match
        return (_LightningCallback,)
    finally:
        _lightning_log.put(kept)
    if _StandaloneCallback is _LightningCallback:
        return (_LightningCallback,)
    return (_LightningCallback, _StandaloneCallback)


if TYPE_CHECKING:
    Callback = _LightningCallback
else:
    Callback = type(
        "Callback",
        _callback_bases(),
        {"__module__": __name__, "__doc__": "The ``Callback`` base of every Lightning distribution installed."},
    )


#: The Lightning distributions, either of which may be installed beside the other.
_DISTRIBUTIONS = ("lightning.pytorch", "pytorch_lightning")


def namespace(obj: Any) -> str:
    """``"pytorch_lightning"`` for a ``Trainer`` or ``LightningModule`` of the standalone distribution.

    Else ``"lightning.pytorch"``. The class hierarchy is searched, so a user's subclass of either is recognised.
    """
    # the package's name and its modules', not a user's package whose name begins the same (found in a review: a
    # module of `pytorch_lightning_myproj` sent the range test to the other distribution's helpers, which crashed)
    standalone = any(
        cls.__module__ == "pytorch_lightning" or cls.__module__.startswith("pytorch_lightning.")
        for cls in type(obj).__mro__
    )
    return "pytorch_lightning" if standalone else "lightning.pytorch"


def module(obj: Any, name: str) -> ModuleType:
    """Import ``name`` (e.g. ``"utilities.types"``) from the Lightning distribution of ``obj`` (a Trainer, a module)."""
    return importlib.import_module(f"{namespace(obj)}.{name}")


def overrides(pl_module: LightningModule, hook: str) -> bool:
    """Whether the module overrides Lightning's ``hook`` (e.g. ``"validation_step"``), by Lightning's own test.

    The test by which Lightning decides whether it runs a loop (a hook set to None counts as not overridden), where
    :func:`overrides_hook` asks whose class defines a hook.
    """
    return bool(module(pl_module, "utilities.model_helpers").is_overridden(hook, pl_module))


def misconfiguration(trainer: Trainer, message: str) -> Exception:
    """A ``MisconfigurationException`` of the user's distribution, so their ``except`` clauses catch it."""
    cls = module(trainer, "utilities.exceptions").MisconfigurationException
    return cls(message)


def rank_zero_info(trainer: Trainer, message: str) -> None:
    """Log on global rank 0 only, with the rank the user's distribution knows."""
    module(trainer, "utilities.rank_zero").rank_zero_info(message)


def rank_zero_warn(trainer: Trainer, message: str) -> None:
    """Warn on global rank 0 only (``RuntimeWarning``: something surprising happened, not a deprecation)."""
    module(trainer, "utilities.rank_zero").rank_zero_warn(message, category=RuntimeWarning)


def isolate_rng(trainer: Trainer) -> Any:
    """The user's distribution's ``isolate_rng()`` context: the RNG streams it knows are put back on exit."""
    return module(trainer, "utilities.seed").isolate_rng()


def strategy_classes(obj: Any, *names: str) -> tuple[type, ...]:
    """The strategy classes ``names`` (e.g. ``"FSDPStrategy"``) that the distribution of ``obj`` has."""
    strategies = module(obj, "strategies")
    return tuple(cls for name in names if (cls := getattr(strategies, name, None)) is not None)


def callback_classes(obj: Any, *names: str) -> tuple[type, ...]:
    """The callback classes ``names`` (e.g. ``"LearningRateFinder"``) of the distribution of ``obj`` and any other.

    A code base may mix the two: Lightning runs a ``LearningRateFinder`` of ``lightning.pytorch`` beside a Trainer of
    ``pytorch_lightning`` (found trying the package as a new user: it was neither refused nor seen, and its restore was
    read as a resume). Each class once.
    """
    homes = [module(obj, "callbacks"), *(_try_import(f"{other}.callbacks") for other in _DISTRIBUTIONS)]
    found = [getattr(home, name, None) for home in homes if home is not None for name in names]
    return tuple({id(cls): cls for cls in found if cls is not None}.values())


def callbacks_of(trainer: Trainer, name: str) -> list[Any]:
    """The trainer's callbacks of Lightning's class ``name`` (or a subclass), in the list's order."""
    classes = callback_classes(trainer, name)
    return [cb for cb in callbacks(trainer) if classes and isinstance(cb, classes)]


def callback_of(trainer: Trainer, name: str) -> Any:
    """The trainer's first callback of Lightning's class ``name`` (or a subclass), or None (also when it has none)."""
    return next(iter(callbacks_of(trainer, name)), None)


@dataclasses.dataclass(frozen=True)
class SwaTakeover:
    """When ``StochasticWeightAveraging`` swaps in its ``SWALR``, and how (:func:`swa_takeover`).

    Attributes:
        epoch: the epoch (counted from 0) at whose start it takes over.
        build: builds the same ``SWALR`` on the optimizer it is given, as the callback builds it on the real one (its
            ``swa_lrs`` as each group's ``initial_lr``, its annealing epochs and strategy).
        state: the ``SWALR`` state a checkpoint gave it (a resume past its start: it builds the scheduler anew at the
            fit's first epoch start and loads that state into it), or None.
        swa_lrs: the callback's ``swa_lrs``: one LR, or one per param group (:meth:`lrs`).
    """

    epoch: int
    build: Callable[[Any], Any]
    state: dict[str, Any] | None
    swa_lrs: float | list[float]

    def lrs(self, groups: int) -> list[float]:
        """Each of ``groups`` param groups' SWA LR."""
        return [float(lr) for lr in self.swa_lrs] if isinstance(self.swa_lrs, list) else [float(self.swa_lrs)] * groups


def swa_takeover(trainer: Trainer) -> SwaTakeover | None:
    """When ``StochasticWeightAveraging`` will swap in its ``SWALR`` in this fit, and how it builds it.

    None without the callback, once it has taken over (in this fit its ``SWALR`` is the Trainer's scheduler then; it
    never swaps again in a later fit on the Trainer), or where its start epoch cannot be known (a fraction of
    ``max_epochs=-1``). Its arguments are private attributes of Lightning's callback.
    """
    swa = callback_of(trainer, "StochasticWeightAveraging")
    if swa is None or getattr(swa, "_initialized", False):
        return None
    start = swa._swa_epoch_start
    if isinstance(start, float):  # a fraction of `max_epochs`, made an epoch in the callback's `on_fit_start`
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            return None
        start = int(trainer.max_epochs * start)
    swa_lrs, anneal_epochs, strategy = swa._swa_lrs, swa._annealing_epochs, swa._annealing_strategy

    def build(optimizer: Any) -> Any:
        from torch.optim.swa_utils import SWALR

        lrs = takeover.lrs(len(optimizer.param_groups))
        for lr, group in zip(lrs, optimizer.param_groups, strict=False):
            group["initial_lr"] = lr
        last_epoch = trainer.max_epochs if strategy == "cos" else -1
        # a list per group, as the callback passes it (torch's annotation says float)
        return SWALR(
            optimizer, swa_lr=lrs, anneal_epochs=anneal_epochs, anneal_strategy=strategy,  # type: ignore[arg-type]
            last_epoch=last_epoch,
        )  # fmt: skip

    takeover = SwaTakeover(max(int(start) - 1, 0), build, swa._scheduler_state, swa_lrs)
    return takeover


@contextlib.contextmanager
def without_swa_batch_norm_epoch(trainer: Trainer, epochs_at_setup: int | None) -> Iterator[None]:
    """``max_epochs`` as the user set it, where ``StochasticWeightAveraging`` added its batch-norm epoch since.

    Its ``on_fit_start`` raises the fit loop's ``max_epochs`` by one for a model with BatchNorm, for a pass that
    recomputes the averaged model's statistics and trains nothing. ``epochs_at_setup``: ``max_epochs`` read in
    ``setup``, before any callback's ``on_fit_start``; the added epoch is left out only where the count grew by exactly
    that one since. The callback's flag is a private attribute.
    """
    swa = callback_of(trainer, "StochasticWeightAveraging")
    loop = trainer.fit_loop
    added = (
        swa is not None
        and bool(getattr(swa, "_model_contains_batch_norm", False))
        and epochs_at_setup is not None
        and epochs_at_setup != -1
        and loop.max_epochs == epochs_at_setup + 1
    )
    if not added:
        yield
        return
    loop.max_epochs = epochs_at_setup
    try:
        yield
    finally:
        loop.max_epochs = epochs_at_setup + 1  # type: ignore[operator]


def device_dtype_marks(module: Any) -> list[tuple[Any, Any, Any]]:
    """The dtype and device Lightning's modules note on themselves (``_DeviceDtypeModuleMixin``), to put back.

    ``.to()``, a ``*-true`` precision's conversion and the strategy's moves update them beside the tensors (found in a
    review: after ``find_max_lr`` under ``precision="bf16-true"`` the weights were float32 again, ``model.dtype`` said
    bfloat16).
    """
    return [(m, m._dtype, m._device) for m in module.modules() if hasattr(m, "_dtype") and hasattr(m, "_device")]


def put_back_device_dtype(marks: list[tuple[Any, Any, Any]]) -> None:
    """Set each module's noted dtype and device as :func:`device_dtype_marks` read them."""
    for module, dtype, device in marks:
        module._dtype, module._device = dtype, device


def scheduler_config(trainer: Trainer, scheduler: Any, name: str | None = None) -> Any:
    """A step-wise ``LRSchedulerConfig`` of the user's distribution for ``scheduler``, under ``name`` if given."""
    return module(trainer, "utilities.types").LRSchedulerConfig(scheduler, name=name, interval="step", frequency=1)


# ------------------------------------------------------- public Trainer attributes that Lightning sets at run time
# (assigned by the Trainer's connectors, so type checkers do not see them)


def callbacks(trainer: Trainer) -> list[Any]:
    """The trainer's callbacks, in the order their hooks run."""
    return list(getattr(trainer, "callbacks"))  # noqa: B009 - set at run time, invisible to type checkers


def set_callbacks(trainer: Trainer, new: list[Any]) -> None:
    """Replace the trainer's callbacks (a new list: a hook loop running now iterates over the old one)."""
    setattr(trainer, "callbacks", new)  # noqa: B010 - set at run time, invisible to type checkers


def overfit_batches(trainer: Trainer) -> int | float:
    """``Trainer(overfit_batches=...)``: the batches (an int) or fraction of them (a float) a run overfits; 0: off."""
    return getattr(trainer, "overfit_batches", 0) or 0


def fast_dev_run(trainer: Trainer) -> bool:
    """Whether ``Trainer(fast_dev_run=...)`` is on."""
    return bool(getattr(trainer, "fast_dev_run", False))


# ----------------------------------------------------------------------------------- Lightning's private attributes


def checkpoint_to_resume(trainer: Trainer) -> bool:
    """Whether ``fit`` resumes from a checkpoint whose training state (optimizers, schedulers) Lightning loads next.

    ``trainer.ckpt_path`` alone does not say so: ``BatchSizeFinder`` restores its own temporary checkpoint inside its
    ``on_fit_start`` (everything, training state included) and leaves ``ckpt_path`` pointing at it, though nothing is
    left to resume. Lightning reads a real resume's checkpoint before ``on_fit_start`` and loads its training state
    after it, so the checkpoint is still held then.
    """
    return bool(trainer.ckpt_path) and bool(getattr(trainer._checkpoint_connector, "_loaded_checkpoint", True))


def _loaded_checkpoint(trainer: Trainer) -> dict[str, Any] | None:
    """The checkpoint ``fit`` resumes from, as Lightning read it before ``on_fit_start`` (None: none held)."""
    checkpoint = getattr(trainer._checkpoint_connector, "_loaded_checkpoint", None)
    return checkpoint if isinstance(checkpoint, dict) else None


def resumed_global_step(trainer: Trainer) -> int | None:
    """The step the checkpoint ``fit`` resumes from was written at, read before Lightning loads it (None: unknown)."""
    step = (_loaded_checkpoint(trainer) or {}).get("global_step")
    return int(step) if isinstance(step, int) else None


def weights_only_checkpoint(trainer: Trainer) -> bool:
    """Whether the checkpoint `fit` resumes from holds no training state (`ModelCheckpoint(save_weights_only=True)`)."""
    checkpoint = _loaded_checkpoint(trainer) or {}
    return bool(checkpoint) and "optimizer_states" not in checkpoint


def launches_copies(trainer: Trainer) -> bool:
    """Whether the strategy runs the fit on copies in new processes (``ddp_spawn``, ``ddp_notebook``, ``ddp_fork``).

    Lightning's multiprocessing launcher spawns or forks its workers and sends back only the weights and the metrics:
    what a callback kept in a worker stays there. ``ddp`` starts the script again instead, and this process is rank 0.
    """
    launchers = module(trainer, "strategies.launchers.multiprocessing")
    return isinstance(getattr(trainer.strategy, "launcher", None), launchers._MultiProcessingLauncher)


def grad_scaler(trainer: Trainer) -> Any:
    """The precision plugin's ``GradScaler`` (``16-mixed``), or None."""
    return getattr(trainer.precision_plugin, "scaler", None)


def is_placeholder_optimizer(trainer: Trainer, optimizer: Any) -> bool:
    """Whether ``optimizer`` is the stand-in Lightning installs when ``configure_optimizers`` returns None."""
    placeholder = getattr(module(trainer, "core.optimizer"), "_MockOptimizer", None)
    return placeholder is not None and isinstance(optimizer, placeholder)


def setup_train_data(trainer: Trainer) -> None:
    """Load the train dataloader as the fit loop would (a no-op when it is loaded)."""
    trainer.fit_loop.setup_data()


def load_resumed_train_loader_states(trainer: Trainer) -> None:
    """Give the train loaders the positions a resume restored for them, if they were loaded before that restore.

    Lightning restores a stateful loader's position (torchdata's ``StatefulDataLoader``) when it first loads the train
    data, after ``on_fit_start``; data our callbacks loaded there (the range test, the balancer's reading of the
    recipe) was loaded before the checkpoint's states came, and Lightning then never gives them (found in a review: a
    resume with the balancer added read its epoch from the start again). Called at ``on_train_start``, before the
    epoch's first batch is drawn; a no-op where nothing is pending. The loop's fetcher made its iterator over the
    loaders when the data was loaded: it is made again, from the positions given.
    """
    loop = trainer.fit_loop
    if not (loop.restarting and loop._combined_loader_states_to_load and loop._combined_loader is not None):
        return
    loop._load_combined_loader_states()
    if loop._data_fetcher is not None:
        iter(loop._data_fetcher)


def train_combined_loader(trainer: Trainer) -> Any:
    """The fit loop's ``CombinedLoader`` over the processed train dataloaders (samplers and limits applied)."""
    return trainer.fit_loop._combined_loader


def train_loader_mode(trainer: Trainer) -> str | None:
    """The mode of the fit loop's ``CombinedLoader`` (``"max_size_cycle"`` unless the user's says otherwise)."""
    combined = train_combined_loader(trainer)
    return None if combined is None else str(combined._mode)


def train_loaders(trainer: Trainer) -> list[Any]:
    """The processed train dataloaders, flattened."""
    combined = train_combined_loader(trainer)
    return [] if combined is None else list(combined.flattened)


def fresh_train_iterator(combined_loader: Any) -> tuple[Iterator[Any], float]:
    r"""A new iterator over the fit loop's loaders, and the number of batches an epoch of it may use.

    Built beside the fit loop's own, which is never touched. Yields ``(batch, batch_idx, dataloader_idx)``.
    """
    fresh = type(combined_loader)(combined_loader.iterables, combined_loader._mode)
    fresh.flattened = [own_workers(loader) for loader in combined_loader.flattened]
    fresh.limits = combined_loader.limits
    iterator = iter(fresh)
    # the limits only shorten the iterator's length, which the fit loop counts against; iterating goes on
    try:
        length: float = len(fresh)
    except (TypeError, NotImplementedError):  # no length (an iterable dataset without a limit)
        length = float("inf")
    return iterator, length


def own_workers(loader: Any) -> Any:
    r"""``loader`` itself, or a copy whose iterators are its own for a loader that keeps the one it handed out.

    A persistent loader (``persistent_workers=True``) hands out one worker iterator for its whole life, and the fit
    loop creates it when it loads the data (at fit start): iterating the loader itself would advance and reset the very
    iterator training reads from. A stateful ``DataLoader`` (torchdata's ``StatefulDataLoader``: one with
    ``state_dict`` and ``load_state_dict``) keeps the latest iterator it handed out as its ``_iterator`` and saves that
    one's position into checkpoints: iterated here, it would save the range test's (found trying the package as a new
    user: every checkpoint held the last trial's position, and a resume skipped 40 batches of the stream). The copy
    shares the dataset, sampler and settings, and starts workers of its own that end with its iterator. A loader of
    another kind that keeps its iterator elsewhere (torchdata's ``nodes.Loader``) is read as it is.
    """
    persistent = getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0
    stateful = (
        hasattr(loader, "_iterator")
        and callable(getattr(loader, "state_dict", None))
        and callable(getattr(loader, "load_state_dict", None))
    )
    if not (persistent or stateful):
        return loader
    own = copy.copy(loader)
    # `DataLoader` refuses to change these once built; the copy is ours, so its instance dict is set directly
    object.__setattr__(own, "persistent_workers", False)
    object.__setattr__(own, "_iterator", None)
    return own


def epoch_results(trainer: Trainer) -> Any:
    """The result collection that ``self.log`` in ``training_step`` writes into."""
    return trainer.fit_loop.epoch_loop._results


def set_epoch_results(trainer: Trainer, results: Any) -> None:
    """Replace the result collection that ``self.log`` in ``training_step`` writes into."""
    trainer.fit_loop.epoch_loop._results = results


def attached_trainer(pl_module: Any) -> Any:
    """The Trainer the module is attached to, or None (its ``trainer`` property raises where there is none)."""
    return pl_module._trainer


def optimizers_from_the_cli(pl_module: Any) -> bool:
    """Whether ``LightningCLI``'s ``--optimizer``/``--lr_scheduler`` made the module's ``configure_optimizers``.

    It sets it on the module instance, a method around its own ``configure_optimizers`` (found trying the package as a
    new user: the scheduler it installed was said to come "from `configure_optimizers`", which the user never wrote).
    """
    method = vars(pl_module).get("configure_optimizers")
    return getattr(getattr(method, "__func__", None), "__qualname__", None) == "LightningCLI.configure_optimizers"


def current_hook(pl_module: Any) -> str | None:
    """The name of the hook the module is in, which ``self.log`` checks."""
    return pl_module._current_fx_name


def set_current_hook(pl_module: Any, name: str | None) -> None:
    """Tell ``self.log`` which hook the module is in."""
    pl_module._current_fx_name = name


def logging_hook(trainer: Trainer) -> str | None:
    """The name of the hook the Trainer's logger connector last saw ``self.log`` called from."""
    return trainer._logger_connector._current_fx


def set_logging_hook(trainer: Trainer, name: str | None) -> None:
    """Set the hook the Trainer's logger connector reads the next ``self.log`` as coming from."""
    trainer._logger_connector._current_fx = name


@contextlib.contextmanager
def unprofiled(trainer: Trainer) -> Iterator[None]:
    """The Trainer's profiler swapped for Lightning's ``PassThroughProfiler`` for the block: nothing in it is timed.

    ``trainer.profiler`` is set by Lightning's profiler connector, not declared on the class.
    """
    profiler = getattr(trainer, "profiler")  # noqa: B009 (not declared: typed checkers miss it)
    setattr(trainer, "profiler", module(trainer, "profilers").PassThroughProfiler())  # noqa: B010
    try:
        yield
    finally:
        setattr(trainer, "profiler", profiler)  # noqa: B010


@contextlib.contextmanager
def validating(trainer: Trainer) -> Iterator[None]:
    """Lightning's running stage set to validating for the block, as its validation loop sets it.

    For held-out batches moved to the device off the record: hooks that branch on ``trainer.training`` or
    ``trainer.validating`` (Lightning's docs put train-only augmentation in ``on_before_batch_transfer`` so) treat them
    as Lightning's validation does. Not for ``training_step``: ``self.log`` would write into the validation loop's
    results.
    """
    stage = trainer.state.stage
    trainer.state.stage = module(trainer, "trainer.states").RunningStage.VALIDATING
    try:
        yield
    finally:
        trainer.state.stage = stage


def before_batch_transfer(pl_module: Any, batch: Any) -> Any:
    """Run the module's (and datamodule's) ``on_before_batch_transfer`` on a train batch, as the fit loop does."""
    return pl_module._on_before_batch_transfer(batch, dataloader_idx=0)


def training_logging_step(trainer: Trainer) -> int | None:
    r"""This training step's x-axis value for the loggers (:func:`logging_step`) if it logs, else None.

    Lightning's ``should_update_logs`` as it reads a step of the fit loop (every ``log_every_n_steps``-th, and the
    step a stop was asked at), for a training hook, where the fit loop is the active one: read without finding that
    loop first, a few microseconds less at every step.
    """
    every = getattr(trainer, "log_every_n_steps")  # noqa: B009 - set at run time, invisible to type checkers
    step = logging_step(trainer)
    # `+ 1`: read before the step runs (in `on_train_batch_start`), as Lightning's own cadence is
    return step if every and ((step + 1) % every == 0 or trainer.should_stop) else None


def logging_step(trainer: Trainer) -> int:
    """The x-axis value loggers get for this training step (Lightning's ``_batches_that_stepped``)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def resumes_mid_epoch(trainer: Trainer) -> bool | None:
    """Whether a resumed fit goes on with an epoch its checkpoint was written inside, without its start hooks.

    Lightning 2.5 and later name that stage; None with one that does not (2.4).
    """
    stage = getattr(trainer.fit_loop, "restarted_mid_epoch", None)
    return None if stage is None else bool(stage)


def resumes_after_a_train_batch_end(trainer: Trainer) -> bool:
    """Whether a resumed fit's checkpoint was written in ``on_train_batch_end`` (Lightning 2.5 and later say so).

    Lightning then counts that batch done on resume; a checkpoint written at a validation inside the epoch has it
    counted already.
    """
    return bool(getattr(trainer.fit_loop.epoch_loop, "restarted_on_train_batch_end", False))


def batches_reached_this_epoch(trainer: Trainer) -> int:
    """The batches of its epoch a fit resumed mid-epoch has done, read before Lightning resets its counts on restart.

    Lightning goes on after the batches the checkpoint counts as completed (and the one whose ``on_train_batch_end``
    wrote it): a batch an error stopped inside, written by ``OnExceptionCheckpoint``, counts as reached but not
    completed, and runs again. (A count the epoch's length may not reach.)
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return int(progress.completed) + int(resumes_after_a_train_batch_end(trainer))


def batches_that_trained_nothing(trainer: Trainer) -> int:
    """Batches the fit loop read and trained nothing on: None from the loader, or ``on_train_batch_start`` said -1.

    Lightning steps a scheduler stepped per step at such a batch too, without an optimizer step (one whose accumulation
    group it ends). Counted over all the Trainer's fits (counts a checkpoint keeps).
    """
    counts = trainer.fit_loop.epoch_loop.batch_progress.total
    return max(int(counts.ready) - int(getattr(counts, "started", counts.ready)), 0)  # typed as a base without it


def epoch_ended_by_a_hook(trainer: Trainer) -> bool:
    """At an epoch's end: whether ``on_train_batch_start`` returned -1 and ended it (that batch was never completed)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return int(progress.ready) > int(progress.completed)


def sampler_wrapped_for_ddp(sampler: Any) -> Any:
    """The user's own sampler inside Lightning's ``DistributedSamplerWrapper`` (which DDP puts around it), or None."""
    if not isinstance(sampler, DistributedSampler):
        return None
    return getattr(getattr(sampler, "dataset", None), "_sampler", None)


def datamodule(trainer: Trainer) -> Any:
    """The ``LightningDataModule`` the fit was given, or None (set on the Trainer at run time, invisible to mypy)."""
    return getattr(trainer, "datamodule", None)


def has_val_dataloaders(trainer: Trainer) -> bool:
    """Whether the run has validation dataloaders, without calling the hook that builds them."""
    return bool(trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined())


def val_dataloaders(trainer: Trainer) -> list[Any] | None:
    """The run's validation dataloaders, in order, or None when the run has none.

    Read as Lightning's validation reads them: a list, a dict, nested ones or a ``CombinedLoader`` of the user's,
    flattened into the loaders it validates on one by one (iterating a ``CombinedLoader`` itself yields
    ``(batch, batch_idx, dataloader_idx)``: found trying the package as a new user, the trials fed those to
    ``training_step`` and fell back to training batches).
    """
    if not has_val_dataloaders(trainer):
        return None
    loaders = trainer.fit_loop.epoch_loop.val_loop._data_source.dataloader()
    combined = module(trainer, "utilities").CombinedLoader
    if not isinstance(loaders, combined):
        loaders = combined(loaders, "sequential")
    flattened = list(loaders.flattened)
    for loader in flattened:  # Lightning checks them when it first validates, after the range test has read them
        # iterable, asked without `iter()`, which would start a DataLoader's worker processes
        if not (hasattr(loader, "__iter__") or hasattr(loader, "__getitem__")):
            raise TypeError(
                "An invalid validation dataloader was given (`val_dataloaders=` of `fit` or `find_max_lr`, the "
                "`val_dataloader` hook or the datamodule's): a DataLoader or another iterable of batches (or a list "
                f"or dict of them) is accepted, got {loader!r} ({type(loader).__name__})"
            )
    return flattened


def weight_averages(trainer: Trainer) -> list[Any]:
    """The averages Lightning's ``WeightAveraging`` callbacks (``EMAWeightAveraging``) keep beside the model.

    Each is a ``torch.optim.swa_utils.AveragedModel``, built in the callback's ``setup`` and kept in its private
    ``_average_model``; at the end of training the callback copies it into the model. None before Lightning 2.6.
    """
    found = (getattr(cb, "_average_model", None) for cb in callbacks_of(trainer, "WeightAveraging"))
    return [average for average in found if average is not None]


def tensorboard_event_writer(logger: Any) -> Any:
    r"""The event-file writer behind a ``TensorBoardLogger`` (either distribution), or None for any other logger.

    Through it, several scalars of one step go into one event (what ``SummaryWriter.add_scalar`` writes one at a
    time), at a third of the cost for three. Only for the plain case: torch's own ``SummaryWriter``, a logger without
    a metric prefix, and Lightning's own ``log_metrics`` (a subclass that renames or filters metrics in its own saw
    none of ours, found in a review); anything else is None and gets ``log_metrics``.
    """
    own = next((cls for cls in _tensorboard_logger_classes() if isinstance(logger, cls)), None)
    if own is None or type(logger).log_metrics is not own.log_metrics or getattr(logger, "_prefix", None):
        return None
    experiment = logger.experiment
    get_writer = getattr(experiment, "_get_file_writer", None)
    if not type(experiment).__module__.startswith("torch.utils.tensorboard") or get_writer is None:
        return None
    return get_writer()


def is_tensorboard_logger(logger: Any) -> bool:
    """Whether ``logger`` is a ``TensorBoardLogger`` of either distribution (or of a subclass)."""
    return isinstance(logger, _tensorboard_logger_classes())


def _tensorboard_logger_classes() -> tuple[Any, ...]:
    return tuple(
        cls for name in _DISTRIBUTIONS
        if (cls := getattr(_try_import(f"{name}.loggers"), "TensorBoardLogger", None)) is not None
    )  # fmt: skip


def _try_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # not installed, or broken: nothing to match
        return None


def overrides_hook(pl_module: Any, name: str) -> bool:
    """Whether the module's class defines hook ``name`` itself (or a user's base class does), not Lightning's."""
    owner = next((cls for cls in type(pl_module).__mro__ if name in vars(cls)), None)
    return owner is not None and not owner.__module__.startswith(("lightning.", "pytorch_lightning."))


def fully_sharded_modules(*roots: Any) -> list[Any]:
    r"""The modules under ``roots`` that FSDP2's ``fully_shard`` made (``ModelParallelStrategy``), each once.

    Such a module registers its parameters as sharded DTensors at rest, and swaps in unsharded tensors from its forward
    until its backward (the root module keeps them after a forward without one: an evaluation).
    """
    # public in `torch.distributed.fsdp` from torch 2.6; under `_composable` before
    homes = ("torch.distributed.fsdp", "torch.distributed._composable.fsdp")
    kind = next((k for home in homes if (k := getattr(_try_import(home), "FSDPModule", None)) is not None), None)
    if kind is None:
        return []
    return list({id(m): m for root in roots for m in root.modules() if isinstance(m, kind)}.values())


def reshard(modules: list[Any]) -> None:
    r"""Put each of :func:`fully_sharded_modules` back at rest: its sharded parameters registered, as after a backward.

    A snapshot copies and puts back what the modules register: taken or put back while a module holds its unsharded
    tensors (found trying the package under ``ModelParallelStrategy``: a trial's evaluation left the root unsharded),
    the registry and FSDP2's own record of its state disagree, and its next forward fails on a DTensor.
    """
    for m in modules:
        m.reshard()
