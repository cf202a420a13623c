"""Tests for dwatt.data: GLUE TSV, CSV/JSON, CoNLL/JSON-lines NER loaders, entry points, few-shot sampling.

Every fixture is a tiny hand-written file in tmp_path; expected values are written out by hand. The one test that
reads the real benchmark files (../shared/data) only checks row/sentence counts and label sets.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict

import dwatt.data as data
from dwatt.data import (
    CONLL2003_NER_LABELS,
    get_classification_label_info,
    glue_task_named_by,
    get_ner_label_list,
    infer_text_columns,
    load_classification_files,
    load_conll,
    load_glue_folder,
    load_glue_tsv,
    load_ner_data,
    load_ner_files,
    load_ner_jsonl,
    load_text_classification_data,
    select_few_shot,
)


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def assert_names_line(excinfo: pytest.ExceptionInfo, path: Path, line: int) -> None:
    message = str(excinfo.value)
    assert path.name in message, message
    assert f"line {line}:" in message, message
    assert "Fix:" in message, message


# ---------------------------------------------------------------------------------------------------------------------
# GLUE TSV
# ---------------------------------------------------------------------------------------------------------------------


def test_cola_without_header(tmp_path):
    path = write(
        tmp_path / "dev.tsv",
        "gj04\t1\t\tThe sailors rode the breeze.\n"
        'gj04\t0\t*\tThe "weights made the rope.\n'  # an unbalanced quote: must not swallow the next row
        "cj99\t1\t\tA third sentence.\n",
    )
    ds = load_glue_tsv(path, "cola")
    assert ds.column_names == ["sentence", "label", "idx"]
    assert ds["sentence"] == ["The sailors rode the breeze.", 'The "weights made the rope.', "A third sentence."]
    assert ds["label"] == [1, 0, 1]
    assert ds["idx"] == [0, 1, 2]
    assert ds.features["label"].names == ["unacceptable", "acceptable"]


def test_cola_test_file_has_header_and_no_labels(tmp_path):
    path = write(tmp_path / "test.tsv", "index\tsentence\n0\tBill whistled.\n1\tThe car honked.\n")
    ds = load_glue_tsv(path, "CoLA", require_label=False)
    assert ds["sentence"] == ["Bill whistled.", "The car honked."]
    assert ds["label"] == [-1, -1]


def test_mrpc_with_bom_and_quotes(tmp_path):
    path = write(
        tmp_path / "train.tsv",
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t11\t12\tHe said "the pie business\t"The pie business does not fit.\n'
        "0\t21\t22\tSecond left.\tSecond right.\n",
        bom=True,
    )
    ds = load_glue_tsv(path, "mrpc")
    assert ds.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert len(ds) == 2
    assert ds[0] == {
        "sentence1": 'He said "the pie business',
        "sentence2": '"The pie business does not fit.',
        "label": 1,
        "idx": 0,
    }
    assert ds[1]["sentence1"] == "Second left."
    assert ds["label"] == [1, 0]
    assert ds.features["label"].names == ["not_equivalent", "equivalent"]


def test_rte_string_labels_follow_hub_ids(tmp_path):
    path = write(
        tmp_path / "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n"
        "0\tA man sleeps.\tSomeone sleeps.\tentailment\n"
        "1\tA cat.\tA dog.\tnot_entailment\n",
    )
    ds = load_glue_tsv(path, "rte")
    assert ds["label"] == [0, 1]  # Hub: 0 = entailment, 1 = not_entailment
    assert ds["sentence2"] == ["Someone sleeps.", "A dog."]


def test_stsb_float_scores(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = write(
        tmp_path / "dev.tsv",
        header
        + "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA cat naps.\tA cat is napping.\t5.000\n"
        + "1\tmain-news\tMSRpar\t2012test\t0001\tnone\tnone\tOne.\tTwo.\t0.750\n",
    )
    ds = load_glue_tsv(path, "STS-B")
    assert ds.features["label"].dtype == "float32"
    assert ds["label"] == pytest.approx([5.0, 0.75])
    assert ds["sentence1"] == ["A cat naps.", "One."]


def test_glue_folder_splits_and_unlabelled_test(tmp_path):
    folder = tmp_path / "SST-2"
    write(folder / "train.tsv", "sentence\tlabel\ngood film \t1\nbad film \t0\nok \t1\n")
    write(folder / "dev.tsv", "sentence\tlabel\nfine \t1\n")
    write(folder / "test.tsv", "index\tsentence\n0\tunseen one\n1\tunseen two\n")
    dd = load_glue_folder(folder)  # task inferred from the folder name
    assert set(dd) == {"train", "validation", "test"}
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [3, 1, 2]
    assert dd["train"]["label"] == [1, 0, 1]
    assert dd["test"]["label"] == [-1, -1]
    assert dd["train"].features["label"].names == ["negative", "positive"]


def test_mnli_folder_uses_hub_split_names(tmp_path):
    folder = tmp_path / "MNLI"
    header = "index\tsentence1\tsentence2\tgold_label\n"
    write(folder / "train.tsv", header + "0\tP one.\tH one.\tneutral\n1\tP two.\tH two.\tcontradiction\n")
    write(folder / "dev_matched.tsv", header + "0\tP.\tH.\tentailment\n")
    write(folder / "dev_mismatched.tsv", header + "0\tP.\tH.\tcontradiction\n")
    dd = load_glue_folder(folder, "mnli")
    assert set(dd) == {"train", "validation_matched", "validation_mismatched"}
    assert dd["train"].column_names == ["premise", "hypothesis", "label", "idx"]
    assert dd["train"]["label"] == [1, 2]
    assert dd["validation_mismatched"]["label"] == [2]


def test_glue_bad_field_count_names_line(tmp_path):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\nfine\t1\nbroken row without tab\nlater\t0\n")
    with pytest.raises(ValueError) as excinfo:
        load_glue_tsv(path, "sst2")
    assert_names_line(excinfo, path, 3)


def test_glue_unknown_label_names_line(tmp_path):
    path = write(
        tmp_path / "train.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n",
    )
    with pytest.raises(ValueError) as excinfo:
        load_glue_tsv(path, "rte")
    assert_names_line(excinfo, path, 3)
    assert "maybe" in str(excinfo.value)


def test_glue_missing_column_names_header_line(tmp_path):
    path = write(tmp_path / "train.tsv", "index\tsentence1\tlabel\n0\tonly one sentence\tentailment\n")
    with pytest.raises(ValueError) as excinfo:
        load_glue_tsv(path, "rte")
    assert_names_line(excinfo, path, 1)
    assert "sentence2" in str(excinfo.value)


def test_glue_missing_label_column_in_train(tmp_path):
    path = write(tmp_path / "train.tsv", "index\tsentence\n0\tno label here\n")
    with pytest.raises(ValueError) as excinfo:
        load_glue_tsv(path, "sst2")
    assert_names_line(excinfo, path, 1)


@pytest.mark.parametrize("content, line", [("", 1), ("sentence\tlabel\n", 2)])
def test_glue_empty_file(tmp_path, content, line):
    path = write(tmp_path / "dev.tsv", content)
    with pytest.raises(ValueError) as excinfo:
        load_glue_tsv(path, "sst2")
    assert_names_line(excinfo, path, line)


# ---------------------------------------------------------------------------------------------------------------------
# CSV / JSON text classification
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["text", "label"], ("text", None)),
        (["label", "premise", "hypothesis", "extra"], ("premise", "hypothesis")),
        (["id", "sentence2", "label", "sentence1"], ("sentence1", "sentence2")),
        (["id", "sentence", "label"], ("sentence", None)),  # run_glue.py: ("id", "sentence")
        (["index", "sentence"], ("sentence", None)),  # GLUE's test files
        (["idx", "question", "sentence", "label"], ("question", "sentence")),  # the Hub's GLUE
    ],
)
def test_infer_text_columns_like_run_glue(columns, expected):
    assert infer_text_columns(columns) == expected


def test_csv_pair_with_quoted_multiline_field(tmp_path):
    train = write(
        tmp_path / "train.csv",
        "sentence1,sentence2,label\n"
        '"Hello, world",Hi,1\n'
        '"Line one\nline two","He said ""yes""",0\n'
        "plain,text,1\n",
    )
    dev = write(tmp_path / "dev.csv", "sentence1,sentence2,label\nx,y,0\n")
    dd = load_classification_files({"train": train, "validation": dev})
    assert dd["train"]["sentence1"] == ["Hello, world", "Line one\nline two", "plain"]
    assert dd["train"]["sentence2"] == ["Hi", 'He said "yes"', "text"]
    assert dd["train"]["label"] == [1, 0, 1]
    assert dd["train"].features["label"].dtype == "int64"
    assert get_classification_label_info(dd["train"]) == (False, [0, 1])


