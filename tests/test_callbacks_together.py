"""Beside Lightning's own callbacks, and beside each other in either order: defined behaviour, tested."""

from __future__ import annotations

import csv
import logging
import warnings

import lightning as L
import pytest
import torch
from helpers import BackboneClassifier, MemoryLogger, TinyClassifier, trainer_kwargs
from lightning.pytorch.callbacks import (
    BackboneFinetuning,
    BaseFinetuning,
    BatchSizeFinder,
    Callback,
    EarlyStopping,
    LearningRateFinder,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.profilers import SimpleProfiler
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import OneCycleLR
from torch.optim.swa_utils import SWALR

from lightning_superconv import SuperConvergence, WeightDecayBalancer


class Recorder(Callback):
    """Records each param group's LR, momentum and weight decay, and the scheduler, at every training step."""

    def __init__(self) -> None:
        self.groups: list[list[tuple[float, float, float]]] = []
        self.schedulers: list[type] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.groups.append([(g["lr"], g["momentum"], g["weight_decay"]) for g in groups])
        self.schedulers.append(type(trainer.lr_scheduler_configs[0].scheduler))


def _fit(tmp_path, model, callbacks, seed=0, **overrides):
    L.seed_everything(seed, verbose=False)
    overrides.setdefault("limit_train_batches", 4)
    trainer = L.Trainer(callbacks=list(callbacks), **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model)
    return trainer


def _seeded(model_cls=TinyClassifier, **kwargs):
    L.seed_everything(0, verbose=False)
    return model_cls(**kwargs)


def _reference_lrs(max_lr: float, total_steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    scheduler = OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# ------------------------------------------------------------------------------------------------ Lightning's finder


def test_learning_rate_finder_in_the_same_trainer_is_refused(tmp_path):
    """Two LR finders would fight over the LR: a clear error before either runs, naming what to remove."""
    model = _seeded()
    with pytest.raises(MisconfigurationException, match=r"`LearningRateFinder`.*same Trainer: both run.*Remove `Lear"):
        _fit(tmp_path, model, [LearningRateFinder(), SuperConvergence(num_steps=10)])
    assert model.trainer.global_step == 0
    # with `max_lr` given only the finder tests: the message says the cycle at that `max_lr` would overwrite it
    given = r"same Trainer: the finder runs an LR range test .* the one-cycle at the `max_lr` you gave would overwrite"
    with pytest.raises(MisconfigurationException, match=given):
        _fit(tmp_path, _seeded(), [LearningRateFinder(), SuperConvergence(max_lr=0.3)])


def test_learning_rate_finder_of_the_other_distribution_is_refused_too(tmp_path):
    """A code base may mix the two distributions, and Lightning runs such a finder beside its Trainer.

    Found trying the package as a new user: a ``lightning.pytorch`` finder beside a ``pytorch_lightning`` Trainer was
    neither refused nor seen, and its restore of the model was read as a resume.
    """
    import pytorch_lightning as pl
    from helpers import StandaloneTinyClassifier
    from pytorch_lightning.utilities.exceptions import MisconfigurationException as StandaloneMisconfiguration

    trainer = pl.Trainer(callbacks=[LearningRateFinder(), SuperConvergence(num_steps=10)], **trainer_kwargs(tmp_path))
    with pytest.raises(StandaloneMisconfiguration, match=r"`LearningRateFinder`.*same Trainer"):
        trainer.fit(StandaloneTinyClassifier())
    assert trainer.global_step == 0


def test_tuner_lr_find_on_a_trainer_with_superconvergence_is_refused(tmp_path):
    """`Tuner.lr_find` adds Lightning's finder to the same Trainer: the same clear error."""
    trainer = L.Trainer(callbacks=[SuperConvergence(num_steps=10)], **trainer_kwargs(tmp_path))
    with pytest.raises(MisconfigurationException, match=r"`Tuner.lr_find`.*`SuperConvergence`"):
        Tuner(trainer).lr_find(_seeded(), num_training=5)


@pytest.mark.parametrize("finder_first", [True, False], ids=["finder-first", "finder-last"])
def test_batch_size_finder_then_a_range_test_and_a_cycle_over_the_found_batch_size(tmp_path, finder_first):
    """`BatchSizeFinder` restores its own checkpoint inside `on_fit_start`, which leaves `trainer.ckpt_path` set.

    That is no resume: the range test runs on the restored model, the balancer measures, and the cycle spans the steps
    run at the batch size found (before, `fit` stopped with "resumes from a checkpoint that holds no state").
    """
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, max_trials=2, init_val=16)
    sc, balancer, recorder = SuperConvergence(num_steps=20, trial_steps=50), WeightDecayBalancer(), Recorder()
    callbacks = [finder, sc, balancer, recorder] if finder_first else [sc, balancer, recorder, finder]
    model = _seeded(n=256)
    trainer = _fit(tmp_path, model, callbacks, limit_train_batches=None, max_epochs=1)
    found = model.hparams.batch_size
    assert found == finder.optimal_batch_size > 16
    assert trainer.ckpt_path is not None  # the finder's (the premise)
    assert sc.result is not None
    assert sc.max_lr == sc.result.max_lr
    assert trainer.global_step == 256 // found == sc.total_steps == len(recorder.groups)
    assert all(issubclass(kind, OneCycleLR) for kind in recorder.schedulers)
    assert balancer.weight_decays is not None
    assert balancer.weight_decays[0] != 5e-4
    final = trainer.optimizers[0].param_groups[0]["lr"]
    assert final == pytest.approx(sc.max_lr / (25 * 1e4))


def test_a_resume_beside_batch_size_finder_is_said_to_start_over_and_is_planned_as_a_new_fit(tmp_path, caplog):
    """Lightning starts `fit(ckpt_path=...)` over at step 0 beside the finder, which restores a checkpoint of its own.

    Found trying the package as a new user: `SuperConvergence` planned a new fit and said nothing, while the balancer
    kept the λ of the checkpoint and said "resumed ... not balanced again".
    """

    def finder():
        return BatchSizeFinder(mode="power", steps_per_trial=1, max_trials=1, init_val=16)

    first = _fit(tmp_path, _seeded(n=256), [finder(), SuperConvergence(max_lr=0.5), WeightDecayBalancer()],
                 limit_train_batches=None, max_epochs=1)  # fmt: skip
    checkpoint = tmp_path / "epoch1.ckpt"
    first.save_checkpoint(checkpoint)
    sc, balancer = SuperConvergence(max_lr=0.5), WeightDecayBalancer()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(callbacks=[finder(), sc, balancer], **trainer_kwargs(tmp_path, max_epochs=2))
    caplog.clear()
    with (
        pytest.warns(RuntimeWarning, match=r"`fit\(ckpt_path=...\)` does not resume beside `BatchSizeFinder`"),
        caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"),
    ):
        trainer.fit(_seeded(n=256), ckpt_path=checkpoint)
    assert sc.total_steps == trainer.global_step  # the whole run: it started at step 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("WeightDecayBalancer:")]
    assert len(said) == 1
    assert "resumed" not in said[0]
    assert balancer.planned_steps == trainer.global_step


def test_two_superconvergence_callbacks_are_refused_when_the_trainer_is_built(tmp_path):
    """One optimizer follows one cycle: Lightning refuses a second `SuperConvergence` (same state key) at once."""
    with pytest.raises(RuntimeError, match=r"more than one stateful callback of type `SuperConvergence`"):
        L.Trainer(callbacks=[SuperConvergence(max_lr=0.1), SuperConvergence(max_lr=0.2)], **trainer_kwargs(tmp_path))


class BringsItsOwn(TinyClassifier):
    """A module whose `configure_callbacks` returns callbacks of this package."""

    def __init__(self, callbacks) -> None:
        super().__init__()
        self.own = callbacks

    def configure_callbacks(self):
        return self.own


class MySuperConvergence(SuperConvergence):
    """A subclass: another state key, which Lightning's own check at `Trainer(...)` does not compare."""


@pytest.mark.parametrize(
    ("trainer_callbacks", "module_callbacks", "name"),
    [
        ([], lambda: [SuperConvergence(), SuperConvergence(max_lr=0.05)], "SuperConvergence"),
        ([], lambda: [WeightDecayBalancer(), WeightDecayBalancer(mode="keep")], "WeightDecayBalancer"),
        ([SuperConvergence(max_lr=0.1), MySuperConvergence(max_lr=0.05)], list, "SuperConvergence"),
    ],
    ids=["two-from-configure_callbacks", "two-balancers-from-configure_callbacks", "a-subclass-beside"],
)
def test_a_second_callback_of_this_package_that_lightning_lets_through_is_refused_before_any_step(
    tmp_path, trainer_callbacks, module_callbacks, name
):
    """From `configure_callbacks`, or a subclass: both would run, one over the other. Refused at setup.

    Found trying the package as a new user: the second replaced the first's cycle, the first's guard read that as SWA
    taking over, and one state overwrote the other in checkpoints.
    """
    model = BringsItsOwn(module_callbacks())
    with pytest.raises(MisconfigurationException, match=rf"runs 2 `{name}` callbacks .* Keep one `{name}`"):
        _fit(tmp_path, model, trainer_callbacks)
    assert model.trainer.global_step == 0


# ------------------------------------------------------------------------------------------------ SWA


@pytest.mark.parametrize("swa_first", [False, True], ids=["swa-after", "swa-before"])
def test_stochastic_weight_averaging_takes_over_the_schedule_at_its_start(tmp_path, swa_first, recwarn):
    """The cycle spans the run's 12 steps and runs until SWA starts (third of 3 epochs); then SWA's `SWALR` rules.

    In either order of the callbacks list: SWA's extra batch-norm epoch does not lengthen the cycle.
    """
    recorder = Recorder()
    callback = SuperConvergence(num_steps=15)
    swa = StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=3)  # 1-based: the third epoch
    callbacks = [swa, callback] if swa_first else [callback, swa]
    trainer = _fit(tmp_path, _seeded(), [*callbacks, recorder], max_epochs=3)
    assert callback.total_steps == 12
    assert recorder.schedulers[:12] == [type(callback._scheduler)] * 8 + [SWALR] * 4
    assert [g[0][0] for g in recorder.groups[:8]] == pytest.approx(_reference_lrs(callback.max_lr, 12)[:8], rel=1e-12)
    assert trainer.state.finished
    assert int(swa.n_averaged) > 0
    # SWA's extra epoch is no surprise (the trials' warning is this fixture's: its validation set is another task's)
    assert not [w for w in recwarn if "SuperConvergence" in str(w.message) and "no trial" not in str(w.message)]


