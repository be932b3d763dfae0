"""The one snapshot mechanism under the range test, the grid and the divergence guard, tested without a ``Trainer``.

Capture, change everything a branch of training changes, restore, and compare bit for bit: parameters, buffers,
gradients, train/eval flags, optimizer state and param groups, a gradient scaler, dataloader generators, torchmetrics
states and tensors a module keeps outside its parameters. ``sandbox`` (with a ``Trainer``) adds RNG isolation and
restores on exceptions and Ctrl-C.
"""

from __future__ import annotations

import collections
import enum
import functools
import random
import warnings
import weakref

import lightning as L
import numpy as np
import pytest
import torch
import torchmetrics
from helpers import OwnRandomSampler, TinyClassifier, trainer_kwargs
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, RandomSampler, Subset, TensorDataset

from lightning_superconv import SuperConvergence
from lightning_superconv.sandbox import sandbox
from lightning_superconv.snapshot import (
    capture,
    data_order_sequences,
    dataloader_generators,
    held_generators,
    hidden_modules,
    put_back_sequences,
    random_generators,
    recapture,
    reseed,
)


class Stateful(nn.Module):
    """BatchNorm buffers, a metric, a carried hidden state, a user's list of diagnostics."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3)
        self.hidden: torch.Tensor | None = None
        self.cache = torch.zeros(2)
        self.diagnostics: list[torch.Tensor] = []

    def forward(self, x):
        return self.net(x)


def _train_a_little(model: Stateful, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.acc.update(logits, y)
        model.hidden = logits.detach()[:1]
        model.cache.add_(1.0)
        model.diagnostics.append(loss.detach())


def _everything(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "optimizer": {k: v.clone() for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)},
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        assert (ga is None and gb is None) or torch.equal(ga, gb)
    assert a["training"] == b["training"]
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for key in a["optimizer"]:
        assert torch.equal(a["optimizer"][key], b["optimizer"][key])
    assert a["groups"] == b["groups"]


def _trained(optimizer_cls: type[torch.optim.Optimizer]) -> tuple[Stateful, torch.optim.Optimizer]:
    """A `Stateful` model and its SGD-with-momentum or Adam optimizer, a few steps into training (state filled)."""
    model = Stateful()
    kwargs = {"lr": 0.1, "momentum": 0.9} if optimizer_cls is torch.optim.SGD else {"lr": 1e-2}
    optimizer = optimizer_cls(model.parameters(), **kwargs)
    _train_a_little(model, optimizer)
    return model, optimizer


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam])
def test_restore_brings_module_and_optimizer_back_bit_for_bit(optimizer_cls):
    """Parameters, buffers, gradients, train/eval flags, optimizer state and groups come back exactly."""
    model, optimizer = _trained(optimizer_cls)
    before = _everything(model, optimizer)
    groups = optimizer.param_groups
    snapshot = capture(model, optimizer)
    _train_a_little(model, optimizer)
    optimizer.param_groups[0]["lr"] = 3.0
    model.eval()
    snapshot.restore()
    _assert_same(before, _everything(model, optimizer))
    assert optimizer.param_groups is groups  # the same group dicts, refilled in place (schedulers hold them)


def test_one_snapshot_restores_any_number_of_branches():
    """Branches restore the same snapshot again and again; a restore never hands out the snapshot's own tensors."""
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_a_little(model, optimizer)
    before = _everything(model, optimizer)
    snapshot = capture(model, optimizer)
    for _ in range(3):
        _train_a_little(model, optimizer)
        snapshot.restore()
        _assert_same(before, _everything(model, optimizer))


def test_torchmetrics_state_is_restored():
    """A metric updated in the branch reads as before it; its update count too (read-only properties untouched)."""
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_a_little(model, optimizer, steps=2)
    value, count = model.acc.compute().clone(), model.acc._update_count
    snapshot = capture(model, optimizer)
    _train_a_little(model, optimizer, steps=4)
    assert model.acc._update_count == count + 4
    snapshot.restore()
    assert model.acc._update_count == count
    assert torch.equal(model.acc.compute(), value)


def test_metrics_held_in_a_plain_dict_or_list_are_restored():
    """Metrics in a plain dict (no ``ModuleDict``) or list, or a list in a dict, are no submodules: they come back too.

    Found trying the package as a new user: a metric kept in ``self.metrics = {...}`` kept the range test's updates.
    """
    model = Stateful()
    model.metrics = {"train": torchmetrics.classification.MulticlassAccuracy(num_classes=3)}
    model.listed = [torchmetrics.MetricCollection({"f1": torchmetrics.classification.MulticlassF1Score(num_classes=3)})]
    # one level deeper, a list in a dict, and the same dict held twice (searched once)
    model.nested = {"val": [torchmetrics.classification.MulticlassAccuracy(num_classes=3)]}
    model.again = (model.nested,)
    held = [model.metrics["train"], model.listed[0]["f1"], model.nested["val"][0]]
    assert not any(m is metric for m in model.modules() for metric in held)  # the premise: no submodules
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for metric in held:
        metric.update(model(x), y)
    values = [metric.compute().clone() for metric in held]
    snapshot = capture(model, optimizer)
    for metric in held:
        metric.update(model(x * 3), (y + 1) % 3)
    snapshot.restore()
    assert [m._update_count for m in held] == [1, 1, 1]
    assert all(torch.equal(m.compute(), v) for m, v in zip(held, values, strict=True))


def test_never_updated_metric_stays_never_updated():
    """A metric that was never updated is still in that state (its `update_called` is False) after a branch."""
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer)
    _train_a_little(model, optimizer)
    snapshot.restore()
    assert model.acc.update_called is False
    assert model.acc._update_count == 0


def test_tensors_kept_outside_parameters_are_restored_and_user_lists_left_alone():
    """`self.hidden` (None before) is None again, an in-place-changed tensor attribute is back; a user's list stays."""
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer)
    _train_a_little(model, optimizer)
    assert model.hidden is not None
    snapshot.restore()
    assert model.hidden is None
    assert torch.equal(model.cache, torch.zeros(2))
    assert len(model.diagnostics) == 3  # the user's own record of what ran is theirs


def test_the_modules_own_attributes_are_rebound_and_new_ones_removed_but_objects_changed_in_place_kept():
    """What a module's hooks and steps set on it (a count, a flag) is undone; the guard's rollback leaves it alone."""
    model = Stateful()
    model.epochs_started = 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rollback = capture(model, optimizer, everything=False)
    snapshot = capture(model, optimizer)
    _train_a_little(model, optimizer)
    model.epochs_started += 1
    model.scale = 2.0
    del model.cache
    rollback.restore()
    assert (model.epochs_started, model.scale) == (4, 2.0)
    snapshot.restore()
    assert model.epochs_started == 3
    assert not hasattr(model, "scale")
    assert torch.equal(model.cache, torch.zeros(2))  # removed, then put back
    assert len(model.diagnostics) == 3  # changed in place: the user's record
    assert isinstance(model.net, nn.Sequential)  # what every module keeps is untouched
    assert model.training


