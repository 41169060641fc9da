"""Model configuration: one frozen dataclass with the authors' defaults (docs/experiments.md).

The defaults are the official default model: 2 layers of causal linear attention [L2], 4 heads,
width 40, key size 20, no MLP, no LayerNorm, activations clipped to +-1.5 after every block [L6],
constructed tokens [T2] for n = 10, weights initialised N(0, 0.0002^2).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .ops.mesa import BACKWARD_STRATEGIES

ATTENTION_KINDS = ("linear", "softmax", "mesa")
INPUT_MODES = ("constructed", "embed", "tokens")


def omit_defaults(record: dict, optional: dict) -> dict:
    """``record`` without the fields of ``optional`` ({name: default}) that hold their default (a tuple default also
    matches the list the record may hold): a field added later then leaves every existing record, and the job key
    hashed from it, as it was.  Shared by ``ModelConfig.to_dict`` and the tasks' ``to_dict``."""
    def is_default(k, v):
        return k in optional and (v == optional[k] or (isinstance(optional[k], tuple) and v == list(optional[k])))
    return {k: v for k, v in record.items() if not is_default(k, v)}


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple = ("linear", "linear")   # attention kind per layer: "linear" [L2] | "softmax" [L3] | "mesa" [M1]; hybrids allowed
    heads: int = 4                          # H, heads per layer
    width: int = 40                         # D, residual-stream width (= 4n for constructed tokens [T2])
    key_size: int = 20                      # d, key/query/value size per head
    mlp: bool = False                       # [L5] GELU MLP (with residual) after each attention block
    mlp_factor: int = 4                     # MLP hidden width = mlp_factor * width
    layernorm: bool = False                 # [L4] pre-LayerNorm before attention / MLP (+ a final one in embed/tokens modes)
    clip: float | None = 1.5                # [L6] clip activations to [-clip, clip] after every block; None: off
    input: str = "constructed"              # "constructed" [T2] | "embed" (linear embedding of raw vectors) | "tokens" (integer ids)
    input_dim: int = 10                     # n (state size) for constructed/embed; vocabulary size for tokens
    output_dim: int = 10                    # n (prediction size), or vocabulary size for tokens
    pos_enc: bool = False                   # [L7] add sinusoidal positional encoding after the embedding
    init_std: float = 0.0002                # N(0, init_std^2) for every weight matrix (official: 0.0002 at every depth)
    mesa_lam_init: float = 1.0              # [M1] initial lam of every mesa head
    mesa_lam_min: float = 1e-4              # [M1] lam = softplus(rho) + lam_min keeps lam > 0
    mesa_gamma: bool = False                # [M4] learn a forgetting factor gamma = sigmoid(g) per mesa head
    mesa_backward: str = "store"            # [M3] how mesa_backward gets R_t: "store" | "checkpoint" | "downdate"
    mesa_chunk: int | None = None           # [M5] set: mesa layers run the exact chunkwise form with this many tokens per chunk
    pos_enc_kq: bool = False                # [L7] the first layer's queries and keys read [h, P] (P sinusoidal, width D);
                                            # its values and the residual stream see no position (the authors' hybrid layer)
    io_bias: bool = True                    # biases of the embedding and read-out dense maps (embed/tokens modes)
    unit_norm: tuple = ()                   # which of each head's q, k, v ("q", "k", "v") are scaled to unit L2 norm
                                            # (over d) before the attention op, in every layer but a pos_enc_kq first
                                            # one; the authors' [T4] models: ("q", "k") in softmax layers, ("q", "v")
                                            # in the mesa layer (their code normalises the projection it regresses on)

    #: fields left out of ``to_dict`` while at their default, so that adding them left every existing job key as
    #: it was (a job's key hashes its model record)
    OPTIONAL = {"pos_enc_kq": False, "io_bias": True, "unit_norm": ()}

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        bad = [k for k in self.layers if k not in ATTENTION_KINDS]
        if not self.layers or bad:
            raise ValueError(f"layers: expected a non-empty sequence of {ATTENTION_KINDS}, got {self.layers!r}")
        for name in ("heads", "width", "key_size", "mlp_factor", "input_dim", "output_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive integer, got {v!r}")
        if self.input not in INPUT_MODES:
            raise ValueError(f"input: expected one of {INPUT_MODES}, got {self.input!r}")
        if self.input == "constructed":
            if self.width != 4 * self.input_dim:
                raise ValueError(f"width: constructed tokens (0, s_t, s_t, s_(t-1)) need width = 4 * input_dim "
                                 f"= {4 * self.input_dim}, got {self.width}")
            if self.output_dim != self.input_dim:
                raise ValueError(f"output_dim: constructed tokens predict the next state, so output_dim must "
                                 f"equal input_dim = {self.input_dim}, got {self.output_dim}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip: expected None or a positive bound, got {self.clip!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std: expected > 0, got {self.init_std!r}")
        if not self.mesa_lam_init > self.mesa_lam_min >= 0:
            raise ValueError("mesa_lam_init: expected mesa_lam_init > mesa_lam_min >= 0, "
                             f"got {self.mesa_lam_init!r} and {self.mesa_lam_min!r}")
        if self.mesa_backward not in BACKWARD_STRATEGIES:
            raise ValueError(f"mesa_backward: expected one of {BACKWARD_STRATEGIES}, got {self.mesa_backward!r}")
        if self.mesa_chunk is not None:
            if isinstance(self.mesa_chunk, bool) or not isinstance(self.mesa_chunk, int) or self.mesa_chunk < 1:
                raise ValueError(f"mesa_chunk: expected None or a positive int, got {self.mesa_chunk!r}")
            if self.mesa_gamma:
                raise ValueError("mesa_chunk: the chunkwise form [M5] has no forgetting factor; "
                                 "use mesa_chunk=None with mesa_gamma=True")

        if isinstance(self.unit_norm, str) or not isinstance(self.unit_norm, (tuple, list)):
            raise ValueError(f"unit_norm: expected a tuple of 'q', 'k', 'v', got {self.unit_norm!r}")
        object.__setattr__(self, "unit_norm", tuple(self.unit_norm))
        if any(u not in ("q", "k", "v") for u in self.unit_norm) or len(set(self.unit_norm)) != len(self.unit_norm):
            raise ValueError(f"unit_norm: expected distinct entries of 'q', 'k', 'v', got {self.unit_norm!r}")
        if self.pos_enc_kq and self.layernorm:
            raise ValueError("pos_enc_kq: the first layer's positional queries and keys are built without a "
                             "LayerNorm; use layernorm=False")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["unit_norm"] = list(self.unit_norm)
        return omit_defaults(d, self.OPTIONAL)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
