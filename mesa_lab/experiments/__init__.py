"""Experiments: one module per paper figure / table, driven by scripts/fig*.py.  See docs/experiments.md.

``FIGURES`` maps each figure script's name to the module and attribute of its ``common.Experiment``, so that
``scripts/make_figures.py`` can gather every figure's jobs and send them to one cluster at once.
"""
from __future__ import annotations

import importlib

FIGURES = {
    "fig1_weights": ("one_layer", "EXPERIMENT_FIG1"),
    "fig2_one_layer_gd": ("one_layer", "EXPERIMENT_FIG2"),
    "fig3_depth": ("depth", "EXPERIMENT"),
    "fig4_probing": ("probe_layers", "EXPERIMENT"),
    "fig5_copy_layer": ("copy_layer", "EXPERIMENT"),
    "fig6_icl": ("icl", "EXPERIMENT"),
    "fig7_mesa_vs_attention": ("mesa_vs_attention", "EXPERIMENT"),
    "fig8_language": ("language", "EXPERIMENT"),
    "fig9_speed": ("speed", "EXPERIMENT"),
}


def experiment(name: str):
    """The ``Experiment`` of figure ``name``, or None when its module does not define one."""
    if name not in FIGURES:
        raise ValueError(f"figure: unknown figure {name!r} (known: {', '.join(FIGURES)})")
    module, attr = FIGURES[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr, None)
