"""The one-cycle schedule on bare parameters and optimizers: shape, param-group ratios, momentum, torch's gotchas."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from lightning_superconv.schedule import OneCycleConfig, SafeOneCycleLR, build_one_cycle, safe_pct_start


def _param() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(2))


def _sgd(lr: float = 0.01, momentum: float = 0.9) -> torch.optim.SGD:
    return torch.optim.SGD([_param()], lr=lr, momentum=momentum)


def _trajectory(optimizer: torch.optim.Optimizer, scheduler, steps: int, key: str = "lr", group: int = 0) -> list:
    """The value of ``key`` in a param group at each step, read before the step as a training step would see it."""
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[group][key])
        optimizer.step()
        scheduler.step()
    return values


def test_build_one_cycle_returns_a_torch_one_cycle_lr():
    """The scheduler is a real torch OneCycleLR, so checkpoints and LearningRateMonitor treat it as one."""
    scheduler = build_one_cycle(_sgd(), max_lr=1.0, total_steps=10)
    assert isinstance(scheduler, OneCycleLR)


def test_lr_peaks_at_max_lr_at_the_end_of_the_warm_up():
    """The LR reaches `max_lr` at step round(pct_start * total) - 1 and nowhere else."""
    optimizer = _sgd()
    lrs = _trajectory(
        optimizer, build_one_cycle(optimizer, max_lr=0.5, total_steps=100, config=OneCycleConfig(pct_start=0.3)), 100
    )
    assert max(lrs) == pytest.approx(0.5, rel=1e-12)
    assert lrs.index(max(lrs)) == round(0.3 * 100) - 1


def test_lr_starts_at_max_lr_over_div_factor():
    """The cycle starts at `max_lr / div_factor`."""
    optimizer = _sgd()
    build_one_cycle(optimizer, max_lr=0.5, total_steps=100, config=OneCycleConfig(div_factor=20.0))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 / 20.0, rel=1e-12)


def test_lr_ends_at_max_lr_over_both_div_factors():
    """The last step's LR is `max_lr / (div_factor * final_div_factor)`."""
    optimizer = _sgd()
    scheduler = build_one_cycle(
        optimizer, max_lr=0.5, total_steps=100, config=OneCycleConfig(div_factor=20.0, final_div_factor=1e3)
    )
    lrs = _trajectory(optimizer, scheduler, 100)
    assert lrs[-1] == pytest.approx(0.5 / (20.0 * 1e3), rel=1e-9)


def test_trajectory_matches_torch_one_cycle_lr():
    """Within `total_steps` the schedule is exactly torch's OneCycleLR with the same arguments."""
    ours_opt, ref_opt = _sgd(), _sgd()
    kwargs = dict(pct_start=0.25, div_factor=10.0, final_div_factor=100.0, anneal_strategy="linear")
    ours = _trajectory(ours_opt, build_one_cycle(ours_opt, 0.3, 57, OneCycleConfig(**kwargs)), 57)
    ref = _trajectory(ref_opt, OneCycleLR(ref_opt, max_lr=0.3, total_steps=57, **kwargs), 57)
    assert ours == ref


def test_param_group_ratios_are_kept():
    """Two groups configured at 0.01 and 0.001 keep their 10:1 ratio at every step; `max_lr` is the first group's."""
    optimizer = torch.optim.SGD(
        [{"params": [_param()], "lr": 0.01}, {"params": [_param()], "lr": 0.001}], lr=0.01, momentum=0.9
    )
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=20)
    first, second = [], []
    for _ in range(20):
        first.append(optimizer.param_groups[0]["lr"])
        second.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(first) == pytest.approx(1.0, rel=1e-12)
    assert max(second) == pytest.approx(0.1, rel=1e-12)
    assert [b / a for a, b in zip(first, second, strict=True)] == pytest.approx([0.1] * 20, rel=1e-9)


def test_sgd_without_momentum_keeps_none_by_default():
    """An SGD built with momentum=0 keeps momentum 0 throughout when `cycle_momentum` is automatic."""
    optimizer = _sgd(momentum=0.0)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=20, config=OneCycleConfig(cycle_momentum=None))
    assert set(_trajectory(optimizer, scheduler, 20, key="momentum")) == {0.0}
    assert scheduler.cycle_momentum is False


