"""Where a benchmark result came from: the machine and software it ran on, the exact command, the commit.

Only torch and transformers are needed here, so that the cost benchmarks (cost.py, guidance_cost.py) run where
`datasets` and the other training extras are not installed (a lent GPU machine's image).
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
import transformers

import dwatt

REPO = Path(__file__).resolve().parents[1]


def machine_info(device: str) -> dict:
    """Where a run ran: enough to tell a GPU result from a CPU smoke run and to reproduce the software."""
    info = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dwatt": dwatt.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def git_commit() -> Optional[str]:
    """The checkout's commit (read only), with '+dirty' when tracked files differ from it; None outside git.
    $DWATT_GIT_COMMIT, when set, is taken instead: for machines that get a copy of the files whose git metadata
    is not that of the files (a remote GPU given the working tree)."""
    return os.environ.get("DWATT_GIT_COMMIT") or _checkout_commit()


@functools.lru_cache(maxsize=None)
def _checkout_commit() -> Optional[str]:
    # Read once per process, before it writes a result: the results files are tracked, so the first row written
    # would otherwise mark every later one '+dirty'.
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def command_line(script: str, argv: Sequence[str]) -> str:
    return shlex.join(["python", f"benchmarks/{script}", *argv])


def provenance(benchmark: str, argv: Sequence[str], device: str) -> dict:
    """The fields every row of a benchmark carries: its name, machine, exact command and commit."""
    return {
        "benchmark": benchmark,
        "machine": machine_info(device),
        "command": command_line(f"{benchmark}.py", argv),
        "git_commit": git_commit(),
    }

