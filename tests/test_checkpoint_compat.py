"""Checkpoints written by earlier releases stay readable: resume one and end where that release ended.

``tests/data/v0_1_0_stopped_at_step_8.ckpt`` was written by release 0.1.0 (``tests/data/write_checkpoint_v0_1_0.py``)
halfway through a run with both callbacks; ``v0_1_0_uninterrupted_final.pt`` holds that release's uninterrupted run:
its LR, momentum and weight decay at every step and its final weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from lightning_superconv import SuperConvergence, WeightDecayBalancer

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))

from write_checkpoint_v0_1_0 import Classifier, Schedule, trainer  # noqa: E402

CHECKPOINT = DATA / "v0_1_0_stopped_at_step_8.ckpt"


def _resumed(tmp_path):
    L.seed_everything(0, verbose=False)
    model, schedule = Classifier(), Schedule()
    trainer(tmp_path, [schedule]).fit(model, ckpt_path=str(CHECKPOINT))
    return model, schedule


def test_resume_from_a_0_1_0_checkpoint_repeats_0_1_0s_schedule(tmp_path):
    """Steps 8-15 of the resumed run have 0.1.0's LR, momentum and weight decay, exactly."""
    expected = torch.load(DATA / "v0_1_0_uninterrupted_final.pt", weights_only=True)
    _, schedule = _resumed(tmp_path)
    assert schedule.rows == expected["schedule"][8:]


def test_resume_from_a_0_1_0_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    """The resumed run ends as this version's uninterrupted run does, and at 0.1.0's final weights.

    The uninterrupted run has the checkpoint's cycle and weight decay. Both are matched up to float rounding: the
    checkpoint's first 8 steps were computed on another machine, and a CPU whose kernels round otherwise (AVX-512)
    ends 1e-6 away. Resuming a checkpoint written on the same machine is exact (``tests/test_resume.py``), and so is
    the schedule resumed from this one (the test above).
    """
    model, _ = _resumed(tmp_path / "resumed")
    state = torch.load(CHECKPOINT, weights_only=True)
    max_lr = state["callbacks"]["SuperConvergence"]["max_lr"]
    L.seed_everything(0, verbose=False)
    uninterrupted = Classifier()
    L.Trainer(
        default_root_dir=tmp_path / "u", accelerator="cpu", devices=1, max_epochs=4, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[SuperConvergence(max_lr=max_lr), WeightDecayBalancer()],
    ).fit(uninterrupted)  # fmt: skip
    expected = torch.load(DATA / "v0_1_0_uninterrupted_final.pt", weights_only=True)["state_dict"]
    for name, value in uninterrupted.state_dict().items():
        assert torch.allclose(model.state_dict()[name].double(), value.double(), rtol=1e-5, atol=1e-6), name
        assert torch.allclose(model.state_dict()[name].double(), expected[name].double(), rtol=1e-5, atol=1e-7), name
