"""WeightDecayBalancer inside a Trainer: what ends up in the optimizer, when, and across checkpoints and resumes."""

import functools
import logging
import math
import re
import warnings

import lightning as L
import pytest
import torch
from helpers import (
    DictValidationBatches,
    MemoryLogger,
    OneShotClassifier,
    ShuffledValidation,
    TimmViT,
    TinyClassifier,
    WithOptimizer,
    make_dataset,
    trainer_kwargs,
)
from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader

from lightning_superconv import SuperConvergence, WeightDecayBalancer
from lightning_superconv.param_groups import detached_copy
from lightning_superconv.schedule import build_one_cycle
from lightning_superconv.weight_decay import GroupTrace, bounds_for, decay_gain, timescale_bounded

# 8 steps per epoch (256 samples, batch 32)
STEPS_PER_EPOCH = 8


class Recorder(L.Callback):
    """Records LR, momentum and weight decay of every param group at every training step."""

    def __init__(self) -> None:
        self.steps: list[list[tuple[float, float, float]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.steps.append([(g["lr"], g.get("momentum", 0.0), g["weight_decay"]) for g in groups])


class StopAfter(L.Callback):
    """Interrupts a run after ``epochs`` epochs, as a preempted job would be."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class TwoGroups(TinyClassifier):
    """Weights decayed, biases and BatchNorm not: the usual split."""

    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.named_parameters() if p.ndim <= 1]
        opt = torch.optim.SGD(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            weight_decay=self.hparams.weight_decay,
        )
        if self.hparams.scheduler == "onecycle":
            total = self.trainer.estimated_stepping_batches
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": OneCycleLR(opt, max_lr=0.5, total_steps=total), "interval": "step"},
            }
        return opt


class AdamModule(TinyClassifier):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, weight_decay=1e-4)


class NoValidation(TinyClassifier):
    val_dataloader = None  # type: ignore[assignment]


def _fit(tmp_path, model, callbacks, epochs=2, **kwargs):
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=epochs, callbacks=callbacks, **kwargs))
    trainer.fit(model)
    return trainer


def _one_cycle_terms(model_lr: float, momentum: float, max_lr: float, total: int) -> list[float]:
    """c_t·η_t of every step of SuperConvergence's one-cycle, built by hand on a bare optimizer."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=model_lr, momentum=momentum)
    sched = build_one_cycle(opt, max_lr, total)
    terms = []
    for _ in range(total):
        group = opt.param_groups[0]
        terms.append(decay_gain("coupled", group["momentum"]) * group["lr"])
        opt.step()
        sched.step()
    return terms


def _one_cycle_sum(model_lr: float, momentum: float, max_lr: float, total: int) -> float:
    """Σ c_t·η_t of SuperConvergence's one-cycle."""
    return sum(_one_cycle_terms(model_lr, momentum, max_lr, total))


# ---------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "theory"}, ValueError, r"`mode` must be one of 'timescale', 'grid', 'budget', 'keep', got 'theory'"),
        ({"factors": ()}, TypeError, r"`factors` must be a non-empty tuple"),
        ({"factors": (1.0, -1.0)}, ValueError, r"`factors\[1\]` must be in \[0.0, inf\), got -1.0"),
        ({"factors": (1.0, "3")}, TypeError, r"`factors\[1\]` must be a number, got '3'"),
        # a grid of the user's own λ alone compares nothing (found trying the package as a new user: accepted)
        ({"mode": "grid", "factors": (1.0, 1)}, ValueError, r"`factors` must hold a multiple .* than 1.*\(1.0, 1\)"),
        ({"cost": 0.0}, ValueError, r"`cost` must be in \(0.0, 1.0\], got 0.0"),
        ({"cost": 1.5}, ValueError, r"`cost` must be in \(0.0, 1.0\], got 1.5"),
        ({"bounds": (0.5,)}, TypeError, r"`bounds` must be a pair"),
        ({"bounds": (2.0, 10.0)}, ValueError, r"`bounds\[0\]` must be in \[0.0, 1.0\], got 2.0"),
        ({"bounds": (0.1, 0.5)}, ValueError, r"`bounds\[1\]` must be in \[1.0, inf\), got 0.5"),
        ({"reference_lr": 0.0}, ValueError, r"`reference_lr` must be in \(0.0, inf\), got 0.0"),
        ({"reference_weight_decay": -1e-4}, ValueError, r"`reference_weight_decay` must be in \(0.0, inf\)"),
        # a recipe without weight decay has nothing to balance (accepted, it reported λ = 0 while the optimizer kept
        # its own)
        ({"reference_weight_decay": 0.0}, ValueError, r"`reference_weight_decay` must be in \(0.0, inf\), got 0.0"),
        ({"log_weight_decay": "yes"}, TypeError, r"`log_weight_decay` must be True or False, got 'yes'"),
        # found trying the package as a new user: an `OverflowError` naming nothing
        ({"min_budget": 10**400}, ValueError, r"`min_budget` must be a finite number in \(0.0, inf\), got 1000"),
    ],
)
def test_bad_arguments_name_the_argument_and_what_is_accepted(kwargs, error, match):
    with pytest.raises(error, match=match):
        WeightDecayBalancer(**kwargs)


def test_numpy_numbers_are_numbers():
    import numpy as np

    balancer = WeightDecayBalancer(
        reference_lr=np.float32(0.1), reference_weight_decay=np.float64(1e-4), cost=np.float32(0.5)
    )
    assert type(balancer.reference_lr) is float
    assert type(balancer.cost) is float
    assert balancer.reference_lr == pytest.approx(0.1)
    # arrays of factors as of bounds, NumPy's booleans (found trying the package as a new user: both refused)
    assert WeightDecayBalancer(factors=np.logspace(-1, 1, 3)).factors == pytest.approx((0.1, 1.0, 10.0))
    assert WeightDecayBalancer(factors=torch.tensor([0.5, 2.0])).factors == pytest.approx((0.5, 2.0))
    assert WeightDecayBalancer(rebalance_on_rescue=np.bool_(True)).rebalance_on_rescue is True
    assert type(WeightDecayBalancer(mode=np.str_("budget")).mode) is str


def test_a_minimum_gain_no_loss_can_reach_is_refused():
    """A relative gain (user's loss - another's) / user's is below 1: `min_gain >= 1` would never adopt a λ."""
    with pytest.raises(ValueError, match=r"`min_gain` must be in \[0.0, 1.0\), got 5.0"):
        WeightDecayBalancer(min_gain=5.0)


def test_two_optimizers_are_refused_with_a_misconfiguration(tmp_path):
    """The balancer serves one optimizer; two fail at fit start, saying what to do."""
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    class TwoOptimizers(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(
        MisconfigurationException,
        match=r"exactly one optimizer.*some parameters only \(torch.s `Muon`: matrices\).*is not served",
    ):
        _fit(tmp_path, TwoOptimizers(), [WeightDecayBalancer()])


def test_a_momentum_of_one_under_coupled_decay_is_refused_naming_the_group_and_the_value(tmp_path):
    """SGD accepts momentum=1; its L2 never settles at a rate of decay (found in a review: a bare ValueError)."""
    model = TinyClassifier(momentum=1.0)
    with pytest.raises(MisconfigurationException, match=r"param group 0 of `SGD`: its momentum is 1 at fit start .*"):
        _fit(tmp_path, model, [WeightDecayBalancer()])
    assert model.net[0].weight.grad is None  # before any step

    # a momentum the user's scheduler takes to 1 or more later in the run: named with its step
    def cycle_past_one(params):
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        cycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, 0.1, total_steps=16, base_momentum=1.05, max_momentum=0.9
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cycle, "interval": "step"}}

    model = WithOptimizer(cycle_past_one)
    with pytest.raises(MisconfigurationException, match=r"`SGD`: its momentum is 1.0\d* at step \d+ \(as its"):
        _fit(tmp_path, model, [WeightDecayBalancer()])


@pytest.mark.parametrize("decayed", [5e-4, 0.0], ids=["the other group decays", "no group decays"])
def test_a_momentum_of_one_in_a_group_without_weight_decay_is_not_refused(tmp_path, decayed):
    """No decay enters that group: there is nothing to trace in it (found in a review: refused all the same)."""

    def split(params):
        weights, biases = [], []
        for p in params:
            (weights if p.ndim > 1 else biases).append(p)
        groups = [{"params": weights, "weight_decay": decayed}, {"params": biases, "momentum": 1.0}]
        return torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=0.0)

    balancer = WeightDecayBalancer()
    _fit(tmp_path, WithOptimizer(split), [balancer])
    if decayed:
        assert balancer.weight_decays[0] > decayed  # raised: the tiny run's K is far below 1
        assert balancer.weight_decays[1] == 0.0
        assert balancer.reference_budgets[1] == 0.0
    else:
        assert balancer.weight_decays == [0.0, 0.0]
        assert balancer.reason == "no param group has weight decay, nothing to balance"


class ManualOptimization(TinyClassifier):
    """Steps its own optimizer (``automatic_optimization = False``), as a GAN or a custom loop does."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.steps = 0

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.steps += 1


def test_the_grid_refuses_manual_optimization_before_anything_runs_and_the_other_modes_serve_it(tmp_path):
    """The grid trains branches by stepping the optimizer: under manual optimization torch failed mid-grid.

    Found trying the package as a new user ("Trying to backward through the graph a second time"); now a clear error
    at fit start that names the mode and what to do, before any step, while the modes that only set λ serve it.
    """
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    model = ManualOptimization()
    refused = r"WeightDecayBalancer\(mode='grid'\) needs automatic.*'budget'"
    with pytest.raises(MisconfigurationException, match=refused):
        _fit(tmp_path / "grid", model, [WeightDecayBalancer(mode="grid")])
    assert model.steps == 0
    # where no grid runs (`fast_dev_run`; a resume, which re-applies its λ) the grid's needs are not asked
    _fit(tmp_path / "dev", ManualOptimization(), [WeightDecayBalancer(mode="grid")], fast_dev_run=True)
    served = WeightDecayBalancer(mode="timescale")
    _fit(tmp_path / "timescale", ManualOptimization(), [served])
    assert served.weight_decays is not None


class ManualCosine(ManualOptimization):
    """Steps a ``CosineAnnealingLR`` after each optimizer step itself, as Lightning's manual-optimization docs show."""

    def __init__(self, interval: str | None):
        super().__init__()
        self.interval = interval

    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        self.lr_schedulers().step()

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        config = {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=16)}
        if self.interval is not None:
            config["interval"] = self.interval
        return {"optimizer": optimizer, "lr_scheduler": config}


@pytest.mark.parametrize("interval", [None, "step"], ids=["interval-unset", "interval-step"])
def test_under_manual_optimization_a_scheduler_stepped_otherwise_than_traced_is_said(tmp_path, interval):
    """Found trying the package as a new user: a scheduler stepped at every batch was traced as stepped per epoch.

    Lightning leaves the stepping to the user under manual optimization; the config's `interval` ('epoch' unless set)
    is all the balancer can go by. Set to 'step', it traces the schedule that runs, and nothing is said.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, ManualCosine(interval), [WeightDecayBalancer(mode="timescale")])
    said = [str(w.message) for w in caught if "under manual optimization" in str(w.message)]
    if interval is None:
        assert len(said) == 1
        assert "the LR at step 1 of this fit is" in said[0]
        assert "`CosineAnnealingLR` once per epoch" in said[0]
    else:
        assert said == []


class StepLREveryOtherCall(TinyClassifier):
    """A ``StepLR`` whose ``lr_scheduler_step`` override steps it at every other call (or at each, ``every=1``)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.calls = 0

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric):
        self.calls += 1
        if self.calls % self.every == 0:
            scheduler.step()


@pytest.mark.parametrize("every", [2, 1])
def test_a_scheduler_an_lr_scheduler_step_override_steps_otherwise_than_traced_is_said(tmp_path, every):
    """An `lr_scheduler_step` override that steps otherwise than Lightning calls it runs a schedule other than traced.

    Found trying the package as a new user: one stepping a `StepLR` every other call, traced as stepped at each call,
    had λ raised 1.4x for a decay budget half the one that ran, silently. One stepping it at each call runs what was
    traced: nothing is said.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, StepLREveryOtherCall(every), [WeightDecayBalancer(mode="timescale")])
    said = [str(w.message) for w in caught if "`lr_scheduler_step` override steps your scheduler" in str(w.message)]
    if every == 2:
        assert len(said) == 1
        assert "the LR at step 3 of this fit is" in said[0]  # where the traced `StepLR` first halved it
    else:
        assert said == []


# ---------------------------------------------------------------------------------------------------- what is set


def test_budget_mode_sets_the_matched_value_at_every_step(tmp_path):
    """With SuperConvergence's cycle, every training step runs at λ* = K_ref / Σ c_t·η_t, computed independently."""
    recorder = Recorder()
    epochs, max_lr = 3, 0.5
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=max_lr), WeightDecayBalancer(mode="budget"), recorder],
         epochs=epochs)  # fmt: skip
    total = epochs * STEPS_PER_EPOCH
    expected = 5e-4 * total * 0.01 * decay_gain("coupled", 0.9) / _one_cycle_sum(0.01, 0.9, max_lr, total)
    assert expected < 5e-4  # the cycle spends more budget than the user's constant 0.01: λ shrinks
    assert len(recorder.steps) == total
    assert [s[0][2] for s in recorder.steps] == pytest.approx([expected] * total)


