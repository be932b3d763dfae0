"""Write the checkpoint that ``tests/test_checkpoint_compat.py`` resumes from (run once, with release 0.1.0's code).

A run with both callbacks is stopped after 8 of its 16 steps, and the same run uninterrupted records its LR, momentum
and weight decay at every step and its final weights. Later versions of the package must resume the stopped run from
this file and end exactly where the uninterrupted 0.1.0 run ended. Written at commit 597835d::

    python tests/data/write_checkpoint_v0_1_0.py
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent


def dataset(n: int = 128) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=gen)
    y = (x @ torch.randn(16, 4, generator=gen)).argmax(dim=1)
    return TensorDataset(x, y)


class Classifier(L.LightningModule):
    """BatchNorm, SGD with momentum and weight decay, no dropout and a fixed data order (comparable bit for bit)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_dataloader(self):
        return DataLoader(dataset(), batch_size=32)


class Schedule(Callback):
    """Each step's LR, momentum and weight decay (first param group)."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        self.rows.append([group["lr"], group["momentum"], group["weight_decay"]])


class Stopped(Exception):
    """Stands for the job being killed."""


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Stopped


def callbacks():
    from lightning_superconv import SuperConvergence, WeightDecayBalancer

    return [SuperConvergence(num_steps=15, lr_range=(1e-3, 10.0)), WeightDecayBalancer()]


def trainer(root: Path, extra: list) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root, accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[*callbacks(), *extra],
    )  # fmt: skip


def main() -> None:
    import tempfile

    torch.set_num_threads(1)  # as the test suite runs
    with tempfile.TemporaryDirectory() as tmp:
        L.seed_everything(0, verbose=False)
        checkpoint = ModelCheckpoint(dirpath=tmp, filename="stopped", every_n_train_steps=8, save_top_k=-1)
        with contextlib.suppress(Stopped):
            trainer(Path(tmp), [checkpoint, StopAt(9)]).fit(Classifier())
        (HERE / "v0_1_0_stopped_at_step_8.ckpt").write_bytes((Path(tmp) / "stopped.ckpt").read_bytes())
    L.seed_everything(0, verbose=False)
    model, schedule = Classifier(), Schedule()
    with tempfile.TemporaryDirectory() as tmp:
        trainer(Path(tmp), [schedule]).fit(model)
    torch.save({"state_dict": model.state_dict(), "schedule": schedule.rows}, HERE / "v0_1_0_uninterrupted_final.pt")


if __name__ == "__main__":
    main()
