"""Data for the text-classification (run_glue-style) and NER (run_ner-style) scripts: a Hub dataset, a local folder or
local files, as a `datasets.DatasetDict` whose columns and feature types match the Hub dataset the official example
scripts use, so that a script treats Hub data and local files the same way.

The file formats are read by their own modules, which this one re-exports for the scripts: `glue_files` (GLUE TSV),
`table_files` (CSV / JSON for text classification), `ner_files` (CoNLL columns, JSON lines); `text_files` holds their
shared reading and errors. Local files are parsed there rather than by `load_dataset("csv"/"json")` so that bad data
fails early, before any tokenisation or training, with a `ValueError` of the form
`"<file>, line <n>: <problem>. Fix: <what to do>"`.

Only `load_text_classification_data` / `load_ner_data` reach for the Hub (through `datasets.load_dataset`), and only
when given a Hub dataset name; nothing touches the network at import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset

from .glue_files import (F1_GLUE_TASKS, GLUE_TASK_TO_KEYS, GLUE_TASKS, glue_task_dir, glue_task_named_by,
                         glue_task_or_none, is_glue_folder, load_glue_folder, load_glue_tsv, normalize_glue_task_name)
from .ner_files import (CONLL2003_NER_LABELS, CONLL_TAG_COLUMNS, get_ner_label_list, load_conll, load_ner_files,
                        load_ner_jsonl, subword_labels)
from .table_files import (check_known_labels, get_classification_label_info, infer_text_columns,
                          load_classification_files)
from .text_files import PathLike, check_data_files, is_test_split, is_unlabelled_test_split, looks_like_local_path

__all__ = [
    "CONLL2003_NER_LABELS",
    "CONLL_TAG_COLUMNS",
    "GLUE_TASKS",
    "GLUE_TASK_TO_KEYS",
    "check_known_labels",
    "get_classification_label_info",
    "get_ner_label_list",
    "glue_task_named_by",
    "infer_text_columns",
    "load_classification_files",
    "load_conll",
    "load_glue_folder",
    "load_glue_tsv",
    "load_ner_data",
    "load_ner_files",
    "load_ner_jsonl",
    "load_text_classification_data",
    "normalize_glue_task_name",
    "select_few_shot",
    "subword_labels",
]


# Hub dataset ids the scripts use, and the revision to load when none is given. `eriktks/conll2003` is a script-based
# dataset, which recent `datasets` versions refuse to run; its parquet conversion branch loads without the script.
_HUB_ALIASES: dict[str, tuple[str, str | None]] = {
    "glue": ("nyu-mll/glue", None),
    "conll2003": ("eriktks/conll2003", "refs/convert/parquet"),
    "eriktks/conll2003": ("eriktks/conll2003", "refs/convert/parquet"),
}


def find_split_files(folder: Path, stems: Mapping[str, Sequence[str]], suffixes: Sequence[str]) -> dict[str, Path]:
    found = {}
    for split, names in stems.items():
        for name in names:
            match = next((folder / f"{name}{s}" for s in suffixes if (folder / f"{name}{s}").is_file()), None)
            if match is not None:
                found[split] = match
                break
    return found


SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}


NER_SUFFIXES = (".txt", ".conll", ".iob", ".iob2", ".jsonl", ".json")


def _load_from_hub(
    name: str, config: str | None, revision: str | None, cache_dir: str | None, token: str | bool | None
) -> DatasetDict:
    name, default_revision = _HUB_ALIASES.get(name, (name, None))
    return load_dataset(name, config, revision=revision or default_revision, cache_dir=cache_dir, token=token)


def _labelled_as_the_glue_task(splits: DatasetDict, task_name: str | None, label_list: Sequence[str] | None
                               ) -> DatasetDict:
    """The labels of CSV/JSON files of a named GLUE task, as the task has them.

    STS-B's similarity scores are a regression target however the files write them (integer scores typed as
    classes would train a 6-way classifier, its Pearson computed on class ids). The classification tasks' labels
    must be classes: decimal numbers would train a regressor, and are refused. Labels that are the task's label
    names get the Hub's label ids: sorted, MRPC's names would give `equivalent` id 0, and GLUE's F1 (positive
    class: id 1) would score the wrong class. Numeric labels are GLUE's ids already and stay as they are. Other
    names are refused for the F1 tasks, where nothing tells which one is the positive class.
    """
    if task_name is None or label_list is not None:
        return splits
    task = glue_task_or_none(task_name)
    if task is None:  # a folder's dataset_config_name that names no GLUE task
        return splits
    names = GLUE_TASKS[task].label_names
    labelled = [split for name, split in splits.items() if "label" in split.column_names
                and not is_unlabelled_test_split(name, split.unique("label"))]
    if not labelled:
        return splits
    dtypes = {split.features["label"].dtype for split in labelled}
    if names is None:  # STS-B
        try:
            return DatasetDict({
                name: split.cast_column("label", Value("float64")) if "label" in split.column_names else split
                for name, split in splits.items()
            })
        except (ValueError, TypeError) as err:  # (pyarrow's ArrowInvalid is a ValueError)
            raise ValueError(f"The {task} labels are similarity scores, and these are not all numbers ({err}).") from None
    if dtypes & {"float32", "float64"}:
        example = next(v for split in labelled for v in split.unique("label") if isinstance(v, float))
        raise ValueError(
            f"{task} is a classification task, but its labels are decimal numbers (such as {example!r}), which would "
            f"train a regressor: give GLUE's class ids (0 to {len(names) - 1}) or the names {list(names)}."
        )
    if dtypes != {"string"}:
        return splits
    found = sorted({value for split in labelled for value in split.unique("label")})
    if set(found) <= set(names):
        return DatasetDict({
            name: split.cast_column("label", ClassLabel(names=list(names))) if "label" in split.column_names else split
            for name, split in splits.items()
        })
    if task in F1_GLUE_TASKS:
        raise ValueError(
            f"The {task} labels {found} are not GLUE's {list(names)}, so the positive class of its F1 is unknown: "
            f"name them {' and '.join(names)}, or use GLUE's ids 0 and 1 ({names[1]} = 1)."
        )
    return splits


def _task_text_columns(task_name: str | None) -> tuple[str, str | None] | None:
    """The text columns of the GLUE task `task_name` names (run_glue.py's task_to_keys), else None."""
    task = None if task_name is None else glue_task_or_none(task_name)
    return None if task is None else GLUE_TASK_TO_KEYS[task]


def load_text_classification_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    *,
    task_name: str | None = None,
    train_file: PathLike | None = None,
    validation_file: PathLike | None = None,
    test_file: PathLike | None = None,
    label_list: Sequence[str] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
) -> DatasetDict:
    """Single entry point for text classification, mirroring run_glue.py's arguments.

    In order of precedence:
    1. `train_file`/`validation_file`/`test_file`: local files. `.tsv` with a `task_name` are GLUE TSVs; otherwise
       CSV/TSV/JSON(-lines) files as in `load_classification_files`.
    2. `dataset_name` naming a local folder: a GLUE task folder (`train.tsv`/`dev.tsv`, or a `$GLUE_DIR` holding
       `SST-2/`, ...; the task comes from `task_name`, `dataset_config_name` or the folder name), else a folder with
       `train`/`validation|valid|dev`/`test` `.csv`/`.tsv`/`.json`/`.jsonl` files (`.tsv` files of a folder that
       names no GLUE task included, read by their header).
    3. `dataset_name` (+ `dataset_config_name`): `datasets.load_dataset` from the Hub, e.g. `nyu-mll/glue`, `sst2`.
    4. `task_name` alone: `load_dataset("nyu-mll/glue", task_name)`, as run_glue.py does.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    if any(path is not None for path in files.values()):
        if task_name is not None and all(Path(p).suffix.lower() == ".tsv" for p in files.values() if p is not None):
            return DatasetDict(
                {
                    split: load_glue_tsv(path, task_name, require_label=not is_test_split(split))
                    for split, path in check_data_files(files).items()
                }
            )
        splits = load_classification_files(files, label_list=label_list, task_text_columns=_task_text_columns(task_name))
        return _labelled_as_the_glue_task(splits, task_name, label_list)

    if dataset_name is not None and looks_like_local_path(dataset_name):
        folder = Path(dataset_name).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{folder}: local dataset folder not found.")
        task = task_name or dataset_config_name
        glue_dir = glue_task_dir(folder, task)
        # GLUE's layout (train.tsv, dev.tsv) with a GLUE task named by the arguments or the folder: the task's columns
        # and labels. Other folders of .tsv files are read as any table, by their header.
        if is_glue_folder(glue_dir) and glue_task_or_none(task or glue_dir.name) is not None:
            return load_glue_folder(glue_dir, task)
        found = find_split_files(folder, SPLIT_STEMS, (".csv", ".tsv", ".jsonl", ".json"))
        if not found:
            raise ValueError(
                f"{folder}: found neither GLUE files (train.tsv, dev.tsv) nor train/validation/test .csv/.json files."
            )
        try:
            splits = load_classification_files(found, label_list=label_list, task_text_columns=_task_text_columns(task))
        except ValueError as err:
            if is_glue_folder(glue_dir):  # GLUE's files read by their header lack a `label` column, say
                raise type(err)(f"{err} (If these are the files of a GLUE task, name it: task_name='sst2', …)") from None
            raise
        return _labelled_as_the_glue_task(splits, task, label_list)

    if dataset_name is not None:
        return _load_from_hub(dataset_name, dataset_config_name, revision, cache_dir, token)
    if task_name is not None:
        return _load_from_hub("nyu-mll/glue", normalize_glue_task_name(task_name), revision, cache_dir, token)
    raise ValueError("Give a GLUE task_name, a dataset_name (Hub id or local folder), or train/validation/test files.")


def load_ner_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    *,
    train_file: PathLike | None = None,
    validation_file: PathLike | None = None,
    test_file: PathLike | None = None,
    label_list: Sequence[str] | None = None,
    token_column: str = "tokens",
    tag_column: str = "ner_tags",
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
) -> DatasetDict:
    """Single entry point for NER, mirroring run_ner.py's arguments.

    Local files give the columns `id`, `token_column` and `tag_column` (see `load_ner_files`); a Hub dataset keeps
    its own columns.

    In order of precedence: local `train_file`/`validation_file`/`test_file` (CoNLL columns, or JSON lines for
    .json/.jsonl); `dataset_name` naming a local folder with `train`/`valid|validation|dev`/`test` files (`.txt`,
    `.conll`, `.iob`, `.iob2`, `.json`, `.jsonl`); else a Hub dataset through `datasets.load_dataset`, e.g.
    `eriktks/conll2003` (loaded from its `refs/convert/parquet` revision unless `revision` is given; `conll2003` is an
    alias) or `wikiann` with a language config.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    if any(path is not None for path in files.values()):
        return load_ner_files(files, label_list=label_list, token_column=token_column, tag_column=tag_column)

    if dataset_name is not None and looks_like_local_path(dataset_name):
        folder = Path(dataset_name).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{folder}: local dataset folder not found.")
        found = find_split_files(folder, SPLIT_STEMS, NER_SUFFIXES)
        if not found:
            raise ValueError(f"{folder}: no train/valid/test files ({', '.join(NER_SUFFIXES)}) found.")
        return load_ner_files(found, label_list=label_list, token_column=token_column, tag_column=tag_column)

    if dataset_name is not None:
        return _load_from_hub(dataset_name, dataset_config_name, revision, cache_dir, token)
    raise ValueError("Give a dataset_name (Hub id or local folder) or train/validation/test files.")


def select_few_shot(dataset: Dataset, n: int, seed: int) -> Dataset:
    """Draw `n` distinct examples uniformly at random, reproducibly for a given `seed`.

    The drawn rows keep their original order. Asking for more examples than the split holds is a `ValueError`
    (silently returning the whole split would make a "16-shot" run quietly mean something else); `n == len(dataset)`
    returns every row.
    """
    if n <= 0:
        raise ValueError(f"Few-shot size must be positive, got n={n}.")
    if n > len(dataset):
        raise ValueError(f"Cannot draw n={n} examples from a split of {len(dataset)}; use n <= {len(dataset)}.")
    # A Generator of its own (not the global numpy state): the draw depends on `seed` alone.
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(dataset), size=n, replace=False))
    return dataset.select(indices.tolist())
