"""The names of the heads are listed in several modules (the config's choices, the model's classes, the card's
descriptions and settings, the scripts' options, the depth-weight reports): a new head, or a changed one, must reach
all of them. The lists are checked against each other and against what each head does."""

import dataclasses

import pytest
import torch
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config

from dwatt import DWAttConfig, DWAttForTokenClassification
from dwatt.configuration_dwatt import FUSION_CHOICES, RESIDUAL_FUSIONS
from dwatt.depth_weights import WEIGHTED_FUSIONS
from dwatt.model_arguments import NEW_HEAD_OPTIONS, TRAINING_HEAD_OPTIONS, ModelArguments
from dwatt.model_card import FUSION_DESCRIPTIONS, HEAD_SETTINGS
from dwatt.modeling_dwatt import FUSION_HEADS


def test_every_list_of_heads_names_the_same_heads():
    assert set(FUSION_HEADS) == set(FUSION_CHOICES) == set(FUSION_DESCRIPTIONS) == set(HEAD_SETTINGS)


def test_every_setting_on_the_card_is_a_config_field_and_a_script_option():
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"))
    options = {field.name for field in dataclasses.fields(ModelArguments)}
    for fusion, settings in HEAD_SETTINGS.items():
        for name in settings:
            assert hasattr(config, name), (fusion, name)
            assert name in options and name in NEW_HEAD_OPTIONS + TRAINING_HEAD_OPTIONS, (fusion, name)


@pytest.mark.parametrize("fusion", FUSION_CHOICES)
def test_weighted_and_residual_heads_are_the_ones_that_behave_so(fusion):
    """WEIGHTED_FUSIONS: the heads that return weights over depth; RESIDUAL_FUSIONS: the heads that
    `zero_init_residual` starts as exactly the last layer (the others refuse it)."""
    encoder_config = tiny_encoder_config("bert")
    input_ids = torch.randint(0, VOCAB_SIZE, (2, 6))
    model = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion=fusion, num_labels=3)).eval()
    with torch.no_grad():
        weights = model(input_ids=input_ids, output_fusion_weights=True).fusion_weights
    assert (weights is not None) == (fusion in WEIGHTED_FUSIONS)

    if fusion not in RESIDUAL_FUSIONS:
        with pytest.raises(ValueError, match="zero_init_residual"):
            DWAttConfig(encoder_config=encoder_config, fusion=fusion, zero_init_residual=True)
        return
    model = DWAttForTokenClassification(DWAttConfig(encoder_config=encoder_config, fusion=fusion, num_labels=3,
                                                    zero_init_residual=True)).eval()
    with torch.no_grad():
        fused = model.dwatt(input_ids=input_ids).last_hidden_state
        last = model.dwatt.encoder(input_ids=input_ids).last_hidden_state
    torch.testing.assert_close(fused, last, rtol=0, atol=0)
