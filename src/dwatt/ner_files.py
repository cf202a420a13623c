"""NER files: CoNLL column files and JSON-lines files, read into the columns of the Hub's `conll2003`.

Columns `id`, `tokens` (list of str) and the tags as a list of `ClassLabel` ids, so that the label list is always
`dataset.features[tag_column].feature.names` (see `get_ner_label_list`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from .text_files import (PathLike, UnknownLabelError, check_data_files, data_error, empty_file_error, iter_json_objects,
                         read_text)


# Label order of the Hub `conll2003` dataset (`ner_tags` ClassLabel). Pass it as `label_list` to get the same ids as
# the Hub when loading the CoNLL-2003 text files.
CONLL2003_NER_LABELS: tuple[str, ...] = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


@dataclass
class _Sentence:
    """One NER example before encoding, with the line of each token so that label checks can point at it."""

    tokens: list[str]
    tags: list[Any]
    lines: list[int]


_IOB_TAG = re.compile(r"O|[BIESLU]-\S+")  # O, B-PER, I-ORG, E-LOC, S-MISC, L-/U-… (IOB1/IOB2/IOBES/BILOU)
_COLUMN_SPLIT = re.compile(r"[ \t]+")  # ASCII blanks only: str.split() would also break tokens at U+00A0 etc.


# Where CoNLL-2003's column files keep each kind of tag ("token POS chunk NER"), by the Hub dataset's column names.
CONLL_TAG_COLUMNS = {"ner_tags": -1, "pos_tags": 1, "chunk_tags": 2}


def _read_conll_sentences(path: PathLike, tag_column: str = "ner_tags") -> list[_Sentence]:
    """Parse a CoNLL column file: token first, tag last, 2-4 columns, blank lines between sentences. `tag_column`
    "pos_tags"/"chunk_tags" reads the POS or chunk tags of a 4-column file instead of the last column's.

    `-DOCSTART-` lines end a sentence. A line whose first column is `#` before a sentence's first token is a comment
    (the convention of CoNLL-U's `# sent_id = 1` and MultiCoNER's `# id … domain=en`), skipped, unless it reads as a
    token line of the file: as many columns as its token lines, and a tag they use or an IOB tag of their entity
    types (`#\tO`, `#\tB-MISC`, and `# # B-NP O`: a real `#` token; see `_without_comment_lines`)."""
    if tag_column not in CONLL_TAG_COLUMNS:
        raise ValueError(
            f"{path}: CoNLL column files hold NER, POS and chunk tags ({', '.join(CONLL_TAG_COLUMNS)}), not "
            f"{tag_column!r}: pass one of those as the label column (--label_column_name), or use JSON lines."
        )
    tag_index = CONLL_TAG_COLUMNS[tag_column]
    # One line end however many carriage returns precede it: a CRLF file rewritten in text mode on Windows ends its
    # lines in \r\r\n, which universal newlines would read as a blank line (a sentence break) after every token.
    text = re.sub(r"\r+\n", "\n", read_text(path))
    sentences: list[tuple[_Sentence, list[tuple[list[str], int]]]] = []  # each with its leading `#` lines
    current, leading = _Sentence([], [], []), []
    first_width: tuple[int, int] | None = None  # (columns, line) of the first token line

    def flush() -> None:
        nonlocal current, leading
        if current.tokens or leading:
            sentences.append((current, leading))
        current, leading = _Sentence([], [], []), []

    for line, raw in enumerate(io.StringIO(text, newline=None), start=1):
        stripped = raw.strip(" \t\r\n\ufeff")  # U+FEFF: the byte-order mark of each file of a concatenation
        if not stripped:
            flush()
            continue
        columns = _COLUMN_SPLIT.split(stripped)
        if columns[0] == "-DOCSTART-":
            flush()  # a document boundary also ends a sentence
            continue
        if columns[0] == "#" and not current.tokens:  # a comment, or a `#` token: told apart once the tags are known
            leading.append((columns, line))
            continue
        if not 2 <= len(columns) <= 4:
            raise data_error(
                path,
                line,
                f"found {len(columns)} column(s) {columns!r}; expected 2 to 4 whitespace-separated columns",
                "write 'token [POS] [chunk] tag' on each line and separate sentences with a blank line",
            )
        if first_width is None:
            first_width = (len(columns), line)
            if tag_index > 0 and len(columns) != 4:
                raise data_error(
                    path, line, f"reading {tag_column} needs the 4 columns 'token POS chunk NER', found {len(columns)}",
                    "read the NER tags (the last column) or give the file all four columns",
                )
        elif len(columns) != first_width[0]:
            # A changing column count means a token or tag went missing: the last column is no longer the tag.
            raise data_error(
                path,
                line,
                f"found {len(columns)} columns but line {first_width[1]} has {first_width[0]}",
                "give every token line the same columns 'token [POS] [chunk] tag'",
            )
        current.tokens.append(columns[0])
        current.tags.append(columns[tag_index].strip())  # tags hold no blanks: a trailing U+00A0 is not part of it
        current.lines.append(line)
    flush()
    sentences = _without_comment_lines(sentences, first_width[0] if first_width else 0, tag_index)

    if not sentences:
        raise empty_file_error(
            path, text, "sentence", "write one 'token ... tag' line per token and a blank line between sentences"
        )
    return sentences


def _without_comment_lines(sentences: list[tuple[_Sentence, list[tuple[list[str], int]]]], width: int,
                           tag_index: int) -> list[_Sentence]:
    """The sentences with their leading `#` lines that read as token lines put back in front, the comments dropped,
    and sentences of comments only gone. A token line has the file's width and, in the tag column read, a tag the
    file's token lines hold there, or one of their IOB/BILOU tags' shape and entity types (`B-MISC` beside `I-MISC`;
    chunk and NER columns), or `#`, the Penn Treebank's POS tag of `#` (the POS column)."""
    seen = {tag for sentence, _ in sentences for tag in sentence.tags}  # the tags the token lines use
    column = tag_index % width if width else 0  # 1..width-1
    iob_column = column == width - 1 or (width == 4 and column == 2)  # "token POS chunk NER": chunk and NER
    types = {tag.split("-", 1)[1] for tag in seen if _IOB_TAG.fullmatch(tag) and "-" in tag}

    def is_token_line(columns: list[str]) -> bool:
        if len(columns) != width:
            return False
        tag = columns[tag_index].strip()  # as the token lines' tags (a trailing U+00A0)
        if tag in seen or (iob_column and tag == "O"):
            return True
        if iob_column and _IOB_TAG.fullmatch(tag) and tag.split("-", 1)[1] in types:
            return True
        return width == 4 and column == 1 and tag == "#"

    kept = []
    for sentence, leading in sentences:
        tokens = [(columns, line) for columns, line in leading if is_token_line(columns)]
        sentence.tokens[:0] = [columns[0] for columns, _ in tokens]
        sentence.tags[:0] = [columns[tag_index].strip() for columns, _ in tokens]
        sentence.lines[:0] = [line for _, line in tokens]
        if sentence.tokens:
            kept.append(sentence)
    return kept


