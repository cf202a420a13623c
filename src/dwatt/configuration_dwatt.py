# Copyright 2026 the dwatt authors. Licensed under the Apache License, Version 2.0.
"""Configuration of DWAtt models: a pretrained encoder plus a layer-fusion head.

This file is copied next to every saved checkpoint (Hugging Face remote code), so it imports only torch-free, public
`transformers` names and must stay importable on its own.
"""

from typing import Any, Optional, Union

from transformers import AutoConfig, PretrainedConfig
from transformers.activations import ACT2FN

# Stamped into every config so that a checkpoint says which dwatt code wrote it (a locally installed dwatt wins
# over the Hub copy of the code in transformers 5, so the stamp is how a mismatch can be spotted).
DWATT_CODE_VERSION = "0.3.0"

FUSION_CHOICES = ("dwatt", "concat", "scalar_mix", "deeper", "last")
POOLING_CHOICES = ("first", "mean", "last")
# The heads of the form h = z_L + (fused term): `zero_init_residual` can start them as the identity.
RESIDUAL_FUSIONS = ("dwatt", "concat")

# The fixed attention patterns of attention guidance (Deshpande & Narasimhan 2020), in the order in which
# `attention_guidance_heads` counts heads for them: each token attends to itself, to the next token, to the previous
# token, to the first (real) token.
ATTENTION_GUIDANCE_PATTERNS = ("self", "next", "previous", "first")

# Encoder families that read left to right: sequence classification pools their last real token, like the stock
# `…ForSequenceClassification` classes of these models do.
DECODER_ONLY_MODEL_TYPES = frozenset(
    {
        "bloom", "falcon", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj",
        "llama", "mistral", "mixtral", "olmo", "olmo2", "opt", "phi", "phi3", "qwen2", "qwen3", "smollm3",
    }
)


def is_decoder_only(encoder_config: PretrainedConfig) -> bool:
    """A causal decoder (GPT-2, Llama, StarCoder2, …): each token sees only the ones before it, so a sequence is
    pooled at its last token and attention cannot be guided to the next one.

    Known families, and any other that transformers offers a causal LM for and no masked LM (BERT-like encoders have
    both), except encoder-decoder models (refused by DWAttConfig) and BertGeneration (an encoder as often as not).
    The Auto classes' mappings are public (`transformers.MODEL_FOR_CAUSAL_LM_MAPPING`, in 4.57 and 5.x), keyed by
    config class, and lazy: asking whether a config class is in one imports no model code. Should they go, the known
    families still count (tests/test_unusual_encoders.py checks families outside the list).
    """
    model_type = encoder_config.model_type
    if model_type in DECODER_ONLY_MODEL_TYPES:
        return True
    try:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING
    except ImportError:
        return False
    config_class = type(encoder_config)
    return (config_class in MODEL_FOR_CAUSAL_LM_MAPPING and config_class not in MODEL_FOR_MASKED_LM_MAPPING
            and not getattr(encoder_config, "is_encoder_decoder", False) and model_type != "bert-generation")


def _num_encoder_layers(encoder_config: PretrainedConfig) -> int:
    num_layers = getattr(encoder_config, "num_hidden_layers", None)
    if not isinstance(num_layers, int):
        raise ValueError(
            f"The encoder config ({type(encoder_config).__name__}) has no integer `num_hidden_layers`, so dwatt "
            "cannot tell how many hidden states it returns. Use an encoder whose config defines it "
            "(BERT, RoBERTa, DeBERTa, MPNet, ModernBERT, GPT-2, Llama, …)."
        )
    return num_layers


