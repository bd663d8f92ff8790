"""Each kernel against a plain numpy reference."""

import numba
import numpy as np
import pytest
from numba import njit

from qwen3_mpi.kernels import (
    Linear,
    add_partials,
    amx,
    attention_standard,
    attention_streaming,
    embed_rows,
    fma,
    qk_norm_rope_cache,
    silu_mul,
)
from qwen3_mpi.kernels.attention import (
    SPLIT,
    attention_streaming_blocks,
    heads_of_kv,
    span_partials_floats,
    streaming,
    streaming_scratch_size,
)
from qwen3_mpi.kernels.bf16 import store_f32
from qwen3_mpi.kernels.blas import SGEMM
from qwen3_mpi.kernels.exp import exp32
from qwen3_mpi.kernels.linear import SMALL_T
from qwen3_mpi.kernels.llvm_ir import prefetch_span
from qwen3_mpi.weights import bf16_to_f32

rng = np.random.default_rng(0)


def reference_attention(q_THK, k_GSK, v_GSK, kv_of_H, pos0):
    T, H, K = q_THK.shape
    out = np.zeros((T, H, K), np.float64)
    for t in range(T):
        n = pos0 + t + 1
        for h in range(H):
            g = kv_of_H[h]
            s = (k_GSK[g, :n].astype(np.float64) @ q_THK[t, h]) / np.sqrt(K)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v_GSK[g, :n]
    return out


def run_attention(kind, q_THK, k_GSK, v_GSK, kv_of_H, pos0, block=16, qblock=4, split=SPLIT):
    T, H, K = q_THK.shape
    qkv_TO = np.ascontiguousarray(q_THK.reshape(T, H * K))
    out_TO = np.zeros((T, H * K), np.float32)
    threads = numba.get_num_threads()
    scale = np.float32(K**-0.5)
    if kind == "standard":
        scratch = np.zeros((threads, k_GSK.shape[1]), np.float32)
        attention_standard(out_TO, qkv_TO, kv_of_H, k_GSK, v_GSK, pos0, scale, scratch)
    else:
        heads_of_G = heads_of_kv(kv_of_H, k_GSK.shape[0])
        group = int(np.diff(heads_of_G).max())
        scratch = np.zeros((threads, streaming_scratch_size(block, qblock, K, group)), np.float32)
        parts = np.zeros(span_partials_floats(k_GSK.shape[0], group, K), np.float32)
        attention_streaming(out_TO, qkv_TO, heads_of_G, k_GSK, v_GSK, pos0, scale, scratch, block, qblock, parts, split)
    return out_TO.reshape(T, H, K)


