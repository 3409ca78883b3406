"""The UNet's attention as ONNX Runtime's fused `com.microsoft.MultiHeadAttention` (`--attention fused`).

The explicit processors of `pva.attention` export as MatMul + Softmax + MatMul, which ONNX Runtime runs
as three kernels with the [S, L] score matrix in device memory between them. Here every UNet attention
becomes one `MultiHeadAttention` node, which the CUDA provider runs as one fused kernel (flash or
memory-efficient attention) and the CPU provider as its own fp32 kernel, computing the same function:

- `attn1` (self-attention): `MultiHeadAttention(q, k, v)` with `scale` = the head dimension's -1/2.
- `attn2` (Parallel Visual Attention): text scores use `to_q(h)` and identity scores `to_visual_q(h)`,
  so one node needs one query for both key sets. Per head the query is `[q_text | q_vis]` (head
  dimension 2d), the text keys `[k_text | 0]` and the identity keys `[0 | k_vis]`: their dot products are
  exactly `q_text . k_text` and `q_vis . k_vis`, ONE softmax over [text keys ; identity keys] as before,
  values `[v_text ; v_vis]` (head dimension d). The per-row identity switch is the additive
  `attention_bias` [B, 1, S, L]: 0, or `MASKED` on a switch-0 row's identity keys (exp underflows to
  exactly 0 in fp32, as the unfused graph's -inf). The keys are padded with zero keys (always masked)
  to a multiple of `KEY_ALIGN`, the alignment ONNX Runtime's memory-efficient CUDA kernel wants of a
  bias row.

The node is a torch custom op (`pva::mha`, computed in PyTorch as the explicit attention) translated to
`com.microsoft.MultiHeadAttention` by the exporter (`TRANSLATION`); its schema is registered with `onnx`
(`register_schema`) so that the exporter can build it. VAE attention stays explicit (one layer).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import onnx
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from .attention import PvaCrossAttnProcessor, _finish

#: The additive bias of a masked key (exp(-1e4 + s) is exactly 0 in fp32 and fp16; -1e4 fits fp16).
MASKED = -1.0e4
#: Keys are padded to a multiple of this (a bias row of 8 fp16 values = 16 bytes).
KEY_ALIGN = 8
DOMAIN = "com.microsoft"


def register_schema() -> None:
    """Registers `com.microsoft.MultiHeadAttention` (the inputs and attributes used here) with `onnx`,
    once: the exporter builds nodes only of ops whose schema it finds."""
    if onnx.defs.has("MultiHeadAttention", DOMAIN):
        return
    schema = onnx.defs.OpSchema
    optional = schema.FormalParameterOption.Optional
    onnx.defs.register_schema(
        schema(
            "MultiHeadAttention",
            DOMAIN,
            1,
            inputs=[
                schema.FormalParameter("query", "T"),
                schema.FormalParameter("key", "T"),
                schema.FormalParameter("value", "T"),
                schema.FormalParameter("bias", "T", param_option=optional),
                schema.FormalParameter("key_padding_mask", "M", param_option=optional),
                schema.FormalParameter("attention_bias", "T", param_option=optional),
            ],
            outputs=[schema.FormalParameter("output", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
            attributes=[
                schema.Attribute("num_heads", schema.AttrType.INT, "", required=True),
                schema.Attribute("scale", schema.AttrType.FLOAT, "", required=False),
            ],
        )
    )


@torch.library.custom_op("pva::mha", mutates_args=())
def mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], heads: int,
        scale: float) -> torch.Tensor:
    """`MultiHeadAttention` in PyTorch: q [B, S, H*dq], k [B, L, H*dq], v [B, L, H*dv], bias
    [B, 1, S, L] or None -> [B, S, H*dv]. Computed with `scaled_dot_product_attention` (PyTorch's
    fused kernels on a GPU: the eager baseline of scripts/gpu/check.sh); the export sees only the op."""
    b, s, _ = q.shape
    length = k.shape[1]
    qh = q.reshape(b, s, heads, -1).transpose(1, 2)
    kh = k.reshape(b, length, heads, -1).transpose(1, 2)
    vh = v.reshape(b, length, heads, -1).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, scale=scale)
    return out.transpose(1, 2).reshape(b, s, -1)


@mha.register_fake
def _mha_fake(q, k, v, bias, heads, scale):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


def _mha_onnx(q, k, v, bias, heads: int, scale: float):
    from onnxscript.values import Opset

    op = Opset(DOMAIN, 1).MultiHeadAttention
    if bias is None:
        return op(q, k, v, num_heads=heads, scale=scale)
    return op(q, k, v, None, None, bias, num_heads=heads, scale=scale)


#: The exporter's `custom_translation_table` for graphs with fused attention.
TRANSLATION = {torch.ops.pva.mha.default: _mha_onnx}


def _flat(x: torch.Tensor, image_shape) -> torch.Tensor:
    if image_shape is None:
        return x
    batch, channels, height, width = image_shape
    return x.reshape(batch, channels, height * width).transpose(1, 2)


class FusedSelfAttnProcessor:
    """A UNet `attn1` as one `MultiHeadAttention` (accepts and ignores the PVA keyword arguments)."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, id_tokens=None, id_switch=None, adapter=None) -> torch.Tensor:
        if attention_mask is not None or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("fused attention covers the PVA UNet's attn1 only")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = mha(attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), None, attn.heads,
                  float(attn.scale))
        out = _finish(attn, out)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class FusedPvaCrossAttnProcessor:
    """A UNet `attn2` (Parallel Visual Attention) as one `MultiHeadAttention`: see the module doc."""

    def __init__(self, unfused: PvaCrossAttnProcessor) -> None:
        self.unfused = unfused

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None, id_tokens=None, id_switch=None, adapter=None) -> torch.Tensor:
        if encoder_hidden_states is None or id_tokens is None or id_switch is None:
            raise ValueError("PVA cross-attention needs text states, id_tokens and id_switch")
        heads = attn.heads
        linear = torch.nn.functional.linear
        weight = lambda p: self.unfused._weight(attn, p, adapter)  # noqa: E731
        b, s, _ = hidden_states.shape
        text, ids = encoder_hidden_states.shape[1], id_tokens.shape[1]
        pad = -(text + ids) % KEY_ALIGN

        def per_head(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], x.shape[1], heads, -1)

        q_text = per_head(attn.to_q(hidden_states))
        q_vis = per_head(linear(hidden_states, weight("to_visual_q")))
        k_text = per_head(attn.to_k(encoder_hidden_states))
        k_vis = per_head(linear(id_tokens, weight("to_visual_k")))
        v_text = attn.to_v(encoder_hidden_states)
        v_vis = linear(id_tokens, weight("to_visual_v"))
        query = torch.cat([q_text, q_vis], dim=-1).reshape(b, s, -1)
        keys = torch.cat(
            [
                torch.cat([k_text, torch.zeros_like(k_text)], dim=-1),
                torch.cat([torch.zeros_like(k_vis), k_vis], dim=-1),
            ],
            dim=1,
        ).reshape(b, text + ids, -1)
        values = torch.cat([v_text, v_vis], dim=1)
        if pad:
            keys = torch.cat([keys, keys.new_zeros(b, pad, keys.shape[2])], dim=1)
            values = torch.cat([values, values.new_zeros(b, pad, values.shape[2])], dim=1)
        keep = (id_switch > 0.5).reshape(-1, 1, 1, 1)
        masked = query.new_full((b, 1, 1, ids), MASKED)
        bias_row = torch.cat(
            [
                query.new_zeros(b, 1, 1, text),
                torch.where(keep, torch.zeros_like(masked), masked),
                query.new_full((b, 1, 1, pad), MASKED),
            ],
            dim=-1,
        )
        bias = bias_row.expand(b, 1, s, text + ids + pad)
        out = mha(query, keys, values, bias, heads, float(attn.scale))
        return _finish(attn, out)


@contextmanager
def fused_attention(unet: nn.Module) -> Iterator[None]:
    """Within the block, every attention of `unet` (a PVA UNet: `install_pva` done) is fused; the
    explicit processors come back at its end."""
    register_schema()
    before = unet.attn_processors
    fused = {}
    for name, processor in before.items():
        if isinstance(processor, PvaCrossAttnProcessor):
            fused[name] = FusedPvaCrossAttnProcessor(processor)
        else:
            fused[name] = FusedSelfAttnProcessor()
    unet.set_attn_processor(fused)
    try:
        yield
    finally:
        unet.set_attn_processor(before)
