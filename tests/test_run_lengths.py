"""Runs whose length or data moves, and the parts of a fit around the range test.

Very short runs, reloaded dataloaders, data shorter than the range test, a second ``fit``; the sanity check,
validation and ``limit_train_batches``.
"""

from __future__ import annotations

import logging
import math
import warnings
from datetime import timedelta

import lightning as L
import pytest
import torch
from helpers import TinyClassifier, make_dataset, trainer_kwargs
from lightning.pytorch.callbacks import Callback, Timer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, IterableDataset

from lightning_superconv import SuperConvergence, WeightDecayBalancer
from lightning_superconv._logging import swept_at

NO_DIVERGENCE = (1e-2, 1.0)


class Probe(TinyClassifier):
    """Counts training steps and records each call's ``batch_idx`` (range-test steps included)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.batch_indices: list[int] = []

    def training_step(self, batch, batch_idx):
        self.batch_indices.append(batch_idx)
        return super().training_step(batch, batch_idx)


class LRLog(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(tmp_path, model, callbacks, **overrides):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model)
    return trainer


# ------------------------------------------------------------------------------------------------ very short runs


@pytest.mark.parametrize(
    ("max_steps", "pct_start", "three_phase"),
    [(1, 0.3, False), (2, 0.5, False), (4, 0.25, False), (3, 0.3, False), (1, 0.3, True), (2, 0.45, True)],
    ids=["1-step", "2-steps-warmup-1", "4-steps-warmup-1", "3-steps", "1-step-3-phase", "2-steps-3-phase-warmup-1"],
)
def test_very_short_runs_train_every_step(tmp_path, max_steps, pct_start, three_phase):
    """Runs of 1-4 steps, warm-ups of exactly one step (torch divides by zero there): every step at a finite LR."""
    log = LRLog()
    callback = SuperConvergence(max_lr=0.1, pct_start=pct_start, three_phase=three_phase)
    trainer = _fit(tmp_path, TinyClassifier(), [callback, log], max_steps=max_steps, max_epochs=-1)
    assert trainer.global_step == max_steps
    assert callback.total_steps == max_steps
    assert len(log.lrs) == max_steps
    assert all(math.isfinite(lr) and 0 < lr <= 0.1 + 1e-12 for lr in log.lrs)


def test_one_step_run_still_gets_a_range_test(tmp_path):
    """A one-step run reads the range test over restarted data like any run: the pick is usable and it trains."""
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    trainer = _fit(tmp_path, TinyClassifier(), [callback], max_steps=1, max_epochs=-1)
    assert len(callback.result.losses) >= 10
    assert trainer.global_step == 1


# ------------------------------------------------------------------------------------------------ reloaded dataloaders


class Reloading(TinyClassifier):
    """A train dataloader of ``sizes[epoch]`` batches, rebuilt every epoch."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = sizes

    def train_dataloader(self):
        batches = self.sizes[min(self.trainer.current_epoch, len(self.sizes) - 1)]
        return DataLoader(make_dataset(32 * batches), batch_size=32, shuffle=True)


def test_dataloader_that_grows_on_reload_holds_the_final_lr_past_the_cycle(tmp_path):
    """Sized at fit start for 3 x 2 steps, the run takes 2 + 3 + 4: it warns once and ends at the final LR."""
    log = LRLog()
    callback = SuperConvergence(max_lr=0.1)
    # with the likely cause and the fix (found trying the package as a new user: the warning named neither)
    said = r"sized for 6 steps and training went past it.*`reload_dataloaders_every_n_epochs`.*max_epochs=-1\)`"
    with pytest.warns(RuntimeWarning, match=said):
        trainer = _fit(
            tmp_path,
            Reloading([2, 3, 4]),
            [callback, log],
            max_epochs=3,
            reload_dataloaders_every_n_epochs=1,
            limit_train_batches=1.0,
        )
    assert trainer.global_step == 9
    assert callback.total_steps == 6
    final = trainer.optimizers[0].param_groups[0]["min_lr"]
    assert log.lrs[6:] == pytest.approx([final] * 3, rel=1e-9)


