"""The range test's maths on bare lists: the LR sweep, smoothing, divergence detection and the max-LR pick."""

from __future__ import annotations

import math
import random
from itertools import pairwise

import pytest

from lightning_superconv.curve import DivergenceMonitor, ema, lr_sweep, pick_max_lr, running_median

# ------------------------------------------------------------------------------------------------ lr_sweep


def test_exponential_sweep_hits_both_endpoints():
    """The exponential sweep starts at `start` and ends at `end`, with `num_steps` points."""
    lrs = lr_sweep(1e-6, 10.0, 50)
    assert len(lrs) == 50
    assert lrs[0] == pytest.approx(1e-6, rel=1e-12)
    assert lrs[-1] == pytest.approx(10.0, rel=1e-12)


def test_exponential_sweep_multiplies_by_a_constant_factor():
    """Each exponential step multiplies the LR by the same factor (evenly spaced in log space)."""
    lrs = lr_sweep(1e-4, 1.0, 9)
    ratios = [b / a for a, b in pairwise(lrs)]
    assert ratios == pytest.approx([10**0.5] * 8, rel=1e-12)


def test_linear_sweep_adds_a_constant_step():
    """The linear sweep spaces LRs evenly and hits both endpoints."""
    lrs = lr_sweep(0.1, 1.0, 10, mode="linear")
    assert lrs[0] == pytest.approx(0.1, rel=1e-12)
    assert lrs[-1] == pytest.approx(1.0, rel=1e-12)
    steps = [b - a for a, b in pairwise(lrs)]
    assert steps == pytest.approx([0.1] * 9, rel=1e-9)


@pytest.mark.parametrize("mode", ["exponential", "linear"])
def test_sweep_is_strictly_increasing(mode):
    """Both sweep modes rise at every step."""
    lrs = lr_sweep(1e-6, 10.0, 100, mode=mode)
    assert all(b > a for a, b in pairwise(lrs))


@pytest.mark.parametrize("num_steps", [0, 1])
def test_sweep_rejects_fewer_than_two_steps(num_steps):
    """A sweep needs at least two points; the error names `num_steps` and the value given."""
    with pytest.raises(ValueError, match=rf"`num_steps`.*got {num_steps}"):
        lr_sweep(1e-3, 1.0, num_steps)


def test_sweep_rejects_unknown_mode():
    """An unknown spacing fails, naming `mode` and the value given."""
    with pytest.raises(ValueError, match=r"`mode`.*'cubic'"):
        lr_sweep(1e-3, 1.0, 10, mode="cubic")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ smoothing


def test_ema_first_point_is_the_raw_value():
    """Debiasing removes the start-up pull towards zero: the first smoothed point equals the first loss."""
    assert ema([2.3, 2.0, 1.0], beta=0.98)[0] == pytest.approx(2.3, rel=1e-12)


def test_ema_of_a_constant_is_that_constant():
    """A debiased EMA of a flat curve is flat at the same value from the first step on."""
    assert ema([2.3] * 20, beta=0.9) == pytest.approx([2.3] * 20, rel=1e-12)


def test_running_median_has_no_lag_on_a_symmetric_bump():
    """A curve symmetric about its minimum stays symmetric when smoothed: the minimum is not shifted."""
    rng = random.Random(0)
    half = [1.0 - math.exp(-(((i - 40) / 8) ** 2)) + 0.02 * rng.random() for i in range(40)]
    values = [*half, 0.0, *half[::-1]]
    smooth = running_median(values, half_width=3)
    assert smooth == smooth[::-1]
    assert smooth[40] == min(smooth)


def test_running_median_ignores_a_single_spike():
    """One hard batch does not move the smoothed curve."""
    values = [1.0] * 10 + [50.0] + [1.0] * 10
    assert running_median(values, half_width=1) == [1.0] * 21


# ------------------------------------------------------------------------------------------------ DivergenceMonitor


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_monitor_stops_on_non_finite_loss(bad):
    """A NaN or infinite loss stops the test at once, after any number of good steps."""
    monitor = DivergenceMonitor()
    assert [monitor.update(x) for x in [2.3, 2.2, 2.1]] == [None, None, None]
    assert monitor.update(bad) == "non-finite"


