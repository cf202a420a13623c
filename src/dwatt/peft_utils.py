"""PEFT (LoRA) for DWAtt models: default target modules per encoder family, a safe `LoraConfig`, merged saving.

PEFT knows default LoRA targets per `model_type`, but a DWAtt model's type is `"dwatt"`: the right targets are those
of the *wrapped encoder* (`query`/`value` for BERT, `q_lin`/`v_lin` for DistilBERT, `Wqkv` for ModernBERT, …).

How PEFT treats the rest of a DWAtt model (tests/test_peft.py checks it; CI runs peft 0.22, and the tests' peft 0.21
branches passed when run by hand):
- With `task_type="TOKEN_CLS"` / `"SEQ_CLS"`, PEFT trains and saves a full copy of its classification modules
  (`modules_to_save`). Up to peft 0.21 that was every module whose name *ends* in `classifier` or `score`, which caught
  the fusion head at `dwatt.fusion_classifier`; from 0.22 the name must be whole (`classifier`, `score`,
  `pre_classifier`), so a plain `LoraConfig` leaves the head frozen at its initialisation and out of the adapter.
  `lora_config()` below therefore always names `fusion_classifier` in `modules_to_save`, and `DWAttTrainer` refuses a
  PEFT model whose head is not trained in full (`check_peft_model`).
- peft 0.21 keeps LoRA out of `modules_to_save` modules only when their name is exactly `classifier`/`score` after a
  dot; `fusion_classifier` does not qualify, so a `target_modules` that matches a name inside the head
  (`"all-linear"`, `proj_in`, `key_proj`, `dense`, …) would put LoRA layers into it, and the adapter would save but
  not load back. `lora_config()` below therefore always sets `exclude_modules` to keep LoRA out of the fusion head and
  the classifier, whatever the PEFT version.
- With the default `save_embedding_layers="auto"`, PEFT saves a resized embedding matrix with the adapter only when it
  can read the base checkpoint's vocabulary size from `base_model_name_or_path`. A model built with
  `from_encoder_pretrained` has no such name (no DWAtt checkpoint exists yet), so rows added by
  `resize_token_embeddings` were silently left out and a fresh base resized the same way got other rows for them.
  `lora_config()` therefore trains and saves those rows (`trainable_token_indices`, see `added_token_ids`).
"""

import copy
import json
import logging
import re
from pathlib import Path
from typing import Optional, Union

from torch import nn
from transformers import PretrainedConfig

from .model_utils import active_copy, is_modules_to_save_wrapper, unwrap_dwatt_model

logger = logging.getLogger(__name__)

# LoRA on the attention query and value projections (the LoRA paper's choice), keyed by the ENCODER's model_type.
DEFAULT_LORA_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "xlm-roberta-xl": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "albert": ["query", "value"],
    "megatron-bert": ["query", "value"],
    "longformer": ["query", "value"],
    "ernie": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "mpnet": ["q", "v"],
    "modernbert": ["Wqkv"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "bloom": ["query_key_value"],
    "falcon": ["query_key_value"],
    "phi3": ["qkv_proj"],
    **{
        model_type: ["q_proj", "v_proj"]
        for model_type in (
            "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
            "opt", "phi", "smollm3",
        )
    },
}

# Module names (relative to the model given to get_peft_model) that LoRA must never enter: the fusion head and the
# classifier are trained in full (PEFT's modules_to_save), so a LoRA layer inside them would be dead weight in the
# frozen original and a second, conflicting update path in the trained copy.
HEAD_EXCLUDE_PATTERN = r"(.*\.)?(fusion_classifier|classifier|score)(\..*)?"

# The fusion head's attribute name in DWAttModel, as PEFT's `modules_to_save` must name it.
FUSION_HEAD_MODULE = "fusion_classifier"


def _encoder_config(model_or_config) -> PretrainedConfig:
    config = getattr(model_or_config, "config", model_or_config)
    encoder_config = getattr(config, "encoder_config", None)
    if encoder_config is None:
        raise ValueError(
            f"{type(model_or_config).__name__} is not a DWAtt model or config (it has no encoder_config)."
        )
    return encoder_config


