"""Both import styles: ``lightning.pytorch`` and the standalone ``pytorch_lightning`` distribution."""

from __future__ import annotations

import importlib
import logging

import lightning.pytorch as lp
import pytest
import pytorch_lightning as pl
import torch
from helpers import StandaloneTinyClassifier, TinyClassifier, make_dataset
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader

from lightning_superconv import SuperConvergence, WeightDecayBalancer, _compat, find_max_lr

QUIET = dict(
    accelerator="cpu",
    devices=1,
    max_epochs=2,
    limit_train_batches=4,
    check_val_every_n_epoch=10_000,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)


class StandaloneManual(StandaloneTinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()


@pytest.mark.parametrize("callback", [SuperConvergence, WeightDecayBalancer])
def test_callbacks_are_callbacks_of_both_distributions(callback):
    """`isinstance` holds for either distribution's `Callback`, as `LightningCLI`'s type checks require."""
    assert isinstance(callback(), lp.Callback)
    assert isinstance(callback(), pl.Callback)


def test_standalone_trainer_runs_both_callbacks(tmp_path, caplog):
    """A `pytorch_lightning.Trainer` gets the range test, the cycle in its own config class, and the balanced λ."""
    # the timescale rule moves λ at any peak; the budget rule only lowers it, and keeps it at a peak as low as this
    # model's own LR, where its trials, all learning nothing (256 samples overfitted), end
    superconv = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10)
    balancer = WeightDecayBalancer(mode="timescale")
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[superconv, balancer], **QUIET)
    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        trainer.fit(StandaloneTinyClassifier())
    assert trainer.global_step == 8
    assert len(superconv.result.losses) >= 10  # past `lr_range[1]` while the loss has not risen back
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config, pl.utilities.types.LRSchedulerConfig)
    assert isinstance(config.scheduler, OneCycleLR)
    assert trainer.optimizers[0].param_groups[0]["weight_decay"] == balancer.weight_decays[0] != 5e-4
    # the messages go through the standalone distribution's rank-zero logger
    assert any("SuperConvergence: range test picked" in r.getMessage() for r in caplog.records)


def test_standalone_trainer_gets_its_own_exception_class(tmp_path):
    """A setup the callback cannot serve raises the `MisconfigurationException` a `pytorch_lightning` user catches."""
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[SuperConvergence(max_lr=0.1)], **QUIET)
    with pytest.raises(pl.utilities.exceptions.MisconfigurationException, match="automatic optimization"):
        trainer.fit(StandaloneManual())


def test_standalone_resume_continues_the_cycle(tmp_path):
    """`pytorch_lightning`'s checkpoint and resume carry the callback state and the cycle's position."""
    first = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    kwargs = {**QUIET, "enable_checkpointing": True, "max_epochs": 1}
    pl.Trainer(default_root_dir=tmp_path, callbacks=[first, ckpt], **kwargs).fit(StandaloneTinyClassifier())
    resumed = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10)
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[resumed], **{**kwargs, "max_epochs": 2})
    with pytest.warns(RuntimeWarning, match="ends at step 8, but its one-cycle was planned to end at step 4"):
        trainer.fit(StandaloneTinyClassifier(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.result == first.result
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 8


def test_find_max_lr_with_a_standalone_module(tmp_path):
    """`find_max_lr` runs a `pytorch_lightning` module on a `pytorch_lightning.Trainer`."""
    result = find_max_lr(
        StandaloneTinyClassifier(),
        train_dataloaders=DataLoader(make_dataset(128), batch_size=32, shuffle=True),
        trainer_kwargs={"default_root_dir": tmp_path, "accelerator": "cpu"},
        lr_range=(1e-2, 1.0),
        num_steps=10,
    )
    assert len(result.losses) >= 10


CLI_CALLBACKS = [
    {"class_path": "lightning_superconv.SuperConvergence", "init_args": {"num_steps": 10, "lr_range": [0.01, 1.0]}},
    {"class_path": "lightning_superconv.WeightDecayBalancer", "init_args": {"mode": "budget"}},
]


@pytest.mark.parametrize(
    ("cli_module", "model"),
    [("lightning.pytorch.cli", TinyClassifier), ("pytorch_lightning.cli", StandaloneTinyClassifier)],
    ids=["lightning", "pytorch_lightning"],
)
def test_lightning_cli_builds_the_callbacks_from_config(tmp_path, cli_module, model):
    """Either distribution's `LightningCLI` accepts both callbacks by `class_path` under `trainer.callbacks`."""
    cli_cls = importlib.import_module(cli_module).LightningCLI
    config = {"trainer": {**QUIET, "default_root_dir": str(tmp_path), "callbacks": CLI_CALLBACKS}}
    cli = cli_cls(model, run=False, args=config, save_config_callback=None)
    callbacks = cli.trainer.callbacks
    superconv = next(cb for cb in callbacks if isinstance(cb, SuperConvergence))
    balancer = next(cb for cb in callbacks if isinstance(cb, WeightDecayBalancer))
    assert (superconv.range_test.num_steps, superconv.range_test.lr_range) == (10, (0.01, 1.0))
    assert balancer.mode == "budget"
    cli.trainer.fit(cli.model)
    assert superconv.result is not None


@pytest.mark.parametrize(
    ("cli_module", "model"),
    [("lightning.pytorch.cli", TinyClassifier), ("pytorch_lightning.cli", StandaloneTinyClassifier)],
    ids=["lightning", "pytorch_lightning"],
)
def test_a_scheduler_lightning_cli_installed_is_said_to_come_from_it(tmp_path, caplog, cli_module, model):
    """Found trying the package as a new user: "from `configure_optimizers`", which the user never wrote."""
    cli_cls = importlib.import_module(cli_module).LightningCLI
    config = {
        "trainer": {**QUIET, "default_root_dir": str(tmp_path), "callbacks": [CLI_CALLBACKS[0]]},
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01, "momentum": 0.9}},
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 10}},
    }
    cli = cli_cls(model, run=False, args=config, save_config_callback=None)
    assert _compat.optimizers_from_the_cli(cli.model)
    assert not _compat.optimizers_from_the_cli(model())
    with caplog.at_level(logging.INFO):
        cli.trainer.fit(cli.model)
    assert "replacing the scheduler `CosineAnnealingLR` from LightningCLI's `--lr_scheduler` with" in caplog.text


def test_find_max_lr_takes_a_standalone_datamodule_where_trainer_fit_does(tmp_path):
    """A `pytorch_lightning` datamodule, given in `train_dataloaders`' place, is the datamodule and is detached."""

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(make_dataset(128), batch_size=32, shuffle=True)

    data = Data()
    result = find_max_lr(
        StandaloneTinyClassifier(), data, trainer_kwargs={"default_root_dir": tmp_path, "accelerator": "cpu"},
        lr_range=(1e-2, 1.0), num_steps=10,
    )  # fmt: skip
    assert len(result.losses) >= 10
    assert data.trainer is None


# ------------------------------------------------------------------ every private Lightning attribute we touch
# Each `_compat` accessor, checked against the running Lightning of both distributions: when a release moves one of
# these attributes, the failing test names it.


