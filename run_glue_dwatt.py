#!/usr/bin/env python
# Copyright 2026 the dwatt authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a DWAtt sequence classifier on GLUE or your own data: transformers' run_glue.py with a fusion head.

Same arguments and outputs as `examples/pytorch/text-classification/run_glue.py`, plus:
  --encoder_name_or_path (a plain encoder to wrap) or --model_name_or_path (a DWAtt checkpoint), --fusion,
  --fusion_layers, --pooling and the head settings (see `dwatt.model_arguments.ModelArguments`);
  local data: the classic GLUE TSV layout (--dataset_name path/to/glue/SST-2 --task_name sst2), CSV or JSON lines;
  --few_shot_seed: --max_train_samples draws its examples at random with this seed (not the first N);
  a labelled test split (e.g. SST-2 test-labeled.tsv via --test_file) is scored into predict_results.json.
The output folder is a complete Hub model repository with a model card (README.md).

    python run_glue_dwatt.py --encoder_name_or_path bert-base-cased --task_name mrpc --fusion dwatt \
        --output_dir out/mrpc --do_train --do_eval
A single .json or .yaml argument file works instead of flags.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from datasets import ClassLabel
from transformers import DataCollatorWithPadding, TrainingArguments, default_data_collator, set_seed

from dwatt import DWAttForSequenceClassification
from dwatt.data import (
    GLUE_TASK_TO_KEYS,
    check_known_labels,
    get_classification_label_info,
    glue_task_named_by,
    infer_text_columns,
    load_text_classification_data,
    normalize_glue_task_name,
)
from dwatt.metrics import glue_positive_label_id, make_glue_compute_metrics
from dwatt.distributed import check_distributed_launch
from dwatt.model_arguments import ModelArguments, checkpoint_labels, load_model, load_tokenizer
from dwatt.peft_utils import apply_lora_from_args
from dwatt.script_utils import (
    apply_suggested_guidance_heads,
    capped_max_seq_length,
    check_splits,
    dataset_id_for_card,
    finish_run,
    parse_arguments,
    prepare_split,
    run_hyperparameters,
    setup_logging,
    train_and_evaluate,
)
from dwatt.trainer import DWAttTrainer

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on (the arguments of run_glue.py, plus few-shot sampling)."""

    task_name: Optional[str] = field(
        default=None, metadata={"help": f"The GLUE task: {', '.join(sorted(GLUE_TASK_TO_KEYS))}."}
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset (nyu-mll/glue…) or a local folder (GLUE TSVs, CSV or JSON files)."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Hub dataset revision."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Training file: .tsv (GLUE), .csv or .json(l)."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Evaluation file (same formats)."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Prediction file (same formats)."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncate tokenised inputs to this length."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Overwrite the cached preprocessed datasets."})
    pad_to_max_length: bool = field(
        default=True, metadata={"help": "Pad every input to max_seq_length (False, or --no_pad_to_max_length: pad to "
                                        "the longest in the batch)."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Train on this many examples, drawn at random with --few_shot_seed."}
    )
    few_shot_seed: int = field(default=42, metadata={"help": "Seed of the --max_train_samples draw."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Evaluate on the first N examples."})
    max_predict_samples: Optional[int] = field(default=None, metadata={"help": "Predict on the first N examples."})

    def __post_init__(self):
        if self.task_name is None:  # a GLUE folder (glue/CoLA) or the Hub's GLUE with a configuration names its task
            self.task_name = glue_task_named_by(self.dataset_name, self.dataset_config_name)
        if self.task_name is not None:
            self.task_name = normalize_glue_task_name(self.task_name)
        elif self.dataset_name is None and self.train_file is None:
            raise ValueError("Need a GLUE --task_name, a --dataset_name (Hub id or local folder) or a --train_file.")


def glue_dataset_id(data_args: DataTrainingArguments) -> str:
    """The card's dataset: GLUE on the Hub when only a task is named or a local GLUE task folder (the same data) is
    read, else the named dataset or files' folder."""
    folder_task = glue_task_named_by(data_args.dataset_name, data_args.task_name or data_args.dataset_config_name)
    if data_args.train_file is None and (data_args.dataset_name is None or folder_task is not None):
        return "nyu-mll/glue"
    return dataset_id_for_card(
        data_args.dataset_name, data_args.train_file, data_args.validation_file, data_args.test_file)


