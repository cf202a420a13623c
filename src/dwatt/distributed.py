"""Multi-process training helpers: launch checks for the example scripts, and the own class of an FSDP2 model.

What was checked on CPU (gloo; torch 2.13, accelerate 1.15, transformers 5.23): DDP through `torchrun` and
`accelerate launch` (tests/test_distributed.py), and FSDP2 (`torch.distributed.fsdp.fully_shard`) on the model
itself (tests/test_fsdp.py). `Trainer(--fsdp …)` cannot be tried on CPU: accelerate turns FSDP on only for GPU-like
distributed types, so on a CPU-only machine the FSDP options are dropped and Trainer trains with DDP (see
`check_distributed_launch`).
"""

import os

from torch import nn
from transformers import TrainingArguments


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
