"""FLOPs per token of the attention forms and of a whole model, counted from the formulas the code evaluates.

Used by fig8's analysis (the language models at equal compute) and by ``benchmarks/bench_lm_cost.py``. A
multiply-add counts 2 FLOPs; counts are per token, averaged over the T positions of a window (a causal row t
has t terms, so sums over the history have t_avg = (T + 1) / 2 terms on average).

Attention, per token and head (d = key size = value size):

    softmax [L3]           forward 4 d t_avg + 3 t_avg       scores and weighted values over the t' <= t, plus
                                                             the softmax (max, exp, normalise)
                           backward 8 d t_avg + 4 t_avg      dP, dq, dk, dv, and the softmax's backward
    linear [L2] T x T      forward 4 d t_avg                 the form ``linear_attention_forward`` uses
                           backward 8 d t_avg
    linear [L2] recurrent  forward 4 d^2                     S_t = S_{t-1} + v k^T, o = S q
                           backward 10 d^2
    mesa [M2] sequential   forward 10 d^2 + 3 d              c = R k, R -= c c^T / (1 + k.c), q~ = R q,
                                                             S += v k^T, o = S q~
                           backward 20 d^2 + 4 d             [M3]: 18 d^2, plus 2 d^2 to rebuild R_t from its
                                                             rank-one factor
    mesa [M5] chunk C      forward 10 d^2 + 11 C d + C^2/3   per chunk: K^T R0, K^T R0 K, Cholesky, the
                                                             triangular solve for G, R0 - G^T G, the queries'
                                                             R0 X - G^T triu(G X), the causal sums with a running
                                                             state (mesa_ref/ops/mesa_chunkwise.py: its masked
                                                             C x C blocks are full products)
                           backward 22 d^2 + 24 C d          five causal sums and one R_t application

The rest of a model, per token and layer: the QKV and output projections (2 D 3 H d + 2 H d D), the MLP
(16 D^2 at the factor 4), and the read-out (2 D V) once; their backward is twice their forward (one product for
the input's gradient, one for the weights'). LayerNorm, GELU, embedding look-ups and the loss are left out
(a few FLOPs per element of the residual stream, small beside the products).
"""
from __future__ import annotations


def attention_flops(form: str, T: int, d: int, chunk: int | None = None) -> dict:
    """{"forward", "backward"}: FLOPs per token and head of one attention form (module docstring)."""
    t_avg = (T + 1) / 2
    if form == "softmax":
        return {"forward": 4 * d * t_avg + 3 * t_avg, "backward": 8 * d * t_avg + 4 * t_avg}
    if form == "linear_recurrent":
        return {"forward": 4 * d * d, "backward": 10 * d * d}
    if form == "linear_quadratic":
        return {"forward": 4 * d * t_avg, "backward": 8 * d * t_avg}
    if form == "mesa_sequential":
        return {"forward": 10 * d * d + 3 * d, "backward": 20 * d * d + 4 * d}
    if form == "mesa_chunkwise":
        if not chunk or chunk < 1:
            raise ValueError(f"chunk: the [M5] form needs a chunk size >= 1, got {chunk!r}")
        C = chunk
        return {"forward": 10 * d * d + 11 * C * d + C * C / 3, "backward": 22 * d * d + 24 * C * d}
    raise ValueError(f"form: expected softmax, linear_recurrent, linear_quadratic, mesa_sequential or "
                     f"mesa_chunkwise, got {form!r}")


#: the attention form each layer kind runs in the model (linear layers use the T x T form)
FORMS = {"softmax": "softmax", "linear": "linear_quadratic", "mesa": "mesa_sequential"}


def model_flops(layers, *, width: int, heads: int, key_size: int, T: int, mlp: bool, vocab: int,
                chunk: int | None = None) -> dict:
    """FLOPs per token of a model with these layer kinds: forward and backward of the attention part (every layer
    and head), of the rest (projections, MLP, read-out), their totals, and the attention's share of the forward.
    ``chunk``: mesa layers in the [M5] chunkwise form with this chunk size."""
    D, H, d = width, heads, key_size
    attn_f = attn_b = 0.0
    for kind in layers:
        if kind not in FORMS:
            raise ValueError(f"layers: unknown kind {kind!r}")
        form = "mesa_chunkwise" if (kind == "mesa" and chunk) else FORMS[kind]
        a = attention_flops(form, T, d, chunk)
        attn_f += H * a["forward"]
        attn_b += H * a["backward"]
    per_layer = 2 * D * 3 * H * d + 2 * H * d * D + (16 * D * D if mlp else 0)
    rest_f = len(layers) * per_layer + 2 * D * vocab
    return {"attention": attn_f, "attention_backward": attn_b, "rest": rest_f, "rest_backward": 2 * rest_f,
            "forward": attn_f + rest_f, "train": attn_f + attn_b + 3 * rest_f,
            "attention_share": attn_f / (attn_f + rest_f)}
