"""``find_max_lr``: the range test on its own returns the curve and the pick, and leaves the model as it was."""

from __future__ import annotations

import logging
import math
import warnings

import lightning as L
import lightning.pytorch.callbacks
import pytest
import pytorch_lightning.callbacks
import torch
from helpers import BackboneClassifier, Tally, TinyClassifier, make_dataset
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_superconv import RangeTestResult, SuperConvergence, WeightDecayBalancer, find_max_lr

LR_RANGE = (1e-3, 30.0)


class CountingClassifier(TinyClassifier):
    """Counts ``training_step`` calls (the range test's included) and optimizer steps."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = Tally()

    def training_step(self, batch, batch_idx):
        self.calls += 1
        return super().training_step(batch, batch_idx)


class TrainingSteps(Callback):
    """Records the trainer and every training batch the fit loop runs (the range test's steps bypass callbacks)."""

    def __init__(self) -> None:
        self.trainer = None
        self.batches = 0

    def on_fit_start(self, trainer, pl_module):
        self.trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_returns_a_range_test_result_with_a_pick_inside_the_sweep():
    """The record holds one LR and one loss per step, rising LRs, and a pick taken from the swept LRs."""
    result = find_max_lr(TinyClassifier(), lr_range=LR_RANGE, num_steps=60)
    assert isinstance(result, RangeTestResult)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) >= 3
    assert all(a < b for a, b in zip(result.lrs, result.lrs[1:], strict=False))
    assert LR_RANGE[0] <= result.max_lr <= LR_RANGE[1]
    peaks = [trial["peak"] for trial in result.trials]
    assert result.max_lr in peaks
    # the ladder: a quarter, a half and an eighth of the LR where the loss rose back; then up or down at its edge
    assert peaks[:3] == pytest.approx([result.lrs[result.pick_index] * f for f in (0.25, 0.5, 0.125)])
    assert result.stop_reason in ("completed", "rose", "diverged", "non-finite")
    assert result.pick_reason


@pytest.mark.parametrize(
    ("run", "steps"),
    [({}, 100), ({"max_epochs": 45}, 120), ({"max_steps": 450}, 150), ({"max_epochs": 2, "max_steps": 450}, 100)],
    ids=["one-epoch", "45-epochs", "450-steps", "2-epochs-within-450-steps"],
)
def test_trials_last_a_third_of_the_run_the_trainer_kwargs_describe(run, steps):
    """Trials a third of the run `trainer_kwargs` describe, at least 100 steps.

    One epoch by default (8 steps: 100-step trials); 45 epochs of 8 steps: 360, trials of 120; `max_steps=450` alone:
    150 (the default one epoch does not cap it); with `max_epochs=2` too, the run is 16 steps: 100.
    """
    kwargs = {"accelerator": "cpu", **run}
    result = find_max_lr(TinyClassifier(), lr_range=LR_RANGE, num_steps=30, trainer_kwargs=kwargs)
    assert f"of one-cycles of {steps} steps" in result.pick_reason


def test_pick_matches_the_callbacks_range_test():
    """The standalone test is the callback's range test: same model, data and seed give the same curve and pick."""
    L.seed_everything(0, verbose=False)
    standalone = find_max_lr(TinyClassifier(), lr_range=LR_RANGE, num_steps=60, trainer_kwargs={"accelerator": "cpu"})
    L.seed_everything(0, verbose=False)
    callback = SuperConvergence(lr_range=LR_RANGE, num_steps=60)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=10_000,
    )  # fmt: skip
    trainer.fit(TinyClassifier())
    assert callback.result is not None
    assert standalone.losses == callback.result.losses
    assert standalone.max_lr == callback.max_lr


