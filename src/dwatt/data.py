"""Offline data loading for the text-classification (run_glue-style) and NER (run_ner-style) scripts.

Every loader returns a `datasets.DatasetDict` whose column names and feature types match the Hub dataset that the
official example scripts use, so a script can treat Hub data and local files the same way:

- GLUE (`nyu-mll/glue`): text columns named as on the Hub (`sentence`, `sentence1`/`sentence2`, `premise`/
  `hypothesis`, ...), `label` as a `ClassLabel` with the Hub's names (a float32 score for STS-B), an `idx` column, and
  `label == -1` for unlabelled test rows.
- NER (`eriktks/conll2003`, `wikiann`): `id`, `tokens` (list of str) and `ner_tags` as a list of `ClassLabel` ids, so
  the label list is always `dataset.features["ner_tags"].feature.names` (see `get_ner_label_list`).

Local files are parsed here rather than by `load_dataset("csv"/"json")` so that bad data fails early, before any
tokenisation or training, with a `ValueError` of the form `"<file>, line <n>: <problem>. Fix: <what to do>"`.

Only `load_text_classification_data` / `load_ner_data` reach for the Hub (through `datasets.load_dataset`), and only
when given a Hub dataset name; nothing touches the network at import time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_dataset

from .metrics import F1_GLUE_TASKS


PathLike = Union[str, os.PathLike]

__all__ = [
    "CONLL2003_NER_LABELS",
    "GLUE_TASKS",
    "GLUE_TASK_TO_KEYS",
    "get_classification_label_info",
    "get_ner_label_list",
    "infer_text_columns",
    "load_classification_file",
    "load_classification_files",
    "load_conll",
    "load_glue_folder",
    "load_glue_tsv",
    "load_ner_file",
    "load_ner_files",
    "load_ner_jsonl",
    "load_ner_data",
    "load_text_classification_data",
    "normalize_glue_task_name",
    "select_few_shot",
]


# ---------------------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------------------

# Label order of the Hub `conll2003` dataset (`ner_tags` ClassLabel). Pass it as `label_list` to get the same ids as
# the Hub when loading the CoNLL-2003 text files.
CONLL2003_NER_LABELS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")

# Hub dataset ids the scripts use, and the revision to load when none is given. `eriktks/conll2003` is a script-based
# dataset, which recent `datasets` versions refuse to run; its parquet conversion branch loads without the script.
_HUB_ALIASES: dict[str, tuple[str, str | None]] = {
    "glue": ("nyu-mll/glue", None),
    "conll2003": ("eriktks/conll2003", "refs/convert/parquet"),
    "eriktks/conll2003": ("eriktks/conll2003", "refs/convert/parquet"),
}

_DEFAULT_GLUE_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.tsv",),
    "validation": ("dev.tsv",),
    "test": ("test.tsv",),
}


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


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers: errors, reading text, splits
# ---------------------------------------------------------------------------------------------------------------------


def _data_error(path: PathLike, line: int, problem: str, fix: str) -> ValueError:
    """Build the one error format used for bad data: file, 1-based line, problem, fix."""
    return ValueError(f"{os.fspath(path)}, line {line}: {problem}. Fix: {fix}")


def _read_text(path: PathLike) -> str:
    """Read a whole UTF-8 file, dropping a leading byte-order mark (MRPC files and Excel CSVs carry one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise _data_error(path, line, f"not valid UTF-8 ({err.reason})", "re-encode the file as UTF-8") from None


def _count_lines(text: str) -> int:
    return len(io.StringIO(text, newline=None).readlines())


def _empty_file_error(path: PathLike, text: str, what: str, fix: str) -> ValueError:
    # Point at the line just past the end: that is where an example was expected and none came.
    return _data_error(path, _count_lines(text) + 1, f"end of file reached without any {what}", fix)


def _is_test_split(split: str) -> bool:
    # "test", "test_matched", "test_mismatched": splits whose labels may legitimately be absent.
    return split.startswith("test")


def _check_data_files(data_files: Mapping[str, PathLike | None]) -> dict[str, Path]:
    files = {split: Path(path) for split, path in data_files.items() if path is not None}
    if not files:
        raise ValueError("No data files given: pass at least one of train_file / validation_file / test_file.")
    return files


# ---------------------------------------------------------------------------------------------------------------------
# GLUE TSV files
# ---------------------------------------------------------------------------------------------------------------------


def normalize_glue_task_name(task: str) -> str:
    """Map `SST-2`, `sst-2`, `STS-B`, `CoLA`, ... to the Hub config names (`sst2`, `stsb`, `cola`, ...)."""
    name = task.strip().lower().replace("-", "").replace("_", "")
    if name not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}.")
    return name


