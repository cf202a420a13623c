# Copyright 2026 the dwatt authors. Licensed under the Apache License, Version 2.0.
"""DWAtt models: a pretrained encoder whose hidden states are fused by a head before the task classifier.

Notation used in the shape comments: B batch, T tokens (T' = 1 when a sequence classifier fuses only at its pooled
position), d hidden size, n fusion sources, H depth-attention heads, h = d / H.

This file is copied next to every saved checkpoint (Hugging Face remote code): it imports only torch, public
`transformers` names, `.configuration_dwatt` and three standard-library modules (math, dataclasses,
typing; tests/test_remote_code.py checks the list), and must keep working on transformers 4.57 and 5.x.
"""

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput, TokenClassifierOutput
from transformers.utils import logging

from .configuration_dwatt import (MODEL_LEVEL_OPTIONS, DWAttConfig, GuidanceHeads, _num_encoder_layers,
                                  attention_guidance_assignment, pop_encoder_config_options)

try:  # transformers >= 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4.x loads first and initialises only the missing modules
    from torch.nn import init

logger = logging.get_logger(__name__)

# The class names that `save_pretrained` writes into `config.json`, so that one checkpoint opens with every Auto
# class (transformers itself would list only the class that was saved).
AUTO_MAP = {
    "AutoConfig": "configuration_dwatt.DWAttConfig",
    "AutoModel": "modeling_dwatt.DWAttModel",
    "AutoModelForSequenceClassification": "modeling_dwatt.DWAttForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_dwatt.DWAttForTokenClassification",
}


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DWAttModelOutput(BaseModelOutput):
    """`BaseModelOutput` whose `last_hidden_state` is the fused state, plus the optional weights over depth.

    fusion_weights (`torch.FloatTensor` of shape `(B, T', H, n)`, *optional*):
        Per-token weights over the fusion sources (dwatt, scalar_mix), returned with `output_fusion_weights=True`.
    fused_readout (`torch.FloatTensor` of shape `(B, T, k)`, *optional*):
        The forward's `fused_readout` map of the fused state, when inference computed it source by source;
        `last_hidden_state` is then None (see `DWAttModel.forward`).
    """

    fusion_weights: Optional[torch.FloatTensor] = None
    fused_readout: Optional[torch.FloatTensor] = None


@dataclass
class DWAttSequenceClassifierOutput(SequenceClassifierOutput):
    """`SequenceClassifierOutput` plus `fusion_weights` (see `DWAttModelOutput`) and, in training with attention
    guidance, `attention_guidance_loss`: the weighted guidance term that `loss` includes (a scalar with gradient)."""

    fusion_weights: Optional[torch.FloatTensor] = None
    attention_guidance_loss: Optional[torch.FloatTensor] = None


@dataclass
class DWAttTokenClassifierOutput(TokenClassifierOutput):
    """`TokenClassifierOutput` plus `fusion_weights` and `attention_guidance_loss` (see the sequence classifier's)."""

    fusion_weights: Optional[torch.FloatTensor] = None
    attention_guidance_loss: Optional[torch.FloatTensor] = None


# ----------------------------------------------------------------------------------------------------------------
# Encoder helpers
# ----------------------------------------------------------------------------------------------------------------


def _first_attr(config, names: tuple, default):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def encoder_hidden_dropout(encoder_config) -> float:
    """The encoder's hidden dropout probability, under whichever name its family uses."""
    return float(_first_attr(encoder_config, ("hidden_dropout_prob", "dropout", "resid_pdrop", "hidden_dropout"), 0.1))


def build_encoder(encoder_config, attn_implementation: Optional[str] = None) -> PreTrainedModel:
    """Instantiates the encoder without a pooler where the family has one (an unused pooler breaks DDP), with the
    given attention implementation (None: transformers' default).

    The encoder takes the dtype the rest of the model is being built in (torch's default dtype, which
    `from_pretrained(dtype=…)` sets while it builds), not the `dtype` its config was saved with: a checkpoint saved
    in float16 would otherwise give a float16 encoder under a float32 head, which cannot run a forward."""
    kwargs = {"dtype": torch.get_default_dtype()}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModel.from_config(encoder_config, add_pooling_layer=False, **kwargs)
    except TypeError:  # families without a pooler do not take the argument
        return AutoModel.from_config(encoder_config, **kwargs)


def _install_output_capturing_hooks(encoder: nn.Module) -> None:
    """transformers 5 installs the hooks that collect `hidden_states` and `attentions` at the first forward that asks
    for them, under a threading lock that torch.compile cannot trace: `torch.compile(model, fullgraph=True)` failed
    there, and without fullgraph the graph broke. The plain path always asks, so they are installed with the encoder.
    (transformers 4.x collects them without hooks.) The function is not public API: where it is missing or takes other
    arguments, transformers installs the hooks itself at the first forward, as before (only fullgraph compiling needs
    them earlier)."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    try:
        maybe_install_capturing_hooks(encoder)
    except TypeError:  # another signature in a later release
        return


def _accepts_argument(function, name: str) -> bool:
    """Whether `function` (through any functools.wraps decorators) has a parameter called `name`."""
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    code = getattr(function, "__code__", None)
    if code is None:
        return False
    return name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def _position_index(positions: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """The index that `states.gather(1, index)` takes the pooled positions with: (B,) -> (B, 1, d), a view."""
    return positions.view(-1, 1, 1).expand(-1, 1, hidden_size)


def _is_compiling() -> bool:
    """Whether torch.compile is tracing this call (torch.compiler.is_compiling is public from torch 2.3 on)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


def _is_plain_linear(module: nn.Module) -> bool:
    """Whether the head may read `module.weight`/`.bias` as tensors and apply them piecewise (to column blocks or one
    position). Anything else in its place (torch's dynamically quantized Linear, whose `weight` is a method; a LoRA
    layer, whose update the bare weight lacks) is called as a module instead."""
    return type(module) is nn.Linear


def _gather_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    # (B, T, d), (B,) -> (B, 1, d)
    return states.gather(1, _position_index(positions, states.shape[-1]))


def _mask_after_last_real_token(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Without an attention mask, what transformers' decoder classifiers take as padding: the tokens after the last one
    that is not `pad_token_id` (a pad id inside the text, as when it is the EOS id, stays real). (B, T) -> (B, T).

    Causal attention keeps those tokens out of the ones before them anyway; the mask also keeps them out of the
    pooled position and of a head that mixes tokens (`deeper`), so the logits do not depend on the padding."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    last_real = (positions * (input_ids != pad_token_id)).argmax(dim=-1)  # (B,), 0 for a row of pads only
    return (positions[None, :] <= last_real[:, None]).long()


def _all_real_tokens(input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor]) -> torch.Tensor:
    """The attention mask of a batch without padding: (B, T) ones."""
    reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
    return torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)


def key_value_prefix(cache, past_key_values):
    """The key/value prefix a forward was given (PEFT's prefix tuning passes its virtual tokens so), under transformers
    5.24's name `cache` or the earlier `past_key_values`; None without one."""
    if cache is not None and past_key_values is not None:
        raise ValueError(
            "The forward got a key/value prefix twice, as `cache` and as `past_key_values`: these are one argument "
            "under transformers 5.24's name and the earlier one. Pass it once."
        )
    return cache if cache is not None else past_key_values


def prefix_length(prefix) -> int:
    """How many key/value positions `prefix` holds ahead of the inputs: a transformers Cache, or the legacy tuple of
    per-layer (key, value) pairs with keys (B, H, P, d_head)."""
    if hasattr(prefix, "get_seq_length"):
        return int(prefix.get_seq_length())
    return int(prefix[0][0].shape[-2])


def token_attention_mask(attention_mask: Optional[torch.Tensor], prefix_positions: int, num_tokens: int
                         ) -> Optional[torch.Tensor]:
    """The (B, T) mask of the input tokens. Under a key/value prefix of P positions the mask may have a column for
    each of them ahead of the tokens' ((B, P + T), as PEFT's prefix tuning passes it); the fusion head, the pooling and
    the guidance loss read the tokens' columns only. None stays None."""
    if attention_mask is None or attention_mask.shape[-1] == num_tokens:
        return attention_mask
    if attention_mask.shape[-1] == prefix_positions + num_tokens:
        return attention_mask[:, prefix_positions:]
    raise ValueError(
        f"attention_mask has {attention_mask.shape[-1]} columns for {num_tokens} input tokens after a key/value "
        f"prefix of {prefix_positions} positions: give one column per token ({num_tokens}), or one per prefix "
        f"position and token ({prefix_positions + num_tokens}, prefix first)."
    )


def mask_with_prefix_columns(given_mask: Optional[torch.Tensor], token_mask: torch.Tensor, prefix_positions: int
                             ) -> torch.Tensor:
    """The encoder's (B, P + T) mask under a key/value prefix: the caller's, when it has the prefix's columns, else
    the tokens' (B, T) mask after P ones (the prefix is always attended to, as PEFT's prefix tuning has it)."""
    if given_mask is not None and given_mask.shape[-1] == prefix_positions + token_mask.shape[-1]:
        return given_mask
    ones = token_mask.new_ones(token_mask.shape[0], prefix_positions)  # (B, P)
    return torch.cat([ones, token_mask], dim=1)


def _is_activation_checkpointing(model: PreTrainedModel) -> bool:
    """Whether activation checkpointing is on (transformers 5.23 renamed `is_gradient_checkpointing`)."""
    renamed = hasattr(type(model), "is_activation_checkpointing")
    return bool(getattr(model, "is_activation_checkpointing" if renamed else "is_gradient_checkpointing", False))


def _num_input_tokens(input_ids: Optional[torch.Tensor], inputs_embeds: Optional[torch.Tensor]) -> int:
    return (input_ids if input_ids is not None else inputs_embeds).shape[1]


