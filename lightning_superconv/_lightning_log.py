r"""Lightning's info lines kept on the logger of the distribution the user imported.

``lightning.pytorch`` and the standalone ``pytorch_lightning`` (and their Fabrics) each set one logger shared in
``lightning_utilities`` when first imported, and the last imported wins: every ``rank_zero_info`` of either goes to it.
This package imports both, so that its callbacks are of either's ``Callback`` class. Without care, a user of one then
had Lightning's lines (and ours) on the other's logger, where ``logging.getLogger("pytorch_lightning").setLevel(...)``
no longer reaches them (found trying the package as a new user). Imported by the package before anything of
Lightning's, it keeps what the user's own import set; where the user has imported neither yet, ``lightning.pytorch``'s
(found in a review: sorted imports put ``lightning_superconv`` before ``pytorch_lightning``, whose later import is
then a no-op, so such a user imports ``pytorch_lightning`` first, as the README says).
"""

from __future__ import annotations

from typing import Any

import lightning_utilities.core.rank_zero as _shared

_DISTRIBUTIONS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def state() -> tuple[Any, Any]:
    """The shared logger and the deprecation category that ``rank_zero_deprecation`` warns with."""
    return _shared.log, getattr(_shared, "rank_zero_deprecation_category", None)


def put(kept: tuple[Any, Any]) -> None:
    """Set back what :func:`state` read."""
    _shared.log = kept[0]
    if kept[1] is not None:
        _shared.rank_zero_deprecation_category = kept[1]


#: as the user's imports left it when this package was imported (a distribution's logger, or none yet)
USERS = state()


def keep_the_users() -> None:
    """After the package's imports: the user's distribution's logger again, if the user had imported one."""
    if USERS[0].name.startswith(_DISTRIBUTIONS):
        put(USERS)
