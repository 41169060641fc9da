"""What every scripts/fig*.py does: put this checkout first on the import path and run its figure's Experiment.

The figures' training jobs limit their own BLAS threads; the analysis in this process multiplies small
matrices, for which a multi-threaded BLAS only adds overhead on a busy machine, so one thread is the default
(set before NumPy is imported; the environment can override it).
"""
import os
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(name: str) -> int:
    from mesa_lab.experiments import experiment
    from mesa_lab.experiments.common import run_experiment
    return run_experiment(experiment(name))
