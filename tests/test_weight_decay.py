"""The weight-decay maths on bare parameters, optimizers and schedulers: forms, gains, traces, budgets, rules."""

import math

import pytest
import timm
import timm.optim
import torch
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau, StepLR

from lightning_superconv.weight_decay import (
    MAX_STEP_DECAY,
    GroupTrace,
    SchedulerSpec,
    bounds_for,
    budget_matched,
    decay_budget,
    decay_form,
    decay_gain,
    epoch_ends,
    epochs_spanned,
    reference_budget,
    timescale_bounded,
    trace_schedule,
)
from lightning_superconv.weight_decay_grid import compressed_indices, grid_candidates, guarded_pick, pick_lowest


def _params(n: int = 1) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3)) for _ in range(n)]


def _constant_trace(lr: float, momentum: float, steps: int, gain: float) -> GroupTrace:
    return GroupTrace(lrs=[lr] * steps, momenta=[momentum] * steps, gains=[gain] * steps)


# ---------------------------------------------------------------------------------------------------- decay forms


@pytest.mark.parametrize(
    ("build", "form"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4), "coupled"),
        (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-4), "coupled"),
        (lambda p: torch.optim.AdamW(p, lr=1e-3), "decoupled"),
        (lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True), "decoupled"),
        (lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-4), "adaptive"),
        (lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9, weight_decay=1e-4), "adaptive"),
        (lambda p: torch.optim.Adagrad(p, lr=1e-3, weight_decay=1e-4), "adaptive"),
        (lambda p: torch.optim.Adamax(p, lr=1e-3, weight_decay=1e-4), "adaptive"),
        # plain L2 on the gradient, no momentum, no normalization (a new user's ASGD was told it was "adaptive")
        (lambda p: torch.optim.ASGD(p, lr=1e-2, weight_decay=1e-4), "coupled"),
        # `param.mul_(1 - lr * weight_decay)` with no flag to say so (a new user's were told they were "adaptive")
        (lambda p: torch.optim.Adafactor(p, lr=1e-2, weight_decay=1e-2), "decoupled"),
        (lambda p: torch.optim.Muon([torch.nn.Parameter(torch.ones(2, 2))], lr=1e-2, weight_decay=0.1), "decoupled"),
    ],
)
def test_decay_form_is_read_from_the_param_group(build, form):
    """SGD and ASGD couple plainly, AdamW/flagged Adam decouple, Adam/RMSprop/Adagrad couple through their scaling."""
    assert decay_form(build(_params()).param_groups[0]) == form


def test_adamw_is_decoupled_although_it_subclasses_adam():
    """The group's flag decides, not ``isinstance``: AdamW is an Adam subclass."""
    opt = torch.optim.AdamW(_params(), lr=1e-3)
    assert isinstance(opt, torch.optim.Adam)
    assert decay_form(opt.param_groups[0]) == "decoupled"


def test_sgd_gain_is_one_over_one_minus_momentum():
    """Coupled L2 goes through the momentum buffer: its steady-state shrink is η·λ/(1-μ)."""
    assert decay_gain("coupled", momentum=0.9) == pytest.approx(10.0)
    assert decay_gain("coupled", momentum=0.9, nesterov=True) == pytest.approx(10.0)
    assert decay_gain("coupled", momentum=0.9, dampening=0.5) == pytest.approx(5.0)
    assert decay_gain("coupled", momentum=0.0) == 1.0


def test_decoupled_and_adaptive_gain_is_one():
    """Decoupled decay bypasses the momentum buffer; adaptive gets the convention c = 1."""
    assert decay_gain("decoupled", momentum=0.9) == 1.0
    assert decay_gain("adaptive", momentum=0.9) == 1.0


def test_sgd_gain_matches_torch_steady_state_shrink():
    """With zero gradient, SGD's per-step shrink settles at η·λ/(1-μ), the gain the budget uses."""
    p = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        p.grad = torch.zeros(1)
        before = float(p.detach())
        opt.step()
    shrink = (before - float(p.detach())) / before
    assert shrink == pytest.approx(0.01 * 1e-3 * decay_gain("coupled", momentum=0.9), rel=1e-3)


