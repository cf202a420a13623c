"""The built wheel carries every file of the package, not only its Python modules (an editable install hides a
missing data file: the model-card template is read at the end of every training run)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "dwatt"


def test_the_wheel_holds_every_file_of_the_package(tmp_path):
    # Built from a copy of the sources alone: a leftover build/ or *.egg-info beside them would fill in what the
    # project's settings leave out.
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "src" / "dwatt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
         str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("dwatt-*.whl")
    in_wheel = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("dwatt/")}
    in_package = {f"dwatt/{path.relative_to(PACKAGE).as_posix()}" for path in PACKAGE.rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts}
    assert "dwatt/model_card_template.md" in in_package
    assert in_package <= in_wheel, f"missing from the wheel: {sorted(in_package - in_wheel)}"