def normalize_fusion_layers(fusion_layers: Union[str, list[int], tuple[int, ...]], num_layers: int) -> list[int]:
    """Turns `"all"` or a list of indices into `hidden_states` into sorted, non-negative, unique indices.

    `hidden_states` has `num_layers + 1` entries: 0 is the embedding output, `num_layers` the last layer.
    """
    num_states = num_layers + 1
    if isinstance(fusion_layers, str):
        if fusion_layers != "all":
            raise ValueError(
                f"fusion_layers={fusion_layers!r} is not understood: use 'all' or a list of indices into "
                f"hidden_states (0 = embedding output … {num_layers} = last layer; negatives count from the end)."
            )
        return list(range(num_states))
    indices = list(fusion_layers)
    if not indices:
        raise ValueError("fusion_layers is empty: give at least one index into hidden_states, or 'all'.")
    normalized = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"fusion_layers must hold integers, got {index!r} ({type(index).__name__}).")
        if not -num_states <= index < num_states:
            raise ValueError(
                f"fusion_layers index {index} is out of range for an encoder with {num_layers} layers: hidden_states "
                f"has {num_states} entries (0 = embedding output … {num_layers} = last layer), so use indices in "
                f"[{-num_states}, {num_layers}]."
            )
        normalized.append(index % num_states)
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"fusion_layers {indices} names the same hidden state twice (after resolving negatives).")
    return sorted(normalized)


# Which heads attention guidance trains toward which pattern: four head counts, assigned from head 0 in every layer
# (the authors' form, [0, 1, 1, 4]), or one entry per encoder layer of four lists of head indices, one per pattern
# ([[[], [2], [8], [0, 1]], …]: heads chosen per layer, e.g. those `dwatt.attention_patterns` finds already
# following a pattern).
GuidanceHeads = Union[list[int], list[list[list[int]]]]


def chosen_per_layer(heads: GuidanceHeads) -> bool:
    """Whether normalized `attention_guidance_heads` lists heads per layer (else: four head counts)."""
    return bool(heads) and isinstance(heads[0], list)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def normalize_attention_guidance_heads(heads: Union[None, str, list, tuple]) -> Optional[GuidanceHeads]:
    """`None` stays `None` (no guidance). Head counts, `"0,1,1,4"` or `[0, 1, 1, 4]`, become `[0, 1, 1, 4]`: heads
    per pattern in the order of `ATTENTION_GUIDANCE_PATTERNS`, assigned to the heads of every layer from head 0 on.
    A per-layer assignment (a list of lists; the command lines decode it from JSON) becomes a list with one
    `[self, next, previous, first]` entry of head-index lists per encoder layer."""
    if heads is None:
        return None
    order = ", ".join(ATTENTION_GUIDANCE_PATTERNS)
    given = heads
    if isinstance(heads, str):  # text gives head counts; heads chosen per layer come as lists
        try:
            heads = [int(part) for part in heads.split(",")]
        except ValueError:
            raise ValueError(
                f"attention_guidance_heads={heads!r} is not understood: as text it takes four head counts, one per "
                f"pattern ({order}), e.g. '0,1,1,4'. Give heads chosen per layer as a list with one [[self heads], "
                "[next heads], [previous heads], [first heads]] entry per encoder layer (json.loads JSON text first; "
                "the scripts' --attention_guidance_heads does)."
            ) from None
    heads = list(heads) if isinstance(heads, (list, tuple)) else heads
    if isinstance(heads, list) and heads and all(isinstance(layer, (list, tuple)) for layer in heads):
        return _normalize_per_layer_heads(heads, given)
    if not isinstance(heads, list) or len(heads) != len(ATTENTION_GUIDANCE_PATTERNS) or not all(map(_is_index, heads)):
        raise ValueError(
            f"attention_guidance_heads={given!r} must be {len(ATTENTION_GUIDANCE_PATTERNS)} non-negative head counts, "
            f"one per pattern ({order}), e.g. [0, 1, 1, 4], or one [[self heads], [next heads], [previous heads], "
            "[first heads]] entry per encoder layer."
        )
    if sum(heads) == 0:
        raise ValueError(
            "attention_guidance_heads guides no head (all counts are 0): give at least one, or leave it unset (None) "
            "to train without attention guidance."
        )
    return heads


