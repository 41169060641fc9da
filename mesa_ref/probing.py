"""Analyses of trained models: linear probes [P1] and linearisation of a softmax layer [P4].

von Oswald et al., "Uncovering mesa-optimization algorithms in Transformers", arXiv 2309.05858, section 5
of docs/math.md.

Shape glossary
    N  sequences (probe training or test set)     T  positions t = 1..T
    n  state size                                 D  residual-stream width
    L  attention layers; residual stream l = 0..L (0: before the first block, l: after block l)
    F  probe features (D, or the input-token size for the control probe)

[P1] probes.  For every layer l and position t a least-squares linear map (with bias) from the residual
stream h_l[t] (D,) to a target is fitted on one set of sequences and scored on another, never on the
sequences it was fitted on.  Targets (``probe_targets``):

    "current"            s_t
    "previous"           s_{t-1}                        (s_0 = 0)
    "next"               s_{t+1}
    "inverse_curvature"  (X_t X_t^T + lam I)^{-1} s_t,   X_t = [x_1 .. x_t], x_{t'} = s_{t'-1}, lam = 1e-3
                         (the official probe lam).  Since x_1 = s_0 = 0, X_t X_t^T = sum_{t'<t} s_{t'} s_{t'}^T.

The error is the normalised mean squared error at each t,

    nmse_t = sum_{test b, i} (probe(h_l[b, t])_i - y[b, t, i])^2 / sum_{test b, i} (y[b, t, i] - ybar_t,i)^2,

ybar_t the test-set mean of the target at t: 0 is a perfect read-out, 1 is no better than predicting the
mean.  Each target is normalised at each t separately because the inverse-curvature target's scale
changes by orders of magnitude with t (it is of order 1/lam while t <= n).  Summaries average nmse_t
over t = 1..T, skipping positions where the target has no variance (nmse is NaN there: the "previous"
target s_0 = 0 at t = 1, so "previous" averages over t = 2..T).  The control probe reads the same targets from the model's input tokens at position t
alone (the constructed token (0, s_t, s_t, s_{t-1}) or the raw state s_t); whatever a layer adds beyond
that control was computed from the context.

Probe fit: features and targets are centred by their training means; the weights solve the ridge system
(Z^T Z + ridge * mean(diag(Z^T Z)) I) W = Z^T Y with a tiny relative ridge (default 1e-6), which only
guards against the exactly collinear features of constructed tokens (s_t appears twice, the first n
coordinates are 0) and leaves the least-squares solution otherwise unchanged.

[P4] linearisation (``linearise_layer``): the attention of layer i (softmax or any kind) is replaced by a
causal linear attention [L2] with its own W_Q, W_K, W_V, W_O of the same shapes, fitted to reproduce the
layer's attention-block output o_merged W_O (the quantity added to the residual stream) from the same
block input (after LayerNorm if the model has one).  Fit: W_Q, W_K, W_V start from the layer's own
weights; the block output is linear in W_O, so W_O is always the exact least-squares solution given the
others (variable projection), and ``steps`` Adam steps on the normalised MSE move W_Q, W_K, W_V; the
weights with the lowest training error are kept.
The report is the model's test loss with the original layer, with the fitted linear layer, and with the
layer removed (its output set to 0) for scale; a small change from linearising says the layer acts as
linear attention does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import ModelConfig
from .model import Transformer
from .ops._common import array_module
from .ops._common import to_host as _host
from .ops.heads import merge_heads as _merge_heads
from .ops.heads import split_heads as _split_heads
from .optim import AdamW

TARGETS = ("current", "previous", "next", "inverse_curvature")
PROBE_LAM = 1e-3       # official probe lam for the inverse-curvature target


# ---------------------------------------------------------------------------------------------- targets
def probe_targets(states, lam: float = PROBE_LAM) -> dict:
    """[P1] the probe targets of every position, float64.

    states: (N, T+1, n) s_1..s_{T+1} (``data.linear_dynamics(...).states``).
    Returns {"current": s_t, "previous": s_{t-1} (s_0 = 0), "next": s_{t+1},
    "inverse_curvature": (X_t X_t^T + lam I)^{-1} s_t}, each (N, T, n) for t = 1..T, where
    X_t X_t^T = sum_{t' <= t} x_{t'} x_{t'}^T with x_{t'} = s_{t'-1} (so = sum_{t' < t} s_{t'} s_{t'}^T).
    """
    s = np.asarray(states)
    if s.ndim != 3 or s.shape[1] < 2 or s.dtype.kind != "f":
        raise ValueError(f"states: expected a float array of shape (N, T+1, n) with T >= 1, got "
                         f"{getattr(s, 'dtype', type(s))} {getattr(s, 'shape', '')}")
    if not (isinstance(lam, (int, float)) and np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam: expected a positive finite number, got {lam!r}")
    s = s.astype(np.float64)
    N, T1, n = s.shape
    T = T1 - 1
    cur = s[:, :T]                                                     # (N, T, n) s_t
    prev = np.zeros_like(cur)
    prev[:, 1:] = s[:, :T - 1]                                         # (N, T, n) s_{t-1}, s_0 = 0
    nxt = s[:, 1:]                                                     # (N, T, n) s_{t+1}
    outer = prev[:, :, :, None] * prev[:, :, None, :]                  # (N, T, n, n) x_t x_t^T
    A = np.cumsum(outer, axis=1) + lam * np.eye(n)                     # (N, T, n, n) X_t X_t^T + lam I
    inv = np.linalg.solve(A, cur[..., None])[..., 0]                   # (N, T, n)
    return {"current": cur, "previous": prev, "next": nxt, "inverse_curvature": inv}


# ---------------------------------------------------------------------------------------------- probes
def fit_probe(features, targets, ridge: float = 1e-6):
    """[P1] least-squares linear read-out with bias.  features (N, F), targets (N, K) ->
    (W (F, K), b (K,)) minimising ||features W + b - targets||^2 (+ a tiny relative ridge, see the module doc)."""
    Z = np.asarray(features, dtype=np.float64)
    Y = np.asarray(targets, dtype=np.float64)
    if Z.ndim != 2 or Y.ndim != 2 or Z.shape[0] != Y.shape[0] or Z.shape[0] < 2:
        raise ValueError(f"features/targets: expected (N, F) and (N, K) with the same N >= 2, got "
                         f"{Z.shape} and {Y.shape}")
    if not ridge >= 0:
        raise ValueError(f"ridge: expected >= 0, got {ridge!r}")
    zm, ym = Z.mean(axis=0), Y.mean(axis=0)
    Zc, Yc = Z - zm, Y - ym                                            # (N, F), (N, K)
    G = Zc.T @ Zc                                                      # (F, F)
    scale = float(np.mean(np.diag(G))) or 1.0
    W = np.linalg.lstsq(G + ridge * scale * np.eye(G.shape[0]), Zc.T @ Yc, rcond=None)[0]   # (F, K)
    return W, ym - zm @ W


def apply_probe(probe, features):
    """features (N, F) -> predictions (N, K)."""
    W, b = probe
    return np.asarray(features, dtype=np.float64) @ W + b


def nmse(pred, target) -> float:
    """Normalised MSE: sum (pred - target)^2 / sum (target - mean over rows)^2; pred, target (N, K).
    NaN where the target does not vary (e.g. s_0 = 0, the "previous" target at t = 1): no error is defined there."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    den = float(((target - target.mean(axis=0)) ** 2).sum())
    num = float(((pred - target) ** 2).sum())
    return num / den if den > 0 else float("nan")


