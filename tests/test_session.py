"""The public API: qwen3_mpi.load(model_dir, RunOptions(...)) -> Session, as bench/compare.py and library
users call it, gives what the command line gives."""

import json

import numpy as np
import pytest
from conftest import PROMPT_IDS, run_cli


def test_load_and_generate_match_the_command_line(small_demo):
    import qwen3_mpi
    from qwen3_mpi.errors import UserError

    session = qwen3_mpi.load(small_demo, qwen3_mpi.RunOptions(max_context=64, progress=False, quiet=True))
    assert session.model.max_context == 64 and session.model.attention.name == "streaming"
    gen = session.generate(PROMPT_IDS, max_new_tokens=8)
    args = ["generate", "-m", str(small_demo), "--prompt-ids", ",".join(map(str, PROMPT_IDS)), "-n", "8"]
    proc = run_cli([*args, "--temperature", "0", "--ignore-eos", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert gen.output_ids == json.loads(proc.stdout)["output_ids"] and gen.finish_reason == "length"
    logits = session.engine.prefill(np.array(PROMPT_IDS, np.int64), all_logits=True)
    assert logits.shape == (len(PROMPT_IDS), session.config.vocab_size)
    with pytest.raises(UserError, match="--attention must be one of standard, streaming"):
        qwen3_mpi.RunOptions(attention="fast")
