"""Reaching the DWAtt model inside the wrappers training puts around it, and running it for a measurement."""

from contextlib import contextmanager
from typing import Iterator

import torch

# The keyword arguments of a model's forward that a tokenized batch may hold (labels and bookkeeping columns are not).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


def unwrap_dwatt_model(model: torch.nn.Module) -> torch.nn.Module:
    """The DWAtt task model (or DWAttModel) inside DDP / FSDP1 / torch.compile wrappers and PEFT models (FSDP2 keeps
    the model object itself)."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):  # PeftModel
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP
            model = model.module
    return model


def is_modules_to_save_wrapper(module: torch.nn.Module) -> bool:
    """Whether `module` is PEFT's ModulesToSaveWrapper (a frozen original and trained copies), without importing peft."""
    return hasattr(module, "modules_to_save") and hasattr(module, "original_module") and hasattr(module, "active_adapters")


def active_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The module that runs in the forward pass: for PEFT's ModulesToSaveWrapper the active adapter's trained copy
    (its frozen original where adapters are off or the active adapter has no copy), else `module` itself."""
    if not is_modules_to_save_wrapper(module):
        return module
    active = [name for name in module.active_adapters if name in module.modules_to_save]
    if module.disable_adapters or not active:
        return module.original_module
    return module.modules_to_save[active[0]]


def active_fusion_head(model: torch.nn.Module) -> torch.nn.Module:
    """The fusion head that runs in the forward pass (the trained copy when PEFT wraps it in modules_to_save)."""
    return active_copy(unwrap_dwatt_model(model).base_model.fusion_classifier)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode (no dropout) for a measurement, put back in the mode it was in afterwards, also when the
    measurement fails: a model left in eval mode would go on training without dropout."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
