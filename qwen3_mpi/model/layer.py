"""The decoder layer, written once: decoder_layer below is the layer spec, and every way of running a
layer is an executor that provides its three steps (attention, mlp, combine):

    Kernels       one kernel call after another, any number of tokens (prefill; decode without regions)
    HalfRegions   a decode step's attention and MLP blocks each as one numba parallel region
                  (kernels/decode.py), the combines between them through MPI (ranks on several nodes)
    FusedLayers   every layer of a decode step in one region (a single rank, or each rank of one node),
                  the combines inside it through the node's shared window

An executor follows decoder_layer's steps in its order. Kernels and HalfRegions are driven by it
directly; FusedLayers runs the steps that kernels/decode.layers_region implements per layer, and the
model uses it only when those are decoder_layer's (`steps_of(decoder_layer, layer)`), so a layer of another
shape (say, routed experts in place of the MLP) falls back to an executor that runs it step by step.
"""

from __future__ import annotations

import numpy as np

from ..kernels import qk_norm_rope_cache, silu_mul
from ..kernels.decode import LAYERS_REGION_STEPS, attention_half, compile_now, layers_region, mlp_half
from ..kernels.ops import add_partials


def decoder_layer(run, i: int, layer, next_norm_D: np.ndarray) -> None:
    """Layer i on the residual stream x, whose norm h the previous combine left (shape names as in
    model/model.py)."""
    # attention block: h -> q/k/v of this rank's heads -> q/k norm, RoPE, k and v into the cache ->
    # attention -> o_proj columns of these heads: this rank's partial sums of the block's output
    run.attention(i, layer)
    # combine, a collective: partial sums -> full hidden, added to x; h = post_attention_layernorm(x)
    run.combine(layer.post_attention_layernorm_D)
    # MLP block: h -> gate/up rows of this rank's FFN slice -> SiLU(gate) * up -> down_proj columns of the
    # slice: partial sums
    run.mlp(i, layer)
    # combine, a collective: partial sums -> full hidden, added to x; h = the next layer's input norm
    # (after the last layer: the final norm)
    run.combine(next_norm_D)


class _Steps:
    """An executor that only records the steps it is asked for (steps_of)."""

    def __init__(self):
        self.steps = []

    def attention(self, i, layer):
        self.steps.append("attention")

    def mlp(self, i, layer):
        self.steps.append("mlp")

    def combine(self, norm_D):
        self.steps.append("combine")


def steps_of(layer_fn, layer) -> tuple[str, ...]:
    """The steps of `layer` (a LayerWeights) as layer_fn runs them."""
    record = _Steps()
    layer_fn(record, 0, layer, None)
    return tuple(record.steps)


def combine(comm, x_TD: np.ndarray, part_TD: np.ndarray, h_TD: np.ndarray, norm_D: np.ndarray, eps) -> None:
    """Partial sums -> full hidden, the collective after every block: x += the sum of every rank's
    partial sums in rank order (so x stays bit-identical on every rank), then h = rmsnorm(x) * norm_D,
    the norm of whatever follows."""
    for rows, parts_RTD in comm.partials(part_TD):
        add_partials(x_TD[rows], parts_RTD, h_TD[rows], norm_D, eps)


class Kernels:
    """The layer's steps as one kernel call after another, on step = model.Model.step(T, pos0)."""

    def __init__(self, model, step):
        self.model, self.step = model, step

    def attention(self, i, layer):
        m, s = self.model, self.step
        k_cache, v_cache = m.cache.layer(i)
        layer.qkv_proj(s.qkv_TO, s.h_TD, s.scratch)
        qk_norm_rope_cache(
            *(s.qkv_TO, m.layout.n_heads, m.layout.n_kv_heads, layer.q_norm_K, layer.k_norm_K),
            *(s.cos_PK2, s.sin_PK2, s.pos0, s.eps, k_cache, v_cache),
        )
        m.attention.forward(s.attn_TO, s.qkv_TO, k_cache, v_cache, s.pos0, m.attn)
        layer.o_proj(s.part_TD, s.attn_TO, s.scratch)

    def mlp(self, i, layer):
        s = self.step
        layer.gate_up_proj(s.gu_TO, s.h_TD, s.scratch)
        silu_mul(s.act_TF, s.gu_TO)
        layer.down_proj(s.part_TD, s.act_TF, s.scratch)

    def combine(self, norm_D):
        s = self.step
        combine(self.model.comm, s.x_TD, s.part_TD, s.h_TD, norm_D, s.eps)


class HalfRegions(Kernels):
    """A decode step's blocks each as one parallel region of the model's threads (kernels/decode.py),
    combining between them as Kernels does."""

    def attention(self, i, layer):
        m = self.model
        attention_half(
            *(m.threads, m.sync, self.step.decode, m.attn.parts, layer.qkv_proj.w, layer.q_norm_K),
            *(layer.k_norm_K, *m.cache.layer(i), layer.o_proj.w),
        )

    def mlp(self, i, layer):
        m, s = self.model, self.step
        mlp_half(m.threads, m.sync, s.decode, s.gu_TO, layer.gate_up_proj.w, s.act_TF, layer.down_proj.w)


class FusedLayers:
    """Every layer of a decode step in one region (kernels/decode.layers_region), which runs
    LAYERS_REGION_STEPS per layer: the attention block; the combine, every rank's partial sums summed in
    rank order into x and h = the post-attention norm (one thread of each rank, after a barrier of every
    thread of every rank on the node); the MLP block; the combine, h = the next norm. A single rank's
    partial sums are its own; several ranks' are the node window's slots (Comm.node_slots), this rank's
    in place of part."""

    STEPS = LAYERS_REGION_STEPS

    def __init__(self, model, step):
        self.model, self.step = model, step

    def layers(self) -> None:
        m, s, comm = self.model, self.step, self.model.comm
        args = (m.threads, m.sync)
        if comm.size == 1:
            args += ((m.sync, m.threads), s.decode, s.decode, m.attn.parts, m.layer_stacks)
            slots = (s.part_TD[None], s.part_TD[None])
        else:
            slots_a, slots_m, slot = comm.node_slots(*s.part_TD.shape)
            step_a, step_m = (s.decode._replace(part_TD=half[slot]) for half in (slots_a, slots_m))
            args += ((m.node_sync, m.node_threads), step_a, step_m, m.attn.parts, m.layer_stacks)
            slots = (slots_a, slots_m)
        args += (m.cache.k_LGSK, m.cache.v_LGSK, s.gu_TO, s.act_TF, s.x_TD, slots)
        if comm.size > 1 and not m.node_compiled:
            compile_now(layers_region, *args)  # every rank, before any waits at the region's barriers
            comm.barrier()
            m.node_compiled = True
        layers_region(*args)
        comm.count_exchanges(2 * len(m.weights.layers), s.part_TD.nbytes)
