"""Optimizers that wrap another, read the gradients before their closure, or never call it, as Lightning steps them.

Lookahead wraps another; SAM reads the gradients before it calls the closure; Ranger never calls it. The range test
steps them as Lightning's training does, and puts back what they hold.

Written after trying the package as a new user with `torch_optimizer.Lookahead`, `pytorch_optimizer.Lookahead`,
`pytorch_optimizer.SAM` and `pytorch_ranger.Ranger` (not test dependencies: these are small stand-ins with the same
traits).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import WithOptimizer, trainer_kwargs

from lightning_superconv import SuperConvergence, WeightDecayBalancer
from lightning_superconv.param_groups import detached_copy


class Lookahead(torch.optim.Optimizer):
    """Steps an inner optimizer and every ``k`` steps pulls slow weights towards the fast ones (Zhang et al., 2019).

    Like ``torch_optimizer.Lookahead``: it never runs ``Optimizer.__init__`` (so it has none of torch's step hooks),
    shares the inner optimizer's param groups, and keeps the inner optimizer's momentum in that optimizer's own state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 3, alpha: float = 0.5) -> None:  # noqa: D107
        self.optimizer = optimizer
        self.k, self.alpha = k, alpha
        self.param_groups = optimizer.param_groups
        self.defaults = optimizer.defaults
        self.state: dict = {}
        self.steps = 0

    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            with torch.no_grad():
                for group in self.param_groups:
                    for param in group["params"]:
                        slow = self.state.setdefault(param, {"slow": param.detach().clone()})["slow"]
                        slow.add_(param - slow, alpha=self.alpha)
                        param.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none)


def _lookahead(params):
    return Lookahead(torch.optim.SGD(params, lr=0.01, momentum=0.9))


def _fit(tmp_path, build, callbacks, **overrides):
    """Fit `TinyClassifier` with the optimizer `build` makes, initialised from seed 0 (so two runs start alike)."""
    L.seed_everything(0, verbose=False)
    model = WithOptimizer(build)
    trainer = L.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, **overrides))
    trainer.fit(model)
    return trainer


def test_copying_a_wrapper_for_its_schedule_leaves_its_class_and_state_alone():
    """Found trying the package as a new user: the schedule's copy wrapped the class's `step` with torch's hooks.

    The user's own instance (which has none) then failed at its next step, in every later fit of the process.
    """
    model = torch.nn.Linear(4, 2)
    optimizer = _lookahead(model.parameters())
    step = type(optimizer).step
    twin, _ = detached_copy(optimizer)
    assert type(optimizer).step is step
    assert twin.param_groups[0]["lr"] == 0.01
    assert twin.param_groups[0]["params"][0].numel() == 0  # no copy of the weights
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # still steps


