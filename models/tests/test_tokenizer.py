"""Prompt ids as CONTRACT.md states them."""

from __future__ import annotations

from pva.config import SD2, TINY
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


def test_only_the_exact_new_token_is_the_added_token() -> None:
    # HF's slow CLIPTokenizer after add_tokens(["<new1>"]) (the paper's) splits added tokens out
    # case-sensitively before lower-casing: "<NEW1>" is plain text, "<", "new", "1", ">".
    assert encode("a <NEW1> person", SETTINGS)[:8] == [49406, 320, 283, 686, 272, 285, 2533, 49407]
    assert encode("a <new1> person like <NEW1>", SETTINGS)[:10] == [
        49406, 320, 49408, 2533, 789, 283, 686, 272, 285, 49407]
    assert encode("A<new1>B", SETTINGS)[:5] == [49406, 320, 49408, 321, 49407]


def test_the_paper_template_and_an_empty_prompt() -> None:
    paper = SD2.prompt_template
    assert paper == "photo of a <new1> person, {prompt}"
    assert render_prompt(paper, " has  beard") == "photo of a <new1> person, has beard"
    for empty in ("", "  \t\n"):
        assert render_prompt(paper, empty) == "photo of a <new1> person"
    assert render_prompt(TINY.prompt_template, "") == "a <new1> person"
    assert render_prompt("a <new1> person ,, {prompt} today", "") == "a <new1> person today"
    # The paper's tuning prompt, lib/pva.py `finetune`: "photo of {}" with "a <new1> person".
    assert encode(render_prompt(paper, ""), SETTINGS)[:7] == [49406, 1125, 539, 320, 49408, 2533, 49407]
