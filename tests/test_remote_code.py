"""Saved DWAtt checkpoints open with `trust_remote_code=True` in a Python that does not have dwatt.

Each case is a tiny model saved to a folder plus a `case.safetensors` with inputs (padded) and the logits the model
gave here; `tests/remote_code_check.py` loads the folder through the Auto classes in another interpreter and compares.

The interpreters come from `DWATT_CLEAN_PYTHONS` (os.pathsep-separated; `.ci/run` sets it to virtual environments
without dwatt, on transformers 5.x and 4.57.6). Without it the test uses this Python (the check script blocks
`import dwatt` itself) and /work/venv-tf4/bin/python where that exists; under CI it must be set.
"""

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import dwatt
from dwatt import DWAttConfig, DWAttForSequenceClassification, DWAttForTokenClassification

from clean_pythons import CLEAN_PYTHONS_VAR, IN_CI, INTERPRETERS
from tiny_encoders import VOCAB_SIZE, tiny_encoder_config

CHECK_SCRIPT = Path(__file__).with_name("remote_code_check.py")


def _interpreter_id(python: str) -> str:
    # .ci-venvs/clean-tf4/bin/python -> clean-tf4
    return Path(python).parent.parent.name or python


INTERPRETER_IDS = [f"{index}-{_interpreter_id(python)}" for index, (python, _) in enumerate(INTERPRETERS)]

# name -> (task class, encoder family, DWAttConfig kwargs, left padding?)
CASES = {
    "token-dwatt-bert": (DWAttForTokenClassification, "bert", dict(fusion="dwatt"), False),
    "token-scalar_mix-roberta": (
        DWAttForTokenClassification,
        "roberta",
        dict(fusion="scalar_mix", fusion_layers=[0, 2, -1], scalar_mix_layer_norm=True),
        False,
    ),
    "seq-dwatt-bert-left-padded": (
        DWAttForSequenceClassification,
        "bert",
        dict(fusion="dwatt", dwatt_num_heads=2, dwatt_scale_scores=True, fusion_layers=[1, -1], pooling="last"),
        True,
    ),
    "seq-scalar_mix-distilbert": (DWAttForSequenceClassification, "distilbert", dict(fusion="scalar_mix", pooling="mean"), False),
    "seq-concat-roberta": (DWAttForSequenceClassification, "roberta", dict(fusion="concat"), False),
    # Trained with attention guidance: the remote copy must build an eager encoder and compute the same guidance.
    "token-dwatt-bert-attention-guidance": (
        DWAttForTokenClassification, "bert", dict(fusion="dwatt", attention_guidance_heads=[0, 1, 1, 2]), False
    ),
    # Guidance on heads chosen per layer (a nested list in config.json).
    "seq-last-bert-attention-guidance-per-layer": (
        DWAttForSequenceClassification, "bert",
        dict(fusion="last", attention_guidance_heads=[[[], [2], [1], [0, 3]], [[3], [], [], [1]], [[], [0], [3], []]]), False
    ),
}


def _make_case(name: str, root: Path) -> tuple[Path, Path]:
    task_class, family, kwargs, left_padded = CASES[name]
    torch.manual_seed(len(name))
    model = task_class(DWAttConfig(encoder_config=tiny_encoder_config(family), num_labels=3, **kwargs))
    with torch.no_grad():  # move every weight off its init so the remote copy must load them all
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.eval()

    batch, length = 3, 8
    input_ids = torch.randint(4, VOCAB_SIZE, (batch, length))
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if left_padded:
        attention_mask[1, :3] = 0
        attention_mask[2, :5] = 0
    else:
        attention_mask[1, 5:] = 0
        attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.isfinite(logits).all()
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "logits": logits.contiguous()}
    if "attention_guidance_heads" in kwargs:  # a training-mode forward with every dropout at 0 (deterministic)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        with torch.no_grad():
            tensors["guidance"] = model.train()(input_ids=input_ids, attention_mask=attention_mask).attention_guidance_loss
        model.eval()

    folder = root / name
    model.save_pretrained(folder)
    case_file = root / f"{name}.case.safetensors"
    save_file(tensors, str(case_file))
    return folder, case_file


