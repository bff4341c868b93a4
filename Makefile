# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv from a Python >= 3.12 interpreter and install the package from pyproject.toml.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint docs tutorials bench clean

$(STAMP): pyproject.toml
	@interp=$$(sh tools/find_python.sh) || exit 1; \
	  echo "using $$interp ($$($$interp --version))"; \
	  [ -x $(PY) ] || $$interp -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,docs]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bulkrnabert-sv demo $(if $(MODEL),--model $(MODEL),) --output bulkrnabert_demo.h5ad

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks tools
	$(PY) -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks tools
	$(PY) -m ruff format --check src tests benchmarks tools

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

# Re-execute the tutorials and store them with their outputs (offline: compact model, shipped data).
tutorials: $(STAMP)
	$(PY) tools/run_tutorials.py

bench: $(STAMP)
	$(PY) benchmarks/embed_speed.py

clean:
	rm -rf $(VENV) docs/_build .pytest_cache
