"""Encoders outside the unit matrix whose layouts broke dwatt's assumptions: each is now handled or refused with a
message that says why, never fused into a silently wrong result."""

import pytest
import torch
import transformers
from tiny_encoders import HEADS, HIDDEN, INTERMEDIATE, LAYERS, VOCAB_SIZE
from transformers import AutoConfig, AutoModel

from dwatt import DWAttConfig, DWAttForTokenClassification

COMMON = dict(vocab_size=VOCAB_SIZE, pad_token_id=0)
SIZES = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE)


def token_model(encoder_config, fusion: str = "dwatt") -> DWAttForTokenClassification:
    torch.manual_seed(0)
    return DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion=fusion, num_labels=3)).eval()


def logits_with_and_without_grad(model, input_ids):
    """No-grad inference may fuse the states as the encoder computes them (hooks); with grad it takes the plain path."""
    with torch.no_grad():
        inference = model(input_ids=input_ids).logits
    return inference, model(input_ids=input_ids).logits.detach()


@pytest.mark.parametrize("fusion", ["dwatt", "concat", "scalar_mix"])
def test_xlnet_infers_as_it_trains_when_the_batch_is_as_long_as_its_sequences(fusion):
    """XLNet's layers work on (T, B, d): with B == T the hooks took those states for (B, T, d) and fused them
    transposed (logits off by 0.15)."""
    encoder_config = transformers.XLNetConfig(d_model=HIDDEN, n_layer=LAYERS, n_head=HEADS, d_inner=INTERMEDIATE, **COMMON)
    model = token_model(encoder_config, fusion)
    for batch, length in ((4, 4), (2, 7)):
        inference, plain = logits_with_and_without_grad(model, torch.randint(4, VOCAB_SIZE, (batch, length)))
        torch.testing.assert_close(inference, plain, rtol=0, atol=1e-6)


def test_bigbird_block_sparse_hidden_states_are_cut_to_the_input_length():
    """Block-sparse BigBird pads its hidden_states (not its last_hidden_state) to whole blocks: 18 for 17 tokens."""
    encoder_config = transformers.BigBirdConfig(
        attention_type="block_sparse", block_size=2, num_random_blocks=1, max_position_embeddings=64, **SIZES, **COMMON)
    model = token_model(encoder_config, "scalar_mix")
    input_ids = torch.randint(4, VOCAB_SIZE, (2, 17))
    head = model.dwatt.fusion_classifier
    with torch.no_grad():
        head.mix_logits.copy_(torch.randn(LAYERS + 1))
        encoded = model.dwatt.encoder(input_ids=input_ids, output_hidden_states=True)
        assert encoded.hidden_states[1].shape[1] == 18  # what the fix is for
        logits, plain = logits_with_and_without_grad(model, input_ids)
        # ScalarMix by hand over the first 17 positions of each state; source L is last_hidden_state (17 long).
        states = [*(state[:, :17] for state in encoded.hidden_states[:-1]), encoded.last_hidden_state]
        mixed = head.gamma * sum(w * state for w, state in zip(head.mix_logits.softmax(-1), states))
        expected = model.classifier(mixed)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["opt-projected", "reformer"])
@pytest.mark.parametrize("grad", [False, True])
def test_encoders_whose_outputs_change_width_are_refused(family, grad):
    """OPT with word_embed_proj_dim != hidden_size (opt-350m) projects its output; Reformer's is its two reversible
    streams side by side. ScalarMix/Concat used to slice the wider state silently (Reformer)."""
    if family == "reformer":
        encoder_config = transformers.ReformerConfig(
            hidden_size=HIDDEN, num_attention_heads=HEADS, attention_head_size=8, attn_layers=["local"] * LAYERS,
            feed_forward_size=INTERMEDIATE, axial_pos_embds=False, local_attn_chunk_length=4, local_num_chunks_before=1,
            local_num_chunks_after=0, max_position_embeddings=64, is_decoder=False, **COMMON)
    else:
        encoder_config = transformers.OPTConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=INTERMEDIATE,
            word_embed_proj_dim=16, max_position_embeddings=64, **COMMON)
    for fusion in ("scalar_mix", "concat", "last"):
        model = token_model(encoder_config, fusion)
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=r"wide, where its config's hidden_size is 32"):
            model(input_ids=torch.randint(4, VOCAB_SIZE, (2, 8)))


@pytest.mark.parametrize("family", ["funnel-base", "canine"])
def test_encoders_that_change_the_sequence_length_are_refused(family):
    if family == "canine":
        encoder_config = transformers.CanineConfig(
            downsampling_rate=2, num_hash_buckets=64, num_hash_functions=4, local_transformer_stride=4, **SIZES)
        model_class, fusion = DWAttForTokenClassification, "dwatt"
    else:  # FunnelBaseModel: no upsampling decoder, so its blocks halve the length and the output stays pooled
        encoder_config = transformers.FunnelConfig(
            architectures=["FunnelBaseModel"], block_sizes=[1, 1, 1], num_decoder_layers=1, d_model=HIDDEN, n_head=HEADS,
            d_head=8, d_inner=INTERMEDIATE, **COMMON)
        model_class, fusion = DWAttForTokenClassification, "last"  # "last" returned (2, 2, 3) logits for 8 tokens
    torch.manual_seed(0)
    model = model_class(DWAttConfig(encoder_config=encoder_config, fusion=fusion, num_labels=3)).eval()
    if family == "funnel-base":
        model.dwatt.encoder = transformers.FunnelBaseModel(encoder_config).eval()
    with pytest.raises(ValueError, match="changes the sequence length|cannot be wrapped"):
        model(input_ids=torch.randint(4, VOCAB_SIZE, (2, 8)))


