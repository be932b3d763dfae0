"""The README's "Setups we do not serve": each message names the problem and the fix.

Rows tested elsewhere: Lightning's finder and a second ``SuperConvergence`` (``test_callbacks_together.py``), a resume
from a checkpoint without the callback's state (``test_resume.py``), a gradient scaler that skips every step
(``test_precision.py``), data that can be read only once (``test_run_lengths.py``).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import Tally, TinyClassifier, WithOptimizer, make_dataset, trainer_kwargs
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, IterableDataset

from lightning_superconv import SuperConvergence, find_max_lr
from lightning_superconv._setups import strategy_problem


class Counting(TinyClassifier):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = Tally()

    def training_step(self, batch, batch_idx):
        self.calls += 1
        return super().training_step(batch, batch_idx)


class Manual(Counting):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()


class NoOptimizer(Counting):
    def configure_optimizers(self):
        return None


class TwoOptimizers(Counting):
    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.01), torch.optim.SGD(self.net[4].parameters(), lr=0.1)]


class _Stream(IterableDataset):
    def __iter__(self):
        data = make_dataset(64)
        return (data[i] for i in range(len(data)))


class Streaming(Counting):
    def train_dataloader(self):
        return DataLoader(_Stream(), batch_size=32)


class NonFinite(Counting):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * self.value


class ZeroFirstGroup(Counting):
    def configure_optimizers(self):
        first = list(self.net[0].parameters())
        rest = [p for p in self.parameters() if all(p is not q for q in first)]
        return torch.optim.SGD([{"params": first, "lr": 0.0}, {"params": rest, "lr": 0.01}], lr=0.01, momentum=0.9)


def _fit(tmp_path, model, callback=None, extra=(), **overrides):
    overrides.setdefault("limit_train_batches", 4)
    callback = callback or SuperConvergence(num_steps=10)
    trainer = L.Trainer(callbacks=[callback, *extra], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model)
    return trainer


def test_a_group_held_at_lr_0_after_the_first_stays_frozen_through_the_range_test_and_the_cycle(tmp_path):
    """What the refusal of a first group at 0 advises: such a group put second keeps `lr=0` and its weights."""

    class FrozenSecond(Counting):
        def configure_optimizers(self):
            frozen = list(self.net[0].parameters())
            rest = [p for p in self.parameters() if all(p is not q for q in frozen)]
            return torch.optim.SGD([{"params": rest, "lr": 0.01}, {"params": frozen, "lr": 0.0}], momentum=0.9)

    model = FrozenSecond()
    before = [p.detach().clone() for p in model.net[0].parameters()]
    trainer = _fit(tmp_path, model, SuperConvergence(num_steps=20))
    assert trainer.optimizers[0].param_groups[1]["lr"] == 0.0
    assert all(torch.equal(p, q) for p, q in zip(model.net[0].parameters(), before, strict=True))


@pytest.mark.parametrize(
    ("model", "problem", "fix"),
    [
        (Manual, r"needs automatic optimization", r"Switch to automatic optimization, or remove the callback"),
        (NoOptimizer, r"`configure_optimizers` returned None", r"Return the optimizer to train with"),
        (
            ZeroFirstGroup,
            r"first group's `lr` must be > 0, got 0.0",
            r"a frozen layer\), put a group with a positive `lr` first",
        ),
        (lambda: NonFinite(float("nan")), r"loss was non-finite \(NaN/inf\) after 0 step", r"Convergence\(max_lr="),
        (lambda: NonFinite(float("inf")), r"loss was non-finite \(NaN/inf\) after 0 step", r"lr_range=\(start, end\)"),
    ],
    ids=["manual-optimization", "no-optimizer", "first-group-lr-0", "nan-loss", "inf-loss"],
)
def test_unservable_model_fails_at_fit_start_naming_problem_and_fix(tmp_path, model, problem, fix):
    """A model the callback cannot serve fails before any training step, with what is wrong and what to do."""
    instance = model()
    with pytest.raises(MisconfigurationException) as info:
        _fit(tmp_path, instance)
    message = str(info.value)
    assert re.search(problem, message), message
    assert re.search(fix, message), message
    assert instance.trainer.global_step == 0


class RelativeStepAdafactor(Counting):
    """timm's `Adafactor` as `create_optimizer_v2(model, "adafactor")` builds it without an `lr`: `lr=None`."""

    def configure_optimizers(self):
        import timm.optim

        return timm.optim.create_optimizer_v2(self, "adafactor", weight_decay=1e-4)


class PlainWrapper:
    """An optimizer wrapper of plain class (a LARS of the user's): Lightning steps it, torch's schedulers refuse it."""

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner
        self.param_groups, self.state, self.defaults = inner.param_groups, inner.state, inner.defaults

    def step(self, closure=None):
        return self.inner.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class CountingWrapped(Counting):
    def configure_optimizers(self):
        return PlainWrapper(torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9))


@pytest.mark.parametrize("who", ["SuperConvergence", "SuperConvergence(max_lr=)", "find_max_lr", "find_max_lr trials"])
def test_an_optimizer_that_is_not_a_torch_optimizer_is_refused_before_any_step(tmp_path, who):
    """Torch's `OneCycleLR` takes a `torch.optim.Optimizer` only: the cycle and each trial are built with it.

    Found in a review: a wrapper of plain class failed with torch's `TypeError` after the whole sweep, and the note
    on it advised `max_lr=`, which failed the same way. `find_max_lr(trial_steps=0)` builds no cycle: it runs.
    """
    from lightning_superconv import find_max_lr

    model = CountingWrapped()
    kwargs = trainer_kwargs(tmp_path, limit_train_batches=4)
    if who == "find_max_lr":
        result = find_max_lr(model, trainer_kwargs=kwargs, num_steps=10, trial_steps=0)
        assert math.isfinite(result.max_lr)
        return

    def run() -> None:
        if who == "find_max_lr trials":
            find_max_lr(model, trainer_kwargs=kwargs, num_steps=10)
        else:
            _fit(tmp_path, model, SuperConvergence(max_lr=0.1 if who.endswith("(max_lr=)") else None))

    with pytest.raises(MisconfigurationException, match=r"torch's `OneCycleLR` .* `PlainWrapper` is not one") as info:
        run()
    assert ("`trial_steps=0`" in str(info.value)) == (who == "find_max_lr trials")
    assert model.calls == 0


@pytest.mark.parametrize("run", [{"fast_dev_run": True}, {"overfit_batches": 2}], ids=["fast_dev_run", "overfit"])
def test_an_optimizer_that_is_not_a_torch_optimizer_trains_where_no_cycle_is_built(tmp_path, run):
    """Under `fast_dev_run`, or `overfit_batches` without `max_lr`, the callback builds nothing: the run trains.

    Found in a review: the refusal came first, and failed runs that had worked.
    """
    trainer = _fit(tmp_path, CountingWrapped(), SuperConvergence(cycle_momentum=True), max_steps=2, **run)
    assert trainer.global_step > 0


class NonFiniteGroupLR(Counting):
    def __init__(self, lr: float, group: int) -> None:
        super().__init__()
        self.bad_lr, self.group = lr, group

    def configure_optimizers(self):
        first = list(self.net[0].parameters())
        rest = [p for p in self.parameters() if all(p is not q for q in first)]
        groups = [{"params": first, "lr": 0.01}, {"params": rest, "lr": 0.01}]
        groups[self.group]["lr"] = self.bad_lr
        return torch.optim.SGD(groups, momentum=0.9)


@pytest.mark.parametrize("group", [0, 1])
@pytest.mark.parametrize("lr", [math.nan, math.inf])
@pytest.mark.parametrize("who", ["SuperConvergence(max_lr=)", "find_max_lr"])
def test_a_param_groups_lr_that_is_not_finite_is_refused_naming_the_group(tmp_path, who, lr, group):
    """Refused before any step, naming the group and its value.

    Found in a review: `lr=nan` passed; the cycle ran at NaN and trained nothing, and the guard "lowered the peak from
    0.1 to nan"; `find_max_lr` blamed a warm-up in the module.
    """
    from lightning_superconv import find_max_lr

    model = NonFiniteGroupLR(lr, group)
    expected = rf"must be a finite number; param group {group} of `SGD` has lr={lr}\. Give it a finite `lr`"

    def run():
        if who == "find_max_lr":
            return find_max_lr(model, num_steps=10)
        return _fit(tmp_path, model, SuperConvergence(max_lr=0.1))

    with pytest.raises(MisconfigurationException, match=expected):
        run()
    assert model.calls == 0


