"""Resume for real: a run interrupted mid-training and resumed from its checkpoint, against an uninterrupted one."""

from __future__ import annotations

import copy
import math
import re
import warnings

import lightning as L
import pytest
import torch
from helpers import Tally, TinyClassifier, make_dataset, trainer_kwargs
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader

from lightning_superconv import RangeTestResult, SuperConvergence, WeightDecayBalancer
from lightning_superconv.schedule import SafeOneCycleLR


class DeterministicClassifier(TinyClassifier):
    """No dropout and a fixed data order, so a resumed run can be compared with an uninterrupted one bit for bit.

    (Lightning's checkpoints do not hold the global RNG, so dropout masks and shuffles differ after any resume.)
    Counts its ``training_step`` calls, range-test steps included.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net[3] = nn.Identity()
        self.calls = Tally()

    def training_step(self, batch, batch_idx):
        self.calls += 1
        return super().training_step(batch, batch_idx)

    def train_dataloader(self):
        return DataLoader(self._data(), batch_size=self.hparams.batch_size, shuffle=False)

    def _data(self):
        return make_dataset(self.hparams.n)


class Interrupt(Exception):
    """Stands for the job being killed."""


class KillAt(Callback):
    """Raises :class:`Interrupt` when the given global step is about to start."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupt


class StepRecorder(Callback):
    """Records, at each training step, its global step and each group's LR, momentum and weight decay."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.rows.append((trainer.global_step, *[(g["lr"], g["momentum"], g["weight_decay"]) for g in groups]))


def _seeded(model_cls=DeterministicClassifier, **kwargs):
    L.seed_everything(0, verbose=False)
    return model_cls(**kwargs)


def _callbacks(with_balancer: bool, **superconv):
    superconv.setdefault("num_steps", 15)
    callbacks = [SuperConvergence(**superconv)]
    if with_balancer:
        callbacks.append(WeightDecayBalancer(mode="budget"))
    return callbacks


def _trainer(tmp_path, callbacks, **overrides):
    kwargs = trainer_kwargs(tmp_path, max_epochs=4, limit_train_batches=4, enable_checkpointing=True)
    kwargs.update(overrides)
    return L.Trainer(callbacks=callbacks, **kwargs)


def _interrupted_then_resumed(tmp_path, kill_at, every_n_train_steps=None, with_balancer=False, **fit_kwargs):
    """Train until ``kill_at`` (checkpointing as it goes), then resume from the last checkpoint with fresh objects."""
    checkpoint = (
        ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=every_n_train_steps)
        if every_n_train_steps
        else ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    )
    first = _callbacks(with_balancer)
    trainer = _trainer(tmp_path / "a", [*first, checkpoint, KillAt(kill_at)])
    with pytest.raises(Interrupt):
        trainer.fit(_seeded())
    resumed_model, recorder = _seeded(), StepRecorder()
    callbacks = _callbacks(with_balancer)
    resumed = _trainer(tmp_path / "b", [*callbacks, recorder])
    resumed.fit(resumed_model, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), **fit_kwargs)
    return first, callbacks, resumed, resumed_model, recorder


def _uninterrupted(tmp_path, with_balancer=False, **overrides):
    callbacks, recorder = _callbacks(with_balancer), StepRecorder()
    trainer = _trainer(tmp_path / "u", [*callbacks, recorder], **overrides)
    trainer.fit(_seeded())
    return callbacks, trainer, recorder


@pytest.mark.parametrize("with_balancer", [False, True], ids=["superconvergence", "with-balancer"])
def test_resume_continues_exactly_where_the_uninterrupted_run_would_be(tmp_path, with_balancer):
    """Killed after epoch 2 and resumed: the same LR, momentum, weight decay at every step, and the same weights."""
    first, callbacks, resumed, model, recorder = _interrupted_then_resumed(
        tmp_path, kill_at=8, with_balancer=with_balancer
    )
    reference, whole, whole_recorder = _uninterrupted(tmp_path, with_balancer)
    # the schedule, step for step, from the step the checkpoint was written at
    assert [row[0] for row in recorder.rows] == list(range(8, 16))
    assert recorder.rows == whole_recorder.rows[8:]
    # no range test on resume, and the pick and curve come back from the checkpoint
    assert model.calls == 8
    assert callbacks[0].result == first[0].result == reference[0].result
    assert callbacks[0].max_lr == reference[0].max_lr
    if with_balancer:
        assert callbacks[1].weight_decays == reference[1].weight_decays
    # the end state, bit for bit
    for (name, a), (_, b) in zip(
        resumed.lightning_module.state_dict().items(), whole.lightning_module.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    opt_a, opt_b = resumed.optimizers[0].state_dict(), whole.optimizers[0].state_dict()
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for index, state in opt_a["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_b["state"][index]["momentum_buffer"])
    scheduler_a, scheduler_b = (t.lr_scheduler_configs[0].scheduler for t in (resumed, whole))
    assert scheduler_a.state_dict() == scheduler_b.state_dict()


def test_resume_mid_epoch_continues_the_schedule_step_for_step(tmp_path):
    """Killed at step 6 with a checkpoint every 3 steps: the resumed run's LR and momentum per step are the same."""
    _, callbacks, resumed, model, recorder = _interrupted_then_resumed(tmp_path, kill_at=6, every_n_train_steps=3)
    _, whole, whole_recorder = _uninterrupted(tmp_path)
    assert recorder.rows[0][0] == 6
    assert recorder.rows == whole_recorder.rows[6:]
    assert resumed.global_step == whole.global_step == 16
    assert callbacks[0].result is not None


