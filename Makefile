# The two commands a user needs: `make run` and `make test`. Everything else is a habit.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: run migrate test install install-dev lint format typecheck unit jobs integration cluster fixtures bench bench-long bench-models bench-stream bench-bulk bench-retries clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever pyproject.toml changes; the package index is the only network used.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev,diarization]"
	$(PY) -m pip install --quiet --no-deps resemblyzer==0.1.4  # the speaker encoder's weights only
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## Serve the app on the embedded defaults (tiny.en, CPU, SQLite) at http://127.0.0.1:8000
## (serve_config.yaml stamped with the code and settings digest, so a redeploy rolls the replicas)
run: install migrate
	PATH="$(abspath $(BIN)):$$PATH" $(PY) -m deployments.serve_launch run serve_config.yaml

## Apply the database migrations (once, before Serve starts; safe to repeat)
migrate: install
	$(PY) -m services.migrations upgrade head

## Lint, type-check and run the whole test suite (unit + integration)
test: install-dev lint typecheck
	$(PY) -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install-dev
	$(BIN)/mypy

unit: install-dev
	$(PY) -m pytest tests/unit

jobs: install-dev
	$(PY) -m pytest tests/jobs

integration: install-dev
	$(PY) -m pytest tests/integration

## Autoscaling (1 -> 2 -> 1 replicas) and a two-node Ray cluster losing a node (tests/cluster)
cluster: install-dev
	$(PY) -m pytest tests/cluster

## Regenerate the committed speech fixtures (needs Debian's espeak-ng and sox)
fixtures: install-dev
	$(PY) scripts/make_fixtures.py

## Throughput benchmark (issue #3): in-process limits against the Serve app
bench: install-dev
	$(PY) benchmarks/throughput.py

## Per-model throughput at c16 with several models served at once (issue #12)
bench-models: install-dev
	$(PY) benchmarks/models.py

## Long-job benchmark (issue #13): a 20-minute job end to end against the in-process pipeline
bench-long: install-dev
	$(PY) benchmarks/long_job.py

## Streaming benchmark (issue #12): time to the first delta of an 8-minute file
bench-stream: install-dev
	$(PY) benchmarks/streaming.py

## Bulk benchmark (issue #10): 30 min of audio through `python -m cluster.bulk` against the in-process pipeline
bench-bulk: install-dev
	$(PY) benchmarks/bulk.py

## What the engine decodes again (windows, CPU-s, WER), in process, against the pipeline
bench-retries: install-dev
	$(PY) benchmarks/engine_retries.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
