"""The depth-weight report (`depth_weights.json`, the callback's logs): the mean weight per source over the pooled
positions of a sequence classifier or the real tokens of a token classifier, counted here by hand."""

import pytest
import torch
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification
from dwatt.depth_weights import depth_weight_sums


def _batches():
    torch.manual_seed(1)
    masks = [torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])]
    return [{"input_ids": torch.randint(0, VOCAB_SIZE, (2, 6)), "attention_mask": mask, "labels": torch.zeros(2)}
            for mask in masks]


@pytest.mark.parametrize("model_class", [DWAttForSequenceClassification, DWAttForTokenClassification])
def test_sums_count_each_pooled_sequence_once_and_each_real_token_once(model_class):
    model = model_class(DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="dwatt", num_labels=2,
                                    dwatt_num_heads=2)).eval()
    batches = _batches()
    total, count = torch.zeros(model.config.num_encoder_layers + 1), 0
    with torch.no_grad():
        for batch in batches:
            weights = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_fusion_weights=True).fusion_weights  # (B, T', heads, n)
            for row in range(2):
                positions = [0] if model_class is DWAttForSequenceClassification else \
                    [t for t in range(6) if batch["attention_mask"][row, t]]
                for t in positions:
                    total += weights[row, t].mean(dim=0)
                    count += 1
    got_total, got_count = depth_weight_sums(model, batches)
    assert got_count == count == (4 if model_class is DWAttForSequenceClassification else 6 + 2 + 3 + 6)
    torch.testing.assert_close(got_total, total)

    first_total, first_count = depth_weight_sums(model, batches, max_batches=1)  # the first batch only
    only_first, _ = depth_weight_sums(model, batches[:1])
    torch.testing.assert_close(first_total, only_first)
    assert first_count == (2 if model_class is DWAttForSequenceClassification else 8)