def pooling_positions(attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Index of the first (`"first"`) or last (`"last"`) real token of each sequence; works with left padding too."""
    mask = attention_mask.to(torch.int64)  # (B, T)
    if pooling == "first":
        return mask.argmax(dim=-1)  # argmax returns the first maximum
    if pooling == "last":
        return mask.shape[-1] - 1 - mask.flip(-1).argmax(dim=-1)
    raise ValueError(f"pooling {pooling!r} has no single position; use 'first' or 'last'.")


# Encoders whose layers pass their states time-major, (T, B, d): the streaming hooks could not tell them from (B, T, d)
# when B == T, so these always take the plain path.
TIME_MAJOR_MODEL_TYPES = frozenset({"xlnet"})


def encoder_layers(encoder: nn.Module, num_layers: int) -> Optional[tuple[list[nn.Module], int]]:
    """The encoder's `num_layers` transformer layers in order and the index of the hidden state in a layer's output
    tuple; None when they cannot be told apart for sure.

    Found through the class transformers 5 records `hidden_states` from (`_can_record_outputs`), else through a
    `layer`/`layers` ModuleList of the right length (MPNet, DeBERTa-v2, transformers 4.x). None for time-major
    encoders, whose layer outputs (T, B, d) look like (B, T, d) when B == T.
    """
    if getattr(getattr(encoder, "config", None), "model_type", None) in TIME_MAJOR_MODEL_TYPES:
        return None
    target = (getattr(encoder, "_can_record_outputs", None) or {}).get("hidden_states")
    if target is not None:
        layer_class = getattr(target, "target_class", target)  # a class, or an OutputRecorder naming one
        if getattr(target, "layer_name", None) or not isinstance(layer_class, type):
            return None
        layers = [module for module in encoder.modules() if isinstance(module, layer_class)]
        index = getattr(target, "index", 0) or 0
    else:
        lists = [module for name, module in encoder.named_modules()
                 if name.split(".")[-1] in ("layer", "layers") and isinstance(module, nn.ModuleList)]
        if len(lists) != 1:
            return None
        layers, index = list(lists[0]), 0
    return (layers, index) if len(layers) == num_layers else None


class HiddenStateHooks:
    """While active, hands each hidden state to `on_state(index, hidden)` the moment the encoder computes it: the first
    layer's input (index 0, the embedding output), then every layer's output (1 … L), each (B, T, d).

    Inference uses it to fuse sources as they come (`FusionHead.source_stream`) instead of asking the encoder for
    `output_hidden_states`, which keeps all L + 1 states alive to the end of its forward pass.

    The hooks see every forward pass through these layers while they are registered, another thread's too (another
    request in a server; nn.DataParallel replicas share hook dicts). Such a pass adds calls, so `complete` is then
    False and the caller discards what was handed over and takes the plain path: right values, computed twice.
    States of another shape than this pass's (B, T, d) are never handed over.
    """

    def __init__(self, layers: list[nn.Module], output_index: int, state_shape: tuple[int, int, int],
                 on_state: Callable[[int, torch.Tensor], None]):
        self.layers, self.output_index, self.state_shape, self.on_state = layers, output_index, state_shape, on_state
        # One entry per hook call, by list.append: atomic across threads, where a counter's `+= 1` can lose a call.
        self._input_calls: list[None] = []  # the first layer's pre-hook: once for this pass alone
        self._output_calls: list[None] = []  # the layers' forward hooks: L times for this pass alone
        self.failed = False  # a hidden state was not a (B, T, d) tensor of this pass's (B, T)
        self._handles = []

    @property
    def complete(self) -> bool:
        """Whether every hidden state of one forward pass, and nothing else, was handed over."""
        return not self.failed and len(self._input_calls) == 1 and len(self._output_calls) == len(self.layers)

    def __enter__(self) -> "HiddenStateHooks":
        self._handles.append(self.layers[0].register_forward_pre_hook(self._first_input, with_kwargs=True))
        self._handles += [layer.register_forward_hook(self._output) for layer in self.layers]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()

    def _hand_over(self, index: int, hidden: object) -> None:
        if self.failed:
            return
        if isinstance(hidden, torch.Tensor) and hidden.shape == self.state_shape:
            self.on_state(index, hidden)
        else:
            self.failed = True

    def _first_input(self, module, args, kwargs=None) -> None:
        # `kwargs` may be missing in another thread's call: register_forward_pre_hook(with_kwargs=True) and the
        # handle's remove() update two dicts one after the other, and a forward pass in between calls hook(module, args).
        self._input_calls.append(None)
        if len(self._input_calls) == 1:
            self._hand_over(0, args[0] if args else (kwargs or {}).get("hidden_states"))

    def _output(self, module, args, output) -> None:
        self._output_calls.append(None)
        index = len(self._output_calls)
        if index <= len(self.layers):
            self._hand_over(index, output[self.output_index] if isinstance(output, (tuple, list)) else output)


# ----------------------------------------------------------------------------------------------------------------
# Fusion heads. Each takes the last layer z_L (B, T, d), the sources [z_n] (each (B, T, d)) and the attention mask
# (B, T); with `positions` (B,) it computes the fused state only there (B, 1, d). It returns (fused, weights or None)
# and knows its parameter count and forward FLOPs per token (2 per multiply-accumulate of matrix products and
# weighted sums over sources; norms, activations and softmax are not counted, as in nanoGPT).
# ----------------------------------------------------------------------------------------------------------------


class FusionHead(nn.Module):
    """Interface of the fusion heads (the contract is the section comment above): `forward` fuses the last layer
    with the sources, `source_stream` takes the sources one at a time instead, and each head counts its parameters
    and forward FLOPs."""

    # Whether `forward` reads `sources` besides the last hidden state. Heads that do not are run without asking the
    # encoder for its hidden states, which it would otherwise keep alive to the end of the forward pass.
    reads_intermediate_states = True

    def forward(
        self,
        last_hidden_state: torch.Tensor,
        sources: list[torch.Tensor],
        attention_mask: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        output_weights: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def source_stream(self, attention_mask: torch.Tensor, positions: Optional[torch.Tensor] = None) -> "SourceStream":
        """An accumulator that takes the sources one at a time (see SourceStream); heads whose fusion is a running sum
        over the sources override it, the others keep the sources (at `positions` only, when given)."""
        return StoredSources(self, attention_mask, positions)

    def readout_stream(self, readout: nn.Linear) -> Optional["SourceStream"]:
        """A stream whose `finish` gives `readout(fused)` (B, T, k) for every token instead of the fused state, kept
        in less memory than the head's `source_stream` because `readout` is linear; None where it would not save
        memory (the caller then applies `readout` to the fused state itself). Only DWAtt has one so far."""
        return None

    def num_added_parameters(self) -> int:
        """Parameters the head adds on top of the encoder and the classifier."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per fused position for sequences of `seq_len` tokens."""
        raise NotImplementedError

    def flops_per_pooled_sequence(self, seq_len: int) -> int:
        """Forward FLOPs to fuse one pooled position of a sequence of `seq_len` tokens (sequence classification)."""
        return self.flops_per_token(seq_len)  # heads that mix depth per token work at that position only


