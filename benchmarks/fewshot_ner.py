"""Few-shot CoNLL-2003 NER: every fusion head against the last-layer baseline, at the same step budget.

The grid: encoders x training sizes (sentences drawn from train with `dwatt.data.select_few_shot` and the seed) x seeds
x heads (last, deeper, concat, dwatt, scalar_mix). Per training size, every head gets the same number of optimisation
steps (default budget below), the same encoder learning rate and the same head learning rate (fusion head +
classifier); entity-level F1 (seqeval, first sub-word of each word) is measured on the full dev set every K steps; the
step with the best dev F1 is selected and test F1 is measured there. One JSON line per run in --out; runs already
there are skipped (see fewshot_common.py).

Default step budgets (batch 16): 50 sentences -> 200 steps (64 epochs), 200 -> 400 (32 epochs), 1,000 -> 1,000
(16 epochs): long enough for the baseline's dev F1 to flatten at every size, and 10 dev evaluations per run.

  python benchmarks/fewshot_ner.py --encoders minilm                                   # 3 sizes x 3 seeds x 5 heads
  python benchmarks/fewshot_ner.py --encoders mpnet --mpnet-path /data/all-mpnet-base-v2 --sizes 50 1000 \\
      --out benchmarks/results/fewshot_ner_mpnet.jsonl
  python benchmarks/fewshot_ner.py --sizes 50 --seeds 1 --heads last dwatt --steps 30 --eval-every 10 \\
      --max-eval-sentences 200 --out benchmarks/results/smoke/fewshot_ner_smoke.jsonl  # a CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from datasets import Dataset, DatasetDict
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase, set_seed

from dwatt import DWAttForTokenClassification
from dwatt.data import CONLL2003_NER_LABELS, load_ner_data, select_few_shot, subword_labels
from dwatt.metrics import make_ner_compute_metrics

import fewshot_common as common

DEFAULT_STEPS = "50:200 200:400 1000:1000"
DEFAULT_EVAL_EVERY = "50:20 200:40 1000:100"
TASK = "conll2003"


def tokenize_ner(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Word-level tags onto sub-words as run_ner.py does: the first sub-word of a word carries its tag, the rest and
    the special tokens get -100 (ignored by the loss and the metric)."""

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["tokens"], truncation=True, max_length=max_length, is_split_into_words=True)
        encoded["labels"] = [subword_labels(encoded.word_ids(batch_index=i), tags)
                             for i, tags in enumerate(batch["ner_tags"])]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


class NerData(common.CachedData):
    """CoNLL-2003 read once; tokenised dev/test per encoder and training subsets per (encoder, size, seed), cached."""

    def __init__(self, data_dir: Path, encoders: dict[str, str], max_length: int, max_eval: Optional[int]):
        self.raw: DatasetDict = load_ner_data(str(data_dir), label_list=list(CONLL2003_NER_LABELS))
        self.label_list = list(CONLL2003_NER_LABELS)
        super().__init__(encoders, max_length, max_eval)

    def _eval_sets(self, encoder: str) -> tuple[Dataset, Dataset]:
        tokenizer = self.tokenizer(encoder)
        dev, test = (
            common.sort_by_length(tokenize_ner(common.subsample(self.raw[split], self.max_eval), tokenizer, self.max_length))
            for split in ("validation", "test")
        )
        return dev, test

    def _train_set(self, encoder: str, size: int, seed: int) -> Dataset:
        subset = select_few_shot(self.raw["train"], size, seed)
        return tokenize_ner(subset, self.tokenizer(encoder), self.max_length)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data-dir", type=Path, default=common.SHARED_DATA / "conll2003",
                        help="Folder with CoNLL-2003 train.txt / valid.txt / test.txt.")
    common.add_common_arguments(
        parser, encoders=["minilm"], sizes=[50, 200, 1000], heads=common.ALL_HEADS, steps=DEFAULT_STEPS,
        eval_every=DEFAULT_EVAL_EVERY, max_seq_length=256, max_eval_flag="max-eval-sentences",
        out=common.RESULTS_DIR / "fewshot_ner.jsonl",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    """Runs the grid (or what is left of it); returns the rows written by this call."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup = common.GridSetup.from_args(args, selection_metric="f1")
    data = NerData(args.data_dir, setup.encoders, args.max_seq_length, args.max_eval)
    compute_metrics = make_ner_compute_metrics(data.label_list)
    id2label = dict(enumerate(data.label_list))

    def execute(run: common.Run, run_settings: common.TrainSettings) -> dict:
        encoder_path = setup.encoders[run.encoder]
        tokenizer = data.tokenizer(run.encoder)
        dev, test = data.eval_sets(run.encoder)
        train = data.train_set(run.encoder, run.size, run.seed)
        set_seed(run.seed)  # the head's initial weights follow the seed
        collator = DataCollatorForTokenClassification(tokenizer)
        model, chosen = common.from_encoder_pretrained(
            DWAttForTokenClassification, encoder_path, run.head, run_settings.head_config, train, collator,
            id2label=id2label, label2id={v: k for k, v in id2label.items()},
        )
        result = common.train_and_select(
            model, tokenizer=tokenizer, collator=collator,
            train_dataset=train, dev_dataset=dev, test_dataset=test, compute_metrics=compute_metrics,
            settings=run_settings, seed=run.seed, device=setup.device, verify_restore=args.verify_restore,
            checkpoint_dir=setup.checkpoint_dir(run, run_settings),
        )
        return {**result, **chosen, "encoder_path": encoder_path}

    runs = common.build_grid([TASK], setup.encoders, args.sizes, args.seeds, args.heads)
    return setup.run_grid(runs, execute, "fewshot_ner", argv)


if __name__ == "__main__":
    main()
