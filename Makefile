# tfsafe: `make demo` runs the main job, `make test` runs the tests. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tfsafe-installed
DATA_DIR ?= ../shared/data

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps tensorflow-privacy==0.9.0 tensorflow-empirical-privacy==0.1.0
	@touch $(STAMP)

demo: install
	$(BIN)/tfsafe demo --out out

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/run_all.py --data_dir $(DATA_DIR)

clean:
	rm -rf $(VENV) out build *.egg-info