def test_csv_error_line_after_multiline_field(tmp_path):
    # The quoted field spans lines 2-3, so the row with the empty label starts on line 4.
    path = write(tmp_path / "train.csv", 'text,label\n"two\nlines",1\nno label,\n')
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 4)


def test_csv_error_inside_multiline_row_names_its_first_line(tmp_path):
    # The bad row starts on line 3 and its quoted field runs on to line 4.
    path = write(tmp_path / "train.csv", 'text,label\nok,1\n"two\nlines",\n')
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 3)


def test_a_tsv_file_is_read_as_glues_are_unless_it_is_quoted_as_csv(tmp_path):
    """With CSV quoting, a sentence opening with `"` took the rows after it into one field: 5 rows became 3, silently
    (RTE's train.tsv without --task_name lost quotes in 71 sentences). A TSV file pandas wrote (`to_csv(sep="\t")`)
    is quoted as CSV, though: a value holding `"` is wrapped and its quotes doubled, one holding a line break wrapped."""
    sentences = ['"Quoted" at the start', "plain", 'unbalanced " quote', "another", "last one"]
    path = write(tmp_path / "train.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(sentences)))
    ds = load_classification_files({"train": path})["train"]
    assert ds["sentence"] == sentences and ds["label"] == [0, 1, 0, 1, 0]
    written_by_pandas = ['He said "hi" to me', "two\nlines", "plain"]
    frame = tmp_path / "pandas.tsv"
    with frame.open("w", newline="") as handle:  # what pandas writes: csv's minimal quoting
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["sentence", "label"])
        writer.writerows([text, i % 2] for i, text in enumerate(written_by_pandas))
    assert load_classification_files({"train": frame})["train"]["sentence"] == written_by_pandas
    only_quotes = write(tmp_path / "quotes.tsv", 'sentence\tlabel\n"He said ""hi"""\t1\nplain\t0\n')
    assert load_classification_files({"train": only_quotes})["train"]["sentence"] == ['He said "hi"', "plain"]


