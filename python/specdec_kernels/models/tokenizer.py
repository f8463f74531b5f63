"""A model's tokenizer and chat template, ready in 0.1 s (the embedded model's): the `tokenizers` library's
Tokenizer read from a cached tokenizer.json, and the template rendered with jinja2 as transformers renders it, so
that neither transformers' import (~1 s) nor its GGUF vocabulary conversion (~5 s for the embedded model) is on
the way to the first token (docs/design.md 2.4).

The first use of a GGUF file converts it once through transformers and keeps the result in
<cache>/specdec-kernels/tokenizers/, keyed by the file's sha256 (user_cache.file_digest), transformers' and
tokenizers' versions and FORMAT. The entry carries a sha256 of its content, checked on every read (~3 ms): a
damaged or foreign entry is converted again. A checkpoint directory is converted each time (no cache).
"""
import hashlib
import json
import os
from datetime import datetime
from typing import Optional

from specdec_kernels.extras import optional_imports
from specdec_kernels.user_cache import cache_dir, file_digest, key_digest, write_atomic

FORMAT = 1


class ChatTokenizer:
    """The part of a transformers tokenizer that decoding uses: encode, decode, special tokens, chat template."""

    def __init__(self, tokenizer, chat_template: Optional[str], special_tokens: dict):
        self.tokenizer, self.chat_template, self.special_tokens = tokenizer, chat_template, special_tokens
        self.eos_token_id = self.token_id(special_tokens.get("eos_token"))
        self.bos_token_id = self.token_id(special_tokens.get("bos_token"))
        self._template = None

    def token_id(self, token: Optional[str]) -> Optional[int]:
        return None if token is None else self.tokenizer.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> list:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict:
        return self.tokenizer.get_vocab(with_added_tokens=True)

    def apply_chat_template(self, messages: list, add_generation_prompt: bool = False, tokenize: bool = True):
        """The conversation rendered with the model's template (text, or its ids with no special tokens added,
        as transformers' apply_chat_template); messages are {"role": str, "content": str} dicts."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template (a base model): encode its raw prompt instead")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not all(isinstance(v, str) for v in message.values()):
                raise ValueError(f"messages[{i}] must be a dict of strings (role, content), got {message!r}")
        if self._template is None:
            self._template = compile_template(self.chat_template)
        text = self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def compile_template(source: str):
    """A chat template in the environment transformers renders it in: sandboxed, trim_blocks and lstrip_blocks,
    loop controls, and its tojson (no HTML escaping), raise_exception and strftime_now."""
    with optional_imports():
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f))
    return environment.from_string(source)


# ---------------------------------------------------------------- the cache
def load_chat_tokenizer(path: str) -> ChatTokenizer:
    """The tokenizer of a GGUF file (cached once converted) or a Hugging Face checkpoint directory."""
    if os.path.isdir(path):
        return from_parts(converted(path))
    key = tokenizer_key(path)
    entry = os.path.join(cache_dir("tokenizers"), key_digest(key) + ".json")
    parts = read_entry(entry, key)
    if parts is None:
        parts = converted(path)
        write_atomic(entry, lambda temporary: write_entry(temporary, key, parts))
    return from_parts(parts)


def tokenizer_key(path: str) -> dict:
    from importlib.metadata import version

    return {"format": FORMAT, "file": file_digest(path), "transformers": version("transformers"),
            "tokenizers": version("tokenizers")}


def converted(path: str) -> dict:
    from specdec_kernels.engines import transformers

    return parts_of(transformers.load_tokenizer(path))


def parts_of(tokenizer) -> dict:
    """A transformers tokenizer as plain parts: tokenizer.json's text, the chat template, the special tokens the
    template sees."""
    return {"tokenizer": tokenizer.backend_tokenizer.to_str(), "chat_template": tokenizer.chat_template,
            "special_tokens": dict(tokenizer.special_tokens_map)}


def from_parts(parts: dict) -> ChatTokenizer:
    with optional_imports():
        from tokenizers import Tokenizer

    return ChatTokenizer(Tokenizer.from_str(parts["tokenizer"]), parts["chat_template"], parts["special_tokens"])


def content_digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def write_entry(path: str, key: dict, parts: dict) -> None:
    with open(path, "w") as f:
        json.dump({"key": key, "parts": parts, "sha256": content_digest(parts)}, f)


def read_entry(path: str, key: dict) -> Optional[dict]:
    """The parts stored at `path`, or None when there are none or they are not this key's, intact."""
    try:
        with open(path) as f:
            entry = json.load(f)
        if entry["key"] != key or content_digest(entry["parts"]) != entry["sha256"]:
            return None
        return entry["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
