#!/usr/bin/env python
# Copyright 2026 the dwatt authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a DWAtt token classifier (NER, POS, …): transformers' run_ner.py with a layer-fusion head.

Same arguments and outputs as `examples/pytorch/token-classification/run_ner.py`, plus:
  --encoder_name_or_path (a plain encoder to wrap) or --model_name_or_path (a DWAtt checkpoint), --fusion,
  --fusion_layers and the head settings (see `dwatt.model_arguments.ModelArguments`);
  local data: CoNLL column files or JSON lines (--train_file …), or a folder of them (--dataset_name ./folder);
  --few_shot_seed: --max_train_samples draws its examples at random with this seed (not the first N).
The output folder is a complete Hub model repository with a model card (README.md).

    python run_ner_dwatt.py --encoder_name_or_path bert-base-cased --dataset_name conll2003 --fusion dwatt \
        --output_dir out/ner --do_train --do_eval --do_predict
A single .json or .yaml argument file works instead of flags.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from datasets import ClassLabel
from transformers import DataCollatorForTokenClassification, TrainingArguments, set_seed

from dwatt import DWAttForTokenClassification
from dwatt.data import get_ner_label_list, load_ner_data, subword_labels
from dwatt.ner_files import count_unscored_words, needs_word_spaces, words_as_in_running_text
from dwatt.metrics import align_ner_predictions, make_ner_compute_metrics
from dwatt.distributed import check_distributed_launch
from dwatt.model_arguments import ModelArguments, checkpoint_labels, encoder_model_type, load_model, load_tokenizer
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
from dwatt.text_files import UnknownLabelError
from dwatt.trainer import DWAttTrainer

logger = logging.getLogger(__name__)