def _pandas_minimal_quoting(path: Path, header: list[str], rows: list[list]) -> Path:
    """A TSV file as pandas' `to_csv(sep="\t", index=False)` writes it: csv's minimal quoting."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_tsv_quoted_but_for_its_numbers_is_read_with_quoting(tmp_path):
    """pandas' QUOTE_NONNUMERIC (and R's write.table) wraps every value but the numbers: no doubled quote inside
    says so, so the file is known by every other value (the header included) being wrapped."""
    path = write(tmp_path / "train.tsv", '"sentence"\t"label"\n"a fine film"\t1\n"dull"\t0\n')
    ds = load_classification_files({"train": path})["train"]
    assert ds["sentence"] == ["a fine film", "dull"] and ds["label"] == [1, 0]


def test_a_pandas_written_tsv_reads_back_with_a_task_name_too(tmp_path):
    """With --task_name a .tsv went to the GLUE reader, which never read quoting: GLUE's columns exported with
    pandas came back wrapped in quotes with their quotes doubled (439 of RTE's 2490 sentences)."""
    pairs = [['He said "hi"', "He spoke."], ["A\ttab inside", "x"], ["two\nlines", "y"], ["plain", "z"]]
    path = _pandas_minimal_quoting(tmp_path / "train.tsv", ["sentence1", "sentence2", "label"],
                                   [[a, b, i % 2] for i, (a, b) in enumerate(pairs)])
    ds = load_text_classification_data(task_name="rte", train_file=str(path))["train"]
    assert ds["sentence1"] == [a for a, _ in pairs] and ds["sentence2"] == [b for _, b in pairs]
    assert ds["label"] == [0, 1, 0, 1]


def test_quotes_around_a_whole_value_with_no_reason_to_quote_it_are_text(tmp_path):
    """Minimal quoting wraps a value only for a quote, a tab or a line break inside it: `"Yes."` alone in a file
    (a GLUE sentence quoting a reply) is text, as pandas reads it with quoting=3; unless every value is wrapped."""
    path = write(tmp_path / "train.tsv", 'sentence\tlabel\n"Yes."\t1\nno\t0\n')
    assert load_classification_files({"train": path})["train"]["sentence"] == ['"Yes."', "no"]
    quote_all = write(tmp_path / "all.tsv", '"sentence"\t"label"\n"Yes."\t"1"\n"no"\t"0"\n')
    ds = load_classification_files({"train": quote_all})["train"]
    assert ds["sentence"] == ["Yes.", "no"] and ds["label"] == [1, 0]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_value_longer_than_the_csv_modules_limit_is_read(tmp_path, suffix):
    """csv refuses a value over 128 KiB by default; pandas and load_dataset read a long document."""
    document = "word " * 40_000  # 200,000 characters
    sep = "," if suffix == ".csv" else "\t"
    path = write(tmp_path / f"train{suffix}", f"sentence{sep}label\n{document}{sep}1\nshort{sep}0\n")
    assert load_classification_files({"train": path})["train"]["sentence"] == [document, "short"]


def test_a_tasks_text_columns_are_taken_before_any_guess(tmp_path):
    """run_glue.py reads a named task's columns (question1/question2 for QQP): the first two columns besides the
    label were guessed instead, Kaggle's QQP ids among them, and the file was refused as holding ids."""
    qqp = write(tmp_path / "qqp.csv", "id,qid1,qid2,question1,question2,label\n0,1,2,What is x?,What is y?,0\n"
                                      "1,3,4,Why?,How?,1\n")
    ds = load_text_classification_data(task_name="qqp", train_file=str(qqp))["train"]
    assert ds["question1"] == ["What is x?", "Why?"] and ds["label"] == [0, 1]
    cola = write(tmp_path / "cola.csv", "source,label,orig_label,sentence\ngj04,1,,The book fell.\n"
                                        "gj04,0,*,Fell book the.\n")
    cola_test = write(tmp_path / "cola_test.csv", "index,sentence\n0,A sentence.\n")
    splits = load_text_classification_data(task_name="cola", train_file=str(cola), test_file=str(cola_test))
    assert splits["train"]["sentence"] == ["The book fell.", "Fell book the."] and splits["test"]["sentence"] == ["A sentence."]
    with pytest.raises(ValueError, match="integer in every row"):  # without a task, the guess is refused as before
        load_text_classification_data(train_file=str(qqp))


def test_a_test_file_labelled_minus_one_is_unlabelled_beside_named_labels(tmp_path):
    """Typed with the train file's class names, GLUE's -1 became the string "-1": MRPC was refused as having a
    third label, and a generic file's test split as holding an unknown one (run_glue.py types each file alone)."""
    train = write(tmp_path / "train.csv", "sentence1,sentence2,label\na,b,equivalent\nc,d,not_equivalent\n")
    test = write(tmp_path / "test.csv", "sentence1,sentence2,label\ne,f,-1\ng,h,-1\n")
    splits = load_text_classification_data(task_name="mrpc", train_file=str(train), test_file=str(test))
    assert splits["train"]["label"] == [1, 0]  # the Hub's ids: equivalent = 1
    assert splits["test"]["label"] == [-1, -1]
    generic = load_text_classification_data(train_file=str(train), test_file=str(test))
    assert generic["train"]["label"] == ["equivalent", "not_equivalent"] and generic["test"]["label"] == [-1, -1]
    classes = write(tmp_path / "classes.csv", "sentence,label\na,-1\nb,1\n")  # -1 as a class stays a class
    minus_one_test = write(tmp_path / "minus_one.csv", "sentence,label\nc,-1\n")
    splits = load_classification_files({"train": classes, "test": minus_one_test}, label_list=["-1", "1"])
    assert splits["test"]["label"] == [0]
    binary = write(tmp_path / "binary.csv", "sentence,label\na,0\nb,1\n")  # -1 a class by the label list only
    splits = load_classification_files({"train": binary, "test": minus_one_test}, label_list=["-1", "0", "1"])
    assert splits["test"]["label"] == [0]


@pytest.mark.parametrize("value", ["NaN", "nan", "inf", "-Infinity"])
def test_a_non_finite_csv_label_is_refused(tmp_path, value):
    """pandas reads NaN/inf labels as numbers, and a regressor trained on them (JSON files refused them already)."""
    path = write(tmp_path / "train.csv", f"sentence,label\na,0.5\nb,{value}\n")
    with pytest.raises(ValueError, match="finite number") as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 3)
    names = write(tmp_path / "names.csv", f"sentence,label\na,pos\nb,{value}\n")  # among class names, a name
    assert load_classification_files({"train": names})["train"]["label"] == ["pos", value]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_an_integer_id_column_is_not_taken_for_the_first_sentence(tmp_path, suffix):
    """`id,sentence,label`: every CSV cell is a string, so `id` became sentence 1 and the model trained on pairs. An id
    column is left out by its name; one under another name is refused, as it holds an integer in every row."""
    sep = "," if suffix == ".csv" else "\t"
    path = write(tmp_path / f"train{suffix}", f"id{sep}sentence{sep}label\n7{sep}good{sep}1\n8{sep}bad{sep}0\n")
    assert load_classification_files({"train": path})["train"]["sentence"] == ["good", "bad"]
    other = write(tmp_path / f"other{suffix}", f"pair_id{sep}sentence{sep}label\n7{sep}good{sep}1\n8{sep}bad{sep}0\n")
    with pytest.raises(ValueError, match=r"text column 'pair_id' .* holds an integer in every row, such as '7': an id"):
        load_classification_files({"train": other})
    numbered = write(tmp_path / f"numbers{suffix}", f"sentence{sep}label\n7 days{sep}1\n8{sep}0\n")
    assert load_classification_files({"train": numbered})["train"]["sentence"] == ["7 days", "8"]


def test_stsb_files_with_integer_scores_are_regression_and_glue_classes_are_not_decimals(tmp_path):
    """`--task_name stsb` with a CSV of integer scores trained a 6-way classifier (Pearson on class ids); a
    classification task's 0.0/1.0 labels would train a regressor."""
    scores = write(tmp_path / "stsb.csv", "sentence1,sentence2,label\na,b,3\nc,d,5\n")
    ds = load_text_classification_data(task_name="stsb", train_file=scores)["train"]
    assert ds.features["label"].dtype == "float64" and ds["label"] == [3.0, 5.0]
    assert get_classification_label_info(ds) == (True, None)
    words = write(tmp_path / "stsb.jsonl", '{"sentence1": "a", "sentence2": "b", "label": "high"}\n')
    with pytest.raises(ValueError, match="stsb labels are similarity scores, and these are not all numbers"):
        load_text_classification_data(task_name="stsb", train_file=words)
    decimals = write(tmp_path / "sst2.csv", "sentence,label\ngood,1.0\nbad,0.0\n")
    with pytest.raises(ValueError, match=r"sst2 is a classification task, but its labels are decimal numbers \(such as"):
        load_text_classification_data(task_name="sst2", train_file=decimals)
    assert get_classification_label_info(load_classification_files({"train": decimals})["train"]) == (True, None)


def test_a_capitalised_label_header_is_named_in_the_refusal(tmp_path):
    path = write(tmp_path / "train.csv", "Sentence,Label\ngood,1\nbad,0\n")
    with pytest.raises(ValueError, match=r"no 'label' column, but 'Label' .* rename 'Label' to 'label'"):
        load_classification_files({"train": path})


def test_csv_float_labels_are_regression(tmp_path):
    path = write(tmp_path / "train.csv", "a,b,label\nx,y,0.5\nz,w,3\n")
    ds = load_classification_files({"train": path})["train"]
    assert ds.features["label"].dtype == "float64"
    assert ds["label"] == [0.5, 3.0]
    assert get_classification_label_info(ds) == (True, None)