@pytest.mark.parametrize("shape", [{"pct_start": 0.9}, {"div_factor": 1.0, "three_phase": True}], ids=str)
def test_the_trials_run_the_cycle_shape_given_as_the_callback_s_do(shape):
    """Given the shape the callback will run, the trials are the callback's, and differ from torch's default shape's.

    Found in a review: `find_max_lr` took no shape, and judged the peaks on torch's default cycle, where the callback
    judged them on its own (a `pct_start=0.9` picked twice as high there).
    """

    def trials(run, **given):
        L.seed_everything(0, verbose=False)
        return [(t["peak"], t["held_out_loss"]) for t in run(lr_range=LR_RANGE, num_steps=60, **given).trials]

    def by_the_callback(**given):
        callback = SuperConvergence(**given)
        trainer = L.Trainer(
            accelerator="cpu", max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(TinyClassifier())
        return callback.result

    def by_find_max_lr(**given):
        return find_max_lr(TinyClassifier(), trainer_kwargs={"accelerator": "cpu"}, **given)

    shaped = trials(by_find_max_lr, **shape)
    assert shaped == trials(by_the_callback, **shape)
    assert shaped != trials(by_find_max_lr)


def test_cycle_momentum_asked_of_an_optimizer_without_momentum_is_refused_before_the_sweep():
    """As the callback refuses it: the trials would build a cycle that cannot cycle a momentum the optimizer lacks."""

    class WithAdagrad(CountingClassifier):
        def configure_optimizers(self):
            return torch.optim.Adagrad(self.parameters(), lr=0.01)

    model = WithAdagrad()
    with pytest.raises(ValueError, match="cycle_momentum"):
        find_max_lr(model, lr_range=LR_RANGE, num_steps=30, cycle_momentum=True)
    assert model.calls.count == 0


def test_model_is_bit_identical_afterwards():
    """Parameters and buffers (BatchNorm statistics) come back exactly, and the module is left in train mode."""
    model = TinyClassifier()
    before = _state(model)
    find_max_lr(model, lr_range=LR_RANGE, num_steps=60)
    after = _state(model)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_the_module_is_attached_afterwards_to_the_trainer_it_had():
    """None before any fit, or the user's own Trainer after one: never the range test's own.

    Found trying the package as a new user: `model.trainer` was left pointing at find_max_lr's Trainer, which it kept
    alive with all it holds.
    """
    model = TinyClassifier()
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert model._trainer is None
    own = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    own.fit(model)
    find_max_lr(torch.compile(model, backend="eager"), lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert model.trainer is own
    datamodule = L.LightningDataModule.from_datasets(train_dataset=make_dataset(64), batch_size=16)
    find_max_lr(model, datamodule=datamodule, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert model.trainer is own
    assert datamodule.trainer is None  # found in a review: it held the function's Trainer


def test_a_compiled_module_comes_back_uncompiled_inside():
    """``find_max_lr(torch.compile(model))``: Lightning's fit wraps the inner module's steps by dynamo; they are undone.

    Found trying the package as a new user: left wrapped, a later fit of the uncompiled module ran compiled, and a fit
    of the compiled one wrapped its steps twice.
    """
    model = TinyClassifier()
    compiled = torch.compile(model, backend="eager")
    before = dict(vars(model))
    find_max_lr(compiled, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert model._compiler_ctx is None
    for name in ("forward", "training_step", "validation_step", "test_step", "predict_step"):
        assert name not in vars(model), name  # the class's own methods again
    assert set(vars(model)) <= set(before)


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_a_precision_that_converts_the_model_gives_it_back_in_its_own_dtype_bit_for_bit(precision):
    """Lightning converts the model to a `*-true` precision when the fit starts; `find_max_lr` gives it back as it was.

    Before, it came back converted (bfloat16 weights rounded, and a plain fit after it failed on mixed dtypes).
    """
    model = TinyClassifier()
    before = _state(model)
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0, trainer_kwargs={"precision": precision})
    after = _state(model)
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}
    assert all(torch.equal(after[k], before[k]) for k in before)
    # and what it says of itself (found in a review: `model.dtype` said bfloat16 over float32 weights)
    assert model.dtype == torch.float32
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model)  # fmt: skip


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_a_precision_that_converts_the_model_gives_its_metrics_back_in_their_own_dtype(precision):
    """A `*-true` precision converts a torchmetrics metric's states with the model; `find_max_lr` gives them back.

    Found in a review: after `find_max_lr` under `bf16-true` a `MeanMetric` held bfloat16 states (its own `dtype` said
    float32), and the user's fit then accumulated in bfloat16. One metric held in a plain dict, as users' modules do.
    """
    import torchmetrics

    model = TinyClassifier()
    model.mean = torchmetrics.MeanMetric()
    model.metrics = {"mse": torchmetrics.MeanSquaredError()}
    model.mean.update(torch.tensor([1.0, 2.0]))
    before = {name: value.clone() for name, value in model.mean.metric_state.items()}
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0, trainer_kwargs={"precision": precision})
    for name, value in model.mean.metric_state.items():
        assert value.dtype == before[name].dtype, name
        assert torch.equal(value, before[name]), name
    assert model.metrics["mse"].sum_squared_error.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in model.mean._defaults.values())
    assert model.mean.compute().item() == 1.5


