"""Optimizers that set their own step size (Prodigy, D-Adaptation) or need no schedule (Schedule-Free), for real."""

from __future__ import annotations

import logging

import dadaptation
import prodigyopt
import pytest
import pytorch_optimizer
import schedulefree
import torch
from helpers import WithOptimizer, trainer_kwargs
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import OneCycleLR

from lightning_superconv import SuperConvergence, WeightDecayBalancer

ADAPTIVE_LR = {
    "Prodigy": lambda p: prodigyopt.Prodigy(p, lr=1.0, weight_decay=0.01),
    "DAdaptAdam": lambda p: dadaptation.DAdaptAdam(p, lr=1.0),
    "DAdaptSGD": lambda p: dadaptation.DAdaptSGD(p, lr=1.0, momentum=0.9),
    # found trying pytorch_optimizer's as a new user: AdamG's multiplier was swept, and the cycle peaked at 3.4e4
    "AdamG": lambda p: pytorch_optimizer.AdamG(p, lr=1.0),
    "pytorch_optimizer.DAdaptAdam": lambda p: pytorch_optimizer.DAdaptAdam(p, lr=1.0),
    "pytorch_optimizer.Prodigy": lambda p: pytorch_optimizer.Prodigy(p, lr=1.0),
}


@pytest.mark.parametrize("build", list(ADAPTIVE_LR.values()), ids=list(ADAPTIVE_LR))
def test_lr_multiplier_optimizers_get_a_cycle_over_the_multiplier_without_range_test(tmp_path, build, caplog):
    """Their `lr` multiplies their own step-size estimate: no sweep, the one-cycle peaks at the configured `lr`."""
    model = WithOptimizer(build)
    sc = SuperConvergence()
    trainer = Trainer(**trainer_kwargs(tmp_path, callbacks=[sc], max_steps=6))
    with caplog.at_level(logging.INFO):
        trainer.fit(model)
    assert sc.result is None
    assert sc.max_lr == 1.0
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, OneCycleLR)
    assert trainer.global_step == 6
    assert "sets its own step size" in caplog.text
    assert "no range test" in caplog.text