def test_csv_string_labels_and_label_list(tmp_path):
    path = write(tmp_path / "train.csv", "review,label\ngreat,pos\nawful,neg\nmeh,neg\n")
    plain = load_classification_files({"train": path})["train"]
    assert plain["label"] == ["pos", "neg", "neg"]
    assert get_classification_label_info(plain) == (False, ["neg", "pos"])

    encoded = load_classification_files({"train": path}, label_list=["neg", "pos"])["train"]
    assert isinstance(encoded.features["label"], ClassLabel)
    assert encoded["label"] == [1, 0, 0]


def test_csv_label_outside_label_list(tmp_path):
    path = write(tmp_path / "train.csv", "review,label\ngreat,pos\nodd,neutral\n")
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path}, label_list=["neg", "pos"])
    assert_names_line(excinfo, path, 3)


def test_csv_missing_label_column(tmp_path):
    path = write(tmp_path / "train.csv", "sentence1,sentence2\na,b\n")
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 1)
    assert "label" in str(excinfo.value)


def test_csv_validation_missing_text_column(tmp_path):
    train = write(tmp_path / "train.csv", "sentence1,sentence2,label\na,b,1\n")
    dev = write(tmp_path / "dev.csv", "sentence1,label\na,1\n")
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": train, "validation": dev})
    assert_names_line(excinfo, dev, 1)
    assert "sentence2" in str(excinfo.value)


def test_csv_empty_file(tmp_path):
    path = write(tmp_path / "train.csv", "text,label\n")
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 2)


def test_json_lines_classification_and_unlabelled_test(tmp_path):
    train = write(
        tmp_path / "train.json",
        '{"premise": "A.", "hypothesis": "B.", "label": 2}\n\n{"premise": "C.", "hypothesis": "D.", "label": 0}\n',
    )
    test = write(tmp_path / "test.jsonl", '{"premise": "E.", "hypothesis": "F."}\n')
    dd = load_classification_files({"train": train, "test": test})
    assert dd["train"]["premise"] == ["A.", "C."]
    assert dd["train"]["label"] == [2, 0]
    assert dd["train"].features["label"].dtype == "int64"
    assert dd["test"].column_names == ["premise", "hypothesis"]  # no label column invented


def test_json_array_error_names_line(tmp_path):
    path = write(
        tmp_path / "train.json",
        '[\n  {"text": "a", "label": 1},\n  {"text": "b", "label": 0},\n  {"label": 1}\n]\n',
    )
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 4)


def test_json_lines_missing_text_column_names_line(tmp_path):
    path = write(
        tmp_path / "train.jsonl",
        '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "c", "label": 0}\n',
    )
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 2)
    assert "sentence2" in str(excinfo.value)


def test_json_lines_invalid_json_names_line(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 2)


# ---------------------------------------------------------------------------------------------------------------------
# NER: CoNLL and JSON lines
# ---------------------------------------------------------------------------------------------------------------------

CONLL_4_COLUMNS = (
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "ACME NNP B-NP B-ORG\n"
    "hires VBZ B-VP O\n"
    "Dutch JJ B-NP B-MISC\n"
    "\n"
    "Anna NNP B-NP B-PER\n"
    "Jansen NNP I-NP I-PER\n"
    "\n"
    "\n"
    "-DOCSTART- -X- -X- O\n"
    "\n"
    "UTRECHT NNP B-NP B-LOC\n"  # last sentence without a trailing blank line
)


def test_conll_four_columns_with_docstart(tmp_path):
    ds = load_conll(write(tmp_path / "train.txt", CONLL_4_COLUMNS))
    assert ds.column_names == ["id", "tokens", "ner_tags"]
    assert ds["tokens"] == [["ACME", "hires", "Dutch"], ["Anna", "Jansen"], ["UTRECHT"]]
    assert ds["id"] == ["0", "1", "2"]
    names = get_ner_label_list(ds)
    assert names == ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER", "O"]  # sorted, as run_ner.py's get_label_list
    tags = [[names[i] for i in sentence] for sentence in ds["ner_tags"]]
    assert tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]


@pytest.mark.parametrize("tag_column, expected", [
    ("ner_tags", [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]),
    ("pos_tags", [["NNP", "VBZ", "JJ"], ["NNP", "NNP"], ["NNP"]]),
    ("chunk_tags", [["B-NP", "B-VP", "B-NP"], ["B-NP", "I-NP"], ["B-NP"]]),
])
def test_conll_files_give_the_tags_named_like_the_hubs_columns(tmp_path, tag_column, expected):
    """run_ner.py --task_name pos/chunk reads pos_tags/chunk_tags: CoNLL-2003's second and third columns."""
    splits = load_ner_files({"train": write(tmp_path / "train.txt", CONLL_4_COLUMNS)}, tag_column=tag_column)
    ds = splits["train"]
    assert ds.column_names == ["id", "tokens", tag_column]
    names = get_ner_label_list(ds, tag_column)
    assert [[names[i] for i in sentence] for sentence in ds[tag_column]] == expected


def test_conll_tags_that_the_files_do_not_hold_are_refused(tmp_path):
    with pytest.raises(ValueError, match="CoNLL column files hold NER, POS and chunk tags .* not 'upos'"):
        load_ner_files({"train": write(tmp_path / "train.txt", CONLL_4_COLUMNS)}, tag_column="upos")
    two_columns = write(tmp_path / "two.txt", "Anna B-PER\nJansen I-PER\n")
    with pytest.raises(ValueError, match="reading pos_tags needs the 4 columns 'token POS chunk NER', found 2"):
        load_ner_files({"train": two_columns}, tag_column="pos_tags")


def test_conll_ids_follow_given_label_list(tmp_path):
    ds = load_conll(write(tmp_path / "train.txt", CONLL_4_COLUMNS), label_list=CONLL2003_NER_LABELS)
    # Hub conll2003 ids: O=0 B-PER=1 I-PER=2 B-ORG=3 I-ORG=4 B-LOC=5 I-LOC=6 B-MISC=7 I-MISC=8
    assert ds["ner_tags"] == [[3, 0, 7], [1, 2], [5]]
    assert ds.features["ner_tags"].feature.names == list(CONLL2003_NER_LABELS)


@pytest.mark.parametrize(
    "content",
    [
        "John B-PER\nlives O\n\nParis B-LOC\n",  # 2 columns
        "John\tNNP\tB-PER\nlives\tVBZ\tO\n\nParis\tNNP\tB-LOC\n",  # 3 columns, tab separated
        "John NNP B-NP B-PER\r\nlives VBZ B-VP O\r\n\r\nParis NNP B-NP B-LOC\r\n",  # 4 columns, CRLF
    ],
)
def test_conll_column_variants(tmp_path, content):
    ds = load_conll(write(tmp_path / "data.conll", content), label_list=["O", "B-PER", "B-LOC"])
    assert ds["tokens"] == [["John", "lives"], ["Paris"]]
    assert ds["ner_tags"] == [[1, 0], [2]]


