# Everything installs into a local virtual environment from this project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

# The models here are small: BLAS threads only contend with Numba's own threads (which parallelise over
# batch x heads) and, on a loaded 2-core machine, cost up to 30x. Override from the environment if wanted.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv reproduce figures-full train-full test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[fast,dev]"
	touch $(STAMP)

venv: $(STAMP)

# Quick (CPU, minutes) versions of every figure script, written to figures/.
reproduce: $(STAMP)
	$(PY) scripts/make_figures.py --quick --out figures

# Full-size figures redrawn from the shipped results in figures/full/ (no training; minutes).
figures-full: $(STAMP)
	$(PY) scripts/make_figures.py --full

# Full-size figures, training every job whose result is missing (CPU hours; resumable; see README).
train-full: $(STAMP)
	$(PY) scripts/make_figures.py --full --train

# The whole test suite (what CI runs).
test: $(STAMP)
	CUPY_TF32=0 $(PY) -m pytest -q -x tests

bench: $(STAMP)
	$(PY) benchmarks/bench_mesa.py

clean:
	rm -rf $(VENV) .pytest_cache
