"""SIMD Numba CPU kernels: the fast versions, each module's header naming its plain twin (``../plain/``, where there is
one) and the ``mesa_ref`` function it re-expresses.

    lanevec.py            the LaneVec type and its intrinsics (loads, stores, FMA, exp, 8 x 8 transposes)
    attention_lanes.py    (B, H, T, w) arrays into and out of the lane layout, for the two attention modules
    attention_linear.py   [L2]  twin of ../plain/attention_linear.py
    attention_softmax.py  [L3]  twin of ../plain/attention_softmax.py
    mesa.py               [M2]-[M4]  twin of ../plain/mesa.py (and of mesa_fast/cuda/mesa.py)
    activations.py        [L5] GELU, [L6] clipping
    layernorm.py          [L4]
    loss.py               the MSE's forward
    gemm.py               narrow matrix products of [L1] (x^T dy, and products with a 40-column output)
    mlp.py                [L1] + [L5] the MLP, row block by row block
    mlp_block.py          [L4] + [L1] + [L5] the pre-LayerNorm MLP sub-block with its residual
    layernorm_dense.py    [L4] + [L1] a LayerNorm and the dense layer it feeds

Block sizes and lane counts come from ``mesa_fast/runtime/tuning.py``.
"""
