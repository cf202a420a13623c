"""The plumbing that run_glue_dwatt.py and run_ner_dwatt.py share (argument files, logging, split checks, cards)."""

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import datasets
import transformers
import yaml
from transformers import HfArgumentParser, PreTrainedModel, TrainingArguments

from dwatt.attention_patterns import SUGGESTION_EXAMPLES, guide_suggested_heads
from dwatt.data import select_few_shot
from dwatt.distributed import join_cpu_process_group
from dwatt.peft_utils import check_checkpoint_fits


def parse_arguments(dataclass_types: tuple) -> tuple:
    """Flags, or a single .json / .yaml file holding them, as the official example scripts accept.

    A multi-process CPU launch joins its process group here, before `TrainingArguments` is built, so that
    `--ddp_timeout` holds on CPU too (see `join_cpu_process_group`).
    """
    parser = HfArgumentParser(dataclass_types)
    settings_file = sys.argv[1] if len(sys.argv) == 2 and sys.argv[1].endswith((".json", ".yaml", ".yml")) else None
    if settings_file is not None:
        text = Path(settings_file).read_text()
        settings = json.loads(text) if settings_file.endswith(".json") else yaml.safe_load(text)
        given = {**TRAINING_DEFAULTS, **settings}
    else:
        given = vars(parser.parse_known_args()[0])  # every flag, defaults filled in
    join_cpu_process_group(bool(given["use_cpu"]), int(given["ddp_timeout"]), given["ddp_backend"])
    if settings_file is not None:
        parsed, explicit = parser.parse_dict(settings), set(settings)
    else:
        parsed = parser.parse_args_into_dataclasses()
        explicit = options_on_command_line(dataclass_types, sys.argv[1:])
    for arguments in parsed:  # which options the user set, even to their defaults (`--fusion dwatt`)
        if hasattr(arguments, "explicit_options"):
            arguments.explicit_options = frozenset(explicit)
    return parsed


TRAINING_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainingArguments) if field.init}


def options_on_command_line(dataclass_types: tuple, argv: list[str]) -> set[str]:
    """The fields that `argv` sets, however they are spelt there: abbreviated (`--fusion_lay`, which argparse
    accepts), as `--no_<flag>`, with dashes or `=value`. argparse itself resolves the spellings: every default is
    replaced by a marker, and the fields that lose it were given."""
    probe = HfArgumentParser(dataclass_types)
    not_given = object()
    probe.set_defaults(**{f.name: not_given for cls in dataclass_types for f in dataclasses.fields(cls) if f.init})
    namespace, _ = probe.parse_known_args(argv)
    return {name for name, value in vars(namespace).items() if value is not not_given}