class CountsInBuffersAndLayers(nn.Module):
    """Updates a buffer by assigning a new tensor, and a layer that counts its own calls in an int."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.register_buffer("seen", torch.zeros(()))
        self.net.calls = 0
        self.teacher: nn.Module | None = None

    def forward(self, x):
        self.seen = self.seen + x.shape[0]  # a new tensor: `register_buffer`'s slot now holds it
        self.net.calls += 1
        if self.teacher is None:
            self.teacher = nn.Linear(4, 3)  # built at the first step: a submodule from then on
        return self.net(x)


def test_a_reassigned_buffer_a_submodules_counter_and_a_submodule_built_since_are_handled():
    """A buffer reassigned, a layer's int counter and a submodule built since are handled.

    The buffer's original tensor is put back in its slot with its values, the layer's int counter is rebound, and the
    submodule built since is removed, its attribute None again, as a run without the branch finds it (before, the
    buffer kept the branch's count and the counter went on).
    """
    model = CountsInBuffersAndLayers()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = model.seen
    snapshot = capture(model, optimizer)
    for _ in range(3):
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
    assert (float(model.seen), model.net.calls) == (24.0, 3)
    snapshot.restore()
    assert model.seen is seen
    assert float(model.seen) == 0.0
    assert model.net.calls == 0
    assert model.teacher is None
    assert "teacher" not in model._modules
    model(torch.randn(8, 4))
    assert isinstance(model.teacher, nn.Linear)  # built again, and registered
    seen = model.seen
    rollback = capture(model, optimizer, everything=False)  # the guard's: weights and buffers only
    model(torch.randn(8, 4))
    rollback.restore()
    assert model.seen is seen
    assert float(model.seen) == 8.0


class CarriesState(nn.Module):
    """A layer that creates its carried state at its first forward, and keeps a running statistic in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 4, batch_first=True)
        self.stats = {"mean": torch.zeros(4)}

    def forward(self, x):
        out, h = self.rnn(x, getattr(self, "h", None))
        self.h = h.detach()
        self.stats["mean"] = 0.9 * self.stats["mean"] + 0.1 * out.detach().mean(dim=(0, 1))
        return out


