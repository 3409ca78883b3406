"""The PyTorch modules of the stack against independent formulations and each other."""

from __future__ import annotations

import torch
from torch import nn

from pva import build_stack
from pva.export import example_inputs
from pva.tokenizer import word_id


def test_build_is_deterministic(stack) -> None:
    again = build_stack("tiny", seed=0)
    assert torch.equal(again.initial_params, stack.initial_params)
    for name, module in stack.modules().items():
        for (key, a), (_, b) in zip(module.state_dict().items(), again.modules()[name].state_dict().items()):
            assert torch.equal(a, b), f"{name}.{key}"
    other = build_stack("tiny", seed=1)
    assert not torch.equal(other.initial_params, stack.initial_params)


def test_adapter_layout_is_contiguous_and_initialised_from_qkv(stack) -> None:
    offset = 0
    modules = dict(stack.unet.named_modules())
    for entry in stack.adapter_layout:
        assert entry.offset == offset
        offset += entry.size
        if entry.group == "visual":
            attn = modules[entry.name.rsplit(".", 2)[0]]
            source = {"to_visual_q": attn.to_q, "to_visual_k": attn.to_k, "to_visual_v": attn.to_v}
            assert torch.equal(entry.take(stack.initial_params), source[entry.name.split(".")[-2]].weight)
    assert offset == stack.initial_params.numel() == stack.visual_length + stack.token_length
    assert [e.group for e in stack.adapter_layout].count("token") == 1
    token = stack.split_params(stack.initial_params)[1]
    assert torch.equal(token, stack.text_encoder.token_table[word_id("person")])


def test_text_encoder_matches_clip_and_swaps_new_token(stack) -> None:
    inputs = example_inputs(stack, "text_encoder", 2, seed=3)
    ids, new1 = inputs["input_ids"], inputs["new1_embedding"]
    new_id = stack.config.tokenizer["new_token_id"]
    person = word_id("person")
    with torch.no_grad():
        ours = stack.encode_text(ids, stack.text_encoder.token_table[person])
        clip = stack.text_encoder.clip(torch.where(ids == new_id, person, ids)).last_hidden_state
        swapped = stack.encode_text(ids, new1)
    assert (ours - clip).abs().max() <= 1e-5
    # Positions before the added token do not see it (causal); positions from it on do.
    position = int((ids[0] == new_id).nonzero()[0])
    assert (swapped[:, :position] - ours[:, :position]).abs().max() <= 1e-5
    assert (swapped[:, position:] - ours[:, position:]).abs().max() > 1e-3


def test_id_former_matches_torch_transformer_encoder(stack) -> None:
    """Our explicit encoder equals the paper's nn.TransformerEncoder with the same weights."""
    cfg = stack.config
    layer = nn.TransformerEncoderLayer(cfg.hidden_size, cfg.id_former.heads, cfg.id_former.feedforward,
                                       dropout=0.1, batch_first=True)
    encoder = nn.TransformerEncoder(layer, cfg.id_former.layers, nn.LayerNorm(cfg.hidden_size),
                                    enable_nested_tensor=False).eval()
    state = stack.id_former.state_dict()
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    x = example_inputs(stack, "id_former", 2, references=4, seed=4)["embeddings"]
    with torch.no_grad():
        queries = stack.id_former.q_tokens.expand(2, -1, -1)
        seq = stack.id_former.proj(torch.cat([x, queries], dim=1))
        expected = encoder(seq)[:, -cfg.id_former.num_queries:] + stack.id_former.pos_enc
        got = stack.id_former(x)
    assert (got - expected).abs().max() <= 1e-5


def test_flat_adapter_equals_module_weights_and_has_gradients(stack) -> None:
    inputs = example_inputs(stack, "unet", 2, seed=6)
    inputs["id_switch"] = torch.tensor([1.0, 1.0])
    kwargs = {"id_tokens": inputs["id_tokens"], "id_switch": inputs["id_switch"]}
    with torch.no_grad():
        from_modules = stack.unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                                  cross_attention_kwargs=kwargs, return_dict=False)[0]
    adapter = inputs["adapter"].clone().requires_grad_(True)
    out = stack.unet_forward(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                             inputs["id_tokens"], inputs["id_switch"], adapter)
    assert (out.detach() - from_modules).abs().max() <= 1e-6
    out.square().mean().backward()
    for entry in stack.adapter_layout:
        if entry.group == "visual":
            assert entry.take(adapter.grad).abs().max() > 0, entry.name