@pytest.mark.parametrize(
    "content",
    [
        # CoNLL-U style and MultiCoNER's headers: comments before each sentence, 4 and 2 pieces (as many as tokens')
        "# sent_id = 1\nJohn NNP B-NP B-PER\nlives VBZ B-VP O\n\n# sent_id = 2\nParis NNP B-NP B-LOC\n",
        "# id 6f3c domain=en\nJohn B-PER\nlives O\n\n# id 7a1b domain=en\nParis B-LOC\n",
        # a CRLF file rewritten in text mode on Windows: every line ends in \r\r\n
        "John B-PER\r\r\nlives O\r\r\n\r\r\nParis B-LOC\r\r\n",
        # two files concatenated, each with its byte-order mark; a no-break space after a tag
        "\ufeff-DOCSTART- O\n\nJohn B-PER\nlives O\n\n\ufeff-DOCSTART- O\n\nParis B-LOC\u00a0\n",
    ],
    ids=["conllu-comments", "multiconer-comments", "cr-cr-lf", "concatenated-boms"],
)
def test_conll_files_as_users_have_them(tmp_path, content):
    """Each was read wrong without a word: comments became tokens with their last word as a tag, every token its
    own sentence, a BOM'd -DOCSTART- a sentence, `B-LOC\u00a0` a label of its own."""
    ds = load_conll(write(tmp_path / "data.conll", content))
    assert ds["tokens"] == [["John", "lives"], ["Paris"]]
    assert get_ner_label_list(ds) == ["B-LOC", "B-PER", "O"]


def test_a_hash_token_stays_a_token(tmp_path):
    """A `#` line is a comment only where it cannot be a token line: at a sentence start, with another width or a
    tag the file's token lines do not use."""
    ds = load_conll(write(tmp_path / "data.conll", "Call O\n# O\n5 O\n\n#\tB-MISC\nWinning\tI-MISC\n\n# newdoc\n\nday O\n"))
    assert ds["tokens"] == [["Call", "#", "5"], ["#", "Winning"], ["day"]]
    assert get_ner_label_list(ds) == ["B-MISC", "I-MISC", "O"]


@pytest.mark.parametrize("content, tag_column, tags", [
    ("# # B-NP O\n200 CD I-NP O\nmillion CD I-NP O\n", "pos_tags", ["#", "CD", "CD"]),  # '#' is its own PTB POS tag
    ("# # B-NP O\n200 CD I-NP O\nmillion CD I-NP O\n", "ner_tags", ["O", "O", "O"]),
    ("# # B-NP O\n200 CD I-NP O\nmillion CD I-NP O\n", "chunk_tags", ["B-NP", "I-NP", "I-NP"]),
    ("#\tU-LOC\nParis\tB-LOC\n", "ner_tags", ["U-LOC", "B-LOC"]),  # BILOU's unit tag
    ("#\tO\u00a0\nlove\tO\nParis\tB-LOC\n", "ner_tags", ["O", "O", "B-LOC"]),  # a no-break space after the tag
])
def test_a_hash_token_is_known_by_its_tag(tmp_path, content, tag_column, tags):
    """Reading POS tags, `# # B-NP O` was dropped as a comment (`#`, PTB's POS tag of `#`, is used nowhere else in a
    small file); so were `#` with BILOU's U- tag and `#` with a no-break space after its tag."""
    ds = load_ner_files({"train": write(tmp_path / "data.conll", content)}, tag_column=tag_column)["train"]
    assert ds["tokens"][0][0] == "#"
    names = ds.features[tag_column].feature.names
    assert [names[i] for i in ds[tag_column][0]] == tags


@pytest.mark.parametrize("content, tag_column", [
    ("# NNP x\nACME NNP B-ORG\nhires VBZ O\n", "ner_tags"),  # a tag the file does not use
    ("# NN annotator 1\nACME NNP B-NP B-ORG\nstaff NN I-NP O\n", "ner_tags"),  # other columns matching is not enough
    ("# U-turn\nACME B-ORG\n", "ner_tags"),  # IOB-shaped, but no entity type of the file's
    ("# sent_id = 1\nACME 22 11 3\nhires 42 21 0\n", "pos_tags"),
])
def test_a_comment_stays_a_comment(tmp_path, content, tag_column):
    ds = load_ner_files({"train": write(tmp_path / "data.conll", content)}, tag_column=tag_column)["train"]
    assert "#" not in ds["tokens"][0]


@pytest.mark.parametrize(
    "content, line",
    [
        ("John NNP B-NP B-PER\nlives\n", 2),
        ("\nlives\nJohn B-PER\n", 2),  # the first token line itself has a single column
        ("John NNP B-NP I-NP B-PER\n", 1),  # five columns
    ],
)
def test_conll_malformed_column_count(tmp_path, content, line):
    path = write(tmp_path / "train.txt", content)
    with pytest.raises(ValueError) as excinfo:
        load_conll(path)
    assert_names_line(excinfo, path, line)


def test_conll_inconsistent_columns(tmp_path):
    path = write(tmp_path / "train.txt", "John NNP B-NP B-PER\n\nParis NNP B-LOC\n")
    with pytest.raises(ValueError) as excinfo:
        load_conll(path)
    assert_names_line(excinfo, path, 3)


def test_conll_tag_outside_label_list_names_token_line(tmp_path):
    path = write(
        tmp_path / "valid.txt",
        "-DOCSTART- -X- -X- O\n\nJohn NNP B-NP B-PER\n\nAcme NNP B-NP O\nCorp NNP I-NP B-FOO\n",
    )
    with pytest.raises(ValueError) as excinfo:
        load_conll(path, label_list=CONLL2003_NER_LABELS)
    assert_names_line(excinfo, path, 6)
    assert "B-FOO" in str(excinfo.value)


def test_conll_label_error_in_second_split(tmp_path):
    train = write(tmp_path / "train.txt", "John B-PER\n")
    dev = write(tmp_path / "dev.txt", "\n\nJane B-PER\nX B-FOO\n")
    with pytest.raises(ValueError) as excinfo:
        load_ner_files({"train": train, "validation": dev}, label_list=["O", "B-PER", "I-PER"])
    assert_names_line(excinfo, dev, 4)


@pytest.mark.parametrize("content, line", [("", 1), ("-DOCSTART- -X- -X- O\n\n", 3)])
def test_conll_without_sentences(tmp_path, content, line):
    path = write(tmp_path / "test.txt", content)
    with pytest.raises(ValueError) as excinfo:
        load_conll(path)
    assert_names_line(excinfo, path, line)


def test_ner_jsonl(tmp_path):
    path = write(
        tmp_path / "train.json",
        json.dumps({"tokens": ["Ann", "runs"], "ner_tags": ["B-PER", "O"]})
        + "\n"
        + json.dumps({"tokens": ["Oslo"], "ner_tags": ["B-LOC"]})
        + "\n",
    )
    ds = load_ner_jsonl(path)
    assert ds["tokens"] == [["Ann", "runs"], ["Oslo"]]
    assert get_ner_label_list(ds) == ["B-LOC", "B-PER", "O"]
    assert ds["ner_tags"] == [[1, 2], [0]]


