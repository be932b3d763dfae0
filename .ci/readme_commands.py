"""Run every command the README shows: exactly as written, shortened, or only its ``--help``.

Each shell command in the README's ``bash`` blocks must be listed below with how CI checks it, else this script
fails (a new command cannot go unchecked). Commands that need a GPU, a network or more than 10 minutes are checked
with ``--help``; long ones that can be shrunk run with the flags given here. The README's development section shows
the same three lists.

    python .ci/readme_commands.py           # run them all (CI does, after the test suite)
    python .ci/readme_commands.py --list    # print the three lists
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# README command -> ("exact" | "short" | "help", what CI runs, why)
MAIN_EXAMPLE = (
    'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[examples]" && python examples/fashion_mnist.py'
)
COMMANDS: dict[str, tuple[str, str, str]] = {
    MAIN_EXAMPLE: (
        "short",
        "python examples/fashion_mnist.py --epochs 1 --train-size 2000 --val-size 500 --width 8 --trial-steps 50 "
        "--log-dir {tmp}",
        "9 epochs take about 20 minutes on 2 CPU cores; the installs are the environment CI has already built",
    ),
    'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test,examples]" && python -m pytest': (
        "exact",
        "",
        "this is CI's test phase itself (.ci/run), in a fresh virtual environment",
    ),
    "python -m benchmarks.wd_benchmark": ("help", "python -m benchmarks.wd_benchmark --help", "about 25 minutes"),
    "python -m benchmarks.pick_benchmark": (
        "short",
        "python -m benchmarks.pick_benchmark --timing-only",
        "the accuracy table trains 9 runs of 3 epochs (over 10 minutes); the timing table runs in about 3 minutes",
    ),
    "python -m benchmarks.speedup_benchmark": (
        "help",
        "python -m benchmarks.speedup_benchmark --help",
        "about 50 minutes with an empty cache",
    ),
    "python -m benchmarks.overhead_benchmark": (
        "short",
        "python -m benchmarks.overhead_benchmark --setups bn_cnn --repeats 1 --no-save",
        "the full run takes 10-18 minutes; one fit of the fast setup shows the table",
    ),
    "python -m benchmarks.overhead_benchmark --setups": (
        "exact",
        "",
        "times the TensorBoard write alone, in well under a minute on a quiet machine (several minutes on a loaded "
        "one), and writes this machine's figures into `benchmarks/results/overhead_tensorboard_write.json` "
        "(`--no-save` leaves it)",
    ),
    "python -m benchmarks.zoo --table-only": (
        "exact",
        "",
        "prints the zoo's table from the committed cache",
    ),
    "python -m benchmarks.zoo": (
        "help",
        "python -m benchmarks.zoo --help",
        "3-4 hours of CPU with an empty cache",
    ),
    "python -m benchmarks.skewed_regression --report": (
        "exact",
        "",
        "prints the table from the committed cache",
    ),
    "python -m benchmarks.skewed_regression": (
        "help",
        "python -m benchmarks.skewed_regression --help",
        "trains 42 small fits where the cache lacks this version's (about 2 minutes; scikit-learn, from `.[bench]`)",
    ),
    "python -m benchmarks.guard_benchmark --table-only": ("exact", "", "prints the guard's table from the cache"),
    "python -m benchmarks.guard_benchmark": (
        "help",
        "python -m benchmarks.guard_benchmark --help",
        "two hours or more",
    ),
    "python examples/fashion_mnist_cli.py fit --config examples/fashion_mnist_cli.yaml": (
        "short",
        "python examples/fashion_mnist_cli.py fit --config examples/fashion_mnist_cli.yaml --trainer.max_epochs=1 "
        "--data.train_size=2000 --data.val_size=500 --trainer.logger.init_args.save_dir={tmp}",
        "the config trains 9 epochs; the shortened run is still several minutes (11 on a loaded 2-core machine), "
        "most of it the range test's sweep and trials, which a run of one epoch keeps at 100 steps each",
    ),
    "python examples/cifar10_resnet.py --arch resnet9 --epochs 24 --precision 16-mixed": (
        "help",
        "python examples/cifar10_resnet.py --help",
        "needs a GPU and the CIFAR-10 download",
    ),
    "python examples/cifar10_resnet.py --arch resnet56 --epochs 50 --devices 4 --strategy ddp --precision 16-mixed": (
        "help",
        "python examples/cifar10_resnet.py --help",
        "needs 4 GPUs and the CIFAR-10 download",
    ),
    "python examples/cifar10_resnet.py --fake-data --epochs 1 --accelerator cpu --trial-steps 0": (
        "exact",
        "",
        "about 15 seconds (with its trials, of at least 100 steps each, about 3 minutes)",
    ),
    "python examples/fashion_mnist.py": (
        "help",
        "python examples/fashion_mnist.py --help",
        "the main example again (TensorBoard section), about 20 minutes: its shortened run above prints the log path",
    ),
    "tensorboard --logdir lightning_logs": ("help", "tensorboard --help", "starts a server that runs until stopped"),
    "python -m pytest": ("exact", "", "CI's test phase itself"),
    'python -m pytest -m "not slow"': (
        "short",
        'python -m pytest -m "not slow" --collect-only -q',
        "a subset of the full run CI makes anyway: only its selection is checked",
    ),
    "ruff check . && ruff format --check . && mypy": ("exact", "", "CI's lint phase itself"),
    "python .ci/readme_commands.py --list": ("exact", "", "prints these lists"),
}

# run by .ci/run itself before this script: not run twice
ALREADY_RUN = {
    'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test,examples]" && python -m pytest',
    "python -m pytest",
    "ruff check . && ruff format --check . && mypy",
}


def readme_commands() -> list[str]:
    """The commands of the README's ``bash`` blocks (comments and continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            command = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            commands.append(re.sub(r"\s+", " ", command))
    return commands


def print_lists() -> None:
    """The three lists, as the README's development section shows them."""
    for mode, title in (("exact", "run exactly as written"), ("short", "run shortened"), ("help", "--help only")):
        print(f"\n{title}:")
        for command, (m, run, why) in COMMANDS.items():
            if m == mode:
                shown = f"`{command}`" + (f" as `{run.format(tmp='TMP')}`" if m == "short" else "")
                print(f"- {shown}: {why}")


def main() -> int:
    """Check every README command: unknown ones fail; the others run as their list says."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="print the three lists and exit")
    args = parser.parse_args()
    if args.list:
        print_lists()
        return 0
    missing = [c for c in readme_commands() if c not in COMMANDS]
    if missing:
        print("README commands CI does not know how to check (add them to .ci/readme_commands.py):", *missing, sep="\n")
        return 1
    import tempfile

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for command in dict.fromkeys(readme_commands()):
            mode, run, _ = COMMANDS[command]
            if command in ALREADY_RUN:
                print(f"== already run by .ci/run: {command}", flush=True)
                continue
            actual = command if mode == "exact" else run.format(tmp=tmp)
            start = time.perf_counter()
            done = subprocess.run(actual, shell=True, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            status = "ok" if done.returncode == 0 else f"FAILED ({done.returncode})"
            print(f"== {mode}: {actual}  [{status}, {seconds:.0f} s]", flush=True)
            if done.returncode != 0:
                failures += 1
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
