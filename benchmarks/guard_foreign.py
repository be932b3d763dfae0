"""Models of kinds the pick zoo lacks, on which trying the package as a new user found the guard firing on good runs.

Each is written here for the guard benchmark's part 4 (not copied from anywhere): a loss that lies flat before it
falls (a GRU on a marked-sum task), a loss that crosses zero (a Gaussian negative log-likelihood), and a regression on
batches of 4, whose losses scatter by several times their level. Each trains with ``SuperConvergence()`` (its own
range test and trials), with the guard on and off; the score is higher-is-better on a held-out test set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def _marked_sum(n: int, seed: int, length: int = 30) -> TensorDataset:
    """Sequences of uniform values in [-1, 1], two of them marked; the label says whether the marked two sum above 0."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=gen) * 2 - 1
    marks = torch.zeros(n, length)
    picks = torch.rand(n, length, generator=gen).argsort(dim=1)[:, :2]
    marks.scatter_(1, picks, 1.0)
    labels = ((values * marks).sum(dim=1) > 0).long()
    return TensorDataset(torch.stack([values, marks], dim=-1), labels)


class MarkedSumGRU(L.LightningModule):
    """A GRU reads the sequence; its last state classifies. The loss sits at ln 2 until the marks are found."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(2, 48, batch_first=True)
        self.head = nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(x)
        return self.head(hidden[-1])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _friedman(n: int, seed: int) -> TensorDataset:
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=n, noise=1.0, random_state=seed)
    y = (y - 14.4) / 5.0  # about zero mean, unit spread
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))


class GaussianNLLRegressor(L.LightningModule):
    """An MLP predicts a mean and a log-variance; its loss, the Gaussian negative log-likelihood, goes below zero."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.net(x).unbind(dim=-1)
        return mean, log_var.clamp(-10.0, 10.0)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        mean, log_var = self(x)
        return F.gaussian_nll_loss(mean, y, log_var.exp())

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _diabetes(split: str) -> TensorDataset:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(7))
    part = {"train": index[:300], "val": index[300:370], "test": index[370:]}[split]
    return TensorDataset(torch.tensor(x[part], dtype=torch.float32), torch.tensor(y[part], dtype=torch.float32))


class TinyBatchRegressor(L.LightningModule):
    """An MLP regression, SGD with momentum on batches of 4: its batch losses scatter by several times their level."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


@torch.no_grad()
def _accuracy(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    return 100.0 * float((model(x).argmax(dim=1) == y).float().mean())


@torch.no_grad()
def _neg_nll(model: GaussianNLLRegressor, data: TensorDataset) -> float:
    x, y = data.tensors
    mean, log_var = model(x)
    return -float(F.gaussian_nll_loss(mean, y, log_var.exp()))


@torch.no_grad()
def _r2(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    residual = float(((model(x) - y) ** 2).sum())
    return 100.0 * (1.0 - residual / float(((y - y.mean()) ** 2).sum()))


@dataclass(frozen=True)
class ForeignTask:
    """One model, its data, its run length and its score (higher is better)."""

    name: str
    what: str
    score_name: str
    make: Callable[[], L.LightningModule]
    data: Callable[[], tuple[TensorDataset, TensorDataset, TensorDataset]]
    batch_size: int
    epochs: int
    score: Callable[[Any, TensorDataset], float]
    trainer_kwargs: dict[str, Any]


FOREIGN_TASKS = {
    task.name: task
    for task in [
        ForeignTask(
            "gru_marked_sum", "GRU, Adam, a loss at ln 2 before it falls", "accuracy %", MarkedSumGRU,
            lambda: (_marked_sum(3000, 0), _marked_sum(500, 1), _marked_sum(1000, 2)), 64, 3, _accuracy,
            {"gradient_clip_val": 1.0},
        ),
        ForeignTask(
            "gaussian_nll_friedman", "MLP, Adam, Gaussian NLL (below zero)", "-NLL", GaussianNLLRegressor,
            lambda: (_friedman(2000, 0), _friedman(400, 1), _friedman(1000, 2)), 32, 8, _neg_nll, {},
        ),
        ForeignTask(
            "diabetes_batch4_sgd", "MLP, SGD, batches of 4", "R² x 100", TinyBatchRegressor,
            lambda: (_diabetes("train"), _diabetes("val"), _diabetes("test")), 4, 5, _r2, {},
        ),
    ]
}  # fmt: skip


def foreign_run(task: ForeignTask, seed: int, guard: bool) -> dict[str, Any]:
    """``SuperConvergence(guard=guard)`` on ``task`` at ``seed``: the pick, the rescues, the test score."""
    from lightning_superconv import DivergenceError, SuperConvergence

    train, val, test = task.data()
    L.seed_everything(seed, verbose=False)
    model = task.make()
    sc = SuperConvergence(guard=guard)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=task.epochs, callbacks=[sc], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=10_000, **task.trainer_kwargs,
    )  # fmt: skip
    error = None
    try:
        trainer.fit(model, DataLoader(train, batch_size=task.batch_size, shuffle=True), DataLoader(val, batch_size=256))
    except DivergenceError as err:
        error = str(err)
    model.eval()
    score = task.score(model, test)
    return {
        "test": score if score == score else None, "pick": sc.result.max_lr if sc.result else None,
        "rescues": sc.rescues, "error": error,
    }  # fmt: skip
