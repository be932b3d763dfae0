"""Settings for the whole test session."""

import lightning as L
import pytest
import torch

# The models here are tiny, so a second intra-op thread only adds synchronisation; on a busy machine (a CI runner, a
# benchmark in the background) the spinning threads made every step ten times slower. No result depends on it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same RNG state, so no outcome depends on which tests ran before it."""
    L.seed_everything(0, verbose=False)
