"""GLUE TSV files (the `download_glue_data.py` layout) read into the columns of the Hub dataset `nyu-mll/glue`.

Text columns are named as on the Hub (`sentence`, `sentence1`/`sentence2`, `premise`/`hypothesis`, ...), `label` is a
`ClassLabel` with the Hub's names (a float32 score for STS-B), there is an `idx` column, and unlabelled test rows have
`label == -1`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .text_files import (PathLike, data_error, empty_file_error, is_test_split, looks_like_local_path, read_text,
                         tsv_rows)


_DEFAULT_GLUE_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.tsv",),
    "validation": ("dev.tsv",),
    "test": ("test.tsv",),
}


# The GLUE tasks scored by F1 as well as accuracy: F1 needs to know the positive class (id 1 on the Hub).
F1_GLUE_TASKS = ("mrpc", "qqp")


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task's TSV files map onto the columns of the Hub dataset `nyu-mll/glue`."""

    text_columns: tuple[str, ...]  # Hub column names, in Hub order
    raw_text_columns: tuple[str, ...]  # TSV header names the text columns come from
    raw_label_column: str  # TSV header name of the label
    label_names: tuple[str, ...] | None  # Hub ClassLabel names; None for the STS-B regression score
    folder_name: str  # folder name in the `download_glue_data.py` layout
    headerless_columns: tuple[str, ...] | None = None  # column names for files without a header row (CoLA)
    split_files: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(_DEFAULT_GLUE_SPLIT_FILES))


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        text_columns=("sentence",),
        raw_text_columns=("sentence",),
        raw_label_column="label",
        label_names=("unacceptable", "acceptable"),
        folder_name="CoLA",
        # CoLA train/dev have no header; their test file does ("index", "sentence").
        headerless_columns=("source", "label", "orig_label", "sentence"),
    ),
    "sst2": GlueTask(
        text_columns=("sentence",),
        raw_text_columns=("sentence",),
        raw_label_column="label",
        label_names=("negative", "positive"),
        folder_name="SST-2",
    ),
    "mrpc": GlueTask(
        text_columns=("sentence1", "sentence2"),
        raw_text_columns=("#1 String", "#2 String"),
        raw_label_column="Quality",
        label_names=("not_equivalent", "equivalent"),
        folder_name="MRPC",
        # The Hub builds MRPC's test split from the labelled `msr_paraphrase_test.txt` (same rows and order as the
        # unlabelled GLUE `test.tsv`), so prefer it when present.
        split_files={
            "train": ("train.tsv",),
            "validation": ("dev.tsv",),
            "test": ("msr_paraphrase_test.txt", "test.tsv"),
        },
    ),
    "qqp": GlueTask(
        text_columns=("question1", "question2"),
        raw_text_columns=("question1", "question2"),
        raw_label_column="is_duplicate",
        label_names=("not_duplicate", "duplicate"),
        folder_name="QQP",
    ),
    "stsb": GlueTask(
        text_columns=("sentence1", "sentence2"),
        raw_text_columns=("sentence1", "sentence2"),
        raw_label_column="score",
        label_names=None,
        folder_name="STS-B",
    ),
    "mnli": GlueTask(
        text_columns=("premise", "hypothesis"),
        raw_text_columns=("sentence1", "sentence2"),
        raw_label_column="gold_label",
        label_names=("entailment", "neutral", "contradiction"),
        folder_name="MNLI",
        split_files={
            "train": ("train.tsv",),
            "validation_matched": ("dev_matched.tsv",),
            "validation_mismatched": ("dev_mismatched.tsv",),
            "test_matched": ("test_matched.tsv",),
            "test_mismatched": ("test_mismatched.tsv",),
        },
    ),
    "qnli": GlueTask(
        text_columns=("question", "sentence"),
        raw_text_columns=("question", "sentence"),
        raw_label_column="label",
        label_names=("entailment", "not_entailment"),
        folder_name="QNLI",
    ),
    "rte": GlueTask(
        text_columns=("sentence1", "sentence2"),
        raw_text_columns=("sentence1", "sentence2"),
        raw_label_column="label",
        label_names=("entailment", "not_entailment"),
        folder_name="RTE",
    ),
    "wnli": GlueTask(
        text_columns=("sentence1", "sentence2"),
        raw_text_columns=("sentence1", "sentence2"),
        raw_label_column="label",
        label_names=("not_entailment", "entailment"),
        folder_name="WNLI",
    ),
}