class SourceStream:
    """Fuses sources handed over one at a time, in order: `add(slot, source)` with slot = position of the source in
    the head's source list and source (B, T, d); then `finish(last_hidden_state, output_weights)` gives what the
    head's forward gives (a readout stream, FusionHead.readout_stream: its linear map of the fused state instead).
    Inference feeds it from HiddenStateHooks while the encoder runs."""

    positions: Optional[torch.Tensor] = None  # (B,) pooled position of each sequence; None fuses every token
    _gather_index: Optional[torch.Tensor] = None  # (B, 1, d), made once: each operator counts on a GPU (benchmarks/cost.py)

    def add(self, slot: int, source: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self, last_hidden_state: torch.Tensor, output_weights: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def at_positions(self, states: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, 1, d) at the pooled positions when the stream pools; unchanged otherwise."""
        if self.positions is None:
            return states
        if self._gather_index is None:
            self._gather_index = _position_index(self.positions, states.shape[-1])
        return states.gather(1, self._gather_index)


class StoredSources(SourceStream):
    """Keeps each source (only its pooled position when `positions` is given) and runs the head's forward at the end."""

    def __init__(self, head: FusionHead, attention_mask: torch.Tensor, positions: Optional[torch.Tensor]):
        self.head, self.attention_mask, self.positions = head, attention_mask, positions
        self.sources: list[torch.Tensor] = []

    def add(self, slot: int, source: torch.Tensor) -> None:
        self.sources.append(self.at_positions(source))  # (B, T', d)

    def finish(self, last_hidden_state, output_weights):
        mask = self.attention_mask  # (B, T), or (B, 1) at the pooled positions, like the states the head gets
        if self.positions is not None and mask is not None:
            mask = mask.gather(1, self.positions.view(-1, 1))
        return self.head(
            self.at_positions(last_hidden_state), self.sources, mask, positions=None, output_weights=output_weights
        )


class LastLayerFusion(FusionHead):
    """The baseline: the encoder's final hidden state, unchanged."""

    reads_intermediate_states = False

    def __init__(self, config: DWAttConfig, num_sources: int):
        super().__init__()

    def forward(self, last_hidden_state, sources, attention_mask, positions=None, output_weights=False):
        if positions is not None:
            return _gather_positions(last_hidden_state, positions), None
        return last_hidden_state, None

    def flops_per_token(self, seq_len: int) -> int:
        return 0


class BottleneckMLP(nn.Module):
    """f(x) = W · LN(gelu(U · x)), U: d_in → d_hidden, W: d_hidden → d_out (the DWAtt paper's MLP)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, eps: float):
        super().__init__()
        self.proj_in = nn.Linear(in_features, hidden_features)
        self.norm = nn.LayerNorm(hidden_features, eps=eps)
        self.proj_out = nn.Linear(hidden_features, out_features)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """LN(gelu(U · x)): (..., d_in) -> (..., d_hidden), the part of f before its output projection."""
        return self.norm(F.gelu(self.proj_in(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.bottleneck(x))

    def flops_per_token(self) -> int:
        return 2 * (self.proj_in.in_features * self.proj_in.out_features + self.proj_out.in_features * self.proj_out.out_features)


# dwatt 0.1 kept one module per source in the DWAtt head: value_mlps.<n>.{proj_in,norm,proj_out}.{weight,bias} and
# value_norms.<n>.{weight,bias}. Their stacked names in SourceValueTransforms (`value_transforms.`):
_PER_SOURCE_NAMES = {
    ("value_mlps", "proj_in.weight"): "proj_in_weight",
    ("value_mlps", "proj_in.bias"): "proj_in_bias",
    ("value_mlps", "norm.weight"): "norm_weight",
    ("value_mlps", "norm.bias"): "norm_bias",
    ("value_mlps", "proj_out.weight"): "proj_out_weight",
    ("value_mlps", "proj_out.bias"): "proj_out_bias",
    ("value_norms", "weight"): "value_norm_weight",
    ("value_norms", "bias"): "value_norm_bias",
}


def _per_source_key_parts(key: str) -> Optional[tuple[str, str, int, str]]:
    """(prefix, "value_mlps" or "value_norms", source index, parameter name) of a key of dwatt 0.1's per-source value
    modules, e.g. "dwatt.fusion_classifier.value_mlps.3.proj_in.weight" -> ("dwatt.fusion_classifier.", "value_mlps",
    3, "proj_in.weight"); None for any other key."""
    parts = key.split(".")
    for at in range(len(parts) - 2):
        if parts[at] in ("value_mlps", "value_norms") and parts[at + 1].isdigit():
            prefix = "".join(part + "." for part in parts[:at])
            return prefix, parts[at], int(parts[at + 1]), ".".join(parts[at + 2:])
    return None


def is_per_source_value_key(key: str) -> bool:
    """Whether `key` names a parameter of dwatt 0.1's per-source value modules (see stack_per_source_value_mlps)."""
    return _per_source_key_parts(key) is not None


def stack_per_source_value_mlps(state_dict: dict) -> dict:
    """Converts a state dict saved by dwatt 0.1, whose DWAtt head kept one value MLP and one LayerNorm per source
    (`…fusion_classifier.value_mlps.<n>.proj_in.weight`, `…value_norms.<n>.weight`, …), to this version's stacked
    parameters (`…fusion_classifier.value_transforms.proj_in_weight` of shape (n, γd, d), …). Other keys pass
    through unchanged. To convert a saved checkpoint, pass the tensors of its weights file through this and save the
    result in their place; the README has the three lines.
    """
    converted, stacks = {}, {}
    for key, tensor in state_dict.items():
        parts = _per_source_key_parts(key)
        if parts is None:
            converted[key] = tensor
            continue
        prefix, modules, index, parameter = parts
        name = _PER_SOURCE_NAMES.get((modules, parameter))
        if name is None:
            raise ValueError(f"{key} is not a parameter of dwatt 0.1's value modules; cannot convert it.")
        stacks.setdefault(f"{prefix}value_transforms.{name}", {})[index] = tensor
    for key, by_source in stacks.items():
        if sorted(by_source) != list(range(len(by_source))):
            raise ValueError(f"{key}: the checkpoint has sources {sorted(by_source)}, not 0 … {len(by_source) - 1}.")
        converted[key] = torch.stack([by_source[index] for index in range(len(by_source))])
    return converted


class SingleSourceValue(NamedTuple):
    """One source's slices of SourceValueTransforms' parameters; the same arithmetic as the batched forward, with
    each LayerNorm's scale and shift applied inside F.layer_norm (so the two agree to rounding, not bit for bit)."""

    proj_in_weight: torch.Tensor  # U_n (γd, d)
    proj_in_bias: torch.Tensor
    norm_weight: torch.Tensor  # LN'_n (γd,)
    norm_bias: torch.Tensor
    proj_out_weight: torch.Tensor  # W_n (d, γd)
    proj_out_bias: torch.Tensor
    value_norm_weight: torch.Tensor  # LN_n (d,)
    value_norm_bias: torch.Tensor
    eps: float

    def bottleneck(self, source: torch.Tensor) -> torch.Tensor:
        """LN'_n(gelu(U_n · z_n + b_n)): (..., d) -> (..., γd)."""
        hidden = F.gelu(F.linear(source, self.proj_in_weight, self.proj_in_bias))
        return F.layer_norm(hidden, self.norm_weight.shape, self.norm_weight, self.norm_bias, self.eps)

    def value(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """v_n = LN_n(W_n · bottleneck_n + c_n): (..., γd) -> (..., d)."""
        projected = F.linear(bottleneck, self.proj_out_weight, self.proj_out_bias)
        return F.layer_norm(projected, self.value_norm_weight.shape, self.value_norm_weight, self.value_norm_bias, self.eps)


class SourceValueTransforms(nn.Module):
    """DWAtt's value of every source, v_n = LN_n(f_V,n(z_n)) with f_V,n(x) = W_n · LN'_n(gelu(U_n · x)), as stacked
    parameters whose leading axis is the source: each step runs for all sources as one batched operator (`baddbmm`
    for the projections, one `layer_norm` and one `addcmul` for the n norms).

    One module per source would run the same arithmetic as ~10 operators per source forward, more backward, and two
    more per parameter tensor in AdamW's step; on a GPU at small shapes every operator costs about as much as its
    kernel's work, which made DWAtt's training step ~1.5x the stock classifier's (benchmarks/RESULTS.md, cost).
    Streamed inference, which gets the sources one at a time, uses each source's slices instead (`per_source`), and
    so does a forward on the CPU, where fewer operators gain nothing and the n-times larger tensors of
    each batched step fall out of cache (`DepthWiseAttentionFusion.runs_per_source`).
    """

    def __init__(self, num_sources: int, shared_mlp: bool, hidden_size: int, bottleneck: int, eps: float):
        super().__init__()
        num_mlps = 1 if shared_mlp else num_sources  # dwatt_shared_value_mlp: one f_V for all sources
        self.num_sources, self.eps = num_sources, eps
        self.proj_in_weight = nn.Parameter(torch.empty(num_mlps, bottleneck, hidden_size))  # U_n, as nn.Linear's
        self.proj_in_bias = nn.Parameter(torch.empty(num_mlps, bottleneck))
        self.norm_weight = nn.Parameter(torch.empty(num_mlps, bottleneck))  # LN'_n
        self.norm_bias = nn.Parameter(torch.empty(num_mlps, bottleneck))
        self.proj_out_weight = nn.Parameter(torch.empty(num_mlps, hidden_size, bottleneck))  # W_n
        self.proj_out_bias = nn.Parameter(torch.empty(num_mlps, hidden_size))
        self.value_norm_weight = nn.Parameter(torch.empty(num_sources, hidden_size))  # LN_n
        self.value_norm_bias = nn.Parameter(torch.empty(num_sources, hidden_size))

    @property
    def bottleneck_size(self) -> int:
        return self.proj_in_weight.shape[1]

    def _rows(self, parameter: torch.Tensor) -> torch.Tensor:
        """(num_mlps or n, …) -> (n, …): one row per source; a shared MLP's single row is expanded (a view, not a copy)."""
        return parameter if len(parameter) == self.num_sources else parameter.expand(self.num_sources, *parameter.shape[1:])

    def bottlenecks(self, sources: torch.Tensor) -> torch.Tensor:
        """LN'_n(gelu(U_n · z_n + b_n)) for every source, the part of f_V,n before its output projection:
        (n, N, d) -> (n, N, γd)."""
        weight = self._rows(self.proj_in_weight).transpose(1, 2)  # (n, d, γd)
        hidden = F.gelu(torch.baddbmm(self._rows(self.proj_in_bias).unsqueeze(1), sources, weight))
        normalised = F.layer_norm(hidden, hidden.shape[-1:], eps=self.eps)  # (n, N, γd)
        return torch.addcmul(self._rows(self.norm_bias).unsqueeze(1), normalised, self._rows(self.norm_weight).unsqueeze(1))

    def values(self, bottlenecks: torch.Tensor) -> torch.Tensor:
        """v_n = LN_n(W_n · bottleneck_n + c_n) for every source: (n, N, γd) -> (n, N, d)."""
        weight = self._rows(self.proj_out_weight).transpose(1, 2)  # (n, γd, d)
        projected = torch.baddbmm(self._rows(self.proj_out_bias).unsqueeze(1), bottlenecks, weight)
        normalised = F.layer_norm(projected, projected.shape[-1:], eps=self.eps)  # (n, N, d)
        return torch.addcmul(self.value_norm_bias.unsqueeze(1), normalised, self.value_norm_weight.unsqueeze(1))

    def per_source(self) -> list["SingleSourceValue"]:
        """Each source's parameters as views, from one unbind per parameter tensor (a slice per source would dispatch
        n operators): for streamed inference, which computes one source at a time as the encoder hands them over."""
        per_parameter = [
            self._rows(parameter).unbind(0)
            for parameter in (self.proj_in_weight, self.proj_in_bias, self.norm_weight, self.norm_bias,
                              self.proj_out_weight, self.proj_out_bias, self.value_norm_weight, self.value_norm_bias)
        ]
        return [SingleSourceValue(*parameters, eps=self.eps) for parameters in zip(*per_parameter)]

    def flops_per_token(self) -> int:
        """Forward FLOPs of all n value transforms for one token (U_n and W_n; norms and gelu are not counted)."""
        _, bottleneck, hidden = self.proj_in_weight.shape
        return self.num_sources * 2 * 2 * bottleneck * hidden


VALUE_PATHS = ("auto", "batched", "per_source")


class DepthWiseAttentionFusion(FusionHead):
    """DWAtt: per token, attention over depth (ElNokrashy et al., arXiv 2209.15168).

    q = 1 + elu(z_L + f_Q(z_L)); k_n = W_K p_n with learned depth embeddings p_n; v_n = LN_n(f_V,n(z_n));
    a = softmax_n(q · k_n); h = z_L + Σ_n a_n v_n.
    """

    def __init__(self, config: DWAttConfig, num_sources: int):
        super().__init__()
        encoder_config = config.encoder_config
        hidden_size = encoder_config.hidden_size
        bottleneck = max(1, int(round(config.dwatt_bottleneck_ratio * hidden_size)))
        eps = _layer_norm_eps(encoder_config)
        self.num_sources = num_sources
        self.num_heads = config.dwatt_num_heads
        self.head_dim = hidden_size // self.num_heads
        self.scale_scores = config.dwatt_scale_scores

        self.query_mlp = BottleneckMLP(hidden_size, bottleneck, hidden_size, eps)
        # Keys do not depend on the input: one learned embedding per source, projected to the hidden size.
        self.depth_embeddings = nn.Parameter(torch.empty(num_sources, config.dwatt_position_dim))
        self.key_proj = nn.Linear(config.dwatt_position_dim, hidden_size, bias=False)
        self.value_transforms = SourceValueTransforms(
            num_sources, config.dwatt_shared_value_mlp, hidden_size, bottleneck, eps
        )
        # zero_init_residual: LN_n's scale starts at zero, so v_n = 0 and h = z_L at the start.
        self.value_transforms._start_at_zero = config.zero_init_residual
        self.weight_dropout = nn.Dropout(config.dwatt_weight_dropout)
        # How the forward runs the value transforms (see `runs_per_source`); not saved, since it changes
        # only the order of the arithmetic, not the result beyond rounding.
        self.value_path = "auto"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torch's load_state_dict (Trainer's resume from a checkpoint, for one) with a state dict of dwatt 0.1, which
        # kept one value module per source: stack them into this version's parameters first.
        old_keys = [key for key in state_dict if key.startswith(prefix) and is_per_source_value_key(key[len(prefix):])]
        if old_keys:
            state_dict.update(stack_per_source_value_mlps({key: state_dict.pop(key) for key in old_keys}))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def depth_query(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """The query over depth, q = 1 + elu(z_L + f_Q(z_L)): (B, T, d) -> (B, T, d), every entry > 0."""
        return 1.0 + F.elu(last_hidden_state + self.query_mlp(last_hidden_state))

    def depth_weights(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """Softmax weights over the sources for each token and head: (B, T, d) -> (B, T, H, n)."""
        batch, length, hidden = last_hidden_state.shape
        query = self.depth_query(last_hidden_state)  # (B, T, d)
        keys = self.key_proj(self.depth_embeddings)  # (n, d)
        query = query.view(batch, length, self.num_heads, self.head_dim)  # (B, T, H, h)
        keys = keys.view(self.num_sources, self.num_heads, self.head_dim)  # (n, H, h)
        scores = torch.einsum("bthe,nhe->bthn", query, keys)  # (B, T, H, n)
        if self.scale_scores:
            scores = scores / math.sqrt(self.head_dim)
        return scores.softmax(dim=-1)

    def runs_per_source(self, device: torch.device) -> bool:
        """Whether a forward on `device` runs the value transforms one source at a time, as streamed inference
        does, instead of all sources per operator. `value_path`: "batched" dispatches the fewest operators,
        which is what sets the time on a GPU at small shapes; "per_source" works on (B, T, ·) tensors instead of
        (n, B·T, ·) ones, which keeps the LayerNorms' scale and shift inside their kernels and the working set in
        cache: on a 2-core CPU a MiniLM token-classification training step at 8 × 512 takes 1.11× the stock
        classifier's time instead of 1.19× (benchmarks/RESULTS.md, cost). "auto" (the default) takes "per_source"
        on the CPU and "batched" everywhere else."""
        if self.value_path not in VALUE_PATHS:
            raise ValueError(f"value_path={self.value_path!r}: expected one of {', '.join(map(repr, VALUE_PATHS))}.")
        return self.value_path == "per_source" or (self.value_path == "auto" and device.type == "cpu")

    def forward(self, last_hidden_state, sources, attention_mask, positions=None, output_weights=False):
        if positions is not None:
            gather_index = _position_index(positions, last_hidden_state.shape[-1])  # (B, 1, d)
            last_hidden_state = last_hidden_state.gather(1, gather_index)
            sources = [source.gather(1, gather_index) for source in sources]
        if self.runs_per_source(last_hidden_state.device):
            stream = DepthWiseAttentionSourceStream(self)
            for slot, source in enumerate(sources):
                stream.add(slot, source)
            return stream.finish(last_hidden_state, output_weights)
        batch, length, hidden = last_hidden_state.shape
        # (n, B·T', d): one copy of the sources (at the pooled positions only, when pooling), so that each step of
        # the value transforms runs for all sources at once.
        stacked = torch.stack(sources).view(self.num_sources, batch * length, hidden)
        values = self.value_transforms.values(self.value_transforms.bottlenecks(stacked))  # (n, B·T', d)
        values = values.view(self.num_sources, batch, length, self.num_heads, self.head_dim)  # (n, B, T', H, h)

        weights = self.depth_weights(last_hidden_state)  # (B, T', H, n)
        dropped = self.weight_dropout(weights).permute(3, 0, 1, 2).unsqueeze(-1)  # (n, B, T', H, 1)
        mixed = (values * dropped).sum(dim=0).view(batch, length, hidden)  # Σ_n a_n v_n, (B, T', d)
        return last_hidden_state + mixed, (weights if output_weights else None)

    def source_stream(self, attention_mask, positions=None) -> SourceStream:
        if positions is not None or self.value_transforms.bottleneck_size >= self.head_dim * self.num_heads:
            # Pooled: keeping z_n at one position per sequence costs next to nothing and runs the forward itself.
            # A bottleneck no smaller than z_n would save nothing either: keep z_n.
            return super().source_stream(attention_mask, positions)
        return DepthWiseAttentionSourceStream(self)

    def readout_stream(self, readout: nn.Linear) -> Optional[SourceStream]:
        # Keeps (B, T, H, k) per source instead of the (B, T, γd) bottleneck: worth it while H·k is the smaller.
        kept_by_source_stream = min(self.value_transforms.bottleneck_size, self.head_dim * self.num_heads)
        if self.num_heads * readout.out_features >= kept_by_source_stream:
            return None
        if readout.weight.device != self.depth_embeddings.device:  # a model split over devices: C goes with its module
            return None
        return DepthWiseAttentionReadoutStream(self, readout)

    def flops_per_token(self, seq_len: int) -> int:
        hidden = self.head_dim * self.num_heads
        mlps = self.query_mlp.flops_per_token() + self.value_transforms.flops_per_token()
        scores = 2 * self.num_sources * hidden
        weighted_sum = 2 * self.num_sources * hidden
        return mlps + scores + weighted_sum


class DepthWiseAttentionSourceStream(SourceStream):
    """DWAtt's weights over depth need the query from z_L, the last source, so every source's value must wait for
    it. What waits is the value transform's bottleneck LN'_n(gelu(U_n z_n)), (B, T, γd), instead of z_n, (B, T, d):
    with the default γ = 0.5 half the memory. The values are then summed one source at a time, so no (n, B, T, d)
    stack of them exists either (the batched forward sums them in one operator: it agrees to rounding). The
    per-source forward (`DepthWiseAttentionFusion.runs_per_source`) is this same arithmetic, with gradients.
    The token classifier's inference keeps less, each value read out through the classifier
    (DepthWiseAttentionReadoutStream); this stream serves DWAttModel itself, mean pooling and the fallbacks."""

    def __init__(self, head: DepthWiseAttentionFusion):
        self.head = head
        self.transforms = head.value_transforms.per_source()
        self.bottlenecks: list[torch.Tensor] = []

    def add(self, slot, source):
        self.bottlenecks.append(self.transforms[slot].bottleneck(source))  # (B, T, γd)

    def finish(self, last_hidden_state, output_weights):
        head = self.head
        batch, length, hidden = last_hidden_state.shape
        weights = head.depth_weights(last_hidden_state)  # (B, T, H, n)
        # Every source's weights as a view from one unbind, where a slice per source would dispatch n operators.
        source_weights = head.weight_dropout(weights).permute(3, 0, 1, 2).unsqueeze(-1).unbind(0)  # n x (B, T, H, 1)
        fused = last_hidden_state.view(batch, length, head.num_heads, head.head_dim)  # (B, T, H, h)
        for slot, transform in enumerate(self.transforms):
            value = transform.value(self.bottlenecks[slot]).view(batch, length, head.num_heads, head.head_dim)
            self.bottlenecks[slot] = None  # freed once its value is in the sum
            fused = torch.addcmul(fused, source_weights[slot], value)  # fused + a_n · v_n, one operator
        return fused.reshape(batch, length, hidden), (weights if output_weights else None)


class DepthWiseAttentionReadoutStream(SourceStream):
    """DWAtt read out through a linear map C (the token classifier) without ever holding the fused state:
    C(z_L + Σ_n a_n v_n) + b = C z_L + b + Σ_n Σ_heads a_n,h (C_h v_n,h), with C_h the columns of C that head h's
    part of the hidden state meets. Each source's value is computed as the encoder hands the source over and only
    C_h v_n,h is kept, (B, T, H, k) with k classes, where DepthWiseAttentionSourceStream keeps the (B, T, γd)
    bottleneck: on BERT-base with 9 labels 9 floats a token per source instead of 384. The same terms as
    C(fused) + b summed in another order, so it agrees with it to rounding, not bit for bit."""

    def __init__(self, head: DepthWiseAttentionFusion, readout: nn.Linear):
        self.head, self.readout = head, readout
        self.transforms = head.value_transforms.per_source()
        weight = readout.weight  # C, (k, d)
        if head.num_heads > 1:
            # Block rows: row (h, j) is C's row j on head h's columns and zero elsewhere, so that one linear map of
            # v_n gives every C_h v_n,h at once (H times C's few FLOPs, but one operator a source instead of a loop).
            per_head = weight.view(weight.shape[0], head.num_heads, head.head_dim)  # (k, H, h)
            eye = torch.eye(head.num_heads, dtype=weight.dtype, device=weight.device)
            weight = torch.einsum("khe,hg->hkge", per_head, eye).reshape(-1, weight.shape[1])  # (H·k, d)
        self.head_readout = weight  # (H·k, d)
        self.read_values: list[torch.Tensor] = []  # C_h v_n,h for each source n so far, each (B, T, H·k)

    def add(self, slot, source):
        transform = self.transforms[slot]
        value = transform.value(transform.bottleneck(source))  # v_n, (B, T, d)
        self.read_values.append(F.linear(value, self.head_readout))  # (B, T, H·k)

    def finish(self, last_hidden_state, output_weights):
        head = self.head
        batch, length, _ = last_hidden_state.shape
        weights = head.depth_weights(last_hidden_state)  # (B, T, H, n)
        # (B, T, H, k, n): small, k floats per token, head and source
        read_values = torch.stack(self.read_values, dim=-1).view(batch, length, head.num_heads, -1, head.num_sources)
        self.read_values = []
        mixed = torch.einsum("bthkn,bthn->btk", read_values, head.weight_dropout(weights))  # Σ_n,h a_n,h C_h v_n,h
        logits = F.linear(last_hidden_state, self.readout.weight, self.readout.bias) + mixed  # C z_L + b + Σ …
        return logits, (weights if output_weights else None)


class ConcatFusion(FusionHead):
    """Concat: h = z_L + g([z_1; …; z_n]) with g a bottleneck MLP from n·d to d.

    g's first projection is applied source by source (U · [z_1; …; z_n] = Σ_n U_n · z_n) so the (B, T, n·d)
    concatenation is never materialised; the weights are those of one `nn.Linear(n·d, width)`.
    """

    def __init__(self, config: DWAttConfig, num_sources: int):
        super().__init__()
        encoder_config = config.encoder_config
        hidden_size = encoder_config.hidden_size
        width = config.concat_hidden_size or hidden_size
        self.num_sources = num_sources
        self.hidden_size = hidden_size
        self.mlp = BottleneckMLP(num_sources * hidden_size, width, hidden_size, _layer_norm_eps(encoder_config))
        # zero_init_residual: g(·) = W·(0 ⊙ LN(·)) = 0, so h = z_L. The LayerNorm scale, not W, starts at zero: Adam
        # regrows a zero W to its random size within a few dozen steps, while a zero scale moves the output only
        # through the random W (std ≈ 0.02), about 50 times more slowly. With W at zero Concat stayed 7 F1 below
        # `last` (benchmarks/results/superseded/); with the scale at zero, 1.4 below at 50 sentences and 2.1 at 200
        # (RESULTS.md, ablations).
        self.mlp.norm._start_at_zero = config.zero_init_residual

    def forward(self, last_hidden_state, sources, attention_mask, positions=None, output_weights=False):
        stream = self.source_stream(attention_mask, positions)
        for slot, source in enumerate(sources):
            stream.add(slot, source)
        return stream.finish(last_hidden_state, output_weights)

    def source_stream(self, attention_mask, positions=None) -> "ConcatSourceStream":
        return ConcatSourceStream(self, positions)

    def flops_per_token(self, seq_len: int) -> int:
        return self.mlp.flops_per_token()


class ConcatSourceStream(SourceStream):
    """Concat as a running sum: U · [z_1; …; z_n] + b = b + Σ_n U_n · z_n, so only one (B, T', width) sum is kept."""

    def __init__(self, head: ConcatFusion, positions: Optional[torch.Tensor]):
        self.head, self.positions = head, positions
        proj_in = head.mlp.proj_in
        self.parts: Optional[list] = None
        if not _is_plain_linear(proj_in):  # quantized, or another layer in its place: U applied to [z_1; …; z_n]
            self.parts = [None] * head.num_sources
            return
        # U's column blocks U_n as views (width, d) from one unbind: its backward writes all n weight-gradient blocks
        # into one (width, n·d) tensor, where n column slices would each build (and add) a full-size gradient.
        self.blocks = proj_in.weight.view(proj_in.out_features, head.num_sources, head.hidden_size).unbind(1)
        self.hidden = proj_in.bias

    def add(self, slot, source):
        if self.parts is not None:
            self.parts[slot] = self.at_positions(source)  # (B, T', d)
            return
        self.hidden = self.hidden + F.linear(self.at_positions(source), self.blocks[slot])  # (B, T', width)

    def finish(self, last_hidden_state, output_weights):
        mlp = self.head.mlp
        if self.parts is not None:
            self.hidden = mlp.proj_in(torch.cat(self.parts, dim=-1))  # (B, T', width)
        return self.at_positions(last_hidden_state) + mlp.proj_out(mlp.norm(F.gelu(self.hidden))), None  # (B, T', d)


class ScalarMixFusion(FusionHead):
    """ScalarMix (ELMo, BERMo): h = γ · Σ_n softmax(w)_n · z_n, optionally normalising each source first."""

    def __init__(self, config: DWAttConfig, num_sources: int):
        super().__init__()
        self.num_sources = num_sources
        self.hidden_size = config.encoder_config.hidden_size
        self.layer_norm = config.scalar_mix_layer_norm
        self.mix_logits = nn.Parameter(torch.zeros(num_sources))  # w, 0 = uniform
        self.gamma = nn.Parameter(torch.ones(1))

    @staticmethod
    def _masked_moments(source: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One mean and variance over the real tokens' elements of each sequence: (B, T, d), (B, T) -> (B, 1, 1) x2
        mask = mask.to(source.dtype).unsqueeze(-1)  # (B, T, 1)
        count = mask.sum(dim=(1, 2), keepdim=True).clamp(min=1.0) * source.shape[-1]
        mean = (source * mask).sum(dim=(1, 2), keepdim=True) / count
        variance = (((source - mean) * mask) ** 2).sum(dim=(1, 2), keepdim=True) / count
        return mean, variance

    def forward(self, last_hidden_state, sources, attention_mask, positions=None, output_weights=False):
        stream = self.source_stream(attention_mask, positions)
        for slot, source in enumerate(sources):
            stream.add(slot, source)
        return stream.finish(last_hidden_state, output_weights)

    def source_stream(self, attention_mask, positions=None) -> "ScalarMixSourceStream":
        return ScalarMixSourceStream(self, attention_mask, positions)

    def flops_per_token(self, seq_len: int) -> int:
        return 2 * self.num_sources * self.hidden_size


class ScalarMixSourceStream(SourceStream):
    """ScalarMix as a running sum Σ_n softmax(w)_n · z_n (each source normalised first with `scalar_mix_layer_norm`)."""

    def __init__(self, head: ScalarMixFusion, attention_mask: torch.Tensor, positions: Optional[torch.Tensor]):
        self.head, self.attention_mask, self.positions = head, attention_mask, positions
        self.weights = head.mix_logits.softmax(dim=0)  # (n,)
        self.source_weights = self.weights.unbind(0)  # n x (), views from one operator instead of n
        self.fused: Optional[torch.Tensor] = None

    def add(self, slot, source):
        if self.head.layer_norm:  # statistics over the whole sequence, before any pooling
            mean, variance = self.head._masked_moments(source, self.attention_mask)
        source = self.at_positions(source)  # (B, T', d)
        if self.head.layer_norm:
            source = (source - mean) / torch.sqrt(variance + 1e-12)
        weight = self.source_weights[slot]
        self.fused = weight * source if self.fused is None else torch.addcmul(self.fused, weight, source)  # (B, T', d)

    def finish(self, last_hidden_state, output_weights):
        fused = self.head.gamma * self.fused  # (B, T', d)
        if not output_weights:
            return fused, None
        batch, length, _ = fused.shape
        return fused, self.weights.view(1, 1, 1, -1).expand(batch, length, 1, self.head.num_sources)


class TransformerLayer(nn.Module):
    """A post-LN transformer encoder layer (BERT's layout) with the given shape, bidirectional over real tokens."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, activation: str, eps: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.attn_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn_in = nn.Linear(hidden_size, intermediate_size)
        self.ffn_act = ACT2FN[activation]
        self.ffn_out = nn.Linear(intermediate_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, positions: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """(B, T, d) -> (B, T, d); with `positions` (B,) only those queries are computed: (B, 1, d).

        Keys and values always come from every real token, so the row at a position is the same either way.
        """
        residual = hidden_states if positions is None else _gather_positions(hidden_states, positions)  # (B, T', d)
        drop = self.dropout if self.training else 0.0
        # The attention's projections are locals of _attention, freed before the FFN runs (inference memory).
        attended = self.attn_out(self._attention(hidden_states, attention_mask, positions))  # (B, T', d)
        hidden_states = self.attn_norm(residual + F.dropout(attended, drop, self.training))
        del residual, attended
        feed_forward = self.ffn_out(self.ffn_act(self.ffn_in(hidden_states)))
        return self.ffn_norm(hidden_states + F.dropout(feed_forward, drop, self.training))

    def _attention(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, positions: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Multi-head self-attention before the output projection: (B, T, d) -> (B, T', d)."""
        batch, length, hidden = hidden_states.shape
        if positions is None or not _is_plain_linear(self.attn_qkv):
            qkv = self.attn_qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, h)
            if positions is not None:  # a quantized attn_qkv, called whole: keep the pooled query, (B, H, 1, h)
                query = query.gather(2, positions.view(batch, 1, 1, 1).expand(batch, self.num_heads, 1, self.head_dim))
        else:
            # attn_qkv's rows are [W_Q; W_K; W_V]: project the queries at the positions, keys and values everywhere.
            weight_q, weight_kv = self.attn_qkv.weight.split([hidden, 2 * hidden])
            bias_q, bias_kv = self.attn_qkv.bias.split([hidden, 2 * hidden])
            pooled = _gather_positions(hidden_states, positions)  # (B, 1, d)
            query = F.linear(pooled, weight_q, bias_q).view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2)
            kv = F.linear(hidden_states, weight_kv, bias_kv).view(batch, length, 2, self.num_heads, self.head_dim)
            key, value = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, T, h); query (B, H, 1, h)
        key_mask = attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, T)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T', h)
        return attended.transpose(1, 2).reshape(batch, query.shape[2], hidden)  # (B, T', d)

    def flops_per_token(self, seq_len: int) -> int:
        hidden = self.num_heads * self.head_dim
        return 2 * 2 * hidden * hidden + self.flops_per_query(seq_len)  # + keys and values of this token

    def flops_per_query(self, seq_len: int) -> int:
        """FLOPs of one output row given every token's keys and values: its query, attention, output and FFN."""
        hidden = self.num_heads * self.head_dim
        projections = 2 * (hidden * hidden + hidden * hidden + 2 * hidden * self.ffn_in.out_features)
        attention = 2 * 2 * seq_len * hidden  # scores q·k and the weighted sum of values
        return projections + attention


