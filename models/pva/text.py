"""The text encoder graph: CLIP with the added `<new1>` token taken from a graph input.

`input_ids` [B, 77] + `new1_embedding` [D] -> `hidden_states` [B, 77, D] (last layer after the final
LayerNorm, as SD-2 uses it). Ids equal to `new_token_id` (one past CLIP's table, as textual inversion
adds it) take `new1_embedding`; every other id reads the normal token table.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel


def build_clip(text_config: dict[str, Any]) -> CLIPTextModel:
    """A randomly initialised CLIP text model with explicit (eager) attention."""
    config = CLIPTextConfig(**text_config)
    # NOTE: eager attention (matmul + softmax) instead of SDPA: the tuning graph differentiates
    # through the text encoder (for the `<new1>` embedding) and is traced op by op.
    config._attn_implementation = "eager"
    return CLIPTextModel(config)


class TextEncoder(nn.Module):
    """The exported text encoder: CLIP whose `<new1>` token embedding is an input."""

    def __init__(self, clip: CLIPTextModel, new_token_id: int) -> None:
        super().__init__()
        self.clip = clip
        self.new_token_id = new_token_id
        length = clip.config.max_position_embeddings
        causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("causal_mask", causal[None, None], persistent=False)

    @property
    def token_table(self) -> torch.Tensor:
        """The CLIP token-embedding table [vocab, D] (without the added token)."""
        return self.clip.embeddings.token_embedding.weight

    def forward(self, input_ids: torch.Tensor, new1_embedding: torch.Tensor) -> torch.Tensor:
        table = self.token_table
        # NOTE: the added id is out of the table's range: clamp before the gather, then replace.
        tokens = F.embedding(input_ids.clamp(0, table.shape[0] - 1), table)
        is_new = (input_ids == self.new_token_id).unsqueeze(-1)
        tokens = torch.where(is_new, new1_embedding.to(tokens.dtype), tokens)
        hidden = self.clip.embeddings(inputs_embeds=tokens)
        length = input_ids.shape[1]
        mask = self.causal_mask[:, :, :length, :length]
        for layer in self.clip.encoder.layers:
            hidden = layer(hidden, mask)
        return self.clip.final_layer_norm(hidden)