def probe_errors(train_features, train_targets, test_features, test_targets, ridge: float = 1e-6):
    """[P1] per-position held-out probe error.  train_features (N, T, F), train_targets (N, T, K),
    test_features (M, T, F), test_targets (M, T, K) -> nmse per t (T,): the probe for position t is fitted
    on the training sequences at t and scored on the test sequences at t."""
    tr_f, tr_y = np.asarray(train_features), np.asarray(train_targets)
    te_f, te_y = np.asarray(test_features), np.asarray(test_targets)
    if tr_f.ndim != 3 or te_f.ndim != 3 or tr_y.ndim != 3 or te_y.ndim != 3:
        raise ValueError("train_features/train_targets/test_features/test_targets: expected 3-d arrays (N, T, .)")
    if tr_f.shape[:2] != tr_y.shape[:2] or te_f.shape[:2] != te_y.shape[:2] or tr_f.shape[1] != te_f.shape[1] \
            or tr_f.shape[2] != te_f.shape[2] or tr_y.shape[2] != te_y.shape[2]:
        raise ValueError(f"features/targets: shapes do not match: train {tr_f.shape} -> {tr_y.shape}, "
                         f"test {te_f.shape} -> {te_y.shape}")
    T = tr_f.shape[1]
    out = np.empty(T)
    for t in range(T):
        probe = fit_probe(tr_f[:, t], tr_y[:, t], ridge)
        out[t] = nmse(apply_probe(probe, te_f[:, t]), te_y[:, t])
    return out