@pytest.mark.parametrize("kind", ["standard", "streaming"])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("T,pos0", [(1, 0), (1, 37), (7, 0), (13, 50), (33, 16), (1, 1000)])
@pytest.mark.parametrize("K", [32, 128])  # 128: the streaming row kernel's vector passes (kv_block)
def test_attention_matches_numpy(kind, group, T, pos0, K):
    G = 2
    H = G * group
    S = pos0 + T
    q = rng.standard_normal((T, H, K), dtype=np.float32)
    k = rng.standard_normal((G, S + 3, K), dtype=np.float32)  # positions past S must be ignored
    v = rng.standard_normal((G, S + 3, K), dtype=np.float32)
    kv_of_H = np.arange(H, dtype=np.int64) // group
    ours = run_attention(kind, q, k, v, kv_of_H, pos0)
    np.testing.assert_allclose(ours, reference_attention(q, k, v, kv_of_H, pos0), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("block,qblock", [(1, 1), (5, 3), (64, 16), (256, 16)])
def test_streaming_agrees_with_standard_for_any_block(block, qblock):
    T, pos0, G, H, K = 29, 71, 2, 4, 16
    q = rng.standard_normal((T, H, K), dtype=np.float32) * 3  # peaked scores: online rescaling matters
    k = rng.standard_normal((G, pos0 + T, K), dtype=np.float32)
    v = rng.standard_normal((G, pos0 + T, K), dtype=np.float32)
    kv_of_H = np.array([0, 0, 1, 1])
    a = run_attention("standard", q, k, v, kv_of_H, pos0)
    b = run_attention("streaming", q, k, v, kv_of_H, pos0, block=block, qblock=qblock)
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize(
    "T,pos0,block,split",
    [
        (1, 1000, 16, 64),  # 16 spans of 64
        (1, 37, 16, 16),  # 3 spans, the last partial
        (1, 50, 16, 16),  # 4 spans of 16, the last with 3 positions
        (1, 3, 2, 2),  # 2 spans of 2
        (1, 5000, 256, 64),  # more spans than MAX_SPLITS asks: 10 of 512
        (7, 2000, 16, 64),  # several queries: one span, however long
        (5, 3, 4, 1000),  # one span: the kernel without the merge
    ],
)
@pytest.mark.parametrize("K", [32, 128])
def test_streaming_spans_match_numpy(group, T, pos0, block, split, K):
    """A decode step's context cut into spans of `split` positions, merged: still attention."""
    G = 2
    q = rng.standard_normal((T, G * group, K), dtype=np.float32)
    k = rng.standard_normal((G, pos0 + T, K), dtype=np.float32)
    v = rng.standard_normal((G, pos0 + T, K), dtype=np.float32)
    kv_of_H = np.repeat(np.arange(G), group)
    ref = reference_attention(q, k, v, kv_of_H, pos0)
    got = run_attention("streaming", q, k, v, kv_of_H, pos0, block=block, qblock=8, split=split)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


def test_attention_long_context():
    T, pos0, K = 1, 5000, 64
    q = rng.standard_normal((T, 2, K), dtype=np.float32)
    k = rng.standard_normal((1, pos0 + 1, K), dtype=np.float32)
    v = rng.standard_normal((1, pos0 + 1, K), dtype=np.float32)
    kv_of_H = np.array([0, 0])
    ref = reference_attention(q, k, v, kv_of_H, pos0)
    for kind in ("standard", "streaming"):
        np.testing.assert_allclose(run_attention(kind, q, k, v, kv_of_H, pos0, block=256), ref, atol=2e-5, rtol=1e-4)


def round_to_bf16(a):
    """bf16 bits of float32 a rounded to nearest even, by torch (the reference for the kernels' rounding)."""
    import torch

    return (
        torch.from_numpy(np.ascontiguousarray(a, np.float32))
        .to(torch.bfloat16)
        .view(torch.int16)
        .numpy()
        .view(np.uint16)
    )


def test_kv_cache_rounding_is_torchs():
    @njit
    def store_all(dst, src):
        for r in range(src.shape[0]):
            store_f32(dst[r], src[r])

    bits = rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, 1.0000001, 2.0**-133], np.float32)
    x = np.concatenate([bits.view(np.float32), special]).reshape(-1, 1)
    x = x[~np.isnan(x[:, 0])]
    out = np.zeros(x.shape, np.uint16)
    store_all(out, x)
    assert np.array_equal(out, round_to_bf16(x))
    nan = np.full((1, 1), np.nan, np.float32)
    store_all(out[:1], nan)
    assert np.isnan((out[:1].astype(np.uint32) << 16).view(np.float32)).all()