def test_dataloader_that_shrinks_on_reload_ends_before_the_cycle_does_and_says_so(tmp_path):
    """Sized for 3 x 4 steps, the run takes 4 + 3 + 2: it ends early in the cycle, no error, and a warning says so.

    Found trying the package as a new user: a run that grew past its cycle warned, one that ended 40 % short of it,
    its LR still at 58 % of the peak, said nothing.
    """
    callback = SuperConvergence(max_lr=0.1)
    said = r"ended 3 steps before the end of the one-cycle, planned .* over 12 steps, .*did not anneal.*reload_data"
    with pytest.warns(RuntimeWarning, match=said):
        trainer = _fit(
            tmp_path,
            Reloading([4, 3, 2]),
            [callback],
            max_epochs=3,
            reload_dataloaders_every_n_epochs=1,
            limit_train_batches=1.0,
        )
    assert trainer.global_step == 9
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 9 < callback.total_steps == 12


@pytest.mark.parametrize("stop", [None, 3])
def test_a_run_that_ends_with_its_cycle_or_by_a_stop_says_nothing_of_a_shortfall(tmp_path, stop):
    """The cycle's end reached, or a stop asked for (EarlyStopping, `max_time`): no warning of a run cut short."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.1), *([StopsAt(stop)] if stop else [])])
    assert [str(w.message) for w in caught if "before the end of the one-cycle" in str(w.message)] == []


class ValLossRises(TinyClassifier):
    """A validation loss that falls until epoch ``rises_at``, then rises: ``EarlyStopping(patience=0)`` stops there."""

    def __init__(self, rises_at: int) -> None:
        super().__init__()
        self.rises_at = rises_at

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", float(-self.current_epoch if self.current_epoch < self.rises_at else self.current_epoch))


@pytest.mark.parametrize(
    ("stop", "at_step"), [("patience", 16), ("patience_in_the_anneal", 72), ("threshold", 8), ("hook", 10)]
)
def test_early_stopping_out_of_patience_before_the_anneal_says_so_and_other_stops_do_not(tmp_path, stop, at_step):
    """Found trying the package as a new user: `EarlyStopping` ended a cycle at 91 % of its peak, silently.

    10 epochs of 8 steps, the peak at step 24. Out of patience at step 16, before the peak: said. At step 72, in the
    anneal (about 5 % of the peak): nothing said. A stopping threshold reached (the user's target) or a hook's stop
    (the user's choice): nothing said.
    """
    from lightning.pytorch.callbacks import EarlyStopping

    stopper = {
        "patience": EarlyStopping("val_loss", patience=0),
        "patience_in_the_anneal": EarlyStopping("val_loss", patience=0),
        "threshold": EarlyStopping("val_loss", stopping_threshold=0.5),
        "hook": StopsAt(10),
    }[stop]
    model = ValLossRises(rises_at=8 if stop == "patience_in_the_anneal" else 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(
            tmp_path, model, [SuperConvergence(max_lr=0.1), stopper], max_epochs=10, check_val_every_n_epoch=1
        )
    assert trainer.global_step == at_step
    said = [str(w.message) for w in caught if "did not anneal" in str(w.message)]
    if stop != "patience":
        assert said == []
        return
    (message,) = said
    assert message.startswith(
        "SuperConvergence: `EarlyStopping` ran out of patience and stopped training at step 16 of the one-cycle's 80"
    )
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert f"LR at {lr:.4g}, {100 * lr / 0.1:.0f} % of the peak (still ahead)" in message
    assert "`patience`" in message


def test_a_resumed_run_that_a_hook_stops_is_not_said_to_have_run_out_of_patience(tmp_path):
    """A checkpoint gives back the earlier stop of `EarlyStopping`, which Lightning never resets.

    Found in a review: the resumed run, stopped by a hook while its loss still improved, was said to have run out of
    patience.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    def fit(root, model, callbacks, **kwargs):
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(
            callbacks=callbacks, **trainer_kwargs(root, max_epochs=10, check_val_every_n_epoch=1, **kwargs)
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model)
        return trainer, [str(w.message) for w in caught if "did not anneal" in str(w.message)]

    last = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    stopper = EarlyStopping("val_loss", patience=0)
    _, said = fit(
        tmp_path / "a", ValLossRises(1), [SuperConvergence(max_lr=0.1), stopper, last], enable_checkpointing=True
    )
    assert len(said) == 1  # the premise: the first run ran out of patience
    L.seed_everything(0, verbose=False)
    resumed = [SuperConvergence(max_lr=0.1), EarlyStopping("val_loss", patience=0), StopsAt(40)]
    trainer = L.Trainer(callbacks=resumed, **trainer_kwargs(tmp_path / "b", max_epochs=10, check_val_every_n_epoch=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ValLossRises(rises_at=100), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 40
    assert [str(w.message) for w in caught if "did not anneal" in str(w.message)] == []


# ------------------------------------------------------------------------------------------------ short data


def test_range_test_continues_across_the_end_of_short_data(tmp_path):
    """Two batches of data and a ten-step range test: the loader restarts, as at a new epoch, and the test completes."""
    model = Probe(n=64)
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    _fit(tmp_path, model, [callback], max_epochs=1)
    assert callback.result.stop_reason in ("completed", "rose")
    assert model.batch_indices[:10] == [0, 1] * 5


def test_range_test_draws_only_the_batches_limit_train_batches_allows(tmp_path):
    """`limit_train_batches=2` of 8: the range test cycles through the same two batches training uses."""
    model = Probe()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    trainer = _fit(tmp_path, model, [callback], limit_train_batches=2, max_epochs=1)
    assert set(model.batch_indices) == {0, 1}  # the sweep, the trials and training
    assert model.batch_indices[:10] == [0, 1] * 5
    assert trainer.global_step == 2


class OneShot(IterableDataset):
    """``n`` samples that can be iterated once: ``iter`` hands out the same iterator every time."""

    def __init__(self, n: int) -> None:
        data = make_dataset(n)
        self.iterator = iter([data[i] for i in range(n)])

    def __iter__(self):
        return self.iterator


class OneShotClassifier(TinyClassifier):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.data = OneShot(n)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=32)


def test_data_read_only_once_stops_the_range_test_with_a_usable_curve(tmp_path):
    """A one-shot stream of 8 batches and a 20-step test: it stops when the data ends, picks, warns, and fit ends."""
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=20)
    with pytest.warns(RuntimeWarning, match=r"can be read only once.*training gets only what is left"):
        # `max_epochs=1`: Lightning itself would loop forever over empty epochs of an exhausted stream
        trainer = _fit(tmp_path, OneShotClassifier(8 * 32), [callback], max_steps=5, max_epochs=1)
    assert callback.result.stop_reason == "data-exhausted"
    assert 3 <= len(callback.result.losses) < 8
    assert callback.max_lr is not None
    assert trainer.state.finished


def test_data_read_only_once_and_too_short_fails_with_advice(tmp_path):
    """Too few batches for a curve: a clear error, not a crash in the middle."""
    # three batches: the fit loop has already fetched one ahead, two are left for the range test
    with pytest.raises(MisconfigurationException, match=r"ran out after 2 step\(s\).*SuperConvergence\(max_lr="):
        _fit(tmp_path, OneShotClassifier(3 * 32), [SuperConvergence(num_steps=20)], max_steps=5, max_epochs=1)


class Replayed(IterableDataset):
    """``n`` samples in a stream without a length, replayed in full at every pass."""

    def __init__(self, n: int) -> None:
        self.data = make_dataset(n)

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


class ReplayedClassifier(TinyClassifier):
    def train_dataloader(self):
        return DataLoader(Replayed(4 * 32), batch_size=32)


@pytest.mark.parametrize(("max_epochs", "warned"), [(3, True), (-1, False), (20, False)])
def test_a_stream_whose_epoch_limit_ends_the_run_before_max_steps_is_told_after_its_first_pass(
    tmp_path, max_epochs, warned
):
    """A stream has its cycle planned over ``max_steps``; ``max_epochs`` passes of 4 batches may end the run first.

    Found trying the package as a new user: ``max_epochs=2`` stopped a 100-step cycle at step 40, near its peak,
    without a word. Now the first pass says when the run will end; without an epoch limit, or with one that
    ``max_steps`` reaches first, it says nothing.
    """
    callback = SuperConvergence(max_lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, ReplayedClassifier(), [callback], max_steps=30, max_epochs=max_epochs)
    said = [str(w.message) for w in caught if "no length" in str(w.message)]
    assert callback.total_steps == 30
    assert trainer.global_step == (12 if warned else 30)
    if warned:
        assert len(said) == 1
        assert "first pass took 4 steps" in said[0]
        assert "`max_epochs=3` will stop the run at about step 12" in said[0]
    else:
        assert said == []


class StopsAt(Callback):
    """Stops the run at a given step, as ``EarlyStopping`` after a mid-epoch validation does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_a_stream_s_first_epoch_cut_short_by_a_stop_is_not_read_as_its_pass(tmp_path):
    """A first epoch that a stop cut short ends the run: its 2 steps are no pass length, and nothing is said."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(
            tmp_path, ReplayedClassifier(), [SuperConvergence(max_lr=0.1), StopsAt(2)], max_steps=30, max_epochs=3
        )
    assert trainer.global_step == 2
    assert [str(w.message) for w in caught if "no length" in str(w.message)] == []


# ------------------------------------------------------------------------------------------------ a second fit


def test_second_fit_on_a_finished_trainer_runs_no_range_test(tmp_path, caplog):
    """`fit` again on a Trainer that reached `max_epochs`: Lightning trains nothing, and no range test runs."""
    model, callback = Probe(), SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    trainer = _fit(tmp_path, model, [callback], limit_train_batches=2)
    calls = len(model.batch_indices)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer.fit(model)
    assert len(model.batch_indices) == calls
    assert callback.result is None
    assert any("has no training step left (4 run, epoch 2 of `max_epochs=2`" in r.getMessage() for r in caplog.records)


def test_second_fit_with_more_epochs_plans_a_new_cycle_over_the_steps_left(tmp_path):
    """Raising `max_epochs` and calling `fit` again continues at step 4 with a new range test and a 2-step cycle."""
    model, callback = Probe(), SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    trainer = _fit(tmp_path, model, [callback], limit_train_batches=2)
    first = callback.result
    trainer.fit_loop.max_epochs = 3
    trainer.fit(model)
    assert trainer.global_step == 6
    assert callback.result is not None
    assert callback.result != first  # measured again, on the trained model
    assert callback.total_steps == trainer.lr_scheduler_configs[0].scheduler.total_steps == 2
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_a_second_fit_logs_its_range_test_after_the_first_s(tmp_path):
    """Both range tests in one TensorBoard run: the second's curve, trials, pick and figure start where the first ended.

    Found trying the package as a new user: the second sweep was written at steps 0, 1, ... again, under the same
    tags, and TensorBoard drew both as one line going back and forth; both figures sat at step 0.
    """
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, callback = Probe(), SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _fit(tmp_path, model, [callback], limit_train_batches=2, logger=logger, log_every_n_steps=1)
    first = callback.result
    trainer.fit_loop.max_epochs = 3
    trainer.fit(model)
    second = callback.result
    assert first is not None
    assert second is not None
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("lr_range_test/loss")]
    assert steps == [*range(len(first.lrs)), *range(len(first.lrs), len(first.lrs) + len(second.lrs))]
    assert [e.value for e in events.Scalars("lr_range_test/lr")] == pytest.approx(first.lrs + second.lrs)
    assert [e.step for e in events.Scalars("lr_range_test/max_lr")] == [
        swept_at(first),
        len(first.lrs) + swept_at(second),
    ]
    trial_steps = [e.step for e in events.Scalars("lr_range_test/trial_peak")]
    assert trial_steps == [*range(len(first.trials)), *range(len(first.lrs), len(first.lrs) + len(second.trials))]
    assert [image.step for image in events.Images("lr_range_test/curve")] == [0, len(first.lrs)]


