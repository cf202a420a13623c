#!/usr/bin/env bash
# The GPU cost measurements issue 5 still waits for, as the one command of a lent GPU session (device tool):
#
#   run(command="DWATT_GIT_COMMIT=<full hash of this checkout> bash benchmarks/gpu_cost_rerun.sh", timeout_s=600)
#
# 1. The smallest shape (MiniLM, 32 tokens x 8) under CUDA graphs (`--compile reduce-overhead`): does removing the
#    dispatch time bring every head under the 2% floor there? (Compiling its 12 models takes minutes.)
# 2. The whole cost grid again (cost_gpu.json predates the streamed inference and its memory column).
# Each step has its own time limit; cost.py writes its JSON after every shape, so a step cut short still returns the
# shapes it finished. The files come back under $OUT (copy them to benchmarks/results/ and run benchmarks/report.py).
# Needs torch and transformers only (no datasets: tests/test_cost.py holds that); dwatt is taken from src/.
set -uo pipefail
: "${DWATT_GIT_COMMIT:?set DWATT_GIT_COMMIT to the commit of these files: the copy on the device has no git metadata}"
: "${OUT:?run on the device machine, which sets OUT to the folder that comes back}"
export DWATT_GIT_COMMIT PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, transformers, dwatt; assert torch.cuda.is_available(), 'no GPU here'; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'dwatt', dwatt.__version__, torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv || true

status=0
timeout "${COMPILED_LIMIT_S:-240}" "$PYTHON" benchmarks/cost.py --compile reduce-overhead --encoders minilm --seq-lens 32 \
    --batch-sizes 8 --rounds 20 --out benchmarks/results/cost_gpu_compiled.json || status=$?
cp benchmarks/results/cost_gpu_compiled.json "$OUT/" 2>/dev/null || true
timeout "${GRID_LIMIT_S:-300}" "$PYTHON" benchmarks/cost.py --rounds 20 --out benchmarks/results/cost_gpu.json || status=$?
cp benchmarks/results/cost_gpu.json "$OUT/" 2>/dev/null || true
ls -l "$OUT"
exit "$status"
