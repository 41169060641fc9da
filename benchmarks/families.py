"""The model families the training-step benchmarks time: name -> (ModelConfig, task, batch, what it is).

Shared by ``bench_train_step.py``, ``profile_train_step.py`` and ``jax_peer_step.py`` (the authors' JAX step at
the same sizes), so that every script times the same models. Figure configurations are read from the experiment
modules when the family is built, so a change there reaches the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass

SOFTMAX6 = dict(heads=4, width=40, key_size=20, mlp=True, mlp_factor=4, layernorm=True, clip=None, input="embed",
                input_dim=10, output_dim=10, pos_enc=True, init_std=0.02)


@dataclass(frozen=True)
class Family:
    name: str
    describe: str


FAMILIES = {
    "linear2": Family("linear2", "the authors' default: 2 linear-attention layers, 4 heads, width 40, key 20, "
                                 "constructed tokens, clip 1.5"),
    "linear6": Family("linear6", "6 linear-attention layers, otherwise the default (fig3's deep model)"),
    "mesa1": Family("mesa1", "1 mesa layer, 4 heads, width 40, key 20, constructed tokens"),
    "softmax6": Family("softmax6", "6 softmax layers + GELU MLP (x4) + pre-LayerNorm, 4 heads, width 40, key 20, "
                                   "embedded raw tokens + positional encoding, no clipping"),
    "softmax2_fig5": Family("softmax2_fig5", "fig5's full-size 2-layer softmax Transformer (copy_layer.FULL: softmax, "
                                             "GELU MLP, pre-LayerNorm, embedded raw tokens + positional encoding)"),
    "lm_fig8": Family("lm_fig8", "fig8's FULL language model, softmax kind (language.FULL: char tokens, "
                                 "pre-LayerNorm, MLP, positional encoding)"),
    "t4_softmax7_authors": Family("t4_softmax7_authors",
                                  "fig7 --setup authors, [T4] softmax model: positional first layer + 6 softmax layers, "
                                  "width 60, 4 heads, MLP 300, unit-norm queries and keys"),
    "t3_softmax7_authors": Family("t3_softmax7_authors",
                                  "fig7 --setup authors, [T3] softmax model: positional first layer + 6 softmax layers, "
                                  "width 80, 12 heads, no MLP"),
}


def build(name):
    """(ModelConfig, task, batch) of a family; the task has ``batch(rng, B, dtype) -> (x, y)``."""
    from mesa_ref.config import ModelConfig
    from mesa_ref.tasks import LinearTask

    if name == "linear2":
        return ModelConfig(), LinearTask(), 256
    if name == "linear6":
        return ModelConfig(layers=("linear",) * 6), LinearTask(), 256
    if name == "mesa1":
        return ModelConfig(layers=("mesa",)), LinearTask(), 256
    if name == "softmax6":
        return ModelConfig(layers=("softmax",) * 6, **SOFTMAX6), LinearTask(tokens="raw"), 256
    if name == "softmax2_fig5":
        from mesa_lab.experiments import copy_layer
        cfg = copy_layer.FULL
        return cfg.softmax_model(), LinearTask(n=cfg.n, T=cfg.T, sigma=cfg.sigma, tokens="raw"), cfg.batch
    if name == "lm_fig8":
        from mesa_lab.experiments import language
        cfg = language.FULL
        task = language.lm_task(cfg)
        return language.model_config("softmax", cfg, task.vocab_size), task, cfg.batch
    if name in ("t4_softmax7_authors", "t3_softmax7_authors"):
        from mesa_lab.experiments import mesa_vs_attention as mva
        job = mva.authors_jobs(mva.AUTHORS, 0, "fast")[f"{name[:2].upper()}/softmax_L7"]
        return job.model, job.task, job.train.batch
    raise ValueError(f"family: expected one of {list(FAMILIES)}, got {name!r}")
