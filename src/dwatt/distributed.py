"""Multi-process training helpers: launch checks for the example scripts, and saving FSDP2-sharded models.

What was checked on CPU (gloo; torch 2.13, accelerate 1.15, transformers 5.23): DDP through `torchrun` and
`accelerate launch` (tests/test_distributed.py), and FSDP2 (`torch.distributed.fsdp.fully_shard`) on the model
itself (tests/test_fsdp.py). `Trainer(--fsdp …)` cannot be tried on CPU: accelerate turns FSDP on only for GPU-like
distributed types, so on a CPU-only machine the FSDP options are dropped and Trainer trains with DDP (see
`check_distributed_launch`).
"""

import contextlib
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


@contextlib.contextmanager
def saving_as_unsharded_class(model: nn.Module):
    """Within the block, an FSDP2-sharded model has its own class again, so that `save_pretrained` copies
    `modeling_dwatt.py` and writes `auto_map` for `DWAttFor…` (transformers looks both up from the object's class,
    which FSDP2 replaced by `FSDPDWAttFor…` defined in torch: the saved folder would hold torch's `_fsdp_*.py` files
    and an `auto_map` entry `_fsdp_init.FSDPDWAttFor…` that cannot be loaded). Only for calls that do not run FSDP
    hooks, such as `save_pretrained(folder, state_dict=full_state_dict)`."""
    original = type(model)
    plain = unsharded_class(model)
    if plain is original:
        yield model
        return
    model.__class__ = plain
    try:
        yield model
    finally:
        model.__class__ = original
