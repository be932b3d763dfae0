r"""Everything a branch of training changes, copied in memory and written back bit for bit.

One mechanism for every place that trains off the record: the range test, the weight-decay grid's branches, and the
divergence guard's rollback. Pure torch, no ``Trainer``: :mod:`lightning_superconv.sandbox` adds what a ``Trainer``
needs around it (RNG isolation, quiet callbacks and logging).

What is copied, and why each part:

- parameters and buffers (non-persistent buffers too, which a ``state_dict`` omits), written back *in place*, so the
  optimizer's references to the parameters stay valid; a module that replaced one (``self.count = self.count + 1``
  on a buffer assigns a new tensor) gets the original back in its place first, and one resized in place since (torch's
  quantization observers resize theirs at their first forward) gets its shape back;
- gradients and each submodule's train/eval flag;
- torchmetrics states (they are plain attributes, not buffers): the states a metric registered with ``add_state`` and
  its bookkeeping (update count, cached result), read from the instance itself so that read-only properties (such as
  ``_update_called`` in torchmetrics >= 1.6) are never written; also of metrics a module holds in plain dicts, lists
  or tuples (up to three levels deep, e.g. a list in a dict), which are not submodules;
- tensors a module keeps outside its parameters and buffers (a recurrent model's ``self.hidden`` carried from batch to
  batch, a lazily built mask, a dict of running statistics): an attribute that held None or tensors before is put
  back, a dict or list of them refilled in place (anything else a module holds, such as a list a user appends
  diagnostics to, is the user's and left alone);
- the top module's own attributes, rebound to what they were and removed where they are new (a counter its
  ``training_step`` counts up, a flag it sets), the numbers and strings its submodules hold (a layer's own update
  count, NumPy's numbers, tuples of them), and the attributes a submodule created since removed (a hidden state set
  at its first forward); an object changed in place (that list of diagnostics) is left alone, and so is a name that
  now holds a parameter, buffer or submodule;
- parameters, buffers and submodules registered since, removed (statistics a layer registers from its first batch),
  and what a module declares with ``get_extra_state``, given back to its ``set_extra_state``;
- modules held outside the module tree (in plain containers, or set with ``object.__setattr__``: a momentum encoder
  kept out of the checkpoint), covered as the model is;
- the numbers a sampler or batch sampler holds (one that counts its own passes in ``__iter__``);
- optimizer state per parameter, and the param-group dicts refilled in place (a scheduler holds the optimizer, and
  some code holds its groups);
- the gradient scaler's state and the state of the random generators the dataloaders, their samplers and datasets,
  the module and the datamodule hold (a ``torch.Generator``, NumPy's, a ``random.Random``).
"""

from __future__ import annotations

import copy
import functools
import io
import operator
import random
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Number
from typing import Any, TypeAlias

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from torch.utils.hooks import RemovableHandle

from lightning_superconv import _compat
from lightning_superconv.param_groups import inner_optimizers

# torchmetrics' bookkeeping beside the states registered with `add_state`: copied where the metric holds them as plain
# attributes (older releases keep `_update_called` as one; newer compute it from `_update_count`)
_METRIC_BOOKKEEPING = ("_update_count", "_update_called", "_computed", "_forward_cache", "_is_synced", "_cache")


#: a parameter or buffer where its module registered it: (the module's `_parameters` or `_buffers`, name, tensor)
Slot: TypeAlias = tuple[dict[str, Any], str, Any]

# what every `nn.Module` keeps in its `__dict__` (its parameter and buffer dicts, hooks): never a loose tensor
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))

# the dicts of hooks every `nn.Module` keeps (`_forward_hooks`, `_backward_pre_hooks`, `_state_dict_hooks`, ...), keyed
# by the id of the handle that removes them
_HOOK_REGISTRIES = tuple(
    name for name, value in vars(torch.nn.Module()).items() if "hooks" in name and isinstance(value, dict)
)


# a tensor's hook registries (`Tensor.register_hook`, `register_post_accumulate_grad_hook`): None until one is added
_TENSOR_HOOK_REGISTRIES = ("_backward_hooks", "_post_accumulate_grad_hooks")

# how deep a module's attributes are searched for the handles of the hooks it registered (lists and dicts count no
# level): in an attribute, in a list there, or in an object it holds
_HANDLE_DEPTH = 2

# a LightningModule's attributes that lead to the Trainer or Fabric: no hook handle of the module's own is there
_NO_HANDLES_IN = frozenset({"_trainer", "_fabric", "_hparams", "_hparams_initial"})


def _hook_registries(module: torch.nn.Module) -> list[tuple[str, dict[Any, Any]]]:
    own = vars(module)
    return [(name, registry) for name in _HOOK_REGISTRIES if isinstance(registry := own.get(name), dict)]


def _hook_handles(modules: Sequence[torch.nn.Module]) -> set[int]:
    """The ids of the hook handles (``RemovableHandle``) the modules' own attributes hold, a few levels deep."""
    roots = [
        value for m in modules for name, value in vars(m).items() if name not in _MODULE_INTERNALS | _NO_HANDLES_IN
    ]
    return {handle.id for handle in _found_within(roots, lambda o: isinstance(o, RemovableHandle), _HANDLE_DEPTH)}


# where a LightningModule keeps its hyperparameters: `save_hyperparameters` keeps a deep copy of a module passed to
# `__init__` in `_hparams_initial`, a dead copy that no branch trains (found reviewing the package: the guard copied it
# at every refresh)
_HPARAMS = "_hparams"

# how deep plain containers are searched for metrics: a dict of lists of metrics is two levels; a third spares a user
# one more wrapper, and a limit keeps a module that holds its data as nested lists from being walked item by item
_CONTAINER_DEPTH = 3


def _is_metric(module: torch.nn.Module) -> bool:
    own = vars(module)
    return isinstance(own.get("_defaults"), dict) and "_update_count" in own


def _metric_state(module: torch.nn.Module) -> dict[str, Any]:
    """The accumulated state of a torchmetrics ``Metric``: its registered states and bookkeeping, as attributes."""
    own = vars(module)
    defaults: dict[str, Any] = own["_defaults"]
    names = [*defaults, *_METRIC_BOOKKEEPING]
    # detached: a metric used as the loss holds the step's graph in `_forward_cache` (found in a review: a deep copy
    # of it raised "Only Tensors created explicitly by the user (graph leaves) support the deepcopy protocol")
    return {name: _copy_state(own[name]) for name in names if name in own}


def metric_states(module: torch.nn.Module) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """Each torchmetrics metric ``module`` holds (in plain containers too), with a copy of its state and defaults.

    A ``*-true`` precision converts a metric's states and defaults with the module (``module.to(dtype=...)``);
    :func:`put_back_metric_states` sets the copies back.
    """
    return [
        (m, {**_metric_state(m), "_defaults": _copy_state(vars(m)["_defaults"])})
        for m in every_module(module)
        if _is_metric(m)
    ]


def put_back_metric_states(states: Sequence[tuple[torch.nn.Module, dict[str, Any]]]) -> None:
    """Set each metric's state and defaults as :func:`metric_states` copied them."""
    for metric, state in states:
        vars(metric).update(state)


