"""Hidden-state variability per layer (Xie et al., arXiv 2210.10041): how well each layer already separates the classes.

For layer ℓ, each example's sentence vector is the mean of its non-special tokens' hidden states. With the vectors
grouped by gold class y (C classes), class means μ_y, μ̄ the unweighted mean of the class means,

    Σ_w = (1/C) Σ_y cov_pop(G_y)                 (within-class scatter, population covariance)
    Σ_b = (1/C) Σ_y (μ_y − μ̄)(μ_y − μ̄)ᵀ          (between-class scatter)
    ν(ℓ) = (1/C) · trace(Σ_w · pinv(Σ_b))

Low ν means the classes are already tight and far apart at that layer, so a head could sit there and the layers
above it could be dropped. ν is invariant to rotations, isotropic scaling and shifts of the vectors.

    python -m dwatt.variability --encoder PATH --data ../shared/data/glue/SST-2 --out out/variability

writes `variability.json` (ν per layer, the selected layer, the command) and `variability.png`.
"""

import argparse
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .model_utils import eval_mode


def hidden_state_variability(vectors: torch.Tensor, labels: torch.Tensor) -> float:
    """ν of one layer: `vectors` (N, d) sentence vectors, `labels` (N,) their integer classes (at least two)."""
    vectors = torch.as_tensor(vectors).double()
    labels = torch.as_tensor(labels)
    if labels.is_floating_point():
        raise ValueError(
            "Hidden-state variability needs class labels (integers), got floating-point ones: a regression task "
            "(STS-B, say) has no classes to separate."
        )
    if vectors.dim() != 2 or labels.dim() != 1 or vectors.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Expected vectors (N, d) and labels (N,) for the same N examples, got {tuple(vectors.shape)} and "
            f"{tuple(labels.shape)}."
        )
    classes = torch.unique(labels)
    if len(classes) < 2:
        raise ValueError(
            f"Hidden-state variability compares classes, but the labels hold {len(classes)} class(es): use data with "
            "at least two labelled classes (a regression task has none)."
        )
    class_means, within = [], torch.zeros(vectors.shape[1], vectors.shape[1], dtype=torch.float64)
    for label in classes:
        group = vectors[labels == label]  # (N_y, d)
        mean = group.mean(dim=0)
        centred = group - mean
        within += centred.T @ centred / group.shape[0]  # population covariance of the class
        class_means.append(mean)
    num_classes = len(classes)
    within /= num_classes  # Σ_w, (d, d)
    means = torch.stack(class_means)  # (C, d)
    spread = means - means.mean(dim=0)  # μ_y − μ̄, (C, d)
    between = spread.T @ spread / num_classes  # Σ_b, (d, d), rank ≤ C − 1
    return float(torch.trace(within @ torch.linalg.pinv(between, hermitian=True)) / num_classes)


