"""The model options shared by `run_glue_dwatt.py` and `run_ner_dwatt.py`, and how they become a model."""

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional, Union

from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .attention_patterns import SUGGESTION_EXAMPLES
from .configuration_dwatt import (FUSION_CHOICES, POOLING_CHOICES, normalize_attention_guidance_heads,
                                  normalize_fusion_layers)

SUGGEST_PREFIX = "suggest:"  # --attention_guidance_heads suggest:0,1,1,4
# Options that shape a new head. A DWAtt checkpoint keeps the head it was trained with, so with --model_name_or_path
# these are refused where they differ from the checkpoint's; the dropouts are applied to its further training.
NEW_HEAD_OPTIONS = (
    "fusion", "fusion_layers", "dwatt_bottleneck_ratio", "dwatt_position_dim", "dwatt_num_heads", "dwatt_scale_scores",
    "dwatt_shared_value_mlp", "concat_hidden_size", "scalar_mix_layer_norm", "deeper_num_layers", "zero_init_residual",
    "pooling",
)
TRAINING_HEAD_OPTIONS = ("dwatt_weight_dropout", "classifier_dropout")
# How the guidance loss is weighted and averaged: they change a run only where heads are guided.
GUIDANCE_SETTING_OPTIONS = (
    "attention_guidance_weight", "attention_guidance_constant_steps", "attention_guidance_mask_padding",
)


