"""Each fusion head against an independent, hand-written computation of its equations (DESIGN §1)."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config
from torch.utils.flop_counter import FlopCounterMode

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification, DWAttModel


def encoder_states(model: DWAttModel, input_ids, attention_mask):
    """hidden_states straight from the encoder, with index L = the encoder's final output."""
    out = model.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return list(out.hidden_states[:-1]) + [out.last_hidden_state]


def batch(length=7):
    input_ids = torch.randint(4, VOCAB_SIZE, (2, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    return input_ids, attention_mask


def layer_norm(x, weight, bias, eps):
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    return [(v - mean) / math.sqrt(var + eps) * w + b for v, w, b in zip(x, weight, bias)]


def bottleneck_mlp_vector(mlp, x):
    """W · LN(gelu(U · x)) for one vector, written with plain torch ops on the module's parameters."""
    hidden = F.gelu(mlp.proj_in.weight @ x + mlp.proj_in.bias)
    hidden = torch.tensor(layer_norm(hidden.tolist(), mlp.norm.weight.tolist(), mlp.norm.bias.tolist(), mlp.norm.eps))
    return mlp.proj_out.weight @ hidden + mlp.proj_out.bias


def dwatt_value_vector(transforms, mlp_index, source_index, x):
    """v_n = LN_n(W_n · LN'_n(gelu(U_n · x))) for one vector, from source n's slices of the stacked parameters."""
    m, n = mlp_index, source_index
    hidden = F.gelu(transforms.proj_in_weight[m] @ x + transforms.proj_in_bias[m])
    hidden = layer_norm(hidden.tolist(), transforms.norm_weight[m].tolist(), transforms.norm_bias[m].tolist(), transforms.eps)
    v = transforms.proj_out_weight[m] @ torch.tensor(hidden) + transforms.proj_out_bias[m]
    weight, bias = transforms.value_norm_weight[n].tolist(), transforms.value_norm_bias[n].tolist()
    return torch.tensor(layer_norm(v.tolist(), weight, bias, transforms.eps))


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"dwatt_num_heads": 2, "dwatt_scale_scores": True},
        {"dwatt_shared_value_mlp": True, "fusion_layers": [0, 2, -1]},
    ],
    ids=["paper-defaults", "2-heads-scaled", "shared-value-mlp"],
)
@pytest.mark.parametrize("path", ["streamed-inference", "streamed-token-logits", "per_source", "batched"])
def test_dwatt_matches_a_per_layer_loop(settings, path):
    """The fused state h = z_L + Σ_n a_n v_n per token and head against a loop over tokens, heads and sources; for
    the token classifier's streamed inference, which reads every source out through the classifier, its logits
    against C h + b."""
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="dwatt", num_labels=3, **settings)
    token_logits = path == "streamed-token-logits"
    classifier = DWAttForTokenClassification(config).eval() if token_logits else None
    model = classifier.dwatt if token_logits else DWAttModel(config).eval()
    head = model.fusion_classifier
    grad = path in ("per_source", "batched")  # no grad: inference streams the sources; with grad: the training
    if grad:  # forward, with the value transforms one source at a time (the CPU's default) or all sources per operator
        head.value_path = path
    with torch.no_grad():  # make the parameters non-trivial
        for p in [*head.parameters(), *(classifier.classifier.parameters() if token_logits else [])]:
            p.add_(0.3 * torch.randn_like(p))
    if token_logits:  # 3 labels: the stream keeps H·3 floats a token per source, fewer than the bottleneck's 16
        assert head.readout_stream(classifier.classifier) is not None
    input_ids, attention_mask = batch()
    with torch.set_grad_enabled(grad):
        fused = (classifier or model)(input_ids=input_ids, attention_mask=attention_mask, output_fusion_weights=True)
    with torch.no_grad():
        states = encoder_states(model, input_ids, attention_mask)
    fused = type(fused)(**{key: value.detach() for key, value in fused.items() if value is not None})
    sources = [states[i] for i in config.fusion_source_indices]
    heads = config.dwatt_num_heads
    head_dim = 32 // heads
    keys = [(head.key_proj.weight @ head.depth_embeddings[n]).detach() for n in range(len(sources))]  # k_n = W_K p_n

    for b in range(2):
        for t in range(7):
            z_last = states[-1][b, t]
            query = (1 + F.elu(z_last + bottleneck_mlp_vector(head.query_mlp, z_last))).detach()
            values = []
            for n, source in enumerate(sources):
                mlp_index = 0 if settings.get("dwatt_shared_value_mlp") else n
                values.append(dwatt_value_vector(head.value_transforms, mlp_index, n, source[b, t]))
            expected = z_last.clone()
            for h in range(heads):
                part = slice(h * head_dim, (h + 1) * head_dim)
                scores = [float(query[part] @ k[part]) for k in keys]
                if settings.get("dwatt_scale_scores"):
                    scores = [s / math.sqrt(head_dim) for s in scores]
                top = max(scores)
                exps = [math.exp(s - top) for s in scores]
                weights = [e / sum(exps) for e in exps]
                torch.testing.assert_close(fused.fusion_weights[b, t, h], torch.tensor(weights), atol=1e-5, rtol=1e-4)
                expected[part] += sum(w * v[part] for w, v in zip(weights, values))
            if token_logits:
                expected_logits = classifier.classifier.weight @ expected + classifier.classifier.bias
                torch.testing.assert_close(fused.logits[b, t], expected_logits.detach(), atol=1e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(fused.last_hidden_state[b, t], expected, atol=1e-4, rtol=1e-4)


def test_scalar_mix_with_uniform_weights_is_the_mean_of_its_sources():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="scalar_mix")
    model = DWAttModel(config).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        fused = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = encoder_states(model, input_ids, attention_mask)
    torch.testing.assert_close(fused, sum(states) / 4)


