"""Causal attention of T new queries against a KV cache of positions [0, pos0 + T).

q comes from the fused projection buffer (row t holds H query heads of K values from column q0 on);
query head h reads KV head kv_of_H[h] straight from the cache (GQA without copies). Query t sits at
position pos0 + t and sees cache positions [0, pos0 + t].

standard:  for each (query, head) the whole score row over the visible positions is materialized in
           scratch, soft-maxed, then used to weight V. Scratch: threads x S floats.
streaming: online softmax over KV blocks of B positions for a block of up to QB queries and all query
           heads of one KV head (flash-attention style, each K/V block read once for the whole GQA
           group): scratch is threads x group x QB x (B + K + 2) floats, whatever S is. From 8 queries
           on, the tiles of a block are multiplied by sgemm.

The cache holds float32 or bf16 bits (uint16); the kernels widen bf16 elements as they read them.
"""

import numpy as np
from numba import get_thread_id, njit, prange, types
from numba.extending import overload

from .bf16 import PREFETCH_LOCALITY, to_f32
from .blas import NO_TRANS, ROW_MAJOR, SGEMM, TRANS
from .exp import exp32
from .kv_block import KV_AHEAD, block_scores, block_values
from .llvm_ir import prefetch_span

BLOCKS_MIN_T = 8  # from this many queries on, streaming attention multiplies its tiles with sgemm
CAUSAL_SUB = 32  # queries per sgemm of the tile kernel, so that tiles past the causal diagonal are skipped
SPLIT = 1024  # cached positions per task of the row kernel (decode), in spans merged at the end
MAX_SPLITS = 16  # spans per KV head at most, so that their partial states stay small
VECTOR_K = 128  # the head_dim for which the row kernel's block passes are kv_block's vector code (Qwen3's)


@njit(parallel=True, fastmath=True, cache=True)
def attention_standard(out_TO, qkv_TO, kv_of_H, k_cache_GSK, v_cache_GSK, pos0, scale, scratch):
    """out[t, h*K:(h+1)*K] = softmax(q_th . K[:n]^T * scale) @ V[:n], n = pos0 + t + 1.
    Cost: 2 * n * K flops per (t, h) for the scores and as many for V; reads K and V once per (t, h)."""
    for th in prange(out_TO.shape[0] * kv_of_H.shape[0]):
        standard_row(th, out_TO, qkv_TO, kv_of_H, k_cache_GSK, v_cache_GSK, pos0, scale, scratch)


@njit(fastmath=True, cache=True)
def standard_row(th, out_TO, qkv_TO, kv_of_H, k_cache_GSK, v_cache_GSK, pos0, scale, scratch):
    """attention_standard's output row of task th = (query t, head h), t = th // H."""
    H = kv_of_H.shape[0]
    K = k_cache_GSK.shape[2]
    t = th // H
    h = th % H
    g = kv_of_H[h]
    n = pos0 + t + 1
    q = qkv_TO[t, h * K : (h + 1) * K]
    row = scratch[get_thread_id(), :n]
    m = np.float32(-np.inf)
    for s in range(n):
        k = k_cache_GSK[g, s]
        acc = np.float32(0.0)
        for i in range(K):
            acc += q[i] * to_f32(k[i])
        acc *= scale
        row[s] = acc
        m = max(m, acc)
    total = np.float32(0.0)
    for s in range(n):
        e = exp32(row[s] - m)
        row[s] = e
        total += e
    o = out_TO[t, h * K : (h + 1) * K]
    o[:] = 0.0
    for s in range(n):
        w = row[s] / total
        v = v_cache_GSK[g, s]
        for i in range(K):
            o[i] += w * to_f32(v[i])


@njit(cache=True, inline="always")
def _prefetch_row(cache_GSK, g, s):
    """Prefetch cache[g, s] (one position's K or V, head_dim elements), a line at a time, into the cache
    the decode products prefetch into (bf16.PREFETCH_LOCALITY)."""
    K = cache_GSK.shape[2]
    prefetch_span(cache_GSK, (g * cache_GSK.shape[1] + s) * K, K, PREFETCH_LOCALITY)


@njit(cache=True, inline="always")
def _softmax_state(ws, rows, block, K):
    """Online-softmax state of `rows` rows carved from one thread's scratch (rows * (block + K + 2)
    floats): scores of the current KV block, unnormalized output (0), running max (-inf), denominator (0)."""
    sc = ws[: rows * block].reshape(rows, block)
    acc = ws[rows * block : rows * (block + K)].reshape(rows, K)
    m = ws[rows * (block + K) : rows * (block + K + 1)]
    l = ws[rows * (block + K + 1) : rows * (block + K + 2)]
    acc[:] = 0.0
    m[:] = np.float32(-np.inf)
    l[:] = 0.0
    return sc, acc, m, l