def test_a_submodule_s_attribute_created_since_is_removed_and_its_dict_of_tensors_written_back():
    """Found trying the package as a new user: both kept what the range test left, so the run started elsewhere.

    A GRU layer's hidden state carried from batch to batch in an attribute it creates at its first forward; a running
    mean kept in a dict of tensors and replaced by key.
    """
    model = nn.Sequential(CarriesState(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = model[0].stats
    snapshot = capture(model, optimizer)
    for _ in range(2):
        model(torch.randn(3, 5, 4)).sum().backward()
        optimizer.step()
    assert hasattr(model[0], "h")
    assert float(stats["mean"].abs().sum()) > 0
    snapshot.restore()
    assert not hasattr(model[0], "h")
    assert model[0].stats is stats
    assert torch.equal(stats["mean"], torch.zeros(4))
    # a list of tensors that aliases parameters gets the parameters themselves back, never copies of them
    rnn = model[0].rnn
    assert [id(w) for w in rnn._flat_weights] == [id(getattr(rnn, name)) for name in rnn._flat_weights_names]


class ShufflesInPlace(torch.utils.data.Sampler):
    """Shuffles, in place, an index list, a NumPy array and a tensor it holds (one of each a user may write)."""

    def __init__(self, n: int) -> None:
        self.order = list(range(n))
        self.array = np.arange(n)
        self.tensor = torch.arange(n)
        self.frozen = np.arange(n)
        self.frozen.flags.writeable = False

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        random.shuffle(self.order)
        np.random.shuffle(self.array)
        self.tensor.copy_(self.tensor[torch.randperm(len(self.tensor))])
        return iter(list(self.order))


def test_what_a_sampler_shuffles_in_place_comes_back_at_every_restore():
    """Each restore writes the kept order into the objects the sampler holds: the second as well as the first."""
    sampler = ShufflesInPlace(32)
    loader = DataLoader(TensorDataset(torch.arange(32)), sampler=sampler, batch_size=8)
    order, array, tensor = sampler.order, sampler.array, sampler.tensor
    kept = data_order_sequences([loader])
    assert {name for _, name, _, _ in kept} == {"order", "array", "tensor"}  # not the array no one can write to
    for _ in range(2):
        list(loader)
        assert sampler.order != list(range(32))
        put_back_sequences(kept)
        assert sampler.order is order
        assert order == list(range(32))
        assert sampler.array is array
        assert array.tolist() == list(range(32))
        assert sampler.tensor is tensor
        assert tensor.tolist() == list(range(32))


class BucketsByLength(torch.utils.data.Sampler):
    """A length-bucketing batch sampler: each bucket of indices and the list of them shuffled in place.

    The buckets are a list, a NumPy array and a tensor.
    """

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.buckets = [list(range(0, 8)), np.arange(8, 16), torch.arange(16, 24)]

    def __iter__(self):
        for bucket in self.buckets:
            if isinstance(bucket, torch.Tensor):
                bucket.copy_(bucket[torch.randperm(len(bucket))])
            else:
                self.rng.shuffle(bucket)
        self.rng.shuffle(self.buckets)
        return iter([[int(i) for i in bucket] for bucket in self.buckets])

    def __len__(self) -> int:
        return 3


def test_a_list_of_buckets_shuffled_in_place_comes_back_with_each_bucket():
    """The list of buckets and each bucket in it come back, the same objects.

    Found in a review: comparing the kept list's arrays with the live ones raised (every restore failed), and the
    buckets, shared by the list's shallow copy, kept the range test's order.
    """
    sampler = BucketsByLength()
    loader = DataLoader(TensorDataset(torch.arange(24)), batch_sampler=sampler)
    buckets, first, second, third = sampler.buckets, *sampler.buckets
    kept = data_order_sequences([loader])
    for _ in range(2):
        list(loader)
        put_back_sequences(kept)
        assert sampler.buckets is buckets
        assert [b is k for b, k in zip(buckets, (first, second, third), strict=True)] == [True] * 3
        assert first == list(range(8))
        assert second.tolist() == list(range(8, 16))
        assert third.tolist() == list(range(16, 24))


def test_a_sampler_list_holding_itself_is_kept_without_following_it():
    """A list that holds itself is not followed for ever (found in a review of a first version: `RecursionError`)."""

    class Odd(torch.utils.data.Sampler):
        def __init__(self) -> None:
            self.order = [0, 1, 2, 3]
            self.order.append(self.order)

        def __iter__(self):
            return iter(range(4))

        def __len__(self) -> int:
            return 4

    sampler = Odd()
    kept = data_order_sequences([DataLoader(TensorDataset(torch.arange(4)), sampler=sampler)])
    sampler.order[:2] = [1, 0]
    put_back_sequences(kept)
    assert sampler.order[:4] == [0, 1, 2, 3]
    assert sampler.order[4] is sampler.order


class BroadcastBuffer(nn.Module):
    """A buffer that is a broadcast view of fewer values (stride 0): nothing can write it in place."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 2)
        self.register_buffer("grid", torch.linspace(0, 1, 8).expand(4, 8))

    def forward(self, x):
        return self.lin(x + self.grid.mean(0))


def test_a_broadcast_buffer_does_not_stop_the_restore():
    """A buffer nothing can write in place is left alone, and the rest comes back.

    Found in a review: writing every buffer back failed on one (`more than one element of the written-to tensor
    refers to a single memory location`), and the optimizer and all that came after it stayed as the branch left them.
    """
    model = BroadcastBuffer()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weight = model.lin.weight.detach().clone()
    snapshot = capture(model, optimizer)
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    snapshot.restore()
    assert torch.equal(model.lin.weight, weight)
    assert optimizer.state_dict()["state"] == {}
    assert model.grid.stride() == (0, 1)


class HoldsItsData:
    """A loader of the user's own (Lightning takes any iterable of batches) holding its data as tensors and a list."""

    def __init__(self) -> None:
        self.x, self.y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        self.tensors = [self.x, self.y]

    def __iter__(self):
        return iter([(self.x[k : k + 16], self.y[k : k + 16]) for k in range(0, 64, 16)])


def test_the_data_a_sampler_or_loader_draws_from_is_never_copied():
    """Only a sampler's order is kept, not the data it draws from, nor a loader's own.

    Found in a review: `DataLoader(tensor, shuffle=True)` had its 400 MB dataset (the `RandomSampler`'s `data_source`)
    cloned and written back at each restore, and a loader of the user's its tensors.
    """
    data = torch.randn(1000, 8)
    assert data_order_sequences([DataLoader(data, shuffle=True, batch_size=10)]) == []
    assert data_order_sequences([DataLoader(list(range(100)), shuffle=True, batch_size=10)]) == []
    assert data_order_sequences([HoldsItsData()]) == []


def test_a_sampler_s_weights_made_in_inference_mode_are_left_alone():
    """Floating weights are no data order, and nothing can change an inference tensor in place: neither is kept.

    Found in a review: a `WeightedRandomSampler` given weights computed under `torch.inference_mode()` made the restore
    fail (an in-place write to an inference tensor), and so the fit.
    """
    with torch.inference_mode():
        weights = torch.rand(64, dtype=torch.float64) + 0.1
        order = torch.arange(64)
    sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=64)
    sampler.order = order  # an integer one made there too
    assert data_order_sequences([DataLoader(TensorDataset(torch.arange(64)), sampler=sampler, batch_size=8)]) == []


class Phase(enum.Enum):
    FRESH = 0
    SEEN = 1


class RebindsItsState(nn.Module):
    """A layer that rebinds its phase (an Enum) and its running statistics (a dict of floats) at each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.phase = Phase.FRESH
        self.stats = {"mean": 0.0}

    def forward(self, x):
        out = self.lin(x)
        self.phase = Phase.SEEN
        self.stats = {"mean": 0.9 * self.stats["mean"] + 0.1 * float(out.mean())}
        return out


def test_a_submodule_s_attribute_rebound_to_any_object_gets_its_object_back():
    """A submodule's attributes come back as the top module's do: each name to the object it held.

    Found in a review: a layer's phase held in an Enum and its statistics in a dict it rebinds kept the range test's
    (only numbers, strings and their tuples came back on submodules; any object on the top module).
    """
    model = nn.Sequential(RebindsItsState(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = model[0].stats
    snapshot = capture(model, optimizer)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    assert model[0].phase is Phase.SEEN
    assert model[0].stats is not stats
    snapshot.restore()
    assert model[0].phase is Phase.FRESH
    assert model[0].stats is stats
    assert stats == {"mean": 0.0}


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))

    def forward(self, x):
        return self.net(x)


class HidesModules(nn.Module):
    """A momentum encoder kept in a list, a teacher in a dict and one set with `object.__setattr__`: no submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Linear(4, 4)
        self.key = [_Encoder()]
        self.nets = {"teacher": _Encoder()}
        object.__setattr__(self, "aux", _Encoder())

    def forward(self, x):
        with torch.no_grad():  # an EMA of the student into each hidden encoder, as a momentum encoder does
            for hidden in (self.key[0], self.nets["teacher"], self.aux):
                hidden.net[0].weight.mul_(0.9).add_(0.1 * self.student.weight)
        return self.student(x) + self.key[0](x) + self.nets["teacher"](x) + self.aux(x)


@pytest.mark.parametrize("where", ["key", "nets", "aux"])
def test_modules_held_outside_the_module_tree_come_back(where):
    """Found trying the package as a new user: a MoCo key encoder kept in a list kept the range test's weights.

    Its BatchNorm statistics and train/eval flag too; in a dict and set with ``object.__setattr__`` alike.
    """
    model = HidesModules()
    hidden = {"key": model.key[0], "nets": model.nets["teacher"], "aux": model.aux}[where]
    hidden.eval()
    before = {name: t.detach().clone() for name, t in hidden.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer)
    hidden.train()
    for _ in range(3):
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
    assert not torch.equal(hidden.net[1].running_mean, before["net.1.running_mean"])
    snapshot.restore()
    assert not hidden.training
    assert all(torch.equal(t, before[name]) for name, t in hidden.state_dict().items())


class RegistersLate(nn.Module):
    """Registers a buffer, a parameter and a submodule at its first forward (a data-dependent initialisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        if "mean" not in self._buffers:
            self.register_buffer("mean", x.detach().mean(0))
            self.register_parameter("gain", nn.Parameter(torch.ones(4)))
            self.head = nn.Linear(4, 2)
        return self.head(self.linear(x - self.mean) * self.gain)


def test_a_buffer_a_parameter_and_a_submodule_registered_since_are_removed():
    """Found trying the package as a new user: statistics a layer registered from the range test's first batch stayed.

    The run then never took its own first batch's; after an exact restore the layer registers them again.
    """
    model = nn.Sequential(RegistersLate())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    assert {"mean", "gain", "head"} <= set(model[0].state_dict()) | set(model[0]._modules)
    snapshot.restore()
    assert set(model[0]._buffers) == set()
    assert set(model[0]._parameters) == set()
    assert set(model[0]._modules) == {"linear"}
    assert len(model(torch.randn(8, 4))) == 8  # registers them again


class KeepsPlainState(nn.Module):
    """A running ``(sum, count)`` tuple, a NumPy step count, and a dict declared through ``get_extra_state``."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = (0.0, 0)
        self.steps = np.int64(0)
        self.history = {"calls": 0}

    def forward(self, x):
        self.stats = (self.stats[0] + float(x.abs().mean()), self.stats[1] + 1)
        self.steps = self.steps + 1
        self.history["calls"] += 1  # in place: only `get_extra_state` says it is state
        return x

    def get_extra_state(self):
        return {"history": dict(self.history)}

    def set_extra_state(self, state):
        self.history = dict(state["history"])


def test_a_submodule_s_tuples_numpy_numbers_and_extra_state_come_back():
    """Found trying the package as a new user: each kept the range test's values, and the run differed."""
    model = nn.Sequential(KeepsPlainState(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer)
    for _ in range(3):
        model(torch.randn(8, 4)).sum().backward()
    snapshot.restore()
    assert model[0].stats == (0.0, 0)
    assert model[0].steps == 0
    assert isinstance(model[0].steps, np.int64)
    assert model[0].history == {"calls": 0}
    assert model.state_dict()["0._extra_state"] == {"history": {"calls": 0}}


def test_a_rollback_writes_into_a_parameter_the_module_replaced_since_and_moves_its_optimizer_state():
    """Found trying the package as a new user: the guard put the old parameter back, which the optimizer no longer held.

    A module re-initialised a layer's weight as a new ``nn.Parameter`` and handed it to the optimizer; after the
    rollback the layer was frozen for the rest of the run. Now the new parameter stays, with the kept values and the
    kept optimizer state.
    """
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    old = model[0].weight
    before, momentum = old.detach().clone(), optimizer.state[old]["momentum_buffer"].clone()
    snapshot = capture(model, optimizer, everything=False)
    new = nn.Parameter(torch.randn(3, 4))
    model[0].weight = new
    optimizer.param_groups[0]["params"] = [new if p is old else p for p in optimizer.param_groups[0]["params"]]
    optimizer.state[new] = optimizer.state.pop(old)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    snapshot.restore()
    assert model[0].weight is new
    assert torch.equal(new, before)
    assert torch.equal(optimizer.state[new]["momentum_buffer"], momentum)
    assert old not in optimizer.state


def test_a_rollback_puts_back_a_replaced_parameter_the_optimizer_does_not_train_or_of_another_shape():
    """Found reviewing the package: moving the kept optimizer state onto such a parameter broke the next step.

    A parameter the module rebinds without handing it to the optimizer (``state_dict`` then raised ``KeyError``), and
    a head grown to more classes (Adam's kept ``exp_avg`` did not fit it): the old object comes back, as before.
    """
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    old_weight, old_bias = model[0].weight, model[0].bias
    snapshot = capture(model, optimizer, everything=False)
    model[0].bias = nn.Parameter(old_bias.detach().clamp(min=0))  # rebound, not handed to the optimizer
    grown = nn.Parameter(torch.randn(5, 4))
    model[0].weight = grown
    optimizer.param_groups[0]["params"] = [grown if p is old_weight else p for p in optimizer.param_groups[0]["params"]]
    snapshot.restore()
    assert model[0].bias is old_bias
    assert model[0].weight is old_weight
    assert grown not in optimizer.state
    optimizer.state_dict()  # every parameter with state is in a group


def test_an_exact_restore_gives_each_param_group_its_parameters_back_and_drops_a_group_added_since():
    """A parameter replaced in the module and in its group during a branch, and a group added: both undone."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    old = model[0].weight
    snapshot = capture(model, optimizer)
    new = nn.Parameter(torch.randn(3, 4))
    model[0].weight = new
    optimizer.param_groups[0]["params"] = [new if p is old else p for p in optimizer.param_groups[0]["params"]]
    optimizer.add_param_group({"params": list(model[1].parameters())})
    snapshot.restore()
    assert model[0].weight is old
    assert len(optimizer.param_groups) == 1
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model[0].parameters()]


class ExtraStateFromWeights(nn.Module):
    """Declares a tensor computed from its weight as extra state; another raises until it is calibrated."""

    def __init__(self, calibrated: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calibrated = calibrated

    def forward(self, x):
        return self.linear(x)

    def get_extra_state(self):
        if not self.calibrated:
            raise RuntimeError("not calibrated yet")
        return {"scale": self.linear.weight.abs().amax()}  # in the autograd graph: `deepcopy` refuses it

    def set_extra_state(self, state):
        self.restored = state["scale"]


def test_extra_state_computed_from_a_parameter_or_not_available_yet_does_not_stop_the_capture():
    """Found reviewing the package: ``deepcopy`` of such a tensor raised, and the range test died at its start."""
    model = nn.Sequential(ExtraStateFromWeights(calibrated=True), ExtraStateFromWeights(calibrated=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scale = float(model[0].linear.weight.abs().amax())
    snapshot = capture(model, optimizer)
    snapshot.restore()
    assert float(model[0].restored) == scale
    assert not hasattr(model[1], "restored")


class KeepsItsBackboneInHyperparameters(L.LightningModule):
    """Takes its backbone as an argument and saves it with its hyperparameters, as Lightning allows (with a warning)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = backbone


def test_the_copy_lightning_keeps_of_a_module_given_as_a_hyperparameter_is_not_a_hidden_module():
    """Found reviewing the package: Lightning's deep copy in `_hparams_initial` was copied at every guard refresh."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice to leave modules out of the hyperparameters
        model = KeepsItsBackboneInHyperparameters(nn.Linear(4, 4))
    assert hidden_modules(model) == []


class OrderedExtraState(nn.Module):
    """Declares its extra state in an `OrderedDict` holding a tensor computed from its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def get_extra_state(self):
        return collections.OrderedDict(scale=self.linear.weight.abs().amax())

    def set_extra_state(self, state):
        self.restored = state["scale"]


def test_extra_state_in_another_container_is_copied_without_its_graph():
    """Found reviewing the package: `deepcopy` of an `OrderedDict` holding a tensor in a graph raised in `capture`."""
    model = nn.Sequential(OrderedExtraState())
    snapshot = capture(model, torch.optim.SGD(model.parameters(), lr=0.1))
    snapshot.restore()
    assert float(model[0].restored) == float(model[0].linear.weight.abs().amax())


class FailsToLoadOnce(nn.Linear):
    """Counts its calls in a dict declared as extra state; its `set_extra_state` raises the first time."""

    def __init__(self) -> None:
        super().__init__(4, 4)
        self.seen = {"n": 0}
        self.fail = True

    def forward(self, x):
        self.seen["n"] += 1
        return super().forward(x)

    def get_extra_state(self):
        return dict(self.seen)

    def set_extra_state(self, state):
        if self.fail:
            self.fail = False
            raise ValueError("cannot load extra state")
        self.seen = dict(state)


def test_a_set_extra_state_that_raises_leaves_everything_else_restored_and_says_so():
    """Found trying the package as a new user: it left the optimizer, LR and generators as the branch made them."""
    model = nn.Sequential(FailsToLoadOnce())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(3)
    before = (model[0].weight.detach().clone(), generator.get_state())
    snapshot = capture(model, optimizer, generators=[generator])
    optimizer.param_groups[0]["lr"] = 10.0
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    torch.rand(3, generator=generator)
    with pytest.raises(ValueError, match="cannot load extra state") as raised:
        snapshot.restore()
    assert "everything else was restored" in raised.value.__notes__[0]
    assert torch.equal(model[0].weight, before[0])
    assert torch.equal(generator.get_state(), before[1])
    assert optimizer.param_groups[0]["lr"] == 0.01
    assert not optimizer.state
    assert model[0].seen == {"n": 1}  # its own state is what could not be put back


def test_tensors_resized_in_place_since_get_their_shape_and_values_back():
    """Per-channel observers and fake-quantizers (torch.ao) resize their buffers in place at their first forward.

    Found trying quantization-aware training as a new user: the restore's `copy_` failed on a `min_val` grown from
    (0,) to (3,), leaving the rest unrestored, and spread a one-element `scale` over its grown shape.
    """
    from torch.ao.quantization import FakeQuantize, PerChannelMinMaxObserver

    model = nn.Sequential(nn.Linear(4, 3))
    model.append(PerChannelMinMaxObserver(ch_axis=1))
    model.append(
        FakeQuantize(
            observer=PerChannelMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric, ch_axis=1,
        )
    )  # fmt: skip
    model[0].kept = torch.full((1,), 0.5)  # a tensor kept outside the buffers, resized in place too
    model[0].register_buffer("counts", torch.arange(2.0))  # given memory of another dtype and shape below
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {name: t.detach().clone() for name, t in model.state_dict().items()}
    objects = {name: t for name, t in [*model.named_parameters(), *model.named_buffers()]}
    snapshot = capture(model, optimizer)
    for _ in range(2):
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
    model[0].kept.resize_(5).fill_(2.0)
    model[0].bias.data = torch.ones(6)  # a parameter given memory of another shape
    model[0].counts.data = torch.zeros(5, dtype=torch.float64)
    assert model[1].min_val.shape == (3,), "the premise: resized in place"
    assert model[2].scale.shape == (3,), "the premise: resized in place"
    snapshot.restore()
    after = model.state_dict()
    for name, value in before.items():
        assert after[name].shape == value.shape, name
        assert after[name].dtype == value.dtype, name
        assert torch.equal(after[name], value), name
    assert all(t is objects[name] for name, t in [*model.named_parameters(), *model.named_buffers()])
    assert torch.equal(model[0].kept, torch.full((1,), 0.5))
    assert not optimizer.state
    model(torch.randn(8, 4))  # the observers start over as they did
    assert model[1].min_val.shape == (3,)


def test_an_error_while_putting_the_range_test_s_snapshot_back_claims_no_exact_restore(tmp_path):
    """Found trying quantization-aware training as a new user: a restore that failed half-way was said to be whole.

    The sweep's error note said "The model, the optimizer and the RNG streams were restored" over an error raised by
    the restore itself; now the restore's own note says what may be left.
    """
    model = TinyClassifier()
    model.extra = FailsToLoadOnce()
    trainer = L.Trainer(callbacks=[SuperConvergence(trial_steps=0)], **trainer_kwargs(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="cannot load extra state") as raised:
        trainer.fit(model)
    notes = "\n".join(raised.value.__notes__)
    assert "Raised while lightning_superconv put back the snapshot" in notes
    assert "were restored" not in notes


class CalibratedLater(nn.Linear):
    """An observer whose `get_extra_state` raises until it has seen a batch (it is not calibrated before)."""

    def __init__(self) -> None:
        super().__init__(16, 4)
        self.seen = 0

    def forward(self, x):
        self.seen += 1
        return super().forward(x)

    def get_extra_state(self):
        if not self.seen:
            raise RuntimeError("not calibrated")
        return {"seen": self.seen}

    def set_extra_state(self, state):
        self.seen = state["seen"]


class ObservedTiny(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.observer = CalibratedLater()


def test_an_extra_state_that_cannot_be_copied_is_said_before_training_off_the_record(tmp_path):
    """Found trying the package as a new user: the observer started training having seen the branch's batches, silently.

    What cannot be copied cannot be put back: the sandbox says so, naming the module and why.
    """
    model = ObservedTiny()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=1))
    trainer.fit(model)  # a Trainer with its strategy, optimizer and data set up
    said = r"extra state of `CalibratedLater` \(RuntimeError: not calibrated\) could not be copied"
    with pytest.warns(RuntimeWarning, match=said), sandbox(trainer, model, trainer.optimizers[0]):
        pass


def test_weights_held_twice_are_copied_once_and_a_hidden_module_s_generator_is_found():
    """A compiled view kept with `object.__setattr__` holds the model's own layers: copied once, not twice.

    Found reviewing the package: each hidden module's tensors were copied again, doubling the snapshot's memory.
    """
    model = nn.Sequential(nn.Linear(4, 4))
    object.__setattr__(model, "view", nn.Sequential(model[0]))  # the same layer, seen from elsewhere
    model.keys = [nn.Linear(4, 4)]
    model.keys[0].noise = torch.Generator().manual_seed(2)
    snapshot = capture(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert len(snapshot.tensors) == 4  # the model's weight and bias, the key encoder's
    assert random_generators([], model) == [model.keys[0].noise]


def test_a_rollback_past_a_pruning_keeps_the_pruned_shape_and_restores_the_weights_values():
    """A snapshot from before a pruning restores ``weight_orig``'s values and leaves ``weight`` unregistered.

    ``torch.nn.utils.prune`` (under ``ModelPruning``) moves ``weight`` to ``weight_orig``, the same tensor, and sets
    ``weight`` from a mask at each forward (a parameter put back under that name made the next forward fail).
    """
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer, everything=False)
    before = model[0].weight.detach().clone()
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.5)
    snapshot.restore()
    model(torch.randn(8, 4))  # the pruning's hook assigns `weight` again
    assert "weight" not in model[0]._parameters
    assert torch.equal(model[0].weight_orig, before)
    assert torch.equal(model[0].weight, before * model[0].weight_mask)


def test_a_buffer_deleted_in_a_branch_comes_back_but_a_rollback_keeps_the_module_s_new_shape():
    """A sandbox restores exactly: a buffer a step deleted is registered again; the guard's rollback does not.

    The guard goes on training the module as it is now (a pruning reshaped it on purpose); a range test's or a grid's
    steps leave nothing behind.
    """
    model = nn.Linear(4, 3)
    model.register_buffer("seen", torch.zeros(()))
    seen = model.seen
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for everything, comes_back in [(True, True), (False, False)]:
        snapshot = capture(model, optimizer, everything=everything)
        del model.seen
        snapshot.restore()
        assert ("seen" in model._buffers) is comes_back
        if comes_back:
            assert model.seen is seen


def test_gradient_scaler_state_is_restored():
    """A `GradScaler` whose scale moved in the branch is back at its scale and growth tracker."""
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler.scale(torch.ones(()))  # the scale exists once something was scaled
    before = scaler.state_dict()
    snapshot = capture(model, optimizer, scaler=scaler)
    scaler.update(new_scale=2.0**3)
    snapshot.restore()
    assert scaler.state_dict() == before


def test_dataloader_generators_are_found_and_restored():
    """The sampler's own generator advances at every new iterator; restored, the next epoch's order is unchanged."""
    data = TensorDataset(torch.arange(32.0))
    generator = torch.Generator().manual_seed(5)
    loader = DataLoader(data, sampler=RandomSampler(data, generator=generator), batch_size=8)
    assert dataloader_generators([loader]) == [generator]
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer, generators=dataloader_generators([loader]))
    first = [b[0].tolist() for b in loader]
    snapshot.restore()
    assert [b[0].tolist() for b in loader] == first