def encoder_model_type(model_or_config) -> str:
    """The wrapped encoder's `model_type` (e.g. `"bert"`) of a DWAtt model, PEFT model or `DWAttConfig`."""
    encoder_config = _encoder_config(model_or_config)
    return encoder_config["model_type"] if isinstance(encoder_config, dict) else encoder_config.model_type


def default_lora_target_modules(model_or_config) -> list[str]:
    """LoRA target module names for the encoder inside a DWAtt model (or `DWAttConfig`).

    Raises `ValueError` for an encoder family dwatt does not know (and PEFT has no default for either).
    """
    model_type = encoder_model_type(model_or_config)
    if model_type in DEFAULT_LORA_TARGET_MODULES:
        return list(DEFAULT_LORA_TARGET_MODULES[model_type])
    try:  # PEFT's own table, for families not listed above
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    except ImportError:  # pragma: no cover - peft moved its table
        PEFT_DEFAULTS = {}
    if model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    raise ValueError(
        f"dwatt has no default LoRA target modules for encoder type {model_type!r}. Pass them explicitly: "
        "--lora_target_modules with comma-separated module names of the encoder's attention projections (e.g. "
        "'query,value'), or 'all-linear'; in Python, dwatt.peft_utils.lora_config(model, target_modules=[...])."
    )


def added_token_ids(model: nn.Module) -> list[int]:
    """Ids of the input-embedding rows a `from_encoder_pretrained` model has beyond its encoder checkpoint's vocabulary
    (added by `resize_token_embeddings`); `[]` when there are none or PEFT itself can tell.

    PEFT detects a resize by comparing with the checkpoint named in `name_or_path` (a DWAtt checkpoint loaded with
    `from_pretrained`), so only models without one are compared here, with `config.encoder_name_or_path`.
    """
    config = getattr(model, "config", None)
    encoder_name_or_path = getattr(config, "encoder_name_or_path", None)
    vocab_size = getattr(config, "vocab_size", None)
    if getattr(model, "name_or_path", "") or not encoder_name_or_path or not vocab_size:
        return []
    from transformers import AutoConfig

    try:  # from_encoder_pretrained read this config already, so it is local or in the cache: never download here
        pretrained_vocab_size = AutoConfig.from_pretrained(encoder_name_or_path, local_files_only=True).vocab_size
    except (OSError, ValueError) as error:
        logger.warning(
            f"Could not read the vocabulary size of {encoder_name_or_path} ({error}); if you added tokens with "
            "resize_token_embeddings, pass their ids as trainable_token_indices so that the adapter saves their rows."
        )
        return []
    return list(range(pretrained_vocab_size, vocab_size))


def _embedding_saved_in_full(model: nn.Module, kwargs: dict) -> bool:
    """Whether the user already asked PEFT to train (and so save) the whole input embedding."""
    embedding = model.get_input_embeddings()
    name = next(name for name, module in model.named_modules() if module is embedding)
    entries = [*(kwargs.get("modules_to_save") or [])]
    if isinstance(kwargs.get("target_modules"), list):
        entries += kwargs["target_modules"]
    return any(name == entry or name.endswith("." + entry) for entry in entries)


def peft_task_type(model: nn.Module) -> str:
    """PEFT's task type for a DWAtt model class: TOKEN_CLS, SEQ_CLS, or FEATURE_EXTRACTION for the bare model."""
    name = type(model).__name__
    if name.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    return "FEATURE_EXTRACTION"


def prompt_learning_sizes(model_or_config) -> dict[str, int]:
    """`num_layers`, `token_dim` and `num_attention_heads` of the wrapped encoder, for PEFT's prompt-learning configs.

    PEFT reads these sizes from the top level of `config.to_dict()`; a `DWAttConfig` keeps them in `encoder_config`,
    so PEFT asks for them ("Please specify `num_layers` in `peft_config`"). Pass them on:
    `PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=20, modules_to_save=["fusion_classifier"],
    **prompt_learning_sizes(model))` (the head is named so that PEFT trains it, see the module docstring).
    """
    encoder_config = _encoder_config(model_or_config)
    config = getattr(model_or_config, "config", model_or_config)
    # attribute_map translates the family's own names (DistilBERT's n_layers/dim/n_heads, GPT-2's n_layer/n_embd).
    return {
        "num_layers": config.num_encoder_layers,
        "token_dim": encoder_config.hidden_size,
        "num_attention_heads": encoder_config.num_attention_heads,
    }