def test_default_timescale_mode_sets_the_bounded_value_at_every_step(tmp_path):
    """By default a decay that cannot act within the run (K < 1) is raised towards K = 1, at every training step.

    The value is bounded by `bounds` (10x the user's) and the per-step cap.
    """
    recorder = Recorder()
    balancer = WeightDecayBalancer()
    epochs, max_lr = 3, 0.5
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=max_lr), balancer, recorder], epochs=epochs)
    terms = _one_cycle_terms(0.01, 0.9, max_lr, epochs * STEPS_PER_EPOCH)
    assert 5e-4 * sum(terms) < 1.0  # the user's λ spends K < 1: decay barely acts in this run
    expected = min(1.0 / sum(terms), 10 * 5e-4, 0.1 / max(terms))
    assert balancer.mode == "timescale"
    assert [s[0][2] for s in recorder.steps] == pytest.approx([expected] * epochs * STEPS_PER_EPOCH)
    assert "timescale" in balancer.reason
    # the bounds stop it short of K = 1 here, and the report says so rather than claim the range was reached
    assert expected < 1.0 / sum(terms)
    held = "`bounds` (0.01-10x the user's λ)" if expected == 10 * 5e-4 else "the cap of 10% decay per step"
    assert f"raised only as far as {held} allows: K = " in balancer.reason
    assert "still below the range it aims for" in balancer.reason


@pytest.mark.parametrize(("max_lr", "held"), [(0.5, "`bounds` (0.01-10x the user's λ)"), (5.0, "the cap of 10% decay")])
def test_timescale_stopped_short_names_the_limit_that_held(tmp_path, max_lr, held):
    """`bounds` at a moderate peak, the cap of decay per step at a high one: the reason names the one that held.

    Found trying the package as a new user: both were named where `bounds` alone held.
    """
    balancer = WeightDecayBalancer()
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=max_lr, guard=False), balancer], epochs=1)
    assert balancer.reason.startswith(f"raised only as far as {held}")
    peak_decay = balancer.weight_decays[0] * max(_one_cycle_terms(0.01, 0.9, max_lr, STEPS_PER_EPOCH))
    assert (peak_decay == pytest.approx(0.1)) == held.startswith("the cap")


@pytest.mark.parametrize(
    ("weight_decay", "epochs", "verdict"),
    [
        (0.05, 2, "lowered by the cap of 10% decay per step: K = 0.8, below the range it aims for"),
        (0.02, 4, "lowered by the cap of 10% decay per step: K = 1.6, still inside the range it aims for"),
    ],
    ids=["from above the range to below it", "inside the range"],
)
def test_timescale_says_the_cap_lowered_lambda(tmp_path, weight_decay, epochs, verdict):
    """SGD at LR 1 and momentum 0.9 decays c·η·λ = 10λ a step: the cap of 10 % a step holds λ at 0.01.

    Found in a review: "raised only as far as the cap allows" where the cap had lowered λ 5x (K 4 -> 0.8, the range
    1-2), and "moved so that decay acts on a timescale between one epoch and the whole run" where the user's K of 3.2
    already did (the range 1-4) and the cap alone halved λ.
    """
    balancer = WeightDecayBalancer()
    _fit(tmp_path, TinyClassifier(lr=1.0, weight_decay=weight_decay, n=128), [balancer], epochs=epochs)
    assert balancer.weight_decays == [pytest.approx(0.01)]
    assert balancer.reason.startswith(verdict), balancer.reason


@pytest.mark.parametrize("with_superconvergence", [False, True], ids=["alone", "beside SuperConvergence"])
def test_a_reference_plateau_scheduler_read_as_constant_is_said_also_once_the_cycle_replaced_it(
    tmp_path, with_superconvergence
):
    """The reference's note reaches the reason where the run's own schedule (the one-cycle) has none, and only once.

    Found trying the package as a new user (LightningCLI's `--lr_scheduler ReduceLROnPlateau`): beside
    `SuperConvergence` the note went, while `mode='budget'` rested on the plateau read as a constant LR.
    """

    def plateau(params):
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "train_loss"}}

    balancer = WeightDecayBalancer(mode="budget")
    callbacks = [SuperConvergence(max_lr=0.5), balancer] if with_superconvergence else [balancer]
    _fit(tmp_path, WithOptimizer(plateau), callbacks)  # it logs `train_loss`
    note = "`ReduceLROnPlateau` depends on a metric and was read as constant"
    assert balancer.reason.count(note) == 1
    assert balancer.reason.endswith(f"in the reference recipe, {note}" if with_superconvergence else note)


def test_timescale_with_several_decayed_groups_says_each_group_s_budget(tmp_path):
    """The verdict in words is the first group's, said so; each further group's budget follows, where it landed.

    Found trying the package as a new user: "raised only as far as `bounds`" read as every group's, while a head at
    ten times the body's LR had reached its range.
    """

    def body_and_head(params):
        params = list(params)
        return torch.optim.SGD(
            [{"params": params[:-2]}, {"params": params[-2:], "lr": 0.1}], lr=0.01, momentum=0.9, weight_decay=5e-4
        )

    balancer = WeightDecayBalancer()
    _fit(tmp_path, WithOptimizer(body_and_head), [SuperConvergence(max_lr=0.5), balancer], epochs=3)
    assert balancer.reason.startswith("param group 0: raised only as far as `bounds`")
    said = re.search(r"; param group 1: K = ([0-9.e+-]+)(, (below|above) the range)?$", balancer.reason)
    assert said is not None, balancer.reason
    budget = balancer.weight_decays[1] * sum(_one_cycle_terms(0.1, 0.9, 5.0, 3 * STEPS_PER_EPOCH))  # the head's cycle
    assert float(said.group(1)) == pytest.approx(budget, rel=1e-2)
    assert said.group(2) is None  # ten times the LR: its λ reached the range
    assert budget == pytest.approx(1.0)  # `min_budget`: the least of the range the timescale rule aims for


def test_timescale_that_reaches_its_range_says_it_moved_there(tmp_path):
    balancer = WeightDecayBalancer(bounds=(0.01, 1000.0))
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), balancer], epochs=3)
    assert balancer.reason.startswith("moved so that decay acts on a timescale between one epoch and the whole run")


def test_a_run_shorter_than_min_budget_epochs_says_it_took_the_smallest_budget_allowed(tmp_path):
    """Three quarters of an epoch: no timescale lies between one epoch and the run; K = `min_budget`, said so.

    Found trying the package as a new user: it said "between one epoch and the whole run", allowed "1-1".
    """
    balancer = WeightDecayBalancer(bounds=(0.01, 1000.0))
    _fit(tmp_path, TinyClassifier(n=1024), [SuperConvergence(max_lr=0.5), balancer], epochs=-1, max_steps=24,
         limit_train_batches=1.0)  # fmt: skip
    assert balancer.reason.startswith("moved to the smallest budget allowed, K = 1 (`min_budget`)")
    assert "allowed 1 only (0.75 epochs)" in balancer.reason


def test_timescale_keeps_a_weight_decay_already_in_range(tmp_path):
    """A λ whose budget lies between 1 and the number of epochs is left exactly as configured."""
    total = 6 * STEPS_PER_EPOCH
    inside = 1.5 / _one_cycle_sum(0.01, 0.9, 0.05, total)  # K = 1.5, with 6 epochs
    balancer = WeightDecayBalancer(mode="timescale")
    _fit(tmp_path, TinyClassifier(weight_decay=inside), [SuperConvergence(max_lr=0.05), balancer], epochs=6)
    assert balancer.weight_decays == [inside]
    assert balancer.reason.startswith("kept")


class StreamingClassifier(TinyClassifier):
    """Its training data is a stream without a length (an ``IterableDataset``): 40 steps, no epoch to count by."""

    def train_dataloader(self):
        x, y = make_dataset(640).tensors

        class Stream(torch.utils.data.IterableDataset):
            def __iter__(self):
                for start in range(0, len(x), 16):
                    yield x[start : start + 16], y[start : start + 16]

        return DataLoader(Stream(), batch_size=None)


def test_timescale_on_a_stream_without_a_length_keeps_a_budget_above_one(tmp_path):
    """A stream has no epoch length, so no upper bound on the budget (not 40 "epochs" of one step): K = 2 is kept."""
    weight_decay = 2.0 / _one_cycle_sum(0.01, 0.9, 0.05, 40)
    balancer = WeightDecayBalancer(mode="timescale")
    model = StreamingClassifier(weight_decay=weight_decay)
    _fit(tmp_path, model, [SuperConvergence(max_lr=0.05), balancer], epochs=-1, max_steps=40)
    assert balancer.weight_decays == [weight_decay]
    assert "a data stream without a length: no epoch to bound it by" in balancer.reason


def test_timescale_on_a_stream_without_a_length_still_raises_a_budget_below_one(tmp_path):
    """The lower bound holds without an epoch length: K = 0.1 is raised to K = 1."""
    total = _one_cycle_sum(0.01, 0.9, 0.05, 40)
    balancer = WeightDecayBalancer(mode="timescale")
    _fit(tmp_path, StreamingClassifier(weight_decay=0.1 / total), [SuperConvergence(max_lr=0.05), balancer], epochs=-1,
         max_steps=40)  # fmt: skip
    assert balancer.weight_decays[0] == pytest.approx(1.0 / total)
    # no epoch to speak of (found in a review: "between one epoch and the whole run", beside "no epoch to bound it by")
    assert balancer.reason.startswith("moved so that decay acts on a timescale within the run (K = 1;")


@pytest.mark.parametrize("reference", [None, 0.1])
def test_keep_mode_leaves_weight_decay_as_configured(tmp_path, reference):
    """Also with a `reference_weight_decay`, which only sets the recipe its budget is compared with.

    Found trying the package as a new user: `keep` trained at the reference's 0.1 and said "kept as configured".
    """
    recorder = Recorder()
    balancer = WeightDecayBalancer(mode="keep", reference_weight_decay=reference)
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), balancer, recorder])
    assert {s[0][2] for s in recorder.steps} == {5e-4}
    assert balancer.weight_decays == [5e-4]


def test_keep_mode_reports_the_budget_of_the_weight_decay_it_keeps_against_the_reference(tmp_path):
    """The ratio is the kept λ's budget over the reference recipe's: a reference 200x the kept λ reads 200x lower.

    Found trying the package as a new user: the reference's λ cancelled out, the same ratio for every reference.
    """
    ratios = []
    for reference in (None, 0.1):
        balancer = WeightDecayBalancer(mode="keep", reference_weight_decay=reference)
        _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), balancer])
        ratios.append(float(re.search(r"decay budget ([0-9.e+-]+)x the reference", balancer.reason).group(1)))
    assert ratios[1] == pytest.approx(ratios[0] * 5e-4 / 0.1, rel=1e-2)  # each read to 3 digits


@pytest.mark.parametrize("mode", ["timescale", "budget", "grid", "keep"])
def test_a_run_whose_lr_is_zero_throughout_keeps_its_weight_decay_and_says_why(tmp_path, mode):
    """Decay acts through the LR: at 0 at every step, no λ changes anything, and no ratio to a reference exists.

    Found in a review: "K = 0, still below the range it aims for", and "decay budget nanx the reference recipe's".
    """
    balancer = WeightDecayBalancer(mode=mode)
    _fit(tmp_path, TinyClassifier(lr=0.0, weight_decay=1e-4), [balancer])
    assert balancer.weight_decays == [1e-4]
    assert "nan" not in balancer.reason
    assert "K = 0" not in balancer.reason
    if mode == "keep":
        assert balancer.reason.endswith("not compared: the reference recipe spends none (its LR is 0)")
    else:
        assert balancer.reason == "kept as configured: the LR of every group that decays is 0 at every step of this run"


def test_a_reference_weight_decay_is_named_where_the_modes_start_from_it(tmp_path):
    """With a `reference_weight_decay` the reasons name it, not the user's λ, as the λ the run trains at or near.

    Found trying the package as a new user: a grid too short to run trained at the reference's λ and said "left as
    configured"; `timescale` said what the run "would spend at the user's λ" of the reference's.
    """
    grid = WeightDecayBalancer(mode="grid", reference_weight_decay=1e-3)
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), grid])
    assert grid.weight_decays == [1e-3]
    assert grid.reason.startswith("left at the `reference_weight_decay`: the run is too short for a grid")
    timescale = WeightDecayBalancer(mode="timescale", reference_weight_decay=1e-3)
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), timescale])
    assert "at the `reference_weight_decay` the run would spend a decay budget" in timescale.reason
    assert "user's" not in timescale.reason


