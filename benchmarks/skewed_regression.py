"""Regressions on skewed targets: is the model better with ``SuperConvergence()`` than at the user's constant LR?

Trying the package as a new user found an MLP regressing a skewed target with SGD at 0.01 (batch losses from about 0.1
to 5) on which the range test was read from noise: every trial of the search, 100-1000x below the LRs that train the
model, learned nothing, and the run ended at the loss of predicting the mean. This script runs seven variants of that
model (other data draws of scikit-learn's ``make_regression``, other skews, a Huber loss, Adam at 1e-3; written here,
after the report, for this check), two seeds each, three ways: the user's constant LR without the callback, and
``SuperConvergence()`` with the divergence guard on (the default) and off. The score is the mean validation loss at the
end (lower is better); the ratio is ours over the constant LR's.

The runs with the callback are cached per version of the package's code (``benchmarks/zoo``'s fingerprint), so the
table of an earlier version stays printable: ``--version 14cb8178c1`` is the code before the trials went on from the
optimizer's own LR (``lightning_superconv.peak.own_lr_peak``). Run from the repository root (about 5 minutes on 2 CPU
cores; results go to ``benchmarks/results/skewed_regression.json``)::

    python -m benchmarks.skewed_regression
    python -m benchmarks.skewed_regression --report   # the table from the cache, nothing run
"""

from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import load_cache, save_cache
from benchmarks.zoo.methods import code_fingerprint

CACHE = "skewed_regression.json"
SEEDS = (0, 1)
EPOCHS = 10


@dataclass(frozen=True)
class Variant:
    """One regression: a ``make_regression`` draw, how its target is skewed, the optimizer and the loss."""

    data_seed: int
    skew: str  # "square": y**2/50 + y; "cube": y**3/5000 + y; "exp": exp(y/100); then standardized
    optimizer: str  # "sgd": SGD at 0.01 with momentum 0.9; "adam": Adam at 1e-3
    loss: str  # "mse" or "huber"

    @property
    def name(self) -> str:
        return f"draw {self.data_seed}, {self.skew}, {self.optimizer}, {self.loss}"


VARIANTS = (
    Variant(1, "square", "sgd", "mse"),
    Variant(2, "square", "sgd", "mse"),
    Variant(0, "cube", "sgd", "mse"),
    Variant(0, "exp", "sgd", "mse"),
    Variant(0, "square", "sgd", "huber"),
    Variant(0, "square", "adam", "mse"),
    Variant(3, "cube", "adam", "huber"),
)


class SkewedRegressor(L.LightningModule):
    """A three-layer MLP on 20 features, with the variant's optimizer at the user's LR and its loss."""

    def __init__(self, optimizer: str, loss: str) -> None:
        super().__init__()
        self.optimizer_name, self.loss_name = optimizer, loss
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        prediction = self.net(x).squeeze(-1)
        if self.loss_name == "mse":
            return nn.functional.mse_loss(prediction, y)
        return nn.functional.huber_loss(prediction, y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def data(variant: Variant) -> tuple[TensorDataset, TensorDataset]:
    """800 training and 200 validation samples of the variant's skewed, standardized target."""
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=1000, n_features=20, n_informative=10, noise=5.0, random_state=variant.data_seed)
    skewed = {"square": y**2 / 50 + y, "cube": y**3 / 5000 + y, "exp": np.exp(y / 100)}[variant.skew]
    inputs = torch.tensor(x, dtype=torch.float32)
    target = torch.tensor(skewed, dtype=torch.float32)
    target = (target - target.mean()) / target.std()
    return TensorDataset(inputs[:800], target[:800]), TensorDataset(inputs[800:], target[800:])


def run(variant: Variant, seed: int, callback: Any) -> dict[str, Any]:
    """One fit of 10 epochs at batch 32; the validation loss at its end, and the callback's peak."""
    train, val = data(variant)
    L.seed_everything(seed, verbose=False)
    model = SkewedRegressor(variant.optimizer, variant.loss)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=EPOCHS, callbacks=[] if callback is None else [callback],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    val_loader = DataLoader(val, batch_size=200)
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), val_loader)
    score = float(trainer.validate(model, val_loader, verbose=False)[0]["val_loss"])
    return {
        "val_loss": score,
        "max_lr": None if callback is None else float(callback.max_lr),
        "picked": None if callback is None or callback.result is None else float(callback.result.max_lr),
        "rescues": 0 if callback is None else len(callback.rescues),
    }


def measure(version: str) -> dict[str, Any]:
    from lightning_superconv import SuperConvergence

    cache = load_cache(CACHE)
    for variant in VARIANTS:
        for seed in SEEDS:
            runs = {
                f"plain|{variant.name}|{seed}": None,
                f"ours|{version}|{variant.name}|{seed}": True,
                f"ours, guard off|{version}|{variant.name}|{seed}": False,
            }
            for key, guard in runs.items():
                if key not in cache:
                    cache[key] = run(variant, seed, None if guard is None else SuperConvergence(guard=guard))
                    save_cache(CACHE, cache)
                    print(key, f"{cache[key]['val_loss']:.4f}", flush=True)
    return cache


def report(cache: dict[str, Any], version: str) -> None:
    print(f"\nValidation loss after {EPOCHS} epochs (lower is better), code {version}; ratio: ours / constant LR")
    print("| variant | seed | constant LR | ours: pick (final peak) | ours | ratio | guard off | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    worse = {"ours": 0, "ours, guard off": 0}
    count = 0
    for variant in VARIANTS:
        for seed in SEEDS:
            plain = cache.get(f"plain|{variant.name}|{seed}")
            ours = cache.get(f"ours|{version}|{variant.name}|{seed}")
            off = cache.get(f"ours, guard off|{version}|{variant.name}|{seed}")
            if plain is None or ours is None or off is None:
                continue
            count += 1
            for name, result in (("ours", ours), ("ours, guard off", off)):
                worse[name] += result["val_loss"] > plain["val_loss"]
            peak = f"{ours['picked']:.3g}" + (f" ({ours['max_lr']:.3g})" if ours["rescues"] else "")
            print(
                f"| {variant.name} | {seed} | {plain['val_loss']:.4f} | {peak} | {ours['val_loss']:.4f} | "
                f"{ours['val_loss'] / plain['val_loss']:.2f} | {off['val_loss']:.4f} | "
                f"{off['val_loss'] / plain['val_loss']:.2f} |"
            )
    if count:
        print(
            f"\nWorse than the constant LR: {worse['ours']} of {count} runs with the guard on, "
            f"{worse['ours, guard off']} of {count} with it off."
        )
    else:
        print(f"no runs cached for code {version}: run without --report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="print the table from the cache; run nothing")
    parser.add_argument("--version", default=None, help="the code version whose cached runs to print (default: now)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    version = args.version or code_fingerprint()
    cache = load_cache(CACHE) if args.report or args.version else measure(version)
    report(cache, version)


if __name__ == "__main__":
    main()
