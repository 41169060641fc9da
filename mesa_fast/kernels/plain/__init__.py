"""Plain Numba kernels: causal linear attention [L2], causal softmax attention [L3], the mesa layer [M2]-[M4].

    attention_linear.py   twin of ../simd/attention_linear.py, re-expresses mesa_ref.ops.attention_linear (recurrent)
    attention_softmax.py  twin of ../simd/attention_softmax.py, re-expresses mesa_ref.ops.attention_softmax
    mesa.py               twin of ../simd/mesa.py (and of mesa_fast/cuda/mesa.py), re-expresses mesa_ref.ops.mesa
    rows.py               one sequence's rows in and out (shared by the two attention modules)

The same computations as the SIMD kernels in ``../simd/``, written the plain way: one ``prange`` over the N = B*H
(batch, head) sequences, and inside it ordinary loops over that one sequence, following the reference ops line by
line. No lane vectors, no gathering of several sequences into one buffer, no blocks of rows unrolled by hand. Read
these first: they are the readable statement of what the SIMD kernels compute, and tests/fast/test_plain_kernels.py holds
them to the reference ops. Which version an op runs is decided by ``runtime.tuning.DEFAULT_KERNELS`` after
``benchmarks/bench_plain_vs_simd.py`` (the SIMD version only where it is clearly faster).

Each public function takes and returns what its namesake in the SIMD twin does, so the op wrappers
(``mesa_fast/ops/attention_linear.py``, ``attention_softmax.py``, ``mesa.py``) call either one
(``mesa_fast.kernels.kernel_module`` picks; the environment variable MESA_FAST_KERNELS=plain|simd overrides the
default). Two things come back in another layout:
* ``softmax_forward``'s maps are the reference's (B, H, T, T) array P, zero above the diagonal.
* ``forward`` (the mesa layer) returns q~_t and w_t as (B, H, T, d) arrays.
Output layouts are the SIMD kernels' ones: attention outputs laid out in memory as (B, T, H, dv), attention
gradients in the fused QKV layout (``kernels/buffers.py``: ``merged_empty`` / ``qkv_empty``), so the model's merges
stay free.

How the loops are written. Each kernel is a function of one sequence (``_*_seq``) and a ``prange`` driver that
calls it for every sequence; the sequence's function is compiled on its own, as an ordinary function, because
LLVM did not vectorise the same loops written inline in the ``prange`` body. Each sequence's rows are copied into
small contiguous buffers, and every inner loop runs along one contiguous row. Where the math allows, the inner
loop carries no sum from one iteration to the next (out_t += s q_i along a row of S^T rather than a dot product),
so LLVM's loop vectoriser can use SIMD instructions by itself; the dot products that remain (k.c, q_t.k_s, ...)
run as scalar loops.

Arithmetic: in the input dtype (float32 in -> float32 arithmetic), IEEE operations, no fast-math and no fused
multiply-adds, the sums in the order the loops say.

NaN/inf: the attention kernels add up x - x over every input value they read (0 when all are finite, NaN
otherwise) and return whether the sum stayed 0; the op then runs the reference's check for its message. The mesa
layer's inputs are checked by the op before the kernel runs (``validate_mesa_inputs``, ``check_dout``).

Threads: ``parallel=True``; the sequences are shared out to ``numba.get_num_threads()`` threads, each sequence's
result computed by one thread alone, so results do not depend on the thread count.
"""
