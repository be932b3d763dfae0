"""Is the auto-picked max LR as good as the best LR of a grid? Fashion-MNIST, three model/optimizer pairs.

For each pair, one-cycle training runs at every max LR of a fixed log grid (x2 apart; the oracle, cached in
``benchmarks/results/pick_oracle_grid.json``), at the ``SuperConvergence`` pick, and at Lightning's
``LearningRateFinder`` suggestion (cached too: it does not depend on our rule), over several seeds. The oracle is the
grid point with the best mean *validation* accuracy (5,000 images held out of the training set); every column reports
mean *test* accuracy. ``lenet_nesterov`` was kept out of every tuning of the pick rule and is reported as held out.

The timing part compares, on one model and the same data in the same process, the wall time of our range test (the
sweep and the trials), of Lightning's ``Tuner.lr_find`` (100 steps, its default) and of the same number of plain
training steps.

Run from the repository root (about 40 minutes on 2 CPU cores with an empty cache, 15 with the grid cached)::

    python -m benchmarks.pick_benchmark            # table + timing
    python -m benchmarks.pick_benchmark --grid-only  # fill the oracle cache only
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning as L
import torch

from benchmarks.common import PAIRS, BenchModule, Pair, datamodule, load_cache, mean_sem, save_cache, train_run, trainer
from lightning_superconv import SuperConvergence

TRAIN_SIZE, EPOCHS, SEEDS = 12_000, 3, (0, 1, 2)
GRID_CACHE, LIGHTNING_CACHE = "pick_oracle_grid.json", "pick_lightning_finder.json"


def fill_grid(pairs: list[Pair], dm: Any) -> dict[str, Any]:
    cache = load_cache(GRID_CACHE)
    for pair in pairs:
        for lr in pair.grid:
            for seed in SEEDS:
                key = f"{pair.name}|{lr:.6g}|{seed}|{TRAIN_SIZE}|{EPOCHS}"
                if key not in cache:
                    run = train_run(pair, seed, dm, EPOCHS, max_lr=lr, guard=False)
                    cache[key] = {k: run[k] for k in ("val_acc", "test_acc")}
                    save_cache(GRID_CACHE, cache)
                    print(f"grid {key}: {cache[key]}", flush=True)
    return cache


def grid_table(pair: Pair, cache: dict[str, Any]) -> dict[float, dict[str, float]]:
    table = {}
    for lr in pair.grid:
        runs = [cache[f"{pair.name}|{lr:.6g}|{seed}|{TRAIN_SIZE}|{EPOCHS}"] for seed in SEEDS]
        table[lr] = {
            "val": statistics.fmean(r["val_acc"] for r in runs),
            "test": [r["test_acc"] for r in runs],
        }
    return table


def lightning_suggestion(pair: Pair, seed: int, dm: Any) -> float:
    """Lightning's own finder, with its defaults, on the same model and data."""
    from lightning.pytorch.tuner import Tuner

    L.seed_everything(seed, verbose=False)
    model = BenchModule(pair)
    tuner = Tuner(trainer(EPOCHS, []))
    finder = tuner.lr_find(model, datamodule=dm, update_attr=False)
    suggestion = finder.suggestion() if finder is not None else None
    return float(suggestion) if suggestion is not None else float("nan")


def lightning_column(pair: Pair, dm: Any) -> list[dict[str, float]]:
    cache = load_cache(LIGHTNING_CACHE)
    out = []
    for seed in SEEDS:
        key = f"{pair.name}|{seed}|{TRAIN_SIZE}|{EPOCHS}"
        if key not in cache:
            lr = lightning_suggestion(pair, seed, dm)
            run = train_run(pair, seed, dm, EPOCHS, max_lr=lr, guard=False)
            cache[key] = {"max_lr": lr, "test_acc": run["test_acc"]}
            save_cache(LIGHTNING_CACHE, cache)
        out.append(cache[key])
    return out


