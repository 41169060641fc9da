"""Every tuning constant of mesa_fast in one place: block sizes, thresholds, shard sizes, lane counts, kernel choice.

Each constant says what it controls and why it has its value. Measurements are not quoted here: where a value was
chosen by measuring, the comment names the file that holds the numbers (benchmarks/results/, or the archived notebook
docs/performance-archive/notes.md and its section).
None of these changes a result's meaning; a few change how float sums are grouped (noted where so), which moves
float32 results by rounding only.

How the values are read:
* Python-level constants (thresholds, minimum chunk sizes) are read as ``tuning.NAME`` at each call, so a test or an
  experiment may set them on this module (``monkeypatch.setattr(tuning, "DENSE_MIN_ROWS", 3)``).
* Constants that a Numba kernel uses (lane counts, row blocks inside a kernel) are compiled into the machine code.
  The kernels' cache guard (``mesa_fast/kernels/__init__.py``) hashes this file along with the kernel sources, so
  editing one of them here drops the cached kernels and they compile again; changing them at run time has no
  effect on kernels already compiled.
"""
from __future__ import annotations

# ------------------------------------------------------------------------------------------- which kernels run
# The version of the kernels each family runs by default: "simd" (kernels/simd/) or "plain" (kernels/plain/); the
# environment variable MESA_FAST_KERNELS=plain|simd overrides all three (mesa_fast/kernels/__init__.py). The rule of
# benchmarks/bench_plain_vs_simd.py keeps the SIMD version only where it is clearly faster; it is for all three
# (benchmarks/results/bench_plain_vs_simd_cpu.json).
DEFAULT_KERNELS = {"linear": "simd", "softmax": "simd", "mesa": "simd"}

# ------------------------------------------------------------------------------------------- SIMD lane vectors
# (kernels/simd/lanevec.py; each lane is one independent sequence or row)
# Lanes of the mesa kernels' vectors: one AVX2 register of float32. 16 lanes with FMA were tried and were no faster
# (docs/performance-archive/notes.md, "Mesa-layer kernels"). The mesa kernels move tokens by 8 x 8 transposes: keep
# it 8.
MESA_LANES = 8
# Lanes of the attention, GELU and LayerNorm kernels' vectors and of gemm's: one AVX-512 register of float32 (LLVM
# splits it in two on AVX2). Faster than 8 lanes for the linear-attention recursion
# (docs/performance-archive/notes.md, "Attention kernels"). A multiple of 8 (the gathers are 8 x 8 register
# transposes).
ATTENTION_LANES = 16
# Bytes to which the attention kernels' lane buffers (and the softmax maps) are aligned: one cache line, one AVX-512
# register, so that no 16-lane load straddles two lines (docs/performance-archive/notes.md, "Attention kernels",
# alignment).
ALIGN = 64

# ------------------------------------------------------------------------------------------- the thread pool
# (runtime/pool.py) map_chunks hands out "guided" ranges, each 1/(GUIDE * threads) of the items left, big ones first,
# so a thread that starts late or runs slow does less. 1, 2 and 4 were within noise of each other
# (docs/performance-archive/notes.md, "The full Transformer, continued").
GUIDE = 2

# ------------------------------------------------------------------------------------------- batch shards
# (ops/batching.py) batch_map splits a training step's batch only if every shard gets at least this many positions
# (samples x time steps): each shard pays the model's Python between the ops once, which this much work covers.
# Counted in positions, not samples, so that a long-sequence model with a small batch (fig8's language model, 16 x
# 256) is split too (commit 81faaaf; docs/performance-archive/notes.md, "One shard of the batch per thread").
SHARD_MIN_POSITIONS = 512

