# energymon: two commands a newcomer needs.
#   make demo   install into .venv and run the simulated cement plant
#   make test   install dev dependencies and the services the tests use, then run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ARGS ?= --speed 60

.PHONY: demo test install dev services lint docs dashboards bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'

demo: install
	$(BIN)/energymon demo $(DEMO_ARGS)

services:
	bash scripts/ensure-services.sh

test: dev services
	$(BIN)/python -m pytest

lint: dev
	$(BIN)/ruff check .
	$(BIN)/python -m mypy energymon  # the stage folders are inside it, as energymon.collectors etc.
	$(BIN)/python deploy/grafana/dashboards.py --check

docs: dev
	$(BIN)/python scripts/update-readme-reference.py

dashboards: dev
	$(BIN)/python deploy/grafana/dashboards.py

bench: dev services
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info