class LazyInSetup(TinyClassifier):
    """Lazy layers created in ``setup``, a place Lightning documents for building layers."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.LazyLinear(32), torch.nn.ReLU(), torch.nn.LazyLinear(4))

    def setup(self, stage):
        with torch.no_grad():
            self.net(torch.zeros(2, 16))


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_lazy_layers_created_in_setup_come_back_usable(tmp_path, precision):
    """Found in a review: their empty data was put back over the weights `setup` created; every forward then failed.

    They come back as `setup` made them (the range test restores those values; under `bf16-true`, rounded, in their
    own dtype: found in a review of the first fix, which left them bfloat16), and a fit trains them.
    """
    L.seed_everything(0, verbose=False)
    model = LazyInSetup()
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0, trainer_kwargs={"precision": precision})
    assert [tuple(p.shape) for p in model.parameters()] == [(32, 16), (32,), (4, 32), (4,)]
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model(torch.zeros(2, 16)).shape == (2, 4)
    kept = [p.detach().clone() for p in model.parameters()]
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(model)  # fmt: skip
    assert not all(torch.equal(a, b) for a, b in zip(kept, model.parameters(), strict=True))


def test_the_rng_streams_come_back_as_they_were():
    """A seeded ``fit`` after ``find_max_lr`` sees the data order it would have seen without it.

    Found trying the package as a new user: the Trainer that ``find_max_lr`` runs drew from the global RNG.
    """
    import random

    import numpy as np

    model = TinyClassifier()
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])

    class FailsAtStep3(TinyClassifier):
        def training_step(self, batch, batch_idx):
            if batch_idx == 3:
                raise ValueError("a bug at step 3")
            return super().training_step(batch, batch_idx)

    failing = FailsAtStep3()
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    with pytest.raises(ValueError, match="a bug at step 3"):  # also when the range test raises
        find_max_lr(failing, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])


@pytest.mark.parametrize("form", ["loader", "dict"])
def test_the_generators_the_given_loaders_own_come_back_as_they_were(form):
    """A ``fit`` after ``find_max_lr`` on a loader with its own generator sees the first batches it would without it.

    Found trying the package as a new user: the fit inside ``find_max_lr`` draws a seed from the loader's generator
    when it sets up its data, so the next ``fit`` shuffled differently (the callback's own range test was unaffected).
    """

    def loader(seed: int) -> DataLoader:
        return DataLoader(make_dataset(128), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed))

    class Records(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def training_step(self, batch, batch_idx):
            x, y = batch if form == "loader" else batch["a"]
            self.seen.append(y)
            return super().training_step((x, y), batch_idx)

    def first_targets(data) -> torch.Tensor:
        model = Records()
        L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(model, data)  # fmt: skip
        return torch.cat(model.seen)

    def data():
        return loader(0) if form == "loader" else {"a": loader(0), "b": loader(1)}

    plain = first_targets(data())
    searched = data()
    generators = [searched.generator] if form == "loader" else [v.generator for v in searched.values()]
    states = [g.get_state() for g in generators]
    find_max_lr(Records(), searched, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert all(torch.equal(g.get_state(), state) for g, state in zip(generators, states, strict=True))
    assert torch.equal(first_targets(searched), plain)


def test_a_generator_the_model_holds_comes_back_as_it_was():
    """A model drawing noise from a `torch.Generator` of its own: ``find_max_lr`` leaves it as it found it."""

    class Noisy(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.noise = torch.Generator().manual_seed(3)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return super().training_step((x + torch.randn(x.shape, generator=self.noise), y), batch_idx)

    model = Noisy()
    before = model.noise.get_state()
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert torch.equal(model.noise.get_state(), before)


def test_no_training_step_is_taken():
    """The range test's steps are the only ones: the fit loop runs no batch and the global step stays 0."""
    model = CountingClassifier()
    steps = TrainingSteps()
    result = find_max_lr(model, lr_range=LR_RANGE, num_steps=30, trainer_kwargs={"callbacks": [steps]})
    assert steps.batches == 0
    assert steps.trainer.global_step == 0
    # the sweep's steps, each trial's steps (those that ran before a trial diverged) and the held-out scoring
    assert model.calls >= len(result.losses) + result.skipped_steps


@pytest.mark.parametrize("minimum", [{"min_epochs": 3}, {"min_steps": 5}], ids=["min_epochs", "min_steps"])
def test_a_minimum_run_length_in_trainer_kwargs_does_not_make_it_train(minimum):
    """Lightning trains on past ``should_stop`` until ``min_epochs``/``min_steps``: the probe's Trainer drops them."""
    model = TinyClassifier()
    before = _state(model)
    steps = TrainingSteps()
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0, trainer_kwargs={"callbacks": [steps], **minimum})
    assert steps.batches == 0
    assert steps.trainer.global_step == 0
    after = _state(model)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_a_manual_optimization_module_is_refused_with_what_to_do():
    """The message speaks of `find_max_lr`, not of a callback the user never added."""

    class Manual(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(MisconfigurationException, match=r"find_max_lr cannot step your optimizer") as info:
        find_max_lr(Manual(), lr_range=LR_RANGE, num_steps=20)
    assert "callback" not in str(info.value)


def test_takes_a_datamodule():
    """Data can come from a datamodule instead of the model's own ``train_dataloader``."""

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(make_dataset(128, seed=3), batch_size=16, shuffle=True)

    result = find_max_lr(TinyClassifier(), datamodule=Data(), lr_range=LR_RANGE, num_steps=40)
    assert math.isfinite(result.max_lr)


def test_a_datamodule_given_where_trainer_fit_takes_it_too_is_taken_and_left_unattached():
    """`Trainer.fit(model, dm)` takes it in `train_dataloaders`: so does `find_max_lr`, and gives its `trainer` back.

    Found in a review: given there, it kept this function's own Trainer attached, and alive.
    """

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(make_dataset(128, seed=3), batch_size=16, shuffle=True)

    data = Data()
    result = find_max_lr(TinyClassifier(), data, lr_range=LR_RANGE, num_steps=40)
    assert math.isfinite(result.max_lr)
    assert data.trainer is None


def test_a_datamodule_that_is_not_one_is_refused_naming_the_argument():
    """Its third positional argument is `datamodule`, where `Trainer.fit`'s is `val_dataloaders`.

    Found in a review: `find_max_lr(model, train, val)` failed with Lightning's "You cannot pass `train_dataloader` or
    `val_dataloaders` to `trainer.fit(datamodule=...)`", and `datamodule=loader` with an `AttributeError`.
    """
    train = DataLoader(make_dataset(128), batch_size=16)
    val = DataLoader(make_dataset(64, seed=1), batch_size=16)
    expected = r"`find_max_lr`'s `datamodule` takes a `LightningDataModule`, got DataLoader .*`val_dataloaders=\.\.\.`"
    with pytest.raises(TypeError, match=expected):
        find_max_lr(TinyClassifier(), train, val)
    with pytest.raises(TypeError, match=expected):
        find_max_lr(TinyClassifier(), datamodule=val)


def test_a_model_or_datamodule_of_the_wrong_kind_is_refused_naming_it():
    """A plain torch module; a datamodule of the other Lightning distribution.

    Found in a review: an `AttributeError` on `_trainer`, and "takes a `LightningDataModule`" of one.
    """

    class Data(pytorch_lightning.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(make_dataset(128), batch_size=16)

    with pytest.raises(TypeError, match=r"`find_max_lr`'s `model` takes a LightningModule .*got Linear"):
        find_max_lr(torch.nn.Linear(2, 2))
    with pytest.raises(
        TypeError, match=r"of the other Lightning distribution than the model's \(`lightning.pytorch`\)"
    ):
        find_max_lr(TinyClassifier(), datamodule=Data())


def test_gradients_the_model_holds_come_back():
    """Found in a review: Lightning's `fit` zeroed them after the range test had put them back."""
    model = TinyClassifier()
    for param in model.parameters():
        param.grad = torch.full_like(param, 1.5)
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert all(
        param.grad is not None and torch.equal(param.grad, torch.full_like(param, 1.5)) for param in model.parameters()
    )


def test_takes_dataloaders():
    """Data can be passed as a dataloader, as for ``Trainer.fit``."""
    loader = DataLoader(make_dataset(128, seed=3), batch_size=16, shuffle=True)
    result = find_max_lr(TinyClassifier(), loader, lr_range=LR_RANGE, num_steps=40)
    assert math.isfinite(result.max_lr)


def test_val_dataloaders_are_what_the_trials_score_on_as_in_the_callback():
    """Given as for ``Trainer.fit``, the validation data scores the trials: the held-out losses of the callback's."""
    train = make_dataset(256)
    val = DataLoader(make_dataset(128, seed=5), batch_size=32)
    L.seed_everything(0, verbose=False)
    given = find_max_lr(
        TinyClassifier(), DataLoader(train, batch_size=32, shuffle=True), val_dataloaders=val, num_steps=40,
        trainer_kwargs={"accelerator": "cpu"},
    )  # fmt: skip
    L.seed_everything(0, verbose=False)
    callback = SuperConvergence(num_steps=40)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=10_000,
    )  # fmt: skip
    trainer.fit(TinyClassifier(), DataLoader(train, batch_size=32, shuffle=True), val)
    assert callback.result is not None
    assert given.trials == callback.result.trials
    L.seed_everything(0, verbose=False)
    unvalidated = find_max_lr(
        TinyClassifier(), DataLoader(train, batch_size=32, shuffle=True), num_steps=40,
        trainer_kwargs={"accelerator": "cpu", "limit_val_batches": 0},
    )  # fmt: skip
    assert [t["held_out_loss"] for t in unvalidated.trials] != [t["held_out_loss"] for t in given.trials]


def test_trainer_kwargs_reach_the_trainer():
    """``trainer_kwargs`` configure the Trainer the test runs on (here gradient accumulation)."""
    model = CountingClassifier()
    result = find_max_lr(
        model, lr_range=LR_RANGE, num_steps=20, trial_steps=0, trainer_kwargs={"accumulate_grad_batches": 2}
    )
    assert model.calls == 2 * (len(result.losses) + result.skipped_steps)


@pytest.mark.parametrize(
    "callback",
    [
        lambda tmp_path: lightning.pytorch.callbacks.TQDMProgressBar(refresh_rate=5),
        lambda tmp_path: lightning.pytorch.callbacks.RichProgressBar(),
        lambda tmp_path: lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path),
    ],
    ids=["tqdm", "rich", "checkpoint"],
)
def test_a_progress_bar_or_checkpoint_callback_in_trainer_kwargs_switches_its_own_on(tmp_path, callback):
    """Found trying the package as a new user: Lightning refused it, blaming `enable_progress_bar=False` (our default).

    A switch given explicitly stays the user's: Lightning's own error then names what they set.
    """
    given = callback(tmp_path)
    result = find_max_lr(CountingClassifier(), lr_range=LR_RANGE, num_steps=20, trial_steps=0,
                         trainer_kwargs={"callbacks": [given], "default_root_dir": tmp_path})  # fmt: skip
    assert result.max_lr > 0
    switch = "enable_checkpointing" if "checkpoint" in type(given).__name__.lower() else "enable_progress_bar"
    with pytest.raises(MisconfigurationException, match=f"`{switch}=False`"):
        find_max_lr(CountingClassifier(), num_steps=20, trainer_kwargs={"callbacks": [given], switch: False})