def test_sgd_without_momentum_cycles_when_asked():
    """`cycle_momentum=True` switches momentum on for a momentum-free SGD, as the user explicitly asked."""
    optimizer = _sgd(momentum=0.0)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=20, config=OneCycleConfig(cycle_momentum=True))
    momenta = _trajectory(optimizer, scheduler, 20, key="momentum")
    assert momenta[0] == pytest.approx(0.95)
    assert min(momenta) == pytest.approx(0.85)


def test_a_group_added_as_a_copy_of_the_first_groups_settings_keeps_the_ratio_it_was_added_with():
    """A common way to add a group: the first group's settings (the cycle's keys among them) at a tenth of its LR.

    Found in a review: holding ``initial_lr``, ``max_lr`` and ``min_lr``, it was taken for a group of the cycle and
    ran at the first group's LR from its second step, without a word.
    """
    optimizer = torch.optim.SGD([_param()], lr=0.1, momentum=0.9)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=100)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    copied = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    optimizer.add_param_group({**copied, "params": [_param()], "lr": copied["lr"] / 10})
    assert scheduler.adopt_added_groups() == [1]
    assert scheduler.adopt_added_groups() == []  # once
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        scheduler.follow_first_group()
        first, added = optimizer.param_groups
        assert added["lr"] / first["lr"] == pytest.approx(0.1)
    # the state_dict keeps where the added groups start: a resumed cycle adopts none again
    resumed = build_one_cycle(torch.optim.SGD([_param()], lr=0.1, momentum=0.9), max_lr=1.0, total_steps=100)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.built_groups == 1


@pytest.mark.parametrize(
    ("built", "added", "expected"),
    [((0.0, 0.9), 0.9, [0.0, 0.85, 0.85]), ((0.9, 0.0), 0.0, [0.85, 0.0, 0.0]), ((0.9, 0.9), 0.0, [0.85, 0.85, 0.0])],
    ids=["first-group-without", "added-without", "added-without-beside-all-cycling"],
)
def test_a_group_added_later_cycles_by_its_own_momentum_after_the_first_group_that_cycles(built, added, expected):
    """An added group (``BackboneFinetuning``'s) with momentum follows the groups that cycle, not a first kept at 0.

    One added without momentum keeps none, as the groups built so do. Found reviewing the package: behind a head
    built at momentum 0, the unfrozen backbone ran at 0.
    """
    groups = [{"params": [_param()], "momentum": momentum} for momentum in built]
    optimizer = torch.optim.SGD(groups, lr=0.1)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=100, config=OneCycleConfig(pct_start=0.3))
    optimizer.add_param_group({"params": [_param()], "momentum": added, "lr": 0.01})
    scheduler.adopt_added_groups()
    for _ in range(30):  # to the peak, where cycling momentum is at its base
        optimizer.step()
        scheduler.step()
        scheduler.follow_first_group()
    assert [group["momentum"] for group in optimizer.param_groups] == pytest.approx(expected, abs=1e-3)


def test_a_group_built_without_momentum_cycles_when_cycling_is_asked_for():
    """``cycle_momentum=True``: every group cycles, one built at 0 too (the user asked)."""
    optimizer = torch.optim.SGD([{"params": [_param()]}, {"params": [_param()], "momentum": 0.0}], lr=0.1, momentum=0.9)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=20, config=OneCycleConfig(cycle_momentum=True))
    assert _trajectory(optimizer, scheduler, 20, key="momentum", group=1)[0] == pytest.approx(0.95)


def test_adam_built_without_beta1_keeps_none_by_default():
    """An Adam at ``betas=(0, 0.99)`` (as GANs often train) keeps beta1 at 0, as an SGD without momentum keeps none.

    Found reviewing the package: beta1 was cycled to 0.95.
    """
    optimizer = torch.optim.Adam([_param()], lr=1e-3, betas=(0.0, 0.99))
    scheduler = build_one_cycle(optimizer, max_lr=1e-2, total_steps=20)
    assert scheduler.cycle_momentum is False
    assert {betas for betas in _trajectory(optimizer, scheduler, 20, key="betas")} == {(0.0, 0.99)}


