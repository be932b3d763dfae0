r"""What an optimizer's param groups hold that the callbacks read and write.

Configured LRs and their ratios, the momentum (SGD's ``momentum`` or the Adam family's ``beta1``), and whether the
optimizer sets its own step size.

Pure torch, no ``Trainer``. Every place that reads or writes a group's momentum goes through :func:`read_momentum` and
:func:`write_momentum`, so the ``momentum``/``betas`` distinction lives here alone.
"""

from __future__ import annotations

import collections
import copy
import functools
import types
from collections.abc import MutableMapping, Sequence
from typing import Any, Literal

import torch
from torch.optim import Optimizer

MomentumKey = Literal["momentum", "betas"]
StepSizeKind = Literal["multiplier", "schedule-free"]


def configured_lrs(optimizer: Optimizer) -> list[float]:
    r"""The LR each param group was configured with.

    A scheduler built in ``configure_optimizers`` may already have moved ``lr`` (a warm-up starts low); it keeps the
    configured value in ``initial_lr``, so that is preferred. Torch's ``OneCycleLR`` keeps its start there, its peak
    over ``div_factor``: for a group of one (it holds ``max_lr`` and ``min_lr`` beside it) the configured value is its
    peak, ``max_lr`` (found in a review: Prodigy at ``lr=1.0`` under the user's own ``OneCycleLR(max_lr=1.0)`` got a
    cycle peaking at 0.04, and the range test's trials from the optimizer's own LR started 25x below it).

    Example::

        >>> sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> _ = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=0.1, total_steps=10)
        >>> configured_lrs(sgd)
        [0.1]
    """
    return [
        float(group["max_lr"] if _in_a_one_cycle(group) else group.get("initial_lr", group["lr"]))
        for group in optimizer.param_groups
    ]


def _in_a_one_cycle(group: MutableMapping[str, Any]) -> bool:
    return all(key in group for key in ("initial_lr", "max_lr", "min_lr"))


def lr_scales(optimizer: Optimizer) -> list[float]:
    r"""Each param group's share of the LR under timm's layer decay (its ``lr_scale``; 1 where it has none).

    timm's optimizer factory (``create_optimizer_v2(..., layer_decay=...)``) gives every group the same ``lr``, timm's
    base LR, and each its layer's share in ``lr_scale``, which only timm's schedulers multiply in (found trying the
    package as a new user: the range test and the cycle ran every layer at the head's LR).

    Example::

        >>> p = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
        >>> lr_scales(torch.optim.SGD([{"params": p[:1], "lr_scale": 0.25}, {"params": p[1:]}], lr=0.1))
        [0.25, 1.0]
    """
    return [1.0 if group.get("lr_scale") is None else float(group["lr_scale"]) for group in optimizer.param_groups]


def configured_weight_decays(optimizer: Optimizer) -> list[float]:
    """The weight decay each param group holds now (0 where it has none)."""
    return [float(group.get("weight_decay", 0.0)) for group in optimizer.param_groups]


def group_ratios(optimizer: Optimizer) -> list[float]:
    r"""Each param group's LR relative to the first group's configured LR, so a sweep or cycle keeps the user's ratios.

    Each ratio carries the group's :func:`lr_scale <lr_scales>`, as timm's schedulers multiply it in: a ``max_lr`` is
    then timm's base LR, what a timm recipe's LR means, and the first group's own ratio is its share (the lowest
    layers' under layer decay, a fraction of the head's).

    Raises:
        ValueError: if the first group's LR is not positive: there is nothing to take a ratio against.
    """
    lrs = configured_lrs(optimizer)
    if lrs[0] <= 0:
        raise ValueError(
            f"the first param group's learning rate must be > 0 to keep the ratios between groups, got {lrs[0]}"
        )
    return [lr * scale / lrs[0] for lr, scale in zip(lrs, lr_scales(optimizer), strict=True)]