# Byte-level BPE tokenizers need a space before pre-split words to tokenize them as they appear mid-sentence.
PREFIX_SPACE_MODEL_TYPES = {"bloom", "gpt2", "roberta", "deberta", "longformer", "bart"}


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on (the arguments of run_ner.py, plus few-shot sampling and label names)."""

    task_name: Optional[str] = field(default="ner", metadata={"help": "The name of the task (ner, pos…)."})
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset (conll2003, wikiann…) or a local folder of CoNLL/JSON-lines files."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration (e.g. 'en')."})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Hub dataset revision."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Training file: CoNLL columns, or .json/.jsonl."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Evaluation file (same formats)."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Prediction file (same formats)."})
    text_column_name: Optional[str] = field(default=None, metadata={"help": "Column with the word lists."})
    label_column_name: Optional[str] = field(default=None, metadata={"help": "Column with the tag lists."})
    label_list: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated label list (its order gives the ids); tags outside it are an error."},
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Overwrite the cached preprocessed datasets."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for preprocessing."})
    max_seq_length: Optional[int] = field(
        default=None, metadata={"help": "Truncate tokenised inputs to this length (and pad to it with --pad_to_max_length)."}
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to max_seq_length instead of to the longest in the batch."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Train on this many examples, drawn at random with --few_shot_seed."}
    )
    few_shot_seed: int = field(default=42, metadata={"help": "Seed of the --max_train_samples draw."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Evaluate on the first N examples."})
    max_predict_samples: Optional[int] = field(default=None, metadata={"help": "Predict on the first N examples."})
    label_all_tokens: bool = field(
        default=False,
        metadata={"help": "Label every sub-word of a word (B- becomes I- after the first) instead of only the first; "
                          "the metrics and predictions.txt then count sub-words, as in run_ner.py."},
    )
    return_entity_level_metrics: bool = field(
        default=False, metadata={"help": "Report precision/recall/F1 per entity type as well as overall."}
    )

    def __post_init__(self):
        if self.dataset_name is None and all(f is None for f in (self.train_file, self.validation_file, self.test_file)):
            raise ValueError(
                "Need either --dataset_name (Hub id or local folder) or --train_file/--validation_file/--test_file.")
        self.task_name = self.task_name.lower()


def main():
    model_args, data_args, training_args = parse_arguments((ModelArguments, DataTrainingArguments, TrainingArguments))
    setup_logging(training_args, logger)
    check_distributed_launch(training_args)
    set_seed(training_args.seed)

    # Data. Tags are checked against the label list while reading local files, so a bad tag names its file and line.
    label_names = ([name.strip() for name in data_args.label_list.split(",") if name.strip()] if data_args.label_list
                   else checkpoint_labels(model_args))
    try:
        raw_datasets = load_ner_data(
            data_args.dataset_name,
            data_args.dataset_config_name,
            train_file=data_args.train_file,
            validation_file=data_args.validation_file,
            test_file=data_args.test_file,
            label_list=label_names,
            # Local files: the columns to read (JSON), or the kind of tags (CoNLL columns: ner_tags, pos_tags, chunk_tags).
            token_column=data_args.text_column_name or "tokens",
            tag_column=data_args.label_column_name or f"{data_args.task_name}_tags",
            revision=data_args.dataset_revision,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    except UnknownLabelError as err:
        if data_args.label_list or label_names is None:
            raise
        raise UnknownLabelError(
            f"{err}\nThe label list is that of checkpoint {model_args.model_name_or_path}: to train a new classifier "
            "for the data's labels, pass --ignore_mismatched_sizes."
        ) from None
    check_splits(raw_datasets, training_args)
    # The columns are read from the first split the run uses (a --do_predict run may have a test split only).
    used = [split for split, flag in (("train", "do_train"), ("validation", "do_eval"), ("test", "do_predict"))
            if getattr(training_args, flag)]
    reference_split = used[0] if used else next(iter(raw_datasets))
    column_names = raw_datasets[reference_split].column_names
    features = raw_datasets[reference_split].features
    # As run_ner.py chooses them, except that the fallbacks skip the "id" column (the Hub's first), which it did not.
    others = [column for column in column_names if column != "id"]
    text_column_name = data_args.text_column_name or ("tokens" if "tokens" in column_names else others[0])
    if data_args.label_column_name is not None:
        label_column_name = data_args.label_column_name
    elif f"{data_args.task_name}_tags" in column_names:
        label_column_name = f"{data_args.task_name}_tags"
    else:
        label_column_name = next((column for column in others if column != text_column_name), text_column_name)
    for column in (text_column_name, label_column_name):
        if column not in column_names:
            raise ValueError(f"Column {column!r} is not in the data (columns: {column_names}); set --text_column_name/--label_column_name.")
    if label_column_name == text_column_name:
        raise ValueError(f"The words and the tags would both come from column {text_column_name!r} (columns: "
                         f"{column_names}): set --label_column_name.")

    labels_are_int = isinstance(features[label_column_name].feature, ClassLabel)
    label_list = get_ner_label_list(raw_datasets[reference_split], label_column_name)
    if label_names is not None and labels_are_int and list(label_names) != label_list:
        raise ValueError(f"The dataset's labels {label_list} differ from the expected {label_names}.")

    # Model and tokenizer.
    model = load_model(model_args, DWAttForTokenClassification, label_list, finetuning_task=data_args.task_name)
    model = apply_lora_from_args(model, model_args)  # --use_lora: LoRA on the encoder, head and classifier in full
    tokenizer = load_tokenizer(model_args, add_prefix_space=encoder_model_type(model_args) in PREFIX_SPACE_MODEL_TYPES,
                               needs_word_ids=True)
    # The model's own label order decides the ids (it differs from the data's when continuing a checkpoint).
    label_to_id = {label: model.config.label2id[label] for label in label_list}
    data_id_to_model_id = {i: label_to_id[label] for i, label in enumerate(label_list)} if labels_are_int else None
    model_label_list = [model.config.id2label[i] for i in range(model.config.num_labels)]
    # With --label_all_tokens, the continuation sub-words of a B- word get the matching I- label.
    b_to_i_label = []
    for label in model_label_list:
        inside = "I-" + label[2:] if label.startswith("B-") else label
        b_to_i_label.append(model.config.label2id.get(inside, model.config.label2id[label]))

    padding = "max_length" if data_args.pad_to_max_length else False
    # Byte-level BPE that `add_prefix_space` did not reach (a tokenizer class without it, or a model type run_ner.py
    # does not list: ModernBERT, Qwen2, …): the words get their leading space here.
    word_spaces = needs_word_spaces(tokenizer)
    if word_spaces:
        logger.info("Byte-level BPE tokenizer without a space before each word: adding one, as in running text.")
    max_seq_length = capped_max_seq_length(data_args.max_seq_length, tokenizer, logger)

    def tokenize_and_align_labels(examples):
        tokenized = tokenizer(
            words_as_in_running_text(examples[text_column_name], word_spaces),
            padding=padding,
            truncation=True,
            max_length=max_seq_length,
            is_split_into_words=True,
        )
        labels = []
        for i, tags in enumerate(examples[label_column_name]):
            model_ids = [data_id_to_model_id[tag] if labels_are_int else label_to_id[tag] for tag in tags]
            continuation = b_to_i_label if data_args.label_all_tokens else None
            labels.append(subword_labels(tokenized.word_ids(batch_index=i), model_ids, continuation))
        tokenized["labels"] = labels
        return tokenized

    def prepare(split: str, limit: Optional[int], few_shot: bool):
        return prepare_split(
            raw_datasets[split], split, limit, data_args.few_shot_seed if few_shot else None, training_args,
            tokenize_and_align_labels, num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache, remove_columns=raw_datasets[split].column_names,
        )

    train_dataset = prepare("train", data_args.max_train_samples, few_shot=True) if training_args.do_train else None
    eval_dataset = prepare("validation", data_args.max_eval_samples, few_shot=False) if training_args.do_eval else None
    predict_dataset = prepare("test", data_args.max_predict_samples, few_shot=False) if training_args.do_predict else None

    # Words without a token are not scored, here as in run_ner.py: say how many, so that the metrics are read right.
    for split, flag, limit in (("validation", "do_eval", data_args.max_eval_samples),
                               ("test", "do_predict", data_args.max_predict_samples)):
        if getattr(training_args, flag):
            rows = raw_datasets[split]
            rows = rows if limit is None else rows.select(range(min(limit, len(rows))))  # as prepare() cuts it
            sentences = words_as_in_running_text(rows[text_column_name], word_spaces)
            unscored, total = count_unscored_words(tokenizer, sentences, max_seq_length)
            if unscored:
                logger.warning(
                    f"{unscored} of the {total} words of the {split} split get no prediction and are left out of its "
                    "metrics and predictions.txt: the tokenizer drops them (e.g. zero-width characters) or "
                    "--max_seq_length cuts them off."
                )

    data_collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None)
    # --attention_guidance_heads suggest:…: the heads to guide are chosen on the training examples, before training.
    apply_suggested_guidance_heads(model, model_args, train_dataset, data_collator, training_args, logger)
    trainer = DWAttTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=make_ner_compute_metrics(model_label_list, data_args.return_entity_level_metrics),
        card_info={
            "task": "token-classification",
            "dataset_id": dataset_id_for_card(
                data_args.dataset_name, data_args.train_file, data_args.validation_file, data_args.test_file),
            "dataset_config": data_args.dataset_config_name,
            "hyperparameters": run_hyperparameters(model, training_args, data_args),
            "license": model_args.card_license,
        },
        log_depth_weights=model_args.log_depth_weights,
    )

    train_and_evaluate(trainer, training_args, train_dataset, {data_args.task_name: eval_dataset}, logger)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        predictions, labels, metrics = trainer.predict(predict_dataset, metric_key_prefix="predict")
        true_predictions, _ = align_ner_predictions(np.argmax(predictions, axis=2), labels, model_label_list)
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        if trainer.is_world_process_zero():
            with open(os.path.join(training_args.output_dir, "predictions.txt"), "w") as writer:
                for prediction in true_predictions:
                    writer.write(" ".join(prediction) + "\n")

    finish_run(trainer, training_args)


if __name__ == "__main__":
    main()