# ------------------------------------------------------------------------------------------- dense products
# (ops/dense.py, dense_gelu.py, mlp.py, mlp_block.py, layernorm_dense.py)
# Rows per thread below which a product (and each fused row-block op) runs on the calling thread alone: below it the
# hand-off to the pool costs more than the rows. 512 to 6400 were within noise of each other
# (docs/performance-archive/notes.md, "The full Transformer, continued").
DENSE_MIN_ROWS = 1024
# Rows per block of the fused dense + GELU ops: each block's (rows, M) activations stay in cache between the product
# and its GELU (docs/performance-archive/notes.md, "The full Transformer on the CPU", the blocks of 128 rows).
DENSE_GELU_SUB_ROWS = 128
# x^T dy goes to kernels/simd/gemm.py's atb_rows instead of BLAS for float32 with dy at most this many columns and x's
# width a multiple of 16 (whole lane vectors) and at least this many columns: the output projection and the MLP's
# second layer, where it was faster than OpenBLAS; for wider dy it was not (docs/performance-archive/notes.md, "The
# full Transformer on the CPU", gemm.atb_rows). Changes the order of dW's sums (float32 rounding only).
ATB_MAX_DY_COLS = 64
ATB_MIN_X_COLS = 64
# Products with exactly this many output columns (the model's width 40) and at least NARROW_MIN_K summed rows go to
# gemm.ab_rows (one panel of 40 outputs in registers) in float32, where it was faster than OpenBLAS
# (docs/performance-archive/notes.md, "The full Transformer on the CPU", gemm.ab_rows). Changes the order of the sums
# (float32 rounding only).
NARROW_COLS = 40
NARROW_MIN_K = 32
# Rows of a and b per pass over the blocks of out in gemm.atb_rows: a 4 x 64 block of out stays in registers while
# this many rows stream through, and the rows stay in cache for every block of out. Groups the sums (float32 rounding
# only).
GEMM_ROWS = 256

# ------------------------------------------------------------------------------------------- fused row blocks
# Rows per block of the fused MLP and pre-LayerNorm MLP sub-block (kernels/simd/mlp.py, mlp_block.py): the block's R x
# M hidden activations (and dg, dz in the backward) stay in L2. Blocks of 64, 128 and 256 rows were measured
# (docs/performance-archive/notes.md, "The MLP sub-block as one fused op"). A multiple of 16, so that the LayerNorm
# sees the rows in the groups of 16 one call over all rows would (bit for bit the separate ops' results).
MLP_BLOCK_ROWS = 128
# Rows per block of the fused LayerNorm + dense op (kernels/simd/layernorm_dense.py): the block's normalised rows (R x
# D) and its output rows (R x O) stay in L2 (docs/performance-archive/notes.md, "The pre-LayerNorm fusions"). A
# multiple of 16, as MLP_BLOCK_ROWS.
LN_DENSE_BLOCK_ROWS = 256
# layernorm_dense's backward makes dW = a^T dy itself, block by block while a and dy are in cache (so the forward
# keeps no normalised rows), for outputs a multiple of 16 and at least this wide (the QKV product); narrower ones (the
# readout) keep a and use one BLAS product (docs/performance-archive/notes.md, "The pre-LayerNorm fusions", commit
# efbbd03).
OWN_DW_MIN_COLS = 64

# ------------------------------------------------------------------------------------------- element-wise ops
# Below these sizes per thread the op runs on the calling thread alone (ops/layernorm.py, ops/activations.py): the
# hand-off to the pool would cost more than the work. Chosen so that a range is large next to the hand-off; not
# measured on their own (no result file).
LAYERNORM_MIN_ROWS = 256          # LayerNorm rows
GELU_MIN_CHUNK = 1 << 15          # GELU elements
CLIP_MIN_CHUNK = 1 << 16          # clipping elements (a lighter pass than GELU's, so larger ranges)

# ------------------------------------------------------------------------------------------- the C heap
# (runtime/heap.py, applied only by keep_freed_memory()) glibc's M_MMAP_THRESHOLD: allocations below it come from the
# heap, not from fresh mmap'd pages; 32 MiB is glibc's largest accepted value on 64-bit. M_TRIM_THRESHOLD: the heap is
# not given back to the system until this much of it is free. Together they keep a training step's temporaries in
# pages already mapped (docs/performance-archive/notes.md, "Heap setting").
HEAP_MMAP_THRESHOLD = 32 * 1024 * 1024
HEAP_TRIM_THRESHOLD = 1 << 30

# ------------------------------------------------------------------------------------------- CUDA mesa kernels
# (cuda/mesa.py) Threads per block: at most CUDA_MAX_THREADS, since the kernels use up to ~150 registers per thread
# and 256 such threads fit a multiprocessor's 64K registers (benchmarks/results/cuda_resources.md). The default is the
# power of two >= CUDA_THREADS_PER_ROW * max(d, dv) (about that many partial sums per row of R), at least
# CUDA_MIN_THREADS (one warp), so a few warps hide shared-memory latency. Chosen without GPU timings.
CUDA_MAX_THREADS = 256
CUDA_MIN_THREADS = 32
CUDA_THREADS_PER_ROW = 4