@pytest.mark.parametrize("optimizer_cls", [torch.optim.AdamW, torch.optim.Adafactor, torch.optim.Muon])
def test_decoupled_optimizers_shrink_by_lr_times_weight_decay(optimizer_cls):
    """Decoupled decay with zero gradient: θ ← θ(1 - η·λ) at every step, gain 1 (what "decoupled" stands for)."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = optimizer_cls([p], lr=0.01, weight_decay=0.1)
    assert decay_form(opt.param_groups[0]) == "decoupled"
    for step in range(1, 4):
        p.grad = torch.zeros(2, 2)
        opt.step()
        assert torch.allclose(p.detach(), torch.full((2, 2), (1 - 0.01 * 0.1) ** step))


# timm's optimizers, as `timm.optim.create_optimizer_v2` builds them (found trying the package as a new user: eight
# with decoupled decay were read as adaptive, told to switch to AdamW and left unbalanced)
TIMM_DECOUPLED = ["lion", "nadamw", "laprop", "adan", "adafactor", "adafactorbv", "sgdw", "mars", "adabelief"]


@pytest.mark.parametrize("name", TIMM_DECOUPLED)
def test_timm_s_decoupled_optimizers_are_read_as_decoupled_and_shrink_by_lr_times_weight_decay(name):
    """With a zero gradient each shrinks the weights by η·λ per step (Adan by 1/(1 + η·λ)): gain 1, as AdamW."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = timm.optim.create_optimizer_v2([p], name, lr=0.01, weight_decay=0.1)
    assert decay_form(opt.param_groups[0], opt) == "decoupled"
    shrink = 1 / (1 + 0.01 * 0.1) if name == "adan" else 1 - 0.01 * 0.1  # Adan's proximal form
    for step in range(1, 4):
        p.grad = torch.zeros(2, 2)
        opt.step()
        assert p.detach() == pytest.approx(torch.full((2, 2), shrink**step), rel=2e-6)


@pytest.mark.parametrize(
    ("name", "kwargs", "form"),
    [
        ("adabelief", {"decoupled_decay": False}, "adaptive"),  # L2 on the gradient, then its normalization
        ("madgrad", {}, "adaptive"),
        ("madgrad", {"decoupled_decay": True}, "decoupled"),
        ("adopt", {}, "adaptive"),
        ("adopt", {"decoupled": True}, "decoupled"),
        ("rmsproptf", {}, "adaptive"),
        ("rmsproptf", {"decoupled_decay": True}, "decoupled"),
        # the shrink is `λ·η²/η₀` (η₀ the LR it was built with) or `λ` per step: no constant `c` times `η·λ`
        ("lion", {"corrected_weight_decay": True}, "adaptive"),
        ("adabelief", {"fixed_decay": True}, "adaptive"),
        ("momentum", {}, "coupled"),  # timm's SGD: torch's
    ],
)
def test_timm_s_decay_flags_decide_where_an_optimizer_has_one(name, kwargs, form):
    """`decoupled_decay` (AdaBelief, MADGRAD, RMSpropTF, ...) and `decoupled` (Adopt) decide, either way."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = timm.optim.create_optimizer_v2([p], name, lr=0.01, weight_decay=0.1, **kwargs)
    assert decay_form(opt.param_groups[0], opt) == form


def test_timm_s_corrected_weight_decay_shrinks_by_no_constant_times_lr_times_decay():
    """The `corrected_weight_decay=True` of timm shrinks by `λ·η²/η₀`: at ten times the LR built with, by `10·η·λ`."""
    p = torch.nn.Parameter(torch.ones(2, 2))
    opt = timm.optim.create_optimizer_v2([p], "lion", lr=0.01, weight_decay=0.1, corrected_weight_decay=True)
    opt.param_groups[0]["lr"] = 0.1
    p.grad = torch.zeros(2, 2)
    opt.step()
    assert p.detach() == pytest.approx(torch.full((2, 2), 1 - 0.1**2 / 0.01 * 0.1), rel=1e-6)


@pytest.mark.parametrize("key", ["relative_step", "no_prox", "mars_type", "corrected_weight_decay"])
def test_timm_s_unflagged_keys_are_read_for_timm_s_optimizers_only(key):
    """Other libraries' groups carry some of these keys with decay of other forms: they stay adaptive.

    Hugging Face's `Adafactor` (`relative_step`) scales its decay by the weights' RMS, pytorch_optimizer's MARS
    (`mars_type`) couples it unless flagged, D-Adaptation's Adan (`no_prox`) multiplies it by its own step size.
    """
    group = {"lr": 0.01, "weight_decay": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, key: False}
    assert decay_form(group) == "adaptive"
    assert decay_form(group, torch.optim.Adam(_params())) == "adaptive"


# ---------------------------------------------------------------------------------------------------- traces


def test_trace_of_a_constant_optimizer_is_flat():
    """No scheduler: every step sees the configured LR and momentum."""
    opt = torch.optim.SGD(_params(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    traces, notes = trace_schedule(opt, [], total_steps=5)
    assert traces[0].lrs == [0.1] * 5
    assert traces[0].momenta == [0.9] * 5
    assert traces[0].gains == pytest.approx([10.0] * 5)
    assert notes == []


def test_trace_follows_one_cycle_lr_and_momentum():
    """The traced LR and momentum are exactly those a real OneCycleLR produces step by step."""
    opt = torch.optim.SGD(_params(), lr=0.1, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=1.0, total_steps=20)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched)], total_steps=20)
    lrs, moms = [], []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        sched.step()
    assert traces[0].lrs == pytest.approx(lrs)
    assert traces[0].momenta == pytest.approx(moms)


def test_trace_leaves_the_real_optimizer_and_scheduler_alone():
    """Tracing replays a detached copy: the run's scheduler has not moved, the params are not copied or touched."""
    params = _params()
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=1.0, total_steps=50)
    before = (sched.last_epoch, opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"])
    trace_schedule(opt, [SchedulerSpec(sched)], total_steps=50)
    assert (sched.last_epoch, opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]) == before
    assert opt.param_groups[0]["params"][0] is params[0]