def table_rows(pairs: list[Pair], dm: Any, cache: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Oracle, auto pick and Lightning's suggestion per pair (auto runs are never cached: they test the rule)."""
    rows = []
    for pair in pairs:
        grid = grid_table(pair, cache)
        best_lr = max(grid, key=lambda lr: grid[lr]["val"])
        edge = best_lr in (pair.grid[0], pair.grid[-1])
        oracle = mean_sem(grid[best_lr]["test"])
        auto_runs = [train_run(pair, seed, dm, EPOCHS) for seed in SEEDS]
        auto = mean_sem([r["test_acc"] for r in auto_runs])
        auto_lr = statistics.geometric_mean([r["max_lr"] for r in auto_runs])
        light_runs = lightning_column(pair, dm)
        light = mean_sem([r["test_acc"] for r in light_runs])
        light_lr = statistics.median(r["max_lr"] for r in light_runs)
        rows.append((pair, best_lr, edge, oracle, auto_lr, auto, light_lr, light))
        print(
            f"{pair.name}: grid " + ", ".join(f"{lr:.3g}:{statistics.fmean(g['test']):.1f}" for lr, g in grid.items())
        )
    return rows


def print_table(rows: list[tuple[Any, ...]]) -> None:
    print(f"\nFashion-MNIST, {TRAIN_SIZE:,} training images, {EPOCHS} epochs one-cycle, {len(SEEDS)} seeds; test acc %")
    print("| pair | oracle max_lr | oracle acc | auto max_lr | auto acc | gap | Lightning lr | Lightning acc |")
    print("|---|---|---|---|---|---|---|---|")
    for pair, best_lr, edge, oracle, auto_lr, auto, light_lr, light in rows:
        name = pair.name + (" (held out)" if pair.held_out else "")
        flag = " (grid edge!)" if edge else ""
        print(
            f"| {name} | {best_lr:.3g}{flag} | {oracle[0]:.2f} ± {oracle[1]:.2f} | {auto_lr:.3g} | "
            f"{auto[0]:.2f} ± {auto[1]:.2f} | {auto[0] - oracle[0]:+.2f} | {light_lr:.2g} | "
            f"{light[0]:.2f} ± {light[1]:.2f} |"
        )


def _fit_seconds(pair: Pair, dm: Any, seed: int, callbacks: list[Any], max_steps: int) -> float:
    L.seed_everything(seed, verbose=False)
    t = trainer(-1, callbacks, max_steps=max_steps)  # as many epochs as the steps need
    start = time.perf_counter()
    t.fit(BenchModule(pair), datamodule=dm)
    return time.perf_counter() - start


def time_range_tests(dm: Any, pair: Pair, repeats: int = 5) -> dict[str, float]:
    r"""Median wall times (seconds) of our range test, Lightning's ``lr_find`` and plain steps, in one process.

    Each is measured as a difference to a one-step ``fit`` with the same setup, so the ``Trainer``'s own start-up cost
    cancels: ours = fit(range test + 1 step) - fit(1 step); plain = fit(1 + N steps) - fit(1 step) with N the number of
    optimizer steps our range test took (the sweep's and the trials'); Lightning = ``lr_find`` (100 steps, its
    defaults) - fit(1 step). The trials' held-out evaluations are forward passes on top of those steps.
    """
    from lightning.pytorch.tuner import Tuner

    times: dict[str, list[float]] = {
        "ours": [], "steps": [], "sweep": [], "lightning": [], "lightning_steps": [], "plain": []
    }  # fmt: skip
    for repeat in range(repeats):
        base = _fit_seconds(pair, dm, repeat, [SuperConvergence(max_lr=0.05)], 1)
        sc = SuperConvergence()
        times["ours"].append(_fit_seconds(pair, dm, repeat, [sc], 1) - base)
        assert sc.result is not None
        sweep = len(sc.result.lrs) + sc.result.skipped_steps
        # the trials' length as this 1-step fit sized them (`trial_steps=None`: a third of the run, at least 100)
        steps = sweep + sc.range_test.trial_length(sc.total_steps) * len(sc.result.trials)
        times["sweep"].append(sweep)
        times["steps"].append(steps)
        times["plain"].append(_fit_seconds(pair, dm, repeat, [SuperConvergence(max_lr=0.05)], 1 + steps) - base)
        L.seed_everything(repeat, verbose=False)
        start = time.perf_counter()
        finder = Tuner(trainer(1, [])).lr_find(BenchModule(pair), datamodule=dm, update_attr=False)
        times["lightning"].append(time.perf_counter() - start - base)
        # the steps it ran: its 100 by default, fewer where the fit's one epoch ends first (93 batches here)
        times["lightning_steps"].append(len(finder.results["lr"]) if finder is not None else 100)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid-only", action="store_true", help="only fill the oracle cache")
    parser.add_argument(
        "--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS), help="which pairs (default: all)"
    )
    parser.add_argument("--no-timing", action="store_true", help="skip the timing comparison")
    parser.add_argument("--timing-only", action="store_true", help="only the timing comparison")
    args = parser.parse_args()
    torch.set_num_threads(2)
    dm = datamodule(TRAIN_SIZE)
    pairs = [PAIRS[name] for name in args.pairs]
    cache = fill_grid(pairs, dm)
    if args.grid_only:
        return
    if not args.timing_only:
        print_table(table_rows(pairs, dm, cache))
    if not args.no_timing:
        pair = PAIRS["bn_cnn_sgd"]
        t = time_range_tests(dm, pair)
        per_step_ours = t["ours"] / max(t["steps"], 1)
        per_step_plain = t["plain"] / max(t["steps"], 1)
        print(f"\nRange-test wall time, {pair.name}, median of 5, same process and data, Trainer start-up subtracted:")
        print("| what | seconds | optimizer steps | per step (ms) |")
        print("|---|---|---|---|")
        print(
            f"| SuperConvergence range test (sweep {t['sweep']:.0f} steps, then trials) | {t['ours']:.2f} | "
            f"{t['steps']:.0f} | {1000 * per_step_ours:.1f} |"
        )
        print(f"| same number of plain steps | {t['plain']:.2f} | {t['steps']:.0f} | {1e3 * per_step_plain:.1f} |")
        steps_lightning = max(t["lightning_steps"], 1)
        print(
            f"| Lightning `Tuner.lr_find` (defaults) | {t['lightning']:.2f} | {steps_lightning:.0f} | "
            f"{1e3 * t['lightning'] / steps_lightning:.1f} |"
        )
        print(
            f"per step, ours / plain: {per_step_ours / per_step_plain:.2f}; total, ours / Lightning: "
            f"{t['ours'] / t['lightning']:.2f}"
        )


if __name__ == "__main__":
    main()
