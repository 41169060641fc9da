"""mesa_fast.ops: the ``mesa_ref.ops`` namespace, with fast kernels where they exist.

Every public name of ``mesa_ref.ops`` is here, with the same signature (tests/api/test_api.py), so the one model in
``mesa_ref/model.py`` runs on either namespace. ``OPS`` below maps each name to its implementation, explicitly:

* a fast wrapper from ``mesa_fast/ops/<op>.py``, the module named as the reference's ``mesa_ref/ops/<op>.py``
  (``FAST`` lists these names; tests/fast/test_fast_layout.py checks the correspondence);
* or the reference's own function, for the ops without a fast kernel. Those are written against an array module
  ``xp`` and run on NumPy and on CuPy (the chunkwise mesa-layer [M5], ``mesa_chunkwise_forward`` / ``_backward``,
  among them: CuPy input runs it on the GPU through cuBLAS / cuSOLVER);
* the cache types are the reference's NamedTuples, except ``MesaCache``, which is ``MesaFastCache`` (what this
  namespace's ``mesa_forward`` returns).

The fast wrappers take the same arguments as their ``mesa_ref.ops`` namesakes, validate them with the same
``mesa_ref.ops._common`` checks (so the same ``ValueError``s), and return the same kinds of outputs: NumPy in -> NumPy
out of the same dtype. Their caches are their own NamedTuples (the model only hands them back to the matching
backward); a cache from the reference (which is what a CuPy call returns) is passed on to the reference backward.
NaN/inf checks: shape, dtype and argument checks run before any work, as in the reference; the check for NaN/inf is
made where it costs least (the kernels look at their inputs as they load them; dense checks its output when that is
smaller, and dW = x^T dy instead of dy), and a failure always ends in the reference's own check of the offending
input, so the message is the reference's. The outputs computed before such a ValueError are dropped.

NumPy in -> NumPy out, CuPy in -> CuPy out. Where NumPy input is computed differs by op (the full rule is in
``mesa_fast.backend``): ``mesa_fast.set_backend`` / MESA_BACKEND decide it for the mesa-layer pair only; the other
fast ops have no CUDA twin and run their Numba kernels on NumPy input, the reference op on CuPy input.
"""
from mesa_ref import ops as _ref

from . import (activations, attention_linear, attention_softmax, batching, dense, dense_gelu, heads, l2norm,
               layernorm, layernorm_dense, loss, mesa, mlp, mlp_block)
from .mesa import MesaFastCache

# name -> the fast wrapper (``mesa_fast/ops/<the reference's module name>.py``)
_FAST_OPS = {
    # mesa-layer [M1]-[M4]: Numba (CPU) and CUDA (CuPy) kernels; NumPy input goes where the backend setting says
    "mesa_forward": mesa.mesa_forward,
    "mesa_backward": mesa.mesa_backward,
    # one shard of a training step's batch per thread
    "batch_map": batching.batch_map,
    # the others: Numba kernels for NumPy input (whatever the backend setting), the reference op for CuPy input
    "dense_forward": dense.dense_forward,                                           # [L1]
    "dense_backward": dense.dense_backward,
    "dense_gelu_forward": dense_gelu.dense_gelu_forward,                            # [L1] + [L5]
    "dense_gelu_backward": dense_gelu.dense_gelu_backward,
    "mlp_forward": mlp.mlp_forward,                                                 # [L1] + [L5]
    "mlp_backward": mlp.mlp_backward,
    "mlp_block_forward": mlp_block.mlp_block_forward,                               # [L4] + [L1] + [L5]
    "mlp_block_backward": mlp_block.mlp_block_backward,
    "linear_attention_forward": attention_linear.linear_attention_forward,          # [L2]
    "linear_attention_backward": attention_linear.linear_attention_backward,
    "softmax_attention_forward": attention_softmax.softmax_attention_forward,       # [L3]
    "softmax_attention_backward": attention_softmax.softmax_attention_backward,
    "layernorm_forward": layernorm.layernorm_forward,                               # [L4]
    "layernorm_backward": layernorm.layernorm_backward,
    "layernorm_dense_forward": layernorm_dense.layernorm_dense_forward,             # [L4] + [L1]
    "layernorm_dense_backward": layernorm_dense.layernorm_dense_backward,
    "gelu_forward": activations.gelu_forward,                                       # [L5]
    "gelu_backward": activations.gelu_backward,
    "clip_forward": activations.clip_forward,                                       # [L6]
    "clip_backward": activations.clip_backward,
    "split_qkv": heads.split_qkv,                                                   # head layout: views, no copies
    "split_heads": heads.split_heads,
    "merge_qkv": heads.merge_qkv,
    "mse_forward": loss.mse_forward,                                                # MSE (the reference's cache)
    "l2_normalize_forward": l2norm.l2_normalize_forward,                            # unit_norm's per-head norm
    "l2_normalize_backward": l2norm.l2_normalize_backward,
}

# name -> the reference's own function, for the ops without a fast kernel
_REFERENCE_OPS = {
    "mesa_direct": _ref.mesa_direct,                                     # [M1] the explicit solve (an oracle)
    "validate_mesa_inputs": _ref.validate_mesa_inputs,
    "mesa_chunkwise_forward": _ref.mesa_chunkwise_forward,               # [M5] on NumPy or CuPy (cuBLAS, cuSOLVER)
    "mesa_chunkwise_backward": _ref.mesa_chunkwise_backward,
    "sinusoidal_positional_encoding": _ref.sinusoidal_positional_encoding,   # [L7]
    "merge_heads": _ref.merge_heads,
    "mse_backward": _ref.mse_backward,                                   # takes the fast mse_forward's cache too
    "cross_entropy_forward": _ref.cross_entropy_forward,
    "cross_entropy_backward": _ref.cross_entropy_backward,
}

# name -> cache type: the reference's NamedTuples (what the ops above return on CuPy input), and MesaFastCache
_CACHES = {
    "DenseCache": _ref.DenseCache,
    "DenseGeluCache": _ref.DenseGeluCache,
    "MLPCache": _ref.MLPCache,
    "MLPBlockCache": _ref.MLPBlockCache,
    "LinearAttentionCache": _ref.LinearAttentionCache,
    "SoftmaxAttentionCache": _ref.SoftmaxAttentionCache,
    "LayerNormCache": _ref.LayerNormCache,
    "LayerNormDenseCache": _ref.LayerNormDenseCache,
    "GeluCache": _ref.GeluCache,
    "ClipCache": _ref.ClipCache,
    "MSECache": _ref.MSECache,
    "CrossEntropyCache": _ref.CrossEntropyCache,
    "MesaChunkCache": _ref.MesaChunkCache,
    "L2NormCache": _ref.L2NormCache,
    "MesaCache": MesaFastCache,          # the cache type this namespace's mesa_forward returns
    "MesaFastCache": MesaFastCache,
}

OPS = {**_FAST_OPS, **_REFERENCE_OPS, **_CACHES}      # every name this namespace exports -> its object
FAST = tuple(_FAST_OPS)                               # names backed by fast kernels; the rest are the reference's

globals().update(OPS)
MesaCache = MesaFastCache

__all__ = sorted(OPS)
