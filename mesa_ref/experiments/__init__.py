"""Experiments: one module per paper figure / table, driven by scripts/fig*.py.  See EXPERIMENTS.md."""