@pytest.mark.parametrize(("n", "steps"), [(384, 24), (128, 8)], ids=["longer-data", "shorter-data"])
def test_second_fit_on_data_of_another_length_sizes_the_cycle_to_the_steps_it_runs(tmp_path, n, steps):
    """After 2 epochs of 8 steps, 2 more epochs of data of another length: the cycle spans the steps that run.

    Found trying the package as a new user: the steps left were read as the whole run at the new length minus the
    steps taken (4 x 12 - 16 = 32 for 24 that ran, the LR left at a third of its peak; 4 x 4 - 16 = 0 for 8 that ran,
    with a message that no step was left and the configured LR kept).
    """
    model, callback, lrs = Probe(n=256), SuperConvergence(max_lr=0.1), LRLog()
    trainer = _fit(tmp_path, model, [callback, lrs], limit_train_batches=None)
    assert trainer.global_step == 16
    model.hparams.n = n
    trainer.fit_loop.max_epochs = 4
    trainer.fit(model)
    assert trainer.global_step == 16 + steps
    assert callback.total_steps == trainer.lr_scheduler_configs[0].scheduler.total_steps == steps
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9), max_lr=0.1, total_steps=steps
    )
    expected = []
    for _ in range(steps):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step() if len(expected) < steps else None
    assert lrs.lrs[16:] == pytest.approx(expected)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 / (25 * 1e4))


