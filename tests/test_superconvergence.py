"""``SuperConvergence`` in a real ``Trainer`` on CPU: range test, exact restore, installed cycle, logging, errors."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import enum
import logging
import math
import random
import re
import signal
import time
import types
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from helpers import (
    DictValidationBatches,
    MemoryLogger,
    OneCorruptSample,
    OneShotClassifier,
    OwnRandomSampler,
    ShuffledValidation,
    Tally,
    TimmViT,
    TinyClassifier,
    WithOptimizer,
    make_dataset,
    trainer_kwargs,
)
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import CombinedLoader
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, TensorDataset

from lightning_superconv import RangeTestResult, SuperConvergence, WeightDecayBalancer, find_max_lr
from lightning_superconv.curve import lr_sweep, median_half_width
from lightning_superconv.peak import OWN_LR_TRIALS, start_level

# A sweep over which TinyClassifier's loss falls and does not diverge, so the test runs its full length.
NO_DIVERGENCE = (1e-2, 1.0)

# ------------------------------------------------------------------------------------------------ models and callbacks


class CountingClassifier(TinyClassifier):
    """Counts ``training_step`` calls, range-test steps included."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = Tally()

    def training_step(self, batch, batch_idx):
        self.calls += 1
        return super().training_step(batch, batch_idx)


class StatefulClassifier(TinyClassifier):
    """Its optimizer holds state at fit start (momentum buffers, Adam moments), as after loading a checkpoint."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        for param in self.parameters():
            param.grad = torch.full_like(param, 0.01)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return optimizer


class FailingClassifier(StatefulClassifier):
    """Raises ``error`` from its ``fail_at``-th ``training_step`` call."""

    def __init__(self, fail_at: int, error: BaseException) -> None:
        super().__init__()
        self.fail_at, self.error, self.calls = fail_at, error, Tally()

    def training_step(self, batch, batch_idx):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        return super().training_step(batch, batch_idx)


class NaNClassifier(StatefulClassifier):
    """A loss that is NaN from the first step."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * float("nan")


class FlatClassifier(StatefulClassifier):
    """A loss that depends on the parameters but never changes: there is nothing to read off the curve."""

    def training_step(self, batch, batch_idx):
        return 0.0 * self(batch[0]).sum() + 1.0


class TwoGroupClassifier(TinyClassifier):
    """SGD with the first layer at 10x the LR of the rest; records each group's LR at every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.step_lrs: list[tuple[float, float]] = []

    def configure_optimizers(self):
        first = list(self.net[0].parameters())
        rest = [p for p in self.parameters() if all(p is not q for q in first)]
        return torch.optim.SGD([{"params": first, "lr": 0.01}, {"params": rest, "lr": 0.001}], lr=0.01, momentum=0.9)

    def on_before_optimizer_step(self, optimizer):
        self.step_lrs.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))


class ManualClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()


class TwoOptimizerClassifier(TinyClassifier):
    def configure_optimizers(self):
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.01),
            torch.optim.SGD(self.net[4].parameters(), lr=0.01),
        ]


class NoOptimizerClassifier(TinyClassifier):
    def configure_optimizers(self):
        return None


class _Stream(IterableDataset):
    def __iter__(self):
        data = make_dataset(64)
        return (data[i] for i in range(len(data)))


class StreamClassifier(TinyClassifier):
    """Trains from an ``IterableDataset``: the run's length is unknown without ``max_steps``."""

    def train_dataloader(self):
        return DataLoader(_Stream(), batch_size=32)


class GeneratorSamplerClassifier(StatefulClassifier):
    """Shuffles with a sampler that owns its ``torch.Generator`` (not the global RNG)."""

    def train_dataloader(self):
        sampler = RandomSampler(make_dataset(self.hparams.n), generator=torch.Generator().manual_seed(7))
        return DataLoader(make_dataset(self.hparams.n), batch_size=self.hparams.batch_size, sampler=sampler)


class ScheduleRecorder(Callback):
    """Records each param group's LR and momentum as each real training step sees them."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.momenta: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.lrs.append([group["lr"] for group in groups])
        self.momenta.append(groups[0]["momentum"] if "momentum" in groups[0] else groups[0]["betas"][0])


class HookCounter(Callback):
    """Counts the step-level hooks another callback (ModelCheckpoint, LearningRateMonitor...) would act on."""

    HOOKS = (
        "on_train_batch_start",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_before_zero_grad",
        "on_train_batch_end",
    )

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.HOOKS, 0)
        self.losses: list[float] = []

    def on_train_batch_start(self, *args):
        self.counts["on_train_batch_start"] += 1

    def on_before_backward(self, *args):
        self.counts["on_before_backward"] += 1

    def on_after_backward(self, *args):
        self.counts["on_after_backward"] += 1

    def on_before_optimizer_step(self, *args):
        self.counts["on_before_optimizer_step"] += 1

    def on_before_zero_grad(self, *args):
        self.counts["on_before_zero_grad"] += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts["on_train_batch_end"] += 1
        self.losses.append(float(outputs["loss"]))


class FitStartSnapshot(Callback):
    """Copies model, optimizer and RNG state at fit start, just before ``SuperConvergence`` (listed after it) runs."""

    def on_fit_start(self, trainer, pl_module):
        # reading the estimate sets up the train dataloader, which draws from the global RNG; do it before the copy,
        # as SuperConvergence's own read would otherwise move the RNG after it
        assert trainer.estimated_stepping_batches > 0
        self.model = copy.deepcopy(pl_module.state_dict())
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.rng = torch.get_rng_state()


# ------------------------------------------------------------------------------------------------ helpers


def _fit(tmp_path, model, callback, callbacks=(), seed=0, **overrides):
    """Fit ``model`` with ``callback`` on a tiny run (4 batches x 2 epochs unless overridden); return the trainer."""
    L.seed_everything(seed, verbose=False)
    overrides.setdefault("limit_train_batches", 4)
    trainer = L.Trainer(callbacks=[*callbacks, callback], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model)
    return trainer


def _seeded(model_cls, seed=0, **kwargs):
    """A model initialised from a fixed seed, so that two runs start from the same weights."""
    L.seed_everything(seed, verbose=False)
    return model_cls(**kwargs)


def _range_test_calls(model: CountingClassifier, trainer) -> int:
    return model.calls - trainer.global_step * trainer.accumulate_grad_batches


def _assert_tensor_dicts_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def _assert_optimizer_states_equal(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for name, value in a["state"][index].items():
            other = b["state"][index][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name


@pytest.fixture
def sigint_handler():
    """Lightning's graceful shutdown ignores SIGINT from then on; give the test process its handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


# ------------------------------------------------------------------------------------------------ (1) the range test


def test_range_test_records_the_curve_at_fit_start(tmp_path):
    """After fit, `result` holds the curve as plain floats, the pick and why the test stopped."""
    callback = SuperConvergence(num_steps=20)
    _fit(tmp_path, TinyClassifier(), callback)
    result = callback.result
    assert isinstance(result, RangeTestResult)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) >= 3
    for values in (result.lrs, result.losses, result.smoothed):
        assert all(type(v) is float for v in values)
    assert result.max_lr in [trial["peak"] for trial in result.trials]
    assert type(callback.max_lr) is float
    assert callback.max_lr == result.max_lr
    assert result.stop_reason in {"completed", "rose", "diverged", "non-finite"}
    assert result.pick_reason


def test_range_test_finishes_before_the_first_training_step(tmp_path):
    """The pick is known and the cycle installed when the first real batch starts."""
    seen = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("result", callback.result)
            seen.setdefault("scheduler", trainer.lr_scheduler_configs[0].scheduler)

    callback = SuperConvergence(num_steps=10)
    _fit(tmp_path, TinyClassifier(), callback, callbacks=[Probe()])
    assert seen["result"] is not None
    assert isinstance(seen["scheduler"], OneCycleLR)


def test_range_test_sweeps_exponentially_through_lr_range(tmp_path):
    """The recorded LRs are the exponential sweep from `lr_range[0]` towards `lr_range[1]`."""
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=12, trial_steps=0)
    _fit(tmp_path, TinyClassifier(), callback)
    assert callback.result.lrs[:12] == pytest.approx(lr_sweep(*NO_DIVERGENCE, 12), rel=1e-12)


def test_range_test_sweeps_linearly_when_asked(tmp_path):
    """`mode="linear"` spaces the recorded LRs evenly."""
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=12, mode="linear", trial_steps=0)
    _fit(tmp_path, TinyClassifier(), callback)
    assert callback.result.lrs[:12] == pytest.approx(lr_sweep(*NO_DIVERGENCE, 12, mode="linear"), rel=1e-12)
    lrs, step = callback.result.lrs, NO_DIVERGENCE[1] - callback.result.lrs[10]
    assert lrs[12:] == pytest.approx([1.0 + step * (k + 1) for k in range(len(lrs) - 12)])  # past it, same pace


def test_range_test_goes_past_lr_range_only_while_the_loss_has_not_risen(tmp_path):
    """A sweep whose loss is still low at `lr_range[1]` goes on at the same pace, at most `num_steps // 2` more."""
    model = CountingClassifier()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=16, trial_steps=0)
    trainer = _fit(tmp_path, model, callback)
    result = callback.result
    assert 16 < len(result.lrs) <= 16 + 8
    assert result.lrs == pytest.approx(lr_sweep(1e-2, 1e-2 * 100 ** ((len(result.lrs) - 1) / 15), len(result.lrs)))
    assert result.stop_reason in ("completed", "rose")
    assert _range_test_calls(model, trainer) == len(result.lrs)


def test_range_test_ends_at_lr_range_once_the_loss_has_risen(tmp_path):
    """A loss that is back above its start by `lr_range[1]` ends the sweep there: `num_steps` steps, no more."""
    model = CountingClassifier()
    callback = SuperConvergence(lr_range=(1e-2, 30.0), num_steps=16, divergence_threshold=1e9, trial_steps=0)
    trainer = _fit(tmp_path, model, callback)
    assert callback.result.stop_reason == "completed"
    assert len(callback.result.lrs) == 16
    assert _range_test_calls(model, trainer) == 16


def test_range_test_counts_optimizer_steps_under_accumulation(tmp_path):
    """With `accumulate_grad_batches=2` every range-test step consumes two micro-batches."""
    model = CountingClassifier()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10, trial_steps=0)
    trainer = _fit(tmp_path, model, callback, accumulate_grad_batches=2)
    assert _range_test_calls(model, trainer) == 2 * len(callback.result.lrs)


def test_range_test_stops_early_on_divergence(tmp_path):
    """A sweep into huge LRs stops once the loss has blown up, long before `num_steps`."""
    model = CountingClassifier()
    callback = SuperConvergence(lr_range=(1e-2, 1e6), num_steps=60, trial_steps=0)
    trainer = _fit(tmp_path, model, callback)
    assert callback.result.stop_reason in {"diverged", "non-finite"}
    assert _range_test_calls(model, trainer) < 60
    assert len(callback.result.lrs) < 60


class NoisyTrainingLoss(TinyClassifier):
    """Its training loss carries zero-mean noise of 1.0 per batch (not in the gradient), its held-out loss none.

    Validation is a sample of the training task, so a trial can show that a peak learns.
    """

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss + torch.randn(()) if self.training else loss

    def val_dataloader(self):
        return DataLoader(make_dataset(self.hparams.n), batch_size=64)


def test_a_fall_within_the_noise_is_warned_about_unless_a_trial_showed_the_pick_learns(tmp_path):
    """Without trials a fall within the batch noise may be noise: a warning says so and what to do.

    A trial whose held-out loss fell a tenth below the start answers that doubt; the advice (your own LR, say) would
    cost such a run what the pick gained, so it is not given (found trying the package on a GRU whose trials learned).
    """
    for trial_steps, warned in ((0, True), (100, False)):
        sc = SuperConvergence(trial_steps=trial_steps)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _fit(tmp_path, NoisyTrainingLoss(n=512), sc, limit_train_batches=1.0, max_epochs=4)
        noise = [w for w in caught if "while batch-to-batch noise alone moves its smoothed curve" in str(w.message)]
        assert bool(noise) == warned, trial_steps
        assert bool(sc.result.trials) == bool(trial_steps)
        if sc.result.trials:
            assert "no trial learned" not in " ".join(str(w.message) for w in caught)