@pytest.mark.parametrize(
    "build",
    [lambda p: schedulefree.AdamWScheduleFree(p, lr=0.0025), lambda p: schedulefree.SGDScheduleFree(p, lr=0.5)],
    ids=["AdamWScheduleFree", "SGDScheduleFree"],
)
def test_schedule_free_is_refused_by_superconvergence_saying_why(tmp_path, build):
    """A Schedule-Free optimizer replaces the schedule: SuperConvergence refuses at fit start with the fix."""
    trainer = Trainer(**trainer_kwargs(tmp_path, callbacks=[SuperConvergence()], max_steps=2))
    with pytest.raises(MisconfigurationException, match=r"Schedule-Free.*replaces the LR schedule.*Remove"):
        trainer.fit(WithOptimizer(build))


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda p: torch.optim.Rprop(p, lr=0.01), r"reads `lr` only once"),
        (lambda p: torch.optim.LBFGS(p, lr=0.1), r"evaluates the loss several times per step"),
    ],
    ids=["Rprop", "LBFGS"],
)
@pytest.mark.parametrize("max_lr", [None, 0.1], ids=["range-test", "max_lr"])
def test_optimizers_an_lr_schedule_means_nothing_to_are_refused_saying_why(tmp_path, build, why, max_lr):
    """Rprop (``lr`` is only its first step size) and LBFGS (several losses per step): a clear error, not a pick.

    Before, both were served: Rprop's three trials tied exactly and its pick (9063) was noise; LBFGS's tied too.
    """
    model = WithOptimizer(build)
    before = [p.detach().clone() for p in model.parameters()]
    # beside the balancer too, which runs first and must not trip over their param groups (no `weight_decay` key)
    callbacks = [SuperConvergence(max_lr=max_lr), WeightDecayBalancer()]
    trainer = Trainer(**trainer_kwargs(tmp_path, callbacks=callbacks, max_steps=2))
    with pytest.raises(MisconfigurationException, match=rf"cannot serve `(Rprop|LBFGS)`: it {why}.*Remove"):
        trainer.fit(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_balancer_alone_leaves_an_optimizer_without_weight_decay_as_it_is(tmp_path):
    """Rprop has no ``weight_decay`` in its param groups: nothing to balance, said so, and training goes on."""
    balancer = WeightDecayBalancer()
    trainer = Trainer(**trainer_kwargs(tmp_path, callbacks=[balancer], max_steps=2))
    trainer.fit(WithOptimizer(lambda p: torch.optim.Rprop(p, lr=0.01)))
    assert trainer.global_step == 2
    assert balancer.weight_decays == [0.0]
    assert balancer.reason == "no param group has weight decay, nothing to balance"
    assert "weight_decay" not in trainer.optimizers[0].param_groups[0]


def test_schedule_free_keeps_its_weight_decay_in_the_balancer(tmp_path, caplog):
    """WeightDecayBalancer leaves a Schedule-Free optimizer's `weight_decay` alone and says why."""

    def build(params):
        optimizer = schedulefree.AdamWScheduleFree(params, lr=0.0025, weight_decay=0.05)
        optimizer.train()
        return optimizer

    balancer = WeightDecayBalancer()
    trainer = Trainer(**trainer_kwargs(tmp_path, callbacks=[balancer], max_steps=4))
    with caplog.at_level(logging.INFO):
        trainer.fit(WithOptimizer(build))
    assert balancer.weight_decays == [0.05]
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.05
    assert "Schedule-Free" in balancer.reason


def test_prodigy_trains_with_both_callbacks(tmp_path):
    """Prodigy with both callbacks: the cycle over its multiplier, its decoupled decay balanced, loss finite."""
    model = WithOptimizer(lambda p: prodigyopt.Prodigy(p, lr=1.0, weight_decay=0.01))
    balancer = WeightDecayBalancer()
    trainer = Trainer(**trainer_kwargs(tmp_path, callbacks=[SuperConvergence(), balancer], max_epochs=2))
    trainer.fit(model)
    assert balancer.weight_decays is not None
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_adafactor_whose_step_is_bounded_by_1_over_sqrt_t_gets_a_warning_that_the_loss_never_rose(tmp_path):
    """`torch.optim.Adafactor` steps by min(lr, 1/sqrt(step)): above that bound the LR changes nothing.

    The sweep sees no rise, and the pick comes from the sweep's end; the user is told so. Found trying the package as a
    new user: the pick was 1.7e4, silently.
    """
    model = WithOptimizer(lambda p: torch.optim.Adafactor(p, lr=1e-2))
    sc = SuperConvergence(num_steps=30, trial_steps=0)
    with pytest.warns(RuntimeWarning, match=r"never rose back above where it started.*`torch.optim.Adafactor`"):
        Trainer(callbacks=[sc], **trainer_kwargs(tmp_path, limit_train_batches=4)).fit(model)
    assert sc.result is not None
    assert sc.max_lr > 1.0  # far above where Adafactor's own bound (1/sqrt(step) <= 1) lets the LR matter


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda p: torch.optim.Rprop(p, lr=0.01), r"cannot serve `Rprop`: it reads `lr` only once"),
        (lambda p: torch.optim.LBFGS(p, lr=0.1), r"cannot serve `LBFGS`: it evaluates the loss several times"),
        (lambda p: schedulefree.AdamWScheduleFree(p, lr=0.0025), r"cannot serve `AdamWScheduleFree`: a Schedule-Free"),
        (lambda p: prodigyopt.Prodigy(p, lr=1.0), r"cannot serve `Prodigy`: it sets its own step size"),
    ],
    ids=["Rprop", "LBFGS", "AdamWScheduleFree", "Prodigy"],
)
def test_find_max_lr_refuses_what_superconvergence_runs_no_range_test_on(tmp_path, build, why):
    """Found in a review: `find_max_lr` swept them all and returned a pick (63.7 for a Schedule-Free AdamW)."""
    from lightning_superconv import find_max_lr

    model = WithOptimizer(build)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MisconfigurationException, match=rf"find_max_lr {why}"):
        find_max_lr(model, trainer_kwargs=trainer_kwargs(tmp_path, max_steps=20), num_steps=10)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class _ProdigyUnderOwnOneCycle(WithOptimizer):
    def configure_optimizers(self):
        optimizer = prodigyopt.Prodigy(self.parameters(), lr=1.0)
        cycle = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=6)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cycle, "interval": "step"}}


def test_a_multiplier_under_the_users_own_one_cycle_is_read_at_its_peak(tmp_path):
    """Torch's `OneCycleLR` keeps its start (a 25th of its peak) in `initial_lr`: the configured value is the peak.

    Found in a review: the replacing cycle peaked at 0.04, said to be "the configured value".
    """
    sc = SuperConvergence()
    Trainer(**trainer_kwargs(tmp_path, callbacks=[sc], max_steps=6)).fit(_ProdigyUnderOwnOneCycle(None))
    assert sc.max_lr == 1.0