def test_the_guard_stands_down_once_swa_s_schedule_replaces_the_cycle(tmp_path, caplog):
    """After SWA's start its ``SWALR`` sets the LR; the guard lowered a cycle that no longer ran.

    Found trying the package as a new user (SWA at an LR that diverges): each rescue said it lowered the peak, put back
    the cycle's LR of its snapshot's time until ``SWALR`` set its own again, and the run used up its rescues. Now the
    guard stands down when ``SWALR`` takes over (and says so): no rescue after it, the LR is SWA's at every step.
    """
    recorder = Recorder()
    callback = SuperConvergence(max_lr=0.05)
    swa = StochasticWeightAveraging(swa_lrs=50.0, swa_epoch_start=3, annealing_epochs=1)  # an LR that blows up
    with caplog.at_level(logging.INFO):
        trainer = _fit(tmp_path, _seeded(), [callback, swa, recorder], max_epochs=6)
    assert trainer.state.finished
    assert callback.rescues == []
    swa_steps = [i for i, kind in enumerate(recorder.schedulers) if kind is SWALR]
    annealed = swa_steps[4:]  # SWALR climbs to 50 over its first epoch (4 steps), then holds it
    assert annealed
    assert all(recorder.groups[i][0][0] == pytest.approx(50.0) for i in annealed)
    assert (
        "SWALR has replaced the one-cycle (seen at step 10, the divergence guard's first check since); the guard "
        "stands down" in caplog.text
    )


