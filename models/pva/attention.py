"""Attention processors of the PVA UNet and VAE, written as explicit matmul + softmax.

- `PvaCrossAttnProcessor` (every UNet `attn2`): Parallel Visual Attention. Text keys come from
  `to_k/to_v(text)`, identity keys from `to_visual_k/v(id_tokens)`; text scores use `to_q(h)` and
  identity scores `to_visual_q(h)`; ONE softmax over [77 text keys ; 10 identity keys], then
  `@ concat(V_text, V_vis)` and the shared `to_out`. Rows with `id_switch == 0` get -inf identity
  scores, so they equal a plain attention over the text keys (the unconditional CFG row).
- `ExplicitAttnProcessor` (UNet `attn1`, VAE mid-block attention): ordinary attention.

NOTE: no `scaled_dot_product_attention`: the tuning graph is traced to core aten ops and
differentiated, and an explicit softmax keeps both the forward and the gradient exportable.
The `to_visual_*` weights either come from the module's own `nn.Linear`s or, when `adapter` is
given, from slices of ONE flat vector (the graph input of CONTRACT.md), laid out by `AdapterEntry`s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

VISUAL_PROJECTIONS = ("to_visual_q", "to_visual_k", "to_visual_v")


@dataclass(frozen=True)
class AdapterEntry:
    """One tensor of the flat adapter vector: its name, group (`visual`/`token`), offset, shape."""

    name: str
    group: str
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n

    def take(self, flat: torch.Tensor) -> torch.Tensor:
        """This entry's tensor as a view of the flat vector."""
        return flat[self.offset : self.offset + self.size].reshape(self.shape)

    def to_json(self) -> dict:
        """The manifest form."""
        return {"name": self.name, "group": self.group, "offset": self.offset, "shape": list(self.shape)}


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, inner = x.shape
    return x.reshape(batch, length, heads, inner // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _finish(attn: Attention, out: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[0](out)
    return attn.to_out[1](out)


class ExplicitAttnProcessor:
    """Plain attention (self or cross) as matmul + softmax, for any diffusers `Attention`.

    Accepts and ignores the PVA keyword arguments so one `cross_attention_kwargs` dict can be
    passed to every attention of the UNet.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        id_tokens: torch.Tensor | None = None,
        id_switch: torch.Tensor | None = None,
        adapter: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise NotImplementedError("attention masks are not used by the PVA models")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape
            batch, channels, height, width = image_shape
            hidden_states = hidden_states.reshape(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)

        q = _split_heads(attn.to_q(hidden_states), attn.heads)
        k = _split_heads(attn.to_k(context), attn.heads)
        v = _split_heads(attn.to_v(context), attn.heads)
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * attn.scale, dim=-1)
        out = _finish(attn, _merge_heads(torch.matmul(probs, v)))

        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class PvaCrossAttnProcessor:
    """Parallel Visual Attention for one `attn2`; `entries` locate its q/k/v in the flat adapter."""

    def __init__(self, entries: dict[str, AdapterEntry]) -> None:
        self.entries = entries

    def _weight(self, attn: Attention, projection: str, adapter: torch.Tensor | None) -> torch.Tensor:
        if adapter is None:
            return getattr(attn, projection).weight
        return self.entries[projection].take(adapter)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        id_tokens: torch.Tensor | None = None,
        id_switch: torch.Tensor | None = None,
        adapter: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or id_tokens is None or id_switch is None:
            raise ValueError("PVA cross-attention needs text states, id_tokens and id_switch")
        if attention_mask is not None:
            raise NotImplementedError("attention masks are not used by the PVA models")
        heads = attn.heads
        q_text = _split_heads(attn.to_q(hidden_states), heads)
        k_text = _split_heads(attn.to_k(encoder_hidden_states), heads)
        v_text = _split_heads(attn.to_v(encoder_hidden_states), heads)
        linear = torch.nn.functional.linear
        q_vis = _split_heads(linear(hidden_states, self._weight(attn, "to_visual_q", adapter)), heads)
        k_vis = _split_heads(linear(id_tokens, self._weight(attn, "to_visual_k", adapter)), heads)
        v_vis = _split_heads(linear(id_tokens, self._weight(attn, "to_visual_v", adapter)), heads)

        text_scores = torch.matmul(q_text, k_text.transpose(-1, -2)) * attn.scale
        vis_scores = torch.matmul(q_vis, k_vis.transpose(-1, -2)) * attn.scale
        # NOTE: switch 0 removes the identity keys exactly: exp(-inf) = 0 in the shared softmax.
        keep = (id_switch > 0.5).reshape(-1, 1, 1, 1)
        vis_scores = torch.where(keep, vis_scores, torch.full_like(vis_scores, float("-inf")))
        probs = torch.softmax(torch.cat([text_scores, vis_scores], dim=-1), dim=-1)
        out = torch.matmul(probs, torch.cat([v_text, v_vis], dim=2))
        return _finish(attn, _merge_heads(out))


def install_pva(unet: nn.Module) -> list[AdapterEntry]:
    """Add `to_visual_q/k/v` (copies of `to_q/k/v`) to every `attn2`, set the processors, and
    return the visual adapter layout (module order, q then k then v per layer, offsets from 0)."""
    layout: list[AdapterEntry] = []
    offset = 0
    processors = {}
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        if name.endswith("attn2"):
            entries = {}
            for projection, source in zip(VISUAL_PROJECTIONS, (module.to_q, module.to_k, module.to_v)):
                if source.bias is not None:
                    raise ValueError(f"{name}: PVA expects bias-free q/k/v projections")
                visual = nn.Linear(source.in_features, source.out_features, bias=False)
                with torch.no_grad():
                    visual.weight.copy_(source.weight)
                setattr(module, projection, visual)
                entry = AdapterEntry(f"{name}.{projection}.weight", "visual", offset, tuple(visual.weight.shape))
                entries[projection] = entry
                layout.append(entry)
                offset += entry.size
            processors[f"{name}.processor"] = PvaCrossAttnProcessor(entries)
        else:
            processors[f"{name}.processor"] = ExplicitAttnProcessor()
    unet.set_attn_processor(processors)
    return layout


def use_explicit_attention(model: nn.Module) -> None:
    """Give every diffusers `Attention` in `model` the explicit processor (no SDPA)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(ExplicitAttnProcessor())
