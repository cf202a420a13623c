"""Tiny random encoder configs, one per supported family, for the unit-test matrix."""

from transformers import (
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    ModernBertConfig,
    MPNetConfig,
    PretrainedConfig,
    Qwen2Config,
    RobertaConfig,
)

VOCAB_SIZE = 99
HIDDEN = 32
LAYERS = 3
HEADS = 4
INTERMEDIATE = 37


def tiny_encoder_config(family: str) -> PretrainedConfig:
    """A 3-layer, 32-wide random encoder config of `family` (eval-friendly: dropout left at the family default)."""
    common = dict(vocab_size=VOCAB_SIZE, pad_token_id=0)
    if family == "bert":
        return BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, **common)
    if family == "roberta":
        return RobertaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, bos_token_id=2, eos_token_id=3, **common)
    if family == "distilbert":
        return DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=INTERMEDIATE, **common)
    if family == "deberta-v2":
        return DebertaV2Config(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
            relative_attention=True, position_buckets=16, max_relative_positions=32, pos_att_type=["p2c", "c2p"],
            **common,
        )
    if family == "electra":
        return ElectraConfig(embedding_size=16, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, **common)
    if family == "mpnet":
        return MPNetConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE, **common)
    if family == "modernbert":
        return ModernBertConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
            global_attn_every_n_layers=2, local_attention=8, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
            **common,
        )
    if family == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTERMEDIATE, n_positions=64, bos_token_id=1, eos_token_id=1, **common)
    if family == "qwen2":
        return Qwen2Config(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
            intermediate_size=INTERMEDIATE, max_position_embeddings=64, **common,
        )
    raise KeyError(family)


ENCODER_FAMILIES = ["bert", "roberta", "distilbert", "deberta-v2", "electra", "mpnet", "modernbert", "gpt2", "qwen2"]
# Decoder-only families are exercised for sequence classification (their natural use) and token classification.
DECODER_FAMILIES = {"gpt2", "qwen2"}
