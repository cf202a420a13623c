"""What each fusion head costs next to the stock transformers classifier on the same encoder.

For every (encoder shape, task, sequence length, batch size) it builds the stock `AutoModelFor…Classification` and
one DWAtt model per head on the same random encoder weights, then times them in the same process, interleaved
(stock, head 1, …, stock, head 1, … for several rounds) so that machine noise hits all of them alike:
  - inference: forward latency in eval mode under `torch.no_grad()`;
  - training: one step = forward + backward + AdamW step;
  - inference peak memory: what one no-grad forward needs above the loaded model and its inputs at its peak — on
    CUDA the allocator's peak, on a CPU the peak bytes of live tensors (tensor_memory.py; the process's peak RSS
    is set by building the model, not by the forward, so it cannot tell one head from another).
  - dispatched operators (--ops-only): how many aten operators one no-grad forward and one training step dispatch.
    On a GPU each is a kernel launch plus some microseconds of Python and dispatcher time however small its work,
    so where kernels are short (small batches and sequences) this count, not the FLOPs, sets the time. Counted for
    the code a GPU runs, on any device (DWAtt's training forward takes another path on a CPU).
It reports ratios head / stock, the head's added FLOPs as a fraction of the encoder's (dwatt.accounting), and the
target: overhead (ratio − 1) ≤ max(2%, 1.25 × FLOP fraction) and inference memory ≤ 1.15×. A time ratio is the median
over rounds of the per-round ratios, with their quartiles; a row whose median misses the target while the lower
quartile meets it is marked "within noise" rather than passed or failed.

With `--compile MODE` every model, the stock one included, is timed as `torch.compile(model, mode=MODE)`:
"reduce-overhead" replays CUDA graphs, which takes Python and the dispatcher out of each step, so at small GPU shapes
it shows what the heads cost once the operator count no longer sets the time. Timing only (no memory, no counts).

Usage:
  python benchmarks/cost.py --out benchmarks/results/cost_cpu.json            # the default grid
  python benchmarks/cost.py --encoders minilm --seq-lens 32 128 --batch-sizes 8 --rounds 5
  python benchmarks/cost.py --memory-only --out benchmarks/results/cost_cpu_memory.json   # memory only, no timing
  python benchmarks/cost.py --ops-only --seq-lens 32 --batch-sizes 8 --out benchmarks/results/cost_ops.json
  python benchmarks/cost.py --dwatt-value-path batched ...   # DWAtt's training forward as a GPU runs it, on a CPU
  python benchmarks/cost.py --device cuda --encoders minilm --seq-lens 32 --batch-sizes 8 --compile reduce-overhead \
      --rounds 20 --out benchmarks/results/cost_gpu_compiled.json   # the small shapes under CUDA graphs
"""

import argparse
import contextlib
import gc
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification
from dwatt.accounting import cost_summary
from dwatt.modeling_dwatt import VALUE_PATHS, DepthWiseAttentionFusion
from provenance import git_commit, machine_info
from tensor_memory import PeakTensorMemory

