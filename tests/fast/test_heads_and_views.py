"""Head-layout ops (views in mesa_fast, copies in mesa_ref) and kernels that read strided views in place:
split/merge against the reference, attention on split views equal to contiguous input."""
import numpy as np
import pytest

from mesa_fast import ops as F
from mesa_ref import ops as R

B, T, H, d = 3, 7, 3, 5


def _qkv(rng, dtype=np.float64):
    return rng.standard_normal((B, T, 3 * H * d)).astype(dtype)


def test_split_and_merge_agree_with_reference_and_fast_split_is_a_view():
    rng = np.random.default_rng(0)
    qkv = _qkv(rng)
    fast, ref = F.split_qkv(qkv, H), R.split_qkv(qkv, H)
    for f, r in zip(fast, ref):
        assert f.shape == (B, H, T, d)
        np.testing.assert_array_equal(f, r)
        assert np.shares_memory(f, qkv)                  # fast: no copy
        assert r.flags.c_contiguous and not np.shares_memory(r, qkv)
    # q[b, h, t, i] is column h*d + i of the first third, k of the second, v of the third
    np.testing.assert_array_equal(ref[1][2, 1, 4], qkv[2, 4, H * d + d:H * d + 2 * d])
    np.testing.assert_array_equal(R.merge_qkv(*ref), qkv)
    np.testing.assert_array_equal(F.merge_qkv(*ref), qkv)   # unrelated arrays: the reference's copy
    x = rng.standard_normal((B, T, H * d))
    np.testing.assert_array_equal(F.split_heads(x, H), R.split_heads(x, H))
    assert np.shares_memory(F.split_heads(x, H), x)
    np.testing.assert_array_equal(R.merge_heads(R.split_heads(x, H)), x)
    for ns in (F, R):
        with pytest.raises(ValueError, match="qkv: width 45 is not a multiple of 6"):
            ns.split_qkv(qkv, 2)
        with pytest.raises(ValueError, match="rank-3"):
            ns.split_heads(x[0], H)


@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_backward_output_merges_without_copy(kind):
    rng = np.random.default_rng(1)
    qkv = _qkv(rng)
    out, cache = getattr(F, kind + "_forward")(*F.split_qkv(qkv, H))
    dq, dk, dv = getattr(F, kind + "_backward")(rng.standard_normal(out.shape), cache)
    merged = F.merge_qkv(dq, dk, dv)
    assert merged.shape == qkv.shape and np.shares_memory(merged, dq)        # a reshape of one buffer
    np.testing.assert_array_equal(merged, R.merge_qkv(*(np.array(g) for g in (dq, dk, dv))))
    # a slice of the buffer's views is not the whole buffer: copied, still right
    sub = [g[:, :2] for g in (dq, dk, dv)]
    np.testing.assert_array_equal(F.merge_qkv(*sub), R.merge_qkv(*(np.array(g) for g in sub)))


@pytest.mark.parametrize("dims", [(B, T, H, d), (4, 9, 4, 12), (5, 6, 4, 8)], ids=["d5", "d12", "d8-N20"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["linear_attention", "softmax_attention"])
def test_attention_on_split_views_equals_contiguous(kind, dtype, dims):
    """Views of a fused QKV buffer, as the model passes them: widths below 8 (element-wise gathers), 12 (two
    8 x 8 register transposes that overlap, 16 sequences: one full 16-lane group) and 8 with 20 sequences (one
    full lane group, one partial)."""
    b_, t_, h_, d_ = dims
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((b_, t_, 3 * h_ * d_)).astype(dtype)
    views = F.split_qkv(qkv, h_)
    dout = F.split_heads(rng.standard_normal((b_, t_, h_ * d_)).astype(dtype), h_)
    fwd, bwd = getattr(F, kind + "_forward"), getattr(F, kind + "_backward")
    out, cache = fwd(*views)
    grads = bwd(dout, cache)
    cont = [np.ascontiguousarray(a) for a in views]
    out_c, cache_c = fwd(*cont)
    np.testing.assert_array_equal(out, out_c)
    for g, gc in zip(grads, bwd(np.ascontiguousarray(dout), cache_c)):
        np.testing.assert_array_equal(g, gc)
    t_out, t_cache = getattr(R, kind + "_forward")(*(a.astype(np.float64) for a in views))
    t_grads = getattr(R, kind + "_backward")(np.asarray(dout, np.float64), t_cache)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip((out,) + tuple(grads), (t_out,) + tuple(t_grads)):
        assert np.abs(got - want).max() <= tol * np.abs(want).max()


def test_softmax_attention_full_group_with_a_tiny_map():
    """A full group of 16 sequences whose (T, T) map has fewer than 8 entries (T = 2): P moves element by element,
    not by 8 x 8 transposes; against the reference."""
    rng = np.random.default_rng(13)
    q, k, v, dout = (rng.standard_normal((4, 4, 2, 3)) for _ in range(4))
    out, c = F.softmax_attention_forward(q, k, v)
    tout, tc = R.softmax_attention_forward(q, k, v)
    np.testing.assert_allclose(out, tout, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c.P, tc.P, rtol=1e-12, atol=1e-14)
    for g, t in zip(F.softmax_attention_backward(dout, c), R.softmax_attention_backward(dout, tc)):
        np.testing.assert_allclose(g, t, rtol=1e-11, atol=1e-13)