class StepsEveryOtherBatch(TinyClassifier):
    """Plain SGD (so K = λ·Σ η) under a `StepLR` of `interval="step"` and `frequency=2`."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, weight_decay=5e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 2}}


class StepLRs(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("accumulate", [1, 4])
def test_the_decay_budget_read_from_a_step_scheduler_of_frequency_two_is_the_one_that_runs(tmp_path, accumulate):
    """Lightning steps it where the epoch has read an even number of batches: the balancer traces it so.

    Found trying the package as a new user: under accumulation of 4 the scheduler steps at every optimizer step, and
    was traced at every other one (K 0.293 traced against 0.186 run).
    """
    balancer, lrs = WeightDecayBalancer(mode="timescale"), StepLRs()  # λ moves; the LRs the run steps at do not
    # epochs of 9 batches: the scheduler's count restarts at each epoch's first batch
    model = StepsEveryOtherBatch(n=288)
    _fit(tmp_path, model, [balancer, lrs], epochs=3, accumulate_grad_batches=accumulate, limit_train_batches=1.0)
    traced = float(re.search(r"decay budget K = Σ c·η·λ of ([0-9.e+-]+)", balancer.reason).group(1))
    assert traced == pytest.approx(5e-3 * sum(lrs.lrs), rel=5e-3)  # read to 3 digits


def test_groups_without_weight_decay_are_left_alone(tmp_path):
    """A group configured with weight_decay=0 (biases, norms) stays at 0 in every mode."""
    for mode in ("budget", "grid", "keep"):
        recorder = Recorder()
        balancer = WeightDecayBalancer(mode=mode, cost=1.0)
        _fit(tmp_path, TwoGroups(weight_decay=5e-3), [SuperConvergence(max_lr=0.5), balancer, recorder], epochs=6)
        assert {s[1][2] for s in recorder.steps} == {0.0}, mode
        assert balancer.reference_weight_decays == [5e-3, 0.0]
        if mode == "grid":
            assert balancer.search is not None  # the branches ran, with both groups


def test_no_decay_at_all_is_reported_and_untouched(tmp_path, caplog):
    balancer = WeightDecayBalancer(mode="budget")
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, TinyClassifier(weight_decay=0.0), [SuperConvergence(max_lr=0.5), balancer])
    assert balancer.weight_decays == [0.0]
    assert "no param group has weight decay" in caplog.text
    assert "reference_weight_decay" not in caplog.text
    caplog.clear()
    given = WeightDecayBalancer(reference_weight_decay=1e-3)
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, TinyClassifier(weight_decay=0.0), [SuperConvergence(max_lr=0.5), given])
    assert given.weight_decays == [0.0]
    assert "`reference_weight_decay` sets the reference of the groups that decay; none does" in caplog.text


def test_fit_start_reports_the_choice_and_why_in_one_line(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), WeightDecayBalancer(mode="budget")])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("WeightDecayBalancer:")]
    assert len(lines) == 1
    assert "weight_decay=" in lines[0]
    assert "user's 0.0005" in lines[0]
    assert "budget" in lines[0]


# ---------------------------------------------------------------------------------------------------- the grid


def _grid_then_plain(tmp_path, weight_decay=5e-3, epochs=6):
    """A grid run, then a plain run configured with the λ the grid chose, from the same seed."""
    L.seed_everything(0)
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    grid_model = TinyClassifier(weight_decay=weight_decay)
    _fit(tmp_path, grid_model, [SuperConvergence(max_lr=0.5), balancer], epochs=epochs)
    L.seed_everything(0)
    plain_model = TinyClassifier(weight_decay=balancer.weight_decays[0])
    _fit(tmp_path, plain_model, [SuperConvergence(max_lr=0.5)], epochs=epochs)
    return balancer, grid_model, plain_model


def test_grid_changes_nothing_but_weight_decay(tmp_path):
    """The branches are restored bit for bit: a grid run equals a plain run configured with the chosen λ."""
    balancer, grid_model, plain_model = _grid_then_plain(tmp_path)
    assert balancer.search is not None
    assert len(balancer.search["val_losses"]) == 5
    assert math.isfinite(balancer.search["replicate_val_loss"])
    assert balancer.weight_decays[0] / 5e-3 == pytest.approx(balancer.search["factor"])
    for a, b in zip(grid_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_grid_on_data_that_can_be_read_only_once_says_so_and_keeps_the_weight_decay(tmp_path):
    """A one-shot stream ran out in the branches: later ones trained on fewer batches, compared as if equal.

    Found in a review (of the range test's trials, which share the branches): now the search stops, with a warning.
    """
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    model = OneShotClassifier(n=8 * 60, weight_decay=1e-2)
    with pytest.warns(RuntimeWarning, match=r"mode='grid'\): the train dataloader ran out after \d+ of a branch's"):
        _fit(tmp_path, model, [SuperConvergence(max_lr=0.5), balancer], max_steps=100, epochs=1)
    assert balancer.search is None
    assert balancer.weight_decays == [1e-2]
    assert "ran out" in balancer.reason


def test_grid_gives_back_the_generator_of_a_shuffled_validation_loader(tmp_path):
    """The branches score on the validation loader: the run validates in the order a run without the grid would."""
    validating = {"check_val_every_n_epoch": 1, "limit_val_batches": 2}
    L.seed_everything(0)
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    grid_model = ShuffledValidation(weight_decay=5e-3)
    _fit(tmp_path, grid_model, [SuperConvergence(max_lr=0.5), balancer], epochs=6, **validating)
    assert balancer.search is not None
    L.seed_everything(0)
    plain_model = ShuffledValidation(weight_decay=balancer.weight_decays[0])
    _fit(tmp_path, plain_model, [SuperConvergence(max_lr=0.5)], epochs=6, **validating)
    assert len(grid_model.first_val_targets) == 6
    for a, b in zip(grid_model.first_val_targets, plain_model.first_val_targets, strict=True):
        assert torch.equal(a, b)


class HeadAtTenTimesTheLR(TinyClassifier):
    """A body at LR 0.01 and a head at 0.1, both at λ 0.05; records each group's λ at every training step."""

    def configure_optimizers(self):
        self.seen: list[tuple[float, float]] = []
        body = [p for n, p in self.named_parameters() if not n.startswith("net.4")]
        groups = [{"params": body}, {"params": list(self.net[4].parameters()), "lr": 0.1}]
        return torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=0.05)

    def training_step(self, batch, batch_idx):
        self.seen.append(tuple(group["weight_decay"] for group in self.trainer.optimizers[0].param_groups))
        return super().training_step(batch, batch_idx)


def test_grid_branches_try_each_groups_lambda_within_its_own_bounds(tmp_path):
    """Each branch clamps each group's λ to that group's bounds, as the λ adopted is.

    Found in a review: the factors are planned within the first group's bounds, and a head at 10x its LR was tried at
    3x and 10x its λ (15 % and 50 % decay per step, past the 10 % cap) while the λ adopted is clamped.
    """
    model = HeadAtTenTimesTheLR()
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    _fit(tmp_path, model, [balancer], epochs=10)
    assert balancer.search is not None
    assert max(body for body, _ in model.seen) > 0.1, "the premise: the body's λ tried above the head's cap"
    cap = 0.1 / (10 * 0.1)  # 10 % per step at a gain of 1 / (1 - 0.9) and LR 0.1
    assert max(head for _, head in model.seen) <= cap * (1 + 1e-9)
    assert balancer.weight_decays[1] <= cap * (1 + 1e-9)


class HeadAboveItsCap(HeadAtTenTimesTheLR):
    """The head at 10x the LR with λ 0.2: 20 % decay per step at 1x, past the cap of 10 %."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        optimizer.param_groups[1]["weight_decay"] = 0.2
        return optimizer


def test_grid_says_which_group_s_lambda_its_bounds_held_off_the_factor(tmp_path):
    """Found in a review: the reason said "kept" while the head's λ was lowered by the cap of 10 % decay per step."""
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    _fit(tmp_path, HeadAboveItsCap(), [balancer], epochs=10)
    assert balancer.search is not None
    factor = balancer.search["factor"]
    assert balancer.weight_decays[0] == pytest.approx(0.05 * factor)
    assert balancer.weight_decays[1] < 0.2 * factor
    assert f"param group 1 held at {balancer.weight_decays[1]:.3g} by `bounds` or the cap" in balancer.reason
    assert "param group 0" not in balancer.reason


def test_grid_trains_with_the_lambda_it_adopts(tmp_path, monkeypatch):
    """When one λ wins clearly, the whole run trains with it, and equals a plain run configured with it."""
    from lightning_superconv import weight_decay_balancer as module

    real = module.run_branches

    def clear_winner(*args, **kwargs):
        losses, seconds = real(*args, **kwargs)
        return [0.1 if b.label == 3.0 and b.order == 0 else 1.0 for b in args[3]], seconds

    monkeypatch.setattr(module, "run_branches", clear_winner)
    balancer, grid_model, plain_model = _grid_then_plain(tmp_path)
    assert balancer.search["factor"] == 3.0
    assert balancer.weight_decays[0] == pytest.approx(1.5e-2)
    assert "3x had the lowest validation loss" in balancer.reason
    for a, b in zip(grid_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_grid_is_skipped_when_branches_cannot_see_weight_decay_act(tmp_path, monkeypatch):
    """A λ so small that no branch would shrink the weights by 5 % runs no branch at all and keeps λ."""
    from lightning_superconv import weight_decay_balancer as module

    monkeypatch.setattr(module, "run_branches", lambda *a, **k: pytest.fail("a branch ran"))
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    _fit(tmp_path, TinyClassifier(weight_decay=1e-5), [SuperConvergence(max_lr=0.5), balancer], epochs=6)
    assert balancer.weight_decays == [1e-5]
    assert "too little to tell weight decays apart" in balancer.reason
    assert balancer.search is None


def test_grid_whose_factors_all_clamp_onto_the_user_s_lambda_runs_no_branch(tmp_path, monkeypatch):
    """``bounds=(1, 1)`` leaves one candidate, the user's λ: comparing it with itself would only cost time."""
    from lightning_superconv import weight_decay_balancer as module

    monkeypatch.setattr(module, "run_branches", lambda *a, **k: pytest.fail("a branch ran"))
    balancer = WeightDecayBalancer(mode="grid", cost=1.0, bounds=(1.0, 1.0))
    _fit(tmp_path, TinyClassifier(weight_decay=5e-3), [SuperConvergence(max_lr=0.5), balancer], epochs=6)
    assert balancer.weight_decays == [5e-3]
    assert "clamp every factor of [0.1, 0.3, 1, 3, 10] onto the user's λ" in balancer.reason
    assert balancer.search is None


def test_grid_without_validation_data_keeps_weight_decay_and_warns(tmp_path):
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    with pytest.warns(RuntimeWarning, match=r"no validation dataloader.*or use the default `mode='timescale'`"):
        _fit(tmp_path, NoValidation(), [SuperConvergence(max_lr=0.5), balancer], epochs=4)
    assert balancer.weight_decays == [5e-4]


def test_grid_on_a_run_that_validates_on_no_batch_keeps_weight_decay_and_says_why(tmp_path):
    """``limit_val_batches=0``: the validation data is there, but the run uses none of it, and neither does the grid."""
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    with pytest.warns(RuntimeWarning, match=r"validates on no batch \(`limit_val_batches=0`\)"):
        _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), balancer], epochs=4, limit_val_batches=0)
    assert balancer.weight_decays == [5e-4]
    assert balancer.reason.endswith("no validation data to choose by")


def test_grid_on_validation_batches_training_step_cannot_take_keeps_weight_decay_and_warns(tmp_path):
    """The grid chooses by the ``training_step`` loss on validation batches; batches it fails on leave λ as it was."""
    L.seed_everything(0)
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    model = DictValidationBatches(weight_decay=5e-3)
    with pytest.warns(RuntimeWarning, match="failed on validation batch 0"):
        _fit(tmp_path, model, [SuperConvergence(max_lr=0.5), balancer], epochs=6)
    assert balancer.weight_decays == [5e-3]
    assert "cannot score the validation batches" in balancer.reason
    assert model.trainer.optimizers[0].param_groups[0]["weight_decay"] == 5e-3


class GridStepWithoutBatchIdx(TinyClassifier):
    """``training_step(self, batch)``: Lightning passes ``batch_idx`` only to a step that takes it."""

    def training_step(self, batch):  # type: ignore[override]
        return super().training_step(batch, 0)


class GridStepDrawsItsOwnBatches(TinyClassifier):
    """``training_step(self, dataloader_iter)``: the step draws its batch from Lightning's iterator."""

    def training_step(self, dataloader_iter):  # type: ignore[override]
        (x, y), _, _ = next(dataloader_iter)
        return torch.nn.functional.cross_entropy(self(x), y)


