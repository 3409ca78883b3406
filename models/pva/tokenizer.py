"""Prompt tokenization exactly as CONTRACT.md states (the Rust worker does the same).

CLIP BPE from `open_clip_torch`'s `SimpleTokenizer` (it ships the vocabulary; no hub access). The
literal `<new1>` is split out before BPE and becomes `new_token_id`; ids are
[bos] + BPE ids (truncated to max_length - 2) + [eos], padded with `pad_id` to `max_length`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from open_clip.tokenizer import SimpleTokenizer


@lru_cache(maxsize=1)
def _bpe() -> SimpleTokenizer:
    return SimpleTokenizer()


def render_prompt(template: str, prompt: str) -> str:
    """The conditional text: the template with `{prompt}` replaced, whitespace collapsed."""
    return " ".join(template.replace("{prompt}", prompt).split())


def bpe_ids(text: str, new_token: str, new_token_id: int) -> list[int]:
    """BPE ids of `text` (lower-cased, whitespace collapsed) with `new_token` mapped to its id."""
    ids: list[int] = []
    pieces = re.split(f"({re.escape(new_token)})", text)
    for piece in pieces:
        if piece == new_token:
            ids.append(new_token_id)
        elif piece.strip():
            ids.extend(_bpe().encode(piece))
    return ids


def encode(text: str, settings: dict[str, Any]) -> list[int]:
    """The `max_length` ids of `text` under the manifest's `tokenizer` settings."""
    length = settings["max_length"]
    body = bpe_ids(text, settings["new_token"], settings["new_token_id"])[: length - 2]
    ids = [settings["bos_id"], *body, settings["eos_id"]]
    return ids + [settings["pad_id"]] * (length - len(ids))


def word_id(word: str) -> int:
    """The single BPE id of a word (e.g. the `<new1>` initialiser "person")."""
    ids = _bpe().encode(word)
    if len(ids) != 1:
        raise ValueError(f"{word!r} is not one CLIP token: {ids}")
    return ids[0]