# ------------------------------------------------------------------------------------------------ LearningRateMonitor


def test_learning_rate_monitor_logs_the_cycle_momentum_and_balanced_weight_decay(tmp_path):
    """`LearningRateMonitor(log_momentum=True, log_weight_decay=True)` logs what each step used, range test excluded."""
    recorder = Recorder()
    balancer = WeightDecayBalancer(mode="budget")
    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True, log_weight_decay=True)
    logger = CSVLogger(tmp_path)
    trainer = _fit(
        tmp_path,
        _seeded(),
        [SuperConvergence(num_steps=15), balancer, monitor, recorder],
        logger=logger,
        log_every_n_steps=1,
    )
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("lr-SGD")]
    assert [int(row["step"]) for row in rows] == list(range(trainer.global_step))
    lrs, momenta, decays = zip(*[step[0] for step in recorder.groups], strict=True)
    assert [float(row["lr-SGD"]) for row in rows] == pytest.approx(lrs, rel=1e-6)
    assert [float(row["lr-SGD-momentum"]) for row in rows] == pytest.approx(momenta, rel=1e-6)
    assert [float(row["lr-SGD-weight_decay"]) for row in rows] == pytest.approx(
        [balancer.weight_decays[0]] * trainer.global_step, rel=1e-6
    )
    assert balancer.weight_decays[0] != 5e-4


