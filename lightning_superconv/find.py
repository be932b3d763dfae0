r"""Look before you train: :func:`find_max_lr`, the range test on its own, in the spirit of ``Tuner.lr_find``.

It runs the range-test engine (:func:`~lightning_superconv.range_test.run_range_test`, the one ``SuperConvergence``
runs at fit start) inside a ``Trainer`` of its own, and hands back the curve, the pick and the plot. The model comes
back unchanged (the range test restores it bit for bit), so do the RNG streams and the generators the given dataloaders
own, and no training step is taken.
"""

from __future__ import annotations

import importlib
import math
import reprlib
import signal
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from typing_extensions import override

from lightning_superconv import _compat, _setups, _trainer
from lightning_superconv._logging import log_range_test
from lightning_superconv.range_test import RangeTestConfig, plan_line, run_range_test
from lightning_superconv.result import RangeTestResult
from lightning_superconv.schedule import OneCycleConfig, resolve_cycle_momentum
from lightning_superconv.snapshot import (
    data_order_numbers,
    data_order_sequences,
    metric_states,
    put_back,
    put_back_metric_states,
    put_back_sequences,
    random_generators,
    registered_tensors,
    rng_state,
    set_rng_state,
)

_DEFAULT_TRAINER = {
    "max_epochs": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def _lightnings_own(model: Any, callback: Any) -> bool:
    """Whether ``callback`` is one of Lightning's (either distribution), or a ``Checkpoint`` of any class."""
    home = type(callback).__module__
    own = any(home.startswith(f"{name}.") for name in ("lightning.pytorch", "pytorch_lightning"))
    checkpoint = _compat.callback_classes(model, "Checkpoint")
    return hasattr(callback, "__dict__") and (own or bool(checkpoint and isinstance(callback, checkpoint)))


def _switched_on_by(model: Any, given: list[Any], trainer_kwargs: Mapping[str, Any]) -> dict[str, bool]:
    """The defaults a callback given in ``trainer_kwargs`` asks to be on: its progress bar, its checkpointing.

    Lightning refuses a ``RichProgressBar`` beside ``enable_progress_bar=False`` and a ``ModelCheckpoint`` beside
    ``enable_checkpointing=False`` (found trying the package as a new user: the error blamed a setting they had not
    made, our default). A setting given explicitly stays the user's, and Lightning's error then names it.
    """
    switches = {"enable_progress_bar": "ProgressBar", "enable_checkpointing": "Checkpoint"}
    found = {}
    for switch, name in switches.items():
        classes = _compat.callback_classes(model, name)
        if switch not in trainer_kwargs and any(classes and isinstance(cb, classes) for cb in given):
            found[switch] = True
    return found


class _RangeTestProbe(_compat.Callback):
    """At fit start: run the range test, then stop the fit before its first step."""

    def __init__(self, config: RangeTestConfig, cycle: OneCycleConfig, run_described: bool) -> None:
        self.config = config
        self.cycle = cycle
        self.run_described = run_described  # `trainer_kwargs` gave `max_epochs` or `max_steps`
        self.result: RangeTestResult | None = None

    @override
    def on_fit_start(self, trainer: _compat.Trainer, pl_module: _compat.LightningModule) -> None:
        problem = _setups.strategy_problem(trainer.strategy, range_test=True, who="find_max_lr")
        if problem is not None:
            raise _compat.misconfiguration(trainer, problem)
        optimizer = _trainer.single_optimizer(trainer, pl_module, "find_max_lr")
        refusal = _setups.optimizer_refusal(optimizer, "find_max_lr")
        if refusal is None and self.config.trial_steps != 0:
            refusal = _setups.cycle_refusal(optimizer, "find_max_lr")
        if refusal is not None:
            raise _compat.misconfiguration(trainer, refusal)
        resolve_cycle_momentum(optimizer, self.cycle.cycle_momentum)  # `cycle_momentum=True` without momentum
        _setups.check_first_group_lr(trainer, optimizer, "find_max_lr")
        _trainer.refuse_maximize(
            trainer, optimizer, "find_max_lr", "the range test's curve and trials", "do not run it on this module"
        )
        _trainer.check_batches_to_run(trainer, "find_max_lr")
        _trainer.refuse_dataloader_iter_steps(trainer, pl_module, "find_max_lr", "do not run it on this module")
        # the run this Trainer describes (`trainer_kwargs`' `max_epochs`, `max_steps`) sizes the trials
        run = _trainer.estimated_steps(trainer)
        run_steps = int(run) if math.isfinite(run) and run > 0 else None
        _trainer.warn_of_a_frozen_backbone(
            trainer,
            "find_max_lr",
            "Leave it out of `trainer_kwargs['callbacks']` to measure the whole network.",
            (run_steps or 0) if self.run_described else None,
        )
        _compat.rank_zero_info(trainer, plan_line("find_max_lr", self.config, run_steps, "when it ends"))
        self.result = run_range_test(
            trainer, pl_module, optimizer, self.config, self.cycle, run_steps=run_steps, who="find_max_lr"
        )
        # to a logger given in `trainer_kwargs`, as the callback logs it (found trying the package as a new user: a
        # TensorBoard logger there got an empty run)
        log_range_test(trainer, self.result)
        # the fit loop checks `should_stop` before its first step and returns without training
        trainer.should_stop = True


def find_max_lr(
    model: L.LightningModule,
    train_dataloaders: Any = None,
    datamodule: L.LightningDataModule | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    val_dataloaders: Any = None,
    **range_test: Any,
) -> RangeTestResult:
    r"""Run the LR range test on ``model`` and its data; return the record with the picked ``max_lr``.

    Args:
        model: the LightningModule (its ``configure_optimizers`` provides the optimizer); it is left unchanged.
            A ``pytorch_lightning`` module runs on a ``pytorch_lightning.Trainer``.
        train_dataloaders: the training data, as for ``Trainer.fit``; or the model's own ``train_dataloader``.
        datamodule: a LightningDataModule instead of ``train_dataloaders`` (and ``val_dataloaders``); given as
            ``train_dataloaders``, as ``Trainer.fit`` takes it, it is taken as this.
        val_dataloaders: the validation data the trials score each candidate peak on, as for ``Trainer.fit``; or the
            model's own ``val_dataloader``; with none, the training batches after those the trials train on.
        trainer_kwargs: arguments of the ``Trainer`` the test runs on (accelerator, devices, precision,
            ``accumulate_grad_batches``, ``gradient_clip_val``...). Logging, checkpointing, the progress bar and the
            sanity check are off unless given here (a logger given gets the range test's curve, as the callback logs
            it; a progress bar or checkpoint callback given switches its own on); ``min_epochs`` and ``min_steps`` are
            ignored (no training step is taken).
        \**range_test: the range-test arguments of :class:`~lightning_superconv.SuperConvergence`: ``lr_range``,
            ``num_steps``, ``mode``, ``divergence_threshold``, ``smoothing``, ``trial_steps``. By default
            (``trial_steps=None``) the trials last a third of the run ``trainer_kwargs`` describes, from 100 to 300
            steps: pass the ``max_epochs`` (or ``max_steps``) of the run the peak is for (one epoch otherwise). And
            the cycle's shape, which the trials run (``pct_start``, ``anneal_strategy``, ``cycle_momentum``,
            ``base_momentum``, ``max_momentum``, ``div_factor``, ``final_div_factor``, ``three_phase``): pass those
            you will give ``SuperConvergence(max_lr=...)``, so that the peak is judged on the cycle it will run.

    Raises:
        TypeError: if ``model`` is no LightningModule, ``datamodule`` no ``LightningDataModule`` of the model's
            Lightning distribution, ``range_test`` holds an argument that is neither a range-test argument nor a
            cycle-shape one, or ``trainer_kwargs`` is no mapping.
        ValueError: if a range-test argument is out of range, the train data is in
            ``CombinedLoader(mode="sequential")``, or ``trainer_kwargs`` hold ``fast_dev_run`` or, among their
            callbacks, a ``SuperConvergence`` or a ``WeightDecayBalancer``, or a strategy that runs the fit in new
            processes (``ddp_spawn``, ``ddp_notebook``, ``ddp_fork``), or ``cycle_momentum=True`` on an optimizer
            without ``momentum`` or ``betas``.
        MisconfigurationException: for a model the range test cannot serve, as ``SuperConvergence`` raises at fit
            start (manual optimization, no optimizer, no training batch, ...).

    Example::

        >>> from lightning.pytorch.demos.boring_classes import DemoModel, RandomDataset
        >>> from torch.utils.data import DataLoader
        >>> _ = L.seed_everything(0, verbose=False)
        >>> model = DemoModel()  # Lightning's demo: Adam on a linear layer
        >>> result = find_max_lr(model, DataLoader(RandomDataset(32, 256), batch_size=16),
        ...                      trainer_kwargs={"accelerator": "cpu"})
        >>> 1e-6 < result.max_lr < 10.0, result.stop_reason
        (True, 'diverged')

    ``result.plot()`` draws the curve with the pick marked (matplotlib).
    """
    if not _is_a(getattr(model, "_orig_mod", model), "LightningModule"):
        # a plain torch module too (found in a review: an `AttributeError` on `_trainer`); a `torch.compile` wrapper of
        # a LightningModule is one, as for `Trainer.fit`
        raise TypeError(
            "`find_max_lr`'s `model` takes a LightningModule (of `lightning.pytorch` or `pytorch_lightning`), got "
            f"{type(model).__name__} {reprlib.repr(model)}"
        )
    shape = set(OneCycleConfig.__dataclass_fields__)
    allowed = set(RangeTestConfig.__dataclass_fields__) | shape
    unknown = sorted(set(range_test) - allowed)
    if unknown:
        raise TypeError(
            f"`find_max_lr` got unexpected argument(s) {unknown}; the range test takes {sorted(allowed)}, and the "
            "Trainer's arguments go into `trainer_kwargs`"
        )
    datamodule_class = importlib.import_module(_compat.namespace(model)).LightningDataModule
    if isinstance(train_dataloaders, datamodule_class) and datamodule is None:
        # `Trainer.fit(model, dm)` takes it there too (found in a review: given so, it was left attached to this
        # function's own Trainer, which it kept alive)
        train_dataloaders, datamodule = None, train_dataloaders
    if datamodule is not None and not isinstance(datamodule, datamodule_class):
        if _is_a(datamodule, "LightningDataModule"):
            # the other distribution's (found in a review: told it was no datamodule, and to pass validation data)
            raise TypeError(
                f"`find_max_lr`'s `datamodule` is a `LightningDataModule` of the other Lightning distribution than the "
                f"model's (`{_compat.namespace(model)}`): the model and its datamodule must come from the same one, "
                "`lightning.pytorch` or `pytorch_lightning`, as for `Trainer.fit`."
            )
        raise TypeError(
            f"`find_max_lr`'s `datamodule` takes a `LightningDataModule`, got {type(datamodule).__name__} "
            f"{reprlib.repr(datamodule)}. Its third positional argument is `datamodule`, where `Trainer.fit`'s is "
            "`val_dataloaders`: pass the validation data as `val_dataloaders=...`."
        )
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, Mapping):
        raise TypeError(
            "`find_max_lr`'s `trainer_kwargs` takes a mapping of `Trainer` arguments, e.g. "
            f"`{{'max_epochs': 3, 'accelerator': 'cpu'}}`; got {type(trainer_kwargs).__name__} {trainer_kwargs!r}"
        )
    probe = _RangeTestProbe(
        RangeTestConfig(**{k: v for k, v in range_test.items() if k not in shape}),
        OneCycleConfig(**{k: v for k, v in range_test.items() if k in shape}),
        run_described=any((trainer_kwargs or {}).get(key) not in (None, -1) for key in ("max_epochs", "max_steps")),
    )
    kwargs = {**_DEFAULT_TRAINER, **(trainer_kwargs or {})}
    if (trainer_kwargs or {}).get("max_steps") not in (None, -1) and "max_epochs" not in (trainer_kwargs or {}):
        # `max_steps` alone describes the run (its length sizes the trials); the default one epoch would cap it
        kwargs["max_epochs"] = None
    # the probe stops the fit before its first step; a minimum length would make Lightning train on regardless
    kwargs["min_epochs"] = kwargs["min_steps"] = None
    given = kwargs.get("callbacks") or []
    # `Trainer(callbacks=...)` takes one callback or a list of them
    given = list(given) if isinstance(given, (list, tuple)) else [given]
    _refuse_what_would_run_a_second_test(model, given, kwargs.get("fast_dev_run", False))
    kwargs.update(_switched_on_by(model, given, trainer_kwargs or {}))
    kwargs["callbacks"] = [*given, probe]
    # a Trainer of the model's own distribution: `lightning.pytorch` or the standalone `pytorch_lightning`
    trainer = importlib.import_module(_compat.namespace(model)).Trainer(**kwargs)
    if _compat.launches_copies(trainer):
        raise ValueError(
            f"`find_max_lr` cannot run under `strategy={kwargs.get('strategy', 'auto')!r}`: that strategy runs the fit "
            "on copies in new processes (spawned or forked; Lightning's default for several devices in a notebook), "
            "and the range test's result would stay in them. Pass `strategy='ddp'` (run from a script), or one device, "
            "in `trainer_kwargs`."
        )
    # the RNG streams too come back as they were: a seeded `fit` after this sees the same data order as without it.
    # Lightning's `isolate_rng` puts them back only when its block ends normally: an error leaves it first
    # and so do the generators the given loaders own (`DataLoader(generator=...)`): the fit draws a seed from them when
    # it sets up its data, whose range test then restores them to that later state
    loaders = [*_loaders_in(model, train_dataloaders), *_loaders_in(model, val_dataloaders)]
    # and those the model and the datamodule hold (noise drawn from a generator of the module's own)
    generators = [(g, rng_state(g)) for g in random_generators(loaders, model, datamodule)]
    # a sampler that counts its own passes, a stream whose dataset keeps its position (`data_order_numbers`), a
    # sampler that shuffles its list of indices in place (`data_order_sequences`)
    order_numbers = data_order_numbers(loaders)
    order_sequences = data_order_sequences(loaders)
    # a `*-true` precision ("bf16-true", "64-true") converts the model in place when the fit starts, before the range
    # test's snapshot: the test restores the converted model, and bfloat16 rounds the weights. The original tensors,
    # held (no copy: the conversion makes new ones), give the model back in its own dtype, bit for bit
    slots = registered_tensors(model)
    # a lazy parameter is left out: its data is empty, and the module's own `setup` may create it in place during the
    # fit (found in a review: put back, the empty tensor broke every later forward); it stays as `setup` made it, in
    # the dtype and on the device it was to have (a `*-true` precision converted it: its values come back rounded)
    data = [(param, param.data) for param in model.parameters() if not torch.nn.parameter.is_lazy(param)]
    # and the gradients the model holds: the range test puts them back, and Lightning's `fit` then zeroes them before
    # its first step (found in a review: gone after `find_max_lr`); copied, as the zeroing may be in place
    grads = [(param, param.grad.detach().clone()) for param, _ in data if param.grad is not None]
    lazy = [(param, param.dtype, param.device) for param in model.parameters() if torch.nn.parameter.is_lazy(param)]
    marks = _compat.device_dtype_marks(model)
    # and so are a torchmetrics metric's states, plain attributes (found in a review: a `MeanMetric` came back holding
    # bfloat16 states, and the user's fit accumulated in bfloat16): small, copied
    metrics = metric_states(model)
    # and the attributes Lightning's own callbacks given had: `ModelCheckpoint` keeps the folder it resolved at setup
    # (found trying the package as a new user: reused in the real fit, it saved there, in the working directory, away
    # from that fit's logs); a callback of the user's keeps what it recorded
    attributes = [(callback, dict(vars(callback))) for callback in given if _lightnings_own(model, callback)]
    compiled = _compiled_marks(model)
    # and the Trainer the module was attached to, None before its first fit (found trying the package as a new user:
    # `model.trainer` was left pointing at this function's own Trainer, and kept it and all it holds alive)
    lightning_module = getattr(model, "_orig_mod", model)  # inside a `torch.compile` wrapper too
    attached = _compat.attached_trainer(lightning_module)
    datamodule_attached = getattr(datamodule, "trainer", None)  # and the datamodule's (found in a review)
    error: BaseException | None = None
    sigint = signal.getsignal(signal.SIGINT)
    with _compat.isolate_rng(trainer):
        try:
            trainer.fit(
                model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule
            )
        except BaseException as err:  # Ctrl-C too
            error = err
    for callback, attribute_values in attributes:
        vars(callback).update(attribute_values)
    _put_back_compiled_marks(compiled)
    lightning_module.trainer = attached
    if datamodule is not None:
        datamodule.trainer = datamodule_attached
    for generator, state in generators:
        set_rng_state(generator, state)
    for holder, numbers in order_numbers:
        vars(holder).update(numbers)
    put_back_sequences(order_sequences)
    put_back(slots)
    for param, kept in data:
        if param.data.dtype != kept.dtype or param.data.data_ptr() != kept.data_ptr():
            param.data = kept
    for param, grad in grads:
        param.grad = grad
    for param, dtype, device in lazy:
        if not torch.nn.parameter.is_lazy(param) and (param.dtype != dtype or param.device != device):
            param.data = param.data.to(device=device, dtype=dtype)
    _compat.put_back_device_dtype(marks)
    put_back_metric_states(metrics)
    if isinstance(error, SystemExit) and _ignored_by_lightning(sigint):
        # Lightning's answer to Ctrl-C in `fit`: further Ctrl-C ignored and the process exited. A function that
        # measures an LR gives its caller the KeyboardInterrupt back, and the handler it had (found trying the package
        # as a new user: a notebook then ignored every later Ctrl-C)
        signal.signal(signal.SIGINT, sigint)
        interrupt = error.__context__
        if isinstance(interrupt, KeyboardInterrupt):
            raise interrupt  # with its traceback: where the user interrupted
        raise KeyboardInterrupt from error
    if error is not None:
        raise error
    assert probe.result is not None
    return probe.result


