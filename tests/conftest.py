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


# The slowest test files first. Under pytest-xdist (`make test`: --dist loadfile --no-loadscope-reorder) each worker
# takes whole files in this order, so the long ones start at once instead of leaving one worker busy at the end.
SLOW_FILES_FIRST = ("test_scripts.py", "test_distributed.py", "test_remote_code.py", "test_peft.py", "test_benchmarks.py")


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES_FIRST)))  # stable: in-file order is kept
