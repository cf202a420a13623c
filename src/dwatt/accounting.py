"""Parameter and FLOP accounting of a DWAtt model: what the fusion head costs next to its encoder.

FLOPs count 2 per multiply-accumulate of matrix products (nanoGPT's convention); the heads count their own in
`FusionHead.flops_per_token`. The encoder estimate is 2 x (non-embedding parameters) for its linear layers plus
4 x layers x seq_len x d for attention scores and weighted values.
"""

from torch import nn


def embedding_parameters(encoder: nn.Module) -> int:
    """Parameters of the encoder's lookup tables (token, position and segment embeddings): no FLOPs per token."""
    return sum(module.weight.numel() for module in encoder.modules() if isinstance(module, nn.Embedding))


def encoder_flops_per_token(encoder: nn.Module, seq_len: int) -> int:
    """Forward FLOPs per token of a transformer encoder for sequences of `seq_len` tokens (estimate, see above)."""
    config = encoder.config
    parameters = sum(p.numel() for p in encoder.parameters())
    attention = 4 * config.num_hidden_layers * seq_len * config.hidden_size
    return 2 * (parameters - embedding_parameters(encoder)) + attention


def cost_summary(model: nn.Module, seq_len: int = 128) -> dict:
    """Added parameters and FLOPs per token of the model's fusion head, and their share of the encoder's."""
    base = model.base_model  # DWAttModel (also inside the task classes)
    encoder_parameters = sum(p.numel() for p in base.encoder.parameters())
    encoder_flops = encoder_flops_per_token(base.encoder, seq_len)
    head = base.fusion_cost(seq_len)
    return {
        **head,
        "seq_len": seq_len,
        "encoder_parameters": encoder_parameters,
        "encoder_flops_per_token": encoder_flops,
        "added_parameters_fraction": head["added_parameters"] / encoder_parameters,
        "flops_fraction": head["flops_per_token"] / encoder_flops,
        # Sequence classification fuses the pooled position only (every token with pooling="mean"): the head's FLOPs
        # per sequence over the encoder's for all its tokens.
        "pooled_flops_fraction": head["flops_per_pooled_sequence"] / (encoder_flops * seq_len),
    }