@pytest.mark.parametrize("kind", ["torch", "numpy", "numpy_legacy", "python"])
def test_a_sampler_s_generator_under_any_name_and_of_any_kind_is_found_restored_and_reseeded(kind):
    """Found by trying the package as a new user: only a `torch.Generator` named `generator` was restored.

    Restored, the next epoch's order is unchanged; reseeded for another order (a grid's repeat), the order differs,
    the same way each time.
    """
    data = TensorDataset(torch.arange(64.0))
    loader = DataLoader(data, sampler=OwnRandomSampler(64, kind), batch_size=8)
    found = dataloader_generators([loader])
    assert len(found) == 1
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = capture(model, optimizer, generators=found)
    first = [b[0].tolist() for b in loader]
    snapshot.restore()
    assert [b[0].tolist() for b in loader] == first
    snapshot.restore()
    reseed(found[0], 1)
    other = [b[0].tolist() for b in loader]
    assert other != first
    snapshot.restore()
    reseed(found[0], 1)
    assert [b[0].tolist() for b in loader] == other


class _Jittered(TensorDataset):
    """A dataset holding a generator of its own (it would jitter samples with it)."""

    def __init__(self, seed: int) -> None:
        super().__init__(torch.arange(8.0))
        self.jitter = torch.Generator().manual_seed(seed)