def test_grid_scores_a_training_step_that_takes_no_batch_idx(tmp_path):
    """Found by trying the package as a new user: the grid passed a `batch_idx`, failed, and skipped its search."""
    L.seed_everything(0)
    balancer = WeightDecayBalancer(mode="grid", cost=1.0)
    _fit(tmp_path, GridStepWithoutBatchIdx(weight_decay=5e-3), [SuperConvergence(max_lr=0.5), balancer], epochs=6)
    assert balancer.search is not None
    assert all(math.isfinite(loss) for loss in balancer.search["val_losses"])


def test_grid_refuses_a_training_step_that_draws_its_own_batches_before_anything_runs(tmp_path):
    """The grid draws each branch's batches itself; the other modes serve such a module."""
    with pytest.raises(MisconfigurationException, match=r"takes `dataloader_iter`.*choose another `mode`"):
        _fit(tmp_path, GridStepDrawsItsOwnBatches(), [WeightDecayBalancer(mode="grid")], epochs=1)
    balancer = WeightDecayBalancer(mode="timescale")
    _fit(tmp_path, GridStepDrawsItsOwnBatches(), [SuperConvergence(max_lr=0.5), balancer], epochs=1)
    assert balancer.weight_decays is not None


def test_grid_on_a_run_too_short_keeps_weight_decay_and_warns(tmp_path):
    balancer = WeightDecayBalancer(mode="grid")
    with pytest.warns(RuntimeWarning, match="too few to compare weight decays"):
        _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), balancer], epochs=1)
    assert balancer.weight_decays == [5e-4]


def test_grid_does_not_run_during_the_range_test(tmp_path):
    """SuperConvergence's range test runs at the user's λ; the balancer acts only afterwards."""
    seen = []

    class Spy(WeightDecayBalancer):
        def on_train_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["weight_decay"])
            super().on_train_start(trainer, pl_module)

    sc = SuperConvergence(num_steps=20)
    _fit(tmp_path, TinyClassifier(), [sc, Spy(mode="budget")])
    assert sc.result is not None
    assert seen == [5e-4]


# ---------------------------------------------------------------------------------------------------- order, schedulers


def test_either_callback_order_gives_the_same_choice(tmp_path):
    """Listed before or after SuperConvergence, the balancer reads the same reference and the same cycle."""
    values = []
    for first in (True, False):
        balancer = WeightDecayBalancer(mode="budget")
        sc = SuperConvergence(max_lr=0.5)
        _fit(tmp_path, TinyClassifier(), [balancer, sc] if first else [sc, balancer])
        values.append((balancer.weight_decays, balancer.reference_budgets))
    assert values[0] == values[1]


def test_works_without_superconvergence_on_the_users_own_scheduler(tmp_path):
    """The user's own OneCycleLR is the schedule and the reference; an explicit `reference_lr` balances against it.

    Without SuperConvergence the schedule that runs is what the user would have run anyway, so budget mode keeps λ.
    """
    recorder = Recorder()
    balancer = WeightDecayBalancer(mode="budget")
    _fit(tmp_path, TwoGroups(scheduler="onecycle"), [balancer, recorder], epochs=2)
    assert balancer.weight_decays == pytest.approx([5e-4, 0.0])
    lrs = [s[0][0] for s in recorder.steps]
    assert max(lrs) == pytest.approx(0.5, rel=0.05)  # the user's cycle ran untouched

    balancer = WeightDecayBalancer(mode="budget", reference_lr=0.01)
    _fit(tmp_path, TwoGroups(scheduler="onecycle"), [balancer], epochs=2)
    assert 0 < balancer.weight_decays[0] < 5e-4
    assert balancer.weight_decays[1] == 0.0


class WarmUpByMethod(TinyClassifier):
    """``LambdaLR(optimizer, self.lr_at)``: a warm-up and cosine sized by the module's own ``trainer``.

    ``how``: ``"method"``, ``"partial"`` (``functools.partial`` of it), ``"object"`` (a callable object holding the
    module) or ``"counting"`` (a warm-up counted in the rule's own calls, as some user code does).
    """

    def __init__(self, how: str = "method") -> None:
        super().__init__()
        self.how = how
        self.calls = 0

    def lr_at(self, step: int, scale: float = 1.0) -> float:
        total = self.trainer.estimated_stepping_batches
        return scale * ((step + 1) / 4 if step < 4 else 0.5 * (1 + math.cos(math.pi * (step - 4) / max(1, total - 4))))

    def counted(self, step: int) -> float:
        self.calls += 1
        return min(1.0, self.calls / 8)

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        rule = {
            "method": self.lr_at,
            "partial": functools.partial(self.lr_at, scale=1.0),
            "object": _RuleOf(self),
            "counting": self.counted,
        }[self.how]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _RuleOf:
    def __init__(self, module: WarmUpByMethod) -> None:
        self.module = module

    def __call__(self, step: int) -> float:
        return self.module.lr_at(step)


@pytest.mark.parametrize("how", ["method", "partial", "object"])
def test_a_scheduler_reaching_the_module_is_traced_on_a_copy_that_shares_its_trainer_and_weights(tmp_path, how):
    """A module a scheduler's rule reaches is copied shallow for the trace: its trainer and weights are shared.

    Found in a review: the trace's copy of ``LambdaLR`` deep-copied the module its rule reaches, without its trainer
    (the fit failed: "not attached to a `Trainer`"), and with all its weights.
    """
    model = WarmUpByMethod(how)
    recorder = Recorder()
    balancer = WeightDecayBalancer(mode="keep")
    _fit(tmp_path, model, [balancer, recorder], epochs=2)
    assert len(recorder.steps) == 2 * STEPS_PER_EPOCH
    lrs = [step[0][0] for step in recorder.steps]
    traced = [0.01 * model.lr_at(k) for k in range(len(lrs))]
    assert lrs == pytest.approx(traced, rel=1e-6)
    assert balancer.reference_budgets == pytest.approx([5e-4 * 10.0 * math.fsum(traced)], rel=1e-6)


def test_a_rule_that_counts_its_own_calls_runs_as_without_the_balancer(tmp_path):
    """The trace's copy of the module keeps attributes of its own: the run is the run without the balancer.

    Found in the review of the fix above: calling the rule on the module itself moved a count it keeps, and the run's
    LRs changed with the balancer beside it.
    """
    runs = {}
    for balancer in (None, WeightDecayBalancer(mode="keep")):
        model, recorder = WarmUpByMethod("counting"), Recorder()
        _fit(tmp_path, model, [recorder] + ([balancer] if balancer else []), epochs=2)
        runs[balancer is None] = ([step[0][0] for step in recorder.steps], model.calls)
    assert runs[True] == runs[False]
    # the copies share the module's weights, inside SequentialLR too, and copy none of them
    model = WarmUpByMethod("counting")
    optimizer = model.configure_optimizers()["optimizer"]
    nested = torch.optim.lr_scheduler.SequentialLR(
        optimizer, [torch.optim.lr_scheduler.LambdaLR(optimizer, model.counted)] * 2, milestones=[3]
    )
    _, (copy,) = detached_copy(optimizer, [nested])
    twin = copy._schedulers[0].lr_lambdas[0].__self__
    assert twin is not model
    assert twin.net[0].weight is model.net[0].weight
    calls = model.calls
    twin.counted(0)
    assert (twin.calls, model.calls) == (calls + 1, calls)


class _SlotsRule:
    __slots__ = ("scale",)

    def __init__(self) -> None:
        self.scale = 0.5

    def at(self, step: int) -> float:
        return self.scale


class _TabledLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """Keeps a table of 20,000 entries beside its rule (as some user schedulers do)."""

    def __init__(self, optimizer, rule) -> None:
        super().__init__(optimizer, rule)
        self.table = [(step, 1.0) for step in range(20_000)]


def test_the_trace_copy_serves_rules_of_slots_objects_and_finds_the_module_past_a_big_table():
    """A rule of a ``__slots__`` object is served; a module past a scheduler's big table is found and shared.

    Found in the review of the shallow copy: a ``__slots__`` object failed it, and a search cut short by count
    deep-copied the module again (without its trainer).
    """
    model = WarmUpByMethod("counting")
    optimizer = model.configure_optimizers()["optimizer"]
    slots = _SlotsRule()
    _, (copied,) = detached_copy(optimizer, [torch.optim.lr_scheduler.LambdaLR(optimizer, slots.at)])
    copied.step()
    assert copied.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5)
    _, (copied,) = detached_copy(optimizer, [_TabledLambdaLR(optimizer, model.counted)])
    assert copied.lr_lambdas[0].__self__.net[0].weight is model.net[0].weight


def test_epoch_scheduler_is_traced_per_epoch(tmp_path):
    """The reference budget of a user's epoch-interval StepLR is summed epoch by epoch, as Lightning steps it."""
    balancer = WeightDecayBalancer(mode="budget")
    trainer = _fit(tmp_path, TinyClassifier(scheduler="step"), [balancer], epochs=6)
    # StepLR(step_size=5, gamma=0.1): 5 epochs at 0.01, then one at 0.001; 8 steps per epoch; c = 1/(1-0.9)
    expected = 5e-4 * 10.0 * (5 * STEPS_PER_EPOCH * 0.01 + STEPS_PER_EPOCH * 0.001)
    assert balancer.reference_budgets == pytest.approx([expected])
    assert balancer.weight_decays == pytest.approx([5e-4])
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(5e-4)


def test_timescale_counts_the_epochs_of_a_gradient_accumulation_scheduler_each_at_its_own_length(tmp_path):
    """``{0: 1, 1: 4}`` over 4 epochs of 64 batches: 112 steps, 4 epochs; a λ whose budget lies in [1, 4] is kept.

    Found reviewing the code: the epochs were counted at the first epoch's length (1.75 of them), so the range's top
    read 1.75, and a λ inside the real range was lowered by 40 %.
    """
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    L.seed_everything(0, verbose=False)
    balancer = WeightDecayBalancer()
    callbacks = [SuperConvergence(max_lr=0.1), balancer, GradientAccumulationScheduler(scheduling={0: 1, 1: 4})]
    trainer = L.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=4, limit_val_batches=0))
    trainer.fit(TinyClassifier(n=2048, weight_decay=0.06))
    assert trainer.global_step == 64 + 3 * 16
    assert "(4 epochs)" in balancer.reason
    assert balancer.weight_decays == [0.06]
    assert balancer.reason.startswith("kept: its decay timescale already lies between one epoch and the whole run")


def test_adam_with_coupled_weight_decay_warns_what_it_does(tmp_path):
    said = r"before its adaptive normalization.*`mode='budget'` treats it like.*AdamW"
    with pytest.warns(RuntimeWarning, match=said):
        _fit(tmp_path, AdamModule(), [SuperConvergence(max_lr=0.01), WeightDecayBalancer(mode="budget")])


def test_the_adaptive_warning_suggests_the_decoupled_flag_only_to_optimizers_that_take_it(tmp_path):
    """Adam takes ``decoupled_weight_decay=True``; Adagrad raises a TypeError on it, so it is told to use AdamW.

    ASGD's decay is plain L2 on the gradient (no normalization): balanced like SGD's, with no warning.
    """
    adam = WithOptimizer(lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4))
    balancer = WeightDecayBalancer()
    with pytest.warns(
        RuntimeWarning, match=r"adaptive normalization.*pass `decoupled_weight_decay=True`, or use AdamW"
    ):
        _fit(tmp_path / "adam", adam, [balancer])
    # no budget quoted where the verdict says there is none (found trying the package as a new user)
    assert balancer.reason.startswith("the user's λ kept: adaptive coupled decay has no decay budget to bound")
    assert "K = " not in balancer.reason
    adagrad = WithOptimizer(lambda p: torch.optim.Adagrad(p, lr=1e-2, weight_decay=1e-4))
    with pytest.warns(RuntimeWarning, match="adaptive normalization") as said:
        _fit(tmp_path / "adagrad", adagrad, [WeightDecayBalancer()])
    message = next(str(w.message) for w in said if "adaptive normalization" in str(w.message))
    assert "decoupled_weight_decay" not in message
    assert message.endswith("use an optimizer with decoupled decay, such as AdamW.")
    balancer = WeightDecayBalancer(mode="budget")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path / "asgd", WithOptimizer(lambda p: torch.optim.ASGD(p, lr=1e-2, weight_decay=1e-4)),
             [SuperConvergence(max_lr=0.1), balancer])  # fmt: skip
    assert not [w for w in caught if "adaptive normalization" in str(w.message)]
    assert balancer.weight_decays[0] < 1e-4  # the cycle's larger LRs spend the budget sooner: λ shrinks, as for SGD


