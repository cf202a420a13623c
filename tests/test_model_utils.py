"""Measurements on a model in training (depth weights, attention patterns, sentence vectors) put it back in training
mode, also when they fail: a model left in eval mode would go on training without dropout."""

import pytest
import torch
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config
from transformers import AutoModel

from dwatt import DWAttConfig, DWAttForTokenClassification
from dwatt.attention_patterns import pattern_mass
from dwatt.depth_weights import depth_weight_sums
from dwatt.model_utils import eval_mode
from dwatt.variability import sentence_vectors


def _dwatt_model() -> torch.nn.Module:
    return DWAttForTokenClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), fusion="dwatt", num_labels=3))


MEASUREMENTS = {
    "depth_weight_sums": (_dwatt_model, lambda model, batches: depth_weight_sums(model, batches)),
    "pattern_mass": (lambda: AutoModel.from_config(tiny_encoder_config("bert"), attn_implementation="eager"),
                     lambda model, batches: pattern_mass(model, batches)),
    "sentence_vectors": (lambda: AutoModel.from_config(tiny_encoder_config("bert")),
                         lambda model, batches: sentence_vectors(model, batches)),
}


@pytest.mark.parametrize("name", sorted(MEASUREMENTS))
def test_a_measurement_restores_training_mode_when_it_succeeds_and_when_it_fails(name):
    make_model, measure = MEASUREMENTS[name]
    model = make_model().train()
    good = {"input_ids": torch.randint(0, VOCAB_SIZE, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long),
            "special_tokens_mask": torch.zeros(2, 5, dtype=torch.long)}
    bad = {**good, "input_ids": torch.full((2, 5), VOCAB_SIZE + 10)}  # beyond the embedding table: IndexError
    modes = []
    hooked = model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    measure(model, [good])
    assert modes == [False] and model.training
    with pytest.raises(IndexError):
        measure(model, [good, bad])
    assert model.training and all(module.training for module in model.modules())
    hooked.remove()


def test_eval_mode_keeps_a_model_in_eval_mode_that_was_in_it():
    model = torch.nn.Sequential(torch.nn.Dropout(0.5)).eval()
    with eval_mode(model):
        assert not model.training
    assert not model.training