def _is_a(obj: Any, lightning_class: str) -> bool:
    """Whether ``obj`` is an instance of a Lightning class of this name, of either distribution."""
    return any(cls.__name__ == lightning_class for cls in type(obj).__mro__)


#: What Lightning's ``fit`` sets on the LightningModule inside a ``torch.compile`` wrapper (``from_compiled``).
_COMPILED_MARKS = ("_compiler_ctx", "forward", "training_step", "validation_step", "test_step", "predict_step")


def _compiled_marks(model: Any) -> tuple[Any, dict[str, Any]] | None:
    """The module a ``torch.compile`` wrapper holds and its own attributes among :data:`_COMPILED_MARKS`; else None."""
    inner = getattr(model, "_orig_mod", None)
    if not isinstance(inner, torch.nn.Module):
        return None
    return inner, {name: vars(inner)[name] for name in _COMPILED_MARKS if name in vars(inner)}


def _put_back_compiled_marks(compiled: tuple[Any, dict[str, Any]] | None) -> None:
    """Undo what Lightning's ``fit`` set on a compiled module's inner LightningModule: its steps, wrapped by dynamo.

    Found trying the package as a new user: left, the module ran compiled in a later fit of it uncompiled, and a fit of
    the compiled one wrapped its steps twice (Lightning's own ``Tuner.lr_find`` leaves them too).
    """
    if compiled is None:
        return
    inner, before = compiled
    for name in _COMPILED_MARKS:
        if name in before:
            vars(inner)[name] = before[name]
        else:
            vars(inner).pop(name, None)


