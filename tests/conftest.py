"""Settings for the whole test session, and the check that every test dependency is installed."""

import importlib.util

import lightning as L
import pytest
import torch

# The `test` extra of pyproject.toml, by import name. A missing one fails the session, never skips a test: only
# hardware (a CUDA GPU) may skip one (DEVELOPERS.md lists those tests).
TEST_DEPENDENCIES = (
    "pytorch_lightning", "matplotlib", "jsonargparse", "torchmetrics", "torchvision", "prodigyopt", "dadaptation",
    "schedulefree", "yaml", "tensorboard",
)  # fmt: skip


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail at once, naming what is missing, rather than with import errors scattered over the suite."""
    missing = [name for name in TEST_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"test dependencies are missing: {', '.join(missing)}. Install them with "
            '`pip install -e ".[test,examples]"` (on a machine without a network, carry their wheels: DEVELOPERS.md).'
        )


# The models here are tiny, so a second intra-op thread only adds synchronisation; on a busy machine (a CI runner, a
# benchmark in the background) the spinning threads made every step ten times slower. No result depends on it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same RNG state, so no outcome depends on which tests ran before it."""
    L.seed_everything(0, verbose=False)
