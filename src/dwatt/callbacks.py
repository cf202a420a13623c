"""Trainer callbacks: the weights a fusion head puts on each layer, logged while it trains.

`DepthWeightLoggingCallback` adds, to every training log (the dicts with a `loss` that `Trainer` writes every
`logging_steps`), one `depth_weight_<i>` entry per fusion source (i = index into `hidden_states`, 0 = embeddings) and
their entropy `depth_weight_entropy` (nats; log(n) = uniform, 0 = a single layer). They land in
`trainer.state.log_history`, and in the reporting integrations (TensorBoard, W&B, …) that run after the callback:
`DWAttTrainer` puts it first. The stock `Trainer` runs `callbacks=[…]` after its integrations, so insert it in front
instead: `trainer.callback_handler.callbacks.insert(0, DepthWeightLoggingCallback(probe_batch))`.

How the weights are measured:
- `scalar_mix`: `softmax(w)` of the head's parameters, exactly the weights it applies to every token.
- `dwatt`: the weights depend on the input, so they are averaged (over heads and real tokens, or the pooled
  position of a sequence classifier) on a fixed probe batch — the first 16 training examples (`DWAttTrainer`'s
  `depth_weight_probe_size`) — with the model in eval mode and without gradients. A fixed batch makes the numbers
  comparable from log to log; eval mode and the absence of random draws keep training itself unchanged (same
  weights with or without the callback, tested with dropout on).
- other heads have no weights over depth: nothing is logged.

`AttentionGuidanceCallback` drives attention guidance's weight schedule (`attention_guidance_scale`) and logs the
guidance loss.
"""

from typing import Optional

import numpy as np
import torch
from transformers import TrainerCallback

from .depth_weights import WEIGHTED_FUSIONS, depth_weight_entropy, depth_weight_sums
from .model_utils import active_fusion_head, unwrap_dwatt_model

DEPTH_WEIGHT_PREFIX = "depth_weight_"


def current_depth_weights(model: torch.nn.Module, probe_batch: Optional[dict] = None) -> Optional[np.ndarray]:
    """Mean weight per fusion source right now (see the module docstring); None when there is nothing to report."""
    config = unwrap_dwatt_model(model).config
    if config.fusion not in WEIGHTED_FUSIONS:
        return None
    if config.fusion == "scalar_mix":
        logits = active_fusion_head(model).mix_logits.detach()
        if hasattr(logits, "full_tensor"):  # a DTensor shard under FSDP2: gather it (every process calls this)
            logits = logits.full_tensor()
        return logits.float().softmax(dim=0).cpu().numpy()
    if probe_batch is None:
        return None
    # The average of dwatt.depth_weights.mean_depth_weights, on the one probe batch (zeros if it has no real token).
    total, count = depth_weight_sums(model, [probe_batch], progress=False)  # (n,), a number
    return (total / max(count, 1.0)).cpu().numpy()


def depth_weight_logs(weights: np.ndarray, source_indices: list[int]) -> dict[str, float]:
    """`{'depth_weight_0': …, …, 'depth_weight_entropy': …}` for weights over the given hidden-state indices."""
    logs = {f"{DEPTH_WEIGHT_PREFIX}{index}": float(weight) for index, weight in zip(source_indices, weights)}
    logs[f"{DEPTH_WEIGHT_PREFIX}entropy"] = depth_weight_entropy(weights)
    return logs


def add_to_training_log(state, logs: dict, entries: dict) -> None:
    """Adds `entries` to the training log a callback's `on_log` received, and to its copy in the history."""
    logs.update(entries)
    # Trainer.log appended a copy of `logs` to the history just before calling the callbacks.
    if state.log_history and state.log_history[-1].get("step") == state.global_step and "loss" in state.log_history[-1]:
        state.log_history[-1].update(entries)


class DepthWeightLoggingCallback(TrainerCallback):
    """Adds the fusion head's mean weights over depth and their entropy to every training log.

    Args:
        probe_batch: a collated batch (model inputs as tensors) for input-dependent heads (dwatt); `DWAttTrainer`
            sets it from the first training examples. Without it only `scalar_mix` is logged.
    """

    def __init__(self, probe_batch: Optional[dict] = None):
        self.probe_batch = probe_batch

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or model is None or "loss" not in logs:  # only the periodic training logs
            return
        weights = current_depth_weights(model, self.probe_batch)
        if weights is None:
            return
        entries = depth_weight_logs(weights, unwrap_dwatt_model(model).config.fusion_source_indices)
        add_to_training_log(state, logs, entries)


def attention_guidance_scale(step: int, total_steps: int, constant_steps: int) -> float:
    """λ(t) of attention guidance (the authors' schedule): 1 for the first `constant_steps` optimizer steps, then a
    linear decay that reaches 0 at `total_steps`."""
    if step < constant_steps:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - constant_steps))


class AttentionGuidanceCallback(TrainerCallback):
    """Applies the guidance weight schedule of a model whose config sets `attention_guidance_heads`, and logs it.

    Before every optimizer step it sets the model's `attention_guidance_scale` to
    `attention_guidance_scale(global_step, max_steps, config.attention_guidance_constant_steps)`; every training log
    gains `attention_guidance_scale` and `attention_guidance_loss` (the unweighted loss of the last micro-batch).
    `DWAttTrainer` adds this callback by itself; with the stock `Trainer` pass `callbacks=[AttentionGuidanceCallback()]`
    (without it the weight stays `attention_guidance_weight` throughout).
    """

    def __init__(self, trainer_adds_guidance_to_smoothed_loss: bool = False):
        # DWAttTrainer adds the term to a label-smoothed loss; the stock Trainer computes that loss from the logits
        # alone and would drop it.
        self.trainer_adds_guidance_to_smoothed_loss = trainer_adds_guidance_to_smoothed_loss

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        heads = getattr(unwrap_dwatt_model(model).config, "attention_guidance_heads", None) if model is not None else None
        if heads is not None and args.label_smoothing_factor > 0 and not self.trainer_adds_guidance_to_smoothed_loss:
            raise ValueError(
                "label_smoothing_factor > 0 under transformers.Trainer computes the loss from the logits alone, so the "
                "attention guidance term would be dropped from training. Use dwatt.trainer.DWAttTrainer (which adds "
                "it), or set label_smoothing_factor=0."
            )

    def _apply(self, state, model) -> None:
        target = unwrap_dwatt_model(model)
        if getattr(target.config, "attention_guidance_heads", None) is None:
            return
        target.attention_guidance_scale = attention_guidance_scale(
            state.global_step, state.max_steps, target.config.attention_guidance_constant_steps
        )

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._apply(state, model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or model is None or "loss" not in logs:  # only the periodic training logs
            return
        target = unwrap_dwatt_model(model)
        last_loss = getattr(target, "last_attention_guidance_loss", None)  # set by guided training forwards only
        if last_loss is None:
            return
        entries = {
            "attention_guidance_scale": float(target.attention_guidance_scale),
            "attention_guidance_loss": float(last_loss),
        }
        add_to_training_log(state, logs, entries)