@pytest.mark.parametrize("kind", ["standard", "streaming"])
@pytest.mark.parametrize("T,pos0", [(1, 0), (1, 300), (3, 40), (20, 0), (33, 100)])  # row kernel and sgemm tiles
@pytest.mark.parametrize("K", [32, 128])
def test_attention_on_a_bf16_cache_is_attention_on_its_values(kind, T, pos0, K):
    """A bf16 cache gives exactly what the float32 cache holding the same (rounded) values gives."""
    G, group, block, qblock = 2, 2, 16, 8
    H, S = G * group, pos0 + T
    q = np.ascontiguousarray(rng.standard_normal((T, H * K), dtype=np.float32))
    k16 = round_to_bf16(rng.standard_normal((G, S + 3, K), dtype=np.float32))
    v16 = round_to_bf16(rng.standard_normal((G, S + 3, K), dtype=np.float32))
    kv_of_H = np.arange(H, dtype=np.int64) // group
    outs = []
    for k, v in [(k16, v16), (bf16_to_f32(k16), bf16_to_f32(v16))]:
        out = np.zeros((T, H * K), np.float32)
        scale = np.float32(K**-0.5)
        if kind == "standard":
            attention_standard(out, q, kv_of_H, k, v, pos0, scale, np.zeros((numba.get_num_threads(), S), np.float32))
        else:
            size = streaming_scratch_size(block, qblock, K, group, k.dtype)
            scratch = np.full((numba.get_num_threads(), size), np.nan, np.float32)  # no value read before written
            parts = np.zeros(span_partials_floats(G, H // G, K), np.float32)
            streaming(out, q, heads_of_kv(kv_of_H, G), k, v, pos0, scale, scratch, parts, block, qblock)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    ref = reference_attention(q.reshape(T, H, K), bf16_to_f32(k16), bf16_to_f32(v16), kv_of_H, pos0)
    np.testing.assert_allclose(outs[0].reshape(T, H, K), ref, atol=2e-5, rtol=1e-4)


def to_bf16_bits(a):
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


LINEAR_PATHS = ["bf16-tiles", "bf16-sgemm", "f32"]  # bf16-tiles: AMX, else FMA (AVX-512), else as bf16-sgemm


@pytest.mark.parametrize("path", LINEAR_PATHS)
@pytest.mark.parametrize("T", [1, 2, SMALL_T, SMALL_T + 1, 37])
@pytest.mark.parametrize("O", [1, 3, 1000, 1001, 1002, 1003])
@pytest.mark.parametrize("I", [72, 71])  # two whole AMX steps of 32 and a partial one; an odd column
def test_linear_matches_numpy(path, T, O, I):
    w = rng.standard_normal((O, I), dtype=np.float32)
    if path != "f32":
        w = to_bf16_bits(w)
    w32 = bf16_to_f32(w) if path != "f32" else w
    x = rng.standard_normal((T, I), dtype=np.float32)
    lin = Linear(w, tiles=path == "bf16-tiles")  # 1000 rows: several tiles, the last one partial
    y = np.zeros((T, O), np.float32)
    lin(y, x, np.zeros(lin.scratch_size(T), np.float32))
    np.testing.assert_allclose(y, x.astype(np.float64) @ w32.T.astype(np.float64), atol=1e-4, rtol=1e-4)


def test_bf16_conversion_is_exact():
    bits = np.arange(0, 2**16, dtype=np.uint16)
    bits = bits[(bits & 0x7F80) != 0x7F80]  # finite values
    expect = (bits.astype(np.uint32) << 16).view(np.float32)
    table = bits.reshape(-1, 1)
    out = np.zeros((len(bits), 1), np.float32)
    embed_rows(out, np.arange(len(bits), dtype=np.int64), table, 0)
    assert np.array_equal(out[:, 0].view(np.uint32), expect.view(np.uint32))


def test_silu():
    gu = rng.standard_normal((3, 40), dtype=np.float32)
    act = np.zeros((3, 20), np.float32)
    silu_mul(act, gu)
    g, u = gu[:, :20].astype(np.float64), gu[:, 20:]
    np.testing.assert_allclose(act, g / (1 + np.exp(-g)) * u, rtol=1e-5, atol=1e-6)


def test_add_partials_sums_in_rank_order_then_norms():
    parts = np.array([[[1e8, 2.0]], [[1.0, 0.5]], [[-1e8, 0.25]]], np.float32)  # order-sensitive in float32
    x = np.zeros((1, 2), np.float32)
    out = np.zeros_like(x)
    w = np.array([2.0, -1.0], np.float32)
    add_partials(x, parts, out, w, np.float32(1e-6))
    assert x[0, 0] == (np.float32(1e8) + np.float32(1.0)) + np.float32(-1e8)
    np.testing.assert_allclose(out, x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-6) * w, rtol=1e-6)


@pytest.mark.parametrize("T", [1, 4, 5, 37])  # serial rows (decode) and parallel rows
def test_add_partials_and_qk_norm_rope_any_rows(T):
    D, H, G, K, S = 64, 4, 2, 16, 50
    parts = rng.standard_normal((3, T, D), dtype=np.float32)
    x0 = rng.standard_normal((T, D), dtype=np.float32)
    w = rng.standard_normal(D, dtype=np.float32)
    x, out = x0.copy(), np.zeros((T, D), np.float32)
    add_partials(x, parts, out, w, np.float32(1e-6))
    expect = x0 + ((parts[0] + parts[1]) + parts[2])
    assert np.array_equal(x, expect)
    np.testing.assert_allclose(
        out, expect / np.sqrt((expect.astype(np.float64) ** 2).mean(1, keepdims=True) + 1e-6) * w, rtol=1e-5, atol=1e-6
    )
    # q/k norm + RoPE: every head normed and rotated, k and v rows into the caches at their positions
    qkv = rng.standard_normal((T, (H + 2 * G) * K), dtype=np.float32)
    nq, nk = rng.standard_normal(K, dtype=np.float32), rng.standard_normal(K, dtype=np.float32)
    ang = rng.uniform(0, 6, (S, K // 2)).astype(np.float32)
    cos, sin = np.cos(ang), np.sin(ang)
    kc, vc = np.zeros((G, S, K), np.float32), np.zeros((G, S, K), np.float32)
    pos0, ref = 3, qkv.copy()
    qkv16, kc16, vc16 = qkv.copy(), np.zeros((G, S, K), np.uint16), np.zeros((G, S, K), np.uint16)
    qk_norm_rope_cache(qkv, H, G, nq, nk, cos, sin, pos0, np.float32(1e-6), kc, vc)
    qk_norm_rope_cache(qkv16, H, G, nq, nk, cos, sin, pos0, np.float32(1e-6), kc16, vc16)  # a bf16 cache
    assert (
        np.array_equal(qkv16, qkv)
        and np.array_equal(kc16, round_to_bf16(kc))
        and np.array_equal(vc16, round_to_bf16(vc))
    )
    for t in range(T):
        for j in range(H + G):
            v = ref[t, j * K : (j + 1) * K].astype(np.float64)
            v = v / np.sqrt((v**2).mean() + 1e-6) * (nq if j < H else nk)
            a, b = v[: K // 2], v[K // 2 :]
            c, s = cos[pos0 + t], sin[pos0 + t]
            rot = np.concatenate([a * c - b * s, b * c + a * s])
            np.testing.assert_allclose(qkv[t, j * K : (j + 1) * K], rot, rtol=1e-4, atol=1e-5)
            if j >= H:
                assert np.array_equal(kc[j - H, pos0 + t], qkv[t, j * K : (j + 1) * K])
                v_row = ref[t, (H + G + j - H) * K : (H + G + j - H + 1) * K]
                assert np.array_equal(vc[j - H, pos0 + t], v_row)


def test_embed_rows_only_own_vocabulary():
    table = rng.standard_normal((10, 4), dtype=np.float32)
    out = np.full((3, 4), 7.0, np.float32)
    embed_rows(out, np.array([20, 25, 3]), table, 20)
    assert np.array_equal(out[0], table[0]) and np.array_equal(out[1], table[5]) and not out[2].any()


@pytest.mark.skipif(SGEMM is None, reason="numpy's BLAS is not OpenBLAS: the sgemm variant is not used")
@pytest.mark.parametrize("group", [1, 2, 4])
# KV blocks that start or end inside a query block, a partial last query block, a prompt after cached
# positions, a whole 128-query block against one KV block, a causal diagonal starting inside a KV block
# with a partial last sub-block of CAUSAL_SUB queries
@pytest.mark.parametrize(
    "T,pos0,block,qblock",
    [
        (13, 0, 4, 5),
        (64, 0, 256, 64),
        (40, 77, 16, 16),
        (5, 300, 256, 64),
        (100, 30, 48, 80),
        (128, 0, 256, 128),
        (70, 200, 256, 128),
    ],
)
def test_streaming_blocks_matches_numpy(group, T, pos0, block, qblock):
    G, K = 2, 32
    H = G * group
    S = pos0 + T
    q = rng.standard_normal((T, H, K), dtype=np.float32) * 2
    k = rng.standard_normal((G, S + 3, K), dtype=np.float32)
    v = rng.standard_normal((G, S + 3, K), dtype=np.float32)
    kv_of_H = np.arange(H, dtype=np.int64) // group
    out = np.zeros((T, H * K), np.float32)
    scratch = np.zeros((numba.get_num_threads(), streaming_scratch_size(block, qblock, K, group)), np.float32)
    attention_streaming_blocks(
        out,
        np.ascontiguousarray(q.reshape(T, H * K)),
        heads_of_kv(kv_of_H, G),
        k,
        v,
        pos0,
        np.float32(K**-0.5),
        scratch,
        block,
        qblock,
        SGEMM,
    )
    np.testing.assert_allclose(out.reshape(T, H, K), reference_attention(q, k, v, kv_of_H, pos0), atol=2e-5, rtol=1e-4)


def test_exp32_is_within_a_few_ulp_of_exp():
    @njit
    def apply(out, x):
        for i in range(x.size):
            out[i] = exp32(x[i])

    x = np.concatenate([np.linspace(-87, 88, 1_000_001, dtype=np.float32), rng.standard_normal(10_000, np.float32)])
    out = np.empty_like(x)
    apply(out, x)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(out - ref) / ref) < 4 * np.finfo(np.float32).eps
    edges = np.array([-np.inf, -1e4, 0.0, 1e4], np.float32)
    out = np.empty_like(edges)
    apply(out, edges)
    assert out[0] < 1e-37 and out[1] < 1e-37 and out[2] == 1.0 and np.isfinite(out[3])


def test_bf16_parts_sum_to_x_exactly():
    x = (rng.standard_normal(4096, np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 4096)).astype(np.float32)
    x[:3] = [0.0, -0.0, 1.0]
    T, I = 1, x.size - 7  # a column tail: I is not a multiple of 32
    x = x[:I]
    parts = np.full((amx.PARTS, 32, I + 7), 0xFFFF, np.uint16)  # [p, t, i]
    amx.split_bf16(parts, x.reshape(T, I), 0, 0)
    values = bf16_to_f32(parts[:, 0]).astype(np.float64)
    assert np.array_equal(values[:, :I].sum(axis=0), x.astype(np.float64))
    assert not parts[:, 0, I:].any()  # columns past I are zeros
    assert not parts[:, 1:].any()  # tokens past T are zeros


def test_pack_puts_every_weight_where_the_tiles_read_it():
    O, I = 37, 70  # partial blocks of 16 outputs and 32 columns
    w = rng.integers(1, 2**15, (O, I)).astype(np.uint16)
    wv = amx.pack(w)  # [b, s, k, o, j] = W[16b + o, 32s + 2k + j]
    assert wv.shape == (4, 3, 16, 16, 2) and wv.ctypes.data % 64 == 0
    full = wv.transpose(0, 3, 1, 2, 4).reshape(64, 96)  # [16b + o, 32s + 2k + j]
    assert np.array_equal(full[:O, :I], w)
    assert not full[O:].any() and not full[:, I:].any()


@pytest.mark.parametrize("tiles", [True, False])
def test_linear_rows_are_the_weight_rows(tiles):
    O, I = 37, 70
    w = to_bf16_bits(rng.standard_normal((O, I), dtype=np.float32))
    lin = Linear(w, tiles=tiles)
    ids = np.array([100, 137, 99, 136, 120, 5], np.int64)  # rows 100..136 of a vocabulary slice; others 0
    out = np.full((len(ids), I), np.nan, np.float32)
    lin.rows(out, ids, 100)
    expect = np.zeros((len(ids), I), np.float32)
    expect[[0, 3, 4]] = bf16_to_f32(w[[0, 36, 20]])
    assert np.array_equal(out, expect)


def _errors_against_float64(product, T, O, I):
    """(error of product(y, x, wv), error of numpy's float32 sgemm) against float64 for random bf16 W
    [O, I] packed by amx.pack and x [T, I], each the largest |error| over the sum of |products|."""
    local = np.random.default_rng(I)  # fixed data: the bounds hold with margin (measured ratio 0.5-1.5)
    w = to_bf16_bits(local.standard_normal((O, I), dtype=np.float32))
    w32 = bf16_to_f32(w)
    x = local.standard_normal((T, I), dtype=np.float32)
    exact = x.astype(np.float64) @ w32.T.astype(np.float64)
    y = np.full((T, O), np.nan, np.float32)
    product(y, x, amx.pack(w))
    scale = np.abs(x).astype(np.float64) @ np.abs(w32).T.astype(np.float64)  # sum of |products|
    return np.max(np.abs(y - exact) / scale), np.max(np.abs(x @ w32.T - exact) / scale)


@pytest.mark.skipif(not amx.AVAILABLE, reason="this CPU (or kernel, or QWEN3_MPI_AMX=0) offers no AMX bf16 tiles")
@pytest.mark.parametrize(("T", "O", "I"), [(8, 64, 64), (37, 100, 1100), (150, 1003, 2080), (128, 1024, 3072)])
def test_amx_matmul_is_as_exact_as_float32_sgemm(T, O, I):
    """Every path through the tile kernel: partial blocks of outputs and of tokens, a column tail,
    several slabs of I (accumulating in y), several chunks of tokens. Its error against float64 must be
    that of a float32 product (three bf16 parts of x carry all 24 bits; bf16 x alone would be ~1000x
    worse)."""
    threads = numba.get_num_threads()
    scratch = np.zeros(amx.scratch_floats(I, T, threads), np.float32)
    amx_error, sgemm_error = _errors_against_float64(lambda y, x, wv: amx.matmul(y, x, wv, scratch, threads), T, O, I)
    assert amx_error <= 2 * sgemm_error, (amx_error, sgemm_error)


@pytest.mark.parametrize(
    ("T", "O", "I"), [(5, 32, 2), (8, 64, 64), (37, 100, 1100), (150, 1003, 2081), (128, 1024, 3072), (7, 48, 1)]
)
def test_fma_matmul_is_as_exact_as_float32_sgemm(T, O, I):
    """Every path through the FMA kernel (runs on any CPU): tokens not a multiple of MT, a last task of two
    blocks, outputs past y (1003, 100, 48), several column chunks (accumulating in y), an odd last column,
    a single column. Its error against float64 must be that of float32 sgemm: at most twice sgemm's, or
    4 units of float32's rounding (2^-24) of the sum of |products|, whichever is larger. Both measure
    0.8-2.2 units here, with the units sgemm reaches depending on the BLAS build (8 x 64 x 64: 0.83 with
    numpy 2.4.6's OpenBLAS against 2.19 for this kernel); a bf16 x would be 100-1000x over the bound."""
    threads = numba.get_num_threads()
    c = np.zeros((threads, fma.scratch_floats(threads) // threads), np.float32)
    fma_error, sgemm_error = _errors_against_float64(lambda y, x, wv: fma.matmul(y, x, wv, c), T, O, I)
    assert fma_error <= max(2 * sgemm_error, 4 * 2**-24), (fma_error, sgemm_error)


@njit
def _prefetch_rows(a, first):
    """Prefetch rows first.. of a (a loop around prefetch_span, as in the attention kernels)."""
    for r in range(first, a.shape[0]):
        prefetch_span(a, r * a.shape[1], a.shape[1], 3)
    return a.shape[0] - first


@njit
def _calls_prefetch_rows(a, first):
    return _prefetch_rows(a, first)


def _prefetches_in(dispatcher, signature, function):
    """Prefetch calls in `function`'s body (a name) in the module numba compiled for dispatcher."""
    mangled = f"{len(function)}{function}"  # as in numba's symbol names: _ZN<module><length><name>...
    functions = dispatcher.inspect_llvm(signature).split("\ndefine ")[1:]
    wrappers = ("@_ZN7cpython", "@cfunc.")  # what numba adds for calls from Python and as a C function
    (body,) = [f for f in functions if mangled in f.split("\n")[0] and not any(w in f[:200] for w in wrappers)]
    return body.count("call void @llvm.prefetch")


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_prefetch_span_is_not_unrolled_again_in_a_caller(dtype):
    """numba optimizes a function again in every caller it links it into, and a caller loaded from the
    on-disk cache runs that copy: the copy must keep the prefetches as the function itself has them
    (a row prefetch unrolled again there made cached streaming decode 1.6x slower)."""
    a = np.zeros((6, 128), dtype)
    assert _calls_prefetch_rows(a, 0) == 6
    assert _calls_prefetch_rows(a, 6) == 0  # an empty range prefetches nothing
    assert _calls_prefetch_rows(a[:, 1:], 0) == 6  # rows that do not start on a line
    for own, linked in zip(_prefetch_rows.signatures, _calls_prefetch_rows.signatures):
        prefetches = _prefetches_in(_prefetch_rows, own, "_prefetch_rows")
        assert 0 < prefetches == _prefetches_in(_calls_prefetch_rows, linked, "_prefetch_rows")