def _read_tsv_rows(path: PathLike, text: str) -> list[tuple[int, list[str]]]:
    """Split a GLUE TSV into (line number, fields) pairs, skipping blank lines.

    Quoting is off (csv.QUOTE_NONE): GLUE sentences contain unbalanced double quotes, which the default CSV dialect
    would treat as the start of a quoted field and glue several rows together.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = []
    try:
        for fields in reader:
            if fields:
                rows.append((reader.line_num, fields))
    except csv.Error as err:
        raise _data_error(path, reader.line_num, f"unreadable TSV row ({err})", "check the row for stray characters")
    return rows


def _parse_glue_label(value: str, task: GlueTask, path: PathLike, line: int) -> int | float:
    """Turn a raw GLUE label (`1`, `entailment`, `4.750`) into the Hub's value (ClassLabel id or float score)."""
    if task.label_names is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise _data_error(
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
        raise _data_error(
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
    text = _read_text(path)
    rows = _read_tsv_rows(path, text)
    empty_fix = "the file should hold a header row and one example per line"
    if not rows:
        raise _empty_file_error(path, text, "row", empty_fix)

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
        raise _data_error(
            path,
            header_line,
            f"missing required column(s) {missing} for GLUE task {task!r}; the header is {header}",
            f"use the GLUE layout for this task (columns {list(spec.raw_text_columns) + [spec.raw_label_column]}), "
            "tab separated, or check that the task name matches the file",
        )
    if not data_rows:
        raise _empty_file_error(path, text, "example after the header", empty_fix)

    text_positions = [header.index(name) for name in spec.raw_text_columns]
    label_position = header.index(spec.raw_label_column) if has_label else None
    columns: dict[str, list[Any]] = {name: [] for name in spec.text_columns}
    labels: list[int | float] = []
    for line, fields in data_rows:
        if len(fields) != len(header):
            raise _data_error(
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


def _glue_task_dir(data_dir: Path, task_name: str | None) -> Path:
    """Accept both `glue/SST-2` and the parent `glue` folder (the $GLUE_DIR convention) when the task is known."""
    if task_name is None or any((data_dir / name).is_file() for name in ("train.tsv", "dev.tsv")):
        return data_dir
    try:
        candidate = data_dir / GLUE_TASKS[normalize_glue_task_name(task_name)].folder_name
    except ValueError:  # not a GLUE task name (e.g. a config of a generic folder)
        return data_dir
    return candidate if candidate.is_dir() else data_dir


def load_glue_folder(data_dir: PathLike, task: str | None = None) -> DatasetDict:
    """Load a GLUE task folder (train.tsv / dev.tsv / test.tsv) as splits "train" / "validation" / "test".

    The task is taken from the folder name (`SST-2`, `STS-B`, ...) when not given. MNLI gives the Hub's five splits
    (`validation_matched`, ...). Only the files present are loaded; a folder with none of them is an error.
    """
    data_dir = _glue_task_dir(Path(data_dir), task)
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
            splits[split] = load_glue_tsv(path, task, require_label=not _is_test_split(split))
    if not splits:
        expected = sorted({name for names in spec.split_files.values() for name in names})
        raise ValueError(f"{data_dir}: no GLUE files found for task {task!r}; expected some of {expected}.")
    return DatasetDict(splits)


# ---------------------------------------------------------------------------------------------------------------------
# Generic CSV / JSON files for text classification (run_glue's --train_file / --validation_file / --test_file)
# ---------------------------------------------------------------------------------------------------------------------


def infer_text_columns(column_names: Sequence[str], label_column: str = "label") -> tuple[str, str | None]:
    """Pick the text column(s) the way run_glue.py does for CSV/JSON files.

    `sentence1`/`sentence2` if both exist, else the first two non-label columns, else the only non-label column.
    """
    non_label = [name for name in column_names if name != label_column]
    if "sentence1" in non_label and "sentence2" in non_label:
        return "sentence1", "sentence2"
    if len(non_label) >= 2:
        return non_label[0], non_label[1]
    if len(non_label) == 1:
        return non_label[0], None
    raise ValueError(
        f"No text column found among {list(column_names)}: need at least one column besides {label_column!r}."
    )


def _iter_json_records(path: PathLike, text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, value) for JSON lines, or for each element of a top-level JSON array.

    `load_dataset("json")` accepts both; the array case is decoded element by element so that errors can still name a
    line.
    """
    if not text.lstrip().startswith("["):
        for line, raw in enumerate(io.StringIO(text, newline=None), start=1):
            if not raw.strip():
                continue
            try:
                yield line, json.loads(raw)
            except json.JSONDecodeError as err:
                raise _data_error(
                    path, line, f"invalid JSON ({err.msg})", "write one JSON object per line (JSON lines format)"
                ) from None
        return

    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")
    position = whitespace.match(text, 0).end() + 1  # just past the opening "["
    line, counted_up_to = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted_up_to
        line += text.count("\n", counted_up_to, offset)
        counted_up_to = offset
        return line

    position = whitespace.match(text, position).end()
    if text.startswith("]", position):
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise _data_error(path, line_at(err.pos), f"invalid JSON ({err.msg})", "fix the JSON syntax") from None
        yield line_at(position), value
        position = whitespace.match(text, end).end()
        if text.startswith(",", position):
            position = whitespace.match(text, position + 1).end()
        elif text.startswith("]", position):
            return
        else:
            raise _data_error(
                path, line_at(position), "expected ',' or ']' after an array element", "fix the JSON syntax"
            )


@dataclass
class _Table:
    """Rows of one CSV/JSON file, with the line each row starts on so later checks can point at it."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]
    header_line: int
    is_json: bool


def _read_csv_table(path: Path, delimiter: str) -> _Table:
    text = _read_text(path)
    # The default (minimal) quoting of `load_dataset("csv")`/pandas: quoted fields may hold delimiters and newlines.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 1
    rows: list[tuple[int, dict[str, Any]]] = []
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1  # a quoted field can span lines: report where the row starts
            if not fields or fields == [""]:
                continue
            if header is None:
                header, header_line = fields, line
                continue
            if len(fields) != len(header):
                raise _data_error(
                    path,
                    line,
                    f"expected {len(header)} fields {header}, found {len(fields)}",
                    f"give every row one value per header column; quote values that contain {delimiter!r}",
                )
            rows.append((line, dict(zip(header, fields))))
    except csv.Error as err:
        raise _data_error(path, start, f"unreadable CSV row ({err})", "check the quoting of this row") from None
    if header is None:
        raise _empty_file_error(path, text, "header row", "the file should start with a header row naming the columns")
    return _Table(path, list(header), rows, header_line, is_json=False)


def _read_json_table(path: Path) -> _Table:
    text = _read_text(path)
    columns: dict[str, None] = {}  # ordered set: the union of keys in first-seen order, like pyarrow's schema
    rows = []
    for line, record in _iter_json_records(path, text):
        if not isinstance(record, dict):
            raise _data_error(
                path,
                line,
                f"expected a JSON object, found {type(record).__name__}",
                'write objects like {"sentence": "...", "label": 0}',
            )
        columns.update(dict.fromkeys(record))
        rows.append((line, record))
    return _Table(path, list(columns), rows, rows[0][0] if rows else 1, is_json=True)


def _read_table(path: PathLike) -> _Table:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        table = _read_json_table(path)
    elif suffix in (".csv", ".tsv"):
        table = _read_csv_table(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl.")
    if not table.rows:
        raise _empty_file_error(
            path, path.read_text(encoding="utf-8-sig"), "example", "add at least one example (one per line)"
        )
    return table


def _label_value(raw: Any, table: _Table, line: int, column: str) -> int | float | str:
    """Check one label cell; CSV cells are strings and get typed later, JSON values must be int, float or str."""
    if table.is_json:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise _data_error(
                table.path, line, f"{column!r} must be an integer, a float or a string, found {raw!r}", "fix the label"
            )
        if isinstance(raw, float) and not math.isfinite(raw):
            raise _data_error(table.path, line, f"{column!r} is {raw!r}", "give a finite number")
        return raw
    if raw.strip() == "":
        raise _data_error(table.path, line, f"empty {column!r} value", "give every row a label")
    return raw


def _type_csv_labels(values: list[str]) -> list[int] | list[float] | list[str]:
    """Type CSV labels the way pandas would: all integers → int, all numbers → float, otherwise strings."""
    for cast in (int, float):
        try:
            return [cast(value) for value in values]
        except ValueError:
            continue
    return values


def load_classification_files(
    data_files: Mapping[str, PathLike | None],
    *,
    label_column: str = "label",
    label_list: Sequence[str] | None = None,
) -> DatasetDict:
    """Load CSV/TSV/JSON(-lines) text-classification files, one per split, as run_glue.py does with local files.

    All columns are kept. Text columns (see `infer_text_columns`, decided on the train split or else the first split)
    must be present and hold strings in every split. `label` is required except in test splits, where an absent label
    column stays absent (as with `load_dataset("csv")`). Labels keep their type (int, float for regression, or str)
    unless `label_list` is given: then every label must be one of it and `label` becomes a `ClassLabel`.
    """
    files = _check_data_files(data_files)
    tables = {split: _read_table(path) for split, path in files.items()}

    reference = tables.get("train", next(iter(tables.values())))
    try:
        text_columns = [c for c in infer_text_columns(reference.columns, label_column) if c is not None]
    except ValueError as err:
        raise _data_error(reference.path, reference.header_line, str(err).rstrip("."), "add a text column") from None

    labels_by_split: dict[str, list[Any]] = {}
    for split, table in tables.items():
        needs_label = not _is_test_split(split)
        required = text_columns + ([label_column] if needs_label else [])
        missing = [c for c in required if c not in table.columns]
        if missing and not table.is_json:
            raise _data_error(
                table.path,
                table.header_line,
                f"missing required column(s) {missing}; the header is {table.columns}",
                f"name the columns {required} (text columns are inferred from {reference.path.name})",
            )
        has_label = label_column in table.columns
        labels: list[Any] = []
        for line, row in table.rows:
            for column in required:
                if row.get(column) is None:
                    raise _data_error(
                        table.path,
                        line,
                        f"missing required column {column!r}",
                        f"give every row the columns {required} (text columns are inferred from "
                        f"{reference.path.name}: sentence1/sentence2, else the first two non-label columns)",
                    )
            for column in text_columns:
                if not isinstance(row[column], str):
                    raise _data_error(
                        table.path,
                        line,
                        f"text column {column!r} holds {row[column]!r}, not a string",
                        "put the text columns first, or name them sentence1/sentence2",
                    )
            if has_label:
                raw = row.get(label_column)
                if raw is None:
                    raise _data_error(table.path, line, f"missing {label_column!r} value", "give every row a label")
                labels.append(_label_value(raw, table, line, label_column))
        if has_label:
            labels_by_split[split] = labels

    # Type the labels once over all splits, so train and validation can never disagree on the label type.
    all_labels = [(split, i, v) for split, values in labels_by_split.items() for i, v in enumerate(values)]
    if any(not tables[split].is_json for split, _, _ in all_labels):
        flat = _type_csv_labels([str(v) for _, _, v in all_labels])
    else:
        flat = [v for _, _, v in all_labels]
        kinds = {str if isinstance(v, str) else float for v in flat}
        if len(kinds) > 1:
            split, i, value = next((s, i, v) for s, i, v in all_labels if isinstance(v, str))
            raise _data_error(
                tables[split].path,
                tables[split].rows[i][0],
                f"label {value!r} is a string while other labels are numbers",
                "use one label type in all files",
            )
        if any(isinstance(v, float) for v in flat):
            flat = [float(v) for v in flat]
    typed: dict[str, list[Any]] = {split: [] for split in labels_by_split}
    for (split, _, _), value in zip(all_labels, flat):
        typed[split].append(value)

    label_feature: Any = None
    if label_list is not None:
        names = [str(name) for name in label_list]
        label_feature = ClassLabel(names=names)
        for split, values in typed.items():
            for i, value in enumerate(values):
                if str(value) not in names:
                    raise _data_error(
                        tables[split].path,
                        tables[split].rows[i][0],
                        f"label {value!r} is not in the label list {names}",
                        "correct the label or extend the label list",
                    )
            typed[split] = [names.index(str(value)) for value in values]
    elif flat:
        first = flat[0]
        dtype = "string" if isinstance(first, str) else "float64" if isinstance(first, float) else "int64"
        label_feature = Value(dtype)

    splits = {}
    for split, table in tables.items():
        columns: dict[str, list[Any]] = {c: [row.get(c) for _, row in table.rows] for c in table.columns}
        features = None
        if not table.is_json:
            features = Features({c: Value("string") for c in table.columns})
        if split in typed:
            columns[label_column] = typed[split]
            if features is not None:
                features[label_column] = label_feature
        dataset = Dataset.from_dict(columns, features=features)
        if split in typed and dataset.features[label_column] != label_feature:
            dataset = dataset.cast_column(label_column, label_feature)
        splits[split] = dataset
    return DatasetDict(splits)


def load_classification_file(
    path: PathLike, *, label_column: str = "label", label_list: Sequence[str] | None = None, split: str = "train"
) -> Dataset:
    """Load a single CSV/TSV/JSON(-lines) classification file (see `load_classification_files`)."""
    return load_classification_files({split: path}, label_column=label_column, label_list=label_list)[split]


def get_classification_label_info(
    train_dataset: Dataset, label_column: str = "label"
) -> tuple[bool, list[Any] | None]:
    """Return (is_regression, label_list) the way run_glue.py derives them.

    ClassLabel → its names; float labels → regression (no label list); anything else → sorted unique labels.
    """
    feature = train_dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return False, list(feature.names)
    if getattr(feature, "dtype", None) in ("float32", "float64"):
        return True, None
    return False, sorted(train_dataset.unique(label_column))


# ---------------------------------------------------------------------------------------------------------------------
# NER: CoNLL column files and JSON-lines files
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Sentence:
    """One NER example before encoding, with the line of each token so that label checks can point at it."""

    tokens: list[str]
    tags: list[Any]
    lines: list[int]


_COLUMN_SPLIT = re.compile(r"[ \t]+")  # ASCII blanks only: str.split() would also break tokens at U+00A0 etc.


# Where CoNLL-2003's column files keep each kind of tag ("token POS chunk NER"), by the Hub dataset's column names.
CONLL_TAG_COLUMNS = {"ner_tags": -1, "pos_tags": 1, "chunk_tags": 2}


def _read_conll_sentences(path: PathLike, tag_column: str = "ner_tags") -> list[_Sentence]:
    """Parse a CoNLL column file: token first, tag last, 2-4 columns, blank lines between sentences. `tag_column`
    "pos_tags"/"chunk_tags" reads the POS or chunk tags of a 4-column file instead of the last column's."""
    if tag_column not in CONLL_TAG_COLUMNS:
        raise ValueError(
            f"{path}: CoNLL column files hold NER, POS and chunk tags ({', '.join(CONLL_TAG_COLUMNS)}), not "
            f"{tag_column!r}: pass one of those as the label column (--label_column_name), or use JSON lines."
        )
    tag_index = CONLL_TAG_COLUMNS[tag_column]
    text = _read_text(path)
    sentences: list[_Sentence] = []
    current = _Sentence([], [], [])
    first_width: tuple[int, int] | None = None  # (columns, line) of the first token line

    def flush() -> None:
        nonlocal current
        if current.tokens:
            sentences.append(current)
        current = _Sentence([], [], [])

    for line, raw in enumerate(io.StringIO(text, newline=None), start=1):
        stripped = raw.strip(" \t\r\n")
        if not stripped:
            flush()
            continue
        columns = _COLUMN_SPLIT.split(stripped)
        if columns[0] == "-DOCSTART-":
            flush()  # a document boundary also ends a sentence
            continue
        if not 2 <= len(columns) <= 4:
            raise _data_error(
                path,
                line,
                f"found {len(columns)} column(s) {columns!r}; expected 2 to 4 whitespace-separated columns",
                "write 'token [POS] [chunk] tag' on each line and separate sentences with a blank line",
            )
        if first_width is None:
            first_width = (len(columns), line)
            if tag_index > 0 and len(columns) != 4:
                raise _data_error(
                    path, line, f"reading {tag_column} needs the 4 columns 'token POS chunk NER', found {len(columns)}",
                    "read the NER tags (the last column) or give the file all four columns",
                )
        elif len(columns) != first_width[0]:
            # A changing column count means a token or tag went missing: the last column is no longer the tag.
            raise _data_error(
                path,
                line,
                f"found {len(columns)} columns but line {first_width[1]} has {first_width[0]}",
                "give every token line the same columns 'token [POS] [chunk] tag'",
            )
        current.tokens.append(columns[0])
        current.tags.append(columns[tag_index])
        current.lines.append(line)
    flush()

    if not sentences:
        raise _empty_file_error(
            path, text, "sentence", "write one 'token ... tag' line per token and a blank line between sentences"
        )
    return sentences


def _read_ner_jsonl_sentences(
    path: PathLike, token_column: str = "tokens", tag_column: str = "ner_tags"
) -> list[_Sentence]:
    """Parse JSON lines (or a JSON array) of {"tokens": [...], "ner_tags": [...]} records."""
    text = _read_text(path)
    sentences = []
    for line, record in _iter_json_records(path, text):
        if not isinstance(record, dict):
            raise _data_error(
                path,
                line,
                f"expected a JSON object, found {type(record).__name__}",
                f'write {{"{token_column}": [...], "{tag_column}": [...]}} on each line',
            )
        missing = [c for c in (token_column, tag_column) if c not in record]
        if missing:
            raise _data_error(
                path,
                line,
                f"missing required column(s) {missing}",
                f"give every line both {token_column!r} and {tag_column!r}, or name the file's columns "
                "(--text_column_name, --label_column_name)",
            )
        tokens, tags = record[token_column], record[tag_column]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise _data_error(path, line, f"{token_column!r} must be a list of strings", "fix the tokens")
        if not isinstance(tags, list) or not all(
            isinstance(t, str) or (isinstance(t, int) and not isinstance(t, bool)) for t in tags
        ):
            raise _data_error(path, line, f"{tag_column!r} must be a list of strings (or label ids)", "fix the tags")
        if len(tokens) != len(tags):
            raise _data_error(
                path,
                line,
                f"{len(tokens)} tokens but {len(tags)} tags",
                f"give exactly one tag per token in {tag_column!r}",
            )
        if not tokens:
            raise _data_error(path, line, "empty sentence (no tokens)", "drop the line or add its tokens")
        sentences.append(_Sentence(list(tokens), list(tags), [line] * len(tokens)))
    if not sentences:
        raise _empty_file_error(path, text, "sentence", "write one JSON object per line")
    return sentences


def _read_ner_sentences(path: PathLike, token_column: str = "tokens", tag_column: str = "ner_tags") -> list[_Sentence]:
    # JSON by extension; everything else (.txt, .conll, .iob2, ...) is a CoNLL column file.
    if Path(path).suffix.lower() in (".json", ".jsonl"):
        return _read_ner_jsonl_sentences(path, token_column, tag_column)
    return _read_conll_sentences(path, tag_column)


def _encode_ner_splits(
    sentences_by_split: Mapping[str, list[_Sentence]],
    paths: Mapping[str, PathLike],
    label_list: Sequence[str] | None,
    token_column: str = "tokens",
    tag_column: str = "ner_tags",
) -> DatasetDict:
    """Check every tag against the label list (or derive it) and build the ClassLabel-encoded splits: columns `id`,
    `token_column` and `tag_column`."""
    if label_list is None:
        for split, sentences in sentences_by_split.items():
            for sentence in sentences:
                for tag, line in zip(sentence.tags, sentence.lines):
                    if not isinstance(tag, str):
                        raise _data_error(
                            paths[split],
                            line,
                            f"tag {tag!r} is a label id but no label list was given",
                            "pass label_list, or write tags as strings",
                        )
        # Sorted unique tags, as run_ner.py's get_label_list, but over all splits: a tag seen only in validation
        # would otherwise have no id.
        label_list = sorted({tag for sentences in sentences_by_split.values() for s in sentences for tag in s.tags})
    names = list(label_list)
    if len(set(names)) != len(names):
        raise ValueError(f"label_list has duplicates: {names}")
    label_to_id = {name: i for i, name in enumerate(names)}
    features = Features(
        {"id": Value("string"), token_column: List(Value("string")), tag_column: List(ClassLabel(names=names))}
    )

    splits = {}
    for split, sentences in sentences_by_split.items():
        encoded = []
        for sentence in sentences:
            ids = []
            for tag, line in zip(sentence.tags, sentence.lines):
                if isinstance(tag, str):
                    label_id = label_to_id.get(tag, -1)
                else:
                    label_id = tag if 0 <= tag < len(names) else -1
                if label_id < 0:
                    raise _data_error(
                        paths[split],
                        line,
                        f"tag {tag!r} is not in the label list {names}",
                        "correct the tag, or pass a label_list that contains it",
                    )
                ids.append(label_id)
            encoded.append(ids)
        splits[split] = Dataset.from_dict(
            {
                "id": [str(i) for i in range(len(sentences))],
                token_column: [s.tokens for s in sentences],
                tag_column: encoded,
            },
            features=features,
        )
    return DatasetDict(splits)


def load_ner_files(
    data_files: Mapping[str, PathLike | None],
    *,
    label_list: Sequence[str] | None = None,
    token_column: str = "tokens",
    tag_column: str = "ner_tags",
) -> DatasetDict:
    """Load CoNLL column files and/or JSON-lines NER files, one per split.

    Gives columns `id`, `token_column` and `tag_column` (ClassLabel ids), read from the JSON records' columns of those
    names; from CoNLL files, `tag_column` "ner_tags" (the last column), "pos_tags" or "chunk_tags" picks the tags.
    With `label_list`, every tag must be in it and the ids follow its order (pass `CONLL2003_NER_LABELS` for the Hub's
    conll2003 ids); without, the label list is the sorted set of tags over all splits.
    """
    files = _check_data_files(data_files)
    sentences = {split: _read_ner_sentences(path, token_column, tag_column) for split, path in files.items()}
    return _encode_ner_splits(sentences, files, label_list, token_column, tag_column)


def load_conll(path: PathLike, *, label_list: Sequence[str] | None = None) -> Dataset:
    """Load one CoNLL column file (token first, tag last; `-DOCSTART-` lines skipped) as a `Dataset`."""
    return _encode_ner_splits({"train": _read_conll_sentences(path)}, {"train": path}, label_list)["train"]


def load_ner_jsonl(
    path: PathLike,
    *,
    label_list: Sequence[str] | None = None,
    token_column: str = "tokens",
    tag_column: str = "ner_tags",
) -> Dataset:
    """Load one JSON-lines NER file ({"tokens": [...], "ner_tags": [...]} per line) as a `Dataset` with the columns
    `id`, `token_column` and `tag_column`."""
    sentences = _read_ner_jsonl_sentences(path, token_column, tag_column)
    return _encode_ner_splits({"train": sentences}, {"train": path}, label_list, token_column, tag_column)["train"]


def load_ner_file(path: PathLike, *, label_list: Sequence[str] | None = None) -> Dataset:
    """Load one NER file, JSON lines if it ends in .json/.jsonl, else CoNLL columns."""
    return _encode_ner_splits({"train": _read_ner_sentences(path)}, {"train": path}, label_list)["train"]


def get_ner_label_list(dataset: Dataset, label_column: str = "ner_tags") -> list[str]:
    """Return the label list as run_ner.py does: ClassLabel names, else the sorted unique tags."""
    feature = dataset.features[label_column].feature
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return sorted({tag for tags in dataset[label_column] for tag in tags})


# ---------------------------------------------------------------------------------------------------------------------
# Entry points: Hub name, local folder or local files
# ---------------------------------------------------------------------------------------------------------------------


def _looks_like_local_path(name: str) -> bool:
    return os.path.isdir(name) or name.startswith(("/", "./", "../", "~", ".\\", "..\\"))


def _find_split_files(folder: Path, stems: Mapping[str, Sequence[str]], suffixes: Sequence[str]) -> dict[str, Path]:
    found = {}
    for split, names in stems.items():
        for name in names:
            match = next((folder / f"{name}{s}" for s in suffixes if (folder / f"{name}{s}").is_file()), None)
            if match is not None:
                found[split] = match
                break
    return found


_SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "valid", "dev"), "test": ("test",)}
_NER_SUFFIXES = (".txt", ".conll", ".iob", ".iob2", ".jsonl", ".json")


def _is_glue_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("train.tsv", "dev.tsv", "dev_matched.tsv"))


def _load_from_hub(
    name: str, config: str | None, revision: str | None, cache_dir: str | None, token: str | bool | None
) -> DatasetDict:
    name, default_revision = _HUB_ALIASES.get(name, (name, None))
    return load_dataset(name, config, revision=revision or default_revision, cache_dir=cache_dir, token=token)


def glue_task_named_by(dataset_name: str | None, dataset_config_name: str | None = None) -> str | None:
    """The GLUE task that `dataset_name` names by itself (a local GLUE task folder such as `glue/CoLA`, or GLUE on the
    Hub with a configuration), so that a script given no `task_name` still computes that task's metrics; else None."""
    if dataset_name is None:
        return None
    if _looks_like_local_path(dataset_name):
        folder = _glue_task_dir(Path(dataset_name).expanduser(), dataset_config_name)
        candidates = (dataset_config_name, folder.name) if _is_glue_folder(folder) else ()
    else:
        candidates = (dataset_config_name,) if dataset_name in ("glue", "nyu-mll/glue") else ()
    for candidate in candidates:
        if candidate:
            try:
                return normalize_glue_task_name(candidate)
            except ValueError:
                continue
    return None


def _in_glue_label_order(splits: DatasetDict, task_name: str | None, label_list: Sequence[str] | None) -> DatasetDict:
    """CSV/JSON files of a named GLUE task whose labels are the task's label names get the Hub's label ids.

    Sorted, MRPC's names would give `equivalent` id 0, and GLUE's F1 (positive class: id 1) would score the wrong
    class. Numeric labels are GLUE's ids already and stay as they are. Other names are refused for the F1 tasks,
    where nothing tells which one is the positive class.
    """
    if task_name is None or label_list is not None:
        return splits
    try:
        task = normalize_glue_task_name(task_name)
    except ValueError:  # a folder's dataset_config_name that names no GLUE task
        return splits
    names = GLUE_TASKS[task].label_names
    labelled = [split for split in splits.values() if "label" in split.column_names]
    if names is None or not labelled or any(split.features["label"].dtype != "string" for split in labelled):
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
       `train`/`validation|valid|dev`/`test` `.csv`/`.tsv`/`.json`/`.jsonl` files.
    3. `dataset_name` (+ `dataset_config_name`): `datasets.load_dataset` from the Hub, e.g. `nyu-mll/glue`, `sst2`.
    4. `task_name` alone: `load_dataset("nyu-mll/glue", task_name)`, as run_glue.py does.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    if any(path is not None for path in files.values()):
        if task_name is not None and all(Path(p).suffix.lower() == ".tsv" for p in files.values() if p is not None):
            return DatasetDict(
                {
                    split: load_glue_tsv(path, task_name, require_label=not _is_test_split(split))
                    for split, path in _check_data_files(files).items()
                }
            )
        return _in_glue_label_order(load_classification_files(files, label_list=label_list), task_name, label_list)

    if dataset_name is not None and _looks_like_local_path(dataset_name):
        folder = Path(dataset_name).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{folder}: local dataset folder not found.")
        task = task_name or dataset_config_name
        glue_dir = _glue_task_dir(folder, task)
        if _is_glue_folder(glue_dir):
            return load_glue_folder(glue_dir, task)
        found = _find_split_files(folder, _SPLIT_STEMS, (".csv", ".tsv", ".jsonl", ".json"))
        if not found:
            raise ValueError(
                f"{folder}: found neither GLUE files (train.tsv, dev.tsv) nor train/validation/test .csv/.json files."
            )
        return _in_glue_label_order(load_classification_files(found, label_list=label_list), task, label_list)

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

    if dataset_name is not None and _looks_like_local_path(dataset_name):
        folder = Path(dataset_name).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{folder}: local dataset folder not found.")
        found = _find_split_files(folder, _SPLIT_STEMS, _NER_SUFFIXES)
        if not found:
            raise ValueError(f"{folder}: no train/valid/test files ({', '.join(_NER_SUFFIXES)}) found.")
        return load_ner_files(found, label_list=label_list, token_column=token_column, tag_column=tag_column)

    if dataset_name is not None:
        return _load_from_hub(dataset_name, dataset_config_name, revision, cache_dir, token)
    raise ValueError("Give a dataset_name (Hub id or local folder) or train/validation/test files.")


# ---------------------------------------------------------------------------------------------------------------------
# Few-shot subsampling
# ---------------------------------------------------------------------------------------------------------------------


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


def add_glue_sample_arguments(parser, split: str, max_examples: int, ner_folders: bool = False) -> None:
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
                        help="draw this many examples at random (0: all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of that draw")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)