def prefix_tuning_sizes(model_or_config) -> dict[str, int]:
    """`num_layers`, `token_dim` and `num_attention_heads` for PEFT's `PrefixTuningConfig`: the shape of the wrapped
    encoder's keys and values in each layer. Under grouped-query attention (Qwen2, Llama) those have fewer heads than
    the queries, and PEFT sizes a stock model's prefix by them; elsewhere they are `prompt_learning_sizes`.
    `PrefixTuningConfig(task_type="TOKEN_CLS", num_virtual_tokens=16, modules_to_save=["fusion_classifier"],
    **prefix_tuning_sizes(model))`; the encoder must take a key/value cache (BERT, RoBERTa, ELECTRA, GPT-2, Llama, …).
    """
    sizes = prompt_learning_sizes(model_or_config)
    encoder_config = _encoder_config(model_or_config)
    key_value_heads = getattr(encoder_config, "num_key_value_heads", None)
    if key_value_heads:
        head_dim = getattr(encoder_config, "head_dim", None) or sizes["token_dim"] // sizes["num_attention_heads"]
        sizes.update(token_dim=head_dim * key_value_heads, num_attention_heads=key_value_heads)
    return sizes


def parse_target_modules(text: Optional[Union[str, list]]) -> Optional[Union[str, list[str]]]:
    """`None` → `None` (the defaults); `"all-linear"` stays; `"query,value"` → `["query", "value"]`."""
    if text is None or isinstance(text, list):
        return text
    text = text.strip()
    if not text:
        return None
    if text == "all-linear":
        return text
    return [part.strip() for part in text.split(",") if part.strip()]


def _keep_added_token_rows(model: nn.Module, target_modules, kwargs: dict) -> None:
    """Adds the rows of `added_token_ids` to `kwargs["trainable_token_indices"]` (or checks the user's list has them)."""
    added = added_token_ids(model)
    chosen = kwargs.get("trainable_token_indices")
    if added and chosen is None and not _embedding_saved_in_full(model, {**kwargs, "target_modules": target_modules}):
        kwargs["trainable_token_indices"] = added
        logger.info(
            f"The embedding matrix has {len(added)} rows beyond the vocabulary of {model.config.encoder_name_or_path} "
            f"(ids {added[0]}–{added[-1]}): LoRA trains them and saves them with the adapter (trainable_token_indices)."
        )
    elif added and isinstance(chosen, list) and not set(added) <= set(chosen):
        missing = sorted(set(added) - set(chosen))
        raise ValueError(
            f"trainable_token_indices leaves out {len(missing)} of the ids added to the vocabulary after "
            f"from_encoder_pretrained ({missing[:10]}{' …' if len(missing) > 10 else ''}): the adapter would not save "
            "their rows, and a fresh base resized the same way would get other ones. Add them to "
            "trainable_token_indices, or leave it out and dwatt adds them."
        )


def lora_config(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.1,
    target_modules: Optional[Union[str, list[str]]] = None,
    **kwargs,
):
    """A `peft.LoraConfig` for a DWAtt model: the encoder's default targets (unless given), the task type from the
    model class, and LoRA kept out of the fusion head and the classifier (which are trained in full and saved with
    the adapter: `modules_to_save` always holds `fusion_classifier`, besides any modules given). Rows added to the vocabulary after `from_encoder_pretrained` are trained and saved with the
    adapter too (`trainable_token_indices`), so that a fresh base resized the same way gets them back. `kwargs` go to
    `LoraConfig` (`bias`, `use_rslora`, `layers_to_transform`, `trainable_token_indices`, …)."""
    from peft import LoraConfig

    _keep_added_token_rows(model, target_modules, kwargs)
    task_type = kwargs.pop("task_type", None) or peft_task_type(model)
    # Named whatever the task type: PEFT adds its classifier names itself, but from peft 0.22 they no longer match
    # `fusion_classifier`, and for the bare DWAttModel (FEATURE_EXTRACTION) it adds nothing.
    modules_to_save = list(kwargs.pop("modules_to_save", None) or [])
    if FUSION_HEAD_MODULE not in modules_to_save:
        modules_to_save.append(FUSION_HEAD_MODULE)
    if kwargs.get("exclude_modules") is not None:
        raise ValueError("lora_config sets exclude_modules itself (to protect the fusion head); build a LoraConfig directly to override it.")
    return LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules if target_modules is not None else default_lora_target_modules(model),
        exclude_modules=HEAD_EXCLUDE_PATTERN,
        modules_to_save=modules_to_save,
        **kwargs,
    )


def get_lora_model(model: nn.Module, **lora_kwargs):
    """`peft.get_peft_model(model, lora_config(model, **lora_kwargs))`."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, **lora_kwargs))


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def lora_layers_in_head(peft_model) -> list[str]:
    """Names of the modules inside the fusion head or classifier that carry LoRA layers (empty for `lora_config()`).

    A plain `LoraConfig` whose `target_modules` match names inside the head (`all-linear`, `dense`, `proj_in`) puts
    them there. With peft 0.21, which also keeps the head as one of its `modules_to_save`, the adapter then saves (and
    `merge_and_unload` works) but does not load back (`KeyError: …fusion_classifier…lora_A…`)."""
    head = re.compile(HEAD_EXCLUDE_PATTERN)
    return [name.removeprefix("base_model.model.") for name, module in peft_model.named_modules()
            if hasattr(module, "lora_A") and head.fullmatch(name.removeprefix("base_model.model."))]


def check_peft_model(peft_model) -> None:
    """Refuses a PEFT model that would train a DWAtt model wrongly or save an adapter that cannot be used again:
    - a fusion head with parameters that PEFT does not train in full (`modules_to_save`): it would stay at its
      initialisation, and the adapter would not hold it, so a fresh base gets another one (peft >= 0.22 with a plain
      config; see the module docstring);
    - LoRA inside a head that PEFT also trains in full: the adapter saves but does not load back, so no checkpoint
      could be resumed.
    Anything that is not a PEFT model passes."""
    if not is_peft_model(peft_model):
        return
    head = unwrap_dwatt_model(peft_model).base_model.fusion_classifier
    has_parameters = any(True for _ in head.parameters())
    # PEFT keeps one trained copy of the head per adapter that names it: each active adapter needs its own.
    copies = head.modules_to_save if is_modules_to_save_wrapper(head) else {}
    without_head = [name for name in peft_model.active_adapters if name not in copies]
    if has_parameters and without_head:
        config = peft_model.peft_config[without_head[0]]
        fix = ("Build the config with dwatt.peft_utils.lora_config(model), or add modules_to_save=['fusion_classifier'] "
               "to your LoraConfig." if config.peft_type == "LORA" else
               f"Add modules_to_save=['fusion_classifier'] to your {type(config).__name__}.")
        raise ValueError(
            f"PEFT does not train the fusion head (dwatt.fusion_classifier) in full for the adapter "
            f"{without_head[0]!r}: it would stay at its initialisation and the adapter would not save it (peft 0.22 "
            f"and later keep only modules named exactly 'classifier'/'score' for a task type). {fix}"
        )
    inside = lora_layers_in_head(peft_model)
    if inside:
        raise ValueError(
            f"LoRA sits inside the fusion head or classifier ({', '.join(inside[:3])}{', …' if len(inside) > 3 else ''}), "
            "which PEFT also trains in full as modules_to_save: it would save the adapter but fail to load it back, so "
            "no checkpoint could be resumed. Build the config with dwatt.peft_utils.lora_config(model, "
            "target_modules=…), which keeps LoRA out of the head, or add "
            "exclude_modules=dwatt.peft_utils.HEAD_EXCLUDE_PATTERN to your LoraConfig."
        )


def peft_model_config(peft_model):
    """The PEFT config of the active adapter."""
    return peft_model.peft_config[peft_model.active_adapter]


def merged_copy(peft_model) -> Optional[nn.Module]:
    """A plain DWAtt model with the adapter merged in, or None where the method cannot be merged: prompt learning
    (prompt tuning, P-tuning, prefix tuning) adds inputs instead of changing weights, and some methods (Poly, …) raise
    NotImplementedError. `peft_model` itself is left untouched.

    The result saves like any DWAtt checkpoint (weights, code files, `auto_map`) and loads without PEFT.
    """
    if peft_model_config(peft_model).is_prompt_learning:
        return None
    try:
        merged = copy.deepcopy(peft_model).merge_and_unload()
    except NotImplementedError:
        return None
    # LN tuning's unload leaves the modules_to_save wrappers in place: saved so, the head's and classifier's weights
    # were under `…modules_to_save.default.…` keys, and a reload initialised them afresh.
    return _with_active_copies(merged)


def unwrapped_copy(peft_model) -> nn.Module:
    """A plain DWAtt model with the adapter's trained copies of the fusion head and classifier, without the adapter
    itself (for describing a prompt-learning run, whose adapter cannot be merged)."""
    return _with_active_copies(copy.deepcopy(peft_model.get_base_model()))


def _with_active_copies(model: nn.Module) -> nn.Module:
    """`model` with each ModulesToSaveWrapper replaced by the copy it runs (in place)."""
    for name, module in list(model.named_modules()):
        if is_modules_to_save_wrapper(module):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, active_copy(module))
    return model


# The settings of a PEFT config that say what was trained (those the method has; booleans only when set).
PEFT_SETTINGS = ("r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora", "init_r", "target_r", "alpha",
                 "rank_dropout", "module_dropout", "oft_block_size", "boft_block_size", "boft_block_num",
                 "vera_dropout", "n_frequency", "scaling", "num_virtual_tokens", "prefix_projection",
                 "encoder_reparameterization_type")
PEFT_METHOD_NAMES = {"LORA": "LoRA", "ADALORA": "AdaLoRA", "IA3": "IA³", "LOHA": "LoHa", "LOKR": "LoKr",
                     "VERA": "VeRA", "FOURIERFT": "FourierFT", "PREFIX_TUNING": "Prefix tuning",
                     "PROMPT_TUNING": "Prompt tuning", "P_TUNING": "P-tuning"}


def peft_method(config) -> str:
    """PEFT's name of a config's method (`LORA`, `PREFIX_TUNING`, …): its PeftType's value, or the saved string."""
    return str(getattr(config.peft_type, "value", config.peft_type))


