"""LightningCLI builds both callbacks from the example's YAML (``trainer.callbacks``) and they run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from torch.optim.lr_scheduler import OneCycleLR

from lightning_superconv import SuperConvergence, WeightDecayBalancer

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "fashion_mnist_cli.yaml"


def _callback_args(class_name: str) -> dict:
    config = yaml.safe_load(CONFIG.read_text())
    (entry,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(class_name)]
    return entry["init_args"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The example CLI's ``fit`` on the YAML config, shrunk on the command line (but long enough for the grid)."""
    from examples.fashion_mnist_cli import main

    tmp_path = tmp_path_factory.mktemp("cli")
    return main(
        [
            "fit",
            "--config", str(CONFIG),
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.precision=32-true",
            "--trainer.max_epochs=3",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false",
            "--model.width=4",
            "--data.train_size=512",
            "--data.val_size=128",
            "--data.batch_size=8",
        ]
    )  # fmt: skip


def test_superconvergence_is_built_from_the_yaml(cli):
    """The ``SuperConvergence`` in the trainer carries the YAML's ``init_args``."""
    (sc,) = [c for c in cli.trainer.callbacks if isinstance(c, SuperConvergence)]
    expected = _callback_args("SuperConvergence")
    assert sc.range_test.lr_range == tuple(expected["lr_range"])
    assert sc.range_test.num_steps == expected["num_steps"]
    assert sc.range_test.trial_steps == expected["trial_steps"]  # None: the main example's trials, sized to the run
    assert sc.cycle.pct_start == expected["pct_start"]
    assert sc.cycle.div_factor == expected["div_factor"]
    assert sc.cycle.final_div_factor == expected["final_div_factor"]


def test_weight_decay_balancer_is_built_from_the_yaml(cli):
    """The ``WeightDecayBalancer`` in the trainer carries the YAML's ``init_args``."""
    (wd,) = [c for c in cli.trainer.callbacks if isinstance(c, WeightDecayBalancer)]
    expected = _callback_args("WeightDecayBalancer")
    assert wd.mode == expected["mode"]
    assert wd.min_budget == expected["min_budget"]


def test_both_callbacks_ran(cli):
    """The range test ran within the YAML's limits and installed its pick; the balancer set the weight decay."""
    (sc,) = [c for c in cli.trainer.callbacks if isinstance(c, SuperConvergence)]
    (wd,) = [c for c in cli.trainer.callbacks if isinstance(c, WeightDecayBalancer)]
    assert sc.result is not None
    assert 2 < len(sc.result.lrs) <= sc.range_test.num_steps
    assert sc.range_test.lr_range[0] <= sc.max_lr <= sc.range_test.lr_range[1]
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, OneCycleLR)
    assert scheduler.total_steps == cli.trainer.estimated_stepping_batches
    assert wd.weight_decays is not None
    assert cli.trainer.optimizers[0].param_groups[0]["weight_decay"] == wd.weight_decays[0]
    assert "timescale" in wd.reason
    assert wd.reference_weight_decays is not None
    # 3 short epochs at 5e-4 spend far less than one e-folding of decay: the timescale rule raises λ
    assert wd.weight_decays[0] > wd.reference_weight_decays[0]


def test_fit_was_followed_by_one_test(cli):
    """The CLI tests the fitted model once on the test set, after training ran to ``max_epochs``."""
    assert cli.trainer.current_epoch == 3
    assert "test_acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize("cls", [SuperConvergence, WeightDecayBalancer])
def test_the_cli_help_describes_each_argument_as_the_docstring_s_args_do(cls, capsys):
    """The CLI (jsonargparse) reads an `Attributes:` entry over the `Args:` one of the same name.

    Found trying the package as a new user: `max_lr`'s help read as the attribute ("once `fit` has started"), and
    "when given, no range test runs" was lost.
    """
    import inspect

    from docstring_parser import parse

    from examples.fashion_mnist_cli import main

    with pytest.raises(SystemExit) as done:
        main(["fit", "--trainer.callbacks.help", f"lightning_superconv.{cls.__name__}"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    args = {
        p.arg_name: " ".join(p.description.split()) for p in parse(inspect.getdoc(cls)).params if p.args[0] == "param"
    }
    assert "max_lr" in args or cls is WeightDecayBalancer
    for name in inspect.signature(cls).parameters:
        assert args[name][:60] in shown, name