def _layer_decayed(lr: float) -> torch.optim.Optimizer:
    """AdamW from timm's factory with layer decay: each group the same ``lr``, its layer's share in ``lr_scale``."""
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2, embed_dim=16, num_heads=2,
        num_classes=4,
    )  # fmt: skip
    return timm.optim.create_optimizer_v2(model, "adamw", lr=lr, weight_decay=0.05, layer_decay=0.5)


@pytest.mark.parametrize("per_update", [True, False], ids=["step_update", "step(epoch)"])
def test_a_timm_scheduler_is_traced_as_timm_steps_it_with_each_layer_s_lr_scale(per_update):
    """Found trying the package as a new user: a bare ``step()`` raised a ``TypeError`` for timm's schedulers.

    At fit start, with or without ``SuperConvergence``. They are stepped as Lightning's docs step them:
    ``step_update(num_updates)`` after each optimizer step, or ``step(epoch)`` with the epoch just taken at its end;
    each group's LR carries its layer's ``lr_scale``.
    """
    from timm.scheduler import CosineLRScheduler

    def built() -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
        opt = _layer_decayed(1e-3)
        t = 12 if per_update else 3
        return opt, CosineLRScheduler(opt, t_initial=t, warmup_t=2 if per_update else 1, warmup_lr_init=1e-5,
                                      t_in_epochs=not per_update)  # fmt: skip

    opt, sched = built()
    interval = "step" if per_update else "epoch"
    traces, notes = trace_schedule(opt, [SchedulerSpec(sched, interval, 1)], total_steps=12, steps_per_epoch=4)
    assert notes == []
    opt, sched = built()
    expected = []
    for step in range(12):
        expected.append([group["lr"] for group in opt.param_groups])
        if per_update:
            sched.step_update(num_updates=step + 1)
        elif (step + 1) % 4 == 0:  # Lightning's `current_epoch` at an epoch's end: the epoch just taken
            sched.step(epoch=step // 4)
    traced = [lr for step in range(12) for lr in (trace.lrs[step] for trace in traces)]
    assert traced == pytest.approx([lr for lrs in expected for lr in lrs], rel=1e-12)
    scales = [group["lr_scale"] for group in opt.param_groups]
    assert len(set(scales)) > 2, "the premise: layers at different shares"
    assert len({round(trace.lrs[6] / scale, 15) for trace, scale in zip(traces, scales, strict=True)}) == 1


def test_a_timm_scheduler_is_traced_from_the_time_a_second_fit_starts_at():
    """Found reviewing the package: a second ``fit`` (epochs 5-9 of a 10-epoch cosine) was traced from the start.

    Lightning's docs step timm's schedulers with the Trainer's own ``current_epoch``, which a second fit carries on.
    """
    from timm.scheduler import CosineLRScheduler

    opt = _layer_decayed(0.1)
    sched = CosineLRScheduler(opt, t_initial=10)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched, "epoch", 1)], 5, steps_per_epoch=1, start_step=5,
                               start_epoch=5)  # fmt: skip
    head = len(traces) - 1
    expected = [opt.param_groups[head]["lr"]]
    for epoch in range(5, 9):
        sched.step(epoch=epoch)
        expected.append(opt.param_groups[head]["lr"])
    assert traces[head].lrs == pytest.approx(expected, rel=1e-12)
    assert traces[head].lrs[1] < 0.6 * traces[head].lrs[0]  # the second half of the cosine, not its start


