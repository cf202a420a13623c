"""Which layers a fusion head uses: mean weights over depth on real data, as numbers and as a PNG."""

from typing import Iterable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .model_utils import MODEL_INPUTS, eval_mode

# Heads whose output is a weighted mix of the sources (the weights are returned with output_fusion_weights=True).
WEIGHTED_FUSIONS = ("dwatt", "scalar_mix")


@torch.no_grad()
def depth_weight_sums(model: torch.nn.Module, batches: Iterable[dict], max_batches: Optional[int] = None,
                      progress: bool = True) -> Optional[tuple[torch.Tensor, float]]:
    """(Σ weights per source over the real tokens, averaged over heads; the number of those tokens) of `batches`,
    the parts of `mean_depth_weights` that add up over shards of a data set; None for unweighted heads.

    Sequence classifiers count the weights at their pooled position, token classifiers at every real token.
    """
    if model.config.fusion not in WEIGHTED_FUSIONS:
        return None
    device = next(model.parameters()).device
    total, count = torch.zeros(len(model.config.fusion_source_indices), device=device), 0.0
    batches = tqdm(batches, desc="depth weights", leave=False, total=max_batches, disable=not progress)
    with eval_mode(model):
        for step, batch in enumerate(batches):
            if max_batches is not None and step >= max_batches:
                break
            inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
            weights = model(**inputs, output_fusion_weights=True).fusion_weights.float()  # (B, T', H, n)
            if weights.shape[1] > 1:  # every token: the real ones count
                mask = inputs["attention_mask"].float()  # (B, T)
                # PEFT's prompt tuning and P-tuning put P virtual tokens before the inputs: T' = P + T, and the
                # weights at those positions are left out.
                weights = weights[:, weights.shape[1] - mask.shape[1]:]  # (B, T, H, n)
            else:  # one pooled position per sequence
                mask = torch.ones(weights.shape[:2], device=device)  # (B, 1)
            total += (weights.mean(dim=2) * mask.unsqueeze(-1)).sum(dim=(0, 1))  # (n,)
            count += float(mask.sum())
    return total, count


def mean_depth_weights(model: torch.nn.Module, batches: Iterable[dict], max_batches: Optional[int] = None) -> Optional[np.ndarray]:
    """Mean weight of each fusion source over the real tokens (and heads) of `batches`; None for unweighted heads.

    Sequence classifiers report the weights at their pooled position, token classifiers at every real token.
    """
    sums = depth_weight_sums(model, batches, max_batches)
    if sums is None or sums[1] == 0:
        return None
    total, count = sums
    return (total / count).cpu().numpy()


def depth_weight_entropy(weights: np.ndarray) -> float:
    """Entropy (nats) of a distribution over sources: log(n) when uniform, 0 when one layer takes all."""
    p = np.clip(np.asarray(weights, dtype=np.float64), 1e-12, None)
    return float(-(p * np.log(p)).sum())


def plot_depth_weights(weights: np.ndarray, source_indices: list[int], path: str, title: str = "") -> str:
    """A bar chart of the mean weight per hidden state (0 = embeddings), written to `path` as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(4.0, 0.45 * len(weights) + 1.5), 3.0))
    axis.bar([str(i) for i in source_indices], weights, color="#3b6ea8")
    axis.axhline(1.0 / len(weights), color="grey", linestyle="--", linewidth=1, label="uniform")
    axis.set_xlabel("hidden state (0 = embeddings)")
    axis.set_ylabel("mean weight")
    axis.set_title(title or "Mean depth weights")
    axis.legend(frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