def test_generators_held_by_datasets_behind_wrappers_by_the_module_and_by_a_datamodule_are_found():
    """A dataset's own generator is found through `Subset` and `ConcatDataset`; a module's and a datamodule's too.

    Found trying the package as a new user: only loaders' and samplers' generators were restored, and a range test
    changed the augmentations and the noise the run then drew.
    """
    inner, other = _Jittered(1), _Jittered(2)
    loader = DataLoader(ConcatDataset([Subset(inner, [0, 1]), other]), batch_size=4)
    found = dataloader_generators([loader])
    assert len(found) == 2
    assert {id(g) for g in found} == {id(inner.jitter), id(other.jitter)}

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].noise = torch.Generator().manual_seed(3)
    model.masks = random.Random(4)
    datamodule = L.LightningDataModule()
    datamodule.split = torch.Generator().manual_seed(5)
    found = held_generators(model, datamodule)
    assert found == [model.masks, model[1].noise, datamodule.split]
    assert held_generators(None, None) == []


def test_all_random_generators_are_gathered_once_even_when_a_loader_and_the_datamodule_share_one():
    """A dataset the datamodule holds and a loader wraps gives its generator once, after the loaders' own."""
    dataset = _Jittered(1)
    datamodule = L.LightningDataModule()
    datamodule.split = torch.Generator().manual_seed(5)
    datamodule.shared = dataset.jitter
    model = nn.Linear(2, 2)
    model.noise = torch.Generator().manual_seed(3)
    found = random_generators([DataLoader(dataset, batch_size=4)], model, datamodule)
    assert found == [dataset.jitter, model.noise, datamodule.split]
    assert random_generators([], None, None) == []


