"""Multi-process training helpers: launch checks for the example scripts, and the own class of an FSDP2 model
(`unsharded_class`, for code that shards the model itself, as tests/fsdp_check.py does).

What was checked on CPU (gloo; torch 2.13, accelerate 1.15, transformers 5.23): DDP through `torchrun` and
`accelerate launch` (tests/test_distributed.py), and FSDP2 (`torch.distributed.fsdp.fully_shard`) on the model
itself (tests/test_fsdp.py). `Trainer(--fsdp …)` cannot be tried on CPU: accelerate turns FSDP on only for GPU-like
distributed types, so on a CPU-only machine the FSDP options are dropped and Trainer trains with DDP (see
`check_distributed_launch`).
"""

import os
import sys
from datetime import timedelta
from typing import Optional

import torch.distributed as dist
from torch import nn
from transformers import TrainingArguments

# The variables of an env:// rendezvous, which torchrun and `accelerate launch` set for every process.
RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def join_cpu_process_group(use_cpu: bool, ddp_timeout: int, ddp_backend: Optional[str]) -> bool:
    """Joins a multi-process CPU launch's gloo group with `--ddp_timeout` before transformers does; True if it did.

    transformers (5.24) hands `ddp_timeout` to accelerate only when training on GPUs: with `--use_cpu` the gloo group
    gets torch's default of 30 minutes, so a process whose partner died or never reaches a collective waits half an
    hour. accelerate does not create a group when one exists, so creating it first — same backend, same env://
    rendezvous — changes nothing but the timeout. Call before `TrainingArguments` is built (it sets up the devices
    in `__post_init__`). Leaves every other case (GPUs, one process, MPI/oneCCL backends) to accelerate.
    """
    use_cpu = use_cpu or os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if not (use_cpu and launched > 1 and all(name in os.environ for name in RENDEZVOUS_VARIABLES)):
        return False
    # accelerate's own choice on CPU: MPI when torch has it and no backend was named, else gloo.
    if ddp_backend not in (None, "gloo") or (ddp_backend is None and dist.is_mpi_available()):
        return False
    if not dist.is_available() or dist.is_initialized():
        return False
    # Said before waiting: with WORLD_SIZE left over in the environment of a plain `python` run, the wait for
    # processes that were never started would otherwise be silent until --ddp_timeout.
    print(
        f"[dwatt] process {os.environ.get('RANK', '?')} of {launched} joins the gloo group at "
        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} and waits up to --ddp_timeout={ddp_timeout}s for the "
        "others (WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT come from the launcher or the environment).",
        file=sys.stderr, flush=True,
    )
    dist.init_process_group(backend="gloo", init_method="env://", timeout=timedelta(seconds=ddp_timeout))
    return True


def check_distributed_launch(training_args: TrainingArguments) -> None:
    """Fails early on multi-process launches that would silently do something else than asked.

    - Several processes but a single-process `TrainingArguments`: on a machine without GPUs, transformers (through
      accelerate) only joins the processes into one gloo group when `--use_cpu` is given. Without it every process
      trains its own copy of the model on all the data and they all write into the same output folder.
    - `--fsdp` on CPU: accelerate enables FSDP only for GPU-like distributed types and drops it on CPU, so the run
      would be plain DDP (or a single process) while the user asked for sharding.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:
        raise ValueError(
            f"This script was launched as {launched} processes (WORLD_SIZE={launched}), but the Trainer set up a "
            f"single-process run on {training_args.device}: each process would train alone and overwrite the same "
            "output folder. On CPU-only machines pass --use_cpu (with accelerate launch too), which makes the "
            "processes train together over gloo."
        )
    if training_args.fsdp and training_args.device.type == "cpu":
        raise ValueError(
            "--fsdp was given for a CPU run: accelerate enables FSDP only on GPUs (and other accelerators) and would "
            "silently train with DDP instead. Drop --fsdp on CPU (DDP keeps a full copy of the model per process)."
        )


def _fsdp2_module_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return None
    return FSDPModule


def unsharded_class(model: nn.Module) -> type:
    """The model's own class: FSDP2's `fully_shard` swaps it for a generated `FSDP<Name>` subclass."""
    fsdp_module = _fsdp2_module_class()
    if fsdp_module is None or not isinstance(model, fsdp_module):
        return type(model)
    return next(cls for cls in type(model).__mro__ if not issubclass(cls, fsdp_module))
