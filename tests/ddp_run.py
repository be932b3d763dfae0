r"""Two-process DDP runs on CPU (gloo) for ``test_distributed.py``: ``python tests/ddp_run.py OUT_DIR``.

Run as a script, never imported by a test: Lightning's ``strategy="ddp"`` starts rank 1 by running this same command
again, exactly as it does for a user's training script, so every rank executes ``main`` from the top. Each rank writes
what it saw to ``OUT_DIR/rank{r}.json`` and the test compares the ranks.

1. ``SuperConvergence`` and ``WeightDecayBalancer`` on a shuffled map-style dataset that Lightning's
   ``DistributedSampler`` splits between the ranks (different data per rank), with gradient accumulation. Each rank
   has its own ``default_root_dir`` and no logger or checkpoint, as on machines without a shared filesystem.
2. A one-shot ``IterableDataset`` that runs out on rank 1 after two batches and on rank 0 after six: the range test
   must stop on both ranks at the same step (a rank that went on would wait forever in DDP's all-reduce).
3. A cycle far too high (``max_lr=50``): the divergence guard rescues it, on both ranks at the same steps, and the
   ranks end with the same weights.
4. The same, with a blow-up only rank 1 sees (its loss at step 1 reads three times higher): both ranks lower the peak
   by the LR of that blow-up.
5. Validation batches that ``training_step`` cannot take (dicts) on both ranks: both pass them over together for
   training batches in the trials. 6. On rank 1 only: a clear error on both ranks (a forward that raised inside DDP on
   one rank only leaves DDP's per-rank state out of step), where a rank left alone would wait forever. 6b. A batch
   transfer hook that fails on rank 1's validation batches alone: its error there, a clear one on rank 0, no hang.
7. ``WeightDecayBalancer(mode="grid")`` on a model without dropout: its repeat of the user's λ must see another order
   of the ``DistributedSampler``'s batches (which a generator does not set), or it measures no noise.
8. A sampler of the user's own with its own generator, which Lightning wraps for DDP: the range test puts the
   generator back, so the run ends as the same run given its pick as ``max_lr``.
9. Gradient accumulation over 4 micro-batches: the range test all-reduces once per optimizer step, not per micro-batch.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings


def main(out: str) -> None:  # noqa: D103
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import lightning as L
    import torch
    from helpers import OwnRandomSampler, TinyClassifier, make_dataset, two_rank_trainer_kwargs
    from torch.utils.data import DataLoader, IterableDataset

    from lightning_superconv import SuperConvergence, WeightDecayBalancer

    torch.set_num_threads(1)

    class RankRecorder(TinyClassifier):
        """Records every local ``training_step`` loss, range-test steps included."""

        def __init__(self) -> None:
            super().__init__(batch_size=16, n=256)
            self.local_losses: list[float] = []

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.local_losses.append(float(loss.detach()))
            return loss

    class OneShot(IterableDataset):
        """Yields ``n`` samples once; a second ``iter`` continues the same, exhausted iterator."""

        def __init__(self) -> None:
            self._iterator = None

        def __iter__(self):
            if self._iterator is None:
                n = 2 * 16 if torch.distributed.get_rank() == 1 else 6 * 16
                data = make_dataset(n, seed=torch.distributed.get_rank())
                self._iterator = iter([data[i] for i in range(n)])
            return self._iterator

    class OneShotClassifier(TinyClassifier):
        def train_dataloader(self):
            return DataLoader(OneShot(), batch_size=16)

    common = two_rank_trainer_kwargs(out, strategy="ddp", enable_checkpointing=False)
    rank_dir = common["default_root_dir"]

    # 1. the range test, the cycle and the balancer under DDP
    L.seed_everything(0, verbose=False)
    model = RankRecorder()
    superconv = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10)
    balancer = WeightDecayBalancer(mode="timescale")  # moves λ at any peak (the budget only lowers it)
    trainer = L.Trainer(
        callbacks=[superconv, balancer], max_epochs=2, limit_train_batches=4, accumulate_grad_batches=2, **common
    )
    trainer.fit(model)
    rank = trainer.global_rank
    written = sorted(os.path.relpath(os.path.join(d, f), rank_dir) for d, _, fs in os.walk(rank_dir) for f in fs)
    report = {
        "rank": rank,
        "world_size": trainer.world_size,
        "local_losses": model.local_losses,
        "result": superconv.result.to_dict(),
        "max_lr": superconv.max_lr,
        "total_steps": superconv.total_steps,
        "scheduler_total_steps": trainer.lr_scheduler_configs[0].scheduler.total_steps,
        "global_step": trainer.global_step,
        "weight_decays": balancer.weight_decays,
        "final_lr": trainer.optimizers[0].param_groups[0]["lr"],
        "weights": [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])],
        "files_written": written,
    }

    # 2. data that runs out during the range test, earlier on one rank than on the other
    L.seed_everything(0, verbose=False)
    try:
        trainer = L.Trainer(callbacks=[SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10)], max_steps=4, **common)
        trainer.fit(OneShotClassifier())
        report["one_shot_error"] = None
    except Exception as err:  # the expected outcome: too few points to read, on every rank alike
        report["one_shot_error"] = f"{type(err).__name__}: {err}"
        report["one_shot_traceback"] = traceback.format_exc()

    # 3. the divergence guard under DDP
    L.seed_everything(0, verbose=False)
    guarded = SuperConvergence(max_lr=50.0)
    model = TinyClassifier(batch_size=16, n=512)
    L.Trainer(callbacks=[guarded], max_epochs=4, **common).fit(model)
    report["rescues"] = guarded.rescues
    report["guarded_max_lr"] = guarded.max_lr
    report["guarded_weights"] = [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])]

    # 4. a blow-up only one rank sees
    class SpikesOnRankOne(TinyClassifier):
        """Rank 1's loss at step 1 reads three times higher; every rank records its losses and LRs until a rescue."""

        def __init__(self) -> None:
            super().__init__(batch_size=16, n=512)
            self.seen: list[tuple[float, float]] = []

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            if self.trainer.global_rank == 1 and self.trainer.global_step == 1:
                loss = loss * 3.0
            if not any(getattr(cb, "rescues", None) for cb in self.trainer.callbacks):
                self.seen.append((float(loss.detach()), self.trainer.optimizers[0].param_groups[0]["lr"]))
            return loss

    L.seed_everything(0, verbose=False)
    one_rank = SuperConvergence(max_lr=50.0)
    model = SpikesOnRankOne()
    L.Trainer(callbacks=[one_rank], max_epochs=4, **common).fit(model)
    report["one_rank_rescues"] = one_rank.rescues
    report["one_rank_seen"] = model.seen
    report["one_rank_weights"] = [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])]

    # 5. validation batches that `training_step` cannot take (dicts), on every rank; 6. on rank 1 only
    class DictValidation(TinyClassifier):
        def __init__(self, dicts_on: tuple[int, ...]) -> None:
            super().__init__(batch_size=16, n=256)
            self.dicts_on = dicts_on

        def val_dataloader(self):
            x, y = make_dataset(64, seed=1).tensors
            if self.trainer.global_rank in self.dicts_on:
                return DataLoader([{"x": x[i], "y": y[i]} for i in range(len(x))], batch_size=16)
            return DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

    L.seed_everything(0, verbose=False)
    trials = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10, trial_steps=50)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        L.Trainer(callbacks=[trials], max_steps=2, **common).fit(DictValidation(dicts_on=(0, 1)))
    report["fallback_trials"] = trials.result.trials
    report["fallback_max_lr"] = trials.max_lr
    report["fallback_warnings"] = [str(w.message) for w in said if "trials score" in str(w.message)]
    L.seed_everything(0, verbose=False)
    try:
        trials = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10, trial_steps=50)
        L.Trainer(callbacks=[trials], max_steps=2, **common).fit(DictValidation(dicts_on=(1,)))
        report["one_rank_dicts_error"] = None
    except Exception as err:  # the expected outcome: a clear error on every rank, no rank left waiting
        report["one_rank_dicts_error"] = f"{type(err).__name__}: {err}"

    # 6b. a transfer hook that fails on rank 1's validation batches alone, in a module with BatchNorm (buffers that
    # DDP's forward broadcasts): the user's error on rank 1, a clear one on rank 0, none left waiting
    class HookBroke(Exception):
        pass

    class BreaksOnRankOne(TinyClassifier):
        def __init__(self) -> None:
            super().__init__(batch_size=16, n=256)

        def on_before_batch_transfer(self, batch, dataloader_idx):
            if self.trainer.global_rank == 1 and self.trainer.validating:
                raise HookBroke("rank 1's hook")
            return batch

        def val_dataloader(self):
            return DataLoader(make_dataset(64, seed=1), batch_size=16)

    L.seed_everything(0, verbose=False)
    try:
        trials = SuperConvergence(lr_range=(1e-2, 1.0), num_steps=10, trial_steps=50)
        L.Trainer(callbacks=[trials], max_steps=2, **common).fit(BreaksOnRankOne())
        report["one_rank_hook_error"] = None
    except Exception as err:  # the expected outcome
        report["one_rank_hook_error"] = f"{type(err).__name__}: {err}"

    # 7. the balancer's grid: the repeat of the user's λ on another data order (Lightning's DistributedSampler)
    L.seed_everything(0, verbose=False)
    grid = WeightDecayBalancer(mode="grid", cost=1.0)
    model = TinyClassifier(batch_size=16, n=512, weight_decay=5e-3)
    model.net[3] = torch.nn.Identity()  # no dropout: only the data order can tell the repeat from the first run
    trainer = L.Trainer(callbacks=[SuperConvergence(max_lr=0.5), grid], max_epochs=6, **common)
    trainer.fit(model)
    report["grid_search"] = grid.search
    report["grid_reason"] = grid.reason
    report["grid_weight_decays"] = grid.weight_decays
    report["grid_sampler_seed"] = trainer.train_dataloader.sampler.seed

    # 8. a sampler of the user's own, with its own generator, that Lightning wraps for DDP: the range test gives the
    # generator back, so the run ends as the same run given the pick as `max_lr`
    class OwnSampler(TinyClassifier):
        def __init__(self) -> None:
            super().__init__(batch_size=16, n=256)
            self.net[3] = torch.nn.Identity()

        def train_dataloader(self):
            return DataLoader(make_dataset(256), sampler=OwnRandomSampler(256, "torch"), batch_size=16)

    weights = []
    for given in (None, "pick"):
        L.seed_everything(0, verbose=False)
        own = SuperConvergence(max_lr=report["own_sampler_max_lr"]) if given else SuperConvergence(trial_steps=0)
        L.Trainer(callbacks=[own], max_epochs=1, **common).fit(model := OwnSampler())
        report["own_sampler_max_lr"] = own.max_lr
        weights.append([float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])])
    report["own_sampler_weights"] = weights

    # 9. gradient accumulation: the range test's micro-batches before the last of a step all-reduce nothing, as in
    # Lightning's own loop (DDP decides at the forward whether the backward all-reduces)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    class CountsAllReduces(L.Callback):
        """Counts the gradient all-reduces and the backward passes before training starts (the range test's)."""

        def __init__(self) -> None:
            self.allreduces = self.backwards = 0

        def count_allreduce(self, state, bucket):
            self.allreduces += 1
            return allreduce_hook(state, bucket)

        def count_backward(self, grad):
            self.backwards += 1
            return grad

        def on_fit_start(self, trainer, pl_module):  # before the range test: listed before SuperConvergence
            trainer.strategy.model.register_comm_hook(None, self.count_allreduce)
            self.handle = pl_module.net[0].weight.register_hook(self.count_backward)

        def on_train_start(self, trainer, pl_module):
            self.at_start = (self.allreduces, self.backwards)
            self.handle.remove()

    L.seed_everything(0, verbose=False)
    counter, swept = CountsAllReduces(), SuperConvergence(num_steps=10, trial_steps=0, guard=False)
    L.Trainer(callbacks=[counter, swept], max_steps=1, accumulate_grad_batches=4, **common).fit(
        TinyClassifier(batch_size=8, n=256)
    )
    report["accumulated_allreduces"], report["accumulated_backwards"] = counter.at_start
    report["accumulated_steps"] = len(swept.result.losses)

    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
