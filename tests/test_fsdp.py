"""FSDP on CPU: what can be checked here and what cannot.

- Checked (tests/fsdp_check.py under torchrun, 2 processes, gloo): a DWAtt model sharded with FSDP2's
  `fully_shard` computes the same depth weights, takes the same training step as the unsharded model, and its
  gathered full state dict saves with the code files and `auto_map` and reloads to the same logits.
- Not checkable on CPU: `Trainer` with `--fsdp`. accelerate 1.15 enables FSDP only for GPU-like distributed types;
  on CPU it drops the plugin and Trainer trains with DDP. The scripts therefore refuse --fsdp on CPU (tested below).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


from test_distributed import BIN, script_arguments, workspace  # noqa: F401  (the fixture)

CHECK = Path(__file__).with_name("fsdp_check.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fsdp2_sharded_model_trains_and_saves_like_the_unsharded_one(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), str(CHECK), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2
    for task, plain in (("token", "DWAttForTokenClassification"), ("sequence", "DWAttForSequenceClassification")):
        case = report[task]
        assert case["class"] == f"FSDP{plain}" and case["unsharded_class"] == plain
        assert case["class_after_save"] == case["class"]  # the class swap is undone after saving
        assert case["depth_weights_difference"] < 1e-6
        # Gradients reduce-scattered over 2 ranks vs one batch: float noise only; a wrong normalisation or a missing
        # gradient would be off by ~lr x gradient (lr 0.5).
        assert case["weights_difference"] < 1e-5
        assert {"modeling_dwatt.py", "configuration_dwatt.py", "model.safetensors", "config.json"} <= set(case["files"])
        assert not any(name.startswith("_fsdp") for name in case["files"])
        assert case["auto_map"]["AutoModelForTokenClassification"] == "modeling_dwatt.DWAttForTokenClassification"
        assert case["auto_map"]["AutoModelForSequenceClassification"] == "modeling_dwatt.DWAttForSequenceClassification"
        assert case["reloaded_logits_difference"] < 1e-5


def test_scripts_refuse_fsdp_on_cpu(workspace, tmp_path):  # noqa: F811
    arguments = script_arguments("glue", workspace, tmp_path / "out") + ["--fsdp", "full_shard auto_wrap"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *arguments], cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "--fsdp was given for a CPU run" in result.stderr