ENCODERS = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
TASKS = {
    "token": (AutoModelForTokenClassification, DWAttForTokenClassification),
    "sequence": (AutoModelForSequenceClassification, DWAttForSequenceClassification),
}
HEADS = ["last", "scalar_mix", "concat", "dwatt", "deeper"]
NUM_LABELS = 9
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def encoder_config(name: str) -> BertConfig:
    return BertConfig(**ENCODERS[name], num_labels=NUM_LABELS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build(task: str, encoder: str, head: str, device: str) -> torch.nn.Module:
    """`head="stock"` gives transformers' own classifier; otherwise the DWAtt model with that fusion head."""
    stock_class, dwatt_class = TASKS[task]
    torch.manual_seed(0)
    if head == "stock":
        model = stock_class.from_config(encoder_config(encoder))
    else:
        model = dwatt_class(DWAttConfig(encoder_config=encoder_config(encoder), fusion=head, num_labels=NUM_LABELS))
    return model.to(device)


def make_batch(batch_size: int, seq_len: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, 30000, (batch_size, seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def make_labels(task: str, batch_size: int, seq_len: int, device: str) -> torch.Tensor:
    """Random labels: (B, T) for token classification, (B,) for sequence classification."""
    shape = (batch_size, seq_len) if task == "token" else (batch_size,)
    return torch.randint(0, NUM_LABELS, shape).to(device)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_inference(model, batch, device, compiled: bool = False) -> float:
    model.eval()
    with torch.no_grad():
        synchronize(device)
        start = time.perf_counter()
        if compiled:
            # A new step for CUDA graphs: this call may reuse the memory of the previous one's outputs (all dropped).
            torch.compiler.cudagraph_mark_step_begin()
        model(**batch)
        synchronize(device)
    return time.perf_counter() - start


def time_training_step(model, batch, labels, optimizer, device, compiled: bool = False) -> float:
    model.train()
    synchronize(device)
    start = time.perf_counter()
    if compiled:
        torch.compiler.cudagraph_mark_step_begin()
    loss = model(**batch, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start


def peak_inference_memory(model: torch.nn.Module, batch: dict, device: str) -> tuple[int, str]:
    """Bytes above what is allocated already (models, inputs) that one no-grad forward needs at its peak, and how
    they were read."""
    model.eval()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            model(**batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "CUDA allocator peak"
    with torch.no_grad(), PeakTensorMemory() as memory:
        model(**batch)
    return memory.peak_bytes, "live tensor bytes"


def dispatched_ops(model: torch.nn.Module, batch: dict, labels: Optional[torch.Tensor] = None,
                   optimizer: Optional[torch.optim.Optimizer] = None) -> int:
    """Operators one no-grad forward dispatches or, with `labels` and `optimizer`, one training step (forward,
    backward, optimizer step): aten operators called from Python or autograd, not those they call in turn. The
    profiler counts them on any device; the same code (and the same optimizer implementation) dispatches the same
    operators on a CPU and a GPU."""

    def run() -> None:
        if labels is None:
            model.eval()
            with torch.no_grad():
                model(**batch)
            return
        model.train()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    run()  # warm-up: lazy initialisation and the optimizer's state are not part of a step
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        run()
    return sum(
        1 for event in profiler.events()
        if event.name.startswith("aten::") and not (event.cpu_parent and event.cpu_parent.name.startswith("aten::"))
    )


def count_heads_ops(rows: list[dict], models: dict, batch_size: int, seq_len: int, device: str) -> None:
    """Adds the dispatched-operator counts of every head and of the stock classifier, and their ratios, to `rows`.
    DWAtt's counts are those of the value path its model is set to (main sets the GPU's, "batched")."""
    task = rows[0]["task"]
    batch = make_batch(batch_size, seq_len, device)
    labels = make_labels(task, batch_size, seq_len, device)
    counts = {}
    for name, model in models.items():
        # foreach=True: the multi-tensor AdamW that torch picks by default for CUDA parameters (on a CPU it would
        # pick the per-parameter loop, a dozen operators for each parameter tensor).
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
        counts[name] = dispatched_ops(model, batch), dispatched_ops(model, batch, labels, optimizer)
    for row in rows:
        (inference, training), (stock_inference, stock_training) = counts[row["fusion"]], counts["stock"]
        row.update(inference_ops=inference, stock_inference_ops=stock_inference, training_ops=training,
                   stock_training_ops=stock_training, inference_ops_ratio=inference / stock_inference,
                   training_ops_ratio=training / stock_training)


def set_dwatt_value_path(model: torch.nn.Module, value_path: str) -> None:
    """Sets how DWAtt's forward runs its value transforms (DepthWiseAttentionFusion.runs_per_source): "batched" is
    what a GPU runs by itself, so counting operators, or timing, with it on a CPU gives the GPU's code."""
    for module in model.modules():
        if isinstance(module, DepthWiseAttentionFusion):
            module.value_path = value_path


def head_rows(task: str, encoder: str, seq_len: int, batch_size: int, models: dict) -> list[dict]:
    """One row per head: shape, added parameters and the head's FLOPs relative to the encoder's."""
    stock_parameters = sum(p.numel() for p in models["stock"].parameters())
    rows = []
    for head in HEADS:
        cost = cost_summary(models[head], seq_len)
        rows.append({
            "task": task, "encoder": encoder, "seq_len": seq_len, "batch_size": batch_size, "fusion": head,
            "added_parameters": sum(p.numel() for p in models[head].parameters()) - stock_parameters,
            "head_parameters": cost["added_parameters"],
            "head_flops_per_token": cost["flops_per_token"],
            "encoder_flops_per_token": cost["encoder_flops_per_token"],
            # The head's FLOPs relative to the encoder's, for the positions where it actually runs.
            "flop_fraction": cost["pooled_flops_fraction"] if task == "sequence" else cost["flops_fraction"],
        })
    return rows


def compile_models(models: dict, mode: str) -> dict:
    """Every model as `torch.compile(model, mode=mode)`, compiled when first called (under `compile_settings`)."""
    torch._dynamo.reset()  # a fresh cache for each shape: no versions of the last shape, no dynamic shapes
    return {name: torch.compile(model, mode=mode) for name, model in models.items()}


def compile_settings(num_models: int):
    """The models all run the same few forward methods, each model (and its train and eval mode) one more compiled
    version of them: the recompile limit is raised to hold them all, and reaching it stops the run instead of
    falling back silently to timing eager code. A context manager: the process's settings are restored after."""
    return torch._dynamo.config.patch(recompile_limit=4 * num_models, fail_on_recompile_limit_hit=True)


def cudagraph_skips() -> int:
    """How many graphs inductor has compiled without CUDA graphs in this process although its mode asked for them
    (reduce-overhead on a CPU, or an operator that CUDA graphs cannot hold): it logs why, and counts them here."""
    return torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]


def time_heads(rows: list[dict], models: dict, batch_size: int, seq_len: int, rounds: int, device: str,
               compile_mode: Optional[str] = None) -> None:
    """Adds the timing ratios head / stock to `rows`, measured interleaved in `rounds` rounds after a warm-up;
    with `compile_mode`, of the models as torch.compile gives them."""
    compiled = compile_mode is not None
    skips_before = cudagraph_skips()
    with compile_settings(len(models)) if compiled else contextlib.nullcontext():
        inference, training = time_rounds(rows[0]["task"], models, batch_size, seq_len, rounds, device, compile_mode)
    # Graphs that inductor compiled without CUDA graphs for this shape (all models), with the reason in the log.
    skips = cudagraph_skips() - skips_before
    for row in rows:
        head = row["fusion"]
        if compiled:
            row["cudagraph_skips"] = skips
        row.update(
            inference_s=statistics.median(inference[head]), stock_inference_s=statistics.median(inference["stock"]),
            training_step_s=statistics.median(training[head]), stock_training_step_s=statistics.median(training["stock"]),
            target_overhead=max(0.02, 1.25 * row["flop_fraction"]),
        )
        for measure, times in (("inference", inference), ("training", training)):
            # Paired by round (the stock model ran moments before in the same round): the median of the per-round
            # ratios is steadier on a shared CPU than the ratio of the two medians, and their spread is the noise.
            ratios = [h / s for h, s in zip(times[head], times["stock"])]
            row[f"{measure}_ratio"] = statistics.median(ratios)
            row[f"{measure}_ratio_quartiles"] = quartiles(ratios)
        row["meets_time_target"] = all(row[f"{m}_ratio"] - 1 <= row["target_overhead"] for m in ("inference", "training"))
        row["time_verdict"] = time_verdict(row)


def time_rounds(task: str, models: dict, batch_size: int, seq_len: int, rounds: int, device: str,
                compile_mode: Optional[str]) -> tuple[dict, dict]:
    """Inference and training-step times of every model, {name: [seconds per round]}, interleaved by round."""
    names = ["stock", *HEADS]
    batch = make_batch(batch_size, seq_len, device)
    labels = make_labels(task, batch_size, seq_len, device)
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5) for name, model in models.items()}
    compiled = compile_mode is not None
    if compiled:
        models = compile_models(models, compile_mode)
    inference = {name: [] for name in names}
    training = {name: [] for name in names}
    # Warm-up: allocator, kernels, AdamW state; compiled, the compilation itself and CUDA graphs' recording, which
    # takes the calls after the first.
    for _ in range(3 if compiled else 1):
        for name in names:
            time_inference(models[name], batch, device, compiled)
            time_training_step(models[name], batch, labels, optimizers[name], device, compiled)
    for index in range(rounds):
        order = round_order(names, index)
        for name in order:  # interleaved
            inference[name].append(time_inference(models[name], batch, device, compiled))
        for name in order:
            training[name].append(time_training_step(models[name], batch, labels, optimizers[name], device, compiled))
    return inference, training


def round_order(names: list[str], index: int) -> list[str]:
    """The order in which round `index` times the models: rotated by one each round, so that over len(names) rounds
    every model is timed once in every position. (With the stock model always first, `last`, which runs the very
    same operators, came out below 1.00x in every GPU row: the position biased the ratios.)"""
    shift = index % len(names)
    return names[shift:] + names[:shift]


def quartiles(values: list[float]) -> list[float]:
    """The lower and upper quartile (inclusive method: within the values' range), or the value itself twice."""
    if len(values) < 2:
        return [values[0], values[0]]
    lower, _, upper = statistics.quantiles(values, n=4, method="inclusive")
    return [lower, upper]


def time_verdict(row: dict) -> str:
    """"yes" where the median ratios meet the time target; "within noise" where a median misses it but the lower
    quartile of that measure's per-round ratios meets it (a quarter of the rounds or more did); else "no"."""
    if row["meets_time_target"]:
        return "yes"
    missed = [m for m in ("inference", "training") if row[f"{m}_ratio"] - 1 > row["target_overhead"]]
    if all(row[f"{m}_ratio_quartiles"][0] - 1 <= row["target_overhead"] for m in missed):
        return "within noise"
    return "no"


def measure(task: str, encoder: str, seq_len: int, batch_size: int, rounds: int, device: str, memory: bool,
            timing: bool = True, ops: bool = False, dwatt_value_path: str = "auto",
            compile_mode: Optional[str] = None) -> list[dict]:
    models = {name: build(task, encoder, name, device) for name in ["stock", *HEADS]}
    set_dwatt_value_path(models["dwatt"], dwatt_value_path)
    rows = head_rows(task, encoder, seq_len, batch_size, models)
    if ops:
        count_heads_ops(rows, models, batch_size, seq_len, device)
    if timing:
        time_heads(rows, models, batch_size, seq_len, rounds, device, compile_mode)
    if memory:
        batch = make_batch(batch_size, seq_len, device)
        stock_memory, method = peak_inference_memory(models["stock"], batch, device)
        for row in rows:
            row["inference_peak_bytes"], _ = peak_inference_memory(models[row["fusion"]], batch, device)
            row.update(stock_inference_peak_bytes=stock_memory, memory_method=method)
            row["memory_ratio"] = row["inference_peak_bytes"] / max(stock_memory, 1)
            row["meets_memory_target"] = row["memory_ratio"] <= 1.15
    del models
    gc.collect()
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--memory-only", action="store_true", help="measure peak memory only, no timing (fast, exact)")
    parser.add_argument("--ops-only", action="store_true",
                        help="count the operators a forward and a training step dispatch, no timing or memory (exact)")
    parser.add_argument("--max-tokens", type=int, default=None, help="skip shapes with batch x length above this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dwatt-value-path", default="auto", choices=VALUE_PATHS,
                        help="how DWAtt's training forward runs its value transforms (auto: per source on a CPU, "
                             "batched elsewhere); --ops-only counts the batched path")
    parser.add_argument("--compile", default=None, choices=COMPILE_MODES, metavar="MODE",
                        help="time every model, the stock one too, as torch.compile(model, mode=MODE) "
                             f"({', '.join(COMPILE_MODES)}); timing only")
    parser.add_argument("--note", default=None,
                        help="what this run is beside the other result files (e.g. which run it pairs with); stored "
                             "as machine.note, which the report prints after the command, and left out of the command")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    # The operator counts are the GPU's (see the module docstring), so they are counted on its path.
    value_path = "batched" if args.ops_only else args.dwatt_value_path
    if args.ops_only and args.dwatt_value_path == "per_source":
        parser.error("--ops-only counts the operators of DWAtt's batched path, the one a GPU runs: "
                     "drop --dwatt-value-path per_source, or time that path without --ops-only")
    if args.compile and (args.memory_only or args.ops_only):
        parser.error("--compile times compiled models; memory and operator counts are measured on the eager ones: "
                     "drop --memory-only / --ops-only, or --compile")
    command = " ".join(["python", "benchmarks/cost.py", *without_note(sys.argv[1:] if argv is None else argv)])

    shapes = [
        (task, encoder, seq_len, batch_size)
        for encoder in args.encoders for task in args.tasks for seq_len in args.seq_lens for batch_size in args.batch_sizes
        if args.max_tokens is None or seq_len * batch_size <= args.max_tokens
    ]
    rows = []
    for task, encoder, seq_len, batch_size in tqdm(shapes, desc="shapes"):
        rows += measure(task, encoder, seq_len, batch_size, args.rounds, args.device,
                        memory=not (args.no_memory or args.ops_only or args.compile),
                        timing=not (args.memory_only or args.ops_only),
                        ops=args.ops_only, dwatt_value_path=value_path, compile_mode=args.compile)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"machine": machine(args.device, args.note), "command": command, "dwatt_value_path": value_path,
                  "timing_order": "rotated", **({"compile": args.compile} if args.compile else {}), "rows": rows}
        args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({len(rows)} rows)")


def without_note(argv: list[str]) -> list[str]:
    """The arguments less `--note TEXT` / `--note=TEXT`: the note is recorded beside the command, not twice."""
    kept, skip_next = [], False
    for argument in argv:
        if skip_next:
            skip_next = False
        elif argument == "--note":
            skip_next = True
        elif not argument.startswith("--note="):
            kept.append(argument)
    return kept


def machine(device: str, note: Optional[str] = None) -> dict:
    """The few-shot rows' machine description, plus the process's peak RSS, the commit and the run's note, if any."""
    described = {**machine_info(device), "max_rss_kib_at_end": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                 "git_commit": git_commit()}
    return {**described, "note": note} if note else described


if __name__ == "__main__":
    main()