def test_a_checkpoint_callback_given_and_reused_in_the_real_fit_saves_where_that_fit_saves(tmp_path):
    """Found trying the package as a new user: `ModelCheckpoint` kept the folder it resolved in `find_max_lr`'s fit.

    Reused in the real fit (the notebook recipe), it saved there, in the working directory, away from that fit's logs.
    """
    checkpoint = lightning.pytorch.callbacks.ModelCheckpoint(save_last=True)
    find_max_lr(CountingClassifier(), lr_range=LR_RANGE, num_steps=20, trial_steps=0,
                trainer_kwargs={"callbacks": [checkpoint], "default_root_dir": tmp_path / "find"})  # fmt: skip
    assert checkpoint.dirpath is None  # as given
    trainer = L.Trainer(
        default_root_dir=tmp_path / "real", callbacks=[checkpoint], max_epochs=1, limit_train_batches=2,
        limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(CountingClassifier())
    assert checkpoint.last_model_path.startswith(str(tmp_path / "real"))


def test_plot_and_a_logged_fit_leave_the_users_matplotlib_backend_alone(tmp_path):
    """Found trying the package as a new user: `plot()` switched the backend to Agg, so `plt.show()` showed nothing.

    `plot()` draws with pyplot at the user's backend; the callback's TensorBoard figure is drawn outside pyplot and
    leaves no pyplot figure open. A logger given in `trainer_kwargs` gets the range test's curve, as the callback's.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")
        logger = TensorBoardLogger(tmp_path, name="find")
        result = find_max_lr(TinyClassifier(), lr_range=LR_RANGE, num_steps=20, trial_steps=0,
                             trainer_kwargs={"logger": logger})  # fmt: skip
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []  # the logged figure was never pyplot's
        fig = result.plot()
        assert matplotlib.get_backend() == "svg"
        plt.close(fig)
    finally:
        matplotlib.use(before)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert [e.value for e in events.Scalars("lr_range_test/loss")] == pytest.approx(result.losses, rel=1e-6)
    assert events.Images("lr_range_test/curve")


def test_plot_draws_a_curve_whose_smoothed_loss_holds_an_inf():
    """An edited or hand-built result with an inf in its smoothed curve plots (the axis limits skip it)."""
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    result = RangeTestResult(lrs, [2.0, 1.5, 1.0, 3.0], [2.0, math.inf, 1.0, 3.0], 0.05, 3, "test", "diverged")
    fig = result.plot()
    assert fig.axes[0].get_ylim()[1] < math.inf


def test_plot_draws_the_curve_and_the_pick():
    """``result.plot()``: a log LR axis, the raw and smoothed curves, the rise, the peaks tried and the pick marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = find_max_lr(TinyClassifier(), lr_range=LR_RANGE, num_steps=40)
    fig = result.plot()
    try:
        (ax,) = fig.axes
        assert ax.get_xscale() == "log"
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines["loss"].get_ydata()) == result.losses
        assert list(lines["smoothed"].get_ydata()) == result.smoothed
        pick = next(line for label, line in lines.items() if label.startswith("max_lr"))
        assert pick.get_xdata()[0] == result.max_lr
        rise = next(line for label, line in lines.items() if label.startswith("loss rose back"))
        assert rise.get_xdata()[0] == result.lrs[result.pick_index]
        tried = [line.get_xdata()[0] for line in ax.get_lines() if line.get_color() == lines["peaks tried"].get_color()]
        assert sorted(tried) == sorted(t["peak"] for t in result.trials)
    finally:
        plt.close(fig)


