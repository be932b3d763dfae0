"""Choosing the cycle's peak, on bare curves and scores.

The rise, the ladder, the search, the verdict, the trials' cycle; and the search replayed on range tests recorded on
the pick zoo's tuning half, against their known good peaks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from lightning_superconv.curve import lr_sweep, median_half_width, running_median
from lightning_superconv.peak import (
    FEWEST_TRIAL_STEPS,
    HIGHEST,
    MAX_TRIALS,
    MOST_TRIAL_STEPS,
    OWN_LR_TRIALS,
    candidates,
    choose,
    learned,
    next_peak,
    own_lr_peak,
    rise_index,
    start_level,
    stuck_above_sweep,
    trial_length,
    trial_traces,
    usable,
)
from lightning_superconv.schedule import OneCycleConfig


def _curve(blow_up_at: int = 80) -> tuple[list[float], list[float]]:
    """100 exponential steps from 1e-5 to 10: flat, a descent, a floor, then a geometric blow-up."""
    lrs = lr_sweep(1e-5, 10.0, 100)
    losses = []
    for i in range(100):
        if i < 30:
            losses.append(2.3)
        elif i < 70:
            losses.append(0.5 + 1.8 * (1 + math.cos(math.pi * (i - 30) / 40)) / 2)
        elif i < blow_up_at:
            losses.append(0.5)
        else:
            losses.append(0.5 * 1.35 ** (i - blow_up_at + 1))
    return lrs, losses


def test_rise_is_where_the_loss_is_back_above_its_start():
    """Past the floor, the first step whose smoothed loss exceeds the start level: the blow-up, not the floor."""
    lrs, losses = _curve()
    smoothed = running_median(losses, 3)
    rise = rise_index(smoothed, start_level(losses, 3))
    assert smoothed[rise] > 2.3 >= smoothed[rise - 1]
    assert 80 < rise < 90


def test_rise_falls_back_on_the_last_step_when_the_loss_never_climbs_back():
    """A sweep that stops (diverged early, or ran out) before the loss is back up reads its last step."""
    lrs, losses = _curve()
    cut = losses[:84]
    assert rise_index(running_median(cut, 3), start_level(cut, 3)) in (len(cut) - 1, 83)


def test_start_level_ignores_a_lucky_first_batch():
    """The start level is the median of the first tenth (at least 7 losses): one low first loss does not move it."""
    losses = [0.3] + [2.3] * 99
    assert start_level(losses, 3) == 2.3


@pytest.mark.parametrize("rise", [1e-3, 0.8, 40.0])
def test_ladder_is_a_quarter_a_half_and_an_eighth_of_the_rise(rise):
    assert candidates(rise) == pytest.approx([rise / 4, rise / 2, rise / 8])


def test_search_tries_the_ladder_first():
    assert next_peak(0.8, [], []) == pytest.approx(0.2)
    assert next_peak(0.8, [0.2], [0.5]) == pytest.approx(0.4)
    assert next_peak(0.8, [0.2, 0.4], [0.5, 0.4]) == pytest.approx(0.1)


def test_search_stops_when_the_best_is_inside_the_ladder():
    assert next_peak(0.8, [0.2, 0.4, 0.1], [0.40, 0.45, 0.50]) is None


def test_search_climbs_while_the_top_rung_wins_up_to_twice_the_rise():
    """Best at the top: one rung higher, and again, but never above `HIGHEST` times the rise."""
    tried, scores = [0.2, 0.4, 0.1], [0.5, 0.4, 0.6]
    assert next_peak(0.8, tried, scores) == pytest.approx(0.8)
    assert next_peak(0.8, [*tried, 0.8], [*scores, 0.3]) == pytest.approx(1.6)
    assert pytest.approx(HIGHEST * 0.8) == 1.6
    assert next_peak(0.8, [*tried, 0.8, 1.6], [*scores, 0.3, 0.2]) is None  # at the ceiling, and at MAX_TRIALS


def test_search_never_climbs_past_a_diverged_trial():
    """A higher trial that diverged is not best; the search stops rather than climbing further."""
    assert next_peak(0.8, [0.2, 0.4, 0.1, 0.8], [0.5, 0.4, 0.6, math.inf]) is None


def test_search_descends_while_the_bottom_rung_wins():
    tried, scores = [0.2, 0.4, 0.1], [0.5, 0.6, 0.4]
    assert next_peak(0.8, tried, scores) == pytest.approx(0.05)
    assert next_peak(0.8, [*tried, 0.05], [*scores, 0.3]) == pytest.approx(0.025)
    assert len([*tried, 0.05, 0.025]) == MAX_TRIALS
    assert next_peak(0.8, [*tried, 0.05, 0.025], [*scores, 0.3, 0.2]) is None


def test_verdict_is_the_lowest_held_out_loss_and_says_so():
    verdict = choose([0.2, 0.4, 0.1], [0.5, 0.45, math.inf], steps=100)
    assert verdict.index == 1
    assert "0.1: diverged" in verdict.reason
    assert "0.4 did best" in verdict.reason


def test_verdict_refuses_when_every_trial_diverged():
    with pytest.raises(ValueError, match="every trial cycle diverged"):
        choose([0.2, 0.4], [math.inf, math.inf], steps=100)


def test_trials_that_learned_nothing_never_win_while_one_did_and_are_said_so():
    """Dead networks' trials end at chance, which can sit just below a noisy start: the one a hair lower must not win.

    The shape of a digits CNN in bf16 with a 40-step sweep (found trying the package as a new user): all three rungs
    of the ladder ended at chance (2.31 against a start of 2.39), the middle one won by 0.003, and the whole run
    trained at chance; the search now goes lower, where trials learn, and one of those wins.
    """
    assert learned(2.0, start=2.39)
    assert not learned(
        2.303, start=2.39
    )  # below the start, but not a tenth below: ln 10, a network that predicts chance
    assert usable([2.0, 2.303, math.inf], start=2.39) == [2.0, math.inf, math.inf]
    verdict = choose([0.137, 0.273, 0.547, 1.09, 2.19], [0.146, 0.104, 2.312, 2.309, 2.334], steps=50, start=2.39)
    assert verdict.index == 1
    assert verdict.learned
    assert "1.09: 2.309 (learned nothing)" in verdict.reason
    # none learned: the least bad wins, flagged, for the range test to warn about
    verdict = choose([0.547, 1.09, 2.19], [2.312, 2.309, 2.334], steps=50, start=2.39)
    assert verdict.index == 1
    assert not verdict.learned


def test_a_trial_stuck_above_the_sweeps_lowest_with_over_half_the_start_left_learned_nothing():
    """Trials stuck above the sweep's lowest loss with over half the start left learned nothing: the search goes lower.

    The demo Transformer with Adam on the pick zoo (seed 1): its ladder's trials all ended at 3.24-3.25, the loss of
    predicting character frequencies, above its sweep's lowest (3.01) with two thirds of the start (4.73) left. They
    learned nothing: the search goes below the LR of the sweep's lowest loss (0.0242), half of it first. A
    breast-cancer MLP's trials end above its sweep's lowest too (a training loss near 0), at a fourteenth of the start:
    they learned.
    """
    start, lowest = 4.734, 3.0147
    ladder, scores = [0.133, 0.267, 0.0667], [3.2396, 3.2416, 3.2476]
    assert all(stuck_above_sweep(score, lowest, start) for score in scores)
    assert usable(scores, start, lowest) == [math.inf] * 3
    assert next_peak(0.534, ladder, usable(scores, start, lowest), lowest_lr=0.0242) == pytest.approx(0.0121)
    # a trial there that ended well below the sweep's lowest learned, and wins; the search goes on below it
    assert next_peak(0.534, [*ladder, 0.0121], [*usable(scores, start, lowest), 2.6], lowest_lr=0.0242) == 0.0121 / 2
    verdict = choose([*ladder, 0.0121], [*scores, 2.6], steps=130, start=start, lowest=lowest)
    assert verdict.index == 3
    assert verdict.learned
    assert "0.133: 3.24 (stuck above the sweep's lowest)" in verdict.reason
    # breast cancer: above the sweep's lowest, but far below half the start
    assert learned(0.0498, start=0.735, lowest=0.0012)
    assert not stuck_above_sweep(0.0498, 0.0012, 0.735)
    # without the sweep's lowest, as before
    assert learned(3.24, start=4.734)


def test_search_descends_while_no_trial_has_learned():
    """Every rung of the ladder diverged or died: one rung below the lowest tried, and again, up to `MAX_TRIALS`.

    Before, the search stopped there: with every trial dead it picked the least dead; with every one diverged it gave
    up, although a lower peak might have trained.
    """
    tried = [0.2, 0.4, 0.1]
    assert next_peak(0.8, tried, [math.inf] * 3) == pytest.approx(0.05)
    assert next_peak(0.8, [*tried, 0.05], [math.inf] * 4) == pytest.approx(0.025)
    assert next_peak(0.8, [*tried, 0.05, 0.025], [math.inf] * 5) is None  # at MAX_TRIALS
    # once one learned, the usual rules: the lowest won, so one rung lower still
    assert next_peak(0.8, [*tried, 0.05], [math.inf] * 3 + [0.4]) == pytest.approx(0.025)


def test_with_no_trial_learned_the_optimizers_own_lr_is_tried_then_climbed_from_while_it_does_best():
    """The search ended with no trial learned: the user's own LR next, then one rung up while the top does best.

    Found trying the package as a new user: a sweep misread by noise sent every trial 100-1000x below the LRs that
    train the model, and the search, reading "none learned" as "too high", went lower still.
    """
    tried, dead = [2e-4, 4e-4, 1e-4, 5e-5, 2.5e-5], [1.05] * 5
    start, lowest = 1.06, 0.45
    assert own_lr_peak(0.01, tried, dead, start, lowest, own_from=None) == 0.01
    # from the own LR up: one rung while the highest tried did best (learned or not), at most OWN_LR_TRIALS trials
    assert own_lr_peak(0.01, [*tried, 0.01], [*dead, 0.98], start, lowest, own_from=5) == pytest.approx(0.02)
    assert own_lr_peak(0.01, [*tried, 0.01, 0.02], [*dead, 0.98, 0.3], start, lowest, own_from=5) == pytest.approx(0.04)
    climbed = [*tried, 0.01, 0.02, 0.04][: 5 + OWN_LR_TRIALS]
    assert own_lr_peak(0.01, climbed, [*dead, 0.98, 0.6, 0.1][: len(climbed)], start, lowest, own_from=5) is None
    # a peak of the search above the own LR did best: one rung above it
    assert own_lr_peak(1e-3, [7e-4, 1.5e-3, 1e-3], [1.04, 0.99, 1.03], start, lowest, own_from=2) == pytest.approx(3e-3)
    # not the best any more, or diverged: done
    assert own_lr_peak(0.01, [*tried, 0.01, 0.02], [*dead, 0.3, 0.5], start, lowest, own_from=5) is None
    assert own_lr_peak(0.01, [*tried, 0.01], [*dead, math.inf], start, lowest, own_from=5) is None


@pytest.mark.parametrize(
    ("own_lr", "scores", "why"),
    [
        (0.01, [1.05, 0.3, 1.05], "a trial learned"),
        (4e-4, [1.05, 1.05, 1.05], "tried already"),
        (0.0, [1.05, 1.05, 1.05], "no LR of its own"),
        (math.nan, [1.05, 1.05, 1.05], "no LR of its own"),
    ],
)
def test_the_own_lr_is_not_tried_where_a_trial_learned_or_it_was_tried_or_it_is_no_lr(own_lr, scores, why):
    assert own_lr_peak(own_lr, [2e-4, 4e-4, 1e-4], scores, start=1.06, lowest=0.45, own_from=None) is None, why


@pytest.mark.parametrize(
    ("run", "steps"),
    [(None, 100), (1, 100), (299, 100), (300, 100), (303, 101), (855, 285), (899, 299), (900, 300), (10**6, 300)],
)
def test_trial_length_is_a_third_of_the_run_from_100_to_300_steps(run, steps):
    """A third of the run (rounded down), never under 100 steps (nor when the run's length is unknown), nor over 300."""
    assert trial_length(run) == steps
    assert FEWEST_TRIAL_STEPS <= trial_length(run) <= MOST_TRIAL_STEPS


def test_trial_cycle_is_torchs_one_cycle_over_the_trial_steps():
    """The trial's LR and momentum per step are those of a real `OneCycleLR` of that length, per param group."""
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.05}], lr=0.1, momentum=0.9)
    traces = trial_traces(optimizer, 0.8, 40, OneCycleConfig(pct_start=0.25))
    reference_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    reference = OneCycleLR(reference_opt, max_lr=0.8, total_steps=40, pct_start=0.25)
    lrs, momenta = [], []
    for _ in range(40):
        lrs.append(reference_opt.param_groups[0]["lr"])
        momenta.append(reference_opt.param_groups[0]["momentum"])
        reference_opt.step()
        reference.step()
    assert traces[0].lrs == pytest.approx(lrs)
    assert traces[0].momenta == pytest.approx(momenta)
    assert traces[1].lrs == pytest.approx([lr / 2 for lr in lrs])  # the configured ratio between the groups
    assert optimizer.param_groups[0]["lr"] == 0.1  # the real optimizer is untouched


