# The two front-door commands are `make demo` and `make test`; both bootstrap .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo lint benchmarks clean

venv:
	@bash scripts/bootstrap.sh

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: venv
	@bash scripts/demo.sh

lint: venv
	$(VENV)/bin/ruff check efficientdet components pipelines tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo-output