class SuddenBlowUp(TinyClassifier):
    """Trains as usual until the LR passes ``at``, where its loss jumps a hundredfold from one step to the next."""

    def __init__(self, at: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at = at

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 100.0 if self.trainer.optimizers[0].param_groups[0]["lr"] > self.at else loss


def test_a_sweep_stopped_by_a_sudden_blow_up_reads_it_as_the_divergence_without_a_no_divergence_warning(tmp_path):
    """One loss a hundred times the last stops the sweep ("diverged"); the centred running median passes over it.

    Found trying the package as a new user (a Gaussian negative log-likelihood): the warning said in one sentence that
    the sweep ended "(diverged)" and that "there was no divergence to read the peak from", and blamed optimizers that
    bound their own step. The LR it stopped at is where the loss diverged, and the pick reads it so.
    """
    sc = SuperConvergence(trial_steps=0, lr_range=(1e-4, 10.0), num_steps=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, SuddenBlowUp(at=0.1, n=512), sc, limit_train_batches=1.0, max_epochs=4)
    assert sc.result.stop_reason == "diverged"
    assert sc.result.smoothed[-1] < sc.result.smoothed[0]  # the premise: the smoothed curve shows no rise
    assert not [w for w in caught if "never rose back" in str(w.message)]
    assert sc.result.pick_reason.startswith(f"the loss diverged at lr {sc.result.lrs[-1]:.3g}, where the sweep stopped")
    assert sc.max_lr == pytest.approx(0.25 * sc.result.lrs[-1])


class HeldOutFrom(TinyClassifier):
    """Its validation data are the first 128 training samples, ``flipped`` of their labels moved to another class."""

    def __init__(self, flipped: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.flipped = flipped

    def val_dataloader(self):
        x, y = make_dataset(self.hparams.n).tensors
        x, y = x[:128], y[:128].clone()
        moved = torch.arange(len(y)) < int(self.flipped * len(y))
        y[moved] = (y[moved] + 1) % 4
        return DataLoader(TensorDataset(x, y), batch_size=32)


@pytest.mark.parametrize(("flipped", "stuck"), [(0.0, False), (0.15, True)], ids=["clean", "harder"])
def test_a_trial_stuck_above_the_sweeps_lowest_loss_learned_nothing_and_the_search_goes_below_it(
    tmp_path, flipped, stuck
):
    """A trial that kept over half the start and ended no lower than the sweep's lowest loss learned nothing.

    The shape of a network collapsed to one output (Lightning's demo Transformer with Adam on the pick zoo); here made
    by held-out data much harder than the training data (15 % of their labels wrong), where every trial is stuck: the
    search goes below the LR of the sweep's lowest loss, and the least bad is installed with a warning.
    """
    sc = SuperConvergence(num_steps=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, HeldOutFrom(flipped, n=512), sc, limit_train_batches=1.0, max_epochs=4)
    result = sc.result
    start = start_level(result.losses, median_half_width(40))
    bottom = min(range(len(result.smoothed)), key=result.smoothed.__getitem__)
    low, low_lr = result.smoothed[bottom], result.lrs[bottom]
    peaks = [t["peak"] for t in result.trials]
    scores = [t["held_out_loss"] for t in result.trials]
    assert all(score >= low and start - score < 0.5 * start for score in scores[:3]) == stuck
    said = " ".join(str(w.message) for w in caught)
    assert ("no trial learned" in said) == stuck
    assert ("(stuck above the sweep's lowest)" in result.pick_reason) == stuck
    if stuck:
        # the ladder stuck: the next peak is half the LR of the sweep's lowest loss (or of the lowest rung, if lower)
        assert peaks[3] == pytest.approx(min(*peaks[:3], low_lr) / 2)
        assert sc.max_lr == peaks[scores.index(min(scores))]


# ------------------------------------------------------------------------------------------------ (4) exact restore


def _assert_same_training_state(a: L.Trainer, b: L.Trainer) -> None:
    _assert_tensor_dicts_equal(a.lightning_module.state_dict(), b.lightning_module.state_dict())
    _assert_optimizer_states_equal(a.optimizers[0].state_dict(), b.optimizers[0].state_dict())
    assert a.lr_scheduler_configs[0].scheduler.state_dict() == b.lr_scheduler_configs[0].scheduler.state_dict()
    assert (a.global_step, a.current_epoch) == (b.global_step, b.current_epoch)
    assert a.fit_loop.state_dict() == b.fit_loop.state_dict()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_range_test_then_fit_equals_fit_with_the_pick(tmp_path, optimizer):
    """Range test + fit ends bit-identical to fit with `max_lr=` the pick: BatchNorm, dropout, shuffle, warm SGD."""
    auto = SuperConvergence(num_steps=20)
    tested = _fit(tmp_path, _seeded(StatefulClassifier, optimizer=optimizer), auto)
    rng_after_tested = torch.get_rng_state()
    given = _fit(
        tmp_path, _seeded(StatefulClassifier, optimizer=optimizer), SuperConvergence(max_lr=auto.result.max_lr)
    )
    _assert_same_training_state(tested, given)
    assert torch.equal(rng_after_tested, torch.get_rng_state())


def test_range_test_restores_a_sampler_generator(tmp_path):
    """A sampler with its own `torch.Generator` shuffles the first epoch as if no range test had run."""
    auto = SuperConvergence(num_steps=20)
    tested = _fit(tmp_path, _seeded(GeneratorSamplerClassifier), auto)
    given = _fit(tmp_path, _seeded(GeneratorSamplerClassifier), SuperConvergence(max_lr=auto.result.max_lr))
    _assert_same_training_state(tested, given)


class RandomSubsetValidation(TinyClassifier):
    """Validates on a random subset that its `val_dataloader` draws from the global RNG, as each call builds it."""

    def __init__(self) -> None:
        super().__init__()
        self.subsets: list[torch.Tensor] = []

    def val_dataloader(self):
        subset = torch.randperm(64)[:48]
        self.subsets.append(subset)
        return DataLoader(torch.utils.data.Subset(make_dataset(64, seed=1), subset.tolist()), batch_size=16)


def test_a_val_dataloader_that_draws_a_random_subset_gives_the_trials_and_the_run_the_same_one(tmp_path):
    """The range test builds the validation loaders once more for its trials, with the global RNG streams put back.

    Found trying the package as a new user: the hook's draw stayed, so the trials scored one subset, the run
    validated on another, and the run's weights differed from a run given the pick.
    """
    validating = {"check_val_every_n_epoch": 1, "limit_val_batches": 2}
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    tested = _fit(tmp_path, _seeded(RandomSubsetValidation), auto, **validating)
    assert auto.result.trials, "the trials scored on the validation batches"
    given = _fit(tmp_path, _seeded(RandomSubsetValidation), SuperConvergence(max_lr=auto.result.max_lr), **validating)
    subsets = tested.lightning_module.subsets
    assert len(subsets) == len(given.lightning_module.subsets) + 1  # the trials' own call
    for subset in subsets:
        assert torch.equal(subset, given.lightning_module.subsets[0])
    _assert_same_training_state(tested, given)


class MomentumEncoder(TinyClassifier):
    """A key encoder kept in a list (out of the checkpoint, as MoCo-style code does), moved towards the model each step.

    Its BatchNorm statistics grow at every step too, and a layer registers its input statistics at its first forward.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys = [nn.Sequential(nn.Linear(16, 4), nn.BatchNorm1d(4))]

    def training_step(self, batch, batch_idx):
        x, y = batch
        if "center" not in self._buffers:  # a data-dependent initialisation, from the first batch
            self.register_buffer("center", x.detach().mean(0))
        x = x - self.center
        key = self.keys[0]
        with torch.no_grad():
            key[0].weight.mul_(0.9).add_(0.1 * self.net[0].weight[:4])
            target = key(x).softmax(-1)
        logits = self(x)
        return nn.functional.cross_entropy(logits, y) + nn.functional.cross_entropy(logits, target)


def test_a_key_encoder_kept_outside_the_module_tree_and_a_buffer_registered_late_come_back(tmp_path):
    """The run ends as one given the pick: the range test's updates to the list-held encoder and late buffer are gone.

    Found trying the package as a new user: a MoCo key encoder kept in a list kept the sweep's and every trial's
    updates (each trial started from the one before it), and statistics a layer registered at its first forward held
    the range test's first batch.
    """
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    tested = _fit(tmp_path, _seeded(MomentumEncoder), auto)
    given = _fit(tmp_path, _seeded(MomentumEncoder), SuperConvergence(max_lr=auto.result.max_lr))
    _assert_same_training_state(tested, given)
    _assert_tensor_dicts_equal(
        tested.lightning_module.keys[0].state_dict(), given.lightning_module.keys[0].state_dict()
    )


class DictGeneratorAndLateFreeze(TinyClassifier):
    """Noise from a generator kept in a dict; a first layer its `training_step` freezes at its own 30th call."""

    def __init__(self) -> None:
        super().__init__()
        self.gens = {"noise": torch.Generator().manual_seed(3)}
        self.calls = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.calls += 1
        if self.calls == 30:
            self.net[0].weight.requires_grad_(False)
        x = x + 0.3 * torch.randn(x.shape, generator=self.gens["noise"])
        return nn.functional.cross_entropy(self(x), y)


def test_a_generator_in_a_dict_and_requires_grad_come_back(tmp_path):
    """The run ends as one given the pick (found in a review: each made the runs differ from the first step).

    A generator in a dict came back advanced (only attributes were searched), and a layer frozen by the module's own
    counter came back frozen (the counter came back, `requires_grad` did not).
    """
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    tested = _fit(tmp_path, _seeded(DictGeneratorAndLateFreeze), auto)
    given = _fit(tmp_path, _seeded(DictGeneratorAndLateFreeze), SuperConvergence(max_lr=auto.result.max_lr))
    _assert_same_training_state(tested, given)
    assert tested.lightning_module.net[0].weight.requires_grad == given.lightning_module.net[0].weight.requires_grad


class OwnGeneratorNoise(TinyClassifier):
    """Adds noise from a `torch.Generator` and masks from a NumPy `Generator` the module holds as attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = torch.Generator().manual_seed(123)
        self.masks = np.random.default_rng(5)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x + 0.3 * torch.randn(x.shape, generator=self.noise)
        x = x * torch.from_numpy(self.masks.random(x.shape) > 0.1).float()
        return nn.functional.cross_entropy(self(x), y)


class AugmentingDataset(torch.utils.data.Dataset):
    """Jitters each sample with a `torch.Generator` of its own (read in the main process: `num_workers=0`)."""

    def __init__(self) -> None:
        self.data = make_dataset(128)
        self.jitter = torch.Generator().manual_seed(7)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        x, y = self.data[index]
        return x + 0.2 * torch.randn(x.shape, generator=self.jitter), y


class AugmentingData(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.dataset = torch.utils.data.Subset(AugmentingDataset(), list(range(128)))  # found through the wrapper too

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=32, shuffle=True)


@pytest.mark.parametrize("model_cls", [OwnGeneratorNoise, AugmentingData])
def test_generators_the_module_or_the_dataset_hold_come_back_after_the_range_test(tmp_path, model_cls):
    """Noise from a generator of the module's own, augmentation from a dataset's: the run draws as with `max_lr=`.

    Found trying the package as a new user: the range test left them advanced, and the weights differed.
    """
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    tested = _fit(tmp_path, _seeded(model_cls), auto)
    given = _fit(tmp_path, _seeded(model_cls), SuperConvergence(max_lr=auto.result.max_lr))
    _assert_same_training_state(tested, given)


class NormalizesInItsHook(TinyClassifier):
    """Dict batches, normalized in place by `on_before_batch_transfer` (Lightning's documented hook), or by the data."""

    def __init__(self, in_hook: bool) -> None:
        super().__init__()
        self.in_hook = in_hook

    def _loader(self, n: int, seed: int, shuffle: bool) -> DataLoader:
        x, y = make_dataset(n, seed=seed).tensors
        x = x * 3 + 1 if self.in_hook else x
        return DataLoader([{"x": x[i], "y": y[i]} for i in range(n)], batch_size=32, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader(256, 0, True)

    def val_dataloader(self):
        return self._loader(64, 1, False)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.in_hook:
            batch["x"] = (batch["x"] - 1) / 3
        return batch

    def training_step(self, batch, batch_idx):
        return super().training_step((batch["x"], batch.pop("y")), batch_idx)  # pops, as some steps do

    def validation_step(self, batch, batch_idx):
        return super().validation_step((batch["x"], batch["y"]), batch_idx)


def test_a_hook_or_step_that_changes_its_batch_in_place_leaves_every_trial_the_batches_the_loader_gave(tmp_path):
    """The trials score copies of the batches they keep: each trial is scored on the same batches as the first.

    Found trying the package as a new user: a hook normalizing `batch["x"]` in place scored the second trial on
    batches normalized twice, the third thrice (0.43, 0.91, 1.35), and the search stopped early; a step popping the
    targets left later trials unable to score at all.
    """
    results = []
    for in_hook in (False, True):
        callback = SuperConvergence(num_steps=20, trial_steps=50)
        L.seed_everything(0, verbose=False)
        model = NormalizesInItsHook(in_hook)
        L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=4)).fit(model)
        results.append(callback.result)
    plain, hooked = results
    assert len(plain.trials) >= 3
    assert [t["peak"] for t in hooked.trials] == [t["peak"] for t in plain.trials]
    assert [t["held_out_loss"] for t in hooked.trials] == pytest.approx([t["held_out_loss"] for t in plain.trials])
    assert hooked.max_lr == plain.max_lr


class CountsItsPasses(torch.utils.data.Sampler):
    """Orders the samples by the number of passes it has made (`self.passes += 1`), with no `set_epoch`."""

    def __init__(self, n: int) -> None:
        self.n, self.passes = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.passes += 1
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.passes)).tolist())


class CountingSamplerClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.sampler = CountsItsPasses(256)

    def train_dataloader(self):
        return DataLoader(make_dataset(256), batch_size=32, sampler=self.sampler)


def test_a_sampler_that_counts_its_own_passes_counts_only_the_run_s(tmp_path):
    """A sampler ordering its samples by its own count of passes: the range test's passes are not counted.

    Found trying the package as a new user: every pass the range test started advanced the count (18 against 3
    after the fit), so the run saw other orders than a run given the pick.
    """
    tested, given = _tested_and_given_whole_epochs(tmp_path, CountingSamplerClassifier)
    assert tested.lightning_module.sampler.passes == given.lightning_module.sampler.passes
    _assert_same_training_state(tested, given)


def _tested_and_given_whole_epochs(tmp_path, model_cls) -> tuple[L.Trainer, L.Trainer]:
    """A fit of whole epochs with the range test and its trials, and the same fit given its pick."""
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    tested = _fit(tmp_path, _seeded(model_cls), auto, limit_train_batches=1.0)
    assert auto.result.trials
    given = _fit(tmp_path, _seeded(model_cls), SuperConvergence(max_lr=auto.result.max_lr), limit_train_batches=1.0)
    return tested, given


class ShufflesItsListInPlace(CountsItsPasses):
    """Shuffles a list of indices it holds in place at each pass (`random.shuffle(self.indices)`)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.indices = list(range(n))

    def __iter__(self):
        random.shuffle(self.indices)
        return iter(list(self.indices))


class InPlaceShufflingClassifier(CountingSamplerClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.sampler = ShufflesItsListInPlace(256)


def test_a_sampler_that_shuffles_its_own_list_in_place_gets_its_order_back(tmp_path):
    """The list a sampler shuffles in place comes back in its order: the run sees the data order of a run without it.

    Found in a review: the range test's last pass left the list in its own order, and the run's first batch and its
    final weights differed from a run given the pick, the global RNG put back notwithstanding.
    """
    tested, given = _tested_and_given_whole_epochs(tmp_path, InPlaceShufflingClassifier)
    assert tested.lightning_module.sampler.indices == given.lightning_module.sampler.indices
    _assert_same_training_state(tested, given)


class InferenceWeightedClassifier(TinyClassifier):
    """Draws its batches by weights computed under `torch.inference_mode()` (class frequencies, say)."""

    def train_dataloader(self):
        with torch.inference_mode():
            weights = torch.rand(256, dtype=torch.float64) + 0.1
        sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=256)
        return DataLoader(make_dataset(256), batch_size=32, sampler=sampler)


def test_a_sampler_holding_inference_tensors_trains(tmp_path):
    """Found in a review: a first version of the restore of samplers' orders wrote into such weights, and failed."""
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    trainer = _fit(tmp_path, _seeded(InferenceWeightedClassifier), auto, limit_train_batches=1.0)
    assert auto.result.trials
    assert trainer.global_step == 16


class CountingDataModule(L.LightningDataModule):
    """Counts the batches its `on_before_batch_transfer` sees, and keeps the last one's size in a new attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.transferred = 0

    def train_dataloader(self):
        return DataLoader(make_dataset(256), batch_size=32, shuffle=True)

    def val_dataloader(self):
        return DataLoader(make_dataset(64, seed=1), batch_size=32)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.transferred += 1
        self.last_size = len(batch[0])
        return batch


def test_what_a_datamodule_s_hooks_record_in_the_range_test_comes_back(tmp_path):
    """A datamodule's count of the batches it transferred, and an attribute it set, are those of the run alone.

    Found in a review: the count read 28 after a fit of 8 steps; the module's own counters came back, the datamodule's
    did not.
    """
    datamodule = CountingDataModule()
    callback = SuperConvergence(num_steps=20, trial_steps=50)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=0)
    )
    trainer.fit(_seeded(TinyClassifier), datamodule=datamodule)
    assert callback.result is not None
    assert callback.result.trials
    assert datamodule.transferred == 8
    assert datamodule.last_size == 32


class CountingStream(torch.utils.data.IterableDataset):
    """A stream whose position its dataset keeps in a number (a resumable stream's cursor), read as it yields."""

    def __init__(self) -> None:
        self.count = 0
        x, y = make_dataset(4096).tensors
        self.x, self.y = x, y

    def sample(self, k: int):
        return self.x[k % 4096], self.y[k % 4096], torch.tensor(k)

    def __iter__(self):
        while True:
            self.count += 1
            yield self.sample(self.count - 1)


class CountingStreamClassifier(TinyClassifier):
    """Trains on a `CountingStream` read in the main process; records the first sample of each training step."""

    def __init__(self) -> None:
        super().__init__()
        self.stream = CountingStream()
        self.firsts: list[int] = []

    def train_dataloader(self):
        return DataLoader(self.stream, batch_size=16)

    def on_train_batch_start(self, batch, batch_idx):  # real training steps only: the range test calls no batch hook
        self.firsts.append(int(batch[2][0]))

    def training_step(self, batch, batch_idx):
        return super().training_step(batch[:2], batch_idx)  # the trials score it on validation batches too


def test_a_stream_whose_dataset_keeps_its_position_goes_on_where_the_run_was(tmp_path):
    """A dataset's numbers come back after the range test: the run reads the stream as it would have without it.

    Found trying the package as a new user: read in the main process, a stream that counts its position on itself
    gave the range test's sweep and trials 6,304 samples, and training's second batch began at sample 6,320.
    """
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    kwargs = {"max_steps": 12, "max_epochs": None, "limit_train_batches": None}
    tested = _fit(tmp_path, tested_model := _seeded(CountingStreamClassifier), auto, **kwargs)
    assert auto.result.trials
    given = _fit(
        tmp_path, given_model := _seeded(CountingStreamClassifier), SuperConvergence(max_lr=auto.result.max_lr),
        **kwargs,
    )  # fmt: skip
    assert tested_model.firsts == [16 * step for step in range(12)]
    assert tested_model.firsts == given_model.firsts
    _assert_same_training_state(tested, given)


def test_find_max_lr_leaves_a_stream_whose_dataset_keeps_its_position_where_it_was(tmp_path):
    """`find_max_lr` puts a stream's count back: a fit after it starts at the stream's first sample."""
    from lightning_superconv import find_max_lr

    model = _seeded(CountingStreamClassifier)
    loader = model.train_dataloader()
    find_max_lr(model, loader, num_steps=20, trial_steps=0, trainer_kwargs={"default_root_dir": tmp_path})
    assert model.stream.count == 0


class SourceStream(CountingStream):
    """A resumable stream that reads a source it holds (an open file's lines) and counts what it read."""

    def __init__(self) -> None:
        super().__init__()
        self.source = iter(range(10**9))

    def __iter__(self):
        for k in self.source:
            self.count += 1
            yield self.sample(k)


class SourceStreamClassifier(CountingStreamClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.stream = SourceStream()  # in place of the counting one


def test_a_stream_that_reads_a_source_it_holds_keeps_its_count_with_it_and_is_warned_of(tmp_path):
    """A source cannot be rewound: the stream's count stays where the source is, and a warning says what happened.

    Found in a review: with the count put back, it no longer said where the source stood, and a resume from a
    checkpoint (which saves the count) went back 304 samples.
    """
    said = (
        r"read from `SourceStream.source`, a source your dataset holds .*cannot be rewound: training goes on after "
        r"what it read\. Open the source in the dataset's `__iter__`"
    )
    model = _seeded(SourceStreamClassifier)
    kwargs = {"max_steps": 6, "max_epochs": None, "limit_train_batches": None}
    with pytest.warns(RuntimeWarning, match=said):
        _fit(tmp_path, model, SuperConvergence(num_steps=20, trial_steps=0), **kwargs)
    assert model.firsts[0] == 0
    assert model.firsts[1] > 16  # the range test read from the source in between
    assert model.stream.count == next(model.stream.source)  # the count says where the source is


class OpensItsSourceEachPass(torch.utils.data.IterableDataset):
    """A stream that opens its source in each `__iter__` and keeps it on itself, as the warning below advises."""

    def __init__(self) -> None:
        x, y = make_dataset(4096).tensors
        self.samples = [(x[k], y[k], torch.tensor(k)) for k in range(4096)]
        self.source = None

    def __iter__(self):
        self.source = (sample for sample in self.samples)
        return self.source


def test_a_stream_that_opens_its_source_in_each_pass_is_not_warned_of(tmp_path, recwarn):
    """Each pass reads its own source: the run's starts at the beginning, and nothing is said.

    Found in a review: a first version of the warning below took the source the range test had left on the dataset
    for the run's.
    """
    model = _seeded(CountingStreamClassifier)
    model.stream = OpensItsSourceEachPass()
    _fit(tmp_path, model, SuperConvergence(num_steps=20, trial_steps=0), max_steps=6, max_epochs=None,
         limit_train_batches=None)  # fmt: skip
    assert not [w for w in recwarn if "cannot be rewound" in str(w.message)]
    assert model.firsts == [16 * step for step in range(6)]


class HeldGeneratorStream(torch.utils.data.IterableDataset):
    """A stream that returns, at each pass, the one iterator it holds (a source read once, with no count of its own)."""

    def __init__(self, kind: str) -> None:
        x, y = make_dataset(4096).tensors
        samples = [(x[k], y[k], torch.tensor(k)) for k in range(4096)]
        self.source = (sample for sample in samples) if kind == "generator" else iter(samples)

    def __iter__(self):
        return self.source


@pytest.mark.parametrize("kind", ["generator", "list iterator"])
def test_a_stream_that_returns_an_iterator_it_holds_is_warned_of(tmp_path, kind):
    """A held generator or iterator tells no position: read by the range test, it is said to have moved.

    Found trying the package as a new user: a stream returning a generator it held was read 85 batches on without a
    word, and a run on a stream that can be read once trained 15 of its 100 steps.
    """
    model = _seeded(CountingStreamClassifier)
    model.stream = HeldGeneratorStream(kind)
    kwargs = {"max_steps": 6, "max_epochs": None, "limit_train_batches": None}
    with pytest.warns(RuntimeWarning, match=r"read from `HeldGeneratorStream.source`, a source your dataset holds"):
        _fit(tmp_path, model, SuperConvergence(num_steps=20, trial_steps=0), **kwargs)
    assert model.firsts[1] > 16  # the range test read from the source after the batch Lightning's loop fetched first


class SlotCache(torch.utils.data.Dataset):
    """A map-style dataset that caches each sample in the next free slot of a buffer, and keeps which slot holds it."""

    def __init__(self) -> None:
        self.x, self.y = make_dataset(256).tensors
        self.buffer = torch.empty_like(self.x)
        self.slot: dict[int, int] = {}
        self.filled = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        if index not in self.slot:
            self.buffer[self.filled] = self.x[index]
            self.slot[index], self.filled = self.filled, self.filled + 1
        return self.buffer[self.slot[index]], self.y[index], index


class SlotCacheClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.data, self.wrong = SlotCache(), 0

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=32, shuffle=True)

    def training_step(self, batch, batch_idx):
        x, y, *index = batch
        if index:
            self.wrong += int((x != self.data.x[index[0]]).any(dim=1).sum())
        return super().training_step((x, y), batch_idx)


def test_a_map_style_dataset_s_numbers_are_its_own(tmp_path):
    """A map-style dataset's numbers may index what it caches: they stay as the range test left them.

    Found in a review: a cache's next free slot put back, with its index of slots kept, handed training other samples.
    """
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    _fit(tmp_path, model := _seeded(SlotCacheClassifier), auto, limit_train_batches=1.0)
    assert auto.result.trials
    assert model.data.filled == len(model.data.slot) == 256
    assert model.wrong == 0


class StatefulLoaderClassifier(TinyClassifier):
    """Trains from torchdata's `StatefulDataLoader`; records the position it would save at each training step."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[int] = []

    def train_dataloader(self):
        from torchdata.stateful_dataloader import StatefulDataLoader

        self.loader = StatefulDataLoader(make_dataset(256), batch_size=16)
        return self.loader

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.saved.append(self.loader.state_dict()["_num_yielded"])


def test_a_stateful_loader_saves_the_run_s_position_not_the_range_test_s(tmp_path):
    """A `StatefulDataLoader` keeps the latest iterator it handed out: the range test reads a copy of its own.

    Found trying the package as a new user: every checkpoint held the last trial's position in the stream, and a
    resume from one written at step 60 skipped 40 batches.
    """
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    tested = _fit(tmp_path, tested_model := _seeded(StatefulLoaderClassifier), auto, limit_train_batches=8)
    assert auto.result.trials
    given = _fit(
        tmp_path, given_model := _seeded(StatefulLoaderClassifier), SuperConvergence(max_lr=auto.result.max_lr),
        limit_train_batches=8,
    )  # fmt: skip
    assert tested_model.saved[:8] == list(range(1, 9))
    assert tested_model.saved == given_model.saved
    _assert_same_training_state(tested, given)


@dataclasses.dataclass(frozen=True)
class FrozenBatch:
    """A batch type of the user's, frozen, with its own `to()` (Lightning moves it whole)."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device):
        return FrozenBatch(self.x.to(device), self.y.to(device))


class FrozenBatches(TinyClassifier):
    def _loader(self, n: int, seed: int) -> DataLoader:
        x, y = make_dataset(n, seed=seed).tensors
        pairs = list(zip(x, y, strict=True))
        collate = lambda items: FrozenBatch(torch.stack([a for a, _ in items]), torch.stack([b for _, b in items]))  # noqa: E731
        return DataLoader(pairs, batch_size=32, collate_fn=collate)

    def train_dataloader(self):
        return self._loader(256, 0)

    def val_dataloader(self):
        return self._loader(64, 1)

    def training_step(self, batch, batch_idx):
        return super().training_step((batch.x, batch.y), batch_idx)


def test_the_trials_score_a_frozen_dataclass_batch_as_copies(tmp_path):
    """Each trial's copy of the kept batches: a frozen dataclass, which cannot be rebuilt field by field, is copied."""
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    _fit(tmp_path, _seeded(FrozenBatches), auto)
    assert len(auto.result.trials) >= 3
    assert all(math.isfinite(t["held_out_loss"]) for t in auto.result.trials)


def test_a_shuffled_validation_loader_validates_in_the_order_it_would_without_the_range_test(tmp_path):
    """The trials score on the validation loader: its generator comes back, so the run validates as with `max_lr=`.

    Found trying the package as a new user: with `limit_val_batches` the run's `val_loss` (and so `ModelCheckpoint`
    and `EarlyStopping`) changed, its validation order one epoch ahead of a run given the pick.
    """
    validating = {"check_val_every_n_epoch": 1, "limit_val_batches": 2, "max_epochs": 3}
    auto = SuperConvergence(num_steps=20, trial_steps=50)
    tested = _fit(tmp_path, _seeded(ShuffledValidation), auto, **validating)
    assert auto.result.trials, "the trials scored on the validation batches"
    given = _fit(tmp_path, _seeded(ShuffledValidation), SuperConvergence(max_lr=auto.result.max_lr), **validating)
    seen, seen_given = tested.lightning_module.first_val_targets, given.lightning_module.first_val_targets
    assert len(seen) == 3
    for a, b in zip(seen, seen_given, strict=True):
        assert torch.equal(a, b)
    _assert_same_training_state(tested, given)


def test_user_self_log_reaches_the_logger_at_real_steps_only(tmp_path):
    """`self.log` in `training_step` gives the logger one row per real step (steps 0..N-1), none for the range test."""
    logger = CSVLogger(tmp_path)
    trainer = _fit(tmp_path, TinyClassifier(), SuperConvergence(num_steps=20), logger=logger, log_every_n_steps=1)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("train_loss")]
    assert len(rows) == trainer.global_step
    assert [int(row["step"]) for row in rows] == list(range(trainer.global_step))


def test_range_test_losses_do_not_enter_the_epoch_mean(tmp_path):
    """An `on_epoch=True` metric logged in `training_step` averages the real steps only."""

    class EpochLogging(TinyClassifier):
        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("epoch_loss", loss, on_step=False, on_epoch=True)
            return loss

    counter = HookCounter()
    trainer = _fit(tmp_path, EpochLogging(), SuperConvergence(num_steps=20), callbacks=[counter], max_epochs=1)
    assert len(counter.losses) == trainer.global_step == 4
    expected = sum(counter.losses) / len(counter.losses)
    assert float(trainer.callback_metrics["epoch_loss"]) == pytest.approx(expected, rel=1e-6)


def test_other_callbacks_see_only_training_steps(tmp_path):
    """Other callbacks' batch, backward and optimizer-step hooks fire once per real training step only."""
    counter = HookCounter()
    callback = SuperConvergence(num_steps=20)
    trainer = _fit(tmp_path, TinyClassifier(), callback, callbacks=[counter])
    assert len(callback.result.lrs) > 0
    assert counter.counts == dict.fromkeys(HookCounter.HOOKS, trainer.global_step)


def _assert_restored_to(snapshot: FitStartSnapshot, trainer: L.Trainer) -> None:
    _assert_tensor_dicts_equal(trainer.lightning_module.state_dict(), snapshot.model)
    _assert_optimizer_states_equal(trainer.optimizers[0].state_dict(), snapshot.optimizer)
    assert torch.equal(torch.get_rng_state(), snapshot.rng)


def test_exception_in_range_test_propagates_with_state_restored(tmp_path):
    """An error on the 5th range-test step reaches the caller, with model, optimizer and RNG as at fit start."""
    snapshot = FitStartSnapshot()
    model = FailingClassifier(fail_at=5, error=RuntimeError("boom in training_step"))
    trainer = L.Trainer(callbacks=[snapshot, SuperConvergence(num_steps=20)], **trainer_kwargs(tmp_path))
    with pytest.raises(RuntimeError, match="boom in training_step"):
        trainer.fit(model)
    assert model.calls == 5
    _assert_restored_to(snapshot, trainer)


def test_keyboard_interrupt_in_range_test_restores_state(tmp_path, sigint_handler):
    """Ctrl-C during the range test: Lightning's graceful shutdown exits, with the state as at fit start."""
    snapshot = FitStartSnapshot()
    model = FailingClassifier(fail_at=5, error=KeyboardInterrupt())
    trainer = L.Trainer(callbacks=[snapshot, SuperConvergence(num_steps=20)], **trainer_kwargs(tmp_path))
    with pytest.raises(SystemExit):
        trainer.fit(model)
    assert model.calls == 5
    _assert_restored_to(snapshot, trainer)


def test_nan_loss_from_the_first_step_fails_with_advice(tmp_path):
    """A loss that is NaN from the start fails at fit start, says what to do, and restores the state."""
    snapshot = FitStartSnapshot()
    trainer = L.Trainer(callbacks=[snapshot, SuperConvergence(num_steps=20)], **trainer_kwargs(tmp_path))
    with pytest.raises(
        MisconfigurationException, match=r"non-finite.*`training_step`.*lr_range.*SuperConvergence\(max_lr="
    ):
        trainer.fit(NaNClassifier())
    _assert_restored_to(snapshot, trainer)


def test_loss_that_never_falls_fails_with_advice(tmp_path):
    """A flat curve has no floor to read: fit fails saying what to check, with the state restored."""
    snapshot = FitStartSnapshot()
    trainer = L.Trainer(callbacks=[snapshot, SuperConvergence(num_steps=10)], **trainer_kwargs(tmp_path))
    with pytest.raises(MisconfigurationException, match=r"no usable maximum LR.*`SuperConvergence\(max_lr=\.\.\.\)`"):
        trainer.fit(FlatClassifier())
    _assert_restored_to(snapshot, trainer)


# ------------------------------------------------------------------------------------------------ (5) the schedule


@pytest.mark.parametrize("max_lr", [None, 0.3])
def test_installed_scheduler_is_a_stepwise_one_cycle_sized_to_the_run(tmp_path, max_lr):
    """A torch OneCycleLR stepped every optimizer step, over `estimated_stepping_batches` steps."""
    callback = SuperConvergence(max_lr=max_lr, num_steps=10)
    trainer = _fit(tmp_path, TinyClassifier(), callback, limit_train_batches=5)
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, OneCycleLR)
    assert config.scheduler.optimizer is trainer.optimizers[0]
    assert (config.interval, config.frequency) == ("step", 1)
    assert config.scheduler.total_steps == trainer.estimated_stepping_batches == 10
    assert callback.total_steps == 10


def _reference_cycle(max_lrs: list[float], total_steps: int, momentum: float = 0.9, **kwargs):
    """LR (per group) and momentum at each step of a torch OneCycleLR stepped by hand."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0} for _ in max_lrs]
    optimizer = torch.optim.SGD(groups, lr=1.0, momentum=momentum)
    scheduler = OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total_steps, **kwargs)
    lrs, momenta = [], []
    for _ in range(total_steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs, momenta


def test_lr_follows_torch_one_cycle_at_every_training_step(tmp_path):
    """The LR each training step uses is that of a torch OneCycleLR with the pick, stepped by hand."""
    recorder = ScheduleRecorder()
    callback = SuperConvergence(num_steps=15, pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    trainer = _fit(tmp_path, TinyClassifier(), callback, callbacks=[recorder], limit_train_batches=5)
    expected, _ = _reference_cycle([callback.max_lr], 10, pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    assert trainer.global_step == 10
    assert [lr for (lr,) in recorder.lrs] == pytest.approx([lr for (lr,) in expected], rel=1e-12)


def test_momentum_cycles_inversely_at_every_training_step(tmp_path):
    """SGD momentum follows torch's cycle 0.95 -> 0.85 -> 0.95 during training."""
    recorder = ScheduleRecorder()
    _fit(tmp_path, TinyClassifier(), SuperConvergence(max_lr=0.3), callbacks=[recorder], limit_train_batches=5)
    _, expected = _reference_cycle([0.3], 10)
    assert recorder.momenta == pytest.approx(expected, rel=1e-12)
    assert max(recorder.momenta) == pytest.approx(0.95)
    assert min(recorder.momenta) == pytest.approx(0.85)


def test_trials_on_data_that_can_be_read_only_once_stop_with_a_warning(tmp_path):
    """A one-shot stream ran out in the trials: each trained on fewer batches, and the last on none, all compared.

    Found in a review: the trials left without a batch scored the untrained model, the same at every peak, and the
    warning blamed an EMA; now the trials stop, the pick is the sweep's alone, and the warning names the data.
    """
    callback = SuperConvergence(num_steps=20)
    with pytest.warns(RuntimeWarning, match=r"ran out after \d+ of a branch's \d+ steps .* in the range test's trials"):
        _fit(tmp_path, OneShotClassifier(n=8 * 60), callback, max_steps=40, max_epochs=1, limit_train_batches=None)
    assert callback.result.trials == []
    assert "a quarter of it (the train data ran out in the trials)" in callback.result.pick_reason


def test_a_three_phase_warm_up_under_two_steps_is_lengthened_to_two_with_a_warning(tmp_path):
    """Torch's three-phase cycle with a warm-up under 2 steps never neared the peak: the run's warm-up is 2 steps.

    Found in a review: 100 steps at ``pct_start=0.01`` ran at a 25th of ``max_lr`` at most, said to peak at it.
    """
    recorder = ScheduleRecorder()
    callback = SuperConvergence(max_lr=0.3, three_phase=True, pct_start=0.05)
    with pytest.warns(RuntimeWarning, match=r"`three_phase=True` with `pct_start=0.05` .* warm-up is 2 steps"):
        _fit(tmp_path, TinyClassifier(), callback, callbacks=[recorder], limit_train_batches=5)
    assert max(lr for (lr,) in recorder.lrs) == pytest.approx(0.3)
    quiet = SuperConvergence(max_lr=0.3, three_phase=True, pct_start=0.2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, TinyClassifier(), quiet, limit_train_batches=5)
    assert not [w for w in record if "three_phase" in str(w.message)]


@pytest.mark.parametrize("trial_steps", [None, 0])
def test_the_range_test_says_what_it_will_take_as_it_starts(tmp_path, caplog, trial_steps):
    """Found trying the package as a new user: a fit sat silent for 19 s before the range test's result.

    The line comes before the pick's, with the sweep's longest (``num_steps`` and half as many again) and the trials'.
    """
    callback = SuperConvergence(num_steps=40, trial_steps=trial_steps)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        _fit(tmp_path, TinyClassifier(), callback)
    messages = [record.getMessage() for record in caplog.records]
    start = next(i for i, m in enumerate(messages) if m.startswith("SuperConvergence: running the LR range test"))
    picked = next(i for i, m in enumerate(messages) if m.startswith("SuperConvergence: range test picked"))
    assert start < picked
    trials = "then up to 5 trial cycles of 100 steps (up to 8 where none of them learns)"
    trials = trials if trial_steps is None else "and no trials (`trial_steps=0`)"
    assert f"a sweep of up to 60 steps, {trials}" in messages[start]


def test_user_scheduler_is_replaced_with_a_message_naming_both(tmp_path, caplog):
    """A StepLR from `configure_optimizers` gives way to OneCycleLR, and the info message names both."""
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer = _fit(tmp_path, TinyClassifier(scheduler="step"), SuperConvergence(max_lr=0.3))
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, OneCycleLR)
    messages = [record.getMessage() for record in caplog.records]
    assert any("`StepLR`" in m and "`OneCycleLR`" in m for m in messages), messages


def test_the_replacing_cycle_keeps_the_name_of_the_scheduler_it_replaces(tmp_path):
    """``LearningRateMonitor`` logs the LR under the scheduler's ``name``: the same key with the cycle installed.

    Found trying the package as a new user: the key went from ``my_lr`` to ``lr-SGD``, so dashboards lost the curve.
    """
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    monitor = LearningRateMonitor(logging_interval="step")
    trainer = _fit(
        tmp_path, TinyClassifier(scheduler="named"), SuperConvergence(max_lr=0.3), callbacks=[monitor],
        logger=CSVLogger(tmp_path),
    )  # fmt: skip
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, OneCycleLR)
    assert config.name == "my_lr"
    assert list(monitor.lrs) == ["my_lr"]


class EpochSteppedScheduler:
    """A scheduler of the timm kind: ``step(epoch)``, which Lightning steps only through ``lr_scheduler_step``."""

    def __init__(self, optimizer) -> None:
        self.optimizer = optimizer

    def step(self, epoch=None) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = 0.01 * 0.5 ** (epoch or 0)

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass


class EpochSteppingClassifier(TinyClassifier):
    """Its own scheduler and the ``lr_scheduler_step`` override Lightning requires for it: ``step(epoch=...)``."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": EpochSteppedScheduler(optimizer)}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step(epoch=self.current_epoch)


def test_an_lr_scheduler_step_override_passing_the_epoch_steps_the_cycle_once_per_call(tmp_path):
    """Through the module's override the cycle still advances one step per optimizer step, with one warning."""
    plain, overriding = ScheduleRecorder(), ScheduleRecorder()
    _fit(tmp_path / "plain", TinyClassifier(), SuperConvergence(max_lr=0.3), callbacks=[plain], max_epochs=2)
    with pytest.warns(RuntimeWarning, match=r"stepped with `epoch=0`.*one optimizer step per call") as caught:
        _fit(
            tmp_path / "override", EpochSteppingClassifier(), SuperConvergence(max_lr=0.3), callbacks=[overriding],
            max_epochs=2,
        )  # fmt: skip
    assert sum("stepped with `epoch=" in str(w.message) for w in caught) == 1
    assert overriding.lrs == plain.lrs
    expected, _ = _reference_cycle([0.3], 8)  # torch's own cycle over the run's 4 x 2 steps
    assert [lr for (lr,) in overriding.lrs] == pytest.approx([lr for (lr,) in expected], rel=1e-12)


class UpdateSteppedScheduler(EpochSteppedScheduler):
    """timm's per-update kind: ``step_update(num_updates)``, called at each optimizer step."""

    def step_update(self, num_updates, metric=None) -> None:
        self.step(num_updates // 4)


class UpdateSteppingClassifier(TinyClassifier):
    """timm's documented per-step idiom: ``scheduler.step_update(num_updates=self.global_step)``."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)
        scheduler = UpdateSteppedScheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.global_step)


def test_an_lr_scheduler_step_override_calling_timm_s_step_update_steps_the_cycle_once_per_call(tmp_path):
    """Found trying the package as a new user: an `AttributeError` (no `step_update`) after the whole range test."""
    plain, overriding = ScheduleRecorder(), ScheduleRecorder()
    _fit(tmp_path / "plain", TinyClassifier(), SuperConvergence(max_lr=0.3), callbacks=[plain], max_epochs=2)
    _fit(tmp_path / "timm", UpdateSteppingClassifier(), SuperConvergence(max_lr=0.3), callbacks=[overriding],
         max_epochs=2)  # fmt: skip
    assert overriding.lrs == plain.lrs


class StepsTheCycle(TinyClassifier):
    """An `lr_scheduler_step` override that steps the scheduler `per_call` times per call (0: never)."""

    def __init__(self, per_call: int) -> None:
        super().__init__()
        self.per_call = per_call

    def lr_scheduler_step(self, scheduler, metric) -> None:
        for _ in range(self.per_call):
            scheduler.step()


@pytest.mark.parametrize(("per_call", "stepped"), [(0, 0), (2, 8)])
def test_an_override_that_steps_the_cycle_other_than_once_per_step_is_said_so_at_the_first_epoch_s_end(
    tmp_path, per_call, stepped
):
    """A warning names the override; the end of the run blames no epochs shorter than planned.

    Found trying the package as a new user: a no-op override left the LR at the cycle's start for the whole run;
    the only message, at its end, blamed epochs shorter than planned.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, StepsTheCycle(per_call), SuperConvergence(max_lr=0.3), max_epochs=2)
    said = [str(w.message) for w in caught if "SuperConvergence" in str(w.message)]
    assert len([m for m in said if f"was stepped {stepped} times in the 4 optimizer steps" in m]) == 1
    assert not [m for m in said if "epochs came out shorter" in m]


def test_param_group_ratios_are_kept_in_the_cycle(tmp_path):
    """Groups configured at 0.01 and 0.001 peak at `max_lr` and `max_lr / 10` and keep 10:1 at every step."""
    recorder = ScheduleRecorder()
    _fit(tmp_path, TwoGroupClassifier(), SuperConvergence(max_lr=0.5), callbacks=[recorder], limit_train_batches=5)
    first, second = zip(*recorder.lrs, strict=True)
    assert max(first) == pytest.approx(0.5, rel=1e-12)
    assert max(second) == pytest.approx(0.05, rel=1e-12)
    assert [b / a for a, b in zip(first, second, strict=True)] == pytest.approx([0.1] * len(first), rel=1e-9)


def test_param_group_ratios_are_kept_in_the_range_test(tmp_path):
    """During the sweep the first group runs at the swept LR and the second at a tenth of it."""
    model = TwoGroupClassifier()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    _fit(tmp_path, model, callback)
    swept = model.step_lrs[: len(callback.result.lrs)]
    assert [first for first, _ in swept] == pytest.approx(callback.result.lrs, rel=1e-12)
    assert [second for _, second in swept] == pytest.approx([0.1 * lr for lr in callback.result.lrs], rel=1e-12)


def test_sgd_without_momentum_keeps_none(tmp_path):
    """An SGD built with momentum=0 trains with momentum 0 at every step, range test included."""
    recorder = ScheduleRecorder()
    trainer = _fit(tmp_path, TinyClassifier(momentum=0.0), SuperConvergence(num_steps=10), callbacks=[recorder])
    assert recorder.momenta == [0.0] * trainer.global_step
    assert all(state.get("momentum_buffer") is None for state in trainer.optimizers[0].state.values())


class GroupMomenta(Callback):
    """Records every param group's momentum as each real training step sees it."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.append([group["momentum"] for group in trainer.optimizers[0].param_groups])


def _head_without_momentum(params):
    params = list(params)
    return torch.optim.SGD(
        [{"params": params[:-2], "momentum": 0.9}, {"params": params[-2:], "momentum": 0.0}], lr=0.05
    )


@pytest.mark.parametrize("cycle_momentum", [None, True])
def test_a_group_built_without_momentum_keeps_none_beside_groups_that_cycle(tmp_path, caplog, cycle_momentum):
    """A head at ``momentum=0`` beside a body at 0.9: the body cycles, the head keeps none (unless asked to cycle).

    Found trying the package as a new user: every group cycled 0.95 -> 0.85 -> 0.95, the head too, and nothing said so.
    """
    recorder = GroupMomenta()
    callback = SuperConvergence(num_steps=10, cycle_momentum=cycle_momentum)
    with caplog.at_level(logging.INFO):
        trainer = _fit(tmp_path, WithOptimizer(_head_without_momentum), callback, callbacks=[recorder])
    body, head = zip(*recorder.rows, strict=True)
    assert len(body) == trainer.global_step
    assert max(body) == pytest.approx(0.95)
    assert min(body) < 0.9  # cycles
    head_params = trainer.optimizers[0].param_groups[1]["params"]
    if cycle_momentum is None:
        assert set(head) == {0.0}
        assert all("momentum_buffer" not in trainer.optimizers[0].state[p] for p in head_params)
        assert "param group 1, built without momentum, keeps none" in caplog.text
    else:
        assert head == body
        assert "keeps none" not in caplog.text


def test_a_cycle_between_momenta_of_0_is_not_said_to_keep_a_group_without_momentum(tmp_path, caplog):
    """The log names groups built without momentum, not groups the cycle's own bounds hold at 0 (found in review)."""
    callback = SuperConvergence(max_lr=0.1, base_momentum=0.0, max_momentum=0.0)
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, TinyClassifier(), callback)
    assert "momentum cycling: momentum 0 -> 0 -> 0, configured 0.9)" in caplog.text
    assert "built without momentum" not in caplog.text


# ------------------------------------------------------------------------------------------------ (6) (7) (8)


@pytest.mark.parametrize(
    ("optimizer", "said"),
    [
        ("sgd", "max_lr=0.3 (30x the configured lr=0.01) over 8 steps (momentum cycling: momentum 0.95 -> 0.85 -> "
         "0.95, configured 0.9)."),
        ("adamw", "max_lr=0.3 (30x the configured lr=0.01) over 8 steps (momentum cycling: beta1 0.95 -> 0.85 -> "
         "0.95, configured 0.9)."),
    ],
)  # fmt: skip
def test_the_install_line_says_the_peak_against_the_configured_lr_and_the_momentum_it_cycles(
    tmp_path, caplog, optimizer, said
):
    """The peak against the optimizer's own LR, and the momentum (or beta1) the cycle runs against the configured one.

    Found trying the package as a new user: a fine-tuning recipe's peak came out 91x its own LR and its beta1 cycled
    from 0.95, where it had 0.9; the line said "(momentum cycling)", and only a sum told the ratio.
    """
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, TinyClassifier(optimizer=optimizer), SuperConvergence(max_lr=0.3))
    assert f"SuperConvergence: `OneCycleLR` installed, {said}" in caplog.text


def test_the_install_line_names_no_configured_momentum_a_users_cycle_overwrote_and_reads_the_cycling_group(
    tmp_path, caplog
):
    """Torch's `OneCycleLR` writes its own momentum when built: the configured one is gone, and not said.

    Found in a review: "configured 0.95" of a user's 0.9; "configured 0" read off a first group built without momentum,
    beside groups at 0.9 that cycle. A ratio of hundreds or more is said in whole numbers ("6e+03x" before).
    """

    def own_cycle(params):
        optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": OneCycleLR(optimizer, max_lr=0.01, total_steps=100)}

    def first_without(params):
        params = list(params)
        return torch.optim.SGD([{"params": params[:2], "momentum": 0.0}, {"params": params[2:]}], lr=5e-5, momentum=0.9)

    lines = []
    for build in (own_cycle, first_without):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            _fit(tmp_path, WithOptimizer(build), SuperConvergence(max_lr=0.3))
        lines.append(next(r.getMessage() for r in caplog.records if "installed" in r.getMessage()))
    assert "(30x the configured lr=0.01)" in lines[0]  # the user's cycle's peak
    assert lines[0].endswith("(momentum cycling: momentum 0.95 -> 0.85 -> 0.95).")
    assert "(6000x the configured lr=5e-05)" in lines[1]
    assert "momentum 0.95 -> 0.85 -> 0.95, configured 0.9; param group 0, built without momentum" in lines[1]


def test_given_max_lr_skips_the_range_test(tmp_path):
    """`max_lr=0.3` runs no range-test step, records no result and peaks the cycle at 0.3."""
    model, recorder = CountingClassifier(), ScheduleRecorder()
    callback = SuperConvergence(max_lr=0.3)
    trainer = _fit(tmp_path, model, callback, callbacks=[recorder], limit_train_batches=5)
    assert callback.result is None
    assert model.calls == trainer.global_step == 10
    assert callback.max_lr == 0.3
    assert max(lrs[0] for lrs in recorder.lrs) == pytest.approx(0.3, rel=1e-12)


def test_pick_does_not_depend_on_the_configured_lr_unless_no_trial_of_the_search_learned(tmp_path):
    """Configured LR 1e-4 or 1e-1: the same curve and the same search, bit for bit; the LR enters after it, if at all.

    This model's held-out loss rises in every trial of the search (its 256 samples are overfitted in 100 steps), so
    none learned and the trials went on from each configured LR: 1e-4, the least bad, is the pick of its run.
    """
    low, high = SuperConvergence(num_steps=20), SuperConvergence(num_steps=20)
    _fit(tmp_path, _seeded(TinyClassifier, lr=1e-4), low, max_epochs=1)
    _fit(tmp_path, _seeded(TinyClassifier, lr=1e-1), high, max_epochs=1)
    assert low.result.lrs == high.result.lrs
    assert low.result.losses == high.result.losses
    assert low.result.trials[:5] == high.result.trials[:5]
    assert [low.result.trials[5]["peak"], high.result.trials[5]["peak"]] == [1e-4, 1e-1]
    assert low.max_lr == 1e-4


