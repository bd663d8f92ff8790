"""Elementwise and per-row kernels of a Qwen3 layer."""

import math

import numpy as np
from numba import njit, prange

from .bf16 import store_f32, to_f32
from .exp import exp32

SERIAL_T = 4  # kernels over rows run rows serially up to this many (a decode step): no thread launch


@njit(fastmath=True, cache=True)
def _rmsnorm_row(out_D, x_D, w_D, eps):
    """out = x / sqrt(mean(x^2) + eps) * w (sum of squares in float64). Not inlined, so that it keeps its
    fastmath in a caller without it."""
    ss = 0.0
    for d in range(x_D.shape[0]):
        ss += np.float64(x_D[d]) * x_D[d]
    inv = np.float32(1.0 / math.sqrt(ss / x_D.shape[0] + eps))
    for d in range(x_D.shape[0]):
        out_D[d] = w_D[d] * (x_D[d] * inv)


@njit(parallel=True, fastmath=True, cache=True)
def silu_mul(out_TF, gu_T2F):
    """out = silu(gate) * up, with gate = gu[:, :F] and up = gu[:, F:]."""
    for t in prange(out_TF.shape[0]):
        silu_mul_range(out_TF, gu_T2F, t, 0, out_TF.shape[1])


@njit(fastmath=True, cache=True)
def silu_mul_range(out_TF, gu_T2F, t, f0, f1):
    """silu_mul of row t, columns f0 .. f1 - 1."""
    F = out_TF.shape[1]
    for f in range(f0, f1):
        g = gu_T2F[t, f]
        out_TF[t, f] = g / (np.float32(1.0) + exp32(-g)) * gu_T2F[t, F + f]


@njit(fastmath=True, cache=True, inline="always")
def _norm_rope(v_K, w_K, cos_K2, sin_K2, eps):
    """In place: RMSNorm of one head vector, then RoPE (rotate-half layout)."""
    K = v_K.shape[0]
    half = K // 2
    ss = 0.0
    for k in range(K):
        ss += np.float64(v_K[k]) * v_K[k]
    inv = np.float32(1.0 / math.sqrt(ss / K + eps))
    for k in range(half):
        a = w_K[k] * (v_K[k] * inv)
        b = w_K[half + k] * (v_K[half + k] * inv)
        v_K[k] = a * cos_K2[k] - b * sin_K2[k]
        v_K[half + k] = b * cos_K2[k] + a * sin_K2[k]


@njit(parallel=True, fastmath=True, cache=True)
def qk_norm_rope_cache(qkv_TO, H, G, q_norm_K, k_norm_K, cos_PK2, sin_PK2, pos0, eps, k_cache_GSK, v_cache_GSK):
    """For the fused projection qkv = [q (H heads) | k (G heads) | v (G heads)] of T new tokens at
    positions pos0..pos0+T-1: q_norm + RoPE on q in place; k_norm + RoPE on k; k and v into the caches
    (float32, or rounded to bf16).
    Always in parallel, even for a decode step's few rows (faster than run serially: docs/benchmarks.md,
    'Kernel measurements')."""
    for th in prange(qkv_TO.shape[0] * (H + G)):
        qk_norm_rope_head(th, qkv_TO, H, G, q_norm_K, k_norm_K, cos_PK2, sin_PK2, pos0, eps, k_cache_GSK, v_cache_GSK)


@njit(fastmath=True, cache=True)
def qk_norm_rope_head(th, qkv_TO, H, G, q_norm_K, k_norm_K, cos_PK2, sin_PK2, pos0, eps, k_cache_GSK, v_cache_GSK):
    """qk_norm_rope_cache's task th: head th % (H + G) of token th // (H + G)."""
    K = k_cache_GSK.shape[2]
    t = th // (H + G)
    j = th % (H + G)
    pos = pos0 + t
    head = qkv_TO[t, j * K : (j + 1) * K]
    if j < H:
        _norm_rope(head, q_norm_K, cos_PK2[pos], sin_PK2[pos], eps)
    else:
        g = j - H
        _norm_rope(head, k_norm_K, cos_PK2[pos], sin_PK2[pos], eps)
        store_f32(k_cache_GSK[g, pos], head)
        store_f32(v_cache_GSK[g, pos], qkv_TO[t, (H + G + g) * K : (H + G + g + 1) * K])


@njit(cache=True, inline="always")
def _add_partials_row(x_TD, parts_RTD, out_TD, w_D, eps, t):
    """x[t] += (parts[0, t] + parts[1, t] + ...), the sum built in out[t] (which the norm then
    overwrites) one partial at a time, so that every loop runs over d and vectorizes (faster than
    summing each d over the ranks: docs/benchmarks.md, 'Kernel measurements'), the same operations in
    the same order."""
    s, x = out_TD[t], x_TD[t]
    p = parts_RTD[0, t]
    for d in range(s.shape[0]):
        s[d] = p[d]
    for r in range(1, parts_RTD.shape[0]):
        p = parts_RTD[r, t]
        for d in range(s.shape[0]):
            s[d] += p[d]
    for d in range(s.shape[0]):
        x[d] += s[d]
    _rmsnorm_row(out_TD[t], x_TD[t], w_D, eps)


@njit(cache=True)
def add_partials_serial(x_TD, parts_RTD, out_TD, w_D, eps):
    """add_partials on this thread alone (a few rows), also from inside a parallel region."""
    for t in range(x_TD.shape[0]):
        _add_partials_row(x_TD, parts_RTD, out_TD, w_D, eps, t)


@njit(parallel=True, cache=True)
def add_partials(x_TD, parts_RTD, out_TD, w_D, eps):
    """x += parts[0] + parts[1] + ... in rank order, then out = rmsnorm(x) * w (the norm that follows
    every combine), a row at a time while it is in L1. No fastmath for the sum: its order is fixed, so
    every rank (on any CPU) computes bit-identical x from the same gathered partials."""
    T = x_TD.shape[0]
    if T <= SERIAL_T:
        add_partials_serial(x_TD, parts_RTD, out_TD, w_D, eps)
    else:
        for t in prange(T):
            _add_partials_row(x_TD, parts_RTD, out_TD, w_D, eps, t)


@njit(parallel=True, cache=True)
def embed_rows(out_TD, ids_T, table_VD, v0):
    """out[t] = table[ids[t] - v0] for ids in this rank's vocabulary rows [v0, v0 + V), else 0."""
    V = table_VD.shape[0]
    for t in prange(ids_T.shape[0]):
        r = ids_T[t] - v0
        if 0 <= r < V:
            for d in range(out_TD.shape[1]):
                out_TD[t, d] = to_f32(table_VD[r, d])
        else:
            out_TD[t, :] = 0.0
