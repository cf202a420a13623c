"""The stock `Trainer`, with dwatt's model card, depth-weight reports and logs, exact gradient accumulation and
LoRA-aware saving.

What `DWAttTrainer` changes (the first two can be switched off; everything else is `transformers.Trainer`):
- Loss normalisation (`exact_accumulation_loss=True`): the loss of each micro-batch is summed over its labelled
  items (tokens for token classification, examples for sequence classification) and divided by the number of
  labelled items of the whole optimizer step — all accumulation micro-batches and all processes (Trainer's
  `num_items_in_batch`). One step of batch 16 and 4 accumulated steps of batch 4 (or 2 processes of batch 8) then
  give the same loss and gradients even when the micro-batches hold different numbers of labelled tokens. With the
  stock `Trainer` (dwatt models set `accepts_loss_kwargs = False`) each micro-batch's mean is divided by the
  accumulation steps instead: identical for sequence classification with equal micro-batches, a mean of
  per-micro-batch means for token classification. With `label_smoothing_factor` the loss is the smoothed
  cross-entropy of Trainer's label smoother, normalised the same way.
- Depth weights (`log_depth_weights=True`): see `dwatt.callbacks.DepthWeightLoggingCallback`.
- Attention guidance (a model config with `attention_guidance_heads`): `dwatt.callbacks.AttentionGuidanceCallback`
  applies its weight schedule and logs it; the guidance term is part of the loss whichever way the loss is computed
  (the model's own, exact accumulation, label smoothing).
- PEFT: the final save (`save_model()` into `output_dir`, also before `push_to_hub`) writes the merged model (LoRA
  and the other methods that change the encoder's weights), a plain DWAtt checkpoint with its code files, and the
  method's settings (`lora.json`, or `peft.json` for other methods); prompt learning (prefix tuning, prompt tuning,
  P-tuning) cannot be merged, so its final save is the adapter, as with the stock `Trainer`. Checkpoints written
  during training hold the adapter, so `resume_from_checkpoint` works as usual. AdaLoRA's orthogonal
  regularisation is part of the model's own loss only, so with it the model's loss is trained (exact accumulation
  off, said in the log).
- `model_init` (hyperparameter search): all of the above is set up again for every model it makes, so trials may
  differ in head, problem type or PEFT wrapping.
"""

import json
import logging
import os
from pathlib import Path
from typing import Optional

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .callbacks import AttentionGuidanceCallback, DepthWeightLoggingCallback
from .depth_weights import depth_weight_entropy, depth_weight_sums, plot_depth_weights
from .model_card import write_model_card
from .model_utils import MODEL_INPUTS, unwrap_dwatt_model
from .modeling_dwatt import sequence_classification_loss
from .peft_utils import (
    check_checkpoint_fits,
    check_peft_model,
    is_peft_model,
    merged_copy,
    peft_loss_extras,
    peft_summary,
    peft_summary_file,
    unwrapped_copy,
)


logger = logging.getLogger(__name__)


def _rows(dataset, indices: range):
    """The rows `indices` of a `datasets.Dataset` or of a list-like data set."""
    return dataset.select(indices) if isinstance(dataset, datasets.Dataset) else [dataset[i] for i in indices]


class AccumulationExactLoss:
    """`compute_loss_func` for DWAtt classifiers: the model's own loss (same problem types), normalised by the
    labelled items of the whole optimizer step instead of those of each micro-batch.

    `num_items_in_batch` is Trainer's count of labels != -100 over the step's micro-batches (summed over processes);
    without it (evaluation) the loss is the plain mean, exactly the model's. `label_smoothing` (Trainer's
    `label_smoothing_factor`) smooths the cross-entropy as Trainer's `LabelSmoother` does.
    """

    def __init__(self, config, label_smoothing: float = 0.0):
        self.config = config
        self.label_smoothing = label_smoothing

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = (outputs["logits"] if isinstance(outputs, dict) else outputs[0]).float()
        labels = labels.to(logits.device)
        reduction = "mean" if num_items_in_batch is None else "sum"
        if logits.dim() == 3:  # token classification: (B, T, C), labels (B, T) with -100 = ignored
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten().long(), ignore_index=-100,
                                   reduction=reduction, label_smoothing=self.label_smoothing)
        else:
            loss = sequence_classification_loss(logits, labels, self.config, reduction, self.label_smoothing)
        guidance = outputs.get("attention_guidance_loss") if isinstance(outputs, dict) else None
        if num_items_in_batch is not None:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(loss.device, loss.dtype)
            loss = loss / num_items_in_batch
            if guidance is not None:
                # Attention guidance is a mean over this micro-batch: weighted by the micro-batch's share of the
                # step's labelled items, the step sums to the same weighted mean over all of its micro-batches.
                guidance = guidance * (labels.ne(-100).sum().to(loss.dtype) / num_items_in_batch)
        if guidance is not None:
            loss = loss + guidance
        return loss