# Same table as `task_to_keys` in run_glue.py: the (first, second) text column of each task.
GLUE_TASK_TO_KEYS: dict[str, tuple[str, str | None]] = {
    name: (task.text_columns[0], task.text_columns[1] if len(task.text_columns) > 1 else None)
    for name, task in GLUE_TASKS.items()
}


def normalize_glue_task_name(task: str) -> str:
    """Map `SST-2`, `sst-2`, `STS-B`, `CoLA`, ... to the Hub config names (`sst2`, `stsb`, `cola`, ...)."""
    name = task.strip().lower().replace("-", "").replace("_", "")
    if name not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}.")
    return name


def glue_task_or_none(name: str) -> str | None:
    """The Hub config name of the GLUE task `name` names (as normalize_glue_task_name), or None if it names none."""
    try:
        return normalize_glue_task_name(name)
    except ValueError:
        return None


def _read_tsv_rows(path: PathLike, text: str) -> list[tuple[int, list[str]]]:
    """Split a GLUE TSV into (line number, fields) pairs, skipping blank lines.

    Quoting is off (csv.QUOTE_NONE) as GLUE's own files are written: their sentences contain unbalanced double
    quotes, which the default CSV dialect would take as the start of a quoted value, gluing several rows together.
    A file quoted as CSV throughout (the GLUE columns exported with pandas' `to_csv(sep="\t")`) is read with
    quoting (see `tsv_rows`).
    """
    return tsv_rows(path, text)[0]


def _parse_glue_label(value: str, task: GlueTask, path: PathLike, line: int) -> int | float:
    """Turn a raw GLUE label (`1`, `entailment`, `4.750`) into the Hub's value (ClassLabel id or float score)."""
    if task.label_names is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise data_error(
                path, line, f"{task.raw_label_column} {value!r} is not a number", "give a float similarity score"
            )
        return score
    names = task.label_names
    if value in names:
        return names.index(value)
    try:
        label_id = int(value)
    except ValueError:
        label_id = -1
    if not 0 <= label_id < len(names):
        raise data_error(
            path,
            line,
            f"label {value!r} in column {task.raw_label_column!r} is not one of {list(names)} "
            f"or an id 0..{len(names) - 1}",
            f"use one of {list(names)} (or its index) for every row",
        )
    return label_id


def _glue_features(task: GlueTask) -> Features:
    label = Value("float32") if task.label_names is None else ClassLabel(names=list(task.label_names))
    return Features({**{name: Value("string") for name in task.text_columns}, "label": label, "idx": Value("int32")})


