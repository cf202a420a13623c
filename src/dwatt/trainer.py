"""The stock `Trainer`, with dwatt's model card and depth-weight reports in the output folder."""

import json
from pathlib import Path
from typing import Optional

from transformers import Trainer

from .depth_weights import depth_weight_entropy, mean_depth_weights, plot_depth_weights
from .model_card import write_model_card


class DWAttTrainer(Trainer):
    """`Trainer` whose `create_model_card` writes dwatt's card (Trainer.push_to_hub calls it before uploading).

    Args:
        card_info: arguments of `dwatt.model_card.write_model_card` besides the folder and the model
            (`task`, `dataset_id`, `dataset_config`, `hyperparameters`, `license`, `command`).
    """

    def __init__(self, *args, card_info: Optional[dict] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_info = dict(card_info or {})

    def _unwrapped_model(self):
        return self.accelerator.unwrap_model(self.model)

    def _repo_id(self) -> Optional[str]:
        # Trainer sets `hub_model_id` once it has created the Hub repository.
        return getattr(self, "hub_model_id", None) or self.args.hub_model_id

    def create_model_card(self, revision: str = "main", **kwargs) -> None:
        """Writes README.md into the output folder (main process only)."""
        if not self.is_world_process_zero() or not self.card_info:
            return
        write_model_card(
            self.args.output_dir,
            self._unwrapped_model(),
            repo_id=self._repo_id() if self.args.push_to_hub else None,
            revision=revision,
            **self.card_info,
        )

    def save_depth_weights(self, eval_dataset=None, max_batches: Optional[int] = None) -> Optional[list[float]]:
        """Mean weights over depth on `eval_dataset` → depth_weights.json and depth_weights.png in the output folder."""
        model = self._unwrapped_model()
        weights = mean_depth_weights(model, self.get_eval_dataloader(eval_dataset), max_batches=max_batches)
        if weights is None or not self.is_world_process_zero():
            return None
        folder = Path(self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        sources = model.config.fusion_source_indices
        report = {
            "fusion": model.config.fusion,
            "source_indices": sources,
            "mean_weights": [round(float(w), 6) for w in weights],
            "entropy": depth_weight_entropy(weights),
        }
        (folder / "depth_weights.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_depth_weights(weights, sources, str(folder / "depth_weights.png"), title=f"{model.config.fusion}: mean weight per hidden state")
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
