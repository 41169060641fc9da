"""[T5]/[P5] Few-shot evaluation of an autoregressively trained model, and EOS / prompt tuning.

A model trained on [T1] with constructed tokens [T2] reads a sequence z_1..z_L (each in R^n) as the
tokens E_t = (0, z_t, z_t, z_{t-1}) (z_0 = 0) and predicts z_{t+1} in the first n output coordinates
at position t.  Laid out as a few-shot sequence ([T5], ``data.fewshot_sequence``)

    z = [p_1, ..., p_P,]  x_1, y_1, [eos,]  x_2, y_2, [eos,]  ...,  x_N, y_N, [eos]

the output at the position r_i of x_i is the model's prediction of y_i.  The model is used unchanged;
only the EOS vector (n,) and the prompt (P, n) are tuned, by Adam on

    L = 1/(2 B N) sum_{b, i} || y_{b,i} - out[b, r_i, :n] ||^2                (loss at the x positions:
                                                                              every third position with EOS)

Chain rule, written out (``input_gradients``):

    dout[b, r_i, :n] = (out[b, r_i, :n] - y_{b,i}) / (B N),   zero at every other position
    dE = model.backward(dout)[1]                        (B, L, 4n)  gradient w.r.t. the constructed tokens
    dz_t = dE[t, n:2n] + dE[t, 2n:3n] + dE[t+1, 3n:4n]  (the last term only for t < L-1)   [T2] transposed
    d eos = sum_b sum_{t in eos_pos} dz[b, t]           (one vector shared by every slot and sequence)
    d p_j = sum_b dz[b, j]                              (prompt token j sits at position j)

Shapes: B batch, N examples, n item size, P prompt length, L = P + N * (2 + [eos]) sequence length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .data import constructed_tokens, fewshot_regression, fewshot_sequence
from .optim import AdamW

__all__ = ["constructed_tokens_backward", "fewshot_forward", "fewshot_errors", "input_gradients",
           "TunedTokens", "tune_tokens"]


def constructed_tokens_backward(dE: np.ndarray) -> np.ndarray:
    """[T2] transpose of ``data.constructed_tokens``: dE (B, L, 4n) -> dz (B, L, n).

    E_t = (0, z_t, z_t, z_{t-1}) so z_t feeds slots 1 and 2 of token t and slot 3 of token t+1.
    """
    dE = np.asarray(dE)
    if dE.ndim != 3 or dE.shape[-1] % 4:
        raise ValueError(f"dE: expected shape (B, L, 4n), got {dE.shape}")
    n = dE.shape[-1] // 4
    dz = dE[:, :, n:2 * n] + dE[:, :, 2 * n:3 * n]            # (B, L, n)
    dz[:, :-1] += dE[:, 1:, 3 * n:]                           # z_t is the "previous" slot of token t+1
    return dz


def _check_model(model):
    c = model.config
    if c.input != "constructed":
        raise ValueError(f"model: few-shot evaluation needs a constructed-token model [T2], got input={c.input!r}")
    return c.input_dim


def _layout(xs, ys, eos, prompt, dtype):
    xs = np.asarray(xs, dtype=dtype)
    ys = np.asarray(ys, dtype=dtype)
    return fewshot_sequence(xs, ys, eos=eos, prompt=prompt)


def fewshot_forward(model, params, xs, ys, eos=None, prompt=None):
    """Run the frozen model on the laid-out few-shot sequence.

    xs, ys (B, N, n); eos (n,) or None; prompt (P, n) or None.  Returns (pred (B, N, n), cache, layout):
    pred[:, i] is the output at the position of x_i (the prediction of y_i), cache the model's forward
    cache, layout the ``data.FewShotSequence``.  Computed in the parameters' dtype.
    """
    n = _check_model(model)
    dtype = next(iter(params.values())).dtype
    lay = _layout(xs, ys, eos, prompt, dtype)
    if lay.seq.shape[-1] != n:
        raise ValueError(f"xs: expected items of size n = {n}, got {lay.seq.shape[-1]}")
    out, cache = model.forward(params, constructed_tokens(lay.seq))     # (B, L, n)
    return out[:, lay.read_pos], cache, lay


def fewshot_errors(model, params, xs, ys, eos=None, prompt=None) -> np.ndarray:
    """[P5] per-example error (N,): 1/(2B) sum_b ||y_{b,i} - yhat_{b,i}||^2 (the per-time-step loss convention)."""
    pred, _, _ = fewshot_forward(model, params, xs, ys, eos, prompt)
    diff = pred.astype(np.float64) - np.asarray(ys, dtype=np.float64)
    return 0.5 * (diff * diff).sum(axis=-1).mean(axis=0)


def input_gradients(model, params, xs, ys, eos=None, prompt=None):
    """Loss L = 1/(2BN) sum ||y - yhat||^2 at the x positions and its gradients w.r.t. the EOS vector and
    the prompt (chain rule in the module docstring).  Returns (L, d_eos or None, d_prompt or None)."""
    pred, cache, lay = fewshot_forward(model, params, xs, ys, eos, prompt)
    ys = np.asarray(ys, dtype=pred.dtype)
    B, N, n = ys.shape
    diff = pred - ys                                                     # (B, N, n)
    loss = float(0.5 * (diff.astype(np.float64) ** 2).sum() / (B * N))
    L = lay.seq.shape[1]
    dout = np.zeros((B, L, n), dtype=pred.dtype)                         # (B, L, n)
    dout[:, lay.read_pos] = diff / pred.dtype.type(B * N)
    _, dE = model.backward(dout, cache)                                  # (B, L, 4n)
    dz = constructed_tokens_backward(dE)                                 # (B, L, n)
    d_eos = dz[:, lay.eos_pos].sum(axis=(0, 1)) if eos is not None else None          # (n,)
    d_prompt = dz[:, lay.prompt_pos].sum(axis=0) if prompt is not None else None      # (P, n)
    return loss, d_eos, d_prompt


@dataclass
class TunedTokens:
    """Result of ``tune_tokens``: eos (n,) or None, prompt (P, n) or None, the training-loss curve."""
    eos: np.ndarray | None
    prompt: np.ndarray | None
    losses: list = field(default_factory=list)


def tune_tokens(model, params, *, steps: int, batch: int, N: int, eos=None, prompt=None,
                eos_lr: float = 1e-3, prompt_lr: float = 9e-4, two_task: bool = False, seed: int = 0,
                progress=None) -> TunedTokens:
    """[P5] tune the EOS vector and/or the prompt on the frozen model by Adam (official lrs: EOS 1e-3,
    prompt 9e-4) on fresh [T5] batches (``batch`` sequences of ``N`` examples per step).

    ``eos`` (n,) / ``prompt`` (P, n): initial values (None: that token is absent and not tuned).
    Returns a ``TunedTokens`` with copies of the tuned arrays and the per-step loss.
    """
    n = _check_model(model)
    if eos is None and prompt is None:
        raise ValueError("eos, prompt: nothing to tune (both None)")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
    dtype = next(iter(params.values())).dtype
    toks, lrs = {}, {}
    if eos is not None:
        toks["eos"], lrs["eos"] = np.array(eos, dtype=dtype), eos_lr
    if prompt is not None:
        toks["prompt"], lrs["prompt"] = np.array(prompt, dtype=dtype), prompt_lr
    opt = AdamW(toks)                   # plain Adam (b1 0.9, b2 0.999, eps 1e-8, no weight decay)
    rng = np.random.default_rng(seed)
    losses = []
    it = range(steps) if progress is None else progress(range(steps))
    for _ in it:
        d = fewshot_regression(rng, batch, N, n, two_task=two_task, dtype=dtype)
        loss, g_eos, g_prompt = input_gradients(model, params, d.xs, d.ys, toks.get("eos"), toks.get("prompt"))
        if not np.isfinite(loss):
            raise FloatingPointError(f"EOS/prompt tuning diverged: loss {loss}")
        grads = {}
        if "eos" in toks:
            grads["eos"] = g_eos
        if "prompt" in toks:
            grads["prompt"] = g_prompt
        opt.update(toks, grads, lrs)
        losses.append(loss)
    return TunedTokens(eos=toks.get("eos"), prompt=toks.get("prompt"), losses=losses)