def test_funnel_with_its_decoder_runs_the_last_layer_heads_and_refuses_those_that_read_intermediate_layers():
    """FunnelModel upsamples back to the input length, so `last` and `deeper` (which read the last state only) work;
    its hidden states come per block and per decoder layer, not one per layer, so the fusing heads say why they
    cannot run."""
    encoder_config = transformers.FunnelConfig(
        architectures=["FunnelModel"], block_sizes=[1, 1, 1], num_decoder_layers=1, d_model=HIDDEN, n_head=HEADS,
        d_head=8, d_inner=INTERMEDIATE, **COMMON)
    input_ids = torch.randint(4, VOCAB_SIZE, (2, 8))
    for fusion in ("dwatt", "concat", "scalar_mix", "last", "deeper"):
        torch.manual_seed(0)
        model = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion=fusion, num_labels=3)).eval()
        assert type(model.dwatt.encoder).__name__ == "FunnelModel"
        if fusion in ("last", "deeper"):
            assert model(input_ids=input_ids).logits.shape == (2, 8, 3)
        else:
            with pytest.raises(ValueError, match=r"FunnelModel returned 6 hidden states .* needs all 4.*cannot be wrapped"):
                model(input_ids=input_ids)


@pytest.mark.parametrize("model_type", ["starcoder2", "stablelm", "cohere", "codegen", "biogpt", "mpt", "xlnet"])
def test_causal_decoders_outside_the_known_list_pool_their_last_token(model_type):
    """They pooled token 0 (a classifier that sees one token of a causal model); the stock classifiers pool the last."""
    assert DWAttConfig(encoder_config=AutoConfig.for_model(model_type), num_labels=2).pooling == "last"


@pytest.mark.parametrize("model_type", ["bert", "roberta", "albert", "electra", "deberta-v2", "modernbert", "xlm-roberta", "big_bird"])
def test_bidirectional_encoders_pool_their_first_token(model_type):
    assert DWAttConfig(encoder_config=AutoConfig.for_model(model_type), num_labels=2).pooling == "first"


@pytest.mark.parametrize("model_type", ["t5", "bart", "mt5"])
def test_encoder_decoder_models_are_refused_when_the_config_is_made(model_type):
    """A T5Model wrapped as the encoder failed in its decoder at the first forward ("You must specify exactly one of
    input_ids or inputs_embeds")."""
    with pytest.raises(ValueError, match="encoder-decoder model .* Wrap an encoder-only model"):
        DWAttConfig(encoder_config=AutoConfig.for_model(model_type), num_labels=2)


def test_deeper_on_an_encoder_without_attention_heads_is_refused():
    with pytest.raises(ValueError, match='fusion="deeper" adds transformer layers .* has no num_attention_heads'):
        DWAttConfig(encoder_config=transformers.FNetConfig(**{k: v for k, v in SIZES.items() if k != "num_attention_heads"}),
                    fusion="deeper")


@pytest.mark.parametrize("family", ["longformer", "gpt_neo"])
def test_encoder_num_layers_cuts_per_layer_settings_too(tmp_path, family):
    """Longformer's attention_window and GPT-Neo's attention_types list every layer; the cut config kept all of them,
    and transformers refused it. The cut model's states equal the full encoder's first layers."""
    if family == "longformer":
        encoder_config = transformers.LongformerConfig(
            attention_window=[4, 4, 8], bos_token_id=2, eos_token_id=3, sep_token_id=3, **SIZES, **COMMON)
    else:
        encoder_config = transformers.GPTNeoConfig(
            hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, attention_types=[[["global", "local"], 1], [["global"], 1]],
            max_position_embeddings=64, window_size=4, **COMMON)
    torch.manual_seed(0)
    stock = AutoModel.from_config(encoder_config).eval()
    stock.save_pretrained(tmp_path)
    model = DWAttForTokenClassification.from_encoder_pretrained(str(tmp_path), num_labels=3, encoder_num_layers=2).eval()
    cut = model.config.encoder_config
    if family == "longformer":
        assert cut.attention_window == [4, 4]
    else:
        assert (cut.attention_layers, cut.attention_types) == (["global", "local"], [[["global", "local"], 1]])
    input_ids = torch.randint(4, VOCAB_SIZE, (2, 9))
    with torch.no_grad():
        expected = stock(input_ids=input_ids, output_hidden_states=True).hidden_states
        kept = model.dwatt.encoder(input_ids=input_ids, output_hidden_states=True).hidden_states
    for layer in range(2):
        torch.testing.assert_close(kept[layer], expected[layer], rtol=0, atol=0)