@dataclass
class ModelArguments:
    """Which model to fine-tune: a plain pretrained encoder plus a new head, or an existing DWAtt checkpoint."""

    encoder_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "A plain pretrained encoder (Hub id or folder) to wrap with a new fusion head and classifier."},
    )
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "A DWAtt checkpoint (Hub id or folder) to continue from; give this or --encoder_name_or_path."},
    )
    fusion: str = field(default="dwatt", metadata={"help": f"Fusion head, one of {', '.join(FUSION_CHOICES)}."})
    fusion_layers: str = field(
        default="all",
        metadata={"help": "'all' or comma-separated indices into hidden_states (0 = embeddings, -1 = last layer)."},
    )
    dwatt_bottleneck_ratio: float = field(default=0.5, metadata={"help": "DWAtt MLP bottleneck ratio γ."})
    dwatt_position_dim: int = field(default=24, metadata={"help": "Size of DWAtt's learned depth embeddings."})
    dwatt_num_heads: int = field(default=1, metadata={"help": "Attention heads over depth."})
    dwatt_scale_scores: bool = field(default=False, metadata={"help": "Scale DWAtt scores by 1/sqrt(head dim)."})
    dwatt_weight_dropout: float = field(default=0.0, metadata={"help": "Dropout on DWAtt's weights over depth."})
    dwatt_shared_value_mlp: bool = field(default=False, metadata={"help": "One value MLP for all sources."})
    concat_hidden_size: Optional[int] = field(default=None, metadata={"help": "Concat head MLP width (default d)."})
    scalar_mix_layer_norm: bool = field(default=False, metadata={"help": "Normalise each source before ScalarMix."})
    deeper_num_layers: int = field(default=1, metadata={"help": "Extra transformer layers of the 'deeper' head."})
    zero_init_residual: bool = field(
        default=False,
        metadata={"help": "Start the dwatt/concat head as the identity on the last layer (fused term initialised to 0)."},
    )
    encoder_num_layers: Optional[int] = field(
        default=None,
        metadata={"help": "Keep only the encoder's first k layers and drop the ones above (e.g. the layer that "
                          "`python -m dwatt.variability` selects); with --encoder_name_or_path."},
    )
    attention_guidance_heads: Optional[str] = field(
        default=None,
        metadata={"help": "Attention guidance: heads per pattern (self, next, previous, first token) in every encoder "
                          "layer, e.g. '0,1,1,4', or the heads chosen per layer as JSON ('[[[], [2], [8], [0, 1]], …]', "
                          "one entry per layer; `python -m dwatt.attention_patterns --suggest-guidance` proposes "
                          "them), or 'suggest:0,1,1,4' to choose that many heads per pattern and layer among those "
                          "that already follow each pattern most, measured on the first "
                          f"{SUGGESTION_EXAMPLES} training examples before training (the chosen heads are logged and "
                          "saved in the config); an auxiliary loss pulls them toward those patterns. Default: off."},
    )
    attention_guidance_weight: float = field(default=10.0, metadata={"help": "Weight α of the guidance loss."})
    attention_guidance_constant_steps: int = field(
        default=20000,
        metadata={"help": "Steps at full guidance weight before it decays linearly to 0 at the last step."},
    )
    attention_guidance_mask_padding: bool = field(
        default=True, metadata={"help": "Average the guidance loss over real tokens only, not padding "
                                        "(--no_attention_guidance_mask_padding: over the whole padded block)."}
    )
    pooling: Optional[str] = field(
        default=None,
        metadata={"help": f"Sequence pooling, one of {', '.join(POOLING_CHOICES)} (default: first; last for decoders)."},
    )
    classifier_dropout: Optional[float] = field(default=None, metadata={"help": "Dropout before the classifier."})
    encoder_hub_id: Optional[str] = field(
        default=None,
        metadata={"help": "Hub id of the encoder for the model card's base_model, when the encoder is a local folder."},
    )
    config_name: Optional[str] = field(
        default=None,
        metadata={"help": "Config name or path, if not the model's: the encoder's config with --encoder_name_or_path "
                          "(e.g. other dropout), a DWAtt config with --model_name_or_path."},
    )
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    use_fast_tokenizer: bool = field(
        default=True,
        metadata={"help": "Use a fast (tokenizers-backed) tokenizer, as in run_ner.py / run_glue.py. The NER script needs "
                          "one (it aligns labels by word ids); transformers 5 gives most models a fast one either way."},
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store downloads from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model revision: branch, tag or commit id."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow Hub code (needed for a DWAtt checkpoint without dwatt installed)."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Start a new classifier when the checkpoint's label count differs."}
    )
    card_license: str = field(default="apache-2.0", metadata={"help": "Licence written into the model card."})
    use_lora: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters on the encoder (PEFT) while the fusion head and classifier train in full; "
            "the output folder holds the merged model."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: Optional[str] = field(
        default=None,
        metadata={
            "help": "Comma-separated encoder module names for LoRA (e.g. 'query,value'), or 'all-linear'. Default: "
            "the encoder family's attention query/value projections (dwatt.peft_utils.DEFAULT_LORA_TARGET_MODULES)."
        },
    )
    log_depth_weights: bool = field(
        default=True,
        metadata={"help": "Log the fusion head's mean weight per layer and their entropy with every training log "
                          "(--no_log_depth_weights: do not)."},
    )

    def __post_init__(self):
        if (self.encoder_name_or_path is None) == (self.model_name_or_path is None):
            raise ValueError(
                "Give exactly one of --encoder_name_or_path (a plain pretrained encoder to wrap) and "
                "--model_name_or_path (a DWAtt checkpoint to continue from)."
            )
        if self.encoder_num_layers is not None and self.encoder_name_or_path is None:
            raise ValueError(
                "--encoder_num_layers cuts a plain pretrained encoder when wrapping it: give it with "
                "--encoder_name_or_path (a DWAtt checkpoint keeps the layers it was trained with)."
            )
        adapter_config = Path(self.source) / "adapter_config.json"
        if adapter_config.is_file() and not (Path(self.source) / "config.json").is_file():
            method = json.loads(adapter_config.read_text()).get("peft_type", "PEFT")
            raise ValueError(
                f"{self.source} holds a PEFT adapter ({method}), not a model. A --use_lora run's output folder holds "
                "the merged model: give that; a run resumes from its checkpoint-* folders with "
                "--resume_from_checkpoint and its own options; in Python, "
                "peft.PeftModel.from_pretrained(base, folder) loads an adapter onto its base."
            )
        if self.fusion not in FUSION_CHOICES:
            raise ValueError(f"Unknown --fusion {self.fusion!r}: choose one of {', '.join(FUSION_CHOICES)}.")
        if self.pooling is not None and self.pooling not in POOLING_CHOICES:
            raise ValueError(f"Unknown --pooling {self.pooling!r}: choose one of {', '.join(POOLING_CHOICES)}.")
        # Decoded and checked once, here, so that a bad value fails before anything is loaded. With `suggest:` the
        # model is built guiding the counted heads 0, 1, … (eager attention, the loss on) and the script replaces
        # them with the measured choice before training (`dwatt.script_utils.apply_suggested_guidance_heads`).
        self._suggested_guidance_counts = suggested_guidance_counts(self.attention_guidance_heads)
        self._attention_guidance_heads = (self._suggested_guidance_counts if self._suggested_guidance_counts is not None
                                          else parse_attention_guidance_heads(self.attention_guidance_heads))
        if self.use_lora:
            if self.lora_r < 1:
                raise ValueError(f"--lora_r must be a positive rank, got {self.lora_r}.")
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    @property
    def source(self) -> str:
        """The encoder or checkpoint this run starts from (whichever was given)."""
        return self.encoder_name_or_path or self.model_name_or_path

    def hub_kwargs(self) -> dict:
        """The `from_pretrained` options that say where to read the files from (cache, revision, token)."""
        return {"cache_dir": self.cache_dir, "revision": self.model_revision, "token": self.token}

    def head_config_kwargs(self) -> dict:
        """The `DWAttConfig` arguments these options set for a new head."""
        return {
            "fusion_layers": parse_fusion_layers(self.fusion_layers),
            "dwatt_bottleneck_ratio": self.dwatt_bottleneck_ratio,
            "dwatt_position_dim": self.dwatt_position_dim,
            "dwatt_num_heads": self.dwatt_num_heads,
            "dwatt_scale_scores": self.dwatt_scale_scores,
            "dwatt_weight_dropout": self.dwatt_weight_dropout,
            "dwatt_shared_value_mlp": self.dwatt_shared_value_mlp,
            "concat_hidden_size": self.concat_hidden_size,
            "scalar_mix_layer_norm": self.scalar_mix_layer_norm,
            "deeper_num_layers": self.deeper_num_layers,
            "zero_init_residual": self.zero_init_residual,
            "pooling": self.pooling,
            "classifier_dropout": self.classifier_dropout,
            **self.attention_guidance_kwargs(),
        }

    @property
    def suggested_guidance_counts(self) -> Optional[list[int]]:
        """The head counts per pattern of `--attention_guidance_heads suggest:COUNTS`, else None."""
        return self._suggested_guidance_counts

    def attention_guidance_kwargs(self) -> dict:
        """The `DWAttConfig` attention-guidance arguments of a new head, when --attention_guidance_heads turns guidance
        on. The weighting options alone would change nothing, and are refused."""
        if self.attention_guidance_heads is None:
            self._refuse_guidance_settings_without_heads("a new head")
            return {}
        return {
            "attention_guidance_heads": self._attention_guidance_heads,
            **{name: getattr(self, name) for name in GUIDANCE_SETTING_OPTIONS},
        }

    def _refuse_guidance_settings_without_heads(self, model: str) -> None:
        given = self.given_options(GUIDANCE_SETTING_OPTIONS)
        if given:
            raise ValueError(
                f"{', '.join(f'--{name} {value}' for name, value in given.items())}: no attention head of {model} is "
                "guided, so these would change nothing. Give --attention_guidance_heads too, or drop them."
            )

    # The options given on the command line or in the settings file (set by `dwatt.script_utils.parse_arguments`);
    # None when the arguments were built otherwise, and then an option counts as given where it is not its default.
    explicit_options: ClassVar[Optional[frozenset]] = None

    def given_options(self, names: tuple[str, ...]) -> dict:
        """Those of the options `names` that the user gave (or, without that record, that differ from their defaults)."""
        if self.explicit_options is not None:
            return {name: getattr(self, name) for name in names if name in self.explicit_options}
        defaults = {f.name: f.default for f in fields(self)}
        return {name: getattr(self, name) for name in names if getattr(self, name) != defaults[name]}

    def checkpoint_overrides(self, checkpoint_config) -> dict:
        """The `DWAttConfig` settings these options change for further training of a DWAtt checkpoint (guidance,
        dropouts). New-head options that differ from the checkpoint's are refused: they would be ignored."""
        conflicts = []
        for name, value in self.given_options(NEW_HEAD_OPTIONS).items():
            saved = getattr(checkpoint_config, name)
            if name == "fusion_layers":
                same = (normalize_fusion_layers(parse_fusion_layers(value), checkpoint_config.num_encoder_layers)
                        == checkpoint_config.fusion_source_indices)
            else:
                same = value == saved
            if not same:
                conflicts.append(f"--{name} {value} (the checkpoint's: {saved})")
        if conflicts:
            raise ValueError(
                f"{', '.join(conflicts)}: these options build a new head, and {self.model_name_or_path} keeps the one "
                "it was trained with. Drop them to continue training it, or start a new head on the encoder with "
                "--encoder_name_or_path."
            )
        # Guidance settings the user did not give keep the checkpoint's values (also when new heads are given).
        overrides = {**self.given_options(TRAINING_HEAD_OPTIONS), **self.given_options(GUIDANCE_SETTING_OPTIONS)}
        if self.attention_guidance_heads is not None:
            overrides["attention_guidance_heads"] = self._attention_guidance_heads
        elif checkpoint_config.attention_guidance_heads is None:
            self._refuse_guidance_settings_without_heads(f"checkpoint {self.model_name_or_path}")
        return overrides


