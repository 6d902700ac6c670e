# Two commands from a fresh clone:  `make run` (the pipeline) and `make test` (the suite).
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: install run test test-fast params clean-runs

install: $(VENV)/.installed

# torch is pinned in pyproject.toml (the CPU wheel on the build machines; unpinned, it pulls CUDA).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# Build the compiled LSTM and GRU steps now, once per machine (~30-45 s; src/lyricist/models/fast/kernels.py),
	# and measure which library runs the products fastest here (~2 s; fast/choice.py): every later
	# process and copy of the code reads both. Without a compiler it warns and torch ops run.
	$(BIN)/python -c "from lyricist.models.fast import kernels, matmul; kernels.step_kernels(); matmul.backend()"
	touch $@

# Pull the raw corpora from the DVC remote (../shared/dvc-store) and run the pipeline.
run: install
	. $(BIN)/activate && dvc pull data/raw/*.dvc && dvc repro

# The whole suite, slow end-to-end tests included (what CI runs).
test: install
	. $(BIN)/activate && dvc pull data/raw/*.dvc && python -m pytest

# The quick loop while developing.
test-fast: install
	. $(BIN)/activate && python -m pytest -m "not slow"

# Rewrite params.yaml as the composition of conf/ (what DVC's Hydra mode does on `dvc exp run`).
params: install
	$(BIN)/python -c "from dvc.utils.hydra import compose_and_dump; \
	compose_and_dump('params.yaml', '$(CURDIR)/conf', None, 'config', '.', [])"

clean-runs:
	rm -rf outputs multirun lightning_logs
