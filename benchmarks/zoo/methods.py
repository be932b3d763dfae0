"""The methods the zoo compares, each one training run of a task and seed, scored on validation and test.

- ``oracle``: one cycle at a fixed max LR (``SuperConvergence(max_lr=..., guard=False)``: no range test, and no
  divergence guard, so a peak too high shows as what it does to a plain one-cycle), one run per grid point; the
  table's oracle is the grid point with the best mean validation score.
- ``user``: the optimizer the task's source configures, at its LR, held constant over the same steps.
- ``lightning``: one cycle at the suggestion of Lightning's ``Tuner.lr_find`` with its defaults (no guard either).
- ``ours``: ``SuperConvergence()`` with its defaults (the guard on), given the task's validation split as a user would
  give it to ``fit`` (its peak trials score on it; no validation loop runs during training).
- ``sweep_only``: ``SuperConvergence(trial_steps=0)``: the range test without its trials (the peak is a quarter of the
  LR where the loss rose back): what the trials buy, and what they cost.
- ``long_trials`` (a candidate rule, not run by default, never on the third or fourth held-out half):
  ``SuperConvergence()`` whose trials are as long as the run, up to 300 steps (``trial_steps=min(300, run steps)``,
  at least 50). On long runs (the demo LSTM's 855 steps) 100-step trials favoured peaks far below the oracle's.
- ``trials_100`` (the rule before the trials were sized to the run, kept as a candidate to compare against):
  ``SuperConvergence(trial_steps=100)``, trials of 100 steps whatever the run. ``ours`` is the rule ``third_trials``
  was as a candidate: trials a third of the run, from 100 to 300 steps (``trial_steps=None``).
- ``prodigy``: ``prodigyopt.Prodigy`` as its README recommends (``lr=1.0``, decoupled weight decay, cosine annealing
  over the run).
- ``schedulefree``: ``schedulefree.AdamWScheduleFree`` (lr 0.0025, its default) for tasks configured with an adaptive
  optimizer, ``SGDScheduleFree`` otherwise at twice the user's effective SGD step ``lr / (1 - momentum)`` (its
  README: 10-50x a classical LR with momentum 0.9); warm-up over the first 5 % of steps; ``optimizer.train()`` /
  ``.eval()`` around training and evaluation, and BatchNorm statistics recomputed at the evaluation point over 50
  training batches, as its README asks.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.zoo.tasks import SupervisedModule, Task
from lightning_superconv import SuperConvergence

METHODS = ("oracle", "user", "lightning", "ours", "prodigy", "schedulefree", "sweep_only")
#: Candidate rules, run only when asked for (``--methods long_trials``), on the 21 tasks a rule may be tuned on.
CANDIDATES = ("long_trials", "trials_100")
#: The methods whose runs depend on this package's code: cached per code fingerprint.
OUR_METHODS = ("ours", "sweep_only", *CANDIDATES)
#: The longest trial of ``long_trials``.
LONG_TRIALS = 300


#: Files that present results and never touch the model, its data or its optimizer: the version string, the logging of
#: curves and schedules, and the range-test record with its figure. Editing them keeps the ``ours`` cache valid.
PRESENTATION = frozenset({"__about__.py", "_logging.py", "result.py"})


def code_fingerprint() -> str:
    r"""A short hash of what the package's code does: an ``ours`` run is cached per version of the code that picked it.

    Read from the syntax tree with docstrings dropped, so editing a docstring or a comment keeps the cache valid; the
    files in :data:`PRESENTATION` are left out.
    """
    root = Path(__file__).resolve().parents[2] / "lightning_superconv"
    digest = hashlib.sha1()
    for path in sorted(root.glob("*.py")):
        if path.name in PRESENTATION:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                value = body[0].value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        digest.update(path.name.encode())
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:10]


def make_trainer(task: Task, callbacks: list[Any], **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=task.epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10_000,  # no validation loop (`limit_val_batches=0` would hide the data)
        **{**task.trainer_kwargs, **kwargs},
    )


class ScheduleFreeModes(Callback):
    """Schedule-Free's ``train()``/``eval()`` switches, and BatchNorm statistics recomputed at the evaluation point."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        trainer.optimizers[0].train()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        trainer.optimizers[0].eval()
        norms = [m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms or not isinstance(pl_module, SupervisedModule):
            return
        pl_module.train()
        with torch.no_grad():
            for x, _ in itertools.islice(self.loader, 50):
                pl_module(x)
        pl_module.eval()


def _steps(task: Task, loader: Any) -> int:
    return len(loader) * task.epochs


def _lightning_suggestion(task: Task, seed: int) -> float:
    from lightning.pytorch.tuner import Tuner

    L.seed_everything(seed, verbose=False)
    model, loader = task.make(seed)
    finder = Tuner(make_trainer(task, [])).lr_find(model, train_dataloaders=loader, update_attr=False)
    suggestion = finder.suggestion() if finder is not None else None
    return float(suggestion) if suggestion is not None else math.nan


def run(task: Task, method: str, seed: int, max_lr: float | None = None) -> dict[str, Any]:
    """One training run of ``task`` with ``method``; returns scores, the max LR used and the wall time."""
    out: dict[str, Any] = {}
    start = time.perf_counter()
    if method == "lightning":
        max_lr = _lightning_suggestion(task, seed)
        out["finder_seconds"] = time.perf_counter() - start
        if not math.isfinite(max_lr):
            return {**out, "max_lr": None, "val": None, "test": None, "nonfinite": False, "no_suggestion": True}
    L.seed_everything(seed, verbose=False)
    model, loader = task.make(seed)
    callbacks: list[Any] = []
    sc = None
    if method in ("oracle", "lightning"):
        sc = SuperConvergence(max_lr=max_lr, guard=False)
    elif method == "ours":
        sc = SuperConvergence()
    elif method == "sweep_only":
        sc = SuperConvergence(trial_steps=0)
    elif method == "long_trials":
        sc = SuperConvergence(trial_steps=max(min(LONG_TRIALS, _steps(task, loader)), 50))
    elif method == "trials_100":
        sc = SuperConvergence(trial_steps=100)
    elif method == "prodigy":
        from prodigyopt import Prodigy

        steps = _steps(task, loader)

        def prodigy(module: Any) -> Any:
            opt = Prodigy(module.parameters(), lr=1.0, weight_decay=task.optimizer.weight_decay, decouple=True)
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

        model.optimizer_factory = prodigy
    elif method == "schedulefree":
        import schedulefree

        warmup = max(1, round(0.05 * _steps(task, loader)))
        spec = task.optimizer

        def schedule_free(module: Any) -> Any:
            if spec.adaptive:
                return schedulefree.AdamWScheduleFree(
                    module.parameters(), lr=0.0025, weight_decay=spec.weight_decay, warmup_steps=warmup
                )
            lr = 2.0 * spec.lr / (1.0 - spec.momentum)
            return schedulefree.SGDScheduleFree(
                module.parameters(), lr=lr, weight_decay=spec.weight_decay, warmup_steps=warmup
            )

        model.optimizer_factory = schedule_free
        callbacks.append(ScheduleFreeModes(loader))
    elif method != "user":
        raise ValueError(f"unknown method {method!r}")
    if sc is not None:
        callbacks.insert(0, sc)
    # `SuperConvergence()` gets the validation split a user would pass to `fit` (its trials score on it); the trainer
    # runs no validation (`check_val_every_n_epoch`), and the other methods train exactly as without it
    val = task.validation() if method in ("ours", *CANDIDATES) and task.validation is not None else None
    make_trainer(task, callbacks).fit(model, train_dataloaders=loader, val_dataloaders=val)
    out["seconds"] = time.perf_counter() - start
    val, bad_val = task.score(model, "val")
    test, bad_test = task.score(model, "test")
    out.update(val=val, test=test, nonfinite=bad_val or bad_test)
    if sc is not None:
        out["max_lr"] = sc.max_lr  # after any rescue of the guard: the pick times LOWER_BY per rescue
        out["rescues"] = len(sc.rescues)
    if sc is not None and sc.result is not None:
        out["curve"] = {
            "lrs": [round(v, 8) for v in sc.result.lrs],
            "losses": [round(v, 6) for v in sc.result.losses],
            "stop": sc.result.stop_reason,
            "trials": sc.result.trials,
        }
    return out
