"""DDP for real: two processes on CPU with gloo, launched the way Lightning launches a user's script.

One launch (``tests/ddp_run.py``, 15-25 s here) serves every test in this module; see that script for what runs.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from helpers import run_two_ranks

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_run.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks reported, in rank order."""
    return run_two_ranks(SCRIPT, tmp_path_factory.mktemp("ddp"), timeout=300)


def _step_losses(local: list[float], steps: int, accumulate: int) -> list[float]:
    """A rank's own loss per range-test step: the float32 mean of its micro-batch losses, as the sweep records it."""
    per_step = torch.tensor(local[: steps * accumulate], dtype=torch.float32).view(steps, accumulate)
    return per_step.mean(dim=1).tolist()


def test_ranks_train_on_different_data(ranks):
    """The sampler gives each rank its own batches, so the ranks' own range-test losses differ."""
    r0, r1 = ranks
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["local_losses"][:16] != r1["local_losses"][:16]


def test_curve_is_the_mean_of_the_ranks_own_losses(ranks):
    """Each recorded loss is the mean over both ranks of that rank's mean over its accumulated micro-batches."""
    r0, r1 = ranks
    result = r0["result"]
    steps = len(result["losses"])
    assert result["stop_reason"] in ("completed", "rose")
    assert steps >= 10
    own0, own1 = (_step_losses(r["local_losses"], steps, accumulate=2) for r in ranks)
    expected = [(a + b) / 2 for a, b in zip(own0, own1, strict=True)]
    assert result["losses"] == pytest.approx(expected, rel=1e-6)
    # rank 0's curve broadcast to all would also be identical everywhere, and is not what was recorded
    assert result["losses"] != pytest.approx(own0, rel=1e-4)


def test_every_rank_reads_the_same_curve_and_pick(ranks):
    """`callback.result`, `max_lr` and the installed cycle are identical on every rank, bit for bit."""
    r0, r1 = ranks
    assert r0["result"] == r1["result"]
    assert r0["max_lr"] == r1["max_lr"] == r0["result"]["max_lr"]
    assert r0["scheduler_total_steps"] == r1["scheduler_total_steps"] == r0["total_steps"] == 4


def test_fit_completes_with_identical_models_and_weight_decay(ranks):
    """The fit runs all its steps; both ranks end with the same weights, LR and balanced weight decay."""
    r0, r1 = ranks
    assert r0["global_step"] == r1["global_step"] == 4
    assert r0["weights"] == r1["weights"]
    assert r0["final_lr"] == r1["final_lr"]
    assert r0["weight_decays"] == r1["weight_decays"]
    assert r0["weight_decays"] != [5e-4]  # the balancer acted, identically on both ranks


def test_no_shared_filesystem_is_needed(ranks):
    """Each rank has its own root directory, and the range test writes nothing to either."""
    assert [r["files_written"] for r in ranks] == [[], []]


def test_data_running_out_stops_every_rank_at_the_same_step(ranks):
    """A one-shot stream that ends earlier on rank 1: both ranks stop together and fail with the same clear error."""
    r0, r1 = ranks
    assert r0["one_shot_error"] is not None, "the fit should have failed: too few points to read"
    assert r0["one_shot_error"] == r1["one_shot_error"]
    assert "MisconfigurationException" in r0["one_shot_error"]
    assert "ran out after 1 step(s)" in r0["one_shot_error"]


def test_the_divergence_guard_rescues_on_every_rank_alike(ranks):
    """A cycle far too high: both ranks roll back at the same steps, lower the peak alike, and end identical."""
    r0, r1 = ranks
    assert r0["rescues"], "the premise: the run is rescued"
    assert r0["rescues"] == r1["rescues"]
    assert r0["guarded_max_lr"] == r1["guarded_max_lr"] < 50.0
    assert r0["guarded_weights"] == r1["guarded_weights"]


def _first_blow_up_lr(seen: list[list[float]]) -> float:
    """The LR of a rank's first loss half as high again as its first (or NaN/inf), inf where there is none."""
    first = seen[0][0]
    return next((lr for loss, lr in seen[1:] if not loss - first <= 0.5 * abs(first)), math.inf)