def test_callback_reused_in_a_new_trainer_measures_again(tmp_path):
    """The same callback object in a new Trainer: a new range test on the model as it is, and a cycle for that run."""
    model, callback = Probe(), SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    _fit(tmp_path, model, [callback], limit_train_batches=2)
    first = callback.result
    trainer = _fit(tmp_path, model, [callback], limit_train_batches=3, max_epochs=1)
    assert callback.result is not None
    assert callback.result != first
    assert callback.total_steps == trainer.global_step == 3


# ------------------------------------------------------------------------------------------------ around the range test


class ValidationProbe(TinyClassifier):
    """Records the first layer's weights at every validation step, and counts those steps."""

    def __init__(self) -> None:
        super().__init__()
        self.val_weights: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        self.val_weights.append(self.net[0].weight.detach().clone())
        return super().validation_step(batch, batch_idx)


def test_sanity_check_validates_the_restored_model(tmp_path):
    """The sanity check runs after the range test, on exactly the weights the model had before `fit`."""
    L.seed_everything(0, verbose=False)
    model = ValidationProbe()
    initial = model.net[0].weight.detach().clone()
    callback = SuperConvergence(num_steps=15)
    _fit(tmp_path, model, [callback], num_sanity_val_steps=1, limit_val_batches=1, limit_train_batches=2)
    assert callback.result is not None
    assert torch.equal(model.val_weights[0], initial)