class DeeperFusion(FusionHead):
    """The paper's parameter-matched control: extra randomly initialised layer(s) of the encoder's shape on z_L."""

    reads_intermediate_states = False

    def __init__(self, config: DWAttConfig, num_sources: int):
        super().__init__()
        encoder_config = config.encoder_config
        hidden_size = encoder_config.hidden_size
        intermediate = _first_attr(encoder_config, ("intermediate_size", "hidden_dim", "n_inner"), None) or 4 * hidden_size
        activation = _first_attr(encoder_config, ("hidden_act", "activation", "activation_function"), "gelu")
        if activation not in ACT2FN:
            activation = "gelu"
        self.layers = nn.ModuleList(
            [
                TransformerLayer(
                    hidden_size,
                    encoder_config.num_attention_heads,
                    int(intermediate),
                    activation,
                    _layer_norm_eps(encoder_config),
                    encoder_hidden_dropout(encoder_config),
                )
                for _ in range(config.deeper_num_layers)
            ]
        )

    def forward(self, last_hidden_state, sources, attention_mask, positions=None, output_weights=False):
        # Attention needs every token's keys and values, so only the last layer can stop at the pooled positions.
        hidden_states = last_hidden_state  # (B, T, d)
        for index, layer in enumerate(self.layers):
            is_last = index == len(self.layers) - 1
            hidden_states = layer(hidden_states, attention_mask, positions=positions if is_last else None)
        return hidden_states, None  # (B, T, d), or (B, 1, d) with positions

    def flops_per_token(self, seq_len: int) -> int:
        return sum(layer.flops_per_token(seq_len) for layer in self.layers)

    def flops_per_pooled_sequence(self, seq_len: int) -> int:
        *full_layers, last = self.layers
        keys_values = 2 * 2 * last.attn_qkv.in_features ** 2  # the last layer's key and value projections
        return seq_len * (sum(layer.flops_per_token(seq_len) for layer in full_layers) + keys_values) + last.flops_per_query(seq_len)