def suggested_guidance_counts(text: Optional[str]) -> Optional[list[int]]:
    """The head counts of `suggest:COUNTS` (guide that many heads per pattern, chosen on the training examples), or
    None for any other `--attention_guidance_heads` value."""
    if not (isinstance(text, str) and text.strip().startswith(SUGGEST_PREFIX)):
        return None
    counts = text.strip()[len(SUGGEST_PREFIX):]
    if counts.lstrip().startswith("["):
        raise ValueError(
            f"--attention_guidance_heads {text!r}: 'suggest:' takes head counts per pattern (self, next, previous, "
            "first), e.g. 'suggest:0,1,1,4'; give chosen heads as JSON without 'suggest:'."
        )
    return normalize_attention_guidance_heads(counts)


def parse_attention_guidance_heads(text: Union[str, list, None]) -> Optional[list]:
    """--attention_guidance_heads: head counts (`"0,1,1,4"`) or heads chosen per layer as JSON
    (`'[[[], [2], [8], [0, 1]], …]'`; a settings file may give either as a list), normalized by
    `normalize_attention_guidance_heads`."""
    if isinstance(text, str) and text.lstrip().startswith("["):
        try:
            text = json.loads(text)
        except ValueError:
            raise ValueError(
                f"--attention_guidance_heads {text!r} is not valid JSON: write one [[self heads], [next heads], "
                "[previous heads], [first heads]] entry per encoder layer, e.g. '[[[], [2], [8], [0, 1]], …]'."
            ) from None
    return normalize_attention_guidance_heads(text)


