"""CSV and JSON(-lines) files for text classification (run_glue's --train_file / --validation_file / --test_file),
read as `datasets.load_dataset("csv"/"json")` would, but checked line by line."""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .text_files import (PathLike, UnknownLabelError, check_data_files, data_error, empty_file_error, is_test_split,
                         delimited_rows, is_unlabelled_test_split, iter_json_objects, read_text,
                         tsv_rows)

# Row ids, not text: the Hub's GLUE has `idx`, GLUE's test files `index`, many files `id` or `guid`.
ID_COLUMNS = frozenset({"idx", "id", "index", "guid"})


def infer_text_columns(column_names: Sequence[str], label_column: str = "label") -> tuple[str, str | None]:
    """Pick the text column(s) the way run_glue.py does for CSV/JSON files, id columns (`ID_COLUMNS`) left out.

    `sentence1`/`sentence2` if both exist, else the first two other columns, else the only other column. (run_glue.py
    would take an `id` column as the first sentence, and the real sentence as the second.)
    """
    non_label = [name for name in column_names if name != label_column and name.lower() not in ID_COLUMNS]
    if "sentence1" in non_label and "sentence2" in non_label:
        return "sentence1", "sentence2"
    if len(non_label) >= 2:
        return non_label[0], non_label[1]
    if len(non_label) == 1:
        return non_label[0], None
    raise ValueError(
        f"No text column found among {list(column_names)}: need at least one column besides {label_column!r}."
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
    text = read_text(path)
    rows, quoted = (delimited_rows(path, text, ",", csv.QUOTE_MINIMAL), True) if delimiter == "," else tsv_rows(path, text)
    if not rows:
        raise empty_file_error(path, text, "header row", "the file should start with a header row naming the columns")
    (header_line, header), records = rows[0], []
    for line, fields in rows[1:]:
        if len(fields) != len(header):
            raise data_error(
                path,
                line,
                f"expected {len(header)} fields {header}, found {len(fields)}",
                "give every row one value per header column; "
                + (f"quote values that contain {delimiter!r}" if quoted else
                   "a TSV value cannot hold a tab or a line break (or write the file as CSV, with quoting)"),
            )
        records.append((line, dict(zip(header, fields))))
    return _Table(path, list(header), records, header_line, is_json=False)


def _read_json_table(path: Path) -> _Table:
    text = read_text(path)
    columns: dict[str, None] = {}  # ordered set: the union of keys in first-seen order, like pyarrow's schema
    rows = []
    for line, record in iter_json_objects(path, text, 'write objects like {"sentence": "...", "label": 0}'):
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
        raise empty_file_error(
            path, path.read_text(encoding="utf-8-sig"), "example", "add at least one example (one per line)"
        )
    return table


def _refuse_integer_text_columns(table: _Table, text_columns: list[str]) -> None:
    """An inferred text column of a CSV/TSV file that holds an integer in every row is an id under another name than
    `ID_COLUMNS` (pandas and `load_dataset("csv")` type it int64, and a JSON file's numbers are refused the same way):
    training on it as the first sentence, with the real sentence as the second, would be a silent mistake."""
    for column in text_columns:
        values = [row[column].strip() for _, row in table.rows]
        if all(value.lstrip("+-").isdigit() for value in values):
            raise data_error(
                table.path, table.header_line,
                f"text column {column!r} (inferred: sentence1/sentence2, else the first two columns besides the label "
                f"and ids) holds an integer in every row, such as {values[0]!r}: an id, not text",
                "drop that column, put the text columns first, or name them sentence1/sentence2",
            )


def _label_value(raw: Any, table: _Table, line: int, column: str) -> int | float | str:
    """Check one label cell; CSV cells are strings and get typed later, JSON values must be int, float or str."""
    if table.is_json:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise data_error(
                table.path, line, f"{column!r} must be an integer, a float or a string, found {raw!r}", "fix the label"
            )
        if isinstance(raw, float) and not math.isfinite(raw):
            raise data_error(table.path, line, f"{column!r} is {raw!r}", "give a finite number")
        return raw
    if raw.strip() == "":
        raise data_error(table.path, line, f"empty {column!r} value", "give every row a label")
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
    task_text_columns: Sequence[str | None] | None = None,
) -> DatasetDict:
    """Load CSV/TSV/JSON(-lines) text-classification files, one per split, as run_glue.py does with local files.

    All columns are kept. Text columns (`task_text_columns`, a GLUE task's as run_glue.py's task_to_keys, where the
    train split or else the first split has them all; else see `infer_text_columns`, decided on that split) must be
    present and hold strings in every split. `label` is required except in test splits, where an absent label
    column stays absent (as with `load_dataset("csv")`) and one of -1s only is unlabelled (int -1, GLUE's mark,
    whatever the other splits' labels, unless -1 is one of their classes or of `label_list`). Labels keep their type
    (int, float for regression, or str) unless `label_list` is given: then every label must be one of it and `label`
    becomes a `ClassLabel`.
    """
    files = check_data_files(data_files)
    tables = {split: _read_table(path) for split, path in files.items()}
    for table in tables.values():
        near = [column for column in table.columns if column.strip().lower() == label_column and column != label_column]
        if near and label_column not in table.columns:
            raise data_error(
                table.path, table.header_line,
                f"no {label_column!r} column, but {near[0]!r} (column names are case-sensitive: it would be read as text)",
                f"rename {near[0]!r} to {label_column!r}",
            )

    reference = tables.get("train", next(iter(tables.values())))
    named = [column for column in task_text_columns or () if column is not None]
    if named and set(named) <= set(reference.columns):
        text_columns = named  # the task's: other columns (ids, sources) are not guessed at
        where_from = "the task's text columns"
    else:
        where_from = (f"text columns are inferred from {reference.path.name}: sentence1/sentence2, else the first two "
                      "columns besides the label and ids")
        try:
            text_columns = [c for c in infer_text_columns(reference.columns, label_column) if c is not None]
        except ValueError as err:
            raise data_error(reference.path, reference.header_line, str(err).rstrip("."), "add a text column") from None
        if not reference.is_json:
            _refuse_integer_text_columns(reference, text_columns)
    labels_by_split: dict[str, list[Any]] = {}
    for split, table in tables.items():
        needs_label = not is_test_split(split)
        required = text_columns + ([label_column] if needs_label else [])
        missing = [c for c in required if c not in table.columns]
        if missing and not table.is_json:
            raise data_error(
                table.path,
                table.header_line,
                f"missing required column(s) {missing}; the header is {table.columns}",
                f"name the columns {required} ({where_from})",
            )
        has_label = label_column in table.columns
        labels: list[Any] = []
        for line, row in table.rows:
            for column in required:
                if row.get(column) is None:
                    raise data_error(
                        table.path,
                        line,
                        f"missing required column {column!r}",
                        f"give every row the columns {required} ({where_from})",
                    )
            for column in text_columns:
                if not isinstance(row[column], str):
                    raise data_error(
                        table.path,
                        line,
                        f"text column {column!r} holds {row[column]!r}, not a string",
                        "put the text columns first, or name them sentence1/sentence2",
                    )
            if has_label:
                raw = row.get(label_column)
                if raw is None:
                    raise data_error(table.path, line, f"missing {label_column!r} value", "give every row a label")
                labels.append(_label_value(raw, table, line, label_column))
        if has_label:
            labels_by_split[split] = labels

    # A test split labelled -1 throughout is unlabelled (GLUE's mark), whatever the type of the other splits' labels:
    # typed with class names, its -1 would become the string "-1", a class of its own. Unless -1 is a class.
    classes = {str(v).strip() for split, values in labels_by_split.items() if not is_test_split(split) for v in values}
    classes.update(str(name).strip() for name in label_list or ())
    unlabelled = [split for split, values in labels_by_split.items()
                  if "-1" not in classes and is_unlabelled_test_split(split, values)]
    for split in unlabelled:
        del labels_by_split[split]

    # Type the labels once over all splits, so train and validation can never disagree on the label type.
    all_labels = [(split, i, v) for split, values in labels_by_split.items() for i, v in enumerate(values)]
    if any(not tables[split].is_json for split, _, _ in all_labels):
        flat = _type_csv_labels([str(v) for _, _, v in all_labels])
        # NaN/inf among numbers: pandas reads them as numbers too, and a regressor would train on them. (Among class
        # names, "inf" is a name.)
        bad = next(((s, i, v) for (s, i, v), typed_value in zip(all_labels, flat)
                    if isinstance(typed_value, float) and not math.isfinite(typed_value)), None)
        if bad is not None:
            split, i, value = bad
            raise data_error(tables[split].path, tables[split].rows[i][0], f"{label_column!r} is {value.strip()!r}",
                             "give a finite number")
    else:
        flat = [v for _, _, v in all_labels]
        kinds = {str if isinstance(v, str) else float for v in flat}
        if len(kinds) > 1:
            split, i, value = next((s, i, v) for s, i, v in all_labels if isinstance(v, str))
            raise data_error(
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
                    raise data_error(
                        tables[split].path,
                        tables[split].rows[i][0],
                        f"label {value!r} is not in the label list {names}",
                        "correct the label or extend the label list",
                        UnknownLabelError,
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
        feature = label_feature
        if split in unlabelled:
            typed[split] = [-1] * len(table.rows)
            feature = label_feature if isinstance(label_feature, ClassLabel) else Value("int64")
        if split in typed:
            columns[label_column] = typed[split]
            if features is not None:
                features[label_column] = feature
        dataset = Dataset.from_dict(columns, features=features)
        if split in typed and dataset.features[label_column] != feature:
            dataset = dataset.cast_column(label_column, feature)
        splits[split] = dataset
    return DatasetDict(splits)


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


def check_known_labels(dataset: Dataset, split: str, label_list: Sequence[Any], known: Collection[Any]) -> None:
    """Refuses labels of `split` that the model has no output for (`known`: the raw label values it maps; without
    this check preprocessing failed with a bare KeyError), and -1, GLUE's mark of an unlabelled row, outside test
    splits (training on it failed with "Target -1 is out of bounds") unless -1 is one of the classes."""
    if "label" not in dataset.column_names:
        return
    feature = dataset.features["label"]
    unknown = [value for value in dataset.unique("label")
               if value not in known and not (value == -1 and is_test_split(split))]
    if not unknown:
        return
    if unknown == [-1]:
        raise UnknownLabelError(
            f"The {split} split has rows labelled -1, which marks an unlabelled row (GLUE's test splits), while "
            f"the model's labels are {list(label_list)}: give those rows their labels, or leave them out."
        )
    shown = sorted((feature.names[v] if isinstance(feature, ClassLabel) and v >= 0 else v for v in unknown), key=str)
    raise UnknownLabelError(
        f"The {split} split has label(s) {shown[:10]}{' …' if len(shown) > 10 else ''} that are not among the "
        f"model's labels {list(label_list)} (the training data's, or the checkpoint's): a classifier has no output "
        "for them. Correct those labels, or add examples of them to the training data."
    )