def test_find_max_lr_says_what_it_will_take_as_it_starts(caplog):
    """As the callback does (found trying the package as a new user: a fit sat silent before the range test's pick)."""
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        find_max_lr(TinyClassifier(), lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    (line,) = [r.getMessage() for r in caplog.records if "running the LR range test" in r.getMessage()]
    assert line == (
        "find_max_lr: running the LR range test: a sweep of up to 30 steps, and no trials (`trial_steps=0`); the "
        "weights and all training state are put back when it ends."
    )


def test_the_logged_figure_and_plot_keep_their_axis_labels_inside_the_figure():
    """Found trying the package as a new user: the TensorBoard figure's x-axis label was cut off at its bottom edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lightning_superconv._logging import range_test_figure

    lrs = [1e-4 * 1.2**k for k in range(50)]
    losses = [2.3 - 0.02 * k if k < 40 else 1.5 + 0.3 * (k - 40) for k in range(50)]
    result = RangeTestResult(lrs, losses, losses, lrs[30], 40, "the loss rose back", "diverged")
    try:
        for fig in (range_test_figure(result, Figure), result.plot()):
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            (ax,) = fig.axes
            assert ax.xaxis.label.get_window_extent(canvas.get_renderer()).y0 >= 0
            assert ax.yaxis.label.get_window_extent(canvas.get_renderer()).x0 >= 0
    finally:
        plt.close("all")


class InterruptedAt(TinyClassifier):
    """Ctrl-C at its ``calls``-th ``training_step``, as a user interrupting a search that takes too long."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls_left = calls

    def training_step(self, batch, batch_idx):
        self.calls_left -= 1
        if self.calls_left == 0:
            raise KeyboardInterrupt
        return super().training_step(batch, batch_idx)


def test_ctrl_c_in_find_max_lr_raises_keyboard_interrupt_and_leaves_ctrl_c_working(tmp_path):
    """Lightning's ``fit`` answers Ctrl-C by ignoring further Ctrl-C and exiting the process (``SystemExit``).

    Found trying the package as a new user: ``find_max_lr`` passed that on, so a notebook ignored every later Ctrl-C
    and a script's ``except KeyboardInterrupt`` never ran. The model comes back as it was.
    """
    import signal

    model = InterruptedAt(calls=5)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    handler = signal.getsignal(signal.SIGINT)  # (a shell's background job starts with Ctrl-C ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as raised:
            find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trainer_kwargs={"default_root_dir": str(tmp_path)})
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, handler)
    assert raised.traceback[-1].name == "training_step"  # the user's own interrupt, where it happened
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_unknown_argument_raises_type_error():
    """A misspelt range-test argument fails before anything runs, naming it and what is accepted."""
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['num_step'\].*trainer_kwargs"):
        find_max_lr(TinyClassifier(), num_step=10)