class CountingAdagrad(Counting):
    def configure_optimizers(self):
        return torch.optim.Adagrad(self.parameters(), lr=0.01)


def test_cycle_momentum_true_on_an_optimizer_without_momentum_is_refused_before_the_range_test(tmp_path):
    """The cycle refused it once built, after the whole sweep (found in a review): now before any step."""
    model = CountingAdagrad()
    trainer = L.Trainer(callbacks=[SuperConvergence(cycle_momentum=True)], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"`cycle_momentum=True` needs an optimizer with `momentum` or `betas`"):
        trainer.fit(model)
    assert model.calls == 0


@pytest.mark.parametrize("who", ["SuperConvergence", "SuperConvergence(max_lr=)", "WeightDecayBalancer", "find_max_lr"])
def test_an_optimizer_computing_its_own_step_size_is_refused_naming_lr_and_the_fix(tmp_path, who):
    """`lr=None` makes an Adafactor step by its own relative step size: refused before any step, with the group.

    Found trying the package as a new user: a bare ``TypeError`` (``float()`` of None) came from deep inside.
    """
    from lightning_superconv import WeightDecayBalancer, find_max_lr

    model = RelativeStepAdafactor()
    assert model.configure_optimizers().param_groups[0]["lr"] is None  # the premise
    callbacks = {
        "SuperConvergence": lambda: SuperConvergence(num_steps=10),
        "SuperConvergence(max_lr=)": lambda: SuperConvergence(max_lr=0.01),
        "WeightDecayBalancer": WeightDecayBalancer,
    }

    def run() -> None:
        if who == "find_max_lr":
            find_max_lr(model, trainer_kwargs=dict(accelerator="cpu", logger=False, enable_progress_bar=False))
        else:
            _fit(tmp_path, model, callbacks[who]())

    with pytest.raises(MisconfigurationException) as info:
        run()
    message = str(info.value)
    assert "param group 0 of `Adafactor` has lr=None" in message, message
    assert "Pass a number (e.g. `lr=1e-3`, with `relative_step=False`" in message, message
    assert model._trainer is None or model.trainer.global_step == 0  # find_max_lr leaves it unattached


def test_an_optimizer_without_an_lr_is_refused_naming_it(tmp_path):
    """pytorch_optimizer's AliG (a Polyak step capped by its `max_lr`) has no `lr`: refused, not called Adafactor."""
    import pytorch_optimizer

    model = WithOptimizer(lambda params: pytorch_optimizer.AliG(params, max_lr=0.1))
    with pytest.raises(MisconfigurationException, match=r"param group 0 of `AliG` has no `lr`") as info:
        _fit(tmp_path, model, SuperConvergence(num_steps=10))
    assert "Adafactor" not in str(info.value)
    assert "Pass a number" not in str(info.value)  # AliG takes no `lr`


def _with_lr(optimizer: torch.optim.Optimizer, lr) -> torch.optim.Optimizer:
    optimizer.param_groups[0]["lr"] = lr
    return optimizer


@pytest.mark.parametrize(
    "lr", [np.float32(0.01), np.int64(1), np.array(0.01), torch.tensor(0.01)], ids=["f32", "i64", "0d-array", "tensor"]
)
def test_an_lr_that_float_reads_is_served_by_both_callbacks(tmp_path, lr):
    """NumPy scalars and 0-d arrays and a tensor as `lr` train as before: only what `float` cannot read is refused."""
    from helpers import WithOptimizer

    from lightning_superconv import WeightDecayBalancer

    model = WithOptimizer(lambda p: _with_lr(torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4), lr))
    trainer = _fit(tmp_path, model, SuperConvergence(max_lr=0.1), extra=[WeightDecayBalancer()])
    assert trainer.global_step == 8


class SequentialTrainData(Counting):
    def train_dataloader(self):
        from lightning.pytorch.utilities import CombinedLoader

        loaders = [DataLoader(make_dataset(64), batch_size=32), DataLoader(make_dataset(64, seed=1), batch_size=32)]
        return CombinedLoader(loaders, "sequential")


