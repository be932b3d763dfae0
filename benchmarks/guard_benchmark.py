"""Does the divergence guard save runs whose peak is too high, and does it stay out of runs that are fine?

1. Too high: one cycle at 3x, 10x and 25x a task's best peak (the pick zoo's oracle, chosen on validation), with
   the guard on and off, on the zoo's tuning-half tasks and the two runs its issue reported (a small CNN with SGD on
   scikit-learn's digits at ``max_lr=2.0``; an MLP with AdamW on Fashion-MNIST at ``max_lr=0.1``, the pick
   benchmark's ``mlp_adamw`` pair); the test score, the rescues and the wall time they cost.
2. False alarms: every run of the pick zoo's oracle grid that ended within 20 points of its task's best, trained
   again with the guard on. The guard must never fire there, and the run must end with exactly the cached (guard off)
   scores; where it does not and the guard never fired, the run is trained again with the guard off on this machine
   and compared with that (a cache written on another CPU can differ in the last bits).

3. The balancer beside the guard: the zoo's tasks with weight decay at 3x, 10x and 25x their best peak, the guard on,
   alone, beside ``WeightDecayBalancer()`` (its λ kept after a rescue) and beside
   ``WeightDecayBalancer(rebalance_on_rescue=True)`` (λ set again for the lowered cycle).

4. Models of kinds the zoo lacks, on which trying the package found the guard firing on good runs
   (:mod:`benchmarks.guard_foreign`): ``SuperConvergence()`` at its own pick, guard off and on.

Every run is cached in ``benchmarks/results/guard.json`` as it finishes. Run from the repository root::

    python -m benchmarks.guard_benchmark                # all four (part 2 re-trains 668 zoo runs: 90 minutes)
    python -m benchmarks.guard_benchmark --part 1       # the too-high table (about 10 minutes)
    python -m benchmarks.guard_benchmark --part 3 --tasks fmnist_bn_cnn_sgd fmnist_lenet_nesterov \
        diabetes_mlp_adamw breast_cancer_mlp_adamw digits_mlp_nesterov fmnist_tv_mlp_adamw  # part 3 (~15 minutes)
    python -m benchmarks.guard_benchmark --table-only   # print from the cache
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks.guard_foreign import FOREIGN_TASKS, foreign_run
from benchmarks.zoo.__main__ import load as load_zoo
from benchmarks.zoo.__main__ import oracle
from benchmarks.zoo.methods import make_trainer
from benchmarks.zoo.tasks import FIRST_HELD_OUT, FOURTH_HELD_OUT, HELD_OUT, TASKS, THIRD_HELD_OUT, TUNING, Task
from lightning_superconv import DivergenceError, SuperConvergence, WeightDecayBalancer

CACHE = Path(__file__).resolve().parent / "results" / "guard.json"
SEEDS = (0, 1, 2)
FACTORS = (3.0, 10.0, 25.0)
#: Part 3 runs on the zoo's first 21 tasks, part 2 on these and on the zoo's third and fourth held-out halves: eleven
#: tasks added after the guard's last change, never run with it before part 2 ran them (the guard's own held-out set).
GUARDED = (*TUNING, *HELD_OUT)
UNSEEN_BY_THE_GUARD = (*THIRD_HELD_OUT, *FOURTH_HELD_OUT)
GUARD_TASKS = ("fmnist_bn_cnn_sgd", "fmnist_lenet_nesterov", "digits_cnn_sgd", "friedman_mlp_adam")


def load() -> dict[str, Any]:
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def save(cache: dict[str, Any]) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, CACHE)


def zoo_run(
    task: Task, seed: int, max_lr: float, guard: bool, balancer: WeightDecayBalancer | None = None
) -> dict[str, Any]:
    """One cycle of ``task`` at ``max_lr`` (beside ``balancer``, if given); the scores, the rescues, the wall time."""
    L.seed_everything(seed, verbose=False)
    model, loader = task.make(seed)
    sc = SuperConvergence(max_lr=max_lr, guard=guard)
    start = time.perf_counter()
    error = None
    try:
        make_trainer(task, [sc] + ([balancer] if balancer is not None else [])).fit(model, train_dataloaders=loader)
    except DivergenceError as err:
        error = str(err)
    seconds = time.perf_counter() - start
    val, bad_val = task.score(model, "val")
    test, bad_test = task.score(model, "test")
    run = {
        "val": val, "test": test, "nonfinite": bad_val or bad_test, "rescues": sc.rescues, "seconds": seconds,
        "final_max_lr": sc.max_lr, "error": error,
    }  # fmt: skip
    if balancer is not None:
        run["weight_decays"] = balancer.weight_decays
        run["rebalances"] = balancer.rebalances
    return run


def mlp_run(seed: int, max_lr: float, guard: bool) -> dict[str, Any]:
    """The issue's second run: the pick benchmark's MLP with AdamW on 12,000 Fashion-MNIST images, 3 epochs."""
    from benchmarks.common import PAIRS, BenchModule, accuracy, datamodule, trainer

    dm = datamodule(12_000)
    L.seed_everything(seed, verbose=False)
    model = BenchModule(PAIRS["mlp_adamw"])
    sc = SuperConvergence(max_lr=max_lr, guard=guard)
    start = time.perf_counter()
    error = None
    try:
        trainer(3, [sc]).fit(model, datamodule=dm)
    except DivergenceError as err:
        error = str(err)
    seconds = time.perf_counter() - start
    return {
        "val": accuracy(model, dm.val_set), "test": accuracy(model, dm.test_set), "nonfinite": False,
        "rescues": sc.rescues, "seconds": seconds, "final_max_lr": sc.max_lr, "error": error,
    }  # fmt: skip


# The best peak of each row of part 1: the zoo's oracle for its tasks; the issue's own figures for its two runs.
ISSUE_RUNS = {
    "issue: digits CNN at max_lr=2.0": ("digits_cnn_sgd", 2.0),
    "issue: Fashion MLP AdamW at 0.1": ("mlp", 0.1),
}


def part1(cache: dict[str, Any]) -> None:
    for name in GUARD_TASKS:
        task = TASKS[name]
        best = oracle(task, load_zoo(task), SEEDS)
        assert best is not None, f"the zoo's oracle grid of {name} is not filled yet"
        for factor in FACTORS:
            for guard in (False, True):
                for seed in SEEDS:
                    key = f"high|{name}|{factor:g}|{guard}|{seed}"
                    if key not in cache:
                        cache[key] = zoo_run(task, seed, best[0] * factor, guard)
                        save(cache)
                        print(key, cache[key]["test"], len(cache[key]["rescues"]), flush=True)
    for row, (name, peak) in ISSUE_RUNS.items():
        for guard in (False, True):
            for seed in SEEDS:
                key = f"issue|{row}|{guard}|{seed}"
                if key not in cache:
                    run = mlp_run(seed, peak, guard) if name == "mlp" else zoo_run(TASKS[name], seed, peak, guard)
                    cache[key] = run
                    save(cache)
                    print(key, cache[key]["test"], len(cache[key]["rescues"]), flush=True)


def part2(cache: dict[str, Any], tasks: list[str]) -> None:
    for name in tasks:
        task = TASKS[name]
        zoo = load_zoo(task)
        best = oracle(task, zoo, SEEDS)
        if best is None:
            print(f"{name}: the zoo's oracle grid is not filled yet; skipped")
            continue
        best_test = statistics.fmean(best[1])
        for lr in task.grid:
            for seed in SEEDS:
                off = zoo[f"oracle|{lr:g}|{seed}"]
                if off["test"] is None or off["nonfinite"] or off["test"] < best_test - 20:
                    continue
                key = f"alarm|{name}|{lr:g}|{seed}"
                if key not in cache:
                    on = zoo_run(task, seed, lr, guard=True)
                    same = on["test"] == off["test"] and on["val"] == off["val"]
                    if not same and not on["rescues"]:
                        # the zoo's cached run may come from another CPU (other vector units round differently): the
                        # same run with the guard off, trained again here, is what the guard must not change
                        off = zoo_run(task, seed, lr, guard=False)
                        same = on["test"] == off["test"] and on["val"] == off["val"]
                    cache[key] = {
                        "rescues": len(on["rescues"]), "same": same, "test_on": on["test"], "test_off": off["test"],
                        "reasons": [f"step {r['step']}: {r['reason']}" for r in on["rescues"]],
                    }  # fmt: skip
                    save(cache)
                    print(key, cache[key], flush=True)


def part4(cache: dict[str, Any]) -> None:
    for name, task in FOREIGN_TASKS.items():
        for guard in (False, True):
            for seed in SEEDS:
                key = f"foreign|{name}|{guard}|{seed}"
                if key not in cache:
                    cache[key] = foreign_run(task, seed, guard)
                    save(cache)
                    print(key, cache[key]["test"], len(cache[key]["rescues"]), flush=True)


def print_foreign_table(cache: dict[str, Any]) -> None:
    rows = []
    for name, task in FOREIGN_TASKS.items():
        for seed in SEEDS:
            off, on = cache.get(f"foreign|{name}|False|{seed}"), cache.get(f"foreign|{name}|True|{seed}")
            if off is None or on is None:
                continue
            said = "; ".join(f"step {r['step']}: {r['reason']}" for r in on["rescues"]) or "-"
            said += f" (then {on['error'].split(':')[0]})" if on["error"] else ""
            scores = [f"{r['test']:.2f}" if r["test"] is not None else "NaN" for r in (off, on)]
            rows.append(f"| {name} | {task.score_name} | {seed} | {on['pick']:.3g} | {' | '.join(scores)} | {said} |")
    if rows:
        print("\nModels of other kinds (benchmarks/guard_foreign.py): SuperConvergence() at its pick, guard off and on")
        print("| task | score | seed | pick | guard off | guard on | rescues |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(row)


#: Part 3's tasks: the zoo's with weight decay, whose balance a rescue can change.
BALANCE_TASKS = tuple(name for name in GUARDED if TASKS[name].optimizer.weight_decay > 0)
#: Part 3's variants: the guard alone; beside the balancer, its λ kept after a rescue; rebalanced after it.
BALANCE_VARIANTS = ("no balancer", "kept", "rebalanced")


def part3(cache: dict[str, Any], tasks: list[str]) -> None:
    for name in (t for t in BALANCE_TASKS if t in tasks):
        task = TASKS[name]
        best = oracle(task, load_zoo(task), SEEDS)
        assert best is not None, f"the zoo's oracle grid of {name} is not filled yet"
        for factor in FACTORS:
            for variant in BALANCE_VARIANTS:
                for seed in SEEDS:
                    key = f"balance|{name}|{factor:g}|{variant}|{seed}"
                    if key in cache:
                        continue
                    balancer = None if variant == "no balancer" else WeightDecayBalancer(
                        rebalance_on_rescue=variant == "rebalanced"
                    )  # fmt: skip
                    cache[key] = zoo_run(task, seed, best[0] * factor, True, balancer)
                    save(cache)
                    print(key, cache[key]["test"], len(cache[key]["rescues"]), flush=True)


def print_balance_table(cache: dict[str, Any]) -> None:
    rows = []
    for name in BALANCE_TASKS:
        for factor in FACTORS:
            runs = {v: [cache.get(f"balance|{name}|{factor:g}|{v}|{s}") for s in SEEDS] for v in BALANCE_VARIANTS}
            if any(r is None for rs in runs.values() for r in rs):
                continue
            kept, rebalanced = runs["kept"], runs["rebalanced"]
            moved = [
                r["rebalances"][-1]["weight_decays"][0] / k["weight_decays"][0]
                for r, k in zip(rebalanced, kept, strict=True)
                if r["rebalances"] and k["weight_decays"][0] > 0
            ]
            means = " | ".join(_mean([r["test"] for r in runs[v]]) for v in BALANCE_VARIANTS)
            rescued = sum(bool(r["rescues"]) for r in rebalanced)
            ratio = f"{statistics.median(moved):.3g}x" if moved else "-"
            rows.append(f"| {name} | {factor:g} | {means} | {rescued} of {len(SEEDS)} | {ratio} |")
    if rows:
        print(
            "\nThe balancer after a rescue: test score (mean of 3 seeds) with the guard alone, beside "
            "WeightDecayBalancer() keeping its λ after a rescue (the default), and rebalancing it "
            "(`rebalance_on_rescue=True`)"
        )
        print("| task | x | no balancer | λ kept | λ rebalanced | rescued | λ rebalanced / kept (median) |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(row)


def _mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f}" if values else "-"


def _off_on_row(cache: dict[str, Any], key: str, label: str) -> str | None:
    """One table row from the 3 seeds' guard-off and guard-on runs cached under ``key`` (None while any is missing)."""
    rows = {g: [cache.get(key.format(guard=g, seed=s)) for s in SEEDS] for g in (False, True)}
    if any(r is None for rs in rows.values() for r in rs):
        return None
    off, on = rows[False], rows[True]
    rescues = statistics.fmean(len(r["rescues"]) for r in on)
    time_ratio = statistics.fmean(r["seconds"] for r in on) / statistics.fmean(r["seconds"] for r in off)
    off_test, on_test = _mean([r["test"] for r in off]), _mean([r["test"] for r in on])
    return f"| {label} | {off_test} | {on_test} | {rescues:.1f} | {time_ratio:.2f} |"


def print_tables(cache: dict[str, Any]) -> None:
    print("\nPeaks too high: test score (mean of 3 seeds), guard off -> on; rescues (mean), extra wall time on / off")
    print("| run | best peak | x | guard off | guard on | rescues | wall time on / off |")
    print("|---|---|---|---|---|---|---|")
    lines = []
    for name in GUARD_TASKS:
        best = oracle(TASKS[name], load_zoo(TASKS[name]), SEEDS)
        peak = f"{best[0]:.3g}" if best else "-"
        for factor in FACTORS:
            key = f"high|{name}|{factor:g}|{{guard}}|{{seed}}"
            lines.append(_off_on_row(cache, key, f"{name} | {peak} | {factor:g}"))
    lines += [_off_on_row(cache, f"issue|{row}|{{guard}}|{{seed}}", f"{row} | - | -") for row in ISSUE_RUNS]
    for line in lines:
        if line is not None:
            print(line)
    alarms = {k: v for k, v in cache.items() if k.startswith("alarm|")}
    if alarms:
        fired = [k for k, v in alarms.items() if v["rescues"]]
        differ = [k for k, v in alarms.items() if not v["same"]]
        tasks = sorted({k.split("|")[1] for k in alarms})
        print(
            f"\nFalse alarms: {len(alarms)} zoo runs that ended well without the guard ({len(tasks)} tasks), trained "
            f"again with it: it fired in {len(fired)}; {len(alarms) - len(differ)} ended with exactly the same scores."
        )
        for key in fired + [k for k in differ if k not in fired]:
            print(f"  {key}: {alarms[key]}")
        first_tuning = tuple(name for name in TUNING if name not in FIRST_HELD_OUT)
        halves = (
            ("first tuning", first_tuning),
            ("first held-out", FIRST_HELD_OUT),
            ("second held-out", HELD_OUT),
            ("third and fourth held-out (new to the guard)", UNSEEN_BY_THE_GUARD),
        )
        for half, members in halves:
            mine = [alarms[k] for k in fired if k.split("|")[1] in members]
            gains = [v["test_on"] - v["test_off"] for v in mine]
            print(
                f"  {half} half: fired in {len(mine)}, ended better in {sum(g > 0 for g in gains)}, worse in "
                f"{sum(g < 0 for g in gains)}" + (f" (from {min(gains):+.2f} to {max(gains):+.2f})" if gains else "")
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", type=int, choices=[1, 2, 3, 4], help="only this part (default: all four)")
    parser.add_argument(
        "--tasks",
        nargs="*",
        choices=list(TASKS),
        help=f"part 2's and 3's tasks (default: all {len(GUARDED) + len(UNSEEN_BY_THE_GUARD)} for part 2, "
        f"{len(GUARDED)} for part 3)",
    )
    parser.add_argument("--table-only", action="store_true", help="print from the cache, run nothing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cache = load()
    if not args.table_only:
        if args.part in (None, 1):
            part1(cache)
        if args.part in (None, 2):
            part2(cache, args.tasks or [*GUARDED, *UNSEEN_BY_THE_GUARD])
        if args.part in (None, 3):
            part3(cache, args.tasks or list(GUARDED))
        if args.part in (None, 4):
            part4(cache)
    print_tables(cache)
    print_balance_table(cache)
    print_foreign_table(cache)


if __name__ == "__main__":
    main()
