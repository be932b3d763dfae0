"""Does ``SuperConvergence()`` make other people's models better? The pick zoo: 32 tasks, 7 methods, 3 seeds.

For each task of ``benchmarks/zoo/tasks.py`` and each seed (its own initial weights and data order), this trains:
the oracle (one cycle at every max LR of the task's fixed x2 grid; the table's oracle is the grid point with the best
mean validation score), the user's own setup (the source's optimizer and LR, constant, same steps), one cycle at
Lightning's ``lr_find`` suggestion, ``SuperConvergence()``, the same without its trials, Prodigy and Schedule-Free
(see ``methods.py``). Every
column reports the mean *test* score over seeds (higher is better: accuracy %, R² x 100, next-character accuracy %);
a diverged run counts as the score of predicting nothing (R² 0 for regression). Every run is cached in
``benchmarks/results/zoo/<task>.json`` as it finishes; the runs of our methods are cached per version of the
package's code.

The held-out half (``tasks.HELD_OUT``) was named in a commit of its own before the pick rule was changed and is never
used to tune it (the first held-out half, ``tasks.FIRST_HELD_OUT``, was spent and joined the tuning half). The third
(``tasks.THIRD_HELD_OUT``, ``--half third``) judged the rule of trials sized to the run, once. The fourth
(``tasks.FOURTH_HELD_OUT``, ``--half fourth``) judged the next, a trial stuck above the sweep's lowest loss learning
nothing, once. Both are spent: the next change to the rule needs a fifth, named before it.

Run from the repository root::

    python -m benchmarks.zoo                         # fill what is missing, then print both halves' tables
    python -m benchmarks.zoo --half tuning           # only the tuning half (what a rule change may look at)
    python -m benchmarks.zoo --methods oracle user   # fill only these columns
    python -m benchmarks.zoo --table-only            # print from the cache, run nothing
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.zoo.methods import CANDIDATES, METHODS, OUR_METHODS, code_fingerprint, run
from benchmarks.zoo.tasks import FOURTH_HELD_OUT, HELD_OUT, TASKS, THIRD_HELD_OUT, TUNING, Task

RESULTS = Path(__file__).resolve().parents[1] / "results" / "zoo"
SEEDS = (0, 1, 2)


def cache_path(task: Task) -> Path:
    return RESULTS / f"{task.name}.json"


def load(task: Task) -> dict[str, Any]:
    path = cache_path(task)
    return json.loads(path.read_text()) if path.exists() else {}


def save(task: Task, cache: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = cache_path(task).with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, cache_path(task))  # atomic: an interrupted run never leaves a broken cache


def keys(task: Task, method: str, seed: int, fingerprint: str) -> list[tuple[str, float | None]]:
    """The cache keys (and max LRs) of one method and seed."""
    if method == "oracle":
        return [(f"oracle|{lr:g}|{seed}", lr) for lr in task.grid]
    if method in OUR_METHODS:
        return [(f"{method}|{fingerprint}|{seed}", None)]
    return [(f"{method}|{seed}", None)]


def fill(task: Task, methods: list[str], seeds: tuple[int, ...], fingerprint: str) -> dict[str, Any]:
    cache = load(task)
    for method in methods:
        for seed in seeds:
            for key, max_lr in keys(task, method, seed, fingerprint):
                if key in cache:
                    continue
                cache[key] = run(task, method, seed, max_lr=max_lr)
                save(task, cache)
                result = cache[key]
                print(f"{task.name} {key}: test {result.get('test')} max_lr {result.get('max_lr')}", flush=True)
    return cache


# ----------------------------------------------------------------------------------------------------- the table


def score(task: Task, result: dict[str, Any] | None, split: str = "test") -> float:
    r"""A run's score; a regression that diverged or does worse than predicting the mean counts as R² 0.

    (A classifier or language model whose outputs turned NaN is scored as it is: its argmax picks one class, which is
    about what predicting nothing scores.)
    """
    if result is None or result.get(split) is None:
        return math.nan
    value = float(result[split])
    if task.kind == "regression":
        return max(value, 0.0) if math.isfinite(value) else 0.0
    return value


def mean_sem(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def oracle(task: Task, cache: dict[str, Any], seeds: tuple[int, ...]) -> tuple[float, list[float]] | None:
    """The grid point with the best mean validation score, and its per-seed test scores."""
    means = {}
    for lr in task.grid:
        runs = [cache.get(f"oracle|{lr:g}|{seed}") for seed in seeds]
        if any(r is None for r in runs):
            return None
        means[lr] = statistics.fmean(score(task, r, "val") for r in runs)
    best = max(task.grid, key=lambda lr: means[lr])
    return best, [score(task, cache[f"oracle|{best:g}|{seed}"]) for seed in seeds]


def row(task: Task, cache: dict[str, Any], seeds: tuple[int, ...], fingerprint: str) -> dict[str, Any] | None:
    best = oracle(task, cache, seeds)
    if best is None:
        return None
    best_lr, oracle_scores = best
    out: dict[str, Any] = {"task": task, "oracle_lr": best_lr, "oracle": oracle_scores}
    out["edge"] = best_lr in (task.grid[0], task.grid[-1])
    for method in ("user", "lightning", "prodigy", "schedulefree", "ours", "sweep_only", *CANDIDATES):
        runs = [cache.get(keys(task, method, seed, fingerprint)[0][0]) for seed in seeds]
        if any(r is None for r in runs):
            out[method] = None
            continue
        out[method] = [score(task, r) for r in runs]
        out[method + "_lr"] = [r.get("max_lr") for r in runs]
        out[method + "_runs"] = runs
    return out


def _fmt(values: list[float] | None) -> str:
    if values is None:
        return "-"
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "none"
    m, se = mean_sem(finite)
    return f"{m:.2f} ± {se:.2f}"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title} (mean test score ± s.e. over seeds; higher is better)")
    print(
        "| task | oracle max_lr | oracle | user's own | Lightning lr | Lightning | ours: max_lr (span) | ours | "
        "gap (worst seed) | Prodigy | Schedule-Free |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        task = r["task"]
        light_lrs = [lr for lr in (r.get("lightning_lr") or []) if lr]
        light_lr = f"{statistics.median(light_lrs):.2g}" if light_lrs else "-"
        if r["ours"] is not None:
            lrs = [lr for lr in r["ours_lr"] if lr]
            span = max(lrs) / min(lrs)
            ours_lr = f"{statistics.geometric_mean(lrs):.3g} ({span:.1f}x)"
            gaps = [o - a for o, a in zip(r["ours"], r["oracle"], strict=True)]
            gap = f"{statistics.fmean(gaps):+.2f} ({min(gaps):+.2f})"
        else:
            ours_lr = gap = "-"
        edge = " (edge!)" if r["edge"] else ""
        print(
            f"| {task.name} | {r['oracle_lr']:.3g}{edge} | {_fmt(r['oracle'])} | {_fmt(r['user'])} | {light_lr} | "
            f"{_fmt(r['lightning'])} | {ours_lr} | {_fmt(r['ours'])} | {gap} | {_fmt(r['prodigy'])} | "
            f"{_fmt(r['schedulefree'])} |"
        )


def print_targets(rows: list[dict[str, Any]]) -> None:
    """The four targets, task by task, for the rows given (the held-out half)."""
    print("\nTargets: mean gap to the oracle >= -0.5 and worst seed >= -1.5; user's own minus ours <= 0; no run "
          "more than 20 below the oracle or NaN; picks within 2x across seeds.")  # fmt: skip
    met_all = True
    if not any(r["ours"] is not None for r in rows):
        print("  no `ours` runs of this version of the code yet")
        return
    for r in rows:
        if r["ours"] is None:
            continue
        gaps = [o - a for o, a in zip(r["ours"], r["oracle"], strict=True)]
        regret = statistics.fmean(r["user"]) - statistics.fmean(r["ours"]) if r["user"] else math.nan
        nan = any(run.get("nonfinite") or run.get("test") is None for run in r["ours_runs"])
        lrs = [lr for lr in r["ours_lr"] if lr]
        span = max(lrs) / min(lrs)
        checks = {
            "gap": statistics.fmean(gaps) >= -0.5,
            "worst": min(gaps) >= -1.5,
            "regret": regret <= 0,
            "catastrophe": min(gaps) >= -20 and not nan,
            "stable": span <= 2.0,
        }
        met_all &= all(checks.values())
        failed = [name for name, ok in checks.items() if not ok]
        print(
            f"  {r['task'].name}: gap {statistics.fmean(gaps):+.2f}, worst {min(gaps):+.2f}, user-ours {regret:+.2f}, "
            f"span {span:.2f}x: {'all met' if not failed else 'MISSED ' + ', '.join(failed)}"
        )
    print(f"  all targets met: {met_all}")


def print_summary(rows: list[dict[str, Any]]) -> None:
    """Against the learning-rate-free methods, and Lightning's suggestion: mean difference over tasks."""
    for method in ("user", "lightning", "prodigy", "schedulefree"):
        diffs = [
            statistics.fmean(r["ours"]) - statistics.fmean(r[method])
            for r in rows
            if r["ours"] is not None and r.get(method) and not any(math.isnan(v) for v in r[method])
        ]
        if diffs:
            wins = sum(d > 0 for d in diffs)
            mean = statistics.fmean(diffs)
            print(f"  ours minus {method}: mean {mean:+.2f} over {len(diffs)} tasks, ahead on {wins}")


