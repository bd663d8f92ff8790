"""Generated ids -> text as it is produced, on rank 0.

Byte-level BPE tokens can end in the middle of a UTF-8 character (a Chinese character or an emoji is
often two or three tokens); such text is held back until the character is complete. The ids are decoded
from the last point where the text was whole, so a step costs the few newest tokens, not the whole
output. --stop strings are searched in the text (a stop cuts the text before it, never inside a
character), and text that could be the start of a stop string is held back until it is not. With
hide_thinking, the <think>...</think> block is left out of what is shown.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class TextStream:
    def __init__(self, tokenizer, stops: list[str] = (), hide_thinking: bool = False, out=None):
        self.tokenizer, self.stops, self.hide_thinking = tokenizer, [s for s in stops if s], hide_thinking
        self.out = out  # a text file to print to, or None
        self.text = ""  # all complete text so far (cut at a stop string once one is found)
        self._start = 0  # first id not yet part of self.text
        self._ids: list[int] = []
        self._display = ""  # what has been printed

    def __call__(self, gen) -> str | None:
        """Engine callback after each token: returns "stop" when a stop string appeared."""
        self._ids = ids = gen.output_ids
        tail = self.tokenizer.decode(ids[self._start :])
        if tail.endswith("\ufffd") and len(ids) - self._start < 4:  # a character's first bytes: wait
            return None  # (a UTF-8 character has at most 4 bytes; past that the bytes are invalid)
        self.text += tail
        self._start = len(ids)
        for stop in self.stops:
            at = self.text.find(stop)
            if at >= 0:
                self.text = self.text[:at]
                self.flush()
                return "stop"
        self._show(len(self.text) - max((len(s) - 1 for s in self.stops), default=0))
        return None

    def flush(self) -> None:
        """The end of the generation: take in any held-back ids and show everything."""
        if self._start < len(self._ids):
            self.text += self.tokenizer.decode(self._ids[self._start :])
            self._start = len(self._ids)
        self._show(len(self.text), final=True)

    @property
    def visible_text(self) -> str:
        """The text without the thinking block when hide_thinking, else all of it."""
        return _without_thinking(self.text) if self.hide_thinking else self.text

    def _show(self, end: int, final: bool = False) -> None:
        """Print what text[:end] adds to the display (the display only ever grows)."""
        if self.out is None:
            return
        upto = self.text[: max(end, 0)]
        now = _without_thinking(upto, final) if self.hide_thinking else upto
        if len(now) > len(self._display) and now.startswith(self._display):
            self.out.write(now[len(self._display) :])
            self.out.flush()
            self._display = now


def _without_thinking(text: str, final: bool = True) -> str:
    """text minus <think>...</think> (and the blank lines after it). An unclosed block hides the rest;
    a partial "<think>" at the very end is held back unless final."""
    start = text.find(THINK_OPEN)
    if start < 0:
        if not final:  # the end might be the beginning of "<think>"
            for n in range(len(THINK_OPEN) - 1, 0, -1):
                if text.endswith(THINK_OPEN[:n]):
                    return text[:-n]
        return text
    end = text.find(THINK_CLOSE, start)
    if end < 0:
        return text[:start]
    rest = text[end + len(THINK_CLOSE) :].lstrip("\n")
    return text[:start] + _without_thinking(rest, final)
