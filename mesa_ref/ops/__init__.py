"""mesa_ref.ops: every primitive as a NAME_forward / NAME_backward pair (plain NumPy).

NAME_forward(inputs..., *, options) -> (out, cache);  NAME_backward(dout, cache) -> grads.
dense_gelu is the MLP's first layer, gelu(x W + b), as one op (the composition of the two; a backend may fuse it),
and mlp the whole MLP, gelu(x W1 + b1) W2 + b2 (the composition of dense_gelu and dense); mlp_block is the
pre-LayerNorm sub-block with its residual branch, x + mlp(layernorm(x)) (the composition of layernorm, mlp and
the addition); layernorm_dense is a LayerNorm and the dense layer it feeds (the query/key/value product, the
readout); l2_normalize scales vectors to unit L2 norm over the last axis (the q, k or v of ``unit_norm``).
Attention ops take q, k, v of shape (B, H, T, d).  docs/math.md tags: dense [L1], linear attention
[L2], softmax attention [L3], layernorm [L4], gelu [L5], clip [L6], positional encoding [L7],
mesa-layer [M1]-[M4], and its exact chunkwise form [M5]. ``batch_map`` says how a backend splits one training step's
batch into shards (ops/batching.py; the reference: one shard). Layout helpers (no arithmetic): split_qkv,
merge_qkv, split_heads, merge_heads move activations between (B, T, H*d) and (B, H, T, d).
"""
from .activations import ClipCache, GeluCache, clip_backward, clip_forward, gelu_backward, gelu_forward
from .attention_linear import LinearAttentionCache, linear_attention_backward, linear_attention_forward
from .attention_softmax import SoftmaxAttentionCache, softmax_attention_backward, softmax_attention_forward
from .batching import batch_map
from .dense import DenseCache, dense_backward, dense_forward
from .dense_gelu import DenseGeluCache, dense_gelu_backward, dense_gelu_forward
from .heads import merge_heads, merge_qkv, split_heads, split_qkv
from .l2norm import L2NormCache, l2_normalize_backward, l2_normalize_forward
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from .layernorm_dense import LayerNormDenseCache, layernorm_dense_backward, layernorm_dense_forward
from .loss import (CrossEntropyCache, MSECache, cross_entropy_backward, cross_entropy_forward,
                   mse_backward, mse_forward)
from .mesa import MesaCache, mesa_backward, mesa_direct, mesa_forward, validate_mesa_inputs
from .mesa_chunkwise import MesaChunkCache, mesa_chunkwise_backward, mesa_chunkwise_forward
from .mlp import MLPCache, mlp_backward, mlp_forward
from .mlp_block import MLPBlockCache, mlp_block_backward, mlp_block_forward
from .posenc import sinusoidal_positional_encoding

__all__ = [
    "dense_forward", "dense_backward",
    "dense_gelu_forward", "dense_gelu_backward",
    "mlp_forward", "mlp_backward",
    "mlp_block_forward", "mlp_block_backward",
    "linear_attention_forward", "linear_attention_backward",
    "softmax_attention_forward", "softmax_attention_backward",
    "layernorm_forward", "layernorm_backward",
    "layernorm_dense_forward", "layernorm_dense_backward",
    "l2_normalize_forward", "l2_normalize_backward",
    "gelu_forward", "gelu_backward",
    "clip_forward", "clip_backward",
    "mesa_forward", "mesa_backward", "mesa_direct", "validate_mesa_inputs",
    "mesa_chunkwise_forward", "mesa_chunkwise_backward",
    "sinusoidal_positional_encoding",
    "split_qkv", "merge_qkv", "split_heads", "merge_heads",
    "mse_forward", "mse_backward",
    "batch_map",
    "cross_entropy_forward", "cross_entropy_backward",
    "DenseCache", "DenseGeluCache", "MLPCache", "MLPBlockCache", "LinearAttentionCache", "SoftmaxAttentionCache", "LayerNormCache", "LayerNormDenseCache",
    "GeluCache", "ClipCache", "MSECache", "CrossEntropyCache", "MesaCache", "MesaChunkCache", "L2NormCache",
]
