"""What attention guidance adds to a training step.

For every (encoder shape, task, sequence length, batch size) it builds the DWAtt `last` model on one random encoder
three times and times one training step (forward + backward + AdamW) of each, interleaved over rounds as cost.py does:
  - plain: transformers' default attention (SDPA), no guidance — the reference;
  - eager: the same model with eager attention, which guidance needs (it alone returns attention probabilities);
  - guided: eager attention plus the guidance loss (`attention_guidance_heads`, default 0,1,1,4 in every layer).
It reports eager / plain and guided / plain: the median of the per-round ratios with their quartiles. Evaluation
and inference are not affected (guidance runs in training mode only; a guided model can be switched back to SDPA).

    python benchmarks/guidance_cost.py --out benchmarks/results/guidance_cost_cpu.json
"""

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from dwatt import DWAttConfig

from cost import ENCODERS, NUM_LABELS, TASKS, encoder_config, machine, make_batch, make_labels, quartiles, time_training_step

VARIANTS = ("plain", "eager", "guided")


def build_variant(task: str, encoder: str, variant: str, heads: list[int], device: str) -> torch.nn.Module:
    """The DWAtt `last` model on the same random encoder weights (seed 0), as `variant`."""
    dwatt_class = TASKS[task][1]
    guidance = {"attention_guidance_heads": heads} if variant == "guided" else {}
    torch.manual_seed(0)
    model = dwatt_class(DWAttConfig(encoder_config=encoder_config(encoder), fusion="last", num_labels=NUM_LABELS, **guidance))
    if variant == "eager":
        model.set_attn_implementation("eager")
    return model.to(device)


def measure(task: str, encoder: str, seq_len: int, batch_size: int, rounds: int, heads: list[int], device: str) -> dict:
    """One shape's row: the median training-step time of each variant and the per-round ratios to `plain`."""
    models = {variant: build_variant(task, encoder, variant, heads, device) for variant in VARIANTS}
    optimizers = {variant: torch.optim.AdamW(model.parameters(), lr=1e-5) for variant, model in models.items()}
    batch = make_batch(batch_size, seq_len, device)
    labels = make_labels(task, batch_size, seq_len, device)
    times = {variant: [] for variant in VARIANTS}
    for variant in VARIANTS:  # warm-up: allocator, kernels, AdamW state
        time_training_step(models[variant], batch, labels, optimizers[variant], device)
    for _ in range(rounds):
        for variant in VARIANTS:  # interleaved, so that machine noise hits all three alike
            times[variant].append(time_training_step(models[variant], batch, labels, optimizers[variant], device))
    row = {"task": task, "encoder": encoder, "seq_len": seq_len, "batch_size": batch_size, "rounds": rounds,
           **{f"{variant}_step_s": statistics.median(times[variant]) for variant in VARIANTS}}
    for variant in ("eager", "guided"):
        ratios = [mine / plain for mine, plain in zip(times[variant], times["plain"])]
        row[f"{variant}_ratio"] = statistics.median(ratios)
        row[f"{variant}_ratio_quartiles"] = quartiles(ratios)
    return row


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["minilm"], choices=list(ENCODERS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--heads", default="0,1,1,4", help="attention_guidance_heads of the guided model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    heads = [int(count) for count in args.heads.split(",")]
    command = " ".join(["python", "benchmarks/guidance_cost.py", *(sys.argv[1:] if argv is None else argv)])
    shapes = [(task, encoder, seq_len, batch_size) for encoder in args.encoders for task in args.tasks
              for seq_len in args.seq_lens for batch_size in args.batch_sizes]
    rows = []
    result = {}
    for task, encoder, seq_len, batch_size in tqdm(shapes, desc="shapes"):
        rows.append(measure(task, encoder, seq_len, batch_size, args.rounds, heads, args.device))
        result = {"machine": machine(args.device), "command": command, "attention_guidance_heads": heads, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({len(rows)} rows)")
    return result


if __name__ == "__main__":
    main()
