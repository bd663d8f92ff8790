"""Our ids equal transformers' for the real Qwen3 tokenizer, plain and chat-templated."""

import pytest
from conftest import TOKENIZER_DIR, TOOLS

from qwen3_mpi.errors import UserError
from qwen3_mpi.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "  leading spaces and trailing  ",
    "Numbers 1234567 and symbols #$%^&*()",
    "Mixed 中文 text, émojis 🤖🚀 and Ελληνικά",
    "line one\nline two\r\n\ttabbed",
    "<|im_start|>user\nspecial tokens inline<|im_end|>",
    "def f(x):\n    return x ** 2  # code\n",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is MPI?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain RoPE in one line."}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about 🐍."},
    ],
    [  # earlier thinking is dropped by the template; non-ASCII text
        {"role": "system", "content": "Réponds en français."},
        {"role": "user", "content": "2 + 2 ?"},
        {"role": "assistant", "content": "<think>\nSimple addition.\n</think>\n\n4"},
        {"role": "user", "content": "用中文再说一遍，谢谢。"},
        {"role": "assistant", "content": "<think>\n中文\n</think>\n\n四"},
        {"role": "user", "content": "Merci 🙏"},
    ],
    [  # a tool call and its result
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": '{"temperature": -3}'},
    ],
]


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    return Tokenizer(TOKENIZER_DIR), AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_and_decode_match_transformers(tokenizers, text):
    ours, hf = tokenizers
    ids = ours.encode(text)
    assert ids == hf(text)["input_ids"]
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("extra", [{}, {"enable_thinking": True}, {"enable_thinking": False}, {"tools": TOOLS}])
def test_chat_template_matches_transformers(tokenizers, messages, extra):
    ours, hf = tokenizers
    expect = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
    if isinstance(expect, dict) or hasattr(expect, "keys"):
        expect = expect["input_ids"]
    assert ours.apply_chat_template(messages, **extra) == list(expect)
    assert ours.render_chat(messages, **extra) == hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **extra
    )


def test_template_runs_in_a_sandbox(tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((TOKENIZER_DIR / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        '{"chat_template": "{{ messages.__class__.__mro__[1].__subclasses__() }}"}'
    )
    with pytest.raises(UserError, match="chat template failed: SecurityError"):
        Tokenizer(tmp_path).render_chat([{"role": "user", "content": "x"}])


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json: file not found"):
        Tokenizer(tmp_path)


def test_earlier_thinking_is_dropped_from_the_prompt(tokenizers):
    ours, _ = tokenizers
    text = ours.render_chat(CONVERSATIONS[3])
    assert "Simple addition" not in text and "中文\n</think>" not in text and "四" in text
