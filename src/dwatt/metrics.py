"""Evaluation metrics computed locally, under the key names of the official `evaluate` metrics.

The `evaluate` library loads the glue and seqeval metrics by fetching their code from the Hub, which the training machines
cannot reach. The functions here do the same computations with the same libraries (scikit-learn, scipy, seqeval) and
return the same keys, so results are comparable with runs of transformers' run_glue.py and run_ner.py:

- `glue_metrics`: the `glue` metric (`accuracy`, `f1`, `matthews_correlation`, `pearson`, `spearmanr`).
- `classification_metrics`: what run_glue.py uses for CSV/JSON data without a task name (`accuracy`, or `mse`).
- `add_combined_score`: run_glue.py's `combined_score` (mean of the metrics when there are several).
- `seqeval_compute`: the `seqeval` metric's raw output; `seqeval_metrics`: run_ner.py's `compute_metrics` on top.
- `make_glue_compute_metrics` / `make_ner_compute_metrics`: ready `compute_metrics` callables for the `Trainer`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import accuracy_score as seqeval_accuracy_score
from seqeval.metrics import classification_report
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, mean_squared_error

from .glue_files import F1_GLUE_TASKS, GLUE_TASKS

__all__ = [
    "GLUE_METRIC_CONFIGS",
    "add_combined_score",
    "align_ner_predictions",
    "classification_metrics",
    "glue_metrics",
    "glue_positive_label_id",
    "make_glue_compute_metrics",
    "make_ner_compute_metrics",
    "seqeval_compute",
    "seqeval_metrics",
]

# Config names accepted by the `evaluate` glue metric.
GLUE_METRIC_CONFIGS: tuple[str, ...] = (
    "sst2",
    "mnli",
    "mnli_mismatched",
    "mnli_matched",
    "cola",
    "stsb",
    "mrpc",
    "qqp",
    "qnli",
    "rte",
    "wnli",
    "hans",
)

_IGNORE_INDEX = -100  # label id that DataCollatorForTokenClassification puts on special tokens and sub-words


def _normalize_metric_config(task_name: str) -> str:
    # Accept the GLUE folder spellings too ("SST-2", "STS-B", "CoLA"); "mnli-mm" is run_glue's mismatched tag.
    name = task_name.strip().lower()
    name = {"mnli-mm": "mnli_mismatched", "mnli-m": "mnli_matched"}.get(name, name).replace("-", "")
    if name not in GLUE_METRIC_CONFIGS:
        # KeyError, like the `evaluate` glue metric for an unknown config.
        raise KeyError(f"Unknown GLUE task {task_name!r}; expected one of {list(GLUE_METRIC_CONFIGS)}.")
    return name


def _as_arrays(predictions: Any, references: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions).astype(dtype).reshape(-1)
    references = np.asarray(references).astype(dtype).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"Got {predictions.size} predictions for {references.size} references.")
    if predictions.size == 0:
        raise ValueError("Cannot compute metrics on zero examples.")
    return predictions, references


def glue_positive_label_id(task_name: str | None, label2id: dict[str, int]) -> int:
    """The model's id of the class that GLUE's F1 scores (MRPC `equivalent`, QQP `duplicate`; id 1 on the Hub, and
    label 1 in the TSV files): a checkpoint trained on files whose labels sorted otherwise has it at another id.
    1 for the tasks without F1."""
    task = None if task_name is None else _normalize_metric_config(task_name)
    if task not in F1_GLUE_TASKS:
        return 1
    positive = GLUE_TASKS[task].label_names[1]
    for name in (positive, "1"):
        if name in label2id:
            return int(label2id[name])
    raise ValueError(
        f"The model's labels {list(label2id)} name neither {positive!r} nor '1', so the positive class of {task}'s F1 "
        f"is unknown: train it with GLUE's label names ({', '.join(GLUE_TASKS[task].label_names)}) or ids (0, 1)."
    )


def glue_metrics(task_name: str, predictions: Any, references: Any, positive_label: int = 1) -> dict[str, float]:
    """Compute the official GLUE metric of a task: exactly the keys of the `evaluate` glue metric for that task.

    cola → matthews_correlation; stsb → pearson, spearmanr; mrpc, qqp → accuracy, f1 (of class id `positive_label`,
    see `glue_positive_label_id`); other tasks → accuracy.
    Inputs are cast as the `evaluate` metric casts them: int64 class ids, or float32 scores for stsb.
    """
    config = _normalize_metric_config(task_name)
    if config == "stsb":
        preds, refs = _as_arrays(predictions, references, np.float32)
        return {"pearson": float(pearsonr(preds, refs)[0]), "spearmanr": float(spearmanr(preds, refs)[0])}

    preds, refs = _as_arrays(predictions, references, np.int64)
    if config == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(refs, preds))}
    accuracy = float((preds == refs).mean())
    if config in F1_GLUE_TASKS:
        return {"accuracy": accuracy, "f1": float(f1_score(y_true=refs, y_pred=preds, pos_label=positive_label))}
    return {"accuracy": accuracy}


def classification_metrics(predictions: Any, references: Any, is_regression: bool = False) -> dict[str, float]:
    """Metric run_glue.py uses without a GLUE task: `evaluate`'s "mse" for regression, else "accuracy"."""
    if is_regression:
        preds, refs = _as_arrays(predictions, references, np.float64)
        return {"mse": float(mean_squared_error(refs, preds))}
    preds, refs = _as_arrays(predictions, references, np.int64)
    return {"accuracy": float(accuracy_score(refs, preds))}