def test_validation_never_runs_inside_the_range_test(tmp_path):
    """`val_check_interval=2` counts real training steps only: in a 4-step epoch, validation after steps 2 and 4."""
    model = ValidationProbe()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    trainer = _fit(
        tmp_path,
        model,
        [callback],
        val_check_interval=2,
        check_val_every_n_epoch=1,
        limit_val_batches=1,
        limit_train_batches=4,
        max_epochs=1,
    )
    assert len(callback.result.losses) >= 10
    assert trainer.global_step == 4
    assert len(model.val_weights) == 2


@pytest.mark.parametrize("callback", [SuperConvergence, WeightDecayBalancer])
def test_train_loader_without_batches_says_so(tmp_path, callback):
    """Fewer samples than a batch with `drop_last=True`: the message names the empty loader, not an unknown length."""

    class Tiny(TinyClassifier):
        def train_dataloader(self):
            return DataLoader(make_dataset(10), batch_size=32, drop_last=True)

    trainer = L.Trainer(callbacks=[callback()], **trainer_kwargs(tmp_path))
    message = r"train dataloader yields no batches.*10 samples.*batch_size=32"
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(Tiny())


class PersistentWorkers(TinyClassifier):
    """Its loader keeps one worker process (and one iterator) for the whole fit."""

    def train_dataloader(self):
        return DataLoader(
            make_dataset(self.hparams.n), batch_size=32, shuffle=True, num_workers=1, persistent_workers=True
        )