class DWAttTrainer(Trainer):
    """`Trainer` for DWAtt models (plain or PEFT-wrapped); see the module docstring for what it adds.

    Args:
        card_info: arguments of `dwatt.model_card.write_model_card` besides the folder and the model
            (`task`, `dataset_id`, `dataset_config`, `hyperparameters`, `license`, `command`).
        log_depth_weights: log the head's mean weights over depth and their entropy with every training log.
        depth_weight_probe_size: training examples in the fixed probe batch for input-dependent heads (dwatt).
        exact_accumulation_loss: normalise the loss over the labelled items of the whole optimizer step, label
            smoothing included (ignored when a `compute_loss_func` is given).
    """

    def __init__(
        self,
        *args,
        card_info: Optional[dict] = None,
        log_depth_weights: bool = True,
        depth_weight_probe_size: int = 16,
        exact_accumulation_loss: bool = True,
        **kwargs,
    ):
        # Everything that depends on the model is set up by `_prepare_for_model`: here for `model=`, and again for
        # every model `model_init` makes (in Trainer.__init__ and at each `train()`: each hyperparameter-search trial
        # may build another head, problem type or PEFT wrapping).
        self._own_compute_loss_func = kwargs.get("compute_loss_func")
        self._exact_accumulation_loss = exact_accumulation_loss
        self._log_depth_weights = log_depth_weights
        self._depth_weight_probe_size = depth_weight_probe_size
        self._dwatt_callbacks: list = []
        self._ready_for_models = False  # Trainer.__init__ calls `call_model_init` before our callbacks can be added
        super().__init__(*args, **kwargs)
        # Trainer's label smoother is fixed here too: a search trial's `label_smoothing_factor` changes neither.
        self._label_smoothing = self.args.label_smoothing_factor
        self.card_info = dict(card_info or {})
        self._ready_for_models = True
        self._prepare_for_model(self.model)

    def call_model_init(self, trial=None):
        """Trainer's `call_model_init`, then the loss, checks and callbacks for the new model."""
        model = super().call_model_init(trial)
        if self._ready_for_models:
            self._prepare_for_model(model)
        return model

    def _prepare_for_model(self, model) -> None:
        """Checks `model` and sets up its loss (exact accumulation), depth-weight logging and guidance schedule."""
        check_peft_model(model)
        if is_peft_model(model) and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise NotImplementedError(
                "DWAttTrainer saves LoRA runs as merged models, which is not implemented for FSDP/DeepSpeed-sharded "
                "models: train LoRA with DDP (torchrun / accelerate launch without --fsdp), or use transformers.Trainer."
            )
        config = getattr(unwrap_dwatt_model(model), "config", None)
        is_dwatt = getattr(config, "model_type", None) == "dwatt"
        self.compute_loss_func = self._own_compute_loss_func
        extras = peft_loss_extras(model)
        if self._exact_accumulation_loss and is_dwatt and self.compute_loss_func is None and extras is None:
            # Trainer prefers a compute_loss_func to its label smoother, so this one smooths as the smoother would.
            self.compute_loss_func = AccumulationExactLoss(config, label_smoothing=self._label_smoothing)
        elif extras is not None and self.compute_loss_func is None:  # (a loss function of the user's is theirs)
            if self._label_smoothing:
                raise ValueError(
                    f"label_smoothing_factor={self._label_smoothing} computes the loss from the logits, which would "
                    f"leave out {extras}: the PEFT model adds it to its own loss only. Train it without label smoothing."
                )
            logger.info(f"The model's own loss is trained: it includes {extras}, which a loss computed from the "
                        "logits would leave out (so the loss is not normalised over the whole accumulation step).")
        # (merged_copy(model),) once the final save or the card has merged it: a 1-tuple, since the copy itself is
        # None where the adapter cannot be merged, and that answer is cached too.
        self._merged_for_card = None
        for callback in self._dwatt_callbacks:  # those of the previous model
            self.callback_handler.remove_callback(callback)
        self._dwatt_callbacks = []
        self.depth_weight_callback = None
        if is_dwatt and getattr(config, "attention_guidance_heads", None) is not None:
            self._dwatt_callbacks.append(AttentionGuidanceCallback(trainer_adds_guidance_to_smoothed_loss=True))
        if self._log_depth_weights and is_dwatt:
            probe = self._depth_weight_probe(model, self._depth_weight_probe_size)
            self.depth_weight_callback = DepthWeightLoggingCallback(probe)
            self._dwatt_callbacks.append(self.depth_weight_callback)
        # First in line, so that the reporting integrations (TensorBoard, W&B, …) see the added values too.
        for position, callback in enumerate(self._dwatt_callbacks):
            self.callback_handler.callbacks.insert(position, callback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's `compute_loss`; with label smoothing, which computes the loss from the logits alone, it adds the
        attention guidance term the model returned (the exact-accumulation loss adds it itself).

        Evaluation takes each batch's own mean loss, as in one process. (transformers 5 hands evaluation the labelled
        items counted over all processes and scales the loss by their number: a mean weighted over the batches the
        processes ran side by side, so `eval_loss`, and the best checkpoint by it, changed with the process count.)
        """
        if not model.training:
            num_items_in_batch = None
        smoothing = self.label_smoother is not None and self.compute_loss_func is None and "labels" in inputs
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        guidance = outputs.get("attention_guidance_loss") if smoothing and isinstance(outputs, dict) else None
        if guidance is not None:
            loss = loss + guidance
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------------------------
    # helpers

    def _unwrapped_model(self):
        return self.accelerator.unwrap_model(self.model)

    def _repo_id(self) -> Optional[str]:
        # Trainer sets `hub_model_id` once it has created the Hub repository.
        return getattr(self, "hub_model_id", None) or self.args.hub_model_id

    def _model_inputs_loader(self, dataset, batch_size: int, limit: Optional[int] = None) -> Optional[DataLoader]:
        """A plain (unsharded, unshuffled) loader of model inputs, for measurements on the main process."""
        if dataset is None or (limit is not None and not hasattr(dataset, "__len__")):
            return None
        if limit is not None:
            dataset = _rows(dataset, range(min(limit, len(dataset))))
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="depth weights")
            collator = self.data_collator
        else:
            collator = self._get_collator_with_removed_columns(self.data_collator, description="depth weights")
        # A generator of its own: a DataLoader iterator draws a seed, which must not come from the global RNG (that
        # would change the dropout masks and data order of the training that follows).
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, generator=torch.Generator())

    def _depth_weight_probe(self, model, size: int) -> Optional[dict]:
        """The first `size` training examples as one collated batch of model inputs (for input-dependent heads)."""
        if size <= 0 or unwrap_dwatt_model(model).config.fusion != "dwatt":
            return None
        loader = self._model_inputs_loader(self.train_dataset, batch_size=size, limit=size)
        if loader is None:
            return None
        batch = next(iter(loader), None)
        if batch is None:
            return None
        return {key: value for key, value in batch.items() if key in MODEL_INPUTS and torch.is_tensor(value)}

    def train(self, *args, **kwargs):
        """Trainer's `train`, checking the PEFT model again (an adapter may have been added or activated since)."""
        if self.model is not None and self.model_init is None:
            check_peft_model(self.model)
        return super().train(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Trainer's, once the checkpoint is known to fit the model (`dwatt.peft_utils.check_checkpoint_fits`), and
        with what to do when its weights do not (another head, other adapter target modules)."""
        check_checkpoint_fits(resume_from_checkpoint, self._unwrapped_model())
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        except (KeyError, RuntimeError) as err:
            raise ValueError(
                f"{resume_from_checkpoint} does not fit this run's model ({type(err).__name__}: {err}). Resume with "
                "the options of the run that wrote it (--fusion and the head options; --use_lora and its --lora_* "
                "options), or start a new run."
            ) from err

    def _model_for_card(self) -> tuple[torch.nn.Module, Optional[bool]]:
        """The plain DWAtt model a card describes, and whether the saved folder holds it merged (None: not PEFT):
        the final save's merged copy, or, where the adapter cannot be merged, the model with the adapter's head and
        classifier (copied here, for the card only)."""
        model = self._unwrapped_model()
        if not is_peft_model(model):
            return model, None
        if self._merged_for_card is None:  # no final save yet
            self._merged_for_card = (merged_copy(model),)
        (merged,) = self._merged_for_card
        return (merged, True) if merged is not None else (unwrapped_copy(model), False)

    # ------------------------------------------------------------------------------------------------------------
    # saving

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        """Trainer's `_save`; for a PEFT model, the final save into `output_dir` writes the merged model (the
        adapter where it cannot be merged) and the method's settings."""
        target = output_dir if output_dir is not None else self.args.output_dir
        model = self._unwrapped_model()
        final = os.path.abspath(target) == os.path.abspath(self.args.output_dir) and is_peft_model(model)
        if final and not self.args.should_save:
            return
        merged = merged_copy(model) if final else None  # None too where the adapter cannot be merged
        if final:
            self._merged_for_card = (merged,)  # kept for the card
        if merged is None:
            super()._save(output_dir, state_dict=state_dict)  # FSDP2 models save as their own class too
        else:
            os.makedirs(target, exist_ok=True)
            merged.save_pretrained(target)  # weights, config with auto_map, the two code files
            if self.processing_class is not None:
                self.processing_class.save_pretrained(target)
            torch.save(self.args, os.path.join(target, TRAINING_ARGS_NAME))
        if final:
            summary = peft_summary(model, merged=merged is not None)
            (Path(target) / peft_summary_file(summary)).write_text(json.dumps(summary, indent=2) + "\n")

    def create_model_card(self, revision: str = "main", **kwargs) -> None:
        """Writes README.md into the output folder (main process only)."""
        if not self.is_world_process_zero() or not self.card_info:
            return
        model = self._unwrapped_model()
        info = dict(self.card_info)
        card_model, merged = self._model_for_card()
        if is_peft_model(model):
            info.setdefault("peft", peft_summary(model, merged=merged))
        write_model_card(
            self.args.output_dir,
            card_model,
            repo_id=self._repo_id() if self.args.push_to_hub else None,
            revision=revision,
            **info,
        )

    def save_depth_weights(self, eval_dataset=None, max_batches: Optional[int] = None) -> Optional[list[float]]:
        """Mean weights over depth on `eval_dataset` → depth_weights.json and depth_weights.png in the output folder.

        Measured over the whole set. In a multi-process run every process measures its shard and the sums are added
        up (the main process measuring all of it alone made the others wait at their next collective, past a short
        --ddp_timeout); with FSDP, whose forward passes need every process, each measures all of it. `max_batches`
        counts per process.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            raise ValueError(
                f"save_depth_weights measures one data set, and the eval data is a dict of {len(dataset)} "
                f"({', '.join(map(str, dataset))}): pass one, e.g. save_depth_weights(trainer.eval_dataset[{next(iter(dataset))!r}])."
            )
        sharded = self.args.world_size > 1 and not self.is_fsdp_enabled
        if sharded and dataset is not None:
            if not hasattr(dataset, "__len__"):  # an iterable data set: measured on the main process alone
                sharded = False
            else:
                rank, world = self.args.process_index, self.args.world_size
                dataset = _rows(dataset, range(rank * len(dataset) // world, (rank + 1) * len(dataset) // world))
        if not (sharded or self.is_world_process_zero() or self.is_fsdp_enabled):
            return None
        loader = self._model_inputs_loader(dataset, batch_size=self.args.per_device_eval_batch_size)
        if loader is None:
            return None
        model = self._unwrapped_model()
        sums = depth_weight_sums(model, loader, max_batches=max_batches)
        if sums is None:
            return None
        total, count = sums
        if sharded:
            added = self.accelerator.reduce(torch.cat([total, total.new_tensor([count])]), reduction="sum")
            total, count = added[:-1], float(added[-1])
        if count == 0 or not self.is_world_process_zero():
            return None
        weights = (total / count).cpu().numpy()
        config = unwrap_dwatt_model(model).config
        folder = Path(self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        sources = config.fusion_source_indices
        report = {
            "fusion": config.fusion,
            "source_indices": sources,
            "mean_weights": [round(float(w), 6) for w in weights],
            "entropy": depth_weight_entropy(weights),
        }
        (folder / "depth_weights.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_depth_weights(weights, sources, str(folder / "depth_weights.png"), title=f"{config.fusion}: mean weight per hidden state")
        return report["mean_weights"]

    def push_to_hub(self, commit_message: Optional[str] = "End of training", blocking: bool = True, **kwargs):
        """Uploads the output folder, then pins the card's usage snippet to the commit that holds the code."""
        commit = super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        revision = getattr(commit, "oid", None)
        if revision and self.is_world_process_zero() and self.card_info:
            from huggingface_hub import HfApi

            self.create_model_card(revision=revision)
            HfApi(token=self.args.hub_token).upload_file(
                path_or_fileobj=str(Path(self.args.output_dir) / "README.md"),
                path_in_repo="README.md",
                repo_id=self._repo_id(),
                commit_message="Model card: pin the usage snippet to the commit with the code",
            )
        return commit