@pytest.mark.parametrize("given", [[("max_epochs", 1)], "max_epochs=1"])
def test_trainer_kwargs_that_are_no_mapping_are_refused_naming_the_argument(given):
    """Found trying the package as a new user: a list gave a bare ``TypeError`` from deep inside, naming nothing."""
    with pytest.raises(TypeError, match=r"`trainer_kwargs` takes a mapping of `Trainer` arguments.*got (list|str)"):
        find_max_lr(TinyClassifier(), trainer_kwargs=given)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"callbacks": [SuperConvergence()]}, r"remove SuperConvergence from `trainer_kwargs\['callbacks'\]`"),
        ({"callbacks": WeightDecayBalancer()}, r"remove WeightDecayBalancer from"),
        ({"fast_dev_run": True}, r"`fast_dev_run=True`.*Remove it"),
        ({"fast_dev_run": 3}, r"`fast_dev_run=3`"),
        # Lightning's finder of either distribution (found trying the package as a new user: it ran, set the model's
        # `lr` and moved the pick)
        ({"callbacks": [lightning.pytorch.callbacks.LearningRateFinder()]}, r"remove LearningRateFinder from"),
        ({"callbacks": [pytorch_lightning.callbacks.LearningRateFinder()]}, r"remove LearningRateFinder from"),
    ],
)
def test_our_callbacks_and_fast_dev_run_in_trainer_kwargs_are_refused_before_anything_runs(given, said):
    """Our callbacks or ``fast_dev_run`` in ``trainer_kwargs`` fail before any step.

    Found trying the package as a new user: a SuperConvergence there ran a range test of its own first and installed
    its cycle; ``fast_dev_run`` ran the range test on one batch.
    """
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=said):
        find_max_lr(model, trainer_kwargs=given)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_loader_without_batches_or_a_run_told_to_run_none_gets_the_callback_s_message():
    """The callback's messages, where an empty loader was blamed on data read only once.

    Found trying the package as a new user; `limit_train_batches=0` crashed inside Lightning.
    """
    empty = DataLoader(make_dataset(20), batch_size=32, drop_last=True)
    with pytest.raises(MisconfigurationException, match=r"yields no batches \(20 samples, `batch_size=32` with `drop_"):
        find_max_lr(TinyClassifier(), empty, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    with pytest.raises(MisconfigurationException, match=r"no training batch to run.*`limit_train_batches=0`"):
        find_max_lr(TinyClassifier(), trainer_kwargs={"limit_train_batches": 0}, num_steps=20, trial_steps=0)
    with pytest.raises(MisconfigurationException, match=r"no training batch to run.*`max_epochs=0`"):
        find_max_lr(TinyClassifier(), trainer_kwargs={"max_epochs": 0}, num_steps=20, trial_steps=0)


@pytest.mark.parametrize("model", [None, "my_model", torch.nn.Linear(2, 1).state_dict()])
def test_a_model_that_is_no_module_gets_a_message_naming_the_argument(model):
    """A clear message: ``None`` failed deep inside ("'NoneType' object has no attribute 'modules'"; a new user's)."""
    with pytest.raises(TypeError, match=r"`find_max_lr`'s `model` takes a LightningModule.*got "):
        find_max_lr(model, DataLoader(make_dataset(64), batch_size=32))


def test_lr_range_and_trainer_callbacks_are_taken_as_the_callback_and_the_trainer_take_them():
    """`lr_range` as a tensor pair, a bad one with the callback's message; one callback in `trainer_kwargs`."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    result = find_max_lr(TinyClassifier(), lr_range=torch.tensor(LR_RANGE), num_steps=20, trial_steps=0)
    assert result.lrs[0] == pytest.approx(LR_RANGE[0])
    with pytest.raises(TypeError, match=r"`lr_range` must be a pair \(start, end\) of positive floats.*got 0.1"):
        find_max_lr(TinyClassifier(), lr_range=0.1)
    found = find_max_lr(
        TinyClassifier(), trainer_kwargs={"callbacks": LearningRateMonitor()}, lr_range=LR_RANGE, num_steps=20,
        trial_steps=0,
    )  # fmt: skip
    assert found.max_lr > 0


def test_a_frozen_backbone_in_trainer_kwargs_warns_that_the_test_measures_the_head_alone():
    """``BackboneFinetuning`` freezes the backbone at fit start: the range test measures the head, as in the callback.

    The callback warned (a new user's pick was 15x the whole network's); ``find_max_lr`` said nothing.
    """
    from lightning.pytorch.callbacks import BackboneFinetuning

    with pytest.warns(RuntimeWarning, match=r"find_max_lr: .*`BackboneFinetuning` holds part of the model frozen"):
        find_max_lr(
            BackboneClassifier(), trainer_kwargs={"callbacks": [BackboneFinetuning(unfreeze_backbone_at_epoch=1)]},
            lr_range=LR_RANGE, num_steps=20, trial_steps=0,
        )  # fmt: skip
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        find_max_lr(BackboneClassifier(), lr_range=LR_RANGE, num_steps=20, trial_steps=0)
        # a backbone that joins after the run `trainer_kwargs` describes: what the test measured is what trains, as
        # the callback reads it (found in a review: warned of a backbone joining at epoch 10 of a 3-epoch run)
        find_max_lr(
            BackboneClassifier(),
            trainer_kwargs={"callbacks": [BackboneFinetuning(unfreeze_backbone_at_epoch=3)], "max_epochs": 3},
            lr_range=LR_RANGE, num_steps=20, trial_steps=0,
        )  # fmt: skip
    assert not [w for w in said if "frozen" in str(w.message)]


class TenClassMLP(L.LightningModule):
    """An MLP over 64 features and ten classes, with SGD at LR 0.01: a model that learns within a few dozen steps."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def _ten_class_loaders():
    """Ten Gaussian classes in 64 non-negative features (as pixel intensities), 1,500 to train on and 300 held out."""
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(0)
    means = torch.randn(10, 64, generator=generator)
    y = torch.randint(0, 10, (1800,), generator=generator)
    x = (means[y] + torch.randn(1800, 64, generator=generator)).clamp(0, None) / 4
    order = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(x[:1500], y[:1500]), batch_size=32, shuffle=True, generator=order)
    return train, DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=64)


