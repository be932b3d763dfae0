"""``ModelParallelStrategy`` for real: FSDP2 and tensor parallelism, two processes on CPU with gloo.

One launch (``tests/model_parallel_run.py``, about 30 s here) serves every test in this module; see that script for what
runs. Found trying the package under the strategy as a new user: it runs on CPU, so the range test, refused under it
until then as untestable here, is tested under it.
"""

from __future__ import annotations

import os

import pytest
from helpers import run_two_ranks

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_parallel_run.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks reported, in rank order."""
    return run_two_ranks(SCRIPT, tmp_path_factory.mktemp("model_parallel"), timeout=300)


def test_fsdp2_range_test_ends_as_the_run_given_its_pick_on_every_rank(ranks):
    """The range test's snapshot and restore of DTensor shards: each rank ends bit-identical to the run given the pick.

    Compared on each rank's own shards and buffers (BatchNorm's statistics, which FSDP2 keeps per rank). The model's
    root holds BatchNorm's parameters, which FSDP2 leaves unsharded after a forward without a backward (a trial's
    evaluation): they are put at rest before the snapshot is put back, or the next forward fails.
    """
    r0, r1 = ranks
    assert r0["sharded"]
    assert r1["sharded"]
    assert r0["result"] == r1["result"]
    assert r0["max_lr"] == r1["max_lr"] == r0["result"]["max_lr"]
    assert r0["result"]["trials"]  # the trials ran too, each from the snapshot, and scored held-out data that fell
    assert r0["max_lr"] > 1e-2
    assert r0["global_step"] == 8
    assert r0["state"] != r1["state"]  # each rank's own shards
    for rank in ranks:
        assert rank["state"] == rank["given_state"]
        assert rank["weight_decays"] == rank["given_weight_decays"] != [5e-4]
        # found in a review: FSDP2 registers them at the first forward, in the range test, and keeps their handles in
        # its own state; the restore removed them, and a checkpoint saved after a validation pass raised
        assert rank["state_dict_hooks"] == rank["given_state_dict_hooks"]
        assert all(count > 0 for count in rank["state_dict_hooks"])


def test_fsdp2_resume_continues_the_checkpoint_s_cycle_and_says_the_range_test_was_discarded(ranks):
    """The strategy loads the checkpoint after fit start: the range test run before is discarded, and rank 0 says so.

    The resumed run takes the checkpoint's pick, curve, λ and LRs; given another ``max_lr`` and ``pct_start``, it still
    does, and says that both apply to new fits only.
    """
    for rank in ranks:
        assert rank["resumed_max_lr"] == rank["max_lr"]
        assert rank["resumed_result"] == rank["result"]
        assert rank["resumed_weight_decays"] == rank["weight_decays"]
        for step in ("4", "5", "6", "7"):  # the second epoch, at the uninterrupted run's LRs
            assert rank["resumed_lrs"][step] == rank["lrs"][step]
            assert rank["given_anew_lrs"][step] == rank["lrs"][step]
    r0, r1 = ranks
    assert any("its pick is discarded" in message for message in r0["resumed_said"])
    # found in a review: the discarded range test's curve and pick went to the resumed run's logger
    assert "superconv/lr" in r0["resumed_logged"]
    assert not [name for name in r0["resumed_logged"] if name.startswith("lr_range_test")]
    assert any("`max_lr=0.123` applies to new fits only" in message for message in r0["given_anew_said"])
    assert any("`pct_start=0.5` applies to new fits only" in message for message in r0["given_anew_said"])
    assert not any("discarded" in message for message in r0["given_anew_said"])
    assert r1["resumed_said"] == r1["given_anew_said"] == []  # rank 0 speaks for all


def test_fsdp2_divergence_guard_rolls_the_shards_back_on_every_rank(ranks):
    """A peak 50 blows up: both ranks rescue at the same steps, each back to its own shards of the snapshot's step."""
    r0, r1 = ranks
    assert len(r0["rescues"]) >= 1
    assert r0["rescues"] == r1["rescues"]
    assert r0["rescues"][-1]["new_peak"] < 50.0
    for rank in ranks:
        assert all(rank["rolled_back"])
        assert all(rank["moved_since"])  # the weights had moved: the rollback did something


def test_tensor_parallel_range_test_ends_as_the_run_given_its_pick(ranks):
    """Each rank holds halves of the layers: one curve and pick on both, and each rank's halves as the run given it."""
    r0, r1 = ranks
    assert r0["tp_result"] == r1["tp_result"]
    assert r0["tp_state"] != r1["tp_state"]
    for rank in ranks:
        assert rank["tp_state"] == rank["tp_given_state"]


def test_a_resume_from_the_middle_of_an_epoch_goes_on_from_a_stateful_loader_s_saved_position(ranks):
    """Under this strategy the checkpoint is restored after `on_fit_start`, where the cycle's sizing loaded the data.

    Found in a review: Lightning then never gave the loader its saved position, and the resumed epoch read its first
    three batches again; a plain resume goes on from the fourth.
    """
    for rank in ranks:
        plain, ours = rank["mid_epoch_firsts_plain"], rank["mid_epoch_firsts_superconvergence"]
        assert plain
        assert ours == plain
