"""Reading local data files, with errors that name the file, the line and the fix.

Shared by the GLUE, table (CSV / JSON) and NER readers: every problem in a local file is a `ValueError` of the form
`"<file>, line <n>: <problem>. Fix: <what to do>"`, raised before any tokenisation or training.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union


PathLike = Union[str, os.PathLike]


class UnknownLabelError(ValueError):
    """A label in a data file that is not in the label list it is read with (the scripts add where that list came
    from: a checkpoint's labels call for --ignore_mismatched_sizes rather than a fix of the data)."""


def data_error(path: PathLike, line: int, problem: str, fix: str, error_class: type = ValueError) -> ValueError:
    """Build the one error format used for bad data: file, 1-based line, problem, fix."""
    return error_class(f"{os.fspath(path)}, line {line}: {problem}. Fix: {fix}")


def read_text(path: PathLike) -> str:
    """Read a whole UTF-8 file, dropping a leading byte-order mark (MRPC files and Excel CSVs carry one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise data_error(path, line, f"not valid UTF-8 ({err.reason})", "re-encode the file as UTF-8") from None


def count_lines(text: str) -> int:
    return len(io.StringIO(text, newline=None).readlines())


def empty_file_error(path: PathLike, text: str, what: str, fix: str) -> ValueError:
    # Point at the line just past the end: that is where an example was expected and none came.
    return data_error(path, count_lines(text) + 1, f"end of file reached without any {what}", fix)


@contextmanager
def unlimited_csv_fields() -> Iterator[None]:
    """Lift the csv module's 128 KiB limit on one value while reading: a long document is a valid value (pandas and
    `load_dataset("csv")` read it), not an unreadable row."""
    previous = csv.field_size_limit(2**31 - 1)  # (sys.maxsize overflows a C long on Windows)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def delimited_rows(path: PathLike, text: str, delimiter: str, quoting: int) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV/TSV text, each with the line it starts on (a quoted value can span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows, start = [], 1
    with unlimited_csv_fields():
        try:
            for fields in reader:
                line, start = start, reader.line_num + 1
                if fields and fields != [""]:
                    rows.append((line, fields))
        except csv.Error as err:
            raise data_error(path, start, f"unreadable row ({err})", "check the quoting of this row") from None
    return rows


def tsv_rows(path: PathLike, text: str) -> tuple[list[tuple[int, list[str]]], bool]:
    """The rows of a TSV text (as `delimited_rows`), and whether they were read with CSV quoting.

    Without quoting, as GLUE's files are written (a sentence opening with `"`, read with CSV quoting, took the rows
    after it into one field, and they were gone without a word), unless the file is quoted as CSV: values that only
    CSV quoting reads as one (a tab or a line break inside quotes), or every value holding a `"` wrapped in quotes
    with its own quotes doubled, as pandas' `to_csv(sep="\t")` writes them. Wrapped values with no doubled quote
    inside (`"Yes."`) are taken as written unless every value is wrapped (QUOTE_ALL; the numbers may be bare,
    QUOTE_NONNUMERIC): minimal quoting has no reason to wrap them."""
    plain = delimited_rows(path, text, "\t", csv.QUOTE_NONE)
    with_quotes = [value for _, row in plain for value in row if '"' in value]
    if not with_quotes:
        return plain, False  # both readings agree
    try:
        quoted = delimited_rows(path, text, "\t", csv.QUOTE_MINIMAL)
    except ValueError:  # unbalanced quotes: not a CSV-quoted file
        return plain, False

    def wrapped(value: str) -> bool:  # `"…"`, with every quote inside doubled
        return len(value) > 1 and value[0] == value[-1] == '"' and '"' not in value[1:-1].replace('""', "")

    def number(value: str) -> bool:
        try:
            float(value)
        except ValueError:
            return False
        return True

    def one_width(rows: list[tuple[int, list[str]]]) -> bool:
        return len({len(fields) for _, fields in rows}) == 1

    # QUOTE_ALL, or QUOTE_NONNUMERIC (pandas' option, R's write.table): every value wrapped but the numbers.
    quote_all = all(map(wrapped, plain[0][1])) and all(wrapped(v) or number(v) for _, row in plain for v in row)
    csv_quoted = all(map(wrapped, with_quotes)) and (quote_all or any('""' in v[1:-1] for v in with_quotes))
    if csv_quoted or (not one_width(plain) and one_width(quoted)):
        return quoted, True
    return plain, False


def is_unlabelled_test_split(split: str, labels: Iterable[Any]) -> bool:
    """A test split labelled -1 throughout: GLUE's mark of unlabelled rows (its test files, and the Hub's)."""
    return is_test_split(split) and {str(label).strip() for label in labels} == {"-1"}


def is_test_split(split: str) -> bool:
    # "test", "test_matched", "test_mismatched": splits whose labels may legitimately be absent.
    return split.startswith("test")


def check_data_files(data_files: Mapping[str, PathLike | None]) -> dict[str, Path]:
    files = {split: Path(path) for split, path in data_files.items() if path is not None}
    if not files:
        raise ValueError("No data files given: pass at least one of train_file / validation_file / test_file.")
    return files


def iter_json_records(path: PathLike, text: str) -> Iterator[tuple[int, Any]]:
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
                raise data_error(
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
            raise data_error(path, line_at(err.pos), f"invalid JSON ({err.msg})", "fix the JSON syntax") from None
        yield line_at(position), value
        position = whitespace.match(text, end).end()
        if text.startswith(",", position):
            position = whitespace.match(text, position + 1).end()
        elif text.startswith("]", position):
            return
        else:
            raise data_error(
                path, line_at(position), "expected ',' or ']' after an array element", "fix the JSON syntax"
            )


def looks_like_local_path(name: str) -> bool:
    return os.path.isdir(name) or name.startswith(("/", "./", "../", "~", ".\\", "..\\"))


def iter_json_objects(path: PathLike, text: str, fix: str) -> Iterator[tuple[int, dict]]:
    """`iter_json_records` for files of records that must each be a JSON object; `fix` says what to write instead."""
    for line, record in iter_json_records(path, text):
        if not isinstance(record, dict):
            raise data_error(path, line, f"expected a JSON object, found {type(record).__name__}", fix)
        yield line, record