@dataclass
class ProbeResult:
    """[P1] held-out errors.  per_t[target]: (L+1, T) nmse per residual stream and position;
    control_per_t[target]: (T,) nmse of the probe from the input tokens alone."""
    per_t: dict
    control_per_t: dict
    lam: float
    n_train: int
    n_test: int
    extra: dict = field(default_factory=dict)

    def mean_over_t(self, t_min: int = 1) -> dict:
        """target -> list over layers (0 = input) of nmse averaged over t >= t_min (1-based), skipping positions
        where the target is constant (NaN)."""
        return {k: [float(np.nanmean(row[t_min - 1:])) for row in v] for k, v in self.per_t.items()}

    def control_mean_over_t(self, t_min: int = 1) -> dict:
        return {k: float(np.nanmean(v[t_min - 1:])) for k, v in self.control_per_t.items()}


def residual_streams(model: Transformer, params: dict, x, chunk: int = 256) -> list:
    """The residual stream before the first block and after every block: list of L+1 arrays (N, T, D), float64
    on the host (forward in chunks of ``chunk`` sequences)."""
    outs = None
    for i in range(0, x.shape[0], chunk):
        _, cache = model.forward(params, x[i:i + chunk])
        res = [np.asarray(_host(r), dtype=np.float64) for r in cache.residuals]
        outs = [[r] for r in res] if outs is None else [o + [r] for o, r in zip(outs, res)]
    return [np.concatenate(o, axis=0) for o in outs]


def probe_model(model: Transformer, params: dict, train_states, test_states, *, tokens: str = "constructed",
                lam: float = PROBE_LAM, ridge: float = 1e-6, targets=TARGETS, dtype=np.float32) -> ProbeResult:
    """[P1] probe every residual stream of ``model`` for every target, fitted on ``train_states`` and scored on
    ``test_states`` (each (N, T+1, n), states s_1..s_{T+1} of [T1]); ``tokens`` "constructed" [T2] or "raw"
    says how the model's input is built from s_1..s_T.  Also the control probe from the input tokens."""
    from .data import constructed_tokens

    def inputs(states):
        s = np.ascontiguousarray(np.asarray(states)[:, :-1]).astype(dtype)
        if tokens == "constructed":
            return constructed_tokens(s)
        if tokens == "raw":
            return s
        raise ValueError(f"tokens: expected 'constructed' or 'raw', got {tokens!r}")

    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"targets: unknown {bad}; expected a subset of {TARGETS}")
    x_tr, x_te = inputs(train_states), inputs(test_states)
    y_tr, y_te = probe_targets(train_states, lam), probe_targets(test_states, lam)
    h_tr = residual_streams(model, params, x_tr)
    h_te = residual_streams(model, params, x_te)
    per_t, control = {}, {}
    for name in targets:
        per_t[name] = np.stack([probe_errors(a, y_tr[name], b, y_te[name], ridge) for a, b in zip(h_tr, h_te)])
        control[name] = probe_errors(x_tr, y_tr[name], x_te, y_te[name], ridge)
    return ProbeResult(per_t=per_t, control_per_t=control, lam=lam, n_train=len(x_tr), n_test=len(x_te))


# ---------------------------------------------------------------------------------------------- the authors' probe
def polynomial_inverse(A, alphas, betas):
    """An approximate inverse of the symmetric positive definite ``A`` (..., n, n) by a polynomial with
    fitted coefficients, the one the authors' inverse-curvature probe uses instead of the exact inverse.

    With c = ||A||_F and B = A / c:  X_0 = X_{-1} = I, P_0 = I, and for k = 1..K
        P_k = P_{k-1} (I - alpha_k B),   X_k = X_{k-1} + P_k + beta_k (X_{k-1} - X_{k-2});
    the result is X_K / c.  With every beta_k = 0 and alpha_k = 1 this is the Neumann series of B^{-1} truncated
    after K terms; the momentum terms and the per-step alpha_k make it a Chebyshev-like polynomial of degree K."""
    A = np.asarray(A, dtype=np.float64)
    alphas, betas = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A: expected (..., n, n), got shape {A.shape}")
    if alphas.ndim != 1 or alphas.shape != betas.shape or alphas.size == 0:
        raise ValueError(f"alphas/betas: expected two 1-d arrays of the same non-zero length, got "
                         f"{alphas.shape} and {betas.shape}")
    c = np.linalg.norm(A, axis=(-2, -1))[..., None, None]             # (..., 1, 1) Frobenius norm
    B = A / c
    eye = np.broadcast_to(np.eye(A.shape[-1]), A.shape)
    X, prev, P = eye.copy(), eye.copy(), eye.copy()
    for a, b in zip(alphas, betas):
        P = P @ (eye - a * B)
        X, prev = X + P + b * (X - prev), X
    return X / c


def authors_inverse_target(states, alphas, betas, lam: float = PROBE_LAM):
    """The authors' inverse-curvature target p(X_t X_t^T + lam I) s_t, (N, T, n) for t = 1..T, with p the
    fitted polynomial inverse (``polynomial_inverse``) in place of the exact inverse of ``probe_targets``
    (the same X_t: the states before t).  states (N, T+1, n)."""
    s = np.asarray(states, dtype=np.float64)
    if s.ndim != 3 or s.shape[1] < 2:
        raise ValueError(f"states: expected (N, T+1, n) with T >= 1, got shape {s.shape}")
    T, n = s.shape[1] - 1, s.shape[2]
    cur = s[:, :T]                                                     # (N, T, n) s_t
    prev = np.concatenate([np.zeros_like(cur[:, :1]), cur[:, :-1]], axis=1)   # (N, T, n) s_{t-1}
    A = np.cumsum(prev[:, :, :, None] * prev[:, :, None, :], axis=1) + lam * np.eye(n)   # (N, T, n, n)
    return np.einsum("ntij,ntj->nti", polynomial_inverse(A, alphas, betas), cur)


def insample_probe_error(features, targets, threshold: float = 2.0) -> float:
    """The authors' probe error at one position: sequences whose target norm lies ``threshold`` standard
    deviations (population std) or more above the mean are dropped; a least-squares map without bias is fitted
    on the rest and scored on the same sequences; the error is the summed squared error / (2 x sequences kept),
    in the target's raw units.  features (N, F), targets (N, K)."""
    Z, Y = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    if Z.ndim != 2 or Y.ndim != 2 or Z.shape[0] != Y.shape[0]:
        raise ValueError(f"features/targets: expected (N, F) and (N, K) with the same N, got {Z.shape} and {Y.shape}")
    norms = np.linalg.norm(Y, axis=1)
    sd = norms.std()
    keep = (norms - norms.mean()) / sd < threshold if sd > 0 else np.ones(len(Y), bool)
    W = np.linalg.lstsq(Z[keep], Y[keep], rcond=None)[0]
    return float(((Z[keep] @ W - Y[keep]) ** 2).sum() / (2 * keep.sum()))


def authors_probe(model: Transformer, params: dict, states, alphas, betas, *, tokens: str = "constructed",
                  lam: float = PROBE_LAM, batch: int = 256, dtype=np.float32) -> np.ndarray:
    """The inverse-curvature probe as the authors define it, on ``model``: per batch of ``batch`` sequences of
    ``states`` (N, T+1, n) and per position, ``insample_probe_error`` of the fitted-polynomial target
    (``authors_inverse_target``) from every residual stream.  Returns (batches, L+1, T)."""
    from .data import constructed_tokens
    s = np.asarray(states)
    if s.shape[0] < batch or s.shape[0] % batch:
        raise ValueError(f"states: expected a multiple of batch={batch} sequences, got {s.shape[0]}")
    out = []
    for i in range(0, s.shape[0], batch):
        part = s[i:i + batch]
        x = np.ascontiguousarray(part[:, :-1]).astype(dtype)
        x = constructed_tokens(x) if tokens == "constructed" else x
        y = authors_inverse_target(part, alphas, betas, lam)
        h = residual_streams(model, params, x)
        out.append([[insample_probe_error(r[:, t], y[:, t]) for t in range(y.shape[1])] for r in h])
    return np.asarray(out)


