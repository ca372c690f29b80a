# Two entry points (see README): `make main` and `make test`. Both set up ./.venv first.
PY      := .venv/bin/python
DATA_DIR ?= ../shared/data
TORCH   := torch==2.13.0
STAMP   := .venv/.installed

.PHONY: setup main test bench experiments clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and exactly pinned: the CPU build on this machine's disk, never a CUDA download.
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	# test-only reference for 2-D image RoPE; its own dependencies (torchao, ...) are not needed for that module
	$(PY) -m pip install --quiet --no-deps torchtune==0.6.1
	touch $(STAMP)

main: $(STAMP)
	.venv/bin/roformer train --preset small --data-dir $(DATA_DIR) --out runs/enwik8
	.venv/bin/roformer generate --model runs/enwik8/model --prompt "The history of " --max-new-tokens 300

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_rope_encoder.py
	$(PY) benchmarks/bench_linear_attention.py
	$(PY) benchmarks/bench_checkpointing.py

# the committed reports under reports/ (small presets, about 17 hours on 2 CPU cores in all, 7 of them the Chinese
# one; glue needs mlm's models)
experiments: $(STAMP)
	.venv/bin/roformer experiment pe_compare --preset small --data-dir $(DATA_DIR) --out reports/pe_compare
	.venv/bin/roformer experiment extrapolation --preset small --data-dir $(DATA_DIR) --models reports/pe_compare --out reports/extrapolation
	.venv/bin/roformer experiment performer_lm --preset small --data-dir $(DATA_DIR) --out reports/performer_lm
	.venv/bin/roformer experiment mlm --preset small --data-dir $(DATA_DIR) --out reports/mlm
	.venv/bin/roformer experiment optimizers --preset small --data-dir $(DATA_DIR) --out reports/optimizers
	.venv/bin/roformer experiment glue --preset small --data-dir $(DATA_DIR) --out reports/glue
	.venv/bin/roformer experiment translation --preset small --data-dir $(DATA_DIR) --out reports/translation
	.venv/bin/roformer experiment chinese --preset small --data-dir $(DATA_DIR) --out reports/chinese

clean:
	rm -rf .venv runs
