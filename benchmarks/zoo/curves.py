"""Record range-test curves of the zoo's tasks, for studying pick rules offline (tuning half only by default).

Each curve is the range test ``SuperConvergence`` runs at fit start (the task's model, data order and optimizer for
the seed), recorded to the end of the sweep or the first NaN/inf: the divergence stop is switched off, so any stop
rule can be replayed on the recorded prefix. Cached in ``benchmarks/results/zoo_curves/<task>.json``.

    python -m benchmarks.zoo.curves --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks.zoo.methods import make_trainer
from benchmarks.zoo.tasks import TASKS, TUNING, Task
from lightning_superconv.range_test import RangeTestConfig
from lightning_superconv.steps import take_steps

CURVES = Path(__file__).resolve().parents[1] / "results" / "zoo_curves"


class _Recorder(L.Callback):
    """At fit start: the range test's sweep without any stop but NaN/inf, through the package's own step loop."""

    def __init__(self, config: RangeTestConfig) -> None:
        self.config = config
        self.record: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning_superconv import _compat
        from lightning_superconv.param_groups import group_ratios
        from lightning_superconv.sandbox import sandbox

        optimizer = trainer.optimizers[0]
        lrs = self.config.lrs()
        ratios = group_ratios(optimizer)
        _compat.setup_train_data(trainer)

        def set_lr(step: int) -> None:
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lrs[step] * ratio

        def stop(step: int, loss: float) -> str | None:
            return None if loss == loss and abs(loss) != float("inf") else "non-finite"

        with sandbox(trainer, pl_module, optimizer):
            record = take_steps(trainer, pl_module, optimizer, len(lrs), set_lr, stop)
        self.record = {"lrs": [lrs[i] for i in record.steps], "losses": record.losses, "stop": record.stop_reason}
        trainer.should_stop = True


# The default sweep's LRs (1e-6 to 10 in 100 steps, a factor 10 ** (7 / 99) per step), continued for 50 more steps
# (to 3.4e4), so a rule that reads beyond 10 can be studied too.
STEP = 10 ** (7 / 99)


def record_curve(task: Task, seed: int, num_steps: int = 150) -> dict[str, Any]:
    L.seed_everything(seed, verbose=False)
    model, loader = task.make(seed)
    recorder = _Recorder(RangeTestConfig(lr_range=(1e-6, 1e-6 * STEP ** (num_steps - 1)), num_steps=num_steps))
    make_trainer(task, [recorder]).fit(model, train_dataloaders=loader)
    return recorder.record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(TUNING), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    CURVES.mkdir(parents=True, exist_ok=True)
    for name in args.tasks:
        path = CURVES / f"{name}.json"
        cache = json.loads(path.read_text()) if path.exists() else {}
        for seed in args.seeds:
            key = f"{args.num_steps}|{seed}"
            if key in cache:
                continue
            cache[key] = record_curve(TASKS[name], seed, args.num_steps)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache) + "\n")
            os.replace(tmp, path)
            print(f"{name} seed {seed}: {len(cache[key]['lrs'])} steps, stop {cache[key]['stop']}", flush=True)


if __name__ == "__main__":
    main()
