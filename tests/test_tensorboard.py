"""What a user sees in TensorBoard after the Fashion-MNIST example: the range-test curve, its figure, the schedule."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_superconv import SuperConvergence, WeightDecayBalancer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run of the example, logging every step; returns its callbacks, trainer and loaded event files."""
    from examples.fashion_mnist import main

    log_dir = tmp_path_factory.mktemp("tb")
    out = main(
        [
            "--epochs", "2", "--train-size", "256", "--val-size", "128", "--batch-size", "16", "--width", "4",
            "--range-test-steps", "40", "--log-dir", str(log_dir), "--log-every-n-steps", "1",
            "--precision", "32-true", "--no-progress-bar", "--no-test",
        ]
    )  # fmt: skip
    trainer = out["trainer"]
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    sc = next(c for c in trainer.callbacks if isinstance(c, SuperConvergence))
    wd = next(c for c in trainer.callbacks if isinstance(c, WeightDecayBalancer))
    return {"trainer": trainer, "events": events, "sc": sc, "wd": wd}


def _series(events: EventAccumulator, tag: str) -> tuple[list[int], np.ndarray]:
    scalars = sorted(events.Scalars(tag), key=lambda e: e.step)
    return [e.step for e in scalars], np.array([e.value for e in scalars], dtype=np.float32)


@pytest.mark.parametrize(
    ("tag", "field"),
    [("lr_range_test/loss", "losses"), ("lr_range_test/loss_smoothed", "smoothed"), ("lr_range_test/lr", "lrs")],
)
def test_range_test_curve_equals_the_callbacks_result(run, tag, field):
    """Each range-test step is in the event file under its step number, with the value the callback recorded."""
    steps, values = _series(run["events"], tag)
    expected = np.array(getattr(run["sc"].result, field), dtype=np.float32)
    assert steps == list(range(len(expected)))
    np.testing.assert_array_equal(values, expected)


def test_pick_is_logged_at_its_step(run):
    """``lr_range_test/max_lr`` holds the pick, at the sweep step whose LR it is (the last that did not pass it)."""
    steps, values = _series(run["events"], "lr_range_test/max_lr")
    result = run["sc"].result
    (at,) = steps
    assert result.lrs[at] <= result.max_lr < result.lrs[at + 1]
    assert values[0] == np.float32(result.max_lr)


def test_trials_are_logged_in_the_order_tried(run):
    """``lr_range_test/trial_peak`` and ``trial_loss``: one point per trial, the peak and its held-out loss."""
    result = run["sc"].result
    assert len(result.trials) >= 3
    steps, peaks = _series(run["events"], "lr_range_test/trial_peak")
    _, losses = _series(run["events"], "lr_range_test/trial_loss")
    assert steps == list(range(len(result.trials)))
    np.testing.assert_array_equal(peaks, np.array([t["peak"] for t in result.trials], dtype=np.float32))
    np.testing.assert_array_equal(losses, np.array([t["held_out_loss"] for t in result.trials], dtype=np.float32))
    assert result.max_lr in [t["peak"] for t in result.trials]


def test_range_test_figure_is_an_image(run):
    """The loss-vs-LR figure is in the event file as the image ``lr_range_test/curve``."""
    (image,) = run["events"].Images("lr_range_test/curve")
    assert image.width > 100
    assert image.height > 100
    assert image.encoded_image_string.startswith(b"\x89PNG")


def test_schedule_is_logged_every_step(run):
    """LR and momentum follow the installed one cycle step by step; LR starts at ``max_lr / div_factor``."""
    trainer, sc = run["trainer"], run["sc"]
    steps, lrs = _series(run["events"], "superconv/lr")
    _, momenta = _series(run["events"], "superconv/momentum")
    assert steps == list(range(trainer.global_step))
    assert lrs[0] == pytest.approx(sc.max_lr / sc.cycle.div_factor, rel=1e-6)
    assert lrs.max() == pytest.approx(sc.max_lr, rel=0.05)
    assert lrs[-1] < lrs[0]
    assert momenta[0] == pytest.approx(sc.cycle.max_momentum)
    assert momenta.min() == pytest.approx(sc.cycle.base_momentum, abs=0.01)
    # momentum moves against the LR
    assert momenta[int(np.argmax(lrs))] == momenta.min()


def test_weight_decay_is_logged_every_step(run):
    """``superconv/weight_decay`` holds the balancer's choice at every training step."""
    steps, values = _series(run["events"], "superconv/weight_decay")
    assert steps == list(range(run["trainer"].global_step))
    np.testing.assert_array_equal(values, np.float32(run["wd"].weight_decays[0]))


def test_the_module_s_hyperparameters_reach_hparams_yaml(run):
    """The range test's log does not write `hparams.yaml` before Lightning logs the hyperparameters.

    Found in a review: `TensorBoardLogger.save` writes the file once, if absent; the range test's `save`, in
    `on_fit_start`, wrote `{}`, and the module's hyperparameters never reached it.
    """
    with open(os.path.join(run["trainer"].logger.log_dir, "hparams.yaml"), encoding="utf8") as f:
        saved = yaml.safe_load(f)
    assert saved["width"] == 4
    assert saved["lr"] == 0.01
