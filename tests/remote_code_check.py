"""Loads a saved DWAtt folder the way a user without dwatt does (trust_remote_code) and compares its logits.

Run by tests/test_remote_code.py in a *clean* Python (a virtual environment where dwatt is not installed), so it
imports nothing from dwatt or from the tests. Usage: python remote_code_check.py FOLDER CASE_FILE
where CASE_FILE is a safetensors file with `input_ids`, `attention_mask` and the expected `logits`.
Then resizes the token embeddings, saves, loads again and compares (the resized vocabulary must survive the round trip).
A case with `guidance` (a model with attention guidance) also compares a training-mode forward's guidance term.
Prints one line `OK transformers=<version> class=<name> … dwatt_installed=<bool> max_abs_diff=<float> …` or exits
non-zero.
"""

import importlib.util
import sys


class _BlockDwatt:
    """Makes `import dwatt` fail even where it is installed (the fallback when no clean venv is given)."""

    def find_spec(self, name, path=None, target=None):
        if name == "dwatt" or name.startswith("dwatt."):
            raise ImportError("dwatt is blocked: this check must run without the package")
        return None


def main() -> int:
    folder, case_file = sys.argv[1], sys.argv[2]
    dwatt_installed = importlib.util.find_spec("dwatt") is not None
    sys.meta_path.insert(0, _BlockDwatt())

    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    case = load_file(case_file)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    auto = {
        "DWAttForTokenClassification": AutoModelForTokenClassification,
        "DWAttForSequenceClassification": AutoModelForSequenceClassification,
    }[config.architectures[0]]
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    if type(model).__module__.startswith("dwatt"):
        print(f"FAIL the model class came from the installed package: {type(model).__module__}")
        return 1
    with torch.no_grad():
        logits = model(input_ids=case["input_ids"], attention_mask=case["attention_mask"]).logits
    diff = (logits - case["logits"]).abs().max().item()

    # A checkpoint trained with attention guidance: the copied code builds an eager encoder, and a training-mode
    # forward (every dropout at 0, as where the case was made) returns the same guidance term.
    guidance_ok = True
    if "guidance" in case:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        with torch.no_grad():
            guidance = model.train()(input_ids=case["input_ids"], attention_mask=case["attention_mask"]).attention_guidance_loss
        model.eval()
        eager = model.base_model.encoder.config._attn_implementation == "eager"
        guidance_ok = eager and guidance is not None and abs(guidance.item() - case["guidance"].item()) < 1e-5
        print(f"guidance eager={eager} value={None if guidance is None else guidance.item()} expected={case['guidance'].item()}")

    # A user who adds tokens: resize, save and load again; the new rows must come back, with the new size recorded
    # where the encoder reads it (the Hub copy of the config does that on its own).
    import tempfile

    vocab_size = model.config.vocab_size
    model.resize_token_embeddings(vocab_size + 3)
    input_ids = case["input_ids"].clone()
    input_ids[:, 0] = vocab_size + 2  # an added token
    with tempfile.TemporaryDirectory() as resized_folder:
        model.save_pretrained(resized_folder)
        resized = auto.from_pretrained(resized_folder, trust_remote_code=True).eval()
        with torch.no_grad():
            expected = model(input_ids=input_ids, attention_mask=case["attention_mask"]).logits
            reloaded = resized(input_ids=input_ids, attention_mask=case["attention_mask"]).logits
    resized_diff = (reloaded - expected).abs().max().item()
    resized_ok = resized.config.vocab_size == vocab_size + 3 and resized_diff < 1e-5

    status = "OK" if diff < 1e-5 and resized_ok and guidance_ok else "FAIL"
    print(f"{status} transformers={transformers.__version__} class={type(model).__name__} "
          f"module={type(model).__module__} dwatt_installed={dwatt_installed} max_abs_diff={diff:.3g} "
          f"resized_vocab={resized.config.vocab_size} resized_max_abs_diff={resized_diff:.3g}")
    return 0 if status == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