def momentum_key(optimizer: Optimizer) -> MomentumKey | None:
    """Which param-group key holds the momentum OneCycleLR would cycle (the same test torch uses), or None."""
    if "momentum" in optimizer.defaults:
        return "momentum"
    if "betas" in optimizer.defaults:
        return "betas"
    return None


def read_momentum(group: MutableMapping[str, Any]) -> float | None:
    r"""The group's momentum: ``momentum`` (SGD, RMSprop), else the Adam family's ``beta1``, else None.

    Example::

        >>> read_momentum({"betas": (0.9, 0.999)}), read_momentum({"momentum": 0.8}), read_momentum({"lr": 0.1})
        (0.9, 0.8, None)
    """
    if "momentum" in group:
        return float(group["momentum"])
    if "betas" in group:
        return float(group["betas"][0])
    return None


def write_lr(group: MutableMapping[str, Any], value: float) -> None:
    r"""Set the group's LR; an LR held in a Tensor is filled in place, as torch's schedulers fill it.

    A Tensor LR keeps a compiled ``optimizer.step`` from recompiling at each new LR (torch's tutorial on compiling the
    optimizer with an LR scheduler): a float written in its place would undo that for the rest of the run (found trying
    the package as a new user: a guard rescue turned it into a float).
    """
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        lr.fill_(value)
    else:
        group["lr"] = value


def write_momentum(group: MutableMapping[str, Any], value: float) -> None:
    """Set the group's momentum (or ``beta1``, keeping the other betas); a group with neither is left alone.

    A momentum held in a Tensor is filled in place, as :func:`write_lr` fills an LR: a compiled ``optimizer.step``
    guards on a float's value and recompiles at each new one (found trying the package as a new user: with the cycle's
    momentum written as floats, torch's compiled step recompiled at every step until its limit, then ran uncompiled).
    """
    held = momentum_tensor(group)
    if held is not None:
        held.fill_(value)
    else:
        _put_momentum(group, value)


def _put_momentum(group: MutableMapping[str, Any], value: float | torch.Tensor) -> None:
    """Put ``value`` where the group holds its momentum (or ``beta1``, keeping the other betas), if it holds one."""
    if "momentum" in group:
        group["momentum"] = value
    elif "betas" in group:
        group["betas"] = (value, *tuple(group["betas"])[1:])


def copy_momentum(group: MutableMapping[str, Any], leader: MutableMapping[str, Any]) -> None:
    """Give ``group`` the momentum (or ``beta1``) of ``leader``: Tensor to Tensor without reading it (a device sync).

    Found in a review: a momentum held in a Tensor was read at every step where an added group followed it.
    """
    source, target = momentum_tensor(leader), momentum_tensor(group)
    if source is not None and target is not None:
        if target is not source:
            target.copy_(source)
        return
    value = read_momentum(leader)
    if value is not None:
        write_momentum(group, value)


def momentum_tensor(group: MutableMapping[str, Any]) -> torch.Tensor | None:
    """The group's momentum (or ``beta1``) where it is held in a Tensor; None otherwise."""
    value = group.get("momentum", tuple(group.get("betas", (None,)))[0])
    return value if isinstance(value, torch.Tensor) else None


def keep_momentum_tensors(groups: Sequence[MutableMapping[str, Any]], held: Sequence[torch.Tensor | None]) -> None:
    """Put each group's momentum Tensor of ``held`` back where a scheduler wrote a float, filled with that float.

    torch's ``OneCycleLR`` writes the cycled momentum (or ``beta1``) as a float; ``held`` is
    ``[momentum_tensor(g) for g in groups]`` read before it did.
    """
    for group, tensor in zip(groups, held, strict=True):
        if tensor is None or momentum_tensor(group) is tensor:  # untouched: no read (a Tensor's is a device sync)
            continue
        value = read_momentum(group)
        if value is None:
            continue
        tensor.fill_(value)
        _put_momentum(group, tensor)


def step_size_kind(optimizer: Optimizer) -> StepSizeKind | None:
    r"""Whether the optimizer sets its own step size, and how; None for an ordinary optimizer.

    - ``"multiplier"``: Prodigy (``prodigyopt``) and D-Adaptation (``dadaptation``) estimate the step size
      themselves and treat ``lr`` as a multiplier of their estimate (default 1.0); AdamG (``pytorch_optimizer``; Pan
      et al., arXiv 2405.04376) estimates its own and caps its step by ``lr`` (``min(lr, 1/sqrt(step))``, default
      1.0). A range test sweeping that multiplier or cap measures nothing about the model; a schedule over it (warm-up,
      annealing) is what their authors recommend.
    - ``"schedule-free"``: Schedule-Free optimizers (``schedulefree``; Defazio et al., arXiv 2405.15682) replace the
      LR schedule by iterate averaging and need ``optimizer.train()``/``.eval()`` switches.

    Recognised by the class (its name or its package), so a subclass or another package's implementation of the
    same method (e.g. ``pytorch_optimizer``'s ``Prodigy``, ``DAdaptAdam``, ``ScheduleFreeAdamW``) is recognised too.
    """
    for cls in type(optimizer).__mro__:
        name, package = cls.__name__, cls.__module__.split(".")[0]
        if "schedulefree" in name.lower() or package == "schedulefree":
            return "schedule-free"
        if name in ("Prodigy", "AdamG") or name.startswith("DAdapt") or package in ("prodigyopt", "dadaptation"):
            return "multiplier"
    return None


def detached_copy(optimizer: Optimizer, schedulers: Sequence[Any] = ()) -> tuple[Optimizer, list[Any]]:
    r"""Deep copies of the optimizer and the schedulers that drive it, without its parameters or state.

    The parameters are swapped for empty tensors and the state (and that of an optimizer it wraps) for an empty dict in
    the copy's memo, so replaying a billion-parameter model's schedule costs no memory; only the param-group
    hyperparameters are copied. Stepping the copied schedulers moves the copy's param groups, never the real ones.

    The copy is built from the optimizer's attributes, not by ``copy.deepcopy`` of the optimizer itself: that calls
    torch's ``Optimizer.__setstate__``, which wraps the ``step`` of the optimizer's *class* with its hooks, and a
    wrapper that never ran ``Optimizer.__init__`` (``torch_optimizer.Lookahead``) then failed at its next step, in the
    range test and in every later fit of the process; another (``pytorch_optimizer.Lookahead``) could not be copied
    at all (found trying the package as a new user). A process group the optimizer holds is shared with the copy, as a
    handle no ``deepcopy`` can copy: torch's ``ZeroRedundancyOptimizer`` holds one (found trying the package as a new
    user: the range test and the balancer failed at fit start under DDP). A module a scheduler reaches (the owner of
    a bound method, ``LambdaLR(optimizer, self.lr_at)`` in a LightningModule, also through ``functools.partial``, a
    callable object or a scheduler's own attribute; a LightningDataModule; any other owner of a bound method) is
    copied shallow: the copy shares its weights and its ``trainer``, while attributes its methods set anew are its own
    (an object they change in place, a list they append to, stays shared). ``deepcopy`` copied the whole module,
    weights and frozen layers, without its ``trainer`` (found in a review: an ``lr_at`` reading ``self.trainer``
    failed the fit beside the balancer); sharing the module itself let the replay move a rule that counts its own
    calls (found in the review of that fix).
    """
    memo: dict[int, Any] = {id(held): _shallow_twin(held) for held in _held_objects(schedulers)}
    for owner in (optimizer, *inner_optimizers(optimizer)):
        memo[id(owner.state)] = {}
        memo.update({id(value): value for value in vars(owner).values() if _is_process_group(value)})
        for group in owner.param_groups:
            for param in group["params"]:
                memo[id(param)] = torch.empty(0)
    twin = object.__new__(type(optimizer))
    memo[id(optimizer)] = twin
    for name, value in vars(optimizer).items():
        # hooks are left behind (a bound method's copy would copy the object it is bound to); nothing steps the copy
        twin.__dict__[name] = type(value)() if name.endswith("_hooks") else copy.deepcopy(value, memo)
    copies = [copy.deepcopy(s, memo) for s in schedulers]
    return twin, copies