def test_result_plot_returns_a_matplotlib_figure():
    """`RangeTestResult.plot()` draws the curve and returns the Figure."""
    from matplotlib.figure import Figure

    lrs = lr_sweep(1e-4, 1.0, 10)
    losses = [2.3, 2.2, 2.0, 1.5, 1.0, 0.8, 0.7, 0.9, 2.0, 9.0]
    trials = [{"peak": lrs[8] * f, "held_out_loss": loss} for f, loss in ((0.25, 0.6), (0.5, 0.5), (0.125, 0.7))]
    result = RangeTestResult(lrs, losses, losses, lrs[8] * 0.5, 8, "test", "diverged", trials=trials)
    figure = result.plot()
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    assert len(ax.lines) == 7  # raw, smoothed, where the loss rose back, three trials, the pick
    marked = sorted(line.get_xdata()[0] for line in ax.lines[2:])
    assert marked == sorted([lrs[8], *(t["peak"] for t in trials), result.max_lr])


def test_result_survives_a_dict_round_trip():
    """`to_dict`/`from_dict` (the checkpointed form) give back an equal result."""
    result = RangeTestResult([1e-3, 1e-2, 1e-1], [2.0, 1.0, 3.0], [2.0, 1.5, 3.0], 1e-2, 1, "why", "diverged", 2)
    assert RangeTestResult.from_dict({**result.to_dict(), "newer_key": 1}) == result


# ------------------------------------------------------------------------------------------------ (9) loggers


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    """One fit with a TensorBoardLogger; the callback, trainer, recorded schedule and event files read back."""
    root = tmp_path_factory.mktemp("tensorboard")
    recorder = ScheduleRecorder()
    callback = SuperConvergence(num_steps=20)
    logger = TensorBoardLogger(root, name="tb")
    trainer = _fit(root, TinyClassifier(), callback, callbacks=[recorder], logger=logger, log_every_n_steps=1)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return callback, trainer, recorder, events


@pytest.mark.parametrize(
    ("tag", "field"),
    [("lr_range_test/loss", "losses"), ("lr_range_test/lr", "lrs"), ("lr_range_test/loss_smoothed", "smoothed")],
)
def test_tensorboard_holds_the_range_test_curve(tensorboard_run, tag, field):
    """The event file has one scalar per range-test step, equal to `callback.result` (float32)."""
    callback, _, _, events = tensorboard_run
    scalars = events.Scalars(tag)
    expected = getattr(callback.result, field)
    assert [s.step for s in scalars] == list(range(len(expected)))
    assert [s.value for s in scalars] == pytest.approx(expected, rel=1e-6)


def test_tensorboard_holds_the_range_test_figure(tensorboard_run):
    """The loss-vs-LR figure is written as an image."""
    *_, events = tensorboard_run
    assert "lr_range_test/curve" in events.Tags()["images"]
    (image,) = events.Images("lr_range_test/curve")
    assert image.width > 0
    assert image.height > 0


@pytest.mark.parametrize(("tag", "column"), [("superconv/lr", "lrs"), ("superconv/momentum", "momenta")])
def test_tensorboard_holds_the_schedule_per_training_step(tensorboard_run, tag, column):
    """LR and momentum are logged once per training step, as each step used them."""
    _, trainer, recorder, events = tensorboard_run
    scalars = events.Scalars(tag)
    values = recorder.lrs if column == "lrs" else recorder.momenta
    expected = [v[0] for v in values] if column == "lrs" else values
    assert [s.step for s in scalars] == list(range(trainer.global_step))
    assert [s.value for s in scalars] == pytest.approx(expected, rel=1e-6)


def test_range_test_curve_goes_to_every_logger(tmp_path):
    """With a CSV and a TensorBoard logger, both receive the curve."""
    callback = SuperConvergence(num_steps=10)
    csv_logger, tb_logger = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    _fit(tmp_path, TinyClassifier(), callback, logger=[csv_logger, tb_logger])
    with open(f"{csv_logger.log_dir}/metrics.csv") as f:
        logged = [float(row["lr_range_test/loss"]) for row in csv.DictReader(f) if row.get("lr_range_test/loss")]
    events = EventAccumulator(tb_logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    assert logged == pytest.approx(callback.result.losses, rel=1e-6)
    assert [s.value for s in events.Scalars("lr_range_test/loss")] == pytest.approx(callback.result.losses, rel=1e-6)


class _RestoresAfterSetup(L.pytorch.strategies.SingleDeviceStrategy):
    """One device that loads a checkpoint after fit start, as ``ModelParallelStrategy``, FSDP and DeepSpeed do."""

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True


class _FailsItsSanityCheck(TinyClassifier):
    def validation_step(self, batch, batch_idx):
        raise RuntimeError("a bug in validation_step")


class _StopsAfterTheSanityCheck(Callback):
    def on_sanity_check_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.parametrize("sanity_check", ["passes", "fails", "stops the fit"])
def test_under_a_strategy_that_restores_after_setup_a_fresh_fit_logs_its_range_test(tmp_path, sanity_check):
    """Logged at train start (a resume there discards it unlogged), or when the fit ends before training starts.

    Found in reviews: deferred to train start, the range test of a fit whose sanity check failed, or that a callback
    stopped before its first step, was never logged.
    """
    callback, logger = SuperConvergence(num_steps=10, trial_steps=0), MemoryLogger()
    model = _FailsItsSanityCheck() if sanity_check == "fails" else TinyClassifier()
    strategy = _RestoresAfterSetup(device=torch.device("cpu"))
    run = {"logger": logger, "strategy": strategy, "num_sanity_val_steps": 1, "limit_val_batches": 1}
    stops = [_StopsAfterTheSanityCheck()] if sanity_check == "stops the fit" else []
    with contextlib.nullcontext() if sanity_check != "fails" else pytest.raises(RuntimeError, match="a bug"):
        _fit(tmp_path, model, callback, callbacks=stops, **run)
    logged = [metrics["lr_range_test/loss"] for _, metrics in logger.metrics if "lr_range_test/loss" in metrics]
    assert logged == pytest.approx(callback.result.losses, rel=1e-6)


class _RenamingTensorBoardLogger(TensorBoardLogger):
    """A TensorBoard logger of the user's that renames every metric in its own ``log_metrics``."""

    def log_metrics(self, metrics, step=None):
        super().log_metrics({f"mine/{key}": value for key, value in metrics.items()}, step)


def test_a_tensorboard_logger_with_its_own_log_metrics_gets_the_schedule_through_it(tmp_path):
    """The schedule's one-event shortcut is for Lightning's own ``log_metrics``; a subclass's own sees every scalar.

    Found in a review: a subclass that prefixed its keys saw the range test's scalars, not ``superconv/lr``, written
    past it to the event file.
    """
    logger = _RenamingTensorBoardLogger(tmp_path, name="tb")
    _fit(tmp_path, TinyClassifier(), SuperConvergence(max_lr=0.1), logger=logger, log_every_n_steps=1)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "mine/superconv/lr" in tags
    assert "mine/superconv/momentum" in tags
    assert "superconv/lr" not in tags


def test_the_schedule_is_logged_once_per_step_under_gradient_accumulation(tmp_path):
    """The batch hooks run at each micro-batch: the step's values are one row, not one per micro-batch.

    Found in a review: ``accumulate_grad_batches=4`` wrote each step's LR four times (as ``LearningRateMonitor``
    does), where ``self.log`` writes one row.
    """
    logger = MemoryLogger()
    balancer = WeightDecayBalancer()
    _fit(tmp_path, TinyClassifier(), SuperConvergence(max_lr=0.1), callbacks=[balancer], logger=logger,
         log_every_n_steps=1, limit_train_batches=8, accumulate_grad_batches=4)  # fmt: skip
    steps = [step for step, metrics in logger.metrics if "superconv/lr" in metrics]
    assert steps == [0, 1, 2, 3]


def test_the_range_test_figure_takes_the_loggers_prefix(tmp_path):
    """``TensorBoardLogger(prefix=...)`` prefixes every scalar; the figure takes the prefix too (found in a review)."""
    logger = TensorBoardLogger(tmp_path, name="tb", prefix="run1")
    _fit(tmp_path, TinyClassifier(), SuperConvergence(num_steps=10, trial_steps=0), logger=logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["run1-lr_range_test/curve"]
    assert "run1-lr_range_test/loss" in events.Tags()["scalars"]


class _OneStepLogger(MemoryLogger):
    """Keeps what a logger with one step for all its keys keeps (W&B's ``step``): nothing below a step it has seen."""

    def log_metrics(self, metrics, step=None):
        if not self.metrics or step >= self.metrics[-1][0]:
            super().log_metrics(metrics, step)


def test_the_range_test_writes_each_step_once_in_increasing_order(tmp_path):
    """The pick and the trials share the curve's steps: a logger that drops a step below one it has seen keeps them.

    Found trying the package as a new user: a hand-written W&B logger passing ``step=`` lost the pick and the trials,
    written after the whole curve at its earlier steps.
    """
    callback = SuperConvergence(num_steps=20)
    logger = _OneStepLogger()
    _fit(tmp_path, TinyClassifier(), callback, logger=logger)
    written = [
        (step, metrics) for step, metrics in logger.metrics if any(k.startswith("lr_range_test/") for k in metrics)
    ]
    steps = [step for step, _ in written]
    assert steps == list(range(len(callback.result.lrs)))
    kept = {key for _, metrics in written for key in metrics}
    assert {"lr_range_test/max_lr", "lr_range_test/trial_peak", "lr_range_test/trial_loss"} <= kept
    peaks = [metrics["lr_range_test/trial_peak"] for _, metrics in written if "lr_range_test/trial_peak" in metrics]
    assert peaks == [trial["peak"] for trial in callback.result.trials]


# ------------------------------------------------------------------------------------------------ (10) bad input


@pytest.mark.parametrize(
    ("kwargs", "name", "given"),
    [
        ({"max_lr": 0}, "`max_lr`", "0"),
        ({"max_lr": -1}, "`max_lr`", "-1"),
        ({"max_lr": math.nan}, "`max_lr`", "nan"),
        ({"lr_range": (1, 0.1)}, "`lr_range`", "0.1"),
        ({"lr_range": (0, 1)}, "`lr_range[0]`", "0"),
        ({"lr_range": 1e-3}, "`lr_range`", "0.001"),
        ({"num_steps": 1}, "`num_steps`", "1"),
        ({"num_steps": 2}, "`num_steps`", "2"),
        ({"num_steps": 9}, "`num_steps`", "9"),
        ({"num_steps": 2.5}, "`num_steps`", "2.5"),
        ({"trial_steps": 10}, "`trial_steps`", "10"),
        ({"trial_steps": True}, "`trial_steps`", "True"),
        ({"trial_steps": 120.0}, "`trial_steps`", "120.0"),
        ({"mode": "cubic"}, "`mode`", "'cubic'"),
        ({"divergence_threshold": 1}, "`divergence_threshold`", "1"),
        ({"smoothing": 1.0}, "`smoothing`", "1.0"),
        ({"pct_start": 0}, "`pct_start`", "0"),
        ({"pct_start": 1.0}, "`pct_start`", "1.0"),
        ({"anneal_strategy": "x"}, "`anneal_strategy`", "'x'"),
        ({"cycle_momentum": "yes"}, "`cycle_momentum`", "'yes'"),
        ({"base_momentum": 1.0}, "`base_momentum`", "1.0"),
        ({"base_momentum": 0.9, "max_momentum": 0.8}, "`max_momentum`", "0.8"),
        ({"div_factor": 0.5}, "`div_factor`", "0.5"),
        ({"final_div_factor": 0}, "`final_div_factor`", "0"),
        ({"max_lr": "0.1"}, "`max_lr`", "'0.1'"),
        ({"max_lr": torch.tensor(0.1)}, "`max_lr`", "tensor(0.1000)"),
        # found trying the package as a new user: an `OverflowError` naming nothing, and a 0-d array accepted
        ({"max_lr": 10**400}, "`max_lr`", "1000"),
        ({"anneal_strategy": np.array("linear")}, "`anneal_strategy`", "array('linear'"),
        ({"mode": np.array("linear")}, "`mode`", "array('linear'"),
        # found in a review: ends a float holds swept NaN or inf, and the error blamed the module's own code
        ({"lr_range": (1e-300, 1e300), "num_steps": 10}, "`lr_range`", "(1e-300, 1e+300)"),
        ({"lr_range": (1e-6, 1e300), "num_steps": 10}, "`lr_range`", "(1e-06, 1e+300)"),
        ({"lr_range": (5e-324, 1.0)}, "`lr_range`", "(5e-324, 1.0)"),
        ({"lr_range": (1e-6, 1.5e308), "mode": "linear"}, "`lr_range`", "(1e-06, 1.5e+308)"),
        ({"max_lr": float("inf")}, "`max_lr` must be a finite number", "inf"),
    ],
)
def test_bad_argument_fails_in_init_naming_it_and_the_value(kwargs, name, given):
    """Each bad argument raises ValueError/TypeError whose message names the argument and repeats the value."""
    with pytest.raises((ValueError, TypeError)) as info:
        SuperConvergence(**kwargs)
    message = str(info.value)
    assert name in message
    assert "must" in message  # what is accepted
    assert given in message.split("got", 1)[1]


@pytest.mark.parametrize("argument", ["mode", "anneal_strategy"])
def test_a_choice_given_no_string_is_a_type_error(argument):
    """The classes' docstrings promise a TypeError for a value of the wrong type (found in a review: a ValueError)."""
    with pytest.raises(TypeError, match=rf"`{argument}` must be '.*, got None"):
        SuperConvergence(**{argument: None})


@pytest.mark.parametrize("value", [torch.tensor(0.1), np.array(0.1), np.array([0.1])])
def test_a_tensor_or_an_array_as_a_number_gets_the_hint_to_pass_its_item(value):
    """A 0-d tensor or NumPy array is no number to `float` checks: the message says to pass `.item()`."""
    with pytest.raises(TypeError, match=r"`max_lr` must be a number \(an array or a tensor: pass `.item\(\)`\)"):
        SuperConvergence(max_lr=value)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (ManualClassifier, "automatic optimization"),
        (NoOptimizerClassifier, "`configure_optimizers` returned None"),
    ],
    ids=["manual-optimization", "no-optimizer"],
)
def test_unservable_setup_fails_at_fit_start(tmp_path, model, match):
    """Manual optimization or no optimizer: MisconfigurationException before any training step."""
    instance = model()
    with pytest.raises(MisconfigurationException, match=match):
        _fit(tmp_path, instance, SuperConvergence(max_lr=0.1))
    assert instance.trainer.global_step == 0


def test_two_optimizers_fail_before_any_step(tmp_path):
    """Two optimizers cannot be served: fit fails before any training step, saying what to do."""
    model = CountingClassifier()
    model.configure_optimizers = TwoOptimizerClassifier.configure_optimizers.__get__(model)
    # Lightning rejects several optimizers under automatic optimization itself, before any callback hook runs
    with pytest.raises((MisconfigurationException, RuntimeError), match="optimizers"):
        _fit(tmp_path, model, SuperConvergence(num_steps=10))
    assert model.calls == 0


def test_iterable_dataset_without_max_steps_fails_naming_max_steps(tmp_path):
    """With no length and no `max_steps` the cycle cannot be sized; the message says to set `max_steps`."""
    with pytest.raises(MisconfigurationException, match="max_steps"):
        _fit(tmp_path, StreamClassifier(), SuperConvergence(num_steps=10), limit_train_batches=1.0)