def is_tensor_tree(value: Any) -> bool:
    """Whether ``value`` is a tensor, or a non-empty tuple/list/dict of them (a hidden state, a cached mask)."""
    if isinstance(value, Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return len(value) > 0 and all(is_tensor_tree(v) for v in value)
    if isinstance(value, dict):
        return len(value) > 0 and all(is_tensor_tree(v) for v in value.values())
    return False


def _clone_tree(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_clone_tree(v) for v in value)
    if isinstance(value, list):
        return [_clone_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _clone_tree(v) for k, v in value.items()}
    return value


def _layout(value: Any) -> Any:
    """The objects of a tensor tree as they are now: each tensor, and each list, tuple or dict with its items' layouts.

    The identities a restore puts back: a list of tensors may alias parameters (``nn.LSTM._flat_weights``), and a
    restore must write values into those very tensors, never swap copies in.
    """
    if isinstance(value, (list, tuple)):
        return value, [_layout(item) for item in value]
    if isinstance(value, dict):
        return value, {key: _layout(item) for key, item in value.items()}
    return value


def _write_into(tensor: Tensor, saved: Tensor) -> None:
    r"""Copy ``saved`` into ``tensor`` in place, giving it back its shape first where it was resized since.

    torch's quantization observers and ``FakeQuantize`` resize their buffers (``min_val``, ``scale``) in place at
    their first forward: a plain ``copy_`` failed on them at fit start and left the rest unrestored, or spread a
    one-element copy over the new shape (found trying quantization-aware training as a new user). Torch resizes no
    tensor that requires grad: such a one gets new memory of the old shape, the same parameter object. An inference
    tensor (a buffer a module rebinds, last set under ``trainer.validate``) is written under inference mode, the only
    mode that writes it (found in a review: the restore raised "Inplace update to inference tensor outside
    InferenceMode").
    """
    if tensor.is_inference() and not torch.is_inference_mode_enabled():
        with torch.inference_mode():
            _write_into(tensor, saved)
        return
    if (
        tensor.dtype != saved.dtype
        or tensor.device != saved.device
        or (tensor.shape != saved.shape and tensor.requires_grad)
    ):
        tensor.data = torch.empty_like(
            saved
        )  # `.data` given another dtype or device, or a parameter: its own kind back
    elif tensor.shape != saved.shape:
        tensor.resize_(saved.shape)
    tensor.copy_(saved)


def _write_back(layout: Any, kept: Any) -> Any:
    r"""Put a tensor tree back as :func:`_layout` saw it, with the values of ``kept`` (its copy): return its top object.

    The tensors get their values back in place; a list or dict gets its items back (found trying the package as a new
    user: a running statistic kept as ``self.stats["mean"] = 0.9 * self.stats["mean"] + ...`` in a submodule kept the
    range test's value); a tuple's items are written back one by one.
    """
    if isinstance(layout, Tensor):
        if not torch.equal(layout, kept):
            with torch.no_grad():
                _write_into(layout, kept)
        return layout
    container, items = layout
    if isinstance(container, list):
        container[:] = [_write_back(item, value) for item, value in zip(items, kept, strict=True)]
    elif isinstance(container, dict):
        restored = {key: _write_back(item, kept[key]) for key, item in items.items()}
        container.clear()
        container.update(restored)
    else:  # a tuple: its items are the same objects
        for item, value in zip(items, kept, strict=True):
            _write_back(item, value)
    return container


def _loose_tensors(module: torch.nn.Module) -> dict[str, tuple[Any, Any, Any]]:
    r"""Attributes of ``module`` that are None or tensors but neither parameters nor buffers (those are elsewhere).

    Each maps to ``(the object itself, its layout, a copy)``: an attribute still holding the same object is restored
    in place (:func:`_write_back`).
    """
    return {
        name: (value, _layout(value), _clone_tree(value))
        for name, value in vars(module).items()
        if name not in _MODULE_INTERNALS and (value is None or is_tensor_tree(value))
    }


#: what :func:`data_order_sequences` keeps of one attribute: its holder, its name, the object it held, and a copy
KeptSequence: TypeAlias = tuple[Any, str, Any, Any]


@dataclass
class Snapshot:
    r"""A copy of what training changes, written back by :meth:`restore` as often as needed (branches reuse one).

    Created by :func:`capture`.
    """

    tensors: list[tuple[Tensor, Tensor]]
    #: each parameter and buffer as registered (:func:`registered_tensors`)
    slots: list[Slot]
    optimizer: Optimizer
    optimizer_state: dict[Tensor, Any]
    param_groups: list[dict[str, Any]]
    grads: list[tuple[torch.nn.Parameter, Tensor | None]] = field(default_factory=list)
    #: each parameter's ``requires_grad``: a ``training_step`` that freezes a layer after some calls (found in a
    #: review: its counter came back, the layer stayed frozen, and the run trained without it)
    requires_grad: list[tuple[torch.nn.Parameter, bool]] = field(default_factory=list)
    training_flags: list[tuple[torch.nn.Module, bool]] = field(default_factory=list)
    metric_states: list[tuple[torch.nn.Module, dict[str, Any]]] = field(default_factory=list)
    loose_tensors: list[tuple[torch.nn.Module, dict[str, tuple[Any, Any, Any]]]] = field(default_factory=list)
    #: each module (and the datamodule: :func:`~lightning_superconv.sandbox.sandbox`) with its own attributes
    #: (:func:`_own_attributes`): each name is rebound to the object it held, one set since is removed
    attributes: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    #: the numbers and strings each sampler and dataset holds as attributes (:func:`data_order_numbers`)
    scalars: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    #: each module's parameter, buffer and submodule registries as they were: one registered since is removed, a
    #: submodule replaced under its name is put back
    registries: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    #: each module's hook registries (forward, backward, state-dict hooks) and each parameter's, as they were: (the
    #: module or parameter, the registry's attribute name, its entries)
    hooks: list[tuple[Any, str, dict[Any, Any]]] = field(default_factory=list)
    #: the modules whose attributes hold the handles of the hooks they register (:meth:`_restore_hooks`)
    hook_holders: list[torch.nn.Module] = field(default_factory=list)
    #: what ``get_extra_state`` returned, for the modules that declare one, given back to ``set_extra_state``
    extra_states: list[tuple[torch.nn.Module, Any]] = field(default_factory=list)
    #: the parameters each param group held (an exact restore gives each group its own back)
    group_params: list[list[Any]] = field(default_factory=list)
    #: the modules whose extra state could not be copied (``get_extra_state`` raised, or its value cannot be copied),
    #: each as "name (why)": their extra state is not put back
    uncaptured: list[str] = field(default_factory=list)
    #: the module's own state only (:func:`capture`'s ``module_only``): no weights, optimizer or scaler to write back
    module_only: bool = False
    #: each optimizer the optimizer wraps (:func:`~lightning_superconv.param_groups.inner_optimizers`) with copies of
    #: its own state and param-group values (Lookahead's inner SGD keeps its momentum buffers in its own ``state``)
    inner: list[tuple[Optimizer, dict[Any, Any], list[dict[str, Any]]]] = field(default_factory=list)
    #: the numbers and strings the optimizer and those it wraps hold as attributes (a wrapper's own step count)
    optimizer_scalars: list[tuple[Optimizer, dict[str, Any]]] = field(default_factory=list)
    scaler: Any = None
    scaler_state: dict[str, Any] | None = None
    #: FSDP2's modules (:func:`~lightning_superconv._compat.fully_sharded_modules`), put at rest before a restore
    sharded: list[Any] = field(default_factory=list)
    generator_states: list[tuple[Any, Any]] = field(default_factory=list)
    #: the lists, arrays and tensors the samplers hold, with copies (:func:`data_order_sequences`)
    sequences: list[KeptSequence] = field(default_factory=list)
    #: it copied nothing (:func:`nothing`): there is nothing to write back
    empty: bool = False
    #: a parameter or buffer removed from the module since comes back (a sandbox's exact restore); else the module's
    #: new shape is kept (:func:`put_back`'s ``removed_too``)
    exact: bool = True

    def restore(self, keep_in_groups: frozenset[str] = frozenset()) -> None:
        """Write everything back, bit for bit; the snapshot stays valid for further restores.

        ``keep_in_groups``: the optimizer's param-group entries that keep their values (a rollback keeps the cycle's).
        """
        if self.empty:
            raise RuntimeError("this snapshot copied nothing (`snapshot.nothing`): there is nothing to restore")
        handles = _hook_handles(self.hook_holders) if self.hooks else set()
        _compat.reshard(self.sharded)
        replaced = {} if self.exact or self.module_only else _replaced_parameters(self.slots, self.optimizer)
        put_back([slot for slot in self.slots if id(slot[2]) not in replaced], removed_too=self.exact)
        for registry, kept in self.registries:
            for name in [name for name in registry if name not in kept]:
                del registry[name]
            for name, value in kept.items():
                if not isinstance(value, Tensor) and (name not in registry or registry[name] is not value):
                    # found in a review: a head replaced under its name during the range test stayed, untrained,
                    # while the optimizer got the old head's parameters back; one deleted stayed deleted (tensors:
                    # put back by their slots)
                    registry[name] = value
        with torch.no_grad():
            for tensor, saved in self.tensors:
                _write_into(replaced.get(id(tensor), tensor), saved)
        for param, flag in self.requires_grad:
            if param.requires_grad != flag:
                param.requires_grad_(flag)
        for param, grad in self.grads:
            param.grad = None if grad is None else grad.clone()
        # before the loose tensors: the object an attribute held comes back first, then its values
        for owner, attributes in self.attributes:
            self._restore_attributes(owner, attributes)
        for module, scalars in self.scalars:
            vars(module).update(scalars)
        for module, flag in self.training_flags:
            module.training = flag
        for module, metric_state in self.metric_states:
            for name, value in metric_state.items():
                setattr(module, name, copy.deepcopy(value))
        for owner, kept in self.loose_tensors:
            self._restore_loose(owner, kept)
        if self.hooks:
            self._restore_hooks(handles)
        if not self.module_only:
            self._restore_optimizer(replaced, keep_in_groups)
        for generator, generator_state in self.generator_states:
            set_rng_state(generator, generator_state)
        put_back_sequences(self.sequences)
        # last, and each on its own: a `set_extra_state` that raises (the module's own code) leaves everything else
        # restored, and says so (found trying the package as a new user: one that raised left the optimizer, the LR and
        # the generators as the range test had made them, under a note that said all was restored)
        failure: BaseException | None = None
        for owner, extra in self.extra_states:
            try:
                owner.set_extra_state(_copy_state(extra))
            except BaseException as err:  # Ctrl-C too: the other modules' states still come back
                if failure is None:
                    failure = err
                    if hasattr(err, "add_note"):  # Python >= 3.11
                        err.add_note(
                            f"Raised by `{type(owner).__name__}.set_extra_state` while a snapshot was put back "
                            "(lightning_superconv): everything else was restored, this module's extra state may not be."
                        )
        if failure is not None:
            raise failure

    def _restore_hooks(self, handles_before: set[int]) -> None:
        r"""Remove the hooks whose handles the restore took from the modules' attributes; add back those it gave back.

        A module that registers a hook once, keeping its handle (``if self.handle is None: self.handle =
        layer.register_forward_hook(...)``), had the attribute put back and the hook left on the layer: each trial
        and the run added one more (found in a review). Only such hooks move: one whose handle a list changed in place
        still holds (the user's to keep, as the list), or that nothing of the module's holds (FSDP2 registers its
        state-dict hooks at the first forward and keeps their handles in its own state) stays registered.
        """
        handles_after = _hook_handles(self.hook_holders)
        dropped, regained = handles_before - handles_after, handles_after - handles_before
        if not dropped and not regained:
            return
        for owner, name, kept in self.hooks:
            registry = getattr(owner, name, None)
            if not isinstance(registry, dict):
                continue
            for key in [key for key in registry if key in dropped and key not in kept]:
                del registry[key]
            for key in [key for key in kept if key in regained and key not in registry]:
                registry[key] = kept[key]

    def _restore_optimizer(self, replaced: dict[int, torch.nn.Parameter], keep_in_groups: frozenset[str]) -> None:
        """The optimizer's param groups and state, and the gradient scaler's state."""
        optimizer = self.optimizer
        if self.exact and self.group_params:
            # a param group added since is dropped, and each group trains the parameters it did (a parameter replaced
            # in the module and in its group since is back in both)
            del optimizer.param_groups[len(self.group_params) :]
            for group, params in zip(optimizer.param_groups, self.group_params, strict=True):
                group["params"] = list(params)
        # state only for the parameters the optimizer trains now: one a rollback's module no longer matches (a
        # replaced parameter of another shape) has no group, and its state would break `optimizer.state_dict()`
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        optimizer.state.clear()
        for owner_param, kept in self.optimizer_state.items():
            target = replaced.get(id(owner_param), owner_param)
            if id(target) in trained:
                optimizer.state[target] = copy.deepcopy(kept)
        _refill_groups(optimizer.param_groups, self.param_groups, keep_in_groups)
        for opt, scalars in self.optimizer_scalars:
            vars(opt).update(scalars)
        # found trying the package as a new user: Lookahead's inner SGD kept the range test's momentum buffers
        for inner, inner_state, inner_groups in self.inner:
            if inner.state is not optimizer.state:
                inner.state.clear()
                inner.state.update({param: copy.deepcopy(kept) for param, kept in inner_state.items()})
            if inner.param_groups is not optimizer.param_groups:
                _refill_groups(inner.param_groups, inner_groups)
        if self.scaler is not None and self.scaler_state is not None:
            self.scaler.load_state_dict(copy.deepcopy(self.scaler_state))

    @staticmethod
    def _restore_attributes(owner: Any, saved: dict[str, Any]) -> None:
        own = vars(owner)
        for name in [name for name in own if name not in saved and name not in _MODULE_INTERNALS]:
            del own[name]
        registered = _registered(owner) if isinstance(owner, torch.nn.Module) else set()
        for name, value in saved.items():
            # a name that became a parameter, buffer or submodule lives in its registry now: an attribute of the same
            # name would hide it
            if own.get(name, saved) is not value and name not in registered:  # `saved` stands for "gone"
                own[name] = value

    @staticmethod
    def _restore_loose(module: torch.nn.Module, saved: dict[str, tuple[Any, Any, Any]]) -> None:
        own = vars(module)
        registered = _registered(module)
        for name, (original, layout, kept) in saved.items():
            current = own.get(name, saved)  # `saved` stands for "gone"
            if current is original:
                if original is not None:
                    _write_back(layout, kept)
                continue
            if name not in registered:
                object.__setattr__(module, name, _clone_tree(kept))

    def nbytes(self) -> int:
        """Memory the copies hold: weights, buffers and optimizer state (the rest is small)."""
        total = sum(saved.numel() * saved.element_size() for _, saved in self.tensors)
        for state in self.optimizer_state.values():
            values = state.values() if isinstance(state, dict) else [state]
            total += sum(v.numel() * v.element_size() for v in values if isinstance(v, Tensor))
        return total


def capture(
    module: torch.nn.Module,
    optimizer: Optimizer,
    scaler: Any = None,
    generators: Sequence[Any] = (),
    everything: bool = True,
    also: Sequence[torch.nn.Module] = (),
    module_only: bool = False,
) -> Snapshot:
    r"""Copy what a branch of training will change.

    Args:
        module: the model; all its submodules are covered.
        optimizer: its optimizer.
        scaler: a ``torch.amp.GradScaler`` whose state is copied too, or None.
        generators: random generators (:func:`dataloader_generators`) whose state is copied.
        everything: also gradients, train/eval flags, torchmetrics states and tensors kept outside parameters and
            buffers. A rollback in the middle of training (the divergence guard) needs only the weights, buffers,
            optimizer and scaler: ``False``.
        also: other modules whose parameters and buffers are copied too: the weight average a ``WeightAveraging``
            callback keeps beside the model, which the training steps being rolled back also changed.
        module_only: only what a forward pass without gradients may change beside the weights the optimizer trains
            (the buffers and the other parameters, the module's attributes and numbers, those of its submodules,
            metric states, loose tensors, extra state, registries, and ``generators``): nothing of the trained
            parameters, the optimizer or the scaler is copied or written back. For a look at a batch in
            the middle of a branch, which must leave the branch to train on as it would have.
    """
    # modules held outside the module tree (in a list, a dict, or set with `object.__setattr__`: a momentum encoder
    # or a teacher kept out of the checkpoint) are trained by a branch as much as the model: an exact restore covers
    # them too (found trying the package as a new user: a MoCo key encoder kept in a list kept the range test's
    # weights and BatchNorm statistics, and each trial started from the one before it)
    everything = everything or module_only
    hidden = hidden_modules(module, also) if everything else []
    roots = (*also, *hidden)
    weights = not module_only
    sharded = _compat.fully_sharded_modules(module, *roots)
    _compat.reshard(sharded)
    wrapped = inner_optimizers(optimizer) if weights else []
    # a look at a batch changes no weight the optimizer trains, but may change buffers (an observer's, a running input
    # scale, set in eval mode too) and weights no optimizer trains (a mean teacher `training_step` moves towards the
    # student): those come back (found in reviews: the first trial trained on from what the look left)
    # (a frozen teacher handed to the optimizer with the rest, `requires_grad=False`, is not trained by it either)
    groups = () if weights else optimizer.param_groups
    trained = {id(p) for group in groups for p in group["params"] if getattr(p, "requires_grad", True)}
    live = _weights(module, roots, optimizer if weights else None)
    tensors = [(t, t.detach().clone()) for t in live if id(t) not in trained]
    slots = registered_tensors(module, roots)
    snapshot = Snapshot(
        tensors=tensors,
        slots=[slot for slot in slots if id(slot[2]) not in trained],
        optimizer=optimizer,
        optimizer_state={p: copy.deepcopy(s) for p, s in optimizer.state.items()} if weights else {},
        param_groups=_group_values(optimizer) if weights else [],
        inner=[
            (inner, {p: copy.deepcopy(s) for p, s in inner.state.items()}, _group_values(inner)) for inner in wrapped
        ],
        optimizer_scalars=_optimizer_scalars((optimizer, *wrapped) if weights else ()),
        scaler=scaler if weights else None,
        sharded=sharded,
        scaler_state=None if scaler is None or not weights else copy.deepcopy(scaler.state_dict()),
        generator_states=[(g, rng_state(g)) for g in generators],
        exact=everything,
        module_only=module_only,
    )
    if everything:
        modules = list({id(m): m for root in (module, *roots) for m in root.modules()}.values())
        params = {id(p): p for root in (module, *roots) for p in root.parameters()}.values() if weights else []
        snapshot.grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in params]
        snapshot.requires_grad = [(p, p.requires_grad) for p in params]
        snapshot.training_flags = [(m, m.training) for m in modules]
        # found trying the package as a new user: a buffer a layer registers at its first forward (statistics of the
        # first batch) was left holding the range test's, and the run never took its own
        # a TorchScript module's registries are not dicts, and its attributes cannot be added or removed: left out
        # (found trying the package on a scripted submodule: the restore failed, `OrderedDictWrapper` has no `get`)
        snapshot.registries = [
            (r, dict(r)) for m in modules for r in (m._parameters, m._buffers, m._modules) if isinstance(r, dict)
        ]
        # found in a review: a hook a module registers at its first step (`if self.handles is None: ...`) came back
        # unregistered in its attribute but stayed on the layer, and each trial and the run added one more
        snapshot.hooks = [(m, name, dict(r)) for m in modules for name, r in _hook_registries(m)]
        snapshot.hooks += [
            (p, name, dict(getattr(p, name, None) or {}))
            for m in modules
            for p in m.parameters(recurse=False)
            for name in _TENSOR_HOOK_REGISTRIES
        ]
        snapshot.hook_holders = modules
        snapshot.group_params = [list(group["params"]) for group in optimizer.param_groups] if weights else []
        for submodule in modules:
            if _is_metric(submodule):
                snapshot.metric_states.append((submodule, _metric_state(submodule)))
                continue
            if loose := _loose_tensors(submodule):
                snapshot.loose_tensors.append((submodule, loose))
            # each submodule's as the top module's (found trying the package as a new user: a GRU layer that
            # carries its hidden state from batch to batch in an attribute it creates at its first forward, `self.h =
            # h.detach()`, kept the range test's; found in a review: a layer's phase held in an Enum, its running
            # statistics in a dict of floats, rebound at each step, kept the range test's)
            snapshot.attributes.append((submodule, _own_attributes(submodule)))
            if type(submodule).get_extra_state is not torch.nn.Module.get_extra_state:
                # the state a module declares for its checkpoint (`get_extra_state`), whatever form it keeps it in; one
                # that cannot give it now (not yet calibrated) has none to lose, as its `state_dict` would say
                try:
                    with torch.no_grad():  # a tensor computed from a parameter is then no part of a graph
                        extra = _copy_state(submodule.get_extra_state())
                except Exception as err:  # noqa: BLE001 - the module's own code: whatever it raises, it is said
                    snapshot.uncaptured.append(f"`{type(submodule).__name__}` ({type(err).__name__}: {err})")
                    continue
                snapshot.extra_states.append((submodule, extra))
    return snapshot