def test_train_data_in_sequential_mode_is_refused_before_the_range_test(tmp_path):
    """Lightning refuses ``CombinedLoader(mode="sequential")`` for training only when its first epoch starts.

    Found trying the package as a new user: that came after a whole range test had run on it. Now before any step, in
    the callback and in ``find_max_lr``, naming the modes training takes.
    """
    from lightning_superconv import find_max_lr

    model = SequentialTrainData()
    with pytest.raises(ValueError, match=r'mode="sequential"\).*\'max_size_cycle\' \(the default\)'):
        _fit(tmp_path, model)
    assert model.calls == 0
    with pytest.raises(ValueError, match=r'mode="sequential"'):
        find_max_lr(model, trainer_kwargs={"accelerator": "cpu"})
    assert model.calls == 0
    # nor does the weight-decay grid train on it (with the peak given, no range test runs first)
    from lightning_superconv import WeightDecayBalancer

    with pytest.raises(ValueError, match=r"WeightDecayBalancer\(mode='grid'\) cannot run on train data"):
        _fit(tmp_path / "grid", model, SuperConvergence(max_lr=0.1), extra=[WeightDecayBalancer(mode="grid")])
    assert model.calls == 0


def test_non_finite_loss_leaves_the_model_as_it_was(tmp_path):
    """After the NaN error the model's weights and buffers are those it had before `fit`."""
    model = NonFinite(float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MisconfigurationException):
        _fit(tmp_path, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_several_optimizers_are_refused_by_lightning_itself_saying_what_to_do(tmp_path):
    """Lightning refuses several optimizers under automatic optimization; its message names manual optimization."""
    model = TwoOptimizers()
    with pytest.raises((MisconfigurationException, RuntimeError), match=r"multiple optimizers.*manual optimization"):
        _fit(tmp_path, model)
    assert model.calls == 0


class TwoOptimizersManual(Manual):
    def configure_optimizers(self):
        return TwoOptimizers.configure_optimizers(self)

    def training_step(self, batch, batch_idx):
        loss = Counting.training_step(self, batch, batch_idx)
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()


def test_several_optimizers_under_manual_optimization_are_told_to_become_one(tmp_path):
    """Where Lightning's refusal sends the user (manual optimization), ours names both needs: automatic and one.

    Found in a review: told only to switch back to automatic optimization, which Lightning refuses for two optimizers.
    """
    model = TwoOptimizersManual()
    with pytest.raises(MisconfigurationException) as info:
        _fit(tmp_path, model)
    message = str(info.value)
    assert "needs automatic optimization" in message
    assert "`configure_optimizers` returned 2: put all parameters into one (param groups" in message
    assert model.calls == 0


def test_unknown_run_length_names_the_argument_to_set(tmp_path):
    """An `IterableDataset` without `max_steps`: the message says the length is unknown and to set `max_steps`."""
    model = Streaming()
    match = r"the train dataloader has no length and `max_steps` is not set\)\. Set `Trainer\(max_steps=\.\.\.\)`\.$"
    with pytest.raises(MisconfigurationException, match=match):
        _fit(tmp_path, model, limit_train_batches=1.0)
    assert model.calls == 0


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"max_epochs": None, "max_time": {"minutes": 5}}, r"`max_time` alone limits it"),
        ({"max_epochs": -1}, r"it has no epoch limit \(`max_epochs=-1`\)"),
    ],
)
def test_a_run_without_an_epoch_or_step_limit_names_what_limits_it_and_what_to_set(tmp_path, limits, named):
    """A loader with a length, but no epoch or step limit (`max_time` alone, `max_epochs=-1`): the message says so.

    Before, it said the train dataloader had no length, which was not the problem (found trying the package as a
    new user would).
    """
    model = Counting()
    match = rf"length is unknown: {named}.*Set `Trainer\(max_steps=\.\.\.\)`, or `Trainer\(max_epochs=\.\.\.\)` if"
    with pytest.raises(MisconfigurationException, match=match):
        _fit(tmp_path, model, **limits)
    assert model.calls == 0


def test_fast_dev_run_skips_the_range_test_and_says_so(tmp_path, caplog):
    """`fast_dev_run` runs no range test and leaves the configured scheduler; an info line says why."""
    model = Counting(scheduler="step")
    callback = SuperConvergence(num_steps=10)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, fast_dev_run=2))
        trainer.fit(model)
    assert callback.result is None
    assert model.calls == 2
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "StepLR"
    assert any("`fast_dev_run` is on, so no range test runs" in r.getMessage() for r in caplog.records)