def test_monitor_stops_on_blow_up():
    """A loss that is flat and then grows geometrically is declared diverged a few steps into the growth."""
    monitor = DivergenceMonitor()
    losses = [1.0] * 30 + [1.5**k for k in range(1, 40)]
    stops = [i for i, x in enumerate(losses) if monitor.update(x) is not None]
    assert stops, "the blow-up was never detected"
    assert 30 <= stops[0] < 30 + 10


def test_monitor_threshold_is_times_the_best_loss():
    """Without smoothing, a positive loss diverges exactly when it exceeds `threshold` times its best."""
    below = DivergenceMonitor(threshold=4.0, beta=0.0)
    assert [below.update(x) for x in [2.0, 1.0, 3.9]] == [None, None, None]
    above = DivergenceMonitor(threshold=4.0, beta=0.0)
    assert [above.update(x) for x in [2.0, 1.0, 4.1]] == [None, None, "diverged"]


@pytest.mark.parametrize("seed", range(3))
def test_monitor_ignores_noise_around_a_flat_loss(seed):
    """±20 % batch-to-batch noise around a flat loss is not divergence, however long it goes on."""
    rng = random.Random(seed)
    monitor = DivergenceMonitor()
    assert all(monitor.update(rng.uniform(0.8, 1.2)) is None for _ in range(2000))


def test_monitor_ignores_a_single_spike():
    """One hard batch at 5x a flat loss does not stop the test."""
    monitor = DivergenceMonitor()
    losses = [1.0] * 20 + [5.0] + [1.0] * 20
    assert all(monitor.update(x) is None for x in losses)


def test_monitor_does_not_stop_a_negative_loss_that_keeps_falling():
    """A loss falling further below zero is progress, not divergence."""
    monitor = DivergenceMonitor()
    assert all(monitor.update(-1.0 - 0.5 * i) is None for i in range(200))


def test_monitor_stops_a_negative_loss_that_rises():
    """A negative loss that turns and climbs is declared diverged, and not before it climbs."""
    monitor = DivergenceMonitor()
    losses = [-2.0] * 30 + [-2.0 + k for k in range(1, 40)]
    stops = [i for i, x in enumerate(losses) if monitor.update(x) is not None]
    assert stops, "the rise was never detected"
    assert 30 < stops[0] < 30 + 20


# ------------------------------------------------------------------------------------------------ pick_max_lr

# A synthetic range test of 100 exponential steps from 1e-5 to 10: flat at 2.3, a cosine descent from step
# DESCENT_START to step FLOOR_START (steepest at their middle), a flat floor at 0.5, and a geometric blow-up from
# step DIVERGENCE on.
DESCENT_START, FLOOR_START, DIVERGENCE = 30, 70, 80
STEEPEST = (DESCENT_START + FLOOR_START) // 2


def _synthetic_curve(noise: float = 0.0, seed: int = 0) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    lrs = lr_sweep(1e-5, 10.0, 100)
    losses = []
    for i in range(100):
        if i < DESCENT_START:
            loss = 2.3
        elif i < FLOOR_START:
            t = (i - DESCENT_START) / (FLOOR_START - DESCENT_START)
            loss = 0.5 + 1.8 * (1 + math.cos(math.pi * t)) / 2
        elif i < DIVERGENCE:
            loss = 0.5
        else:
            loss = 0.5 * 1.35 ** (i - DIVERGENCE + 1)
        losses.append(loss * (1 + rng.uniform(-noise, noise)))
    return lrs, losses


@pytest.mark.parametrize(("noise", "seed"), [(0.0, 0), (0.02, 0), (0.02, 1), (0.02, 2), (0.05, 3)])
def test_pick_is_before_the_divergence_point(noise, seed):
    """The picked LR is never past the step where the loss starts to rise."""
    lrs, losses = _synthetic_curve(noise, seed)
    pick = pick_max_lr(lrs, losses)
    assert pick.lr <= lrs[DIVERGENCE]


