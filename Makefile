# acd: `make setup` once (as root), then `make test`. See README.md.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_FLAGS ?= -q

.PHONY: setup test lint typecheck unit integration up down bench clean

setup:
	bash scripts/setup.sh

test: lint typecheck unit integration

lint:
	$(BIN)/ruff check acd tests bench
	$(BIN)/ruff format --check acd tests bench

typecheck:
	$(BIN)/mypy

unit:
	$(BIN)/pytest $(PYTEST_FLAGS) tests/unit tests/adapters --doctest-modules acd/domain acd/dispatch acd/adapters/redis_link.py acd/adapters/store.py acd/runtime/alerts.py acd/runtime/asterisk.py

integration:
	$(BIN)/pytest $(PYTEST_FLAGS) tests/integration

up:
	$(BIN)/acd up

down:
	$(BIN)/acd down

bench:
	$(BIN)/python bench/claims.py

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis
