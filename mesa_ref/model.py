"""The Transformer, composed from an ops namespace (mesa_ref.ops by default, mesa_fast.ops for speed).

Glossary of shapes: B batch, T time, D width (residual stream), H heads, d key size per head,
n input/state size, V vocabulary, M MLP hidden width.

Block l (for every entry of config.layers), as in the official code:
    a = LN1(h) if layernorm else h
    q, k, v = a W_Q, a W_K, a W_V                  [B,T,H*d] -> per head [B,H,T,d]
    u = u / (eps + |u|) for u in unit_norm (of q, k, v)  per head, over d (not in a pos_enc_kq first layer)
    o = attention(q, k, v)                         "linear" [L2] | "softmax" [L3] | "mesa" [M1]-[M4]
    h = clip(h + o_merged W_O)                     [L6] clip after every block
    if mlp: h = clip(h + W_2 gelu(W_1 LN2(h) + b_1) + b_2)       [L5]

With ``pos_enc_kq`` the first block's queries and keys are [h, P] W_Q, [h, P] W_K (P the sinusoidal encoding
[L7] of width D, so W_Q, W_K are (2D, H*d)) while its values stay h W_V: position reaches the first attention's
pattern and nothing else (the authors' "hybrid" first layer).

Input modes: "constructed" [T2] feeds tokens (0, s_t, s_t, s_{t-1}) directly (D = 4n) and reads the
prediction of s_{t+1} from the first n coordinates of the last residual stream; "embed" maps raw
vectors with a dense layer (+ positional encoding [L7]); "tokens" looks up integer ids. The last two
read out with (final LN and) a dense layer.

Parameters are a flat dict name -> array: "l{i}.wq" (D, H*d), "l{i}.wk" (both (2D, H*d) in a hybrid first
layer), "l{i}.wv" (D, H*d), "l{i}.wo" (H*d, D), mesa heads "l{i}.lam_raw" (H,) [lam = softplus + lam_min] and
"l{i}.gamma_raw" (H,) [gamma = sigmoid], "l{i}.ln1.w"/".b", "l{i}.ln2.w"/".b", "l{i}.mlp.w1" (D, M), ".b1",
".w2" (M, D), ".b2", "embed.w" (n or V, D), "embed.b" (D,), "ln_f.w"/".b", "out.w" (D, out), "out.b" (the two
biases only with ``io_bias``).
Gradients come back as a dict with exactly the same keys.
"""
from __future__ import annotations

import numpy as np

from . import ops as ref_ops
from .config import ModelConfig
from .ops._common import array_module


def softplus(x, xp=np):
    return xp.logaddexp(0, x)


def sigmoid(x, xp=np):
    return 0.5 * (1 + xp.tanh(0.5 * x))


def inverse_softplus(y: float) -> float:
    return float(y + np.log(-np.expm1(-y)))