# --------------------------------------------------------------------------- recorded range tests of the pick zoo

RECORDED = json.loads((Path(__file__).parent / "data" / "zoo_range_tests.json").read_text())


@pytest.mark.parametrize("case", RECORDED, ids=[f"{c['task']}-seed{c['seed']}" for c in RECORDED])
def test_search_on_a_recorded_range_test_picks_what_trained_well(case):
    """Replay the search on a range test the pick zoo recorded, with the trial scores recorded in the same run.

    The replay must end on the peak that run picked, and that run's real training scored within 1.5 points of the
    oracle on the same seed (the zoo's worst-seed target). A change to the reading or the search fails here until the
    zoo is rerun and this file rewritten (``tests/data/write_zoo_range_tests.py``) with what the new rule trained to.
    """
    lrs, losses = case["lrs"], case["losses"]
    half_width = median_half_width(100)
    smoothed = running_median(losses, half_width)
    start = start_level(losses, half_width)
    rise_lr = lrs[rise_index(smoothed, start)]
    bottom = min(range(len(smoothed)), key=smoothed.__getitem__)
    lowest = smoothed[bottom]
    tried: list[float] = []
    scores: list[float] = []
    while (peak := next_peak(rise_lr, tried, usable(scores, start, lowest), lowest_lr=lrs[bottom])) is not None:
        tried.append(peak)
        # the cache keeps the swept LRs to 8 digits, the trials' peaks in full: the same peak within rounding
        recorded = [t["held_out_loss"] for t in case["trials"] if math.isclose(t["peak"], peak, rel_tol=1e-5)]
        assert recorded, f"the replay tried {peak:.4g}, which the recorded run did not: {case['trials']}"
        scores.append(recorded[0])
    peak = tried[choose(tried, scores, 100, start, lowest).index]
    assert peak == pytest.approx(case["picked"], rel=1e-5)
    assert case["test"] >= case["oracle_test"] - 1.5