def test_ranks_lower_the_peak_alike_when_only_one_saw_the_blow_up(ranks):
    """A blow-up only rank 1 sees: both ranks read the lowest LR any rank saw one at, and stay identical."""
    r0, r1 = ranks
    assert r0["one_rank_rescues"], "the premise: the run is rescued"
    assert r0["one_rank_rescues"] == r1["one_rank_rescues"]
    assert r0["one_rank_weights"] == r1["one_rank_weights"]
    rank0, rank1 = _first_blow_up_lr(r0["one_rank_seen"]), _first_blow_up_lr(r1["one_rank_seen"])
    assert rank1 < rank0, "the premise: rank 1 saw a blow-up first, at a lower LR"
    first = r0["one_rank_rescues"][0]
    assert first["new_peak"] == pytest.approx(min(0.25 * rank1, 0.25 * first["old_peak"]))


def test_validation_batches_training_step_cannot_take_are_passed_over_on_every_rank_alike(ranks):
    """Both ranks' validation batches fail ``training_step``: both fall back to training batches together, and agree."""
    r0, r1 = ranks
    assert r0["fallback_trials"], "the premise: the trials ran"
    assert r0["fallback_trials"] == r1["fallback_trials"]
    assert all(math.isfinite(trial["held_out_loss"]) for trial in r0["fallback_trials"])
    assert r0["fallback_max_lr"] == r1["fallback_max_lr"]
    assert any("failed on validation batch 0" in message for message in r0["fallback_warnings"])  # said by rank 0


def test_validation_batches_only_one_rank_cannot_take_stop_every_rank_with_a_clear_error(ranks):
    """Rank 1's validation batches alone fail ``training_step``: both ranks raise the same clear error, none hangs."""
    errors = [r["one_rank_dicts_error"] for r in ranks]
    assert all(error is not None and "on some ranks only" in error for error in errors)  # raised on both ranks
    assert "`trial_steps=0`" in errors[0]


def test_a_transfer_hook_failing_on_one_rank_s_validation_batches_stops_both_ranks_clearly(ranks):
    """Rank 1 raises its hook's error, rank 0 says another rank's hooks failed.

    Found trying the package as a new user: with buffers (BatchNorm) to broadcast, rank 0 went on into DDP's forward
    while rank 1 waited in a reduction, and both hung.
    """
    errors = [r["one_rank_hook_error"] for r in ranks]
    assert errors[1] is not None
    assert errors[1].startswith("HookBroke: rank 1's hook")
    assert errors[0] is not None
    assert "batch transfer hooks failed on another rank" in errors[0]


def test_the_grid_s_repeat_of_the_user_s_lambda_sees_another_data_order(ranks):
    """The grid's noise between two data orders is not zero under DDP, and the sampler's seed comes back for the run.

    Lightning's DistributedSampler orders by its seed, not by a generator: the repeat shifts the seed.
    """
    search = ranks[0]["grid_search"]
    assert search is not None
    first = search["val_losses"][search["factors"].index(1.0)]
    assert search["replicate_val_loss"] != first
    assert ranks[0]["grid_sampler_seed"] == ranks[1]["grid_sampler_seed"] == 0
    assert ranks[0]["grid_weight_decays"] == ranks[1]["grid_weight_decays"]
    assert ranks[0]["grid_search"] == ranks[1]["grid_search"] | {"seconds": search["seconds"]} | {
        "cost_fraction": search["cost_fraction"]
    }


def test_the_range_test_gives_back_the_generator_of_a_sampler_lightning_wraps_for_ddp(ranks):
    """Found in review: the user's sampler inside Lightning's `DistributedSamplerWrapper` was not looked into."""
    for report in ranks:
        with_test, given = report["own_sampler_weights"]
        assert with_test == given


def test_the_range_test_all_reduces_once_per_step_under_accumulation(ranks):
    """As in Lightning's own steps: the micro-batches before a step's last all-reduce nothing.

    Found in a review: the micro-batches' forwards ran outside DDP's `no_sync`, so every one of them all-reduced
    its gradients: the range test paid `accumulate_grad_batches` times the communication of Lightning's own steps.
    """
    for rank in ranks:
        steps = rank["accumulated_steps"]
        assert steps >= 10
        assert rank["accumulated_backwards"] == 4 * steps
        assert rank["accumulated_allreduces"] == steps
