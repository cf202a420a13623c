"""Tests for dwatt.metrics against hand computations (counted by hand, closed formulas) and scipy/sklearn directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dwatt.metrics import (
    add_combined_score,
    align_ner_predictions,
    classification_metrics,
    glue_metrics,
    glue_positive_label_id,
    make_glue_compute_metrics,
    make_ner_compute_metrics,
    seqeval_compute,
    seqeval_metrics,
)

# Binary fixture: TP = 4 (idx 0, 2, 5, 7), FN = 1 (idx 1), FP = 1 (idx 4), TN = 2 (idx 3, 6).
REFS = [1, 1, 1, 0, 0, 1, 0, 1]
PREDS = [1, 0, 1, 0, 1, 1, 0, 1]


# ---------------------------------------------------------------------------------------------------------------------
# GLUE
# ---------------------------------------------------------------------------------------------------------------------


def test_cola_matthews_by_formula():
    tp, tn, fp, fn = 4, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # = 7 / 15
    result = glue_metrics("cola", PREDS, REFS)
    assert set(result) == {"matthews_correlation"}
    assert result["matthews_correlation"] == pytest.approx(expected)
    assert expected == pytest.approx(7 / 15)


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_and_f1_tasks(task):
    result = glue_metrics(task, np.array(PREDS), np.array(REFS))
    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))  # 2TP / (2TP + FP + FN) = 0.8


def test_f1_of_another_positive_id_counts_that_class():
    """With the positive class at id 0 (a model whose labels sorted `equivalent` first), F1 counts the zeros:
    TP = 2 (idx 3, 6), FP = 1 (idx 1), FN = 1 (idx 4)."""
    assert glue_metrics("mrpc", PREDS, REFS, positive_label=0)["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


@pytest.mark.parametrize("task, label2id, expected", [
    ("mrpc", {"equivalent": 0, "not_equivalent": 1}, 0),
    ("MRPC", {"not_equivalent": 0, "equivalent": 1}, 1),
    ("qqp", {"duplicate": 0, "not_duplicate": 1}, 0),
    ("qqp", {"0": 0, "1": 1}, 1),  # GLUE's TSV labels
    ("qqp", {"1": 0, "0": 1}, 0),
    ("sst2", {"positive": 0, "negative": 1}, 1),  # no F1: nothing to choose
    (None, {"a": 0, "b": 1}, 1),
])
def test_the_positive_class_of_glue_f1_is_found_by_name(task, label2id, expected):
    assert glue_positive_label_id(task, label2id) == expected


def test_an_f1_task_whose_labels_name_no_positive_class_is_refused():
    with pytest.raises(ValueError, match=r"name neither 'equivalent' nor '1'.*not_equivalent, equivalent"):
        glue_positive_label_id("mrpc", {"LABEL_0": 0, "LABEL_1": 1})


@pytest.mark.parametrize(
    "task", ["sst2", "SST-2", "rte", "qnli", "wnli", "mnli", "mnli_matched", "mnli_mismatched", "hans"]
)
def test_accuracy_only_tasks(task):
    assert glue_metrics(task, PREDS, REFS) == {"accuracy": pytest.approx(0.75)}


def test_three_class_accuracy():
    assert glue_metrics("mnli", [0, 1, 2, 2], [0, 2, 2, 1]) == {"accuracy": pytest.approx(0.5)}


def test_stsb_pearson_and_spearman():
    refs = [0.0, 1.2, 2.5, 3.1, 4.8, 5.0]
    preds = [0.3, 0.9, 3.0, 2.4, 4.1, 4.9]
    result = glue_metrics("stsb", preds, refs)
    assert set(result) == {"pearson", "spearmanr"}

    # Pearson by its definition.
    x, y = np.array(preds), np.array(refs)
    dx, dy = x - x.mean(), y - y.mean()
    pearson = (dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum())
    assert result["pearson"] == pytest.approx(pearson, abs=1e-6)  # inputs are float32, as in `evaluate`
    assert result["pearson"] == pytest.approx(stats.pearsonr(preds, refs)[0], abs=1e-6)

    # Spearman with no ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)); ranks of preds [1,2,4,3,5,6] vs refs [1,2,3,4,5,6].
    n, d_squared = 6, 1 + 1
    assert result["spearmanr"] == pytest.approx(1 - 6 * d_squared / (n * (n * n - 1)))
    assert result["spearmanr"] == pytest.approx(stats.spearmanr(preds, refs)[0])


def test_combined_score():
    result = add_combined_score(glue_metrics("mrpc", PREDS, REFS))
    assert result["combined_score"] == pytest.approx((0.75 + 0.8) / 2)
    assert add_combined_score({"accuracy": 0.5}) == {"accuracy": 0.5}  # only added with several metrics


def test_unknown_task_and_bad_lengths():
    with pytest.raises(KeyError):
        glue_metrics("squad", [0], [0])
    with pytest.raises(ValueError):
        glue_metrics("sst2", [0, 1], [0])


def test_no_examples_and_run_glues_mnli_spellings():
    with pytest.raises(ValueError, match="zero examples"):
        glue_metrics("sst2", [], [])
    # run_glue.py tags the mismatched set "mnli-mm": 3 of 4 right, whichever set.
    for name in ("mnli-mm", "mnli-m", "MNLI"):
        assert glue_metrics(name, [0, 1, 2, 2], [0, 1, 2, 0]) == {"accuracy": pytest.approx(0.75)}, name


def test_classification_metrics_without_task():
    assert classification_metrics([2, 0, 1, 1], [2, 1, 1, 0]) == {"accuracy": pytest.approx(0.5)}
    mse = classification_metrics([1.0, 2.0, 4.0], [1.5, 2.0, 2.0], is_regression=True)
    assert mse == {"mse": pytest.approx((0.25 + 0 + 4) / 3)}


def test_glue_compute_metrics_from_logits():
    # argmax rows: 1, 0, 1, 1 against labels 1, 0, 0, 1 → 3/4 correct; TP=2 FP=1 FN=0 → f1 = 4/5.
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5], [-3.0, 3.0]])
    labels = np.array([1, 0, 0, 1])
    result = make_glue_compute_metrics("mrpc", is_regression=False)((logits, labels))
    assert result == {
        "accuracy": pytest.approx(0.75),
        "f1": pytest.approx(0.8),
        "combined_score": pytest.approx(0.775),
    }
    # Models that return more than the logits hand the Trainer a tuple, whose first item is the logits.
    assert make_glue_compute_metrics("mrpc", is_regression=False)(((logits, np.zeros((4, 3))), labels)) == result
    regression = make_glue_compute_metrics(None, is_regression=True)((np.array([[1.0], [3.0]]), np.array([2.0, 3.0])))
    assert regression == {"mse": pytest.approx(0.5)}


# ---------------------------------------------------------------------------------------------------------------------
# seqeval
# ---------------------------------------------------------------------------------------------------------------------

# Gold entities: PER[0:2], LOC[3] in sentence 1; ORG[0], LOC[2:4] in sentence 2 → 4 entities.
NER_REFS = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "I-LOC"]]
# Predicted entities: PER[0:2]; ORG[0], LOC[2:3] → 3 entities, of which PER and ORG match exactly.
NER_PREDS = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "B-LOC", "O"]]


def test_seqeval_overall_by_hand():
    result = seqeval_metrics(NER_PREDS, NER_REFS)
    precision, recall = 2 / 3, 2 / 4
    assert result == {
        "precision": pytest.approx(precision),
        "recall": pytest.approx(recall),
        "f1": pytest.approx(2 * precision * recall / (precision + recall)),  # 4/7
        "accuracy": pytest.approx(6 / 8),  # two of the eight tokens differ
    }


def test_seqeval_entity_level_keys_by_hand():
    result = seqeval_metrics(NER_PREDS, NER_REFS, return_entity_level_metrics=True)
    assert set(result) == {
        "overall_precision", "overall_recall", "overall_f1", "overall_accuracy",
        "LOC_precision", "LOC_recall", "LOC_f1", "LOC_number",
        "ORG_precision", "ORG_recall", "ORG_f1", "ORG_number",
        "PER_precision", "PER_recall", "PER_f1", "PER_number",
    }  # fmt: skip
    assert result["overall_f1"] == pytest.approx(4 / 7)
    assert result["overall_accuracy"] == pytest.approx(0.75)
    # LOC: 0 of 1 predicted correct, 0 of 2 gold found.
    assert (result["LOC_precision"], result["LOC_recall"], result["LOC_f1"], result["LOC_number"]) == (0, 0, 0, 2)
    assert (result["PER_precision"], result["PER_recall"], result["PER_f1"], result["PER_number"]) == (1, 1, 1, 1)
    assert result["ORG_number"] == 1


def test_seqeval_raw_output_is_nested_like_evaluate():
    result = seqeval_compute(NER_PREDS, NER_REFS)
    assert result["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert result["overall_precision"] == pytest.approx(2 / 3)


def test_seqeval_default_mode_is_lenient():
    # Default (conlleval) mode: a leading I-PER opens an entity, so it matches gold B-PER I-PER; strict IOB2 would not.
    assert seqeval_metrics([["I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])["f1"] == 1.0
    # Right span, wrong type: one false positive (ORG) and one false negative (PER).
    wrong_type = seqeval_metrics([["B-ORG", "O"]], [["B-PER", "O"]])
    assert (wrong_type["precision"], wrong_type["recall"], wrong_type["f1"]) == (0.0, 0.0, 0.0)


def test_seqeval_no_predicted_entities_scores_zero():
    result = seqeval_metrics([["O", "O"]], [["B-LOC", "O"]])
    assert result == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.5}


def test_ner_alignment_and_compute_metrics():
    label_list = ["O", "B-PER", "I-PER"]
    label_ids = np.array([[-100, 1, 2, 0, -100], [-100, 0, 1, -100, -100]])
    prediction_ids = np.array([[2, 1, 2, 0, 1], [0, 0, 0, 1, 1]])
    preds, refs = align_ner_predictions(prediction_ids, label_ids, label_list)
    assert refs == [["B-PER", "I-PER", "O"], ["O", "B-PER"]]
    assert preds == [["B-PER", "I-PER", "O"], ["O", "O"]]

    logits = np.eye(3)[prediction_ids]  # one-hot logits whose argmax is prediction_ids
    result = make_ner_compute_metrics(label_list)((logits, label_ids))
    # Gold: 2 PER entities, predicted: 1 (correct) → P = 1, R = 1/2; tokens: 4 of 5 correct.
    assert result == {
        "precision": pytest.approx(1.0),
        "recall": pytest.approx(0.5),
        "f1": pytest.approx(2 / 3),
        "accuracy": pytest.approx(0.8),
    }


def test_seqeval_length_mismatch():
    with pytest.raises(ValueError):
        seqeval_metrics([["O"]], [["O", "O"]])
