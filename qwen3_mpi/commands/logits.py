"""`qwen3-mpi logits`: the logits of every prompt position, written atomically to a .npy file."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import session
from ..config import Qwen3Config
from ..errors import UserError
from ..options import LogitsCommand, RunOptions
from ..prompting import check_ids


def _check(cmd: LogitsCommand, config: Qwen3Config, out: Path) -> None:
    check_ids(list(cmd.prompt_ids), config.vocab_size, "--prompt-ids")
    n, limit = len(cmd.prompt_ids), config.max_position_embeddings
    if n > limit:
        raise UserError(f"--prompt-ids: {n} tokens exceed max_position_embeddings ({limit})")
    if not out.parent.is_dir():
        raise UserError(f"-o {out}: directory {out.parent} does not exist")


def run(cmd: LogitsCommand, options: RunOptions, comm) -> int:
    path = session.model_dir(cmd.model, comm, options)
    config = session.read_config(path, comm)
    out = Path(cmd.output)
    comm.agree(lambda: _check(cmd, config, out) if comm.is_root else None)
    n = len(cmd.prompt_ids)
    s = session.load(path, replace(options, max_context=n), comm, max_tokens=n, config=config)
    values = s.engine.prefill(np.array(cmd.prompt_ids, np.int64), all_logits=True)
    digests = comm.gather(s.model.hidden_digest())
    if not comm.is_root:
        return 0
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks hold different hidden states (combine {options.combine}): {digests}")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, values.astype(np.float32, copy=False))
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return 0