def print_trials(rows: list[dict[str, Any]]) -> None:
    """What the trials buy: ``SuperConvergence()`` against ``SuperConvergence(trial_steps=0)``.

    Their cost in time is measured apart, in one process (``benchmarks/pick_benchmark.py``).
    """
    pairs = [r for r in rows if r["ours"] is not None and r.get("sweep_only") is not None]
    if not pairs:
        return
    print("\nTrials against the sweep alone (trial_steps=0: a quarter of the LR where the loss rose back); test score")
    print("| task | sweep alone: max_lr (span) | sweep alone | with trials | with trials minus sweep alone |")
    print("|---|---|---|---|---|")
    diffs = []
    for r in pairs:
        lrs = [lr for lr in r["sweep_only_lr"] if lr]
        diffs.append(statistics.fmean(r["ours"]) - statistics.fmean(r["sweep_only"]))
        print(
            f"| {r['task'].name} | {statistics.geometric_mean(lrs):.3g} ({max(lrs) / min(lrs):.1f}x) | "
            f"{_fmt(r['sweep_only'])} | {_fmt(r['ours'])} | {diffs[-1]:+.2f} |"
        )
    print(f"  trials minus sweep alone: mean {statistics.fmean(diffs):+.2f}, ahead on {sum(d > 0 for d in diffs)}")