@njit(cache=True, inline="always")
def _online_softmax(p, r, m, l, acc):
    """Row r takes a block's scores p (in place -> exp(p - new max)): running max m, denominator l and
    the output accumulated so far (rescaled to the new max)."""
    block_max = np.float32(-np.inf)
    for c in range(p.shape[0]):
        block_max = max(block_max, p[c])
    new_m = max(m[r], block_max)
    total = np.float32(0.0)
    for c in range(p.shape[0]):
        e = exp32(p[c] - new_m)
        p[c] = e
        total += e
    if m[r] == -np.inf:  # the row's first block: no output to rescale yet
        l[r] = total
        m[r] = new_m
        return
    corr = exp32(m[r] - new_m)
    l[r] = l[r] * corr + total
    m[r] = new_m
    for i in range(acc.shape[1]):
        acc[r, i] *= corr


@njit(cache=True, inline="always")
def _write_rows(out_TO, acc, l, h0, t0, nq):
    """out[t, h] = acc[r] / l[r] for the rows r = (h - h0) nq + (t - t0) of a task."""
    K = acc.shape[1]
    for r in range(l.shape[0]):
        h = h0 + r // nq
        t = t0 + r % nq
        inv = np.float32(1.0) / l[r]
        o, a = out_TO[t, h * K : (h + 1) * K], acc[r]  # 1-d views: the loop vectorizes
        for i in range(K):
            o[i] = a[i] * inv