def test_iterable_dataset_with_max_steps_trains(tmp_path):
    """With `max_steps` the same stream is sized and trained with the cycle."""
    callback = SuperConvergence(num_steps=10)
    trainer = _fit(tmp_path, StreamClassifier(), callback, limit_train_batches=1.0, max_steps=6, max_epochs=-1)
    assert trainer.global_step == 6
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 6


def test_trainer_with_only_max_steps_runs_the_range_test(tmp_path):
    """`Trainer(max_steps=N)` (which leaves `max_epochs=-1`) gets a range test and an N-step cycle."""
    callback = SuperConvergence(num_steps=10)
    trainer = _fit(tmp_path, TinyClassifier(), callback, limit_train_batches=1.0, max_steps=6, max_epochs=None)
    assert callback.result is not None
    assert trainer.global_step == 6
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 6


@pytest.mark.parametrize("overrides", [{"max_steps": 0}, {"limit_train_batches": 0}, {"max_epochs": 0}])
def test_run_without_training_steps_is_left_alone(tmp_path, overrides):
    """A fit with no training steps runs no range test and does not fail (``max_epochs=0`` ran one: a new user's)."""
    model = CountingClassifier()
    callback = SuperConvergence(num_steps=10)
    _fit(tmp_path, model, callback, **overrides)
    assert model.calls == 0
    assert callback.result is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_steps": "100"}, TypeError),
        ({"num_steps": 100.0}, TypeError),
        ({"num_steps": True}, TypeError),
        ({"max_rescues": None}, TypeError),
        ({"trial_steps": 50.0}, TypeError),
        ({"num_steps": 5}, ValueError),
        ({"max_rescues": -1}, ValueError),
        ({"trial_steps": 10}, ValueError),
    ],
)
def test_an_integer_argument_of_the_wrong_type_is_a_type_error_and_one_out_of_range_a_value_error(kwargs, error):
    """As in Python (``range("3")``, ``range(3.0)``): ``except TypeError`` catches a string where a count goes."""
    with pytest.raises(error, match=f"`{next(iter(kwargs))}` must be"):
        SuperConvergence(**kwargs)


def test_lr_range_as_a_numpy_array_or_a_tensor_of_two_is_a_pair():
    import numpy as np  # torch depends on it

    for given in (np.array([1e-6, 1.0]), torch.tensor([1e-6, 1.0], dtype=torch.float64), [1e-6, 1.0]):
        assert SuperConvergence(lr_range=given).range_test.lr_range == (1e-6, 1.0)
    with pytest.raises(TypeError, match=r"`lr_range` must be a pair .* \(a tuple or a list of two\), got array"):
        SuperConvergence(lr_range=np.array([[1e-6, 1.0]]))
    with pytest.raises(TypeError, match=r"`lr_range` must be a pair .* \(a tuple or a list of two\), got \[1e-06\]"):
        SuperConvergence(lr_range=[1e-6])


# ------------------------------------------------------------------------------------------------ (11) peak trials


class EvalRecorder(TinyClassifier):
    """Records the first input value of every batch `training_step` sees in eval mode (the trials' scoring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scored: list[float] = []

    def training_step(self, batch, batch_idx):
        if not self.training:
            self.scored.append(float(batch[0][0, 0]))
        return super().training_step(batch, batch_idx)

    def trials_scored(self) -> list[float]:
        """What the trials scored: all but the look at the first held-out batch after the first trial's first step."""
        assert self.scored[0] == self.scored[1]
        return self.scored[1:]


def test_trials_try_fractions_of_the_rise_and_install_the_best(tmp_path):
    """The ladder (a quarter, a half, an eighth of the LR where the loss rose back), then the best trial's peak."""
    callback = SuperConvergence(num_steps=40, trial_steps=50)
    _fit(tmp_path, TinyClassifier(), callback)
    result = callback.result
    rise_lr = result.lrs[result.pick_index]
    peaks = [t["peak"] for t in result.trials]
    scores = [t["held_out_loss"] for t in result.trials]
    # the search's trials; where none of them learned (this model's held-out loss rises in its trials), then the
    # optimizer's own LR (0.01) and up to two rungs above the highest tried
    search = peaks[: peaks.index(0.01, 3)] if 0.01 in peaks[3:] else peaks
    assert 3 <= len(search) <= 5
    assert len(peaks) <= len(search) + OWN_LR_TRIALS
    assert peaks[:3] == pytest.approx([rise_lr / 4, rise_lr / 2, rise_lr / 8])
    assert callback.max_lr == peaks[scores.index(min(scores))]
    assert f"{callback.max_lr:.3g} did best" in result.pick_reason


def test_trials_are_scored_on_the_validation_data(tmp_path):
    """With a validation dataloader, every trial is scored on the same validation batches."""
    model = EvalRecorder()
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    _fit(tmp_path, model, callback)
    val_x = model.val_dataloader().dataset.tensors[0]
    first_values = {float(v) for v in val_x[:, 0]}
    assert model.scored
    assert set(model.scored) <= first_values
    scored = model.trials_scored()
    per_trial = len(scored) // len(callback.result.trials)
    assert per_trial == 2  # all 64 validation samples, in batches of 32
    assert scored == scored[:per_trial] * len(callback.result.trials)


class ThreeValidationLoaders(TinyClassifier):
    """Validates on three loaders: a list, a ``CombinedLoader`` of the user's, nested lists or dicts of them."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def val_dataloader(self):
        a, b, c = (DataLoader(make_dataset(64, seed=seed), batch_size=32) for seed in (1, 2, 3))
        return {
            "list": [a, b, c],
            "combined": CombinedLoader([a, b, c], mode="sequential"),
            "nested": [[a, b], c],
            "combined_dict": CombinedLoader({"first": [a, b], "last": c}, mode="sequential"),
        }[self.form]

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        super().validation_step(batch, batch_idx)


def test_a_users_combined_loader_of_validation_data_scores_the_trials_as_its_loaders_do(tmp_path):
    """Lightning validates on the loaders a ``CombinedLoader`` or nested lists hold; so do the trials, with no warning.

    Found trying the package as a new user: the trials fed `training_step` the `(batch, batch_idx, dataloader_idx)`
    triples of iterating the combined loader, warned that it failed on validation batches and scored training batches.
    """
    results = []
    for form in ("list", "combined", "nested", "combined_dict"):
        L.seed_everything(0)
        callback = SuperConvergence(num_steps=30, trial_steps=50)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*SuperConvergence.*validation batch", category=RuntimeWarning)
            _fit(tmp_path / form, ThreeValidationLoaders(form), callback)
        results.append(callback.result.trials)
    assert results[1:] == results[:1] * 3


class TrainModeCounter(TinyClassifier):
    """Counts the ``training_step`` calls made in train mode: the sweep's, the trials' and the run's steps."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_calls = Tally()

    def training_step(self, batch, batch_idx):
        self.train_calls += int(self.training)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("epochs", "trial_steps", "expected"),
    [(2, None, 100), (120, None, 160), (120, 100, 100), (120, 60, 60)],
    ids=["short-run", "a-third-of-480", "given-100", "given-60"],
)
def test_trials_last_a_third_of_the_run_from_100_steps_unless_given(tmp_path, epochs, trial_steps, expected):
    """By default each trial cycle is a third of the run (480 steps: 160), never under 100; a given length is kept."""
    model, callback = TrainModeCounter(), SuperConvergence(num_steps=30, trial_steps=trial_steps)
    trainer = _fit(tmp_path, model, callback, max_epochs=epochs)
    result = callback.result
    trial_calls = model.train_calls - len(result.lrs) - trainer.global_step
    assert trainer.global_step == 4 * epochs
    assert trial_calls == expected * len(result.trials)
    assert f"of one-cycles of {expected} steps" in result.pick_reason


@pytest.mark.parametrize("limit", [1, 0.5], ids=["one-batch", "half"])
def test_trials_read_no_more_validation_batches_than_limit_val_batches_allows(tmp_path, limit):
    """``limit_val_batches`` caps the trials' validation batches as it caps the run's validation (here at one)."""
    model = EvalRecorder()
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    _fit(tmp_path, model, callback, limit_val_batches=limit)
    val_x = model.val_dataloader().dataset.tensors[0]
    assert model.trials_scored() == [float(val_x[0, 0])] * len(callback.result.trials)


class SlowValidationSet(torch.utils.data.Dataset):
    """80 validation samples, each taking 3 ms to load: a reading capped in time would stop early, and vary."""

    def __init__(self) -> None:
        self.x, self.y = make_dataset(80, seed=1).tensors

    def __len__(self) -> int:
        return 80

    def __getitem__(self, index: int):
        time.sleep(0.003)
        return self.x[index], self.y[index]


def test_trials_score_on_as_many_validation_batches_as_a_trial_trains_on_however_slow_they_load(tmp_path):
    """A count, not a time, caps the held-out batches: 50 of 80 for trials of 50 steps, in every run alike.

    Found by trying the package as a new user: half a trial's training time capped the reading, so a seeded run scored
    on other batches, and picked another peak, from one run to the next.
    """
    picks = []
    for _ in range(2):
        L.seed_everything(0, verbose=False)
        model = EvalRecorder()
        model.val_dataloader = lambda: DataLoader(SlowValidationSet(), batch_size=1)  # type: ignore[method-assign]
        callback = SuperConvergence(num_steps=30, trial_steps=50)
        _fit(tmp_path, model, callback)
        val_x = SlowValidationSet().x
        assert model.trials_scored() == [float(x[0]) for x in val_x[:50]] * len(callback.result.trials)
        picks.append(callback.result.trials)
    assert picks[0] == picks[1]


def test_limit_val_batches_caps_each_validation_loader_on_its_own(tmp_path):
    """With two validation loaders and ``limit_val_batches=1`` the trials read the first batch of each, as Lightning."""

    class TwoLoaders(EvalRecorder):
        def val_dataloader(self):
            return [
                DataLoader(make_dataset(64, seed=1), batch_size=32),
                DataLoader(make_dataset(64, seed=2), batch_size=32),
            ]

    model = TwoLoaders()
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    _fit(tmp_path, model, callback, limit_val_batches=1)
    firsts = [float(loader.dataset.tensors[0][0, 0]) for loader in model.val_dataloader()]
    assert model.trials_scored() == firsts * len(callback.result.trials)


class ValidationStream(IterableDataset):
    """The validation samples as a stream: its loader has no length."""

    def __iter__(self):
        yield from make_dataset(64, seed=1)


def test_a_validation_loader_whose_length_cannot_be_read_is_read_whole(tmp_path):
    """A stream has no length to take a fraction of: the trials read it all (Lightning takes no fraction of one)."""

    class Streamed(EvalRecorder):
        def val_dataloader(self):
            return DataLoader(ValidationStream(), batch_size=32)

    model = Streamed()
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    _fit(tmp_path, model, callback, limit_val_batches=0.5)
    firsts = [float(x[0]) for x in make_dataset(64, seed=1).tensors[0][::32]]
    assert model.trials_scored() == firsts * len(callback.result.trials)


def test_a_users_combined_loader_is_capped_by_limit_val_batches_loader_by_loader(tmp_path):
    """The loaders a ``CombinedLoader`` of the user's holds have lengths: half of two batches is the first."""

    class Combined(EvalRecorder):
        def val_dataloader(self):
            return CombinedLoader([DataLoader(make_dataset(64, seed=1), batch_size=32)], "sequential")

    model = Combined()
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*SuperConvergence.*validation batch", category=RuntimeWarning)
        _fit(tmp_path, model, callback, limit_val_batches=0.5)
    first = float(make_dataset(64, seed=1).tensors[0][0, 0])
    assert model.trials_scored() == [first] * len(callback.result.trials)


def test_with_limit_val_batches_0_the_trials_score_on_training_batches(tmp_path):
    """A run told to validate on nothing (``limit_val_batches=0``) has no validation data for the trials either."""

    class CountsLoaders(EvalRecorder):
        built = 0

        def val_dataloader(self):
            self.built += 1
            return super().val_dataloader()

    model = CountsLoaders(n=1024)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    _fit(tmp_path, model, callback, limit_val_batches=0)
    assert model.built == 0  # not even built: its workers would start for nothing
    assert len(model.trials_scored()) == 5 * len(callback.result.trials)  # training batches: max(4, 50 // 10) each
    val_x = model.val_dataloader().dataset.tensors[0]
    train_x = model.train_dataloader().dataset.tensors[0]
    assert not {float(v) for v in model.scored} & {float(v) for v in val_x[:, 0]}
    assert {float(v) for v in model.scored} <= {float(v) for v in train_x[:, 0]}


def test_without_validation_data_trials_score_on_training_batches_they_never_train_on(tmp_path):
    """No validation dataloader: the held-out batches are training batches after the ones the trials use."""

    class NoVal(EvalRecorder):
        val_dataloader = None

    model = NoVal(n=1024)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    _fit(tmp_path, model, callback)
    assert len(model.trials_scored()) == 5 * len(callback.result.trials)  # max(4, 50 // 10) batches per trial
    train_x = model.train_dataloader().dataset.tensors[0]
    assert {float(v) for v in model.scored} <= {float(v) for v in train_x[:, 0]}


@pytest.mark.parametrize(
    ("batches", "validation", "said"),
    [
        (32, "none", True), (54, "none", True), (55, "none", False), (32, "scored", False), (32, "unscorable", True),
        (32, "limited to none", True),
    ],
)  # fmt: skip
def test_trials_longer_than_an_epoch_say_that_the_training_batches_they_were_scored_on_were_trained_on(
    tmp_path, caplog, batches, validation, said
):
    """Trials scored on training batches past the end of an epoch trained on their samples: an info line says so.

    Without validation data a trial of 50 steps is scored on the next 5 batches: over an epoch of 32 it has trained on
    every sample it is scored on (the next epoch draws them again); over one of 54, the last scored batch comes from the
    next epoch; over one of 55, none does.

    Found trying the package as a new user: the README promised "training batches the trials never train on", and
    320 samples of 320 scored had been trained on. Validation data says nothing. Validation data that
    `training_step` cannot score is named as the reason (a second trial found the line saying "no validation data"),
    and so is `limit_val_batches=0` (found in a review: "this run has no validation data. Give `fit` validation data").
    """
    models = {"none": NoValidationData, "unscorable": DictValidationBatches}
    model = models.get(validation, TinyClassifier)(n=4096)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    limit = {"limit_val_batches": 0} if validation == "limited to none" else {}
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        _fit(tmp_path, model, callback, limit_train_batches=batches, max_epochs=1, **limit)
    assert callback.result.trials
    lines = [r.getMessage() for r in caplog.records if "samples the trials trained on" in r.getMessage()]
    assert len(lines) == (1 if said else 0)
    if said:
        assert (
            f"the 5 after the 50 each trial trains on (50 steps). Together they span more than an epoch ({batches}"
            in (lines[0])
        )
        reasons = {
            "unscorable": "cannot score this run's validation batches",
            "limited to none": "`limit_val_batches=0` leaves no validation batch to score",
        }
        assert reasons.get(validation, "this run has no validation data") in lines[0]