@pytest.mark.parametrize(
    ("lr_range", "said", "not_said"),
    [((1e-3, 2e-3), "below your optimizer's own LR (0.01): the pick", "comes from the sweep's end")],
    ids=["ends-below-own-lr"],
)
def test_a_sweep_range_that_misses_the_divergence_is_said_for_what_it_is(lr_range, said, not_said):
    """Found trying the package as a new user, with `lr_range` set by hand.

    Ending below the optimizer's own LR, the pick came from the trials from that LR up, while a warning blamed it on
    the sweep's end and on optimizers that bound their own step.
    """
    L.seed_everything(0, verbose=False)
    train, val = _ten_class_loaders()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = find_max_lr(
            TenClassMLP(), train_dataloaders=train, val_dataloaders=val, lr_range=lr_range,
            trainer_kwargs={"max_epochs": 3, "enable_progress_bar": False, "logger": False, "accelerator": "cpu"},
        )  # fmt: skip
    messages = [str(w.message) for w in caught if "SuperConvergence" in str(w.message)]
    assert any(said in m for m in messages), messages
    if not_said is not None:
        assert not any(not_said in m for m in messages)
        assert result.max_lr > result.lrs[-1]


def test_a_sweep_range_that_starts_above_divergence_is_an_error_that_says_so():
    """Found trying the package as a new user, with `lr_range=(50, 1000)` set by hand.

    The reading took its start from a blown-up head and a trial at chance "did best", with no warning. A sweep blown up
    from its first step shows no fall: an error, naming `lr_range[0]` (the running median's first point, read from a
    shortened window, had passed for a fall, and a pick was installed with a warning).
    """
    L.seed_everything(0, verbose=False)
    train, val = _ten_class_loaders()
    said = r"the sweep starts, at lr 50, above where this model's loss diverges.*Lower `lr_range\[0\]`"
    with pytest.raises(MisconfigurationException, match=said):
        find_max_lr(
            TenClassMLP(), train_dataloaders=train, val_dataloaders=val, lr_range=(50.0, 1000.0),
            trainer_kwargs={"max_epochs": 3, "enable_progress_bar": False, "logger": False, "accelerator": "cpu"},
        )  # fmt: skip


class ScriptedCurve(L.LightningModule):
    """A loss that follows a given curve, one value per training step, whatever the LR (a range test's reading)."""

    def __init__(self, curve):
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)
        self.curve = curve
        self.calls = 0

    def training_step(self, batch, batch_idx):
        self.calls += 1
        return self.lin.weight.sum() * 0.0 + self.curve[min(self.calls, len(self.curve)) - 1]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_the_rise_is_looked_for_after_the_lowest_point_past_the_running_medians_edge():
    """The rise lies after the dip, not in a bump of the first steps.

    Found in a review: a curve low in its first losses, a bump above its start, then a clear dip, had its rise read in
    the bump from the running median's first point (read from a shortened window), and a peak of 7.8e-7, below the
    sweep's first LR, picked without a word.
    """
    n = 100
    curve = [2.0] * 3 + [4.0, 4.4] * 6 + [4.0] + [2.6] * 50
    curve += [3.0 + 0.3 * k for k in range(n - len(curve))]
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
    result = find_max_lr(
        ScriptedCurve(curve), data, trial_steps=0, num_steps=n, divergence_threshold=100.0,
        trainer_kwargs={"enable_progress_bar": False, "logger": False, "accelerator": "cpu"},
    )  # fmt: skip
    # a quarter of the LR where the loss is back above its start, past the dip (steps 16 to 65)
    assert 4 * result.max_lr > result.lrs[65]


def test_a_sweep_too_short_to_read_says_so_instead_of_that_the_loss_never_fell():
    """A sweep stopped before its medians' window filled: an error that says so.

    Found in a review: a loss that fell for seven steps and then was NaN, in a sweep of 200 steps (medians over 13
    losses), was said never to have fallen, with advice to widen `lr_range`.
    """
    curve = [3.0 - 0.3 * k for k in range(1, 8)] + [math.nan] * 200
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
    said = r"the sweep ran 7 steps, too few to read a fall from .*13 losses.*NaN/inf\. Start the sweep lower"
    with pytest.raises(MisconfigurationException, match=said):
        find_max_lr(
            ScriptedCurve(curve), data, trial_steps=0, num_steps=200,
            trainer_kwargs={"enable_progress_bar": False, "logger": False, "accelerator": "cpu"},
        )  # fmt: skip


def test_a_flat_loss_is_never_said_to_have_risen():
    """A loss equal at every step: the sweep goes on to its end, and says so.

    Found in a review: the running average's rounding (1.0000000000000002 against 1.0) read as a rise, and the sweep
    stopped 25 steps in, said to have "rose", beside "the loss never fell below where it started".
    """
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
    with pytest.raises(MisconfigurationException, match=r"never fell .* after 30 steps \(completed\)"):
        find_max_lr(
            ScriptedCurve([1.0] * 100), data, trial_steps=0, num_steps=20,
            trainer_kwargs={"enable_progress_bar": False, "logger": False, "accelerator": "cpu"},
        )  # fmt: skip