def test_scalar_mix_hand_computation():
    # w = [0.1, 0.2, 0.3], gamma = 0.5 over layers 1..3: softmax by hand.
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="scalar_mix", fusion_layers=[1, 2, 3])
    model = DWAttModel(config).eval()
    with torch.no_grad():
        model.fusion_classifier.mix_logits.copy_(torch.tensor([0.1, 0.2, 0.3]))
        model.fusion_classifier.gamma.fill_(0.5)
    exps = [math.exp(0.1), math.exp(0.2), math.exp(0.3)]
    s = [e / sum(exps) for e in exps]  # 0.3006, 0.3322, 0.3672
    assert abs(s[0] - 0.30060960) < 1e-6
    input_ids, attention_mask = batch()
    with torch.no_grad():
        fused = model(input_ids=input_ids, attention_mask=attention_mask, output_fusion_weights=True)
        states = encoder_states(model, input_ids, attention_mask)
    expected = 0.5 * (s[0] * states[1] + s[1] * states[2] + s[2] * states[3])
    torch.testing.assert_close(fused.last_hidden_state, expected)
    torch.testing.assert_close(fused.fusion_weights[0, 0, 0], torch.tensor(s))


def test_scalar_mix_layer_norm_uses_each_sequences_real_tokens():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="scalar_mix", scalar_mix_layer_norm=True)
    model = DWAttModel(config).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        fused = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = encoder_states(model, input_ids, attention_mask)
    for b in range(2):
        length = int(attention_mask[b].sum())
        normalised = []
        for state in states:
            # One mean/variance over all unmasked elements, no affine: AllenNLP's, per sequence instead of per batch.
            real = state[b, :length].double()
            mean = real.mean()
            std = ((real - mean) ** 2).mean().add(1e-12).sqrt()
            normalised.append((state[b].double() - mean) / std)
        expected = (sum(normalised) / 4).float()
        torch.testing.assert_close(fused[b, :length], expected[:length], atol=1e-5, rtol=1e-5)


def test_concat_matches_explicit_concatenation():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="concat", concat_hidden_size=20)
    model = DWAttModel(config).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        fused = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        states = encoder_states(model, input_ids, attention_mask)
        mlp = model.fusion_classifier.mlp
        concatenated = torch.cat(states, dim=-1)  # (B, T, 4d)
        hidden = F.layer_norm(F.gelu(concatenated @ mlp.proj_in.weight.T + mlp.proj_in.bias), (20,), mlp.norm.weight, mlp.norm.bias, mlp.norm.eps)
        expected = states[-1] + hidden @ mlp.proj_out.weight.T + mlp.proj_out.bias
    assert mlp.proj_in.weight.shape == (20, 4 * 32)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)


