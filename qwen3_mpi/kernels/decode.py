"""A decode step in parallel regions: every layer in one region on a single rank, and on each rank when
all ranks are on one node (combining through the node's shared window inside it); on several nodes
each half-layer in one, between the combines through MPI.

Each numba kernel call is a parallel region: the threads start it together and the caller waits for
the last to finish. Called one by one, a decode step's kernels are seven regions per layer (qkv_proj,
q/k norm + RoPE, attention, o_proj; gate_up_proj, SiLU, down_proj), each short (a 4 MB matrix is ~60 us
of reading), so the starts, the ends and the waits for the slower thread cost a few percent of the
step. Here the threads enter once and walk the calls in turn, with a barrier between consecutive calls
(a spin on a shared counter). The calls are the kernels' own tasks (the same functions, each thread
taking a contiguous share of them), so the result is that of calling the kernels one by one, up to the
order of fastmath sums (LLVM may vectorize a task's code inlined into a region differently: ~1e-6 in
the tests). Two of the barriers are left out where a thread's next tasks need only its own results:
with one span of streaming attention, a thread norms the query and key heads of its own KV heads and
goes on to their attention; where a gate_up_proj task computes the gate and the up of the same
columns (a rank's FFN slice a multiple of 32 wide in tiles, of 2 in rows), its thread applies SiLU to
them at once.

A step in regions is faster than one kernel call at a time, and leaving out the two barriers a little
faster still, on the machine measured (docs/benchmarks.md, 'Kernel measurements').

On one node, the ranks' regions meet at a barrier of all their threads (the same spin, on a counter in
memory the node's ranks share) before each combine; each rank's partial sums go straight into its slot
of the combine's window, and one thread of each rank then adds every rank's slot in rank order, so the
ranks' hidden states stay bit-identical and a step makes no MPI call and no Python call per layer
(faster than a region per half-layer with the combines through MPI: docs/benchmarks.md, 'Kernel
measurements').

A barrier needs every thread of the region running at once, one iteration of `prange(threads)` each.
OpenMP's and numba's workqueue threading layers do that; TBB's work stealing may run two iterations on
one thread, which would wait forever, so `regions_work` tells whether to use the regions.
"""

import functools
from collections import namedtuple

import numpy as np
from numba import get_thread_id, njit, prange

from .attention import SPLIT, merge_pair, standard_row, streaming_job, streaming_plan
from .linear import matvec_share, task_units
from .llvm_ir import atomic_add, atomic_load, atomic_store, cycle_count, spin_pause
from .ops import add_partials_serial, qk_norm_rope_head, silu_mul_range

# the steps of one layer as layers_region runs them, in model/layer.py's decoder_layer terms: the model
# runs every layer in the region only if decoder_layer's steps are these
LAYERS_REGION_STEPS = ("attention", "combine", "mlp", "combine")

# the attention forms a region runs (kernels/registry.py gives each kernel one): a row of standard
# attention per (query, head), or streaming attention's jobs per (KV head, span) and their merge
ROWS, SPANS = 0, 1

# what every layer of a decode step shares, as the regions' kernels (linear, ops, attention) take it:
# the step's buffers, the RoPE tables, its first position, the norms' eps, the attention form and the
# kernel's context (registry.AttentionContext's fields)
DecodeStep = namedtuple(
    "DecodeStep",
    "h_TD qkv_TO attn_TO part_TD cos_PK2 sin_PK2 pos0 eps form kv_of_H heads_of_G scale attn_scratch block qblock "
    "scratch",
)

SYNC_INT64 = 32  # the barriers' state: arrivals [0], generation [8], failed [16], patience [24]
FAILED = 16
PATIENCE = 24  # cycles a barrier waits before it gives up
WAIT_CYCLES = 1 << 37  # ~40 s (the time-stamp counter runs at ~2-4 GHz)


def barrier_state() -> np.ndarray:
    """A fresh state for the barriers of the regions (the arrays they take as `sync`)."""
    from .. import aligned

    sync = aligned.zeros(SYNC_INT64, np.int64)
    sync[PATIENCE] = WAIT_CYCLES
    return sync


@njit(inline="always")
def barrier(sync, threads):
    """Wait until all `threads` threads of the region have arrived: each counts itself in; the last one
    resets the count and starts the next generation, for which the others spin. A thread that waits
    longer than sync[PATIENCE] cycles sets sync[FAILED], and from then on every barrier lets every thread
    through, so that the region ends (with garbage) instead of hanging; the caller checks sync[FAILED]."""
    if atomic_load(sync, FAILED):
        return
    generation = atomic_load(sync, 8)
    if atomic_add(sync, 0, 1) == threads - 1:
        atomic_store(sync, 0, 0)
        atomic_add(sync, 8, 1)
        return
    deadline = cycle_count() + sync[PATIENCE]
    spins = 0
    while atomic_load(sync, 8) == generation:
        spin_pause()
        spins += 1
        if spins % 4096 == 0 and (cycle_count() > deadline or atomic_load(sync, FAILED)):
            atomic_store(sync, FAILED, 1)
            return


