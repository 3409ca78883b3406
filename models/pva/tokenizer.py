"""Prompt tokenization exactly as CONTRACT.md states (the Rust worker does the same).

CLIP BPE from `open_clip_torch`'s `SimpleTokenizer` (it ships the vocabulary; no hub access). The
literal `<new1>` is split out before BPE (case-sensitively, before the BPE lower-cases: only the exact
`<new1>` is the added token, as in HF's CLIPTokenizer after `add_tokens(["<new1>"])`, which the paper
uses; `<NEW1>` is ordinary text) and becomes `new_token_id`; ids are
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
    """The conditional text: the template with `{prompt}` replaced, whitespace collapsed.

    An empty prompt (nothing but whitespace) drops the commas and whitespace just before `{prompt}`
    as well, so "photo of a <new1> person, {prompt}" gives the paper's plain "photo of a <new1> person"
    (and "a <new1> person {prompt}" gives "a <new1> person", as before)."""
    if not prompt.split():
        head, _, tail = template.partition("{prompt}")
        return " ".join((re.sub(r"[\s,]+$", "", head) + " " + tail).split())
    return " ".join(template.replace("{prompt}", prompt).split())


def bpe_ids(text: str, new_token: str, new_token_id: int) -> list[int]:
    """BPE ids of `text` with every exact (case-sensitive) `new_token` mapped to its id; the pieces
    between are lower-cased and whitespace-collapsed by the BPE."""
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
