# Two commands on a fresh machine: `make run` (one micro-batch over the sample) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SYSMON_LANDING_DIR ?= data/landing
export SYSMON_DATA_DIR ?= data
SHARDS := $(or $(SYSMON_SHARDS),1)
# The Dagster UI's port: `make ui UI_PORT=3001` when 3000 is taken.
UI_PORT ?= 3000

# Dagster's console log: warnings and errors only (the step-by-step DEBUG lines are in the UI's run page), unless
# `make run VERBOSE=1`; either way run_report then prints one line per asset.
LOG_LEVEL := $(if $(VERBOSE),DEBUG,WARNING)

# The Dagster instance of `make run` and `make ui`: the UI lists make run's runs.
run ui: export DAGSTER_HOME := $(CURDIR)/.dagster
# Dagster 1.13's CLI warns on every start that `dagster job execute` and `dagster dev` are superseded by `dg` (the
# dagster-dg-cli package, which this project does not use). This filter hides that notice and no other warning.
run ui: export PYTHONWARNINGS := ignore:Function:FutureWarning

.PHONY: run test lint ui sample screenshot clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## run: install, land the committed sample, run one micro-batch (a run of job sysmon_micro_batch, in the instance
## `make ui` shows), print one line per asset and the recipe's sysmon_join sample; with SYSMON_SHARDS=K > 1, one run
## per shard in turn (the job is partitioned then, and a run's dagster/partition tag names its shard)
run: $(BIN)/.installed
	@mkdir -p $(SYSMON_LANDING_DIR) .dagster && cp instance/dagster.yaml .dagster/dagster.yaml
	@cp sample_data/*.ndjson $(SYSMON_LANDING_DIR)/  # landed now, not when checked out: landing_freshness passes
	@echo '{"loggers": {"console": {"config": {"log_level": "$(LOG_LEVEL)"}}}}' > .dagster/run_config.yaml
	@for shard in $$(seq 0 $$(($(SHARDS) - 1))); do \
	    if [ $(SHARDS) -gt 1 ]; then set -- --tags "{\"dagster/partition\": \"shard-$$shard\"}"; else set --; fi; \
	    $(BIN)/dagster job execute -m sysmon_assets.definitions -j sysmon_micro_batch -c .dagster/run_config.yaml "$$@" \
	        && $(BIN)/python -m sysmon_assets.dagster_layer.run_report || exit 1; \
	done
	$(BIN)/python -m sysmon_assets.query sql/queries/sysmon_join_sample.sql

## test: lint (ruff check, ruff format --check) and the whole test suite, a pytest-xdist worker per core (up to 4)
test: lint
	$(BIN)/pytest -n auto --maxprocesses 4

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## ui: the Dagster UI with the daemon (schedule and sensor), runs queued one at a time, on http://localhost:$(UI_PORT)
ui: $(BIN)/.installed
	@mkdir -p .dagster && cp instance/dagster.yaml .dagster/dagster.yaml
	@# the writer pool's one slot, set before the daemon first sees a run in the pool (its first pass lets such runs
	@# through while it gives the pool its default limit)
	@$(BIN)/dagster instance concurrency set sysmon_lake_writer 1 > /dev/null
	$(BIN)/dagster dev -w workspace.yaml --port $(UI_PORT)

## sample: regenerate the committed sample (seeded, so the same bytes every time)
sample: $(BIN)/.installed
	rm -f sample_data/*.ndjson
	$(BIN)/python -m sysmon_assets.sample --out sample_data --events 500 --hosts 8 --seed 7
	mv sample_data/winlogbeat-000.ndjson sample_data/winlogbeat-sample.ndjson

## screenshot: refresh docs/asset-graph.png (the browser test, writing the README's copy instead of a temporary one)
screenshot: $(BIN)/.installed
	SYSMON_UPDATE_SCREENSHOT=1 $(BIN)/pytest -q tests/dagster_layer/test_webserver.py -k browser

clean:
	rm -rf data .dagster
