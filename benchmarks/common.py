"""Shared pieces of the benchmarks: the model/optimizer pairs, the Fashion-MNIST regime, one training run.

Every run trains through a real ``Trainer`` with ``SuperConvergence``: the oracle grid passes ``max_lr=`` (no range
test), the auto pick passes nothing, so the two differ in the peak LR alone. Model selection uses a validation split
carved from the training set; the test set is only ever reported.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from examples.fashion_mnist_data import FashionMNISTDataModule
from lightning_superconv import SuperConvergence

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Pair:
    """A model and the optimizer a user would configure for it, untuned."""

    name: str
    build: Callable[[], nn.Module]
    optimizer: str  # "sgd", "nesterov" or "adamw"
    lr: float  # the configured LR (only its ratio across groups matters to the callback)
    weight_decay: float
    grid: tuple[float, ...]  # the oracle's max-LR grid, x2 apart
    held_out: bool = False


def bn_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )  # fmt: skip


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def _grid(center: float, points: int = 9) -> tuple[float, ...]:
    return tuple(center * 2.0 ** (i - points // 2) for i in range(points))


PAIRS = {
    p.name: p
    for p in [
        Pair("bn_cnn_sgd", bn_cnn, "sgd", 0.01, 5e-4, _grid(0.2)),
        Pair("mlp_adamw", mlp, "adamw", 1e-3, 1e-2, _grid(4e-3)),
        Pair("lenet_nesterov", lenet, "nesterov", 0.01, 5e-4, _grid(0.1), held_out=True),
    ]
}


class BenchModule(L.LightningModule):
    """A plain classifier: cross-entropy, the pair's optimizer at the user's untuned LR and weight decay."""

    def __init__(self, pair: Pair, weight_decay: float | None = None) -> None:
        super().__init__()
        self.pair = pair
        self.net = pair.build()
        self.weight_decay = pair.weight_decay if weight_decay is None else weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        p = self.pair
        if p.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=p.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(
            self.parameters(), lr=p.lr, momentum=0.9, nesterov=p.optimizer == "nesterov", weight_decay=self.weight_decay
        )


@torch.no_grad()
def accuracy(model: nn.Module, dataset: torch.utils.data.TensorDataset) -> float:
    model.eval()
    x, y = dataset.tensors
    correct = sum(int((model(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
    return 100.0 * correct / len(y)


def datamodule(train_size: int, seed: int = 0) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(batch_size=128, train_size=train_size, val_size=5000, seed=seed)
    dm.setup()
    return dm


def trainer(epochs: int, callbacks: list[Any], **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10_000,  # no validation loop (`limit_val_batches=0` would hide the data)
        **kwargs,
    )


def train_run(
    pair: Pair,
    seed: int,
    dm: FashionMNISTDataModule,
    epochs: int,
    max_lr: float | None = None,
    weight_decay: float | None = None,
    extra_callbacks: list[Any] | None = None,
    guard: bool = True,
) -> dict[str, Any]:
    """One one-cycle run: ``max_lr`` None runs the range test. Returns accuracies, the max LR used and timings.

    ``guard=False`` trains a plain one-cycle at ``max_lr`` (the oracle grids: a peak too high shows what it does).
    """
    L.seed_everything(seed, verbose=False)
    model = BenchModule(pair, weight_decay)
    sc = SuperConvergence(max_lr=max_lr, guard=guard)
    start = time.perf_counter()
    trainer(epochs, [sc, *(extra_callbacks or [])]).fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    out = {
        "max_lr": sc.max_lr,
        "val_acc": accuracy(model, dm.val_set),
        "test_acc": accuracy(model, dm.test_set),
        "seconds": seconds,
    }
    if sc.result is not None:
        out["curve"] = {"lrs": sc.result.lrs, "losses": sc.result.losses}
    return out


def load_cache(name: str) -> dict[str, Any]:
    path = RESULTS_DIR / name
    return json.loads(path.read_text()) if path.exists() else {}


def save_cache(name: str, data: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean."""
    m = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, sem
