"""Model cards for fine-tuned DWAtt checkpoints: Hub metadata, what the head does, usage, command and results."""

import inspect
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .accounting import cost_summary
from .peft_utils import PEFT_METHOD_NAMES, PEFT_SETTINGS

TEMPLATE_PATH = Path(__file__).with_name("model_card_template.md")

FUSION_DESCRIPTIONS = {
    "dwatt": (
        "Depth-Wise Attention (DWAtt; ElNokrashy, AlKhamissi & Diab, LREC-COLING 2024) lets every token attend over "
        "the encoder's layers: a query from the last layer, learned depth embeddings as keys, and a small MLP per "
        "layer as values, added back to the last layer: `h = z_L + Σ_n softmax(q·k)_n v_n`."
    ),
    "concat": "Concat fusion: `h = z_L + W·LN(gelu(U·[z_0; …; z_L]))`, one bottleneck MLP over all layers' states.",
    "scalar_mix": "ScalarMix (ELMo, BERMo): `h = γ Σ_n softmax(w)_n z_n`, one learned scalar weight per layer.",
    "deeper": (
        "The DWAtt paper's parameter-matched control: extra randomly initialised transformer layer(s) of the "
        "encoder's shape on top of its last layer."
    ),
    "last": "No fusion: the encoder's last layer, as in the stock transformers classifiers (the baseline).",
}
# Bookkeeping the Trainer and the scripts log beside the metrics (also with run_glue's "_mm" suffix for MNLI's
# mismatched dev set), and seqeval's per-type entity counts (`LOC_number`): not results to list on a card.
NON_QUALITY_METRICS = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "samples",
                       "model_preparation_time"}
HEAD_SETTINGS = {
    "dwatt": ("dwatt_bottleneck_ratio", "dwatt_position_dim", "dwatt_num_heads", "dwatt_scale_scores", "dwatt_weight_dropout", "dwatt_shared_value_mlp", "zero_init_residual"),
    "concat": ("concat_hidden_size", "zero_init_residual"),
    "scalar_mix": ("scalar_mix_layer_norm",),
    "deeper": ("deeper_num_layers",),
    "last": (),
}
ATTENTION_GUIDANCE_SETTINGS = (
    "attention_guidance_heads", "attention_guidance_weight", "attention_guidance_constant_steps",
    "attention_guidance_mask_padding",
)
TASKS = {
    "token-classification": ("Token Classification", "TokenClassification", "Hugging Face is based in New York City."),
    "text-classification": ("Text Classification", "SequenceClassification", "A gripping, beautifully made film."),
}
# The pipeline input of the usage example for a classifier of sentence pairs (MRPC, RTE, MNLI, …).
PAIR_EXAMPLE = {"text": "The company posted a profit in May.", "text_pair": "In May the firm reported a profit."}


# Options whose values are secrets: the card is published with the checkpoint, so their values are masked.
SECRET_OPTIONS = ("--token", "--hub_token", "--use_auth_token", "--push_to_hub_token")
MASKED = "***"