class Transformer:
    """A Transformer over a given ops namespace.  ``model = Transformer(cfg)``; ``params = model.init(seed)``;
    ``y, cache = model.forward(params, x)``; ``grads, dx = model.backward(dy, cache)``;
    ``loss, grads = model.loss_and_grads(params, x, y)``.
    """

    def __init__(self, config: ModelConfig | None = None, *, ops=None):
        self.config = config if config is not None else ModelConfig()
        self.ops = ops if ops is not None else ref_ops

    # ------------------------------------------------------------------ parameters
    def init(self, seed: int = 0, dtype=np.float32) -> dict:
        """Draw parameters: weight matrices N(0, init_std^2), biases 0, LayerNorm gains 1, mesa lam = mesa_lam_init,
        gamma = sigmoid(4) ~ 0.982."""
        c = self.config
        rng = np.random.default_rng(seed)
        D, H, d = c.width, c.heads, c.key_size
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype: expected float32 or float64, got {dt}")

        def w(*shape):
            return (c.init_std * rng.standard_normal(shape)).astype(dt)

        p = {}
        if c.input in ("embed", "tokens"):
            p["embed.w"] = w(c.input_dim, D)
            if c.io_bias:
                p["embed.b"] = np.zeros(D, dt)
        for i, kind in enumerate(c.layers):
            if c.layernorm:
                p[f"l{i}.ln1.w"], p[f"l{i}.ln1.b"] = np.ones(D, dt), np.zeros(D, dt)
            Dqk = 2 * D if (i == 0 and c.pos_enc_kq) else D                 # [h, P] feeds the first q and k
            p[f"l{i}.wq"], p[f"l{i}.wk"], p[f"l{i}.wv"] = w(Dqk, H * d), w(Dqk, H * d), w(D, H * d)
            p[f"l{i}.wo"] = w(H * d, D)
            if kind == "mesa":
                p[f"l{i}.lam_raw"] = np.full(H, inverse_softplus(c.mesa_lam_init - c.mesa_lam_min), dt)
                if c.mesa_gamma:
                    p[f"l{i}.gamma_raw"] = np.full(H, 4.0, dt)
            if c.mlp:
                M = c.mlp_factor * D
                if c.layernorm:
                    p[f"l{i}.ln2.w"], p[f"l{i}.ln2.b"] = np.ones(D, dt), np.zeros(D, dt)
                p[f"l{i}.mlp.w1"], p[f"l{i}.mlp.b1"] = w(D, M), np.zeros(M, dt)
                p[f"l{i}.mlp.w2"], p[f"l{i}.mlp.b2"] = w(M, D), np.zeros(D, dt)
        if c.input in ("embed", "tokens"):
            if c.layernorm:
                p["ln_f.w"], p["ln_f.b"] = np.ones(D, dt), np.zeros(D, dt)
            p["out.w"] = w(D, c.output_dim)
            if c.io_bias:
                p["out.b"] = np.zeros(c.output_dim, dt)
        return p

    def mesa_lam(self, params, i):
        """[M1] lam of layer i's heads, (H,)."""
        raw = params[f"l{i}.lam_raw"]
        return softplus(raw, array_module(raw)) + raw.dtype.type(self.config.mesa_lam_min)

    def mesa_gamma(self, params, i):
        """[M4] gamma of layer i's heads, (H,), or None when the forgetting factor is off."""
        raw = params.get(f"l{i}.gamma_raw")
        return None if raw is None else sigmoid(raw, array_module(raw))

    # ------------------------------------------------------------------ forward
    def _check_input(self, params, x):
        c = self.config
        if c.input == "tokens":
            if not (hasattr(x, "dtype") and x.dtype.kind in "iu" and x.ndim == 2):
                raise ValueError(f"x: expected integer token ids of shape (B, T), got {getattr(x, 'dtype', type(x))} "
                                 f"{getattr(x, 'shape', '')}")
            if x.size and (int(x.min()) < 0 or int(x.max()) >= c.input_dim):
                raise ValueError(f"x: token ids must lie in [0, {c.input_dim})")
            return
        want = c.width if c.input == "constructed" else c.input_dim
        if not hasattr(x, "ndim") or x.ndim != 3 or x.shape[-1] != want:
            raise ValueError(f"x: expected shape (B, T, {want}), got {getattr(x, 'shape', type(x))}")
        dt = next(iter(params.values())).dtype
        if x.dtype != dt:
            raise ValueError(f"x: dtype {x.dtype} does not match the parameters' dtype {dt}")

    def forward(self, params: dict, x):
        """y, cache = forward(params, x).  x: (B, T, 4n) constructed tokens, (B, T, n) raw vectors, or (B, T) ids.
        y: (B, T, output_dim).  cache.residuals holds the residual stream before the first block and after every
        block ([B,T,D] each, length L+1); cache.layers[i]["attn"] the attention op's cache."""
        c, ops = self.config, self.ops
        self._check_input(params, x)
        xp = array_module(x, *params.values())
        top = {}
        # ---- input
        if c.input == "constructed":
            h = x                                                            # [B,T,D]
        elif c.input == "embed":
            h, top["embed"] = ops.dense_forward(x, params["embed.w"], params.get("embed.b"))   # [B,T,D]
        else:
            h = params["embed.w"][x]                                         # [B,T,D]
            if "embed.b" in params:
                h = h + params["embed.b"]
        if c.pos_enc:
            h = h + ops.sinusoidal_positional_encoding(x.shape[1], c.width, dtype=h.dtype, xp=xp)
        residuals = [h]
        layers = []
        H = c.heads
        for i, kind in enumerate(c.layers):
            lc = {}
            # one product for the three projections: [B,T,D] x [D, 3*H*d] -> [B,T,3*H*d]  [L2], after the LayerNorm
            # as one op where there is one (ops/layernorm_dense.py)
            if i == 0 and c.pos_enc_kq:                                        # the hybrid first layer
                P = ops.sinusoidal_positional_encoding(h.shape[1], c.width, dtype=h.dtype, xp=xp)      # [T,D]
                hp = xp.concatenate([h, xp.broadcast_to(P, h.shape)], axis=-1)                          # [B,T,2D]
                w_qk = xp.concatenate([params["l0.wq"], params["l0.wk"]], axis=1)                      # [2D,2*H*d]
                qk, lc["qk"] = ops.dense_forward(hp, w_qk)                                              # [B,T,2*H*d]
                v_, lc["v"] = ops.dense_forward(h, params["l0.wv"])                                     # [B,T,H*d]
                qkv = xp.concatenate([qk, v_], axis=-1)                                                 # [B,T,3*H*d]
            else:
                w_qkv = xp.concatenate([params[f"l{i}.wq"], params[f"l{i}.wk"], params[f"l{i}.wv"]], axis=1)
                if c.layernorm:
                    qkv, lc["ln_qkv"] = ops.layernorm_dense_forward(h, params[f"l{i}.ln1.w"], params[f"l{i}.ln1.b"],
                                                                    w_qkv)
                else:
                    qkv, lc["qkv"] = ops.dense_forward(h, w_qkv)
            q, k, v = ops.split_qkv(qkv, H)                                     # 3 x [B,H,T,d]
            if c.unit_norm and not (i == 0 and c.pos_enc_kq):                 # unit-norm q, k and/or v
                if "q" in c.unit_norm:
                    q, lc["qn"] = ops.l2_normalize_forward(q)
                if "k" in c.unit_norm:
                    k, lc["kn"] = ops.l2_normalize_forward(k)
                if "v" in c.unit_norm:
                    v, lc["vn"] = ops.l2_normalize_forward(v)
            if kind == "linear":
                o, lc["attn"] = ops.linear_attention_forward(q, k, v)
            elif kind == "softmax":
                o, lc["attn"] = ops.softmax_attention_forward(q, k, v)
            else:
                lam, gamma = self.mesa_lam(params, i), self.mesa_gamma(params, i)
                if c.mesa_chunk is not None:                                 # [M5] chunkwise form
                    o, lc["attn"] = ops.mesa_chunkwise_forward(q, k, v, lam, chunk=c.mesa_chunk)
                else:
                    o, lc["attn"] = ops.mesa_forward(q, k, v, lam, gamma=gamma, backward=c.mesa_backward)
            delta, lc["o"] = ops.dense_forward(ops.merge_heads(o), params[f"l{i}.wo"])   # [B,T,D]
            h = h + delta
            if c.clip is not None:
                h, lc["clip1"] = ops.clip_forward(h, c=c.clip)
            if c.mlp and c.layernorm and c.clip is None:                   # the sub-block as one op (ops/mlp_block.py)
                h, lc["mlp_block"] = ops.mlp_block_forward(h, params[f"l{i}.ln2.w"], params[f"l{i}.ln2.b"],
                                                           params[f"l{i}.mlp.w1"], params[f"l{i}.mlp.b1"],
                                                           params[f"l{i}.mlp.w2"], params[f"l{i}.mlp.b2"])
            elif c.mlp:
                m = h
                if c.layernorm:
                    m, lc["ln2"] = ops.layernorm_forward(h, params[f"l{i}.ln2.w"], params[f"l{i}.ln2.b"])
                delta, lc["mlp"] = ops.mlp_forward(m, params[f"l{i}.mlp.w1"], params[f"l{i}.mlp.b1"],   # [B,T,D]
                                                   params[f"l{i}.mlp.w2"], params[f"l{i}.mlp.b2"])
                h = h + delta
                if c.clip is not None:
                    h, lc["clip2"] = ops.clip_forward(h, c=c.clip)
            layers.append(lc)
            residuals.append(h)
        # ---- readout
        if c.input == "constructed":
            y = h[..., : c.output_dim]                                       # [B,T,n]
        else:
            if c.layernorm:
                y, top["ln_out"] = ops.layernorm_dense_forward(h, params["ln_f.w"], params["ln_f.b"],
                                                               params["out.w"], params.get("out.b"))   # [B,T,out]
            else:
                y, top["out"] = ops.dense_forward(h, params["out.w"], params.get("out.b"))       # [B,T,out]
        cache = ForwardCache(x=x, residuals=residuals, layers=layers, top=top, param_keys=tuple(params), params=params)
        return y, cache

    # ------------------------------------------------------------------ backward
    def backward(self, dy, cache: "ForwardCache", *, input_grad: bool = True):
        """grads, dx = backward(dy, cache).  dy (B, T, output_dim); grads has the keys of params; dx is the
        gradient w.r.t. x (float inputs) or None (token ids, or ``input_grad=False``: then the first block's
        input-side product is skipped where no parameter needs it)."""
        c, ops = self.config, self.ops
        params = cache.params
        h_last = cache.residuals[-1]
        xp = array_module(h_last)
        if tuple(dy.shape) != tuple(h_last.shape[:2]) + (c.output_dim,):
            raise ValueError(f"dy: expected shape {tuple(h_last.shape[:2]) + (c.output_dim,)}, got {tuple(dy.shape)}")
        grads = {}
        top = cache.top
        if c.input == "constructed":
            dh = xp.zeros_like(h_last)
            dh[..., : c.output_dim] = dy
        else:
            if c.layernorm:
                (dh, grads["ln_f.w"], grads["ln_f.b"], grads["out.w"],
                 grads["out.b"]) = ops.layernorm_dense_backward(dy, top["ln_out"])
            else:
                dh, grads["out.w"], grads["out.b"] = ops.dense_backward(dy, top["out"])    # out.b: None without bias
        H = c.heads
        for i in reversed(range(len(c.layers))):
            kind, lc = c.layers[i], cache.layers[i]
            if "mlp_block" in lc:
                (dh, grads[f"l{i}.ln2.w"], grads[f"l{i}.ln2.b"], grads[f"l{i}.mlp.w1"], grads[f"l{i}.mlp.b1"],
                 grads[f"l{i}.mlp.w2"], grads[f"l{i}.mlp.b2"]) = ops.mlp_block_backward(dh, lc["mlp_block"])
            elif c.mlp:
                if c.clip is not None:
                    dh = ops.clip_backward(dh, lc["clip2"])
                (dm, grads[f"l{i}.mlp.w1"], grads[f"l{i}.mlp.b1"], grads[f"l{i}.mlp.w2"],
                 grads[f"l{i}.mlp.b2"]) = ops.mlp_backward(dh, lc["mlp"])
                if c.layernorm:
                    dm, grads[f"l{i}.ln2.w"], grads[f"l{i}.ln2.b"] = ops.layernorm_backward(dm, lc["ln2"])
                dh = dh + dm                                                 # residual branch
            if c.clip is not None:
                dh = ops.clip_backward(dh, lc["clip1"])
            do_merged, grads[f"l{i}.wo"], _ = ops.dense_backward(dh, lc["o"])
            do = ops.split_heads(do_merged, H)                                # [B,H,T,d]
            if kind == "linear":
                dq, dk, dv = ops.linear_attention_backward(do, lc["attn"])
            elif kind == "softmax":
                dq, dk, dv = ops.softmax_attention_backward(do, lc["attn"])
            else:
                g = (ops.mesa_chunkwise_backward(do, lc["attn"]) if c.mesa_chunk is not None
                     else ops.mesa_backward(do, lc["attn"]))
                dq, dk, dv, dlam = g[:4]
                raw = params[f"l{i}.lam_raw"]
                grads[f"l{i}.lam_raw"] = dlam * sigmoid(raw, xp)             # d softplus = sigmoid
                if len(g) > 4:
                    graw = params[f"l{i}.gamma_raw"]
                    s = sigmoid(graw, xp)
                    grads[f"l{i}.gamma_raw"] = g[4] * s * (1 - s)
            if "qn" in lc:                                                   # unit_norm
                dq = ops.l2_normalize_backward(dq, lc["qn"])
            if "kn" in lc:
                dk = ops.l2_normalize_backward(dk, lc["kn"])
            if "vn" in lc:
                dv = ops.l2_normalize_backward(dv, lc["vn"])
            # the product for da is needed by everything below block i, and by block 0's LayerNorm; below block 0
            # of constructed input sits only x itself
            need_da = input_grad or i > 0 or c.layernorm or c.input != "constructed"
            dqkv = ops.merge_qkv(dq, dk, dv)
            if "qk" in lc:                                                   # the hybrid first layer
                HD = dqkv.shape[-1] // 3
                dhp, dw_qk, _ = ops.dense_backward(xp.ascontiguousarray(dqkv[..., :2 * HD]), lc["qk"])   # [B,T,2D]
                dv_in, grads["l0.wv"], _ = ops.dense_backward(xp.ascontiguousarray(dqkv[..., 2 * HD:]), lc["v"])
                grads["l0.wq"] = xp.ascontiguousarray(dw_qk[:, :HD])
                grads["l0.wk"] = xp.ascontiguousarray(dw_qk[:, HD:])
                dh = dh + dhp[..., :c.width] + dv_in                         # residual branch; P is a constant
                continue
            if c.layernorm:
                da, grads[f"l{i}.ln1.w"], grads[f"l{i}.ln1.b"], dw_qkv, _ = ops.layernorm_dense_backward(dqkv,
                                                                                                       lc["ln_qkv"])
            else:
                da, dw_qkv, _ = ops.dense_backward(dqkv, lc["qkv"], input_grad=need_da)
            HD = dw_qkv.shape[1] // 3
            for j, name in enumerate(("wq", "wk", "wv")):
                grads[f"l{i}.{name}"] = xp.ascontiguousarray(dw_qkv[:, j * HD:(j + 1) * HD])
            if need_da:
                dh = dh + da                                                 # residual branch
        dx = None
        if c.input == "constructed":
            dx = dh if input_grad else None
        elif c.input == "embed":
            dx, grads["embed.w"], grads["embed.b"] = ops.dense_backward(dh, top["embed"], input_grad=input_grad)
        else:
            gw = xp.zeros_like(params["embed.w"])
            _scatter_add(gw, cache.x.reshape(-1), dh.reshape(-1, dh.shape[-1]))
            grads["embed.w"] = gw
            if "embed.b" in params:
                grads["embed.b"] = dh.reshape(-1, dh.shape[-1]).sum(axis=0)
        return {k: grads[k] for k in cache.param_keys}, dx

    # ------------------------------------------------------------------ loss
    def loss(self, params, x, y):
        """MSE with the official normalisation (sum / (2 B T)) for vector outputs, cross-entropy for token ids."""
        pred, _ = self.forward(params, x)
        if self.config.input == "tokens":
            return float(self.ops.cross_entropy_forward(pred, y)[0])
        return float(self.ops.mse_forward(pred, y)[0])

    def loss_and_grads(self, params, x, y):
        """(loss, grads) for one batch; see ``loss``.

        The ops namespace's ``batch_map`` may split the batch into contiguous shards (mesa_fast: one per thread);
        the losses are means over samples, so the batch's loss and gradients are the shards' weighted by their
        share of the samples. The reference runs one shard, the whole batch."""
        parts = self.ops.batch_map(lambda lo, hi: self._loss_and_grads(params, x[lo:hi], y[lo:hi]), x)
        if len(parts) == 1:
            return parts[0][2]
        n = x.shape[0]
        w = [(hi - lo) / n for lo, hi, _ in parts]
        loss = sum(wi * L for wi, (_, _, (L, _)) in zip(w, parts))
        grads = {}
        for k in parts[0][2][1]:
            g = parts[0][2][1][k] * w[0]
            for wi, (_, _, (_, gi)) in zip(w[1:], parts[1:]):
                g += gi[k] * wi
            grads[k] = g
        return float(loss), grads

    def _loss_and_grads(self, params, x, y):
        """(loss, grads) of one batch (or shard), unsplit."""
        pred, cache = self.forward(params, x)
        if self.config.input == "tokens":
            L, lcache = self.ops.cross_entropy_forward(pred, y)
            dpred = self.ops.cross_entropy_backward(1.0, lcache)
        else:
            L, lcache = self.ops.mse_forward(pred, y)
            dpred = self.ops.mse_backward(1.0, lcache)
        grads, _ = self.backward(dpred, cache, input_grad=False)
        return float(L), grads

    def num_params(self, params) -> int:
        return int(sum(v.size for v in params.values()))


class ForwardCache:
    """What backward needs, plus what analyses read (residual streams, attention caches)."""

    __slots__ = ("x", "residuals", "layers", "top", "param_keys", "params")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def _scatter_add(target, idx, values):
    """target[idx[i]] += values[i] with repeated indices accumulated (NumPy or CuPy)."""
    xp = array_module(target)
    if xp is np:
        np.add.at(target, idx, values)
    else:  # pragma: no cover - GPU only
        import cupyx
        cupyx.scatter_add(target, idx, values)