def _normalize_per_layer_heads(layers: list, given: Any) -> list[list[list[int]]]:
    normalized = []
    for number, layer in enumerate(layers, start=1):
        patterns = list(layer)
        if len(patterns) != len(ATTENTION_GUIDANCE_PATTERNS) or not all(
            isinstance(pattern, (list, tuple)) and all(map(_is_index, pattern)) for pattern in patterns
        ):
            raise ValueError(
                f"attention_guidance_heads: layer {number}'s entry {layer!r} must be {len(ATTENTION_GUIDANCE_PATTERNS)} "
                f"lists of head indices, one per pattern ({', '.join(ATTENTION_GUIDANCE_PATTERNS)}), e.g. "
                "[[], [2], [8], [0, 1]] (an empty list guides no head to that pattern)."
            )
        chosen = [head for pattern in patterns for head in pattern]
        if len(set(chosen)) != len(chosen):
            raise ValueError(
                f"attention_guidance_heads: layer {number} gives a head two patterns ({layer!r}): a head can follow "
                "one pattern only."
            )
        normalized.append([list(pattern) for pattern in patterns])
    if not any(pattern for layer in normalized for pattern in layer):
        raise ValueError(
            f"attention_guidance_heads={given!r} guides no head (every list is empty): give at least one, or leave it "
            "unset (None) to train without attention guidance."
        )
    return normalized


def attention_guidance_assignment(heads: GuidanceHeads, num_layers: int) -> list[list[list[int]]]:
    """Normalized `attention_guidance_heads` as one [self, next, previous, first] list of head indices per layer
    (head counts assign heads 0, 1, … in pattern order, the same in every layer)."""
    if chosen_per_layer(heads):
        return heads
    first_heads = [sum(heads[:pattern]) for pattern in range(len(heads))]
    layer = [list(range(first, first + count)) for first, count in zip(first_heads, heads)]
    return [[list(pattern) for pattern in layer] for _ in range(num_layers)]


def _check_attention_guidance_fits(heads: GuidanceHeads, encoder_config: PretrainedConfig) -> None:
    num_layers = _num_encoder_layers(encoder_config)
    per_layer = chosen_per_layer(heads)
    if per_layer and len(heads) != num_layers:
        raise ValueError(
            f"attention_guidance_heads has {len(heads)} per-layer entries, but the encoder has {num_layers} layers: "
            f"give one [[self heads], [next heads], [previous heads], [first heads]] entry per layer."
        )
    available = getattr(encoder_config, "num_attention_heads", None)
    assignment = attention_guidance_assignment(heads, num_layers)
    if isinstance(available, int):
        if not per_layer and sum(heads) > available:
            raise ValueError(
                f"attention_guidance_heads={heads} guides {sum(heads)} heads per layer, but the encoder has "
                f"{available}: lower the counts so that they sum to at most {available}."
            )
        for number, layer in enumerate(assignment, start=1):
            if any(head >= available for pattern in layer for head in pattern):
                raise ValueError(
                    f"attention_guidance_heads: layer {number}'s entry {layer} names a head beyond the encoder's "
                    f"{available} (heads are numbered 0 to {available - 1})."
                )
    next_pattern = ATTENTION_GUIDANCE_PATTERNS.index("next")
    if is_decoder_only(encoder_config) and any(layer[next_pattern] for layer in assignment):
        raise ValueError(
            f"attention_guidance_heads={heads} guides heads to the next token, which a causal "
            f"{encoder_config.model_type!r} encoder cannot attend to: "
            + ("leave every layer's 'next' list (the second) empty." if per_layer
               else "set the 'next' count (the second) to 0.")
        )


# Options that are the DWAtt model's own, not its encoder's, although every config has them: what transformers 5's
# `PretrainedConfig` holds, plus the names transformers passes to any config. A fixed list, so that an option goes
# to the same place on every version (4.57's base config also holds token ids, `is_decoder`, generation settings…,
# which 5.x moved into the model configs: there they are the encoder's).
MODEL_LEVEL_OPTIONS = frozenset({
    "transformers_version", "architectures", "output_hidden_states", "output_attentions", "return_dict", "dtype",
    "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "num_labels",
    "problem_type", "finetuning_task", "tokenizer_class", "model_type", "name_or_path", "_name_or_path",
    "attn_implementation", "_attn_implementation", "experts_implementation", "_commit_hash",
})