def test_timm_s_plateau_scheduler_is_read_as_constant_and_said():
    """It waits for a metric, as torch's ``ReduceLROnPlateau`` (which it wraps) does: it cannot be foreseen."""
    from timm.scheduler import PlateauLRScheduler

    opt = _layer_decayed(1e-3)
    traces, notes = trace_schedule(opt, [SchedulerSpec(PlateauLRScheduler(opt), "epoch", 1)], 8, steps_per_epoch=4)
    assert notes == ["`PlateauLRScheduler` depends on a metric and was read as constant"]
    assert traces[0].lrs == [traces[0].lrs[0]] * 8


def test_an_epoch_scheduler_on_data_without_a_length_is_read_as_constant_and_said():
    """When a stream's epochs end cannot be foreseen: read as constant, and said.

    Found in a review: each step of a stream was traced as an epoch, a ``StepLR`` Lightning never steps there as halving
    the LR at every step (a decay budget 50x too small, and λ raised 4x).
    """
    opt = torch.optim.SGD(_params(), lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    traces, notes = trace_schedule(opt, [SchedulerSpec(sched, "epoch", 1)], 6, steps_per_epoch=1, epochs_known=False)
    assert traces[0].lrs == [1.0] * 6
    assert notes == ["`StepLR` steps at epoch ends, which data without a length does not foretell, and was read as "
                     "constant"]  # fmt: skip
    step_wise = StepLR(opt, step_size=2, gamma=0.5)  # stepped by the step: traced as before
    traces, notes = trace_schedule(opt, [SchedulerSpec(step_wise)], 4, steps_per_epoch=1, epochs_known=False)
    assert (traces[0].lrs, notes) == ([1.0, 1.0, 0.5, 0.5], [])


def test_an_epoch_scheduler_of_a_frequency_above_one_steps_at_the_runs_epochs_in_a_second_fit():
    """Lightning steps it after each epoch whose number, counted from the run's first, is a multiple of ``frequency``.

    Found in a review: a second fit's epochs were counted from its own first, one epoch off (a budget 1.3x the one that
    ran).
    """
    opt = torch.optim.SGD(_params(), lr=0.05)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched, "epoch", 2)], 16, steps_per_epoch=4, start_epoch=1)
    assert traces[0].lrs == [0.05] * 4 + [0.025] * 8 + [0.0125] * 4


def test_trace_of_an_epoch_scheduler_steps_once_per_epoch():
    """An ``"epoch"`` scheduler changes the LR every ``steps_per_epoch * frequency`` steps."""
    opt = torch.optim.SGD(_params(), lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched, "epoch", 1)], total_steps=6, steps_per_epoch=2)
    assert traces[0].lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_an_epoch_scheduler_steps_at_each_epoch_s_own_end_when_the_epochs_differ_in_length():
    """Under a ``GradientAccumulationScheduler`` epochs differ in steps: given each one's, the trace follows them."""
    opt = torch.optim.SGD(_params(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched, "epoch", 1)], total_steps=7, steps_per_epoch=[4, 1])
    assert traces[0].lrs == [1.0] * 4 + [0.5, 0.25, 0.125]  # 4 steps, then epochs of 1 (the last length repeats)
    every_second = [SchedulerSpec(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), "epoch", 2)]
    traces, _ = trace_schedule(opt, every_second, total_steps=7, steps_per_epoch=[4, 1])
    assert traces[0].lrs == [1.0] * 5 + [0.5, 0.5]  # after the second epoch (step 5), then the fourth (step 7)
    assert epoch_ends([4, 1], 7) == [4, 5, 6, 7]
    assert epochs_spanned([16, 4], 28) == 4.0
    assert epochs_spanned([16, 4], 26) == pytest.approx(3.5)
    assert epochs_spanned(4, 10) == 2.5