class WarmsUpInAHook(TinyClassifier):
    """Lightning's common warm-up: the LR set in `on_before_optimizer_step` while `global_step` is below 20."""

    def on_before_optimizer_step(self, optimizer):
        if self.trainer.global_step < 20:
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * (self.trainer.global_step + 1) / 20


def test_a_warm_up_that_sets_the_lr_in_a_hook_is_refused_by_the_range_test_with_what_to_do(tmp_path):
    """The sweep's LR, overwritten at every range-test step (its `global_step` is 0), would sweep nothing: refused.

    Found trying the package as a new user: the curve never rose, every trial scored alike, and a peak of 8576 was
    installed. With `max_lr=` the run trains.
    """
    model = WarmsUpInAHook()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    said = r"set the LR of its step 0 to 1e-06, and it was 0.0005 after the step: your module sets the LR itself"
    with pytest.raises(MisconfigurationException, match=said):
        L.Trainer(callbacks=[SuperConvergence(num_steps=20)], **trainer_kwargs(tmp_path)).fit(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    trainer = L.Trainer(callbacks=[SuperConvergence(max_lr=0.1)], **trainer_kwargs(tmp_path, limit_train_batches=4))
    trainer.fit(WarmsUpInAHook())
    assert trainer.global_step == 8


def test_overfit_batches_runs_no_range_test_and_trains_as_without_the_callback(tmp_path, caplog):
    """`overfit_batches` checks that the model fits a few batches: no range test, the user's LR, an info line.

    Found trying the package as a new user: the trials, made to choose a peak that generalizes, picked one that
    overfit the batch worse than the user's constant LR. With `max_lr=` given the cycle runs at it.
    """
    runs = {}
    for name, callbacks in (("plain", []), ("auto", [SuperConvergence(num_steps=10)])):
        L.seed_everything(0, verbose=False)
        model = TinyClassifier()
        with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
            trainer = L.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, overfit_batches=1, max_epochs=5))
            trainer.fit(model)
        runs[name] = (model, trainer)
    (plain, _), (auto, trainer) = runs["plain"], runs["auto"]
    assert trainer.callbacks[0].result is None
    assert trainer.lr_scheduler_configs == []
    for key, value in plain.state_dict().items():
        assert torch.equal(value, auto.state_dict()[key]), key
    assert any("`overfit_batches=1` is on" in r.getMessage() for r in caplog.records)
    given = SuperConvergence(max_lr=0.05)
    trainer = L.Trainer(callbacks=[given], **trainer_kwargs(tmp_path, overfit_batches=1, max_epochs=5))
    trainer.fit(TinyClassifier())
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "SafeOneCycleLR"


# ------------------------------------------------------------------------------------------------ strategies


def test_fsdp1_refuses_the_range_test_naming_max_lr_and_the_strategy_that_serves_it():
    """Under FSDPStrategy (GPU only, its flat parameters untested) the range test is refused, naming `max_lr=`."""
    message = strategy_problem(FSDPStrategy(), range_test=True)
    assert "does not run its range test under `FSDPStrategy`" in message
    assert "`SuperConvergence(max_lr=...)`" in message
    assert "find_max_lr" in message
    assert "`ModelParallelStrategy`" in message
    # with `max_lr` given, the cycle alone is a plain torch scheduler over the strategy's optimizer
    assert strategy_problem(FSDPStrategy(), range_test=False) is None