def test_three_phases_that_cannot_end_annealed_are_refused():
    """Three phases rise for ``pct_start`` and fall for as long: from 0.5 on the run ends before the LR comes down."""
    with pytest.raises(ValueError, match=r"`pct_start` must be below 0.5 with `three_phase=True` .*got 0.6"):
        OneCycleConfig(pct_start=0.6, three_phase=True)
    optimizer = _sgd()
    config = OneCycleConfig(pct_start=0.45, three_phase=True)
    lrs = _trajectory(optimizer, build_one_cycle(optimizer, max_lr=1.0, total_steps=40, config=config), 40)
    assert lrs[-1] < 1e-3  # annealed


def test_sgd_with_momentum_cycles_inversely_to_the_lr():
    """SGD momentum runs 0.95 -> 0.85 at the LR's peak -> 0.95, by default."""
    optimizer = _sgd(momentum=0.9)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=20, config=OneCycleConfig(pct_start=0.5))
    momenta = _trajectory(optimizer, scheduler, 20, key="momentum")
    assert momenta[0] == pytest.approx(0.95)
    assert momenta[9] == pytest.approx(0.85)
    assert momenta[-1] == pytest.approx(0.95)


def test_adam_beta1_cycles_inversely_to_the_lr():
    """Adam's beta1 runs 0.95 -> 0.85 at the LR's peak -> 0.95, and beta2 is untouched."""
    optimizer = torch.optim.Adam([_param()], lr=1e-3, betas=(0.9, 0.999))
    scheduler = build_one_cycle(optimizer, max_lr=1e-2, total_steps=20, config=OneCycleConfig(pct_start=0.5))
    betas = _trajectory(optimizer, scheduler, 20, key="betas")
    assert betas[0][0] == pytest.approx(0.95)
    assert betas[9][0] == pytest.approx(0.85)
    assert betas[-1][0] == pytest.approx(0.95)
    assert {b[1] for b in betas} == {0.999}


def test_cycling_momentum_on_an_optimizer_without_any_raises():
    """Adagrad has neither `momentum` nor `betas`: asking to cycle it fails, naming the argument."""
    optimizer = torch.optim.Adagrad([_param()], lr=0.01)
    with pytest.raises(ValueError, match=r"`cycle_momentum=True`.*Adagrad"):
        build_one_cycle(optimizer, max_lr=1.0, total_steps=10, config=OneCycleConfig(cycle_momentum=True))


def test_optimizer_without_momentum_gets_a_cycle_without_it_by_default():
    """Adagrad with automatic `cycle_momentum` gets the LR cycle and no momentum cycling."""
    optimizer = torch.optim.Adagrad([_param()], lr=0.01)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=10)
    assert scheduler.cycle_momentum is False
    assert max(_trajectory(optimizer, scheduler, 10)) == pytest.approx(1.0, rel=1e-12)


def test_torch_one_cycle_lr_raises_past_total_steps():
    """The gotcha SafeOneCycleLR exists for: torch's scheduler raises when stepped once more than a full run does."""
    optimizer = _sgd()
    scheduler = OneCycleLR(optimizer, max_lr=1.0, total_steps=5)
    _trajectory(optimizer, scheduler, 5)  # a run of `total_steps` optimizer steps, each followed by a scheduler step
    optimizer.step()
    with pytest.raises(ValueError, match="total steps is 5"):
        scheduler.step()


