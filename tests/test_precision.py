"""Mixed precision for real: bf16 autocast on CPU, and fp16 with a ``GradScaler`` that really skips steps on CPU."""

from __future__ import annotations

import itertools
import math

import lightning as L
import pytest
import torch
from helpers import TinyClassifier, make_dataset, trainer_kwargs
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Subset

from lightning_superconv import SuperConvergence

NO_DIVERGENCE = (1e-2, 1.0)


class AutocastProbe(TinyClassifier):
    """Records, for every ``training_step`` call, whether autocast was on and the dtype of the logits."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((torch.is_autocast_enabled("cpu"), self(batch[0]).dtype))
        return super().training_step(batch, batch_idx)


class LRProbe(TinyClassifier):
    """Records the LR and the loss scale at every optimizer step (applied or skipped by the scaler)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps: list[tuple[float, float]] = []

    def on_before_optimizer_step(self, optimizer):
        self.steps.append((optimizer.param_groups[0]["lr"], self.trainer.precision_plugin.scaler.get_scale()))


def _fp16(init_scale: float = 2.0**16) -> MixedPrecision:
    """Lightning's fp16 plugin with a real CPU gradient scaler."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))


def _fit(tmp_path, model, callback, seed=0, **overrides):
    L.seed_everything(seed, verbose=False)
    overrides.setdefault("limit_train_batches", 4)
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model)
    return trainer


def _seeded(model_cls, seed=0, **kwargs):
    L.seed_everything(seed, verbose=False)
    return model_cls(**kwargs)


def _assert_same_state(a: L.Trainer, b: L.Trainer) -> None:
    for (name, x), (_, y) in zip(
        a.lightning_module.state_dict().items(), b.lightning_module.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
    assert a.optimizers[0].state_dict()["param_groups"] == b.optimizers[0].state_dict()["param_groups"]
    assert a.global_step == b.global_step


# ------------------------------------------------------------------------------------------------ bf16


def test_bf16_range_test_runs_under_autocast(tmp_path):
    """With `precision="bf16-mixed"` every range-test forward pass runs in bfloat16 autocast, as training does."""
    model = AutocastProbe()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10, trial_steps=0)
    trainer = _fit(tmp_path, model, callback, precision="bf16-mixed")
    assert len(callback.result.losses) >= 10
    assert len(model.seen) == len(callback.result.losses) + trainer.global_step
    assert set(model.seen) == {(True, torch.bfloat16)}


def test_bf16_range_test_then_fit_equals_fit_with_the_pick(tmp_path):
    """Under bf16 the range test leaves no trace: the run ends bit-identical to one given `max_lr` directly."""
    auto = SuperConvergence(num_steps=15)
    tested = _fit(tmp_path, _seeded(TinyClassifier), auto, precision="bf16-mixed")
    given = _fit(tmp_path, _seeded(TinyClassifier), SuperConvergence(max_lr=auto.result.max_lr), precision="bf16-mixed")
    _assert_same_state(tested, given)


# ------------------------------------------------------------------------------------------------ fp16 + GradScaler


def test_cpu_grad_scaler_really_skips_steps(tmp_path):
    """The premise of the tests below: with a too-high initial scale, Lightning's CPU fp16 plugin skips updates."""
    model = LRProbe()
    before = [p.detach().clone() for p in model.parameters()]
    _fit(tmp_path, model, SuperConvergence(max_lr=0.1), plugins=[_fp16(2.0**40)], max_steps=2, limit_val_batches=0)
    scales = [scale for _, scale in model.steps]
    assert scales == [2.0**40, 2.0**39]  # halved after each step: both overflowed and were skipped
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))


def test_scaler_skips_are_retried_at_the_same_lr_not_read_as_divergence(tmp_path):
    """Skipped steps repeat their LR, are counted in `skipped_steps`, and the sweep still covers every LR."""
    model = LRProbe()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10, trial_steps=0)
    trainer = _fit(tmp_path, model, callback, plugins=[_fp16(2.0**24)], max_epochs=1)
    result = callback.result
    assert result.skipped_steps > 0
    assert result.stop_reason in ("completed", "rose")
    assert len(result.lrs) >= 10
    swept = [lr for lr, _ in model.steps[: len(model.steps) - trainer.global_step]]
    assert len(swept) == len(result.lrs) + result.skipped_steps
    assert swept[0] == swept[1] == result.lrs[0]  # the first step was skipped, and retried at the same LR
    assert [lr for lr, _ in itertools.groupby(swept)] == result.lrs  # each LR in order, none left out


