"""Small models and data for the integration tests: fast on two CPU cores, but with what the range test must respect.

``TinyClassifier`` has BatchNorm (buffers that change in train mode) and dropout (global RNG), logs from
``training_step``, and trains on a shuffled loader, so an imperfect restore shows up as a different final model.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytorch_lightning as pl
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_dataset(n: int = 256, features: int = 16, classes: int = 4, seed: int = 0) -> TensorDataset:
    """A linearly separable-ish classification set, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen)
    w = torch.randn(features, classes, generator=gen)
    y = (x @ w + 0.5 * torch.randn(n, classes, generator=gen)).argmax(dim=1)
    return TensorDataset(x, y)


class _TinyClassifierSteps:
    """Steps, optimizer and data of ``TinyClassifier``, shared by its ``lightning`` and ``pytorch_lightning`` forms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            raise ValueError(hp.optimizer)
        if hp.scheduler == "step":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=5)}
        if hp.scheduler == "named":  # a scheduler config with a name, under which LearningRateMonitor logs the LR
            scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "name": "my_lr"}}
        return opt

    def train_dataloader(self):
        return DataLoader(make_dataset(self.hparams.n), batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(make_dataset(64, seed=1), batch_size=32)


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))


class TinyClassifier(_TinyClassifierSteps, L.LightningModule):
    """An MLP with BatchNorm and dropout; SGD with momentum unless told otherwise."""

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
        batch_size: int = 32,
        n: int = 256,
        scheduler: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = _tiny_net()


class BackboneClassifier(TinyClassifier):
    """A `backbone` that `BackboneFinetuning` freezes at first and unfreezes at epoch 1, adding a param group."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 16), nn.ReLU())
        self.net[3] = nn.Identity()

    def forward(self, x):
        return self.net(self.backbone(x))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(make_dataset(128), batch_size=32)


class WithOptimizer(TinyClassifier):
    """``TinyClassifier`` trained with the optimizer ``build`` makes of its parameters."""

    def __init__(self, build) -> None:
        super().__init__()
        self.build = build

    def configure_optimizers(self):
        return self.build(self.parameters())


class DictValidationBatches(TinyClassifier):
    """Validation batches are dicts with ids beside the inputs and targets; ``training_step`` unpacks ``(x, y)``.

    The form of validation data in many real modules; ``training_step`` fails on such a batch.
    """

    def val_dataloader(self):
        x, y = make_dataset(64, seed=1).tensors
        return DataLoader([{"x": x[i], "y": y[i], "id": i} for i in range(len(x))], batch_size=32)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.cross_entropy(self(batch["x"]), batch["y"]))