def test_ner_json_columns_are_chosen_by_name(tmp_path):
    """Any column names (run_ner.py's --text_column_name/--label_column_name), other columns ignored; a missing one
    is named with the options that choose it."""
    records = [{"id": 7, "words": ["Ann", "runs"], "pos_tags": ["NNP", "VBZ"], "tags": ["B-PER", "O"]}]
    path = write(tmp_path / "train.json", "".join(json.dumps(record) + "\n" for record in records))
    ds = load_ner_files({"train": path}, token_column="words", tag_column="pos_tags")["train"]
    assert ds.column_names == ["id", "words", "pos_tags"]
    assert ds["words"] == [["Ann", "runs"]]
    assert get_ner_label_list(ds, "pos_tags") == ["NNP", "VBZ"]
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['tokens'\].*--text_column_name"):
        load_ner_files({"train": path}, tag_column="tags")


def test_ner_jsonl_length_mismatch(tmp_path):
    path = write(
        tmp_path / "train.jsonl",
        '{"tokens": ["a"], "ner_tags": ["O"]}\n{"tokens": ["b", "c"], "ner_tags": ["O"]}\n',
    )
    with pytest.raises(ValueError) as excinfo:
        load_ner_jsonl(path)
    assert_names_line(excinfo, path, 2)


def test_ner_jsonl_missing_column(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"tokens": ["a"], "ner_tags": ["O"]}\n\n{"tokens": ["b"]}\n')
    with pytest.raises(ValueError) as excinfo:
        load_ner_jsonl(path)
    assert_names_line(excinfo, path, 3)
    assert "ner_tags" in str(excinfo.value)


def test_ner_jsonl_tag_outside_label_list(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"tokens": ["a", "b"], "ner_tags": ["O", "B-FOO"]}\n')
    with pytest.raises(ValueError) as excinfo:
        load_ner_jsonl(path, label_list=CONLL2003_NER_LABELS)
    assert_names_line(excinfo, path, 1)


