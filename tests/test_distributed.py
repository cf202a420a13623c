"""Distributed data parallel training of the example scripts on CPU (gloo): 2 processes match 1 process.

Each case trains the tiny encoder with dropout off (so that both runs draw the same numbers: with dropout the masks
depend on how the batch is split over processes), once in a single process with batch 4 and once in 2 processes
with batch 2 each (the same global batch, the same shuffled order), and compares the logged loss at every step, the
final weights and the evaluation loss.

CI runs two cases, one per launcher and script, together covering activation checkpointing on and off. The whole
matrix (2 launchers x 2 scripts x checkpointing on/off, 8 runs) takes a few minutes on 2 cores: set
DWATT_DISTRIBUTED_MATRIX=1 to run it.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from script_fixtures import CONLL_SENTENCES, SENTIMENT, tiny_encoder_folder, write_conll, write_csv

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ACCELERATE_CONFIG = REPO / "examples" / "accelerate_ddp_cpu.yaml"
FULL_MATRIX = os.environ.get("DWATT_DISTRIBUTED_MATRIX", "") == "1"

# 8 sentences / rows: 2 optimizer steps of global batch 4 per epoch, no ragged last batch to split over processes.
# Evaluation: 4 examples one at a time, so that the evaluation loss (the mean of per-batch mean losses) does
# not depend on how the examples are grouped into batches on the processes.
NER_SENTENCES = CONLL_SENTENCES + [
    [("Jones", "B-PER"), ("played", "O"), ("in", "O"), ("Paris", "B-LOC")],
    [("France", "B-LOC"), ("won", "O"), ("the", "O"), ("match", "O"), ("yesterday", "O")],
]
TRAINING = [
    "--report_to", "none", "--num_train_epochs", "2", "--learning_rate", "5e-3", "--seed", "0", "--save_strategy", "no",
    "--logging_steps", "1", "--per_device_eval_batch_size", "1", "--classifier_dropout", "0", "--use_cpu",
    "--ddp_find_unused_parameters", "False", "--ddp_timeout", "240", "--do_train", "--do_eval",
]
# Loss per step and evaluation loss: relative; weights: absolute, after 4 AdamW steps of lr 5e-3. The two runs differ
# only in the order of float additions (gradients all-reduced over 2 processes vs summed in one batch). Observed
# (8 cases, and 6 other encoder initialisations): loss gap <= 1.4e-7 relative; weights mostly <= 1e-6 apart, up to 3e-6 for weights with
# near-zero gradients and 1.3e-5 for the attention key biases, whose exact gradient is 0 (softmax ignores a shift
# shared by all scores of a query): AdamW divides by sqrt(v) and so scales float noise up to ~lr * noise / eps.
# A real mismatch (another batch, loss normalisation, an unsynchronised gradient) moves weights by ~lr = 5e-3 a step.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)  # the same random encoder whatever ran before
    encoder = tiny_encoder_folder(root / "encoder")
    config = json.loads((encoder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (encoder / "config.json").write_text(json.dumps(config))
    (root / "conll").mkdir()
    write_conll(root / "conll" / "train.txt", NER_SENTENCES)
    # Sentences of 5 and 6 words side by side on the two processes: a token-weighted evaluation loss would differ.
    write_conll(root / "conll" / "valid.txt", [NER_SENTENCES[i] for i in (2, 4, 3, 5)])
    write_csv(root / "train.csv", SENTIMENT)
    write_csv(root / "dev.csv", SENTIMENT[:4])
    return root


def script_arguments(script: str, root: Path, output: Path) -> list[str]:
    common = ["--encoder_name_or_path", str(root / "encoder"), "--output_dir", str(output), *TRAINING]
    if script == "ner":
        return [str(REPO / "run_ner_dwatt.py"), "--dataset_name", str(root / "conll"), "--fusion", "dwatt", *common]
    return [str(REPO / "run_glue_dwatt.py"), "--train_file", str(root / "train.csv"), "--validation_file", str(root / "dev.csv"),
            "--max_seq_length", "16", "--fusion", "scalar_mix", *common]


# A whole launch takes ~15 s on 2 cores. A collective that one process never joins fails after --ddp_timeout (240 s,
# honoured on CPU by the scripts' own process-group setup); anything else stuck is stopped here, with its stacks.
LAUNCH_TIMEOUT_S = 300


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Runs `command`; past LAUNCH_TIMEOUT_S the test fails with the Python stack of every process of the launch."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    env.pop("PYTHONPATH", None)
    # A session of its own: the signals sent to a stuck launch (below) cannot reach pytest.
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Signal the workers themselves: they may sit in sessions of their own, and one that outlives its launcher
        # keeps the output pipes open, so that reading them would never end (seen: a worker deadlocked at exit).
        stuck = launch_processes(process.pid)
        # SIGABRT makes faulthandler (PYTHONFAULTHANDLER) print every thread's stack before the process dies.
        signal_all(stuck, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            signal_all(stuck, signal.SIGKILL)
            stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"{' '.join(command[:3])} … ran past {LAUNCH_TIMEOUT_S} s; the stacks at that moment and the output "
                    f"before:\n{stdout[-3000:]}\n{stderr[-12000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def launch_processes(launcher_pid: int) -> list[psutil.Process]:
    """The launcher and all its descendants (torchrun starts its workers in sessions of their own)."""
    try:
        launcher = psutil.Process(launcher_pid)
        return [launcher, *launcher.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_all(processes: list[psutil.Process], signum: int) -> None:
    for target in processes:
        try:
            target.send_signal(signum)
        except psutil.Error:
            pass


def launch(launcher: str, script: str, root: Path, output: Path, extra: list[str],
           single_batch_size: int = 4) -> subprocess.CompletedProcess:
    arguments = script_arguments(script, root, output) + extra
    if launcher == "single":
        command = [sys.executable, *arguments, "--per_device_train_batch_size", str(single_batch_size)]
    elif launcher == "torchrun":
        command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *arguments,
                   "--per_device_train_batch_size", "2"]
    else:
        command = [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG), "--main_process_port",
                   str(free_port()), *arguments, "--per_device_train_batch_size", "2"]
    result = run(command, root)
    assert result.returncode == 0, f"{launcher} {script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def summary(output: Path) -> dict:
    state = json.loads((output / "trainer_state.json").read_text())
    return {
        "losses": [entry["loss"] for entry in state["log_history"] if "loss" in entry],
        "depth_weights": [[value for key, value in sorted(entry.items()) if key.startswith("depth_weight_")]
                          for entry in state["log_history"] if "loss" in entry],
        "weights": load_file(output / "model.safetensors"),
        "eval": json.loads((output / "eval_results.json").read_text()),
    }


CI_CASES = [("torchrun", "ner", True), ("accelerate", "glue", False)]
MATRIX = [(launcher, script, checkpointing) for launcher in ("torchrun", "accelerate") for script in ("ner", "glue")
          for checkpointing in (True, False)]


@pytest.mark.parametrize(
    "launcher,script,checkpointing",
    [pytest.param(*case, marks=[] if case in CI_CASES or FULL_MATRIX else pytest.mark.skip(reason="set DWATT_DISTRIBUTED_MATRIX=1"))
     for case in MATRIX],
    ids=[f"{launcher}-{script}-{'ckpt' if checkpointing else 'no-ckpt'}" for launcher, script, checkpointing in MATRIX],
)
def test_two_processes_match_one(workspace, tmp_path, launcher, script, checkpointing):
    extra = ["--activation_checkpointing"] if checkpointing else []
    reference_dir, distributed_dir = tmp_path / "single", tmp_path / launcher
    launch("single", script, workspace, reference_dir, extra)
    result = launch(launcher, script, workspace, distributed_dir, extra)
    assert "distributed training: True" in result.stdout + result.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in result.stdout + result.stderr

    reference, distributed = summary(reference_dir), summary(distributed_dir)
    assert len(reference["losses"]) == len(distributed["losses"]) == 4
    assert distributed["losses"] == pytest.approx(reference["losses"], rel=LOSS_RTOL)
    # The depth weights logged during training (dwatt: probe batch; scalar_mix: its parameters) agree as well.
    assert all(len(entry) >= 3 for entry in reference["depth_weights"])
    for got, expected in zip(distributed["depth_weights"], reference["depth_weights"]):
        assert got == pytest.approx(expected, abs=1e-5)
    assert reference["weights"].keys() == distributed["weights"].keys()
    worst = max((reference["weights"][k] - distributed["weights"][k]).abs().max().item() for k in reference["weights"])
    loss_gap = max(abs(a - b) / abs(b) for a, b in zip(distributed["losses"], reference["losses"]))
    print(f"{launcher}/{script}/checkpointing={checkpointing}: max weight difference {worst:.2e}, loss rel. gap {loss_gap:.2e}")
    assert worst < WEIGHT_ATOL, worst
    moved = max((reference["weights"][k] - load_initial(workspace, k)).abs().max().item()
                for k in reference["weights"] if k.startswith("dwatt.encoder."))
    assert moved > 10 * WEIGHT_ATOL  # training moved the encoder far more than the tolerance
    assert distributed["eval"]["eval_samples"] == reference["eval"]["eval_samples"] == 4
    assert distributed["eval"]["eval_loss"] == pytest.approx(reference["eval"]["eval_loss"], rel=LOSS_RTOL)
    quality = "eval_f1" if script == "ner" else "eval_accuracy"
    assert distributed["eval"][quality] == reference["eval"][quality]
    assert (distributed_dir / "README.md").is_file() and (distributed_dir / "modeling_dwatt.py").is_file()
    # The depth-weight report: each process measured half of the dev set, and the sums were added up.
    mean_weights = [json.loads((folder / "depth_weights.json").read_text())["mean_weights"]
                    for folder in (reference_dir, distributed_dir)]
    assert mean_weights[1] == pytest.approx(mean_weights[0], abs=2e-6)
    card = (distributed_dir / "README.md").read_text()  # says how to start the run again, and its global batch
    assert "torchrun --nproc_per_node=2 " in card
    assert re.search(r"\| total_train_batch_size\s*\| 4\s*\|", card) and re.search(r"\| processes\s*\| 2\s*\|", card)


def test_attention_guidance_two_processes_match_one_with_the_same_micro_batches(workspace, tmp_path):
    """With attention guidance each micro-batch's guidance (a mean over its token pairs) is weighted by its share of
    the step's labelled tokens. 2 processes × batch 2 then match 1 process × batch 2 with 2 accumulation steps, which
    sees the same micro-batches (accelerate deals the sampler's batches to the processes in turn), exactly — the
    big batch of 4 would match only the task loss."""
    guidance = ["--attention_guidance_heads", "1,1,1,1", "--attention_guidance_constant_steps", "2"]
    reference_dir, distributed_dir = tmp_path / "single", tmp_path / "torchrun"
    launch("single", "ner", workspace, reference_dir, [*guidance, "--gradient_accumulation_steps", "2"], single_batch_size=2)
    launch("torchrun", "ner", workspace, distributed_dir, guidance)
    reference, distributed = summary(reference_dir), summary(distributed_dir)
    assert len(reference["losses"]) == len(distributed["losses"]) == 4
    assert distributed["losses"] == pytest.approx(reference["losses"], rel=LOSS_RTOL)
    worst = max((reference["weights"][k] - distributed["weights"][k]).abs().max().item() for k in reference["weights"])
    assert worst < WEIGHT_ATOL, worst
    state = json.loads((reference_dir / "trainer_state.json").read_text())
    logs = [entry for entry in state["log_history"] if "loss" in entry]
    # Guidance ran, on the schedule: λ = 1 for 2 steps, then (4 − 2) / 2 and (4 − 3) / 2.
    assert [entry["attention_guidance_scale"] for entry in logs] == pytest.approx([1.0, 1.0, 1.0, 0.5])
    assert all(entry["attention_guidance_loss"] > 0 for entry in logs)


def test_lora_two_processes_match_one(workspace, tmp_path):
    """--use_lora under torchrun (not tested before): the adapter's gradients are all-reduced like any others, and the
    main process writes the merged model, lora.json and the card."""
    lora = ["--use_lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--learning_rate", "5e-2"]
    reference_dir, distributed_dir = tmp_path / "single", tmp_path / "torchrun"
    launch("single", "ner", workspace, reference_dir, lora)
    launch("torchrun", "ner", workspace, distributed_dir, lora)
    reference, distributed = summary(reference_dir), summary(distributed_dir)
    assert len(reference["losses"]) == len(distributed["losses"]) == 4
    assert distributed["losses"] == pytest.approx(reference["losses"], rel=LOSS_RTOL)
    assert reference["weights"].keys() == distributed["weights"].keys()
    worst = max((reference["weights"][k] - distributed["weights"][k]).abs().max().item() for k in reference["weights"])
    assert worst < WEIGHT_ATOL, worst
    # LoRA moved the merged query/value weights, and nothing else of the encoder.
    moved = {k for k in reference["weights"] if k.startswith("dwatt.encoder.")
             and (reference["weights"][k] - load_initial(workspace, k)).abs().max().item() > 10 * WEIGHT_ATOL}
    assert moved and all(k.endswith(("query.weight", "value.weight")) for k in moved), moved
    assert json.loads((distributed_dir / "lora.json").read_text())["merged"] is True
    assert "## LoRA" in (distributed_dir / "README.md").read_text()


def load_initial(root: Path, key: str) -> torch.Tensor:
    encoder = load_file(root / "encoder" / "model.safetensors")
    return encoder[key[len("dwatt.encoder."):]]


def test_multi_process_launch_on_cpu_without_use_cpu_fails_clearly(workspace, tmp_path):
    """Without --use_cpu transformers would run 2 independent single-process trainings into one folder."""
    arguments = [a for a in script_arguments("glue", workspace, tmp_path / "out") if a != "--use_cpu"]
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *arguments]
    result = run(command, workspace)
    assert result.returncode != 0
    assert "pass --use_cpu" in result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("launcher,form", [("torchrun", "flags"), ("accelerate", "json")])
def test_ddp_timeout_holds_on_cpu(tmp_path, monkeypatch, launcher, form):
    """transformers passes --ddp_timeout on only for GPUs; the scripts' parsing joins the gloo group with it first.

    Process 1 never enters the barrier: with a 5 s timeout process 0's barrier must fail within seconds. Without
    the fix it waits ~60 s, until process 1 gives up and exits."""
    settings = {"output_dir": str(tmp_path / "out"), "use_cpu": True, "ddp_timeout": 5, "report_to": "none"}
    if form == "json":
        (tmp_path / "args.json").write_text(json.dumps(settings))
        arguments = [str(tmp_path / "args.json")]
    else:
        arguments = ["--output_dir", settings["output_dir"], "--use_cpu", "--ddp_timeout", "5", "--report_to", "none"]
    if launcher == "torchrun":
        command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())]
    else:
        command = [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG), "--main_process_port",
                   str(free_port())]
    monkeypatch.setenv("DDP_TIMEOUT_CHECK_DONE_FILE", str(tmp_path / "done"))  # run() passes os.environ on
    result = run([*command, str(REPO / "tests" / "ddp_timeout_check.py"), *arguments], tmp_path)
    lines = [line for line in result.stdout.splitlines() if line.startswith("DDP_TIMEOUT_CHECK ")]
    assert result.returncode == 0 and len(lines) == 1, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    report = json.loads(lines[0].removeprefix("DDP_TIMEOUT_CHECK "))
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["outcome"].startswith("raised"), report
    assert 4 <= report["elapsed_s"] <= 25, report
    assert "of 2 joins the gloo group at" in result.stderr and "--ddp_timeout=5s" in result.stderr


def test_a_plain_run_with_leftover_launcher_variables_says_what_it_waits_for(tmp_path, monkeypatch):
    """RANK/WORLD_SIZE/MASTER_* left in the environment of a plain `python` run: the process waits for partners that
    were never started. It used to wait in silence (30 minutes by default); it now says so, and --ddp_timeout holds."""
    monkeypatch.setenv("DDP_TIMEOUT_CHECK_DONE_FILE", str(tmp_path / "done"))
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
        monkeypatch.setenv(name, value)
    result = run([sys.executable, str(REPO / "tests" / "ddp_timeout_check.py"), "--output_dir", str(tmp_path / "out"),
                  "--use_cpu", "--ddp_timeout", "5", "--report_to", "none"], tmp_path)
    assert result.returncode != 0
    assert "process 0 of 2 joins the gloo group at 127.0.0.1" in result.stderr
