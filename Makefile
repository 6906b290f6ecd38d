# The two commands of the README: `make serve` and `make test`. Both build the
# virtual environment from pyproject.toml the first time.
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: serve test lint schema
serve: $(BIN)/.installed
	$(BIN)/deskbill serve --demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

schema: $(BIN)/.installed
	$(BIN)/deskbill export-schema > schema.graphql
