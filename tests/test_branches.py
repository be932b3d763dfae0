"""Branches of training from one snapshot (the range test's trials, the balancer's grid): what one does stays in it.

Identical branches from the same snapshot must score identically: whatever the first one changes beyond its own
training (the look at a held-out batch after its first step included) is put back before it trains on.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import trainer_kwargs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_superconv import _compat
from lightning_superconv.branches import Branch, HeldOutBatches, run_branches
from lightning_superconv.weight_decay import GroupTrace


def _data(n: int, scale: float = 1.0, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, 8, generator=gen)
    return TensorDataset(x, (x[:, :2].sum(1) > 0).long())


class RunningScale(nn.Module):
    """Divides by the largest input seen so far, updated at every forward, in eval mode too (as torch's observers)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        with torch.no_grad():
            self.scale.copy_(torch.maximum(self.scale, x.abs().max()))
        return x / self.scale


class NoisyInput(nn.Module):
    """Adds noise drawn from a generator it holds, at every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(1)

    def forward(self, x):
        return x + 0.5 * torch.randn(x.shape, generator=self.gen)


class ChangedByALook(L.LightningModule):
    """Validation inputs on a larger scale than the training ones: a look at one moves ``pre``'s state."""

    def __init__(self, pre: nn.Module) -> None:
        super().__init__()
        self.pre, self.net = pre, nn.Linear(8, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(self.pre(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return DataLoader(_data(512), batch_size=16)

    def val_dataloader(self):
        return DataLoader(_data(64, scale=5.0, seed=1), batch_size=16)


class MeanTeacher(ChangedByALook):
    """A teacher that ``training_step`` moves towards the student (mean teacher, BYOL): weights no optimizer trains."""

    def __init__(self) -> None:
        super().__init__(nn.Identity())
        self.teacher = nn.Linear(8, 2).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            for teacher, student in zip(self.teacher.parameters(), self.net.parameters(), strict=True):
                teacher.mul_(0.5).add_(student, alpha=0.5)
        return super().training_step(batch, batch_idx) + nn.functional.mse_loss(self.net(x), self.teacher(x))

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.05)


class FrozenTeacherInTheOptimizer(MeanTeacher):
    """The same teacher, frozen, handed to the optimizer with the rest (`self.parameters()`): it never trains it."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class ThreeIdenticalBranches(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        _compat.setup_train_data(trainer)
        trace = GroupTrace(lrs=[0.05] * 20, momenta=[0.0] * 20)
        branches = [Branch([trace], label=float(k)) for k in range(3)]
        self.scores, _ = run_branches(
            trainer, pl_module, trainer.optimizers[0], branches, HeldOutBatches.validation(trainer)
        )
        trainer.should_stop = True


@pytest.mark.parametrize("pre", [RunningScale, NoisyInput, torch.ao.quantization.FakeQuantize])
def test_identical_branches_score_identically_whatever_the_first_one_s_look_at_a_batch_changed(tmp_path, pre):
    """What a look at a held-out batch changes is put back before the first branch trains on.

    Found in a review: the look at a held-out batch after the first branch's first step (does `training_step`
    score?) put back the module's attributes but not its buffers (a running scale, a fake-quantizer's observer) nor the
    generators it holds, and the first branch trained on from what the look left: its score differed from the others'.
    """
    probe = ThreeIdenticalBranches()
    trainer = L.Trainer(callbacks=[probe], **trainer_kwargs(tmp_path, max_steps=1))
    trainer.fit(ChangedByALook(pre()))
    assert len(probe.scores) == 3
    assert probe.scores[0] == probe.scores[1] == probe.scores[2]


@pytest.mark.parametrize("model", [MeanTeacher, FrozenTeacherInTheOptimizer])
def test_identical_branches_score_identically_where_the_look_moves_a_teacher(tmp_path, model):
    """Weights the look moves and no optimizer trains come back too.

    Found in a review of a first version of the fix: weights no optimizer trains, moved by the look's
    ``training_step`` (an EMA teacher), were left where the look moved them.
    """
    probe = ThreeIdenticalBranches()
    L.Trainer(callbacks=[probe], **trainer_kwargs(tmp_path, max_steps=1)).fit(model())
    assert probe.scores[0] == probe.scores[1] == probe.scores[2]