def load_glue_tsv(path: PathLike, task: str, *, require_label: bool = True) -> Dataset:
    """Read one GLUE TSV file (classic `download_glue_data.py` layout) into the Hub's `nyu-mll/glue` columns.

    Rows without a label column (unlabelled test files) get `label = -1`, as on the Hub; with `require_label=True` a
    missing label column is an error instead.
    """
    spec = GLUE_TASKS[normalize_glue_task_name(task)]
    text = read_text(path)
    rows = _read_tsv_rows(path, text)
    empty_fix = "the file should hold a header row and one example per line"
    if not rows:
        raise empty_file_error(path, text, "row", empty_fix)

    # CoLA train/dev have no header; every other GLUE file (CoLA test included) starts with one.
    header_line, first = rows[0]
    if spec.headerless_columns is not None and not set(spec.raw_text_columns) <= set(first):
        header, data_rows = list(spec.headerless_columns), rows
    else:
        header, data_rows = first, rows[1:]

    missing = [name for name in spec.raw_text_columns if name not in header]
    has_label = spec.raw_label_column in header
    if require_label and not has_label:
        missing.append(spec.raw_label_column)
    if missing:
        raise data_error(
            path,
            header_line,
            f"missing required column(s) {missing} for GLUE task {task!r}; the header is {header}",
            f"use the GLUE layout for this task (columns {list(spec.raw_text_columns) + [spec.raw_label_column]}), "
            "tab separated, or check that the task name matches the file",
        )
    if not data_rows:
        raise empty_file_error(path, text, "example after the header", empty_fix)

    text_positions = [header.index(name) for name in spec.raw_text_columns]
    label_position = header.index(spec.raw_label_column) if has_label else None
    columns: dict[str, list[Any]] = {name: [] for name in spec.text_columns}
    labels: list[int | float] = []
    for line, fields in data_rows:
        if len(fields) != len(header):
            raise data_error(
                path,
                line,
                f"expected {len(header)} tab-separated fields {header}, found {len(fields)}",
                "separate fields with single tabs and keep tabs and line breaks out of the text",
            )
        for name, position in zip(spec.text_columns, text_positions):
            columns[name].append(fields[position])
        if label_position is None:
            labels.append(-1)
        else:
            labels.append(_parse_glue_label(fields[label_position], spec, path, line))

    columns["label"] = labels
    columns["idx"] = list(range(len(labels)))  # the Hub's idx: position of the row in its file
    return Dataset.from_dict(columns, features=_glue_features(spec))


def glue_task_dir(data_dir: Path, task_name: str | None) -> Path:
    """Accept both `glue/SST-2` and the parent `glue` folder (the $GLUE_DIR convention) when the task is known."""
    if task_name is None or any((data_dir / name).is_file() for name in ("train.tsv", "dev.tsv")):
        return data_dir
    task = glue_task_or_none(task_name)
    if task is None:  # not a GLUE task name (e.g. a config of a generic folder)
        return data_dir
    candidate = data_dir / GLUE_TASKS[task].folder_name
    return candidate if candidate.is_dir() else data_dir


def load_glue_folder(data_dir: PathLike, task: str | None = None) -> DatasetDict:
    """Load a GLUE task folder (train.tsv / dev.tsv / test.tsv) as splits "train" / "validation" / "test".

    The task is taken from the folder name (`SST-2`, `STS-B`, ...) when not given. MNLI gives the Hub's five splits
    (`validation_matched`, ...). Only the files present are loaded; a folder with none of them is an error.
    """
    data_dir = glue_task_dir(Path(data_dir), task)
    if task is None:
        try:
            task = normalize_glue_task_name(data_dir.name)
        except ValueError:
            raise ValueError(
                f"{data_dir}: cannot tell the GLUE task from the folder name; pass the task (e.g. task_name='sst2')."
            ) from None
    spec = GLUE_TASKS[normalize_glue_task_name(task)]

    splits = {}
    for split, candidates in spec.split_files.items():
        path = next((data_dir / name for name in candidates if (data_dir / name).is_file()), None)
        if path is not None:
            splits[split] = load_glue_tsv(path, task, require_label=not is_test_split(split))
    if not splits:
        expected = sorted({name for names in spec.split_files.values() for name in names})
        raise ValueError(f"{data_dir}: no GLUE files found for task {task!r}; expected some of {expected}.")
    return DatasetDict(splits)


def is_glue_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("train.tsv", "dev.tsv", "dev_matched.tsv"))


def glue_task_named_by(dataset_name: str | None, dataset_config_name: str | None = None) -> str | None:
    """The GLUE task that `dataset_name` names by itself (a local GLUE task folder such as `glue/CoLA`, or GLUE on the
    Hub with a configuration), so that a script given no `task_name` still computes that task's metrics; else None."""
    if dataset_name is None:
        return None
    if looks_like_local_path(dataset_name):
        folder = glue_task_dir(Path(dataset_name).expanduser(), dataset_config_name)
        candidates = (dataset_config_name, folder.name) if is_glue_folder(folder) else ()
    else:
        candidates = (dataset_config_name,) if dataset_name in ("glue", "nyu-mll/glue") else ()
    tasks = (glue_task_or_none(candidate) for candidate in candidates if candidate)
    return next((task for task in tasks if task is not None), None)