@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
def test_safe_one_cycle_holds_the_final_lr_past_total_steps(anneal_strategy):
    """Steps past `total_steps` do not raise and keep the cycle's last LR, `max_lr / (div * final_div)`."""
    optimizer = _sgd()
    scheduler = SafeOneCycleLR(optimizer, max_lr=1.0, total_steps=10, anneal_strategy=anneal_strategy)
    final = _trajectory(optimizer, scheduler, 10)[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        past = _trajectory(optimizer, scheduler, 10)
    assert final == pytest.approx(1.0 / (25.0 * 1e4), rel=1e-9)
    assert past == pytest.approx([final] * 10, rel=1e-9)


@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
def test_safe_one_cycle_holds_the_final_momentum_past_total_steps(anneal_strategy):
    """Past the cycle the momentum stays at `max_momentum`; torch's extrapolation would push it past."""
    optimizer = _sgd()
    scheduler = SafeOneCycleLR(optimizer, max_lr=1.0, total_steps=10, anneal_strategy=anneal_strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        past = _trajectory(optimizer, scheduler, 20, key="momentum")[9:]
    assert past == pytest.approx([0.95] * 11, rel=1e-12)


def test_safe_one_cycle_is_silent_over_a_full_run():
    """A run of exactly `total_steps` steps (the scheduler stepped after each) raises no warning."""
    optimizer = _sgd()
    scheduler = SafeOneCycleLR(optimizer, max_lr=1.0, total_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trajectory(optimizer, scheduler, 5)


def test_safe_one_cycle_warns_once_past_total_steps():
    """Running past the cycle warns once with a RuntimeWarning, not at every step."""
    optimizer = _sgd()
    scheduler = SafeOneCycleLR(optimizer, max_lr=1.0, total_steps=5)
    _trajectory(optimizer, scheduler, 5)
    with pytest.warns(RuntimeWarning, match="sized for 5 steps") as record:
        _trajectory(optimizer, scheduler, 10)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1


def test_torch_one_cycle_lr_divides_by_zero_on_a_one_step_warm_up():
    """The gotcha `safe_pct_start` exists for: pct_start * total_steps == 1 makes torch divide 0 by 0."""
    with pytest.raises(ZeroDivisionError):
        OneCycleLR(_sgd(), max_lr=1.0, total_steps=4, pct_start=0.25)


def test_build_one_cycle_survives_a_one_step_warm_up():
    """With pct_start * total_steps == 1 our cycle builds and runs from `max_lr / div` down to its final LR."""
    optimizer = _sgd()
    lrs = _trajectory(
        optimizer, build_one_cycle(optimizer, max_lr=1.0, total_steps=4, config=OneCycleConfig(pct_start=0.25)), 4
    )
    assert lrs[0] == pytest.approx(1.0 / 25.0, rel=1e-6)
    assert all(0 < lr <= 1.0 for lr in lrs)
    assert lrs[-1] == pytest.approx(1.0 / (25.0 * 1e4), rel=1e-6)


@pytest.mark.parametrize(("pct_start", "total_steps"), [(0.3, 1000), (0.5, 3), (0.2, 7), (0.3, 2), (0.5, 1)])
def test_safe_pct_start_leaves_other_values_alone(pct_start, total_steps):
    """Only the singular value and warm-ups under a step are nudged; every other `pct_start` passes unchanged."""
    assert safe_pct_start(pct_start, total_steps) == pct_start


@pytest.mark.parametrize(("pct_start", "total_steps"), [(0.3, 3), (0.1, 7), (0.005, 100)])
def test_a_two_phase_warm_up_under_one_step_starts_the_cycle_at_its_start_not_at_its_peak(pct_start, total_steps):
    """Torch ends such a warm-up before step 0, and the cycle started at about `max_lr`: it is lengthened to 1 step.

    Found in a review: `pct_start=0.05` over 15 steps started at 0.9992 of `max_lr`, where the README says the cycle
    starts at `max_lr / div_factor`.
    """
    optimizer = _sgd()
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=total_steps, config=OneCycleConfig(pct_start))
    lrs = _trajectory(optimizer, scheduler, total_steps)
    assert lrs[0] == pytest.approx(1.0 / 25.0, rel=1e-6)
    assert lrs[1] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(1.0 / (25.0 * 1e4))


@pytest.mark.parametrize(("pct_start", "total_steps"), [(0.01, 100), (0.015, 100), (0.004, 300), (0.2, 5)])
def test_three_phases_with_a_warm_up_under_two_steps_still_reach_the_peak(pct_start, total_steps):
    """Torch's three phases end at fractions of a step when the warm-up is under 2: the LR never neared the peak.

    Found in a review: 100 steps at ``pct_start=0.01`` peaked at a 25th of ``max_lr``; so did every range-test trial
    of a cycle with ``three_phase=True`` and ``pct_start`` below 0.02. The warm-up is 2 steps.
    """
    optimizer = _sgd()
    config = OneCycleConfig(pct_start=pct_start, three_phase=True)
    scheduler = build_one_cycle(optimizer, max_lr=1.0, total_steps=total_steps, config=config)
    lrs = _trajectory(optimizer, scheduler, min(total_steps, 20))
    assert max(lrs) == pytest.approx(1.0)
    assert safe_pct_start(pct_start, total_steps, three_phase=True) == pytest.approx(2.0 / total_steps)
    assert safe_pct_start(0.02, 100, three_phase=True) == 0.02  # two steps already: left alone