def print_candidates(rows: list[dict[str, Any]]) -> None:
    """A candidate rule against ``SuperConvergence()`` as it is, where both ran (``--methods long_trials``)."""
    for method in CANDIDATES:
        pairs = [r for r in rows if r["ours"] is not None and r.get(method) is not None]
        if not pairs:
            continue
        print(f"\nCandidate `{method}` against SuperConvergence() as it is; test score (gap to the oracle)")
        print("| task | ours: max_lr (span) | ours | candidate: max_lr (span) | candidate | candidate minus ours |")
        print("|---|---|---|---|---|---|")
        diffs = []
        for r in pairs:
            mine, lrs = [lr for lr in r["ours_lr"] if lr], [lr for lr in r[method + "_lr"] if lr]
            diffs.append(statistics.fmean(r[method]) - statistics.fmean(r["ours"]))
            oracle = statistics.fmean(r["oracle"])
            print(
                f"| {r['task'].name} | {statistics.geometric_mean(mine):.3g} ({max(mine) / min(mine):.1f}x) "
                f"| {_fmt(r['ours'])} ({statistics.fmean(r['ours']) - oracle:+.2f}) | "
                f"{statistics.geometric_mean(lrs):.3g} ({max(lrs) / min(lrs):.1f}x) | {_fmt(r[method])} "
                f"({statistics.fmean(r[method]) - oracle:+.2f}) | {diffs[-1]:+.2f} |"
            )
        print(f"  {method} minus ours: mean {statistics.fmean(diffs):+.2f}, ahead on {sum(d > 0 for d in diffs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--half", choices=["tuning", "held-out", "third", "fourth", "all"], default="all")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=[*METHODS, *CANDIDATES])
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    parser.add_argument("--table-only", action="store_true", help="print from the cache, run nothing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    everything = TUNING + HELD_OUT + THIRD_HELD_OUT + FOURTH_HELD_OUT
    halves = {
        "tuning": TUNING, "held-out": HELD_OUT, "third": THIRD_HELD_OUT, "fourth": FOURTH_HELD_OUT, "all": everything
    }  # fmt: skip
    names = [n for n in halves[args.half] if n in args.tasks]
    seeds = tuple(args.seeds)
    if set(args.methods) & set(CANDIDATES) and set(names) & set(THIRD_HELD_OUT + FOURTH_HELD_OUT):
        parser.error(
            f"{', '.join(CANDIDATES)} runs on the tasks a rule may be tuned on, never on --half third or fourth"
        )
    fingerprint = code_fingerprint()
    caches = {}
    for name in names:
        task = TASKS[name]
        caches[name] = load(task) if args.table_only else fill(task, args.methods, seeds, fingerprint)
    print(f"\nour code's fingerprint: {fingerprint}")
    halves_shown = (
        ("tuning half", TUNING), ("held-out half", HELD_OUT), ("third held-out half", THIRD_HELD_OUT),
        ("fourth held-out half", FOURTH_HELD_OUT),
    )  # fmt: skip
    for half, members in halves_shown:
        rows = [r for n in members if n in caches and (r := row(TASKS[n], caches[n], seeds, fingerprint))]
        if not rows:
            continue
        print_table(rows, f"Pick zoo, {half}")
        print_targets(rows)
        print_summary(rows)
        print_trials(rows)
        if members is not THIRD_HELD_OUT and members is not FOURTH_HELD_OUT:
            print_candidates(rows)


if __name__ == "__main__":
    main()
