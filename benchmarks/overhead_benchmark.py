"""What the callbacks cost per training step, by Lightning's ``SimpleProfiler``, on two networks on Fashion-MNIST.

Both callbacks run with their defaults inside a real ``fit``; Lightning's ``SimpleProfiler`` times every callback hook
(``[Callback]SuperConvergence.on_train_batch_start`` and so on) and the training loop itself. Per step we add up the
time spent in all hooks of each callback that run during training (batch start/end, before/after backward, before
the optimizer step and zero_grad, epoch start/end) and divide by the mean time of a training step (the profiler's
``run_training_epoch`` over the steps it ran, so data loading, forward, backward, the optimizer and logging are all in
the denominator). Target: at most 1 % for both callbacks together.

Reported beside it, for scale: the ``OneCycleLR.step()`` the installed schedule costs (any scheduler costs about as
much), Lightning's own ``LearningRateMonitor`` (which logs what ``SuperConvergence`` logs), a callback that does
nothing (what the profiler records for any callback: Lightning calls each of its six per-step hooks under the profiler
whether it is overridden or not, so two callbacks cannot cost less than twice this), and the one-off costs at
the start: the range test (``SuperConvergence.on_fit_start``) and the balancer's choice
(``WeightDecayBalancer.on_fit_start`` and ``on_train_start``: a grid of short branches in ``mode="grid"``, arithmetic
otherwise), in seconds and in training steps' worth.

Setups: ``example`` is the README's main job (``examples/fashion_mnist.py``: its network, data pipeline, precision
and TensorBoard logging every 10 steps) on a 12,800-image subset for 4 epochs; ``bn_cnn`` is the small BatchNorm CNN
of ``benchmarks/common.py`` (a fast step, so the hooks weigh most), fp32, logging every step.

Beside the fits, it times what a TensorBoard write costs the code that makes it, outside any fit: the first write
after a stretch of torch work (TensorBoard's writer thread is asleep and wakes for it) against a second write right
after it (the thread is awake). The callback that writes first in a step pays the wake; that is why the order of the
callbacks moves their per-step times.

Run from the repository root (10-18 minutes on 2 CPU cores; results go to ``benchmarks/results/overhead.json``)::

    python -m benchmarks.overhead_benchmark
    python -m benchmarks.overhead_benchmark --report   # the table of the last run, from the cache
    python -m benchmarks.overhead_benchmark --setups   # the TensorBoard write alone (seconds)
    python -m benchmarks.overhead_benchmark --setups bn_cnn   # one setup again: its row of the cache is replaced

A run of some setups replaces their rows and keeps the others' (each row records the commit it was measured at).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.profilers import SimpleProfiler
from torch.utils.tensorboard import SummaryWriter

from benchmarks.common import PAIRS, BenchModule, load_cache, save_cache
from examples.fashion_mnist import FashionClassifier, default_precision
from examples.fashion_mnist_data import FashionMNISTDataModule
from lightning_superconv import SuperConvergence, WeightDecayBalancer

CACHE = "overhead.json"
WRITE_CACHE = "overhead_tensorboard_write.json"
# Hooks that run once per fit (their cost is reported as one-off), not per training step.
ONE_OFF = {"setup", "on_fit_start", "on_train_start", "on_train_end", "on_fit_end", "teardown", "on_save_checkpoint",
           "state_dict", "load_state_dict", "on_sanity_check_start", "on_sanity_check_end"}  # fmt: skip


class DoesNothing(Callback):
    """A callback that overrides no hook: the floor any callback's per-step hooks measure under the profiler."""


