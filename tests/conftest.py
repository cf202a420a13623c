import os
import sys
from pathlib import Path

import pytest
import torch

# The tests import their helpers (tiny_encoders) as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# One intra-op thread: the test models are tiny, and several test processes (scripts, torchrun workers) share the
# machine's cores, where more threads only add contention.
torch.set_num_threads(1)
