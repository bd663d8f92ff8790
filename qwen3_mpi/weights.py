"""Read this rank's slices of a safetensors checkpoint (one file, or several with an index).

Only the bytes of a slice are read, with positioned reads (os.pread) into the destination array, so a
rank's memory holds its slices and nothing else: a memory-mapped column slice would touch (and count in
RSS) every page of the tensor. Row slices are one contiguous read; column slices are read a bounded
chunk of rows at a time.

bf16 stays bf16 in memory as a uint16 array (the kernels convert on the fly); f32 stays f32; f16 is
widened to f32 (numba has no fast f16 path).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import aligned
from .errors import UserError

# safetensors dtype -> (numpy dtype of the raw bytes, bytes per element)
_RAW_DTYPES = {"BF16": np.dtype(np.uint16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32)}
_CHUNK_BYTES = 8 << 20  # column slices are read this many bytes of full rows at a time


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the tensor's data in `file`


def _read_header(path: Path) -> dict[str, TensorInfo]:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise UserError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise UserError(f"{path}: not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a safetensors file (bad header)") from None
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        if 8 + n + end > size:
            raise UserError(f"{path}: tensor {name} extends past the end of the file (truncated?)")
        tensors[name] = TensorInfo(path, entry["dtype"], tuple(entry["shape"]), 8 + n + begin)
    return tensors


class Checkpoint:
    """The tensors of a checkpoint directory, by name, readable in slices."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        single = model_dir / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise UserError(f"{index}: not a safetensors index (no weight_map)") from None
            files = sorted(set(weight_map.values()))
        elif single.exists():
            files = [single.name]
        else:
            found = sorted(p.name for p in model_dir.glob("*.safetensors"))
            if len(found) == 1:
                files = found
            else:
                pickles = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(
                    p.name for p in model_dir.glob("*.pt")
                )
                hint = f" (pickle checkpoints such as {pickles[0]} are never loaded)" if pickles else ""
                raise UserError(f"{model_dir}: no model.safetensors or model.safetensors.index.json{hint}")
        self.on_read = None  # called with the bytes of each slice read (progress reports)
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            self.tensors.update(_read_header(model_dir / name))
        self.model_dir = model_dir

    def info(self, name: str, shape: tuple[int, ...]) -> TensorInfo:
        t = self.tensors.get(name)
        if t is None:
            raise UserError(f"{self.model_dir}: tensor {name} is missing from the checkpoint")
        if t.shape != tuple(shape):
            raise UserError(f"{t.file}: tensor {name} has shape {list(t.shape)}, expected {list(shape)}")
        if t.dtype not in _RAW_DTYPES:
            raise UserError(f"{t.file}: tensor {name} has dtype {t.dtype}; supported: BF16, F16, F32")
        return t

    def slice_nbytes(self, name: str, shape: tuple[int, ...], rows=None, cols=None) -> int:
        """Bytes (as stored) of the [rows, cols] slice that read() would return."""
        t = self.info(name, shape)
        n_rows, n_cols = (1, shape[0]) if len(shape) == 1 else shape
        r0, r1 = rows or (0, n_rows)
        c0, c1 = cols or (0, n_cols)
        return (r1 - r0) * (c1 - c0) * _RAW_DTYPES[t.dtype].itemsize

    def raw_dtype(self, name: str, shape: tuple[int, ...]) -> np.dtype:
        """The in-memory dtype read() returns for this tensor (checking its presence and shape)."""
        dtype = self.info(name, shape).dtype
        return np.dtype(np.float32) if dtype == "F16" else _RAW_DTYPES[dtype]

    def read(self, name: str, shape: tuple[int, ...], rows=None, cols=None, out=None) -> np.ndarray:
        """The [rows, cols] slice of a 1-D or 2-D tensor, raw: uint16 for BF16, else float32. With `out`
        (C-contiguous, the slice's shape and raw dtype; not for F16) the bytes are read straight into it."""
        t = self.info(name, shape)
        raw = _RAW_DTYPES[t.dtype]
        if len(shape) == 1:
            shape = (1, shape[0])
            rows = None
        n_rows, n_cols = shape
        r0, r1 = rows or (0, n_rows)
        c0, c1 = cols or (0, n_cols)
        if out is None:
            out = aligned.empty((r1 - r0, c1 - c0), raw)
        assert out.shape == (r1 - r0, c1 - c0) and out.dtype == raw and out.flags.c_contiguous
        row_bytes = n_cols * raw.itemsize
        fd = os.open(t.file, os.O_RDONLY)
        try:
            if (c0, c1) == (0, n_cols):
                _pread_into(fd, out, t.offset + r0 * row_bytes, t.file, name)
            else:
                step = max(1, _CHUNK_BYTES // row_bytes)
                chunk = np.empty((min(step, r1 - r0), n_cols), dtype=raw)
                for r in range(r0, r1, step):
                    n = min(step, r1 - r)
                    _pread_into(fd, chunk[:n], t.offset + r * row_bytes, t.file, name)
                    out[r - r0 : r - r0 + n] = chunk[:n, c0:c1]
        finally:
            os.close(fd)
        if self.on_read is not None:
            self.on_read(out.nbytes)
        if t.dtype == "F16":
            out = out.astype(np.float32)
        return out.reshape(-1) if len(t.shape) == 1 else out


def fingerprint(model_dir: str | Path) -> list[tuple[str, int, str]]:
    """(file, size, sha256 of its first bytes) for config.json, the index and every .safetensors file:
    for a safetensors file the first bytes are its header (names, dtypes, shapes, offsets), so two
    copies that agree here hold the same tensors in the same places. Cheap: no tensor data is read."""
    model_dir = Path(model_dir)
    names = ["config.json", "model.safetensors.index.json", *sorted(p.name for p in model_dir.glob("*.safetensors"))]
    result = []
    for name in names:
        path = model_dir / name
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if name.endswith(".safetensors") and len(head) == 8:
                    (n,) = struct.unpack("<Q", head)
                    head += f.read(min(n, 100_000_000))
                else:
                    head += f.read()
        except FileNotFoundError:
            continue
        result.append((name, size, hashlib.sha256(head).hexdigest()[:16]))
    return result


def _pread_into(fd: int, out: np.ndarray, offset: int, path: Path, name: str) -> None:
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise UserError(f"{path}: tensor {name}: unexpected end of file")
        done += n


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Exact float32 value of bf16 bits held in a uint16 array."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def as_f32(raw: np.ndarray) -> np.ndarray:
    return bf16_to_f32(raw) if raw.dtype == np.uint16 else raw.astype(np.float32, copy=False)
