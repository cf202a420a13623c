"""Examples for the analysis command lines (`python -m dwatt.variability`, `python -m dwatt.attention_patterns`):
a sample of a GLUE task folder or a NER folder, tokenized in batches."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from datasets import Dataset, DatasetDict

from .data import NER_SUFFIXES, SPLIT_STEMS, find_split_files, load_ner_data, select_few_shot
from .glue_files import GLUE_TASKS, glue_task_dir, is_glue_folder, load_glue_folder, normalize_glue_task_name
from .text_files import PathLike


def add_example_sampling_arguments(parser, split: str, max_examples: int, ner_folders: bool = False) -> None:
    """The options of the analysis command lines that choose the examples: a GLUE folder (or, with `ner_folders`, a
    NER folder too), a split, a random draw, and how they are tokenized (`glue_examples` or `text_examples`,
    `tokenized_text_batches`)."""
    data_help = "a GLUE task folder (train.tsv / dev.tsv), e.g. glue/SST-2"
    if ner_folders:
        data_help += ", or a NER folder (train / valid / test CoNLL or JSON-lines files), e.g. conll2003"
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--task", default=None, help="GLUE task name, when the folder name does not say it")
    parser.add_argument("--split", default=split, help=f"train or validation (default: {split})")
    parser.add_argument("--max-examples", type=int, default=max_examples,
                        help=f"draw this many examples at random (0: all; default: {max_examples})")
    parser.add_argument("--seed", type=int, default=1, help="seed of that draw (default: 1)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per example, truncated (default: 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: 32)")


def analysis_record(module: str, argv: Sequence[str] | None, args, task_name: str, examples: int) -> dict:
    """The head of an analysis command line's JSON: the command (`python -m <module> …`), the versions it ran with,
    and what `add_example_sampling_arguments` chose."""
    import torch
    import transformers

    from . import __version__

    return {
        "command": f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "dwatt": __version__},
        "data": args.data, "task": task_name, "split": args.split, "examples": examples, "seed": args.seed,
    }


def padding_tokenizer(name_or_path: str):
    """`AutoTokenizer.from_pretrained`, with the end-of-sequence token for padding where the tokenizer has no pad
    token (decoder-only families such as GPT-2; the attention mask hides the padding anyway)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def glue_examples(data_dir: PathLike, task: str | None, split: str, max_examples: int,
                  seed: int) -> tuple[Dataset, str, tuple[str, ...]]:
    """A GLUE folder's `split`, `max_examples` of it drawn with `seed` (0: all), with its task name and text columns
    (for the analysis command lines: `dwatt.variability`, `dwatt.attention_patterns`)."""
    data_dir = Path(data_dir).expanduser()
    task_name = normalize_glue_task_name(task or data_dir.name)
    dataset = _draw_from_split(load_glue_folder(data_dir, task), data_dir, split, max_examples, seed)
    return dataset, task_name, tuple(GLUE_TASKS[task_name].text_columns)


def _draw_from_split(splits: DatasetDict, data_dir: PathLike, split: str, max_examples: int, seed: int) -> Dataset:
    """`max_examples` of `split` drawn with `seed` (0 or more than it holds: all), for the analysis command lines."""
    if split not in splits:
        raise ValueError(f"{data_dir} has no {split!r} split; it has {sorted(splits)}.")
    dataset = splits[split]
    if max_examples and max_examples < len(dataset):
        dataset = select_few_shot(dataset, max_examples, seed)
    return dataset


class TextExamples(NamedTuple):
    """Examples for an analysis that reads text only: which columns hold it and whether they hold words (NER)."""

    dataset: Dataset
    task_name: str
    text_columns: tuple[str, ...]
    is_split_into_words: bool


def text_examples(data_dir: PathLike, task: str | None, split: str, max_examples: int, seed: int) -> TextExamples:
    """A GLUE task folder's or a NER folder's `split`, `max_examples` of it drawn with `seed` (0: all).

    For analyses of the encoder alone (`dwatt.attention_patterns`): the labels are not read, so a task's own training
    sentences can be measured. A NER folder is named by `task` or by the folder (e.g. `conll2003`).
    """
    folder = Path(data_dir).expanduser()
    if is_glue_folder(glue_task_dir(folder, task)):
        return TextExamples(*glue_examples(data_dir, task, split, max_examples, seed), is_split_into_words=False)
    if not folder.is_dir():
        raise ValueError(f"{folder}: data folder not found; give a GLUE task folder or a NER folder.")
    if not find_split_files(folder, SPLIT_STEMS, NER_SUFFIXES):
        raise ValueError(
            f"{folder}: found neither GLUE files (train.tsv, dev.tsv) nor NER files (train / valid / test "
            f"{', '.join(NER_SUFFIXES)}): give a GLUE task folder such as glue/SST-2 or a NER folder such as conll2003."
        )
    dataset = _draw_from_split(load_ner_data(str(folder)), data_dir, split, max_examples, seed)
    return TextExamples(dataset, task or folder.name, ("tokens",), is_split_into_words=True)


def tokenized_text_batches(dataset: Dataset, text_columns: Sequence[str], tokenizer, batch_size: int, max_length: int,
                           **tokenizer_kwargs) -> Iterator[dict]:
    """The examples' texts (one or two columns) tokenized in padded batches of `batch_size`, as tensors."""
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        texts = [rows[column] for column in text_columns]
        yield dict(tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                             **tokenizer_kwargs))