class OwnMomentumSGD(torch.optim.Optimizer):
    """A user's own momentum SGD: no `weight_decay` in its defaults, no `dampening`, no `eps` to read it by."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9) -> None:  # noqa: D107
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    step = param.grad.add(param, alpha=group.get("weight_decay", 0.0))
                    buffer = self.state[param].setdefault("momentum_buffer", torch.zeros_like(param))
                    param.add_(buffer.mul_(group["momentum"]).add_(step), alpha=-group["lr"])
        return loss


def test_an_optimizer_it_cannot_read_is_told_so_and_its_group_without_weight_decay_keeps_none(tmp_path):
    """The warning says what it cannot read, and λ is kept; a group with no `weight_decay` is given none.

    Found trying the package as a new user: such an optimizer was told it normalized its gradients, and its group
    with no `weight_decay` was given one.
    """

    def build(params):
        params = list(params)
        return OwnMomentumSGD([{"params": params[:2], "weight_decay": 1e-4}, {"params": params[2:]}])

    balancer = WeightDecayBalancer()
    with pytest.warns(RuntimeWarning, match=r"do not say how OwnMomentumSGD applies `weight_decay`") as said:
        trainer = _fit(tmp_path, WithOptimizer(build), [SuperConvergence(max_lr=0.1), balancer])
    assert not [w for w in said if "before its adaptive normalization" in str(w.message)]
    groups = trainer.optimizers[0].param_groups
    assert groups[0]["weight_decay"] == 1e-4
    assert "weight_decay" not in groups[1]
    assert balancer.weight_decays == [1e-4, 0.0]


def test_timescale_keeps_adam_coupled_weight_decay(tmp_path):
    """Adam's coupled decay has no budget to bound: the default keeps it, and its warning says so (not 'budget')."""
    balancer = WeightDecayBalancer()
    with pytest.warns(RuntimeWarning, match="adaptive normalization") as said:
        _fit(tmp_path, AdamModule(), [SuperConvergence(max_lr=0.01), balancer])
    message = next(str(w.message) for w in said if "adaptive normalization" in str(w.message))
    assert "`mode='timescale'` keeps the user's λ for such groups" in message
    assert "'budget'" not in message
    assert balancer.weight_decays == [1e-4]


def test_timescale_with_a_reference_says_it_keeps_the_reference_for_adam_coupled_decay(tmp_path):
    """Found in a review: the warning and the reason said the user's λ was kept; the run trained at the reference's."""
    balancer = WeightDecayBalancer(reference_weight_decay=0.1)
    with pytest.warns(RuntimeWarning, match="adaptive normalization") as said:
        _fit(tmp_path, AdamModule(), [SuperConvergence(max_lr=0.01), balancer])
    message = next(str(w.message) for w in said if "adaptive normalization" in str(w.message))
    assert "`mode='timescale'` keeps the `reference_weight_decay` for such groups" in message
    assert balancer.reason.startswith("the `reference_weight_decay` kept: adaptive coupled decay")
    assert balancer.weight_decays == [0.1]


def _one_cycle_lr_sum(lr: float, max_lr: float, steps: int) -> float:
    """The sum of the LRs a one-cycle over an optimizer configured at ``lr`` runs through."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_one_cycle(opt, max_lr, steps)
    total = 0.0
    for _ in range(steps):
        total += opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return total


def test_adamw_budget_uses_decoupled_gain(tmp_path):
    """AdamW: c = 1, so the matched λ is the ratio of LR sums alone."""
    balancer = WeightDecayBalancer(mode="budget")
    _fit(tmp_path, TinyClassifier(optimizer="adamw", lr=1e-3, weight_decay=1e-2),
         [SuperConvergence(max_lr=0.01), balancer], epochs=2)  # fmt: skip
    assert balancer.weight_decays[0] == pytest.approx(1e-2 * 16 * 1e-3 / _one_cycle_lr_sum(1e-3, 0.01, 16))


def test_timm_s_lion_is_balanced_as_adamw_with_no_adaptive_warning(tmp_path):
    """The Lion of timm shrinks by η·λ (decoupled): the matched λ is AdamW's, the ratio of LR sums alone.

    Found trying the package as a new user: it was told its decay went "before its adaptive normalization", to switch
    to AdamW, and its λ was kept.
    """
    import timm.optim

    balancer = WeightDecayBalancer(mode="budget")
    model = WithOptimizer(lambda p: timm.optim.create_optimizer_v2(p, "lion", lr=1e-3, weight_decay=1e-2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, model, [SuperConvergence(max_lr=0.01), balancer], epochs=2)
    assert not [w for w in caught if "adaptive normalization" in str(w.message)]
    assert balancer.weight_decays[0] == pytest.approx(1e-2 * 16 * 1e-3 / _one_cycle_lr_sum(1e-3, 0.01, 16))


def test_timm_s_corrected_weight_decay_is_kept_and_told_what_it_does_not_of_adaptive_normalization(tmp_path):
    """`corrected_weight_decay=True` shrinks by `λ·η²/η₀`: kept, with a warning saying so and how to have it balanced.

    Not the warning about L2 before an adaptive normalization, which Lion does not do.
    """
    import timm.optim

    balancer = WeightDecayBalancer()
    model = WithOptimizer(
        lambda p: timm.optim.create_optimizer_v2(p, "lion", lr=1e-3, weight_decay=1e-2, corrected_weight_decay=True)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, model, [SuperConvergence(max_lr=0.01), balancer], epochs=2)
    messages = [str(w.message) for w in caught if "WeightDecayBalancer" in str(w.message)]
    assert not [m for m in messages if "adaptive normalization" in m]
    (said,) = [m for m in messages if "corrected_weight_decay=True" in m]
    assert "λ·η²/η₀" in said, said
    assert "pass `corrected_weight_decay=False`" in said, said
    assert "`mode='timescale'` keeps the user's λ for such groups" in said
    assert balancer.weight_decays == [1e-2]


# ---------------------------------------------------------------------------------------------------- checkpoints


def test_state_dict_holds_plain_values():
    balancer = WeightDecayBalancer()
    balancer.weight_decays, balancer.reference_weight_decays = [1e-3, 0.0], [5e-4, 0.0]
    state = balancer.state_dict()
    plain = (int, float, str, bool, type(None), list, dict)

    def check(value):
        assert isinstance(value, plain), type(value)
        if isinstance(value, list):
            for v in value:
                check(v)
        if isinstance(value, dict):
            for v in value.values():
                check(v)

    check(state)
    fresh = WeightDecayBalancer()
    fresh.load_state_dict({"weight_decays": [1e-3, 0.0]})  # an older state without the other keys
    assert fresh.weight_decays == [1e-3, 0.0]


def test_resume_continues_exactly_and_does_not_balance_again(tmp_path):
    """Resumed mid-run, every step's LR, momentum and λ equal the uninterrupted run's.

    The user's λ comes from the checkpoint, and the balanced value is not balanced a second time.
    """
    epochs = 4
    full = Recorder()
    L.seed_everything(0)
    _fit(tmp_path / "full", TinyClassifier(), [SuperConvergence(max_lr=0.5), WeightDecayBalancer(mode="budget"), full],
         epochs=epochs)  # fmt: skip

    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    first = WeightDecayBalancer(mode="budget")
    _fit(tmp_path / "part", TinyClassifier(), [SuperConvergence(max_lr=0.5), first, ckpt, StopAfter(2)],
         epochs=epochs, enable_checkpointing=True)  # fmt: skip

    resumed_recorder = Recorder()
    resumed = WeightDecayBalancer(mode="budget")
    calls = []
    resumed._budget = lambda *a: calls.append(a)  # type: ignore[method-assign]
    callbacks = [SuperConvergence(max_lr=0.5), resumed, resumed_recorder]
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path / "part", max_epochs=epochs, enable_checkpointing=True, callbacks=callbacks)
    )
    trainer.fit(TinyClassifier(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert calls == []
    assert resumed.reference_weight_decays == [5e-4]
    assert resumed.weight_decays == first.weight_decays
    flat = [v for step in resumed_recorder.steps for group in step for v in group]
    expected = [v for step in full.steps[2 * STEPS_PER_EPOCH :] for group in step for v in group]
    assert flat == pytest.approx(expected, rel=1e-12)


def test_resume_keeps_the_users_lambda_even_if_the_module_now_says_otherwise(tmp_path):
    """The reference λ is the one in the checkpoint's callback state, not what `configure_optimizers` says now."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    first = WeightDecayBalancer(mode="budget")
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), first, ckpt], epochs=1,
         enable_checkpointing=True)  # fmt: skip
    resumed = WeightDecayBalancer(mode="budget")
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, enable_checkpointing=True,
                                         callbacks=[SuperConvergence(max_lr=0.5), resumed]))  # fmt: skip
    trainer.fit(TinyClassifier(weight_decay=1e-2), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.reference_weight_decays == [5e-4]
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == pytest.approx(first.weight_decays[0])


def test_resume_with_another_mode_re_applies_the_checkpoints_lambda_and_says_so(tmp_path, caplog):
    """The state is keyed by the class name: a resume with another `mode` finds it and never balances mid-run."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    first = WeightDecayBalancer()
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), first, ckpt], epochs=1,
         enable_checkpointing=True)  # fmt: skip
    assert first.weight_decays != [5e-4], "the premise: timescale moved λ"
    for mode in ("keep", "grid", "budget"):
        resumed, recorder = WeightDecayBalancer(mode=mode), Recorder()
        callbacks = [SuperConvergence(max_lr=0.5), resumed, recorder]
        trainer = L.Trainer(**trainer_kwargs(tmp_path / mode, max_epochs=2, callbacks=callbacks))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            trainer.fit(TinyClassifier(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
        assert resumed.weight_decays == first.weight_decays
        assert {step[0][2] for step in recorder.steps} == {first.weight_decays[0]}
        assert "chosen at the start in `mode='timescale'`" in caplog.text
        assert f"`mode='{mode}'` applies to new runs" in caplog.text
        # its own checkpoints name the mode that chose λ too (found trying the package as a new user: a second
        # resume then took the new mode for the one that chose λ)
        assert resumed.state_dict()["mode"] == "timescale"


def test_a_resume_given_another_reference_says_it_applies_to_new_runs(tmp_path, caplog):
    """The checkpoint's reference is named as such, and a `reference_weight_decay` given at the resume as unused.

    Found in a review: a resume given `reference_weight_decay=1e-2` labelled the checkpoint's reference (the user's
    5e-4) as that argument's, and did not say the argument was ignored.
    """
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    first = WeightDecayBalancer()
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), first, ckpt], epochs=1,
         enable_checkpointing=True)  # fmt: skip
    resumed = WeightDecayBalancer(reference_weight_decay=1e-2)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=2, callbacks=[SuperConvergence(max_lr=0.5), resumed]))
    with caplog.at_level(logging.INFO):
        trainer.fit(TinyClassifier(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.weight_decays == first.weight_decays
    said = "(reference λ 0.0005); not balanced again (`reference_weight_decay=0.01` applies to new runs)."
    assert said in caplog.text


def test_a_checkpoint_keyed_by_mode_as_releases_up_to_0_3_wrote_it_is_read(tmp_path):
    """Older releases keyed the balancer's state `WeightDecayBalancer{'mode': ...}`: a resume still finds it."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    first = WeightDecayBalancer()
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), first, ckpt], epochs=1,
         enable_checkpointing=True)  # fmt: skip
    path = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["callbacks"]["WeightDecayBalancer{'mode': 'timescale'}"] = checkpoint["callbacks"].pop(
        "WeightDecayBalancer"
    )
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed, recorder = WeightDecayBalancer(mode="keep"), Recorder()
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path / "b", max_epochs=2, callbacks=[SuperConvergence(max_lr=0.5), resumed, recorder])
    )
    trainer.fit(TinyClassifier(), ckpt_path=str(tmp_path / "old.ckpt"))
    assert resumed.weight_decays == first.weight_decays
    assert {step[0][2] for step in recorder.steps} == {first.weight_decays[0]}


def test_a_second_fit_with_no_step_left_clears_what_the_first_chose(tmp_path):
    """Its optimizer is built afresh with the user's λ and never trains: the balancer shows no earlier fit's λ."""
    balancer = WeightDecayBalancer()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[SuperConvergence(max_lr=0.5), balancer]))
    trainer.fit(TinyClassifier())
    assert balancer.weight_decays is not None
    assert balancer.reason
    trainer.fit(TinyClassifier())
    assert balancer.weight_decays is None
    assert balancer.reason == ""


def test_a_second_fit_reads_the_user_s_recipe_over_the_steps_it_runs(tmp_path):
    """A second ``fit`` runs the epochs left: its reference is the user's recipe over those, as a new Trainer's is.

    Found trying the package as a new user: it was read over the whole run, twice the steps, and ``mode='budget'``
    chose twice the λ that a new Trainer running the same steps chose.
    """
    again = WeightDecayBalancer(mode="budget")
    trainer = L.Trainer(**trainer_kwargs(tmp_path / "a", max_epochs=2, callbacks=[SuperConvergence(max_lr=0.5), again]))
    trainer.fit(TinyClassifier())
    trainer.fit_loop.max_epochs = 4
    trainer.fit(TinyClassifier())
    fresh = WeightDecayBalancer(mode="budget")
    _fit(tmp_path / "b", TinyClassifier(), [SuperConvergence(max_lr=0.5), fresh], epochs=2)
    assert again.planned_steps == fresh.planned_steps == 16
    assert again.reference_budgets == pytest.approx(fresh.reference_budgets, rel=1e-12)
    assert again.weight_decays == pytest.approx(fresh.weight_decays, rel=1e-12)
    assert 5e-6 < fresh.weight_decays[0] < 5e-4  # the premise: matched, not held at a bound


# ---------------------------------------------------------------------------------------------------- rescues

# 16 steps per epoch (512 samples, batch 32); at a peak of 50 the tiny classifier diverges in the warm-up
RESCUE_STEPS_PER_EPOCH = 16


def _rescued_fit(tmp_path, balancer, epochs=10, **model):
    recorder, sc = Recorder(), SuperConvergence(max_lr=50.0)
    L.seed_everything(0, verbose=False)
    _fit(tmp_path, TinyClassifier(n=512, **model), [sc, balancer, recorder], epochs=epochs)
    assert sc.rescues, "the premise: the run is rescued"
    return sc, recorder


def test_after_a_rescue_timescale_balances_the_rest_of_the_run_as_the_lowered_cycle_runs_it(tmp_path):
    """λ is set again at the rescue's step, from the user's λ, for the LRs and momenta that then run to the end.

    ``K`` over the remaining steps between ``min_budget`` times their share of the run and their epochs.
    """
    balancer = WeightDecayBalancer(rebalance_on_rescue=True)
    sc, recorder = _rescued_fit(tmp_path, balancer)
    assert [r["step"] for r in balancer.rebalances] == [r["step"] for r in sc.rescues]
    last = balancer.rebalances[-1]
    assert last["peak"] == sc.max_lr
    rest = recorder.steps[last["step"] :]
    lrs, momenta = [s[0][0] for s in rest], [s[0][1] for s in rest]
    trace = GroupTrace(lrs, momenta, [decay_gain("coupled", m) for m in momenta])
    share, epochs_left = len(rest) / len(recorder.steps), len(rest) / RESCUE_STEPS_PER_EPOCH
    expected = timescale_bounded(
        5e-4, trace, (share, max(share, epochs_left)), bounds_for(5e-4, trace, 0.01, 10.0, "coupled")
    )
    assert last["weight_decays"][0] == pytest.approx(expected, rel=1e-9)
    assert {s[0][2] for s in rest} == {last["weight_decays"][0]}
    assert balancer.weight_decays == last["weight_decays"]
    # the lowered cycle spends far less decay at the old λ: it is raised
    assert last["weight_decays"][0] > 2 * last["previous"][0]
    assert {s[0][2] for s in recorder.steps[: sc.rescues[0]["step"]]} == {balancer.rebalances[0]["previous"][0]}


def test_by_default_the_lambda_chosen_at_the_start_is_kept_after_a_rescue(tmp_path):
    """What measured best (the README's guard section): λ raised for the lowered cycle ended no better."""
    balancer = WeightDecayBalancer()
    _, recorder = _rescued_fit(tmp_path, balancer)
    assert balancer.rebalances == []
    assert {s[0][2] for s in recorder.steps} == set(balancer.weight_decays)


def test_after_a_rescue_budget_mode_matches_the_reference_budget_s_share_of_the_remaining_steps(tmp_path):
    balancer = WeightDecayBalancer(mode="budget", rebalance_on_rescue=True)
    _, recorder = _rescued_fit(tmp_path, balancer)
    last = balancer.rebalances[-1]
    rest = recorder.steps[last["step"] :]
    terms = [decay_gain("coupled", s[0][1]) * s[0][0] for s in rest]
    reference = 5e-4 * decay_gain("coupled", 0.9) * 0.01 * len(recorder.steps)  # the user's constant recipe
    expected = min(reference * len(rest) / len(recorder.steps) / sum(terms), 5e-4, 0.1 / max(terms))
    assert last["weight_decays"][0] == pytest.approx(max(expected, 5e-6), rel=1e-9)


def test_after_a_rescue_budget_mode_matches_the_reference_recipe_s_own_budget_over_the_remaining_steps(tmp_path):
    """Under the user's StepLR (0.01 for 5 epochs, then 0.001) the reference's rest is its own steps' budget there.

    Found in a review: the whole run's budget times the remaining steps' share was matched, right for a constant LR
    only (under a cosine, 1.21 times the recipe's decay over the rest after a rescue at step 20 of 128).
    """
    balancer = WeightDecayBalancer(mode="budget", rebalance_on_rescue=True)
    _, recorder = _rescued_fit(tmp_path, balancer, scheduler="step")
    last = balancer.rebalances[-1]
    rest = recorder.steps[last["step"] :]
    terms = [decay_gain("coupled", s[0][1]) * s[0][0] for s in rest]
    first_lr_steps = 5 * RESCUE_STEPS_PER_EPOCH
    recipe = [0.01 if k < first_lr_steps else 0.001 for k in range(last["step"], len(recorder.steps))]
    reference = 5e-4 * decay_gain("coupled", 0.9) * math.fsum(recipe)
    share = len(rest) / len(recorder.steps)
    assert reference != pytest.approx(balancer.reference_budgets[0] * share, rel=0.05), "the premise: not a share"
    expected = min(reference / sum(terms), 5e-4, 0.1 / max(terms))
    assert last["weight_decays"][0] == pytest.approx(max(expected, 5e-6), rel=1e-9)


def test_a_rescue_in_a_second_fit_rebalances_over_the_steps_left_of_that_fit(tmp_path):
    """The rest of that fit, from where it stands: not the whole run at its data's length less the steps taken.

    Found trying the package as a new user: a second ``fit`` on shorter data was rebalanced over 42 steps where 50
    were left.
    """
    balancer, recorder = WeightDecayBalancer(mode="budget", rebalance_on_rescue=True), Recorder()
    sc = SuperConvergence(max_lr=50.0)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[sc, balancer, recorder]))
    trainer.fit(TinyClassifier(n=512))
    first = len(recorder.steps)
    trainer.fit_loop.max_epochs = 6
    trainer.fit(TinyClassifier(n=256))  # 5 epochs of 8 steps; the whole run at this length, 48
    steps = recorder.steps[first:]
    assert first == RESCUE_STEPS_PER_EPOCH
    assert len(steps) == 40
    assert balancer.rebalances, "the premise: the second fit is rescued"
    assert balancer.rebalances[0]["step"] > first
    last = balancer.rebalances[-1]
    rest = recorder.steps[last["step"] :]
    terms = [decay_gain("coupled", s[0][1]) * s[0][0] for s in rest]
    reference = 5e-4 * decay_gain("coupled", 0.9) * 0.01 * len(steps)  # the user's constant recipe, this fit
    expected = min(reference * len(rest) / len(steps) / sum(terms), 5e-4, 0.1 / max(terms))
    assert last["weight_decays"][0] == pytest.approx(max(expected, 5e-6), rel=1e-9)


def test_grid_and_keep_modes_keep_their_lambda_after_a_rescue_and_say_so(tmp_path):
    """``rebalance_on_rescue=True`` does nothing in these modes by design; a warning says so at fit start."""
    for mode in ("grid", "keep"):
        balancer = WeightDecayBalancer(mode=mode, rebalance_on_rescue=True)
        with pytest.warns(RuntimeWarning, match=rf"`rebalance_on_rescue=True` does nothing in `mode='{mode}'`"):
            _, recorder = _rescued_fit(tmp_path / mode, balancer)
        assert balancer.rebalances == []
        assert {s[0][2] for s in recorder.steps} == set(balancer.weight_decays)


@pytest.mark.parametrize("guard", [None, False])
def test_rebalance_on_rescue_without_a_guard_to_follow_says_so(tmp_path, guard):
    """With no ``SuperConvergence``, or one whose guard is off, there is no rescue to rebalance after."""
    callbacks = [] if guard is None else [SuperConvergence(max_lr=0.1, guard=guard)]
    said = "this Trainer has no `SuperConvergence`" if guard is None else r"its guard is off \(`guard=False`\)"
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_epochs=1, callbacks=[*callbacks, WeightDecayBalancer(
        rebalance_on_rescue=True)]))  # fmt: skip
    with pytest.warns(RuntimeWarning, match=rf"`rebalance_on_rescue=True` follows the rescues.*{said}"):
        trainer.fit(TinyClassifier())


def test_a_checkpoint_written_after_a_rebalance_resumes_with_its_lambda_and_does_not_rebalance_again(tmp_path, caplog):
    """The rebalanced λ and the record of it come back; the rescues of the resumed run were balanced for already."""
    from test_guard import Deterministic

    def fit(root, callbacks, **kwargs):
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(**trainer_kwargs(root, max_epochs=6, callbacks=callbacks, **kwargs))
        trainer.fit(Deterministic(n=512), ckpt_path=kwargs.pop("ckpt_path", None))

    whole, whole_recorder, whole_sc = (
        WeightDecayBalancer(rebalance_on_rescue=True),
        Recorder(),
        SuperConvergence(max_lr=5.0),
    )
    fit(tmp_path / "whole", [whole_sc, whole, whole_recorder])
    assert whole.rebalances, "the premise: the run is rescued and rebalanced"
    stop = 1 + whole.rebalances[-1]["step"] // RESCUE_STEPS_PER_EPOCH  # an epoch's end after the last rescue
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    first = WeightDecayBalancer(rebalance_on_rescue=True)
    fit(tmp_path / "a", [SuperConvergence(max_lr=5.0), first, ckpt, StopAfter(stop)], enable_checkpointing=True)
    resumed, recorder = WeightDecayBalancer(rebalance_on_rescue=True), Recorder()
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path / "b", max_epochs=6, callbacks=[SuperConvergence(max_lr=5.0), resumed, recorder])
    )
    L.seed_everything(0, verbose=False)
    with caplog.at_level(logging.INFO):
        trainer.fit(Deterministic(n=512), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    step = whole.rebalances[-1]["step"]
    assert f"chosen when the guard's rescue at step {step} lowered the peak" in caplog.text  # not "at the start"
    assert resumed.rebalances == whole.rebalances
    assert resumed.weight_decays == whole.weight_decays
    assert recorder.steps == whole_recorder.steps[stop * RESCUE_STEPS_PER_EPOCH :]


def test_a_checkpoint_written_at_a_rescue_s_step_is_rebalanced_when_resumed(tmp_path):
    """A checkpoint at a rescue's step holds the rescue, not its rebalance: the resumed run makes it at its first batch.

    The rescue comes at the batch's end, its rebalance at the next batch's start.
    """
    from test_guard import Deterministic, Interrupt, KillAt

    def trainer(root, callbacks, **kwargs):
        return L.Trainer(**trainer_kwargs(root, max_epochs=6, callbacks=callbacks, **kwargs))

    whole = WeightDecayBalancer(rebalance_on_rescue=True)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path / "whole", [SuperConvergence(max_lr=5.0), whole]).fit(Deterministic(n=512))
    rescue_step = whole.rebalances[0]["step"]
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=rescue_step, save_top_k=-1)
    first = WeightDecayBalancer(rebalance_on_rescue=True)
    L.seed_everything(0, verbose=False)
    with pytest.raises(Interrupt):
        trainer(
            tmp_path / "a", [SuperConvergence(max_lr=5.0), first, ckpt, KillAt(rescue_step + 1)],
            enable_checkpointing=True,
        ).fit(Deterministic(n=512))  # fmt: skip
    (path,) = (tmp_path / "ckpt").iterdir()
    assert torch.load(path, weights_only=True)["callbacks"]["WeightDecayBalancer"]["rebalances"] == []  # the premise
    resumed, recorder = WeightDecayBalancer(rebalance_on_rescue=True), Recorder()
    L.seed_everything(0, verbose=False)
    trainer(tmp_path / "b", [SuperConvergence(max_lr=5.0), resumed, recorder]).fit(
        Deterministic(n=512), ckpt_path=str(path)
    )
    assert resumed.rebalances[0] == whole.rebalances[0]
    assert recorder.steps[0][0][2] == whole.rebalances[0]["weight_decays"][0]