def _read_ner_jsonl_sentences(
    path: PathLike, token_column: str = "tokens", tag_column: str = "ner_tags"
) -> list[_Sentence]:
    """Parse JSON lines (or a JSON array) of {"tokens": [...], "ner_tags": [...]} records."""
    text = read_text(path)
    sentences = []
    fix = f'write {{"{token_column}": [...], "{tag_column}": [...]}} on each line'
    for line, record in iter_json_objects(path, text, fix):
        missing = [c for c in (token_column, tag_column) if c not in record]
        if missing:
            raise data_error(
                path,
                line,
                f"missing required column(s) {missing}",
                f"give every line both {token_column!r} and {tag_column!r}, or name the file's columns "
                "(--text_column_name, --label_column_name)",
            )
        tokens, tags = record[token_column], record[tag_column]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise data_error(path, line, f"{token_column!r} must be a list of strings", "fix the tokens")
        if not isinstance(tags, list) or not all(
            isinstance(t, str) or (isinstance(t, int) and not isinstance(t, bool)) for t in tags
        ):
            raise data_error(path, line, f"{tag_column!r} must be a list of strings (or label ids)", "fix the tags")
        if len(tokens) != len(tags):
            raise data_error(
                path,
                line,
                f"{len(tokens)} tokens but {len(tags)} tags",
                f"give exactly one tag per token in {tag_column!r}",
            )
        if not tokens:
            raise data_error(path, line, "empty sentence (no tokens)", "drop the line or add its tokens")
        sentences.append(_Sentence(list(tokens), list(tags), [line] * len(tokens)))
    if not sentences:
        raise empty_file_error(path, text, "sentence", "write one JSON object per line")
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
                        raise data_error(
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
                    raise data_error(
                        paths[split],
                        line,
                        f"tag {tag!r} is not in the label list {names}",
                        "correct the tag, or pass a label_list that contains it",
                        UnknownLabelError,
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
    files = check_data_files(data_files)
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


def get_ner_label_list(dataset: Dataset, label_column: str = "ner_tags") -> list[str]:
    """Return the label list as run_ner.py does: ClassLabel names, else the sorted unique tags."""
    feature = dataset.features[label_column].feature
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return sorted({tag for tags in dataset[label_column] for tag in tags})


def subword_labels(
    word_ids: Sequence[int | None], word_labels: Sequence[int], continuation_labels: Sequence[int] | None = None
) -> list[int]:
    """Word-level label ids onto one tokenized sentence, as run_ner.py aligns them: the first sub-word of each word
    carries the word's label; the word's other sub-words get -100 (ignored by the loss and the metric), or, with
    `continuation_labels` (label id -> id: B-X -> I-X, run_ner's --label_all_tokens), that label; special tokens and
    padding (word id None) get -100."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(-100)
        elif word != previous:
            labels.append(word_labels[word])
        else:
            labels.append(-100 if continuation_labels is None else continuation_labels[word_labels[word]])
        previous = word
    return labels


def count_unscored_words(tokenizer, sentences: Sequence[Sequence[str]], max_length: int | None) -> tuple[int, int]:
    """(words that get no token, all words) of `sentences` tokenized as the NER script tokenizes them: words the
    tokenizer drops entirely (a zero-width space, a soft hyphen) and words cut by truncation get no prediction, so
    the metrics leave them out (as run_ner.py's do)."""
    unscored = total = 0
    for start in range(0, len(sentences), 256):
        batch = [list(words) for words in sentences[start:start + 256]]
        encoded = tokenizer(batch, is_split_into_words=True, truncation=True, max_length=max_length)
        for index, words in enumerate(batch):
            seen = {word for word in encoded.word_ids(batch_index=index) if word is not None}
            total += len(words)
            unscored += len(words) - len(seen)
    return unscored, total


def needs_word_spaces(tokenizer) -> bool:
    """Whether `tokenizer` is byte-level BPE (GPT-2, RoBERTa, ModernBERT, Qwen2, …) that puts no space before a
    pre-split word: each word would then be tokenized as a sentence start, unlike the running text it learnt from.
    run_ner.py relies on `add_prefix_space=True`, which only some tokenizer classes take, and chooses them by model
    type; this reads the tokenizer's own pre-tokenizer."""
    pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre_tokenizer is None:
        return False
    nodes = [json.loads(pre_tokenizer.__getstate__())]  # its own JSON, not the whole tokenizer's with the vocabulary
    while nodes:
        node = nodes.pop()
        if node.get("type") == "ByteLevel" and not node.get("add_prefix_space", False):
            return True
        nodes.extend(node.get("pretokenizers") or [])
    return False


def words_as_in_running_text(sentences: Sequence[Sequence[str]], add_word_spaces: bool) -> list[list[str]]:
    """Pre-split words for `tokenizer(..., is_split_into_words=True)`; with `add_word_spaces`
    (`needs_word_spaces(tokenizer)`) each word gets its leading space, so that it is tokenized as in running text."""
    if not add_word_spaces:
        return [list(words) for words in sentences]
    return [[" " + word for word in words] for words in sentences]