@njit(cache=True, inline="always")
def _split_span(end, block, split, max_splits):
    """(splits, span): positions [0, end) cut into `splits` spans of `span` positions (whole blocks), each
    about `split` long and at most max_splits of them."""
    splits = min(max_splits, max(1, (end + split - 1) // split))
    span = ((end + splits - 1) // splits + block - 1) // block * block
    return (end + span - 1) // span, span


@njit(parallel=True, fastmath=True, cache=True)
def attention_streaming(
    out_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, scratch, block, qblock, parts_X, split=SPLIT
):
    """Same result as attention_standard, by online softmax. A task is one KV head g with all its query
    heads (heads_of_G[g] to heads_of_G[g + 1]), a block of up to qblock queries and one span of about
    `split` cached positions (whole blocks, at most MAX_SPLITS spans): it walks its visible KV positions
    `block` at a time, keeping per (head, query) row a running max m, denominator l and unnormalized
    output. Each K and V row is read once per task, for every row that sees it (rather than walking the
    block once per row), and prefetched KV_AHEAD positions ahead; the first V rows of a block are
    prefetched before its K pass, so that the V pass starts on rows already on their way (both faster on
    the machines measured: docs/benchmarks.md, 'Kernel measurements'). A decode step (T = 1) with
    several spans (a context longer than `split`) keeps each span's (output, m, l) in parts_X
    (span_partials_floats of them) and merges them at the end, as flash-decoding does, so that a rank
    with fewer KV heads than threads still keeps every thread reading; how a context is split depends on
    its length only, never on the number of threads."""
    jobs, n_sp, span, parts = streaming_plan(
        out_TO.shape[0], heads_of_G, k_cache_GSK, pos0, block, qblock, parts_X, split
    )
    for job in prange(jobs):
        streaming_job(
            job,
            out_TO,
            qkv_TO,
            heads_of_G,
            k_cache_GSK,
            v_cache_GSK,
            pos0,
            scale,
            scratch,
            block,
            qblock,
            n_sp,
            span,
            parts,
        )
    if n_sp > 1:
        _merge_spans(out_TO, parts, heads_of_G, qblock, n_sp)


@njit(cache=True, inline="always")
def streaming_plan(T, heads_of_G, k_cache_GSK, pos0, block, qblock, parts_X, split):
    """(jobs, spans, span, parts) of attention_streaming: its tasks, how a decode step's context is cut
    into spans and the spans' partial states (parts_X as [task, row, K + 2])."""
    G = heads_of_G.shape[0] - 1
    K = k_cache_GSK.shape[2]
    n_sp, span = _split_span(pos0 + T, block, split, MAX_SPLITS) if T == 1 else (1, pos0 + T)
    group = 0
    for g in range(G):
        group = max(group, heads_of_G[g + 1] - heads_of_G[g])
    if n_sp > 1 and parts_X.shape[0] < n_sp * G * group * (K + 2):
        raise ValueError("attention_streaming: parts_X holds fewer than span_partials_floats floats")
    parts = parts_X[: n_sp * G * group * (K + 2) if n_sp > 1 else 0].reshape((-1, group, K + 2))  # per task
    return (T + qblock - 1) // qblock * G * n_sp, n_sp, span, parts


@njit(fastmath=True, cache=True)
def streaming_job(
    job, out_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, scratch, block, qblock, n_sp, span, parts
):
    """Task `job` of attention_streaming: one KV head, a block of queries, one span."""
    T = out_TO.shape[0]
    G = heads_of_G.shape[0] - 1
    K = k_cache_GSK.shape[2]
    sp = job % n_sp
    g = job // n_sp % G
    qb = job // n_sp // G
    h0 = heads_of_G[g]
    t0 = qb * qblock
    t1 = min(T, t0 + qblock)
    nq = t1 - t0
    heads = heads_of_G[g + 1] - h0
    R = heads * nq  # rows: (head, query) pairs, row hh nq + tq for head h0 + hh and query t0 + tq
    sc, acc, m, l = _softmax_state(scratch[get_thread_id()], R, block, K)
    end = min(pos0 + t1, (sp + 1) * span)  # positions of this span visible to the block's last query
    for s0 in range(sp * span, end, block):
        n = min(end, s0 + block) - s0
        # position s0 + j is visible to query t0 + tq if s0 + j <= pos0 + t0 + tq
        for j in range(min(n, KV_AHEAD)):  # the V pass below starts on rows already on their way
            _prefetch_row(v_cache_GSK, g, s0 + j)
        _block_scores(k_cache_GSK, qkv_TO, g, s0, n, pos0, t0, nq, h0, heads, sc, scale)
        for r in range(R):
            visible = min(n, pos0 + t0 + r % nq + 1 - s0)
            if visible > 0:
                _online_softmax(sc[r, :visible], r, m, l, acc)
            sc[r, max(visible, 0) : n] = 0.0  # no weight for the positions past the row's query
        _block_values(v_cache_GSK, g, s0, n, pos0, t0, nq, heads, sc, acc)
    if n_sp == 1:
        _write_rows(out_TO, acc, l, h0, t0, nq)
    else:
        part = parts[job]
        for r in range(R):
            for i in range(K):
                part[r, i] = acc[r, i]
            part[r, K] = m[r]
            part[r, K + 1] = l[r]


@njit(cache=True, inline="always")
def _block_scores(k_cache_GSK, qkv_TO, g, s0, n, pos0, t0, nq, h0, heads, sc, scale):
    """streaming_job's scores of a block, each K row read once for all the task's rows: kv_block's
    vector code at head_dim VECTOR_K (it scores the positions past a query too), numba loops else."""
    K = k_cache_GSK.shape[2]
    if K == VECTOR_K:
        block_scores(k_cache_GSK[g, s0 : s0 + n], qkv_TO[t0 : t0 + nq], h0, heads, sc, scale, VECTOR_K)
        return
    for j in range(n):
        _prefetch_row(k_cache_GSK, g, s0 + j + KV_AHEAD)
        k = k_cache_GSK[g, s0 + j]
        for tq in range(max(0, s0 + j - pos0 - t0), nq):  # the queries that see position s0 + j
            for hh in range(heads):
                q = qkv_TO[t0 + tq, (h0 + hh) * K : (h0 + hh + 1) * K]
                a = np.float32(0.0)
                for i in range(K):
                    a += q[i] * to_f32(k[i])
                sc[hh * nq + tq, j] = a * scale


@njit(cache=True, inline="always")
def _block_values(v_cache_GSK, g, s0, n, pos0, t0, nq, heads, sc, acc):
    """acc += the block's weights sc times its V rows, each V row read once for all the task's rows:
    kv_block's vector code at head_dim VECTOR_K (it weights every position; sc is 0 past a query's
    position), numba loops else."""
    K = v_cache_GSK.shape[2]
    if K == VECTOR_K:
        block_values(v_cache_GSK[g, s0 : s0 + n], sc, acc, VECTOR_K)
        return
    for j in range(n):
        _prefetch_row(v_cache_GSK, g, s0 + j + KV_AHEAD)
        v = v_cache_GSK[g, s0 + j]
        for tq in range(max(0, s0 + j - pos0 - t0), nq):
            for hh in range(heads):
                e = sc[hh * nq + tq, j]
                a_r = acc[hh * nq + tq]
                for i in range(K):
                    a_r[i] += e * to_f32(v[i])


@njit(parallel=True, fastmath=True, cache=True)
def _merge_spans(out_TO, parts, heads_of_G, qblock, n_sp):
    """out rows from the spans' partial states (parts[task] = output, m, l of the task's rows): the
    output sum(out_s exp(m_s - M)) / sum(l_s exp(m_s - M)), M the largest m_s, in span order."""
    for pair in prange((out_TO.shape[0] + qblock - 1) // qblock * (heads_of_G.shape[0] - 1)):
        merge_pair(pair, out_TO, parts, heads_of_G, qblock, n_sp)


@njit(fastmath=True, cache=True)
def merge_pair(pair, out_TO, parts, heads_of_G, qblock, n_sp):
    """_merge_spans' rows of one (query block, KV head) pair."""
    T = out_TO.shape[0]
    G = heads_of_G.shape[0] - 1
    K = parts.shape[2] - 2
    g = pair % G
    t0 = pair // G * qblock
    nq = min(T, t0 + qblock) - t0
    h0 = heads_of_G[g]
    for r in range((heads_of_G[g + 1] - h0) * nq):
        top = np.float32(-np.inf)
        for sp in range(n_sp):
            top = max(top, parts[pair * n_sp + sp, r, K])
        total = np.float32(0.0)
        o = out_TO[t0 + r % nq, (h0 + r // nq) * K : (h0 + r // nq + 1) * K]
        for i in range(K):
            o[i] = 0.0
        for sp in range(n_sp):
            part = parts[pair * n_sp + sp, r]  # every span holds positions the query sees
            w = exp32(part[K] - top)
            total += part[K + 1] * w
            for i in range(K):
                o[i] += part[i] * w
        inv = np.float32(1.0) / total
        for i in range(K):
            o[i] *= inv


def _kv_rows(cache_GSK, g, s0, n, ws, block, which):
    raise NotImplementedError  # numba only


@overload(_kv_rows, inline="always")
def _kv_rows_impl(cache_GSK, g, s0, n, ws, block, which):
    """Address of rows s0 .. s0 + n of cache[g] as float32 (for sgemm): the cache itself when float32;
    a bf16 cache's rows widened into tile `which` (0 for K, 1 for V) of block rows at the end of this
    thread's scratch ws."""
    if cache_GSK.dtype == types.float32:
        return lambda cache_GSK, g, s0, n, ws, block, which: cache_GSK[g, s0:].ctypes.data

    def widen(cache_GSK, g, s0, n, ws, block, which):
        K = cache_GSK.shape[2]
        start = ws.shape[0] - (2 - which) * block * K
        tile = ws[start : start + n * K].reshape(n, K)
        for r in range(n):
            for i in range(K):
                tile[r, i] = to_f32(cache_GSK[g, s0 + r, i])
        return tile.ctypes.data

    return widen


@njit(parallel=True, fastmath=True, cache=True)
def attention_streaming_blocks(
    out_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, scratch, block, qblock, sgemm
):
    """attention_streaming for many queries (prefill): the same online softmax, with the products of a
    tile done by sgemm from this thread. A task is one KV head with all its query heads and a block of
    queries: rows r = (head, query) as in attention_streaming; per KV block, scores = Q K^T (an sgemm
    per query head), then acc += P V (one sgemm: the GQA group shares V). The blocks that the causal
    diagonal crosses are multiplied per sub-block of CAUSAL_SUB queries over the columns its last query
    sees (a 128-token prompt: 5/8 of the whole tile's products). Scratch per thread: group x qblock x
    (block + K + 2)."""
    T = out_TO.shape[0]
    O = qkv_TO.shape[1]
    G = heads_of_G.shape[0] - 1
    K = k_cache_GSK.shape[2]
    n_qb = (T + qblock - 1) // qblock
    for job in prange(n_qb * G):
        qb = job // G
        g = job % G
        h0 = heads_of_G[g]
        heads = heads_of_G[g + 1] - h0
        t0 = qb * qblock
        nq = min(T, t0 + qblock) - t0
        R = heads * nq  # rows: (head, query) pairs
        ws = scratch[get_thread_id()]
        sc, acc, m, l = _softmax_state(ws, R, block, K)
        diag, end = pos0 + t0, pos0 + t0 + nq  # every query sees [0, diag]; the last one [0, end)
        s0 = 0
        while s0 < end:
            # blocks of up to `block` positions, split at diag: the blocks before it are seen whole by
            # every query, so all queries go at once (fewer, larger products); in the blocks from diag
            # on, the causal diagonal crosses the tile, so per sub-block of queries a .. b - 1 only the
            # columns its last query sees are multiplied and masked tiles are skipped
            n = min(diag if s0 < diag else end, s0 + block) - s0
            sub = nq if s0 < diag else CAUSAL_SUB
            k_rows = _kv_rows(k_cache_GSK, g, s0, n, ws, block, 0)
            v_rows = _kv_rows(v_cache_GSK, g, s0, n, ws, block, 1)
            for a in range(0, nq, sub):
                b = min(nq, a + sub)
                cols = min(n, pos0 + t0 + b - s0)
                if cols <= 0:  # the block starts past these queries
                    continue
                # sc[hh nq + j, :cols] = scale * q_(t0 + j, h0 + hh) . K[s0 + c]
                for hh in range(heads):
                    sgemm(
                        ROW_MAJOR,
                        NO_TRANS,
                        TRANS,
                        b - a,
                        cols,
                        K,
                        scale,
                        qkv_TO[t0 + a :, (h0 + hh) * K :].ctypes.data,
                        O,
                        k_rows,
                        K,
                        np.float32(0.0),
                        sc[hh * nq + a :].ctypes.data,
                        block,
                    )
            for r in range(R):
                j = r % nq
                visible = min(n, pos0 + t0 + j + 1 - s0)  # causal limit of query t0 + j in this block
                row = sc[r]
                if visible > 0:
                    _online_softmax(row[:visible], r, m, l, acc)
                cols = min(n, pos0 + t0 + min(nq, (j // sub + 1) * sub) - s0)
                row[max(visible, 0) : max(cols, 0)] = 0.0  # masked within its sub-block: no weight in P V
            # acc += P V: per sub-block and head over the columns it multiplied, or all rows at once
            for a in range(0, nq, sub):
                b = min(nq, a + sub)
                cols = min(n, pos0 + t0 + b - s0)
                if cols <= 0:
                    continue
                for hh in range(heads if sub < nq else 1):
                    rows = b - a if sub < nq else R  # whole blocks: the GQA group's rows share V
                    sgemm(
                        ROW_MAJOR,
                        NO_TRANS,
                        NO_TRANS,
                        rows,
                        K,
                        cols,
                        np.float32(1.0),
                        sc[hh * nq + a :].ctypes.data,
                        block,
                        v_rows,
                        K,
                        np.float32(1.0),
                        acc[hh * nq + a :].ctypes.data,
                        K,
                    )
            s0 += n
        _write_rows(out_TO, acc, l, h0, t0, nq)


def streaming(out_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, scratch, parts, block, qblock):
    """Streaming attention: tiles multiplied by sgemm for many queries, the row kernel for few.
    scratch: per thread, streaming_scratch_size floats; parts: span_partials_floats floats."""
    if out_TO.shape[0] >= BLOCKS_MIN_T and SGEMM is not None:
        attention_streaming_blocks(
            out_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, scratch, block, qblock, SGEMM
        )
    else:
        attention_streaming(
            out_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, scratch, block, qblock, parts
        )


def streaming_scratch_size(block: int, qblock: int, head_dim: int, group: int, kv_dtype=np.float32) -> int:
    """Floats of per-thread scratch for `streaming` (either kernel) with at most `group` query heads per KV
    head: group x qblock rows of (block + head_dim + 2), and for a bf16 cache two tiles of block x
    head_dim into which the sgemm path widens a K and a V block."""
    tiles = 2 * block * head_dim if np.dtype(kv_dtype).itemsize == 2 else 0
    return group * qblock * (block + head_dim + 2) + tiles


def span_partials_floats(kv_heads: int, group: int, head_dim: int) -> int:
    """Floats of the buffer `streaming` keeps decode's per-span partial states in: MAX_SPLITS spans of
    every KV head's `group` rows of (output, m, l), whatever the context length."""
    return MAX_SPLITS * kv_heads * group * (head_dim + 2)


def heads_of_kv(kv_of_H: np.ndarray, n_kv: int) -> np.ndarray:
    """Offsets [G + 1]: the query heads of KV head g are heads_of_G[g] .. heads_of_G[g + 1] - 1."""
    return np.searchsorted(kv_of_H, np.arange(n_kv + 1)).astype(np.int64)