def add_combined_score(result: dict[str, float]) -> dict[str, float]:
    """Add run_glue.py's `combined_score` (mean of all values) when `result` holds more than one metric."""
    if len(result) > 1:
        result = {**result, "combined_score": float(np.mean(list(result.values())))}
    return result


def seqeval_compute(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Same output as the `evaluate` seqeval metric's compute() with its default arguments.

    Per entity type a dict {"precision", "recall", "f1", "number"}, then `overall_precision`, `overall_recall`,
    `overall_f1` (micro averages over entities) and `overall_accuracy` (token accuracy). Default seqeval mode: entities
    are read conlleval-style (an `I-` tag may open an entity), not strict IOB2.
    """
    predictions = [list(p) for p in predictions]
    references = [list(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predicted sequences for {len(references)} references.")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if len(p) != len(r):
            raise ValueError(f"Sequence {i}: {len(p)} predicted tags for {len(r)} reference tags.")

    with warnings.catch_warnings():
        # zero_division="warn" scores 0 where nothing is predicted (or expected), like `evaluate`; the warnings it
        # raises on every early evaluation of an untrained model carry no extra information.
        warnings.simplefilter("ignore")
        report = classification_report(
            y_true=references,
            y_pred=predictions,
            suffix=False,
            output_dict=True,
            scheme=None,
            mode=None,
            sample_weight=None,
            zero_division="warn",
        )
    report.pop("macro avg")
    report.pop("weighted avg")
    overall = report.pop("micro avg")

    scores: dict[str, Any] = {
        entity: {
            "precision": float(score["precision"]),
            "recall": float(score["recall"]),
            "f1": float(score["f1-score"]),
            "number": int(score["support"]),
        }
        for entity, score in report.items()
    }
    scores["overall_precision"] = float(overall["precision"])
    scores["overall_recall"] = float(overall["recall"])
    scores["overall_f1"] = float(overall["f1-score"])
    scores["overall_accuracy"] = float(seqeval_accuracy_score(y_true=references, y_pred=predictions))
    return scores


def seqeval_metrics(
    predictions: Sequence[Sequence[str]],
    references: Sequence[Sequence[str]],
    return_entity_level_metrics: bool = False,
) -> dict[str, float]:
    """run_ner.py's `compute_metrics` on tag strings.

    With `return_entity_level_metrics`, the seqeval output flattened: `overall_precision`, `overall_recall`,
    `overall_f1`, `overall_accuracy` plus `<TYPE>_precision`, `<TYPE>_recall`, `<TYPE>_f1`, `<TYPE>_number` per entity
    type. Without, run_ner.py's short form: `precision`, `recall`, `f1`, `accuracy` (the overall values).
    """
    results = seqeval_compute(predictions, references)
    if return_entity_level_metrics:
        flat: dict[str, float] = {}
        for key, value in results.items():
            if isinstance(value, dict):
                for name, number in value.items():
                    flat[f"{key}_{name}"] = number
            else:
                flat[key] = value
        return flat
    return {
        "precision": results["overall_precision"],
        "recall": results["overall_recall"],
        "f1": results["overall_f1"],
        "accuracy": results["overall_accuracy"],
    }


def align_ner_predictions(
    prediction_ids: Any, label_ids: Any, label_list: Sequence[str], ignore_index: int = _IGNORE_INDEX
) -> tuple[list[list[str]], list[list[str]]]:
    """Turn (batch, seq) predicted ids and gold ids into tag strings, dropping positions labelled `ignore_index`."""
    true_predictions, true_labels = [], []
    for prediction, label in zip(prediction_ids, label_ids):
        kept = [(int(p), int(l)) for p, l in zip(prediction, label) if l != ignore_index]
        true_predictions.append([label_list[p] for p, _ in kept])
        true_labels.append([label_list[l] for _, l in kept])
    return true_predictions, true_labels


def _logits_and_labels(eval_prediction: Any) -> tuple[np.ndarray, np.ndarray]:
    # EvalPrediction unpacks as (predictions, label_ids); some models return a tuple whose first item is the logits.
    predictions, labels = eval_prediction[0], eval_prediction[1]
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    return np.asarray(predictions), np.asarray(labels)


def make_glue_compute_metrics(
    task_name: str | None, is_regression: bool, positive_label: int = 1
) -> Callable[[Any], dict[str, float]]:
    """`compute_metrics` for the Trainer, as in run_glue.py: argmax (squeeze if regression), metric, combined_score.
    `positive_label`: the model's id of the class F1 scores (`glue_positive_label_id`)."""

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits, labels = _logits_and_labels(eval_prediction)
        predictions = np.squeeze(logits) if is_regression else np.argmax(logits, axis=1)
        if task_name is not None:
            result = glue_metrics(task_name, predictions, labels, positive_label=positive_label)
        else:
            result = classification_metrics(predictions, labels, is_regression=is_regression)
        return add_combined_score(result)

    return compute_metrics


def make_ner_compute_metrics(
    label_list: Sequence[str], return_entity_level_metrics: bool = False
) -> Callable[[Any], dict[str, float]]:
    """`compute_metrics` for the Trainer, as in run_ner.py: argmax over tags, drop -100 positions, seqeval."""

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits, labels = _logits_and_labels(eval_prediction)
        true_predictions, true_labels = align_ner_predictions(np.argmax(logits, axis=2), labels, label_list)
        return seqeval_metrics(true_predictions, true_labels, return_entity_level_metrics)

    return compute_metrics