def test_resume_loads_with_weights_only(tmp_path):
    """Lightning's own loader restricted to `weights_only=True` resumes the run (fp16: the scaler state too)."""
    plugins = [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]
    first = _callbacks(with_balancer=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    _trainer(tmp_path / "a", [*first, ckpt], max_epochs=2, plugins=plugins).fit(_seeded())
    path = str(tmp_path / "ckpt" / "last.ckpt")
    callbacks = _callbacks(with_balancer=True)
    trainer = _trainer(tmp_path / "b", callbacks, max_epochs=3, plugins=plugins)
    trainer.fit(_seeded(), ckpt_path=path, weights_only=True)
    assert trainer.global_step == 12
    assert callbacks[0].result == first[0].result
    assert callbacks[1].weight_decays == first[1].weight_decays


def test_checkpoint_holds_plain_values_only(tmp_path):
    """`torch.load(weights_only=True)` reads the checkpoint, and both callbacks' states are plain Python values."""
    callbacks = _callbacks(with_balancer=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    _trainer(tmp_path, [*callbacks, ckpt], max_epochs=1).fit(_seeded())
    loaded = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    states = loaded["callbacks"]
    assert states["SuperConvergence"]["max_lr"] == callbacks[0].max_lr
    assert RangeTestResult.from_dict(states["SuperConvergence"]["result"]) == callbacks[0].result
    balancer_state = next(v for k, v in states.items() if k.startswith("WeightDecayBalancer"))
    assert balancer_state["weight_decays"] == callbacks[1].weight_decays

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    assert plain(states["SuperConvergence"])
    assert plain(balancer_state)
    assert plain(loaded["lr_schedulers"])
    # and Lightning's own loader, for the model alone
    model = DeterministicClassifier.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert torch.equal(model.net[0].weight, loaded["state_dict"]["net.0.weight"])


def test_resume_with_a_larger_max_epochs_holds_the_final_lr_and_warns(tmp_path):
    """A finished 2-epoch run resumed with `max_epochs=3` says so and trains on at the cycle's final LR, no crash."""
    first = _callbacks(with_balancer=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    _trainer(tmp_path / "a", [*first, ckpt], max_epochs=2).fit(_seeded())
    recorder = StepRecorder()
    callbacks = _callbacks(with_balancer=False)
    trainer = _trainer(tmp_path / "b", [*callbacks, recorder], max_epochs=3)
    planned = r"ends at step 12, but its one-cycle was planned to end at step 8.*stays at the cycle's final value"
    with pytest.warns(RuntimeWarning, match=planned) as caught:
        trainer.fit(_seeded(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 12
    assert not [w for w in caught if "training went past it" in str(w.message)]  # told once, above
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, SafeOneCycleLR)
    assert scheduler.total_steps == callbacks[0].total_steps == 8
    final = trainer.optimizers[0].param_groups[0]["min_lr"]
    lrs = [row[1][0] for row in recorder.rows]
    assert lrs[1:] == pytest.approx([final] * 3, rel=1e-9)
    assert all(math.isfinite(lr) and lr > 0 for lr in lrs)


@pytest.fixture(scope="module")
def checkpoints_of_a_24_step_run(tmp_path_factory):
    """A 4-epoch run of 6 batches per epoch, checkpointed at step 9 (mid-epoch 1) and step 18 (epoch 2's last batch)."""
    root = tmp_path_factory.mktemp("run24")
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=9, save_top_k=-1)
    _trainer(root, [*_callbacks(with_balancer=False), ckpt], limit_train_batches=6).fit(_seeded())
    return {step: next((root / "ckpt").glob(f"*step={step}.ckpt")) for step in (9, 18)}


@pytest.mark.parametrize("step", [9, 18])
@pytest.mark.parametrize(
    "changed",
    [
        {"accumulate_grad_batches": 2},
        {"limit_train_batches": 4},
        {"callbacks": [GradientAccumulationScheduler({0: 1, 2: 3})], "max_epochs": 5},
    ],
    ids=["accumulation", "limit_train_batches", "accumulation_scheduler"],
)
def test_a_resume_at_another_length_is_told_the_step_it_really_ends_at(
    tmp_path, checkpoints_of_a_24_step_run, step, changed
):
    """The warning names the step the resumed run ends at, not a fresh run's length (a resume mid-epoch included).

    Resumed from step 9, Lightning goes on with epoch 1 from its fourth batch; from step 18 (written before epoch 2's
    end hooks), with epoch 3. It calls no ``on_train_epoch_start`` for that first epoch, so a scheduler's accumulation
    holds from the next one on: from step 18, 6 steps at 1, then 2 at 3.
    """
    kwargs = {"limit_train_batches": 6, **changed}
    callbacks = [*_callbacks(with_balancer=False), *kwargs.pop("callbacks", [])]
    trainer = _trainer(tmp_path, callbacks, **kwargs)
    with pytest.warns(RuntimeWarning, match="planned to end at step 24") as caught:
        trainer.fit(_seeded(), ckpt_path=str(checkpoints_of_a_24_step_run[step]))
    said = [re.search(r"this run ends at step (\d+)", str(w.message)) for w in caught]
    assert [int(match.group(1)) for match in said if match] == [trainer.global_step]
    assert trainer.global_step != 24
    assert not [w for w in caught if "before the end of the one-cycle" in str(w.message)]  # said once, at the start


def test_a_resume_that_ends_elsewhere_than_its_start_said_is_told_the_model_did_not_anneal(tmp_path):
    """Both ``max_epochs`` and a ``max_steps`` that does not bound the run, resumed from an epoch's end, unchanged.

    Found in a review: Lightning 2.6 resumes such a checkpoint with its epoch count one behind and ends an epoch early;
    the resume's start, reading that count, said the run would end past its cycle, and the end of training, taking
    that as said, kept silent about a run that ended with its LR far from annealed.
    """
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, save_on_train_epoch_end=True)
    _trainer(tmp_path / "a", [*_callbacks(with_balancer=False), ckpt], max_steps=1000).fit(_seeded())
    callbacks = _callbacks(with_balancer=False)
    trainer = _trainer(tmp_path / "b", callbacks, max_steps=1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_seeded(), ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))
    said = [str(w.message) for w in caught if "SuperConvergence" in str(w.message)]
    scheduler = callbacks[0]._scheduler
    left = scheduler.total_steps - trainer.global_step
    assert left > 0, "the premise: Lightning resumes this checkpoint an epoch short"
    ended = [message for message in said if f"training ended {left} steps before the end of the one-cycle" in message]
    assert len(ended) == 1
    assert f"ended at step {trainer.global_step}, not at step" in ended[0]


@pytest.mark.parametrize("step", [9, 18])
def test_a_resume_at_the_same_length_is_not_warned(tmp_path, checkpoints_of_a_24_step_run, step):
    """Resumed mid-epoch or before an epoch's end hooks with nothing changed, the run ends where its cycle does."""
    trainer = _trainer(tmp_path, _callbacks(with_balancer=False), limit_train_batches=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_seeded(), ckpt_path=str(checkpoints_of_a_24_step_run[step]))
    assert trainer.global_step == 24
    assert [str(w.message) for w in caught if "planned to end" in str(w.message)] == []


def test_a_resume_from_a_checkpoint_written_at_the_epoch_s_validation_is_not_warned(tmp_path):
    """A checkpoint written at the validation that ends an epoch: the run ends where its cycle does, unwarned.

    The checkpoint is inside the epoch, after its last batch: Lightning runs none of that epoch's batches again. Found
    in review: the step count read a whole epoch more.
    """
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_on_train_epoch_end=False, save_top_k=-1)
    kwargs = {"max_epochs": 3, "check_val_every_n_epoch": 1, "limit_val_batches": 1}
    _trainer(tmp_path / "a", [*_callbacks(with_balancer=False), ckpt], **kwargs).fit(_seeded())
    trainer = _trainer(tmp_path / "b", _callbacks(with_balancer=False), **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_seeded(), ckpt_path=str(next((tmp_path / "ckpt").glob("epoch=0*.ckpt"))))
    assert trainer.global_step == 12
    assert [str(w.message) for w in caught if "planned to end" in str(w.message)] == []