# ---------------------------------------------------------------------------------------------- [P4]
def attention_block_io(model: Transformer, params: dict, x, i: int):
    """Layer i's attention-block input a (after LN1 if any) and output o_merged W_O, each (N, T, D), float64
    host arrays; recomputed from the residual stream before block i.  Layers whose queries and keys are not plain
    products of a (a pos_enc_kq first layer; every other layer under unit_norm) are refused."""
    c, ops = model.config, model.ops
    if i == 0 and c.pos_enc_kq:
        raise ValueError("i: the hybrid first layer (pos_enc_kq: queries and keys read [h, P]) is not recomputed "
                         "here; use layers 1 and above")
    if c.unit_norm:
        raise ValueError("model: unit_norm layers (unit-norm queries, keys or values) are not recomputed here; "
                         "their linearisation is not defined")
    _, cache = model.forward(params, x)
    h = cache.residuals[i]
    a = h
    if c.layernorm:
        a, _ = ops.layernorm_forward(h, params[f"l{i}.ln1.w"], params[f"l{i}.ln1.b"])
    delta = _attention_out(model, params, i, a, c.layers[i])
    return np.asarray(_host(a), np.float64), np.asarray(_host(delta), np.float64)


def _attention_out(model, params, i, a, kind, weights=None):
    """o_merged W_O of layer i's attention (kind), with ``weights`` (wq, wk, wv, wo) replacing the layer's."""
    c, ops = model.config, model.ops
    wq, wk, wv, wo = weights if weights is not None else (params[f"l{i}.wq"], params[f"l{i}.wk"],
                                                           params[f"l{i}.wv"], params[f"l{i}.wo"])
    H = c.heads
    q = _split_heads(ops.dense_forward(a, wq)[0], H)
    k = _split_heads(ops.dense_forward(a, wk)[0], H)
    v = _split_heads(ops.dense_forward(a, wv)[0], H)
    if kind == "linear":
        o, _ = ops.linear_attention_forward(q, k, v)
    elif kind == "softmax":
        o, _ = ops.softmax_attention_forward(q, k, v)
    else:
        o, _ = ops.mesa_forward(q, k, v, model.mesa_lam(params, i), gamma=model.mesa_gamma(params, i),
                                backward=c.mesa_backward)
    return ops.dense_forward(_merge_heads(o), wo)[0]


def _linear_attention_heads(a, wq, wk, wv, H, ops):
    """Linear attention [L2] on a (N, T, D): merged head outputs (N, T, H*d) and the caches for backward."""
    cq, ck, cv = ops.dense_forward(a, wq), ops.dense_forward(a, wk), ops.dense_forward(a, wv)
    o, ca = ops.linear_attention_forward(_split_heads(cq[0], H), _split_heads(ck[0], H), _split_heads(cv[0], H))
    return _merge_heads(o), (cq[1], ck[1], cv[1], ca)


def _lstsq_wo(m, target):
    """W_O minimising ||m W_O - target||^2 over all rows; m (N, T, H*d), target (N, T, D) -> (H*d, D)."""
    M = m.reshape(-1, m.shape[-1]).astype(np.float64)
    Y = target.reshape(-1, target.shape[-1]).astype(np.float64)
    return np.linalg.lstsq(M, Y, rcond=None)[0]


def fit_linear_attention(a, target, init, H: int, *, steps: int = 300, lr: float = 1e-3, ops=None):
    """[P4] fit (wq, wk, wv, wo) of a causal linear attention so that linear_attention(a) W_O ~ target.

    a, target: (N, T, D) float64; init: (wq, wk, wv) of shapes (D, H*d), the starting point.  Variable projection:
    the output is linear in W_O, so at every step W_O is the exact least-squares solution given W_Q, W_K, W_V, and
    Adam (b1 0.9, b2 0.999) takes ``steps`` steps on W_Q, W_K, W_V with the gradient of
    mean((pred - target)^2) / mean(target^2) at that W_O (the gradient of the projected loss).  Adam's step is
    lr times the RMS of each matrix at the start, so ``lr`` is a relative step size.  Returns the weights with the
    lowest training error seen, and the error history (normalised MSE at each step).
    Returns ((wq, wk, wv, wo), history)."""
    if ops is None:
        from . import ops
    a = np.asarray(a, np.float64)
    target = np.asarray(target, np.float64)
    scale = float(np.mean(target ** 2)) or 1.0
    w = [np.array(x, dtype=np.float64) for x in init]
    if len(w) != 3:
        raise ValueError(f"init: expected (wq, wk, wv), got {len(w)} arrays")
    names = ("wq", "wk", "wv")
    step_size = {k: lr * (float(np.sqrt(np.mean(x ** 2))) or 1.0) for k, x in zip(names, w)}
    params = dict(zip(names, w))                     # the same arrays as w: Adam updates them in place
    opt = AdamW(params, eps=1e-30)
    hist, best = [], None
    for step in range(steps + 1):
        m, (cq, ck, cv, ca) = _linear_attention_heads(a, *w, H, ops)
        wo = _lstsq_wo(m, target)
        pred, co = ops.dense_forward(m, wo)
        diff = pred - target
        err = float(np.mean(diff ** 2)) / scale
        hist.append(err)
        if best is None or err < best[0]:
            best = (err, [x.copy() for x in w] + [wo])
        if step == steps or not np.isfinite(err):
            break
        dm, _, _ = ops.dense_backward(2.0 * diff / (diff.size * scale), co)
        dq, dk, dv = ops.linear_attention_backward(_split_heads(dm, H), ca)
        grads = [ops.dense_backward(_merge_heads(g), c)[1] for g, c in ((dq, cq), (dk, ck), (dv, cv))]
        opt.update(params, dict(zip(names, grads)), step_size)
    return tuple(best[1]), hist