class CompatProbe:
    """Calls every `_compat` accessor at fit start, train start and the first training batch; records the answers."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    def on_fit_start(self, trainer, pl_module):
        from lightning_superconv import _compat

        _compat.setup_train_data(trainer)
        self.seen["loaders"] = _compat.train_loaders(trainer)
        combined = _compat.train_combined_loader(trainer)
        iterator, length = _compat.fresh_train_iterator(combined)
        batch, batch_idx, dataloader_idx = next(iterator)
        self.seen["first_batch"] = (batch[0].shape, batch_idx, dataloader_idx, length)
        self.seen["transferred"] = _compat.before_batch_transfer(pl_module, batch)
        self.seen["results"] = _compat.epoch_results(trainer)
        replacement = type(self.seen["results"])(training=True)
        _compat.set_epoch_results(trainer, replacement)
        self.seen["results_replaced"] = _compat.epoch_results(trainer) is replacement
        _compat.set_epoch_results(trainer, self.seen["results"])
        _compat.set_current_hook(pl_module, "training_step")
        self.seen["hook"] = _compat.current_hook(pl_module)
        self.seen["attached"] = _compat.attached_trainer(pl_module)
        _compat.set_current_hook(pl_module, None)
        self.seen["logging_hook_at_start"] = _compat.logging_hook(trainer)
        _compat.set_logging_hook(trainer, "training_step")
        self.seen["logging_hook"] = _compat.logging_hook(trainer)
        _compat.set_logging_hook(trainer, self.seen["logging_hook_at_start"])
        self.seen["scaler"] = _compat.grad_scaler(trainer)
        self.seen["placeholder"] = _compat.is_placeholder_optimizer(trainer, trainer.optimizers[0])
        self.seen["val"] = _compat.val_dataloaders(trainer)
        self.seen["has_val"] = _compat.has_val_dataloaders(trainer)
        self.seen["callbacks"] = _compat.callbacks(trainer)
        self.seen["fast_dev_run"] = _compat.fast_dev_run(trainer)
        self.seen["overfit_batches"] = _compat.overfit_batches(trainer)
        self.seen["resume"] = _compat.checkpoint_to_resume(trainer)
        self.seen["weights_only"] = _compat.weights_only_checkpoint(trainer)

    def on_train_start(self, trainer, pl_module):
        from lightning_superconv import _compat

        self.seen["mid_epoch"] = _compat.resumes_mid_epoch(trainer)
        self.seen["reached"] = _compat.batches_reached_this_epoch(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from lightning_superconv import _compat

        if "logging_step" not in self.seen:
            self.seen["logging_step"] = _compat.logging_step(trainer)
        # ours against Lightning's own cadence, at every step
        self.seen.setdefault("training_logging_step", []).append(
            (_compat.training_logging_step(trainer), trainer._logger_connector.should_update_logs)
        )


@pytest.mark.parametrize(("distribution", "model"), [(lp, TinyClassifier), (pl, StandaloneTinyClassifier)])
def test_every_private_accessor_reads_the_running_lightning(tmp_path, distribution, model):
    """Each accessor finds its attribute in the running Lightning and works.

    The train loaders, a fresh iterator beside the fit loop's, the result collection, the hook name, the logging step
    and cadence, the validation loaders, the callbacks.
    """
    probe = type("Probe", (CompatProbe, distribution.Callback), {})()
    trainer = distribution.Trainer(
        **{**QUIET, "limit_val_batches": 1, "log_every_n_steps": 1, "default_root_dir": tmp_path, "max_steps": 2},
        callbacks=[probe],
    )
    trainer.fit(model())
    seen = probe.seen
    assert len(seen["loaders"]) == 1
    assert seen["first_batch"][1:] == (0, 0, 4)  # batch_idx, dataloader_idx, `limit_train_batches=4`
    assert seen["first_batch"][0][0] == 32
    assert isinstance(seen["transferred"], list)
    assert seen["results_replaced"] is True
    assert seen["hook"] == "training_step"
    assert seen["attached"] is trainer
    assert (seen["logging_hook_at_start"], seen["logging_hook"]) == (None, "training_step")
    assert seen["scaler"] is None
    assert seen["placeholder"] is False
    assert len(seen["val"]) == 1
    assert seen["has_val"] is True
    assert seen["callbacks"][-1] is probe
    assert seen["fast_dev_run"] is False
    assert seen["overfit_batches"] == 0
    assert seen["resume"] is False
    assert seen["weights_only"] is False
    assert seen["logging_step"] == 0
    assert seen["training_logging_step"] == [(0, True), (1, True)]
    assert seen["mid_epoch"] is False
    assert seen["reached"] == 0


@pytest.mark.parametrize("distribution", [lp, pl])
def test_unprofiled_and_validating_switch_the_running_lightning_s_profiler_and_stage_for_a_block(distribution):
    """Within ``unprofiled`` nothing is timed; within ``validating`` the Trainer says it validates; both come back."""
    profiler = distribution.profilers.SimpleProfiler()
    trainer = distribution.Trainer(**QUIET, profiler=profiler)
    trainer.training = True
    with _compat.unprofiled(trainer):
        assert isinstance(trainer.profiler, distribution.profilers.PassThroughProfiler)
        with trainer.profiler.profile("off the record"):
            pass
    assert trainer.profiler is profiler
    assert "off the record" not in profiler.recorded_durations
    seen = []

    def interrupted() -> None:
        with _compat.validating(trainer):
            seen.append((trainer.validating, trainer.training))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert seen == [(True, False)]
    assert trainer.training
    assert not trainer.validating


@pytest.mark.parametrize("distribution", [lp, pl])
def test_the_datamodule_is_the_one_fit_was_given_or_none(tmp_path, distribution):
    """The datamodule a fit was given, read at fit start; None for a fit given a module with its own loaders."""
    seen = []
    probe = type(
        "Probe", (distribution.Callback,), {"on_fit_start": lambda self, t, m: seen.append(_compat.datamodule(t))}
    )
    datamodule = distribution.LightningDataModule.from_datasets(make_dataset(64), batch_size=32)
    model = TinyClassifier if distribution is lp else StandaloneTinyClassifier
    for data in (datamodule, None):
        trainer = distribution.Trainer(**{**QUIET, "default_root_dir": tmp_path, "max_steps": 1}, callbacks=[probe()])
        trainer.fit(model(), datamodule=data)
    assert seen == [datamodule, None]


@pytest.mark.parametrize("every", [0, 1, 3])
def test_the_training_logging_step_follows_lightning_s_own_cadence(tmp_path, every):
    """Every `log_every_n_steps`-th step logs, and the step a stop was asked at: where Lightning's own logging does."""
    from lightning_superconv import _compat

    seen = []

    class Probe(lp.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                trainer.should_stop = True
            ours = _compat.training_logging_step(trainer)
            seen.append((ours, trainer._logger_connector.should_update_logs, _compat.logging_step(trainer)))

    trainer = lp.Trainer(
        **{**QUIET, "log_every_n_steps": every, "default_root_dir": tmp_path, "max_steps": 8}, callbacks=[Probe()]
    )
    trainer.fit(TinyClassifier())
    assert len(seen) == 5
    assert all(ours == (step if lightnings else None) for ours, lightnings, step in seen)
    logged = [ours for ours, _, _ in seen if ours is not None]
    assert logged == {0: [], 1: [0, 1, 2, 3, 4], 3: [2, 4]}[every]


@pytest.mark.parametrize(("distribution", "model"), [(lp, TinyClassifier), (pl, StandaloneTinyClassifier)])
def test_checkpoint_to_resume_is_true_at_fit_start_of_a_resume_only(tmp_path, distribution, model):
    """At `on_fit_start` of `fit(ckpt_path=...)` the checkpoint is still held (its training state loads next)."""
    inside = distribution.callbacks.ModelCheckpoint(dirpath=tmp_path / "inside", every_n_train_steps=2)
    trainer = distribution.Trainer(
        **{**QUIET, "default_root_dir": tmp_path, "max_steps": 2, "enable_checkpointing": True}, callbacks=[inside]
    )
    trainer.fit(module := model())
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    probe = type("Probe", (CompatProbe, distribution.Callback), {})()
    resumed = distribution.Trainer(**{**QUIET, "default_root_dir": tmp_path, "max_steps": 4}, callbacks=[probe])
    resumed.fit(module, ckpt_path=tmp_path / "two.ckpt")
    assert probe.seen["resume"] is True
    assert probe.seen["weights_only"] is False  # a full checkpoint
    assert resumed.global_step == 4
    # a fit `max_steps` ended counts its epoch as done; one written inside the epoch goes on with it from batch 2
    assert probe.seen["mid_epoch"] is False
    probe = type("Probe", (CompatProbe, distribution.Callback), {})()
    resumed = distribution.Trainer(**{**QUIET, "default_root_dir": tmp_path, "max_steps": 4}, callbacks=[probe])
    resumed.fit(module, ckpt_path=next((tmp_path / "inside").glob("*.ckpt")))
    assert probe.seen["mid_epoch"] is True
    assert probe.seen["reached"] == 2
    assert resumed.global_step == 4
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    probe = type("Probe", (CompatProbe, distribution.Callback), {})()
    weights_only = distribution.Trainer(**{**QUIET, "default_root_dir": tmp_path, "max_steps": 4}, callbacks=[probe])
    with pytest.raises(KeyError, match="contains only the model"):  # Lightning's own refusal, after `on_fit_start`
        weights_only.fit(module, ckpt_path=tmp_path / "weights.ckpt")
    assert probe.seen["weights_only"] is True


@pytest.mark.parametrize("distribution", [lp, pl])
def test_callback_of_finds_a_callback_of_the_running_lightning_by_class_name(tmp_path, distribution):
    """The first callback of Lightning class ``name`` (or a subclass), of the Trainer's own distribution; else None."""
    from lightning_superconv import _compat

    class MyMonitor(distribution.callbacks.LearningRateMonitor):
        pass

    monitor, accumulation = MyMonitor(), distribution.callbacks.GradientAccumulationScheduler({0: 1, 1: 2})
    trainer = distribution.Trainer(
        **QUIET, default_root_dir=tmp_path, callbacks=[accumulation, monitor], max_time={"minutes": 5}
    )
    assert _compat.callback_of(trainer, "LearningRateMonitor") is monitor
    assert _compat.callback_of(trainer, "GradientAccumulationScheduler") is accumulation
    assert isinstance(_compat.callback_of(trainer, "Timer"), distribution.callbacks.Timer)  # from `max_time`
    assert _compat.callback_of(trainer, "StochasticWeightAveraging") is None
    assert _compat.callback_of(trainer, "NoSuchCallback") is None


@pytest.mark.parametrize(("distribution", "model"), [(lp, TinyClassifier), (pl, StandaloneTinyClassifier)])
def test_overrides_hook_tells_the_users_hooks_from_lightnings_own(distribution, model):
    """A hook the module's class or a user's base class defines counts; Lightning's own (empty) ones do not."""
    from lightning_superconv import _compat

    class Base(model):
        def on_fit_start(self) -> None:
            pass

    class Module(Base):
        def on_train_start(self) -> None:
            pass

    module = Module()
    assert _compat.overrides_hook(module, "on_fit_start")
    assert _compat.overrides_hook(module, "on_train_start")
    assert not _compat.overrides_hook(module, "on_train_epoch_start")
    assert not _compat.overrides_hook(distribution.LightningModule(), "on_fit_start")
    assert not _compat.overrides_hook(module, "no_such_hook")


def test_a_user_package_named_like_the_standalone_distribution_is_not_taken_for_it(tmp_path):
    """A module of a package whose name begins with ``pytorch_lightning`` is read as the distribution it subclasses.

    Found in a review: a `lightning.pytorch` module defined in `pytorch_lightning_myproj` sent the range test to the
    standalone distribution's helpers, and its trials crashed with "Expected a parent".
    """
    from lightning_superconv import _compat

    ProjectModel = type("ProjectModel", (TinyClassifier,), {"__module__": "pytorch_lightning_myproj.models"})
    assert _compat.namespace(ProjectModel()) == "lightning.pytorch"
    assert _compat.namespace(StandaloneTinyClassifier()) == "pytorch_lightning"
    callback = SuperConvergence(num_steps=20, trial_steps=50)
    trainer = lp.Trainer(**QUIET, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(ProjectModel())
    assert callback.result is not None
    assert callback.result.trials


@pytest.mark.parametrize("distribution", [lp, pl])
def test_weight_averages_are_the_averaged_models_of_weight_averaging_callbacks(tmp_path, distribution):
    """``WeightAveraging`` (``EMAWeightAveraging``) builds its ``AveragedModel`` in ``setup``: found from then on."""
    from torch.optim.swa_utils import AveragedModel

    from lightning_superconv import _compat

    averaging = distribution.callbacks.EMAWeightAveraging(decay=0.9)
    trainer = distribution.Trainer(**QUIET, default_root_dir=tmp_path, callbacks=[averaging], max_steps=1)
    assert _compat.weight_averages(trainer) == []  # none before `setup`
    seen = []
    probe = type("Probe", (distribution.Callback,), {"on_train_start": lambda s, t, m: seen.extend(
        _compat.weight_averages(t))})()  # fmt: skip
    trainer.callbacks.append(probe)
    trainer.fit(TinyClassifier() if distribution is lp else StandaloneTinyClassifier())
    (average,) = seen
    assert isinstance(average, AveragedModel)
    assert average is averaging._average_model
    plain = distribution.Trainer(**QUIET, default_root_dir=tmp_path)
    assert _compat.weight_averages(plain) == []


def test_placeholder_optimizer_and_scaler_are_recognised(tmp_path):
    """`configure_optimizers` returning None leaves Lightning's stand-in; `16-mixed` on CPU has a real scaler."""
    from lightning_superconv import _compat

    class NoOptimizer(TinyClassifier):
        def configure_optimizers(self):
            return None

    seen = {}

    class Look(lp.Callback):
        def on_fit_start(self, trainer, pl_module):
            seen["placeholder"] = _compat.is_placeholder_optimizer(trainer, trainer.optimizers[0])
            seen["scaler"] = _compat.grad_scaler(trainer)

    lp.Trainer(**{**QUIET, "max_steps": 1, "default_root_dir": tmp_path}, callbacks=[Look()]).fit(NoOptimizer())
    assert seen["placeholder"] is True
    fp16 = lp.plugins.MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    lp.Trainer(**{**QUIET, "max_steps": 1, "default_root_dir": tmp_path}, plugins=[fp16], callbacks=[Look()]).fit(
        TinyClassifier()
    )
    assert isinstance(seen["scaler"], torch.amp.GradScaler)


@pytest.mark.parametrize("distribution", [lp, pl])
def test_tensorboard_event_writer_is_found_for_plain_tensorboard_only(tmp_path, distribution):
    """A TensorBoardLogger without prefix gives its event writer; with a prefix, its own `log_metrics`, or CSV: None."""
    from lightning_superconv import _compat

    plain = distribution.loggers.TensorBoardLogger(tmp_path)
    assert hasattr(_compat.tensorboard_event_writer(plain), "add_summary")
    assert _compat.tensorboard_event_writer(distribution.loggers.TensorBoardLogger(tmp_path, prefix="p")) is None
    assert _compat.tensorboard_event_writer(distribution.loggers.CSVLogger(tmp_path)) is None

    class OwnLogMetrics(distribution.loggers.TensorBoardLogger):
        def log_metrics(self, metrics, step=None):
            super().log_metrics(metrics, step)

    class Inherited(distribution.loggers.TensorBoardLogger):
        pass

    assert _compat.tensorboard_event_writer(OwnLogMetrics(tmp_path)) is None
    assert hasattr(_compat.tensorboard_event_writer(Inherited(tmp_path)), "add_summary")


@pytest.mark.parametrize(
    ("strategy", "devices", "copies"),
    [("auto", 1, False), ("ddp", 2, False), ("ddp_spawn", 2, True), ("ddp_fork", 2, True), ("ddp_notebook", 2, True)],
)
@pytest.mark.parametrize("namespace", [lp, pl], ids=["lightning", "pytorch_lightning"])
def test_launches_copies_reads_the_multiprocessing_launcher(namespace, strategy, devices, copies):
    """Spawned or forked workers run copies of the callbacks; `ddp` starts the script again (this process is rank 0)."""
    trainer = namespace.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False)
    assert _compat.launches_copies(trainer) is copies


def test_reshard_puts_fsdp2_modules_at_rest_after_a_forward_without_backward(tmp_path):
    """After an evaluation, FSDP2's root registers unsharded tensors; ``reshard`` registers its DTensor shards again."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        mesh = init_device_mesh("cpu", (1,))
        fully_shard(net[0], mesh=mesh)
        fully_shard(net, mesh=mesh)
        assert _compat.fully_sharded_modules(net) == [net, net[0]]
        assert _compat.fully_sharded_modules(torch.nn.Linear(2, 2)) == []
        with torch.no_grad():
            net(torch.randn(3, 4))
        assert not hasattr(net[1].weight, "full_tensor")  # the root stays unsharded after a forward alone
        _compat.reshard(_compat.fully_sharded_modules(net))
        assert all(hasattr(p, "full_tensor") for p in net.parameters())
        net(torch.randn(3, 4)).sum().backward()  # and trains on
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("imported_first", "logger"),
    [
        ("import pytorch_lightning", "pytorch_lightning.utilities.rank_zero"),
        ("import lightning.pytorch", "lightning.pytorch.utilities.rank_zero"),
        ("pass", "lightning.pytorch.utilities.rank_zero"),
    ],
    ids=["pytorch_lightning user", "lightning user", "imported first"],
)
def test_importing_the_package_leaves_lightning_s_lines_on_the_user_s_distribution_s_logger(imported_first, logger):
    """Both distributions set one logger shared in `lightning_utilities` at import; the package imports both.

    Found trying the package as a new user: a `pytorch_lightning` user's `logging.getLogger("pytorch_lightning")
    .setLevel(logging.ERROR)` no longer silenced Lightning's lines (nor ours) after `import lightning_superconv`, which
    had moved them to `lightning.pytorch`'s logger (and a `lightning` user's to the other's). In a new process: the
    imports are the test.
    """
    import subprocess
    import sys

    code = (
        f"{imported_first}\nimport lightning_superconv\nimport lightning_utilities.core.rank_zero as shared\n"
        "print(shared.log.name, shared.rank_zero_deprecation_category.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    name, category = done.stdout.split()
    assert name == logger
    assert category.startswith("lightning_fabric" if logger.startswith("pytorch_lightning") else "lightning.fabric")