@njit(inline="always")
def _share(part, parts, n):
    """The tasks [a, b) of `part` of `parts` contiguous shares of n tasks."""
    return part * n // parts, (part + 1) * n // parts


@njit(inline="always")
def _plan(step, k_cache_GSK, parts_X):
    """streaming_plan of this step (the ROWS form: one span, no partial states)."""
    split = k_cache_GSK.shape[1] if step.form == ROWS else SPLIT
    T = step.qkv_TO.shape[0]
    return streaming_plan(T, step.heads_of_G, k_cache_GSK, step.pos0, step.block, step.qblock, parts_X, split)


@njit(fastmath=True, cache=True)
def _attention_block(worker, threads, sync, step, plan, qkv_w, q_norm_K, k_norm_K, k_cache_GSK, v_cache_GSK, o_w):
    """Worker `worker`'s share of attention_half; plan: _plan's (jobs, spans, span, parts)."""
    h_TD, qkv_TO, attn_TO, part_TD, scratch = step.h_TD, step.qkv_TO, step.attn_TO, step.part_TD, step.scratch
    cos_PK2, sin_PK2, pos0, eps, standard = step.cos_PK2, step.sin_PK2, step.pos0, step.eps, step.form == ROWS
    kv_of_H, heads_of_G, scale, attn_scratch = step.kv_of_H, step.heads_of_G, step.scale, step.attn_scratch
    block, qblock = step.block, step.qblock
    T = qkv_TO.shape[0]
    H = kv_of_H.shape[0]
    G = heads_of_G.shape[0] - 1
    jobs, n_sp, span, parts = plan
    matvec_share(worker, threads, qkv_TO, h_TD, qkv_w, scratch)
    barrier(sync, threads)
    norm = (q_norm_K, k_norm_K, cos_PK2, sin_PK2, pos0, eps, k_cache_GSK, v_cache_GSK)
    if not standard and jobs == G:
        # streaming attention's job g is KV head g here (one span, one block of queries): a worker norms the
        # query and key heads of its own jobs and goes on to them without waiting for the others
        a, b = _share(worker, threads, jobs)
        for t in range(T):
            for g in range(a, b):
                for j in range(heads_of_G[g], heads_of_G[g + 1]):
                    qk_norm_rope_head(t * (H + G) + j, qkv_TO, H, G, *norm)
                qk_norm_rope_head(t * (H + G) + H + g, qkv_TO, H, G, *norm)
    else:
        a, b = _share(worker, threads, T * (H + G))
        for th in range(a, b):
            qk_norm_rope_head(th, qkv_TO, H, G, *norm)
        barrier(sync, threads)
    if standard:
        a, b = _share(worker, threads, T * H)
        for th in range(a, b):
            standard_row(th, attn_TO, qkv_TO, kv_of_H, k_cache_GSK, v_cache_GSK, pos0, scale, attn_scratch)
    else:
        a, b = _share(worker, threads, jobs)
        for job in range(a, b):
            streaming_job(
                *(job, attn_TO, qkv_TO, heads_of_G, k_cache_GSK, v_cache_GSK, pos0, scale, attn_scratch),
                *(block, qblock, n_sp, span, parts),
            )
        if n_sp > 1:
            barrier(sync, threads)
            a, b = _share(worker, threads, (T + qblock - 1) // qblock * G)
            for pair in range(a, b):
                merge_pair(pair, attn_TO, parts, heads_of_G, qblock, n_sp)
    barrier(sync, threads)
    matvec_share(worker, threads, part_TD, attn_TO, o_w, scratch)


@njit(fastmath=True, cache=True)
def _mlp_block(worker, threads, sync, step, gu_TO, gate_up_w, act_TF, down_w):
    """Worker `worker`'s share of mlp_half."""
    h_TD, part_TD, scratch = step.h_TD, step.part_TD, step.scratch
    T, F = act_TF.shape
    matvec_share(worker, threads, gu_TO, h_TD, gate_up_w, scratch)
    width, q = task_units(gate_up_w)
    if 2 * q * width == F:  # each task computed the gate and the up of the same columns: no need to wait
        a, b = _share(worker, threads, q)
        for c in range(a, b):
            for t in range(T):
                silu_mul_range(act_TF, gu_TO, t, c * width, (c + 1) * width)
                silu_mul_range(act_TF, gu_TO, t, (c + q) * width, (c + q + 1) * width)
    else:
        barrier(sync, threads)
        a, b = _share(worker, threads, F)
        for t in range(T):
            silu_mul_range(act_TF, gu_TO, t, a, b)
    barrier(sync, threads)
    matvec_share(worker, threads, part_TD, act_TF, down_w, scratch)


@njit(parallel=True, fastmath=True, cache=True)
def attention_half(threads, sync, step, parts_X, qkv_w, q_norm_K, k_norm_K, k_cache_GSK, v_cache_GSK, o_w):
    """An attention block for a few tokens (matvec sizes), by `threads` threads (numba's number): qkv =
    h @ qkv_w.T; q/k norm, RoPE, k and v into the cache; attention (standard, or streaming's row kernel
    with its spans) into attn; part = attn @ o_w.T. step: a DecodeStep."""
    plan = _plan(step, k_cache_GSK, parts_X)
    for worker in prange(threads):
        _attention_block(worker, threads, sync, step, plan, qkv_w, q_norm_K, k_norm_K, k_cache_GSK, v_cache_GSK, o_w)


@njit(parallel=True, fastmath=True, cache=True)
def mlp_half(threads, sync, step, gu_TO, gate_up_w, act_TF, down_w):
    """An MLP block for a few tokens, by `threads` threads: gu = h @ gate_up_w.T; act = SiLU(gate) * up;
    part = act @ down_w.T (step: as attention_half's)."""
    for worker in prange(threads):
        _mlp_block(worker, threads, sync, step, gu_TO, gate_up_w, act_TF, down_w)


@njit(parallel=True, fastmath=True, cache=True)
def layers_region(threads, sync, node, step_a, step_m, parts_X, layers, k_LGSK, v_LGSK, gu_TO, act_TF, x_TD, slots):
    """Every layer in one region, on a single rank or on each of the ranks of one node: per layer
    attention_half; the combine: every rank's partial sums summed in rank order into x, h = the
    post-attention norm of x (on one thread of each rank); mlp_half; the combine, h = the next norm.
    step_a, step_m: two DecodeSteps (separate arguments: numba's parallel regions cannot unpack a tuple
    of named tuples), whose partial sums (part_TD) are this rank's slot of slots[0]
    (the attention blocks') and of slots[1] (the MLP blocks'); slots: two [ranks, T, D], which several
    ranks share (the combine's window, Comm.node_slots), a single rank's partial sums [1, T, D] twice.
    Per layer it runs LAYERS_REGION_STEPS.
    node: (sync, count), the barrier of every thread of every rank, before each combine. A rank writes
    a slot again only after the barrier of the other slots, which every rank reaches after its sum
    over this one. layers: layer_stacks, each a typed list of the layers' arrays."""
    qkv_ws, o_ws, gate_up_ws, down_ws, q_norms, k_norms, post_norms, next_norms = layers
    node_sync, everyone = node
    slots_a, slots_m = slots
    h_TD, eps = step_a.h_TD, step_a.eps
    plan = _plan(step_a, k_LGSK[0], parts_X)
    for worker in prange(threads):
        for i in range(len(qkv_ws)):
            _attention_block(
                *(worker, threads, sync, step_a, plan, qkv_ws[i], q_norms[i], k_norms[i], k_LGSK[i], v_LGSK[i]),
                o_ws[i],
            )
            barrier(node_sync, everyone)
            if worker == 0:
                add_partials_serial(x_TD, slots_a, h_TD, post_norms[i], eps)
            barrier(sync, threads)
            _mlp_block(worker, threads, sync, step_m, gu_TO, gate_up_ws[i], act_TF, down_ws[i])
            barrier(node_sync, everyone)
            if worker == 0:
                add_partials_serial(x_TD, slots_m, h_TD, next_norms[i], eps)
            barrier(sync, threads)


def compile_now(dispatcher, *args) -> None:
    """Compile `dispatcher` for these arguments (or load it from numba's cache) before the call: ranks
    that meet at barriers inside a region must not enter it minutes apart, one of them compiling."""
    import numba

    dispatcher.compile(tuple(numba.typeof(a) for a in args))


def layer_stacks(layers, norms_after):
    """The arrays of every layer as layers_region takes them (typed lists), or None where a kind's arrays
    differ in type from layer to layer (a checkpoint mixing bf16 and float32)."""
    from numba.typed import List

    kinds = (
        [layer.qkv_proj.w for layer in layers],
        [layer.o_proj.w for layer in layers],
        [layer.gate_up_proj.w for layer in layers],
        [layer.down_proj.w for layer in layers],
        [layer.q_norm_K for layer in layers],
        [layer.k_norm_K for layer in layers],
        [layer.post_attention_layernorm_D for layer in layers],
        list(norms_after[1:]),
    )
    if any(
        len({(a.dtype, a.ndim) for a in arrays}) > 1 or not all(a.flags.c_contiguous for a in arrays)
        for arrays in kinds
    ):
        return None
    return tuple(List(arrays) for arrays in kinds)


@njit(parallel=True, cache=True)
def _thread_of_iteration(ids):
    for i in prange(ids.shape[0]):
        ids[i] = get_thread_id()


@functools.cache
def regions_work(threads: int) -> bool:
    """Whether `threads` iterations of prange run on `threads` distinct threads at once here: numba's
    threading layer is OpenMP or workqueue (which start one thread per chunk) and did so just now."""
    import numba

    ids = np.full(threads, -1, np.int64)
    _thread_of_iteration(ids)
    return numba.threading_layer() in ("omp", "workqueue") and len(set(ids.tolist())) == threads
