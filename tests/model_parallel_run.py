r"""Two-process ``ModelParallelStrategy`` runs on CPU (gloo) for ``test_model_parallel.py``: ``python ... OUT_DIR``.

Run as a script, never imported by a test: Lightning starts rank 1 by running this same command again, as it does for
a user's training script. Each rank writes what it saw to ``OUT_DIR/rank{r}.json``; the test compares the ranks and
the runs.

1. FSDP2 (``fully_shard`` on each linear layer and on the network, in ``configure_model``) over both ranks as data
   parallel: ``SuperConvergence`` runs its range test and ``WeightDecayBalancer`` its balance, on parameters and
   optimizer state held as DTensor shards; a checkpoint is written at the end of each epoch.
2. The same run given the pick as ``max_lr``: it must end bit-identical (the range test put every shard back), with
   the state-dict hooks FSDP2 registered at the first forward, which came in the range test.
3. A resume from the first epoch's checkpoint with ``SuperConvergence()`` and no ``max_lr``: the strategy loads the
   checkpoint only after ``on_fit_start``, after a range test ran on the weights not yet restored; its pick must be
   discarded for the checkpoint's cycle (not logged: the resumed run's logger gets the cycle), and a warning say
   so. Then the same resume given another ``max_lr`` and
   ``pct_start``: both are said to apply to new fits only.
4. A cycle far too high (``max_lr=50``): the divergence guard rolls each rank's shards and buffers back to the step
   of its snapshot, on both ranks at the same steps.
5. Tensor parallelism (``parallelize_module``, column- then row-wise), both ranks holding halves of each layer and
   seeing the same batches: the range test, then the run given its pick.
6. A resume from the middle of an epoch, from torchdata's ``StatefulDataLoader``, with ``SuperConvergence(max_lr=...)``
   and without it: both must train on from the loader's saved position.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import warnings


def main(out: str) -> None:  # noqa: D103
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import lightning as L
    import torch
    from helpers import TinyClassifier, make_dataset, two_rank_trainer_kwargs
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    from torch.utils.data import DataLoader, Subset

    from lightning_superconv import SuperConvergence, WeightDecayBalancer

    torch.set_num_threads(1)

    class Recorded(TinyClassifier):
        """Records the LR of every training step the Trainer counts; validates on samples of the training draw."""

        def __init__(self, **kwargs) -> None:
            super().__init__(batch_size=16, **kwargs)
            self.data = make_dataset(self.hparams.n + 64)
            self.lrs: dict[int, float] = {}

        def training_step(self, batch, batch_idx):
            self.lrs[int(self.trainer.global_step)] = float(self.trainer.optimizers[0].param_groups[0]["lr"])
            return super().training_step(batch, batch_idx)

        def train_dataloader(self):
            train = Subset(self.data, range(self.hparams.n))
            return DataLoader(train, batch_size=self.hparams.batch_size, shuffle=True)

        def val_dataloader(self):  # held out from the same draw: the trials' scores can fall
            return DataLoader(Subset(self.data, range(self.hparams.n, len(self.data))), batch_size=32)

        def state(self) -> list[float]:
            """This rank's own values: its shards of the parameters (a DTensor's local part) and its buffers."""
            own = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in self.parameters()]
            return [float(v) for v in torch.cat([t.flatten().double() for t in [*own, *self.buffers()]])]

    class States(Callback):
        """The module's :meth:`Recorded.state` at train start (step 0) and after each step's callbacks before it."""

        def __init__(self) -> None:
            self.at: dict[int, list[float]] = {}

        def on_train_start(self, trainer, pl_module) -> None:
            self.at[0] = pl_module.state()

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.at[int(trainer.global_step)] = pl_module.state()

    class Sharded(Recorded):
        """FSDP2 over the data-parallel ranks."""

        def configure_model(self) -> None:
            if any(hasattr(p, "full_tensor") for p in self.parameters()):
                return
            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    class TensorParallel(Recorded):
        """Each rank holds half of the hidden layer: its rows of the first weight, its columns of the second."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

        def configure_model(self) -> None:
            if any(hasattr(p, "full_tensor") for p in self.parameters()):
                return
            plan = {"0": ColwiseParallel(), "2": RowwiseParallel()}
            parallelize_module(self.net, self.device_mesh["tensor_parallel"], plan)

    def state_dict_hooks(model) -> list[int]:
        """The state-dict hooks FSDP2 registers on each sharded layer at its first forward, which it never repeats."""
        layers = [layer for layer in model.net if isinstance(layer, nn.Linear)]
        return [len(layer._state_dict_pre_hooks) + len(layer._load_state_dict_pre_hooks) for layer in layers]

    common = two_rank_trainer_kwargs(out)

    def fsdp2() -> ModelParallelStrategy:
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)

    def fit(model, callbacks, strategy, ckpt_path=None, checkpoints=None, **kwargs) -> L.Trainer:
        extra = [ModelCheckpoint(checkpoints, save_top_k=-1, save_on_train_epoch_end=True)] if checkpoints else []
        trainer = L.Trainer(
            callbacks=callbacks + extra,
            strategy=strategy,
            enable_checkpointing=bool(checkpoints),
            **{**common, **kwargs},
        )
        trainer.fit(model, ckpt_path=ckpt_path)
        return trainer

    report: dict = {}
    checkpoints = os.path.join(out, "checkpoints")

    # 1. the range test and the balancer under FSDP2
    L.seed_everything(0, verbose=False)
    superconv, balancer = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10), WeightDecayBalancer(mode="timescale")
    trainer = fit(
        model := Sharded(), [superconv, balancer], fsdp2(), checkpoints=checkpoints, max_epochs=2,
        limit_train_batches=4,
    )  # fmt: skip
    report["rank"] = trainer.global_rank
    report["result"] = superconv.result.to_dict()
    report["max_lr"] = superconv.max_lr
    report["weight_decays"] = balancer.weight_decays
    report["global_step"] = trainer.global_step
    report["lrs"] = model.lrs
    report["state"] = model.state()
    report["sharded"] = all(hasattr(p, "full_tensor") for p in model.parameters())
    report["state_dict_hooks"] = state_dict_hooks(model)

    # 2. the run given the pick
    L.seed_everything(0, verbose=False)
    given = [SuperConvergence(max_lr=superconv.max_lr), WeightDecayBalancer(mode="timescale")]
    fit(model := Sharded(), given, fsdp2(), max_epochs=2, limit_train_batches=4)
    report["given_state"] = model.state()
    report["given_state_dict_hooks"] = state_dict_hooks(model)
    report["given_weight_decays"] = given[1].weight_decays

    # 3. a resume from the first epoch's checkpoint, no max_lr given; then given another max_lr and pct_start
    first_epoch = sorted(glob.glob(os.path.join(checkpoints, "epoch=0-*")))[0]
    L.seed_everything(0, verbose=False)
    resumed = [SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10), WeightDecayBalancer(mode="timescale")]
    logs = os.path.join(out, "resumed_logs")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fit(
            model := Sharded(), resumed, fsdp2(), ckpt_path=first_epoch, max_epochs=2, limit_train_batches=4,
            logger=CSVLogger(logs, name="", version=0), log_every_n_steps=1,
        )  # fmt: skip
    report["resumed_said"] = [str(w.message) for w in said if "SuperConvergence" in str(w.message)]
    # what the resumed run's logger got (rank 0 writes it): the cycle that ran, not the discarded range test
    metrics = os.path.join(logs, "version_0", "metrics.csv")
    report["resumed_logged"] = []
    if os.path.exists(metrics):
        with open(metrics) as columns:
            report["resumed_logged"] = columns.readline().strip().split(",")
    report["resumed_lrs"] = model.lrs
    report["resumed_max_lr"] = resumed[0].max_lr
    report["resumed_result"] = resumed[0].result.to_dict()
    report["resumed_weight_decays"] = resumed[1].weight_decays
    L.seed_everything(0, verbose=False)
    other = SuperConvergence(max_lr=0.123, pct_start=0.5)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fit(model := Sharded(), [other], fsdp2(), ckpt_path=first_epoch, max_epochs=2, limit_train_batches=4)
    report["given_anew_said"] = [str(w.message) for w in said if "SuperConvergence" in str(w.message)]
    report["given_anew_lrs"] = model.lrs

    # 4. the divergence guard under FSDP2
    L.seed_everything(0, verbose=False)
    guarded, states = SuperConvergence(max_lr=50.0), States()
    fit(Sharded(n=512), [guarded, states], fsdp2(), max_epochs=4)
    report["rescues"] = guarded.rescues
    # right after each rescue, this rank's shards, buffers included, are those of the step it rolled back to
    report["rolled_back"] = [states.at[r["step"]] == states.at[r["restored_step"]] for r in guarded.rescues]
    report["moved_since"] = [states.at[r["step"] - 1] != states.at[r["restored_step"]] for r in guarded.rescues]

    # 5. tensor parallelism: the range test, then the run given its pick
    tensor_parallel = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    L.seed_everything(0, verbose=False)
    picked = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10)
    fit(model := TensorParallel(), [picked], tensor_parallel, max_epochs=2, limit_train_batches=4)
    report["tp_result"] = picked.result.to_dict()
    report["tp_state"] = model.state()
    L.seed_everything(0, verbose=False)
    tensor_parallel = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
    fit(model := TensorParallel(), [SuperConvergence(max_lr=picked.max_lr)], tensor_parallel, max_epochs=2,
        limit_train_batches=4)  # fmt: skip
    report["tp_given_state"] = model.state()

    # 6. a resume from the middle of an epoch, from a stateful loader: with SuperConvergence, which loads the train data
    # in `on_fit_start` to size its cycle, before this strategy restores the loader's position
    class FromStatefulLoader(Sharded):
        """Trains from torchdata's `StatefulDataLoader`, unshuffled; records each batch's first sample."""

        def __init__(self) -> None:
            super().__init__()
            self.firsts: list[int] = []

        def train_dataloader(self):
            from torchdata.stateful_dataloader import StatefulDataLoader

            n = self.hparams.n
            x, y = self.data.tensors
            return StatefulDataLoader(torch.utils.data.TensorDataset(x[:n], y[:n], torch.arange(n)), batch_size=16)

        def training_step(self, batch, batch_idx):
            self.firsts.append(int(batch[2][0]))
            return super().training_step(batch[:2], batch_idx)

    mid_epoch = os.path.join(out, "mid_epoch")
    L.seed_everything(0, verbose=False)
    saver = ModelCheckpoint(mid_epoch, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    L.Trainer(
        callbacks=[saver, SuperConvergence(max_lr=0.1)], strategy=fsdp2(), max_steps=3, max_epochs=1,
        limit_val_batches=0, **common,
    ).fit(FromStatefulLoader())  # fmt: skip
    for name, callbacks in (("plain", []), ("superconvergence", [SuperConvergence(max_lr=0.1)])):
        L.seed_everything(0, verbose=False)
        fit(model := FromStatefulLoader(), callbacks, fsdp2(), ckpt_path=os.path.join(mid_epoch, "step=3.ckpt"),
            max_epochs=1, limit_train_batches=None, limit_val_batches=0)  # fmt: skip
        report[f"mid_epoch_firsts_{name}"] = model.firsts

    with open(os.path.join(out, f"rank{report['rank']}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