def analysis_record(module: str, argv: Sequence[str] | None, args, task_name: str, examples: int) -> dict:
    """The head of an analysis command line's JSON: the command (`python -m <module> …`), the versions it ran with,
    and what `add_glue_sample_arguments` chose."""
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


def glue_examples(data_dir: PathLike, task: str | None, split: str, max_examples: int, seed: int) -> tuple[Dataset, str, tuple[str, ...]]:
    """A GLUE folder's `split`, `max_examples` of it drawn with `seed` (0: all), with its task name and text columns
    (for the analysis command lines: `dwatt.variability`, `dwatt.attention_patterns`)."""
    task_name = normalize_glue_task_name(task or Path(data_dir).name)
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
    if _is_glue_folder(_glue_task_dir(folder, task)):
        return TextExamples(*glue_examples(data_dir, task, split, max_examples, seed), is_split_into_words=False)
    if not folder.is_dir():
        raise ValueError(f"{folder}: data folder not found; give a GLUE task folder or a NER folder.")
    if not _find_split_files(folder, _SPLIT_STEMS, _NER_SUFFIXES):
        raise ValueError(
            f"{folder}: found neither GLUE files (train.tsv, dev.tsv) nor NER files (train / valid / test "
            f"{', '.join(_NER_SUFFIXES)}): give a GLUE task folder such as glue/SST-2 or a NER folder such as conll2003."
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