class ShuffledValidation(TinyClassifier):
    """Validates on a shuffled loader that owns its generator, kept for the run; records each epoch's first batch.

    The loader lives as long as the module (as one passed to ``fit`` does), so whatever draws from its generator
    before the run validates changes the order the run's validation sees.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        generator = torch.Generator().manual_seed(1)
        self.val_loader = DataLoader(make_dataset(128, seed=1), batch_size=16, shuffle=True, generator=generator)
        self.first_val_targets: list[torch.Tensor] = []

    def val_dataloader(self):
        return self.val_loader

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.first_val_targets.append(batch[1].clone())
        return super().validation_step(batch, batch_idx)


class StandaloneTinyClassifier(_TinyClassifierSteps, pl.LightningModule):
    """``TinyClassifier`` written against the standalone ``pytorch_lightning`` distribution."""

    def __init__(
        self,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
        batch_size: int = 32,
        n: int = 256,
        scheduler: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = _tiny_net()


def trainer_kwargs(tmp_path, **overrides):
    """Quiet, CPU-only Trainer arguments for tests."""
    kwargs = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10_000,  # no validation loop; the trials still read the val data
    )
    kwargs.update(overrides)
    return kwargs


@functools.total_ordering
class Tally:
    r"""A count kept in one object, for modules that count their calls, range-test steps included.

    The range test puts a module's attributes back when it ends (a plain ``self.calls += 1`` would read as if it
    never ran), but leaves objects changed in place alone: ``+=`` on a ``Tally`` changes it in place.
    """

    def __init__(self) -> None:
        self.count = 0

    def __iadd__(self, other: int) -> Tally:
        self.count += int(other)
        return self

    def __int__(self) -> int:
        return self.count

    __index__ = __int__

    def __mod__(self, other: int) -> int:
        return self.count % other

    def __sub__(self, other: int) -> int:
        return self.count - int(other)

    def __eq__(self, other: object) -> bool:
        return self.count == int(other) if isinstance(other, (int, Tally)) else NotImplemented

    def __lt__(self, other: int | Tally) -> bool:
        return self.count < int(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Tally({self.count})"


class OwnRandomSampler(torch.utils.data.Sampler):
    """A sampler that keeps its generator under a name of its own, of any of the kinds samplers use."""

    def __init__(self, n: int, kind: str) -> None:
        self.n, self.kind = n, kind
        if kind == "torch":
            self.gen = torch.Generator().manual_seed(0)
        elif kind == "numpy":
            self.rng = np.random.default_rng(0)
        elif kind == "numpy_legacy":
            self.state = np.random.RandomState(0)
        else:
            self.shuffler = random.Random(0)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.kind == "torch":
            return iter(torch.randperm(self.n, generator=self.gen).tolist())
        if self.kind == "numpy":
            return iter(self.rng.permutation(self.n).tolist())
        if self.kind == "numpy_legacy":
            return iter(self.state.permutation(self.n).tolist())
        order = list(range(self.n))
        self.shuffler.shuffle(order)
        return iter(order)


class TimmViT(L.LightningModule):
    """A tiny timm ViT built with timm's optimizer factory and layer decay (each layer's LR share in ``lr_scale``).

    ``scheduler``: None, or timm's ``CosineLRScheduler`` stepped per update (``"update"``) or per epoch (``"epoch"``)
    through the ``lr_scheduler_step`` override Lightning requires for it, as timm's documentation shows.
    """

    def __init__(self, scheduler: str | None = None) -> None:
        super().__init__()
        import timm

        self.scheduler = scheduler
        self.net = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2, embed_dim=16, num_heads=2,
            num_classes=4,
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        import timm.optim
        from timm.scheduler import CosineLRScheduler

        optimizer = timm.optim.create_optimizer_v2(self.net, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
        if self.scheduler is None:
            return optimizer
        per_update = self.scheduler == "update"
        scheduler = CosineLRScheduler(optimizer, t_initial=8 if per_update else 2, t_in_epochs=not per_update)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step" if per_update else "epoch"},
        }

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if self.scheduler == "update":
            scheduler.step_update(num_updates=self.global_step)
        else:
            scheduler.step(epoch=self.current_epoch)  # as Lightning's docs show

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(64, 3, 16, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen))
        return DataLoader(data, batch_size=16)


class MemoryLogger(Logger):
    """Keeps every logged metric."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


class OneCorruptSample(TinyClassifier):
    """One training sample of 512 holds a NaN feature: any batch that draws it has a NaN loss, at any LR."""

    def train_dataloader(self):
        x, y = make_dataset(512).tensors
        x[100, 3] = float("nan")
        return DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)


def two_rank_trainer_kwargs(out: str, **overrides: Any) -> dict[str, Any]:
    """The Trainer arguments of the two-process CPU runs (``ddp_run.py``, ``model_parallel_run.py``).

    Each rank has its own ``default_root_dir`` and no logger, as on machines without a shared filesystem; no
    validation loop runs (the trials still read the val data).
    """
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10_000,
        default_root_dir=os.path.join(out, f"root{os.environ.get('LOCAL_RANK', '0')}"),
    )
    return {**kwargs, **overrides}


def run_two_ranks(script: str, out: Any, timeout: int) -> list[dict[str, Any]]:
    """Run ``script OUT`` as a user runs a training script (Lightning starts rank 1 by running it again).

    Returns what each rank wrote to ``OUT/rank{r}.json``, in rank order.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, script, str(out)], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    reports = [os.path.join(out, f"rank{r}.json") for r in range(2)]
    log = done.stdout[-3000:] + done.stderr[-6000:]
    assert done.returncode == 0, log
    assert all(os.path.exists(p) for p in reports), log
    return [json.loads(Path(p).read_text()) for p in reports]


class _OneShot(torch.utils.data.IterableDataset):
    """Yields its samples once: each ``__iter__`` continues the one iterator (a stream that cannot start over)."""

    def __init__(self, n: int) -> None:
        data = make_dataset(n)
        self.samples = iter([data[i] for i in range(len(data))])

    def __iter__(self):
        return self.samples


class OneShotClassifier(TinyClassifier):
    """Trains from a stream of ``n`` samples that can be read only once."""

    def __init__(self, n: int = 512, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stream_length = n

    def train_dataloader(self):
        return DataLoader(_OneShot(self.stream_length), batch_size=8)