class SkewedRegression(L.LightningModule):
    """An MLP regressing a skewed, standardized target with SGD at 0.01: batch losses from about 0.1 to 5.

    The shape of a new user's model on which every trial of the search learned nothing: the sweep's lowest point and
    its rise were read from batch noise, 100-1000x below the LRs that train it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
        )

    def loss(self, batch):
        return torch.nn.functional.mse_loss(self.net(batch[0]).squeeze(-1), batch[1])

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def _skewed_regression_fit(tmp_path, callbacks):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 20, generator=generator)
    weights = torch.zeros(20)
    weights[:10] = torch.rand(10, generator=generator) * 100
    y = x @ weights + 5 * torch.randn(1000, generator=generator)
    y = y**2 / 50 + y
    y = (y - y.mean()) / y.std()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=10))
    train = DataLoader(TensorDataset(x[:800], y[:800]), batch_size=32, shuffle=True)
    model, val = SkewedRegression(), DataLoader(TensorDataset(x[800:], y[800:]), batch_size=200)
    trainer.fit(model, train, val)
    return float(trainer.validate(model, val, verbose=False)[0]["val_loss"])


def test_with_no_trial_learned_the_trials_from_the_optimizers_own_lr_up_find_a_peak_that_beats_it(tmp_path):
    """The trials from the user's own LR up run once the search's all learned nothing; the run beats the plain one.

    Found trying the package as a new user: the pick was 0.0004 (five trials from 2.9e-6 up, none learned) and the
    run ended at the loss of predicting the mean, 15x the user's own constant LR's.
    """
    plain = _skewed_regression_fit(tmp_path, [])
    callback = SuperConvergence()
    with pytest.warns(RuntimeWarning, match=r"one from your optimizer's own LR \(0.01\) up did"):
        ours = _skewed_regression_fit(tmp_path, [callback])
    assert "the trials from your optimizer's own LR up ran" in callback.result.pick_reason
    peaks = [trial["peak"] for trial in callback.result.trials]
    assert peaks[5] == pytest.approx(0.01)  # after the search's five
    assert callback.max_lr >= 0.01
    assert ours < plain


def test_without_trials_the_peak_is_a_quarter_of_the_rise(tmp_path):
    """`trial_steps=0`: no trials; the peak is a quarter of the LR where the loss rose back."""
    callback = SuperConvergence(num_steps=40, trial_steps=0)
    _fit(tmp_path, TinyClassifier(), callback)
    result = callback.result
    assert result.trials == []
    assert callback.max_lr == pytest.approx(result.lrs[result.pick_index] / 4)
    assert "trial_steps=0" in result.pick_reason


class NoValidationData(TinyClassifier):
    val_dataloader = None  # type: ignore[assignment]


def test_trials_pass_over_validation_batches_training_step_cannot_take_for_training_batches(tmp_path):
    """Validation batches of another form (dicts) than the training batches: the trials score on training batches.

    Found by trying the package as a new user: ``training_step`` was called on them and failed deep in the range test.
    Now the first attempt is undone exactly and the trials run as for a module without validation data: the same
    trials, the same pick, the same trained model, and one warning that says why.
    """
    runs = {}
    for name, cls in (("dicts", DictValidationBatches), ("none", NoValidationData)):
        L.seed_everything(0)
        model = cls(n=512)
        callback = SuperConvergence(num_steps=30, trial_steps=50)
        trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2))
        if name == "dicts":
            with pytest.warns(
                RuntimeWarning, match=r"failed on validation batch 0 in eval mode without gradients \(ValueError"
            ):
                trainer.fit(model)
        else:
            trainer.fit(model)
        runs[name] = (callback.result, model)
    (dicts, dict_model), (none, none_model) = runs["dicts"], runs["none"]
    assert dicts.trials
    assert all(math.isfinite(t["held_out_loss"]) for t in dicts.trials)
    assert dicts.trials == none.trials
    assert dicts.max_lr == none.max_lr
    for a, b in zip(dict_model.parameters(), none_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_numpy_numbers_are_numbers():
    """NumPy scalars (what a config read with NumPy gives) are accepted and kept as plain Python numbers."""
    import numpy as np

    callback = SuperConvergence(
        max_lr=np.float32(0.25), num_steps=np.int64(40), trial_steps=np.int32(0), pct_start=np.float32(0.25),
        lr_range=(np.float64(1e-5), np.float32(2.0)), max_rescues=np.int64(2),
    )  # fmt: skip
    assert callback.max_lr == pytest.approx(0.25)
    assert type(callback.max_lr) is float
    assert callback.range_test.num_steps == 40
    assert type(callback.range_test.num_steps) is int
    assert type(callback.range_test.trial_steps) is int
    assert type(callback.max_rescues) is int
    assert type(callback.cycle.pct_start) is float
    assert type(callback.range_test.lr_range[1]) is float
    with pytest.raises(ValueError, match=r"`num_steps` must be an integer >= 10 .*, got np.int64\(5\)"):
        SuperConvergence(num_steps=np.int64(5))
    # NumPy's booleans too, kept as plain bools (found trying the package as a new user: refused)
    flags = SuperConvergence(guard=np.bool_(False), cycle_momentum=np.bool_(True), three_phase=np.bool_(False))
    assert flags.guard is False
    assert flags.cycle.cycle_momentum is True
    assert flags.cycle.three_phase is False


def test_numpy_strings_are_kept_as_strings_and_the_checkpoint_loads_with_weights_only(tmp_path):
    """A NumPy string (what a config read with NumPy gives) is kept as a plain ``str``.

    Found trying the package as a new user: an ``np.str_`` kept as given went into the checkpoint, which
    ``torch.load(weights_only=True)``, and so the resume, could not load.
    """
    callback = SuperConvergence(max_lr=0.1, anneal_strategy=np.str_("linear"), mode=np.str_("linear"))
    assert type(callback.cycle.anneal_strategy) is str
    assert type(callback.range_test.mode) is str

    class Strategy(str, enum.Enum):  # a string enum's `str()` is its name: the choice it equals is kept
        LINEAR = "linear"

    assert SuperConvergence(anneal_strategy=Strategy.LINEAR).cycle.anneal_strategy == "linear"
    assert type(SuperConvergence(anneal_strategy=Strategy.LINEAR).cycle.anneal_strategy) is str
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=2))
    trainer.fit(TinyClassifier())
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    state = torch.load(tmp_path / "run.ckpt", weights_only=True)["callbacks"]["SuperConvergence"]
    assert state["max_lr"] == pytest.approx(0.1)


class ValidationOfAnotherTask(TinyClassifier):
    """Validation batches labelled by another rule than the training batches: no trial's held-out loss can fall."""

    def val_dataloader(self):
        x, _ = make_dataset(64, seed=1).tensors
        return DataLoader(torch.utils.data.TensorDataset(x, torch.arange(64) % 4), batch_size=32)


def _fit_where_no_trial_learns(model: L.LightningModule, warned: str) -> tuple[SuperConvergence, list]:
    """Fit ``model`` whose trials cannot learn; the callback and the warnings, one of which matches ``warned``."""
    L.seed_everything(0)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(None, max_epochs=1, limit_train_batches=2))
    with pytest.warns(RuntimeWarning, match=warned) as said:
        trainer.fit(model)
    return callback, list(said)


def test_when_no_trial_learned_the_least_bad_is_picked_with_a_warning_that_says_why():
    """No trial's held-out loss fell a tenth below the start: the search went lower, then the least bad won, said so."""
    warned = (
        r"no trial learned: none ended a tenth below .*, nor from your optimizer's own LR \(0.01\) up.* "
        r"pass `SuperConvergence\(max_lr=\.\.\.\)`"
    )
    callback, said = _fit_where_no_trial_learns(ValidationOfAnotherTask(n=512), warned)
    trials, result = callback.result.trials, callback.result
    assert len(trials) >= 6  # the ladder, then two rungs ever lower: none learned; then from the own LR, 0.01
    # below the lowest rung, or below the LR of the sweep's lowest loss where that is lower
    low_lr = result.lrs[min(range(len(result.smoothed)), key=result.smoothed.__getitem__)]
    first = min(*(t["peak"] for t in trials[:3]), low_lr) / 2
    assert [t["peak"] for t in trials[3:5]] == pytest.approx([first, first / 2])
    assert trials[5]["peak"] == 0.01
    assert len(trials) <= 5 + OWN_LR_TRIALS
    assert callback.max_lr == min(trials, key=lambda t: t["held_out_loss"])["peak"]
    assert "(learned nothing)" in callback.result.pick_reason
    message = next(str(w.message) for w in said if "no trial learned" in str(w.message))
    assert "BatchNorm" not in message  # its momentum is 0.1: not named


class ScoresAnAverageItNeverMoves(TinyClassifier):
    """Scores, in eval mode, an average of the weights that only a batch hook would move; diverges above LR 0.05."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.average = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        return self.net(x) if self.training else self.average(x)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.calls += 1  # past the sweep's 30 steps: in the trials
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        return loss * float("nan") if self.training and self.calls > 35 and lr > 0.05 else loss


def test_trials_that_tie_beside_a_diverged_one_are_warned_of():
    """The trials that did not diverge all left the same held-out loss: they measured nothing, and the warning says so.

    Found in a review: beside one diverged trial, the tie was reported as "did best", with no warning.
    """
    said = r"every trial that did not diverge left the same held-out loss \(\S+\) at peaks from .* \(\d+ diverged\)"
    callback, _ = _fit_where_no_trial_learns(ScoresAnAverageItNeverMoves(n=512), said)
    scores = [t["held_out_loss"] for t in callback.result.trials]
    assert not all(math.isfinite(score) for score in scores)
    assert len({score for score in scores if math.isfinite(score)}) == 1


class SlowBatchNormValidationOfAnotherTask(ValidationOfAnotherTask):
    """Its BatchNorm at momentum 0.01, as torchvision's MobileNetV3 builds it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net[1].momentum = 0.01


def test_when_no_trial_learned_a_slow_batch_norm_is_named_among_the_causes():
    """The trials score in eval mode: BatchNorm's slow running statistics are named where the module has them.

    Found trying the package as a new user: LRASPP-MobileNetV3's BatchNorm (momentum 0.01) kept the untrained
    network's statistics after each trial, every trial "learned nothing", and the warning named other causes only.
    """
    warned = (
        r"no trial learned: .*; or, as 1 of your 1 BatchNorm layers have a momentum of 0.01, their running "
        r"statistics, which the trials score by \(in eval mode\), may still describe the untrained network.*"
        r"a BatchNorm momentum of 0.1 \(PyTorch's default\).*Look at the curve"
    )
    _fit_where_no_trial_learns(SlowBatchNormValidationOfAnotherTask(n=512), warned)


def test_the_slow_batch_norm_note_names_only_slow_running_statistics():
    """Momentum 0.1 and BatchNorm without running statistics are not named; `momentum=None` (an average) is."""
    from lightning_superconv.range_test import _slow_batch_norm_note

    module = TinyClassifier()
    assert _slow_batch_norm_note(module) == ""
    module.net[1] = torch.nn.BatchNorm1d(32, momentum=0.01, track_running_stats=False)
    assert _slow_batch_norm_note(module) == ""
    module.net[1] = torch.nn.BatchNorm1d(32, momentum=None)
    said = _slow_batch_norm_note(module)
    assert "1 of your 1 BatchNorm layers have a momentum of None (a cumulative average)" in said


def test_trials_that_all_diverge_on_a_corrupt_sample_point_to_the_data():
    """Every trial meets the NaN batch: the error says a NaN at any LR may be the data's, not only "pass max_lr=".

    Found trying the package as a new user: one NaN feature in 1 of 1,400 digits gave "every trial cycle diverged, even
    the lowest peak, 2.2e-07 ... Pass `max_lr=` below 2.2e-07", advice that cannot help.
    """
    L.seed_everything(0)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(None, max_epochs=1, limit_val_batches=0))
    with pytest.raises(
        MisconfigurationException,
        match=r"every trial cycle diverged.*`CTCLoss\(zero_infinity=True\)`\); check the data and the loss",
    ):
        trainer.fit(OneCorruptSample())


class StepWithoutBatchIdx(TinyClassifier):
    """``training_step(self, batch)``: Lightning passes ``batch_idx`` only to a step that takes it."""

    def training_step(self, batch):  # type: ignore[override]
        return super().training_step(batch, 0)


class TakesInputGradients(TinyClassifier):
    """Adversarial training (FGSM): the step takes the loss's gradient with respect to its input itself."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = x.clone().requires_grad_(True)
        grad = torch.autograd.grad(torch.nn.functional.cross_entropy(self(x), y), x, create_graph=False)[0]
        return torch.nn.functional.cross_entropy(self(x + 0.05 * grad.sign()), y)


class LossesInTrainModeOnly(TinyClassifier):
    """As torchvision's detection models: ``forward`` returns the losses in train mode, predictions in eval mode."""

    def forward(self, x, y=None):
        out = self.net(x)
        return {"loss": torch.nn.functional.cross_entropy(out, y)} if self.training else [out]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return sum(self(x, y).values())

    def validation_step(self, batch, batch_idx):
        pass


class NoLossInEvalMode(TinyClassifier):
    """Returns no loss outside train mode (a step that skips what it cannot train on)."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) if self.training else None


class StepWithKeywords(TinyClassifier):
    """``training_step(self, batch, **kwargs)``: by Lightning's rule, no ``batch_idx``."""

    def training_step(self, batch, **kwargs):  # type: ignore[override]
        return super().training_step(batch, 0)


@pytest.mark.parametrize("cls", [StepWithoutBatchIdx, StepWithKeywords], ids=["batch_only", "keywords"])
def test_trials_score_a_training_step_that_takes_no_batch_idx(tmp_path, cls):
    """Found by trying the package as a new user: the trials called it with a `batch_idx` and crashed."""
    L.seed_everything(0)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(cls(n=512))
    assert [str(w.message) for w in caught if "failed on" in str(w.message)] == []
    assert callback.result.trials
    assert all(math.isfinite(t["held_out_loss"]) for t in callback.result.trials)