class _Mixup:
    """A `collate_fn` object that mixes samples with a generator of its own."""

    def __init__(self) -> None:
        self.mixing = torch.Generator().manual_seed(9)

    def __call__(self, samples):
        return torch.stack([s[0] for s in samples]) * torch.rand(1, generator=self.mixing)


def test_the_generators_of_a_stack_dataset_given_by_name_and_of_a_collate_fn_object_are_found():
    """A `StackDataset` given its datasets by name, and a `collate_fn` object holding its own generator.

    Found trying the package as a new user: `StackDataset(x=...)` keeps its datasets in a dict, and mixup's own
    generator in a `collate_fn` object was not looked for: both were left advanced by the range test.
    """
    inner = _Jittered(1)
    mixup = _Mixup()
    loader = DataLoader(torch.utils.data.StackDataset(x=inner, y=TensorDataset(torch.arange(8.0))), collate_fn=mixup)
    found = dataloader_generators([loader])
    assert len(found) == 2
    assert {id(g) for g in found} == {id(inner.jitter), id(mixup.mixing)}


def test_a_sampler_drawing_from_the_operating_system_is_left_alone():
    """`random.SystemRandom` has no state to copy or replay (its `getstate` raises): not taken for a generator."""
    sampler = OwnRandomSampler(8, "python")
    sampler.shuffler = random.SystemRandom()
    loader = DataLoader(TensorDataset(torch.arange(8.0)), sampler=sampler, batch_size=4)
    assert dataloader_generators([loader]) == []


def test_rollback_snapshot_copies_weights_and_optimizer_only():
    """`everything=False` (the divergence guard's rollback) copies weights, buffers and optimizer state only."""
    model = Stateful()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_a_little(model, optimizer)
    snapshot = capture(model, optimizer, everything=False)
    assert not snapshot.grads
    assert not snapshot.metric_states
    assert not snapshot.loose_tensors
    weights = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    momentum = sum(p.numel() for p in model.parameters())
    assert weights * 4 <= snapshot.nbytes() <= (weights + momentum) * 8


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam])
def test_a_snapshot_taken_again_is_written_into_its_own_tensors_and_restores_the_new_moment(optimizer_cls):
    """`recapture` (the guard's refresh) copies into the tensors it holds; a restore brings back the later moment."""
    model, optimizer = _trained(optimizer_cls)
    first = recapture(None, model, optimizer)
    held = [saved for _, saved in first.tensors]
    held_state = [v for s in first.optimizer_state.values() for v in s.values() if torch.is_tensor(v)]
    _train_a_little(model, optimizer)
    optimizer.param_groups[0]["lr"] = 0.05
    before = _everything(model, optimizer)
    again = recapture(first, model, optimizer)
    assert again is first
    assert all(a is b for a, b in zip(held, (saved for _, saved in again.tensors), strict=True))
    again_state = [v for s in again.optimizer_state.values() for v in s.values() if torch.is_tensor(v)]
    assert all(a is b for a, b in zip(held_state, again_state, strict=True))
    _train_a_little(model, optimizer)
    optimizer.param_groups[0]["lr"] = 3.0
    again.restore()
    after = _everything(model, optimizer)
    # `everything=False`: gradients and flags are not the snapshot's business
    after["grads"], before["grads"] = [], []
    _assert_same(before, after)


class CountingSGD(torch.optim.SGD):
    """Keeps its step count as an attribute, as pytorch_optimizer's StableSPAM keeps `total_step` for its warm-up."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.total_step = 0

    def step(self, closure=None):
        self.total_step += 1
        return super().step(closure)


def test_a_snapshot_taken_again_restores_the_optimizers_own_numbers_of_its_moment():
    """Found in a review: `recapture` left an optimizer's attributes as the first capture had read them."""
    model = Stateful()
    optimizer = CountingSGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_a_little(model, optimizer)
    first = recapture(None, model, optimizer)
    _train_a_little(model, optimizer)
    again = recapture(first, model, optimizer)
    assert again is first, "the premise: written into the same tensors"
    _train_a_little(model, optimizer, steps=2)
    again.restore()
    assert optimizer.total_step == 6


def test_a_snapshot_taken_again_after_the_optimizer_changed_shape_is_a_new_one():
    """Optimizer state that grew since (first momentum buffers; a group added and trained): a fresh capture.

    It restores that moment.
    """
    model = Stateful()
    optimizer = torch.optim.SGD(model.net[0].parameters(), lr=0.1, momentum=0.9)
    first = recapture(None, model, optimizer)  # no momentum buffers yet
    _train_a_little(model, optimizer)
    again = recapture(first, model, optimizer)
    assert again is not first
    optimizer.add_param_group({"params": list(model.net[3].parameters()), "lr": 0.01})
    _train_a_little(model, optimizer)
    third = recapture(again, model, optimizer)
    assert third is not again
    before = _everything(model, optimizer)
    _train_a_little(model, optimizer)
    third.restore()
    after = _everything(model, optimizer)
    after["grads"], before["grads"] = [], []
    _assert_same(before, after)


