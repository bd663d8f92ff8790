"""bf16 -> float32 inside numba: the bf16 bits shifted into the top half of a float32 are its exact value."""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def _bf16_bits_to_f32(typingctx, bits):
    """float32 whose bits are (uint32(bits) << 16): zero-extend, shift, bitcast (vectorizes)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(types.uint16), codegen


def to_f32(w):
    """float32 value of a weight element: bf16 bits (uint16) or a float."""
    raise NotImplementedError  # replaced inside numba by the overload below


@overload(to_f32, inline="always")
def _to_f32(w):
    if w == types.uint16:
        return lambda w: _bf16_bits_to_f32(w)
    if isinstance(w, types.Float):
        return lambda w: np.float32(w)
    return None