def test_find_max_lr_refuses_the_strategies_superconvergence_refuses_naming_where_it_runs():
    """find_max_lr always runs a range test: FSDP1 and DeepSpeed are refused by its own name, not the callback's."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    for strategy, name in (
        (FSDPStrategy(), "FSDPStrategy"),
        (DeepSpeedStrategy.__new__(DeepSpeedStrategy), "DeepSpeedStrategy"),
    ):
        message = strategy_problem(strategy, range_test=True, who="find_max_lr")
        assert f"`find_max_lr` does not run its range test under `{name}`" in message
        assert "strategy='ddp'" in message
        assert "`ModelParallelStrategy`" in message
        assert "SuperConvergence does not" not in message
    assert strategy_problem(ModelParallelStrategy(), range_test=True, who="find_max_lr") is None
    assert strategy_problem(DDPStrategy(), range_test=True, who="find_max_lr") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP runs on CUDA only")
def test_find_max_lr_under_fsdp_fails_before_any_step():
    """On a GPU: find_max_lr(strategy='fsdp') is refused at fit start, before its first step."""
    model = Counting()
    with pytest.raises(
        MisconfigurationException, match=r"`find_max_lr` does not run its range test under `FSDPStrategy`"
    ):
        find_max_lr(model, trainer_kwargs=dict(accelerator="cuda", devices=1, strategy="fsdp"))
    assert model.calls == 0


def test_model_parallel_is_served():
    """FSDP2 and tensor parallelism under ModelParallelStrategy: the range test runs (see test_model_parallel.py)."""
    assert strategy_problem(ModelParallelStrategy(), range_test=True) is None


def test_ddp_is_served():
    """DDP needs nothing special: no problem reported, range test or not."""
    assert strategy_problem(DDPStrategy(), range_test=True) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP runs on CUDA only")
def test_fsdp_range_test_fails_at_fit_start_and_max_lr_trains(tmp_path):
    """On a GPU: FSDP with a range test fails before any step; with `max_lr=` the cycle trains."""
    model = Counting()
    gpu = dict(accelerator="cuda", devices=1, strategy="fsdp")
    with pytest.raises(MisconfigurationException, match=r"under `FSDPStrategy`.*`SuperConvergence\(max_lr=\.\.\.\)`"):
        _fit(tmp_path, model, **gpu)
    assert model.calls == 0
    trainer = _fit(tmp_path, Counting(), SuperConvergence(max_lr=0.1), **gpu)
    assert trainer.global_step == 8


def test_deepspeed_is_refused_naming_the_fix(tmp_path):
    """DeepSpeed wraps the optimizer: refused at fit start, saying to configure `OneCycleLR` yourself."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    # the `deepspeed` package needs CUDA to install; the refusal reads only the strategy's class
    message = strategy_problem(DeepSpeedStrategy.__new__(DeepSpeedStrategy), range_test=False)
    assert "does not support `DeepSpeedStrategy`" in message
    assert "OneCycleLR(optimizer, max_lr=" in message


def test_a_lazy_module_without_weights_is_refused_with_what_to_do_and_works_after_one_forward(tmp_path):
    """A range test snapshots the weights, which a lazy module creates only at its first forward pass."""

    class Lazy(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.net[0] = torch.nn.LazyLinear(32)

    model = Lazy()
    trainer = L.Trainer(callbacks=[SuperConvergence(num_steps=20, trial_steps=0)], **trainer_kwargs(tmp_path))
    with pytest.raises(
        MisconfigurationException, match=r"net\.0 \(LazyLinear\) has no weights yet.*one forward pass"
    ) as info:
        trainer.fit(model)
    assert torch.nn.parameter.is_lazy(model.net[0].weight)
    # no note on batches the sweep met: it took no step (found in a review: the note sent the user to their data)
    assert not getattr(info.value, "__notes__", [])
    model.net(make_dataset(2).tensors[0])  # what the message says to do
    callback = SuperConvergence(num_steps=20, trial_steps=0)
    L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path)).fit(model)
    assert callback.result is not None


class Maximizing(Counting):
    """Climbs the negative cross-entropy with ``maximize=True``: the same training as minimizing it."""

    def training_step(self, batch, batch_idx):
        return -super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, maximize=True)