@pytest.mark.parametrize(
    "cls", [TakesInputGradients, LossesInTrainModeOnly, NoLossInEvalMode], ids=["input_gradients", "train_mode", "none"]
)
def test_a_training_step_the_trials_cannot_score_leaves_the_pick_to_the_sweep(tmp_path, cls):
    """A step that fails in eval mode without gradients: the trials say so and the sweep picks, as `trial_steps=0`.

    Found by trying the package as a new user: the range test crashed on the first two, after a warning that blamed the
    form of the validation batches; a step returning no loss in eval mode had every trial read as diverged ("every trial
    cycle diverged, even the lowest peak"). Everything the trials did is undone: the run ends as one given the pick as
    `max_lr`.
    """
    L.seed_everything(0)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(tested := cls(n=512))
    said = [str(w.message) for w in caught if "SuperConvergence: the trials" in str(w.message)]
    # one warning, not a first one that promised the training batches would be scored instead
    assert len(said) == 1
    # the validation batches the module gave first, then the training batches (found trying the package as a new user:
    # the other way round)
    assert re.search(
        r"cannot score the validation batches \(.*validation batch.*\), nor held-out training batches \(.*in eval mode "
        r"without gradients.*\)\. The pick is",
        said[0],
    )
    assert callback.result.trials == []
    # the reason says why there were no trials: not a `trial_steps=0` the user did not set (found in a review)
    assert callback.result.pick_reason.endswith("a quarter of it (the trials could not score)")
    L.seed_everything(0)
    swept_only = SuperConvergence(num_steps=30, trial_steps=0)
    L.Trainer(callbacks=[swept_only], **trainer_kwargs(tmp_path, max_epochs=2)).fit(cls(n=512))
    assert callback.max_lr == swept_only.max_lr
    L.seed_everything(0)
    given = SuperConvergence(max_lr=callback.max_lr)
    L.Trainer(callbacks=[given], **trainer_kwargs(tmp_path, max_epochs=2)).fit(plain := cls(n=512))
    for a, b in zip(tested.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class CountsTrainingCalls:
    """Counts the `training_step` calls made in train mode (the sweep's, the trials' and the run's steps).

    In a list changed in place: the range test's restore rebinds a counter the module counts up.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_calls: list[int] = []

    def training_step(self, batch, batch_idx):
        if self.training:
            self.train_calls.append(batch_idx)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("cls", [TakesInputGradients, LossesInTrainModeOnly], ids=["input_gradients", "train_mode"])
def test_trials_that_cannot_score_train_no_step_more_than_the_sweep(tmp_path, cls):
    """One forward on the first held-out batch, after a trial's first step, tells that the trials cannot score.

    Found trying the package as a new user: a detection model's range test trained a whole trial on the validation
    batches, then another on the training batches, before leaving the pick to the sweep (368 steps for a 20-step
    sweep); now it costs what `trial_steps=0` does and one step for each of the two sources.
    """
    counted = type(cls.__name__, (CountsTrainingCalls, cls), {})
    runs = {}
    for trial_steps in (50, 0):
        L.seed_everything(0)
        callback = SuperConvergence(num_steps=30, trial_steps=trial_steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model := counted(n=512))
        runs[trial_steps] = (callback.max_lr, len(model.train_calls))
    assert runs[50][0] == runs[0][0]
    assert runs[50][1] == runs[0][1] + 2


class CentresOnItsFirstBatch(TinyClassifier):
    """Sets a running input centre at its first training batch, and reads it in eval mode too."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.training:
            centre = x.mean(0).detach()
            self.center = centre if not hasattr(self, "center") else 0.9 * self.center + 0.1 * centre
        return super().training_step((x - self.center, y), batch_idx)


def test_trials_score_a_step_whose_eval_path_reads_what_training_creates(tmp_path):
    """The look that finds an unscorable step comes after a trial's first step: the step here can score then.

    Found reviewing the package: taken before any step, on the restored model, the look failed on the missing
    attribute, and the trials were dropped with a warning that they could not score.
    """
    callback = SuperConvergence(num_steps=20, trial_steps=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, _seeded(CentresOnItsFirstBatch), callback)
    assert not [w for w in caught if "cannot score" in str(w.message) or "failed on" in str(w.message)]
    assert callback.result.trials
    assert all(math.isfinite(t["held_out_loss"]) for t in callback.result.trials)


class CountsItsCalls(TinyClassifier):
    """Counts its `training_step` calls in an int (a loss weight's schedule would read it).

    The count each scoring call sees is recorded in a list changed in place (the restore leaves such a list alone).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0
        self.counts_scored: list[int] = []

    def training_step(self, batch, batch_idx):
        self.calls += 1
        if not self.training:
            self.counts_scored.append(self.calls)
        return super().training_step(batch, batch_idx)


def test_the_look_at_the_first_held_out_batch_leaves_the_first_trial_as_it_would_have_been(tmp_path):
    """Found trying the package as a new user: the look counted as a call, and the first trial scored differently.

    Each trial trains as many steps from the same snapshot: each scoring call of each trial sees the same count.
    """
    model = _seeded(CountsItsCalls)
    callback = SuperConvergence(num_steps=20, trial_steps=50)
    _fit(tmp_path, model, callback)
    trials = len(callback.result.trials)
    scored = model.counts_scored[1:]  # after the look
    per_trial = len(scored) // trials
    assert len(scored) == per_trial * trials
    assert [scored[i * per_trial : (i + 1) * per_trial] for i in range(trials)] == [scored[:per_trial]] * trials


class ReturnsAReadOnlyMapping(TinyClassifier):
    """``training_step`` returns its loss in a read-only mapping, which Lightning accepts as it does a dict."""

    def training_step(self, batch, batch_idx):
        return types.MappingProxyType({"loss": super().training_step(batch, batch_idx)})


def test_a_training_step_returning_any_mapping_is_read_as_lightning_reads_it(tmp_path):
    """Found trying the package as a new user: Lightning trained it, the range test raised a `TypeError`."""
    callback = SuperConvergence(num_steps=20, trial_steps=50)
    _fit(tmp_path, _seeded(ReturnsAReadOnlyMapping), callback)
    assert callback.result.trials
    assert all(math.isfinite(t["held_out_loss"]) for t in callback.result.trials)


class DrawsItsOwnBatches(TinyClassifier):
    """Lightning's `training_step(self, dataloader_iter)` form: the step draws its batch from the iterator."""

    def training_step(self, dataloader_iter):  # type: ignore[override]
        (x, y), _, _ = next(dataloader_iter)
        return torch.nn.functional.cross_entropy(self(x), y)


def test_a_training_step_that_draws_its_own_batches_is_refused_for_the_range_test_only(tmp_path):
    """The range test draws each step's batches itself: refused up front, naming the way out; `max_lr=` serves it."""
    trainer = L.Trainer(callbacks=[SuperConvergence()], **trainer_kwargs(tmp_path, max_epochs=1))
    model = DrawsItsOwnBatches()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(MisconfigurationException, match=r"takes `dataloader_iter`.*pass `max_lr=`"):
        trainer.fit(model)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])
    with pytest.raises(MisconfigurationException, match=r"find_max_lr .*takes `dataloader_iter`"):
        find_max_lr(DrawsItsOwnBatches(), trainer_kwargs={"accelerator": "cpu"})
    trainer = L.Trainer(callbacks=[given := SuperConvergence(max_lr=0.1)], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(DrawsItsOwnBatches())
    assert trainer.global_step == given.total_steps > 0


class OwnSamplerClassifier(TinyClassifier):
    """Its train loader's sampler keeps a generator of its own kind under a name of its own."""

    def __init__(self, kind: str) -> None:
        super().__init__(n=512)
        self.kind = kind

    def train_dataloader(self):
        return DataLoader(make_dataset(512), sampler=OwnRandomSampler(512, self.kind), batch_size=32)


@pytest.mark.parametrize("kind", ["torch", "numpy", "python"])
def test_the_range_test_gives_back_a_sampler_s_own_generator(tmp_path, kind):
    """The run with the range test ends as the same run given its pick as `max_lr`, bit for bit.

    Found by trying the package as a new user: a sampler's `self.rng = np.random.default_rng(0)` (or a
    `torch.Generator` under another name than `generator`) was advanced by the range test, so training saw another
    data order.
    """
    L.seed_everything(0)
    callback = SuperConvergence(num_steps=30, trial_steps=50)
    L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, max_epochs=2)).fit(tested := OwnSamplerClassifier(kind))
    L.seed_everything(0)
    given = SuperConvergence(max_lr=callback.max_lr)
    L.Trainer(callbacks=[given], **trainer_kwargs(tmp_path, max_epochs=2)).fit(plain := OwnSamplerClassifier(kind))
    for a, b in zip(tested.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_error_from_the_range_test_s_own_steps_says_where_it_came_from_with_everything_restored(tmp_path):
    """A BatchNorm model with a one-sample last batch trains a short run that never reaches it; the sweep does.

    Found trying the package as a new user: torch's bare "Expected more than 1 value per channel" came out of a fit
    that trained without the callback, with nothing naming the range test.
    """
    trainer_kwargs_ = trainer_kwargs(tmp_path, max_steps=2, max_epochs=None)
    L.Trainer(**trainer_kwargs_).fit(TinyClassifier(n=65))  # batches of 32, 32 and 1: two steps never reach the 1
    L.seed_everything(0)
    model = TinyClassifier(n=65)
    before = copy.deepcopy(model.state_dict())
    trainer = L.Trainer(callbacks=[SuperConvergence(num_steps=20)], **trainer_kwargs_)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel") as caught:
        trainer.fit(model)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "Raised in the LR range test's sweep" in notes
    assert "pass `drop_last=True` to the DataLoader" in notes
    after = model.state_dict()
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)


class FailsInTheTrials(TinyClassifier):
    """Raises at the first step whose LR is below the step before's: the sweep only climbs, a trial starts low."""

    def training_step(self, batch, batch_idx):
        lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])
        if lr < getattr(self, "last_lr", 0.0):
            raise RuntimeError("a step the trials took")
        self.last_lr = lr
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("scored_on", ["validation", "training"])
def test_an_error_from_a_trial_s_steps_says_where_it_came_from_with_everything_restored(tmp_path, scored_on):
    """As in the sweep: the note names the trials, and the model comes back as it was, whichever batches score them."""
    L.seed_everything(0)
    model = FailsInTheTrials(n=512)
    before = copy.deepcopy(model.state_dict())
    limits = {"limit_val_batches": 0} if scored_on == "training" else {}
    trainer = L.Trainer(
        callbacks=[SuperConvergence(num_steps=30, trial_steps=50)], **trainer_kwargs(tmp_path, **limits)
    )
    with pytest.raises(RuntimeError, match="a step the trials took") as caught:
        trainer.fit(model)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "Raised in the LR range test's trials" in notes
    assert "drop_last" not in notes  # that advice is for BatchNorm's one-sample error only
    after = model.state_dict()
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)


class AugmentsInTraining(TinyClassifier):
    """Noise added in ``on_before_batch_transfer`` in training only, as Lightning's docs branch on the stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: list[tuple[int, bool, bool]] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        self.stages.append((len(x), self.trainer.training, self.trainer.validating))
        if self.trainer.training:
            x = x + 0.1 * torch.randn_like(x)
        return x, y

    def val_dataloader(self):
        return DataLoader(make_dataset(64, seed=1), batch_size=16)


def test_the_trials_move_validation_batches_in_lightning_s_validation_stage(tmp_path):
    """Found trying the package as a new user: the trials scored held-out batches with the train-only augmentation.

    Lightning's docs have ``on_before_batch_transfer`` ask ``self.trainer.training``; the held-out batches went through
    it in the training stage, each trial drawing its own noise. Validation batches (16 here) now pass in the validation
    stage, and the training batches (32) in the training stage.
    """
    model = AugmentsInTraining()
    trainer = L.Trainer(callbacks=[SuperConvergence(trial_steps=50)], **trainer_kwargs(tmp_path, max_steps=4))
    trainer.fit(model)
    held_out = [stage for stage in model.stages if stage[0] == 16]
    assert held_out, "the premise: the trials scored validation batches"
    assert all(stage == (16, False, True) for stage in held_out)
    assert all(stage[1:] == (True, False) for stage in model.stages if stage[0] == 32)


class HookBroke(Exception):
    """A bug in the user's own batch transfer hook."""


class FailsToMoveValidationBatches(AugmentsInTraining):
    """Its ``on_before_batch_transfer`` raises on validation batches (as it would in Lightning's own validation)."""

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.validating:
            raise HookBroke("a bug in the hook")
        return super().on_before_batch_transfer(batch, dataloader_idx)


class FailsToMoveValidationBatchesItNeverValidates(FailsToMoveValidationBatches):
    """The same hook in a module without ``validation_step``: Lightning never moves its validation batches."""

    validation_step = None


def test_a_transfer_hook_that_fails_on_validation_batches_is_said_as_it_failed_and_everything_comes_back(tmp_path):
    """The user's error propagates from the trials' scoring with the range test's note, and the model is restored.

    Found trying the package as a new user: the hook's error was blamed on ``training_step`` ("failed on validation
    batch 0 in eval mode") and the trials scored training batches instead, which moved the pick. A module that never
    validates has its validation batches moved by the trials alone: for it the trials score other batches, as before,
    and the warning names the hooks.
    """
    model = FailsToMoveValidationBatches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(callbacks=[SuperConvergence(trial_steps=50)], **trainer_kwargs(tmp_path, max_steps=4))
    with pytest.raises(HookBroke, match="a bug in the hook") as raised:
        trainer.fit(model)
    assert any("range test's trials" in note for note in getattr(raised.value, "__notes__", []))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    trainer = L.Trainer(callbacks=[SuperConvergence(trial_steps=50)], **trainer_kwargs(tmp_path / "b", max_steps=4))
    with pytest.warns(RuntimeWarning, match=r"the batch transfer hooks failed on validation batch 0 \(HookBroke"):
        trainer.fit(FailsToMoveValidationBatchesItNeverValidates())


def test_timm_s_layer_decay_keeps_each_layer_s_share_of_the_lr_in_the_range_test_and_the_cycle(tmp_path):
    """Found trying the package as a new user: every layer of a layer-decayed timm ViT ran at the head's LR.

    timm's factory gives each group the same ``lr`` and its layer's share in ``lr_scale``, which timm's schedulers
    multiply in; the range test and the cycle now do so too, and ``max_lr`` is timm's base LR (the head's, share 1).
    The shares are folded into the cycle, so a second fit on the same optimizer does not apply them twice.
    """
    recorder, swept = ScheduleRecorder(), []

    class Sweep(Callback):
        def on_fit_start(self, trainer, pl_module):  # before SuperConvergence's: its optimizer's step is watched
            opt = trainer.optimizers[0]
            opt.register_step_pre_hook(lambda o, *_: swept.append([g["lr"] for g in o.param_groups]))

    scales = [group["lr_scale"] for group in TimmViT().configure_optimizers().param_groups]
    assert len(set(scales)) > 2, "the premise: layers at different shares"
    trainer = _fit(tmp_path, TimmViT(), SuperConvergence(num_steps=20, trial_steps=0), callbacks=[Sweep(), recorder])
    assert len(swept) > len(recorder.lrs) > 0
    for lrs in swept:
        assert lrs == pytest.approx([lrs[-1] * scale for scale in scales], rel=1e-9)
    groups = trainer.optimizers[0].param_groups
    assert [group["lr_scale"] for group in groups] == [scales[0]] * len(groups)  # the shares are in the cycle
    given = _fit(tmp_path / "given", TimmViT(), SuperConvergence(max_lr=0.01))
    peaks = [group["max_lr"] for group in given.optimizers[0].param_groups]
    assert peaks == pytest.approx([0.01 * scale for scale in scales], rel=1e-12)
    cached = TimmViT()
    optimizer = cached.configure_optimizers()
    cached.configure_optimizers = lambda: optimizer  # one optimizer for two fits, its shares folded by the first
    for fit in ("first", "second"):
        again = _fit(tmp_path / fit, cached, SuperConvergence(max_lr=0.01, guard=False))
        peaks = [group["max_lr"] for group in again.optimizers[0].param_groups]
        assert peaks == pytest.approx([0.01 * scale for scale in scales], rel=1e-12), fit
    far_too_high = SuperConvergence(max_lr=500.0)
    _fit(tmp_path / "rescued", TimmViT(), far_too_high, max_epochs=4)
    assert far_too_high.rescues, "the premise: the guard rescues the run"
    first = far_too_high.rescues[0]
    assert first["old_peak"] == pytest.approx(500.0)  # the guard speaks in `max_lr`'s terms
    assert far_too_high.max_lr == pytest.approx(far_too_high.rescues[-1]["new_peak"])


class WarnsAtEveryStep(TinyClassifier):
    def training_step(self, batch, batch_idx):
        warnings.warn("a warning of the user's own, at every step", UserWarning, stacklevel=1)
        return super().training_step(batch, batch_idx)


def test_a_warning_python_shows_once_is_shown_once_in_a_fit_with_trials(tmp_path):
    """Found trying the package as a new user: warnings shown once by Python's default came back once per trial.

    The trials replay each candidate's schedule, and a ``warnings.catch_warnings`` around each replayed step reset
    Python's record of the warnings already shown.
    """
    callbacks = [SuperConvergence(num_steps=10, trial_steps=50), WeightDecayBalancer()]
    trainer = L.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        trainer.fit(WarnsAtEveryStep())
    assert len(callbacks[0].result.trials) >= 2
    assert [str(w.message) for w in caught].count("a warning of the user's own, at every step") == 1


class StopsWhenGoodEnough(TinyClassifier):
    """Asks the Trainer to stop once a batch's loss is below 1."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if loss.item() < 1.0:
            self.trainer.should_stop = True
        return loss


def test_a_stop_asked_for_during_the_range_test_does_not_carry_into_the_run(tmp_path):
    """`trainer.should_stop` comes back as it was: the run trains as one given the pick does.

    Found in a review: the sweep reached a loss below the mark, and the real run then trained no step, without a word.
    """
    searched = SuperConvergence(lr_range=(1e-3, 10.0), num_steps=20, trial_steps=0)
    trainer = _fit(tmp_path / "a", StopsWhenGoodEnough(), searched, limit_train_batches=1.0, max_epochs=5)
    assert min(searched.result.losses) < 1.0, "the premise: the sweep asked to stop"
    given = _fit(
        tmp_path / "b", StopsWhenGoodEnough(), SuperConvergence(max_lr=searched.max_lr), limit_train_batches=1.0,
        max_epochs=5,
    )  # fmt: skip
    assert trainer.global_step == given.global_step > 0
