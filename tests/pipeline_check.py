"""Runs a saved DWAtt output folder through `transformers.pipeline` the way a user without dwatt would.

Run by tests/test_scripts.py in clean Pythons; imports nothing from dwatt. Usage:
    python pipeline_check.py FOLDER TASK TEXT
Prints one JSON line: {"transformers": version, "dwatt_installed": bool, "plain": [...], "aggregated": [...]}.
"""

import importlib.util
import json
import sys


class _BlockDwatt:
    def find_spec(self, name, path=None, target=None):
        if name == "dwatt" or name.startswith("dwatt."):
            raise ImportError("dwatt is blocked: this check must run without the package")
        return None


def main() -> int:
    folder, task, text = sys.argv[1], sys.argv[2], sys.argv[3]
    dwatt_installed = importlib.util.find_spec("dwatt") is not None
    sys.meta_path.insert(0, _BlockDwatt())
    import transformers
    from transformers import pipeline

    def as_plain(items):
        return [{k: (float(v) if k == "score" else v) for k, v in item.items()} for item in items]

    classifier = pipeline(task, model=folder, trust_remote_code=True, device="cpu")
    result = {"transformers": transformers.__version__, "dwatt_installed": dwatt_installed, "module": type(classifier.model).__module__}
    if task == "token-classification":
        result["plain"] = as_plain(classifier(text, aggregation_strategy="none"))
        result["aggregated"] = as_plain(classifier(text, aggregation_strategy="simple"))
    else:
        result["plain"] = as_plain(classifier(text, top_k=None))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