def test_a_wrapper_s_inner_state_comes_back_and_the_run_is_the_run_given_the_pick(tmp_path):
    """The inner optimizer's momentum buffers and the wrapper's slow weights come back after the range test.

    Found trying the package as a new user: the inner SGD kept the range test's momentum, and the final weights
    differed from a run given the pick by up to 0.78.
    """
    auto = SuperConvergence(num_steps=20, trial_steps=50, guard=False)
    tested = _fit(tmp_path, _lookahead, [auto, WeightDecayBalancer()])
    given = _fit(tmp_path, _lookahead, [SuperConvergence(max_lr=auto.max_lr, guard=False), WeightDecayBalancer()])
    for a, b in zip(tested.lightning_module.parameters(), given.lightning_module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_redundancy_optimizer_is_range_tested_and_balanced_and_its_run_is_the_run_given_the_pick(tmp_path):
    """ZeRO holds its process group, which no ``deepcopy`` copies: the copy made to trace a schedule shares it.

    Found trying the package as a new user (DDP on two processes): the range test and the balancer failed at fit
    start ("cannot pickle 'ProcessGroup' object"). Here in a one-process gloo group, which ZeRO needs and serves.
    """
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    def zero(params):
        return ZeroRedundancyOptimizer(
            params, optimizer_class=torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=5e-4
        )

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        auto = SuperConvergence(num_steps=20, trial_steps=50, guard=False)
        tested = _fit(tmp_path, zero, [auto, WeightDecayBalancer(mode="budget")])
        given = SuperConvergence(max_lr=auto.max_lr, guard=False)
        again = _fit(tmp_path, zero, [given, WeightDecayBalancer(mode="budget")])
    finally:
        dist.destroy_process_group()
    assert auto.result is not None
    assert auto.result.trials  # the trials ran on it too
    for a, b in zip(tested.lightning_module.parameters(), again.lightning_module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class ReadsGradientsFirst(torch.optim.SGD):
    """Records at each step whether gradients are there before its closure runs (SAM perturbs weights along them)."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=0.01, momentum=0.9)
        self.had_gradients: list[bool] = []

    def step(self, closure=None):
        self.had_gradients.append(any(p.grad is not None for g in self.param_groups for p in g["params"]))
        with torch.enable_grad():
            closure()
        return super().step()


def test_an_optimizer_reading_the_gradients_before_its_closure_finds_them_in_the_range_test_as_in_training(tmp_path):
    """Lightning zeroes the gradients inside the closure: before it, the previous step's are there, in both.

    Found trying the package as a new user: the range test zeroed them before the step, so SAM found none in all its
    steps and was tried as plain SGD, while in training it found them at every step but the first.
    """
    seen: list[list[bool]] = []

    def build(params):
        optimizer = ReadsGradientsFirst(params)
        seen.append(optimizer.had_gradients)
        return optimizer

    callback = SuperConvergence(num_steps=20, trial_steps=0)
    trainer = _fit(tmp_path, build, [callback])
    (steps,) = seen
    swept = len(callback.result.lrs)
    assert len(steps) == swept + trainer.global_step
    # none before the sweep's first step and the run's first (the range test restores none), as Lightning's training
    assert [i for i, had in enumerate(steps) if not had] == [0, swept]


class IgnoresItsClosure(torch.optim.SGD):
    def step(self, closure=None):
        return super().step()


def test_an_optimizer_that_never_calls_its_closure_is_refused_saying_so(tmp_path):
    """Found trying the package as a new user: the range test blamed `training_step` for returning None."""
    with pytest.raises(RuntimeError, match=r"`IgnoresItsClosure.step\(closure\)` did not call the closure"):
        _fit(tmp_path, lambda p: IgnoresItsClosure(p, lr=0.01), [SuperConvergence(num_steps=20)])


class CallsItsClosureTwice(torch.optim.SGD):
    """SAM's shape: the closure at the weights, then again at weights moved along the gradient; records both losses."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=0.01, momentum=0.9)
        self.losses: list[tuple[float, float]] = []
        self.closure_values: list[float] = []

    def step(self, closure=None):
        with torch.enable_grad():
            first = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        with torch.no_grad():
            moves = [0.05 * p.grad.sign() for p in params]
            for param, move in zip(params, moves, strict=True):
                param.add_(move)
        with torch.enable_grad():
            second = closure()
        with torch.no_grad():
            for param, move in zip(params, moves, strict=True):
                param.sub_(move)
        self.losses.append((float(first), float(second)))
        return super().step()


def test_an_optimizer_calling_its_closure_twice_is_read_at_the_weights_it_steps_from(tmp_path):
    """The step's loss is the closure's first call's, and the batch counts once (found in a review).

    The range test's curve held the mean of both calls (the second at the perturbed weights), and `skipped_batches`
    went down by one per step (-17 after 17 steps).
    """
    seen: list[CallsItsClosureTwice] = []

    def build(params):
        seen.append(CallsItsClosureTwice(params))
        return seen[-1]

    callback = SuperConvergence(num_steps=20, trial_steps=0)
    _fit(tmp_path, build, [callback])
    result, (optimizer,) = callback.result, seen
    assert result.skipped_batches == 0
    swept = optimizer.losses[: len(result.losses)]
    assert all(first != second for first, second in swept)  # the premise: the two calls differ
    assert result.losses == pytest.approx([first for first, _ in swept], rel=1e-6)


class RecordsItsLosses(WithOptimizer):
    def __init__(self, build) -> None:
        super().__init__(build)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss))
        return loss


def test_the_closure_returns_the_loss_over_the_accumulation_as_lightning_s_does(tmp_path):
    """An optimizer that reads the closure's value (a line search) reads it as in training: over the accumulation."""
    returned: list[float] = []

    class ReadsItsClosure(torch.optim.SGD):
        def step(self, closure=None):
            with torch.enable_grad():
                returned.append(float(closure()))
            return super().step()

    L.seed_everything(0, verbose=False)
    model = RecordsItsLosses(lambda params: ReadsItsClosure(params, lr=0.01))
    callback = SuperConvergence(num_steps=20, trial_steps=0)
    trainer = L.Trainer(callbacks=[callback], **trainer_kwargs(tmp_path, accumulate_grad_batches=2, max_steps=2))
    trainer.fit(model)
    swept = len(callback.result.losses)
    # each step's closure runs its second micro-batch: its loss over 2, in the range test and in training alike
    expected = [loss / 2 for loss in model.losses[1::2]]
    assert len(returned) == swept + trainer.global_step
    assert returned == pytest.approx(expected, rel=1e-6)