def test_range_test_on_persistent_workers_leaves_the_first_epoch_as_it_was(tmp_path):
    """With `persistent_workers=True` training sees the batches it would have seen without the range test.

    The fit loop creates its persistent worker iterator when it loads the data; the range test reads from workers of
    its own, so the fit ends bit-identical to a fit with the picked `max_lr`.
    """
    L.seed_everything(0, verbose=False)
    tested = PersistentWorkers()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=12)
    L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path / "a", max_epochs=2)).fit(tested)
    L.seed_everything(0, verbose=False)
    given = PersistentWorkers()
    L.Trainer(
        callbacks=[SuperConvergence(max_lr=callback.result.max_lr)], **trainer_kwargs(tmp_path / "b", max_epochs=2)
    ).fit(given)
    for a, b in zip(tested.parameters(), given.parameters(), strict=True):
        assert torch.equal(a, b)


def test_trials_on_a_persistent_validation_loader_leave_the_runs_validation_as_it_was(tmp_path):
    """The trials read a persistent validation loader by workers of their own: the run ends as one given the pick.

    Found in a review: the trials started the loader's own iterator; the run's first validation then only reset it,
    skipping a seed it draws from the global RNG, and dropout differed from the second epoch on.
    """
    runs = []
    for name, callback in (("a", SuperConvergence(lr_range=(1e-2, 1.0), num_steps=12, trial_steps=50)), ("b", None)):
        L.seed_everything(0, verbose=False)
        callback = callback or SuperConvergence(max_lr=runs[0][1].max_lr)
        kwargs = trainer_kwargs(tmp_path / name, max_epochs=3, check_val_every_n_epoch=1)
        # one loader object, given to `fit`: it keeps one worker process (and one iterator) for the whole fit
        val = DataLoader(make_dataset(64, seed=1), batch_size=32, num_workers=1, persistent_workers=True)
        L.Trainer(callbacks=[callback], **kwargs).fit(model := TinyClassifier(), val_dataloaders=val)
        runs.append((model, callback))
    assert runs[0][1].result.trials, "the premise: the trials read the validation loader"
    for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ accumulation schedule


@pytest.mark.parametrize(("scheduling", "steps"), [({0: 1, 1: 4}, 8 + 2 + 2), ({0: 4, 2: 1}, 2 + 2 + 8)])
def test_a_gradient_accumulation_schedule_sizes_the_cycle_to_the_steps_it_takes(tmp_path, scheduling, steps):
    """``GradientAccumulationScheduler`` changes the accumulation between epochs; the cycle counts each epoch's steps.

    Lightning's estimate divides every epoch by the accumulation in force before the first (found trying the package
    as a new user: a cycle sized to 176 steps in a run of 77 never annealed, and no warning said so). 8 batches an
    epoch, 3 epochs: the cycle spans the steps the run takes and ends annealed.
    """
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    callback = SuperConvergence(max_lr=0.5)
    trainer = _fit(
        tmp_path, TinyClassifier(), [callback, GradientAccumulationScheduler(scheduling)], max_epochs=3,
        limit_train_batches=8,
    )  # fmt: skip
    assert callback.total_steps == steps
    assert trainer.global_step == steps
    group = trainer.optimizers[0].param_groups[0]
    assert group["lr"] == pytest.approx(0.5 / 25 / 1e4)  # the cycle's final LR: max_lr / div_factor / final_div_factor


def test_a_time_limit_beside_the_epoch_limit_is_said_to_possibly_end_the_cycle_early(tmp_path, recwarn):
    """The cycle is sized in steps; `max_time` stops by the clock, mid-cycle, with the LR not annealed: said at start.

    Found trying the package as a new user: a run stopped at step 897 of 8000, silently.
    """
    said = (
        r"the time limit \(`max_time`, or a `Timer` callback's `duration`: 3600 s\) may stop this run before its cycle"
    )
    with pytest.warns(RuntimeWarning, match=said + r" ends.*8 steps"):
        _fit(tmp_path, Probe(), [SuperConvergence(max_lr=0.1)], max_time={"hours": 1}, limit_train_batches=4)
    # a `Timer` of the user's is the same clock; a short one is said in seconds, not rounded to 0 (found trying the
    # package as a new user)
    with pytest.warns(RuntimeWarning, match=r"`duration`: 0.4 s\) may stop this run"):
        _fit(tmp_path, Probe(), [SuperConvergence(max_lr=0.1), Timer(duration=timedelta(seconds=0.4))],
             limit_train_batches=4)  # fmt: skip
    recwarn.clear()
    _fit(tmp_path, Probe(), [SuperConvergence(max_lr=0.1)], limit_train_batches=4)
    assert not [w for w in recwarn if "time limit" in str(w.message)]