def _profile(setup: str, logdir: str, ours_first: bool) -> dict[str, Any]:
    r"""One profiled fit of ``setup`` with both callbacks and ``LearningRateMonitor``; returns the profiler's totals.

    ``ours_first``: our callbacks before ``LearningRateMonitor`` in the list, else after. The first callback's hooks
    run first after the data loader and the training step and measure several microseconds more (cold caches), so the
    fits alternate the order and the ratio is the median over both.
    """
    L.seed_everything(0, verbose=False)
    if setup == "example":
        dm = FashionMNISTDataModule(batch_size=256, train_size=12_800, val_size=5000, augment=True)
        model: L.LightningModule = FashionClassifier()
        epochs, precision, log_every = 4, default_precision(), 10
    else:
        dm = FashionMNISTDataModule(batch_size=128, train_size=12_800, val_size=5000)
        model = BenchModule(PAIRS["bn_cnn_sgd"])
        epochs, precision, log_every = 3, "32-true", 1
    profiler = SimpleProfiler()
    ours: list[Callback] = [SuperConvergence(), WeightDecayBalancer()]
    monitor = LearningRateMonitor(logging_interval="step")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_epochs=epochs,
        callbacks=[*([*ours, monitor] if ours_first else [monitor, *ours]), DoesNothing()],
        logger=TensorBoardLogger(logdir, name=setup),
        log_every_n_steps=log_every,
        profiler=profiler,
        check_val_every_n_epoch=10_000,  # the balancer's grid reads the validation set; training runs no validation
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    steps = trainer.global_step
    durations = profiler.recorded_durations
    step_seconds = sum(durations["run_training_epoch"]) / steps

    def hooks(name: str, one_off: bool) -> float:
        return sum(
            sum(times)
            for key, times in durations.items()
            if key.startswith(f"[Callback]{name}") and (key.rsplit(".", 1)[-1] in ONE_OFF) == one_off
        )

    scheduler = sum(sum(v) for k, v in durations.items() if k.endswith(".lr_scheduler_step"))
    return {
        "steps": steps,
        "step_ms": 1000 * step_seconds,
        "superconvergence_ms": 1000 * hooks("SuperConvergence", False) / steps,
        "balancer_ms": 1000 * hooks("WeightDecayBalancer", False) / steps,
        "lr_monitor_ms": 1000 * hooks("LearningRateMonitor", False) / steps,
        "nothing_ms": 1000 * hooks("DoesNothing", False) / steps,
        "scheduler_ms": 1000 * scheduler / steps,
        "range_test_s": hooks("SuperConvergence", True),
        "grid_s": hooks("WeightDecayBalancer", True),
        "ours_first": ours_first,
    }


def _tensorboard_writes(logdir: str, steps: int = 400, matmuls: int = 20) -> dict[str, float]:
    r"""Median time of a ``SummaryWriter.add_scalar`` (and 20 µs of Python after it) first and second in a "step".

    Each step first runs torch work that releases the GIL (as forward and backward do: ``matmuls`` products of two
    256x256 matrices), long enough for TensorBoard's writer thread to finish the previous step's events and sleep;
    then one write wakes it and a second follows. One round; :func:`main` runs ``--repeats`` of them and reports their
    median.
    """

    def python_for(seconds: float) -> None:  # a hook's own Python after the write, where the woken thread cuts in
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            pass

    writer = SummaryWriter(logdir)
    work = torch.randn(256, 256)
    first, second = [], []
    for step in range(steps):
        for _ in range(matmuls):
            work @ work
        t0 = time.perf_counter()
        writer.add_scalar("write/first", 0.1, step)
        python_for(2e-5)
        t1 = time.perf_counter()
        writer.add_scalar("write/second", 0.9, step)
        python_for(2e-5)
        second.append(time.perf_counter() - t1)
        first.append(t1 - t0)
    writer.close()
    return {"first_ms": 1000 * statistics.median(first), "second_ms": 1000 * statistics.median(second)}


def print_writes(writes: dict[str, Any]) -> None:
    rounds = writes["rounds"]
    wakes = ", ".join(f"{r['first_ms'] - r['second_ms']:.3f}" for r in rounds)
    first, second = writes["first_ms"], writes["second_ms"]
    print(
        f"\nA TensorBoard write (add_scalar, and 20 µs of Python after it), median of {len(rounds)} rounds of 400 "
        f"steps of torch work: first in its step {first:.3f} ms, right after another {second:.3f} ms. Waking "
        f"TensorBoard's writer thread costs the first writer (first less second, per round) {wakes} ms."
    )
    if long := writes.get("long"):
        wakes = ", ".join(f"{r['first_ms'] - r['second_ms']:.3f}" for r in long["rounds"])
        print(
            f"After ten times the torch work per step (the writer thread sleeps ten times longer; "
            f"{len(long['rounds'])} rounds of 100 steps): first {long['first_ms']:.3f} ms, right after another "
            f"{long['second_ms']:.3f} ms; the wake, per round, {wakes} ms."
        )