# ------------------------------------------------------------------------------------------------- the sandbox


class Boom(Exception):
    """Raised inside a sandbox."""


class SandboxAtFitStart(Callback):
    """Runs ``body`` in a sandbox at fit start and records the model and RNG before and after."""

    def __init__(self, body) -> None:
        self.body = body
        self.error: BaseException | None = None

    def on_fit_start(self, trainer, pl_module):
        trainer.fit_loop.setup_data()
        optimizer = trainer.optimizers[0]
        self.before = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.rng_before = torch.get_rng_state()
        try:
            with sandbox(trainer, pl_module, optimizer):
                self.body(pl_module, optimizer)
        except BaseException as err:  # noqa: BLE001 - the test looks at what came out
            self.error = err
        self.after = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.rng_after = torch.get_rng_state()
        trainer.should_stop = True


def _scramble(module, optimizer):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("error", [None, Boom(), KeyboardInterrupt()], ids=["normal", "exception", "ctrl-c"])
def test_sandbox_restores_model_and_rng_however_it_ends(tmp_path, error):
    """Normal exit, an exception and Ctrl-C: the model and the global RNG come back; the error propagates."""

    def body(module, optimizer):
        _scramble(module, optimizer)
        if error is not None:
            raise error

    probe = SandboxAtFitStart(body)
    L.Trainer(callbacks=[probe], **trainer_kwargs(tmp_path, max_steps=1)).fit(TinyClassifier())
    assert probe.error is error
    for key in probe.before:
        assert torch.equal(probe.before[key], probe.after[key]), key
    assert torch.equal(probe.rng_before, probe.rng_after)


def test_sandbox_hides_the_steps_from_other_callbacks(tmp_path):
    """Inside the sandbox the trainer has no callbacks; afterwards it has them all again, in order."""
    seen = []
    probe = SandboxAtFitStart(lambda module, optimizer: seen.append(list(module.trainer.callbacks)))
    other = Callback()
    trainer = L.Trainer(callbacks=[probe, other], **trainer_kwargs(tmp_path, max_steps=1))
    trainer.fit(TinyClassifier())
    assert seen == [[]]
    assert trainer.callbacks[:2] == [probe, other]


def test_sandbox_gives_the_logger_connector_its_hook_back(tmp_path):
    """A ``self.log`` inside the block leaves Lightning's logger connector as it found it.

    Found in a review: the range test left it holding "training_step", where a fit starts with None.
    """

    def body(module, optimizer):
        module.trainer._logger_connector._current_fx = "training_step"  # as Lightning's `self.log` does

    seen = []
    probe = SandboxAtFitStart(body)
    peek = type("Peek", (Callback,), {"on_fit_start": lambda self, t, m: seen.append(t._logger_connector._current_fx)})
    trainer = L.Trainer(callbacks=[probe, peek()], **trainer_kwargs(tmp_path, max_steps=1))
    trainer.fit(TinyClassifier())
    assert probe.error is None
    assert seen == [None]


def test_a_restore_keeps_the_param_group_entries_it_is_told_to_keep_and_puts_back_the_rest():
    """The guard's rollback keeps the cycle's entries (its lowered LR, a Tensor LR the same object) as they are now."""
    net = nn.Linear(3, 2)
    lr = torch.tensor(0.1, dtype=torch.float64)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    optimizer.param_groups[0]["step"] = 0  # an entry the optimizer counts in, as pytorch_optimizer's do
    snapshot = capture(net, optimizer, everything=False)
    group = optimizer.param_groups[0]
    lr.fill_(0.025)
    group.update(momentum=0.85, step=7)
    snapshot.restore(frozenset({"lr", "momentum"}))
    assert group["lr"] is lr
    assert float(lr) == 0.025
    assert group["momentum"] == 0.85
    assert group["step"] == 0  # not kept: back
    snapshot.restore()
    assert group["lr"] is lr  # the same Tensor, given the snapshot's value
    assert float(lr) == 0.1
    assert group["momentum"] == 0.9


class _RandomFlip:
    """A random transform that owns its generator, as MONAI's do (`self.R`, a NumPy `RandomState`)."""

    def __init__(self, seed: int) -> None:
        self.R = np.random.RandomState(seed)

    def __call__(self, x):
        return -x if self.R.rand() < 0.5 else x


class _Pipeline:
    """A `Compose` of transforms, kept in a list, one of them wrapped in another."""

    def __init__(self, *transforms) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x


class _Wrapped:
    def __init__(self, inner) -> None:
        self.inner = {"flip": inner}

    def __call__(self, x):
        return self.inner["flip"](x)


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, transform) -> None:
        self.x = torch.arange(8.0)
        self.files = [f"sample{i}.png" for i in range(1000)]  # data, not transforms: a list too long to walk
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(self.x[i])


def test_the_generators_of_a_dataset_s_transform_pipeline_are_found_and_a_pass_over_it_restored():
    """Random transforms owning their generators, a few levels below the dataset, are found; their stream comes back.

    Found in a review: MONAI's random transforms keep a `RandomState` each (`dataset.transform.transforms[i].R`), and
    the run's augmentations after a range test differed from a run given the pick.
    """
    flips = [_RandomFlip(1), _RandomFlip(2)]
    dataset = _Augmented(_Pipeline(flips[0], _Wrapped(flips[1])))
    loader = DataLoader(dataset, batch_size=4)
    found = dataloader_generators([loader])
    assert {id(g) for g in found} == {id(f.R) for f in flips}

    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = [batch.clone() for batch in loader]
    dataset2 = _Augmented(_Pipeline(_RandomFlip(1), _Wrapped(_RandomFlip(2))))
    loader2 = DataLoader(dataset2, batch_size=4)
    snapshot = capture(model, optimizer, generators=dataloader_generators([loader2]))
    assert [b.tolist() for b in loader2] == [b.tolist() for b in first]  # the pass the range test takes
    snapshot.restore()
    assert [b.tolist() for b in loader2] == [b.tolist() for b in first]  # the run's pass: the same draws again


def test_a_metric_used_as_the_loss_is_captured_with_its_graph_and_comes_back_detached():
    """A torchmetrics metric called on the step's prediction holds that step's graph; its state is copied detached.

    Found in a review: `loss = self.mse(pred, y)` left the graph in the metric's `_forward_cache`, and the deep copy
    of it raised at the first trial ("Only Tensors created explicitly by the user (graph leaves) support the deepcopy
    protocol").
    """
    model = nn.Linear(3, 1)
    model.mse = torchmetrics.MeanSquaredError()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8)
    loss = model.mse(model(x).squeeze(1), y)
    assert loss.grad_fn is not None
    total = model.mse.total.clone()
    snapshot = capture(model, optimizer)
    loss.backward()
    optimizer.step()
    model.mse(model(x).squeeze(1), y)
    snapshot.restore()
    assert torch.equal(model.mse.total, total)
    assert model.mse._forward_cache.grad_fn is None
    assert torch.equal(model.mse._forward_cache, loss.detach())