def peft_summary(peft_model, merged: Optional[bool] = None) -> dict:
    """The PEFT method and settings of a PEFT model's active adapter, for logs and model cards: `method` (PEFT's
    type: `LORA`, `PREFIX_TUNING`, …), its settings, `target_modules` (methods on the encoder's layers), the
    parameter counts, and, where given, `merged` (whether the saved folder holds the merged model or the adapter)."""
    config = peft_model_config(peft_model)
    method = peft_method(config)
    summary = {"method": method}
    for name in PEFT_SETTINGS:
        value = getattr(config, name, None)
        if name == "r" and method == "ADALORA":  # AdaLoRA's ranks are init_r → target_r; `r` is unused
            continue
        if value is not None and value is not False:
            summary[name] = value.value if hasattr(value, "value") else value
    targets = getattr(config, "target_modules", None)
    if targets is not None:
        summary["target_modules"] = targets if isinstance(targets, str) else sorted(targets)
    # The model's parameters and the adapter's. (PEFT's own total also counts the frozen originals of the head and
    # classifier that it trains copies of, a model's worth of head too many.)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    total = sum(p.numel() for name, p in peft_model.named_parameters() if ".original_module." not in name)
    summary.update(trainable_parameters=int(trainable), total_parameters=int(total))
    if merged is not None:
        summary["merged"] = merged
    if merged is False:  # the model the adapter runs on (None for one built with from_encoder_pretrained)
        summary["base_model"] = config.base_model_name_or_path
    return summary


lora_summary = peft_summary  # its name before other PEFT methods were summarised


def peft_summary_file(summary: dict) -> str:
    """Where a final save writes `peft_summary`: `lora.json` for LoRA (as ever), `peft.json` for the other methods."""
    return "lora.json" if summary["method"] == "LORA" else "peft.json"


def peft_loss_extras(peft_model) -> Optional[str]:
    """What the PEFT wrapper adds to the model's loss, which a loss computed from the logits would leave out
    (AdaLoRA's orthogonal regularisation); None when nothing."""
    if not is_peft_model(peft_model):
        return None
    config = peft_model_config(peft_model)
    if config.peft_type == "ADALORA" and getattr(config, "orth_reg_weight", 0):
        return f"AdaLoRA's orthogonal regularisation (orth_reg_weight={config.orth_reg_weight})"
    return None


