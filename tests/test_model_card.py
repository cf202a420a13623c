"""The model card's numbers and metadata, built in Python (the scripts' end-to-end tests check that a card is there
and parses; these check what it says against counts made by hand)."""

import pytest
from tiny_encoders import tiny_encoder_config

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification
from dwatt.model_card import build_model_card


def _card(model_class, task, **config):
    model = model_class(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=2, **config))
    return model, build_model_card(model, task, "glue", command="python run.py", seq_len=16)


def test_added_parameters_are_given_as_a_share_of_the_encoders():
    model, card = _card(DWAttForTokenClassification, "token-classification", fusion="dwatt")
    head = sum(p.numel() for p in model.dwatt.fusion_classifier.parameters())
    encoder = sum(p.numel() for p in model.dwatt.encoder.parameters())
    assert f"added parameters: {head:,} ({100 * head / encoder:.2f}% of the encoder's {encoder:,})" in card.text


@pytest.mark.parametrize("pooling, pooled_line", [("first", True), ("mean", False)])
def test_a_sequence_classifier_pooled_at_one_position_reports_the_pooled_flops_only_then(pooling, pooled_line):
    _, card = _card(DWAttForSequenceClassification, "text-classification", fusion="dwatt", pooling=pooling)
    assert ("pooled at one position" in card.text) == pooled_line


@pytest.mark.parametrize("encoder, base_model", [
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("/elsewhere/encoder", None),  # a local folder is no Hub id: the metadata must not name it
])
def test_base_model_is_a_hub_id_or_nothing(encoder, base_model):
    _, card = _card(DWAttForTokenClassification, "token-classification", fusion="last", encoder_name_or_path=encoder)
    assert card.data.base_model == base_model
    assert "/elsewhere/encoder" not in card.content


def test_cards_list_results_not_bookkeeping():
    """MNLI's mismatched dev set logs `eval_runtime_mm` and the like, seqeval per-type counts (`LOC_number`), and the
    Trainer `eval_model_preparation_time`: the card's results table and model-index listed them as metrics."""
    eval_metrics = {
        "eval_accuracy": 0.81, "eval_accuracy_mm": 0.79, "eval_loss": 0.5, "eval_loss_mm": 0.6, "eval_runtime_mm": 1.1,
        "eval_samples_mm": 9, "eval_samples_per_second_mm": 8.0, "eval_steps_per_second_mm": 1.0, "eval_samples": 9,
        "eval_model_preparation_time": 0.002, "eval_LOC_f1": 0.7, "eval_LOC_number": 33, "epoch": 1.0,
    }
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=3))
    card = build_model_card(model, "text-classification", "glue", dataset_config="mnli", eval_metrics=eval_metrics,
                            command="python run.py", seq_len=16)
    listed = {result.metric_type for result in card.data.eval_results}
    assert listed == {"accuracy", "accuracy_mm", "LOC_f1"}, listed
    for bookkeeping in ("runtime", "model_preparation_time", "LOC_number", "samples_per_second"):
        assert bookkeeping not in card.text, bookkeeping


@pytest.mark.parametrize("limits, splits", [
    ({"max_eval_samples": 61, "max_predict_samples": None}, {"validation[:61]", "test"}),
    ({"max_eval_samples": None, "max_predict_samples": 5}, {"validation", "test[:5]"}),
    ({}, {"validation", "test"}),
])
def test_a_split_cut_to_its_first_examples_is_named_so(limits, splits):
    """With --max_eval_samples the card called 61 dev sentences "split: validation", as if the whole set."""
    model = DWAttForTokenClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=3))
    card = build_model_card(model, "token-classification", "conll2003", command="python run.py", seq_len=16,
                            eval_metrics={"eval_f1": 0.5, "eval_samples": 61},
                            test_metrics={"predict_f1": 0.4, "predict_samples": 5}, hyperparameters=limits)
    assert {result.dataset_split for result in card.data.eval_results} == splits
    for split in splits:
        assert f"| {split} |" in card.text


@pytest.mark.parametrize("limits, counts, splits", [
    ({}, {}, {("accuracy", "validation_matched"), ("accuracy_mm", "validation_mismatched"),
              ("accuracy", "test_matched"), ("accuracy_mm", "test_mismatched")}),
    ({"max_eval_samples": 61, "max_predict_samples": 40},
     {"eval_samples": 61, "eval_samples_mm": 50, "predict_samples": 40, "predict_samples_mm": 40},
     {("accuracy", "validation_matched[:61]"), ("accuracy_mm", "validation_mismatched[:50]"),
      ("accuracy", "test_matched[:40]"), ("accuracy_mm", "test_mismatched[:40]")}),
])
def test_mnli_rows_name_the_matched_and_mismatched_splits(limits, counts, splits):
    """MNLI has no `validation` split on the Hub; its `_mm` rows were labelled with the matched split (and its count)."""
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=3))
    eval_metrics = {"eval_accuracy": 0.81, "eval_accuracy_mm": 0.79,
                    **{key: value for key, value in counts.items() if key.startswith("eval")}}
    test_metrics = {"predict_accuracy": 0.8, "predict_accuracy_mm": 0.78,
                    **{key: value for key, value in counts.items() if key.startswith("predict")}}
    card = build_model_card(model, "text-classification", "nyu-mll/glue", dataset_config="mnli",
                            eval_metrics=eval_metrics, test_metrics=test_metrics, command="python run.py", seq_len=16,
                            hyperparameters=limits)
    assert {(result.metric_type, result.dataset_split) for result in card.data.eval_results} == splits
    for metric, split in splits:
        assert f"| {split} | {metric} |" in card.text
    # The user's own MNLI files (--task_name mnli --validation_file …) have a plain validation split.
    own = build_model_card(model, "text-classification", "my-nli", dataset_config="mnli",
                           eval_metrics={"eval_accuracy": 0.8}, command="python run.py", seq_len=16)
    assert [result.dataset_split for result in own.data.eval_results] == ["validation"]


def test_the_earlier_lora_argument_still_describes_a_merged_lora_model():
    """`build_model_card(model, …, lora=…)` took lora_summary's dict (no `method`, and LoRA was always merged): after
    other PEFT methods came, such a call said the folder held an unmerged adapter, or failed with KeyError 'method'."""
    model = DWAttForTokenClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=2))
    earlier_lora_json = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["query", "value"],
                         "trainable_parameters": 1000, "total_parameters": 50000}
    card = build_model_card(model, "token-classification", "conll2003", command="python run.py", lora=earlier_lora_json)
    assert "is **merged**" in card.text and "cannot be merged" not in card.text
    assert "lora" in card.data.tags and "r=4, lora_alpha=8" in card.text