@pytest.mark.parametrize(("noise", "seed"), [(0.0, 0), (0.02, 0), (0.02, 1), (0.02, 2), (0.05, 3)])
def test_pick_is_past_the_steepest_descent(noise, seed):
    """The pick is where the loss stops falling, beyond the steepest slope that constant-LR finders choose."""
    lrs, losses = _synthetic_curve(noise, seed)
    pick = pick_max_lr(lrs, losses)
    assert pick.lr > lrs[STEEPEST]


def test_pick_is_one_of_the_swept_lrs():
    """The pick's index points at its LR on the curve."""
    lrs, losses = _synthetic_curve(0.02)
    pick = pick_max_lr(lrs, losses)
    assert pick.lr == lrs[pick.index]
    assert pick.reason


@pytest.mark.parametrize(("scale", "shift"), [(10.0, 0.0), (0.01, 0.0), (1.0, 7.0), (3.0, -1.0)])
def test_pick_is_invariant_to_loss_units(scale, shift):
    """Scaling or shifting the loss (its units, a constant regularizer) does not move the pick."""
    lrs, losses = _synthetic_curve(0.02)
    reference = pick_max_lr(lrs, losses)
    moved = pick_max_lr(lrs, [scale * x + shift for x in losses])
    assert moved.index == reference.index


@pytest.mark.parametrize("factor", [1e-3, 100.0])
def test_pick_moves_with_the_lr_axis(factor):
    """Multiplying every LR by a factor multiplies the pick by the same factor, at the same step."""
    lrs, losses = _synthetic_curve(0.02)
    reference = pick_max_lr(lrs, losses)
    moved = pick_max_lr([factor * lr for lr in lrs], losses)
    assert moved.index == reference.index
    assert moved.lr == pytest.approx(factor * reference.lr, rel=1e-12)


def test_pick_rejects_mismatched_lengths():
    """LRs and losses must pair up; the error names both and gives their lengths."""
    with pytest.raises(ValueError, match=r"`lrs` and `losses`.*got 3 and 2"):
        pick_max_lr([1e-3, 1e-2, 1e-1], [1.0, 0.5])


@pytest.mark.parametrize("n", [0, 1, 2])
def test_pick_rejects_too_short_a_curve(n):
    """Fewer than three points carry no curve to read; the error gives the count."""
    with pytest.raises(ValueError, match=rf"at least 3 .*got {n}"):
        pick_max_lr([1e-3] * n, [1.0] * n)


def test_pick_rejects_a_curve_that_never_falls():
    """A loss that only rises has no floor to read a maximum LR from; the error says so."""
    lrs = lr_sweep(1e-4, 1.0, 20)
    with pytest.raises(ValueError, match="never fell"):
        pick_max_lr(lrs, [1.0 + 0.1 * i for i in range(20)])


def test_pick_passes_over_a_one_step_touch_of_the_floor():
    """A single step dipping into the floor before the real floor is noise: the pick is the real floor's end."""
    lrs, losses = _synthetic_curve(0.0)
    reference = pick_max_lr(lrs, losses, smoothed=losses)
    smoothed = list(losses)
    smoothed[DESCENT_START + 10] = 0.5  # one step, mid-descent, as low as the floor
    pick = pick_max_lr(lrs, losses, smoothed=smoothed)
    assert pick.index == reference.index >= FLOOR_START
    assert pick.reason == reference.reason


def test_pick_on_a_sharp_v_takes_the_longest_short_stay():
    """With no stay of the minimum length (a sharp V), the longest stay counts, not an earlier, shorter blip."""
    lrs = lr_sweep(1e-5, 10.0, 100)
    smoothed = [2.0 - 0.02 * i for i in range(50)] + [1.0 + 0.1 * i for i in range(50)]
    smoothed[20] = 1.0  # an early one-step touch
    smoothed[47:52] = [1.2, 1.05, 1.02, 1.0, 1.15]  # the V's bottom: a 3-step stay, one short of the minimum (4 of 100)
    pick = pick_max_lr(lrs, list(smoothed), smoothed=smoothed)
    assert pick.index == 50