def launcher(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """`python`, or the `torchrun` line that starts as many processes as this run had (torchrun, accelerate launch
    and their multi-node forms all set WORLD_SIZE and LOCAL_WORLD_SIZE)."""
    environ = os.environ if environ is None else environ
    world = int(environ.get("WORLD_SIZE", "1"))
    local = int(environ.get("LOCAL_WORLD_SIZE", world))
    if world <= 1:
        return ["python"]
    nodes = max(1, world // max(local, 1))
    return ["torchrun", f"--nproc_per_node={local}", *([f"--nnodes={nodes}"] if nodes > 1 else [])]


def command_line(argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """The command that started this process (or `argv`), quoted so it can be pasted into a shell, with the values
    of the Hub token options masked; a multi-process run's with its launcher (see `launcher`)."""
    parts, mask_next = [], False
    for part in sys.argv if argv is None else argv:
        option = part.split("=", 1)[0]
        option = "--" + option[2:].replace("-", "_") if option.startswith("--") else option  # --hub-token too
        if mask_next:
            part, mask_next = MASKED, False
        elif option in SECRET_OPTIONS:
            if "=" in part:
                part = f"{part.split('=', 1)[0]}={MASKED}"
            else:
                mask_next = True
        parts.append(part)
    return " ".join(shlex.quote(part) for part in [*launcher(environ), *_encoder_named_by_its_hub_id(parts)])


def _encoder_named_by_its_hub_id(parts: list[str]) -> list[str]:
    """With `--encoder_hub_id ID` (the Hub copy of a local encoder folder), the command names the encoder by ID: the
    local folder (a path in some venv) does not exist where the card is read."""
    hub_id, kept, skip = None, [], False
    for index, part in enumerate(parts):
        if skip:
            skip = False
        elif part == "--encoder_hub_id" and index + 1 < len(parts):
            hub_id, skip = parts[index + 1], True
        elif part.startswith("--encoder_hub_id="):
            hub_id = part.split("=", 1)[1]
        else:
            kept.append(part)
    if not hub_id:
        return parts
    for index, part in enumerate(kept):
        if part == "--encoder_name_or_path" and index + 1 < len(kept):
            kept[index + 1] = hub_id
        elif part.startswith("--encoder_name_or_path="):
            kept[index] = f"--encoder_name_or_path={hub_id}"
    return kept


def quality_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """`{'eval_f1': 0.9, 'eval_runtime': 3}` -> `{'f1': 0.9}` for prefix 'eval'."""
    result = {}
    for key, value in metrics.items():
        if not key.startswith(prefix + "_") or not isinstance(value, (int, float)):
            continue
        name = key[len(prefix) + 1 :]
        base = name.removesuffix("_mm")
        if base not in NON_QUALITY_METRICS and not base.endswith("_number"):
            result[name] = float(value)
    return result


def metric_split(split: str, metric: str, metrics: dict, prefix: str, limits: dict, dataset_id: str,
                 dataset_config: Optional[str]) -> str:
    """The split a card names for `metric` of the Trainer's `metrics`: GLUE MNLI's are `validation_matched` and, for
    run_glue's `_mm` metrics, `validation_mismatched` (likewise `test_…`), as on the Hub (a user's own MNLI files
    have a plain `validation`); a split cut by --max_eval_samples / --max_predict_samples is `validation[:61]`, its
    first examples in the datasets notation."""
    mismatched = metric.endswith("_mm")
    if mismatched or (str(dataset_config).lower() == "mnli" and dataset_id == "nyu-mll/glue"):
        split = f"{split}_{'mismatched' if mismatched else 'matched'}"
    count = metrics.get(f"{prefix}_samples" + ("_mm" if mismatched else ""))
    if limits.get(f"max_{prefix}_samples") is not None and count is not None:
        split = f"{split}[:{count}]"
    return split


def peft_tags(peft: Optional[dict]) -> list[str]:
    """Hub tags of a PEFT run: `lora` for LoRA (as before), else `peft` and the method (`prefix-tuning`, `ia3`)."""
    if not peft:
        return []
    method = peft["method"].lower().replace("_", "-")
    return ["lora"] if method == "lora" else ["peft", method]


def peft_card_fields(peft: Optional[dict]) -> dict:
    """The template's `peft_…` fields from `dwatt.peft_utils.peft_summary` (empty strings without PEFT)."""
    if not peft:
        return {"peft": None, "peft_method": "", "peft_settings": "", "peft_targets": "", "peft_trainable": "",
                "peft_total": "", "peft_base": ""}
    targets = peft.get("target_modules")
    targets = [targets] if isinstance(targets, str) else (targets or [])
    return {
        "peft": peft,
        "peft_method": PEFT_METHOD_NAMES.get(peft["method"], peft["method"]),
        "peft_settings": ", ".join(f"{name}={peft[name]}" for name in PEFT_SETTINGS if name in peft),
        "peft_targets": ", ".join(f"`{target}`" for target in targets),
        "peft_trainable": f"{peft['trainable_parameters']:,}",
        "peft_total": f"{peft['total_parameters']:,}",
        "peft_base": peft.get("base_model") or "",
    }


def _markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def build_model_card(
    model,
    task: str,
    dataset_id: str,
    dataset_config: Optional[str] = None,
    eval_metrics: Optional[dict] = None,
    test_metrics: Optional[dict] = None,
    command: Optional[str] = None,
    hyperparameters: Optional[dict] = None,
    repo_id: Optional[str] = None,
    revision: str = "main",
    license: str = "apache-2.0",
    depth_weights: Optional[list[float]] = None,
    depth_weights_png: Optional[str] = None,
    seq_len: int = 128,
    model_name: Optional[str] = None,
    peft: Optional[dict] = None,
    sentence_pairs: bool = False,
    lora: Optional[dict] = None,
) -> ModelCard:
    """Builds the card; `eval_metrics`/`test_metrics` are the Trainer's dicts (`eval_…`, `predict_…` keys).

    `peft` (`dwatt.peft_utils.peft_summary`) marks a PEFT run: its adapter merged into the saved weights, or (prompt
    learning) saved as the adapter. `lora`, its earlier form, is taken too: LoRA settings (`lora.json`), merged;
    `sentence_pairs` a text classifier of sentence pairs, whose usage example then passes a pair.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    if peft is None and lora is not None:  # the earlier API: LoRA settings, and LoRA was always merged
        peft = {"method": "LORA", "merged": True, **lora}
    task_title, auto_suffix, example_text = TASKS[task]
    config = model.config
    encoder_id = config.encoder_name_or_path
    base_model = encoder_id if encoder_id and not os.path.isabs(encoder_id) and not os.path.exists(encoder_id) else None
    dataset_name = dataset_id + (f" ({dataset_config})" if dataset_config else "")
    if model_name is None:
        encoder_name = (base_model or config.encoder_config.model_type).split("/")[-1]
        model_name = repo_id.split("/")[-1] if repo_id else f"{encoder_name}-{config.fusion}-{dataset_id.split('/')[-1]}"

    eval_results = []
    result_rows = []
    limits = hyperparameters or {}
    for split, prefix, metrics in (("validation", "eval", eval_metrics), ("test", "predict", test_metrics)):
        for name, value in quality_metrics(metrics or {}, prefix).items():
            named_split = metric_split(split, name, metrics, prefix, limits, dataset_id, dataset_config)
            eval_results.append(
                EvalResult(
                    task_type=task, task_name=task_title, dataset_type=dataset_id, dataset_name=dataset_name,
                    dataset_config=dataset_config, dataset_split=named_split, metric_type=name, metric_name=name,
                    metric_value=value,
                )
            )
            result_rows.append([named_split, name, f"{value:.4f}"])

    card_data = ModelCardData(
        license=license,
        base_model=base_model,
        library_name="transformers",
        pipeline_tag=task,
        tags=["dwatt", "custom_code", "layer-fusion", f"fusion-{config.fusion}", task, *peft_tags(peft)],
        datasets=[dataset_id],
        metrics=sorted({result.metric_type for result in eval_results}) or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    cost = cost_summary(model, seq_len)
    pooled = task == "text-classification" and config.pooling != "mean"
    source_indices = config.fusion_source_indices if config.fusion not in ("last", "deeper") else [config.num_encoder_layers]
    settings = {name: getattr(config, name) for name in HEAD_SETTINGS[config.fusion]}
    if getattr(config, "attention_guidance_heads", None) is not None:  # trained with attention guidance
        settings.update({name: getattr(config, name) for name in ATTENTION_GUIDANCE_SETTINGS})
    depth_table = ""
    if depth_weights is not None:
        depth_table = _markdown_table(["hidden state", *map(str, source_indices)], [["mean weight", *(f"{w:.3f}" for w in depth_weights)]])
    hyperparameters = hyperparameters or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        base_model_display=f"`{base_model}`" if base_model else f"the `{config.encoder_config.model_type}` encoder",
        task_title=task_title.lower(),
        dataset_display=f"`{dataset_name}`",
        fusion=config.fusion,
        fusion_description=FUSION_DESCRIPTIONS[config.fusion],
        source_indices=source_indices,
        num_states=config.num_encoder_layers + 1,
        num_layers=config.num_encoder_layers,
        head_settings=", ".join(f"`{k}={v}`" for k, v in settings.items()) or "none",
        added_parameters=f"{cost['added_parameters']:,}",
        added_parameters_percent=f"{100 * cost['added_parameters_fraction']:.2f}%",
        encoder_parameters=f"{cost['encoder_parameters']:,}",
        seq_len=seq_len,
        flops_per_token=f"{cost['flops_per_token']:,}",
        flops_percent=f"{100 * cost['flops_fraction']:.2f}%",
        encoder_flops=f"{cost['encoder_flops_per_token']:,}",
        pooled_flops=f"{cost['flops_per_pooled_sequence']:,}" if pooled else "",
        pooled_flops_percent=f"{100 * cost['pooled_flops_fraction']:.2f}%",
        pooling=getattr(config, "pooling", ""),
        depth_weights_png=depth_weights_png,
        depth_weights_table=depth_table,
        pipeline_tag=task,
        repo_id=repo_id or "path/to/this/folder",
        revision=revision,
        auto_suffix=auto_suffix,
        example_input=(repr(PAIR_EXAMPLE) if sentence_pairs and task == "text-classification"
                       else json.dumps(example_text)),
        command=command or command_line(),
        hyperparameters_table=_markdown_table(["hyperparameter", "value"], [[k, v] for k, v in hyperparameters.items()]) if hyperparameters else "",
        results_table=_markdown_table(["split", "metric", "value"], result_rows) if result_rows else "No evaluation was run.",
        encoder_id=encoder_id,
        rebuild_arguments=rebuild_arguments(config, task),
        **peft_card_fields(peft),
    )


# DWAttConfig options that do not shape the model the adapter runs on: the version stamp, where the encoder came
# from (the snippet names it), and training-only settings.
NOT_REBUILT = {"encoder_config", "encoder_name_or_path", "dwatt_version", "attention_guidance_heads",
               *ATTENTION_GUIDANCE_SETTINGS}


def rebuild_arguments(config, task: str) -> list[str]:
    """The keyword arguments of `from_encoder_pretrained` that rebuild the DWAtt model `config` describes around its
    encoder (for an adapter, which does not hold the config): the fusion, the label count, the encoder layers kept
    (--encoder_num_layers keeps the first k), and every other option of DWAttConfig's (pooling, layers, head sizes,
    label names, problem type) that is not its default. Options that change no weight shape (pooling, id2label)
    would otherwise load without a word, and give other outputs."""
    arguments = {"fusion": config.fusion, "num_labels": config.num_labels,
                 "encoder_num_layers": config.num_encoder_layers}
    for name, parameter in inspect.signature(type(config).__init__).parameters.items():
        if name in NOT_REBUILT or name in arguments or parameter.default is inspect.Parameter.empty:
            continue
        if name == "pooling" and task != "text-classification":
            continue  # a token classifier does not pool
        value = getattr(config, name, parameter.default)
        if value != parameter.default:
            arguments[name] = value
    if config.id2label != {i: f"LABEL_{i}" for i in range(config.num_labels)}:
        arguments["id2label"] = dict(config.id2label)
    if getattr(config, "problem_type", None) is not None:
        arguments["problem_type"] = config.problem_type
    return [f"{name}={value!r}" for name, value in arguments.items()]


def read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def write_model_card(
    output_dir: str,
    model,
    task: str,
    dataset_id: str,
    dataset_config: Optional[str] = None,
    hyperparameters: Optional[dict] = None,
    repo_id: Optional[str] = None,
    revision: str = "main",
    license: str = "apache-2.0",
    command: Optional[str] = None,
    peft: Optional[dict] = None,
    sentence_pairs: bool = False,
    lora: Optional[dict] = None,
) -> Path:
    """Writes `README.md` into `output_dir` from the run's files there: eval_results.json, predict_results.json and
    depth_weights.json / depth_weights.png (when present)."""
    folder = Path(output_dir)
    depth = read_json(folder / "depth_weights.json")
    card = build_model_card(
        model,
        task,
        dataset_id,
        dataset_config=dataset_config,
        eval_metrics=read_json(folder / "eval_results.json"),
        test_metrics=read_json(folder / "predict_results.json"),
        command=command,
        hyperparameters=hyperparameters,
        repo_id=repo_id,
        revision=revision,
        license=license,
        depth_weights=depth["mean_weights"] if depth else None,
        depth_weights_png="depth_weights.png" if (folder / "depth_weights.png").exists() else None,
        model_name=folder.resolve().name if repo_id is None else None,
        peft=peft,
        sentence_pairs=sentence_pairs,
        lora=lora,
    )
    path = folder / "README.md"
    card.save(str(path))
    return path