def test_find_max_lr_s_errors_give_advice_in_its_own_arguments():
    """Advice in `find_max_lr`'s own arguments, and no "skip the range test" to one who asked for it.

    Found in a review: find_max_lr's errors told its users to pass `SuperConvergence(lr_range=...)` and to "skip the
    range test" they had asked for.
    """
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
    with pytest.raises(MisconfigurationException) as raised:
        find_max_lr(
            ScriptedCurve([math.nan] * 10), data, trial_steps=0, num_steps=20,
            trainer_kwargs={"enable_progress_bar": False, "logger": False, "accelerator": "cpu"},
        )  # fmt: skip
    said = str(raised.value)
    assert "start the sweep lower with `find_max_lr(..., lr_range=(start, end))`" in said
    assert "choose the peak yourself: `SuperConvergence(max_lr=...)` runs no range test" in said
    assert "skip the range test" not in said


def test_a_sweep_stopped_by_a_nan_loss_names_the_lr_of_its_last_finite_step_as_such():
    """Found in a review: the reason said the loss diverged at the last finite step's LR; the NaN came a step later."""
    curve = [3.0 - 0.02 * k for k in range(60)] + [math.nan] * 200
    data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
    result = find_max_lr(
        ScriptedCurve(curve), data, trial_steps=0, num_steps=100,
        trainer_kwargs={"enable_progress_bar": False, "logger": False, "accelerator": "cpu"},
    )  # fmt: skip
    assert result.stop_reason == "non-finite"
    assert result.pick_reason.startswith(f"the loss diverged at the step after lr {result.lrs[-1]:.3g}, where")


def test_a_validation_loader_of_no_batch_leaves_the_trials_to_the_training_batches():
    """The trials score the training batches after their own, as without validation data.

    Found in a review: with fewer samples than a batch and `drop_last=True`, the trials scored nothing and every one
    read as diverged ("every trial cycle diverged ... may come from the data").
    """
    empty = DataLoader(make_dataset(10, seed=1), batch_size=32, drop_last=True)
    result = find_max_lr(
        TinyClassifier(), DataLoader(make_dataset(256), batch_size=32), val_dataloaders=empty, lr_range=LR_RANGE,
        num_steps=20, trial_steps=50, trainer_kwargs={"enable_progress_bar": False, "logger": False},
    )  # fmt: skip
    assert result.trials
    assert all(math.isfinite(trial["held_out_loss"]) for trial in result.trials)


class UncountedStream(torch.utils.data.IterableDataset):
    """Two validation batches, and a `__len__` that raises `NotImplementedError`: Lightning reads it as no length."""

    def __iter__(self):
        data = make_dataset(64, seed=1)
        for start in range(0, 64, 32):
            yield data[start : start + 32]

    def __len__(self):
        raise NotImplementedError("a stream of unknown length")


def test_a_validation_loader_whose_length_raises_not_implemented_is_read_as_it_comes():
    """Found in a review: the check for a loader of no batch asked its length and raised where Lightning reads none."""
    result = find_max_lr(
        TinyClassifier(), DataLoader(make_dataset(256), batch_size=32),
        val_dataloaders=DataLoader(UncountedStream(), batch_size=None), lr_range=LR_RANGE, num_steps=20,
        trial_steps=50, trainer_kwargs={"enable_progress_bar": False, "logger": False},
    )  # fmt: skip
    assert result.trials


def test_its_warnings_name_find_max_lr_and_advise_what_it_takes(caplog):
    """Its warnings start with its own name, and the advice to skip the test names where `max_lr` goes.

    Found in a review: they said "SuperConvergence: ... or pass `max_lr=`", which `find_max_lr` refuses.
    """
    with pytest.warns(RuntimeWarning) as warned:
        find_max_lr(TinyClassifier(), lr_range=LR_RANGE, num_steps=60, trainer_kwargs={"accelerator": "cpu"})
    said = [str(w.message) for w in warned if "trial" in str(w.message)]
    assert said, [str(w.message) for w in warned]
    assert all(text.startswith("find_max_lr: ") for text in said)
    assert all("`max_lr=`" not in text and "`SuperConvergence(max_lr=...)`" in text for text in said)


class BuiltInConfigureModel(L.LightningModule):
    """Makes its layers in `configure_model`, once, by a flag (Lightning's docs ask the hook to be idempotent)."""

    def __init__(self) -> None:
        super().__init__()
        self.configured = False

    def configure_model(self) -> None:
        if not self.configured:
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Dropout(0.3), torch.nn.Linear(32, 4))
            self.configured = True

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(make_dataset(256), batch_size=32, shuffle=True)


def test_layers_made_in_configure_model_stay_made_for_the_fit_after_it(tmp_path):
    """The layers the range test's fit made stay as it made them, beside the flag that says they were made.

    A version that unmade them (so that the fit after it would make them from the same RNG streams) left the flag
    set, and that fit failed without its layers (found in a review); the streams' shift stays (the README says so).
    """
    model = BuiltInConfigureModel()
    find_max_lr(model, lr_range=LR_RANGE, num_steps=20, trial_steps=0)
    assert model.configured
    made = [p.detach().clone() for p in model.net.parameters()]
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model)
    assert trainer.global_step == 3
    assert not any(torch.equal(a, b) for a, b in zip(made, model.net.parameters(), strict=True))  # it trained them
