# Everything installs into a local virtual environment from this project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: venv reproduce test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[fast,dev]"
	touch $(STAMP)

venv: $(STAMP)

# Quick (CPU, minutes) versions of every figure script, written to figures/.
reproduce: $(STAMP)
	$(PY) scripts/make_figures.py --quick --out figures

# The whole test suite (what CI runs).
test: $(STAMP)
	CUPY_TF32=0 $(PY) -m pytest -q -x tests

bench: $(STAMP)
	$(PY) benchmarks/bench_mesa.py

clean:
	rm -rf $(VENV) .pytest_cache