def _refill_groups(
    groups: list[dict[str, Any]], saved: Sequence[dict[str, Any]], keep: frozenset[str] = frozenset()
) -> None:
    """Give each param group the values it had (:func:`_group_values`), in place: a scheduler holds the groups.

    The entries named in ``keep`` keep the values they hold now. A value held in a Tensor (an LR kept in one for a
    compiled ``optimizer.step``, or Adam's ``beta1`` in its ``betas``) is written into that same Tensor where it is
    still there, as torch's schedulers write it: the compiled step, and the user, go on holding it.
    """
    for group, saved_group in zip(groups, saved, strict=False):
        params = group["params"]
        kept = {key: value for key, value in group.items() if key in keep}
        held = {key: value for key, value in group.items() if _holds_tensors(value) and key not in keep}
        group.clear()
        group.update(copy.deepcopy(saved_group))
        group["params"] = params
        for key, live in held.items():
            group[key] = _refilled(live, group.get(key))
        group.update(kept)


def _holds_tensors(value: Any) -> bool:
    """Whether a param group's value is a Tensor, or a tuple holding one (``betas``)."""
    return isinstance(value, Tensor) or (isinstance(value, tuple) and any(isinstance(v, Tensor) for v in value))


def _refilled(live: Any, value: Any) -> Any:
    """``value`` written into the Tensors ``live`` holds (itself, or a tuple's) where they match it; else ``value``."""
    if isinstance(live, Tensor):
        if isinstance(value, Tensor) and _same_kind(live, value):
            with torch.no_grad():
                live.copy_(value)
            return live
        return value
    if isinstance(value, tuple) and len(value) == len(live):
        pairs = zip(live, value, strict=True)
        return tuple(_refilled(old, new) if isinstance(old, Tensor) else new for old, new in pairs)
    return value