@pytest.mark.parametrize(
    ("callback", "reads", "instead"),
    [
        (
            lambda: SuperConvergence(num_steps=10),
            r"\(the range test's curve and trials and the divergence guard\)",
            r"or pass `max_lr=` and `guard=False`",
        ),
        (
            lambda: SuperConvergence(num_steps=10, guard=False),
            r"\(the range test's curve and trials\)",
            r"or pass `max_lr=` and `guard=False`",
        ),
        # `max_lr=` given: only `guard=False` is left to pass
        (lambda: SuperConvergence(max_lr=0.1), r"\(the divergence guard\)", r"or pass `guard=False` \(the cycle"),
    ],
    ids=["range-test", "range-test-no-guard", "guard"],
)
def test_an_optimizer_with_maximize_is_refused_where_the_loss_is_read(tmp_path, callback, reads, instead):
    """`maximize=True` climbs the value `training_step` returns; the range test, trials and guard read it as a loss.

    Found trying the package as a new user: read upside down, the pick was 72,500 (the trials' "held-out losses"
    -1,419 to -52,690, the highest "did best"), the guard rescued twice and the run ended at chance.
    """
    model = Maximizing()
    fix = r"Return its negative from `training_step` and drop `maximize=True` \(the same training\), " + instead
    with pytest.raises(MisconfigurationException, match=reads + r".*param group 0 of `SGD` has maximize=True.*" + fix):
        _fit(tmp_path, model, callback())
    assert model.calls == 0


def test_an_optimizer_with_maximize_trains_under_the_cycle_alone(tmp_path):
    """With `max_lr=` given and `guard=False` nothing reads the loss: the cycle runs over the climbing optimizer."""
    from lightning_superconv import WeightDecayBalancer

    model = Maximizing()
    callback = SuperConvergence(max_lr=0.1, guard=False)
    trainer = _fit(tmp_path, model, callback, extra=[WeightDecayBalancer(mode="budget")])
    assert trainer.global_step == 8
    assert model.calls == 8
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler.optimizer.param_groups[0]["max_lr"] == 0.1


def test_an_optimizer_with_maximize_is_refused_by_find_max_lr_and_the_grid(tmp_path):
    """`find_max_lr` and the balancer's grid (its held-out scores are `training_step`'s values) refuse it too."""
    from lightning_superconv import WeightDecayBalancer, find_max_lr

    model = Maximizing()
    with pytest.raises(MisconfigurationException, match=r"find_max_lr reads .* maximize=True.*do not run it"):
        find_max_lr(model, trainer_kwargs=trainer_kwargs(tmp_path, limit_train_batches=4))
    with pytest.raises(MisconfigurationException, match=r"mode='grid'\) reads .*grid's held-out scores.*'budget'"):
        _fit(tmp_path, model, SuperConvergence(max_lr=0.1, guard=False), extra=[WeightDecayBalancer(mode="grid")])
    assert model.calls == 0


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_notebook", "ddp_fork"])
def test_find_max_lr_refuses_a_strategy_that_runs_the_fit_on_copies_before_any_step(tmp_path, strategy):
    """The range test's result would stay in the spawned or forked workers.

    Found trying the package as a new user: the whole test ran in the workers, then a bare `AssertionError` in the
    caller's process (`ddp_notebook` is Lightning's default for several devices in a notebook).
    """
    from lightning_superconv import find_max_lr

    model = Counting()
    kwargs = trainer_kwargs(tmp_path, devices=2, strategy=strategy, limit_train_batches=4)
    with pytest.raises(ValueError, match=rf"cannot run under `strategy='{strategy}'`.*Pass `strategy='ddp'`"):
        find_max_lr(model, trainer_kwargs=kwargs)
    assert model.calls == 0


def test_find_max_lr_in_a_notebook_names_the_strategy_lightning_chose(tmp_path):
    """Where `strategy` is left to Lightning, the refusal says 'auto' (what the user passed), not None.

    In an interactive session Lightning picks `ddp_notebook` for several devices; `python -i` makes one.
    """
    import subprocess
    import sys

    script = (
        "import sys, lightning as L, torch\n"
        f"sys.path[:0] = [{str(Path(__file__).parent)!r}]\n"
        "from helpers import TinyClassifier\n"
        "from lightning_superconv import find_max_lr\n"
        "try:\n"
        f"    find_max_lr(TinyClassifier(), trainer_kwargs=dict(accelerator='cpu', devices=2, "
        f"default_root_dir={str(tmp_path)!r}, logger=False, enable_progress_bar=False))\n"
        "except ValueError as err:\n"
        "    print('REFUSED', err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-i", "-c", script], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert "REFUSED `find_max_lr` cannot run under `strategy='auto'`" in done.stdout, done.stdout + done.stderr