def test_concat_weight_gradient_matches_explicit_concatenation():
    """The head applies U block by block; its gradient must still be the full Linear(n·d, width)'s."""
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="concat", concat_hidden_size=20)
    model = DWAttModel(config).eval()
    head = model.fusion_classifier
    input_ids, attention_mask = batch()
    with torch.no_grad():
        states = encoder_states(model, input_ids, attention_mask)
    upstream = torch.randn(2, 7, 32)
    fused, _ = head(states[-1], states, attention_mask)
    (fused * upstream).sum().backward()
    weight = head.mlp.proj_in.weight.detach().clone().requires_grad_(True)
    hidden = F.gelu(torch.cat(states, dim=-1) @ weight.T + head.mlp.proj_in.bias.detach())
    expected = states[-1] + F.layer_norm(hidden, (20,), head.mlp.norm.weight.detach(), head.mlp.norm.bias.detach(), head.mlp.norm.eps) @ head.mlp.proj_out.weight.detach().T
    (expected * upstream).sum().backward()
    torch.testing.assert_close(head.mlp.proj_in.weight.grad, weight.grad, atol=1e-5, rtol=1e-5)


def test_deeper_matches_a_hand_written_post_ln_transformer_layer():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="deeper", deeper_num_layers=2)
    model = DWAttModel(config).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        fused = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x = encoder_states(model, input_ids, attention_mask)[-1]
        for layer in model.fusion_classifier.layers:
            q, k, v = (x @ layer.attn_qkv.weight.T + layer.attn_qkv.bias).split(32, dim=-1)
            split = lambda t: t.view(2, 7, 4, 8).transpose(1, 2)  # (B, H, T, 8)
            scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(8)
            scores = scores.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
            attended = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(2, 7, 32)
            x = F.layer_norm(x + attended @ layer.attn_out.weight.T + layer.attn_out.bias, (32,), layer.attn_norm.weight, layer.attn_norm.bias, 1e-12)
            ffn = F.gelu(x @ layer.ffn_in.weight.T + layer.ffn_in.bias) @ layer.ffn_out.weight.T + layer.ffn_out.bias
            x = F.layer_norm(x + ffn, (32,), layer.ffn_norm.weight, layer.ffn_norm.bias, 1e-12)
    assert model.fusion_classifier.layers[0].ffn_in.out_features == 37  # the encoder's intermediate size
    torch.testing.assert_close(fused[0], x[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[1, :4], x[1, :4], atol=1e-5, rtol=1e-5)


# ---- parameter and FLOP accounting ---------------------------------------------------------------------------


def expected_parameters(fusion: str, d: int, n: int, intermediate: int) -> int:
    """The heads' parameter counts, written from their equations."""
    mlp = lambda d_in, width, d_out: d_in * width + width + 2 * width + width * d_out + d_out  # U, LN, W
    if fusion == "dwatt":
        width = d // 2
        return (n + 1) * mlp(d, width, d) + n * 2 * d + n * 24 + 24 * d  # MLPs, value LNs, depth emb., W_K
    if fusion == "concat":
        return mlp(n * d, d, d)
    if fusion == "scalar_mix":
        return n + 1
    if fusion == "deeper":
        return 3 * d * d + 3 * d + d * d + d + 2 * d + d * intermediate + intermediate + intermediate * d + d + 2 * d
    return 0


@pytest.mark.parametrize("fusion", ["dwatt", "concat", "scalar_mix", "deeper", "last"])
def test_parameter_count_matches_the_equations(fusion):
    model = DWAttModel(DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion=fusion))
    cost = model.fusion_cost(seq_len=16)
    assert cost["added_parameters"] == expected_parameters(fusion, d=32, n=4, intermediate=37)
    assert cost["added_parameters"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("fusion_classifier."))


def measured_fused_flops(model, length):
    input_ids = torch.randint(4, VOCAB_SIZE, (2, length))
    attention_mask = torch.ones_like(input_ids)
    states = encoder_states(model, input_ids, attention_mask)
    sources = [states[i] for i in model.config.fusion_source_indices]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.fusion_classifier(states[-1], sources, attention_mask)
    return counter.get_total_flops()