def setup_logging(training_args: TrainingArguments, logger: logging.Logger) -> None:
    """The official scripts' logging: info on the main process, the process summary on every process."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.local_process_index}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed training: {training_args.parallel_mode.value == 'distributed'}, "
        f"16-bits training: {training_args.fp16}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")


# What a run writes beside the model, and its model card reads back. A training run into a folder that holds an
# earlier run's copies removes them first: the card would otherwise report that run's metrics and depth weights.
RUN_RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json", "predict_results.json",
                    "depth_weights.json", "depth_weights.png", "predictions.txt", "lora.json",
                    "peft.json")
RUN_RESULT_PATTERNS = ("predict_results_*.txt",)


def remove_earlier_results(training_args: TrainingArguments, logger: logging.Logger) -> list[str]:
    """With --do_train, removes an earlier run's result files (not its checkpoints) from the output folder; returns
    their names. (transformers 5 dropped --overwrite_output_dir: a run simply replaces the folder's model.)"""
    folder = Path(training_args.output_dir)
    if not training_args.do_train or training_args.process_index != 0 or not folder.is_dir():
        return []
    stale = [folder / name for name in RUN_RESULT_FILES if (folder / name).is_file()]
    stale += [path for pattern in RUN_RESULT_PATTERNS for path in sorted(folder.glob(pattern))]
    for path in stale:
        path.unlink()
    if stale:
        logger.warning(f"{folder} held the results of an earlier run ({', '.join(p.name for p in stale)}): removed, "
                       "so that this run's model card reports this run only.")
    return [path.name for path in stale]


def check_splits(
    raw_datasets, training_args: TrainingArguments, validation_split: str = "validation", test_split: str = "test"
) -> None:
    """Fails before any tokenisation when a split that a --do_* flag needs is missing or empty."""
    for split, flag in (("train", "do_train"), (validation_split, "do_eval"), (test_split, "do_predict")):
        if not getattr(training_args, flag):
            continue
        if split not in raw_datasets:
            raise ValueError(f"--{flag} needs a {split} split, but the data has only {list(raw_datasets)}.")
        if len(raw_datasets[split]) == 0:
            raise ValueError(f"The {split} split is empty: --{flag} has nothing to work on.")


def prepare_split(
    dataset, split: str, limit: Optional[int], few_shot_seed: Optional[int], training_args: TrainingArguments,
    function, **map_kwargs,
):
    """One split as the scripts feed it to the Trainer: at most `limit` examples — drawn at random with
    `few_shot_seed` (training: a few-shot subset), else the first ones (evaluation, as run_glue.py does) — then
    `dataset.map(function, batched=True, **map_kwargs)`, tokenised on the main process first so that the others
    read its cache."""
    if limit is not None:
        limit = min(len(dataset), limit)
        dataset = select_few_shot(dataset, limit, few_shot_seed) if few_shot_seed is not None else dataset.select(range(limit))
    with training_args.main_process_first(desc=f"{split} dataset map pre-processing"):
        return dataset.map(function, batched=True, desc=f"Running tokenizer on {split} dataset", **map_kwargs)


def capped_max_seq_length(requested: Optional[int], tokenizer, logger: logging.Logger) -> Optional[int]:
    """--max_seq_length, at most the tokenizer's limit (a longer one fails at the position embeddings; run_ner.py
    passes it on), with a warning when cut."""
    if requested is not None and requested > tokenizer.model_max_length:
        logger.warning(f"--max_seq_length {requested} > the tokenizer's {tokenizer.model_max_length}; using the latter.")
        return tokenizer.model_max_length
    return requested


def apply_suggested_guidance_heads(model: PreTrainedModel, model_args, train_dataset, data_collator,
                                   training_args: TrainingArguments, logger: logging.Logger) -> None:
    """`--attention_guidance_heads suggest:COUNTS`: guide, per layer, the heads that already follow each pattern most
    on the training examples (measured before training, so on the encoder as loaded) instead of heads 0, 1, …."""
    counts = model_args.suggested_guidance_counts
    if counts is None or train_dataset is None:  # nothing to choose, or no training for guidance to act on
        return
    heads = guide_suggested_heads(model, train_dataset, data_collator, counts,
                                  batch_size=training_args.per_device_eval_batch_size)
    logger.info(f"Attention guidance on the heads that follow each pattern most in the first "
                f"{min(SUGGESTION_EXAMPLES, len(train_dataset))} training examples: "
                f"--attention_guidance_heads '{json.dumps(heads)}'")


def dataset_id_for_card(dataset_name: Optional[str], *files: Optional[str]) -> str:
    """The dataset name for the model card: the Hub id, or the local folder's / first file's folder name."""
    if dataset_name is not None and not os.path.isdir(dataset_name):
        return dataset_name
    path = dataset_name or next(f for f in files if f is not None)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.basename(os.path.normpath(folder))


def run_hyperparameters(model: PreTrainedModel, training_args: TrainingArguments, data_args) -> dict:
    """The settings a model card reports next to the exact command (the step budget as it was set: --max_steps
    overrides --num_train_epochs)."""
    budget = ({"max_steps": training_args.max_steps} if training_args.max_steps > 0
              else {"num_train_epochs": training_args.num_train_epochs})
    return {
        "fusion": model.config.fusion,
        "fusion_layers": model.config.fusion_layers,
        "learning_rate": training_args.learning_rate,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "processes": training_args.world_size,
        "total_train_batch_size": (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                                   * training_args.world_size),
        **budget,
        "seed": training_args.seed,
        "max_train_samples": data_args.max_train_samples,
        "few_shot_seed": data_args.few_shot_seed,
        # Evaluated on the first N examples only: the card then names the split so (`validation[:N]`).
        "max_eval_samples": getattr(data_args, "max_eval_samples", None),
        "max_predict_samples": getattr(data_args, "max_predict_samples", None),
    }


def train_and_evaluate(trainer, training_args: TrainingArguments, train_dataset, eval_datasets: dict, logger) -> None:
    """Train (then save the model folder and metrics) and evaluate, as the official scripts do.

    `eval_datasets` maps a name to each evaluation set: the first set's metrics keep their names, a later set's get
    `_<name>` appended (MNLI's mismatched set, named "mm": `eval_accuracy_mm`, as in run_glue.py). All go to
    eval_results.json.
    """
    if training_args.do_train:
        resume = training_args.resume_from_checkpoint
        if isinstance(resume, str) and os.path.isdir(resume):  # refused before the earlier results are removed
            check_checkpoint_fits(resume, trainer.accelerator.unwrap_model(trainer.model))
        remove_earlier_results(training_args, logger)  # here, so that a run that fails before training keeps them
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()  # weights, code files, config with auto_map, tokenizer
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        combined = {}
        for name, dataset in eval_datasets.items():
            metrics = trainer.evaluate(eval_dataset=dataset)
            metrics["eval_samples"] = len(dataset)
            if len(eval_datasets) > 1 and name != next(iter(eval_datasets)):
                metrics = {f"{k}_{name}": v for k, v in metrics.items()}
            combined.update(metrics)
            trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", combined)
        trainer.save_depth_weights(next(iter(eval_datasets.values())))


def finish_run(trainer, training_args: TrainingArguments) -> None:
    """The model card for the output folder, the upload with --push_to_hub, and a synchronised end of the processes."""
    if training_args.do_train:
        trainer.create_model_card()
        if training_args.push_to_hub:
            trainer.push_to_hub()
    # The main process works on after the others (depth weights, card): without this, the other processes exit with
    # the process group still alive, and gloo's teardown at interpreter exit can abort them ("terminate called
    # without an active exception", seen once in CI), which fails the whole launch although every file was written.
    trainer.accelerator.wait_for_everyone()
    if training_args.world_size > 1:
        # torch's gloo worker thread frees a finished collective (and the earlier ones' tensors it still points to)
        # while holding the process group's work lock, and needs the GIL for it. If the main thread, holding the GIL,
        # tears the process group down at that moment (here, or when DDP's reducer is freed after main() returns), it
        # waits for that lock: a deadlock at exit (seen in a local CI run; py-spy: ~ProcessGroupGloo in
        # pthread_mutex_lock, the worker thread in ~AsyncBarrierWork -> gil_scoped_acquire; pytorch/pytorch#56297
        # describes this blocking destructor). Half a second without the GIL after the last collective lets the
        # worker threads finish first.
        time.sleep(0.5)
    trainer.accelerator.end_training()  # destroys the process group (a no-op in a single process)
