"""One range-test step is one optimizer step, taken as training takes it: accumulation and gradient clipping."""

from __future__ import annotations

import math
import sys

import lightning as L
import pytest
import torch
from helpers import Tally, TinyClassifier, trainer_kwargs
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_superconv import SuperConvergence
from lightning_superconv.curve import lr_sweep

NO_DIVERGENCE = (1e-2, 1.0)


class GradientProbe(TinyClassifier):
    """Records every ``training_step`` loss, and the gradient the optimizer is about to apply at every step."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.losses: list[torch.Tensor] = []
        self.norms: list[float] = []
        self.largest: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.detach().float())
        return loss

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()

        def record(opt, args, kwargs):
            # after `optimizer.step(closure)`: the gradient the step applied, after Lightning's clipping (a pre-hook
            # would run before the closure has computed it)
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            self.largest.append(max(float(g.abs().max()) for g in grads))

        optimizer.register_step_post_hook(record)
        return optimizer


def _fit(tmp_path, model, callback, **overrides):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, **{"limit_train_batches": 4, **overrides}))
    trainer.fit(model)
    return trainer


@pytest.mark.parametrize("accumulate", [1, 3])
def test_recorded_loss_is_the_mean_over_the_accumulated_micro_batches(tmp_path, accumulate):
    """With `accumulate_grad_batches=k` each point of the curve is the mean of k `training_step` losses."""
    model = GradientProbe()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10, trial_steps=0)
    _fit(tmp_path, model, callback, accumulate_grad_batches=accumulate, max_epochs=1)
    steps = len(callback.result.losses)
    micro = torch.stack(model.losses[: steps * accumulate]).view(steps, accumulate)
    assert callback.result.losses == pytest.approx(micro.mean(dim=1).tolist(), rel=1e-6)
    # one optimizer step per range-test step, then training's (the epoch's last, partial accumulation steps too)
    assert len(model.norms) == steps + math.ceil(4 / accumulate)


@pytest.mark.parametrize(
    ("algorithm", "measure"), [("norm", "norms"), ("value", "largest")], ids=["clip-by-norm", "clip-by-value"]
)
def test_gradient_clipping_set_on_the_trainer_applies_in_the_range_test(tmp_path, algorithm, measure):
    """`gradient_clip_val` bounds every range-test step's gradient, as it bounds training's."""
    unclipped = GradientProbe()
    _fit(tmp_path, unclipped, SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10), max_epochs=1)
    limit = 0.5 * min(getattr(unclipped, measure)[:8])  # every unclipped step exceeds it
    clipped = GradientProbe()
    _fit(
        tmp_path,
        clipped,
        SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=10),
        max_epochs=1,
        gradient_clip_val=limit,
        gradient_clip_algorithm=algorithm,
    )
    assert max(getattr(clipped, measure)[:8]) <= limit * (1 + 1e-5)


class SkipsBatches(TinyClassifier):
    """``training_step`` returns None (Lightning: skip this batch) for the batches ``skip`` says."""

    def __init__(self, skip, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip = skip
        self.calls = Tally()

    def training_step(self, batch, batch_idx):
        self.calls += 1
        if self.skip(self.calls):
            return None
        return super().training_step(batch, batch_idx)


def test_skipped_batch_takes_no_sweep_lr_the_next_batch_tries_it(tmp_path):
    """A `None` from `training_step` skips the batch; the same LR goes to the next batch, so no LR is left out."""
    model = SkipsBatches(lambda call: call % 3 == 2)
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=30, trial_steps=0)
    _fit(tmp_path, model, callback, limit_train_batches=8, max_epochs=1)
    result = callback.result
    assert result is not None
    assert len(result.lrs) >= 30
    assert result.lrs[:30] == pytest.approx(lr_sweep(*NO_DIVERGENCE, 30))
    assert result.skipped_batches == len(result.lrs) // 2  # every third call skipped: one per two steps
    assert model.calls >= 45


def test_training_step_returning_none_for_every_batch_fails_naming_it(tmp_path):
    """Only a long run of skipped batches (32 in a row) ends the range test, with an error naming `training_step`."""
    model = SkipsBatches(lambda call: True)
    with pytest.raises(MisconfigurationException, match=r"`training_step` returned None for 32 batches in a row"):
        _fit(tmp_path, model, SuperConvergence(num_steps=30))
    assert model.calls == 32


class KeepsAPartFrozen(TinyClassifier):
    """A module with a part frozen before ``fit``; it counts its steps in an int and records that part's mode.

    Its ``frozen`` BatchNorm, put in eval mode in ``__init__`` (a pretrained part), normalizes the inputs with fixed
    statistics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.BatchNorm1d(16)
        self.frozen.eval()
        self.modes_seen: list[bool] = []  # changed in place: it keeps the range test's steps too
        self.steps_taken = 0

    def forward(self, x):
        return self.net(self.frozen(x))

    def training_step(self, batch, batch_idx):
        self.modes_seen.append(self.frozen.training)
        self.steps_taken += 1
        return super().training_step(batch, batch_idx)


def test_the_range_test_trains_each_submodule_in_the_mode_the_user_left_it_in(tmp_path):
    """Lightning trains a submodule kept in eval mode in eval mode, and so do the sweep and the trials now.

    Before, every range-test step switched the whole module to train mode. The module's own int counter is put back
    after the range test, and the run ends bit-identical to the same run given the pick.
    """
    torch.manual_seed(0)
    model = KeepsAPartFrozen()
    callback = SuperConvergence(lr_range=NO_DIVERGENCE, num_steps=20, trial_steps=50)
    _fit(tmp_path, model, callback, max_epochs=2)
    training_steps = 2 * 4
    assert len(model.modes_seen) > training_steps + 20  # the sweep's and the trials' steps are in it
    assert not any(model.modes_seen)
    assert model.steps_taken == training_steps
    assert torch.equal(model.frozen.running_mean, torch.zeros(16))  # eval mode: its statistics never moved

    torch.manual_seed(0)
    given = KeepsAPartFrozen()
    _fit(tmp_path, given, SuperConvergence(max_lr=callback.max_lr), max_epochs=2)
    for ours, theirs in zip(model.state_dict().values(), given.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


class SetsUpInAHook(TinyClassifier):
    """``training_step`` needs a scale that ``set_scale`` sets: made one of the module's hooks by the test."""

    def set_scale(self) -> None:
        self.scale = 1.0

    def training_step(self, batch, batch_idx):
        return self.scale * super().training_step(batch, batch_idx)


@pytest.mark.parametrize("hook", ["on_fit_start", "on_train_start", "on_train_epoch_start"])
def test_an_attribute_set_in_the_modules_start_hooks_fails_the_range_test_with_a_note_saying_why(tmp_path, hook):
    """The range test runs in the callback's `on_fit_start`, before these hooks of the module: the error says so.

    The note is Python 3.11's; the model is restored, and with a peak given the run trains.
    """
    module_class = type("SetsUpInAHook", (SetsUpInAHook,), {hook: SetsUpInAHook.set_scale})
    model = module_class()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AttributeError, match="scale") as info:
        _fit(tmp_path, model, SuperConvergence(num_steps=20, trial_steps=0), max_epochs=1)
    if sys.version_info >= (3, 11):
        note = "\n".join(info.value.__notes__)
        assert f"before SetsUpInAHook.{hook}:" in note
        assert "Raised in the LR range test's sweep" in note
        assert "SuperConvergence(max_lr=...)" in note
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    _fit(tmp_path, module_class(), SuperConvergence(max_lr=0.1), max_epochs=1)
