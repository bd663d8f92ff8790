"""Causal attention of T new queries against a KV cache of positions [0, pos0 + T).

q comes from the fused projection buffer (row t holds H query heads of K values from column q0 on);
query head h reads KV head kv_of_H[h] straight from the cache (GQA without copies). Query t sits at
position pos0 + t and sees cache positions [0, pos0 + t].

standard:  for each (query, head) the whole score row over the visible positions is materialized in
           scratch, soft-maxed, then used to weight V. Scratch: threads x S floats.
streaming: online softmax over KV blocks of B positions for a block of up to QB queries and all query
           heads of one KV head (flash-attention style, each K/V block read once for the whole GQA
           group): scratch is threads x group x QB x (B + K + 2) floats, whatever S is.
"""
import numpy as np
from numba import get_thread_id, njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def attention_standard(out_TO, qkv_TO, kv_of_H, k_cache_GSK, v_cache_GSK, pos0, scale, scratch):
    """out[t, h*K:(h+1)*K] = softmax(q_th . K[:n]^T * scale) @ V[:n], n = pos0 + t + 1.
    Cost: 2 * n * K flops per (t, h) for the scores and as many for V; reads K and V once per (t, h)."""
    T = out_TO.shape[0]
    H = kv_of_H.shape[0]
    K = k_cache_GSK.shape[2]
    for th in prange(T * H):
        t = th // H
        h = th % H
        g = kv_of_H[h]
        n = pos0 + t + 1
        q = qkv_TO[t, h * K : (h + 1) * K]
        row = scratch[get_thread_id(), :n]
        m = -np.inf
        for s in range(n):
            k = k_cache_GSK[g, s]
            acc = np.float32(0.0)
            for i in range(K):
                acc += q[i] * k[i]
            acc *= scale
            row[s] = acc
            m = max(m, acc)
        total = np.float32(0.0)
        for s in range(n):
            e = np.exp(row[s] - m)
            row[s] = e
            total += e
        o = out_TO[t, h * K : (h + 1) * K]
        o[:] = 0.0
        for s in range(n):
            w = row[s] / total
            v = v_cache_GSK[g, s]
            for i in range(K):
                o[i] += w * v[i]


@njit(parallel=True, fastmath=True, cache=True)
def attention_streaming(out_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, scratch, block, qblock):
    """Same result as attention_standard, by online softmax. A task is one KV head g with all its query
    heads (heads_of_G[g] to heads_of_G[g + 1]) and a block of up to qblock queries: it walks the visible
    KV positions `block` at a time, keeping per (head, query) row a running max m, denominator l and
    unnormalized output. Each K/V block is read once per task and reused from cache by every row."""
    T = out_TO.shape[0]
    G = heads_of_G.shape[0] - 1
    K = k_cache_GSK.shape[2]
    n_qb = (T + qblock - 1) // qblock
    for job in prange(n_qb * G):
        qb = job // G
        g = job % G
        h0 = heads_of_G[g]
        t0 = qb * qblock
        t1 = min(T, t0 + qblock)
        nq = t1 - t0
        R = (heads_of_G[g + 1] - h0) * nq  # rows: (head, query) pairs
        ws = scratch[get_thread_id()]
        sc = ws[: R * block].reshape(R, block)  # scores of this KV block
        acc = ws[R * block : R * (block + K)].reshape(R, K)
        m = ws[R * (block + K) : R * (block + K + 1)]
        l = ws[R * (block + K + 1) : R * (block + K + 2)]
        acc[:] = 0.0
        m[:] = -np.inf
        l[:] = 0.0
        end = pos0 + t1  # positions visible to the last query of the block
        for s0 in range(0, end, block):
            s1 = min(end, s0 + block)
            for r in range(R):
                h = h0 + r // nq
                t = t0 + r % nq
                visible = min(s1, pos0 + t + 1)  # causal limit of query t within this block
                if visible <= s0:
                    continue
                q = qkv_TO[t, h * K : (h + 1) * K]
                bm = -np.inf
                for s in range(s0, visible):
                    k = k_cache_GSK[g, s]
                    a = np.float32(0.0)
                    for i in range(K):
                        a += q[i] * k[i]
                    a *= scale
                    sc[r, s - s0] = a
                    bm = max(bm, a)
                new_m = max(m[r], bm)
                corr = np.exp(m[r] - new_m)
                l[r] *= corr
                for i in range(K):
                    acc[r, i] *= corr
                for s in range(s0, visible):
                    e = np.exp(sc[r, s - s0] - new_m)
                    l[r] += e
                    v = v_cache_GSK[g, s]
                    for i in range(K):
                        acc[r, i] += e * v[i]
                m[r] = new_m
        for r in range(R):
            h = h0 + r // nq
            t = t0 + r % nq
            inv = np.float32(1.0) / l[r]
            for i in range(K):
                out_TO[t, h * K + i] = acc[r, i] * inv


ATTENTION_KERNELS = ("standard", "streaming")


def streaming_scratch_size(block: int, qblock: int, head_dim: int, group: int) -> int:
    """Floats of per-thread scratch for attention_streaming with at most `group` query heads per KV head."""
    return group * qblock * (block + head_dim + 2)


def heads_of_kv(kv_of_H: np.ndarray, n_kv: int) -> np.ndarray:
    """Offsets [G + 1]: the query heads of KV head g are heads_of_G[g] .. heads_of_G[g + 1] - 1."""
    return np.searchsorted(kv_of_H, np.arange(n_kv + 1)).astype(np.int64)


__all__ = ["ATTENTION_KERNELS", "attention_standard", "attention_streaming", "streaming_scratch_size"]