def test_validation_data_that_is_not_iterable_is_refused_naming_val_dataloaders(tmp_path):
    """The trials read the validation data before Lightning first validates, where it refuses a non-iterable.

    Found trying the package as a new user: ``val_dataloaders=5`` gave ``'int' object is not iterable`` from inside
    the trials, where Lightning names the argument; now ours says so, in the callback and in ``find_max_lr``.
    """
    from lightning_superconv import find_max_lr

    said = r"invalid validation dataloader .*`val_dataloaders=`.* a DataLoader or another iterable .* got 5 \(int\)"
    model = Counting()
    trainer = L.Trainer(
        callbacks=[SuperConvergence(num_steps=10, trial_steps=50)],
        **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=2),
    )
    with pytest.raises(TypeError, match=said):
        trainer.fit(model, val_dataloaders=5)
    with pytest.raises(TypeError, match=said):
        find_max_lr(model, val_dataloaders=5, num_steps=10, trial_steps=50, trainer_kwargs={"accelerator": "cpu"})


class HeadBuiltInItsFirstForward(Counting):
    """Builds a second head in its first training forward and hands it to the optimizer there."""

    def forward(self, x):
        if self.training and not hasattr(self, "extra"):
            self.extra = torch.nn.Linear(4, 4)
            self.trainer.optimizers[0].add_param_group({"params": list(self.extra.parameters())})
        return super().forward(x)


def test_a_param_group_added_during_the_range_test_is_refused_naming_it_and_the_fix(tmp_path):
    """Found trying the package as a new user: a bare ``zip()`` error, with a note blaming the train batches."""
    model = HeadBuiltInItsFirstForward()
    trainer = L.Trainer(callbacks=[SuperConvergence(num_steps=10)], **trainer_kwargs(tmp_path, max_epochs=1))
    said = r"had 1 param group when the range test started and 2 at its step 0: .*`add_param_group`.*\(max_lr="
    with pytest.raises(MisconfigurationException, match=said) as raised:
        trainer.fit(model)
    assert not getattr(raised.value, "__notes__", [])  # the message says what to change; no note on the batches
    assert len(trainer.optimizers[0].param_groups) == 1  # put back
    assert not hasattr(model, "extra")
    # given the peak, the cycle takes the head in when it joins, and trains it
    model = HeadBuiltInItsFirstForward()
    trainer = L.Trainer(
        callbacks=[SuperConvergence(max_lr=0.1)], **trainer_kwargs(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    )
    trainer.fit(model)
    assert len(trainer.optimizers[0].param_groups) == 2
    assert trainer.optimizers[0].param_groups[1]["max_lr"] > 0


class HeadBuiltInASkippedStep(Counting):
    """Builds a second head in its first ``training_step``, which skips that batch (returns None)."""

    def training_step(self, batch, batch_idx):
        if not hasattr(self, "extra"):
            self.extra = torch.nn.Linear(4, 4)
            self.trainer.optimizers[0].add_param_group({"params": list(self.extra.parameters())})
            return None
        return super().training_step(batch, batch_idx)


def test_a_param_group_added_in_a_skipped_step_is_refused_as_well(tmp_path):
    """Found in a review: a skipped step was never checked, and the next LR write raised ``zip()``'s bare error."""
    model = HeadBuiltInASkippedStep()
    trainer = L.Trainer(callbacks=[SuperConvergence(num_steps=10)], **trainer_kwargs(tmp_path, max_epochs=1))
    said = r"had 1 param group when the range test started and 2 at its step 0: .*`add_param_group`.*\(max_lr="
    with pytest.raises(MisconfigurationException, match=said):
        trainer.fit(model)
    assert len(trainer.optimizers[0].param_groups) == 1  # put back
    assert not hasattr(model, "extra")


class LossScaledUp(Counting):
    """A loss a hundred million times larger: SGD's steps at the sweep's first LR already blow the model up."""

    def training_step(self, batch, batch_idx):
        return 1e8 * super().training_step(batch, batch_idx)


def test_a_sweep_that_blows_up_from_its_first_lr_names_lr_range_in_its_error(tmp_path):
    """Found trying the package as a new user: the error named a start of 1.8e24 read from blown-up losses."""
    said = r"loss was .* before its first step .*above where this model's loss diverges.*Lower `lr_range\[0\]`"
    with pytest.raises(MisconfigurationException, match=said):
        _fit(tmp_path, LossScaledUp(), SuperConvergence(num_steps=10, trial_steps=0))
