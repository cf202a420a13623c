"""fusion="last" is the baseline: it must equal the stock transformers classifier with the same weights."""

import pytest
import torch
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification

# How each family's stock sequence classifier is laid out: (dense module path, activation, output module path).
# dense=None means a single linear layer without bias (decoder-only "score" heads).
SEQUENCE_HEADS = {
    "bert": ("bert.pooler.dense", "tanh", "classifier"),
    "roberta": ("classifier.dense", "tanh", "classifier.out_proj"),
    "mpnet": ("classifier.dense", "tanh", "classifier.out_proj"),
    "electra": ("classifier.dense", "gelu", "classifier.out_proj"),
    "distilbert": ("pre_classifier", "relu", "classifier"),
    "deberta-v2": ("pooler.dense", "gelu", "classifier"),
    "gpt2": (None, None, "score"),
    "qwen2": (None, None, "score"),
}
# ModernBERT's stock heads add a LayerNorm'd prediction head, a different baseline; it is compared with its
# stock base model below instead.
TOKEN_FAMILIES = ["bert", "roberta", "mpnet", "electra", "distilbert", "deberta-v2", "gpt2", "qwen2"]


def batch():
    input_ids = torch.randint(4, VOCAB_SIZE, (3, 8))
    attention_mask = torch.ones_like(input_ids)
    input_ids[-1, 5:] = 0  # pad id 0: decoder heads find the last real token from it
    attention_mask[-1, 5:] = 0
    return input_ids, attention_mask


def copy_encoder(ours, stock):
    """Loads the stock model's base-model weights into our encoder; every one of our encoder weights must be set."""
    state = stock.base_model.state_dict()
    result = ours.dwatt.encoder.load_state_dict(state, strict=False)
    assert not result.missing_keys, result.missing_keys
    assert all(key.startswith("pooler.") for key in result.unexpected_keys), result.unexpected_keys


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
def test_last_equals_stock_token_classifier(family):
    encoder_config = tiny_encoder_config(family)
    encoder_config.num_labels = 5
    stock = AutoModelForTokenClassification.from_config(encoder_config).eval()
    ours = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion="last", num_labels=5)).eval()
    copy_encoder(ours, stock)
    stock_linear = getattr(stock, "classifier", None) or stock.score
    ours.classifier.load_state_dict(stock_linear.state_dict())
    input_ids, attention_mask = batch()
    labels = torch.randint(0, 5, input_ids.shape).masked_fill(attention_mask == 0, -100)
    with torch.no_grad():
        expected = stock(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)


@pytest.mark.parametrize("family", sorted(SEQUENCE_HEADS))
def test_last_equals_stock_sequence_classifier(family):
    dense_path, activation, out_path = SEQUENCE_HEADS[family]
    encoder_config = tiny_encoder_config(family)
    encoder_config.num_labels = 4
    stock = AutoModelForSequenceClassification.from_config(encoder_config).eval()
    config = DWAttConfig(
        encoder_config=encoder_config,
        fusion="last",
        num_labels=4,
        classifier_dense=dense_path is not None,
        classifier_activation=activation or "tanh",
    )
    ours = DWAttForSequenceClassification(config).eval()
    copy_encoder(ours, stock)
    stock_out = stock.get_submodule(out_path)
    with torch.no_grad():
        ours.classifier.out_proj.weight.copy_(stock_out.weight)
        if stock_out.bias is not None:
            ours.classifier.out_proj.bias.copy_(stock_out.bias)
        else:
            ours.classifier.out_proj.bias.zero_()
    if dense_path is not None:
        ours.classifier.dense.load_state_dict(stock.get_submodule(dense_path).state_dict())
    input_ids, attention_mask = batch()
    labels = torch.tensor([0, 3, 1])
    with torch.no_grad():
        expected = stock(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = ours(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        # Without a mask the decoder classifiers pool the last token that is not padding (pad_token_id).
        expected_unmasked, got_unmasked = stock(input_ids=input_ids).logits, ours(input_ids=input_ids).logits
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)
    torch.testing.assert_close(got_unmasked, expected_unmasked)


@pytest.mark.parametrize("model_class", [DWAttForTokenClassification, DWAttForSequenceClassification])
def test_last_on_modernbert_equals_stock_base_model_plus_linear_head(model_class):
    encoder_config = tiny_encoder_config("modernbert")
    stock = AutoModel.from_config(encoder_config).eval()
    ours = model_class(DWAttConfig(encoder_config=encoder_config, fusion="last", num_labels=3, classifier_dense=False)).eval()
    ours.dwatt.encoder.load_state_dict(stock.state_dict())
    input_ids, attention_mask = batch()
    with torch.no_grad():
        hidden = stock(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        linear = ours.classifier if model_class is DWAttForTokenClassification else ours.classifier.out_proj
        expected = linear(hidden) if model_class is DWAttForTokenClassification else linear(hidden[:, 0])
        torch.testing.assert_close(ours(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


def test_classifier_activation_none_is_the_dense_layer_alone():
    """`classifier_activation=None` (which the config accepts) is dense → projection with nothing between; it failed
    when the model was built (no activation is named None)."""
    encoder_config = tiny_encoder_config("bert")
    stock = AutoModel.from_config(encoder_config, add_pooling_layer=False).eval()
    ours = DWAttForSequenceClassification(
        DWAttConfig(encoder_config=encoder_config, fusion="last", num_labels=3, classifier_activation=None)).eval()
    ours.dwatt.encoder.load_state_dict(stock.state_dict())
    input_ids, attention_mask = batch()
    with torch.no_grad():
        first = stock(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]  # (B, d)
        dense, out = ours.classifier.dense, ours.classifier.out_proj
        expected = first @ dense.weight.T + dense.bias
        expected = expected @ out.weight.T + out.bias
        torch.testing.assert_close(ours(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


def test_last_equals_stock_roberta_classifier_in_training_too():
    """In train mode, with the same seed, the same dropout draws: dropout on the pooled state and after the dense layer,
    at the encoder's hidden dropout when classifier_dropout is None (RobertaClassificationHead)."""
    encoder_config = tiny_encoder_config("roberta")
    encoder_config.num_labels = 4
    stock = AutoModelForSequenceClassification.from_config(encoder_config).train()
    ours = DWAttForSequenceClassification(DWAttConfig(encoder_config=encoder_config, fusion="last", num_labels=4)).train()
    copy_encoder(ours, stock)
    ours.classifier.dense.load_state_dict(stock.classifier.dense.state_dict())
    ours.classifier.out_proj.load_state_dict(stock.classifier.out_proj.state_dict())
    assert ours.classifier.dropout.p == encoder_config.hidden_dropout_prob > 0
    input_ids, attention_mask = batch()
    torch.manual_seed(7)
    expected = stock(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.manual_seed(7)
    got = ours(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got, expected)
    torch.manual_seed(8)
    assert not torch.allclose(ours(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