FUSION_HEADS = {
    "dwatt": DepthWiseAttentionFusion,
    "concat": ConcatFusion,
    "scalar_mix": ScalarMixFusion,
    "deeper": DeeperFusion,
    "last": LastLayerFusion,
}


def _layer_norm_eps(encoder_config) -> float:
    return float(_first_attr(encoder_config, ("layer_norm_eps", "layer_norm_epsilon", "norm_eps", "rms_norm_eps"), 1e-5))


def build_fusion_head(config: DWAttConfig) -> FusionHead:
    """The head named by `config.fusion`, sized for the encoder in `config.encoder_config`."""
    if config.fusion not in FUSION_HEADS:
        raise ValueError(f"Unknown fusion {config.fusion!r}: choose one of {', '.join(FUSION_HEADS)}.")
    return FUSION_HEADS[config.fusion](config, num_sources=len(config.fusion_source_indices))


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


class OffloadedWeights:
    """Loads the weights that accelerate keeps offloaded for `modules` while a block of code runs.

    accelerate (`device_map` with "cpu" or "disk" entries, `disk_offload`, …) hooks every module that owns weights to
    load them in that module's own forward and offload them after it. The fusion heads also read some submodules'
    weights directly (one source's slice of the stacked value transforms, the extra layer's weights at the pooled
    position only), outside any forward of those modules: this runs the same hooks around the whole head. It calls
    only the hooks' `pre_forward`/`post_forward` (accelerate's ModelHook interface), so this file imports nothing
    of accelerate, which the Hub copy cannot count on.
    """

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules

    def __enter__(self) -> None:
        for module in self.modules:
            module._hf_hook.pre_forward(module)

    def __exit__(self, *exc_info) -> None:
        for module in reversed(self.modules):
            module._hf_hook.post_forward(module, None)


# Per-layer settings of encoder configs: attention kinds (ModernBERT, Qwen2, …), Longformer's attention windows,
# GPT-Neo's expanded attention kinds.
PER_LAYER_SETTINGS = ("layer_types", "attention_window", "attention_layers")