@dataclass
class LinearisationResult:
    """[P4] layer: index; loss_original / loss_linearised / loss_removed: the model's loss on the evaluation
    batch with the layer as trained, replaced by the fitted linear attention, and with its attention output
    set to 0; fit_nmse: the fitted layer's held-out error on the evaluation batch, mean squared error of its block
    output divided by the mean square of the original block output; fit_history: the same error on the fitting
    batch at every Adam step (entry 0: the starting point)."""
    layer: int
    loss_original: float
    loss_linearised: float
    loss_removed: float
    fit_nmse: float
    fit_history: list
    config: ModelConfig
    params: dict

    def to_dict(self) -> dict:
        return {"layer": self.layer, "loss_original": self.loss_original, "loss_linearised": self.loss_linearised,
                "loss_change": self.loss_linearised - self.loss_original, "loss_removed": self.loss_removed,
                "fit_error_heldout": self.fit_nmse,
                "fit_error_train_start": self.fit_history[0] if self.fit_history else None,
                "fit_error_train_best": min(self.fit_history) if self.fit_history else None}


def linearise_layer(model: Transformer, params: dict, i: int, x_fit, x_eval, y_eval, *, steps: int = 300,
                    lr: float = 1e-3) -> LinearisationResult:
    """[P4] replace layer i's attention by a causal linear attention fitted (see ``fit_linear_attention``) to
    reproduce its block output on ``x_fit``; evaluate the model's loss on (x_eval, y_eval) before and after.
    The fitted model is ``Transformer(result.config)`` with ``result.params`` (layer i of kind "linear")."""
    c = model.config
    if not (isinstance(i, (int, np.integer)) and 0 <= i < len(c.layers)):
        raise ValueError(f"i: expected a layer index in [0, {len(c.layers)}), got {i!r}")
    if i == 0 and c.pos_enc_kq:
        raise ValueError("i: the hybrid first layer (pos_enc_kq: queries and keys read [h, P]) has no linear "
                         "attention of the same inputs to fit; linearise layers 1 and above")
    a_fit, d_fit = attention_block_io(model, params, x_fit, i)
    dt = params[f"l{i}.wq"].dtype
    init = tuple(np.asarray(_host(params[f"l{i}.{k}"]), np.float64) for k in ("wq", "wk", "wv"))
    w, hist = fit_linear_attention(a_fit, d_fit, init, c.heads, steps=steps, lr=lr, ops=model.ops)
    layers = list(c.layers)
    layers[i] = "linear"
    new_cfg = c.replace(layers=tuple(layers))
    conv = array_module(params[f"l{i}.wq"]).asarray          # back where the model's parameters live
    new_params = {k: v for k, v in params.items() if k not in (f"l{i}.lam_raw", f"l{i}.gamma_raw")}
    for k, v in zip(("wq", "wk", "wv", "wo"), w):
        new_params[f"l{i}.{k}"] = conv(v.astype(dt))
    new_model = Transformer(new_cfg, ops=model.ops)
    removed = dict(params)
    removed[f"l{i}.wo"] = params[f"l{i}.wo"] * 0
    a_ev, d_ev = attention_block_io(model, params, x_eval, i)
    fit_ev = _attention_out(new_model, new_params, i, a_ev, "linear", weights=w)          # float64
    fit_nmse = float(np.mean((fit_ev - d_ev) ** 2)) / max(float(np.mean(d_ev ** 2)), 1e-300)
    return LinearisationResult(layer=int(i), loss_original=model.loss(params, x_eval, y_eval),
                               loss_linearised=new_model.loss(new_params, x_eval, y_eval),
                               loss_removed=model.loss(removed, x_eval, y_eval), fit_nmse=fit_nmse,
                               fit_history=hist, config=new_cfg, params=new_params)
