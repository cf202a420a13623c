"""How large is each fusion head's contribution at step 0, next to the encoder's own last layer?

For each head, on real dev sentences (CoNLL-03 by default) and a freshly initialised head (seeded like the few-shot
runs): the RMS over real tokens of z_L, of what the head adds to it (h − z_L for the residual heads dwatt/concat,
h itself for scalar_mix and deeper, which replace z_L), their ratio, and for DWAtt the query norm |q| and the largest
weight over depth per token (1/n = uniform, 1 = one-hot). One JSON file; report.py quotes it in the ablations.

  python benchmarks/init_scale.py --out benchmarks/results/init_scale_minilm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from transformers import AutoTokenizer, set_seed

from dwatt import DWAttForTokenClassification
from dwatt.configuration_dwatt import RESIDUAL_FUSIONS
from dwatt.data import CONLL2003_NER_LABELS, load_ner_data

import fewshot_common as common
from provenance import provenance

HEADS = ("dwatt", "concat", "scalar_mix", "deeper")


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


@torch.no_grad()
def measure(model: DWAttForTokenClassification, batch: dict) -> dict:
    """RMS of z_L and of the head's term over the real tokens of `batch` (and DWAtt's query/weights)."""
    base = model.dwatt
    states = base.encoder(**batch, output_hidden_states=True)
    last = states.last_hidden_state  # (B, T, d)
    real = batch["attention_mask"].bool()  # (B, T)
    fused = base(**batch).last_hidden_state  # (B, T, d)
    residual = base.config.fusion in RESIDUAL_FUSIONS
    added = fused - last if residual else fused
    result = {"z_last_rms": rms(last[real]), "head_term_rms": rms(added[real]), "head_term_is": "h - z_L" if residual else "h"}
    result["ratio"] = result["head_term_rms"] / result["z_last_rms"]
    if base.config.fusion == "dwatt":
        head = base.fusion_classifier
        query = head.depth_query(last)  # (B, T, d)
        weights = head.depth_weights(last)[real]  # (tokens, H, n)
        result["query_norm_mean"] = query[real].norm(dim=-1).mean().item()
        result["depth_weight_max_mean"] = weights.max(dim=-1).values.mean().item()
        result["uniform_weight"] = 1.0 / weights.shape[-1]
    return result


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="minilm", help="minilm, or LABEL=FOLDER of another encoder.")
    parser.add_argument("--data-dir", type=Path, default=common.SHARED_DATA / "conll2003")
    parser.add_argument("--sentences", type=int, default=256, help="Dev sentences measured (the first ones).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="Seeds of the head's initialisation.")
    parser.add_argument("--out", type=Path, required=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    common.quiet_libraries()
    (label, folder), = common.resolve_encoders([args.encoder], None).items()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dev = load_ner_data(str(args.data_dir), label_list=list(CONLL2003_NER_LABELS))["validation"]
    words = [list(tokens) for tokens in dev.select(range(min(args.sentences, len(dev))))["tokens"]]
    batch = dict(tokenizer(words, is_split_into_words=True, padding=True, truncation=True, max_length=256, return_tensors="pt"))
    batch.pop("token_type_ids", None)

    heads = {}
    for head in HEADS:
        per_seed = []
        for seed in args.seeds:
            set_seed(seed)  # as the few-shot runs do before building the model
            model = DWAttForTokenClassification.from_encoder_pretrained(folder, fusion=head, num_labels=len(CONLL2003_NER_LABELS))
            per_seed.append(measure(model.eval(), batch))
        heads[head] = {key: statistics.mean(r[key] for r in per_seed) if isinstance(value, float) else value
                       for key, value in per_seed[0].items()}
        print(head, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in heads[head].items()}))
    result = {
        "encoder": label, "sentences": len(words), "seeds": args.seeds, "heads": heads,
        **provenance("init_scale", argv, "cpu"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
