"""Each committed ONNX graph equals its PyTorch module, and the CFG switch removes identity keys."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pva.attention import ExplicitAttnProcessor
from pva.export import GRAPH_ORDER, example_inputs

TOLERANCE = 1e-4


def _run_onnx(session, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]


def _run_torch(stack, name: str, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return stack.modules()[name](*inputs.values()).numpy()


CASES = [(name, batch, 3) for name in GRAPH_ORDER if name != "id_former" for batch in (1, 2)]
CASES += [("id_former", batch, refs) for batch in (1, 2) for refs in (1, 3, 5)]


@pytest.mark.parametrize(("name", "batch", "refs"), CASES)
def test_graph_matches_module(stack, sessions, name: str, batch: int, refs: int) -> None:
    inputs = example_inputs(stack, name, batch, references=refs, seed=100 + batch + refs)
    expected = _run_torch(stack, name, inputs)
    got = _run_onnx(sessions[name], inputs)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE
    # The random model must produce non-trivial outputs, or the comparison proves nothing.
    assert np.abs(expected).max() > 1e-2


def test_batch_rows_are_independent(stack, sessions) -> None:
    """A batch of 2 equals the two rows run alone (no axis got fixed or mixed by the export)."""
    inputs = example_inputs(stack, "unet", 2, seed=5)
    both = _run_onnx(sessions["unet"], inputs)
    for row in range(2):
        single = {k: (v if k == "adapter" else v[row : row + 1]) for k, v in inputs.items()}
        assert np.abs(_run_onnx(sessions["unet"], single) - both[row : row + 1]).max() <= TOLERANCE


def test_switch_off_row_equals_text_only_attention(stack, sessions) -> None:
    """The CFG batch [uncond (switch 0), cond (switch 1)] in one call: the uncond row equals a UNet
    whose cross-attention is a plain attention over the 77 text keys."""
    inputs = example_inputs(stack, "unet", 2, seed=9)
    inputs["id_switch"] = torch.tensor([0.0, 1.0])
    # Same latents and text for both rows, so only the switch differs.
    for key in ("sample", "timestep", "encoder_hidden_states"):
        inputs[key] = inputs[key][:1].expand_as(inputs[key]).contiguous()
    got = _run_onnx(sessions["unet"], inputs)

    plain = copy.deepcopy(stack.unet)
    plain.set_attn_processor(ExplicitAttnProcessor())
    with torch.no_grad():
        text_only = plain(
            inputs["sample"][:1], inputs["timestep"][:1], inputs["encoder_hidden_states"][:1], return_dict=False
        )[0].numpy()
    assert np.abs(got[:1] - text_only).max() <= TOLERANCE
    # The identity row must differ, or the switch test would pass for a UNet that ignores id tokens.
    assert np.abs(got[1:] - text_only).max() > 1e-3