def test_a_resumed_run_under_a_time_limit_is_told_of_it_as_a_new_run_is(tmp_path):
    """Found in a review: the clock's warning came at a fresh fit only; a resumed fit under `max_time` heard nothing."""
    L.seed_everything(0, verbose=False)
    first = L.Trainer(callbacks=[SuperConvergence(max_lr=0.1), StopsAt(4)], **trainer_kwargs(tmp_path, max_epochs=2))
    first.fit(Probe(), train_dataloaders=DataLoader(make_dataset(128), batch_size=32))
    first.save_checkpoint(tmp_path / "one.ckpt")  # at step 4 of a cycle of 8
    resumed = L.Trainer(
        callbacks=[SuperConvergence(max_lr=0.1)], **trainer_kwargs(tmp_path, max_epochs=2, max_time={"hours": 1})
    )
    with pytest.warns(RuntimeWarning, match=r"the time limit \(`max_time`.*may stop this run before its cycle ends"):
        resumed.fit(
            Probe(), train_dataloaders=DataLoader(make_dataset(128), batch_size=32), ckpt_path=tmp_path / "one.ckpt"
        )
    assert resumed.global_step == 8
    resumed.save_checkpoint(tmp_path / "done.ckpt")
    # a run with no step left, or one the clock already stopped, is told nothing (found in a review of a first version)
    finished = L.Trainer(
        callbacks=[SuperConvergence(max_lr=0.1)], **trainer_kwargs(tmp_path, max_epochs=2, max_time={"hours": 1})
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finished.fit(
            Probe(), train_dataloaders=DataLoader(make_dataset(128), batch_size=32), ckpt_path=tmp_path / "done.ckpt"
        )
    assert not [w for w in caught if "time limit" in str(w.message)]


def _none_every_third(batch):
    """A ``collate_fn`` that drops every third batch (a bad sample, say), as Lightning lets a loader do."""
    _none_every_third.calls += 1
    return None if _none_every_third.calls % 3 == 0 else torch.utils.data.default_collate(batch)


class NoneBatches(TinyClassifier):
    """A train loader that yields None for some batches: Lightning warns and trains on the others."""

    def train_dataloader(self):
        _none_every_third.calls = 0
        return DataLoader(make_dataset(256), batch_size=32, collate_fn=_none_every_third)


def test_a_loader_yielding_only_none_batches_is_said_to(tmp_path):
    """Not "data that can be read only once" (found in a review of a first version of the fix below)."""

    class OnlyNone(TinyClassifier):
        def train_dataloader(self):
            return DataLoader(make_dataset(64), batch_size=32, collate_fn=lambda batch: None)

    with pytest.raises(
        MisconfigurationException, match=r"its batches None \(\d+ passed over\)\. Check its `collate_fn`"
    ):
        _fit(tmp_path, OnlyNone(), [SuperConvergence(num_steps=20, trial_steps=0)])


def test_data_read_only_once_with_a_none_batch_is_said_to_be_read_only_once(tmp_path):
    """A one-shot stream whose batches include a None: the cause is the stream, not None batches (found in a review)."""

    class OneShotWithNone(OneShotClassifier):
        def train_dataloader(self):
            _none_every_third.calls = 0
            return DataLoader(self.data, batch_size=32, collate_fn=_none_every_third)

    with pytest.raises(
        MisconfigurationException, match=r"ran out after 2 step\(s\) and yielded nothing when restarted"
    ):
        _fit(tmp_path, OneShotWithNone(4 * 32), [SuperConvergence(num_steps=20)], max_steps=5, max_epochs=1)


def test_a_loader_yielding_none_batches_is_range_tested_and_its_cycle_ends_annealed(tmp_path):
    """None batches are passed over by the range test as by Lightning, and the cycle they step ends annealed.

    Found in a review: the range test gave a None batch to ``training_step``, which failed; and the cycle, which
    Lightning steps at such batches too, was said to be stepped by an override the module did not have.
    """
    callback = SuperConvergence(num_steps=20, trial_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, NoneBatches(), [callback], max_epochs=2)
    assert callback.result is not None
    assert len(callback.result.losses) >= 10
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step < scheduler.total_steps == scheduler.last_epoch  # Lightning stepped it at None batches
    assert not [w for w in caught if "SuperConvergence" in str(w.message) and "stepped" in str(w.message)]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(scheduler.get_last_lr()[0])


class EndsEpochsAt(TinyClassifier):
    """``on_train_batch_start`` returns -1 at batch ``at``: Lightning ends the epoch there, and steps the scheduler."""

    def __init__(self, at: int, first_epoch_only: bool = False) -> None:
        super().__init__()
        self.at, self.first_epoch_only = at, first_epoch_only

    def on_train_batch_start(self, batch, batch_idx):
        if batch_idx == self.at and not (self.first_epoch_only and self.current_epoch > 0):
            return -1
        return None


def test_an_epoch_ended_by_a_hook_is_said_to_end_the_run_before_its_anneal_with_its_cause(tmp_path):
    """A run whose epochs a hook's -1 cut short is told that it did not anneal, and why.

    Found in a review: the batch where ``on_train_batch_start`` returned -1 was blamed on an ``lr_scheduler_step``
    override, and the warning that the run ended before its anneal, its real consequence, never came.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, EndsEpochsAt(5), [SuperConvergence(max_lr=0.1)], max_epochs=2)
    said = [str(w.message) for w in caught if "SuperConvergence" in str(w.message)]
    assert not [s for s in said if "lr_scheduler_step` override" in s]
    assert [s for s in said if "the model did not anneal" in s and "`on_train_batch_start` returning -1" in s]


@pytest.mark.parametrize("every_epoch", [False, True], ids=["first-epoch-cut", "every-epoch-cut"])
def test_a_stream_s_first_pass_ended_by_a_hook_is_said_to_be(tmp_path, every_epoch):
    """A stream's first pass that a hook's -1 cut short is read as its length with the cause said.

    Found in a review: a pass cut to 3 steps by -1 only in the first epoch was read as the stream's length without a
    word of the cut, and its advice (`max_steps=...`) would have shortened a run that reached its `max_steps`; one cut
    in every epoch does end before its anneal (a first version of the fix said nothing of either).
    """

    class Cut(EndsEpochsAt):
        def train_dataloader(self):
            return DataLoader(Replayed(8 * 32), batch_size=32)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, Cut(3, first_epoch_only=not every_epoch), [SuperConvergence(max_lr=0.1)],
                       max_steps=40, max_epochs=10)  # fmt: skip
    assert trainer.global_step == (30 if every_epoch else 40)
    said = [str(w.message) for w in caught if "no length" in str(w.message)]
    assert len(said) == 1
    assert "its first pass took 3 steps (ended by `on_train_batch_start` returning -1), and if each pass" in said[0]


class NoneInAStream(TinyClassifier):
    def train_dataloader(self):
        _none_every_third.calls = 0
        return DataLoader(Replayed(8 * 32), batch_size=32, collate_fn=_none_every_third)


def test_a_stream_with_none_batches_is_still_told_when_its_epochs_end_the_run_early(tmp_path):
    """None batches do not cut a pass: its length is read (a first version of a fix stopped reading it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, NoneInAStream(), [SuperConvergence(max_lr=0.1)], max_steps=40, max_epochs=3)
    said = [str(w.message) for w in caught if "no length" in str(w.message)]
    assert trainer.global_step < 40
    assert len(said) == 1
    assert "(ended by" not in said[0]