def _copy_state(value: Any) -> Any:
    """A copy of a module's extra state or a metric's state: tensors detached and cloned, dicts, lists, tuples rebuilt.

    A tensor in a graph cannot be deep-copied: one computed from a parameter (``{"scale": self.weight.abs().amax()}``),
    or the step's output a metric used as the loss keeps in ``_forward_cache``; anything else is.
    """
    if isinstance(value, Tensor):
        return value.detach().clone()
    if type(value) is dict:
        return {key: _copy_state(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_copy_state(item) for item in value)
    return copy.deepcopy(value)  # other containers: their tensors, made without gradients, are graph leaves


def _own_attributes(module: torch.nn.Module) -> dict[str, Any]:
    r"""The attributes ``module`` holds itself, beside what every ``nn.Module`` keeps (parameters, submodules, hooks).

    The objects, not copies: a restore rebinds each name to the object it held (a number counted up goes back to the
    old number), removes names set since, and leaves alone what was changed in place, which is the user's to keep.
    """
    return {name: value for name, value in vars(module).items() if name not in _MODULE_INTERNALS}


def _registered(module: torch.nn.Module) -> set[str]:
    """The names of ``module``'s own parameters, buffers and submodules: an attribute of such a name would hide one."""
    return {*module._parameters.keys(), *module._buffers.keys(), *module._modules.keys()}  # TorchScript: no iter


def _is_plain_value(value: Any) -> bool:
    """A number (Python's or a NumPy scalar), a string, or a tuple of such values: what rebinding puts back whole."""
    if isinstance(value, (bool, int, float, complex, str, bytes)):
        return True
    if isinstance(value, tuple):
        return len(value) <= 64 and all(_is_plain_value(item) for item in value)
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ != "ndarray" and getattr(value, "ndim", None) == 0


def registered_tensors(module: torch.nn.Module, also: Sequence[torch.nn.Module] = ()) -> list[Slot]:
    r"""Each parameter and buffer of ``module`` (and of the modules ``also``) as registered: (registry, name, tensor).

    A module that assigns a new tensor to a buffer (``self.seen = self.seen + n``), or a ``Trainer`` that converts the
    model to another precision, replaces what the registry holds; :func:`put_back` restores the original objects.
    """
    slots = {
        (id(registry), name): (registry, name, tensor)
        for owner in (module, *also)
        for m in owner.modules()
        for registry in (m._parameters, m._buffers)
        for name, tensor in registry.items()
    }
    return list(slots.values())


def _replaced_parameters(slots: Sequence[Slot], optimizer: Optimizer) -> dict[int, torch.nn.Parameter]:
    r"""The parameters of these slots that the module has since replaced by another ``nn.Parameter``: id -> the new one.

    A module may swap a parameter on purpose in the middle of training (re-initialise a head, handing the new one to
    the optimizer); a rollback then writes the kept values into the new parameter and moves its optimizer state over,
    rather than putting the old object back (found trying the package as a new user: the guard's rollback put the old
    one back, which the optimizer no longer stepped, and the layer stayed frozen for the rest of the run). Only where
    the optimizer now trains the new one in place of the old, of the same shape and dtype: elsewhere the old object
    is put back as before (the kept optimizer state fits no other shape, and belongs to no parameter it does not hold).
    """
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {
        id(kept): live
        for registry, name, kept in slots
        if isinstance(kept, torch.nn.Parameter)
        and isinstance(live := _held(registry, name), torch.nn.Parameter)
        and live is not kept
        and id(live) in trained
        and id(kept) not in trained
        and _same_kind(live, kept)
    }


def put_back(slots: Sequence[Slot], removed_too: bool = True) -> None:
    """Put each tensor of :func:`registered_tensors` back in its registry where another has taken its place.

    ``removed_too=False``: a name removed from its registry since stays removed. A rollback in the middle of training
    (the divergence guard's) goes on training the module as it is now, which may have been reshaped on purpose:
    ``ModelPruning`` moves ``weight`` to ``weight_orig`` (the same tensor, whose values come back) and sets ``weight``
    from a mask at every forward, and a parameter put back under that name would make that assignment fail.
    """
    for registry, name, tensor in slots:
        if _held(registry, name) is not tensor and (removed_too or name in registry):
            registry[name] = tensor


def _held(registry: Any, name: str) -> Any:
    """What ``registry`` holds under ``name``, else None: a dict, or a TorchScript module's ``OrderedDictWrapper``."""
    return registry[name] if name in registry else None  # noqa: SIM401 (no `get` there)


def hidden_modules(module: torch.nn.Module, also: Sequence[torch.nn.Module] = ()) -> list[torch.nn.Module]:
    r"""The modules ``module``'s submodules hold outside the module tree, each once (with the modules inside them).

    In plain dicts, lists or tuples (``self.metrics = {"train": Accuracy(...)}`` is common in users' modules, a
    momentum encoder kept in a list stays out of the checkpoint), searched ``_CONTAINER_DEPTH`` levels deep, or set
    with ``object.__setattr__``: torch sees no submodule, so ``module.modules()`` misses them, and a branch's updates
    would stay in them.
    """
    seen = {id(m) for root in (module, *also) for m in root.modules()}
    found: list[torch.nn.Module] = []
    searched: set[int] = set()  # containers already searched: one held twice, or holding itself

    def search(value: Any, depth: int) -> None:
        if isinstance(value, torch.nn.Module):
            if id(value) not in seen:
                found.append(value)
                seen.update(id(inner) for inner in value.modules())
        elif depth > 0 and isinstance(value, (dict, list, tuple)) and id(value) not in searched:
            searched.add(id(value))
            for item in value.values() if isinstance(value, dict) else value:
                search(item, depth - 1)

    pending = [m for root in (module, *also) for m in root.modules()]
    while pending:
        owner = pending.pop(0)
        before = len(found)
        for name, value in vars(owner).items():
            if name in _MODULE_INTERNALS or name.startswith(_HPARAMS):
                continue
            if isinstance(value, (dict, list, tuple, torch.nn.Module)):
                search(value, _CONTAINER_DEPTH)
        # what a hidden module holds outside its own tree is searched too
        pending += [m for hidden in found[before:] for m in hidden.modules()]
    return found


def every_module(module: torch.nn.Module) -> list[torch.nn.Module]:
    """``module.modules()`` and those of the modules it holds outside its tree (:func:`hidden_modules`), each once."""
    return [*module.modules(), *(m for hidden in hidden_modules(module) for m in hidden.modules())]


def nothing(optimizer: Optimizer) -> Snapshot:
    r"""A snapshot that copies nothing and cannot be restored: the divergence guard's once it has no rescue left.

    Such a guard only stops the run at the next divergence, so a copy of the weights and optimizer state would be
    memory held for nothing (``max_rescues=0`` from the start; the last rescue made). Its memory is freed.
    """
    return Snapshot(tensors=[], slots=[], optimizer=optimizer, optimizer_state={}, param_groups=[], empty=True)


def recapture(
    previous: Snapshot | None,
    module: torch.nn.Module,
    optimizer: Optimizer,
    scaler: Any = None,
    also: Sequence[torch.nn.Module] = (),
) -> Snapshot:
    r"""A snapshot of the weights, buffers, optimizer and scaler (``capture(..., everything=False)``), taken again.

    Written into the tensors ``previous`` holds: the divergence guard retakes its snapshot every few dozen steps, and a
    copy into memory already held costs several times less than allocating it again (a tenth, for the README's main
    example on a CPU). A new capture where ``previous`` was taken of other tensors or shapes (a param group added,
    optimizer state grown) or of more than that.
    """
    if previous is not None:
        _compat.reshard(previous.sharded)
    if previous is None or not _same_layout(previous, module, optimizer, scaler, also):
        return capture(module, optimizer, scaler, everything=False, also=also)
    with torch.no_grad():
        for live, saved in previous.tensors:
            saved.copy_(live)
        for param, state in optimizer.state.items():
            saved_state = previous.optimizer_state[param]
            for key, value in state.items():
                if isinstance(value, Tensor):
                    saved_state[key].copy_(value)
                else:
                    saved_state[key] = copy.deepcopy(value)
    previous.param_groups = _group_values(optimizer)
    # an optimizer's own counters too (found in a review: pytorch_optimizer's StableSPAM counts its steps in
    # `total_step`, and a rollback to this snapshot put back the count of the first capture)
    previous.optimizer_scalars = _optimizer_scalars([opt for opt, _ in previous.optimizer_scalars])
    previous.scaler_state = None if scaler is None else copy.deepcopy(scaler.state_dict())
    return previous


def _optimizer_scalars(optimizers: Sequence[Optimizer]) -> list[tuple[Optimizer, dict[str, Any]]]:
    """The numbers and strings each optimizer holds as attributes (a step count), to put back with its state."""
    return [(opt, {name: value for name, value in vars(opt).items() if _is_plain_value(value)}) for opt in optimizers]


def _weights(module: torch.nn.Module, also: Sequence[torch.nn.Module], optimizer: Optimizer | None) -> list[Tensor]:
    """The parameters and buffers of ``module`` and of the modules ``also``, in a fixed order, each once.

    And the tensors ``optimizer`` trains outside them (a learnable temperature kept as a plain tensor with
    ``requires_grad``; found in a review: a rollback gave its momentum back, not its value, which stayed blown up).
    """
    found = {id(t): t for m in (module, *also) for t in (*m.parameters(), *m.buffers())}
    for group in optimizer.param_groups if optimizer is not None else ():
        found.update((id(p), p) for p in group["params"] if isinstance(p, Tensor) and id(p) not in found)
    # a lazy layer not made yet has no values to copy (found in a review: a head only a later step or validation uses
    # crashed the guard's first snapshot); once made, the layout changed and the next snapshot is taken anew. A tensor
    # that is a broadcast view of fewer values (`torch.linspace(0, 1, 8).expand(4, 8)` as a buffer) cannot be written
    # in place, by a branch or by a restore: nothing to copy (found in a review: every restore failed on one)
    return [t for t in found.values() if not torch.nn.parameter.is_lazy(t) and not _broadcast(t)]


def _broadcast(tensor: Tensor) -> bool:
    """Whether ``tensor`` repeats memory along a dimension (stride 0): torch writes no such tensor in place."""
    if tensor.layout != torch.strided:  # a sparse tensor has no strides
        return False
    return any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape, strict=True))


def _same_layout(
    snapshot: Snapshot, module: torch.nn.Module, optimizer: Optimizer, scaler: Any, also: Sequence[torch.nn.Module]
) -> bool:
    """Whether ``snapshot`` holds exactly the tensors of these objects, shape for shape, and nothing else."""
    if snapshot.optimizer is not optimizer or snapshot.scaler is not scaler:
        return False
    if snapshot.grads or snapshot.training_flags or snapshot.metric_states or snapshot.loose_tensors:
        return False
    if snapshot.attributes or snapshot.scalars:
        return False
    if snapshot.registries or snapshot.hooks or snapshot.extra_states or snapshot.inner:
        return False
    if snapshot.generator_states or snapshot.sequences:
        return False
    live = _weights(module, also, optimizer)
    if len(live) != len(snapshot.tensors):
        return False
    pairs = zip(live, snapshot.tensors, strict=True)
    if any(now is not kept or not _same_kind(now, saved) for now, (kept, saved) in pairs):
        return False
    saved_states = snapshot.optimizer_state
    if len(optimizer.state) != len(saved_states):
        return False
    for param, state in optimizer.state.items():
        saved_state = saved_states.get(param)
        if not isinstance(state, dict) or not isinstance(saved_state, dict) or state.keys() != saved_state.keys():
            return False
        for key, value in state.items():
            if isinstance(value, Tensor) != isinstance(saved_state[key], Tensor):
                return False
            if isinstance(value, Tensor) and not _same_kind(value, saved_state[key]):
                return False
    return True


