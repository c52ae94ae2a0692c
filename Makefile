# Two commands on a fresh machine: `make run` (one micro-batch over the sample) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SYSMON_LANDING_DIR ?= data/landing
export SYSMON_DATA_DIR ?= data
# The Dagster UI's port: `make ui UI_PORT=3001` when 3000 is taken.
UI_PORT ?= 3000

# Dagster's console logger at WARNING: the batch's step-by-step DEBUG lines are in the UI (`make ui`) instead.
QUIET := {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

.PHONY: run test lint ui sample screenshot clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## run: install, land the committed sample, run one micro-batch, print a few sysmon_join rows
## (in the Dagster instance `make ui` shows: its runs are listed there, and it starts faster than a temporary one)
run: $(BIN)/.installed
	mkdir -p $(SYSMON_LANDING_DIR) .dagster && cp instance/dagster.yaml .dagster/dagster.yaml
	cp -p sample_data/*.ndjson $(SYSMON_LANDING_DIR)/
	DAGSTER_HOME=$(CURDIR)/.dagster PYTHONWARNINGS=ignore $(BIN)/dagster asset materialize \
		-m sysmon_assets.definitions --select '*' --config-json '$(QUIET)'
	$(BIN)/python -m sysmon_assets.query sql/queries/sysmon_join_sample.sql

## test: lint and the whole test suite
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## ui: the Dagster UI with the daemon (schedule and sensor), runs queued one at a time, on http://localhost:$(UI_PORT)
ui: $(BIN)/.installed
	mkdir -p .dagster && cp instance/dagster.yaml .dagster/dagster.yaml
	DAGSTER_HOME=$(CURDIR)/.dagster $(BIN)/dagster dev -w workspace.yaml --port $(UI_PORT)

## sample: regenerate the committed sample (seeded, so the same bytes every time)
sample: $(BIN)/.installed
	rm -f sample_data/*.ndjson
	$(BIN)/python -m sysmon_assets.sample --out sample_data --events 500 --hosts 8 --seed 7
	mv sample_data/winlogbeat-000.ndjson sample_data/winlogbeat-sample.ndjson

## screenshot: refresh docs/asset-graph.png (the browser test, writing the README's copy instead of a temporary one)
screenshot: $(BIN)/.installed
	SYSMON_UPDATE_SCREENSHOT=1 $(BIN)/pytest -q tests/test_webserver.py -k browser

clean:
	rm -rf data .dagster