def test_scaler_state_is_restored_after_the_range_test(tmp_path):
    """Training starts at the scale it had before the range test: the run equals one given `max_lr` directly."""
    auto, auto_model = SuperConvergence(num_steps=10), _seeded(LRProbe)
    tested = _fit(tmp_path, auto_model, auto, plugins=[_fp16(2.0**20)], max_epochs=1)
    given_model = _seeded(LRProbe)
    given = _fit(
        tmp_path, given_model, SuperConvergence(max_lr=auto.result.max_lr), plugins=[_fp16(2.0**20)], max_epochs=1
    )
    assert auto.result.skipped_steps > 0
    training_steps = auto_model.steps[-tested.global_step :]
    assert training_steps == given_model.steps
    assert training_steps[0][1] == 2.0**20
    assert tested.precision_plugin.scaler.get_scale() == given.precision_plugin.scaler.get_scale()
    _assert_same_state(tested, given)


def test_scaler_that_skips_every_step_fails_with_advice(tmp_path):
    """Gradients that overflow at every loss scale stop the test with a message saying so, and the state restored."""
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        MisconfigurationException, match=r"gradient scaler skipped 31 steps in a row.*SuperConvergence\(max_lr="
    ):
        _fit(tmp_path, model, SuperConvergence(num_steps=10), plugins=[_fp16(2.0**100)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ GPU, if there is one


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_on_gpu(tmp_path, precision):
    """On a GPU, with Lightning's own plugin for the precision, the range test reads a curve and the fit completes."""
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10)
    trainer = _fit(tmp_path, TinyClassifier(), callback, accelerator="cuda", precision=precision)
    assert len(callback.result.losses) == 10
    assert trainer.global_step == 8


class NanGradientsAbove(TinyClassifier):
    """A loss that stays finite whose gradients are NaN at any loss scale once the LR passes ``threshold``."""

    def __init__(self, threshold: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))  # learns fast

    def train_dataloader(self):
        return DataLoader(Subset(make_dataset(640), range(512)), batch_size=32, shuffle=True)

    def val_dataloader(self):  # the same task: the trials that learn it score better
        return DataLoader(Subset(make_dataset(640), range(512, 640)), batch_size=32)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.training and self.trainer.optimizers[0].param_groups[0]["lr"] > self.threshold:
            loss = loss + 0.0 * torch.sqrt((self.net[0].weight * 0).sum())  # d sqrt(x)/dx at 0: inf, times 0: NaN
        return loss


def test_a_sweep_stopped_by_scaler_skips_is_read_as_a_divergence(tmp_path, recwarn):
    """Gradients inf/NaN at every loss scale diverged, as a NaN loss does in float32.

    Found in a review: read as a sweep that never diverged, with a warning blaming optimizers that bound their own step.
    """
    callback = SuperConvergence(num_steps=60, trial_steps=0, lr_range=(1e-4, 10.0))
    _fit(tmp_path, _seeded(NanGradientsAbove, threshold=0.5, n=512), callback, plugins=[_fp16()], max_steps=2)
    assert callback.result.stop_reason == "scaler-skips"
    assert "its gradients were inf/NaN at every loss scale at the step after lr" in callback.result.pick_reason
    assert not [w for w in recwarn if "never rose back above where it started" in str(w.message)]


def test_a_trial_stopped_by_scaler_skips_scores_as_diverged(tmp_path):
    """Found in a review: it was scored on what 8 of its 50 steps had trained, as a trial that ran its course."""
    callback = SuperConvergence(num_steps=60, trial_steps=50, lr_range=(1e-5, 1.0))
    _fit(
        tmp_path, _seeded(NanGradientsAbove, threshold=0.05, n=512), callback, plugins=[_fp16()], max_steps=2,
        limit_train_batches=1.0,
    )  # fmt: skip
    above = [trial for trial in callback.result.trials if trial["peak"] > 0.05]
    assert above, "the premise: a trial peaks where the gradients turn NaN"
    assert all(trial["held_out_loss"] == math.inf for trial in above)