def test_a_resume_without_weight_decay_and_a_rescue_after_it_changes_nothing(tmp_path):
    """No group decays: nothing to rebalance, on a resume as at the start."""
    from test_guard import Deterministic

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, save_on_train_epoch_end=True)
    L.seed_everything(0, verbose=False)
    model = Deterministic(n=512, weight_decay=0.0)
    first = WeightDecayBalancer(rebalance_on_rescue=True)
    callbacks = [SuperConvergence(max_lr=5.0), first, ckpt, StopAfter(1)]
    L.Trainer(**trainer_kwargs(tmp_path / "a", max_epochs=6, callbacks=callbacks, enable_checkpointing=True)).fit(model)
    sc, resumed = SuperConvergence(max_lr=5.0), WeightDecayBalancer(rebalance_on_rescue=True)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(**trainer_kwargs(tmp_path / "b", max_epochs=6, callbacks=[sc, resumed]))
    trainer.fit(Deterministic(n=512, weight_decay=0.0), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert any(r["step"] > 16 for r in sc.rescues), "the premise: a rescue after the resume (16 steps an epoch)"
    assert resumed.rebalances == []
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.0


def test_grid_caps_a_user_lambda_above_the_per_step_cap_instead_of_crashing(tmp_path):
    """At a peak far too high the user's λ itself would shrink the weights by over 10 % in a step: capped, said."""
    balancer = WeightDecayBalancer(mode="grid")
    _fit(tmp_path, TinyClassifier(weight_decay=0.5), [SuperConvergence(max_lr=2.0, guard=False), balancer], epochs=2)
    cap = balancer.weight_decays[0]
    assert cap < 0.5
    assert balancer.reason.startswith(f"capped at {cap:.3g}, no grid")
    assert balancer.search is None


# ---------------------------------------------------------------------------------------------------- logging


def test_weight_decay_is_logged_per_step(tmp_path):
    """``superconv/weight_decay`` reaches the loggers every ``log_every_n_steps`` steps, beside LR and momentum."""
    logger = MemoryLogger()
    balancer = WeightDecayBalancer(mode="budget")
    _fit(tmp_path, TwoGroups(), [balancer], logger=logger, log_every_n_steps=1)
    logged = [m for _, m in logger.metrics if "superconv/weight_decay" in m]
    assert len(logged) == 2 * STEPS_PER_EPOCH
    assert all(m["superconv/weight_decay"] == pytest.approx(balancer.weight_decays[0]) for m in logged)
    assert all("superconv/lr" in m and "superconv/momentum" in m for m in logged)
    pg1 = [m for _, m in logger.metrics if "superconv/weight_decay/pg1" in m]
    assert pg1
    assert all(m["superconv/weight_decay/pg1"] == 0.0 for m in pg1)


def test_no_duplicate_schedule_logging_beside_superconvergence(tmp_path):
    """With SuperConvergence logging LR, momentum and weight decay, the balancer does not log them a second time."""
    logger = MemoryLogger()
    _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), WeightDecayBalancer(mode="budget")],
         logger=logger, log_every_n_steps=1)  # fmt: skip
    per_step: dict[int, int] = {}
    for step, metrics in logger.metrics:
        if "superconv/weight_decay" in metrics:
            per_step[step] = per_step.get(step, 0) + 1
    assert per_step
    assert set(per_step.values()) == {1}


def test_schedule_logged_by_the_balancer_where_superconvergence_installs_no_cycle(tmp_path):
    """Under ``overfit_batches`` SuperConvergence runs no range test and logs nothing: the balancer logs it all."""
    logger = MemoryLogger()
    balancer = WeightDecayBalancer(mode="budget")
    sc = SuperConvergence()
    _fit(tmp_path, TinyClassifier(), [balancer, sc], logger=logger, log_every_n_steps=1, overfit_batches=2)
    assert sc.result is None, "the premise: no range test and no cycle"
    logged = [m for _, m in logger.metrics if "superconv/weight_decay" in m]
    assert logged
    assert all(m["superconv/weight_decay"] == pytest.approx(5e-4) for m in logged)
    assert all("superconv/lr" in m and "superconv/momentum" in m for m in logged)


@pytest.mark.parametrize("mode", ["timescale", "grid"])
def test_overfit_batches_leaves_weight_decay_as_configured_and_says_so(tmp_path, caplog, mode):
    """A run that checks the model can fit a few batches is not balanced, as SuperConvergence runs no range test there.

    Found in a review: `"timescale"` raised λ 1.3x and the batch was fit worse (a loss of 0.0140 against 0.0111), and
    `"grid"` took 10x the user's.
    """
    balancer = WeightDecayBalancer(mode=mode)
    with caplog.at_level(logging.INFO):
        trainer = _fit(tmp_path, TinyClassifier(), [SuperConvergence(max_lr=0.5), balancer], overfit_batches=2)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 5e-4
    assert balancer.weight_decays is None
    assert "`overfit_batches=2` is on, a run that checks the model can fit a few batches: weight decay" in caplog.text


def test_fast_dev_run_changes_nothing(tmp_path):
    balancer = WeightDecayBalancer(mode="budget")
    trainer = L.Trainer(**trainer_kwargs(tmp_path, fast_dev_run=True, callbacks=[balancer]))
    trainer.fit(TinyClassifier())
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 5e-4
    assert balancer.weight_decays is None


class GroupLRs(L.Callback):
    """Each param group's LR at each real training step."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


@pytest.mark.parametrize("scheduler", ["update", "epoch"])
def test_a_timm_scheduler_is_balanced_against_as_lightning_s_docs_step_it(tmp_path, scheduler):
    """Found trying the package as a new user: every timm scheduler raised a ``TypeError`` at fit start.

    The balancer traces it as Lightning's docs step it in ``lr_scheduler_step`` (``step_update(num_updates=
    self.global_step)``, ``step(epoch=self.current_epoch)``): its reference budget for each group is the user's ``λ``
    times the LRs the run without it takes (AdamW: decoupled, a gain of 1), each layer's ``lr_scale`` in them.
    Beside ``SuperConvergence`` too, which replaces the scheduler.
    """
    ran = GroupLRs()
    _fit(tmp_path / "plain", TimmViT(scheduler), [ran])
    balancer = WeightDecayBalancer(mode="keep")
    _fit(tmp_path / "alone", TimmViT(scheduler), [balancer])
    decays = [group["weight_decay"] for group in TimmViT().configure_optimizers().param_groups]
    expected = [wd * sum(lrs[i] for lrs in ran.lrs) for i, wd in enumerate(decays)]
    assert balancer.reference_budgets == pytest.approx(expected, rel=1e-9)
    assert len(set(ran.lrs[len(ran.lrs) // 2])) > 2, "the premise: the layers' shares reached the run"
    both = WeightDecayBalancer()
    _fit(tmp_path / "both", TimmViT(scheduler), [SuperConvergence(max_lr=1e-3), both])
    assert both.weight_decays is not None


class WithoutBatchNorm(TinyClassifier):
    """No BatchNorm (SWA adds an epoch for its statistics otherwise); records the LR of each training step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("first", ["balancer", "swa"])
def test_the_schedule_read_includes_stochastic_weight_averagings_swalr(tmp_path, first):
    """SWA swaps in its SWALR at its start epoch: the balance reads the LR that runs from there.

    Found in a review: the constant 0.05 was traced where SWA ran 0.5 for half the run, the λ whose decay timescale
    already lay within the run was raised 5x, and each step at SWA's LR then decayed the weights by 31 %.
    """
    λ = 0.0125  # K = 10·λ·(16·0.05 + 16·0.5) = 1.1 over the LRs that run; 0.2 over the constant 0.05 alone
    model = WithoutBatchNorm(lr=0.05, weight_decay=λ)
    balancer = WeightDecayBalancer(mode="timescale")
    swa = StochasticWeightAveraging(swa_lrs=0.5, swa_epoch_start=2, annealing_epochs=1)
    _fit(tmp_path, model, [balancer, swa] if first == "balancer" else [swa, balancer], epochs=4)
    assert model.lrs == [0.05] * 16 + [pytest.approx(0.5)] * 16, "the premise: SWA's LR for the last two epochs"
    assert balancer.weight_decays == [λ]
    assert balancer.reason.startswith("kept: its decay timescale already lies between one epoch and the whole run")


def test_a_resume_from_a_checkpoint_written_without_the_balancer_compares_the_budgets_of_the_steps_left(tmp_path):
    """Lightning restores the step after `on_fit_start`: the reference recipe's budget is that of the steps left.

    Found in a review: the whole run's budget was compared with the rest's, and an unchanged recipe read as one that
    spends half the decay (`mode='keep'`: "decay budget 0.5x"; `mode='budget'` would have shrunk λ too little).
    """
    trainer = L.Trainer(**trainer_kwargs(tmp_path / "a", max_epochs=2))
    trainer.fit(TinyClassifier(n=256))  # 8 steps an epoch: 16 of 32
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    balancer = WeightDecayBalancer(mode="keep")
    trainer = L.Trainer(callbacks=[balancer], **trainer_kwargs(tmp_path / "b", max_epochs=4))
    trainer.fit(TinyClassifier(n=256), ckpt_path=str(tmp_path / "half.ckpt"))
    gain = 1 / (1 - 0.9)
    assert balancer.reference_budgets == [pytest.approx(16 * gain * 0.01 * 5e-4)]
    assert balancer.reason.endswith("decay budget 1x the reference recipe's")


class HalvedEachEpoch(WithoutBatchNorm):
    """A `StepLR` stepped at each epoch's end, taking 0.7 of the LR."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def test_the_reference_recipe_under_max_epochs_minus_one_reads_the_datas_epochs(tmp_path):
    """The reference is read over the data's epochs, loaded for it.

    Found in a review: under `max_epochs=-1` the data was not loaded at `on_fit_start`, its epochs read as a stream's,
    and an unchanged recipe with an epoch `StepLR` measured 0.47x its own budget.
    """
    balancer = WeightDecayBalancer(mode="keep")
    trainer = L.Trainer(callbacks=[balancer], **trainer_kwargs(tmp_path, max_epochs=-1, max_steps=32))
    trainer.fit(HalvedEachEpoch(n=256))
    assert balancer.reason.endswith("decay budget 1x the reference recipe's")


class EveryThirdBatch(WithoutBatchNorm):
    """A `StepLR` of `interval="step"` and `frequency=3`, taking 0.7 of the LR: stepped where an epoch has read 3k."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 3}}


def _resumed_with_a_balancer_from_step(tmp_path, step, make=HalvedEachEpoch, **kwargs):
    """A run resumed with `WeightDecayBalancer(mode="keep")`: the balancer, the Trainer and the module.

    The run (4 epochs of 8 steps; `kwargs` to both Trainers) ran without the balancer and was checkpointed and stopped
    at `step`, in `on_train_batch_end`.
    """

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.should_stop or trainer.global_step == step

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=step, save_top_k=-1)
    first = trainer_kwargs(tmp_path / "a", max_epochs=4, enable_checkpointing=True, **kwargs)
    L.Trainer(callbacks=[checkpoint, StopAt()], **first).fit(make(n=256))
    (path,) = (tmp_path / "ckpt").iterdir()
    balancer = WeightDecayBalancer(mode="keep")
    trainer = L.Trainer(callbacks=[balancer], **trainer_kwargs(tmp_path / "b", max_epochs=4, **kwargs))
    trainer.fit(model := make(n=256), ckpt_path=str(path))
    return balancer, trainer, model


def test_a_mid_epoch_resume_without_the_balancers_state_plans_over_the_batches_left(tmp_path):
    """Found in a review: the resumed epoch was counted whole (24 steps planned where 20 ran): 1.2x, not 1x."""
    balancer, trainer, _ = _resumed_with_a_balancer_from_step(tmp_path, 12)
    assert balancer.planned_steps == trainer.global_step - 12 == 20
    # the `StepLR` steps at the end of the resumed epoch, 4 steps in: traced there too (found trying the package as
    # a new user: a whole epoch from the resume, 1.44x)
    assert balancer.reason.endswith("decay budget 1x the reference recipe's")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_mid_epoch_resume_traces_a_step_scheduler_of_frequency_three_from_the_batch_it_resumes_at(
    tmp_path, accumulate
):
    """Lightning steps it where the resumed epoch has read 3k batches, counted from the epoch's first batch.

    Found in a review: the trace counted from the resumed batch, a step late, and `mode="keep"` reported 1.5x for the
    recipe itself (`"budget"` cut λ by a third).
    """
    balancer, trainer, _ = _resumed_with_a_balancer_from_step(
        tmp_path, 2, EveryThirdBatch, accumulate_grad_batches=accumulate
    )
    assert balancer.planned_steps == trainer.global_step - 2 == 32 // accumulate - 2
    assert balancer.reason.endswith("decay budget 1x the reference recipe's")


@pytest.mark.parametrize("first", ["balancer", "swa"])
def test_a_resume_past_swas_start_reads_the_swalr_it_rebuilds(tmp_path, first):
    """SWA rebuilds its `SWALR` at a resumed fit's first epoch, with the checkpoint's state: the trace does too.

    Found in a review: read as the user's scheduler, an unchanged recipe resumed mid-anneal measured 0.83x.
    """

    def swa():
        return StochasticWeightAveraging(swa_lrs=0.5, swa_epoch_start=2, annealing_epochs=3)

    trainer = L.Trainer(callbacks=[swa()], **trainer_kwargs(tmp_path / "a", max_epochs=3))
    trainer.fit(HalvedEachEpoch(n=128))
    trainer.save_checkpoint(tmp_path / "epoch3.ckpt")
    balancer = WeightDecayBalancer(mode="keep")
    callbacks = [balancer, swa()] if first == "balancer" else [swa(), balancer]
    trainer = L.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path / "b", max_epochs=6))
    trainer.fit(model := HalvedEachEpoch(n=128), ckpt_path=str(tmp_path / "epoch3.ckpt"))
    assert model.lrs[0] < 0.5 < model.lrs[-1] * 1.001, "the premise: the resumed fit anneals to SWA's LR"
    assert re.search(r"decay budget (1|0\.99\d)x the reference recipe's$", balancer.reason), balancer.reason


class WithBatchNorm(WithoutBatchNorm):
    """BatchNorm in the network: `StochasticWeightAveraging` adds an epoch that recomputes its statistics."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 4))  # fmt: skip


@pytest.mark.parametrize("first", ["balancer", "swa"])
def test_swas_batch_norm_epoch_is_not_read_as_training(tmp_path, first):
    """SWA's extra epoch for BatchNorm statistics trains nothing: the balance plans over the epochs that train.

    Found trying the package as a new user: counted as an epoch at SWA's LR with the balancer first in the callbacks
    list (as beside `SuperConvergence`), an unchanged recipe read as 1.47x its budget; 1x in the other order.
    """
    balancer = WeightDecayBalancer(mode="keep")
    swa = StochasticWeightAveraging(swa_lrs=0.5, swa_epoch_start=2, annealing_epochs=1)
    model = WithBatchNorm(lr=0.05)
    _fit(tmp_path, model, [balancer, swa] if first == "balancer" else [swa, balancer], epochs=4)
    assert balancer.planned_steps == 32
    assert balancer.reason.endswith("decay budget 1x the reference recipe's")


class Stream(torch.utils.data.IterableDataset):
    """Eight batches of 32 and an end, with no length: each pass is an epoch no one can count ahead."""

    def __iter__(self):
        data = make_dataset(256)
        for start in range(0, 256, 32):
            yield data[start : start + 32]


def test_swa_on_a_stream_is_said_unread_and_its_lr_still_caps_the_decay_of_a_step(tmp_path):
    """On data without a length SWA's `SWALR` cannot be placed: the reason says so, and its LR still bounds λ.

    Found trying the package as a new user: left out without a word, its steps at 10x the LR decayed the weights by a
    third each, where the README promises no step more than 10 %.
    """

    class OnAStream(WithoutBatchNorm):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=None)

    balancer = WeightDecayBalancer(mode="timescale")
    swa = StochasticWeightAveraging(swa_lrs=0.5, swa_epoch_start=1, annealing_epochs=1)
    trainer = L.Trainer(callbacks=[balancer, swa], **trainer_kwargs(tmp_path, max_epochs=-1, max_steps=30))
    trainer.fit(model := OnAStream(lr=0.05, weight_decay=0.01))
    assert max(model.lrs) == pytest.approx(0.5), "the premise: SWA's LR runs"
    assert "`SWALR` takes over at the start of epoch 0 and anneals at epoch ends" in balancer.reason
    assert 10 * 0.5 * balancer.weight_decays[0] <= 0.1 * (1 + 1e-9)


@pytest.mark.parametrize("setup", ["a stream", "an accumulation schedule"])
def test_a_mid_epoch_resume_traces_the_lrs_its_steps_run_at(tmp_path, monkeypatch, setup):
    """A `StepLR` of frequency 3, resumed at step 2: each traced step's LR is the one the step ran at.

    Found in a review: a stream's resumed epoch was traced from its first batch (1.25x for the recipe itself), and an
    epoch resumed under a `GradientAccumulationScheduler` at its scheduled accumulation, where Lightning runs the rest
    of the epoch at the Trainer's (the scheduler sets it at an epoch's start, which the resume does not run).
    """
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    from lightning_superconv import weight_decay_balancer

    traced = []
    real = weight_decay_balancer.trace_schedule
    monkeypatch.setattr(
        weight_decay_balancer,
        "trace_schedule",
        lambda *args, **kwargs: traced.append(out := real(*args, **kwargs)) or out,
    )

    class Endless(torch.utils.data.IterableDataset):  # one epoch, as long as the run
        def __iter__(self):
            data = make_dataset(256)
            while True:
                yield from (data[start : start + 32] for start in range(0, 256, 32))

    class Model(EveryThirdBatch):
        def train_dataloader(self):
            return DataLoader(Endless(), batch_size=None) if setup == "a stream" else super().train_dataloader()

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.should_stop or trainer.global_step == 2

    def extra():
        return [] if setup == "a stream" else [GradientAccumulationScheduler({0: 2})]

    length = {"max_epochs": -1, "max_steps": 24} if setup == "a stream" else {"max_epochs": 4}
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path / "a", enable_checkpointing=True, **length)
    L.Trainer(callbacks=[checkpoint, StopAt(), *extra()], **kwargs).fit(Model(n=256))
    (path,) = (tmp_path / "ckpt").iterdir()
    balancer, lrs = WeightDecayBalancer(mode="keep"), StepLRs()
    trainer = L.Trainer(callbacks=[balancer, lrs, *extra()], **trainer_kwargs(tmp_path / "b", **length))
    traced.clear()
    trainer.fit(Model(n=256), ckpt_path=str(path))
    (traces, _) = traced[-1]
    assert len(set(lrs.lrs)) >= 4, "the premise: the scheduler steps in the resumed run"
    assert traces[0].lrs == pytest.approx(lrs.lrs)


def test_a_resume_from_an_epochs_last_batch_runs_that_epoch_again_and_is_traced_so(tmp_path):
    """A checkpoint written in `on_train_batch_end` at an epoch's last batch: Lightning runs that epoch again, whole.

    Found in a review: traced as an epoch of one step, a `StepLR` stepped 7 steps early (0.74x for an unchanged recipe).
    """
    balancer, _, model = _resumed_with_a_balancer_from_step(tmp_path, 8)
    assert len(model.lrs) == balancer.planned_steps == 24, "the premise: the epoch runs again"
    assert balancer.reason.endswith("decay budget 1x the reference recipe's")


def test_a_mid_epoch_resume_under_an_accumulation_schedule_is_traced_at_the_accumulation_in_force(tmp_path):
    """Lightning resumes an epoch at the accumulation in force (the scheduler sets it at epoch starts only).

    Found in a review: the epoch's rest was counted from the schedule's length and the batches done at the force's
    accumulation, one step where eight ran.
    """
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.should_stop or trainer.global_step == 18

    def schedule():
        return GradientAccumulationScheduler({0: 1, 1: 4})

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=18, save_top_k=-1)
    kwargs = trainer_kwargs(tmp_path / "a", max_epochs=4, enable_checkpointing=True)
    L.Trainer(callbacks=[checkpoint, schedule(), StopAt()], **kwargs).fit(HalvedEachEpoch(n=512))  # 16 batches
    (path,) = (tmp_path / "ckpt").iterdir()
    balancer = WeightDecayBalancer(mode="keep")
    trainer = L.Trainer(callbacks=[balancer, schedule()], **trainer_kwargs(tmp_path / "b", max_epochs=4))
    trainer.fit(HalvedEachEpoch(n=512), ckpt_path=str(path))
    # the resumed run: the epoch's 8 batches left at 0.035, one step each, then two epochs of 4 steps at 0.0245 and
    # 0.01715; the reference recipe's rest from step 18: 2 steps at 0.035, then the same two epochs (Lightning's resume
    # runs more steps than a run without the interruption: `SuperConvergence` warns of it)
    run, reference = 8 * 0.035 + 4 * 0.0245 + 4 * 0.01715, 2 * 0.035 + 4 * 0.0245 + 4 * 0.01715
    assert balancer.reason.endswith(f"decay budget {run / reference:.3g}x the reference recipe's")


def test_a_resume_beside_swa_on_a_batch_norm_model_ends_where_training_does(tmp_path):
    """SWA's BatchNorm epoch trains nothing: neither callback counts it on a resume.

    Found in a review: `SuperConvergence` told an unchanged run that its length had changed, and a restored balancer
    planned a rebalance over 16 steps that never run.
    """

    def callbacks(balancer):
        swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3, annealing_epochs=1)
        return [SuperConvergence(max_lr=0.05), balancer, swa]

    class StopAfterTwoEpochs(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = trainer.should_stop or trainer.current_epoch == 1

    kwargs = trainer_kwargs(tmp_path / "a", max_epochs=4)
    first = L.Trainer(callbacks=[*callbacks(WeightDecayBalancer()), StopAfterTwoEpochs()], **kwargs)
    first.fit(WithBatchNorm())
    first.save_checkpoint(path := tmp_path / "epoch2.ckpt")
    balancer = WeightDecayBalancer()
    trainer = L.Trainer(callbacks=callbacks(balancer), **trainer_kwargs(tmp_path / "b", max_epochs=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(WithBatchNorm(), ckpt_path=str(path))
    assert not [w for w in caught if "this run ends at step" in str(w.message)]
    assert balancer._fit_end == 4 * 8


def test_the_grid_beside_validation_loaders_of_no_batch_says_so(tmp_path):
    """Found checking the docs: a loader of no batch is read as none, and the warning told the user to add one."""

    class EmptyValidation(TinyClassifier):
        def val_dataloader(self):
            return DataLoader(make_dataset(10, seed=1), batch_size=32, drop_last=True)

    balancer = WeightDecayBalancer(mode="grid")
    with pytest.warns(RuntimeWarning, match=r"validation loaders that hold no batch .*Give them batches"):
        _fit(tmp_path, EmptyValidation(), [balancer])
    assert balancer.reason.endswith("no validation data to choose by")


class BodyAndHead(TinyClassifier):
    """The body at a hundredth of the head's LR, both decayed, listed in the order ``order`` says."""

    def __init__(self, order: str = "body first", body_lr: float = 5e-4) -> None:
        super().__init__()
        self.order, self.body_lr = order, body_lr

    def configure_optimizers(self):
        body = {"params": [p for n, p in self.named_parameters() if not n.startswith("net.4")], "lr": self.body_lr}
        head = {"params": list(self.net[4].parameters())}
        groups = [body, head] if self.order == "body first" else [head, body]
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=5e-3)


def test_the_grid_runs_where_any_group_decays_enough_in_any_order(tmp_path):
    """The grid's "too little to tell weight decays apart" skip reads the group that decays most, wherever it is listed.

    Found in a review: read off the first decayed group, a body listed first at a hundredth of the head's LR skipped
    the grid, while the same model with its head listed first ran it.
    """
    searches = {}
    for order in ("body first", "head first"):
        balancer = WeightDecayBalancer(mode="grid", cost=1.0)
        _fit(tmp_path / order, BodyAndHead(order), [balancer], epochs=10)
        assert balancer.search is not None, (order, balancer.reason)
        searches[order] = balancer.search
    assert searches["body first"]["branch_steps"] == searches["head first"]["branch_steps"]
    assert searches["body first"]["factors"] == searches["head first"]["factors"]


def test_timescale_says_a_group_held_at_lr_zero_decays_nothing(tmp_path):
    """A first group held at LR 0 is not the one the verdict speaks of, nor said to be held by `bounds`.

    Found in a review: the verdict read group 0 ("raised only as far as `bounds` allows: K = 0") while its LR held it.
    """
    balancer = WeightDecayBalancer()
    _fit(tmp_path, BodyAndHead(body_lr=0.0), [balancer], epochs=2)
    assert balancer.reason.startswith("param group 1: ")
    assert "param group 0: K = 0: its LR is 0 at every step, where no λ decays" in balancer.reason
    assert balancer.weight_decays[0] == 5e-3


def test_reference_lr_is_refused_beside_a_first_group_at_lr_zero(tmp_path):
    """`reference_lr` is the first group's LR in the reference: with it at 0 there is no ratio to take the others at.

    Found in a review: the ratios were taken against an LR of 1, and the head's λ was cut 20x without a word.
    """
    with pytest.raises(MisconfigurationException, match=r"`reference_lr` is the reference recipe's LR of the first "
                       r"param group.*configured `lr` is 0.0.*Put a group with a positive `lr` first"):  # fmt: skip
        _fit(tmp_path, BodyAndHead(body_lr=0.0), [WeightDecayBalancer(mode="budget", reference_lr=0.05)])


def test_the_grid_beside_an_empty_list_of_validation_loaders_says_so(tmp_path):
    """An empty list holds no loader at all: the warning says so, not only `drop_last` (found in a review)."""

    class NoLoaders(TinyClassifier):
        def val_dataloader(self):
            return []

    balancer = WeightDecayBalancer(mode="grid")
    with pytest.warns(RuntimeWarning, match=r"hold no batch \(none in the list given, or fewer samples"):
        _fit(tmp_path, NoLoaders(), [balancer])
    assert balancer.reason.endswith("no validation data to choose by")
