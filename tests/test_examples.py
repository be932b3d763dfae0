"""The examples' ``main()`` end to end, shrunk: the code paths a user runs, on tiny data."""

from __future__ import annotations

import math

import pytest

from lightning_superconv import SuperConvergence, WeightDecayBalancer


def _callbacks(trainer):
    sc = next(c for c in trainer.callbacks if isinstance(c, SuperConvergence))
    wd = next(c for c in trainer.callbacks if isinstance(c, WeightDecayBalancer))
    return sc, wd


def test_cifar10_example_runs_on_fake_data(tmp_path, capsys):
    """ResNet-9 on the generated stand-in: range test, one cycle, the balancer, test, summary line."""
    from examples.cifar10_resnet import main

    out = main(
        [
            "--fake-data", "--accelerator", "cpu", "--devices", "1", "--width", "4", "--epochs", "4",
            "--batch-size", "32", "--range-test-steps", "30", "--lr-range", "1e-3", "3", "--log-dir", str(tmp_path),
        ]
    )  # fmt: skip
    sc, wd = _callbacks(out["trainer"])
    assert sc.result is not None
    assert 1e-3 <= sc.max_lr <= 3
    assert len(sc.result.lrs) <= 45  # 30, and at most 15 more past `lr_range[1]`
    assert wd.weight_decays is not None
    assert out["trainer"].optimizers[0].param_groups[0]["weight_decay"] == wd.weight_decays[0]
    assert "timescale" in wd.reason
    assert 0 <= out["test_acc"] <= 100
    assert "CIFAR-10 resnet9: test accuracy" in capsys.readouterr().out


def test_cifar10_example_runs_resnet56_in_bf16(tmp_path):
    """ResNet-56 under ``bf16-mixed``: the range test and the cycle go through the precision plugin."""
    from examples.cifar10_resnet import main

    out = main(
        [
            "--fake-data", "--accelerator", "cpu", "--devices", "1", "--arch", "resnet56", "--width", "4",
            "--precision", "bf16-mixed", "--epochs", "1", "--batch-size", "16", "--range-test-steps", "10",
            "--trial-steps", "0",
            "--lr-range", "1e-3", "3", "--limit-batches", "3", "--log-dir", str(tmp_path),
        ]
    )  # fmt: skip
    trainer = out["trainer"]
    sc, _ = _callbacks(trainer)
    assert trainer.precision == "bf16-mixed"
    assert sc.result is not None
    assert math.isfinite(sc.max_lr)
    assert trainer.global_step == 3


@pytest.mark.slow
def test_fashion_mnist_example_runs_on_a_subset(tmp_path, capsys):
    """The README's main job on 256 images: TensorBoard path printed, one summary line with test accuracy and time."""
    from examples.fashion_mnist import main

    out = main(
        [
            "--epochs", "2", "--train-size", "256", "--val-size", "128", "--batch-size", "16", "--width", "4",
            "--range-test-steps", "30", "--log-dir", str(tmp_path), "--precision", "32-true", "--no-progress-bar",
        ]
    )  # fmt: skip
    sc, wd = _callbacks(out["trainer"])
    assert sc.result is not None
    assert sc.max_lr is not None
    assert wd.weight_decays is not None
    assert 0 <= out["test_acc"] <= 100
    assert out["seconds"] > 0
    printed = capsys.readouterr().out
    assert f"TensorBoard logs: {out['trainer'].logger.log_dir}" in printed
    (summary,) = [line for line in printed.splitlines() if line.startswith("Fashion-MNIST:")]
    assert f"test accuracy {out['test_acc']:.2f} %" in summary
    assert "min wall time" in summary


@pytest.mark.slow
def test_cifar10_readme_command_runs_as_written(tmp_path, monkeypatch):
    """The README's `python examples/cifar10_resnet.py --fake-data ... --trial-steps 0`, exactly, exits 0."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    command = [
        sys.executable, "examples/cifar10_resnet.py", "--fake-data", "--epochs", "1", "--accelerator", "cpu",
        "--trial-steps", "0",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CIFAR-10 resnet9: test accuracy" in done.stdout


def test_readme_lists_how_ci_checks_each_of_its_commands(capsys):
    """Every README command is known to CI's checker, and the development section shows the checker's own lists."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("readme_commands", root / ".ci" / "readme_commands.py")
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    commands = checker.readme_commands()
    assert "python -m pytest" in commands
    assert set(commands) <= set(checker.COMMANDS), set(commands) - set(checker.COMMANDS)
    checker.print_lists()
    lists = capsys.readouterr().out.strip()
    assert lists.count("\n- ") >= len(set(commands))
    assert lists in (root / "README.md").read_text()


def test_readme_headings_code_fences_and_tables_start_their_lines():
    """A paragraph reflow that runs past its paragraph pulls headings, fences and table rows into running text.

    It happened once (35a724e): the commands of a code block it swallowed vanished from CI's checker unnoticed.
    """
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert text.count("```") % 2 == 0
    for number, line in enumerate(text.splitlines(), start=1):
        assert "```" not in line or line.lstrip().startswith("```"), (number, line)
        assert not re.search(r"\S\s+#{2,4} \S", line), (number, line)  # a heading inside running text
        assert not re.search(r"[^|`]\s\|---\|", line), (number, line)  # a table's rule inside running text