#: How deep :func:`_held_objects` looks from a scheduler: a ``SequentialLR``'s scheduler's rule's module is 5 deep.
_DEEPEST = 6

_ATOMS = (torch.Tensor, Optimizer, str, bytes, int, float, complex, bool, type(None), type, types.ModuleType)


def _held_objects(schedulers: Sequence[Any]) -> list[Any]:
    """What ``schedulers`` reach that a deep copy must not copy: modules, datamodules and bound methods' owners.

    Searched breadth first through the schedulers' attributes (and the schedulers they hold: ``SequentialLR``'s, at
    depth 0 again), lists, tuples and dicts, ``functools.partial`` objects and the attributes of callable objects, at
    most :data:`_DEEPEST` deep; not into modules, tensors or optimizers. By depth, not by count: a scheduler's table
    of 20,000 entries cut a search by count short of the module's method (found in a review).
    """
    held: list[Any] = []
    seen: set[int] = set()
    pending: collections.deque[tuple[Any, int]] = collections.deque((s, 0) for s in schedulers)
    while pending:
        value, depth = pending.popleft()
        if id(value) in seen or isinstance(value, _ATOMS) or depth > _DEEPEST:
            continue
        seen.add(id(value))
        if _is_scheduler(value):
            pending.extend((item, 1) for item in vars(value).values())
        elif isinstance(value, types.MethodType):
            pending.append((value.__self__, depth + 1))
            if not _is_scheduler(value.__self__) and not isinstance(value.__self__, Optimizer):
                held.append(value.__self__)
        elif isinstance(value, torch.nn.Module) or _is_datamodule(value):
            held.append(value)
        elif isinstance(value, list | tuple | set | frozenset):
            pending.extend((item, depth + 1) for item in value if not isinstance(item, _ATOMS))
        elif isinstance(value, dict):
            pending.extend((item, depth + 1) for item in value.values() if not isinstance(item, _ATOMS))
        elif isinstance(value, functools.partial):
            pending.extend((item, depth + 1) for item in (value.func, *value.args, *value.keywords.values()))
        elif hasattr(value, "__dict__") and not isinstance(value, types.FunctionType):
            pending.extend((item, depth + 1) for item in vars(value).values())
    return list({id(obj): obj for obj in held}.values())


def _is_datamodule(value: Any) -> bool:
    return any(cls.__name__ == "LightningDataModule" for cls in type(value).__mro__)


def _shallow_twin(value: Any) -> Any:
    """An object of ``value``'s class sharing its attributes; ``value`` itself where its class cannot be made so.

    A class with ``__slots__`` (whose values a ``__dict__`` lacks) or a ``__new__`` of its own is shared (found in a
    review: a rule bound to a ``__slots__`` object failed the fit).
    """
    if any("__slots__" in vars(cls) for cls in type(value).__mro__) or not hasattr(value, "__dict__"):
        return value
    try:
        twin = object.__new__(type(value))
    except TypeError:
        return value
    twin.__dict__.update(vars(value))
    return twin


def _is_scheduler(value: Any) -> bool:
    return isinstance(value, torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau)


def _is_process_group(value: Any) -> bool:
    return torch.distributed.is_available() and isinstance(value, torch.distributed.ProcessGroup)


def inner_optimizers(optimizer: Any) -> list[Optimizer]:
    r"""The optimizers a wrapper holds as attributes (Lookahead's ``optimizer``, SAM's ``base_optimizer``), each once.

    Their ``state`` is their own (Lookahead's inner SGD keeps the momentum buffers there), so what is copied and put
    back of the optimizer is copied and put back of them too.
    """
    found: list[Optimizer] = []
    for value in vars(optimizer).values():
        if isinstance(value, Optimizer) and value is not optimizer and all(value is not f for f in found):
            found.append(value)
    return found
