# flowsolve: the two commands of the README.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

## make demo: the [L21] width sweep at gamma' = 0 (netCDF + PNG under out/)
demo: $(STAMP)
	$(BIN)/flowsolve demo --out out

## make test: the test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check flowsolve tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python benchmarks/roofline.py

clean:
	rm -rf out .pytest_cache
