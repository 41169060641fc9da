"""The authors' jitted JAX/Flax training step, timed at one of our model families' sizes (run with JAX's Python).

Runs in a separate virtual environment that has jax, flax, optax and ml_collections (none of them is a dependency
of this toolkit), with the authors' repository checked out outside the package (``--authors DIR``, by default
``.peers/authors``, which .gitignore keeps out of this repository). ``bench_train_step.py --jax-python PATH``
starts it in a subprocess, alternating with our own workers, and reads the JSON line it prints last.

What is timed is their own ``Training.fast_train_step`` (src/train.py: ``value_and_grad`` of their loss through
their ``FullTransformerModel`` (src/models/full_fledged_transformer.py), then ``state.apply_gradients`` with their
``Optimizer`` (src/optim.py: element-wise clipping at 1 + AdamW with the warm-up/cosine schedule), all under one
``jax.jit``), with the model built at the family's sizes from the ModelConfig dict our side passes in:

* constructed-token families (linear2, linear6, mesa1): their default configuration (configs/config.py: no
  embedding, clipping at 1.5, init N(0, 0.0002^2), no bias), with the family's layers, heads, width, key size;
  mesa layers with ``use_mesa`` and their custom backward (``standard_backprop_mesa=False``).
* embedded raw tokens (softmax6, softmax2_fig5): ``use_emb`` (a dense embedding and readout), ``use_pe_emb``
  (sinusoidal encoding added), softmax attention, ``use_layernorm``, ``use_mlp`` with the family's MLP width, no
  clipping, init N(0, 0.02^2). Their model has no final LayerNorm and no biases (``use_bias=False``); ours has
  both (D or fewer values per layer: a negligible share of the step).
* token ids (lm_fig8): their code has no token language model, so their model takes one-hot vectors through its
  dense embedding (a lookup done as a product, V x D per token) and their loss is replaced by the mean
  softmax cross-entropy (``optax.softmax_cross_entropy_with_integer_labels``); everything else is their step.

Inputs are fixed random arrays of the family's shapes (drawing batches is not timed on either side). Prints one
JSON line: {"wall": [...], "cpu": [...], "first": s, "jax": version, "devices": ...}; ``first`` (the first step,
compilation included) is short when ``--cache`` already holds the compiled step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def build(authors, cfg, batch, T):
    sys.path.insert(0, authors)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax import nn as jax_nn

    from src.models.full_fledged_transformer import FullTransformerModel
    from src.optim import Optimizer
    from src.train import Training

    kinds = set(cfg["layers"])
    if len(kinds) != 1:
        raise SystemExit(f"jax peer: one attention kind per model, got {cfg['layers']}")
    kind = kinds.pop()
    D, out_dim = cfg["width"], cfg["output_dim"]
    tokens = cfg["input"] == "tokens"
    embed = cfg["input"] in ("embed", "tokens")
    in_dim = D if cfg["input"] == "constructed" else cfg["input_dim"]
    model = FullTransformerModel(
        use_emb=embed, use_pe_emb=cfg["pos_enc"], use_pe_kq=False, hybrid_first_block=False, input_dim=in_dim,
        pe_dim=D, out_dim=out_dim, data_dim=out_dim, initializer=jax_nn.initializers.normal(stddev=cfg["init_std"]),
        use_layernorm=cfg["layernorm"], use_bias=False, use_mlp=cfg["mlp"], masked=True, interpol=False,
        use_clip=cfg["clip"] is not None, clip=cfg["clip"] if cfg["clip"] is not None else 10.0,
        mask_inputs=False, use_mesa=kind == "mesa", standard_backprop_mesa=False, normalization_mesa=False,
        num_layers=len(cfg["layers"]), num_heads=cfg["heads"], embed_dim=D, key_size=cfg["key_size"], seq_len=T,
        dim_feedforward_MLP=cfg["mlp_factor"] * D, linear=kind == "linear")
    optimizer = Optimizer(grad_clip=1.0, peak_lr=3e-4, use_schedule=True, warmup_steps=1000, max_iters=20000,
                          init_value=0.0, end_value=1e-5, weight_decay=0.05).get_optimizer()
    rng = np.random.default_rng(0)
    if tokens:
        ids = rng.integers(0, in_dim, (batch, T))
        x = jnp.asarray(np.eye(in_dim, dtype=np.float32)[ids])
        y = jnp.asarray(rng.integers(0, out_dim, (batch, T)))
    else:
        x = jnp.asarray(rng.standard_normal((batch, T, in_dim)).astype(np.float32))
        y = jnp.asarray(rng.standard_normal((batch, T, out_dim)).astype(np.float32))

    class Data:
        """Hands their Training class the fixed batch (their data generators are not timed, as ours are not)."""

        def get_data(self, rng, batch_size):
            return (x, y), None

        def get_data_info(self):
            return {"obs_dim": out_dim}

    class LMTraining(Training):
        def calculate_loss(self, params, batch, interpol_call):
            inp, labels = batch
            logits, tf_data = self.model.apply({"params": params}, inp, interpol_call=interpol_call)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), tf_data

    cls = LMTraining if tokens else Training
    training = cls(model=model, optimizer=optimizer, data_generator=Data(), interpolate=False,
                   sensitivity_analysis=False, batch_size=batch, test_batch_size=batch)
    state, _ = training.get_init_state(jax.random.PRNGKey(0), interpol_call=False)
    return jax, training, state, (x, y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                     ".peers", "authors"))
    p.add_argument("--config", required=True, help="our ModelConfig as a JSON dict")
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cache", default=None, help="JAX's persistent compilation cache directory (optional)")
    args = p.parse_args(argv)
    if args.cache:
        import jax
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax, training, state, batch = build(os.path.abspath(args.authors), json.loads(args.config), args.batch, args.T)

    def step(state):
        state, loss, tf_data = training.fast_train_step(state, batch, False)
        jax.block_until_ready((state, loss, tf_data))
        return state

    t0 = time.perf_counter()
    state = step(state)                      # compiles
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        state = step(state)
    wall, cpu = [], []
    for _ in range(args.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        state = step(state)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    print(json.dumps({"wall": wall, "cpu": cpu, "first": first, "jax": jax.__version__,
                      "devices": [str(d) for d in jax.devices()]}))


if __name__ == "__main__":
    main()
