"""Prompt ids as CONTRACT.md states them."""

from __future__ import annotations

from pva.config import TINY
from pva.tokenizer import encode, render_prompt

SETTINGS = TINY.tokenizer


def test_template_new_token_and_padding() -> None:
    text = render_prompt(TINY.prompt_template, "  Photo of   a CAT ")
    assert text == "a <new1> person Photo of a CAT"
    ids = encode(text, SETTINGS)
    # CLIP's well-known ids of "a photo of a cat": 320, 1125, 539, 320, 2368 (lower-cased).
    assert ids[:9] == [49406, 320, 49408, 2533, 1125, 539, 320, 2368, 49407]
    assert ids[9:] == [0] * 68 and len(ids) == 77


def test_empty_negative_prompt() -> None:
    assert encode("", SETTINGS) == [49406, 49407] + [0] * 75


def test_truncation_keeps_bos_and_eos() -> None:
    ids = encode(" ".join(["face"] * 100), SETTINGS)
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    assert set(ids[1:-1]) == {ids[1]}
