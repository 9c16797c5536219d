# The two entry points are `make demo` and `make test`; both create and use .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENDOR := static/vendor/openseadragon/openseadragon.min.js

.PHONY: demo test install vendor lint typecheck pytest worker web clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) $(VENDOR)

# OpenSeadragon comes from the npm registry and is copied into static/vendor (never committed).
$(VENDOR): package.json
	npm install --no-audit --no-fund --loglevel=error
	rm -rf static/vendor/openseadragon
	mkdir -p static/vendor
	cp -r node_modules/openseadragon/build/openseadragon static/vendor/openseadragon
	touch $(VENDOR)

vendor: $(VENDOR)

demo: install
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

pytest: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: install lint typecheck pytest

worker: install
	$(BIN)/celery -A config worker -Q cpu,gpu --pool solo --beat --loglevel INFO

web: install
	$(BIN)/python manage.py runserver

clean:
	rm -rf $(VENV) node_modules static/vendor
