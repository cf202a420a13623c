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
