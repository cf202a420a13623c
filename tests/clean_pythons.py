"""The Pythons that load saved folders the way a user without dwatt does (remote-code and pipeline checks).

`DWATT_CLEAN_PYTHONS` (os.pathsep-separated) names virtual environments without dwatt; `.ci/run` sets it to one with
transformers 5.x and one with 4.57.6. Without it, the checks use this Python (the check scripts block `import dwatt`
themselves) and a local transformers-4.57 venv where one exists; under CI the variable is required.
"""

import os
import sys

LOCAL_TF4_PYTHON = "/work/venv-tf4/bin/python"
IN_CI = os.environ.get("CI", "").lower() == "true"
CLEAN_PYTHONS_VAR = "DWATT_CLEAN_PYTHONS"


def _interpreters() -> list[tuple[str, bool]]:
    """(python, is_clean) pairs; is_clean means it came from DWATT_CLEAN_PYTHONS and must not have dwatt."""
    configured = os.environ.get(CLEAN_PYTHONS_VAR, "")
    pythons = [path for path in configured.split(os.pathsep) if path.strip()]
    if pythons:
        return [(path, True) for path in pythons]
    fallback = [(sys.executable, False)]
    if os.path.exists(LOCAL_TF4_PYTHON):
        fallback.append((LOCAL_TF4_PYTHON, False))
    return fallback


INTERPRETERS = _interpreters()