def test_a_step_scheduler_of_frequency_above_one_steps_where_its_epoch_has_read_a_multiple_of_it_in_batches():
    """Lightning steps it after an optimizer step whose epoch has read `frequency` batches times k, not every k-th step.

    Found trying the package as a new user: under accumulation of 4 a scheduler of frequency 2 steps at every optimizer
    step (4, 8, 12 batches read), and the balancer traced it at every other one (K 0.293 traced, 0.186 run).
    """
    opt = torch.optim.SGD(_params(), lr=1.0)
    spec = [SchedulerSpec(StepLR(opt, step_size=1, gamma=0.5), "step", 2)]
    traces, _ = trace_schedule(opt, spec, total_steps=4, step_batches=[4, 8, 12, 16])
    assert traces[0].lrs == [1.0, 0.5, 0.25, 0.125]
    # epochs of 5 batches, no accumulation: the count restarts at each epoch (batches 2 and 4 of each step it)
    spec = [SchedulerSpec(StepLR(opt, step_size=1, gamma=0.5), "step", 2)]
    traces, _ = trace_schedule(opt, spec, total_steps=6, step_batches=[1, 2, 3, 4, 5, 1])
    assert traces[0].lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    without = [SchedulerSpec(StepLR(opt, step_size=1, gamma=0.5), "step", 2)]
    traces, _ = trace_schedule(opt, without, total_steps=4)  # one epoch of one batch per step
    assert traces[0].lrs == [1.0, 1.0, 0.5, 0.5]


def test_trace_holds_the_last_lr_past_a_one_cycle_end():
    """A run longer than torch's OneCycleLR allows keeps the cycle's final LR instead of raising."""
    opt = torch.optim.SGD(_params(), lr=0.1)
    sched = OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=False)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched)], total_steps=15)
    assert len(traces[0].lrs) == 15
    assert traces[0].lrs[-1] == traces[0].lrs[11]


def test_trace_reads_plateau_scheduler_as_constant_and_says_so():
    """``ReduceLROnPlateau`` needs a metric: it is read as constant and named in the notes."""
    opt = torch.optim.SGD(_params(), lr=0.1)
    sched = ReduceLROnPlateau(opt)
    traces, notes = trace_schedule(opt, [SchedulerSpec(sched, "epoch")], total_steps=4)
    assert traces[0].lrs == [0.1] * 4
    assert "ReduceLROnPlateau" in notes[0]


def test_trace_keeps_each_param_group():
    """Each group gets its own trace: the group ratios of the schedule are kept."""
    a, b = _params(2)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.1, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=[1.0, 0.1], total_steps=10)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched)], total_steps=10)
    assert [x / y for x, y in zip(traces[0].lrs, traces[1].lrs, strict=True)] == pytest.approx([10.0] * 10)


# ---------------------------------------------------------------------------------------------------- budgets


def test_budget_of_a_known_one_cycle():
    """K = λ·Σ c_t·η_t over the schedule the optimizer really runs, summed by hand."""
    opt = torch.optim.SGD(_params(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sched = OneCycleLR(opt, max_lr=1.0, total_steps=30)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched)], total_steps=30)
    expected = 0.0
    for _ in range(30):
        group = opt.param_groups[0]
        expected += group["lr"] / (1 - group["momentum"]) * 1e-3
        opt.step()
        sched.step()
    assert decay_budget(traces[0], 1e-3) == pytest.approx(expected)


def test_reference_budget_is_the_constant_recipe():
    """The user's recipe: configured LR, gain and λ held for every step."""
    assert reference_budget(lr=0.01, gain=10.0, weight_decay=5e-4, steps=100) == pytest.approx(5e-3)


def test_budget_matched_shrinks_lambda_by_the_budget_ratio():
    """A schedule spending 10x the reference's Σcη gets λ/10."""
    trace = _constant_trace(0.1, 0.9, 100, 10.0)
    ref = reference_budget(0.01, 10.0, 5e-4, 100)
    assert budget_matched(ref, trace, (5e-6, 5e-4)) == pytest.approx(5e-5)