# ------------------------------------------------------------------------------------------------ ModelCheckpoint


def test_model_checkpoint_sees_real_steps_only(tmp_path):
    """A per-step `ModelCheckpoint` on `train_loss` writes one file per real step: none for range-test steps."""
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="train_loss", every_n_train_steps=1, save_top_k=-1, filename="{step}"
    )
    trainer = _fit(tmp_path, _seeded(), [SuperConvergence(num_steps=15), checkpoint], enable_checkpointing=True)
    files = sorted(int(p.stem.split("=")[1]) for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert files == list(range(1, trainer.global_step + 1))
    best = torch.load(checkpoint.best_model_path, weights_only=True)
    assert best["callbacks"]["SuperConvergence"]["max_lr"] == trainer.callbacks[0].max_lr


# ------------------------------------------------------------------------------------------------ EarlyStopping


class LossLog(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_a_profiler_times_real_steps_only_and_the_range_test_as_a_whole(tmp_path):
    """A profiler counts the module's hooks in real steps only.

    Found trying the package as a new user: ``profiler="simple"`` counted the range test's hundreds of steps into the
    module's hooks (538 calls of ``on_before_backward`` in a run of 40 steps, and their mean duration with them). The
    range test and the weight-decay grid (``mode="grid"``) still show whole in the hooks that run them.
    """
    profiler = SimpleProfiler(dirpath=tmp_path, filename="profile")
    callbacks = [SuperConvergence(num_steps=20, trial_steps=50), WeightDecayBalancer(mode="grid")]
    trainer = L.Trainer(profiler=profiler, callbacks=callbacks, **trainer_kwargs(tmp_path, max_steps=6))
    trainer.fit(TinyClassifier())
    timed = profiler.recorded_durations
    for hook in ("on_before_backward", "optimizer_step", "transfer_batch_to_device"):
        assert len(timed[f"[LightningModule]TinyClassifier.{hook}"]) == 6, hook
    assert "[Callback]SuperConvergence.on_fit_start" in timed
    assert "[Callback]WeightDecayBalancer.on_train_start" in timed


def test_early_stopping_ends_the_run_on_real_metrics_with_the_cycle_unfinished(tmp_path):
    """EarlyStopping stops after the first epoch on the last real step's loss; the cycle simply ends early."""
    losses = LossLog()
    stopper = EarlyStopping(monitor="train_loss", check_on_train_epoch_end=True, stopping_threshold=100.0)
    callback = SuperConvergence(num_steps=15)
    trainer = _fit(tmp_path, _seeded(), [callback, stopper, losses], max_epochs=3)
    assert trainer.global_step == 4
    assert stopper.stopped_epoch == 0
    # what EarlyStopping read is the last real step's loss, not a range-test one
    assert float(trainer.callback_metrics["train_loss"]) == pytest.approx(losses.losses[-1], rel=1e-6)
    assert len(losses.losses) == 4
    assert callback._scheduler.last_epoch == 4 < callback.total_steps == 12


# ------------------------------------------------------------------------------------------------ both callbacks


def _run_both(tmp_path, order: str):
    recorder = Recorder()
    superconv, balancer = SuperConvergence(num_steps=15), WeightDecayBalancer(mode="budget")
    callbacks = [superconv, balancer] if order == "superconv-first" else [balancer, superconv]
    trainer = _fit(tmp_path, _seeded(), [*callbacks, recorder])
    return superconv, balancer, trainer, recorder


def test_the_two_callbacks_give_the_same_run_in_either_order(tmp_path):
    """`[SuperConvergence, WeightDecayBalancer]` and the reverse: same pick, weight decay, schedule and weights."""
    sc_a, wd_a, trainer_a, rec_a = _run_both(tmp_path / "a", "superconv-first")
    sc_b, wd_b, trainer_b, rec_b = _run_both(tmp_path / "b", "balancer-first")
    assert sc_a.result == sc_b.result
    assert wd_a.weight_decays == wd_b.weight_decays != [5e-4]
    assert rec_a.groups == rec_b.groups
    for (name, a), (_, b) in zip(
        trainer_a.lightning_module.state_dict().items(), trainer_b.lightning_module.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------------ BackboneFinetuning


def test_param_group_added_by_backbone_finetuning_joins_the_cycle(tmp_path, caplog):
    """The backbone's group, added at epoch 1, follows the cycle at the ratio it was added with; no crash."""
    recorder = Recorder()
    finetuning = BackboneFinetuning(unfreeze_backbone_at_epoch=1)
    callback = SuperConvergence(max_lr=0.2)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer = _fit(tmp_path, BackboneClassifier(), [finetuning, callback, recorder], max_epochs=3)
    assert trainer.global_step == 12
    assert [len(groups) for groups in recorder.groups] == [1] * 4 + [2] * 8
    head = [groups[0] for groups in recorder.groups[4:]]
    backbone = [groups[1] for groups in recorder.groups[4:]]
    # BackboneFinetuning adds the backbone at a tenth of the head's LR, and rewrites it at every epoch start: the
    # cycle keeps it at that tenth at every step, with the head's momentum
    assert [b[0] / h[0] for h, b in zip(head, backbone, strict=True)] == pytest.approx([0.1] * 8, rel=1e-9)
    assert [b[1] for b in backbone] == pytest.approx([h[1] for h in head], rel=1e-12)
    assert [g[0][0] for g in recorder.groups] == pytest.approx(_reference_lrs(0.2, 12), rel=1e-12)
    assert any("join the one-cycle at 0.1x" in r.getMessage() for r in caplog.records)


class _MomentumInATensor(BackboneClassifier):
    """SGD with its momentum held in a Tensor: the backbone's group, added at epoch 1, gets that same Tensor."""

    def configure_optimizers(self):
        self.momentum_tensor = torch.tensor(0.9)
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.01, momentum=self.momentum_tensor)


def test_an_added_group_follows_a_momentum_held_in_a_tensor_without_reading_it(tmp_path, monkeypatch):
    """Tensor to Tensor: no ``float`` of it per step (on a GPU, a device sync each), the head's values all along.

    Found in a review: the added group read the head's momentum Tensor at every step (twice) to follow it.
    """
    reads = {"momentum": 0}
    model = _MomentumInATensor()
    as_float = torch.Tensor.__float__

    def counted(tensor):
        if tensor is getattr(model, "momentum_tensor", None):
            reads["momentum"] += 1
        return as_float(tensor)

    monkeypatch.setattr(torch.Tensor, "__float__", counted)

    class Steps(Callback):
        def __init__(self) -> None:
            self.momenta: list[list[float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if len(trainer.optimizers[0].param_groups) == 2:
                before = reads["momentum"]
                self.momenta.append([float(group["momentum"]) for group in trainer.optimizers[0].param_groups])
                reads["momentum"] = before  # this callback's own reads left out

    steps = Steps()
    callbacks = [BackboneFinetuning(unfreeze_backbone_at_epoch=1), SuperConvergence(max_lr=0.2), steps]
    reads_at_unfreeze = {}

    class Unfrozen(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            reads_at_unfreeze.setdefault(trainer.current_epoch, reads["momentum"])

    _fit(tmp_path, model, [*callbacks, Unfrozen()], max_epochs=3)
    assert len(steps.momenta) == 8
    assert all(head == backbone for head, backbone in steps.momenta)
    assert len({head for head, _ in steps.momenta}) > 4  # the premise: it cycles
    assert reads["momentum"] - reads_at_unfreeze[1] <= 2  # not one or two per step: 8 steps ran since


def test_a_learning_rate_monitor_listed_first_logs_the_backbones_lr_and_momentum_that_ran(tmp_path):
    """BackboneFinetuning writes its own LR at each epoch start; the monitor before us logs what the step runs.

    Found trying the package as a new user (the package's callbacks appended to an existing list): the monitor logged
    BackboneFinetuning's LR at each epoch's first step, and the user's momentum at the step the group was added.
    """
    recorder = Recorder()
    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True)
    logger = MemoryLogger()
    callbacks = [BackboneFinetuning(unfreeze_backbone_at_epoch=1), monitor, SuperConvergence(max_lr=0.2), recorder]
    _fit(tmp_path, BackboneClassifier(), callbacks, max_epochs=3, logger=logger, log_every_n_steps=1)
    logged = [metrics for _, metrics in logger.metrics if "lr-SGD/pg2" in metrics]
    ran = [groups[1] for groups in recorder.groups if len(groups) == 2]
    assert len(logged) == len(ran) == 8
    assert [m["lr-SGD/pg2"] for m in logged] == pytest.approx([lr for lr, _, _ in ran], rel=1e-12)
    assert [m["lr-SGD/pg2-momentum"] for m in logged] == pytest.approx([mom for _, mom, _ in ran], rel=1e-12)


def test_once_swa_took_over_the_backbones_group_runs_at_swas_lr(tmp_path):
    """SWALR anneals every param group to its LR; the cycle no longer sets the added group's.

    Found in a review: the backbone's group stayed at a tenth of SWA's LR, where the cycle had kept it.
    """
    recorder = Recorder()
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3, annealing_epochs=1)
    callbacks = [BackboneFinetuning(unfreeze_backbone_at_epoch=1), SuperConvergence(max_lr=0.2), swa, recorder]
    _fit(tmp_path, BackboneClassifier(), callbacks, max_epochs=6)
    head, backbone = (lr for lr, _, _ in recorder.groups[4])  # the cycle's, at the ratio the group joined with
    assert backbone / head == pytest.approx(0.1)
    for groups in recorder.groups[16:]:  # SWA's epochs after its annealing epoch
        assert [lr for lr, _, _ in groups] == pytest.approx([0.05, 0.05], rel=1e-9)


def test_a_range_test_beside_backbone_finetuning_warns_that_it_measures_the_head_alone(tmp_path):
    """The backbone is frozen while the range test runs: its pick suits the head alone (found by a new user: 15x).

    Given ``max_lr=`` there is no range test and no warning.
    """
    with pytest.warns(RuntimeWarning, match=r"`BackboneFinetuning` holds part of the model frozen.*Pass `max_lr=`"):
        _fit(tmp_path / "test", BackboneClassifier(), [BackboneFinetuning(unfreeze_backbone_at_epoch=1),
             SuperConvergence(num_steps=15, trial_steps=0)], max_epochs=2)  # fmt: skip
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _fit(tmp_path / "given", BackboneClassifier(), [BackboneFinetuning(unfreeze_backbone_at_epoch=1),
             SuperConvergence(max_lr=0.2)], max_epochs=2)  # fmt: skip
    assert not [w for w in said if "frozen" in str(w.message)]


class KeepsTheBackboneFrozen(BaseFinetuning):
    """Freezes the backbone for good (a distillation teacher, a frozen feature extractor): nothing ever joins."""

    def freeze_before_training(self, pl_module):
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module, current_epoch, optimizer):
        pass


def test_the_frozen_backbone_warning_names_when_the_backbone_joins_and_is_silent_if_not_in_this_run(tmp_path):
    """Found trying the package as a new user: a teacher frozen for good was told its pick would be too high.

    ``BackboneFinetuning`` joining within the run: said, with its epoch; joining after the run: nothing said. Another
    ``BaseFinetuning``, whose own code decides when, if ever: said conditionally.
    """
    quick = dict(num_steps=15, trial_steps=0)
    with pytest.warns(RuntimeWarning, match=r"too high once the backbone joins at epoch 1 \(15x"):
        _fit(tmp_path / "a", BackboneClassifier(), [BackboneFinetuning(1), SuperConvergence(**quick)], max_epochs=2)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _fit(tmp_path / "b", BackboneClassifier(), [BackboneFinetuning(2), SuperConvergence(**quick)], max_epochs=2)
    assert not [w for w in said if "frozen" in str(w.message)]
    with warnings.catch_warnings(record=True) as said:  # a run sized in steps: 8 steps, 2 epochs of 4
        warnings.simplefilter("always")
        callbacks = [BackboneFinetuning(5), SuperConvergence(**quick)]
        _fit(tmp_path / "d", BackboneClassifier(), callbacks, max_steps=8, max_epochs=-1)
    assert not [w for w in said if "frozen" in str(w.message)]
    with pytest.warns(RuntimeWarning, match=r"`KeepsTheBackboneFrozen` holds .* too high if the rest joins later"):
        _fit(tmp_path / "c", BackboneClassifier(), [KeepsTheBackboneFrozen(), SuperConvergence(**quick)], max_epochs=2)


class Interrupt(Exception):
    """Stands for the job being killed."""


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupt


@pytest.mark.parametrize("finetuning_first", [True, False], ids=["finetuning-first", "superconv-first"])
def test_resume_after_backbone_finetuning_added_its_group_continues_the_cycle(tmp_path, finetuning_first):
    """Killed after the backbone joined (step 8 of 12) and resumed: both groups' LR and momentum as uninterrupted."""

    def callbacks(*extra):
        finetuning, callback = BackboneFinetuning(unfreeze_backbone_at_epoch=1), SuperConvergence(max_lr=0.2)
        pair = [finetuning, callback] if finetuning_first else [callback, finetuning]
        return [*pair, *extra]

    whole = Recorder()
    _fit(tmp_path / "whole", BackboneClassifier(), callbacks(whole), max_epochs=3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    with pytest.raises(Interrupt):
        _fit(tmp_path / "a", BackboneClassifier(), callbacks(ckpt, KillAt(8)), max_epochs=3, enable_checkpointing=True)
    resumed = Recorder()
    L.seed_everything(0, verbose=False)
    kwargs = trainer_kwargs(tmp_path / "b", max_epochs=3, limit_train_batches=4)
    trainer = L.Trainer(callbacks=callbacks(resumed), **kwargs)
    trainer.fit(BackboneClassifier(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 12
    flat = [[value for group in step for value in group] for step in resumed.groups]
    expected = [[value for group in step for value in group] for step in whole.groups[8:]]
    assert len(flat) == len(expected) == 4
    for got, want in zip(flat, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12)


class FitsAnotherTrainerMeanwhile(L.Callback):
    """While this fit runs, fits another Trainer with the given callback instances; records what that raised."""

    def __init__(self, tmp_path, shared) -> None:
        self.tmp_path, self.shared, self.raised = tmp_path, shared, []
        self.snapshots: list[bool] = []  # whether the first callback's guard holds its snapshot, before and after

    def on_train_start(self, trainer, pl_module):
        self.snapshots.append(self._holds_a_snapshot())
        self._fit_meanwhile()
        self.snapshots.append(self._holds_a_snapshot())

    def _holds_a_snapshot(self) -> bool:
        watch = getattr(self.shared[0], "_watch", None)
        return watch is not None and watch.guard.snapshot is not None

    def _fit_meanwhile(self):
        for callback in self.shared:
            other = L.Trainer(callbacks=[callback], **trainer_kwargs(self.tmp_path / "other", max_epochs=1))
            try:
                other.fit(TinyClassifier())
            except MisconfigurationException as err:
                self.raised.append(str(err))


def test_one_instance_in_two_trainers_at_once_is_refused_and_served_after_its_fit(tmp_path):
    """An instance in a running fit is refused by another Trainer; once that fit ended (or raised), it is served.

    Found trying the package as a new user: trials of an Optuna study run in threads (`n_jobs=2`) shared one pair
    created outside the objective, and one trained at the other's weight decay, or failed with a bare AssertionError.
    """
    shared = [SuperConvergence(max_lr=0.1), WeightDecayBalancer()]
    meanwhile = FitsAnotherTrainerMeanwhile(tmp_path, shared)
    first = L.Trainer(callbacks=[*shared, meanwhile], **trainer_kwargs(tmp_path / "first", max_epochs=1))
    first.fit(TinyClassifier())
    assert first.global_step > 0
    assert len(meanwhile.raised) == 2
    assert meanwhile.snapshots == [True, True]  # the refusal left the running fit's guard alone
    for who, said in zip(("SuperConvergence", "WeightDecayBalancer"), meanwhile.raised, strict=True):
        assert said.startswith(f"{who}: this instance is in a fit that another Trainer is still running")
        assert said.endswith(f"Create one {who} per Trainer.")

    class Raises(L.Callback):
        def on_train_start(self, trainer, pl_module):
            raise RuntimeError("a pruned trial")

    failed = L.Trainer(callbacks=[*shared, Raises()], **trainer_kwargs(tmp_path / "failed", max_epochs=1))
    with pytest.raises(RuntimeError, match="a pruned trial"):
        failed.fit(TinyClassifier())
    after = L.Trainer(callbacks=shared, **trainer_kwargs(tmp_path / "after", max_epochs=1))
    after.fit(TinyClassifier())  # the first fit ended and the second raised: both let the instances go
    assert after.global_step > 0
    assert shared[1].weight_decays is not None


class ForgetsTeardown(SuperConvergence):
    """A subclass whose `teardown` does not call `super()` (Lightning does not ask callbacks to)."""

    def teardown(self, trainer, pl_module, stage):
        pass

    def __eq__(self, other):  # and compares by value, which leaves it unhashable
        return isinstance(other, ForgetsTeardown)


def test_an_instance_is_free_once_its_fit_ended_whatever_its_own_hooks_did(tmp_path):
    """A fit that ended lets the instance go, without its `teardown`; an unhashable subclass is served too.

    Found in a review: a subclass's `teardown` without `super()` kept the instance claimed for good, and one with
    `__eq__` alone (unhashable) failed every fit with a TypeError.
    """
    callback = ForgetsTeardown(max_lr=0.1)
    for run in ("first", "second"):
        trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path / run, max_epochs=1))
        trainer.fit(TinyClassifier())
        assert trainer.global_step > 0
    twin = ForgetsTeardown(max_lr=0.1)
    assert twin == callback  # equal, yet another instance: its own fit
    meanwhile = FitsAnotherTrainerMeanwhile(tmp_path, [twin])
    L.Trainer(callbacks=[callback, meanwhile], **trainer_kwargs(tmp_path / "third", max_epochs=1)).fit(TinyClassifier())
    assert meanwhile.raised == []