def _keep_first_layers(encoder_config: PretrainedConfig, num_layers: int) -> None:
    """Makes `encoder_config` describe the encoder's first `num_layers` layers only (in place); loading the
    pretrained weights with it then leaves the layers above unused."""
    total = _num_encoder_layers(encoder_config)
    if not isinstance(num_layers, int) or not 1 <= num_layers <= total:
        raise ValueError(
            f"encoder_num_layers={num_layers!r} is out of range: the encoder has {total} layers, so keep 1 to {total} "
            "(the layer index that dwatt.variability selects, for instance)."
        )
    encoder_config.num_hidden_layers = num_layers
    # Settings with one entry per layer, which the config checks against num_hidden_layers.
    for name in PER_LAYER_SETTINGS:
        values = getattr(encoder_config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == total:
            setattr(encoder_config, name, list(values[:num_layers]))
    if getattr(encoder_config, "attention_types", None) is not None and encoder_config.model_type == "gpt_neo":
        # GPT-Neo keeps its per-layer kinds run-length coded ([[["global", "local"], 6]]) and expands them into
        # attention_layers (trimmed above): code the kept layers as one run.
        encoder_config.attention_types = [[list(encoder_config.attention_layers), 1]]


# ----------------------------------------------------------------------------------------------------------------
# Attention guidance (Deshpande & Narasimhan, arXiv 2010.02399)
# ----------------------------------------------------------------------------------------------------------------


def attention_pattern_keys(attention_mask: torch.Tensor, mask_padding: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The key each query should attend to under each guidance pattern, in the order of `attention_guidance_heads`:
    itself, the next token, the previous token, the first real token.

    Every pattern's target row is one-hot or empty, so its key index stands for the whole (T, T) target matrix.
    Returns `keys` (B, T, 4), long, and `counted` (B, T, 4), float: 1 where query and key form a pair the loss
    averages over and the pattern has a key there (the next pattern has none at the last position, the previous
    pattern none at the first); with `mask_padding`, only pairs of real tokens count. Where `counted` is 0, `keys`
    holds some valid index to gather from."""
    batch_size, length = attention_mask.shape
    real = attention_mask != 0  # (B, T)
    position = torch.arange(length, device=attention_mask.device).expand(batch_size, length)  # (B, T)
    first_real = real.int().argmax(dim=1, keepdim=True).expand(batch_size, length)  # (B, T): 0 under right padding
    keys = torch.stack([position, position + 1, position - 1, first_real], dim=-1)  # (B, T, 4)
    exists = (keys >= 0) & (keys < length)  # (B, T, 4): the next / previous token exists
    keys = keys.clamp(0, length - 1)
    if mask_padding:  # the query and its key are both real tokens
        exists = exists & real.unsqueeze(-1) & real.gather(1, keys.flatten(1)).view(batch_size, length, 4)
    return keys, exists.float()


def probabilities_on_keys(probabilities: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, T) attention probabilities, (B, T, P) key indices -> (B, heads, T, P): each query's probability
    on each pattern's key."""
    return probabilities.gather(-1, keys.unsqueeze(1).expand(-1, probabilities.shape[1], -1, -1))


def attention_guidance_loss(
    attentions: tuple[torch.Tensor, ...], attention_mask: torch.Tensor, heads: GuidanceHeads, mask_padding: bool = True
) -> torch.Tensor:
    """The guidance loss: for every layer and pattern, the mean squared error between the attention probabilities
    of the heads assigned to the pattern and its target matrix; summed over layers and patterns, as the authors'
    code does.

    attentions: one (B, heads, T, T) tensor of attention probabilities per layer, as eager attention returns them
        (in training, after attention dropout: so did the BERT code the authors trained with).
    heads: normalized `attention_guidance_heads`: four head counts (heads 0, 1, … in pattern order, every layer) or
        one [self, next, previous, first] list of head indices per layer.
    mask_padding: average over the (query, key) pairs of real tokens only, instead of the whole T × T block.
    """
    # Each target row is one-hot (a 1 at the pattern's key k(i)) or empty, so the squared error of a query row is
    #   Σ_j (A_ij − G_ij)² = Σ_j A_ij² − 2·A_i,k(i) + 1   (the last two terms only where the row has its key),
    # which needs the probabilities' squares and one gathered probability per row, never the (B, 4, T, T) targets.
    keys, counted = attention_pattern_keys(attention_mask, mask_padding)  # (B, T, 4) each
    real = (attention_mask != 0).float() if mask_padding else torch.ones_like(attention_mask, dtype=torch.float)
    pair_count = (real.sum(dim=1) ** 2).sum()  # the (query, key) pairs averaged over, per head
    total = real.new_zeros(())
    for probabilities, layer_heads in zip(attentions, attention_guidance_assignment(heads, len(attentions))):
        # probabilities: (B, heads, T, T). Layers may sit on different devices (device_map): bring the index
        # tensors to each layer's.
        device = probabilities.device
        layer_real, layer_keys, layer_counted = real.to(device), keys.to(device), counted.to(device)
        chosen = [head for pattern_heads in layer_heads for head in pattern_heads]  # in pattern order
        if chosen == list(range(len(chosen))):  # heads 0, 1, …: a view
            guided = probabilities[:, :len(chosen)].float()  # (B, G, T, T)
        else:  # views stacked: an index tensor would be copied to the GPU (and wait for it) at every step
            guided = torch.stack([probabilities[:, head] for head in chosen], dim=1).float()  # (B, G, T, T)
        if mask_padding:  # Σ_j A_ij² over real keys, for real queries only
            squares = ((guided * layer_real[:, None, None, :]) * guided).sum(dim=-1) * layer_real[:, None, :]
        else:
            squares = (guided * guided).sum(dim=-1)  # (B, G, T)
        on_key = probabilities_on_keys(guided, layer_keys) * layer_counted.unsqueeze(1)  # (B, G, T, 4): A_i,k(i)
        first = 0
        for pattern, pattern_heads in enumerate(layer_heads):
            count = len(pattern_heads)
            if count == 0:
                continue
            rows = slice(first, first + count)  # this pattern's heads among the guided ones
            target_ones = count * layer_counted[..., pattern].sum()  # Σ G² over the counted pairs
            squared = squares[:, rows].sum() - 2 * on_key[:, rows, :, pattern].sum() + target_ones
            total = total + (squared / (pair_count.to(device) * count)).to(total.device)
            first += count
    return total


# The `from_pretrained` options that say where and how to read a checkpoint's files. They are not settings of the model:
# `from_encoder_pretrained` hands them to the encoder's loader (a `token` must never reach config.json), and
# `from_pretrained` to the loader of the saved encoder config.
HUB_FILE_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download", "proxies")
ENCODER_LOADING_OPTIONS = (*HUB_FILE_OPTIONS, "trust_remote_code", "code_revision")


def _route_encoder_loading_options(config_kwargs: dict, encoder_kwargs: dict) -> None:
    """Moves the loading options given directly to `from_encoder_pretrained` into `encoder_kwargs`, and the encoder's
    attention implementation (an `encoder_kwargs` entry the model, not the loader, must see) the other way."""
    for key in ENCODER_LOADING_OPTIONS:
        if key in config_kwargs:
            value = config_kwargs.pop(key)
            if key in encoder_kwargs and encoder_kwargs[key] != value:
                raise ValueError(f"{key} is given twice, as {value!r} and in encoder_kwargs as {encoder_kwargs[key]!r}: "
                                 "give it once.")
            encoder_kwargs[key] = value
    if "attn_implementation" in encoder_kwargs:  # the encoder is rebuilt from its config inside the model
        implementation = encoder_kwargs.pop("attn_implementation")
        if config_kwargs.setdefault("attn_implementation", implementation) != implementation:
            raise ValueError(f"attn_implementation is given twice, as {config_kwargs['attn_implementation']!r} and in "
                             f"encoder_kwargs as {implementation!r}: give it once.")
    config_kwargs.pop("low_cpu_mem_usage", None)  # how transformers loads, not what: nothing to keep
    encoder_kwargs.pop("low_cpu_mem_usage", None)
    if "device_map" in config_kwargs or "device_map" in encoder_kwargs:
        raise ValueError("from_encoder_pretrained builds the model in CPU memory and takes no device_map: move it with "
                         "model.to(device), or save it and load the folder with from_pretrained(folder, device_map=…).")


def _requested_dtype(config_kwargs: dict, encoder_kwargs: dict) -> Union[str, torch.dtype]:
    """The one dtype asked for, as `dtype` or `torch_dtype`, directly or in `encoder_kwargs` (the whole model takes it:
    an encoder in bfloat16 under a float32 head cannot run a forward); float32 when none is."""
    given = {}
    for place, kwargs in (("", config_kwargs), ("encoder_kwargs ", encoder_kwargs)):
        for key in ("dtype", "torch_dtype"):
            if key in kwargs and kwargs[key] is not None:
                value = raw = kwargs.pop(key)
                if isinstance(value, str) and value != "auto":
                    value = getattr(torch, value.removeprefix("torch."), None)
                if not (value == "auto" or isinstance(value, torch.dtype) and value.is_floating_point):
                    raise ValueError(f"{place}{key}={raw!r}: give a floating-point torch dtype (torch.bfloat16, "
                                     "\"float16\", …) or \"auto\" (the checkpoint's).")
                given[f"{place}{key}"] = value
            kwargs.pop(key, None)
    if len(set(given.values())) > 1:
        raise ValueError(f"Conflicting dtypes {given}: give one.")
    return next(iter(given.values()), torch.float32)


class DWAttPreTrainedModel(PreTrainedModel):
    """What every DWAtt model shares: the config class, the initialisation of the head's modules (the encoder
    initialises itself or is loaded), saving with an `auto_map` for every Auto class, and loading that refuses a
    label count other than the checkpoint's."""

    config_class = DWAttConfig
    base_model_prefix = "dwatt"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # device_map="auto" keeps each fusion head on one device: the heads read their submodules' weights directly.
    # (transformers adds the encoder's own no-split modules, BertLayer and the like.)
    _no_split_modules = ["DepthWiseAttentionFusion", "ConcatFusion", "ScalarMixFusion", "DeeperFusion"]
    # The forwards take no **kwargs: Trainer must divide the loss for gradient accumulation itself.
    accepts_loss_kwargs = False
    # λ(t) of attention guidance, the factor on `config.attention_guidance_weight`: set by
    # `dwatt.callbacks.AttentionGuidanceCallback` from the training step (the authors' schedule); 1 without it.
    attention_guidance_scale: float = 1.0
    # The last unweighted guidance loss, detached (for logs; reading it does not synchronise a GPU until printed).
    last_attention_guidance_loss: Optional[torch.Tensor] = None

    def _output_flags(self, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
        """The forward's output flags: the call's, or the config's where the call leaves them None (as in
        transformers' models, so `from_pretrained(..., output_hidden_states=True)` works)."""
        config = self.config
        if output_attentions is None:
            output_attentions = bool(getattr(config, "output_attentions", False))
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(config, "output_hidden_states", False))
        if return_dict is None:
            return_dict = getattr(config, "return_dict", True)
        return output_attentions, output_hidden_states, return_dict

    def _guides_attention(self) -> bool:
        return self.training and self.config.attention_guidance_heads is not None

    def _split_prefix(self, cache, past_key_values, attention_mask, input_ids, inputs_embeds):
        """(the key/value prefix or None, the (B, T) mask of the input tokens or None) of a classifier's forward."""
        prefix = key_value_prefix(cache, past_key_values)
        if prefix is None:
            return None, attention_mask
        if self._guides_attention():
            raise ValueError(
                "Attention guidance (config.attention_guidance_heads) trains the encoder's attention heads toward "
                "fixed patterns over the input tokens; under a key/value prefix (PEFT's prefix tuning, which freezes "
                "the encoder) the heads also attend to the prefix, and the patterns are not defined for it. Train "
                "with either, not both (model.config.attention_guidance_heads = None turns guidance off)."
            )
        num_tokens = _num_input_tokens(input_ids, inputs_embeds)
        return prefix, token_attention_mask(attention_mask, prefix_length(prefix), num_tokens)

    def _add_attention_guidance(
        self, loss: Optional[torch.Tensor], attentions, attention_mask: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """α · λ · the guidance loss of the encoder's attention probabilities (a training-mode forward's), and the
        task `loss` with it added (None stays None: without labels there is no loss). Returns (loss, that term)."""
        expected = self.config.num_encoder_layers
        if attentions is None or len(attentions) != expected or any(layer is None for layer in attentions):
            implementation = getattr(self.base_model.encoder.config, "_attn_implementation", None)
            raise ValueError(
                f"Attention guidance needs the attention probabilities of all {expected} encoder layers, but the "
                f"encoder (attention implementation {implementation!r}) returned "
                f"{0 if attentions is None else len(attentions)}: only eager attention returns them. Call "
                "model.set_attn_implementation('eager') before training (dwatt does so when it builds a model whose "
                "config sets attention_guidance_heads)."
            )
        guidance = attention_guidance_loss(
            attentions, attention_mask, self.config.attention_guidance_heads, self.config.attention_guidance_mask_padding
        )
        self.last_attention_guidance_loss = guidance.detach()
        term = guidance * (self.config.attention_guidance_weight * self.attention_guidance_scale)
        return (None if loss is None else loss + term), term

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only the head's modules: the encoder is a PreTrainedModel and initialises itself (or is loaded).
        std = float(getattr(self.config.encoder_config, "initializer_range", None) or 0.02)
        # Modules a head marked with `_start_at_zero` (zero_init_residual) get a zero weight, whatever the order in
        # which transformers visits the modules (it skips modules without parameters of their own).
        zero_weight = getattr(module, "_start_at_zero", False)
        if isinstance(module, nn.Linear):
            if zero_weight:
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.zeros_(module.weight) if zero_weight else init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SourceValueTransforms):  # each source's slice as its nn.Linear / nn.LayerNorm above
            init.normal_(module.proj_in_weight, mean=0.0, std=std)
            init.normal_(module.proj_out_weight, mean=0.0, std=std)
            init.ones_(module.norm_weight)
            init.zeros_(module.value_norm_weight) if zero_weight else init.ones_(module.value_norm_weight)
            for bias in (module.proj_in_bias, module.norm_bias, module.proj_out_bias, module.value_norm_bias):
                init.zeros_(bias)
        elif isinstance(module, DepthWiseAttentionFusion):
            init.uniform_(module.depth_embeddings, 0.0, 1.0)
        elif isinstance(module, ScalarMixFusion):
            init.zeros_(module.mix_logits)
            init.ones_(module.gamma)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with an `auto_map` that opens the checkpoint with every Auto class.

        FSDP2's `fully_shard` swaps a model's class for a generated `FSDP<Name>` subclass defined in torch.
        transformers finds the code file to copy and the `auto_map` names through the object's class, so such a model
        is saved as its own class (give `state_dict=` the gathered full state dict, as for any FSDP save).
        """
        self.config.auto_map = dict(AUTO_MAP)
        wrapped_class = type(self)
        own_class = next(cls for cls in wrapped_class.__mro__ if not cls.__module__.startswith("torch."))
        if own_class is wrapped_class:
            return super().save_pretrained(save_directory, *args, **kwargs)
        self.__class__ = own_class
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__class__ = wrapped_class

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a label count that differs from the checkpoint's (pass
        `ignore_mismatched_sizes=True` to re-initialise the classifier for a new label set on purpose) and a dwatt 0.1
        checkpoint, whose weights need converting first (the error says how).
        """
        requested = kwargs.get("num_labels")
        if requested is None and kwargs.get("id2label") is not None:
            requested = len(kwargs["id2label"])
        if requested is None and isinstance(kwargs.get("config"), PretrainedConfig):
            requested = kwargs["config"].num_labels  # the Auto classes merge num_labels into the config first
        if requested is not None and not kwargs.get("ignore_mismatched_sizes", False):
            hub_kwargs = {
                key: kwargs[key]
                for key in HUB_FILE_OPTIONS
                if key in kwargs
            }
            saved, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
            saved_labels = saved.get("id2label")
            # transformers leaves the default label count (2) out of config.json.
            saved_count = len(saved_labels) if saved_labels else saved.get("num_labels", 2)
            # Only a checkpoint of this very class has a classifier that would be loaded into this one.
            same_head = cls.__name__ in (saved.get("architectures") or [])
            if same_head and saved_count != requested:
                raise ValueError(
                    f"The checkpoint {pretrained_model_name_or_path} has a classifier for {saved_count} labels, but "
                    f"{requested} were requested. Load it without num_labels/id2label to keep its classifier, or pass "
                    "ignore_mismatched_sizes=True to start a new classifier for the new label set."
                )
        wants_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        old_keys = [key for key in loading_info.get("unexpected_keys", ()) if is_per_source_value_key(key)]
        if old_keys:  # transformers would leave the value transforms randomly initialised, with only a warning
            raise ValueError(
                f"{pretrained_model_name_or_path} was saved by dwatt 0.1, whose DWAtt head kept one value MLP per source "
                f"({old_keys[0]}, …); this version stacks them (value_transforms.*). Convert the checkpoint once with "
                "dwatt.modeling_dwatt.stack_per_source_value_mlps (the README has the three lines), then load it."
            )
        return (model, loading_info) if wants_loading_info else model

    @classmethod
    def from_encoder_pretrained(
        cls,
        name_or_path: str,
        fusion: str = "dwatt",
        num_labels: Optional[int] = None,
        encoder_kwargs: Optional[dict] = None,
        encoder_num_layers: Optional[int] = None,
        encoder_config: Optional[Union[str, PretrainedConfig]] = None,
        **config_kwargs,
    ) -> "DWAttPreTrainedModel":
        """Wraps a plain pretrained encoder (local folder or Hub name) with a new fusion head and classifier.

        Works whatever the checkpoint's prefix layout (`BertModel`, `BertForMaskedLM` with `bert.`, …): transformers
        maps it onto the bare encoder. Raises `ValueError` if any encoder weight would stay randomly initialised.

        Args:
            name_or_path: folder or Hub id of the encoder checkpoint.
            fusion: the fusion head (see `DWAttConfig`).
            num_labels: size of the classifier (or pass `id2label`/`label2id`).
            encoder_kwargs: passed to `AutoConfig/AutoModel.from_pretrained`. The options that say where to find
                the files (`revision`, `cache_dir`, `token`, `subfolder`, `local_files_only`, …) may also be given
                directly, as to `from_pretrained`: they go to the encoder's loader and are not saved in the config.
            encoder_num_layers: keep only the encoder's first k layers and drop the ones above (a smaller, faster
                model whose last layer is the pretrained layer k), e.g. the layer `dwatt.variability` selects.
            encoder_config: the encoder's config (or its name or path), if not the one saved with its weights: e.g.
                the same architecture with other dropout (the scripts' `--config_name`).
            config_kwargs: further `DWAttConfig` arguments (`fusion_layers`, `pooling`, `id2label`, …); options of
                the encoder's config (`hidden_dropout_prob=0.2`), which set it as `from_pretrained` sets a plain
                model's; and `dtype`: the whole model's (float32 unless given, whatever the checkpoint was saved in, as
                for fine-tuning; `"auto"`: the checkpoint's). A near miss of a DWAttConfig argument is refused.
        """
        encoder_kwargs = dict(encoder_kwargs or {})
        _route_encoder_loading_options(config_kwargs, encoder_kwargs)
        dtype = _requested_dtype(config_kwargs, encoder_kwargs)
        if isinstance(encoder_config, PretrainedConfig):  # a copy: the model sets its dtype while it is built
            encoder_config = type(encoder_config).from_dict(encoder_config.to_dict())
        else:
            encoder_config = AutoConfig.from_pretrained(encoder_config or name_or_path, **encoder_kwargs)
        if encoder_config.model_type == DWAttConfig.model_type:
            raise ValueError(
                f"{name_or_path} is already a DWAtt checkpoint: load it with {cls.__name__}.from_pretrained."
            )
        # Options of the encoder's config (hidden_dropout_prob=0.2, …) set it, as from_pretrained(encoder, …) does.
        for name, value in pop_encoder_config_options(config_kwargs, encoder_config).items():
            setattr(encoder_config, name, value)
        _refuse_misspelt_options(config_kwargs, encoder_config)
        if encoder_num_layers is not None:
            _keep_first_layers(encoder_config, encoder_num_layers)
        if num_labels is not None:
            config_kwargs["num_labels"] = num_labels
        config_kwargs.setdefault("encoder_name_or_path", str(name_or_path))
        # The loader gets the config as the checkpoint saved it: building the model sets the encoder config's dtype
        # to the one it is built in, and dtype="auto" must find the checkpoint's.
        loader_config = type(encoder_config).from_dict(encoder_config.to_dict())
        config = DWAttConfig(encoder_config=encoder_config, fusion=fusion, **config_kwargs)
        model = cls(config)  # in torch's default dtype (float32), cast below; built first, so seeds keep their heads

        encoder = model.base_model.encoder
        loading_options = dict(encoder_kwargs)
        if "add_pooling_layer" in type(encoder).__init__.__code__.co_varnames:
            # Built without its pooler, as the encoder inside the model is: a checkpoint without one (a masked LM)
            # is then not reported as missing a pooler the model does not have.
            loading_options["add_pooling_layer"] = False
        pretrained, loading_info = AutoModel.from_pretrained(
            name_or_path, config=loader_config, output_loading_info=True, dtype=dtype, **loading_options
        )
        dtype = pretrained.dtype  # "auto" resolved: the checkpoint's
        wanted = set(encoder.state_dict())
        missing = sorted(set(loading_info.get("missing_keys", ())) & wanted)
        mismatched = sorted(str(entry[0] if isinstance(entry, tuple) else entry) for entry in loading_info.get("mismatched_keys", ()))
        if missing or mismatched:
            problem = f"{len(missing)} missing" + (f" and {len(mismatched)} mismatched" if mismatched else "")
            raise ValueError(
                f"{problem} encoder weights in {name_or_path} (e.g. {(missing or mismatched)[:5]}): they would "
                f"stay randomly initialised. Check that the checkpoint holds a complete {type(pretrained).__name__} "
                "(with or without its task head) and that its config matches its weights."
            )
        state = {key: value for key, value in pretrained.state_dict().items() if key in wanted}
        encoder.load_state_dict(state, strict=True)
        del pretrained
        if dtype != model.dtype:
            model = model.to(dtype)
        model.config.dtype = model.config.encoder_config.dtype = dtype
        return model


def _refuse_misspelt_options(config_kwargs: dict, encoder_config: PretrainedConfig) -> None:
    """A `from_encoder_pretrained` option that is no config's but nearly a DWAttConfig argument (`fusion_layer=[0,
    -1]`) would be stored in the config and do nothing: refuse it, naming the argument. Other names are kept as
    config attributes, as any transformers config keeps them (`finetuning_task`, `tokenizer_class`, …)."""
    options = DWAttConfig.option_names()
    for name in config_kwargs:  # the encoder's options are gone by now (pop_encoder_config_options)
        if name in options or name in MODEL_LEVEL_OPTIONS:
            continue
        distance, nearest = min((_edit_distance(name, option), option) for option in options)
        if distance <= max(1, len(name) // 6):  # one slip per six letters: fusion_layer, classifier_droput, fussion
            raise TypeError(
                f"from_encoder_pretrained got {name}={config_kwargs[name]!r}, which is neither a DWAttConfig argument "
                f"nor an option of the encoder's {type(encoder_config).__name__}: did you mean {nearest}?"
            )


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest letters to insert, delete or replace to turn `a` into `b`."""
    previous = list(range(len(b) + 1))
    for i, letter in enumerate(a, start=1):
        current = [i]
        for j, other in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (letter != other)))
        previous = current
    return previous[-1]


class DWAttModel(DWAttPreTrainedModel):
    """The encoder plus the fusion head; `last_hidden_state` of the output is the fused hidden state."""

    def __init__(self, config: DWAttConfig):
        if config.encoder_config is None:
            raise ValueError(
                "This DWAttConfig has no encoder_config, so there is no encoder to build. Wrap a pretrained encoder "
                "with DWAttFor…Classification.from_encoder_pretrained(path), or give the config one: "
                "DWAttConfig(encoder_config=AutoConfig.from_pretrained(path), …)."
            )
        super().__init__(config)
        # Attention guidance needs the attention probabilities, which only eager attention returns.
        guided = config.attention_guidance_heads is not None
        self.encoder = build_encoder(config.encoder_config, attn_implementation="eager" if guided else None)
        _install_output_capturing_hooks(self.encoder)
        # PEFT must be told to train this head in full (modules_to_save=["fusion_classifier"]): up to peft 0.21 its
        # classification models caught it by the end of its name, from 0.22 they take whole names only.
        self.fusion_classifier = build_fusion_head(config)
        self._source_indices = config.fusion_source_indices
        self._num_states = config.num_encoder_layers + 1
        # Read here, before PEFT may wrap the head. Without intermediate sources the encoder need not keep its hidden
        # states (an inference-memory saving).
        self._head_reads_sources = self.fusion_classifier.reads_intermediate_states
        self._needs_hidden_states = self._head_reads_sources and any(
            index != self._num_states - 1 for index in self._source_indices
        )
        self._encoder_takes_use_cache = _accepts_argument(self.encoder.forward, "use_cache")
        # The name under which the encoder takes a key/value prefix (transformers 5.24 renamed it), None if it takes none.
        self._encoder_cache_argument = next(
            (name for name in ("cache", "past_key_values") if _accepts_argument(self.encoder.forward, name)), None)
        self._frozen_head_checked = False
        self.post_init()

    def _warn_once_if_only_the_head_is_frozen(self) -> None:
        """At the first training forward: a head with parameters of which none trains, while others do, is almost
        always a PEFT config that leaves it out, and the stock Trainer would train on without a word."""
        self._frozen_head_checked = True
        head_parameters = list(self.fusion_classifier.parameters())
        if (head_parameters and not any(parameter.requires_grad for parameter in head_parameters)
                and any(parameter.requires_grad for parameter in self.parameters())):
            logger.warning(
                "The fusion head (fusion_classifier) does not train while other parameters do: it stays at its "
                "initialisation. With PEFT, add modules_to_save=['fusion_classifier'] to its config (from peft 0.22 a "
                "task type no longer includes it), or build a LoRA config with dwatt.peft_utils.lora_config(model). "
                "If you froze it on purpose, ignore this."
            )

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.encoder.set_input_embeddings(value)

    def fusion_cost(self, seq_len: int) -> dict:
        """The head's added parameters and forward FLOPs per fused token and per pooled sequence (what sequence
        classification costs with this config's `pooling`), for cards and benchmarks."""
        flops_per_token = self.fusion_classifier.flops_per_token(seq_len)
        if self.config.pooling == "mean":  # the mean of the fused states: every token is fused
            flops_per_pooled_sequence = seq_len * flops_per_token
        else:  # the first or last real token: the head fuses that position only
            flops_per_pooled_sequence = self.fusion_classifier.flops_per_pooled_sequence(seq_len)
        return {
            "fusion": self.config.fusion,
            "added_parameters": self.fusion_classifier.num_added_parameters(),
            "flops_per_token": flops_per_token,
            "flops_per_pooled_sequence": flops_per_pooled_sequence,
        }

    def _check_prefix_can_be_used(self) -> None:
        """Refuses a key/value prefix the encoder would not take, or would drop without a word."""
        encoder = type(self.encoder).__name__
        if self._encoder_cache_argument is None:
            raise ValueError(
                f"The encoder {encoder} takes no key/value cache, which is how a prefix reaches it (PEFT's prefix "
                "tuning passes its virtual tokens so). Tune this encoder with LoRA or prompt tuning instead, or wrap "
                "one whose forward takes a cache (BERT, RoBERTa, ELECTRA, GPT-2, Llama, …)."
            )
        if self.training and torch.is_grad_enabled() and _is_activation_checkpointing(self.encoder):
            raise ValueError(
                f"The encoder {encoder} runs with activation checkpointing, under which transformers drops a key/value "
                "cache from every layer (only warning), so a prefix (PEFT's prefix tuning) would silently not be "
                "trained or used. Turn activation checkpointing off (--activation_checkpointing False, or "
                "model.activation_checkpointing_disable(); gradient_checkpointing_disable before transformers 5.23)."
            )

    def _encode_streaming(self, encoder_inputs: dict, stream: SourceStream):
        """Runs the encoder without `output_hidden_states`, handing each source to `stream` as it is computed
        (HiddenStateHooks). Returns the encoder's output, or None when its layers cannot be found or hooked or
        another thread's pass went through them meanwhile; the stream is then unusable and the caller takes the plain
        path, which gives the same values (to rounding for token-level DWAtt, whose readout stream, and whose batched
        value path, sum the same terms in another order)."""
        found = encoder_layers(self.encoder, self._num_states - 1)
        if found is None:
            return None
        last = self._num_states - 1
        slots = {index: slot for slot, index in enumerate(self._source_indices)}

        def on_state(index: int, hidden: torch.Tensor) -> None:
            if index in slots and index != last:  # source L is the final output, after any final norm: added below
                stream.add(slots[index], hidden)

        state_shape = (*encoder_inputs["attention_mask"].shape, self.config.encoder_config.hidden_size)  # (B, T, d)
        with HiddenStateHooks(*found, state_shape, on_state) as hooks:
            encoder_outputs = self.encoder(**encoder_inputs, output_hidden_states=False, return_dict=True)
        if not hooks.complete:
            return None
        encoder_outputs.last_hidden_state = self._checked_state(
            "last_hidden_state", encoder_outputs.last_hidden_state, encoder_inputs["attention_mask"].shape)
        if last in slots:
            stream.add(slots[last], encoder_outputs.last_hidden_state)
        return encoder_outputs

    def _checked_state(self, name: str, state: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        """`state` from the encoder as (B, T, d) for inputs of `batch_shape` (B, T): cut to T tokens where the encoder
        padded the sequence at its end (BigBird's block-sparse attention pads its hidden_states, not its
        last_hidden_state); refused, with what to do, where the encoder changed the sequence length or the width."""
        batch, length = batch_shape
        width = self.config.encoder_config.hidden_size
        encoder = type(self.encoder).__name__
        if state.dim() != 3 or state.shape[0] != batch or state.shape[1] < length:
            raise ValueError(
                f"The encoder {encoder} returned {name} of shape {tuple(state.shape)} for {batch} sequence(s) of {length} "
                "tokens: dwatt fuses one state per input token from every layer, and this encoder changes the sequence "
                "length (as Funnel's pooling and CANINE's downsampling do). Wrap an encoder that keeps it."
            )
        if state.shape[2] != width:
            raise ValueError(
                f"The encoder {encoder} returned {name} {state.shape[2]} wide, where its config's hidden_size is "
                f"{width} (an output projection, as OPT's word_embed_proj_dim, or Reformer's two reversible streams): "
                "dwatt needs every hidden state at the encoder's hidden size. Wrap an encoder whose outputs keep it."
            )
        return state[:, :length] if state.shape[1] > length else state

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_fusion_weights: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        fusion_positions: Optional[torch.Tensor] = None,
        fused_readout: Optional[nn.Linear] = None,
        cache=None,
        past_key_values=None,
    ) -> Union[DWAttModelOutput, tuple]:
        r"""
        output_fusion_weights (`bool`, *optional*):
            Also return the per-token weights over depth (dwatt, scalar_mix), shape (B, T', H, n).
        fusion_positions (`torch.LongTensor` of shape `(B,)`, *optional*):
            Fuse only at one position per sequence (pooled sequence classification); `last_hidden_state` is then
            (B, 1, d).
        fused_readout (`nn.Linear`, *optional*):
            A linear map the caller applies to the fused state (the token classifier, when its dropout is off).
            No-grad inference on a head that can (DWAtt) then computes that map of the fused state source by source
            without ever holding the fused state: it keeps k floats a token per source instead of its value
            bottleneck. The output's `fused_readout` is then set and its `last_hidden_state` None; otherwise
            `fused_readout` is None and `last_hidden_state` the fused state, as without the argument.
        cache (`transformers.Cache`, *optional*; `past_key_values` before transformers 5.24):
            A key/value prefix of P positions for every encoder layer, as PEFT's prefix tuning passes its virtual
            tokens; handed to the encoder (which must take one, as BERT and GPT-2 do), whose queries then also
            attend to it, as in the stock model. `attention_mask` may be (B, T) or (B, P + T); the fusion reads
            the T input tokens only.
        """
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict)
        if self.training and not self._frozen_head_checked and torch.is_grad_enabled() and not _is_compiling():
            self._warn_once_if_only_the_head_is_frozen()
        prefix = key_value_prefix(cache, past_key_values)
        given_mask = attention_mask  # (B, T) or (B, P + T)
        num_prefix = 0 if prefix is None else prefix_length(prefix)
        if prefix is not None:
            self._check_prefix_can_be_used()
            attention_mask = token_attention_mask(attention_mask, num_prefix, _num_input_tokens(input_ids, inputs_embeds))
        if attention_mask is None:
            attention_mask = _all_real_tokens(input_ids, inputs_embeds)
        encoder_attention_mask = (attention_mask if prefix is None
                                  else mask_with_prefix_columns(given_mask, attention_mask, num_prefix))

        encoder_inputs = {
            "input_ids": input_ids,
            "attention_mask": encoder_attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "inputs_embeds": inputs_embeds,
        }
        encoder_inputs = {key: value for key, value in encoder_inputs.items() if value is not None}
        if output_attentions:
            encoder_inputs["output_attentions"] = True
        if self._encoder_takes_use_cache:
            encoder_inputs["use_cache"] = False
        if prefix is not None:
            encoder_inputs[self._encoder_cache_argument] = prefix
        # Inference: fuse the sources as the encoder computes them, so that it need not keep all of its hidden states
        # (pooled classifiers keep one position of each; Concat and ScalarMix only a running sum). Training takes the
        # plain path, whose hidden states the backward pass needs anyway; so does a head PEFT has wrapped, and so does
        # a forward torch.compile traces (hooks that call back into Python would break its graph at every layer).
        # So does a head that accelerate dispatched (device_map over several devices, offloading): its hooks move
        # inputs and load weights around the head's forward only. (Looking for hooks costs microseconds.) So does a
        # pass under a key/value prefix: the encoder appends to that cache, so it must not run a second time on it
        # should streaming give up.
        hooked = [module for module in self.fusion_classifier.modules() if hasattr(module, "_hf_hook")]
        if (self._needs_hidden_states and not output_hidden_states and not torch.is_grad_enabled()
                and isinstance(self.fusion_classifier, FusionHead) and not _is_compiling() and not hooked
                and prefix is None):
            reading_out = fused_readout is not None and fusion_positions is None
            readout_stream = self.fusion_classifier.readout_stream(fused_readout) if reading_out else None
            stream_reads_out = readout_stream is not None  # its finish gives fused_readout(fused), not the fused state
            stream = (readout_stream if stream_reads_out
                      else self.fusion_classifier.source_stream(attention_mask, fusion_positions))
            encoder_outputs = self._encode_streaming(encoder_inputs, stream)
            if encoder_outputs is not None:
                fused, weights = stream.finish(encoder_outputs.last_hidden_state, bool(output_fusion_weights))
                output = DWAttModelOutput(
                    last_hidden_state=None if stream_reads_out else fused,
                    attentions=getattr(encoder_outputs, "attentions", None) if output_attentions else None,
                    fusion_weights=weights,
                    fused_readout=fused if stream_reads_out else None,
                )
                return output if return_dict else output.to_tuple()

        request_states = self._needs_hidden_states or bool(output_hidden_states)
        encoder_outputs = self.encoder(**encoder_inputs, output_hidden_states=request_states, return_dict=True)
        hidden_states = getattr(encoder_outputs, "hidden_states", None) if request_states else None
        if request_states and (hidden_states is None or len(hidden_states) != self._num_states):
            found = "no hidden_states" if hidden_states is None else f"{len(hidden_states)} hidden states"
            raise ValueError(
                f"The encoder {type(self.encoder).__name__} returned {found} with output_hidden_states=True; dwatt needs "
                f"all {self._num_states}: the embedding output and one per layer ({self._num_states - 1}). Use an "
                "encoder class that returns hidden_states; encoders whose layers are grouped in blocks that change the "
                "sequence length (Funnel, CANINE) cannot be wrapped."
            )
        batch_shape = attention_mask.shape  # (B, T)
        last_hidden_state = self._checked_state("last_hidden_state", encoder_outputs.last_hidden_state, batch_shape)
        # Source L is the encoder's final output, which for some families (ModernBERT) follows a final norm that the
        # raw hidden_states[L] has not been through.
        sources = [
            last_hidden_state if i == self._num_states - 1
            else self._checked_state(f"hidden_states[{i}]", hidden_states[i], batch_shape)
            for i in self._source_indices
        ] if self._head_reads_sources else []
        with OffloadedWeights(hooked):
            fused, weights = self.fusion_classifier(
                last_hidden_state, sources, attention_mask, positions=fusion_positions,
                output_weights=bool(output_fusion_weights),
            )
        output = DWAttModelOutput(
            last_hidden_state=fused,
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=getattr(encoder_outputs, "attentions", None) if output_attentions else None,
            fusion_weights=weights,
        )
        return output if return_dict else output.to_tuple()


class DWAttClassificationHead(nn.Module):
    """Pooled state → [dense → activation →] dropout → projection (BERT pooler / RoBERTa head layout)."""

    def __init__(self, config: DWAttConfig, dropout: float):
        super().__init__()
        hidden_size = config.encoder_config.hidden_size
        self.dense = nn.Linear(hidden_size, hidden_size) if config.classifier_dense else None
        self.activation = None
        if config.classifier_dense:  # classifier_activation=None: the dense layer alone
            activation = config.classifier_activation
            self.activation = ACT2FN[activation] if activation is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(pooled)  # (B, d)
        if self.dense is not None:
            hidden = self.dropout(self.activation(self.dense(hidden)))
        return self.out_proj(hidden)  # (B, num_labels)


def _classifier_dropout(config: DWAttConfig) -> float:
    if config.classifier_dropout is not None:
        return float(config.classifier_dropout)
    return encoder_hidden_dropout(config.encoder_config)


def sequence_classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, config: DWAttConfig, reduction: str = "mean", label_smoothing: float = 0.0
) -> torch.Tensor:
    """The loss of transformers' sequence classifiers: regression, single- or multi-label by `config.problem_type`
    (inferred from the labels and set on the config the first time, as transformers does). `label_smoothing`, for
    single-label classification, is the Trainer's `label_smoothing_factor`."""
    labels = labels.to(logits.device)
    num_labels = logits.shape[-1]
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if label_smoothing and config.problem_type != "single_label_classification":
        raise ValueError(
            f"label_smoothing_factor={label_smoothing} smooths the classes of a single-label classifier; this model's "
            f"problem_type is {config.problem_type!r}: train it without label smoothing."
        )
    if config.problem_type == "regression":
        if num_labels == 1:
            # (B,) against (B,): labels come as (B,) or (B, 1), and a batch of one must not broadcast.
            return F.mse_loss(logits.reshape(-1), labels.reshape(-1).to(logits.dtype), reduction=reduction)
        return F.mse_loss(logits, labels.to(logits.dtype), reduction=reduction)
    if config.problem_type == "single_label_classification":  # class indices, int64 for torch (int32 counts too)
        return F.cross_entropy(
            logits.view(-1, num_labels), labels.view(-1).long(), reduction=reduction, label_smoothing=label_smoothing)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction=reduction)


