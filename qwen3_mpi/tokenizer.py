"""Text <-> ids with `tokenizers` and the model's own chat template, rendered in a jinja2 sandbox."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .errors import UserError


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.exists():
            raise UserError(f"{path}: file not found (a text prompt needs the tokenizer; --prompt-ids does not)")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a malformed file
            raise UserError(f"{path}: cannot be read as a tokenizer ({e})") from None
        config_path = model_dir / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        self._template = None
        template = self.config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None:
            jinja = model_dir / "chat_template.jinja"
            template = jinja.read_text(encoding="utf-8") if jinja.exists() else None
        self.chat_template_source = template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template_source is not None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        if self.chat_template_source is None:
            raise UserError("the model has no chat template (tokenizer_config.json); use --no-chat-template")
        if self._template is None:
            self._template = _compile(self.chat_template_source)
        special = {k: _token_text(self.config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **special, **kwargs
            )
        except TemplateError as e:  # includes the sandbox's SecurityError
            raise UserError(f"chat template failed: {type(e).__name__}: {e}") from None

    def apply_chat_template(self, messages: list[dict], **kwargs) -> list[int]:
        """Ids of the rendered conversation, as transformers' apply_chat_template(tokenize=True) gives."""
        return self.encode(self.render_chat(messages, **kwargs), add_special_tokens=False)


def _token_text(value):
    if isinstance(value, dict):  # {"content": "<|im_end|>", ...}
        return value.get("content")
    return value


def _compile(source: str):
    """The template in jinja2's immutable sandbox, with the globals and filters transformers provides."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise UserError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise UserError(f"chat template does not compile: {e}") from None