@pytest.mark.parametrize("fusion", ["dwatt", "concat", "scalar_mix", "deeper", "last"])
def test_flops_per_token_agree_with_torch_flop_counter(fusion):
    """torch counts matrix products; the weighted sums over sources and CPU attention are added by hand here."""
    model = DWAttModel(DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion=fusion)).eval()
    d, n = 32, 4
    short, long = 8, 24
    # The difference between two lengths removes per-batch constants (DWAtt's key projection W_K p).
    per_token = (measured_fused_flops(model, long) - measured_fused_flops(model, short)) / (2 * (long - short))
    if fusion in ("dwatt", "scalar_mix"):
        per_token += 2 * n * d  # Σ_n a_n v_n is an elementwise running sum, invisible to the counter
    if fusion == "deeper":
        # Attention is not counted on CPU: scores and weighted values, 2·T·d each per token; the T-dependence is
        # checked at a single length since the slope above cancels it only partly.
        per_token_short = measured_fused_flops(model, short) / (2 * short) + 4 * short * d
        assert model.fusion_cost(short)["flops_per_token"] == per_token_short
        return
    assert model.fusion_cost(16)["flops_per_token"] == per_token


@pytest.mark.parametrize("pooling", ["first", "last", "mean"])
def test_pooled_flops_follow_the_pooling(pooling):
    """A sequence classifier fuses its pooled position only, or every token under mean pooling: the head's FLOPs
    counted by torch in a whole forward (Concat's are all matrix products, so torch sees them all) are fusion_cost's."""
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="concat", pooling=pooling, num_labels=2)
    model = DWAttForSequenceClassification(config).eval()
    length = 10
    input_ids = torch.randint(4, VOCAB_SIZE, (1, length))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    measured = sum(counter.get_flop_counts()["DWAttForSequenceClassification.dwatt.fusion_classifier"].values())
    fused_positions = length if pooling == "mean" else 1
    assert measured == fused_positions * model.dwatt.fusion_cost(length)["flops_per_token"]
    assert model.dwatt.fusion_cost(length)["flops_per_pooled_sequence"] == measured


def test_deeper_pooled_flops_agree_with_torch_flop_counter():
    """Pooled, the last extra layer projects keys and values for every token but queries, FFN and norms at one."""
    model = DWAttModel(DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="deeper", deeper_num_layers=2)).eval()
    d, length = 32, 12
    input_ids = torch.randint(4, VOCAB_SIZE, (2, length))
    attention_mask = torch.ones_like(input_ids)
    states = encoder_states(model, input_ids, attention_mask)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fused, _ = model.fusion_classifier(states[-1], [], attention_mask, positions=torch.tensor([0, 3]))
    assert fused.shape == (2, 1, d)
    # Attention is not counted on CPU: 4·T·d per query, for T queries in the first layer and 1 in the last.
    per_sequence = counter.get_total_flops() / 2 + 4 * length * d * (length + 1)
    assert model.fusion_cost(length)["flops_per_pooled_sequence"] == per_sequence
    assert per_sequence < 0.7 * length * model.fusion_cost(length)["flops_per_token"]  # 1 full layer of 2, and a bit


def test_cost_summary_against_the_formula_written_out():
    """Encoder FLOPs per token = 2 x (parameters without the lookup tables) + 4 x layers x T x d (attention scores and
    weighted values); the pooled fraction divides the head's FLOPs for one sequence by the encoder's for all T tokens."""
    from dwatt.accounting import cost_summary

    config = tiny_encoder_config("bert")
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=config, fusion="dwatt", num_labels=2))
    seq_len = 16
    tables = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * config.hidden_size
    encoder_parameters = sum(p.numel() for p in model.dwatt.encoder.parameters())
    encoder_flops = 2 * (encoder_parameters - tables) + 4 * config.num_hidden_layers * seq_len * config.hidden_size
    summary = cost_summary(model, seq_len)
    assert summary["encoder_flops_per_token"] == encoder_flops
    head = model.dwatt.fusion_classifier
    assert summary["flops_fraction"] == pytest.approx(head.flops_per_token(seq_len) / encoder_flops)
    assert summary["pooled_flops_fraction"] == pytest.approx(head.flops_per_pooled_sequence(seq_len) / (encoder_flops * seq_len))
    assert summary["added_parameters_fraction"] == pytest.approx(head.num_added_parameters() / encoder_parameters)