def test_budget_matched_is_clamped():
    """A ratio beyond the bounds stops at them."""
    trace = _constant_trace(10.0, 0.9, 100, 10.0)
    ref = reference_budget(0.01, 10.0, 5e-4, 100)
    assert budget_matched(ref, trace, (5e-6, 5e-4)) == pytest.approx(5e-6)
    small = _constant_trace(1e-4, 0.9, 100, 10.0)
    assert budget_matched(ref, small, (5e-6, 5e-4)) == pytest.approx(5e-4)


def test_budget_matched_with_decoupled_decay_ignores_momentum():
    """AdamW: c = 1, so only the LRs enter the ratio."""
    opt = torch.optim.AdamW(_params(), lr=1e-3, weight_decay=1e-2)
    sched = OneCycleLR(opt, max_lr=1e-2, total_steps=40)
    traces, _ = trace_schedule(opt, [SchedulerSpec(sched)], total_steps=40)
    assert traces[0].gains == [1.0] * 40
    ref = reference_budget(1e-3, 1.0, 1e-2, 40)
    assert budget_matched(ref, traces[0], (0.0, 1.0)) == pytest.approx(ref / sum(traces[0].lrs))


# ---------------------------------------------------------------------------------------------------- bounds


def test_bounds_are_relative_to_the_user_value():
    """[low·λ, high·λ] when no step is near the per-step cap."""
    trace = _constant_trace(0.01, 0.9, 10, 10.0)
    assert bounds_for(1e-4, trace, 0.01, 10.0, "coupled") == pytest.approx((1e-6, 1e-3))


def test_bounds_cap_the_per_step_decay():
    """No step may shrink the weights by more than MAX_STEP_DECAY: λ ≤ cap / max(c·η)."""
    trace = _constant_trace(1.0, 0.9, 10, 10.0)
    _, high = bounds_for(0.1, trace, 0.01, 10.0, "coupled")
    assert high == pytest.approx(MAX_STEP_DECAY / 10.0)


def test_adaptive_decay_has_no_per_step_cap():
    """Adam's coupled decay is bounded by Adam's own step size, not by c·η·λ."""
    trace = _constant_trace(1.0, 0.9, 10, 1.0)
    assert bounds_for(0.1, trace, 0.01, 10.0, "adaptive") == pytest.approx((1e-3, 1.0))


# ---------------------------------------------------------------------------------------------------- the grid


def test_grid_candidates_are_clamped_and_deduplicated():
    """Factors beyond the bounds collapse onto them, once."""
    assert grid_candidates(1e-3, [0.1, 1.0, 10.0, 30.0, 100.0], (1e-5, 1e-2)) == pytest.approx([1e-4, 1e-3, 1e-2])


def test_pick_lowest_skips_non_finite_losses():
    """A diverged branch (NaN/inf) is never picked."""
    assert pick_lowest([0.1, 1.0, 10.0], [0.5, math.nan, 0.4]) == 2
    assert pick_lowest([0.1, 1.0, 10.0], [math.inf, 0.7, 0.9]) == 1


def test_pick_lowest_breaks_ties_towards_the_middle():
    """Equal losses: the least extreme candidate wins."""
    assert pick_lowest([0.1, 1.0, 10.0], [0.5, 0.5, 0.5]) == 1


def test_pick_lowest_raises_when_every_branch_diverged():
    with pytest.raises(ValueError, match="no candidate produced a finite validation loss"):
        pick_lowest([0.1, 1.0], [math.nan, math.inf])


def test_compressed_indices_span_the_whole_schedule():
    """A branch sees the first and last step of the run, evenly spaced between."""
    idx = compressed_indices(345, 12)
    assert idx[0] == 0
    assert idx[-1] == 344
    assert len(idx) == 12
    assert all(b > a for a, b in zip(idx, idx[1:], strict=False))
    assert compressed_indices(5, 10) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------- timescale rule


def test_timescale_raises_a_decay_that_cannot_act_within_the_run():
    """K = 0.01 < 1: λ grows until decay alone would shrink the weights by 1/e over the run."""
    trace = _constant_trace(0.1, 0.9, 100, 10.0)  # Σ c·η = 100
    assert timescale_bounded(1e-4, trace, (1.0, 20.0), (0.0, 1e3)) == pytest.approx(1e-2)


