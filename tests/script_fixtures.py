"""Tiny pretrained-encoder folders and tiny data files for the end-to-end script tests (written into tmp dirs)."""

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = (
    "the a of in to and is was on at for with by from john smith mary jones paris london berlin germany france "
    "acme corp bank reuters said visited met good bad film movie great awful boring fun plot acting it not very "
    "this that he she they we like liked hate play played team won lost match today yesterday"
).split()

# One CoNLL-2003-style document per split: token POS chunk NER, -DOCSTART- first, blank line between sentences.
CONLL_SENTENCES = [
    [("John", "B-PER"), ("Smith", "I-PER"), ("visited", "O"), ("Paris", "B-LOC"), (".", "O")],
    [("Mary", "B-PER"), ("met", "O"), ("Jones", "B-PER"), ("in", "O"), ("London", "B-LOC")],
    [("Acme", "B-ORG"), ("Corp", "I-ORG"), ("won", "O"), ("in", "O"), ("Berlin", "B-LOC")],
    [("Reuters", "B-ORG"), ("said", "O"), ("Germany", "B-LOC"), ("played", "O"), ("France", "B-LOC")],
    [("the", "O"), ("team", "O"), ("lost", "O"), ("the", "O"), ("match", "O"), ("today", "O")],
    [("Smith", "B-PER"), ("liked", "O"), ("the", "O"), ("Bank", "B-ORG"), ("of", "I-ORG"), ("London", "I-ORG")],
]
SENTIMENT = [
    ("we liked the film", 1), ("an awful movie today", 0), ("the acting was very good", 1), ("boring plot", 0),
    ("fun and great", 1), ("a bad film today", 0), ("it was not very good", 0), ("i liked this movie", 1),
]


def tiny_encoder_folder(folder: Path) -> Path:
    """A 2-layer BERT with a WordPiece tokenizer over WORDS, saved like a Hub checkpoint (BertModel + tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *sorted(set(WORDS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64,
    )
    # Seeded: otherwise its weights depend on what the same pytest worker ran before, and so does every training
    # trajectory of the scripts (a dev-selection test failed that way when the file order changed).
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    return folder


def write_conll(path: Path, sentences=CONLL_SENTENCES, columns: int = 4) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        for token, tag in sentence:
            middle = ["NNP", "B-NP"][: columns - 2]
            lines.append(" ".join([token, *middle, tag]))
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_conll_folder(folder: Path, with_validation: bool = True) -> Path:
    """A CoNLL-2003-style dataset folder: train.txt with every sentence and valid.txt with the first four."""
    folder.mkdir(parents=True, exist_ok=True)
    write_conll(folder / "train.txt")
    if with_validation:
        write_conll(folder / "valid.txt", CONLL_SENTENCES[:4])
    return folder


def write_ner_jsonl(path: Path, sentences=CONLL_SENTENCES) -> Path:
    with path.open("w") as handle:
        for sentence in sentences:
            handle.write(json.dumps({"tokens": [t for t, _ in sentence], "ner_tags": [g for _, g in sentence]}) + "\n")
    return path


def write_mrpc_tsv(path: Path, rows=SENTIMENT) -> Path:
    """MRPC layout: UTF-8 byte-order mark, header, tab separated, a lone double quote that CSV quoting would eat."""
    lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i, (text, label) in enumerate(rows):
        lines.append(f'{label}\t{i}\t{i + 100}\t{text} "\t{text}')
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_cola_tsv(path: Path, rows=SENTIMENT) -> Path:
    """CoLA layout: no header; source, label, original label, sentence."""
    path.write_text("".join(f"src\t{label}\t{'*' if not label else ''}\t{text}\n" for text, label in rows))
    return path


def write_csv(path: Path, rows=SENTIMENT) -> Path:
    path.write_text("sentence,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows))
    return path


def write_json_lines(path: Path, rows=SENTIMENT) -> Path:
    path.write_text("".join(json.dumps({"sentence": text, "label": label}) + "\n" for text, label in rows))
    return path