# The settings of an adapter that shape what it trains: a checkpoint resumed under other values would load, and train
# on with them (an alpha 4x larger scales the adapter's effect 4x at the step it resumes), or fail deep in loading.
ADAPTER_SHAPING_SETTINGS = ("peft_type", *PEFT_SETTINGS, "target_modules", "exclude_modules", "modules_to_save",
                            "bias", "layers_to_transform")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _comparable(value):
    return sorted(value) if isinstance(value, (list, set, tuple)) else value


def check_checkpoint_fits(checkpoint: str, model: nn.Module) -> None:
    """Refuses to resume `model` (a PEFT model or not) from a checkpoint folder that would load wrongly: a whole model
    into a PEFT model (the merged final save of a LoRA run: Trainer loads it with strict=False, nothing matches, and
    training restarts from the untrained model without a word), an adapter into a model without one, an adapter
    saved with other settings than the model's, or a prompt encoder's adapter (P-tuning, projected prefix tuning),
    whose encoder PEFT does not save."""
    folder = Path(checkpoint)
    holds_adapter = any((folder / name).is_file() for name in ADAPTER_FILES)
    holds_model = any((folder / name).is_file() for name in MODEL_FILES)
    saved_path = folder / "adapter_config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    lora = saved.get("peft_type", "LORA") == "LORA"
    if not is_peft_model(model):
        if holds_adapter and not holds_model:
            raise ValueError(
                f"{checkpoint} holds a PEFT adapter ({saved.get('peft_type', 'an adapter')}), and this run's model has "
                "none: " + ("resume with --use_lora and that run's --lora_* options." if lora else
                            "wrap the model in that run's PEFT config before resuming.")
            )
        return
    if holds_model and not holds_adapter:
        raise ValueError(
            f"{checkpoint} holds a whole model, and this run trains a PEFT adapter: a --use_lora run resumes from its "
            "checkpoint-* folders (its final save is the merged model, not an adapter). Resume a run without "
            f"--use_lora from it, or start a new run from a model folder (--model_name_or_path {checkpoint})."
        )
    config = peft_model_config(model)
    method = peft_method(config)
    if holds_adapter and (method == "P_TUNING" or (method == "PREFIX_TUNING" and config.prefix_projection)):
        # (the stock Trainer resumes P-tuning without a word, and fails to load a projected prefix)
        raise ValueError(
            f"{checkpoint} cannot be resumed: {PEFT_METHOD_NAMES[method]} trains a prompt encoder (P-tuning's "
            "MLP/LSTM, prefix tuning's projection), and PEFT's checkpoints hold only the prompt it outputs, so a "
            "resumed run would train something else. Start the run again; prompt tuning, and prefix tuning without "
            "prefix_projection, resume from their checkpoints."
        )
    if not saved:
        return
    current = config.to_dict()
    differing = [
        f"{name}: {_comparable(saved[name])!r} in the checkpoint, {_comparable(current[name])!r} now"
        for name in ADAPTER_SHAPING_SETTINGS
        if name in saved and name in current and _comparable(saved[name]) != _comparable(current[name])
    ]
    if differing:
        raise ValueError(
            f"{checkpoint} was saved with other adapter settings than this run's ({'; '.join(differing)}). Resume "
            + ("with the options of the run that wrote it (--lora_r, --lora_alpha, --lora_dropout, "
               "--lora_target_modules)" if lora else "with the PEFT config of the run that wrote it")
            + ", or start a new run."
        )


def apply_lora_from_args(model: nn.Module, model_args) -> nn.Module:
    """What the scripts call after loading the model: wraps it in LoRA when `--use_lora`, else returns it as is."""
    if not getattr(model_args, "use_lora", False):
        return model
    peft_model = get_lora_model(
        model,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=parse_target_modules(model_args.lora_target_modules),
    )
    summary = peft_summary(peft_model)
    logger.info(
        f"LoRA r={summary['r']} alpha={summary['lora_alpha']} dropout={summary['lora_dropout']} on "
        f"{summary['target_modules']}; fusion head and classifier trained in full: "
        f"{summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters trainable."
    )
    return peft_model