def test_timescale_keeps_a_decay_already_in_range():
    """1 <= K <= epochs: a tuned recipe is left alone."""
    trace = _constant_trace(0.1, 0.9, 100, 10.0)
    assert timescale_bounded(0.05, trace, (1.0, 20.0), (0.0, 1e3)) == 0.05


def test_timescale_shrinks_a_decay_that_forgets_within_an_epoch():
    """K above the number of epochs: λ shrinks to K = epochs."""
    trace = _constant_trace(0.1, 0.9, 100, 10.0)
    assert timescale_bounded(1.0, trace, (1.0, 20.0), (0.0, 1e3)) == pytest.approx(0.2)


def test_timescale_is_clamped_to_the_bounds():
    trace = _constant_trace(0.1, 0.9, 100, 10.0)
    assert timescale_bounded(1e-4, trace, (1.0, 20.0), (1e-6, 1e-3)) == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------------- guarded pick


def test_guarded_pick_adopts_a_clear_winner():
    """Beyond twice the replicate noise and min_gain: the best λ is adopted, and the reason says so."""
    decision = guarded_pick([0.1, 1.0, 10.0], [0.52, 0.50, 0.40], replicate=0.51)
    assert decision.index == 2
    assert "10x had the lowest validation loss" in decision.reason


def test_guarded_pick_keeps_the_user_value_within_the_noise():
    """A lead smaller than twice the difference between two data orders is noise: keep the user's λ."""
    decision = guarded_pick([0.1, 1.0, 10.0], [0.52, 0.50, 0.47], replicate=0.48)
    assert decision.index == 1
    assert decision.reason.startswith("kept")


def test_guarded_pick_says_the_user_value_did_best_when_it_did():
    """The user's λ lowest: the reason says so and names the next best, not "the best other λ (1x)"."""
    decision = guarded_pick([0.1, 1.0, 10.0], [0.6, 0.5, 0.7], replicate=0.52)
    assert decision.index == 1
    assert decision.reason.startswith("kept: the user's λ had the lowest validation loss (the next, 0.1x, 0.1 higher")
    assert "(1x)" not in decision.reason


def test_guarded_pick_keeps_the_user_value_below_min_gain():
    """Without noise, a lead under ``min_gain`` of the loss still does not count."""
    assert guarded_pick([1.0, 3.0], [0.500, 0.499], replicate=0.500, min_gain=0.01).index == 0


def test_guarded_pick_keeps_the_user_value_when_a_branch_diverged():
    """A diverged branch marks the edge of stability: the user's λ is kept, even if another looks better."""
    decision = guarded_pick([0.1, 1.0, 10.0], [math.nan, 0.50, 0.30], replicate=0.50)
    assert decision.index == 1
    assert "edge of stability" in decision.reason


def test_guarded_pick_needs_the_user_value_in_the_grid():
    with pytest.raises(ValueError, match=r"must contain the user's λ \(factor 1\)"):
        guarded_pick([0.1, 10.0], [0.5, 0.4], replicate=0.5)


def test_guarded_pick_says_where_no_noise_was_measured():
    """A replicate bit-identical to the user's branch measured no noise: said, not read as a noise of 0.

    Found in a review: on a train loader without shuffling the replicate repeats the same batches, and the reason
    read "0 between two data orders".
    """
    decision = guarded_pick([0.1, 1.0, 10.0], [0.52, 0.50, 0.499], replicate=0.50)
    assert decision.index == 1
    assert "no noise measured" in decision.reason
    assert "`min_gain` alone guards" in decision.reason
    assert "between two data orders" not in decision.reason
    assert "0.01 between two data orders" in guarded_pick([1.0, 3.0], [0.50, 0.40], replicate=0.51).reason


def test_guarded_pick_names_what_factor_one_is():
    """With a reference λ given instead of the user's, the reasons speak of it (found in a review)."""
    start = "the `reference_weight_decay`"
    for losses in ([0.52, 0.50, 0.40], [0.6, 0.5, 0.7], [0.52, 0.50, 0.47]):
        reason = guarded_pick([0.1, 1.0, 10.0], losses, replicate=0.51, start=start).reason
        assert start in reason
        assert "user's" not in reason
