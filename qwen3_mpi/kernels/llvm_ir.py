"""LLVM IR pieces shared by the hand-written kernels (amx.py, bf16.py, fma.py): intrinsic declarations,
element addresses, software prefetches callable from numba, and the CPU features numba compiles for."""

import functools

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
PTR = I8.as_pointer()
VOID = ir.VoidType()


def declare(builder, name: str, args: list, ret=VOID):
    """The function `name` (an LLVM intrinsic) of builder's module, declared on first use."""
    fn = builder.module.globals.get(name)
    return fn if fn is not None else ir.Function(builder.module, ir.FunctionType(ret, args), name)


def itemsize(context, array_type) -> int:
    return context.get_abi_sizeof(context.get_data_type(array_type.dtype))


def address(context, builder, array_type, array, offset):
    """&array.data[offset] (offset in elements) as i8*."""
    data = context.make_array(array_type)(context, builder, array).data
    scale = ir.Constant(I64, itemsize(context, array_type))
    return builder.gep(builder.bitcast(data, PTR), [builder.mul(offset, scale)])


def emit_prefetch(builder, pointer, locality: int) -> None:
    """Prefetch the cache line at pointer (any pointer type) for reading; locality 3 brings it into every
    level (prefetcht0), 2 into L2 and beyond (prefetcht1). Never faults, whatever the address."""
    fn = declare(builder, "llvm.prefetch.p0", [PTR, I32, I32, I32])
    read, data = ir.Constant(I32, 0), ir.Constant(I32, 1)
    builder.call(fn, [builder.bitcast(pointer, PTR), read, ir.Constant(I32, locality), data])


@intrinsic
def prefetch(typingctx, array, offset, locality):
    """Prefetch the cache line of array[offset] (see emit_prefetch; locality a literal 0-3)."""
    if not isinstance(locality, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        emit_prefetch(builder, address(context, builder, sig.args[0], args[0], args[1]), locality.literal_value)

    return types.void(array, types.int64, locality), codegen


LINE = 64  # bytes of a cache line


def _no_unroll(module):
    """A loop's `llvm.loop` metadata telling LLVM not to unroll it (a fresh self-referencing node)."""
    unroll = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop = ir.MDValue(module, [], name=str(len(module.metadata)))
    loop.operands = (loop, unroll)
    return loop


@intrinsic
def prefetch_span(typingctx, array, offset, count, locality):
    """Prefetch every cache line of array[offset : offset + count] (see emit_prefetch; locality a
    literal 0-3), a line per iteration of a loop that LLVM is told not to unroll.

    Written as a numba loop over the lines, the trip count (a row of K elements: 4 or 8 lines) is not
    known at compile time, so LLVM unrolls it 8 times with a remainder loop; and numba optimizes a
    function again each time it links it into a caller, which unrolled the already unrolled loop 8
    times more. That copy is what a caller loaded from numba's on-disk cache runs, slower than the same
    kernel compiled in the process. With this loop, cached and compiled code run alike, and faster than
    either did before (docs/benchmarks.md, 'Kernel measurements')."""
    if not isinstance(locality, types.IntegerLiteral):
        return None

    def codegen(context, builder, sig, args):
        start = builder.ptrtoint(address(context, builder, sig.args[0], args[0], args[1]), I64)
        end = builder.add(start, builder.mul(args[2], ir.Constant(I64, itemsize(context, sig.args[0]))))
        first = builder.and_(start, ir.Constant(I64, -LINE))
        entry = builder.block
        loop = builder.append_basic_block("prefetch_span")
        done = builder.append_basic_block("prefetch_span.done")
        builder.cbranch(builder.icmp_unsigned("<", first, end), loop, done)
        builder.position_at_end(loop)
        line = builder.phi(I64)
        line.add_incoming(first, entry)
        emit_prefetch(builder, builder.inttoptr(line, PTR), locality.literal_value)
        following = builder.add(line, ir.Constant(I64, LINE))
        line.add_incoming(following, loop)
        back = builder.cbranch(builder.icmp_unsigned("<", following, end), loop, done)
        back.set_metadata("llvm.loop", _no_unroll(builder.module))
        builder.position_at_end(done)

    return types.void(array, types.int64, types.int64, locality), codegen


@functools.cache
def target_features() -> frozenset[str]:
    """The CPU features numba compiles for ("+avx512f", "-amx-tile", ...): its configured feature list,
    else the host's; empty for a named CPU without a feature list (assume nothing)."""
    from numba.core import config

    if config.CPU_FEATURES is not None:
        return frozenset(config.CPU_FEATURES.split(","))
    if config.CPU_NAME not in (None, "host"):
        return frozenset()
    import llvmlite.binding as llvm

    return frozenset(llvm.get_host_cpu_features().flatten().split(","))


@functools.cache
def target_cpu() -> str:
    """LLVM's name of the CPU numba compiles for ("znver4", "sapphirerapids", ...): its configured one,
    else the host's."""
    from numba.core import config

    if config.CPU_NAME not in (None, "host"):
        return config.CPU_NAME
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def _element(context, builder, array_type, array, index):
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [index])


@intrinsic
def atomic_add(typingctx, array, index, value):
    """array[index] += value as one atomic step (int64 array, sequentially consistent); the old value."""
    if array.dtype != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _element(context, builder, sig.args[0], args[0], args[1]), args[2], "seq_cst")

    return types.int64(array, types.int64, types.int64), codegen


@intrinsic
def atomic_load(typingctx, array, index):
    """array[index] read atomically (int64 array), with acquire order: what was written before the store
    or add that wrote this value is visible after it."""
    if array.dtype != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_element(context, builder, sig.args[0], args[0], args[1]), "acquire", 8)

    return types.int64(array, types.int64), codegen


@intrinsic
def atomic_store(typingctx, array, index, value):
    """array[index] = value atomically (int64 array), with release order."""
    if array.dtype != types.int64:
        return None

    def codegen(context, builder, sig, args):
        builder.store_atomic(args[2], _element(context, builder, sig.args[0], args[0], args[1]), "release", 8)

    return types.void(array, types.int64, types.int64), codegen


@intrinsic
def spin_pause(typingctx):
    """The x86 `pause` hint for a spin-wait loop (nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        import llvmlite.binding as llvm

        if llvm.get_process_triple().startswith(("x86_64", "i686", "i386")):
            builder.call(declare(builder, "llvm.x86.sse2.pause", []), [])

    return types.void(), codegen


@intrinsic
def cycle_count(typingctx):
    """The CPU's cycle counter (x86's time-stamp counter: constant rate, not core cycles)."""

    def codegen(context, builder, sig, args):
        return builder.call(declare(builder, "llvm.readcyclecounter", [], I64), [])

    return types.int64(), codegen
