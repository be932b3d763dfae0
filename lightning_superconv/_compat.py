r"""Match the Lightning distribution of the user's ``Trainer``.

Projects import either ``lightning.pytorch`` (the unified package) or the standalone ``pytorch_lightning``. The two
ship separate copies of every class, so an exception, a scheduler config or a logger type must come from the same
distribution as the ``Trainer`` it is used with, not merely look alike.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


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