def test_ner_jsonl_empty_file(tmp_path):
    path = write(tmp_path / "train.jsonl", "\n\n")
    with pytest.raises(ValueError) as excinfo:
        load_ner_jsonl(path)
    assert_names_line(excinfo, path, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------------


def test_load_ner_data_from_files_and_folder(tmp_path):
    folder = tmp_path / "ner"
    write(folder / "train.txt", "John B-PER\nsmiles O\n\nMary B-PER\n")
    write(folder / "valid.txt", "Bob B-PER\n")
    write(folder / "test.txt", "Ann B-PER\nOslo B-LOC\n")
    by_folder = load_ner_data(str(folder))
    assert {split: len(ds) for split, ds in by_folder.items()} == {"train": 2, "validation": 1, "test": 1}
    # The label list covers every split: B-LOC only occurs in test.
    assert get_ner_label_list(by_folder["train"]) == ["B-LOC", "B-PER", "O"]

    by_files = load_ner_data(train_file=folder / "train.txt", validation_file=folder / "valid.txt")
    assert set(by_files) == {"train", "validation"}
    assert by_files["validation"]["tokens"] == [["Bob"]]

    empty = tmp_path / "empty"
    write(empty / "notes.md", "train.txt went elsewhere\n")
    with pytest.raises(ValueError, match=r"empty: no train/valid/test files \(\.txt, \.conll, \.iob, \.iob2, \.jsonl, \.json\)"):
        load_ner_data(str(empty))


def test_a_folder_of_tsv_files_that_names_no_glue_task_is_read_by_its_header(tmp_path):
    """The docstring promised generic .tsv folders; train.tsv made it a GLUE folder, refused without a task name."""
    folder = tmp_path / "reviews"
    write(folder / "train.tsv", "text\tlabel\ngood\t1\nbad\t0\n")
    write(folder / "dev.tsv", "text\tlabel\nfine\t1\n")
    splits = load_text_classification_data(str(folder))
    assert splits["train"]["text"] == ["good", "bad"] and splits["validation"]["label"] == [1]
    write(folder / "train.tsv", "Quality\t#1 String\t#2 String\n1\ta\tb\n")  # MRPC's files in an unnamed folder
    with pytest.raises(ValueError, match=r"If these are the files of a GLUE task, name it: task_name="):
        load_text_classification_data(str(folder))


def test_load_text_classification_data_local(tmp_path):
    glue_dir = tmp_path / "glue"
    write(glue_dir / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n")
    write(glue_dir / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tc\td\tentailment\n")
    from_parent = load_text_classification_data(str(glue_dir), task_name="rte")  # $GLUE_DIR + task
    assert from_parent["train"]["label"] == [1]
    assert from_parent["validation"]["label"] == [0]

    csv_train = write(tmp_path / "train.csv", "text,label\nyes,1\nno,0\n")
    csv_dev = write(tmp_path / "dev.csv", "text,label\nmaybe,1\n")
    from_files = load_text_classification_data(train_file=csv_train, validation_file=csv_dev)
    assert from_files["validation"]["text"] == ["maybe"]


def test_hub_names_are_passed_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs.get("revision")))
        return DatasetDict()

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    load_text_classification_data(task_name="SST-2")
    load_text_classification_data("nyu-mll/glue", "mrpc")
    load_ner_data("conll2003")
    load_ner_data("eriktks/conll2003", revision="main")
    load_ner_data("wikiann", "en")
    assert calls == [
        ("nyu-mll/glue", "sst2", None),
        ("nyu-mll/glue", "mrpc", None),
        ("eriktks/conll2003", None, "refs/convert/parquet"),
        ("eriktks/conll2003", None, "main"),
        ("wikiann", "en", None),
    ]


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_ner_data(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------------------------------
# Few-shot sampling
# ---------------------------------------------------------------------------------------------------------------------


def test_select_few_shot():
    ds = Dataset.from_dict({"x": list(range(100))})
    first = select_few_shot(ds, 10, seed=13)["x"]
    assert select_few_shot(ds, 10, seed=13)["x"] == first  # reproducible
    assert select_few_shot(ds, 10, seed=14)["x"] != first  # depends on the seed
    assert first != list(range(10))  # random, not the first n
    assert len(set(first)) == 10 and set(first) <= set(range(100))
    assert first == sorted(first)  # drawn rows keep their original order
    assert select_few_shot(ds, 100, seed=0)["x"] == list(range(100))


@pytest.mark.parametrize("n", [0, -1, 101])
def test_select_few_shot_bad_size(n):
    ds = Dataset.from_dict({"x": list(range(100))})
    with pytest.raises(ValueError, match=f"n={n}"):
        select_few_shot(ds, n, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# Real benchmark files (../shared/data beside the checkout)
# ---------------------------------------------------------------------------------------------------------------------

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.integration
def test_real_shared_data_counts():
    if not SHARED_DATA.is_dir():
        pytest.fail(
            f"Real benchmark data not found at {SHARED_DATA}: it must sit beside the checkout (../shared/data)."
        )

    conll = load_ner_files(
        {split: SHARED_DATA / "conll2003" / f"{name}.txt" for split, name in
         [("train", "train"), ("validation", "valid"), ("test", "test")]},
        label_list=CONLL2003_NER_LABELS,
    )
    assert {split: len(ds) for split, ds in conll.items()} == {"train": 14041, "validation": 3250, "test": 3453}
    assert sum(len(tokens) for tokens in conll["train"]["tokens"]) == 203621  # tokens in HF conll2003 train

    expected_dev_rows = {"SST-2": 872, "MRPC": 408, "RTE": 277, "CoLA": 1043, "STS-B": 1500}
    for folder, rows in expected_dev_rows.items():
        dev = load_glue_tsv(SHARED_DATA / "glue" / folder / "dev.tsv", folder)
        assert len(dev) == rows, folder
        if folder == "STS-B":
            assert 0.0 <= min(dev["label"]) and max(dev["label"]) <= 5.0
        else:
            assert set(dev["label"]) == {0, 1}, folder


def test_glue_task_named_by_a_folder_or_the_hub_configuration(tmp_path):
    sst2 = tmp_path / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    (sst2 / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "train.csv").write_text("sentence,label\ngood,1\n")
    assert glue_task_named_by(str(sst2)) == "sst2"
    assert glue_task_named_by(str(tmp_path / "glue"), "SST-2") == "sst2"  # the $GLUE_DIR layout
    assert glue_task_named_by(str(tmp_path / "glue")) is None  # no task files there, no task named
    assert glue_task_named_by(str(tmp_path / "csv")) is None
    assert glue_task_named_by("nyu-mll/glue", "cola") == glue_task_named_by("glue", "CoLA") == "cola"
    assert glue_task_named_by("imdb") is None and glue_task_named_by(None) is None


def test_named_glue_labels_in_files_get_the_hubs_ids(tmp_path):
    """MRPC's names sorted would make "equivalent" id 0, and GLUE's F1 (positive: id 1) would score the other class."""
    rows = [("a", "b", "equivalent"), ("c", "d", "not_equivalent"), ("e", "f", "equivalent")]
    train = tmp_path / "train.csv"
    train.write_text("sentence1,sentence2,label\n" + "".join(f"{a},{b},{label}\n" for a, b, label in rows))
    test = tmp_path / "test.csv"
    test.write_text("sentence1,sentence2\ng,h\n")
    splits = load_text_classification_data(task_name="mrpc", train_file=str(train), test_file=str(test))
    assert splits["train"].features["label"].names == ["not_equivalent", "equivalent"]
    assert splits["train"]["label"] == [1, 0, 1]
    assert "label" not in splits["test"].column_names
    # Without a task, or for a task scored by accuracy, other names keep run_glue.py's sorted order.
    assert load_text_classification_data(train_file=str(train))["train"]["label"] == [r[2] for r in rows]
    other = tmp_path / "other.csv"
    other.write_text("sentence,label\nx,yes\ny,no\n")
    assert load_text_classification_data(task_name="sst2", train_file=str(other))["train"]["label"] == ["yes", "no"]
    with pytest.raises(ValueError, match=r"The mrpc labels \['no', 'yes'\] are not GLUE's .* positive class"):
        load_text_classification_data(task_name="mrpc", train_file=str(other))


def test_a_folders_configuration_that_names_no_glue_task_keeps_the_labels(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\nx,yes\ny,no\n")
    splits = load_text_classification_data(str(tmp_path), dataset_config_name="en")
    assert splits["train"]["label"] == ["yes", "no"]


def test_subword_labels_follow_run_ner():
    """Written out for one sentence of three words: [CLS] w0 w0 w1 w2 w2 w2 [SEP] [PAD] (label ids: B-PER=1, I-PER=2)."""
    from dwatt.data import subword_labels

    word_ids = [None, 0, 0, 1, 2, 2, 2, None, None]
    word_labels = [1, 0, 2]  # B-PER, O, I-PER
    assert subword_labels(word_ids, word_labels) == [-100, 1, -100, 0, 2, -100, -100, -100, -100]
    continuation = [0, 2, 2]  # O -> O, B-PER -> I-PER, I-PER -> I-PER (--label_all_tokens)
    assert subword_labels(word_ids, word_labels, continuation) == [-100, 1, 2, 0, 2, 2, 2, -100, -100]
    # A word repeated after another (a tokenizer never does this, but the rule is "changed from the previous").
    assert subword_labels([0, 1, 0], [1, 0]) == [1, 0, 1]


# ---------------------------------------------------------------------------------------------------------------------
# Behaviour that a mutation audit found unpinned: each test below failed on a one-line change of the reader.
# ---------------------------------------------------------------------------------------------------------------------


def test_wnli_string_labels_follow_hub_ids(tmp_path):
    """WNLI's ids are the reverse of RTE's on the Hub: 0 = not_entailment, 1 = entailment."""
    path = write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tnot_entailment\n")
    ds = load_glue_tsv(path, "wnli")
    assert ds.features["label"].names == ["not_entailment", "entailment"]
    assert ds["label"] == [1, 0]


@pytest.mark.parametrize("score", ["abc", "nan", "inf"])
def test_stsb_score_that_is_not_a_finite_number_names_its_line(tmp_path, score):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = write(tmp_path / "dev.tsv", header + f"0\tg\tf\ty\t0\tn\tn\tA.\tB.\t{score}\n")
    with pytest.raises(ValueError) as excinfo:
        load_glue_tsv(path, "stsb")
    assert_names_line(excinfo, path, 2)


def test_glue_row_with_a_field_too_many_names_line(tmp_path):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\nfine\t1\nan extra\ttab\t0\n")
    with pytest.raises(ValueError) as excinfo:
        load_glue_tsv(path, "sst2")
    assert_names_line(excinfo, path, 3)


def test_local_stsb_scores_are_regression(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    path = write(tmp_path / "dev.tsv", header + "0\tg\tf\ty\t0\tn\tn\tA.\tB.\t1.5\n1\tg\tf\ty\t0\tn\tn\tC.\tD.\t4.0\n")
    assert get_classification_label_info(load_glue_tsv(path, "stsb")) == (True, None)


def test_a_folder_with_a_glue_configuration_name_gets_the_hubs_label_ids(tmp_path):
    """`load_text_classification_data(folder, "mrpc")` on CSV files: the configuration name is the task."""
    (tmp_path / "train.csv").write_text("sentence1,sentence2,label\na,b,equivalent\nc,d,not_equivalent\ne,f,equivalent\n")
    splits = load_text_classification_data(str(tmp_path), dataset_config_name="mrpc")
    assert splits["train"]["label"] == [1, 0, 1]


def test_a_glue_folder_and_a_task_name_load_that_task(tmp_path):
    """The $GLUE_DIR layout: the folder holding the task folders, and the task as the configuration name."""
    write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n")
    write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tC.\tD.\tnot_entailment\n")
    splits = load_text_classification_data(str(tmp_path), "rte")
    assert splits["train"]["sentence1"] == ["A."] and splits["validation"]["label"] == [1]


def test_validation_files_are_preferred_to_dev_files(tmp_path):
    write(tmp_path / "train.txt", "EU B-ORG\n")
    write(tmp_path / "validation.txt", "Paris B-LOC\n")
    write(tmp_path / "dev.txt", "Rome B-PER\n")
    assert load_ner_data(str(tmp_path))["validation"]["tokens"] == [["Paris"]]


@pytest.mark.parametrize("label", ["true", "NaN"])
def test_json_labels_that_are_booleans_or_not_finite_name_their_line(tmp_path, label):
    path = write(tmp_path / "train.jsonl", f'{{"sentence": "a", "label": 1}}\n{{"sentence": "b", "label": {label}}}\n')
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 2)


def test_json_text_that_is_not_a_string_names_its_line(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": 7, "label": 0}\n')
    with pytest.raises(ValueError) as excinfo:
        load_classification_files({"train": path})
    assert_names_line(excinfo, path, 2)


def test_json_scores_mixing_integers_and_floats_are_regression(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 0.5}\n')
    ds = load_classification_files({"train": path})["train"]
    assert ds.features["label"].dtype == "float64" and ds["label"] == [1.0, 0.5]


@pytest.mark.parametrize("record", ['{"tokens": ["a"], "ner_tags": [true]}', '{"tokens": [], "ner_tags": []}',
                                    '{"tokens": ["a"], "ner_tags": [0]}'])
def test_ner_json_boolean_tags_empty_sentences_and_ids_without_label_list_name_their_line(tmp_path, record):
    path = write(tmp_path / "train.jsonl", '{"tokens": ["b"], "ner_tags": ["O"]}\n' + record + "\n")
    with pytest.raises(ValueError) as excinfo:
        load_ner_files({"train": path})
    assert_names_line(excinfo, path, 2)


def test_the_label_list_of_string_tags_is_sorted():
    from datasets import Dataset

    dataset = Dataset.from_dict({"tokens": [["a", "b"], ["c"]], "ner_tags": [["O", "B-PER"], ["B-LOC"]]})
    assert get_ner_label_list(dataset) == ["B-LOC", "B-PER", "O"]


def test_a_local_folder_written_with_a_tilde_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / "conll" / "train.txt", "EU B-ORG\n")
    monkeypatch.setattr(data, "load_dataset", lambda *args, **kwargs: pytest.fail(f"sent to the Hub: {args}"))
    assert load_ner_data("~/conll")["train"]["tokens"] == [["EU"]]


def test_mrpc_test_split_is_read_from_the_labelled_file_when_both_are_there(tmp_path):
    folder = tmp_path / "MRPC"
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    write(folder / "train.tsv", header + "1\t1\t2\tA.\tB.\n")
    write(folder / "msr_paraphrase_test.txt", header + "0\t3\t4\tC.\tD.\n1\t5\t6\tE.\tF.\n")
    write(folder / "test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t3\t4\tC.\tD.\n1\t5\t6\tE.\tF.\n")
    assert load_glue_folder(folder, "mrpc")["test"]["label"] == [0, 1]


def test_an_mnli_folder_with_its_dev_files_only_is_a_glue_folder(tmp_path):
    folder = tmp_path / "MNLI"
    header = "index\tsentence1\tsentence2\tgold_label\n"
    write(folder / "dev_matched.tsv", header + "0\tP.\tH.\tentailment\n")
    write(folder / "dev_mismatched.tsv", header + "0\tP.\tH.\tcontradiction\n")
    splits = load_text_classification_data(str(folder))
    assert splits["validation_matched"]["label"] == [0] and splits["validation_mismatched"]["premise"] == ["P."]


def test_words_without_a_token_are_counted_as_unscored(tmp_path):
    """A zero-width space has no token, and truncation cuts the words beyond max_length: counted by hand."""
    from script_fixtures import tiny_encoder_folder
    from transformers import AutoTokenizer

    from dwatt.ner_files import count_unscored_words

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_folder(tmp_path / "encoder"))
    sentences = [["John", "\u200b", "Smith"], ["Paris"] * 10]
    assert count_unscored_words(tokenizer, sentences, max_length=None) == (1, 13)
    # 8 positions: [CLS], 6 words, [SEP] -> the second sentence loses 4 of its 10 words.
    assert count_unscored_words(tokenizer, sentences, max_length=8) == (1 + 4, 13)



def _byte_level_bpe(add_prefix_space: bool):
    """A tiny byte-level BPE tokenizer (GPT-2/RoBERTa/ModernBERT's kind), trained here on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    text = ["Müller visited São Paulo and Zürich .", "John Smith visited Paris .", "the bank of London"] * 20
    backend.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.mark.parametrize("add_prefix_space", [False, True])
def test_pre_split_words_are_tokenized_as_in_running_text(add_prefix_space):
    """A byte-level BPE tokenizer without add_prefix_space (ModernBERT's and Qwen2's, or any whose model type run_ner.py
    does not list) tokenized every pre-split word as a sentence start ('M' where running text has 'ĠM')."""
    from dwatt.ner_files import needs_word_spaces, words_as_in_running_text

    tokenizer = _byte_level_bpe(add_prefix_space)
    words = ["Müller", "visited", "São", "Paulo", "and", "Zürich", "."]
    assert needs_word_spaces(tokenizer) == (not add_prefix_space)
    split = words_as_in_running_text([words], needs_word_spaces(tokenizer))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(split, is_split_into_words=True)["input_ids"][0])
    running = tokenizer.convert_ids_to_tokens(tokenizer(" " + " ".join(words))["input_ids"])
    assert tokens == running
    as_given = tokenizer.convert_ids_to_tokens(tokenizer([words], is_split_into_words=True)["input_ids"][0])
    assert (as_given == running) == add_prefix_space  # what the script used to feed such a tokenizer
    encoded = tokenizer(split, is_split_into_words=True)
    assert sorted(set(encoded.word_ids(0)) - {None}) == list(range(len(words)))


def test_wordpiece_words_are_left_as_they_are(tmp_path):
    from script_fixtures import tiny_encoder_folder
    from transformers import AutoTokenizer

    from dwatt.ner_files import needs_word_spaces, words_as_in_running_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_folder(tmp_path / "encoder"))
    assert not needs_word_spaces(tokenizer)
    assert words_as_in_running_text([["John", "Smith"]], needs_word_spaces(tokenizer)) == [["John", "Smith"]]
