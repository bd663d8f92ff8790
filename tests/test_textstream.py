"""Streamed text with the real Qwen3 tokenizer: characters split across tokens, stop strings, thinking."""

import io
from types import SimpleNamespace

import pytest
from conftest import TOKENIZER_DIR

from qwen3_mpi.textstream import TextStream
from qwen3_mpi.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(TOKENIZER_DIR)


def stream_ids(tok, ids, **kwargs):
    """Feed ids one at a time as the engine does; returns (stream, what was printed after each token,
    the stop step or None)."""
    out = io.StringIO()
    stream = TextStream(tok, out=out, **kwargs)
    gen = SimpleNamespace(output_ids=[])
    printed, stopped = [], None
    for i, token in enumerate(ids):
        gen.output_ids.append(token)
        if stream(gen) == "stop":
            stopped = i
            break
        printed.append(out.getvalue())
    stream.flush()
    return stream, out.getvalue(), printed, stopped


TEXT = "Hello 世界! Emoji 🤖🚀👩‍👩‍👧 and Ελληνικά, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢."


def test_characters_split_across_tokens_are_printed_whole(tok):
    ids = tok.encode(TEXT)
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # the test needs characters that span several tokens
    stream, final, printed, _ = stream_ids(tok, ids)
    assert final == TEXT == stream.text
    assert all("\ufffd" not in p for p in printed)  # never half a character on screen
    assert printed == sorted(printed, key=len) and all(final.startswith(p) for p in printed)


def test_stop_string_cuts_the_text_and_is_never_printed(tok):
    ids = tok.encode("The answer is 42. STOP here, then more text 世界.")
    stream, final, printed, stopped = stream_ids(tok, ids, stops=["STOP"])
    assert stopped is not None and stopped < len(ids) - 1
    assert final == stream.text == "The answer is 42. "
    assert all("STOP" not in p and "ST" not in p[len("The answer is 42. ") :] for p in printed)


def test_stop_string_inside_a_multibyte_sequence(tok):
    ids = tok.encode("abc 🤖 def")
    _, final, _, stopped = stream_ids(tok, ids, stops=["🤖"])
    assert stopped is not None and final == "abc "


def test_hidden_thinking(tok):
    text = "<think>\nLet me think about 世界.\n</think>\n\nThe answer: 🚀"
    ids = tok.encode(text)
    stream, final, printed, _ = stream_ids(tok, ids, hide_thinking=True)
    assert final == "The answer: 🚀" == stream.visible_text
    assert stream.text == text
    assert all("think" not in p and "世界" not in p for p in printed)
    _, shown, _, _ = stream_ids(tok, ids)
    assert shown == text


def test_invalid_bytes_do_not_hold_text_back_forever(tok):
    lone = tok.encode("🤖")[:1]  # the first bytes of a character, never completed
    ids = lone + tok.encode(" plain text") * 3
    _, final, printed, _ = stream_ids(tok, ids)
    assert final.endswith("plain text plain text plain text") and printed[-1] == final
