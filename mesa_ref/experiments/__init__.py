"""Experiments: one module per paper figure / table, driven by scripts/fig*.py.  See docs/experiments.md."""