class DWAttForSequenceClassification(DWAttPreTrainedModel):
    """DWAtt model with a sequence classification / regression head on the pooled fused state."""

    def __init__(self, config: DWAttConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dwatt = DWAttModel(config)
        self.classifier = DWAttClassificationHead(config, _classifier_dropout(config))
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_fusion_weights: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache=None,
        past_key_values=None,
    ) -> Union[DWAttSequenceClassifierOutput, tuple]:
        r"""
        labels (`torch.LongTensor` of shape `(B,)`, *optional*):
            Class indices (or float targets for regression, or multi-hot rows for multi-label classification).
            In training mode with `config.attention_guidance_heads`, `loss` adds the weighted guidance term (also
            returned alone as `attention_guidance_loss`, with or without labels).
        output_fusion_weights (`bool`, *optional*):
            Also return the weights over depth at the pooled position(s).
        cache (*optional*; `past_key_values` before transformers 5.24):
            A key/value prefix for the encoder (PEFT's prefix tuning), see `DWAttModel.forward`.
        """
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict)
        pooling = self.config.pooling
        prefix, token_mask = self._split_prefix(cache, past_key_values, attention_mask, input_ids, inputs_embeds)
        if token_mask is None:
            pad_token_id = getattr(self.config.encoder_config, "pad_token_id", None)
            if pooling == "last" and input_ids is not None and pad_token_id is not None:
                token_mask = _mask_after_last_real_token(input_ids, pad_token_id)
            else:
                token_mask = _all_real_tokens(input_ids, inputs_embeds)
        positions = None if pooling == "mean" else pooling_positions(token_mask, pooling)
        guiding = self._guides_attention()
        outputs = self.dwatt(
            input_ids=input_ids,
            attention_mask=token_mask if attention_mask is None else attention_mask,  # (B, T), or (B, P + T)
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions or guiding,
            output_hidden_states=output_hidden_states,
            output_fusion_weights=output_fusion_weights,
            return_dict=True,
            fusion_positions=positions,
            cache=prefix,
        )
        fused = outputs.last_hidden_state  # (B, 1, d) at the pooled position, or (B, T, d) for mean pooling
        if positions is not None:
            pooled = fused[:, 0]
        else:
            mask = token_mask.to(fused.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (fused * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(pooled)  # (B, num_labels)

        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.config)
        guidance = None
        if guiding:
            loss, guidance = self._add_attention_guidance(loss, outputs.attentions, token_mask)
        output = DWAttSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions if output_attentions else None,
            fusion_weights=outputs.fusion_weights,
            attention_guidance_loss=guidance,
        )
        return output if return_dict else output.to_tuple()


class DWAttForTokenClassification(DWAttPreTrainedModel):
    """DWAtt model with a token classification head (NER, POS) on the fused state of every token."""

    def __init__(self, config: DWAttConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dwatt = DWAttModel(config)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.encoder_config.hidden_size, config.num_labels)
        self.post_init()

    def _classifier_is_linear_readout(self) -> bool:
        """Whether the logits are exactly `classifier(fused)`, one linear map (dropout off, the classifier a plain
        nn.Linear and not, say, wrapped by PEFT), which DWAttModel may then apply source by source in inference."""
        classifier = self.classifier
        # accelerate's hooks (device_map, offload) move the classifier's weights or inputs in its forward only; a
        # forward hook of the user's (reading the fused state, say) must see the classifier run on the fused state.
        plain_linear = (type(classifier) is nn.Linear and not hasattr(classifier, "_hf_hook")
                        and not classifier._forward_hooks and not classifier._forward_pre_hooks)
        return plain_linear and (not self.dropout.training or self.dropout.p == 0)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_fusion_weights: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache=None,
        past_key_values=None,
    ) -> Union[DWAttTokenClassifierOutput, tuple]:
        r"""
        labels (`torch.LongTensor` of shape `(B, T)`, *optional*):
            Label index per token; -100 marks tokens without a label (padding, sub-word continuations).
            In training mode with `config.attention_guidance_heads`, `loss` adds the weighted guidance term (also
            returned alone as `attention_guidance_loss`, with or without labels).
        output_fusion_weights (`bool`, *optional*):
            Also return the per-token weights over depth, shape (B, T, H, n).
        cache (*optional*; `past_key_values` before transformers 5.24):
            A key/value prefix for the encoder (PEFT's prefix tuning), see `DWAttModel.forward`.
        """
        output_attentions, output_hidden_states, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict)
        guiding = self._guides_attention()
        prefix, token_mask = self._split_prefix(cache, past_key_values, attention_mask, input_ids, inputs_embeds)
        if guiding and token_mask is None:
            token_mask = _all_real_tokens(input_ids, inputs_embeds)
        outputs = self.dwatt(
            input_ids=input_ids,
            attention_mask=token_mask if attention_mask is None else attention_mask,  # (B, T), or (B, P + T)
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions or guiding,
            output_hidden_states=output_hidden_states,
            output_fusion_weights=output_fusion_weights,
            return_dict=True,
            fused_readout=self.classifier if self._classifier_is_linear_readout() else None,
            cache=prefix,
        )
        if outputs.fused_readout is not None:  # the classifier applied source by source (inference, DWAtt)
            logits = outputs.fused_readout  # (B, T, num_labels)
        else:
            logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device).view(-1).long()  # class indices: int64 for torch (int32 labels too)
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels, ignore_index=-100)
        guidance = None
        if guiding:
            loss, guidance = self._add_attention_guidance(loss, outputs.attentions, token_mask)
        output = DWAttTokenClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions if output_attentions else None,
            fusion_weights=outputs.fusion_weights,
            attention_guidance_loss=guidance,
        )
        return output if return_dict else output.to_tuple()


# `save_pretrained` copies this file and configuration_dwatt.py next to the weights for classes with an auto class.
DWAttConfig.register_for_auto_class()
DWAttModel.register_for_auto_class("AutoModel")
DWAttForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
DWAttForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")

__all__ = [
    "DWAttPreTrainedModel",
    "DWAttModel",
    "DWAttForSequenceClassification",
    "DWAttForTokenClassification",
    "DWAttModelOutput",
    "DWAttSequenceClassifierOutput",
    "DWAttTokenClassifierOutput",
    "FUSION_HEADS",
]
