"""Added parameters and forward FLOPs per token of each fusion head on a BERT-base-sized and a MiniLM-sized encoder.

Usage: python benchmarks/head_parameters.py [--seq-len 128] > benchmarks/head_parameters.md
Random weights suffice: only shapes matter. FLOP conventions: see dwatt/accounting.py.
"""

import argparse

from transformers import BertConfig

from dwatt import FUSION_HEADS, DWAttConfig, DWAttModel
from dwatt.accounting import cost_summary

ENCODERS = {
    "BERT-base (12 x 768)": BertConfig(),
    "MiniLM-L6 (6 x 384)": BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    print(f"Fusion heads over all hidden states (fusion_layers='all'), default settings, sequence length {args.seq_len}.\n")
    for name, encoder_config in ENCODERS.items():
        rows = [cost_summary(DWAttModel(DWAttConfig(encoder_config=encoder_config, fusion=f)), args.seq_len) for f in FUSION_HEADS]
        first = rows[0]
        print(
            f"### {name}: encoder {first['encoder_parameters'] / 1e6:.1f}M parameters, "
            f"{first['encoder_flops_per_token'] / 1e6:.1f} MFLOPs/token\n"
        )
        print("| fusion | added parameters | % of encoder | FLOPs/token | % of encoder FLOPs |")
        print("|---|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['fusion']} | {row['added_parameters']:,} | {100 * row['added_parameters_fraction']:.2f}% "
                f"| {row['flops_per_token']:,} | {100 * row['flops_fraction']:.2f}% |"
            )
        print()


if __name__ == "__main__":
    main()
