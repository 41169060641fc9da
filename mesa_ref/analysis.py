"""Analyses of trained models (docs/math.md section 5): [P2] weight readout, [P3] per-time-step loss
statistics, and the [A5] interpolation between trained and constructed one-layer weights.

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858.
(Linear probing [P1] and linearisation [P4] live in ``mesa_ref.probing``.)

Shape glossary
    S evaluation seeds, B batch, T time, n state size, D = 4n width of the constructed tokens [T2],
    H heads, d key size per head.

Conventions for the one-layer model on [T2] tokens e_t = (0, s_t, s_t, s_{t-1}) (slots 0..3, n
coordinates each; the prediction of s_{t+1} is read from slot 0 of the output):

    KQ_h = W_K^T W_Q of head h, (D, D): rows index the key-side input, columns the query-side
           input; in this code base KQ_h = wk_h wq_h^T with wk_h = params["l0.wk"][:, h*d:(h+1)*d].
           The head's score is k_{t'} . q_t = e_{t'}^T KQ_h e_t.
    PV_h = P W_V of head h, (D, D): rows index the output coordinate, columns the value-side input;
           here PV_h = (wv_h wo_h)^T.  The head adds sum_{t'<=t} (e_{t'}^T KQ_h e_t) PV_h e_{t'}.

The [A1] GD construction reads the key from s_{t-1} (slot 3), the query from s_t (slots 1 and 2
hold the same s_t, so gradient training from a small symmetric init puts equal weight on both) and
writes the value s_{t'} (slots 1 and 2) into the output slot 0: KQ has identity blocks at
(3, 1) and (3, 2), PV at (0, 1) and (0, 2) (``gd_patterns``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import ModelConfig
from .ops._common import to_host as _host

__all__ = [
    "PerStep", "per_step_summary", "per_step_losses",
    "weight_products", "gd_patterns", "cosine_similarity", "gd_similarity", "WeightReadout", "weight_readout",
    "gd_construction", "gd_project", "product_config", "product_params", "revalg_clean", "interpolate_params",
    "interpolation_losses", "product_interpolation_losses",
]

# token slots of e_t = (0, s_t, s_t, s_{t-1})
_QUERY_SLOTS = (1, 2)   # s_t
_KEY_SLOT = 3           # s_{t-1}
_VALUE_SLOTS = (1, 2)   # s_t
_OUT_SLOT = 0


# ----------------------------------------------------------------------------------------------
# [P3] per-time-step loss over evaluation seeds
# ----------------------------------------------------------------------------------------------

class PerStep(NamedTuple):
    """[P3] per-time-step loss over S evaluation seeds."""
    mean: np.ndarray      # (T,) mean over seeds of the per-seed per-step loss
    spread: np.ndarray    # (T,) standard deviation over seeds (ddof = 1; zeros for a single seed)
    per_seed: np.ndarray  # (S, T) the inputs


def per_step_summary(per_seed) -> PerStep:
    """[P3] mean and spread over seeds of per-step losses.

    per_seed: (S, T), row s the per-step loss of seed s (``solvers.per_step_loss``: sum over the batch
    and dimensions / (2B)).  With equal batch sizes the mean over seeds is the mean over all
    evaluation sequences.  Spread is the sample standard deviation over seeds (ddof = 1), zero when
    S = 1.  Returns ``PerStep(mean (T,), spread (T,), per_seed (S, T))`` in float64.
    """
    a = np.asarray(per_seed, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"per_seed: expected a non-empty (S, T) array, got shape {np.shape(per_seed)}")
    if not np.all(np.isfinite(a)):
        raise ValueError("per_seed: contains non-finite values")
    spread = a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1])
    return PerStep(mean=a.mean(axis=0), spread=spread, per_seed=a)


def per_step_losses(pred_by_seed, targets_by_seed) -> PerStep:
    """[P3] ``per_step_summary`` of ``solvers.per_step_loss(pred_s, targets_s)`` over seeds s.

    pred_by_seed, targets_by_seed: sequences of (B, T, n) arrays, one per evaluation seed.
    """
    from .solvers import per_step_loss
    preds, tgts = list(pred_by_seed), list(targets_by_seed)
    if len(preds) != len(tgts) or not preds:
        raise ValueError("pred_by_seed: expected as many (non-zero) predictions as targets_by_seed")
    return per_step_summary(np.stack([per_step_loss(p, y) for p, y in zip(preds, tgts)]))


# ----------------------------------------------------------------------------------------------
# [P2] weight readout
# ----------------------------------------------------------------------------------------------

def weight_products(params: dict, config: ModelConfig, layer: int = 0):
    """[P2] per-head products of layer ``layer``: KQ = W_K^T W_Q and PV = P W_V (module docstring).

    params: the model's flat dict ("l{i}.wq" (D, H*d), ...).  Returns (KQ (H, D, D), PV (H, D, D)),
    float64 NumPy arrays.
    """
    if not 0 <= layer < len(config.layers):
        raise ValueError(f"layer: expected 0 <= layer < {len(config.layers)}, got {layer}")
    H = config.heads
    try:
        wq, wk, wv, wo = (_host(params[f"l{layer}.{k}"]).astype(np.float64) for k in ("wq", "wk", "wv", "wo"))
    except KeyError as e:
        raise ValueError(f"params: missing {e}") from None
    D, HD = wq.shape
    if HD % H or wk.shape != wq.shape or wo.shape != (wv.shape[1], D):
        raise ValueError(f"params: layer {layer} weights do not match heads = {H} (wq {wq.shape}, wo {wo.shape})")
    d, dv = HD // H, wv.shape[1] // H
    KQ = np.stack([wk[:, h * d:(h + 1) * d] @ wq[:, h * d:(h + 1) * d].T for h in range(H)])      # (H, D, D)
    PV = np.stack([(wv[:, h * dv:(h + 1) * dv] @ wo[h * dv:(h + 1) * dv, :]).T for h in range(H)])  # (H, D, D)
    return KQ, PV


def gd_patterns(n: int):
    """[P2]/[A1] the GD construction's block patterns for [T2] tokens (module docstring).

    Returns (G_KQ (4n, 4n), G_PV (4n, 4n)), float64: G_KQ has identity blocks at (key slot 3,
    query slots 1 and 2), G_PV at (output slot 0, value slots 1 and 2), zeros elsewhere.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    D, I = 4 * n, np.eye(n)
    G_KQ, G_PV = np.zeros((D, D)), np.zeros((D, D))
    for j in _QUERY_SLOTS:
        G_KQ[_KEY_SLOT * n:(_KEY_SLOT + 1) * n, j * n:(j + 1) * n] = I
    for j in _VALUE_SLOTS:
        G_PV[_OUT_SLOT * n:(_OUT_SLOT + 1) * n, j * n:(j + 1) * n] = I
    return G_KQ, G_PV


