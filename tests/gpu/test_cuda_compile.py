"""The mesa layer's CUDA kernels compile for real GPUs and do not spill (no GPU needed).

Every kernel of mesa_fast/cuda/mesa.py ([M2]/[M4] forward, [M3]/[M4] backward), float32 and float64, goes through
``numba.cuda.compile_ptx`` for sm_80 and sm_90 and ``ptxas -v`` (the CUDA toolkit wheels of the dev extra;
mesa_fast/cuda/resources.py). A kernel that does not compile, does not assemble, spills registers or uses a stack
frame fails; so does one whose registers would not let the largest allowed block (``MAX_THREADS``) launch.
benchmarks/cuda_resources.py records the same numbers (benchmarks/results/cuda_resources.md).
"""
import numpy as np
import pytest

from mesa_fast.cuda import mesa as ck
from mesa_fast.cuda import resources

pytestmark = pytest.mark.slow        # compiles every CUDA kernel to PTX and through ptxas

REGISTERS_PER_SM = 65536        # sm_80 and sm_90: 64K 32-bit registers per multiprocessor (and per block)
H100_SHARED_OPTIN = 227 * 1024  # the most dynamic shared memory one block may opt in to on sm_90


@pytest.fixture(scope="module")
def rows():
    return resources.kernel_resources(ccs=((8, 0), (9, 0)))


def test_every_kernel_compiles_for_sm80_and_sm90(rows):
    got = {(r["kernel"], r["dtype"], r["arch"]) for r in rows}
    want = {(f"mesa_{k}", dt, a) for k in ("fwd", "bwd") for dt in ("float32", "float64") for a in ("sm_80", "sm_90")}
    assert got == want
    assert all(r["registers"] > 0 for r in rows), rows


def test_no_kernel_spills(rows):
    bad = [r for r in rows if r["spill_stores"] or r["spill_loads"] or r["stack_frame"]]
    assert not bad, f"kernels spilling or using local memory: {bad}"


def test_the_largest_block_fits_the_register_file(rows):
    for r in rows:
        assert r["registers"] * ck.MAX_THREADS <= REGISTERS_PER_SM, r


def test_parser_sees_spills_and_shared_memory():
    """The spill check can fail: the parser reads nonzero spills, stack frames and static shared memory."""
    text = ("ptxas info    : 0 bytes gmem\n"
            "ptxas info    : Compiling entry function '_Z8mesa_fwdPf' for 'sm_90'\n"
            "ptxas info    : Function properties for _Z8mesa_fwdPf\n"
            "    24 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads\n"
            "ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]\n"
            "ptxas info    : Function properties for __internal_accurate_pow\n"
            "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n")
    rep = resources.parse_ptxas(text)
    assert rep["_Z8mesa_fwdPf"] == {"registers": 255, "stack_frame": 24, "spill_stores": 16, "spill_loads": 12,
                                    "static_smem": 4096}
    assert rep["__internal_accurate_pow"]["spill_stores"] == 0


@pytest.mark.parametrize("d,dv", [(20, 20), (64, 64)], ids=["paper-d20", "lm-d64"])
def test_shared_memory_fits_an_h100_block(d, dv):
    threads = ck.default_threads(d, dv)
    for item in (4, 8):
        for gamma in (False, True):
            for kind in ("fwd", "bwd"):
                assert ck.shared_bytes(kind, d, dv, gamma, item, threads) <= H100_SHARED_OPTIN


def test_default_block_sizes():
    assert ck.default_threads(20, 20) == 128 and ck.default_threads(64, 64) == 256
    assert ck.default_threads(3, 3) == 32
    assert all(ck.default_threads(d, d) <= ck.MAX_THREADS for d in (1, 20, 64, 200))
    with pytest.raises(ValueError, match="dtype"):
        ck.kernels(np.int32)
