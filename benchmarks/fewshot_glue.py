"""Few-shot sentence tasks (GLUE SST-2, MRPC, RTE): fusion heads against the last-layer baseline, same step budget.

The grid: tasks x encoders (default MiniLM) x training sizes (examples drawn uniformly, not class-balanced, with
`dwatt.data.select_few_shot` and the seed) x seeds x heads (default last, scalar_mix, concat, dwatt). The rules are
those of fewshot_ner.py (shared in fewshot_common.py): per size the same step budget, encoder and head learning rates
for every head; dev accuracy (and F1 for MRPC) every K steps; the step with the best dev accuracy is selected.

GLUE's test labels are not public, so dev is both where the step is chosen and where it is reported: the row keeps
the dev metrics at the selected step (`dev`, optimistic) and at the last step (`final_dev`, no selection). Where a
labelled test split exists (SST-2 test-labeled.tsv, MRPC msr_paraphrase_test.txt) it is also evaluated at the selected
step (`test`). Sequence classifiers pool the first token ([CLS]), the DWAtt default.

Default step budgets (batch 16): 100 examples -> 200 steps (32 epochs), 1,000 -> 600 steps (~10 epochs).

  python benchmarks/fewshot_glue.py                                  # 3 tasks x 2 sizes x 3 seeds x 4 heads, MiniLM
  python benchmarks/fewshot_glue.py --tasks rte --sizes 100 --seeds 1 --heads last dwatt --steps 20 --eval-every 10 \\
      --max-eval-examples 64 --out benchmarks/results/smoke/fewshot_glue_smoke.jsonl   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from datasets import Dataset, DatasetDict
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, set_seed

from dwatt import DWAttForSequenceClassification
from dwatt.data import GLUE_TASK_TO_KEYS, GLUE_TASKS, load_glue_folder, load_glue_tsv, normalize_glue_task_name, select_few_shot
from dwatt.metrics import make_glue_compute_metrics

import fewshot_common as common

DEFAULT_STEPS = "100:200 1000:600"
DEFAULT_EVAL_EVERY = "100:20 1000:60"
DEFAULT_HEADS = ("last", "scalar_mix", "concat", "dwatt")
# Labelled test files that `load_glue_folder` does not pick up itself (it reads SST-2's unlabelled test.tsv).
LABELLED_TEST_FILES = {"sst2": "test-labeled.tsv"}


def load_task(glue_dir: Path, task: str) -> DatasetDict:
    """train / validation, and test only where it carries labels."""
    folder = glue_dir / GLUE_TASKS[task].folder_name
    splits = load_glue_folder(folder, task)
    extra = LABELLED_TEST_FILES.get(task)
    if extra is not None and (folder / extra).is_file():
        splits["test"] = load_glue_tsv(folder / extra, task)
    if "test" in splits and min(splits["test"]["label"]) < 0:  # unlabelled (RTE): nothing to report on
        del splits["test"]
    return splits


def tokenize_pairs(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, max_length: int) -> Dataset:
    first, second = GLUE_TASK_TO_KEYS[task]

    def encode(batch: dict) -> dict:
        texts = (batch[first],) if second is None else (batch[first], batch[second])
        return tokenizer(*texts, truncation=True, max_length=max_length)

    keep = {"label"}
    return dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep])


class GlueData(common.CachedData):
    """Each task read once; tokenised dev/test per (task, encoder), training subsets per (task, encoder, size, seed)."""

    def __init__(self, glue_dir: Path, tasks: Sequence[str], encoders: dict[str, str], max_length: int,
                 max_eval: Optional[int]):
        self.raw = {task: load_task(glue_dir, task) for task in tasks}
        super().__init__(encoders, max_length, max_eval)

    def _prepare(self, dataset: Dataset, task: str, encoder: str) -> Dataset:
        return common.sort_by_length(tokenize_pairs(dataset, self.tokenizer(encoder), task, self.max_length))

    def _eval_sets(self, task: str, encoder: str) -> tuple[Dataset, Optional[Dataset]]:
        splits = self.raw[task]
        dev = self._prepare(common.subsample(splits["validation"], self.max_eval), task, encoder)
        test = self._prepare(common.subsample(splits["test"], self.max_eval), task, encoder) if "test" in splits else None
        return dev, test

    def _train_set(self, task: str, encoder: str, size: int, seed: int) -> Dataset:
        subset = select_few_shot(self.raw[task]["train"], size, seed)
        return tokenize_pairs(subset, self.tokenizer(encoder), task, self.max_length)

    def num_labels(self, task: str) -> int:
        return len(GLUE_TASKS[task].label_names)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--glue-dir", type=Path, default=common.SHARED_DATA / "glue",
                        help="Folder holding SST-2/, MRPC/, RTE/ in the GLUE TSV layout.")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte"], help="GLUE tasks (SST-2, MRPC, RTE, …).")
    common.add_common_arguments(
        parser, encoders=["minilm"], sizes=[100, 1000], heads=DEFAULT_HEADS, steps=DEFAULT_STEPS,
        eval_every=DEFAULT_EVAL_EVERY, max_seq_length=128, max_eval_flag="max-eval-examples",
        out=common.RESULTS_DIR / "fewshot_glue.jsonl",
    )
    args = parser.parse_args(argv)
    args.tasks = [normalize_glue_task_name(task) for task in args.tasks]
    unsupported = [task for task in args.tasks if GLUE_TASKS[task].label_names is None]
    if unsupported:
        parser.error(f"regression tasks are not part of this benchmark: {unsupported}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    """Runs the grid (or what is left of it); returns the rows written by this call."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup = common.GridSetup.from_args(args, selection_metric="accuracy")
    data = GlueData(args.glue_dir, args.tasks, setup.encoders, args.max_seq_length, args.max_eval)

    def execute(run: common.Run, run_settings: common.TrainSettings) -> dict:
        encoder_path = setup.encoders[run.encoder]
        tokenizer = data.tokenizer(run.encoder)
        dev, test = data.eval_sets(run.task, run.encoder)
        train = data.train_set(run.task, run.encoder, run.size, run.seed)
        set_seed(run.seed)  # the head's initial weights follow the seed
        collator = DataCollatorWithPadding(tokenizer)
        model, chosen = common.from_encoder_pretrained(
            DWAttForSequenceClassification, encoder_path, run.head, run_settings.head_config, train, collator,
            num_labels=data.num_labels(run.task), finetuning_task=run.task,
        )
        result = common.train_and_select(
            model, tokenizer=tokenizer, collator=collator, train_dataset=train,
            dev_dataset=dev, test_dataset=test, compute_metrics=make_glue_compute_metrics(run.task, is_regression=False),
            settings=run_settings, seed=run.seed, device=setup.device, verify_restore=args.verify_restore,
            checkpoint_dir=setup.checkpoint_dir(run, run_settings),
        )
        return {**result, **chosen, "encoder_path": encoder_path}

    runs = common.build_grid(args.tasks, setup.encoders, args.sizes, args.seeds, args.heads)
    return setup.run_grid(runs, execute, "fewshot_glue", argv)


if __name__ == "__main__":
    main()