def cosine_similarity(a, b) -> float:
    """<a, b> / (|a| |b|) over all entries (Frobenius); 0 when either is zero."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"b: expected {a.size} entries like a, got {b.size}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def gd_similarity(KQ, PV, n: int):
    """[P2] how close each head is to the [A1] GD construction, in [-1, 1].

    A head computes sum_{t'} (e_{t'}^T KQ e_t) PV_{:n} e_{t'}: a bilinear form in the pair
    (KQ, PV_{:n}) whose operator is the tensor product KQ (x) PV_{:n}, where PV_{:n} are the
    output rows the one-layer model's loss reads (slot 0; the other rows are never read).  The
    cosine similarity of two tensor products is the product of the cosines, so

        sim_h = cos(KQ_h, G_KQ) * cos(PV_h[:n], G_PV[:n]),

    which is invariant to the scale trade between W_K^T W_Q and P W_V and to a joint sign flip,
    and is 1 exactly when the head is a (positively) scaled GD construction.  Also returns the
    layer-level similarity of the summed operator sum_h KQ_h (x) PV_h[:n] with G_KQ (x) G_PV[:n].

    KQ, PV: (H, D, D) from ``weight_products``.  Returns (per_head (H,) list of floats, layer float,
    per_head_kq (H,) list, per_head_pv (H,) list).
    """
    KQ, PV = np.asarray(KQ, np.float64), np.asarray(PV, np.float64)
    n = int(n)
    D = 4 * n
    if KQ.ndim != 3 or KQ.shape[1:] != (D, D) or PV.shape != KQ.shape:
        raise ValueError(f"KQ: expected (H, {D}, {D}) arrays KQ and PV, got {KQ.shape} and {PV.shape}")
    G_KQ, G_PV = gd_patterns(n)
    G_PV = G_PV[:n]
    PVr = PV[:, :n]                                                  # (H, n, D) rows read by the loss
    kq = [cosine_similarity(KQ[h], G_KQ) for h in range(len(KQ))]
    pv = [cosine_similarity(PVr[h], G_PV) for h in range(len(KQ))]
    per_head = [a * b for a, b in zip(kq, pv)]
    # layer level: <sum_h A_h (x) B_h, G (x) F> / (|sum_h A_h (x) B_h| |G| |F|)
    ga = np.einsum("hij,ij->h", KQ, G_KQ)
    gb = np.einsum("hij,ij->h", PVr, G_PV)
    gram = np.einsum("hij,kij->hk", KQ, KQ) * np.einsum("hij,kij->hk", PVr, PVr)
    norm = np.sqrt(max(float(gram.sum()), 0.0)) * np.linalg.norm(G_KQ) * np.linalg.norm(G_PV)
    layer = 0.0 if norm == 0 else float(ga @ gb / norm)
    return per_head, layer, kq, pv


class WeightReadout(NamedTuple):
    """[P2] the per-head products and their similarity to the GD construction."""
    KQ: np.ndarray            # (H, D, D) W_K^T W_Q per head
    PV: np.ndarray            # (H, D, D) P W_V per head
    gd_similarity: list       # (H,) per-head similarity (``gd_similarity``)
    gd_similarity_max: float  # max over heads
    gd_similarity_layer: float
    kq_similarity: list       # (H,) cos(KQ_h, G_KQ)
    pv_similarity: list       # (H,) cos(PV_h[:n], G_PV[:n])


def weight_readout(params: dict, config: ModelConfig, layer: int = 0) -> WeightReadout:
    """[P2] KQ = W_K^T W_Q and PV = P W_V per head of a model on [T2] tokens, with ``gd_similarity``."""
    if config.input != "constructed":
        raise ValueError(f"config: the weight readout needs constructed tokens [T2], got input={config.input!r}")
    KQ, PV = weight_products(params, config, layer)
    per_head, layer_sim, kq, pv = gd_similarity(KQ, PV, config.input_dim)
    return WeightReadout(KQ=KQ, PV=PV, gd_similarity=per_head, gd_similarity_max=float(max(per_head)),
                         gd_similarity_layer=layer_sim, kq_similarity=kq, pv_similarity=pv)


# ----------------------------------------------------------------------------------------------
# constructions and [A5] interpolation
# ----------------------------------------------------------------------------------------------

def gd_construction(config: ModelConfig, eta: float, dtype=np.float64) -> dict:
    """[A1] parameters of a one-layer linear-attention model on [T2] that computes one GD step:
    prediction of s_{t+1} = eta sum_{t'<=t} s_{t'} (s_{t'-1} . s_t) = ``solvers.gd_one_step(s, eta)``.

    Head 0 carries the construction (KQ = G_KQ / 2, PV = eta G_PV / 2, so the two query and two
    value slots together give eta); the other heads are zero.  Needs config.layers == ("linear",),
    constructed input and key_size >= n.  Exact when config.clip is None (otherwise predictions are
    clipped to [-clip, clip] like the trained model's).
    """
    c = config
    n = c.input_dim
    if tuple(c.layers) != ("linear",) or c.input != "constructed":
        raise ValueError("config: gd_construction needs a one-layer linear model on constructed tokens")
    if c.key_size < n:
        raise ValueError(f"config: key_size must be >= n = {n}, got {c.key_size}")
    D, H, d = c.width, c.heads, c.key_size
    I = np.eye(n)
    wq, wk, wv, wo = (np.zeros(s) for s in ((D, H * d), (D, H * d), (D, H * d), (H * d, D)))
    wk[_KEY_SLOT * n:(_KEY_SLOT + 1) * n, :n] = I
    for j in _QUERY_SLOTS:
        wq[j * n:(j + 1) * n, :n] = 0.5 * I
    for j in _VALUE_SLOTS:
        wv[j * n:(j + 1) * n, :n] = I
    wo[:n, _OUT_SLOT * n:(_OUT_SLOT + 1) * n] = 0.5 * float(eta) * I
    return {k: v.astype(dtype) for k, v in (("l0.wq", wq), ("l0.wk", wk), ("l0.wv", wv), ("l0.wo", wo))}


def product_config(config: ModelConfig) -> ModelConfig:
    """The one-layer config whose heads have key size D, able to hold any (KQ_h, PV_h) exactly."""
    if len(config.layers) != 1 or config.layers[0] != "linear" or config.mlp or config.layernorm:
        raise ValueError("config: expected a one-layer linear-attention model without MLP or LayerNorm")
    return config.replace(key_size=config.width)


def product_params(KQ, PV, dtype=np.float64) -> dict:
    """Parameters for ``product_config(cfg)`` realising the given per-head products exactly:
    wk_h = I, wq_h = KQ_h^T (so wk_h wq_h^T = KQ_h), wv_h = I, wo_h = PV_h^T (so (wv_h wo_h)^T = PV_h).

    KQ, PV: (H, D, D).  Returns {"l0.wq", "l0.wk", "l0.wv" (D, H*D), "l0.wo" (H*D, D)}.
    """
    KQ, PV = np.asarray(KQ, np.float64), np.asarray(PV, np.float64)
    if KQ.ndim != 3 or KQ.shape[1] != KQ.shape[2] or PV.shape != KQ.shape:
        raise ValueError(f"KQ: expected matching (H, D, D) arrays KQ and PV, got {KQ.shape} and {PV.shape}")
    H, D, _ = KQ.shape
    eye = np.concatenate([np.eye(D)] * H, axis=1)                                # (D, H*D)
    wq = np.concatenate([KQ[h].T for h in range(H)], axis=1)                     # (D, H*D)
    wo = np.concatenate([PV[h].T for h in range(H)], axis=0)                     # (H*D, D): rows of head h = PV_h^T
    return {"l0.wq": wq.astype(dtype), "l0.wk": eye.astype(dtype), "l0.wv": eye.copy().astype(dtype),
            "l0.wo": wo.astype(dtype)}


def revalg_clean(KQ, PV, n: int):
    """[A5] the reading of a trained one-layer model as the reverse-engineered algorithm: every n x n
    block (i, j) of KQ_h becomes m_ij I with m_ij the mean of the block's diagonal, and PV_h keeps only
    its output slot 0 rows, each block likewise replaced by its diagonal mean times I (the other
    output rows are never read by a one-layer model's loss).  This is the same reading as
    ``solvers.revalg_coeffs_from_weights``; a model with the cleaned products computes
    ``solvers.revalg_predict`` with those coefficients.

    KQ, PV: (H, 4n, 4n) -> cleaned (KQ, PV), same shapes.
    """
    KQ, PV = np.asarray(KQ, np.float64), np.asarray(PV, np.float64)
    n = int(n)
    if KQ.ndim != 3 or KQ.shape[1:] != (4 * n, 4 * n) or PV.shape != KQ.shape:
        raise ValueError(f"KQ: expected (H, {4 * n}, {4 * n}) arrays KQ and PV, got {KQ.shape} and {PV.shape}")
    I = np.eye(n)

    def clean(M, rows):
        out = np.zeros_like(M)
        for i in rows:
            for j in range(4):
                blk = M[i * n:(i + 1) * n, j * n:(j + 1) * n]
                out[i * n:(i + 1) * n, j * n:(j + 1) * n] = np.mean(np.diagonal(blk)) * I
        return out

    return (np.stack([clean(M, range(4)) for M in KQ]), np.stack([clean(M, (_OUT_SLOT,)) for M in PV]))


def gd_project(KQ, PV, n: int):
    """[A1]/[A5] the GD component of each head: KQ_h -> a_h G_KQ and PV_h -> b_h G_PV (output slot 0 only),
    a_h, b_h the least-squares coefficients <KQ_h, G_KQ> / |G_KQ|^2 and <PV_h[:n], G_PV[:n]> / |G_PV[:n]|^2.
    A layer with the projected products computes one GD step with eta = sum_h 4 a_h b_h (two query and
    two value slots hold s_t).

    KQ, PV: (H, 4n, 4n) -> (KQ_proj, PV_proj (H, 4n, 4n), eta float).
    """
    KQ, PV = np.asarray(KQ, np.float64), np.asarray(PV, np.float64)
    n = int(n)
    if KQ.ndim != 3 or KQ.shape[1:] != (4 * n, 4 * n) or PV.shape != KQ.shape:
        raise ValueError(f"KQ: expected (H, {4 * n}, {4 * n}) arrays KQ and PV, got {KQ.shape} and {PV.shape}")
    G_KQ, G_PV = gd_patterns(n)
    a = np.einsum("hij,ij->h", KQ, G_KQ) / np.sum(G_KQ * G_KQ)
    b = np.einsum("hij,ij->h", PV, G_PV) / np.sum(G_PV * G_PV)       # G_PV is zero outside rows :n
    return a[:, None, None] * G_KQ, b[:, None, None] * G_PV, float(4 * np.sum(a * b))


def interpolate_params(pa: dict, pb: dict, alpha: float) -> dict:
    """[A5] (1 - alpha) pa + alpha pb, key by key (same keys and shapes)."""
    if set(pa) != set(pb):
        raise ValueError(f"pb: expected the keys of pa {sorted(pa)}, got {sorted(pb)}")
    out = {}
    for k in pa:
        a, b = pa[k], pb[k]
        if a.shape != b.shape:
            raise ValueError(f"pb: {k} has shape {b.shape}, pa has {a.shape}")
        out[k] = ((1.0 - alpha) * a + alpha * b).astype(a.dtype)
    return out


def interpolation_losses(model, pa: dict, pb: dict, alphas, batches) -> np.ndarray:
    """[A5] loss of ``model`` along the straight line from pa (alpha = 0) to pb (alpha = 1).

    batches: list of (x, y) evaluation batches; the loss at each alpha is the mean of
    ``model.loss`` over them.  Returns (len(alphas),) float64.
    """
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    if not len(batches):
        raise ValueError("batches: expected at least one (x, y) batch")
    out = np.empty(alphas.size)
    for i, a in enumerate(alphas):
        p = interpolate_params(pa, pb, float(a))
        out[i] = float(np.mean([model.loss(p, x, y) for x, y in batches]))
    return out


def product_interpolation_losses(config: ModelConfig, params: dict, target, alphas, batches, *, ops=None):
    """[A5] interpolate a trained one-layer model on [T2] towards constructed products.

    The trained layer is rewritten exactly in product form (``product_params`` of its
    ``weight_products``), the target likewise, and the product-form weights are interpolated
    linearly: alpha = 0 is the trained model, alpha = 1 the construction.  ``target`` is
    "revalg" (``revalg_clean`` of the trained products, the [A5] reading), or a (KQ, PV) pair
    (e.g. from ``weight_products(gd_construction(...))``).  Evaluated in float64 (the batches are
    cast).  Returns (len(alphas),) losses (mean ``model.loss`` over the batches).
    """
    from .model import Transformer
    KQ, PV = weight_products(params, config)
    if isinstance(target, str):
        if target != "revalg":
            raise ValueError(f"target: expected 'revalg' or a (KQ, PV) pair, got {target!r}")
        KQ_b, PV_b = revalg_clean(KQ, PV, config.input_dim)
    else:
        KQ_b, PV_b = target
    pcfg = product_config(config)
    model = Transformer(pcfg, ops=ops)
    b64 = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in batches]
    return interpolation_losses(model, product_params(KQ, PV), product_params(KQ_b, PV_b), alphas, b64)