def print_table(results: dict[str, Any]) -> None:
    if not results:  # found in a review: `--report` on an empty cache crashed with a bare `StopIteration`
        print("\nNo profiled fits are cached: run `python -m benchmarks.overhead_benchmark` to measure them.")
        return
    repeats = len(next(iter(results.values()))["runs"])
    print(f"\nPer training step, median of {repeats} profiled fits (Lightning's SimpleProfiler):")
    print("| setup | step (ms) | SuperConvergence hooks | WeightDecayBalancer hooks | both | OneCycleLR.step | "
          "LearningRateMonitor | a callback that does nothing | range test (one-off) | "
          "WeightDecayBalancer at start (one-off) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setup, r in results.items():
        step = r["step_ms"]

        def pct(ms: float, step: float = step) -> str:
            return f"{ms:.3f} ms ({100 * ms / step:.2f} %)"

        both = r["superconvergence_ms"] + r["balancer_ms"]
        print(
            f"| {setup} ({r['steps']:.0f} steps, at {r.get('commit', 'an earlier commit')}) | {step:.1f} | "
            f"{pct(r['superconvergence_ms'])} | "
            f"{pct(r['balancer_ms'])} | {pct(both)} | {pct(r['scheduler_ms'])} | {pct(r['lr_monitor_ms'])} | "
            f"{pct(r['nothing_ms'])} | "
            f"{r['range_test_s']:.1f} s ({1000 * r['range_test_s'] / step:.0f} steps) | "
            f"{r['grid_s']:.2f} s ({1000 * r['grid_s'] / step:.0f} steps) |"
        )
    worst = max(100 * (r["superconvergence_ms"] + r["balancer_ms"]) / r["step_ms"] for r in results.values())
    print(f"\nBoth callbacks' hooks, worst setup: {worst:.2f} % of a training step (target: <= 1 %).")
    for setup, r in results.items():
        ratios = [(run["superconvergence_ms"] + run["balancer_ms"]) / run["lr_monitor_ms"] for run in r["runs"]]
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        print(
            f"{setup}: both callbacks' per-step hooks / LearningRateMonitor's, in the same fit: {shown} "
            f"(median {statistics.median(ratios):.2f}; target <= 0.25)"
        )
        floor = [2 * run["nothing_ms"] / run["lr_monitor_ms"] for run in r["runs"]]
        net = [
            (run["superconvergence_ms"] + run["balancer_ms"] - 2 * run["nothing_ms"])
            / (run["lr_monitor_ms"] - run["nothing_ms"])
            for run in r["runs"]
        ]
        print(
            f"{setup}: two callbacks that do nothing / LearningRateMonitor: median {statistics.median(floor):.2f} "
            f"(the floor of that ratio); net of that floor (each side less what a callback that does nothing "
            f"measures): median {statistics.median(net):.2f}"
        )


def _commit() -> str:
    """The repository's commit the run measured (with "+" when the working tree had changes), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", nargs="*", default=["example", "bn_cnn"], choices=["example", "bn_cnn"])
    parser.add_argument(
        "--repeats", type=int, default=4, help="fits per setup, the callbacks' order alternating; the table: median"
    )
    parser.add_argument("--report", action="store_true", help="print the table of the last run from the cache")
    parser.add_argument("--no-save", action="store_true", help="leave the cached results as they are")
    args = parser.parse_args()
    if args.report:
        print_table(load_cache(CACHE))
        if cached := load_cache(WRITE_CACHE):
            print_writes(cached)
        return
    torch.set_num_threads(2)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as logdir:
        for setup in args.setups:
            runs = [_profile(setup, logdir, ours_first=i % 2 == 0) for i in range(args.repeats)]
            results[setup] = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "ours_first"}
            results[setup]["runs"] = runs
            results[setup]["commit"] = _commit()
        writes: dict[str, Any] = {}
        for name, steps, matmuls in (("short", 400, 20), ("long", 100, 200)):
            rounds = [_tensorboard_writes(logdir, steps, matmuls) for _ in range(args.repeats)]
            part: dict[str, Any] = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
            part["rounds"] = rounds
            if name == "short":
                writes.update(part)
            else:
                writes["long"] = part
    if not args.no_save:
        if results:
            save_cache(CACHE, {**load_cache(CACHE), **results})
        save_cache(WRITE_CACHE, writes)
    if results:
        print_table(results)
    print_writes(writes)


if __name__ == "__main__":
    main()
