"""Slices read from safetensors equal the slices of the full tensors; bad checkpoints name file and tensor."""

import json

import ml_dtypes  # registers numpy's bfloat16 for safetensors.numpy
import numpy as np
import pytest
from safetensors.numpy import save_file

from qwen3_mpi import weights
from qwen3_mpi.errors import UserError
from qwen3_mpi.weights import Checkpoint, bf16_to_f32

rng = np.random.default_rng(1)


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_CHUNK_BYTES", 64)  # column slices in several chunks
    full = {
        "a.bf16": rng.standard_normal((37, 29)).astype(ml_dtypes.bfloat16),
        "b.f16": rng.standard_normal((11, 13)).astype(np.float16),
        "c.f32": rng.standard_normal((8, 5)).astype(np.float32),
        "d.vec": rng.standard_normal(7).astype(ml_dtypes.bfloat16),
    }
    save_file({k: full[k] for k in ("a.bf16", "b.f16")}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: full[k] for k in ("c.f32", "d.vec")}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {
        "weight_map": {
            "a.bf16": "model-00001-of-00002.safetensors",
            "b.f16": "model-00001-of-00002.safetensors",
            "c.f32": "model-00002-of-00002.safetensors",
            "d.vec": "model-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    return Checkpoint(tmp_path), full


def test_row_and_column_slices(checkpoint):
    ckpt, full = checkpoint
    a = ckpt.read("a.bf16", (37, 29), rows=(5, 20))
    assert a.dtype == np.uint16  # bf16 stays bf16 in memory
    np.testing.assert_array_equal(bf16_to_f32(a), full["a.bf16"][5:20].astype(np.float32))
    a = ckpt.read("a.bf16", (37, 29), cols=(3, 17))
    np.testing.assert_array_equal(bf16_to_f32(a), full["a.bf16"][:, 3:17].astype(np.float32))
    b = ckpt.read("b.f16", (11, 13), cols=(0, 4))
    assert b.dtype == np.float32
    np.testing.assert_array_equal(b, full["b.f16"][:, :4].astype(np.float32))
    np.testing.assert_array_equal(ckpt.read("c.f32", (8, 5), rows=(7, 8)), full["c.f32"][7:8])
    np.testing.assert_array_equal(bf16_to_f32(ckpt.read("d.vec", (7,))), full["d.vec"].astype(np.float32))


def test_missing_tensor_names_it(checkpoint):
    ckpt, _ = checkpoint
    with pytest.raises(UserError, match="tensor model.norm.weight is missing"):
        ckpt.read("model.norm.weight", (4,))


def test_wrong_shape_names_file_and_tensor(checkpoint):
    ckpt, _ = checkpoint
    with pytest.raises(
        UserError, match=r"model-00001-of-00002.safetensors: tensor a.bf16 has shape \[37, 29\], expected \[29, 37\]"
    ):
        ckpt.read("a.bf16", (29, 37))


def test_no_safetensors_and_pickles_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(UserError, match="pickle checkpoints such as pytorch_model.bin are never loaded"):
        Checkpoint(tmp_path)


def test_truncated_file(tmp_path):
    save_file({"x": np.zeros((100, 100), np.float32)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(UserError, match="tensor x extends past the end of the file"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["tied-gqa2-bf16", "untied-gqa1-f32", "gqa4-sharded-bf16"])
def test_planned_bytes_are_the_bytes_read(checkpoints, name):
    """shard_nbytes (the progress bar's total) equals what load_shard reads, on every rank of N."""
    from qwen3_mpi.config import Qwen3Config
    from qwen3_mpi.model import ShardLayout, load_shard, shard_nbytes

    directory, _ = checkpoints[name]
    config = Qwen3Config.from_hf(directory)
    for size in (1, 3, 4):
        for rank in range(size):
            layout = ShardLayout.for_rank(config, rank, size)
            ckpt = Checkpoint(directory)
            counted = []
            ckpt.on_read = counted.append
            load_shard(ckpt, config, layout)
            assert sum(counted) == shard_nbytes(ckpt, config, layout)
