"""This rank's share of a Qwen3 model: the sharding plan (plan.py), its weights (shard.py), the layer
spec and its executors (layer.py), the forward pass (model.py)."""

from .model import Model
from .plan import ShardLayout
from .shard import ShardWeights, load_shard, shard_nbytes

__all__ = ["Model", "ShardLayout", "ShardWeights", "load_shard", "shard_nbytes"]