def _same_kind(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


def _group_values(optimizer: Optimizer) -> list[dict[str, Any]]:
    """Each param group's values (LR, momentum, ...), copied; its params are the optimizer's own."""
    return [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def lazy_modules(module: torch.nn.Module) -> list[str]:
    r"""The submodules (``"name (Type)"``) whose parameters do not exist yet: lazy modules before their first forward.

    ``torch.nn.LazyLinear`` and its kin create their weights from the first input's shape; until then there is nothing
    to copy, and a snapshot cannot be taken.
    """
    return [
        f"{name or 'the module'} ({type(sub).__name__})"
        for name, sub in module.named_modules()
        if any(torch.nn.parameter.is_lazy(p) for p in sub.parameters(recurse=False))
    ]


def dataloader_generators(loaders: Sequence[Any]) -> list[Any]:
    r"""The random generators that iterating these loaders advances: those the loaders, samplers and datasets hold.

    A loader whose sampler owns a generator draws from it at every new iterator; without restoring it, a range test
    would change the order of the user's first training epoch. A dataset that augments with a generator of its own
    draws from it at every sample (in the main process: with ``num_workers=0``), and so does a ``collate_fn`` object
    that mixes samples (mixup). Found under any attribute name of the loader, its sampler, its batch sampler and the
    batch sampler's sampler, its dataset and the datasets that one wraps (``Subset``, ``ConcatDataset``,
    ``StackDataset``), its ``collate_fn``, and for those last two also in the objects they hold, a few levels deep
    (a transform pipeline: :func:`_rngs_within`): a ``torch.Generator``, NumPy's ``Generator`` or ``RandomState``, or
    a ``random.Random``.
    """
    found: list[Any] = []
    for obj in _order_sources(loaders):
        values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
        for value in [getattr(obj, "generator", None), *values]:
            if _is_rng(value) and all(value is not g for g in found):
                found.append(value)
    datasets = [dataset for loader in loaders for dataset in _datasets(loader)]
    # a `collate_fn` object that mixes samples with a generator of its own (mixup, cutmix)
    collates = [collate for loader in loaders if (collate := getattr(loader, "collate_fn", None)) is not None]
    # each one's `generator` read by name too: kept in `__slots__` or behind a property, no attribute search sees it
    # (found in a review: a mixup object with slots lost its generator to the search by depth)
    named = [getattr(obj, "generator", None) for obj in (*datasets, *collates)]
    found += [g for g in _rngs_within([*datasets, *collates, *named]) if all(g is not h for h in found)]
    return found


# how deep the objects a dataset holds are searched for generators, in attributes (lists and dicts count no level):
# MONAI's random transforms keep theirs three below the dataset (`dataset.transform.transforms[i].R`); two more for
# transforms wrapped in others
_AUGMENTER_DEPTH = 5
# a list, tuple or dict longer than this is data (file names, samples), not a pipeline of transforms: not walked
_LONGEST_WALKED = 256


def _rngs_within(roots: Sequence[Any]) -> list[Any]:
    r"""The random generators ``roots`` hold, in their attributes and in the objects those hold (:func:`_found_within`).

    A dataset's transform pipeline keeps its generators there (found in a review: MONAI's random transforms each own a
    NumPy ``RandomState``, and the run's augmentations differed from a run given the pick).
    """
    return _found_within(roots, _is_rng, _AUGMENTER_DEPTH)


def _found_within(roots: Sequence[Any], wanted: Callable[[Any], bool], depth: int) -> list[Any]:
    r"""The objects ``wanted`` accepts among ``roots`` and what they hold, breadth first, each once.

    Down to ``depth`` levels of instance attributes (no property is run), through lists, tuples and dicts of up to
    ``_LONGEST_WALKED`` items (which count no level), an ``nn.Module``'s submodules (``nn.Sequential`` of transforms)
    and a ``functools.partial``'s function and arguments. Tensors, arrays, strings, classes, functions and Python
    modules are never entered; a dead weak proxy is passed over.
    """
    numpy = sys.modules.get("numpy")
    leaves: tuple[type, ...] = (Tensor, str, bytes, int, float, bool, type, types.ModuleType, types.FunctionType)
    if numpy is not None:
        leaves += (numpy.ndarray,)
    found: list[Any] = []
    seen: set[int] = set()
    level = list(roots)
    for _ in range(depth + 1):
        below: list[Any] = []
        while level:  # a container's items join its own level: only an object's attributes are one level down
            obj = level.pop()
            try:
                if obj is None or id(obj) in seen or isinstance(obj, leaves):
                    continue
                seen.add(id(obj))
                if wanted(obj):
                    found.append(obj)
                elif isinstance(obj, (list, tuple, dict)):
                    items = obj.values() if isinstance(obj, dict) else obj
                    level += list(items) if len(obj) <= _LONGEST_WALKED else []
                elif isinstance(obj, functools.partial):
                    below += [obj.func, *obj.args, *obj.keywords.values()]
                elif isinstance(getattr(obj, "__dict__", None), dict):
                    module = isinstance(obj, torch.nn.Module)
                    below += [value for name, value in vars(obj).items() if not (module and name in _MODULE_INTERNALS)]
                    below += list(obj._modules.values()) if module else []
            except ReferenceError:  # a weak proxy whose object is gone
                continue
        level = below
    return found


def data_order_numbers(loaders: Sequence[Any]) -> list[tuple[Any, dict[str, Any]]]:
    r"""Each sampler, batch sampler and stream of these loaders with the numbers and strings it holds as attributes.

    A sampler that counts its own passes (``self.epoch += 1`` in ``__iter__``, no ``set_epoch`` for Lightning to call)
    and orders its samples by that count is advanced by every pass the range test starts (found trying the package as
    a new user: after the fit it read 18 against 3, and the run's data order differed). So is a stream (an
    ``IterableDataset``) whose position its dataset keeps in a number (``self.count += 1`` as it yields, a resumable
    stream's cursor), read in the main process: found trying the package as a new user, training went on from sample
    6,320, after what the range test had read. Not a stream that reads a source it holds (:func:`stream_sources`):
    that source cannot be rewound, and its count must keep saying where it is (found in a review: put back, it sent a
    resume 304 samples back); nor a map-style dataset, whose numbers may index what it caches (found in a review: a
    cache's next free slot put back, with its index of slots kept, handed training other samples). Put back with
    :meth:`Snapshot.restore`.
    """
    found: list[tuple[Any, dict[str, Any]]] = []
    datasets = [dataset for loader in loaders for dataset in _datasets(loader)]
    streams = [d for d in datasets if isinstance(d, IterableDataset) and not stream_sources(d)]
    for obj in [*_order_sources(loaders), *streams]:
        if obj is None or isinstance(obj, DataLoader) or not hasattr(obj, "__dict__"):
            continue
        if any(obj is seen for seen, _ in found):
            continue
        numbers = {name: value for name, value in vars(obj).items() if isinstance(value, (bool, int, float, str))}
        if numbers:
            found.append((obj, numbers))
    return found


def data_order_sequences(loaders: Sequence[Any]) -> list[KeptSequence]:
    r"""Each list, and each integer NumPy array and tensor, the samplers and batch samplers of these loaders hold.

    With a copy of it. A sampler that shuffles a list of indices it holds in place (``random.shuffle(self.indices)`` in
    ``__iter__``) is left in the order the range test's last pass drew (found in a review: the run's first batch and its
    final weights differed from a run without the callback, the global RNG put back notwithstanding). Each restore
    writes the copy back into the object the attribute held, where it changed, so whatever else holds that object sees
    it put back too. Not the data a sampler draws from (``data_source``, a loader's ``dataset``: found in a review, a
    dataset held in a tensor was copied whole), nor floating-point weights (``WeightedRandomSampler``'s, which no pass
    changes), nor a tensor made under ``torch.inference_mode()``, which nothing can change in place. Put back with
    :func:`put_back_sequences`.
    """
    found: list[KeptSequence] = []
    datasets = {id(getattr(loader, "dataset", None)) for loader in loaders}
    seen: set[int] = {id(loader) for loader in loaders}  # a loader's own attributes are its data, not an order
    for obj in _order_sources(loaders):
        if obj is None or not hasattr(obj, "__dict__") or id(obj) in seen:
            continue
        seen.add(id(obj))
        for name, value in vars(obj).items():
            if name in ("data_source", "dataset") or id(value) in datasets:
                continue
            if isinstance(value, list) or _integer_array(value):
                found.append((obj, name, value, _copy_sequence(value)))
    return found


def _integer_array(value: Any) -> bool:
    """A tensor or NumPy array of integers that can be written in place: what holds a sampler's order of indices."""
    if isinstance(value, Tensor):
        return not value.is_floating_point() and not value.is_complex() and not value.is_inference()
    if type(value).__name__ != "ndarray":
        return False
    return value.dtype.kind in "iu" and bool(value.flags.writeable)


def _copy_sequence(value: Any, depth: int = 0) -> Any:
    """A copy of what ``value`` holds: a tensor's or array's values; a list's items, with copies of those nested in it.

    A length-bucketing sampler keeps its buckets as lists or index arrays in a list and shuffles them in place, the
    list and each bucket (found in a review: the list's shallow copy shared the buckets, which kept the range test's
    order, and comparing arrays as list items raised).
    """
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        # the types first, in one pass in C: a list of a million indices holds ints only, and is copied as it is
        # (found in a review: a check of each item took 30x the copy); a list holding itself is not followed
        nested: dict[int, Any] = {}
        if depth < _NESTED_DEPTH and any(not issubclass(kind, _NOT_NESTED) for kind in set(map(type, value))):
            nested = {i: _copy_sequence(item, depth + 1) for i, item in enumerate(value) if _nested_sequence(item)}
        return value.copy(), nested
    return value.copy()  # an array's own copy


#: item types a sampler's list holds that hold no order of their own (NumPy's integers too: `numbers.Number`)
_NOT_NESTED = (Number, str, bytes, tuple, type(None))
#: how deep lists in a sampler's list are followed: buckets of indices in a list, a list of those lists
_NESTED_DEPTH = 3


def _nested_sequence(item: Any) -> bool:
    return isinstance(item, list) or _integer_array(item)


def put_back_sequences(kept: Sequence[KeptSequence]) -> None:
    """Give each attribute :func:`data_order_sequences` kept its object back, holding what it held then."""
    for holder, name, original, saved in kept:
        holder.__dict__[name] = _put_back_sequence(original, saved)


def _put_back_sequence(original: Any, saved: Any) -> Any:
    """Write ``saved`` (:func:`_copy_sequence`) back into ``original`` where it changed; return the object to hold.

    The same object, but for a tensor or array reshaped since (``resize_``): another object of the kept values.
    """
    if isinstance(original, list):
        items, nested = saved
        if nested:
            items = [_put_back_sequence(item, nested[i]) if i in nested else item for i, item in enumerate(items)]
        if len(original) != len(items) or any(map(operator.is_not, original, items)):  # in C: a list of millions
            original[:] = items
        return original
    if isinstance(original, Tensor):
        if original.shape != saved.shape:
            return saved.clone()
        if not torch.equal(original, saved):
            with torch.no_grad():
                original.copy_(saved)
        return original
    if original.shape != saved.shape:
        return saved.copy()
    if not (original == saved).all():
        original[...] = saved
    return original


def stream_sources(dataset: Any) -> list[str]:
    """The attributes in which a stream's dataset holds a source it reads on: an open file, an iterator, a generator.

    Such a source moves on as the range test reads it, and nothing can rewind it.
    """
    if not isinstance(dataset, IterableDataset) or not hasattr(dataset, "__dict__"):
        return []
    return [name for name, value in vars(dataset).items() if isinstance(value, io.IOBase) or hasattr(value, "__next__")]


def stream_positions(loaders: Sequence[Any]) -> list[tuple[Any, list[str], Any]]:
    r"""Each stream these loaders read in the main process from a source it holds, with where it stands now.

    Where it stands: the numbers it holds, and each source with its place (:func:`_place`). Compared after training off
    the record (:func:`streams_moved`), it says whether that training read from the stream the run reads.
    """
    found: list[tuple[Any, list[str], Any]] = []
    for loader in loaders:
        if getattr(loader, "num_workers", 0) > 0:
            continue  # read by workers, each from a copy of the dataset
        for dataset in _datasets(loader):
            sources = stream_sources(dataset)
            if sources and all(dataset is not seen for seen, _, _ in found):
                found.append((dataset, sources, _stream_position(dataset, sources)))
    return found


def streams_moved(positions: Sequence[tuple[Any, list[str], Any]]) -> list[str]:
    """The streams of :func:`stream_positions` that stand elsewhere now, each as ``ClassName.source``."""
    moved = []
    for dataset, sources, (numbers, places) in positions:
        numbers_now, places_now = _stream_position(dataset, sources)
        if numbers_now != numbers or any(map(_source_moved, places, places_now)):
            moved.append(f"{type(dataset).__name__}.{sources[0]}")
    return moved


def _source_moved(then: tuple[Any, Any], now: tuple[Any, Any]) -> bool:
    """Whether a source read on: the same object, at another place or at one it cannot tell (see :func:`_place`).

    A stream that opens its source in each ``__iter__`` and keeps it on itself holds another object after the block's
    passes: the run's pass opens its own (found in a review: such a stream, as the warning advises, was warned of).
    """
    (source, place), (source_now, place_now) = then, now
    return source is source_now and source is not None and (place is None or place != place_now)


def _stream_position(dataset: Any, sources: list[str]) -> tuple[dict[str, Any], list[tuple[Any, Any]]]:
    numbers = {name: value for name, value in vars(dataset).items() if isinstance(value, (bool, int, float, str))}
    places = []
    for name in sources:
        source = vars(dataset).get(name)
        places.append((source, _place(source)))
    return numbers, places


def _place(source: Any) -> Any:
    """Where a source stands: a file's ``tell()``; an iterator's length left, where it gives one; else None (unknown).

    A generator tells nothing: read in the main process by a block that trained on its loader, it moved (found trying
    the package as a new user: a stream returning a generator it held was read 85 batches on without a word, and a run
    on a stream that can be read only once trained 15 of its 100 steps).
    """
    # a text file iterated line by line refuses `tell()`; its binary buffer still says how far it has read
    for holder in (source, getattr(source, "buffer", None)):
        try:
            return holder.tell()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            continue
    left = operator.length_hint(source, -1) if hasattr(source, "__next__") else -1
    return left if left >= 0 else None


def held_generators(module: torch.nn.Module | None, *others: Any) -> list[Any]:
    r"""The random generators ``module``'s submodules and the ``others`` (a ``LightningDataModule``) hold as attributes.

    As attributes, or in plain dicts, lists or tuples there (searched ``_CONTAINER_DEPTH`` levels deep); not those
    held by another object the module holds.

    A module that draws noise or masks from a generator of its own (``torch.randn(..., generator=self.gen)``,
    ``self.rng = np.random.default_rng(0)``) advances it at every training step, and a datamodule's generator may be
    drawn from when its ``val_dataloader`` builds a loader: without restoring them, a range test would change what
    the run draws (found trying the package as a new user: the weights then differed from a run given the pick).
    """
    modules = [] if module is None else every_module(module)
    owners = [*modules, *(other for other in others if other is not None)]
    found: list[Any] = []
    searched: set[int] = set()  # containers already searched: one held by many layers is walked once

    def search(value: Any, depth: int) -> None:
        if isinstance(value, (dict, list, tuple)):
            # also in plain dicts, lists or tuples (found in a review: `self.gens["noise"]` was left advanced)
            if depth > 0 and id(value) not in searched:
                searched.add(id(value))
                for item in value.values() if isinstance(value, dict) else value:
                    search(item, depth - 1)
        elif not isinstance(value, _NEVER_RNG) and _is_rng(value) and all(value is not g for g in found):
            found.append(value)

    for owner in owners:
        for name, value in vars(owner).items() if hasattr(owner, "__dict__") else ():
            if isinstance(owner, torch.nn.Module) and (name in _MODULE_INTERNALS or name.startswith(_HPARAMS)):
                continue
            search(value, _CONTAINER_DEPTH)
    return found


def random_generators(loaders: Sequence[Any], module: torch.nn.Module | None, *others: Any) -> list[Any]:
    r"""Every random generator a pass over ``loaders`` or a step of ``module`` may advance, each once.

    Those of the loaders (:func:`dataloader_generators`), then those ``module`` and the ``others`` (a
    ``LightningDataModule``) hold (:func:`held_generators`) that are not already among them: a dataset may be both
    held by the datamodule and wrapped by a loader, and restoring its generator twice would be harmless but copying
    its state twice is not needed.
    """
    found = dataloader_generators(loaders)
    found += [g for g in held_generators(module, *others) if all(g is not h for h in found)]
    return found


def _datasets(loader: Any) -> list[Any]:
    """The loader's dataset and those it wraps (``Subset.dataset``, ``ConcatDataset``'s, ``StackDataset``'s)."""
    found: list[Any] = []
    pending = [getattr(loader, "dataset", None)]
    while pending and len(found) < 64:  # a bound: a dataset could wrap itself
        dataset = pending.pop()
        if dataset is None or not hasattr(dataset, "__dict__") or any(dataset is seen for seen in found):
            continue
        found.append(dataset)
        attributes = vars(dataset)  # instance attributes only: no property of a foreign dataset is run
        pending.append(attributes.get("dataset"))
        inner = attributes.get("datasets")
        if isinstance(inner, (list, tuple)):
            pending.extend(inner)
        elif isinstance(inner, dict):  # `StackDataset(x=..., y=...)`
            pending.extend(inner.values())
    return found


def rng_state(generator: Any) -> Any:
    """A copy of the state of a generator :func:`dataloader_generators` found, for :func:`set_rng_state`."""
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    if isinstance(generator, random.Random):
        return generator.getstate()
    if hasattr(generator, "bit_generator"):  # NumPy's Generator
        return copy.deepcopy(generator.bit_generator.state)
    return generator.get_state()  # NumPy's RandomState


def set_rng_state(generator: Any, state: Any) -> None:
    """Put back a state :func:`rng_state` copied."""
    if isinstance(generator, torch.Generator):
        generator.set_state(state)
    elif isinstance(generator, random.Random):
        generator.setstate(state)
    elif hasattr(generator, "bit_generator"):
        generator.bit_generator.state = copy.deepcopy(state)
    else:
        generator.set_state(state)


def reseed(generator: Any, order: int) -> None:
    """Seed a generator :func:`dataloader_generators` found for another data order ``order`` (> 0), reproducibly.

    A ``torch.Generator`` is seeded with its initial seed plus ``order``; the others keep no seed to shift, so a seed
    drawn from their current state, plus ``order``, seeds them.
    """
    if isinstance(generator, torch.Generator):
        generator.manual_seed(generator.initial_seed() + order)
    elif isinstance(generator, random.Random):
        generator.seed(generator.getrandbits(62) + order)
    elif hasattr(generator, "bit_generator"):
        drawn = int(generator.integers(2**62))
        generator.bit_generator.state = type(generator.bit_generator)(drawn + order).state
    else:
        generator.seed(int(generator.randint(2**31)) + order)


# what a container of data holds, item by item: cheaply known not to be a random generator
_NEVER_RNG = (Tensor, int, float, str, bytes, bool, type(None))


def _is_rng(value: Any) -> bool:
    if isinstance(value, random.SystemRandom):  # draws from the OS, with no state to copy or replay
        return False
    if isinstance(value, (torch.Generator, random.Random)):
        return True
    numpy = sys.modules.get("numpy")  # not imported: no NumPy generator can exist
    return numpy is not None and isinstance(value, (numpy.random.Generator, numpy.random.RandomState))


def distributed_samplers(loaders: Sequence[Any]) -> list[DistributedSampler[Any]]:
    r"""The ``DistributedSampler`` objects of these loaders, Lightning's own included.

    Their order comes from their ``seed`` and epoch, not from any generator: another order means another ``seed``.
    """
    found: list[DistributedSampler[Any]] = []
    for obj in _order_sources(loaders):
        if isinstance(obj, DistributedSampler) and all(obj is not s for s in found):
            found.append(obj)
    return found


def _order_sources(loaders: Sequence[Any]) -> list[Any]:
    """Each loader, its sampler, its batch sampler and the batch sampler's sampler: what may own the data order.

    Under DDP, the user's own sampler inside the ``DistributedSamplerWrapper`` Lightning puts around it too.
    """
    sources: list[Any] = []
    for loader in loaders:
        batch_sampler = getattr(loader, "batch_sampler", None)
        samplers = [getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)]
        wrapped = [_compat.sampler_wrapped_for_ddp(sampler) for sampler in samplers]
        sources += [loader, batch_sampler, *samplers, *wrapped]
    return sources