def layer_variability(vectors_per_layer: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """ν for every layer: `vectors_per_layer` (L + 1, N, d), index 0 the embeddings. Returns (L + 1,)."""
    return np.array([hidden_state_variability(layer, labels) for layer in vectors_per_layer])


def select_layer(variability: Sequence[float], tolerance: float = 0.0) -> int:
    """The lowest layer whose ν is within `tolerance` (relative) of the smallest ν: 0 gives the argmin (the lowest
    layer on a tie); a positive tolerance trades a slightly higher ν for dropping more layers."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
    values = np.asarray(variability, dtype=float)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"Expected one finite ν per layer, got {values.tolist()}.")
    return int(np.flatnonzero(values <= values.min() * (1 + tolerance))[0])


@torch.no_grad()
def sentence_vectors(encoder: torch.nn.Module, batches: Iterable[dict], total: Optional[int] = None) -> torch.Tensor:
    """Mean hidden state of each example's non-special tokens at every layer: (L + 1, N, d), in float32 on the CPU.

    Each batch holds the encoder's inputs (`input_ids`, `attention_mask`, …) and a `special_tokens_mask` (1 where
    the tokenizer added the token); padding is left out through the attention mask. The encoder must return
    `hidden_states` when asked (any transformers encoder, or a DWAtt model).
    """
    device = next(encoder.parameters()).device
    per_batch = []
    with eval_mode(encoder):
        for batch in tqdm(batches, desc="sentence vectors", total=total, leave=False):
            special = batch["special_tokens_mask"].to(device)
            inputs = {key: value.to(device) for key, value in batch.items() if key != "special_tokens_mask"}
            hidden_states = encoder(**inputs, output_hidden_states=True, return_dict=True).hidden_states
            if hidden_states is None:
                raise ValueError(f"{type(encoder).__name__} returned no hidden_states: use an encoder class that does.")
            keep = (inputs["attention_mask"].bool() & ~special.bool()).unsqueeze(-1).float()  # (B, T, 1)
            counts = keep.sum(dim=1).clamp(min=1)  # (B, 1): a sentence of special tokens only averages to zero
            states = torch.stack(hidden_states).float()  # (L + 1, B, T, d)
            per_batch.append(((states * keep).sum(dim=2) / counts).cpu())  # (L + 1, B, d)
    if not per_batch:
        raise ValueError("No examples to compute sentence vectors from.")
    return torch.cat(per_batch, dim=1)


def plot_variability(variability: Sequence[float], selected: int, path: Path, title: str) -> None:
    """ν per layer on a log axis, the selected layer marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(len(variability))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(layers, variability, marker="o")
    axis.scatter([selected], [variability[selected]], s=120, facecolors="none", edgecolors="red", zorder=3,
                 label=f"selected: layer {selected}")
    axis.set_yscale("log")
    axis.set_xticks(layers)
    axis.set_xlabel("layer (0 = embeddings)")
    axis.set_ylabel("variability ν (lower: classes apart)")
    axis.set_title(title, fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from .analysis_data import add_example_sampling_arguments  # datasets is imported only by the command line

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="encoder folder or Hub id (or a DWAtt checkpoint)")
    add_example_sampling_arguments(parser, split="train", max_examples=1000)
    parser.add_argument("--tolerance", type=float, default=0.0, help="see select_layer")
    parser.add_argument("--out", required=True, help="folder for variability.json and variability.png")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, provenance: Optional[dict] = None) -> dict:
    """The command line: ν per layer of an encoder on a GLUE task's examples, as JSON and as a PNG. `provenance`
    (the command, the commit: benchmarks/variability.py gives them) goes into the JSON as well."""
    from transformers import AutoModel

    from .analysis_data import analysis_record, glue_examples, padding_tokenizer, tokenized_text_batches
    from .glue_files import GLUE_TASKS, normalize_glue_task_name

    args = _parse_args(argv)
    task_name = normalize_glue_task_name(args.task or Path(args.data).name)
    if GLUE_TASKS[task_name].label_names is None:  # refused before any data is read
        raise ValueError(f"{task_name} is a regression task: hidden-state variability needs classes. Use a "
                         "classification task (SST-2, MRPC, RTE, CoLA, …).")
    dataset, task_name, text_columns = glue_examples(args.data, args.task, args.split, args.max_examples, args.seed)
    labels = torch.tensor(list(dataset["label"])) if "label" in dataset.column_names else None
    if labels is None or bool((labels < 0).all()):  # GLUE's test files: no column, or -1 throughout
        raise ValueError(f"The {args.split} split of {args.data} has no labels (GLUE's test files have none): "
                         "use --split validation or --split train.")

    tokenizer = padding_tokenizer(args.encoder)
    encoder = AutoModel.from_pretrained(args.encoder)
    batches = tokenized_text_batches(dataset, text_columns, tokenizer, args.batch_size, args.max_length,
                                     return_special_tokens_mask=True)

    total = -(-len(dataset) // args.batch_size)
    vectors = sentence_vectors(encoder, batches, total=total)
    variability = layer_variability(vectors, labels)
    selected = select_layer(variability, args.tolerance)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        **analysis_record("dwatt.variability", argv, args, task_name, len(dataset)),
        "encoder": args.encoder,
        "tolerance": args.tolerance,
        "variability": [float(value) for value in variability],
        "selected_layer": selected,
        **(provenance or {}),
    }
    (out / "variability.json").write_text(json.dumps(result, indent=1) + "\n")
    config = encoder.config
    title = (f"{config.model_type} encoder ({len(variability) - 1} layers, {Path(args.encoder).name}) on {task_name} "
             f"{args.split}, {len(dataset)} examples")
    plot_variability(variability, selected, out / "variability.png", title)
    print(f"ν per layer: {', '.join(f'{value:.3g}' for value in variability)}; selected layer {selected} -> {out}")
    return result


if __name__ == "__main__":
    main()