def parse_fusion_layers(text: Union[str, list]) -> Union[str, list[int]]:
    """`"all"` stays `"all"`; `"0,3,-1"` becomes `[0, 3, -1]`."""
    if isinstance(text, list):
        return [int(value) for value in text]
    text = text.strip()
    if text == "all":
        return "all"
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--fusion_layers {text!r} is not understood: use 'all' or comma-separated integers such as '0,6,-1'."
        ) from None


def load_tokenizer(
    model_args: ModelArguments, add_prefix_space: bool = False, needs_word_ids: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer of the encoder or checkpoint (pre-tokenised NER input needs `add_prefix_space` for BPE, and word
    ids, which only a fast tokenizer gives: `needs_word_ids`)."""
    name = model_args.tokenizer_name or model_args.source
    kwargs = {"use_fast": model_args.use_fast_tokenizer, "trust_remote_code": model_args.trust_remote_code,
              **model_args.hub_kwargs()}
    if add_prefix_space:
        kwargs["add_prefix_space"] = True
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if needs_word_ids and not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"The tokenizer of {name} is not a fast tokenizer; the NER script needs the word ids of a fast "
                         "one to put each word's label on its first sub-word (as run_ner.py does).")
    if tokenizer.pad_token is None:  # decoder-only tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encoder_model_type(model_args: ModelArguments) -> str:
    """The wrapped encoder's model type (e.g. 'roberta'), whichever kind of source the options name."""
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.source, trust_remote_code=model_args.trust_remote_code, **model_args.hub_kwargs()
    )
    if config.model_type == "dwatt":
        encoder_config = config.encoder_config
        return encoder_config["model_type"] if isinstance(encoder_config, dict) else encoder_config.model_type
    return config.model_type


def checkpoint_labels(model_args: ModelArguments) -> Optional[list[str]]:
    """The label names of the DWAtt checkpoint being continued, in id order (None when starting from a plain encoder
    or training a new classifier with --ignore_mismatched_sizes; [] for a regression checkpoint)."""
    if model_args.model_name_or_path is None or model_args.ignore_mismatched_sizes:
        return None
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code,
        **model_args.hub_kwargs(),
    )
    if config.problem_type == "regression":
        return []
    return [config.id2label[i] for i in range(config.num_labels)]


