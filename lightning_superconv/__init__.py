"""Super-convergence for PyTorch Lightning.

``SuperConvergence`` runs Leslie Smith's LR range test at fit start, reads where the loss rises back, picks the
one-cycle maximum LR below it by short trial cycles, restores everything, and installs a ``OneCycleLR`` sized to the
run. ``WeightDecayBalancer`` sets the weight decay for the LR schedule that will actually run.
"""

from lightning_superconv import _lightning_log  # first: it reads how the user's imports left Lightning's logger
from lightning_superconv.__about__ import __version__
from lightning_superconv.find import find_max_lr
from lightning_superconv.guard import DivergenceError
from lightning_superconv.result import RangeTestResult
from lightning_superconv.superconvergence import SuperConvergence
from lightning_superconv.weight_decay_balancer import WeightDecayBalancer

_lightning_log.keep_the_users()

__all__ = [
    "DivergenceError",
    "RangeTestResult",
    "SuperConvergence",
    "WeightDecayBalancer",
    "__version__",
    "find_max_lr",
]
