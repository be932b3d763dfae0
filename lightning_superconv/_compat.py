r"""Match the Lightning distribution of the user's ``Trainer``.

Projects import either ``lightning.pytorch`` (the unified package) or the standalone ``pytorch_lightning``. The two
ship separate copies of every class, so an exception, a scheduler config, a logger type or the RNG helpers must come
from the same distribution as the ``Trainer`` they are used with, not merely look alike.

The callbacks themselves derive from :data:`Callback`: the ``Callback`` of *both* distributions where both are
installed, so ``isinstance(callback, Callback)`` holds for either one. Trainers call hooks by name, but
``LightningCLI`` (through jsonargparse) accepts a ``class_path`` under ``trainer.callbacks`` only for a subclass of its
own distribution's ``Callback``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback as _LightningCallback


def _callback_bases() -> tuple[type, ...]:
    try:
        from pytorch_lightning.callbacks import Callback as _StandaloneCallback
    except Exception:  # not installed, or an install too old or broken to import: nothing to match
        return (_LightningCallback,)
    if _StandaloneCallback is _LightningCallback:
        return (_LightningCallback,)
    return (_LightningCallback, _StandaloneCallback)


if TYPE_CHECKING:
    Callback = _LightningCallback
else:
    Callback = type(
        "Callback",
        _callback_bases(),
        {"__module__": __name__, "__doc__": "The ``Callback`` base of every Lightning distribution installed."},
    )


def namespace(obj: Any) -> str:
    """``"pytorch_lightning"`` for a ``Trainer`` or ``LightningModule`` of the standalone distribution.

    Else ``"lightning.pytorch"``. The class hierarchy is searched, so a user's subclass of either is recognised.
    """
    standalone = any(cls.__module__.startswith("pytorch_lightning") for cls in type(obj).__mro__)
    return "pytorch_lightning" if standalone else "lightning.pytorch"


def module(trainer: Any, name: str) -> ModuleType:
    """Import ``name`` (e.g. ``"utilities.types"``) from the user's Lightning distribution."""
    return importlib.import_module(f"{namespace(trainer)}.{name}")


def misconfiguration(trainer: Any, message: str) -> Exception:
    """A ``MisconfigurationException`` of the user's distribution, so their ``except`` clauses catch it."""
    cls = module(trainer, "utilities.exceptions").MisconfigurationException
    return cls(message)


def rank_zero_info(trainer: Any, message: str) -> None:
    """Log on global rank 0 only, with the rank the user's distribution knows."""
    module(trainer, "utilities.rank_zero").rank_zero_info(message)


def rank_zero_warn(trainer: Any, message: str) -> None:
    """Warn on global rank 0 only (``RuntimeWarning``: something surprising happened, not a deprecation)."""
    module(trainer, "utilities.rank_zero").rank_zero_warn(message, category=RuntimeWarning)


def isolate_rng(trainer: Any) -> Any:
    """The user's distribution's ``isolate_rng()`` context: the RNG streams it knows are put back on exit."""
    return module(trainer, "utilities.seed").isolate_rng()


def strategy_class(trainer: Any, name: str) -> type | None:
    """The strategy class ``name`` (e.g. ``"FSDPStrategy"``) of the user's distribution, or None if it has none."""
    return getattr(module(trainer, "strategies"), name, None)