def _refuse_a_config_that_drops_trained_weights(model_args: ModelArguments, loading_info: dict) -> None:
    """Continuing a checkpoint keeps its encoder, head and classifier: a --config_name whose architecture differs
    (another fusion, other head sizes, layers, no classifier.dense) would leave trained weights out or replace them
    with random ones, with only transformers' load report to say so. With --ignore_mismatched_sizes the classifier
    is new on purpose (other labels, or another task's checkpoint)."""
    def outside_the_new_classifier(keys) -> list[str]:
        keys = [str(key[0] if isinstance(key, tuple) else key) for key in keys]
        return [key for key in keys if not (model_args.ignore_mismatched_sizes and key.startswith("classifier."))]

    missing = outside_the_new_classifier(loading_info.get("missing_keys", ()))
    unexpected = outside_the_new_classifier(loading_info.get("unexpected_keys", ()))
    reshaped = outside_the_new_classifier(loading_info.get("mismatched_keys", ()))
    if missing or unexpected or reshaped:
        source = f"--config_name {model_args.config_name}" if model_args.config_name else "Its config"
        raise ValueError(
            f"{source} does not fit the weights of checkpoint {model_args.model_name_or_path}: {len(unexpected)} trained "
            f"weights would be dropped (e.g. {unexpected[:3]}), {len(reshaped)} replaced by others of another shape "
            f"(e.g. {reshaped[:3]}) and {len(missing)} started at random (e.g. {missing[:3]}). A checkpoint's config may "
            "change dropouts and attention guidance, not the head or the encoder's layers: drop --config_name, or start "
            "a new head on the encoder with --encoder_name_or_path."
        )


def load_model(
    model_args: ModelArguments,
    model_class: type,
    label_list: list,
    finetuning_task: Optional[str] = None,
    problem_type: Optional[str] = None,
) -> PreTrainedModel:
    """A `model_class` (DWAttForTokenClassification / …ForSequenceClassification) for the labels in `label_list`.

    From `--encoder_name_or_path`: a new head and classifier on the pretrained encoder. From `--model_name_or_path`:
    the checkpoint as saved, whose labels must include the data's (unless --ignore_mismatched_sizes).
    """
    num_labels = len(label_list)
    label_kwargs = {"num_labels": num_labels}
    if num_labels > 1 or problem_type != "regression":
        label_kwargs["id2label"] = {i: str(label) for i, label in enumerate(label_list)}
        label_kwargs["label2id"] = {str(label): i for i, label in enumerate(label_list)}
    if problem_type is not None:
        label_kwargs["problem_type"] = problem_type
    if finetuning_task is not None:
        label_kwargs["finetuning_task"] = finetuning_task

    if model_args.encoder_name_or_path is not None:
        extra = {}
        if model_args.encoder_hub_id:
            extra["encoder_name_or_path"] = model_args.encoder_hub_id
        elif os.path.isdir(model_args.encoder_name_or_path):
            extra["encoder_name_or_path"] = os.path.abspath(model_args.encoder_name_or_path)
        return model_class.from_encoder_pretrained(
            model_args.encoder_name_or_path,
            fusion=model_args.fusion,
            encoder_kwargs={k: v for k, v in model_args.hub_kwargs().items() if v is not None},
            encoder_config=model_args.config_name,
            encoder_num_layers=model_args.encoder_num_layers,
            **model_args.head_config_kwargs(),
            **label_kwargs,
            **extra,
        )
    checkpoint_config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        trust_remote_code=model_args.trust_remote_code,
        **model_args.hub_kwargs(),
    )
    if checkpoint_config.model_type != "dwatt":
        raise ValueError(
            f"{model_args.model_name_or_path} is a {checkpoint_config.model_type!r} checkpoint, not a DWAtt one: pass it "
            "as --encoder_name_or_path to wrap it with a fusion head."
        )
    # Guidance can be added to (or changed for) a checkpoint's further training: the model then builds its encoder
    # with eager attention, as for a new head. So can other dropouts.
    overrides = model_args.checkpoint_overrides(checkpoint_config)
    if model_args.ignore_mismatched_sizes:
        overrides.update(label_kwargs)  # a new classifier for the data's labels, on purpose
    # The config is built anew with the changed settings, so that the config class checks them against the encoder
    # (`from_pretrained(..., **overrides)` would only set them as attributes, unchecked).
    config = type(checkpoint_config).from_dict({**checkpoint_config.to_dict(), **overrides})
    model, loading_info = model_class.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        trust_remote_code=model_args.trust_remote_code, output_loading_info=True, **model_args.hub_kwargs(),
    )
    _refuse_a_config_that_drops_trained_weights(model_args, loading_info)
    if model_args.ignore_mismatched_sizes:
        return model
    # Keep the checkpoint's own label order: the scripts map the data's labels through model.config.label2id. The
    # data may lack some of the checkpoint's labels (a dev file without one class), never have others.
    saved_labels = list(model.config.label2id)
    unknown = [str(label) for label in label_list if str(label) not in model.config.label2id]
    if problem_type != "regression" and unknown:
        raise ValueError(
            f"The data's labels {unknown} are not labels of checkpoint {model_args.model_name_or_path} "
            f"{saved_labels}. Pass --ignore_mismatched_sizes to train a new classifier for the data's labels."
        )
    return model
