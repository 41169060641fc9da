"""mesa_fast.ops: the ``mesa_ref.ops`` namespace, with fast kernels where they exist.

Every public name of ``mesa_ref.ops`` is here, with the same signature (tests/test_api.py), so the
one model in ``mesa_ref/model.py`` runs on either namespace. Ops with a fast implementation are
imported from their ``mesa_fast`` module below and replace the reference's (``FAST`` lists them); every
other op is the reference's own (written against an array module ``xp``, so it runs on NumPy and on CuPy).

The chunkwise mesa-layer [M5] (``mesa_chunkwise_forward`` / ``_backward``) is the reference's own op: it is
written against the array module of its inputs, so CuPy input runs it on the GPU through cuBLAS / cuSOLVER.

NumPy in -> NumPy out, CuPy in -> CuPy out. Where NumPy input is computed differs by op (the full rule is in
``mesa_fast.backend``): ``mesa_fast.set_backend`` / MESA_BACKEND decide it for the mesa-layer pair only.
"""
from mesa_ref import ops as _ref_ops
from mesa_ref.ops import *  # noqa: F401,F403  (every reference op; the fast ones below replace some)

# mesa-layer [M1]-[M4]: Numba (CPU) and CUDA (CuPy) kernels, mesa_fast/mesa.py; NumPy input goes where the
# backend setting says.
from .mesa import MesaFastCache, mesa_backward, mesa_forward  # noqa: E402

MesaCache = MesaFastCache          # the cache type this namespace's mesa_forward returns

# dense [L1], the MLP's dense + gelu, linear [L2] and softmax [L3] attention, layernorm [L4], gelu [L5], clip [L6],
# MSE, head layout:
# Numba kernels for NumPy input (whatever the backend setting), the reference op for CuPy input
# (mesa_fast/numba_kernels/layers.py; the names are its FAST_OPS).
from .numba_kernels.layers import FAST_OPS as _LAYER_FAST_OPS  # noqa: E402
from .numba_kernels.layers import *  # noqa: E402,F401,F403  (overrides the reference re-exports above)

# one shard of a training step's batch per thread (mesa_fast/batching.py)
from .batching import batch_map  # noqa: E402,F401

FAST = ("mesa_forward", "mesa_backward", "batch_map") + _LAYER_FAST_OPS   # names backed by fast kernels; the rest are the reference's

__all__ = sorted(set(_ref_ops.__all__) | {"MesaFastCache"})
