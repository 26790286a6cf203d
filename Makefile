# The two commands of the README: `make demo` runs the product, `make test` runs the tests.
# Both create the virtualenv on first use; nothing else needs installing by hand.
VENV ?= .venv
# Extra options for `dzone demo`, e.g. make demo DEMO_ARGS="--port 3001 --guilds 5"
DEMO_ARGS ?=
PYTHON ?= python3

.PHONY: demo test lint schema

# constraints.txt pins every package to the versions the tests passed with (CI installs the same).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/dzone demo $(DEMO_ARGS)

test: $(VENV)/.installed
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# migrations/schema.sql, the schema at head in one file: regenerate it after adding a revision.
schema: $(VENV)/.installed
	$(VENV)/bin/python -m tests.schema_file