class FailsInTrainingStepAt(DeterministicClassifier):
    """Raises :class:`Interrupt` from ``training_step`` at the given global step of training (the range test's pass)."""

    def __init__(self, fail_at: int = -1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.fail_at and getattr(self, "armed", False):
            raise Interrupt
        return super().training_step(batch, batch_idx)

    def on_train_start(self):  # called after the callbacks' `on_train_start`, so after the range test
        self.armed = True


@pytest.mark.parametrize("step", [9, 12], ids=["mid-epoch", "first-batch-of-an-epoch"])
@pytest.mark.parametrize("where", ["training_step", "on_train_batch_start"])
def test_a_resume_from_a_checkpoint_written_by_an_error_inside_a_batch_is_not_warned(tmp_path, step, where):
    """`OnExceptionCheckpoint` after an error inside a training batch: Lightning runs that batch again on resume.

    The checkpoint counts the failed batch as reached but not completed; the resumed fit starts it over, so the run ends
    where its cycle does. Found trying the package as a new user: the step count read one batch fewer to go, and every
    such resume was warned that it would end before the LR annealed.
    """
    saver = OnExceptionCheckpoint(dirpath=tmp_path / "ckpt")
    first = [*_callbacks(with_balancer=True), saver]
    if where == "training_step":
        model = _seeded(FailsInTrainingStepAt, fail_at=step)
    else:
        model, first = _seeded(), [*first, KillAt(step)]
    with pytest.raises(Interrupt):
        _trainer(tmp_path / "a", first, limit_train_batches=6).fit(model)
    resumed_model, recorder = _seeded(), StepRecorder()
    trainer = _trainer(tmp_path / "b", [*_callbacks(with_balancer=True), recorder], limit_train_batches=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(resumed_model, ckpt_path=str(tmp_path / "ckpt" / "on_exception.ckpt"))
    assert [str(w.message) for w in caught if "planned to end" in str(w.message)] == []
    assert trainer.global_step == 24
    assert recorder.rows[0][0] == step  # the failed batch's step is run again
    _, uninterrupted, full = _uninterrupted(tmp_path, with_balancer=True, limit_train_batches=6)
    assert recorder.rows == full.rows[step:]  # the LRs, momenta and weight decay of the uninterrupted run


def test_a_resume_inside_an_epoch_under_an_accumulation_scheduler_is_told_why_it_runs_longer(tmp_path):
    """Lightning resumes the interrupted epoch without its `on_train_epoch_start`: a scheduler's accumulation is unset.

    Found trying the package as a new user: a crash-resume with nothing changed ran 3 steps past its cycle (as
    predicted) and was told that its length had changed since the checkpoint was written.
    """
    kwargs = {"limit_train_batches": 6, "max_epochs": 4}
    saver = OnExceptionCheckpoint(dirpath=tmp_path / "ckpt")
    accumulation = GradientAccumulationScheduler({0: 1, 2: 3})  # 6 + 6 + 2 + 2 steps
    first = [*_callbacks(with_balancer=False), accumulation, saver]
    with pytest.raises(Interrupt):
        _trainer(tmp_path / "a", first, **kwargs).fit(_seeded(FailsInTrainingStepAt, fail_at=13))
    callbacks = [*_callbacks(with_balancer=False), GradientAccumulationScheduler({0: 1, 2: 3})]
    trainer = _trainer(tmp_path / "b", callbacks, **kwargs)
    said = r"ends at step 18, but its one-cycle was planned to end at step 16 \(Lightning resumes the epoch .* at 1;"
    with pytest.warns(RuntimeWarning, match=said) as caught:
        trainer.fit(_seeded(), ckpt_path=str(tmp_path / "ckpt" / "on_exception.ckpt"))
    assert trainer.global_step == 18
    # the steps past the cycle were told with their cause: not again, with causes that do not apply (found trying the
    # package as a new user)
    assert not [w for w in caught if "training went past it" in str(w.message)]


def test_resume_with_changed_range_test_arguments_still_finds_its_state(tmp_path):
    """The state key is the class name: `num_steps` changed on resume does not trigger a new range test."""
    first = _callbacks(with_balancer=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    _trainer(tmp_path / "a", [*first, ckpt], max_epochs=1).fit(_seeded())
    model = _seeded()
    callbacks = _callbacks(with_balancer=False, num_steps=40)
    trainer = _trainer(tmp_path / "b", callbacks, max_epochs=1)
    trainer.fit(model, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert model.calls == 0  # the run was already complete: no step, and no range test
    assert callbacks[0].result == first[0].result


def test_resume_from_a_checkpoint_without_superconvergence_fails_with_the_fix(tmp_path):
    """Adding the callback on resume would mix the old scheduler's state into a new cycle: refused, naming the fix."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    _trainer(tmp_path / "a", [ckpt], max_epochs=1).fit(_seeded(TinyClassifier, scheduler="step"))
    model = _seeded()
    trainer = _trainer(tmp_path / "b", _callbacks(with_balancer=False), max_epochs=2)
    with pytest.raises(MisconfigurationException, match=r"holds no `SuperConvergence` state.*without `ckpt_path`"):
        trainer.fit(model, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert model.calls == 0


def test_resume_from_a_checkpoint_written_by_an_error_inside_the_range_test_says_it_has_no_cycle(tmp_path):
    """`OnExceptionCheckpoint` after an error in the range test: the callback's state is there, without a cycle.

    Found trying the package as a new user: the message said the checkpoint was written by a run without the callback.
    """

    class FailsInTheSweep(DeterministicClassifier):
        def training_step(self, batch, batch_idx):
            self.failing = getattr(self, "failing", 0) + 1
            if self.failing == 5:
                raise ValueError("a bug at the 5th step")
            return super().training_step(batch, batch_idx)

    saver = OnExceptionCheckpoint(dirpath=tmp_path / "ckpt")
    with pytest.raises(ValueError, match="a bug at the 5th step"):
        _trainer(tmp_path / "a", [*_callbacks(with_balancer=False), saver], max_epochs=1).fit(_seeded(FailsInTheSweep))
    path = tmp_path / "ckpt" / "on_exception.ckpt"
    assert torch.load(path, weights_only=True)["callbacks"]["SuperConvergence"]["max_lr"] is None
    model = _seeded()
    trainer = _trainer(tmp_path / "b", _callbacks(with_balancer=False), max_epochs=2)
    said = r"whose `SuperConvergence` state has no cycle: .*`OnExceptionCheckpoint` after an error inside the range"
    with pytest.raises(MisconfigurationException, match=said):
        trainer.fit(model, ckpt_path=str(path))
    assert model.calls == 0


def test_resume_from_a_weights_only_checkpoint_says_so_and_how_to_start_from_its_weights(tmp_path):
    """A `save_weights_only=True` checkpoint of a run with the callback holds no state to resume: the message says so.

    Before, it said the checkpoint was written without `SuperConvergence` and advised resuming without it, which
    Lightning refuses for such a checkpoint too.
    """
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_weights_only=True)
    _trainer(tmp_path / "a", [*_callbacks(with_balancer=False), ckpt], max_epochs=1).fit(_seeded())
    model = _seeded()
    trainer = _trainer(tmp_path / "b", _callbacks(with_balancer=False), max_epochs=2)
    with pytest.raises(MisconfigurationException, match=r"holds the weights only.*load_from_checkpoint"):
        trainer.fit(model, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert model.calls == 0


def test_resume_with_a_different_max_lr_keeps_the_checkpoints_cycle_and_warns(tmp_path):
    """`max_lr=` given on resume does not silently change the running cycle."""
    first = _callbacks(with_balancer=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    _trainer(tmp_path / "a", [*first, ckpt], max_epochs=1).fit(_seeded())
    callbacks = [SuperConvergence(max_lr=0.123)]
    trainer = _trainer(tmp_path / "b", callbacks, max_epochs=2)
    with pytest.warns(RuntimeWarning, match=r"continues the checkpoint's cycle.*`max_lr=0.123` applies to new fits"):
        trainer.fit(_seeded(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert callbacks[0].max_lr == first[0].max_lr
    assert trainer.optimizers[0].param_groups[0]["max_lr"] == pytest.approx(first[0].max_lr, rel=1e-12)


def test_resume_with_another_cycle_shape_keeps_the_checkpoints_cycle_and_says_which_arguments_differ(tmp_path):
    """Found trying the package through LightningCLI as a new user: a resume with `pct_start=0.5` said nothing.

    The checkpoint's cycle runs on (Lightning loads the scheduler's state), and the warning names what was not taken.
    """
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    with pytest.raises(Interrupt):
        _trainer(tmp_path / "a", [SuperConvergence(max_lr=0.1), ckpt, KillAt(6)]).fit(_seeded())
    last = str(tmp_path / "ckpt" / "last.ckpt")
    same = StepRecorder()
    _trainer(tmp_path / "p", [SuperConvergence(max_lr=0.1), same]).fit(_seeded(), ckpt_path=last)
    other, changed = SuperConvergence(max_lr=0.1, pct_start=0.5, div_factor=10.0), StepRecorder()
    said = r"continues the checkpoint's cycle \(pct_start=0.3, div_factor=25.0\); the given `pct_start=0.5`, "
    with pytest.warns(RuntimeWarning, match=said + r"`div_factor=10.0` apply to new fits only"):
        _trainer(tmp_path / "b", [other, changed]).fit(_seeded(), ckpt_path=last)
    assert changed.rows == same.rows
    assert [row[0] for row in changed.rows] == list(range(4, 16))
    # its own checkpoints keep the shape that runs, so a second resume is told against that (found trying it anew)
    assert other.state_dict()["cycle"]["pct_start"] == 0.3
    assert other.state_dict()["cycle"]["div_factor"] == 25.0


def test_a_resume_of_a_rescued_run_with_its_own_max_lr_is_not_told_the_value_was_not_taken(tmp_path, recwarn):
    """Found trying the package as a new user: the lowered peak was compared with the `max_lr` the run was given.

    Resuming with the same `SuperConvergence(max_lr=50)` said the given value "applies to new fits only"; another value
    is still said, with the peak the rescues lowered.
    """
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=12)
    first = SuperConvergence(max_lr=50.0)
    with pytest.raises(Interrupt):
        _trainer(tmp_path / "a", [first, ckpt, KillAt(13)]).fit(_seeded())
    assert first.rescues, "the premise: the run was rescued before its checkpoint"
    last = str(tmp_path / "ckpt" / "last.ckpt")
    _trainer(tmp_path / "b", [SuperConvergence(max_lr=50.0)]).fit(_seeded(), ckpt_path=last)
    assert not [w for w in recwarn if "applies to new fits only" in str(w.message)]
    with pytest.warns(RuntimeWarning, match=r"\(its peak of 50 lowered by 1 guard rescue\); the given `max_lr=5` "):
        _trainer(tmp_path / "c", [SuperConvergence(max_lr=5.0)]).fit(_seeded(), ckpt_path=last)


def test_state_dict_round_trips_through_a_deep_copy():
    """`load_state_dict(state_dict())` on a fresh callback restores pick, result and cycle length."""
    callback = SuperConvergence(max_lr=0.2)
    callback.total_steps = 10
    state = copy.deepcopy(callback.state_dict())
    fresh = SuperConvergence()
    fresh.load_state_dict(state)
    assert (fresh.max_lr, fresh.total_steps, fresh.result) == (0.2, 10, None)


def test_a_state_loaded_into_a_fresh_callback_is_the_state_it_gives_back(tmp_path):
    """Before training starts (a checkpoint written at a resume's fit start), the guard's state too.

    Found trying the package as a new user: the guard's part came back None.
    """
    callback = SuperConvergence(max_lr=0.5)
    _trainer(tmp_path, [callback]).fit(_seeded())
    state = callback.state_dict()
    assert state["guard"], "the premise: the guard kept statistics"
    fresh = SuperConvergence()
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.state_dict() == state
    older = SuperConvergence()  # an older release's guard state is read by the guard it is handed to, and no one else
    older.load_state_dict({**copy.deepcopy(state), "version": 2})
    assert older.state_dict()["guard"] is None
    assert older.state_dict()["version"] == state["version"]


def test_a_resume_without_the_guard_writes_no_guard_state_into_its_checkpoints(tmp_path):
    """Found reviewing the package: the checkpoint's guard statistics were written on, from another step."""
    first = _trainer(tmp_path / "a", [SuperConvergence(max_lr=0.5)], max_epochs=2)
    first.fit(_seeded())
    path = tmp_path / "a.ckpt"
    first.save_checkpoint(path)
    assert torch.load(path, weights_only=True)["callbacks"]["SuperConvergence"]["guard"], "the premise"
    resumed = SuperConvergence(max_lr=0.5, guard=False)
    _trainer(tmp_path / "b", [resumed]).fit(_seeded(), ckpt_path=str(path))
    assert resumed.state_dict()["guard"] is None


def test_callbacks_are_copied_and_pickled_after_a_fit_that_logged_to_tensorboard(tmp_path):
    """Sweep libraries and ``ddp_spawn`` copy callbacks: a reused one is copied after its first fit.

    Found trying the package as a new user: TensorBoard's writer, held by the schedule's logger, cannot be copied
    (a thread lock), and a second fit under ``ddp_spawn`` failed. A copy then fits as the original would.
    """
    import pickle

    from lightning.pytorch.loggers import TensorBoardLogger

    def fit(callbacks, where):
        trainer = _trainer(where, callbacks, logger=TensorBoardLogger(where), log_every_n_steps=1)
        trainer.fit(_seeded())
        return trainer

    callbacks = [SuperConvergence(max_lr=0.5), WeightDecayBalancer()]
    alone = [WeightDecayBalancer()]  # it logs the schedule itself when no SuperConvergence does
    fit(callbacks, tmp_path / "a")
    fit(alone, tmp_path / "b")
    for callback in (callbacks[0], alone[0]):  # (the balancer beside SuperConvergence leaves the logging to it)
        assert callback._logger is not None, "the premise: it holds TensorBoard's writer"
    copies = [pickle.loads(pickle.dumps(callback)) for callback in callbacks]
    deep = copy.deepcopy(alone)
    first = fit(callbacks, tmp_path / "c")
    again = fit(copies, tmp_path / "d")
    for a, b in zip(first.lightning_module.parameters(), again.lightning_module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fit(deep, tmp_path / "e").callbacks


@pytest.mark.parametrize("callback", [SuperConvergence, WeightDecayBalancer])
def test_state_from_a_newer_release_is_read_with_a_warning(callback):
    """A state dict whose `version` is newer than this release's: what it knows is read, the rest ignored, and said."""
    instance = callback()
    state = {**instance.state_dict(), "version": 99, "added_in_a_later_release": [1, 2]}
    with pytest.warns(RuntimeWarning, match=r"newer lightning-superconv \(state version 99"):
        instance.load_state_dict(state)


class StatefulLoaderFirsts(DeterministicClassifier):
    """Trains from torchdata's `StatefulDataLoader`, unshuffled; records the first sample of each training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.firsts: list[int] = []

    def train_dataloader(self):
        from torchdata.stateful_dataloader import StatefulDataLoader

        x, y = make_dataset(self.hparams.n).tensors
        return StatefulDataLoader(torch.utils.data.TensorDataset(x, y, torch.arange(len(x))), batch_size=16)

    def training_step(self, batch, batch_idx):
        return super().training_step(batch[:2], batch_idx)

    def on_train_batch_start(self, batch, batch_idx):  # real training steps only: the range test calls no batch hook
        self.firsts.append(int(batch[2][0]))


def test_the_balancer_added_at_a_resume_leaves_a_stateful_loader_where_the_checkpoint_says(tmp_path):
    """Resumed mid-epoch with the balancer added, the run goes on from the loader's saved position.

    Found in a review: the balancer read its recipe in `on_fit_start`, which loaded the train data before Lightning
    restored the checkpoint's loader state; Lightning then never gave it, and the resumed epoch read its first batches
    again (samples seen twice, others never).
    """
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}")
    first = _trainer(tmp_path / "a", [checkpoint], max_epochs=1, max_steps=3, limit_train_batches=None)
    first.fit(_seeded(StatefulLoaderFirsts))
    path = str(tmp_path / "ckpt" / "step=3.ckpt")
    runs = []
    for callbacks in ([], [WeightDecayBalancer()]):
        model = _seeded(StatefulLoaderFirsts)
        _trainer(tmp_path / "b", callbacks, max_epochs=1, limit_train_batches=None).fit(model, ckpt_path=path)
        runs.append(model.firsts)
    plain, with_ours = runs
    assert plain[0] == 48  # the checkpoint's position: three batches of 16 in
    assert with_ours == plain
