# Everything installs into a local virtual environment from this project's own files.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# Installs come from uv.lock, the exact versions the suite passed with (refresh: `make lock`). uv itself is
# pinned here and installed into the venv by pip, so a machine needs only Python and make.
UV_VERSION = 0.13.10
UV      = $(VENV)/bin/uv
EXTRAS ?= fast dev
LATEST  = .venv-latest

# The models here are small: BLAS threads only contend with Numba's own threads (which parallelise over
# batch x heads) and, on a loaded 2-core machine, cost up to 30x. Override from the environment if wanted.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: venv lock reproduce figures-full train-full test test-quick test-latest bench clean

# --locked: refuse to install if pyproject.toml changed since uv.lock was made (then run `make lock`).
# --inexact: keep uv itself (and anything else the user added) in the venv.
$(STAMP): pyproject.toml uv.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync -q --locked --inexact $(addprefix --extra ,$(EXTRAS))
	touch $(STAMP)

venv: $(STAMP)

# Refresh uv.lock to the newest versions pyproject.toml allows; then run `make test` before committing it.
lock:
	test -x $(UV) || ($(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q "uv==$(UV_VERSION)")
	$(UV) lock --upgrade

# Quick (CPU, minutes) versions of every figure, written to figures/ (fig9, a speed benchmark: scripts/fig9_speed.py).
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

# The edit loop's tier: every test not marked slow (the figure scripts, the CUDA simulator, the fresh-process and
# whole-suite checks are); under a minute on a quiet 2-core machine.
test-quick: $(STAMP)
	CUPY_TF32=0 $(PY) -m pytest -q -x -m "not slow" tests

# The suite against the newest versions pyproject.toml allows, ignoring the lock, in its own venv: an upstream
# release that breaks something fails here first, not in a new user's `make test`.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade -e ".[fast,dev]"
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE '^(numpy|scipy|numba|numba-cuda|llvmlite|matplotlib|cupy-cuda12x|distributed|pytest)=='
	CUPY_TF32=0 $(LATEST)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_mesa.py

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache
