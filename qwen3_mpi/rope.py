"""RoPE cos/sin tables, computed in float32 exactly as transformers does (default, linear, yarn)."""

import math

import numpy as np

from .config import Qwen3Config


def inv_freq_and_scale(config: Qwen3Config) -> tuple[np.ndarray, float]:
    K = config.head_dim
    base = np.float32(config.rope_theta)
    exponents = np.arange(0, K, 2, dtype=np.int64).astype(np.float32) / np.float32(K)
    inv_freq = (np.float32(1.0) / (base**exponents)).astype(np.float32)
    rs = config.rope_scaling
    if rs.rope_type == "linear":
        return (inv_freq / np.float32(rs.factor)).astype(np.float32), 1.0
    if rs.rope_type == "yarn":
        return _yarn(config, exponents)
    return inv_freq, 1.0


def _yarn(config: Qwen3Config, exponents: np.ndarray) -> tuple[np.ndarray, float]:
    # transformers' _compute_yarn_parameters
    rs = config.rope_scaling
    K = config.head_dim
    base = config.rope_theta
    factor = rs.factor
    original = rs.original_max_position_embeddings or config.max_position_embeddings
    attention_factor = rs.attention_factor
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(num_rotations):
        return (K * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(rs.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rs.beta_slow)), K - 1)
    if low == high:
        high += 0.001
    pos_freqs = np.float32(base) ** exponents
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    ramp = np.clip((np.arange(K // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation_factor = np.float32(1) - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv_freq.astype(np.float32), float(attention_factor)


def rope_tables(config: Qwen3Config, n_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape [n_positions, head_dim // 2] (the attention scaling of yarn folded in)."""
    inv_freq, scale = inv_freq_and_scale(config)
    angles = np.arange(n_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    cos = np.cos(angles) * np.float32(scale)
    sin = np.sin(angles) * np.float32(scale)
    return np.ascontiguousarray(cos, dtype=np.float32), np.ascontiguousarray(sin, dtype=np.float32)