def _ignored_by_lightning(before: Any) -> bool:
    """Whether Ctrl-C went from ``before`` to ignored during ``fit`` (Lightning's shutdown after a KeyboardInterrupt).

    ``before`` None: a handler not set from Python, which cannot be set back from it.
    """
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    return ignored and before is not None and before != signal.SIG_IGN


def _refuse_what_would_run_a_second_test(model: Any, callbacks: list[Any], fast_dev_run: Any) -> None:
    """Refuse this package's callbacks, Lightning's LR finder and ``fast_dev_run`` among the ``trainer_kwargs``.

    The callbacks would run a range test or a grid of their own before the one asked for, and change the optimizer it
    starts from (Lightning's finder also sets the model's ``lr``: found trying the package as a new user, it ran and
    moved the pick); ``fast_dev_run`` runs a batch or a few.
    """
    from lightning_superconv.superconvergence import SuperConvergence
    from lightning_superconv.weight_decay_balancer import WeightDecayBalancer

    kinds = (SuperConvergence, WeightDecayBalancer, *_compat.callback_classes(model, "LearningRateFinder"))
    ours = [type(cb).__name__ for cb in callbacks if isinstance(cb, kinds)]
    if ours:
        raise ValueError(
            f"`find_max_lr` runs the range test itself: remove {', '.join(ours)} from `trainer_kwargs['callbacks']` "
            "(it would run its own range test or grid first and change the optimizer the test starts from). Give it "
            "to the Trainer that trains, e.g. `SuperConvergence(max_lr=result.max_lr)`, or run it on its own."
        )
    if fast_dev_run not in (False, 0, None):
        raise ValueError(
            f"`find_max_lr` got `fast_dev_run={fast_dev_run!r}` in `trainer_kwargs`: it limits the run to a batch or "
            "a few, and a range test reads its curve over `num_steps` batches (SuperConvergence skips its range "
            "test under `fast_dev_run`). Remove it from `trainer_kwargs`."
        )


def _loaders_in(model: Any, data: Any) -> list[Any]:
    """The loaders in what ``fit`` takes as its train data (one, a collection of them, a CombinedLoader), flattened."""
    if data is None:
        return []
    if not hasattr(data, "flattened"):
        data = _compat.module(model, "utilities.combined_loader").CombinedLoader(data)
    return list(data.flattened)