def test_a_hook_whose_handle_the_restore_takes_back_is_removed_and_one_it_gives_back_returns():
    """Hooks move with the handles the module's attributes hold: a restore that drops a handle drops its hook.

    Found in a review: `if self.handle is None: self.handle = layer.register_forward_hook(...)` came back as `None`
    while the hook stayed on the layer: each trial and the run added one more (7 on the layer instead of 1). Tensor
    hooks alike (a gradient halved once per trial).
    """
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.gone = model[1].register_forward_pre_hook(lambda *args: None)
    kept = model.gone
    model.handle = model.grad_handle = None
    snapshot = capture(model, optimizer)
    model.handle = model[0].register_forward_hook(lambda *args: None, with_kwargs=True)
    model.grad_handle = model[0].weight.register_hook(lambda grad: grad * 0.5)
    model.gone.remove()
    model.gone = None
    snapshot.restore()
    assert model.handle is None
    assert model[0]._forward_hooks == {}
    assert model[0]._forward_hooks_with_kwargs == {}
    assert not model[0].weight._backward_hooks
    assert list(model[1]._forward_pre_hooks) == [kept.id]  # its handle is back in `gone`: so is the hook
    kept.remove()  # and the handle still removes it
    assert model[1]._forward_pre_hooks == {}


def test_hooks_whose_handles_the_restore_leaves_where_they_are_stay_registered():
    """A handle kept in a list changed in place (the user's, as the list is) or held by nothing of the module's stays.

    Found in a review of the first version, which removed every hook registered since: a module appending its handle
    to a list lost the hook while the list said it was registered, and FSDP2, which registers its state-dict hooks at
    the first forward (in the range test) and keeps the handles in its own state, lost them, and a checkpoint saved
    after a validation pass raised.
    """
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.handles = []
    snapshot = capture(model, optimizer)
    model.handles.append(model[0].register_forward_hook(lambda *args: None))
    elsewhere = [model[0].register_state_dict_pre_hook(lambda *args: None)]
    snapshot.restore()
    assert list(model[0]._forward_hooks) == [model.handles[0].id]
    assert list(model[0]._state_dict_pre_hooks) == [elsewhere[0].id]


def test_a_submodule_deleted_since_comes_back():
    """A head a module drops after some steps (`del self.aux`) is back after the restore, as its step count is.

    Found in a review: the count came back, the head did not, and the run failed with an `AttributeError`.
    """
    model = nn.Sequential(nn.Linear(2, 2))
    model.aux = nn.Linear(2, 1)
    aux = model.aux
    snapshot = capture(model, torch.optim.SGD(model.parameters(), lr=0.1))
    del model.aux
    snapshot.restore()
    assert model.aux is aux


def test_a_submodule_replaced_under_its_name_comes_back():
    """A head replaced under the same name (re-initialized when the loss blew up) is put back, trained by the optimizer.

    Found in a review: the new head stayed, untrained, while the optimizer's groups got the old head's parameters.
    """
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    head = model[1]
    snapshot = capture(model, optimizer)
    model[1] = nn.Linear(2, 1)
    optimizer.param_groups[0]["params"] = list(model.parameters())
    snapshot.restore()
    assert model[1] is head
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in model.parameters()]


@pytest.mark.parametrize("everything", [True, False], ids=["range-test", "rollback"])
def test_a_plain_tensor_the_optimizer_trains_gets_its_value_back_with_its_state(everything):
    """A learnable temperature kept as a plain tensor (no `nn.Parameter`) that the optimizer trains comes back too.

    Found in a review: the guard's rollback gave its momentum back, not its value, which stayed blown up.
    """
    model = nn.Linear(2, 1)
    log_temp = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([*model.parameters(), log_temp], lr=1.0, momentum=0.9)
    (model(torch.ones(1, 2)).sum() * log_temp.exp()).sum().backward()
    optimizer.step()
    value, momentum = log_temp.detach().clone(), optimizer.state[log_temp]["momentum_buffer"].clone()
    snapshot = capture(model, optimizer, everything=everything)
    for _ in range(3):
        optimizer.zero_grad()
        (model(torch.ones(1, 2)).sum() * log_temp.exp() * 100).sum().backward()
        optimizer.step()
    assert not torch.equal(log_temp, value)
    snapshot.restore()
    assert torch.equal(log_temp, value)
    assert torch.equal(optimizer.state[log_temp]["momentum_buffer"], momentum)
    assert recapture(snapshot, model, optimizer) is snapshot or everything  # the guard's refresh keeps its layout


def test_a_buffer_left_an_inference_tensor_by_validate_is_written_back():
    """A buffer a module rebinds (`self.seen = self.seen + n`), last set under inference mode, is restored.

    Found in a review: after `trainer.validate` before `fit`, the restore wrote into that inference tensor and raised
    "Inplace update to inference tensor outside InferenceMode", for the range test and the guard's rollback alike.
    """
    model = nn.Linear(2, 1)
    with torch.inference_mode():
        model.register_buffer("seen", torch.zeros((), dtype=torch.long) + 4)
    assert model.seen.is_inference()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for everything in (True, False):
        snapshot = capture(model, optimizer, everything=everything)
        with torch.inference_mode():
            model.seen.add_(3)  # in place, as a validation pass under inference mode may
        model.seen = model.seen + 16  # rebound, as training does
        snapshot.restore()
        assert model.seen.item() == 4


class _Noise(nn.Module):
    """A transform written as a module, owning its generator (in an `nn.Sequential`, as torchvision recommends)."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(5)

    def forward(self, x):
        return x + torch.rand((), generator=self.gen)


def _mix(samples, rng):
    return torch.stack([s for s in samples]) * rng.random()


def test_generators_behind_module_pipelines_and_partial_collates_are_found_and_dead_proxies_passed_over():
    """A module pipeline's submodules and a partial's arguments are searched; a dead weak proxy is passed over.

    Found in a review: `nn.Sequential` keeps its transforms in its submodules, `functools.partial` its arguments outside
    its attributes: neither was searched; a dead weak proxy among the dataset's objects raised.
    """
    noise = _Noise()
    dataset = _Augmented(nn.Sequential(noise))

    class Owner:
        pass

    owner = Owner()
    dataset.owner = weakref.proxy(owner)
    del owner
    rng = np.random.default_rng(3)
    loader = DataLoader(dataset, batch_size=4, collate_fn=functools.partial(_mix, rng=rng))
    found = dataloader_generators([loader])
    assert {id(g) for g in found} == {id(noise.gen), id(rng)}


class _SlotsMixup:
    """A mixup `collate_fn` object keeping its generator in `__slots__`: no attribute search sees it."""

    __slots__ = ("generator",)

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(4)

    def __call__(self, samples):
        return torch.stack(list(samples)) * torch.rand((), generator=self.generator)


def test_a_collate_object_s_generator_in_slots_is_found_by_its_name():
    """Found in a review: the search by depth of the first version read `vars()` only, and lost it (found before)."""
    mixup = _SlotsMixup()
    loader = DataLoader(_Augmented(_Pipeline()), batch_size=4, collate_fn=mixup)
    assert [id(g) for g in dataloader_generators([loader])] == [id(mixup.generator)]
