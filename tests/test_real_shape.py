"""Qwen3-0.6B at its real shape (config from ../shared, random weights saved by save_pretrained in bf16):
ours at 1 to 4 ranks against transformers' fp32 logits."""

import numpy as np
import pytest
from conftest import CONFIGS_DIR, FIGURES, run_cli

pytestmark = pytest.mark.slow  # outside the fast subset: python -m pytest -m "not slow"

PROMPT = [151644, 872, 198, 9707, 11, 1879, 0, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def real_shape(tmp_path_factory):
    import torch
    from transformers import AutoConfig, Qwen3ForCausalLM

    directory = tmp_path_factory.mktemp("qwen3-0.6b")
    config = AutoConfig.from_pretrained(CONFIGS_DIR / "Qwen3-0.6B")
    config.initializer_range = 0.05  # a little larger than the default 0.02: clearer argmax margins
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    del model
    # reload in fp32 (model.float() would keep the RoPE inv_freq buffer rounded to bf16)
    model = Qwen3ForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT])).logits[0].numpy()
    return directory, logits


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_real_shape_logits(real_shape, tmp_path, ranks):
    directory, ref = real_shape
    out = tmp_path / "logits.npy"
    proc = run_cli(
        ["logits", "-m", str(directory), "--prompt-ids", ",".join(map(str, PROMPT)), "-o", str(out)],
        ranks=ranks,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    ours = np.load(out)
    assert ours.shape == (len(PROMPT), 151936)
    diff = float(np.abs(ours - ref).max())
    FIGURES.append(f"logits Qwen3-0.6B shape (bf16)  N={ranks}: max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-3
    assert (ours.argmax(axis=1) == ref.argmax(axis=1)).all()