def main():
    model_args, data_args, training_args = parse_arguments((ModelArguments, DataTrainingArguments, TrainingArguments))
    setup_logging(training_args, logger)
    check_distributed_launch(training_args)
    set_seed(training_args.seed)

    raw_datasets = load_text_classification_data(
        data_args.dataset_name,
        data_args.dataset_config_name,
        task_name=data_args.task_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        test_file=data_args.test_file,
        revision=data_args.dataset_revision,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
    )
    mnli = data_args.task_name == "mnli"
    validation_split = "validation_matched" if mnli else "validation"
    test_split = "test_matched" if mnli else "test"
    if mnli and "validation_matched" not in raw_datasets and "validation" in raw_datasets:
        validation_split, test_split = "validation", "test"
    check_splits(raw_datasets, training_args, validation_split=validation_split, test_split=test_split)

    # The label set: the training split's, else a checkpoint's own, else the validation split's. (GLUE's test splits
    # have no labels, and a test file may have no label column.)
    saved_labels = checkpoint_labels(model_args)
    if not training_args.do_train and validation_split not in raw_datasets and saved_labels is None:
        raise ValueError(
            f"Without --do_train the label set is read from the {validation_split} split, which the data lacks (it has "
            f"{list(raw_datasets)}): give it too (--validation_file, or a folder with dev.tsv), or predict with a "
            "trained checkpoint (--model_name_or_path), which has its own."
        )
    if training_args.do_train:
        reference_split = "train"
    else:
        reference_split = validation_split if validation_split in raw_datasets else test_split
    reference = raw_datasets[reference_split]
    if "label" in reference.column_names:
        is_regression, label_list = get_classification_label_info(reference)
    elif saved_labels is not None and not training_args.do_train:  # an unlabelled test file, for a checkpoint
        is_regression, label_list = not saved_labels, saved_labels or None  # [] for a regression checkpoint
    else:
        raise ValueError(f"The {reference_split} data has no 'label' column (columns: {reference.column_names}).")
    if data_args.task_name is not None:
        sentence1_key, sentence2_key = GLUE_TASK_TO_KEYS[data_args.task_name]
    else:
        sentence1_key, sentence2_key = infer_text_columns(reference.column_names)
    for key in (sentence1_key, sentence2_key):
        if key is not None and key not in reference.column_names:
            raise ValueError(f"Text column {key!r} is missing (columns: {reference.column_names}).")

    model = load_model(
        model_args,
        DWAttForSequenceClassification,
        label_list if not is_regression else ["score"],
        finetuning_task=data_args.task_name or "text-classification",
        problem_type="regression" if is_regression else "single_label_classification",
    )
    model = apply_lora_from_args(model, model_args)  # --use_lora: LoRA on the encoder, head and classifier in full
    tokenizer = load_tokenizer(model_args)

    # Data labels → model ids. A checkpoint keeps its own label order; ClassLabel ids are mapped through the names.
    if is_regression:
        label_to_id = None
    elif "label" in reference.features and isinstance(reference.features["label"], ClassLabel):  # ids into label_list
        label_to_id = {i: model.config.label2id[str(name)] for i, name in enumerate(label_list)}
    else:  # raw values from CSV/JSON files
        label_to_id = {value: model.config.label2id[str(value)] for value in label_list}
    # MRPC/QQP F1 scores `equivalent`/`duplicate`, whichever id the model gives it.
    positive_label = 1 if is_regression else glue_positive_label_id(data_args.task_name, model.config.label2id)
    max_seq_length = capped_max_seq_length(data_args.max_seq_length, tokenizer, logger)
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(examples):
        texts = (examples[sentence1_key],) if sentence2_key is None else (examples[sentence1_key], examples[sentence2_key])
        result = tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)
        if label_to_id is not None and "label" in examples:  # a test file may have no label column
            # -1 marks an unlabelled row (GLUE's test splits) unless it is one of the classes.
            result["label"] = [label_to_id.get(label, -1) for label in examples["label"]]
        return result

    def prepare(split: str, limit: Optional[int], few_shot: bool):
        if label_to_id is not None:
            check_known_labels(raw_datasets[split], split, label_list, label_to_id)
        return prepare_split(
            raw_datasets[split], split, limit, data_args.few_shot_seed if few_shot else None, training_args, preprocess,
            load_from_cache_file=not data_args.overwrite_cache,
        )

    train_dataset = prepare("train", data_args.max_train_samples, few_shot=True) if training_args.do_train else None
    eval_datasets = {}
    if training_args.do_eval:
        eval_datasets[data_args.task_name or "eval"] = prepare(validation_split, data_args.max_eval_samples, few_shot=False)
        if mnli and "validation_mismatched" in raw_datasets:  # its metrics end in _mm, as in run_glue.py
            eval_datasets["mm"] = prepare("validation_mismatched", data_args.max_eval_samples, few_shot=False)
    # Named as run_glue.py names the prediction files: predict_results_<name>.txt.
    predict_datasets = {}
    if training_args.do_predict:
        name = data_args.task_name or "text-classification"
        predict_datasets[name] = prepare(test_split, data_args.max_predict_samples, few_shot=False)
        if mnli and "test_mismatched" in raw_datasets:
            predict_datasets["mnli-mm"] = prepare("test_mismatched", data_args.max_predict_samples, few_shot=False)

    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None)
    # --attention_guidance_heads suggest:…: the heads to guide are chosen on the training examples, before training.
    apply_suggested_guidance_heads(model, model_args, train_dataset, data_collator, training_args, logger)
    trainer = DWAttTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=next(iter(eval_datasets.values()), None),
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=make_glue_compute_metrics(data_args.task_name, is_regression, positive_label),
        card_info={
            "task": "text-classification",
            "dataset_id": glue_dataset_id(data_args),
            "dataset_config": data_args.task_name or data_args.dataset_config_name,
            "hyperparameters": run_hyperparameters(model, training_args, data_args),
            "license": model_args.card_license,
            "sentence_pairs": sentence2_key is not None,
        },
        log_depth_weights=model_args.log_depth_weights,
    )
    train_and_evaluate(trainer, training_args, train_dataset, eval_datasets, logger)

    if training_args.do_predict:
        logger.info("*** Predict ***")
    scores = {}  # of the labelled test splits; MNLI's mismatched one with its suffix, as for evaluation
    for name, predict_dataset in predict_datasets.items():
        # An unlabelled test split (GLUE's: label -1 everywhere; a file without a label column) is predicted without
        # scoring, as run_glue.py does.
        labelled = "label" in predict_dataset.column_names and all(label != -1 for label in predict_dataset["label"])
        unscored = "label" in predict_dataset.column_names and not labelled
        dataset = predict_dataset.remove_columns("label") if unscored else predict_dataset
        output = trainer.predict(dataset, metric_key_prefix="predict")
        predictions = np.squeeze(output.predictions) if is_regression else np.argmax(output.predictions, axis=1)
        if labelled:
            metrics = output.metrics if name != "mnli-mm" else {f"{k}_mm": v for k, v in output.metrics.items()}
            trainer.log_metrics("predict", metrics)
            scores.update(metrics)
        if trainer.is_world_process_zero():
            with open(os.path.join(training_args.output_dir, f"predict_results_{name}.txt"), "w") as writer:
                writer.write("index\tprediction\n")
                for index, item in enumerate(np.atleast_1d(predictions)):
                    value = f"{item:3.3f}" if is_regression else model.config.id2label[int(item)]
                    writer.write(f"{index}\t{value}\n")
    if scores:
        trainer.save_metrics("predict", scores)

    finish_run(trainer, training_args)


if __name__ == "__main__":
    main()