def _run_check(python: str, folder: Path, case_file: Path, scratch: Path) -> subprocess.CompletedProcess:
    scratch.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=str(scratch / "hf_modules"),
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [python, str(CHECK_SCRIPT), str(folder), str(case_file)],
        cwd=scratch,  # not the repository root, so nothing of the source tree is importable by accident
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def remote_runs(tmp_path_factory):
    """Runs every (interpreter, case) check once, in parallel; maps (interpreter index, case) -> CompletedProcess."""
    root = tmp_path_factory.mktemp("remote_code")
    cases = {name: _make_case(name, root) for name in CASES}
    jobs = {
        (index, name): (python, *cases[name], root / "scratch" / f"{index}-{name}")
        for index, (python, _) in enumerate(INTERPRETERS)
        for name in CASES
    }
    workers = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(_run_check, *job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def _result_line(run: subprocess.CompletedProcess) -> str:
    lines = [line for line in run.stdout.splitlines() if line.startswith(("OK ", "FAIL"))]
    return lines[-1] if lines else ""


def _describe(python: str, run: subprocess.CompletedProcess) -> str:
    return f"{python} exited {run.returncode}\n--- stdout ---\n{run.stdout[-3000:]}\n--- stderr ---\n{run.stderr[-6000:]}"


def test_clean_pythons_are_configured():
    configured = os.environ.get(CLEAN_PYTHONS_VAR, "").strip()
    if IN_CI and not configured:
        pytest.fail(
            f"CI=true but {CLEAN_PYTHONS_VAR} is not set: .ci/run must set it to the Pythons of the clean virtual "
            "environments (transformers 5.x and 4.57.6, without dwatt), separated by os.pathsep."
        )
    for python, _ in INTERPRETERS:
        assert os.path.exists(python), f"{CLEAN_PYTHONS_VAR} names {python}, which does not exist"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("interpreter", range(len(INTERPRETERS)), ids=INTERPRETER_IDS)
def test_checkpoint_loads_as_remote_code(remote_runs, interpreter, case):
    python, is_clean = INTERPRETERS[interpreter]
    run = remote_runs[(interpreter, case)]
    assert run.returncode == 0, _describe(python, run)
    line = _result_line(run)
    assert line.startswith("OK "), _describe(python, run)
    task_class = CASES[case][0]
    assert f"class={task_class.__name__} " in line
    # The class really came from the copied code, not from an installed package.
    assert re.search(r"module=transformers_modules\.\S*modeling_dwatt ", line), line
    diff = float(re.search(r"max_abs_diff=(\S+)", line).group(1))
    assert diff < 1e-5, line
    if is_clean:
        assert "dwatt_installed=False" in line, f"{python} has dwatt installed, so it is no clean check: {line}"


def test_both_transformers_generations_were_checked(remote_runs):
    versions = set()
    for run in remote_runs.values():
        match = re.search(r"^OK transformers=(\S+)", _result_line(run))
        if match:
            versions.add(match.group(1))
    if IN_CI:
        assert "4.57.6" in versions, f"no run on transformers 4.57.6 (saw {sorted(versions)})"
        assert any(version.startswith("5.") for version in versions), f"no run on transformers 5.x (saw {sorted(versions)})"
    else:
        assert versions, "no remote-code check succeeded"


# What the files copied next to a checkpoint may import: torch, public transformers modules, each other, and these
# standard-library modules. Anything else (re, threading, safetensors, …) the Hub copy would not be promised to have.
HUB_FILE_STDLIB = {"math", "dataclasses", "typing"}


@pytest.mark.parametrize("name", ["modeling_dwatt.py", "configuration_dwatt.py"])
def test_hub_copied_files_import_only_torch_transformers_and_each_other(name):
    import ast

    tree = ast.parse((Path(dwatt.__file__).parent / name).read_text())
    imported = []
    for node in ast.walk(tree):  # top level and inside functions alike
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
    assert imported, "no imports found: the parse went wrong"
    for module in imported:
        root = module.split(".")[0]
        if module.startswith("."):
            assert module == ".configuration_dwatt", module
        elif root == "transformers":
            assert not any(part.startswith("_") for part in module.split(".")), f"private transformers module {module}"
        else:
            assert root == "torch" or module in HUB_FILE_STDLIB, f"{name} imports {module}"