def pop_encoder_config_options(options: dict[str, Any], encoder_config: PretrainedConfig) -> dict[str, Any]:
    """Removes from `options` and returns those that set the encoder's config (`hidden_dropout_prob=0.2`), as
    `from_pretrained(encoder, hidden_dropout_prob=0.2)` sets them for a plain model: names that the encoder's config
    has and that are neither DWAttConfig arguments nor attributes of every config."""
    dwatt_options = DWAttConfig.option_names()
    names = [name for name in options if name not in dwatt_options and name not in MODEL_LEVEL_OPTIONS
             and hasattr(encoder_config, name)]
    return {name: options.pop(name) for name in names}


class DWAttConfig(PretrainedConfig):
    r"""Configuration of a DWAtt model: a pretrained encoder whose hidden states are combined by a fusion head.

    Args:
        encoder_config (`PretrainedConfig` or `dict`):
            Configuration of the wrapped encoder (any `AutoModel` that can return `hidden_states`). A dict must hold
            its `model_type`.
        fusion (`str`, defaults to `"dwatt"`):
            The head that fuses the encoder's hidden states: `"dwatt"` (depth-wise attention), `"concat"`
            (concatenation + bottleneck MLP), `"scalar_mix"` (ELMo/BERMo softmax-weighted sum), `"deeper"` (extra
            randomly initialised transformer layers of the encoder's shape: the parameter-matched control) or
            `"last"` (the plain last layer: the baseline).
        fusion_layers (`"all"` or `list[int]`, defaults to `"all"`):
            The sources of the fusion, as indices into `hidden_states`: 0 = embedding output, L = last layer,
            negatives count from the end. `"all"` means all L + 1 states, the embedding output included. Index L is
            the encoder's final output (after any final norm). Ignored by `"last"` and `"deeper"`.
        dwatt_bottleneck_ratio (`float`, defaults to 0.5):
            γ in the DWAtt MLPs `f(x) = W · LN(gelu(U · x))`, U: d → γd, W: γd → d.
        dwatt_position_dim (`int`, defaults to 24):
            Size of the learned depth embeddings p_n from which the keys are projected.
        dwatt_num_heads (`int`, defaults to 1):
            Attention heads over depth; each head attends with its own slice of the query, keys and values.
        dwatt_scale_scores (`bool`, defaults to `False`):
            Divide the depth-attention scores by √(d / heads) (the paper's choice is unconfirmed; off by default).
        dwatt_weight_dropout (`float`, defaults to 0.0):
            Dropout on the depth-attention weights during training.
        dwatt_shared_value_mlp (`bool`, defaults to `False`):
            One value MLP shared by all sources instead of one per source (the per-source LayerNorms stay).
        concat_hidden_size (`int`, *optional*):
            Hidden width of the Concat head's bottleneck MLP. Defaults to the encoder's hidden size d, which puts
            Concat within a few percent of DWAtt's parameter count.
        scalar_mix_layer_norm (`bool`, defaults to `False`):
            Normalise each source before mixing: one mean and variance over its unmasked elements, no affine, as in
            AllenNLP's ScalarMix, except that the statistics are taken per sequence where AllenNLP pools the whole
            batch, so that a prediction never depends on its batchmates (or on the batch size).
        deeper_num_layers (`int`, defaults to 1):
            Extra transformer layers of the `"deeper"` head.
        zero_init_residual (`bool`, defaults to `False`):
            Start the `"dwatt"` and `"concat"` heads as the identity on z_L: the scales of the LayerNorms in the
            fused path (DWAtt's value norms, Concat's bottleneck norm) start at zero, so the classifier first sees
            the encoder's own last layer and the fused term grows as training finds it useful (as in ResNet's
            zero-initialised residual branches). Otherwise the randomly initialised fused term starts about as large
            as z_L itself.
        attention_guidance_heads (`str` or `list`, *optional*):
            Attention guidance (Deshpande & Narasimhan, arXiv 2010.02399): an auxiliary training loss that pulls
            chosen attention heads of every encoder layer toward fixed patterns. Four head counts, one per pattern in
            the order self, next token, previous token, first token: `"0,1,1,4"` guides head 0 to the next token,
            head 1 to the previous one and heads 2–5 to the first token, in every layer; the other heads are free.
            Or the heads chosen per layer: one `[self heads, next heads, previous heads, first heads]` entry of
            head-index lists per encoder layer, e.g. `[[[], [2], [8], [0, 1]], …]`;
            `python -m dwatt.attention_patterns --suggest-guidance 0,1,1,4` proposes the heads that already follow
            each pattern most.
            The loss is the mean squared error between the heads' attention probabilities and the 0/1 pattern
            matrices, summed over layers and patterns, and is added, weighted, to the task loss in training mode only.
            Guidance needs the attention probabilities, so the encoder runs with eager attention (switch it back with
            `model.set_attn_implementation("sdpa")` for inference if you like: outputs are the same). `None`
            (default): no guidance.
        attention_guidance_weight (`float`, defaults to 10.0):
            α, the weight of the guidance loss (10 in the authors' code).
        attention_guidance_constant_steps (`int`, defaults to 20000):
            The guidance weight is α for this many optimizer steps, then decays linearly, reaching 0 after the last
            step (the authors' schedule). `dwatt.callbacks.AttentionGuidanceCallback` applies it (`DWAttTrainer` adds it by
            itself); without the callback the weight stays α.
        attention_guidance_mask_padding (`bool`, defaults to `True`):
            Average the squared errors over real tokens only (query and key both real). `False` averages over the
            whole padded T × T block, as the authors' unpadded pretraining batches did.
        pooling (`str`, *optional*):
            How sequence classification pools tokens: `"first"` (first real token, [CLS]-style), `"mean"` (mean over
            real tokens) or `"last"` (last real token). Defaults to `"last"` for decoder-only encoder families and
            `"first"` otherwise.
        classifier_dropout (`float`, *optional*):
            Dropout before the classifier. Defaults to the encoder's hidden dropout (or 0.1).
        classifier_activation (`str`, defaults to `"tanh"`):
            Activation between the dense layer and the output projection of the sequence-classification head.
        classifier_dense (`bool`, defaults to `True`):
            Whether the sequence-classification head has a dense + activation layer before the output projection
            (as BERT's pooler and RoBERTa's head do); `False` gives a single linear layer (GPT-2 style).
        encoder_name_or_path (`str`, *optional*):
            Where the encoder's pretrained weights came from (set by `from_encoder_pretrained`; used by model cards).
        kwargs:
            The usual `PretrainedConfig` arguments, e.g. `num_labels`, `id2label`, `label2id`, `problem_type`.
    """

    model_type = "dwatt"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config: Optional[Union[PretrainedConfig, dict[str, Any]]] = None,
        fusion: str = "dwatt",
        fusion_layers: Union[str, list[int]] = "all",
        dwatt_bottleneck_ratio: float = 0.5,
        dwatt_position_dim: int = 24,
        dwatt_num_heads: int = 1,
        dwatt_scale_scores: bool = False,
        dwatt_weight_dropout: float = 0.0,
        dwatt_shared_value_mlp: bool = False,
        concat_hidden_size: Optional[int] = None,
        scalar_mix_layer_norm: bool = False,
        deeper_num_layers: int = 1,
        zero_init_residual: bool = False,
        attention_guidance_heads: Optional[Union[str, list]] = None,
        attention_guidance_weight: float = 10.0,
        attention_guidance_constant_steps: int = 20000,
        attention_guidance_mask_padding: bool = True,
        pooling: Optional[str] = None,
        classifier_dropout: Optional[float] = None,
        classifier_activation: str = "tanh",
        classifier_dense: bool = True,
        encoder_name_or_path: Optional[str] = None,
        dwatt_version: str = DWATT_CODE_VERSION,
        **kwargs,
    ):
        saved_type = kwargs.get("model_type")
        if saved_type is not None and saved_type != self.model_type:  # a plain encoder's config.json read as DWAtt's
            raise ValueError(
                f"This is the config of a plain {saved_type!r} model, not of a DWAtt checkpoint. Wrap the encoder with a "
                "new fusion head with DWAttFor…Classification.from_encoder_pretrained(path) (the scripts: "
                "--encoder_name_or_path path)."
            )
        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            if "model_type" not in encoder_config:
                raise ValueError("encoder_config as a dict must contain its 'model_type' (e.g. 'bert').")
            encoder_config = AutoConfig.for_model(**encoder_config)
        if fusion not in FUSION_CHOICES:
            raise ValueError(f"Unknown fusion {fusion!r}: choose one of {', '.join(FUSION_CHOICES)}.")
        if pooling is not None and pooling not in POOLING_CHOICES:
            raise ValueError(f"Unknown pooling {pooling!r}: choose one of {', '.join(POOLING_CHOICES)}.")
        if not 0 < dwatt_bottleneck_ratio:
            raise ValueError(f"dwatt_bottleneck_ratio must be positive, got {dwatt_bottleneck_ratio}.")
        if deeper_num_layers < 1:
            raise ValueError(f"deeper_num_layers must be at least 1, got {deeper_num_layers}.")
        if dwatt_num_heads < 1:
            raise ValueError(f"dwatt_num_heads must be at least 1, got {dwatt_num_heads}.")
        if dwatt_position_dim < 1:
            raise ValueError(f"dwatt_position_dim must be at least 1 (the depth embeddings the keys are made from), "
                             f"got {dwatt_position_dim}.")
        if concat_hidden_size is not None and concat_hidden_size < 1:
            raise ValueError(f"concat_hidden_size must be at least 1 (or None: the encoder's width), got {concat_hidden_size}.")
        if classifier_activation is not None and classifier_activation not in ACT2FN:
            raise ValueError(f"Unknown classifier_activation {classifier_activation!r}: use one of transformers' "
                             f"activations ({', '.join(sorted(ACT2FN)[:8])}, …), e.g. 'tanh' (BERT) or 'gelu' (RoBERTa).")
        if zero_init_residual and fusion not in RESIDUAL_FUSIONS:
            raise ValueError(
                f"zero_init_residual applies to the heads that add a fused term to the last layer "
                f"({', '.join(RESIDUAL_FUSIONS)}), not to fusion={fusion!r}: drop it or choose one of those heads."
            )
        if isinstance(fusion_layers, tuple):
            fusion_layers = list(fusion_layers)
        attention_guidance_heads = normalize_attention_guidance_heads(attention_guidance_heads)
        if attention_guidance_weight < 0:
            raise ValueError(f"attention_guidance_weight must be non-negative, got {attention_guidance_weight}.")
        if attention_guidance_constant_steps < 0:
            raise ValueError(
                f"attention_guidance_constant_steps must be non-negative, got {attention_guidance_constant_steps}."
            )

        self.encoder_config = encoder_config
        self.fusion = fusion
        self.fusion_layers = fusion_layers
        self.dwatt_bottleneck_ratio = dwatt_bottleneck_ratio
        self.dwatt_position_dim = dwatt_position_dim
        self.dwatt_num_heads = dwatt_num_heads
        self.dwatt_scale_scores = dwatt_scale_scores
        self.dwatt_weight_dropout = dwatt_weight_dropout
        self.dwatt_shared_value_mlp = dwatt_shared_value_mlp
        self.concat_hidden_size = concat_hidden_size
        self.scalar_mix_layer_norm = scalar_mix_layer_norm
        self.deeper_num_layers = deeper_num_layers
        self.zero_init_residual = zero_init_residual
        self.attention_guidance_heads = attention_guidance_heads
        self.attention_guidance_weight = attention_guidance_weight
        self.attention_guidance_constant_steps = attention_guidance_constant_steps
        self.attention_guidance_mask_padding = attention_guidance_mask_padding
        self.classifier_dropout = classifier_dropout
        self.classifier_activation = classifier_activation
        self.classifier_dense = classifier_dense
        self.encoder_name_or_path = encoder_name_or_path
        self.dwatt_version = dwatt_version

        if encoder_config is not None:
            if getattr(encoder_config, "is_encoder_decoder", False):
                raise ValueError(
                    f"{type(encoder_config).__name__} describes an encoder-decoder model ({encoder_config.model_type}); "
                    "dwatt fuses the layers of an encoder alone, and a DWAtt model built on this one would need decoder "
                    "inputs in every forward. Wrap an encoder-only model (BERT, RoBERTa, DeBERTa, ModernBERT, …) or a "
                    "decoder-only one."
                )
            if fusion == "deeper" and not isinstance(getattr(encoder_config, "num_attention_heads", None), int):
                raise ValueError(
                    f'fusion="deeper" adds transformer layers shaped like the encoder\'s, and {type(encoder_config).__name__} '
                    "has no num_attention_heads (its layers do not use attention): choose dwatt, concat or scalar_mix."
                )
            num_layers = _num_encoder_layers(encoder_config)
            # Validate now so a bad index fails when the config is made, not deep inside a forward pass.
            normalize_fusion_layers(fusion_layers, num_layers)
            hidden_size = encoder_config.hidden_size
            num_heads = dwatt_num_heads
            if hidden_size % num_heads != 0:
                raise ValueError(
                    f"dwatt_num_heads={num_heads} does not divide the encoder's hidden size {hidden_size}."
                )
            if attention_guidance_heads is not None:
                _check_attention_guidance_fits(attention_guidance_heads, encoder_config)
            if pooling is None:
                pooling = "last" if is_decoder_only(encoder_config) else "first"
        self.pooling = pooling
        super().__init__(**kwargs)
        if self.id2label is not None and getattr(self, "label2id", None) is None:
            # transformers leaves label2id unset when only id2label is given; the scripts (and anyone mapping label
            # names to ids) read it.
            self.label2id = {label: index for index, label in self.id2label.items()}

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The DWAtt arguments of `__init__` (`fusion`, `dwatt_num_heads`, …), without the `PretrainedConfig` ones."""
        code = cls.__init__.__code__  # every argument before **kwargs (`inspect` is not among this file's imports)
        return frozenset(code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount])

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "DWAttConfig":
        """`PretrainedConfig.from_dict`, with the options given as keywords (`from_pretrained(path, fusion=…)`) checked
        as the saved ones are.

        transformers sets such keywords as attributes after `__init__` has checked the config: a text
        `attention_guidance_heads` stayed text, more guided heads than the encoder has trained and then failed to
        load, and a new `id2label` kept the checkpoint's `label2id` (the scripts map the data's labels through it).
        Here DWAtt options go through `__init__`, the encoder's own (`hidden_dropout_prob`, as for a plain model) into
        its config, and a new `id2label` brings its `label2id` (unless one is given with it).
        """
        config_dict = dict(config_dict)
        saved_encoder = config_dict.get("encoder_config")
        if isinstance(saved_encoder, PretrainedConfig):
            saved_encoder = saved_encoder.to_dict()
        given_encoder = kwargs.pop("encoder_config", None)
        if isinstance(given_encoder, dict) and "model_type" not in given_encoder and saved_encoder is not None:
            # Part of the nested config, as transformers merges a dict into a sub-config (hidden_dropout_prob, …).
            config_dict["encoder_config"] = {**saved_encoder, **given_encoder}
        elif given_encoder is not None:
            config_dict["encoder_config"] = given_encoder
        for name in cls.option_names() & set(kwargs):
            config_dict[name] = kwargs.pop(name)
        if "id2label" in kwargs:
            config_dict["id2label"] = kwargs.pop("id2label")
            config_dict.pop("label2id", None)  # made anew from id2label in __init__
            if "label2id" in kwargs:
                config_dict["label2id"] = kwargs.pop("label2id")
        encoder = config_dict.get("encoder_config")
        if isinstance(encoder, dict) and "model_type" in encoder:
            encoder = AutoConfig.for_model(**encoder)
        if isinstance(encoder, PretrainedConfig):
            encoder_options = pop_encoder_config_options(kwargs, encoder)
            if encoder_options:
                updated = {**encoder.to_dict(), **encoder_options}
                fusion = config_dict.get("fusion", "dwatt")
                saved_layers, layers = _num_encoder_layers(encoder), _num_encoder_layers(AutoConfig.for_model(**updated))
                if fusion not in ("last", "deeper") and layers != saved_layers:  # the heads with weights per layer
                    given = ", ".join(f"{name}={value}" for name, value in encoder_options.items())
                    raise ValueError(
                        f"{given} changes the number of encoder layers ({saved_layers} -> {layers}) that the "
                        f"checkpoint's {fusion} head fuses (its weights are per layer). To keep fewer layers, wrap the "
                        "encoder anew: from_encoder_pretrained(encoder, encoder_num_layers=k)."
                    )
                config_dict["encoder_config"] = updated
        return super().from_dict(config_dict, **kwargs)

    @property
    def num_encoder_layers(self) -> int:
        """L, the number of layers of the wrapped encoder (`hidden_states` has L + 1 entries)."""
        return _num_encoder_layers(self.encoder_config)

    @property
    def fusion_source_indices(self) -> list[int]:
        """The fusion sources as sorted non-negative indices into `hidden_states`."""
        return normalize_fusion_layers(self.fusion_layers, self.num_encoder_layers)

    @property
    def vocab_size(self) -> Optional[int]:
        """The encoder's vocabulary size, read and written in `encoder_config` (where the encoder reads it).

        Offered so that the usual `if len(tokenizer) > model.config.vocab_size: model.resize_token_embeddings(...)`
        works on a DWAtt model as on a stock one; it is never saved at the top level of `config.json`.
        """
        return None if self.encoder_config is None else getattr(self.encoder_config, "vocab_size", None)

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        if self.encoder_config is None:
            raise ValueError(
                "This DWAttConfig has no encoder_config, so it has no vocabulary to resize: build it with "
                "DWAttConfig(encoder_config=...) or load a DWAtt checkpoint."
            )
        self.encoder_config.vocab_size = value

    @property
    def hidden_size(self) -> Optional[int]:
        """d, the encoder's hidden size: the width of every hidden state the head fuses and of its output.

        Read by integrations that size buffers from `config.hidden_size` (DeepSpeed's `"auto"` bucket sizes in the
        Trainer). It is the encoder's, so it is never saved at the top level of `config.json` and cannot be set here.
        """
        return None if self.encoder_config is None else getattr(self.encoder_config, "hidden_size", None)

    @hidden_size.setter
    def hidden_size(self, value: int) -> None:
        raise AttributeError(
            f"DWAttConfig.hidden_size is the encoder's ({self.hidden_size}) and cannot be set to {value}: "
            "build the DWAtt model on an encoder of that width (DWAttConfig(encoder_config=...) or "
            "from_encoder_pretrained) instead."
        )

    def get_text_config(self, decoder: Optional[bool] = None, encoder: Optional[bool] = None) -> PretrainedConfig:
        """The encoder's config: it holds the text settings (`vocab_size`, special tokens, `initializer_range`).

        transformers writes through this config where a text setting changes, as composite models' text configs do:
        `resize_token_embeddings` sets its `vocab_size` and the Trainer aligns the tokenizer's special tokens in it.
        Returning this config itself would record a resized vocabulary where the encoder never reads it, and the
        saved checkpoint could not be loaded again (its embedding matrix no longer matches `encoder_config`).
        """
        if self.encoder_config is None:
            return super().get_text_config(decoder=decoder, encoder=encoder)
        return self.encoder_config


__all__ = ["DWAttConfig"]
