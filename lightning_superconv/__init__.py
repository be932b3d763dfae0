"""Super-convergence for PyTorch Lightning.

``SuperConvergence`` runs Leslie Smith's LR range test at fit start, picks the one-cycle maximum LR where the loss
stops falling, restores everything, and installs a ``OneCycleLR`` sized to the run.
"""

from lightning_superconv.__about__ import __version__
from lightning_superconv.result import RangeTestResult
from lightning_superconv.superconvergence import SuperConvergence

__all__ = ["RangeTestResult", "SuperConvergence", "__version__"]
